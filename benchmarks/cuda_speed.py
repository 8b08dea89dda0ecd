"""Prefill and decode speed of the methods on a CUDA GPU, on a randomly initialised model of a real
model's shape (weights do not change the time; nothing is downloaded), against the model's own SDPA
attention. Each cell in its own process; the rows go to ``--out`` as JSON lines.

    python3 benchmarks/cuda_speed.py --lengths 16k,32k --out results/cuda-speed.jsonl

Run by ``benchmarks/device_check.sh``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from prefill_speed import time_model

#: Llama 3.2 1B's shape (GQA 32/8, head 64), trained to 8k here so that 16k and 32k need a method.
SHAPE = dict(
    vocab_size=128256,
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    max_position_embeddings=8192,
    rope_theta=500000.0,
    tie_word_embeddings=True,
)


def cell(spec: str, length: int, decode_steps: int) -> dict:
    config = transformers.LlamaConfig(**SHAPE)
    config._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).to(torch.bfloat16).eval()
    row = time_model(model, spec, length, decode_steps)
    return {**row, "device": torch.cuda.get_device_name(), "dtype": "bfloat16", "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="16k,32k")
    parser.add_argument("--method", action="append")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("results/cuda-speed.jsonl"))
    parser.add_argument("--cell", nargs=2, metavar=("LENGTH", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(cell(args.cell[1], int(args.cell[0]), args.decode_steps)))
        return
    from longreach.methods import parse_length

    specs = args.method or ["vanilla", "self-extend:auto", "dual-chunk:auto", "rerope:auto", "streaming-llm:auto"]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for length in (parse_length(text) for text in args.lengths.split(",")):
        for spec in specs:
            command = [sys.executable, __file__, "--decode-steps", str(args.decode_steps), "--cell", str(length), spec]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                row = {"length": length, "spec": spec, "error": done.stderr.strip().splitlines()[-1:]}
            else:
                row = json.loads(done.stdout.strip().splitlines()[-1])
            print(row, flush=True)
            with args.out.open("a") as handle:
                handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
