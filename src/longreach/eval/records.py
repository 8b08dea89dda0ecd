"""JSON lines result files that survive interruption: append-only, torn lines skipped."""

from __future__ import annotations

import json
from pathlib import Path


def append_record(path: Path, record: dict) -> None:
    """Append one JSON record as a line, first ending a line torn by an interrupted write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+b") as handle:
        handle.seek(0, 2)
        if handle.tell() > 0:
            handle.seek(-1, 2)
            if handle.read(1) != b"\n":
                handle.write(b"\n")
        handle.write((json.dumps(record) + "\n").encode())
        handle.flush()


def read_records(path: Path) -> list[dict]:
    """The complete records of a JSON lines file; torn or foreign lines are skipped."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def same_settings(recorded: str | None, settings: str | None) -> bool:
    """Whether a recorded cell ran with the settings asked for now, so a rerun may skip it; a
    ``NAME:auto`` whose choice changed since (a newer LongReach) must run again. Records or
    callers without settings (older files, plain labels) match anything."""
    return not recorded or not settings or recorded == settings
