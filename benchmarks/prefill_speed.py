"""Prefill and decode speed of each method against the model's own SDPA attention.

    .venv/bin/python benchmarks/prefill_speed.py --lengths 8k,16k \
        --method vanilla --method self-extend:group_size=4,window=1024 --out docs/benchmarks/speed.json

Each cell: one prefill of N random tokens (logits for the last position only), then
``--decode-steps`` single-token steps with the cache; time and peak RSS are recorded.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

import longreach
from longreach.integration import trained_length
from longreach.methods import parse_length, parse_method


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def measure(model, length: int, decode_steps: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(100, model.config.vocab_size - 100, (1, length), generator=generator)
    with torch.no_grad():
        started = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        prefill = time.perf_counter() - started
        cache = out.past_key_values
        token = out.logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        for _ in range(decode_steps):
            out = model(token, past_key_values=cache, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        decode = (time.perf_counter() - started) / max(1, decode_steps)
    return {"prefill_s": round(prefill, 2), "decode_ms_per_token": round(1000 * decode, 1),
            "peak_rss_gib": round(peak_rss_gib(), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", action="append")
    parser.add_argument("--lengths", default="8k,16k")
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--out", default="results/benchmarks/speed.json")
    args = parser.parse_args()
    model, _ = longreach.load_model(args.model)
    trained = trained_length(model.config)
    lengths = [parse_length(text) for text in args.lengths.split(",")]
    specs = args.method or ["vanilla", "self-extend:auto"]
    rows = []
    console = Console()
    for length in lengths:
        for spec in specs:
            method = parse_method(spec, target_length=length, trained_length=trained)
            if isinstance(method, longreach.Vanilla):
                longreach.restore(model)
                label = "vanilla (SDPA)"
            else:
                longreach.extend(model, method)
                label = method.spec()
            row = {"length": length, "method": label, **measure(model, length, args.decode_steps)}
            console.print(row)
            rows.append(row)
    longreach.restore(model)
    output = Path(args.out)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"model": args.model, "torch_threads": torch.get_num_threads(), "rows": rows},
                                 indent=2) + "\n")
    table = Table(title=f"Speed, {args.model}, {torch.get_num_threads()} CPU threads")
    for column in ("length", "method", "prefill s", "decode ms/token", "peak RSS GiB"):
        table.add_column(column)
    for row in rows:
        table.add_row(str(row["length"]), row["method"], str(row["prefill_s"]), str(row["decode_ms_per_token"]),
                      str(row["peak_rss_gib"]))
    console.print(table)


if __name__ == "__main__":
    main()
