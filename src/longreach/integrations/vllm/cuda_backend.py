"""vLLM's FlashAttention backend (``FLASH_ATTN``, CUDA) with a LongReach plan: its own attention
without a method. UNVERIFIED: written against vLLM 0.32's CUDA code on a machine without a GPU
(docs/architecture.md, "Inside vLLM"); ``benchmarks/device_check.sh`` checks only the engine's CUDA
kernel, since this backend needs a CUDA build of vLLM.

vLLM writes the cache itself (``reshape_and_cache_flash``, before the attention is called) in the
layout :mod:`~longreach.integrations.vllm.backend` reads. The engine's steps are Python with
shapes that change per batch, so CUDA graphs cannot capture this attention: the metadata
builder says so, and vLLM runs those steps eagerly.
"""

from __future__ import annotations

from vllm.v1.attention.backend import AttentionCGSupport
from vllm.v1.attention.backends.flash_attn import (
    FlashAttentionBackend,
    FlashAttentionImpl,
    FlashAttentionMetadataBuilder,
)

from longreach.integrations.vllm.backend import PlanAttention
from longreach.integrations.vllm.settings import plan_of


class LongReachFlashAttentionBackend(FlashAttentionBackend):
    """vLLM's ``FLASH_ATTN`` backend with :class:`LongReachFlashAttentionImpl` as its implementation."""

    @staticmethod
    def get_impl_cls() -> type[FlashAttentionImpl]:
        return LongReachFlashAttentionImpl

    @staticmethod
    def get_builder_cls() -> type[FlashAttentionMetadataBuilder]:
        return LongReachFlashAttentionMetadataBuilder


class LongReachFlashAttentionMetadataBuilder(FlashAttentionMetadataBuilder):
    """FlashAttention's metadata, without CUDA graphs when a method is set."""

    @classmethod
    def get_cudagraph_support(cls, vllm_config, kv_cache_spec) -> AttentionCGSupport:
        if plan_of(vllm_config) is not None:
            return AttentionCGSupport.NEVER
        return super().get_cudagraph_support(vllm_config, kv_cache_spec)


class LongReachFlashAttentionImpl(PlanAttention, FlashAttentionImpl):
    """Runs the engine's plan; defers to vLLM's FlashAttention when there is none."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._take_plan()
