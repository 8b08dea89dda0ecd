"""The engine against the dense reference, over random shapes, plans, tiles and padding."""

import pytest
import torch
from conftest import attention_inputs
from dense_reference import reference_attention, rope
from hypothesis import given, settings
from hypothesis import strategies as st

from longreach.engine.attention import Scoring, attend
from longreach.engine.rotary import RotaryLayout
from longreach.methods import DualChunk, Part, ReRoPE, SelfExtend, Vanilla


@st.composite
def cases(draw):
    n_key = draw(st.integers(1, 70))
    return dict(
        batch=draw(st.integers(1, 2)),
        kv_heads=draw(st.integers(1, 2)),
        group=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([8, 16])),
        rotary_fraction=draw(st.sampled_from([0.5, 1.0])),
        interleaved=draw(st.booleans()),
        n_key=n_key,
        n_query=draw(st.integers(1, n_key)),
        pad=draw(st.integers(0, min(5, n_key - 1))),
        holes=draw(st.booleans()),
        sliding_window=draw(st.one_of(st.none(), st.integers(1, 40))),
        method=draw(
            st.one_of(
                st.just(Vanilla()),
                st.builds(SelfExtend, group_size=st.integers(1, 8), window=st.integers(1, 80)),
            )
        ),
        tile=draw(st.integers(1, 24)),
        seed=draw(st.integers(0, 2**16)),
    )


def run_case(case):
    x = attention_inputs(case)
    inv_freq, query_positions, key_positions = x["inv_freq"], x["query_positions"], x["key_positions"]
    key_valid = None
    if case["holes"]:
        key_valid = torch.rand(case["n_key"], generator=x["generator"]) > 0.3
    interleaved = case["interleaved"]
    parts = case["method"].parts()
    expected = reference_attention(
        x["raw_q"],
        x["raw_k"],
        x["value"],
        parts,
        inv_freq,
        interleaved=interleaved,
        query_positions=query_positions,
        key_positions=key_positions,
        scale=x["scale"],
        key_valid=key_valid,
        sliding_window=case["sliding_window"],
    )
    got = attend(
        rope(x["raw_q"], query_positions, inv_freq, interleaved).float(),
        rope(x["raw_k"], key_positions, inv_freq, interleaved).float(),
        x["value"],
        parts,
        Scoring(RotaryLayout(inv_freq, interleaved), scale=x["scale"], sliding_window=case["sliding_window"]),
        query_positions=query_positions,
        key_positions=key_positions,
        key_valid=key_valid,
        tile=case["tile"],
    )
    return got, expected


@settings(max_examples=300, deadline=None)
@given(cases())
def test_engine_matches_dense_reference(case):
    got, expected = run_case(case)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


def one_case(**settings) -> dict:
    """A case as ``cases()`` draws them: one batch row, two query heads per KV head, no padding,
    holes or sliding window unless ``settings`` say otherwise."""
    base = dict(batch=1, kv_heads=2, group=2, head_dim=8, rotary_fraction=1.0, interleaved=False, pad=0)
    return base | dict(holes=False, sliding_window=None) | settings


def test_queries_without_keys_get_zeros():
    """Padding queries (negative positions) see no key at all: zeros, never NaN."""
    case = one_case(kv_heads=1, n_key=10, n_query=10, pad=4, method=SelfExtend(2, 3), tile=4, seed=1)
    got, expected = run_case(case)
    assert torch.equal(got[:, :, :4], torch.zeros_like(got[:, :, :4]))
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


# Bounds that step g keys every g queries (SelfExtend with STRING's shift): a tile of 3 rows over
# bounds 0, 0, 2 spans rows - 1 keys without advancing one key per row.
@pytest.mark.parametrize("tile", [3, 5, 16, 512])
@pytest.mark.parametrize(
    "method",
    [SelfExtend(2, 6, string_offset=9, local_value=2), SelfExtend(3, 4, string_offset=8, local_value=3)],
    ids=str,
)
def test_staircase_bounds_stay_inside_a_tile(method, tile):
    """Stepped bounds are exact (as the dense reference) and do not cut the queries into tiles of
    g rows, which made such plans several times slower than their neighbours' plans."""
    import longreach.engine.attention as engine

    case = one_case(n_key=70, n_query=70, method=method, tile=tile, seed=3)
    got, expected = run_case(case)
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)
    x = attention_inputs(case)
    spans = [engine._spans(part, x["query_positions"], x["key_positions"], None) for part in method.parts()]
    assert all(s is None or not s.cuts for s in spans)  # tiles are cut only every `tile` rows


def test_decreasing_spans_are_rejected():
    backwards = Part("backwards", key_span=lambda i: (i * 0, 3 - i))
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="non-decreasing"):
        attend(
            q,
            q,
            q,
            (backwards,),
            Scoring(RotaryLayout(torch.ones(4)), scale=1.0),
            query_positions=torch.arange(4),
            key_positions=torch.arange(4),
        )


@settings(max_examples=40, deadline=None)
@given(cases())
def test_portable_kernel_path_matches_dense_reference(case):
    """The kernel used off CPU (plain torch ops) runs the same plans exactly."""
    import longreach.engine.attention as engine
    from longreach.engine.kernels import portable_attention_with_lse

    original = engine.attention_with_lse
    engine.attention_with_lse = portable_attention_with_lse
    try:
        got, expected = run_case(case)
    finally:
        engine.attention_with_lse = original
    torch.testing.assert_close(got.double(), expected, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("dtype, tolerance", [(torch.bfloat16, 0.03), (torch.float16, 0.004)])
@pytest.mark.parametrize("method", [SelfExtend(4, 16), ReRoPE(16), DualChunk(chunk_size=100, local_window=10)])
def test_half_precision_inputs_at_far_positions(dtype, tolerance, method):
    """Keys and queries as a bf16/fp16 model hands them over, 30,000 tokens in: the engine
    re-rotates them without losing the positions (no position held in half precision), answers
    in their dtype, and stays within input rounding of the float64 reference, an error far
    below what separates the method from plain attention."""
    case = dict(batch=1, kv_heads=2, group=2, head_dim=64, rotary_fraction=1.0, n_key=300, n_query=300, pad=0, seed=1)
    x = attention_inputs(case)
    key_positions, query_positions = x["key_positions"] + 30_000, x["query_positions"] + 30_000
    inv_freq = 1.0 / (10_000 ** (torch.arange(0, 64, 2, dtype=torch.float32) / 64))
    dense = dict(interleaved=False, query_positions=query_positions, key_positions=key_positions, scale=x["scale"])
    expected = reference_attention(x["raw_q"], x["raw_k"], x["value"], method.parts(), inv_freq, **dense)
    plain = reference_attention(x["raw_q"], x["raw_k"], x["value"], Vanilla().parts(), inv_freq, **dense)
    got = attend(
        rope(x["raw_q"], query_positions, inv_freq, False).to(dtype),
        rope(x["raw_k"], key_positions, inv_freq, False).to(dtype),
        x["value"].to(dtype),
        method.parts(),
        Scoring(RotaryLayout(inv_freq, False), scale=x["scale"]),
        query_positions=query_positions,
        key_positions=key_positions,
    )
    assert got.dtype == dtype
    assert (got.double() - expected).abs().max() < tolerance < (plain - expected).abs().max() / 10
