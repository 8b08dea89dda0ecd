"""Markdown tables for docs/results.md from the benchmarks' JSON lines.

    .venv/bin/python benchmarks/results_table.py docs/benchmarks/passkey-methods/passkey.jsonl
    .venv/bin/python benchmarks/results_table.py docs/benchmarks/perplexity-methods/perplexity.jsonl

Passkey cells are correct/total over every sample recorded for (method, length); perplexity cells
the perplexity over the first `length` tokens.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

from longreach.eval.records import read_records
from longreach.eval.report import Table, markdown_table


def passkey_table(records: list[dict]) -> Table:
    cells: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for r in records:
        cell = cells[r["method"]][r["length"]]
        cell[0] += bool(r["correct"])
        cell[1] += 1
    lengths = sorted({r["length"] for r in records})
    return Table("passkey", lengths, {m: {n: f"{c}/{t}" for n, (c, t) in by.items()} for m, by in cells.items()})


def perplexity_table(records: list[dict]) -> Table:
    cells: dict[str, dict[int, str]] = defaultdict(dict)
    for r in records:
        for length, value in r["perplexity"].items():
            cells[r["method"]][int(length)] = f"{value:.2f}"
    lengths = sorted({n for by in cells.values() for n in by})
    return Table("perplexity", lengths, dict(cells))


def main(path: str) -> None:
    records = read_records(Path(path))
    table = perplexity_table(records) if records and "perplexity" in records[0] else passkey_table(records)
    print("\n".join(markdown_table(table)))


if __name__ == "__main__":
    main(sys.argv[1])
