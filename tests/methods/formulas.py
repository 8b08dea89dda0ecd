"""Every method's positions written straight from its definition, pair by pair, and a dense
attention over them: the reference the engine's position plans are checked against.

Nothing here uses a method's parts: for each (query i, key j) the query and key positions and
whether the pair attends come from the formulas in the methods issue (i, j true positions,
d = i - j).
"""

from __future__ import annotations

import math

import torch
from dense_reference import rope

import longreach


def pair_positions(method, i: torch.Tensor, j: torch.Tensor):
    """(query position, key position, attends) for every pair; i (N, 1) and j (1, M) int64."""
    i, j = torch.broadcast_tensors(i, j)
    d = i - j
    attends = torch.ones_like(d, dtype=torch.bool)
    if method.attention in ("model", "model-rope"):
        return i.double(), j.double(), attends
    if isinstance(method, longreach.SelfExtend):
        g, w = method.group_size, method.window
        near = d < w
        q = torch.where(near, i, i // g + w - w // g)
        k = torch.where(near, j, j // g)
        if method.string_offset is not None:  # grouped pairs this far apart are seen closer
            far = ~near & (q - k >= method.string_offset)
            q = torch.where(far, q - method.string_offset + method.local_value, q)
        return q.double(), k.double(), attends
    if isinstance(method, longreach.DualChunk):
        # ChunkLlama's rule: keys at j % c; a query at i % c in the key's chunk, and otherwise at
        # a row of its next-chunk table min(r + c, chunk_size): row i % c for the chunk just
        # before, the last row (r = c - 1) for every older chunk.
        size = method.chunk_size
        c = size - method.local_window

        def next_chunk_row(r):
            return (r + c).clamp_max(size)

        same, previous = i // c == j // c, i // c == j // c + 1
        older = next_chunk_row(torch.full_like(i, c - 1))
        q = torch.where(same, i % c, torch.where(previous, next_chunk_row(i % c), older))
        return q.double(), (j % c).double(), attends
    if isinstance(method, longreach.LMInfinite):
        local = d < method.local_window
        starting = (j < method.n_global) & ~local
        q = torch.where(local, i, i.clamp_max(method.distance_limit))
        k = torch.where(local, j, torch.zeros_like(j))
        return q.double(), k.double(), local | starting
    if isinstance(method, longreach.ReRoPE):
        w, factor = method.window, method.leaky_factor
        near = d < w
        if factor is None:
            far_q, far_k = torch.full_like(i, w).double(), torch.zeros_like(j).double()
        else:
            far_q, far_k = w + (i - w).double() / factor, j.double() / factor
        return torch.where(near, i.double(), far_q), torch.where(near, j.double(), far_k), attends
    if isinstance(method, longreach.String):
        # Near pairs at their true positions; the rest at distance d - shifted_offset + local_value.
        near = d < method.shifted_offset
        q = torch.where(near, i, i - method.shifted_offset + method.local_value)
        return q.double(), j.double(), attends
    if isinstance(method, longreach.StreamingLLM):
        # The rolling cache: tokens 0..i while they fit in n_sink + window slots; after that the
        # sinks in slots 0..n_sink-1 and the last `window` tokens in the slots after them.
        n_sink, window = method.n_sink, method.window
        full = i >= n_sink + window
        sink, recent = j < n_sink, d < window
        slot_of_key = torch.where(sink, j, n_sink + j - (i - window + 1))
        k = torch.where(full, slot_of_key, j)
        q = torch.where(full, torch.full_like(i, n_sink + window - 1), i)
        return q.double(), k.double(), ~full | sink | recent
    if isinstance(method, longreach.InfLLM):
        # Every block retrieved: memory is everything outside the window, at one distance, or
        # (ordered) where it is, with nothing cut out.
        if method.memory_positions == "ordered":
            return i.double(), j.double(), attends
        local = (i < method.n_init + method.n_local) | (d < method.n_local)
        q = torch.where(local, i, torch.full_like(i, method.n_local - 1))
        k = torch.where(local, j, torch.zeros_like(j))
        return q.double(), k.double(), attends
    raise TypeError(f"no formula for {method!r}")


def score_scale(method, i: torch.Tensor, trained_length: int) -> torch.Tensor:
    """Per-query factor on the scores: log-n scaling and DualChunk's temperature (LongReach's
    per-query rule on the length i + 1 each query reads)."""
    scale = torch.ones(i.shape, dtype=torch.float64)
    base = method.log_scale_base
    if base is not None:
        scale = scale * torch.clamp(torch.log(i.clamp_min(0).double() + 1) / math.log(base), min=1.0)
    if isinstance(method, longreach.String) and method.attention_factor is not None:
        scale = scale * method.attention_factor**2
    if isinstance(method, longreach.DualChunk) and method.mscale:
        length = i.clamp_min(0).double() + 1
        m = torch.where(length > trained_length, 0.05 * torch.log(length / trained_length) + 1, 1.0)
        scale = scale * m * m
    return scale


def formula_attention(
    method,
    raw_query,
    raw_key,
    value,
    inv_freq,
    *,
    interleaved,
    query_positions,
    key_positions,
    scale,
    trained_length,
    key_valid=None,
) -> torch.Tensor:
    """Dense float64 attention of unrotated q (B, Hq, Nq, D) over k, v (B, Hkv, Nk, D)."""
    b, hq, nq, dim = raw_query.shape
    nk = raw_key.shape[2]
    group = hq // raw_key.shape[1]
    i, j = query_positions[:, None], key_positions[None, :]
    q_at, k_at, attends = pair_positions(method, i, j)
    attends = attends & (j <= i) & (j >= 0)
    if key_valid is not None:
        attends = attends & key_valid[None, :]
    # Rotate every pair separately: (B, H, Nq*Nk, D) with each pair's own positions.
    q = rope(raw_query.repeat_interleave(nk, dim=2), q_at.flatten(), inv_freq, interleaved)
    k = rope(raw_key.repeat(1, 1, nq, 1), k_at.flatten(), inv_freq, interleaved)
    k = k.repeat_interleave(group, dim=1)
    scores = (q * k).sum(-1).view(b, hq, nq, nk) * scale
    scores = scores * score_scale(method, query_positions, trained_length)[:, None]
    scores = scores.masked_fill(~attends, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ value.double().repeat_interleave(group, dim=1)


def formula_for_inputs(method, x: dict, *, interleaved: bool, trained_length: int, value=None) -> torch.Tensor:
    """:func:`formula_attention` over conftest's ``attention_inputs`` ``x`` (their own values
    unless ``value`` is given: an identity returns the weights)."""
    return formula_attention(
        method,
        x["raw_q"],
        x["raw_k"],
        x["value"] if value is None else value,
        x["inv_freq"],
        interleaved=interleaved,
        query_positions=x["query_positions"],
        key_positions=x["key_positions"],
        scale=x["scale"],
        trained_length=trained_length,
    )
