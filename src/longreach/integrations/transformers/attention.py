"""The attention and mask functions registered under ``"longreach"`` in transformers'
``AttentionInterface``: per call, the positions of the rows, the plan executed by the engine, and
what the cache may drop afterwards."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, prepare_padding_mask

from longreach.engine.attention import Scoring, attend
from longreach.engine.eviction import still_visible
from longreach.engine.memo import PositionMemo, remember
from longreach.engine.memory.attend import attend_with_memory
from longreach.engine.memory.state import MemoryState
from longreach.engine.rotary import RotaryLayout
from longreach.integrations.transformers.cache import LongReachCache
from longreach.integrations.transformers.rows import row_groups, row_offsets
from longreach.methods.base import Method, Part
from longreach.methods.coverage import check_length
from longreach.models.config import UnsupportedModelError
from longreach.models.rotary import rope_of

IMPLEMENTATION = "longreach"
#: The attribute of each attention module that holds its model's :class:`Extension`.
STATE = "_longreach"


@dataclass
class ForwardMemo:
    """What every layer of the forward in progress shares, computed by the first layer that needs
    it; the forward pre-hook starts a new one for each forward."""

    #: (queries, keys in the sequence, batch) -> each row's offset and whether its padding has holes
    rows: dict[tuple[int, int, int], tuple[list[int], list[bool]]] = field(default_factory=dict)
    #: (rows, offset, queries, keys held, keys in the sequence, cache layer class, sliding window,
    #: rope kind) -> spans and angles of those positions
    positions: dict[tuple, PositionMemo] = field(default_factory=dict)
    #: (keys held, keys in the sequence, offsets, cache layer class) -> keys some later query sees
    kept: dict[tuple, torch.Tensor] = field(default_factory=dict)


@dataclass
class Extension:
    """What the attention function needs, shared by every attention module of one model."""

    method: Method
    parts: tuple[Part, ...]
    layouts: dict[str | None, RotaryLayout]  # per layer type; key None for a model with one RoPE
    trained_length: int
    rope_type: str
    original_implementation: str
    evicting: bool = False  # the plan drops keys for good: the cache evicts them
    modules: list[torch.nn.Module] = field(default_factory=list)
    hooks: list = field(default_factory=list)  # handles of the forward pre-hooks
    undo: list = field(default_factory=list)  # what restore() calls, in reverse order
    active_cache: LongReachCache | None = None  # the cache of the forward in progress
    memo: ForwardMemo = field(default_factory=ForwardMemo)
    # Per attention layer, found at its first call: the RoPE it applies (see ``rope_of``).
    rope_of_layer: dict[int, tuple[str | None, RotaryLayout]] = field(default_factory=dict)

    @property
    def memory(self) -> bool:
        """Keys leave the cache for a block memory searched per query block (InfLLM)."""
        return self.method.attention == "memory"


def register() -> None:
    """Register the attention and mask functions under ``"longreach"`` (idempotent)."""
    AttentionInterface.register(IMPLEMENTATION, longreach_attention)
    AttentionMaskInterface.register(IMPLEMENTATION, key_padding_mask)


def key_padding_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """Mask function for ``"longreach"``: a (B, kv_offset + kv_length) bool of attendable tokens
    of the whole sequence, or None.

    The engine builds regions itself; all it needs from the mask is padding. A 4D mask would
    cost O(n^2) memory at long lengths.
    """
    if int(kv_offset) + int(kv_length) != int(q_offset) + int(q_length):
        raise ValueError(
            "LongReach needs a cache that grows with the sequence (DynamicCache, the default); "
            "a static or pre-allocated cache is not supported: drop cache_implementation='static'"
        )
    padding = prepare_padding_mask(attention_mask, kv_length + kv_offset, 0)
    if padding is None:
        return None
    # Indexed by position in the whole sequence: a cache that evicts keeps arbitrary tokens.
    padding = padding[:, : kv_offset + kv_length].to(torch.bool)
    if bool(padding.all()):
        return None
    return padding


def longreach_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The registered attention function: query (B, Hq, Nq, D) and key/value (B, Hkv, Nk, D),
    rotated at their true positions, the cache already updated. Returns (B, Nq, Hq, D)."""
    extension: Extension | None = getattr(module, STATE, None)
    if extension is None:
        raise RuntimeError(
            "attention implementation 'longreach' is set but this model was not extended: "
            "call longreach.extend(model, method) rather than setting it by hand"
        )
    _refuse_unsupported(module, extension, dropout, kwargs)
    batch, _, n_query, head_dim = query.shape
    n_key = key.shape[2]
    if attention_mask is not None and attention_mask.dim() != 2:
        raise ValueError(
            "LongReach received a 4D attention mask (passed by the caller, or built by the model itself, as "
            "Doge's dynamic mask is); it takes 2D padding masks (batch, length) only"
        )
    if extension.rope_type == "dynamic" and n_key > n_query:
        raise ValueError(
            "dynamic NTK RoPE recomputes its frequencies on every call while the cached keys keep the "
            "old ones, so cached decoding would be silently wrong: run with use_cache=False or use a "
            "static rope type"
        )
    cache = extension.active_cache
    layer_idx = module.layer_idx
    if cache is not None and layer_idx < len(cache.layers):
        token_index = cache.token_index(layer_idx, n_key).to(query.device)
        total = cache.layers[layer_idx].get_seq_length()
    else:
        total = attention_mask.shape[-1] if attention_mask is not None else n_key
        token_index = torch.arange(total - n_key, total, device=query.device)
    query_index = torch.arange(total - n_query, total, device=query.device)
    memo = extension.memo
    layer_kind = type(cache.layers[layer_idx]).__name__ if cache is not None else None
    offsets, has_holes = remember(
        memo.rows,
        (n_query, total, batch),
        lambda: row_offsets(kwargs.get("position_ids"), attention_mask, batch, query_index),
    )
    method = extension.method
    check_length(method, total - min(offsets), extension.trained_length)
    if layer_idx not in extension.rope_of_layer:
        extension.rope_of_layer[layer_idx] = rope_of(module, extension.layouts)
    rope_kind, layout = extension.rope_of_layer[layer_idx]
    window = kwargs.get("sliding_window")
    scoring = Scoring(
        layout,
        scale=scaling if scaling is not None else head_dim**-0.5,
        softcap=kwargs.get("softcap"),
        sliding_window=window,
        sink_logits=kwargs.get("s_aux"),
    )

    def attend_rows(index, rows: list[int], offset: int) -> torch.Tensor:
        query_positions = query_index - offset
        positions = dict(
            query_positions=query_positions,
            key_positions=token_index - offset,
            query_scale=method.query_scale(query_positions, extension.trained_length),
            memo=remember(
                memo.positions,
                (tuple(rows), offset, n_query, n_key, total, layer_kind, window, rope_kind),
                PositionMemo,
            ),
        )
        if extension.memory:
            if has_holes[rows[0]]:
                raise ValueError(
                    "InfLLM needs each row's tokens contiguous (left padding is fine); this padding mask has holes"
                )
            state = (
                cache.memory_state(layer_idx, tuple(rows), offset, method)
                if cache is not None
                else MemoryState.empty(method)
            )
            return attend_with_memory(query[index], key[index], value[index], method, scoring, state, **positions)
        return attend(
            query[index],
            key[index],
            value[index],
            extension.parts,
            scoring,
            key_valid=attention_mask[rows[0]].to(query.device)[token_index] if has_holes[rows[0]] else None,
            key_store=cache.store(layer_idx, tuple(rows), offset) if cache is not None else None,
            **positions,
        )

    groups = row_groups(offsets, has_holes)
    if len(groups) == 1:  # the common case: no copies of q, k, v
        rows, offset = groups[0]
        output = attend_rows(slice(None), rows, offset)
    else:
        output = torch.empty_like(query)
        for rows, offset in groups:
            index = torch.tensor(rows, device=query.device)
            output[index] = attend_rows(index, rows, offset)
    if cache is not None and extension.memory:
        cache.drop_stored(layer_idx)
    elif cache is not None and extension.evicting:
        kept = remember(
            memo.kept,
            (n_key, total, tuple(offsets), layer_kind),
            lambda: still_visible(extension.parts, token_index, total, set(offsets)),
        )
        cache.evict(layer_idx, kept)
    return output.transpose(1, 2).contiguous(), None


def _refuse_unsupported(module, extension: Extension, dropout: float, kwargs) -> None:
    if extension.memory and kwargs.get("s_aux") is not None:
        raise UnsupportedModelError(
            "InfLLM does not support learned attention sinks (GPT-OSS's s_aux); the other methods do"
        )
    if kwargs.get("sinks") is not None:  # only the s_aux form is merged; any other must not be dropped
        raise UnsupportedModelError("learned attention sinks passed as `sinks` are not supported by LongReach")
    if module.training and dropout > 0:
        raise ValueError("LongReach is for inference: call model.eval() (attention dropout is not supported)")
    if not getattr(module, "is_causal", True):
        raise UnsupportedModelError("LongReach methods apply to causal (decoder) attention only")
