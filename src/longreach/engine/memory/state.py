"""What InfLLM keeps per layer and group of batch rows between calls, and what it needs to know
about its settings. The cache owns the states; the attention updates them; the cache then drops
the keys a state no longer holds (:meth:`MemoryState.resident`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from longreach.engine.memory.store import BlockStore
from longreach.methods.base import Part


class MemorySettings(Protocol):
    """What the block-memory attention reads from its method (InfLLM's config provides it)."""

    n_init: int  # first tokens kept in memory for good
    n_local: int  # the local window; memory tokens are seen at distance n_local - 1
    block_size: int
    topk: int  # blocks retrieved per execution block
    block_scoring: str  # how blocks are ranked: "representative" or "best-key" (see block_relevance)
    repr_topk: int  # most-attended keys averaged into a block's representative
    exec_block: int  # queries per execution block
    max_cached_blocks: int
    storage: str  # "auto", "ram" or "mmap"
    storage_dir: str | None

    def local_start(self, i: torch.Tensor) -> torch.Tensor: ...

    def parts(self) -> tuple[Part, ...]: ...

    # Where memory sits: the part over held memory keys, and the retrieved blocks' key positions
    def memory_part(self, blocks_end: int, retrieved: int) -> Part: ...

    def block_key_positions(self, blocks_end: int, retrieved: int) -> torch.Tensor | None: ...


@dataclass
class MemoryState:
    """One layer's block memory for one group of batch rows.

    Example:
        >>> state = MemoryState(n_init=2, blocks_end=6)
        >>> state.resident(torch.arange(8)).tolist()
        [True, True, False, False, False, False, True, True]
    """

    n_init: int
    blocks_end: int  # position where the next block starts: n_init + blocks * block_size
    scores: torch.Tensor | None = None  # (rows, kv_heads, held keys): attention received in the window
    store: BlockStore | None = None

    @classmethod
    def empty(cls, settings: MemorySettings) -> MemoryState:
        """A memory that holds no block yet."""
        return cls(n_init=settings.n_init, blocks_end=settings.n_init)

    def resident(self, key_positions: torch.Tensor) -> torch.Tensor:
        """Which keys (by position) are still read from the cache: the first tokens and every
        token not yet moved into a block."""
        return (key_positions < self.n_init) | (key_positions >= self.blocks_end)

    def keep(self, kept: torch.Tensor) -> None:
        """Follow the cache layer dropping keys: ``kept`` (held keys,) bool."""
        if self.scores is not None:
            self.scores = self.scores[:, :, kept.to(self.scores.device)]


def storage_for(settings: MemorySettings, device: torch.device) -> str:
    """The block storage ``settings.storage`` means on ``device``."""
    if settings.storage == "auto":
        return "pinned" if device.type == "cuda" else "ram"
    return settings.storage
