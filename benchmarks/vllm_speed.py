"""Prefill and decode speed through vLLM: its own CPU attention, the plugin's engine running the
vanilla plan, and the plugin with methods on, against LongReach's transformers path on the same
prompts (random tokens: ``prefill_speed.random_prompts``).

    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/vllm_speed.py --length 8000 \\
        --method self-extend:group_size=3,window=2048 --method rerope:window=1024,log_scale_base=8192 \\
        --out docs/benchmarks/vllm/speed.jsonl
    OMP_NUM_THREADS=2 .venv-vllm/bin/python benchmarks/vllm_speed.py --length 16k --requests 4 \\
        --method self-extend:auto --paths plugin,transformers --out docs/benchmarks/vllm/speed.jsonl

Each cell runs in its own process. A vLLM cell starts an in-process engine (enforce_eager, float32,
prefix caching off so that nothing is reused between cells), adds the requests at once and steps
the engine: prefill seconds is the time until every request has its first token, decode ms/token
the mean time of the steps after that (one token per running request per step). The transformers
cell prefills the same prompts as one batch and decodes with the cache. Finished cells are
appended to ``--out`` at once and skipped when the command is run again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

PATHS = ("vllm", "plugin-vanilla", "plugin", "transformers")


def measure_vllm(model_name: str, path: str, spec: str | None, length: int, requests: int, decode_steps: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if spec and path == "plugin":
        os.environ["LONGREACH_METHOD"] = spec
    if path == "plugin-vanilla":  # the engine's own vanilla plan, to see what executing a plan costs
        import longreach.integrations.vllm.settings as settings
        from longreach.integrations.vllm.settings import Plan
        from longreach.methods.vanilla import Vanilla
        from longreach.models.config import trained_length

        settings.plan_for = lambda spec, hf_config, max_model_len: Plan(
            Vanilla(), Vanilla().parts(), trained_length(hf_config)
        )
    from prefill_speed import random_prompts
    from vllm import LLM, SamplingParams

    from longreach.models.export import safetensors_folder

    folder = safetensors_folder(model_name)
    config = json.loads((folder / "config.json").read_text())
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    token_bytes = config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 2 * 4
    llm = LLM(
        str(folder),
        dtype="float32",
        enforce_eager=True,
        enable_prefix_caching=False,
        max_model_len=length + decode_steps + 1,
        max_num_seqs=max(requests, 1),
        # Room for every request at once, in vLLM's cache and (with a method) the plugin's copies.
        kv_cache_memory_bytes=3 * requests * (length + decode_steps + 64) * token_bytes + (1 << 26),
    )
    vocab = llm.llm_engine.model_config.hf_config.vocab_size
    engine = llm.llm_engine
    params = SamplingParams(max_tokens=decode_steps + 1, temperature=0, ignore_eos=True)
    engine.add_request("warm-up", {"prompt_token_ids": list(range(100, 164))}, SamplingParams(max_tokens=2))
    while engine.has_unfinished_requests():
        engine.step()
    for r, ids in enumerate(random_prompts(length, requests, vocab).tolist()):
        engine.add_request(str(r), {"prompt_token_ids": ids}, params)
    started = time.perf_counter()
    first_token: dict[str, float] = {}
    step_times: list[float] = []
    while engine.has_unfinished_requests():
        step_started = time.perf_counter()
        outputs = engine.step()
        now = time.perf_counter()
        if len(first_token) == requests:
            step_times.append(now - step_started)
        for output in outputs:
            if output.outputs and output.outputs[0].token_ids:
                first_token.setdefault(output.request_id, now - started)
    total = time.perf_counter() - started
    return {
        "prefill_s": round(max(first_token.values()), 2),
        "decode_ms_per_step": round(1000 * sum(step_times) / max(1, len(step_times)), 1),
        "total_s": round(total, 2),
    }


def measure_transformers(model_name: str, spec: str, length: int, requests: int, decode_steps: int) -> dict:
    from prefill_speed import time_model

    import longreach

    model, _ = longreach.load_model(model_name)
    row = time_model(model, spec, length, decode_steps, requests=requests)
    return {
        "prefill_s": row["prefill_s"],
        "decode_ms_per_step": row["decode_ms_per_token"],
        "total_s": round(row["prefill_s"] + row["decode_ms_per_token"] * decode_steps / 1000, 2),
    }


def measure(args: argparse.Namespace, path: str, spec: str | None) -> dict:
    if path == "transformers":
        figures = measure_transformers(args.model, spec or "vanilla", args.length, args.requests, args.decode_steps)
    else:
        figures = measure_vllm(args.model, path, spec, args.length, args.requests, args.decode_steps)
    tokens = args.requests * (args.length + args.decode_steps + 1)
    return {
        "path": path,
        "spec": spec or "vanilla",
        "length": args.length,
        "requests": args.requests,
        "decode_steps": args.decode_steps,
        **figures,
        "tokens_per_s": round(tokens / figures["total_s"], 1),
        "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or os.cpu_count(),
    }


def cells(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """(path, spec) per cell: vLLM's own and the plugin's vanilla once, every method per other path."""
    wanted = args.paths.split(",")
    unknown = sorted(set(wanted) - set(PATHS))
    if unknown:
        raise SystemExit(f"unknown --paths {unknown}: choose from {', '.join(PATHS)}")
    found = [(path, None) for path in ("vllm", "plugin-vanilla") if path in wanted]
    for spec in args.method:
        found += [(path, spec) for path in ("plugin", "transformers") if path in wanted]
    if "transformers" in wanted:
        found.append(("transformers", None))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--length", default="8000", help="prompt tokens per request (8000, 16k, ...)")
    parser.add_argument("--requests", type=int, default=1, help="requests sent at once")
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--method", action="append", default=[], help="a method spec (repeatable)")
    parser.add_argument("--paths", default=",".join(PATHS), help=f"which of {', '.join(PATHS)} to run")
    parser.add_argument("--out", type=Path, default=Path("results/vllm-speed.jsonl"))
    parser.add_argument("--cell", nargs=2, metavar=("PATH", "SPEC"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from longreach.methods import parse_length

    args.length = parse_length(args.length)
    if args.cell:
        path, spec = args.cell
        print(json.dumps(measure(args, path, None if spec == "-" else spec)))
        return

    from rich.console import Console

    from longreach.eval.records import append_record, read_records

    console = Console()
    key = ("path", "spec", "length", "requests", "decode_steps")
    done = {tuple(row[k] for k in key) for row in read_records(args.out)}
    for path, spec in cells(args):
        if (path, spec or "vanilla", args.length, args.requests, args.decode_steps) in done:
            continue
        with console.status(f"{path} {spec or ''}: {args.requests} x {args.length} tokens"):
            command = [sys.executable, __file__, *sys.argv[1:], "--cell", path, spec or "-"]
            finished = subprocess.run(command, capture_output=True, text=True)
        if finished.returncode:
            console.print(f"[red]{path} {spec}: failed[/red]\n{finished.stderr[-3000:]}")
            continue
        row = json.loads(finished.stdout.strip().splitlines()[-1])
        append_record(args.out, row)
        console.print(row)


if __name__ == "__main__":
    main()
