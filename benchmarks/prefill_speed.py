"""Prefill and decode speed, and memory, of each method against the model's own SDPA attention.

    .venv/bin/python benchmarks/prefill_speed.py --lengths 8k,16k,32k \\
        --method vanilla --method self-extend:auto --method dual-chunk:auto \\
        --method streaming-llm:auto --method lm-infinite:auto --out docs/benchmarks/speed.json

Each cell runs in its own process (so peak RSS is that cell's): one prefill of N random tokens
(logits for the last position only), then ``--decode-steps`` single-token steps with the cache.
Recorded: prefill seconds, decode ms/token, KV cache bytes after prefill and after decoding, and
peak RSS. Finished cells are kept in ``--out`` and skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from longreach.integrations.transformers.forward_args import cache_kwargs


def kv_bytes(cache) -> int:
    """Bytes allocated for the cache's keys and values, spare room of appending buffers included."""
    storages = {}
    for layer in cache.layers:
        for tensor in (layer.keys, layer.values):
            if tensor is not None:
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


def block_bytes(cache) -> int:
    """Bytes InfLLM's block stores hold outside the cache layers (storage, device cache and
    representatives); 0 for every other method."""
    stores = [state.store for state in getattr(cache, "memory_states", {}).values() if state.store is not None]
    return sum(sum(store.nbytes().values()) for store in stores)


def random_prompts(length: int, count: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """(count, length) random token ids, row ``r`` drawn with seed ``seed + r``: the prompts every
    speed benchmark reads (vLLM's and CUDA's too), so their cells read the same tokens."""
    rows = [
        torch.randint(100, vocab_size - 100, (length,), generator=torch.Generator().manual_seed(seed + r))
        for r in range(count)
    ]
    return torch.stack(rows)


def measure(model_name: str, spec: str, length: int, decode_steps: int, seed: int = 0) -> dict:
    import longreach

    model, _ = longreach.load_model(model_name)
    return time_model(model, spec, length, decode_steps, seed)


def time_model(model, spec: str, length: int, decode_steps: int, seed: int = 0, requests: int = 1) -> dict:
    """Extend ``model`` with ``spec`` (vanilla: the model's own SDPA attention), prefill
    ``requests`` prompts of ``length`` random tokens as one batch and decode ``decode_steps``
    tokens each with the cache (decode ms per step: one token of every row)."""
    import longreach
    from longreach.methods import parse_method
    from longreach.models.config import trained_length

    method = parse_method(spec, target_length=length + decode_steps, trained_length=trained_length(model.config))
    longreach.extend(model, method)
    ids = random_prompts(length, requests, model.config.vocab_size, seed).to(model.device)
    synchronize = torch.cuda.synchronize if model.device.type == "cuda" else lambda: None
    with torch.no_grad():
        synchronize()
        started = time.perf_counter()
        out = model(ids, use_cache=True, logits_to_keep=1)
        synchronize()
        prefill = time.perf_counter() - started
        cache = out.past_key_values
        after_prefill = kv_bytes(cache)
        token = out.logits[:, -1:].argmax(-1)
        started = time.perf_counter()
        for _ in range(decode_steps):
            out = model(token, use_cache=True, **cache_kwargs(model, cache))
            token = out.logits[:, -1:].argmax(-1)
        synchronize()
        decode = (time.perf_counter() - started) / max(1, decode_steps)
    peak = torch.cuda.max_memory_allocated() if model.device.type == "cuda" else None
    return {
        "length": length,
        "method": "vanilla (SDPA)" if method.attention == "model" else method.spec(),
        "spec": spec,
        "prefill_s": round(prefill, 2),
        "decode_ms_per_token": round(1000 * decode, 1),
        "kv_mib_after_prefill": round(after_prefill / 2**20, 1),
        "kv_mib_after_decode": round(kv_bytes(cache) / 2**20, 1),
        "blocks_mib_after_decode": round(block_bytes(cache) / 2**20, 1),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        **({"peak_gpu_gib": round(peak / 2**30, 2)} if peak is not None else {}),
    }


COLUMNS = {
    "length": "length",
    "method": "method",
    "prefill_s": "prefill s",
    "decode_ms_per_token": "decode ms/token",
    "kv_mib_after_decode": "KV MiB",
    "blocks_mib_after_decode": "blocks MiB",
    "peak_rss_gib": "peak RSS GiB",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", action="append")
    parser.add_argument("--lengths", default="8k,16k")
    parser.add_argument("--decode-steps", type=int, default=8)
    parser.add_argument("--out", default="results/benchmarks/speed.json")
    parser.add_argument("--cell", nargs=2, metavar=("LENGTH", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure(args.model, args.cell[1], int(args.cell[0]), args.decode_steps)))
        return

    from longreach.methods import parse_length

    output = Path(args.out)
    saved = json.loads(output.read_text()) if output.is_file() else {}
    rows = saved.get("rows", [])
    done = {(row["length"], row.get("spec")) for row in rows}
    lengths = [parse_length(text) for text in args.lengths.split(",")]
    specs = args.method or ["vanilla", "self-extend:auto"]
    console = Console()
    for length in lengths:
        for spec in specs:
            if (length, spec) in done:
                continue
            with console.status(f"{spec} at {length} tokens"):
                command = [
                    sys.executable,
                    __file__,
                    "--model",
                    args.model,
                    "--decode-steps",
                    str(args.decode_steps),
                    "--cell",
                    str(length),
                    spec,
                ]
                finished = subprocess.run(command, capture_output=True, text=True, check=True)
            row = json.loads(finished.stdout.strip().splitlines()[-1])
            console.print(row)
            rows.append(row)
            output.parent.mkdir(parents=True, exist_ok=True)
            output.write_text(
                json.dumps(
                    {
                        "model": args.model,
                        "torch_threads": torch.get_num_threads(),
                        "decode_steps": args.decode_steps,
                        "rows": rows,
                    },
                    indent=2,
                )
                + "\n"
            )
    table = Table(title=f"Speed and memory, {args.model}, {torch.get_num_threads()} CPU threads")
    for title in COLUMNS.values():
        table.add_column(title)
    for row in sorted(rows, key=lambda r: (r["length"], specs.index(r["spec"]) if r.get("spec") in specs else 99)):
        table.add_row(*(str(row.get(key, "-")) for key in COLUMNS))
    console.print(table)


if __name__ == "__main__":
    main()
