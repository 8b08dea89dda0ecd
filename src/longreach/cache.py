"""A DynamicCache that also remembers keys already re-rotated by a method's parts.

A part such as SelfExtend's grouped attention moves every cached key to another position; doing
that again at each decoding step costs O(n d) per layer. The cache keeps, per layer and part, the
re-rotated keys it has already computed, so a step rotates only the new keys. Everything that
changes the cache other than appending (reset, crop, beam reordering, batch selection) forgets
them.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


class LongReachCache(DynamicCache):
    """``DynamicCache`` plus re-rotated keys per (layer, rows, offset) and part.

    ``extend()`` adopts the plain ``DynamicCache`` that ``generate()`` or the user passes (its
    class becomes this subclass; contents and behaviour are unchanged), so nothing needs to be
    passed by hand.

    Example:
        >>> cache = LongReachCache()
        >>> cache.get_seq_length()
        0
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rotated_keys: dict = {}

    @classmethod
    def adopt(cls, cache: object) -> LongReachCache | None:
        """Turn a plain ``DynamicCache`` into a ``LongReachCache`` in place; None for other caches."""
        if type(cache) is DynamicCache:
            cache.__class__ = cls
            cache.rotated_keys = {}
        return cache if isinstance(cache, LongReachCache) else None

    def store(self, layer_idx: int, rows: tuple[int, ...], offset: int) -> dict:
        """The re-rotated keys of one layer for the given batch rows and position offset."""
        return self.rotated_keys.setdefault((layer_idx, rows, offset), {})

    def reset(self) -> None:
        self.rotated_keys = {}
        super().reset()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.rotated_keys = {}
        super().reorder_cache(beam_idx)

    def crop(self, tokens_to_remove: int) -> None:
        self.rotated_keys = {}
        super().crop(tokens_to_remove)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self.rotated_keys = {}
        super().batch_repeat_interleave(repeats)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.rotated_keys = {}
        super().batch_select_indices(indices)
