"""vLLM's CPU backend (``CPU_ATTN``) with a LongReach plan: its own attention without a method.

vLLM's CPU kernels keep the cache in a layout of their own; with a plan, keys and values are
written in the plain layout :mod:`~longreach.integrations.vllm.backend` reads back.
"""

from __future__ import annotations

from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from longreach.integrations.vllm.backend import PlanAttention


class LongReachCPUAttentionBackend(CPUAttentionBackend):
    """vLLM's ``CPU_ATTN`` backend with :class:`LongReachCPUAttentionImpl` as its implementation."""

    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return LongReachCPUAttentionImpl


class LongReachCPUAttentionImpl(PlanAttention, CPUAttentionBackendImpl):
    """Runs the engine's plan; defers to vLLM's CPU attention when there is none."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._take_plan()

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        if self.plan is None:
            return super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        head_size = key.shape[-1]
        block_size = kv_cache.shape[2]
        slots = slot_mapping[: key.shape[0]]
        real = slots >= 0  # padding tokens have no slot
        slots, key, value = slots[real], key[: real.numel()][real], value[: real.numel()][real]
        blocks, offsets = slots // block_size, slots % block_size
        kv_cache[blocks, :, offsets, :head_size] = key.to(kv_cache.dtype)
        kv_cache[blocks, :, offsets, head_size:] = value.to(kv_cache.dtype)
