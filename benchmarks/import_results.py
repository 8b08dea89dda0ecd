"""Bring passkey and perplexity records measured elsewhere into a results folder.

The passkey command and compare's ``passkey`` task build the same prompts for the same seed, and
compare's ``ppl`` over one ``--text`` file reads the same tokens as the perplexity command over
it, so hours of CPU already spent need not be spent again. Sources are the passkey.jsonl and
perplexity.jsonl of the commands before they ran through compare (converted by
``longreach.eval.legacy``), or the results.jsonl of another folder. Imported records carry the
cell keys compare skips on, and ``source`` says where they came from. Of a cell recorded more
than once the last record counts; a cell the folder already holds with the same settings and
prompt version is left alone.

An old perplexity run read every prefix with the settings of its longest length. Into a compare
folder (the default) a prefix comes along only where its spec picks the same settings for its own
length; with ``--prefixes``, into a folder of ``longreach perplexity`` (which reads prefixes so
too), every prefix does.

    .venv/bin/python benchmarks/import_results.py docs/benchmarks/compare \\
        docs/benchmarks/passkey-methods/passkey.jsonl docs/benchmarks/perplexity-methods/perplexity.jsonl
    .venv/bin/python benchmarks/import_results.py --prefixes docs/benchmarks/perplexity-methods \\
        docs/benchmarks/perplexity-methods/perplexity.jsonl
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from longreach.eval.compare import PPL, RESULTS, cell_key, latest_cells
from longreach.eval.legacy import is_legacy, passkey_record, perplexity_records
from longreach.eval.records import append_record, read_records
from longreach.eval.report import RUN
from longreach.methods import is_auto, parse_method


def same_choice(record: dict, n: int, trained_length: int | None) -> bool:
    """Whether a compare run would read length ``n`` with the settings ``record`` ran with: a
    ``NAME:auto`` picks per length (with the trained length unknown, no shorter length counts)."""
    if not is_auto(record["method"]):
        return True
    if trained_length is None:
        return False
    chosen = parse_method(record["method"], target_length=n, trained_length=trained_length)
    return chosen.spec() == record["settings"]


def from_perplexity(record: dict, source: str, trained_length: int | None, prefixes: bool = False) -> list[dict]:
    """Compare records of an old perplexity run: its longest length, and each shorter one that a
    compare run would read with the same settings (with ``prefixes``: every one)."""
    return perplexity_records(record, source, lambda n: prefixes or same_choice(record, n, trained_length))


def converted(source: str, trained_length: int | None, prefixes: bool) -> list[dict]:
    """The records of one source file as compare records."""
    found = []
    for record in read_records(Path(source)):
        if not is_legacy(record):
            # A ppl cell of `longreach perplexity` may hold a prefix read with the longest length's settings.
            same = record.get("task") != PPL or prefixes or same_choice(record, record["length"], trained_length)
            if "task" in record and same:
                found.append({**record, "source": record.get("source") or source})
        elif "bucket_perplexity" in record:
            found += from_perplexity(record, source, trained_length, prefixes)
        else:
            found.append(passkey_record(record, source))
    return found


def held_as(record: dict) -> tuple:
    """What a record of a cell was measured with: the settings, prompt version and variant."""
    return record.get("settings"), record.get("prompt_version", 1), record.get("variant")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="the results folder to add to (its results.jsonl)")
    parser.add_argument("sources", nargs="+", help="old passkey.jsonl / perplexity.jsonl files, or results.jsonl")
    parser.add_argument("--prefixes", action="store_true", help="keep every prefix of a perplexity run")
    args = parser.parse_args(argv)
    results = Path(args.folder) / RESULTS
    run = Path(args.folder) / RUN
    trained = json.loads(run.read_text()).get("trained_length") if run.is_file() else None
    held = {cell_key(r): held_as(r) for r in read_records(results) if "task" in r}  # the last record counts
    entries = latest_cells([e for source in args.sources for e in converted(source, trained, args.prefixes)])
    added = 0
    for entry in entries:
        if held.get(cell_key(entry)) != held_as(entry):
            append_record(results, entry)
            added += 1
    print(f"added {added} records to {results}")


if __name__ == "__main__":
    main()
