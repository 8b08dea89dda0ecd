"""The cache LongReach decodes with: a DynamicCache that remembers re-rotated keys and, for
methods that drop the middle of the context, evicts keys no later query can see.

A part such as SelfExtend's grouped attention moves every cached key to another position; doing
that again at each decoding step costs O(n d) per layer. The cache keeps, per layer and part, the
re-rotated keys it has already computed, so a step rotates only the new keys. Everything that
changes the cache other than appending (reset, crop, beam reordering, batch selection) forgets
them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

from longreach.engine.append import append_tokens, can_drop_in_place, drop_run
from longreach.engine.memory.state import MemorySettings, MemoryState


class AppendingLayer(DynamicLayer):
    """A ``DynamicLayer`` that appends in place (:func:`~longreach.engine.append.append_tokens`):
    a decoding step writes its token instead of copying every held key and value."""

    @classmethod
    def adopt(cls, layer: DynamicLayer) -> AppendingLayer:
        """Turn a plain ``DynamicLayer`` (possibly holding keys) into an appending one, in place."""
        layer.__class__ = cls
        return layer

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized or self.keys.dim() != key_states.dim():  # nothing held yet
            return super().update(key_states, value_states, *args, **kwargs)
        self.keys = append_tokens(self.keys, key_states)
        self.values = append_tokens(self.values, value_states)
        return self.keys, self.values


class EvictingLayer(DynamicLayer):
    """A cache layer holding only the tokens its method can still attend to.

    ``token_index`` (N,) gives the index in the full sequence of each kept key;
    ``get_seq_length()`` stays the true token count, and masks are sized for the full sequence,
    so generation, positions and padding are unchanged by eviction.
    """

    # What it evicted cannot come back, so crop() refuses (transformers >= 5.24 reads this first).
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self._start_tracking(0)

    def _start_tracking(self, held: int) -> None:
        self.seen = held
        self.token_index = torch.arange(held)

    @classmethod
    def adopt(cls, layer: DynamicLayer) -> EvictingLayer:
        """Turn a plain ``DynamicLayer`` (possibly holding keys) into an evicting one, in place."""
        held = layer.keys.shape[-2] if layer.is_initialized and layer.keys.numel() else 0
        layer.__class__ = cls
        layer._start_tracking(held)
        if layer.is_initialized:
            layer.token_index = layer.token_index.to(layer.keys.device)
        return layer

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = torch.arange(self.seen, self.seen + key_states.shape[-2], device=key_states.device)
        if self.keys.dim() < 2:  # nothing held yet
            self.keys, self.values, self.token_index = key_states, value_states, new
        else:
            self.keys = append_tokens(self.keys, key_states)
            self.values = append_tokens(self.values, value_states)
            self.token_index = torch.cat((self.token_index.to(key_states.device), new))
        self.seen += key_states.shape[-2]
        return self.keys, self.values

    def keep(self, kept: torch.Tensor) -> None:
        """Keep only the keys where ``kept`` (N,) bool is True."""
        if bool(kept.all()):
            return
        runs = _runs(~kept)
        # A sliding window drops its oldest keys, just after the first tokens it keeps: moving
        # those few, in place, is cheaper than copying the window.
        if len(runs) == 1 and all(can_drop_in_place(tensor, *runs[0]) for tensor in (self.keys, self.values)):
            start, stop = runs[0]
            self.keys, self.values = drop_run(self.keys, start, stop), drop_run(self.values, start, stop)
            self.token_index = torch.cat((self.token_index[:start], self.token_index[stop:]))
            return
        index = torch.nonzero(kept).flatten().to(self.keys.device)
        self.keys = self.keys.index_select(2, index)
        self.values = self.values.index_select(2, index)
        self.token_index = self.token_index[index.to(self.token_index.device)]

    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def reset(self) -> None:
        super().reset()
        self._start_tracking(0)

    def crop(self, tokens_to_remove: int) -> None:
        raise ValueError(
            "this cache has evicted tokens its method no longer attends to, so it cannot be rolled back "
            "(crop, as used by assisted decoding); run assisted decoding without an evicting method"
        )


def _check_nothing_dropped(layer: DynamicLayer) -> None:
    held = layer.keys.shape[-2] if layer.is_initialized and layer.keys.numel() else 0
    if isinstance(layer, DynamicSlidingWindowLayer) and layer.cumulative_length > held:
        raise ValueError(
            f"this cache's sliding-window layers already dropped {layer.cumulative_length - held} tokens the "
            "method needs; pass a fresh cache (or none) to the extended model"
        )


def _runs(kept: torch.Tensor) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of True in a bool vector."""
    flags = kept.to("cpu", torch.int8)
    edges = torch.diff(flags, prepend=flags.new_zeros(1), append=flags.new_zeros(1))
    starts = torch.nonzero(edges == 1).flatten().tolist()
    stops = torch.nonzero(edges == -1).flatten().tolist()
    return list(zip(starts, stops, strict=True))


class LongReachCache(DynamicCache):
    """``DynamicCache`` plus re-rotated keys per (layer, rows, offset) and part.

    ``extend()`` adopts the plain ``DynamicCache`` that ``generate()`` or the user passes (its
    class becomes this subclass; contents and behaviour are unchanged), so nothing needs to be
    passed by hand. Its plain layers become :class:`AppendingLayer`, or :class:`EvictingLayer` for
    methods that drop keys.

    Example:
        >>> cache = LongReachCache()
        >>> cache.get_seq_length()
        0
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rotated_keys: dict = {}
        self.memory_states: dict = {}

    @classmethod
    def adopt(cls, cache: object, *, layer_class: type[DynamicLayer] | None = None) -> LongReachCache | None:
        """Turn a plain ``DynamicCache`` into a ``LongReachCache`` in place; None for other caches.
        With ``layer_class`` its plain (or merely appending) layers become that class."""
        if type(cache) is DynamicCache:
            cache.__class__ = cls
            cache.rotated_keys = {}
            cache.memory_states = {}
        if not isinstance(cache, LongReachCache):
            return None
        if layer_class is not None:
            # An evicting method keeps exactly what it still attends to, so a model's sliding window
            # must not drop keys on its own (InfLLM's first tokens and leftovers lie beyond it).
            adoptable = (DynamicLayer, AppendingLayer) + (
                (DynamicSlidingWindowLayer,) if layer_class is EvictingLayer else ()
            )
            for layer in cache.layers:
                if type(layer) in adoptable:
                    _check_nothing_dropped(layer)
                    layer_class.adopt(layer)
            if cache.layer_class_to_replicate in (DynamicLayer, AppendingLayer):
                cache.layer_class_to_replicate = layer_class
        return cache

    def token_index(self, layer_idx: int, n_key: int) -> torch.Tensor:
        """Index in the full sequence of each of the ``n_key`` keys the layer just returned."""
        layer = self.layers[layer_idx]
        if isinstance(layer, EvictingLayer):
            return layer.token_index
        total = layer.get_seq_length()  # a sliding-window layer returns only its last keys
        return torch.arange(total - n_key, total)

    def evict(self, layer_idx: int, kept: torch.Tensor) -> None:
        layer = self.layers[layer_idx]
        if isinstance(layer, EvictingLayer):
            layer.keep(kept)

    def store(self, layer_idx: int, rows: tuple[int, ...], offset: int) -> dict | None:
        """The re-rotated keys of one layer for the given batch rows and position offset; None on
        an evicting or sliding-window layer, whose keys do not only grow by appending."""
        if isinstance(self.layers[layer_idx], (EvictingLayer, DynamicSlidingWindowLayer)):
            return None
        return self.rotated_keys.setdefault((layer_idx, rows, offset), {})

    def memory_state(self, layer_idx: int, rows: tuple[int, ...], offset: int, settings: MemorySettings) -> MemoryState:
        """The block memory of one layer for the given batch rows and position offset (InfLLM),
        empty on first use. The cache owns it: blocks belong to the rows that wrote them."""
        key = (layer_idx, rows, offset)
        if key not in self.memory_states:
            self.memory_states[key] = MemoryState.empty(settings)
        return self.memory_states[key]

    def drop_stored(self, layer_idx: int) -> None:
        """Drop the layer's keys that every row group's memory has moved into blocks: a key stays
        while any group still reads it from the cache."""
        states = [(offset, state) for (layer, _, offset), state in self.memory_states.items() if layer == layer_idx]
        layer = self.layers[layer_idx]
        if not states or not isinstance(layer, EvictingLayer):
            return
        index = layer.token_index
        kept = torch.zeros(index.shape, dtype=torch.bool, device=index.device)
        for offset, state in states:
            kept |= state.resident(index - offset)
        layer.keep(kept)
        for _, state in states:
            state.keep(kept)

    def _refuse_reshuffle(self, operation: str) -> None:
        if self.memory_states:
            raise ValueError(
                f"{operation} is not supported with a block memory (InfLLM): its blocks belong to the batch "
                "rows that wrote them; use greedy or sampled decoding with one sequence per prompt"
            )

    def reset(self) -> None:
        self.rotated_keys = {}
        self.memory_states = {}
        super().reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._refuse_reshuffle("beam search")
        self.rotated_keys = {}
        super().reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        self.rotated_keys = {}
        super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._refuse_reshuffle("repeating batch rows")
        self.rotated_keys = {}
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._refuse_reshuffle("selecting batch rows")
        self.rotated_keys = {}
        super().batch_select_indices(indices)
