"""Cost of appending one decoded token to every layer's cache: transformers' DynamicLayer
(torch.cat of everything held) against LongReach's AppendingLayer (in place); and for a sliding
window (StreamingLLM, LM-Infinite) of ``--window`` keys after 4 sinks, copying the window each
step (the first EvictingLayer) against LongReach's EvictingLayer (append and drop in place).

    .venv/bin/python benchmarks/cache_append.py --length 32768 --window 8192
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers.cache_utils import DynamicLayer

from longreach.integrations.transformers.cache import AppendingLayer, EvictingLayer

SINKS = 4


def ms_per_token(
    layer_class: type[DynamicLayer], length: int, layers: int, kv_heads: int, head_dim: int, steps: int
) -> float:
    cache = [layer_class() for _ in range(layers)]
    for layer in cache:
        layer.update(torch.randn(1, kv_heads, length, head_dim), torch.randn(1, kv_heads, length, head_dim))
    token = torch.randn(1, kv_heads, 1, head_dim)
    started = time.process_time()
    for _ in range(steps):
        for layer in cache:
            layer.update(token, token)
    return (time.process_time() - started) / steps * 1000


def sliding_ms_per_token(in_place: bool, window: int, layers: int, kv_heads: int, head_dim: int, steps: int) -> float:
    """A window of ``window`` keys after SINKS sinks: each step appends a key and drops the oldest."""
    cache = [EvictingLayer() for _ in range(layers)]
    held = torch.randn(1, kv_heads, SINKS + window, head_dim)
    for layer in cache:
        layer.update(held, held.clone())
    token = torch.randn(1, kv_heads, 1, head_dim)
    kept = torch.ones(SINKS + window + 1, dtype=torch.bool)
    kept[SINKS] = False
    started = time.process_time()
    for _ in range(steps):
        for layer in cache:
            if in_place:
                layer.update(token, token)
                layer.keep(kept)
            else:  # one copy of the window per step
                layer.keys = torch.cat((layer.keys[..., :SINKS, :], layer.keys[..., SINKS + 1 :, :], token), dim=-2)
                layer.values = torch.cat(
                    (layer.values[..., :SINKS, :], layer.values[..., SINKS + 1 :, :], token), dim=-2
                )
    return (time.process_time() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    for layer_class in (DynamicLayer, AppendingLayer):
        ms = ms_per_token(layer_class, args.length, args.layers, args.kv_heads, args.head_dim, args.steps)
        print(f"{layer_class.__name__:>15}: {ms:7.1f} ms per token at {args.length} tokens (CPU time)")
    for in_place in (False, True):
        ms = sliding_ms_per_token(in_place, args.window, args.layers, args.kv_heads, args.head_dim, args.steps)
        name = "EvictingLayer" if in_place else "window copy"
        print(f"{name:>15}: {ms:7.1f} ms per token with a {args.window}-key window (CPU time)")


if __name__ == "__main__":
    main()
