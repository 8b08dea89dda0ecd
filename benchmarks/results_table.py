"""Markdown tables for docs/results.md from the benchmarks' JSON lines.

    .venv/bin/python benchmarks/results_table.py docs/benchmarks/passkey-methods/passkey.jsonl
    .venv/bin/python benchmarks/results_table.py docs/benchmarks/passkey-methods/passkey.jsonl --prompt-version 1
    .venv/bin/python benchmarks/results_table.py docs/benchmarks/perplexity-methods/perplexity.jsonl
    .venv/bin/python benchmarks/results_table.py results/passkey/results.jsonl       # today's passkey command
    .venv/bin/python benchmarks/results_table.py docs/benchmarks/speed-methods.json

A ``results.jsonl`` (what ``longreach passkey``, ``perplexity`` and ``compare`` write) gives its
passkey table, or its ``ppl`` table when it holds no passkey cells; the passkey.jsonl and
perplexity.jsonl of the commands before they ran through compare are read as such records
(``longreach.eval.legacy``). Passkey cells are correct/total over the samples recorded for
(method, length), the last record of each; perplexity cells the perplexity over the first
`length` tokens; speed rows (from benchmarks/prefill_speed.py) each method's prefill and decode
against vanilla's at the same length. Passkey tables hold the records of the prompts built now
unless ``--prompt-version`` names older ones.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longreach.eval.compare import PPL, latest_cells
from longreach.eval.legacy import is_legacy, read_legacy
from longreach.eval.passkey import PROMPT_VERSION
from longreach.eval.records import read_records
from longreach.eval.report import Table, markdown_table, passkey_accuracy, perplexities


def records_of(path: Path) -> list[dict]:
    """The compare records of a results file, old passkey and perplexity records converted."""
    found = read_records(path)
    if any(is_legacy(r) for r in found):
        return read_legacy(path)
    return [r for r in found if "task" in r and "method" in r and "length" in r]


def passkey_table(records: list[dict], prompt_version: int = PROMPT_VERSION) -> Table:
    # A sample recorded twice counts once: the last.
    asked = [r for r in records if r["task"] == "passkey" and r.get("prompt_version", 1) == prompt_version]
    accuracy = passkey_accuracy(latest_cells(asked))
    lengths = sorted({n for by in accuracy.values() for n in by})
    return Table("passkey", lengths, {m: {n: f"{c}/{t}" for n, (c, t) in by.items()} for m, by in accuracy.items()})


def perplexity_table(records: list[dict]) -> Table:
    table = perplexities(latest_cells([r for r in records if r["task"] == PPL]))
    lengths = sorted({n for by in table.values() for n in by})
    return Table("perplexity", lengths, {m: {n: f"{v:.2f}" for n, v in by.items()} for m, by in table.items()})


def speed_lines(rows: list[dict]) -> list[str]:
    """One row per (length, method): times, the speed-up over vanilla at that length, KV and RSS."""
    vanilla = {r["length"]: r for r in rows if r.get("spec") == "vanilla"}
    lines = [
        "| length | method | prefill s | prefill vs vanilla | decode ms/token | decode vs vanilla | KV MiB | "
        "blocks MiB | peak RSS GiB |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: r["length"]):
        base = vanilla.get(r["length"])
        prefill_ratio = f"{base['prefill_s'] / r['prefill_s']:.2f}x" if base else "-"
        decode_ratio = f"{base['decode_ms_per_token'] / r['decode_ms_per_token']:.2f}x" if base else "-"
        lines.append(
            f"| {r['length']} | {r['method']} | {r['prefill_s']:.1f} | {prefill_ratio} | "
            f"{r['decode_ms_per_token']:.1f} | {decode_ratio} | {r.get('kv_mib_after_decode', '-')} | "
            f"{r.get('blocks_mib_after_decode', '-')} | {r['peak_rss_gib']:.2f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "path", help="a results.jsonl, an old passkey or perplexity .jsonl, or a prefill_speed.py .json"
    )
    parser.add_argument("--prompt-version", type=int, default=PROMPT_VERSION, help="passkey prompts of this version")
    args = parser.parse_args()
    if args.path.endswith(".json"):
        print("\n".join(speed_lines(json.loads(Path(args.path).read_text())["rows"])))
        return
    records = records_of(Path(args.path))
    if any(r["task"] == "passkey" for r in records) or not records:
        table = passkey_table(records, args.prompt_version)
    else:
        table = perplexity_table(records)
    if not table.cells:
        version = args.prompt_version
        raise SystemExit(f"{args.path} holds no records (of passkey prompt version {version}: see --prompt-version)")
    print("\n".join(markdown_table(table)))


if __name__ == "__main__":
    main()
