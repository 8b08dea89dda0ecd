"""Cost of appending one decoded token to every layer's cache: transformers' DynamicLayer
(torch.cat of everything held) against LongReach's AppendingLayer (in place).

    .venv/bin/python benchmarks/cache_append.py --length 32768 --layers 30 --kv-heads 3 --head-dim 64
"""

from __future__ import annotations

import argparse
import time

import torch
from transformers.cache_utils import DynamicLayer

from longreach.cache import AppendingLayer


def ms_per_token(layer_class: type[DynamicLayer], length: int, layers: int, kv_heads: int, head_dim: int,
                 steps: int) -> float:
    cache = [layer_class() for _ in range(layers)]
    for layer in cache:
        layer.update(torch.randn(1, kv_heads, length, head_dim), torch.randn(1, kv_heads, length, head_dim))
    token = torch.randn(1, kv_heads, 1, head_dim)
    started = time.process_time()
    for _ in range(steps):
        for layer in cache:
            layer.update(token, token)
    return (time.process_time() - started) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--kv-heads", type=int, default=3)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    for layer_class in (DynamicLayer, AppendingLayer):
        ms = ms_per_token(layer_class, args.length, args.layers, args.kv_heads, args.head_dim, args.steps)
        print(f"{layer_class.__name__:>15}: {ms:7.1f} ms per token (CPU time, {args.steps} steps)")


if __name__ == "__main__":
    main()
