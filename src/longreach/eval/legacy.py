"""The record files of the passkey and perplexity commands before they ran through compare
(``passkey.jsonl``, ``perplexity.jsonl``, as under docs/benchmarks/), read as compare records.

The passkey command and compare's ``passkey`` task build the same prompts for the same seed, and
the perplexity command read the same tokens as ``ppl`` over one text, so old records convert
cell for cell: ``benchmarks/import_results.py`` adds them to a compare folder, and
``benchmarks/results_table.py`` tabulates them. Nothing in LongReach writes these files now.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from longreach.eval.passkey import PROMPT_VERSION
from longreach.eval.records import read_records


@dataclass(frozen=True)
class PasskeyResult:
    """One scored sample of the old passkey command; ``method`` is the spec the user gave (e.g.
    ``self-extend:auto``), ``settings`` the full spec it ran with at this length."""

    model: str
    method: str
    length: int
    depth: float
    sample: int
    seed: int
    key: str
    answer: str
    correct: bool
    seconds: float
    settings: str = ""
    prompt_version: int = PROMPT_VERSION

    @property
    def cell(self) -> tuple[str, int, float, int]:
        return (self.method, self.length, self.depth, self.sample)


def read_results(
    path: Path, *, model: str | None = None, seed: int | None = None, prompt_version: int | None = PROMPT_VERSION
) -> list[PasskeyResult]:
    """The old passkey records of a JSON lines file (torn lines skipped), only those of ``model``
    and ``seed`` when given, and of ``prompt_version`` (None: all; unversioned records are 1)."""
    results = []
    for record in read_records(Path(path)):
        try:
            result = PasskeyResult(**{"prompt_version": 1, **record})
        except TypeError:
            continue
        if (
            (model is None or result.model == model)
            and (seed is None or result.seed == seed)
            and (prompt_version is None or result.prompt_version == prompt_version)
        ):
            results.append(result)
    return results


def passkey_record(record: dict, source: str = "") -> dict:
    """An old passkey record as a compare record of the ``passkey`` task.

    Example:
        >>> old = {"model": "m", "method": "vanilla", "settings": "vanilla", "length": 4096, "depth": 0.5,
        ...        "sample": 0, "seed": 0, "key": "12345", "answer": "12345.", "correct": True, "seconds": 1.0}
        >>> new = passkey_record(old)
        >>> new["task"], new["score"], new["expected"], new["prompt_version"]
        ('passkey', 1.0, ['12345'], 1)
    """
    return {
        "task": "passkey",
        "length": record["length"],
        "depth": record["depth"],
        "sample": record["sample"],
        "expected": [record["key"]],
        "answer": record["answer"],
        "score": 1.0 if record["correct"] else 0.0,
        "method": record["method"],
        "settings": record.get("settings") or record["method"],
        "model": record["model"],
        "seed": record["seed"],
        "versions": {},
        "seconds": record["seconds"],
        "source": source,
        "prompt_version": record.get("prompt_version", 1),
    }


def perplexity_records(record: dict, source: str = "", same_settings=lambda length: True) -> list[dict]:
    """An old perplexity record (one run, perplexities of its prefixes) as compare records of the
    ``ppl`` task, one per length it answers (bucket losses from its bucket perplexities).

    The old command read every prefix with the settings of its longest length; compare reads each
    length with the settings of that length, so ``same_settings(length)`` says for which shorter
    lengths the run's settings are also those of that length (the longest always counts).
    """
    bucket = record["bucket"]
    losses = [math.log(p) for p in record["bucket_perplexity"]]
    lengths = {int(n): value for n, value in record["perplexity"].items()}
    longest = max(lengths)
    return [
        {
            "task": "ppl",
            "length": n,
            "depth": None,
            "sample": 0,
            "texts": [record["text"]],
            "perplexity": value,
            "bucket": bucket,
            "bucket_loss": [round(x, 5) for x in losses[: -(-n // bucket)]],
            "method": record["method"],
            "settings": record.get("settings") or record["method"],
            "model": record["model"],
            "seed": 0,
            "versions": {},
            "seconds": record.get("seconds", 0.0),
            "source": source,
        }
        for n, value in lengths.items()
        if n == longest or same_settings(n)
    ]


def is_legacy(record: dict) -> bool:
    """Whether a record is an old passkey or perplexity record (compare records have a task)."""
    return "task" not in record and ("key" in record or "bucket_perplexity" in record)


def read_legacy(path: Path, same_settings=None) -> list[dict]:
    """The old records of a file as compare records (of every model, seed and prompt version);
    ``same_settings(record, length)`` as for :func:`perplexity_records` (default: every length)."""
    converted = []
    for record in read_records(Path(path)):
        if not is_legacy(record):
            continue
        if "bucket_perplexity" in record:
            check = (lambda n, record=record: same_settings(record, n)) if same_settings else (lambda n: True)
            converted += perplexity_records(record, str(path), check)
        else:
            converted.append(passkey_record(record, str(path)))
    return converted
