"""The RoPE-scaling baselines through the model's own rope parameters."""

import pytest
import torch
from conftest import left_pad, logits, tiny_model
from transformers import DynamicCache

import longreach
from longreach.integrations.transformers.forward_args import cache_kwargs

TRAINED = 32


@pytest.mark.parametrize("kind", ["linear", "dynamic-ntk", "yarn"])
def test_scaling_changes_the_model_and_restore_is_exact(kind):
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    ids = torch.randint(3, 128, (1, 50))
    original = logits(model, ids)
    rotary = model.model.rotary_emb
    frequencies = rotary.inv_freq.clone()
    longreach.extend(model, longreach.RopeScaling(kind, 4.0))
    assert model.config._attn_implementation == "sdpa"  # the model's own attention
    assert model.config.rope_parameters["rope_type"] == {"dynamic-ntk": "dynamic"}.get(kind, kind)
    scaled = logits(model, ids)
    assert (scaled - original).abs().max() > 1e-3
    if kind == "linear":
        torch.testing.assert_close(rotary.inv_freq, frequencies / 4)
    if kind == "yarn":
        assert rotary.attention_scaling > 1.0
    longreach.extend(model, longreach.SelfExtend(group_size=2, window=8))  # replaces, never stacks
    assert model.config.rope_parameters["rope_type"] == "default"
    longreach.restore(model)
    assert torch.equal(logits(model, ids), original)
    assert torch.equal(rotary.inv_freq, frequencies)


def test_linear_scaling_is_position_interpolation():
    """Linear factor f: a token at position p is rotated like position p / f of the original."""
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    rotary = model.model.rotary_emb
    x = torch.zeros(1)
    cos_original, _ = rotary(x, torch.tensor([[10]]))
    longreach.extend(model, longreach.RopeScaling("linear", 2.0))
    cos_scaled, _ = rotary(x, torch.tensor([[20]]))
    torch.testing.assert_close(cos_scaled, cos_original)


def test_dynamic_ntk_cached_decoding_equals_recomputing():
    """transformers alone leaves cached keys at stale frequencies; extend() re-rotates them.
    (Each run gets a fresh model: transformers' dynamic frequencies remember the longest input.)"""

    def scaled_model():
        return longreach.extend(
            tiny_model("llama", max_position_embeddings=TRAINED), longreach.RopeScaling("dynamic-ntk", 2.0)
        )

    gen = torch.Generator().manual_seed(0)
    rows = [torch.randint(3, 128, (n,), generator=gen).tolist() for n in (40, 26)]
    ids, mask = left_pad(rows)
    settings = dict(max_new_tokens=15, min_new_tokens=15, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        cached = scaled_model().generate(
            ids, attention_mask=mask, output_logits=True, return_dict_in_generate=True, **settings
        )
        uncached = scaled_model().generate(
            ids, attention_mask=mask, use_cache=False, output_logits=True, return_dict_in_generate=True, **settings
        )
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    torch.testing.assert_close(torch.stack(cached.logits), torch.stack(uncached.logits), atol=1e-4, rtol=1e-4)


def test_dynamic_ntk_chunked_prefill_past_the_trained_length():
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    longreach.extend(model, longreach.RopeScaling("dynamic-ntk", 2.0))
    ids = torch.randint(3, 128, (1, 60))
    full = logits(model, ids)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        pieces = [model(ids[:, a:b], **cache_kwargs(model, cache)).logits for a, b in [(0, 20), (20, 45), (45, 60)]]
    # Each chunk's queries see the frequencies of the length so far; the last chunk sees them all at 60.
    torch.testing.assert_close(pieces[-1][:, -1], full[:, -1], atol=1e-4, rtol=1e-4)


def test_scaling_a_model_that_already_scales_is_refused():
    model = tiny_model(
        "llama",
        max_position_embeddings=TRAINED,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
    )
    with pytest.raises(ValueError, match="already uses 'linear' RoPE scaling"):
        longreach.extend(model, longreach.RopeScaling("yarn", 2.0))


def test_specs_name_the_kind():
    from longreach.methods import parse_method

    assert parse_method("dynamic-ntk:factor=2") == longreach.RopeScaling("dynamic-ntk", 2)
    assert parse_method("yarn:auto", target_length=32768, trained_length=8192) == longreach.RopeScaling("yarn", 4.0)
    assert longreach.RopeScaling("linear", 2.5).spec() == "linear:factor=2.5"


@pytest.mark.parametrize("kind", ["linear", "yarn"])
def test_inputs_past_what_the_factor_covers_are_refused(kind):
    """Factor 2 on a model trained to 32 covers 64 tokens: the model's own attention would read
    on silently, so a longer call is refused (left padding does not count), naming a factor that
    would cover it."""
    model = longreach.extend(tiny_model("llama", max_position_embeddings=TRAINED), longreach.RopeScaling(kind, 2.0))
    logits(model, torch.randint(3, 128, (1, 64)))
    with pytest.raises(longreach.InputTooLongError, match=rf"\(64 tokens\).*{kind}:factor=2.25"):
        logits(model, torch.randint(3, 128, (1, 65)))
    mask = torch.ones(2, 70, dtype=torch.long)
    mask[:, :10] = 0  # ten tokens of left padding in every row: 60 real ones
    logits(model, torch.randint(3, 128, (2, 70)), attention_mask=mask)
    with pytest.raises(longreach.InputTooLongError):  # decoding reaches the 65th position
        model.generate(torch.randint(3, 128, (1, 60)), do_sample=False, pad_token_id=0, max_new_tokens=10)
    longreach.extend(model, longreach.RopeScaling("dynamic-ntk", 2.0))  # frequencies follow the length: no limit
    logits(model, torch.randint(3, 128, (1, 65)))
