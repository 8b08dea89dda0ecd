"""extend()/restore() on tiny random models of several RoPE families."""

import logging

import pytest
import torch
import transformers
from conftest import COMMON, FAMILIES, left_pad, logits, logits_in_pieces, tiny_model
from dense_reference import reference_attention
from transformers import AttentionInterface, DynamicCache

import longreach
from longreach.integrations.transformers.attention import longreach_attention
from longreach.integrations.transformers.forward_args import cache_kwargs
from longreach.models.rotary import describe_rotary, rope_of

EQUIVALENCE_FAMILIES = sorted(FAMILIES)


@pytest.mark.filterwarnings("ignore:this model's sliding-window layers")  # the windowed family
@pytest.mark.parametrize("family", EQUIVALENCE_FAMILIES)
@pytest.mark.parametrize("method", [longreach.SelfExtend(group_size=4, window=64), longreach.SelfExtend(1, 5)])
def test_self_extend_reduces_to_vanilla_sdpa(family, method):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (2, 48))
    vanilla = logits(model, ids)
    longreach.extend(model, method)
    assert (logits(model, ids) - vanilla).abs().max() <= 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen3", "glm"])
def test_restore_is_exact_and_extend_does_not_stack(family):
    model = tiny_model(family)
    ids = torch.randint(3, 128, (1, 40))
    original = logits(model, ids)
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=4))
    longreach.extend(model, longreach.SelfExtend(group_size=4, window=8))
    twice = logits(model, ids)
    fresh = tiny_model(family)
    longreach.extend(fresh, longreach.SelfExtend(group_size=4, window=8))
    assert torch.equal(twice, logits(fresh, ids))
    assert longreach.current_method(model) == longreach.SelfExtend(group_size=4, window=8)
    longreach.restore(model)
    assert torch.equal(logits(model, ids), original)
    assert model.config._attn_implementation == "sdpa"
    assert longreach.current_method(model) is None
    longreach.restore(model)  # restoring a plain model is a no-op


def dense_reference_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
    """Attention fn computing the plan densely from unrotated q/k (for unpadded inputs)."""
    extension = module._longreach
    _, layout = rope_of(module, extension.layouts)
    n_key, n_query = key.shape[2], query.shape[2]
    positions = torch.arange(n_key)
    raw_q = layout.rotate(query, -positions[n_key - n_query :].float())
    raw_k = layout.rotate(key, -positions.float())
    out = reference_attention(
        raw_q,
        raw_k,
        value,
        extension.parts,
        layout.inv_freq,
        interleaved=layout.interleaved,
        query_positions=positions[n_key - n_query :],
        key_positions=positions,
        scale=scaling,
        sliding_window=kwargs.get("sliding_window"),
        softcap=kwargs.get("softcap"),
    )
    return out.to(query.dtype).transpose(1, 2).contiguous(), None


@pytest.mark.filterwarnings("ignore:this model's sliding-window layers")  # gemma3's local layers
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "phi", "cohere", "gemma2", "gemma3", "smollm3"])
def test_model_agrees_with_dense_reference(family):
    model = tiny_model(family)
    method = longreach.SelfExtend(group_size=3, window=7)
    ids = torch.randint(3, 128, (2, 60))
    longreach.extend(model, method)
    extended = logits(model, ids)
    AttentionInterface.register("longreach_test_reference", dense_reference_attention)
    model.config._attn_implementation = "longreach_test_reference"
    reference = logits(model, ids)
    error = (extended - reference).abs().max()
    assert error <= 1e-4
    # The method changes the model far more than the engine differs from the reference.
    assert (extended - logits(tiny_model(family), ids)).abs().max() > 20 * error


@pytest.mark.parametrize("family", ["llama", "qwen3", "glm"])
def test_chunked_prefill_and_decode_match_one_shot(family):
    model = tiny_model(family)
    longreach.extend(model, longreach.SelfExtend(group_size=3, window=6))
    ids = torch.randint(3, 128, (2, 50))
    full = logits(model, ids)
    cache = DynamicCache(config=model.config)
    pieces = []
    for start, stop in [(0, 17), (17, 18), (18, 40)] + [(i, i + 1) for i in range(40, 50)]:
        with torch.no_grad():
            out = model(ids[:, start:stop], **cache_kwargs(model, cache), use_cache=True)
        pieces.append(out.logits)
    assert cache.get_seq_length() == 50
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:this model's sliding-window layers")  # the windowed family
@pytest.mark.parametrize(
    "method",
    [
        longreach.SelfExtend(group_size=3, window=6),
        longreach.DualChunk(chunk_size=24, local_window=4),
        longreach.ReRoPE(window=8),
        longreach.StreamingLLM(n_sink=2, window=10),
        longreach.LMInfinite(local_window=10, n_global=2, distance_limit=32),
        longreach.InfLLM(n_init=4, n_local=12, block_size=4, topk=16, repr_topk=1, exec_block=4, max_cached_blocks=16),
    ],
    ids=lambda method: type(method).__name__,
)
@pytest.mark.parametrize("family", ["qwen2-windowed", "gemma2", "gemma3", "smollm3", "cohere2"])
def test_decoding_matches_one_shot_with_full_and_sliding_window_layers(method, family):
    """A sliding layer drops its oldest keys, so keys re-rotated on an earlier step sit at other
    indices now, and a layer with another window (or RoPE, or none) must not reuse another
    layer's spans."""
    model = tiny_model(family)
    longreach.extend(model, method)
    ids = torch.randint(3, 128, (2, 50))
    full = logits(model, ids)
    pieces = logits_in_pieces(
        model,
        ids,
        [(0, 8), *((i, i + 1) for i in range(8, 20)), (20, 24), (24, 40), *((i, i + 1) for i in range(40, 50))],
    )
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)
    if family != "smollm3":  # the window matters: the same weights and method without it differ
        unwindowed = longreach.extend(tiny_model(family, sliding_window=1000), method)
        assert (full - logits(unwindowed, ids)).abs().max() > 1e-3


@pytest.mark.filterwarnings("ignore:this model's sliding-window layers")
@pytest.mark.parametrize("model_type", ["olmo3", "beam", "gemma4_unified_text", "modernbert-decoder", "vaultgemma"])
def test_decoding_matches_one_shot_across_rope_conventions(model_type):
    """Layer types named only in the config (OLMo 3), a layer type without RoPE parameters
    (Beam's global layers: NoPE), apply_rotary_pos_emb(x, cos, sin) on one tensor (Gemma 4)."""
    if model_type not in transformers.CONFIG_MAPPING:
        pytest.skip(f"transformers {transformers.__version__} has no {model_type}")
    config = transformers.AutoConfig.for_model(model_type, **{**COMMON, "head_dim": 16})
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    longreach.extend(model, longreach.SelfExtend(3, 6))
    ids = torch.randint(3, 100, (1, 40))
    full = logits(model, ids)
    pieces = logits_in_pieces(model, ids, [(0, 8), *((i, i + 1) for i in range(8, 40))])
    torch.testing.assert_close(pieces, full, atol=5e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:this model's sliding-window layers")
def test_learned_attention_sinks_join_every_softmax():
    """GPT-OSS adds one learned logit per head to each softmax (a key with value 0): a plan
    covering everything at true positions must give the model's own eager attention."""
    config = transformers.AutoConfig.for_model(
        "gpt_oss", **{**COMMON, "head_dim": 16, "num_local_experts": 2, "num_experts_per_tok": 1, "sliding_window": 12}
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(getattr(module, "sinks", None), torch.Tensor):
                module.sinks.normal_(0.0, 2.0)
    ids = torch.randint(3, 100, (2, 40))
    own = logits(model, ids)
    longreach.extend(model, longreach.SelfExtend(group_size=4, window=64))
    torch.testing.assert_close(logits(model, ids), own, atol=1e-5, rtol=1e-5)
    longreach.extend(model, longreach.SelfExtend(3, 6))
    full = logits(model, ids)
    pieces = logits_in_pieces(model, ids, [(0, 8), *((i, i + 1) for i in range(8, 40))])
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=1e-5)
    longreach.extend(model, longreach.InfLLM(n_init=4, n_local=12, block_size=4, exec_block=4, max_cached_blocks=16))
    with pytest.raises(longreach.UnsupportedModelError, match="InfLLM does not support learned attention sinks"):
        logits(model, ids)


def test_sinks_in_any_other_form_are_refused_not_dropped():
    """Only GPT-OSS's `s_aux` form is merged: a model passing learned sinks as `sinks` would lose
    them silently, so the attention function refuses."""
    model = tiny_model("llama")
    longreach.extend(model, longreach.SelfExtend(3, 6))
    attention = model.model.layers[0].self_attn
    q = torch.randn(1, attention.config.num_attention_heads, 4, attention.head_dim)
    kv = torch.randn(1, attention.config.num_key_value_heads, 4, attention.head_dim)
    with pytest.raises(longreach.UnsupportedModelError, match="passed as `sinks` are not supported"):
        longreach_attention(attention, q, kv, kv, None, sinks=torch.zeros(attention.config.num_attention_heads))


@pytest.mark.parametrize(
    ("family", "nope"), [("smollm3", {"no_rope_layers": [0, 0]}), ("cohere2", {"layer_types": ["full_attention"] * 2})]
)
def test_position_plans_leave_nope_layers_as_they_are(family, nope):
    """A model whose layers apply no RoPE (SmolLM3's NoPE layers, Cohere2's global layers; all of
    them here) has no positions to move: a plan covering every key leaves it exactly as it is."""
    model = tiny_model(family, **nope)
    ids = torch.randint(3, 128, (2, 50))
    own = logits(model, ids)
    for method in (
        longreach.SelfExtend(3, 6),
        longreach.DualChunk(chunk_size=24, local_window=4),
        longreach.ReRoPE(window=8),
    ):
        longreach.extend(model, method)
        torch.testing.assert_close(logits(model, ids), own, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["llama", "qwen2", "phi3"])
def test_left_padded_batch_generates_like_rows_alone(family):
    model = tiny_model(family)
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=5))
    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in (30, 22, 9)]
    ids, mask = left_pad(rows)
    settings = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batched = model.generate(ids, attention_mask=mask, **settings)
        batched_logits = model(ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp_min(0)).logits
    for b, row in enumerate(rows):
        alone_ids = torch.tensor([row])
        with torch.no_grad():
            alone = model.generate(alone_ids, **settings)
        assert batched[b, ids.shape[1] :].tolist() == alone[0, len(row) :].tolist()
        alone_logits = logits(model, alone_ids)[0]
        torch.testing.assert_close(batched_logits[b, ids.shape[1] - len(row) :], alone_logits, atol=1e-5, rtol=1e-5)


def test_holes_in_padding_mask_are_honoured():
    """A padding mask with holes inside the row masks those keys (right padding included)."""
    model = tiny_model("llama")
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=4))
    ids = torch.randint(3, 128, (1, 20))
    mask = torch.ones(1, 20, dtype=torch.long)
    mask[0, 15:] = 0  # right padding
    got = logits(model, ids, attention_mask=mask)[0, :15]
    torch.testing.assert_close(got, logits(model, ids[:, :15])[0], atol=1e-5, rtol=1e-5)


def test_generate_uses_the_cache_and_matches_uncached_greedy():
    model = tiny_model("llama")
    longreach.extend(model, longreach.SelfExtend(group_size=4, window=8))
    ids = torch.randint(3, 128, (1, 40))
    with torch.no_grad():
        cached = model.generate(ids, max_new_tokens=10, do_sample=False, pad_token_id=0)
    sequence = ids
    for _ in range(10):
        next_token = logits(model, sequence)[:, -1].argmax(-1, keepdim=True)
        sequence = torch.cat((sequence, next_token), dim=1)
    assert cached.tolist() == sequence.tolist()


# ---- refusals --------------------------------------------------------------------------------


def test_models_without_rope_are_refused():
    config = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50, n_positions=32)
    model = transformers.GPT2LMHeadModel(config).eval()
    with pytest.raises(longreach.UnsupportedModelError, match="RoPE"):
        longreach.extend(model, longreach.SelfExtend(4, 8))
    assert model.config._attn_implementation != "longreach"


def test_chunked_attention_is_refused():
    config = transformers.Llama4TextConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        intermediate_size_mlp=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        num_local_experts=2,
        attention_chunk_size=16,
    )
    model = transformers.Llama4ForCausalLM(config).eval()
    with pytest.raises(longreach.UnsupportedModelError, match="chunks of 16 tokens"):
        longreach.extend(model, longreach.SelfExtend(4, 8))


def test_models_outside_the_attention_interface_are_refused():
    config = transformers.StableLmConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    model = transformers.StableLmForCausalLM(config).eval()
    with pytest.raises(longreach.UnsupportedModelError, match="AttentionInterface"):
        longreach.extend(model, longreach.SelfExtend(4, 8))


def test_non_method_is_a_type_error():
    with pytest.raises(TypeError, match="SelfExtend"):
        longreach.extend(tiny_model(), 42)


def test_generate_checks_prompt_and_new_tokens_before_reading_the_prompt():
    model = tiny_model("llama", max_position_embeddings=32)
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=16))  # covers 48 tokens
    forwards = []
    model.register_forward_pre_hook(lambda *_: forwards.append(1))
    ids = torch.randint(3, 128, (1, 40))
    with pytest.raises(longreach.InputTooLongError, match=r"prompt \(40 tokens\) plus 9 new tokens needs 49"):
        model.generate(ids, max_new_tokens=9, do_sample=False, pad_token_id=0)
    with pytest.raises(longreach.InputTooLongError, match=r"prompt \(40 tokens\) plus 10 new tokens"):
        model.generate(ids, max_length=50, do_sample=False, pad_token_id=0)
    assert not forwards  # refused before a single token was read
    # Left padding is not part of the prompt: 40 real tokens of 44 plus 8 new ones fit.
    padded = torch.cat((torch.zeros(2, 4, dtype=torch.long), torch.randint(3, 128, (2, 40))), dim=1)
    mask = torch.ones_like(padded)
    mask[:, :4] = 0
    with torch.no_grad():
        out = model.generate(padded, attention_mask=mask, max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 52)


def test_a_spec_string_extends_like_its_config():
    model = tiny_model("llama", max_position_embeddings=32)
    ids = torch.randint(3, 128, (1, 48))
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=16))
    expected = logits(model, ids)
    longreach.extend(model, "self-extend:group_size=2,window=16")
    assert longreach.current_method(model) == longreach.SelfExtend(group_size=2, window=16)
    assert torch.equal(logits(model, ids), expected)
    longreach.extend(model, "self-extend:auto", target_length=256)  # NAME:auto picks settings for the target
    assert longreach.current_method(model).max_length(32) >= 256
    longreach.extend(model, "rerope:auto")  # no target: 4x the trained length
    assert longreach.current_method(model) == longreach.ReRoPE.for_target(128, 32)
    with pytest.raises(longreach.MethodSpecError, match="missing group_size, window"):
        longreach.extend(model, "self-extend")
    assert longreach.current_method(model) == longreach.ReRoPE.for_target(128, 32)  # a refusal changes nothing


def test_extending_with_vanilla_is_restoring():
    model = tiny_model("llama", max_position_embeddings=32)
    ids = torch.randint(3, 128, (1, 40))
    original = logits(model, ids)
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=16))
    longreach.extend(model, "vanilla")
    assert longreach.current_method(model) is None
    assert model.config._attn_implementation == "sdpa"
    assert torch.equal(logits(model, ids), original)


def test_input_too_long_names_settings_that_would_cover_it():
    model = tiny_model("llama", max_position_embeddings=32)
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=16))  # covers 2 * (32 - 16 + 8) = 48
    logits(model, torch.randint(3, 128, (1, 48)))
    with pytest.raises(longreach.InputTooLongError, match=r"49 tokens.*48 tokens.*SelfExtend\(group_size="):
        logits(model, torch.randint(3, 128, (1, 49)))


def test_dynamic_rope_with_cache_is_refused_but_works_without():
    model = tiny_model("llama", rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=8))
    ids = torch.randint(3, 128, (1, 20))
    logits(model, ids, use_cache=False)
    with pytest.raises(ValueError, match="dynamic NTK"):
        with torch.no_grad():
            model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)


def test_static_cache_is_refused():
    model = tiny_model("llama")
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=8))
    with pytest.raises(ValueError, match="static"):
        with torch.no_grad():
            model.generate(
                torch.randint(3, 128, (1, 10)),
                max_new_tokens=2,
                do_sample=False,
                pad_token_id=0,
                cache_implementation="static",
            )


@pytest.mark.filterwarnings("ignore:this model's sliding-window layers")
def test_model_info_reports_rope_and_suggestions():
    info = longreach.model_info(tiny_model("glm"), target_length=256)
    assert info.supported and info.rotary_layout == "interleaved" and info.rotary_dims == 8
    assert info.trained_length == 64
    assert info.suggested["self-extend"].startswith("self-extend:group_size=")
    assert info.sliding_window is None
    windowed = longreach.model_info(tiny_model("qwen2-windowed"), target_length=256)
    assert windowed.sliding_window == 12 and "n_local=12" in windowed.suggested["infllm"]
    _, layouts, rope_type = describe_rotary(tiny_model("llama"))
    assert rope_type == "default" and not layouts[None].interleaved
    gemma3 = tiny_model("gemma3")
    gemma = longreach.model_info(gemma3, target_length=256)
    assert gemma.rope_type == "full_attention: linear, sliding_attention: default"
    assert gemma.methods["yarn"].startswith("no") and gemma.suggested["self-extend"].startswith("self-extend:")
    longreach.extend(gemma3, longreach.SelfExtend(group_size=2, window=8))
    ids = torch.randint(3, 128, (1, 40))
    extended = logits(gemma3, ids)
    with pytest.raises(longreach.UnsupportedModelError, match="one per layer type"):
        longreach.extend(gemma3, longreach.RopeScaling("yarn", 2.0))
    # The refusal leaves the model with the method it had.
    assert longreach.current_method(gemma3) == longreach.SelfExtend(group_size=2, window=8)
    torch.testing.assert_close(logits(gemma3, ids), extended, atol=0, rtol=0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=50))
    info = longreach.model_info(gpt2)
    assert not info.supported and "RoPE" in info.reason


def test_model_info_recommends_a_spec_extend_accepts():
    model = tiny_model("llama", max_position_embeddings=64)
    info = longreach.model_info(model, target_length="0.25k")
    assert info.target_length == 256 and info.recommended.auto == "rerope:auto"
    assert "SmolLM2" in info.recommended.reason  # says what the rule rests on
    longreach.extend(model, info.recommended.spec)
    assert longreach.current_method(model).spec() == info.recommended.spec
    assert longreach.model_info(model, target_length=32).recommended.spec == "vanilla"
    assert longreach.model_info(model, target_length=64 * 16).recommended.auto == "infllm:auto"
    assert longreach.model_info(model).target_length == 4 * 64
    windowed = longreach.model_info(tiny_model("qwen2-windowed"), target_length=256)
    assert windowed.recommended.auto == "infllm:auto" and "sliding window" in windowed.recommended.reason
    for bad in ("lots", 0, -5, 2.5):
        with pytest.raises(ValueError, match="token count"):
            longreach.model_info(model, target_length=bad)


def test_auto_settings_that_change_nothing_are_named():
    model = tiny_model("llama", max_position_embeddings=64)
    with pytest.warns(UserWarning, match="group_size=1.*the model's own attention"):
        longreach.extend(model, "self-extend:auto", target_length=48)
    assert not longreach.current_method(model).changes_attention


def test_decoding_rotates_only_new_keys_and_beam_search_stays_exact(monkeypatch):
    from longreach.engine.rotary import RotaryLayout
    from longreach.integrations.transformers.cache import LongReachCache

    model = tiny_model("llama")
    longreach.extend(model, longreach.SelfExtend(group_size=3, window=6))
    ids = torch.randint(3, 128, (2, 40))
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        first = model(ids, **cache_kwargs(model, cache), use_cache=True)
    assert type(cache) is LongReachCache and cache.get_seq_length() == 40  # adopted in place
    rotated = []
    original = RotaryLayout.apply
    monkeypatch.setattr(RotaryLayout, "apply", lambda self, x, a: rotated.append(x.shape[2]) or original(self, x, a))
    step = first.logits[:, -1:].argmax(-1)
    with torch.no_grad():
        decoded = model(step, **cache_kwargs(model, cache), use_cache=True).logits
    assert rotated and max(rotated) == 1  # one new key (and one query) per layer, not 41 keys
    torch.testing.assert_close(decoded[:, -1], logits(model, torch.cat((ids, step), 1))[:, -1], atol=1e-5, rtol=1e-5)
    monkeypatch.undo()

    settings = dict(max_new_tokens=6, min_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        beams = model.generate(ids[:1], **settings)
        uncached = model.generate(ids[:1], use_cache=False, **settings)
    assert beams.tolist() == uncached.tolist()
    longreach.restore(model)
    assert not model.base_model._forward_pre_hooks


def test_decoding_appends_to_the_cache_in_place():
    """A decoding step writes its token into the cache's buffers instead of copying every key."""
    from longreach.integrations.transformers.cache import AppendingLayer

    model = tiny_model("llama")
    longreach.extend(model, longreach.SelfExtend(group_size=3, window=6))
    ids = torch.randint(3, 128, (2, 40))
    cache = DynamicCache(config=model.config)
    sequence, pointers = ids, []
    with torch.no_grad():
        out = model(ids, **cache_kwargs(model, cache), use_cache=True)
        for _ in range(4):
            sequence = torch.cat((sequence, out.logits[:, -1:].argmax(-1)), dim=1)
            out = model(sequence[:, -1:], **cache_kwargs(model, cache), use_cache=True)
            pointers.append([(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers])
    assert all(type(layer) is AppendingLayer for layer in cache.layers)
    assert pointers[1] == pointers[2] == pointers[3]  # copied once (at the first step), then in place
    assert cache.get_seq_length() == 44
    torch.testing.assert_close(out.logits[:, -1], logits(model, sequence)[:, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:Using the model-agnostic default")  # the plain model's refused call
@pytest.mark.parametrize(
    "method",
    [longreach.SelfExtend(group_size=4, window=8), longreach.RopeScaling("linear", 4.0)],
    ids=lambda m: m.spec(),
)
def test_generate_without_a_length_reads_prompts_past_the_trained_length(method):
    """transformers caps a call that names no length at max_position_embeddings (the trained
    length), refusing any longer prompt; extended, such a call gets its 20 new tokens."""
    model = tiny_model("llama", max_position_embeddings=32)
    ids = torch.randint(3, 128, (1, 60))
    with pytest.raises(ValueError, match="max_length"):
        model.generate(ids, do_sample=False, pad_token_id=0)
    longreach.extend(model, method)
    with torch.no_grad():
        default = model.generate(ids, do_sample=False, pad_token_id=0)
        named = model.generate(ids, do_sample=False, pad_token_id=0, max_length=70)
    assert default.shape == (1, 80) and named.shape == (1, 70)
    assert torch.equal(default[:, :70], named)
    longreach.restore(model)
    assert "generate" not in model.__dict__


@pytest.mark.parametrize(
    ("method", "reminded"),
    [(longreach.SelfExtend(group_size=4, window=8), False), (longreach.Vanilla(), True)],
    ids=["self-extend", "vanilla"],
)
def test_trained_length_reminder_is_left_to_vanilla(method, reminded):
    """transformers reminds, once per process and length, that generation went past the trained
    length ("performance degradation"); with a method that is the intended use, so it is not shown.
    Trained lengths no other test uses keep the reminder's once-per-process cache out of the way."""
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers.generation.stopping_criteria")
    logger.addHandler(handler)
    model = tiny_model("llama", max_position_embeddings=37 if reminded else 39)
    longreach.extend(model, method)
    try:
        with torch.no_grad():
            model.generate(torch.randint(3, 128, (1, 40)), do_sample=False, pad_token_id=0, max_new_tokens=4)
    finally:
        logger.removeHandler(handler)
    assert any("maximum length" in r.getMessage() for r in records) == reminded
