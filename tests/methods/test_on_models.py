"""Every method on tiny random models: reduction to plain attention, cached decoding against a
full forward, left-padded batches, evicting caches, and clear errors."""

import pytest
import torch
from conftest import left_pad, logits, logits_in_pieces, tiny_model
from transformers import DynamicCache

import longreach
from longreach.integrations.transformers.forward_args import cache_kwargs

#: Settings that cover a 48-token input whole: each method must be plain attention there.
COVERING = [
    longreach.DualChunk(chunk_size=60, local_window=8),
    longreach.LMInfinite(local_window=64, n_global=4, distance_limit=64),
    longreach.ReRoPE(window=60),
    longreach.ReRoPE(window=8, leaky_factor=1.0),
    longreach.StreamingLLM(n_sink=4, window=48),
    longreach.String(shifted_offset=48, local_value=4),  # no pair is 48 apart
    longreach.SelfExtend(group_size=1, window=8, string_offset=48, local_value=4),
]

TRAINED = 32
#: Settings active on a 50-token input of a model trained to 32 tokens.
ACTIVE = [
    longreach.DualChunk(chunk_size=12, local_window=3),
    longreach.LMInfinite(local_window=8, n_global=3, distance_limit=16),
    longreach.ReRoPE(window=6, log_scale_base=TRAINED),
    longreach.ReRoPE(window=6, leaky_factor=2.0),
    longreach.StreamingLLM(n_sink=3, window=10),
    longreach.SelfExtend(group_size=3, window=6, log_scale_base=TRAINED),
    longreach.SelfExtend(group_size=2, window=6, string_offset=10, local_value=3),
    longreach.String(shifted_offset=24, local_value=3),
    longreach.String(shifted_offset=22, local_value=4, attention_factor=1.07),
]


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
@pytest.mark.parametrize("method", COVERING, ids=lambda m: m.spec())
def test_methods_reduce_to_vanilla_where_they_cover_the_input(family, method):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (2, 48))
    vanilla = logits(model, ids)
    longreach.extend(model, method)
    assert (logits(model, ids) - vanilla).abs().max() <= 1e-5


@pytest.mark.parametrize("method", ACTIVE, ids=lambda m: m.spec())
def test_chunked_prefill_and_decoding_match_one_forward(method):
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, method)
    ids = torch.randint(3, 128, (2, 50))
    full = logits(model, ids)
    assert (full - logits(tiny_model("llama", max_position_embeddings=TRAINED), ids)).abs().max() > 1e-3
    cache = DynamicCache(config=model.config)
    pieces = []
    for start, stop in [(0, 17), (17, 18), (18, 30)] + [(i, i + 1) for i in range(30, 50)]:
        with torch.no_grad():
            pieces.append(model(ids[:, start:stop], **cache_kwargs(model, cache), use_cache=True).logits)
        assert cache.get_seq_length() == stop
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=2e-5, rtol=1e-5)


HALF_PRECISION = [
    *ACTIVE,
    # Every block retrieved: which blocks win a near-tie may change with the rounding.
    longreach.InfLLM(n_init=2, n_local=12, block_size=4, topk=12, exec_block=8),
    longreach.RopeScaling("yarn", 2.0),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("method", HALF_PRECISION, ids=lambda m: m.spec())
def test_half_precision_models_read_and_decode_like_float32(method, dtype):
    """A bf16/fp16 model (a GPU user's default) keeps its dtype through every method, prefill
    and cached decoding alike, and agrees with the same model in float32 to its rounding."""
    ids = torch.randint(3, 128, (2, 50), generator=torch.Generator().manual_seed(2))
    spans = [(0, 17), (17, 18), (18, 30)] + [(i, i + 1) for i in range(30, 50)]
    full, half = (tiny_model("llama", max_position_embeddings=TRAINED) for _ in range(2))
    half.to(dtype)
    for model in (full, half):
        longreach.extend(model, method)
    expected = logits_in_pieces(full, ids, spans)
    got = logits_in_pieces(half, ids, spans)
    assert got.dtype == dtype
    torch.testing.assert_close(got.float(), expected, atol=0.02, rtol=0)


@pytest.mark.parametrize("method", ACTIVE, ids=lambda m: m.spec())
def test_left_padded_batch_equals_rows_alone(method):
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, method)
    gen = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in (34, 21, 7)]
    ids, mask = left_pad(rows)
    settings = dict(max_new_tokens=12, min_new_tokens=12, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)
    for b, row in enumerate(rows):
        with torch.no_grad():
            alone = model.generate(torch.tensor([row]), **settings)
        assert batched[b, ids.shape[1] :].tolist() == alone[0, len(row) :].tolist()


@pytest.mark.parametrize(
    "method",
    [longreach.StreamingLLM(n_sink=3, window=10), longreach.LMInfinite(local_window=8, n_global=3, distance_limit=16)],
    ids=lambda m: m.spec(),
)
def test_evicting_cache_holds_only_what_can_be_seen(method):
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, method)
    budget = getattr(method, "n_sink", getattr(method, "n_global", 0)) + getattr(
        method, "window", getattr(method, "local_window", 0)
    )
    ids = torch.randint(3, 128, (1, 60))
    full = logits(model, ids)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        steps = [model(ids[:, :20], **cache_kwargs(model, cache)).logits]
        for t in range(20, 60):
            steps.append(model(ids[:, t : t + 1], **cache_kwargs(model, cache)).logits)
            assert cache.get_seq_length() == t + 1
            assert all(layer.keys.shape[2] <= budget for layer in cache.layers)
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=2e-5, rtol=1e-5)

    settings = dict(max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        evicting = model.generate(ids[:, :20], return_dict_in_generate=True, **settings)
        uncached = model.generate(ids[:, :20], use_cache=False, **settings)
    assert evicting.sequences.tolist() == uncached.tolist()
    assert evicting.past_key_values.get_seq_length() == 59  # the last token is never fed back
    assert all(layer.keys.shape[2] <= budget for layer in evicting.past_key_values.layers)
    with torch.no_grad():  # the cache the model makes for itself evicts from the first forward on
        prefill = model(ids, use_cache=True).past_key_values
    assert prefill.get_seq_length() == 60 and all(layer.keys.shape[2] < budget for layer in prefill.layers)


def test_full_coverage_methods_do_not_evict():
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, longreach.DualChunk(chunk_size=12, local_window=3))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 128, (1, 50)), **cache_kwargs(model, cache))
    assert all(layer.keys.shape[2] == 50 for layer in cache.layers)


def test_evicting_cache_refuses_to_roll_back():
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, longreach.StreamingLLM(n_sink=2, window=6))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(torch.randint(3, 128, (1, 20)), **cache_kwargs(model, cache))
    with pytest.raises(ValueError, match="cannot be rolled back"):
        cache.crop(-2)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: longreach.DualChunk(chunk_size=8, local_window=8), "local_window .* smaller than chunk_size"),
        (lambda: longreach.DualChunk(chunk_size=8, local_window=-1), "local_window must be >= 0"),
        (lambda: longreach.LMInfinite(local_window=8, n_global=-1, distance_limit=8), "n_global must be >= 0"),
        (lambda: longreach.ReRoPE(window=0), "window must be >= 1"),
        (lambda: longreach.ReRoPE(window=4, leaky_factor=0.5), "leaky_factor must be >= 1"),
        (lambda: longreach.StreamingLLM(n_sink=4, window=0), "window must be >= 1"),
        (lambda: longreach.String(shifted_offset=0), "shifted_offset must be >= 1"),
        (lambda: longreach.String(shifted_offset=8, local_value=8), "local_value \\(8\\) must be below shifted_offset"),
        (lambda: longreach.String(shifted_offset=8, local_value=2, attention_factor=0.0), "attention_factor must be"),
        (lambda: longreach.SelfExtend(4, 16, log_scale_base=1), "log_scale_base must be >= 2"),
        (lambda: longreach.SelfExtend(2, 8, string_offset=4), "string_offset \\(4\\) must be >= window \\(8\\)"),
        (lambda: longreach.SelfExtend(2, 8, string_offset=10, local_value=10), "local_value \\(10\\) must be below"),
        (lambda: longreach.RopeScaling("ntk", 2.0), "kind must be one of"),
        (lambda: longreach.RopeScaling("linear", 0.5), "factor must be a number >= 1|factor must be >= 1"),
    ],
)
def test_bad_settings_are_clear_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_non_integer_settings_are_type_errors():
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        longreach.DualChunk(chunk_size=8.5, local_window=2)
    with pytest.raises(TypeError, match="leaky_factor must be a number"):
        longreach.ReRoPE(window=4, leaky_factor="2")


@pytest.mark.parametrize(
    ("method", "message"),
    [
        (longreach.DualChunk(chunk_size=40, local_window=4), "chunk_size=40 reaches rotary distance 40"),
        (longreach.StreamingLLM(n_sink=4, window=40), "n_sink \\+ window = 44"),
        (longreach.ReRoPE(window=32), "window=32"),
        (longreach.String(shifted_offset=40, local_value=4), "shifted_offset=40"),
        (longreach.SelfExtend(2, 8, string_offset=40, local_value=4), "string_offset=40"),
        (longreach.LMInfinite(local_window=64, n_global=4, distance_limit=8), "local_window=64"),
    ],
)
def test_settings_beyond_the_trained_length_are_refused(method, message):
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    kept = longreach.extend(model, longreach.SelfExtend(2, 8)).config._attn_implementation
    with pytest.raises(ValueError, match=message) as error:
        longreach.extend(model, method)
    assert "trained to 32 tokens" in str(error.value)
    # The refused method changed nothing: the model keeps the method it had.
    assert longreach.current_method(model) == longreach.SelfExtend(2, 8)
    assert model.config._attn_implementation == kept


def test_string_input_too_long_names_what_covers_it():
    """STRING covers trained + shifted_offset - local_value tokens: 32 + 12 - 4 = 40 here."""
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, longreach.String(shifted_offset=12, local_value=4))
    logits(model, torch.randint(3, 128, (1, 40)))
    with pytest.raises(longreach.InputTooLongError, match="string:shifted_offset=22,local_value=4"):
        logits(model, torch.randint(3, 128, (1, 50)))


def test_self_extend_string_covers_a_longer_input_than_its_group_alone():
    """Grouped pairs at distance >= string_offset move string_offset - local_value closer: group 2,
    window 6 cover 2 * (32 - 3) = 58 tokens alone, 2 * (32 - 3 + 10 - 3) = 72 with the shift."""
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    assert longreach.SelfExtend(2, 6).max_length(TRAINED) == 58
    longreach.extend(model, longreach.SelfExtend(2, 6, string_offset=10, local_value=3))
    logits(model, torch.randint(3, 128, (1, 72)))
    with pytest.raises(longreach.InputTooLongError, match="self-extend-string:group_size=3,window=8,string_offset=10"):
        logits(model, torch.randint(3, 128, (1, 80)))
    specs = longreach.methods.parse_method
    assert specs("self-extend-string:auto", target_length=72, trained_length=TRAINED).string_offset == 10
    with pytest.raises(ValueError, match="self-extend-string needs string_offset"):
        specs("self-extend-string:group_size=2,window=6")
    with pytest.raises(ValueError, match="self-extend takes no string_offset"):
        specs("self-extend:group_size=2,window=6,string_offset=10")


def test_leaky_rerope_input_too_long_suggests_a_factor():
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, longreach.ReRoPE(window=6, leaky_factor=1.0))
    with pytest.raises(longreach.InputTooLongError, match="leaky-rerope:window=4"):
        logits(model, torch.randint(3, 128, (1, 50)))
