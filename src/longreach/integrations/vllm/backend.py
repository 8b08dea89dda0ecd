"""What a LongReach attention implementation does inside any of vLLM's backends: run the engine's
plan over the paged KV cache when a method is set (the backend's own attention when none is).

The cache holds keys as vLLM's model hands them over (rotated at their true positions) in the
layout this reads back, per block, KV head and slot, the key then the value: the layout of vLLM's
FlashAttention backend, and the one the CPU backend writes for a plan (``cpu_backend``). Per
request, the queries' positions are the last ``query length`` of its ``seq_len`` tokens, so
chunked prefill, prefix caching and decoding all read the same positions; the engine re-rotates
by position deltas as it does for transformers. Running requests' keys and values come from their
contiguous copies (``requests``) when those are current, from the blocks otherwise.
"""

from __future__ import annotations

import torch
from vllm.config import get_current_vllm_config

from longreach.engine.attention import Scoring, attend
from longreach.integrations.vllm.requests import RUNNING
from longreach.integrations.vllm.rotary import LAYOUTS
from longreach.integrations.vllm.settings import Plan, plan_of


class PlanAttention:
    """Mixed into a vLLM attention implementation (before it): ``plan`` is None without a method."""

    plan: Plan | None

    def _take_plan(self) -> None:
        self.plan = plan_of(get_current_vllm_config())
        if self.plan is None:
            return
        if getattr(self, "alibi_slopes", None) is not None:
            raise ValueError("LongReach: ALiBi models have no RoPE to re-rotate; serve a RoPE model")
        if self.attn_type != "decoder":
            raise ValueError(f"LongReach methods apply to causal decoder attention, not {self.attn_type}")
        if str(getattr(self, "kv_cache_dtype", "auto")).startswith("fp8"):
            raise ValueError("LongReach: an fp8 KV cache is not supported yet; use --kv-cache-dtype auto")

    def _window(self) -> int | None:
        """The layer's sliding window in tokens: an int on CPU, FlashAttention's (left, right)."""
        window = self.sliding_window
        if isinstance(window, tuple):
            return window[0] + 1 if window[0] >= 0 else None
        return window if window and window > 0 else None

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
        **kwargs,
    ) -> torch.Tensor:
        if self.plan is None or attn_metadata is None:  # no method, or vLLM's warm-up call
            return super().forward(
                layer, query, key, value, kv_cache, attn_metadata, output, output_scale, output_block_scale, **kwargs
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
            sliding_window=self._window(),
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
