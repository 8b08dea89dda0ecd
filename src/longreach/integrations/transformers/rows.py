"""Batch rows under padding: where each row's positions start, and which rows attend together.

The key at cache index ``k`` of a row is at position ``k - offset``, where ``offset`` is the row's
(cache index - position) of its queries: left padding gives per-row offsets, and rows sharing one
attend together. Rows whose padding has holes among real positions (right padding, gaps) attend
alone, with the mask applied to every piece.
"""

from __future__ import annotations

import torch


def row_offsets(
    position_ids: torch.Tensor | None, mask: torch.Tensor | None, batch: int, query_index: torch.Tensor
) -> tuple[list[int], list[bool]]:
    """Per row, sequence index minus RoPE position (left padding shifts it); and whether the row's
    padding mask has holes among real positions (anything but left padding)."""
    query_index = query_index.to("cpu")
    n_query = query_index.numel()
    if position_ids is None:
        position_ids = query_index[None]
    position_ids = position_ids.to("cpu").expand(batch, n_query)
    if mask is None:
        query_valid = torch.ones(batch, n_query, dtype=torch.bool)
    else:
        mask = mask.to("cpu")
        query_valid = mask[:, query_index]
    offsets_per_query = query_index[None] - position_ids
    last_valid = torch.where(query_valid, torch.arange(n_query)[None], -1).max(dim=1).values.clamp_min(0)
    offsets = offsets_per_query.gather(1, last_valid[:, None]).squeeze(1)
    if mask is not None and not bool(query_valid.any(dim=1).all()):
        # A call that is all padding for a row (a chunk of a left-padded prompt) has no position
        # to read the offset from: the row's first real token is at position 0.
        real = mask.to(torch.bool)
        first_real = torch.where(real.any(dim=1), real.to(torch.int8).argmax(dim=1), mask.shape[-1])
        offsets = torch.where(query_valid.any(dim=1), offsets, first_real)
    if bool(((offsets_per_query != offsets[:, None]) & query_valid).any()):
        raise ValueError(
            "LongReach needs consecutive position_ids within each row (left padding is fine); "
            "packed sequences or custom positions are not supported"
        )
    has_holes = [False] * batch
    if mask is not None:
        key_index = torch.arange(mask.shape[-1])[None]
        holes = (~mask) & (key_index >= offsets[:, None])
        has_holes = holes.any(dim=1).tolist()
    return offsets.tolist(), has_holes


def row_groups(offsets: list[int], has_holes: list[bool]) -> list[tuple[list[int], int]]:
    """Rows sharing an offset and free of holes run together; a row with holes runs alone."""
    groups: dict[int, list[int]] = {}
    single = []
    for row, (offset, holes) in enumerate(zip(offsets, has_holes, strict=True)):
        if holes:
            single.append(([row], offset))
        else:
            groups.setdefault(offset, []).append(row)
    return [(rows, offset) for offset, rows in groups.items()] + single
