"""Markdown tables for docs/results.md from the benchmarks' JSON lines.

    .venv/bin/python benchmarks/results_table.py docs/benchmarks/passkey-methods/passkey.jsonl
    .venv/bin/python benchmarks/results_table.py docs/benchmarks/perplexity-methods/perplexity.jsonl
    .venv/bin/python benchmarks/results_table.py docs/benchmarks/speed-methods.json

Passkey cells are correct/total over the samples recorded for (method, length), the last record
of each; perplexity cells the perplexity over the first `length` tokens; speed rows (from
benchmarks/prefill_speed.py) each method's prefill and decode against vanilla's at the same length.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

from longreach.eval.passkey import accuracy_table, read_results
from longreach.eval.records import read_records
from longreach.eval.report import Table, markdown_table


def passkey_table(path: Path) -> Table:
    table = accuracy_table(read_results(path))  # a sample recorded twice counts once: the last
    lengths = sorted({n for by in table.values() for n in by})
    return Table("passkey", lengths, {m: {n: f"{c}/{t}" for n, (c, t) in by.items()} for m, by in table.items()})


def perplexity_table(records: list[dict]) -> Table:
    cells: dict[str, dict[int, str]] = defaultdict(dict)
    for r in records:
        for length, value in r["perplexity"].items():
            cells[r["method"]][int(length)] = f"{value:.2f}"
    lengths = sorted({n for by in cells.values() for n in by})
    return Table("perplexity", lengths, dict(cells))


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


def main(path: str) -> None:
    if path.endswith(".json"):
        print("\n".join(speed_lines(json.loads(Path(path).read_text())["rows"])))
        return
    records = read_records(Path(path))
    table = perplexity_table(records) if records and "perplexity" in records[0] else passkey_table(Path(path))
    print("\n".join(markdown_table(table)))


if __name__ == "__main__":
    main(sys.argv[1])
