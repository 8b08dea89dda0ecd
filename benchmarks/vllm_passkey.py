"""Passkey retrieval through a running OpenAI-compatible server (``longreach serve``): the same
prompts as ``longreach passkey`` (prompt version 2, token ids sent as they are), one completion
per sample, each result appended to a JSON lines file at once (a rerun skips what is there).

    .venv-vllm/bin/longreach serve --method rerope:auto --max-model-len 16k --port 8000 &
    .venv-vllm/bin/python benchmarks/vllm_passkey.py --port 8000 --lengths 12k --depths 0.5 \\
        --out docs/benchmarks/vllm/passkey.jsonl
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from openai import OpenAI
from transformers import AutoTokenizer

from longreach.eval.passkey import PASSKEY_NEW_TOKENS, PROMPT_VERSION, passkey_key, passkey_prompt, score_answer
from longreach.eval.records import append_record, read_records
from longreach.methods import parse_length
from longreach.models.export import safetensors_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--model", default="smollm2-135m", help="the name the server serves (and its tokenizer)")
    parser.add_argument("--method", default="rerope:auto", help="the method the server was started with, recorded")
    parser.add_argument("--lengths", default="12k")
    parser.add_argument("--depths", default="0.1,0.3,0.5,0.7,0.9")
    parser.add_argument("--samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("results/vllm-passkey.jsonl"))
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(safetensors_folder(args.model))
    client = OpenAI(base_url=f"http://127.0.0.1:{args.port}/v1", api_key="none", timeout=3600)
    records = read_records(args.out)
    done = {
        (r["length"], r["depth"], r["sample"]) for r in records if (r["seed"], r["method"]) == (args.seed, args.method)
    }
    for length in (parse_length(n) for n in args.lengths.split(",")):
        for depth in (float(d) for d in args.depths.split(",")):
            for sample in range(args.samples):
                if (length, depth, sample) in done:
                    continue
                key = passkey_key(args.seed, length, depth, sample)
                ids = passkey_prompt(tokenizer, length, depth, key)
                started = time.perf_counter()
                answer = (
                    client.completions.create(
                        model=args.model, prompt=ids, max_tokens=PASSKEY_NEW_TOKENS, temperature=0
                    )
                    .choices[0]
                    .text
                )
                record = {
                    "task": "passkey",
                    "length": length,
                    "depth": depth,
                    "sample": sample,
                    "seed": args.seed,
                    "expected": [key],
                    "answer": answer.strip(),
                    "score": float(score_answer(answer, key)),
                    "prompt_version": PROMPT_VERSION,
                    "method": args.method,
                    "model": args.model,
                    "seconds": round(time.perf_counter() - started, 1),
                }
                append_record(args.out, record)
                mark = "ok" if record["score"] else f"got {record['answer']!r}"
                print(f"{length} tokens, depth {depth:g}, sample {sample}: key {key} {mark} ({record['seconds']} s)")


if __name__ == "__main__":
    main()
