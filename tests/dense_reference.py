"""A dense O(n^2) reference of plan attention, written straight from the definitions.

It starts from unrotated queries and keys, rotates each part's pairs to the part's positions with
complex multiplication (independent of ``RotaryLayout.rotate``), builds the full score matrix and
takes one softmax. Only for tests and small inputs.
"""

from __future__ import annotations

import torch

from longreach.methods.base import Part


def rope(x: torch.Tensor, positions: torch.Tensor, inv_freq: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """Rotate unrotated ``x`` (..., N, D) to ``positions`` (N,) in float64."""
    rot = 2 * inv_freq.numel()
    x = x.to(torch.float64)
    head, rest = x[..., :rot], x[..., rot:]
    if interleaved:
        pairs = torch.complex(head[..., 0::2], head[..., 1::2])
    else:
        pairs = torch.complex(head[..., : rot // 2], head[..., rot // 2 :])
    angles = positions.to(torch.float64)[:, None] * inv_freq.to(torch.float64)[None, :]
    turned = pairs * torch.polar(torch.ones_like(angles), angles)
    if interleaved:
        head = torch.stack((turned.real, turned.imag), dim=-1).flatten(-2)
    else:
        head = torch.cat((turned.real, turned.imag), dim=-1)
    return torch.cat((head, rest), dim=-1)


def reference_attention(
    raw_query: torch.Tensor,
    raw_key: torch.Tensor,
    value: torch.Tensor,
    parts: tuple[Part, ...],
    inv_freq: torch.Tensor,
    *,
    interleaved: bool,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    scale: float,
    key_valid: torch.Tensor | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """(B, Hq, Nq, D) float64 output of the plan on unrotated q (B, Hq, Nq, D), k (B, Hkv, Nk, D)."""
    group = raw_query.shape[1] // raw_key.shape[1]
    i = query_positions[:, None]
    j = key_positions[None, :]
    allowed_anywhere = (j <= i) & (j >= 0)
    if key_valid is not None:
        allowed_anywhere &= key_valid[None, :]
    if sliding_window is not None:
        allowed_anywhere &= i - j < sliding_window
    scores = torch.full(
        (raw_query.shape[0], raw_query.shape[1], len(query_positions), len(key_positions)),
        float("-inf"),
        dtype=torch.float64,
    )
    covered = torch.zeros(len(query_positions), len(key_positions), dtype=torch.bool)
    for part in parts:
        lo, hi = part.key_span(query_positions)
        region = (j >= lo[:, None]) & (j < hi[:, None]) & allowed_anywhere
        if bool((region & covered).any()):
            raise AssertionError(f"part {part.name!r} overlaps an earlier part")
        covered |= region
        q_at = part.query_position(query_positions) if part.query_position else query_positions
        k_at = part.key_position(key_positions) if part.key_position else key_positions
        q = rope(raw_query, q_at, inv_freq, interleaved)
        k = rope(raw_key, k_at, inv_freq, interleaved).repeat_interleave(group, dim=1)
        part_scores = (q @ k.transpose(-1, -2)) * scale
        if softcap is not None:
            part_scores = softcap * torch.tanh(part_scores / softcap)
        scores = torch.where(region, part_scores, scores)
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return weights @ value.to(torch.float64).repeat_interleave(group, dim=1)
