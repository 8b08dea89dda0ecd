"""Each method's position plan, run by the engine, against its formulas computed densely."""

import pytest
import torch
from conftest import attention_inputs
from dense_reference import rope
from formulas import formula_for_inputs
from hypothesis import given, settings
from hypothesis import strategies as st

import longreach
from longreach.engine.attention import Scoring, attend
from longreach.engine.rotary import RotaryLayout

log_base = st.one_of(st.none(), st.integers(2, 40))


@st.composite
def dual_chunks(draw):
    size = draw(st.integers(2, 24))
    return longreach.DualChunk(
        size, draw(st.integers(0, size - 1)), mscale=draw(st.booleans()), log_scale_base=draw(log_base)
    )


@st.composite
def infllms(draw):
    """InfLLM's plan (every block retrieved): the memory executor is checked in test_infllm."""
    n_local = draw(st.integers(1, 24))
    return longreach.InfLLM(
        n_init=draw(st.integers(0, 6)),
        n_local=n_local,
        block_size=2,
        repr_topk=1,
        exec_block=1,
        log_scale_base=draw(log_base),
    )


@st.composite
def strings(draw):
    offset = draw(st.integers(1, 30))
    return longreach.String(
        shifted_offset=offset,
        local_value=draw(st.integers(0, offset - 1)),
        attention_factor=draw(st.one_of(st.none(), st.floats(0.5, 1.5))),
        log_scale_base=draw(log_base),
    )


@st.composite
def self_extend_strings(draw):
    window = draw(st.integers(1, 20))
    offset = draw(st.integers(window, 30))
    return longreach.SelfExtend(
        group_size=draw(st.integers(1, 6)),
        window=window,
        string_offset=offset,
        local_value=draw(st.integers(0, offset - 1)),
        log_scale_base=draw(log_base),
    )


METHODS = st.one_of(
    self_extend_strings(),
    dual_chunks(),
    infllms(),
    st.builds(
        longreach.LMInfinite,
        local_window=st.integers(1, 30),
        n_global=st.integers(0, 6),
        distance_limit=st.integers(1, 40),
        log_scale_base=log_base,
    ),
    st.builds(longreach.ReRoPE, window=st.integers(1, 30), log_scale_base=log_base),
    st.builds(longreach.ReRoPE, window=st.integers(1, 30), leaky_factor=st.floats(1.0, 8.0), log_scale_base=log_base),
    strings(),
    st.builds(longreach.StreamingLLM, n_sink=st.integers(0, 6), window=st.integers(1, 30), log_scale_base=log_base),
    st.builds(longreach.SelfExtend, group_size=st.integers(1, 6), window=st.integers(1, 30), log_scale_base=log_base),
)


@st.composite
def cases(draw):
    n_key = draw(st.integers(1, 56))
    return dict(
        method=draw(METHODS),
        batch=draw(st.integers(1, 2)),
        kv_heads=draw(st.integers(1, 2)),
        group=draw(st.integers(1, 3)),
        head_dim=draw(st.sampled_from([8, 16])),
        rotary_fraction=draw(st.sampled_from([0.5, 1.0])),
        interleaved=draw(st.booleans()),
        n_key=n_key,
        # n_query == n_key: prefill; fewer: a chunk of a chunked prefill; 1: a decoding step.
        n_query=draw(st.one_of(st.just(n_key), st.just(1), st.integers(1, n_key))),
        pad=draw(st.integers(0, min(4, n_key - 1))),
        trained=draw(st.integers(4, 40)),
        tile=draw(st.integers(1, 20)),
        seed=draw(st.integers(0, 2**16)),
    )


def run(case, kept: torch.Tensor | None = None):
    """(engine output, formula output); with ``kept``, the engine sees only those keys."""
    x = attention_inputs(case)
    method, interleaved, inv_freq = case["method"], case["interleaved"], x["inv_freq"]
    query_positions, key_positions = x["query_positions"], x["key_positions"]
    expected = formula_for_inputs(method, x, interleaved=interleaved, trained_length=case["trained"])
    keys = rope(x["raw_k"], key_positions, inv_freq, interleaved).float()
    kept = torch.ones(case["n_key"], dtype=torch.bool) if kept is None else kept
    got = attend(
        rope(x["raw_q"], query_positions, inv_freq, interleaved).float(),
        keys[:, :, kept],
        x["value"][:, :, kept],
        method.parts(),
        Scoring(RotaryLayout(inv_freq, interleaved), scale=x["scale"]),
        query_positions=query_positions,
        key_positions=key_positions[kept],
        tile=case["tile"],
        query_scale=method.query_scale(query_positions, case["trained"]),
    )
    return got, expected


@settings(max_examples=400, deadline=None)
@given(cases())
def test_plans_match_their_formulas(case):
    got, expected = run(case)
    torch.testing.assert_close(got.double(), expected, atol=3e-5, rtol=1e-4)


@settings(max_examples=150, deadline=None)
@given(cases())
def test_attending_only_retained_keys_changes_nothing(case):
    """Keys a cache drops after the previous call (none seen by later queries) do not matter."""
    from longreach.engine.eviction import still_visible

    first_query = case["n_key"] - case["n_query"]
    kept = torch.cat(
        (
            still_visible(case["method"].parts(), torch.arange(first_query), first_query, {case["pad"]}),
            torch.ones(case["n_query"], dtype=torch.bool),
        )
    )
    full, _ = run(case)
    evicted, _ = run(case, kept)
    torch.testing.assert_close(evicted, full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "method",
    [
        longreach.DualChunk(8, 2, mscale=False),
        longreach.LMInfinite(6, 2, 10),
        longreach.ReRoPE(5),
        longreach.ReRoPE(5, leaky_factor=3.0),
        longreach.String(6, local_value=2),
        longreach.StreamingLLM(2, 6),
    ],
)
def test_methods_change_attention_beyond_their_window(method):
    """The formulas (and so the engine) differ from plain attention on long inputs."""
    case = dict(
        method=method,
        batch=1,
        kv_heads=1,
        group=1,
        head_dim=8,
        rotary_fraction=1.0,
        interleaved=False,
        n_key=40,
        n_query=40,
        pad=0,
        trained=64,
        tile=8,
        seed=3,
    )
    got, expected = run(case)
    vanilla, _ = run({**case, "method": longreach.Vanilla()})
    assert (got - vanilla).abs().max() > 1e-2
    torch.testing.assert_close(got.double(), expected, atol=3e-5, rtol=1e-4)
