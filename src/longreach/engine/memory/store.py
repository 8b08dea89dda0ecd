"""InfLLM's block memory: where the distant context lives, and how a block is found again.

A :class:`BlockStore` holds, for one layer and one group of batch rows, every block that left the
local window: its keys (already at position 0) and values per (row, KV head), and one
representative key per block and KV head, which retrieval scores against the queries. Blocks are
written once and only read after that.

Where blocks live (``storage``):

* ``"ram"``: growing tensors on the compute device; retrieval gathers straight from them.
* ``"pinned"``: pinned CPU memory, with at most ``max_cached_blocks`` blocks per (row, KV head)
  on the compute device (a GPU), least recently used evicted first.
* ``"mmap"``: memory-mapped files (created unlinked in ``directory`` or a temporary folder, so
  nothing is left behind), with the same LRU cache in RAM; pages are released from the process
  after every access, so RAM holds the representatives and the cached blocks, whatever the length.

Representatives always stay on the compute device: they are D floats per block and KV head.

Bounded blocks are not enough on CPU: :func:`~longreach.engine.memory.heap.release_free_heap`
keeps the C heap from growing with the input's length.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections import OrderedDict

import torch

#: Blocks per storage segment: segments are allocated whole, so the store grows without copying.
SEGMENT_BLOCKS = 64


class BlockStore:
    """Blocks of one layer for ``rows`` batch rows and ``kv_heads`` KV heads.

    Example:
        >>> store = BlockStore(rows=1, kv_heads=2, block_size=4, head_dim=8, dtype=torch.float32,
        ...                    device=torch.device("cpu"), storage="ram", max_cached_blocks=4)
        >>> keys = torch.randn(1, 2, 4, 8)
        >>> store.add(keys, keys, keys.mean(dim=2))
        >>> store.gather(torch.zeros(1, 2, 1, dtype=torch.long))[0].shape
        torch.Size([1, 2, 4, 8])
    """

    def __init__(
        self,
        *,
        rows: int,
        kv_heads: int,
        block_size: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
        storage: str,
        max_cached_blocks: int,
        directory: str | None = None,
    ) -> None:
        if storage not in ("ram", "pinned", "mmap"):
            raise ValueError(f"unknown block storage {storage!r}; use ram, pinned or mmap")
        self.rows, self.kv_heads, self.block_size, self.head_dim = rows, kv_heads, block_size, head_dim
        self.dtype, self.device, self.storage = dtype, device, storage
        self.directory = directory
        self.count = 0
        self._representatives = torch.empty(rows, kv_heads, 0, head_dim, dtype=torch.float32, device=device)
        # Each segment: (keys, values), each (rows, kv_heads, SEGMENT_BLOCKS, block_size, head_dim).
        self._segments: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._maps: list[mmap.mmap] = []
        self.max_cached_blocks = max_cached_blocks
        self._cached = storage != "ram"
        if self._cached:
            shape = (rows, kv_heads, max_cached_blocks, block_size, head_dim)
            self._slot_keys = torch.empty(shape, dtype=dtype, device=device)
            self._slot_values = torch.empty(shape, dtype=dtype, device=device)
            # Per (row, head): block id -> slot, oldest use first.
            self._lru: list[OrderedDict[int, int]] = [OrderedDict() for _ in range(rows * kv_heads)]
        self.loads = 0  # blocks copied into the cache (misses), for benchmarks

    @property
    def representatives(self) -> torch.Tensor:
        """(rows, kv_heads, count, head_dim) float32: one representative key per block."""
        return self._representatives[:, :, : self.count]

    def cached_blocks(self) -> list[int]:
        """Blocks held on the compute device per (row, KV head); empty for ``"ram"`` storage."""
        return [len(lru) for lru in self._lru] if self._cached else []

    def add(self, keys: torch.Tensor, values: torch.Tensor, representative: torch.Tensor) -> None:
        """Append one block: keys and values (rows, kv_heads, block_size, head_dim) at position 0,
        and its representative (rows, kv_heads, head_dim)."""
        segment, slot = divmod(self.count, SEGMENT_BLOCKS)
        if segment == len(self._segments):
            self._segments.append(self._new_segment())
        seg_keys, seg_values = self._segments[segment]
        seg_keys[:, :, slot].copy_(keys)
        seg_values[:, :, slot].copy_(values)
        self._release(segment)
        if self.count == self._representatives.shape[2]:
            grown = self._representatives.new_empty((self.rows, self.kv_heads, max(16, 2 * self.count), self.head_dim))
            grown[:, :, : self.count] = self._representatives[:, :, : self.count]
            self._representatives = grown
        self._representatives[:, :, self.count] = representative.to(torch.float32)
        self.count += 1

    def gather(self, block_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of the blocks ``block_ids`` (rows, kv_heads, k) names, as
        (rows, kv_heads, k * block_size, head_dim) on the compute device."""
        rows, heads, k = block_ids.shape
        if not self._cached and bool((block_ids == block_ids[:, :1]).all()):
            return self._read_shared(block_ids[:, 0].tolist())
        if self._cached:
            slots = self._load(block_ids)
            r = torch.arange(rows, device=self.device)[:, None, None]
            h = torch.arange(heads, device=self.device)[None, :, None]
            keys, values = self._slot_keys[r, h, slots], self._slot_values[r, h, slots]
        else:
            ids = block_ids.to("cpu")
            r = torch.arange(rows)[:, None, None].expand_as(ids)
            h = torch.arange(heads)[None, :, None].expand_as(ids)
            keys, values = self._read(r.flatten(), h.flatten(), ids.flatten())
        shape = (rows, heads, k * self.block_size, self.head_dim)
        return keys.reshape(shape), values.reshape(shape)

    def best_key_scores(self, probe: torch.Tensor) -> torch.Tensor:
        """(rows, kv_heads, G, count) float32: per block, the best dot product of any of its keys
        with ``probe`` (rows, kv_heads, G, head_dim). Reads every stored key, segment by segment."""
        scores = []
        for segment, (keys, _) in enumerate(self._segments):
            filled = min(SEGMENT_BLOCKS, self.count - segment * SEGMENT_BLOCKS)
            if filled <= 0:
                break
            block_keys = keys[:, :, :filled].to(self.device)  # (rows, kv_heads, blocks, block_size, D)
            products = torch.einsum("bhgd,bhnsd->bhgns", probe.to(block_keys.dtype), block_keys)
            scores.append(products.amax(dim=-1).to(torch.float32))
            self._release(segment)
        return torch.cat(scores, dim=-1)

    def _read_shared(self, block_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks that every KV head of a row reads (retrieval ranks once per layer): each block is
        a slice of its segment, so one copy joins a row's blocks."""
        read = []
        for which in (0, 1):
            rows = [
                torch.cat([self._segments[b // SEGMENT_BLOCKS][which][r, :, b % SEGMENT_BLOCKS] for b in ids], dim=1)
                for r, ids in enumerate(block_ids)
            ]
            read.append(rows[0][None] if len(rows) == 1 else torch.stack(rows))
        return read[0], read[1]

    def _read(self, rows: torch.Tensor, heads: torch.Tensor, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Blocks straight from storage, one per (row, head, block) entry of the three (M,) CPU index
        tensors: keys and values (M, block_size, head_dim), on the storage's device. Each segment
        is read once and, when memory-mapped, released after."""
        segment_of, slot_of = blocks // SEGMENT_BLOCKS, blocks % SEGMENT_BLOCKS
        # Entries of a segment viewed as (rows * kv_heads * SEGMENT_BLOCKS, block_size, head_dim).
        flat = ((rows * self.kv_heads + heads) * SEGMENT_BLOCKS + slot_of).to(self._segments[0][0].device)
        keys, values, order = [], [], []
        for segment in torch.unique(segment_of).tolist():
            chosen = torch.nonzero(segment_of == segment).flatten()
            index = flat[chosen]
            for read, stored in zip((keys, values), self._segments[segment], strict=True):
                read.append(stored.view(-1, self.block_size, self.head_dim).index_select(0, index))
            order.append(chosen)
            self._release(segment)
        if len(order) == 1:  # one segment: already in the order asked
            return keys[0], values[0]
        # Back to the order asked: position of each entry in the concatenation.
        where = torch.empty_like(blocks)
        where[torch.cat(order)] = torch.arange(blocks.numel())
        where = where.to(keys[0].device)
        return torch.cat(keys).index_select(0, where), torch.cat(values).index_select(0, where)

    def _load(self, block_ids: torch.Tensor) -> torch.Tensor:
        """Make the blocks resident in the device cache; returns their slots (rows, kv_heads, k)."""
        rows, heads, k = block_ids.shape
        wanted = block_ids.to("cpu").tolist()
        slots = [[[0] * k for _ in range(heads)] for _ in range(rows)]
        misses: list[tuple[int, int, int, int]] = []  # (row, head, block, slot)
        for row in range(rows):
            for head in range(heads):
                lru = self._lru[row * heads + head]
                needed = set(wanted[row][head])
                for n, block in enumerate(wanted[row][head]):
                    if block in lru:
                        lru.move_to_end(block)
                    else:
                        if len(lru) < self.max_cached_blocks:
                            slot = len(lru)
                        else:  # evict the least recently used block this step does not need
                            victim = next(b for b in lru if b not in needed)
                            slot = lru.pop(victim)
                        lru[block] = slot
                        misses.append((row, head, block, slot))
                    slots[row][head][n] = lru[block]
        if misses:
            missed = torch.tensor(misses)
            keys, values = self._read(missed[:, 0], missed[:, 1], missed[:, 2])
            r, h, s = (missed[:, i].to(self.device) for i in (0, 1, 3))
            self._slot_keys[r, h, s] = keys.to(self.device, non_blocking=True)
            self._slot_values[r, h, s] = values.to(self.device, non_blocking=True)
            self.loads += len(misses)
        return torch.tensor(slots, device=self.device)

    def _new_segment(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (self.rows, self.kv_heads, SEGMENT_BLOCKS, self.block_size, self.head_dim)
        if self.storage == "ram":
            return (
                torch.empty(shape, dtype=self.dtype, device=self.device),
                torch.empty(shape, dtype=self.dtype, device=self.device),
            )
        if self.storage == "pinned":
            pin = torch.cuda.is_available()
            return (
                torch.empty(shape, dtype=self.dtype, pin_memory=pin),
                torch.empty(shape, dtype=self.dtype, pin_memory=pin),
            )
        numel = 1
        for n in shape:
            numel *= n
        nbytes = numel * self.dtype.itemsize
        # One unlinked file per segment: the mapping keeps it alive, and nothing is left behind.
        handle, path = tempfile.mkstemp(prefix="longreach-infllm-", suffix=".kv", dir=self.directory)
        try:
            os.ftruncate(handle, 2 * nbytes)
            mapping = mmap.mmap(handle, 2 * nbytes, flags=mmap.MAP_SHARED)
        finally:
            os.close(handle)
            os.unlink(path)
        self._maps.append(mapping)
        keys = torch.frombuffer(mapping, dtype=self.dtype, count=numel, offset=0).view(shape)
        values = torch.frombuffer(mapping, dtype=self.dtype, count=numel, offset=nbytes).view(shape)
        return keys, values

    def _release(self, segment: int) -> None:
        """Drop a memory-mapped segment's pages from the process (the file keeps the data)."""
        if self.storage == "mmap":
            self._maps[segment].madvise(mmap.MADV_DONTNEED)

    def nbytes(self) -> dict[str, int]:
        """Bytes held: in storage, in the device cache, and by the representatives."""
        per_block = 2 * self.rows * self.kv_heads * self.block_size * self.head_dim * self.dtype.itemsize
        cache = 2 * self._slot_keys.numel() * self._slot_keys.element_size() if self._cached else 0
        reps = self._representatives.numel() * self._representatives.element_size()
        return {"storage": per_block * self.count, "cache": cache, "representatives": reps}
