"""DualChunk against ChunkLlama's reference rule (HKUNLP/ChunkLlama, chunkllama_attn_replace.py).

The reference rotates queries that read chunks older than the previous one with its next-chunk
table ``min(r + c, chunk_size)`` read at its last row ``r = c - 1``: at ``chunk_size`` only while
``2 * local_window < chunk_size``, at ``2c - 1`` beyond. formulas.py transcribes that rule densely;
(48, 30) is a wide local window, (48, 8) a usual one.
"""

import pytest
import torch
from conftest import logits, tiny_model
from formulas import formula_attention
from test_plans import run
from transformers import AttentionInterface, AttentionMaskInterface

import longreach

TRAINED = 64
SETTINGS = [longreach.DualChunk(48, 30, mscale=False), longreach.DualChunk(48, 8, mscale=False)]


def case(method, n_query: int, **changes) -> dict:
    """An engine case on 120 keys: older chunks are read from key 36 (c = 18) or 80 (c = 40) on."""
    return dict(
        method=method,
        batch=1,
        kv_heads=2,
        group=2,
        head_dim=16,
        rotary_fraction=1.0,
        interleaved=False,
        n_key=120,
        n_query=n_query,
        pad=0,
        trained=TRAINED,
        tile=16,
        seed=5,
        **changes,
    )


@pytest.mark.parametrize("n_query", [120, 30, 1], ids=["prefill", "chunk", "decoding"])
@pytest.mark.parametrize("method", SETTINGS, ids=lambda m: m.spec())
def test_plan_attention_matches_the_reference_rule(method, n_query):
    got, expected = run(case(method, n_query))
    torch.testing.assert_close(got.double(), expected, atol=3e-5, rtol=1e-4)


def reference_logits(method, ids: torch.Tensor) -> torch.Tensor:
    """Logits of a tiny Llama whose attention is formulas.py's dense transcription of the rule.

    Every position id is 0, so the model hands its attention unrotated queries and keys; the
    formula rotates each (query, key) pair itself from the true positions 0..n-1.
    """
    model = tiny_model("llama", max_position_embeddings=TRAINED)
    inv_freq = model.model.rotary_emb.inv_freq
    positions = torch.arange(ids.shape[1])

    def attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        out = formula_attention(
            method,
            query,
            key,
            value,
            inv_freq,
            interleaved=False,
            query_positions=positions,
            key_positions=positions,
            scale=scaling,
            trained_length=TRAINED,
        )
        return out.to(query.dtype).transpose(1, 2).contiguous(), None

    name = "dual-chunk-formula-test"
    AttentionInterface.register(name, attention)
    AttentionMaskInterface.register(name, lambda *args, **kwargs: None)
    model.config._attn_implementation = name
    return logits(model, ids, position_ids=torch.zeros_like(ids))


@pytest.mark.parametrize("method", SETTINGS, ids=lambda m: m.spec())
def test_tiny_llama_logits_match_the_reference_rule(method):
    ids = torch.randint(3, 128, (1, 120), generator=torch.Generator().manual_seed(4))
    model = longreach.extend(tiny_model("llama", max_position_embeddings=TRAINED), method)
    torch.testing.assert_close(logits(model, ids), reference_logits(method, ids), atol=2e-5, rtol=1e-5)


def plan_pairs(method, length: int):
    """Per part: the (query, key) positions it rotates every causal pair to, and its spans."""
    i = torch.arange(length)
    pairs = []
    for part in method.parts():
        lo, hi = part.key_span(i)
        q = part.query_position(i) if part.query_position is not None else i
        j = torch.arange(length)
        k = part.key_position(j) if part.key_position is not None else j
        inside = (j[None, :] >= lo[:, None]) & (j[None, :] < hi[:, None])
        pairs.append((q, k, inside, lo, hi))
    return pairs


@pytest.mark.parametrize(
    ("chunk_size", "local_window"),
    [(48, 30), (48, 8), (48, 23), (48, 24), (48, 25), (48, 0), (48, 47), (12, 3), (2, 1), (5, 2)],
)
def test_check_model_refuses_exactly_the_distances_the_plan_reaches(chunk_size, local_window):
    method = longreach.DualChunk(chunk_size, local_window)
    c = chunk_size - local_window
    largest = 0
    covered = torch.zeros(4 * chunk_size, 4 * chunk_size, dtype=torch.int64)
    for q, k, inside, lo, hi in plan_pairs(method, 4 * chunk_size):
        # Spans stay non-decreasing in the query position (what the engine and caches rely on).
        assert (lo.diff() >= 0).all() and (hi.diff() >= 0).all()
        distances = q[:, None] - k[None, :]
        assert (distances[inside] >= 0).all()
        largest = max(largest, int(distances[inside].max()))
        covered += inside.long()
    # The parts split the causal triangle: each pair once, none above the diagonal.
    assert torch.equal(covered, torch.ones_like(covered).tril())
    assert largest == min(2 * c - 1, chunk_size)
    method.check_model(largest + 1)
    with pytest.raises(ValueError, match=f"reaches rotary distance {largest}, but the model was trained to"):
        method.check_model(largest)


def test_a_wide_local_window_fits_models_a_chunk_size_would_not():
    """(48, 30) reaches distance 35 (2c - 1), not 48: a model trained to 40 tokens takes it."""
    model = longreach.extend(tiny_model("llama", max_position_embeddings=40), longreach.DualChunk(48, 30))
    assert longreach.current_method(model) == longreach.DualChunk(48, 30)
    with pytest.raises(ValueError, match="chunk_size=48, local_window=30 reaches rotary distance 35"):
        longreach.DualChunk(48, 30).check_model(35)
