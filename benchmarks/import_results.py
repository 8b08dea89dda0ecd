"""Bring the methods benchmark's passkey and perplexity records into a compare folder.

The passkey command and compare's ``passkey`` task build the same prompts for the same seed, and
compare's ``ppl`` over one ``--text`` file reads the same tokens as the perplexity command over
it, so hours of CPU already spent need not be spent again: converted records carry the cell
keys compare skips on, and ``source`` says where they came from. Of a cell recorded more than
once the last record counts; a cell the folder already holds with the same settings and prompt
version is left alone.

    .venv/bin/python benchmarks/import_results.py docs/benchmarks/compare \\
        docs/benchmarks/passkey-methods/passkey.jsonl docs/benchmarks/perplexity-methods/perplexity.jsonl
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from longreach.eval.compare import PPL, RESULTS, cell_key, latest_cells
from longreach.eval.records import append_record, read_records
from longreach.eval.report import RUN
from longreach.methods import is_auto, parse_method


def from_passkey(record: dict, source: str) -> dict:
    return {
        "task": "passkey",
        "length": record["length"],
        "depth": record["depth"],
        "sample": record["sample"],
        "expected": [record["key"]],
        "answer": record["answer"],
        "score": 1.0 if record["correct"] else 0.0,
        "method": record["method"],
        "settings": record["settings"],
        "model": record["model"],
        "seed": record["seed"],
        "versions": {},
        "seconds": record["seconds"],
        "source": source,
        "prompt_version": record.get("prompt_version", 1),
    }


def from_perplexity(record: dict, source: str, trained_length: int | None) -> list[dict]:
    """One compare record per length the run answers (bucket losses from its bucket perplexities).

    The perplexity command reads every prefix with the settings of its longest length, where
    compare reads each length with the settings of that length: a shorter prefix answers a cell
    only where the spec picks the same settings for it (always, but for a ``NAME:auto``; with the
    trained length unknown, a ``NAME:auto`` run answers only its longest length)."""
    bucket = record["bucket"]
    losses = [math.log(p) for p in record["bucket_perplexity"]]
    lengths = {int(n): value for n, value in record["perplexity"].items()}
    longest = max(lengths)

    def same_choice(n: int) -> bool:
        if n == longest or not is_auto(record["method"]):
            return True
        if trained_length is None:
            return False
        return (
            parse_method(record["method"], target_length=n, trained_length=trained_length).spec() == record["settings"]
        )

    lengths = {n: value for n, value in lengths.items() if same_choice(n)}
    return [
        {
            "task": PPL,
            "length": n,
            "depth": None,
            "sample": 0,
            "texts": [record["text"]],
            "perplexity": value,
            "bucket": bucket,
            "bucket_loss": [round(x, 5) for x in losses[: -(-n // bucket)]],
            "method": record["method"],
            "settings": record["settings"],
            "model": record["model"],
            "seed": 0,
            "versions": {},
            "seconds": record["seconds"],
            "source": source,
        }
        for n, value in lengths.items()
    ]


def held_as(record: dict) -> tuple:
    """What a record of a cell was measured with: the settings and the prompt version."""
    return record.get("settings"), record.get("prompt_version", 1)


def main(folder: str, *sources: str) -> None:
    results = Path(folder) / RESULTS
    run = Path(folder) / RUN
    trained = json.loads(run.read_text()).get("trained_length") if run.is_file() else None
    held = {cell_key(r): held_as(r) for r in read_records(results) if "task" in r}  # the last record counts
    converted = latest_cells(
        [
            entry
            for source in sources
            for record in read_records(Path(source))
            for entry in (
                from_perplexity(record, source, trained) if "perplexity" in record else [from_passkey(record, source)]
            )
        ]
    )
    added = 0
    for entry in converted:
        if held.get(cell_key(entry)) != held_as(entry):
            append_record(results, entry)
            added += 1
    print(f"added {added} records to {results}")


if __name__ == "__main__":
    main(*sys.argv[1:])
