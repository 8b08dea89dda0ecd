"""The engine: attention under a position plan, without ever forming an n x n score matrix.

For each part of the plan the queries and the keys it can see are re-rotated to the part's
positions; then query tiles are walked and, per part, only the keys inside the part's region are
attended: the span every query of the tile sees goes to the kernel unmasked, the ragged edges
(at most a tile wide) with a small mask or the kernel's causal flag. Every piece returns its
log-sum-exp and the pieces merge exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from longreach.engine.append import append_tokens
from longreach.engine.kernels import attention_with_lse, merge_by_lse
from longreach.engine.memo import PositionMemo, Spans, remember
from longreach.engine.rotary import RotaryLayout
from longreach.methods.base import Part

#: Queries per tile: larger tiles mean fewer kernel calls.
TILE = 512
#: A region's bound that steps by at most this many keys between neighbouring queries stays inside a
#: tile as part of a ragged edge (SelfExtend's groups step g keys every g queries); a larger step (a
#: chunk boundary) starts a new tile, so that no edge inside a tile is much wider than the tile.
STAIR = 64


@dataclass(frozen=True)
class Scoring:
    """How a layer scores: the same for every call of the layer.

    ``layout`` re-rotates q and k; ``scale`` multiplies q.k; ``softcap`` then bounds the scores
    (Gemma 2's soft-capping); ``sliding_window`` clips every part at that true distance;
    ``sink_logits`` (Hq,) are learned attention sinks (GPT-OSS): one more logit per head in each
    softmax, with a zero value.

    Example:
        >>> Scoring(RotaryLayout(inv_freq=torch.tensor([1.0, 0.1])), scale=0.5).softcap is None
        True
    """

    layout: RotaryLayout
    scale: float
    softcap: float | None = None
    sliding_window: int | None = None
    sink_logits: torch.Tensor | None = None


@dataclass
class _PartView:
    """One part, prepared for one call: re-rotated q (packed by KV group), spans as key indices."""

    queries: torch.Tensor  # (B, Hkv, G, Nq, D)
    keys: torch.Tensor  # (B, Hkv, span, D), re-rotated keys from index `key_start`
    values: torch.Tensor
    key_start: int
    spans: Spans  # per query, the region's key indices [lo, hi)


def attend(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    parts: tuple[Part, ...],
    scoring: Scoring,
    *,
    query_positions: torch.Tensor,
    key_positions: torch.Tensor,
    query_scale: torch.Tensor | None = None,
    key_valid: torch.Tensor | None = None,
    key_store: dict | None = None,
    memo: PositionMemo | None = None,
    return_lse: bool = False,
    tile: int = TILE,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``query`` over ``key``/``value`` under a position plan, scored by ``scoring``.

    ``query`` (B, Hq, Nq, D) and ``key`` (B, Hkv, Nk, D) are rotated at their true positions,
    which all rows share: ``query_positions`` (Nq,) and ``key_positions`` (Nk,), int64, the latter
    ascending. ``query_scale`` (Nq,) multiplies each query's scores (log-n scaling, attention
    temperature). ``key_valid`` (Nk,) marks keys that may be attended at all (padding holes).
    ``key_store`` (a dict owned by the cache, per layer) keeps re-rotated keys between calls
    whose keys only grew by appending, so decoding rotates only the new keys.
    ``memo`` (kept by the caller for calls with the same positions, e.g. the layers of one
    forward) saves recomputing each part's key spans and rotation angles.
    Returns (B, Hq, Nq, D) in the query's dtype; a query that sees no key gets zeros. With
    ``return_lse`` returns (out in float32, lse (B, Hq, Nq)), for merging with more keys.

    Example:
        >>> q, k = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8)
        >>> pos = torch.arange(6)
        >>> scoring = Scoring(RotaryLayout(inv_freq=torch.tensor([1.0, 0.1, 0.01, 0.001])), scale=8 ** -0.5)
        >>> from longreach.methods.vanilla import Vanilla
        >>> attend(q, k, k, Vanilla().parts(), scoring, query_positions=pos, key_positions=pos).shape
        torch.Size([1, 4, 6, 8])
    """
    batch, q_heads, n_query, head_dim = query.shape
    kv_heads = key.shape[1]
    group = q_heads // kv_heads
    if query_scale is not None:
        query = query * query_scale.to(query.device, torch.float32)[:, None].to(query.dtype)
    memo = memo if memo is not None else PositionMemo()
    prepared = (
        _prepare(part, query, key, value, scoring, query_positions, key_positions, key_store, memo) for part in parts
    )
    views = [view for view in prepared if view is not None]
    out = torch.zeros(batch, kv_heads, group, n_query, head_dim, dtype=torch.float32, device=query.device)
    lse = torch.full((batch, kv_heads, group, n_query), float("-inf"), dtype=torch.float32, device=query.device)
    for start, stop in _tiles(views, n_query, tile):
        rows, first = slice(start, stop), True
        for view in views:
            for piece in _pieces(view, start, stop, key_valid is not None):
                piece_out, piece_lse = _attend_piece(view, piece, key_valid, scoring.scale, scoring.softcap, group)
                if first:  # every piece covers the tile's rows: the first needs no merge
                    out[..., rows, :], lse[..., rows], first = piece_out, piece_lse, False
                else:
                    out[..., rows, :], lse[..., rows] = merge_by_lse(
                        out[..., rows, :], lse[..., rows], piece_out, piece_lse
                    )
    if scoring.sink_logits is not None:  # a key with logit sink_h and value 0, merged like any part
        sinks = scoring.sink_logits.to(lse.device, torch.float32).view(1, kv_heads, group, 1).expand_as(lse)
        out, lse = merge_by_lse(out, lse, torch.zeros_like(out), sinks)
    out = out.reshape(batch, q_heads, n_query, head_dim)
    if return_lse:
        return out, lse.reshape(batch, q_heads, n_query)
    return out.to(query.dtype)


def _prepare(
    part: Part, query, key, value, scoring: Scoring, query_positions, key_positions, key_store, memo: PositionMemo
) -> _PartView | None:
    """The part's spans as key indices and its re-rotated q and k; None when no query sees a key."""
    layout = scoring.layout
    spans = remember(memo.spans, part, lambda: _spans(part, query_positions, key_positions, scoring.sliding_window))
    if spans is None:
        return None
    key_start, key_stop = spans.lo[0], spans.hi[-1]

    queries = query
    if part.query_position is not None:
        angles = remember(
            memo.query_angles, part, lambda: layout.angles(part.query_position(query_positions) - query_positions)
        )
        queries = layout.apply(query, angles)
    keys = key[:, :, key_start:key_stop]
    if part.key_position is not None:
        keys = _rotated_keys(part, key, key_positions, key_start, key_stop, layout, key_store, memo)
    batch, q_heads, n_query, head_dim = query.shape
    kv_heads = key.shape[1]
    queries = queries.reshape(batch, kv_heads, q_heads // kv_heads, n_query, head_dim)
    return _PartView(queries, keys, value[:, :, key_start:key_stop], key_start, spans)


def _spans(part, query_positions, key_positions, sliding_window) -> Spans | None:
    """The part's region as key indices, per query; None when no query sees a key."""
    lo_pos, hi_pos = part.key_span(query_positions)
    hi_pos = torch.minimum(hi_pos, query_positions + 1)
    lo_pos = lo_pos.clamp_min(0)
    if sliding_window is not None:
        lo_pos = torch.maximum(lo_pos, query_positions - sliding_window + 1)
    lo_idx = torch.searchsorted(key_positions, lo_pos)
    hi_idx = torch.maximum(torch.searchsorted(key_positions, hi_pos), lo_idx)
    steps = torch.cat((torch.diff(lo_idx), torch.diff(hi_idx)))
    if bool((steps < 0).any()):
        raise ValueError(f"plan part {part.name!r}: key spans must be non-decreasing in the query position")
    if not bool((hi_idx > lo_idx).any()):
        return None
    lo_steps, hi_steps = torch.diff(lo_idx), torch.diff(hi_idx)

    def breaks(steps: torch.Tensor) -> list[int]:
        return torch.cat((steps.new_zeros(1), torch.cumsum(steps != 1, 0))).tolist()

    cuts = torch.nonzero((lo_steps > STAIR) | (hi_steps > STAIR)).flatten() + 1
    return Spans(lo_idx.tolist(), hi_idx.tolist(), breaks(lo_steps), breaks(hi_steps), cuts.tolist())


def _rotated_keys(part, key, key_positions, start, stop, layout, store, memo: PositionMemo) -> torch.Tensor:
    """Keys [start, stop) at the part's key positions, reusing what ``store`` already holds."""

    def rotate(a: int, b: int) -> torch.Tensor:
        def angles():
            positions = key_positions[a:b]
            return layout.angles(part.key_position(positions) - positions)

        return layout.apply(key[:, :, a:b], remember(memo.key_angles, (part, a, b), angles))

    if store is None:
        return rotate(start, stop)
    # The store holds keys [held_start, held_start + held), appended in place while decoding.
    held_start, held = store.get(part, (start, None))
    held_stop = held_start + (held.shape[2] if held is not None else 0)
    if held is None or held_start > start or held_stop > stop:
        held_start, held = start, rotate(start, stop)
    elif held_stop < stop:
        held = append_tokens(held, rotate(held_stop, stop))
    store[part] = (held_start, held)
    return held[:, :, start - held_start :]


def _tiles(views: list[_PartView], n_query: int, tile: int) -> list[tuple[int, int]]:
    """Query tiles of at most ``tile`` rows, also cut wherever a region's bound steps by more
    than :data:`STAIR` keys between neighbouring queries (chunk boundaries), so that every ragged
    edge inside a tile is at most about a tile wide."""
    cuts = set(range(0, n_query, tile))
    for view in views:
        cuts.update(view.spans.cuts)
    edges = sorted(cuts) + [n_query]
    return [(a, b) for a, b in zip(edges, edges[1:], strict=False) if b > a]


@dataclass(frozen=True)
class _Piece:
    """Query rows [query_start, query_stop) against keys [key_lo, key_hi), attended as
    "full" (unmasked), "causal" (the kernel's top-left causal flag), "anticausal" (the same on
    reversed rows and keys) or "masked"."""

    query_start: int
    query_stop: int
    key_lo: int
    key_hi: int
    kind: str


def _pieces(view: _PartView, start: int, stop: int, has_holes: bool) -> list[_Piece]:
    """Cover the part's region for query rows [start, stop): the keys every row sees as one
    unmasked piece, the ragged edges (at most a tile wide) as causal, anticausal or masked."""
    spans = view.spans
    lo_min, lo_max = spans.lo[start], spans.lo[stop - 1]
    hi_min, hi_max = spans.hi[start], spans.hi[stop - 1]
    if hi_max <= lo_min:
        return []
    if has_holes or lo_max >= hi_min:  # no key seen by every row: one masked piece
        return [_Piece(start, stop, lo_min, hi_max, "masked")]
    pieces = []
    full_start = lo_max
    # A lower edge advancing exactly one key per row is the causal pattern reversed.
    if lo_max > lo_min and spans.lo_breaks[start] == spans.lo_breaks[stop - 1] and lo_max + 1 <= hi_min:
        pieces.append(_Piece(start, stop, lo_min, lo_max + 1, "anticausal"))
        full_start = lo_max + 1
    elif lo_max > lo_min:
        pieces.append(_Piece(start, stop, lo_min, lo_max, "masked"))
    full_stop = hi_min
    upper = None
    # An upper edge advancing exactly one key per row is the kernel's causal pattern.
    if hi_max > hi_min and spans.hi_breaks[start] == spans.hi_breaks[stop - 1] and hi_min - 1 >= full_start:
        full_stop = hi_min - 1
        upper = _Piece(start, stop, hi_min - 1, hi_max, "causal")
    elif hi_max > hi_min:
        upper = _Piece(start, stop, hi_min, hi_max, "masked")
    if full_stop > full_start:
        pieces.append(_Piece(start, stop, full_start, full_stop, "full"))
    if upper is not None:
        pieces.append(upper)
    return pieces


def _attend_piece(view: _PartView, piece: _Piece, key_valid, scale, softcap, group):
    start, stop, key_lo, key_hi, kind = (piece.query_start, piece.query_stop, piece.key_lo, piece.key_hi, piece.kind)
    queries = view.queries[..., start:stop, :]  # (B, Hkv, G, T, D)
    batch, kv_heads, _, rows, head_dim = queries.shape
    keys = view.keys[:, :, key_lo - view.key_start : key_hi - view.key_start]
    values = view.values[:, :, key_lo - view.key_start : key_hi - view.key_start]
    if kind in ("causal", "anticausal"):
        # The causal flag needs query rows in order, so expand the (tile-wide) keys per head.
        # Reversing rows and keys turns "key >= row" into the kernel's "key <= row".
        q = queries.reshape(batch, kv_heads * group, rows, head_dim)
        k = keys.repeat_interleave(group, dim=1)
        v = values.repeat_interleave(group, dim=1)
        if kind == "anticausal":
            q, k, v = q.flip(2), k.flip(2), v.flip(2)
        out, lse = attention_with_lse(q, k, v, scale=scale, causal=True, softcap=softcap)
        if kind == "anticausal":
            out, lse = out.flip(2), lse.flip(2)
        return out.view(batch, kv_heads, group, rows, head_dim), lse.view(batch, kv_heads, group, rows)

    # Pack the query heads of a KV group as extra rows: no copy of keys per head.
    q = queries.reshape(batch, kv_heads, group * rows, head_dim)
    mask = None
    if kind == "masked":
        index = torch.arange(key_lo, key_hi, device=q.device)
        lo = torch.tensor(view.spans.lo[start:stop], device=q.device)[:, None]
        hi = torch.tensor(view.spans.hi[start:stop], device=q.device)[:, None]
        allowed = (index >= lo) & (index < hi)
        if key_valid is not None:
            allowed &= key_valid[key_lo:key_hi]
        mask = allowed.repeat(group, 1)
    out, lse = attention_with_lse(q, keys, values, scale=scale, mask=mask, softcap=softcap)
    out = out.view(batch, kv_heads, group, rows, head_dim)
    lse = lse.view(batch, kv_heads, group, rows)
    if mask is not None:
        empty = ~allowed.any(dim=-1)
        lse = lse.masked_fill(empty, float("-inf"))
        out = out.masked_fill(empty[..., None], 0.0)
    return out, lse
