"""A long text streamed through the model with InfLLM: memory, speed and perplexity by position.

    .venv/bin/python benchmarks/infllm_stream.py --text ../shared/data/texts/*.txt --length 256k \\
        --checkpoints 32k,64k,128k,256k --method infllm:n_local=4096,storage=mmap --out docs/benchmarks/infllm-stream

The texts are concatenated (in the order given) and read in execution blocks through the cache,
keeping the loss of every next-token prediction. At each checkpoint the next ``--decode-steps``
tokens of the text are fed one at a time (single-token decoding at that context length), and the
process's resident memory is recorded. Writes ``stream.json`` (and ``stream.png``: perplexity by
position and decode latency against context) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from transformers import DynamicCache

from longreach.integrations.transformers.forward_args import cache_kwargs


def rss_gib() -> float:
    """Resident memory now (GiB)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize() / 2**30


def main() -> None:
    import longreach
    from longreach.eval.perplexity import bucket_perplexity
    from longreach.eval.plots import plot_perplexity_by_position
    from longreach.methods import parse_length, parse_method
    from longreach.models.config import trained_length

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--method", default="infllm:auto", help="method spec, e.g. infllm:n_local=4096,storage=mmap")
    parser.add_argument("--text", nargs="+", required=True, help="plain-text files, concatenated in order")
    parser.add_argument("--length", default="256k")
    parser.add_argument("--checkpoints", default="32k,64k,128k,256k")
    parser.add_argument("--decode-steps", type=int, default=16)
    parser.add_argument("--out", default="results/infllm-stream")
    args = parser.parse_args()

    if args.decode_steps < 1:
        parser.error(f"--decode-steps must be >= 1 (decoding is timed at every checkpoint), got {args.decode_steps}")
    length = parse_length(args.length)
    checkpoints = sorted(parse_length(c) for c in args.checkpoints.split(","))
    if checkpoints[-1] > length:
        parser.error(f"checkpoint {checkpoints[-1]} is beyond --length {length}")
    model, tokenizer = longreach.load_model(args.model)
    method = parse_method(args.method, target_length=length, trained_length=trained_length(model.config))
    longreach.extend(model, method)
    chunk = getattr(method, "exec_block", 1024)
    text = "\n\n".join(Path(path).read_text() for path in args.text)
    # Decoding at the last checkpoint reads past --length: the text must hold those tokens too.
    needed = length + args.decode_steps + 1
    ids = tokenizer(text, return_tensors="pt").input_ids[:, :needed]
    if ids.shape[1] < needed:
        parser.error(
            f"the texts hold {ids.shape[1]} tokens, fewer than --length {length} + --decode-steps "
            f"{args.decode_steps} + 1: pass more --text files"
        )

    console = Console()
    cache = DynamicCache(config=model.config)
    losses: list[torch.Tensor] = []
    rows = []
    position, segment_start, segment_time = 0, 0, 0.0
    columns = (TextColumn("stream"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn())

    def read(a: int, b: int) -> None:
        with torch.no_grad():
            logits = model(ids[:, a:b], use_cache=True, **cache_kwargs(model, cache)).logits[0].float()
        targets = ids[0, a + 1 : b + 1]
        losses.append(-torch.log_softmax(logits, -1).gather(1, targets[:, None]).squeeze(1).double())

    output = Path(args.out)
    output.mkdir(parents=True, exist_ok=True)

    def write_results() -> None:
        # After every checkpoint, so a run stopped on the way still leaves the rows it measured.
        all_losses = torch.cat(losses)
        curve = bucket_perplexity(all_losses, 4096)
        summary = {
            "model": args.model,
            "method": method.spec(),
            "texts": [Path(t).name for t in args.text],
            "torch_threads": torch.get_num_threads(),
            "tokens_read": position,
            "rows": rows,
            "bucket": 4096,
            "bucket_perplexity": curve,
            "perplexity": float(torch.exp(all_losses.mean())),
        }
        (output / "stream.json").write_text(json.dumps(summary, indent=2) + "\n")
        plot_perplexity_by_position(
            {method.spec(): curve},
            output / "stream.png",
            bucket=4096,
            title=f"Perplexity by position, {args.model}, {method.spec()}",
            trained_length=trained_length(model.config),
        )

    with Progress(*columns, console=console) as progress:
        task = progress.add_task("stream", total=length + args.decode_steps)
        for checkpoint in checkpoints:
            started = time.perf_counter()
            while position < checkpoint:
                stop = min(position + chunk - position % chunk, checkpoint)
                read(position, stop)
                progress.advance(task, stop - position)
                position = stop
            segment_time += time.perf_counter() - started
            prefill_rate = (position - segment_start) / segment_time
            started = time.perf_counter()
            for _ in range(args.decode_steps):  # the text's own next tokens, one call each
                read(position, position + 1)
                position += 1
            decode_ms = 1000 * (time.perf_counter() - started) / max(1, args.decode_steps)
            progress.advance(task, args.decode_steps)
            store_bytes = (
                sum(
                    state.store.nbytes()["storage"]
                    for state in cache.memory_states.values()
                    if getattr(state, "store", None) is not None
                )
                if hasattr(cache, "memory_states")
                else 0
            )
            rows.append(
                {
                    "context": checkpoint,
                    "prefill_tokens_per_s": round(prefill_rate, 1),
                    "decode_ms_per_token": round(decode_ms, 1),
                    "rss_gib": round(rss_gib(), 2),
                    "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
                    "cache_keys_per_layer": int(cache.layers[0].keys.shape[2]),
                    "block_store_gib": round(store_bytes / 2**30, 2),
                }
            )
            progress.console.print(rows[-1])
            write_results()
            segment_start, segment_time = position, 0.0

    table = Table(title=f"{method.spec()} on {args.model}, {torch.get_num_threads()} CPU threads")
    for key in rows[0]:
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


if __name__ == "__main__":
    main()
