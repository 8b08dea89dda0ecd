"""The attention backend: vLLM's CPU backend, with a LongReach plan executed over the paged KV
cache when a method is set (vLLM's own attention when none is).

Keys and values are written to the cache as vLLM's model hands them over (keys rotated at their
true positions), in a plain layout this backend reads back: per block, per KV head, per slot, the
key then the value. Per request, the queries' positions are the last ``query length`` of its
``seq_len`` tokens, so chunked prefill, prefix caching and decoding all read the same positions;
the engine re-rotates by position deltas as it does for transformers.
"""

from __future__ import annotations

import torch
from vllm.config import get_current_vllm_config
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from longreach.engine.attention import Scoring, attend
from longreach.integrations.vllm.requests import RUNNING
from longreach.integrations.vllm.rotary import LAYOUTS
from longreach.integrations.vllm.settings import plan_of


class LongReachCPUAttentionBackend(CPUAttentionBackend):
    """vLLM's ``CPU_ATTN`` backend with :class:`LongReachCPUAttentionImpl` as its implementation."""

    @staticmethod
    def get_impl_cls() -> type[CPUAttentionBackendImpl]:
        return LongReachCPUAttentionImpl


class LongReachCPUAttentionImpl(CPUAttentionBackendImpl):
    """Runs the engine's plan; defers to vLLM's CPU attention when there is none."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.plan = plan_of(get_current_vllm_config())
        if self.plan is not None:
            self._refuse_unsupported()

    def _refuse_unsupported(self) -> None:
        if self.alibi_slopes is not None:
            raise ValueError("LongReach: ALiBi models have no RoPE to re-rotate; serve a RoPE model")
        if self.attn_type != "decoder":
            raise ValueError(f"LongReach methods apply to causal decoder attention, not {self.attn_type}")
        if self.is_fp8_kv_cache:
            raise ValueError("LongReach: an fp8 KV cache is not supported yet; use --kv-cache-dtype auto")

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

    def forward(
        self,
        layer,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        if self.plan is None or attn_metadata is None:  # no method, or vLLM's warm-up call
            return super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale
            )
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("LongReach: fused output quantization is not supported")
        layout = LAYOUTS.get(layer.layer_name)
        if layout is None:
            raise RuntimeError(
                f"LongReach: no rotary layout recorded for {layer.layer_name}: the plugin's model-load hook did not "
                "run (is longreach installed in the environment vLLM runs in?)"
            )
        plan = self.plan
        scoring = Scoring(
            layout,
            scale=self.scale,
            softcap=self.logits_soft_cap or None,
            sliding_window=self.sliding_window if self.sliding_window > 0 else None,
            sink_logits=self.sinks,
        )
        head_size = query.shape[-1]
        starts = attn_metadata.query_start_loc.tolist()
        lengths = attn_metadata.seq_lens.tolist()
        request_ids = RUNNING.batch(len(lengths)) if key is not None else None
        for request, seq_len in enumerate(lengths):
            first, last = starts[request], starts[request + 1]
            if last <= first:
                continue

            def read_blocks(count: int, request: int = request) -> tuple[torch.Tensor, torch.Tensor]:
                held = self._read_blocks(kv_cache, attn_metadata.block_table[request], count)
                return held[..., :head_size].to(query.dtype), held[..., head_size:].to(query.dtype)

            context = seq_len - (last - first)
            if request_ids is None:  # no copies kept (or a layer that shares another's cache)
                keys, values = read_blocks(seq_len)
                key_store = None
            else:
                held = RUNNING.extend(
                    request_ids[request],
                    layer.layer_name,
                    context,
                    key[first:last].transpose(0, 1)[None].to(query.dtype),
                    value[first:last].transpose(0, 1)[None].to(query.dtype),
                    read_blocks,
                )
                keys, values, key_store = held.keys, held.values, held.rotated
            query_positions = torch.arange(context, seq_len, device=query.device)
            out = attend(
                query[first:last].transpose(0, 1)[None],
                keys,
                values,
                plan.parts,
                scoring,
                query_positions=query_positions,
                key_positions=torch.arange(seq_len, device=query.device),
                query_scale=plan.method.query_scale(query_positions, plan.trained_length),
                key_store=key_store,
            )
            output[first:last] = out[0].transpose(0, 1).to(output.dtype)
        return output

    @staticmethod
    def _read_blocks(kv_cache: torch.Tensor, block_row: torch.Tensor, count: int) -> torch.Tensor:
        """The first ``count`` tokens of a request from its blocks: (1, Hkv, count, 2 * head size)."""
        block_size = kv_cache.shape[2]
        blocks = block_row[: -(-count // block_size)].to(torch.long)
        heads, width = kv_cache.shape[1], kv_cache.shape[3]
        held = kv_cache[blocks].transpose(0, 1).reshape(heads, blocks.numel() * block_size, width)
        return held[None, :, :count]
