"""The report of a compare folder, rebuilt from its JSON lines alone.

``report.md`` opens with every task at the longest length (methods x tasks), then holds one table
per task (methods x lengths), the RULER average, the perplexity table, the pictures (needle
heatmaps, RULER score and loss against position) and the commands that produced the results. The
same tables are what the terminal shows.

A folder written by ``longreach passkey`` or ``longreach perplexity`` (``run.json`` names them
under ``summaries``) also gets that command's summary, rebuilt with the report: ``passkey.json``
and ``passkey.png`` (accuracy by length), or ``perplexity.json`` and ``perplexity.png``
(perplexity by position).
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from longreach.eval.compare import PPL, RESULTS, cell_key, latest_cells
from longreach.eval.passkey import PROMPT_VERSION
from longreach.eval.plots import (
    length_label,
    plot_accuracy_by_length,
    plot_heatmaps,
    plot_loss_by_position,
    plot_perplexity_by_position,
    plot_score_by_length,
)
from longreach.eval.records import read_records
from longreach.eval.tasks import current_prompts

RUN = "run.json"
REPORT = "report.md"
RULER_PREFIX = "ruler:"
#: The summaries a preset command writes beside the report: kind -> its files.
SUMMARIES = {"passkey": ("passkey.json", "passkey.png"), "perplexity": ("perplexity.json", "perplexity.png")}


@dataclass
class Table:
    """Methods x columns (lengths, or the tasks of a summary); ``cells[method][column]`` is
    already formatted."""

    title: str
    columns: list[int] | list[str]
    cells: dict[str, dict]
    note: str = ""
    figures: list[Path] = field(default_factory=list)
    row_label: str = "method"


def counts(records: list[dict], task: str) -> dict[str, dict[int, int]]:
    """Samples per method and length of a task."""
    found: dict[str, dict[int, int]] = defaultdict(lambda: defaultdict(int))
    for r in records:
        if r["task"] == task:
            found[r["method"]][r["length"]] += 1
    return found


def scores(records: list[dict], task: str) -> dict[str, dict[int, float]]:
    """Mean score in percent per method and length of a generative task.

    Example:
        >>> scores([{"task": "niah", "method": "m", "length": 8, "score": 1.0},
        ...         {"task": "niah", "method": "m", "length": 8, "score": 0.5}], "niah")
        {'m': {8: 75.0}}
    """
    sums: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["task"] == task:
            sums[r["method"]][r["length"]].append(float(r["score"]))
    return {m: {n: 100.0 * sum(v) / len(v) for n, v in sorted(by.items())} for m, by in sums.items()}


def ruler_average(records: list[dict]) -> dict[str, dict[int, float]]:
    """RULER's summary: the mean over its tasks of each task's mean score (cells that lack a
    task are left out, so a partial run never looks complete)."""
    tasks = _ordered(r["task"] for r in records if r["task"].startswith(RULER_PREFIX))
    per_task = [scores(records, t) for t in tasks]
    average: dict[str, dict[int, float]] = {}
    for method in _ordered(r["method"] for r in records):
        lengths = sorted({n for table in per_task for n in table.get(method, {})})
        for n in lengths:
            values = [table[method][n] for table in per_task if n in table.get(method, {})]
            if len(values) == len(per_task):
                average.setdefault(method, {})[n] = sum(values) / len(values)
    return average


def build_tables(records: list[dict], folder: Path | None = None, *, trained_length: int | None = None) -> list[Table]:
    """The report's tables in order; with ``folder``, their PNGs are drawn into it."""
    tables = []
    complete = [r for r in records if "task" in r and "method" in r and "length" in r]
    records = latest_cells([r for r in complete if current_prompts(r)])
    lengths = sorted({r["length"] for r in records})
    for task in _ordered(r["task"] for r in records):
        if task == PPL or task.startswith(RULER_PREFIX):
            continue
        entry = Table(
            f"{task}: score (%)",
            lengths,
            _format_scores(records, task, "{:.0f}"),
            note=_per_cell(_samples_per_length(records, task)) + _depth_note(records, task),
        )
        grids = _depth_grids(records, task)
        if folder is not None and grids:
            entry.figures.append(
                plot_heatmaps(
                    grids, folder / f"{_slug(task)}-heatmap.png", title=f"{task}: score by needle depth and length"
                )
            )
        tables.append(entry)
    ruler_tasks = _ordered(r["task"] for r in records if r["task"].startswith(RULER_PREFIX))
    if ruler_tasks:
        average = ruler_average(records)
        names = ", ".join(t[len(RULER_PREFIX) :] for t in ruler_tasks)
        entry = Table(
            "RULER average: score (%)",
            lengths,
            _format(average, "{:.1f}"),
            note=f"mean of {len(ruler_tasks)} tasks: {names}",
        )
        if folder is not None and average:
            entry.figures.append(
                plot_score_by_length(
                    average,
                    folder / "ruler.png",
                    title="RULER-style tasks, average",
                    trained_length=trained_length,
                    ylabel="score (%)",
                )
            )
        tables.append(entry)
        by_task = {
            f"{task[len(RULER_PREFIX) :]} · {method}": cells
            for task in ruler_tasks
            for method, cells in _format_scores(records, task, "{:.1f}").items()
        }
        samples = _samples_per_length(records, ruler_tasks[0])
        tables.append(
            Table("RULER tasks: score (%)", lengths, by_task, note=_per_cell(samples), row_label="task · method")
        )
    ppl = [r for r in records if r["task"] == PPL]
    if ppl:
        table = perplexities(ppl)
        texts = ", ".join(ppl[0].get("texts", []))
        entry = Table("ppl: perplexity", lengths, _format(table, "{:.2f}"), note=f"on {texts}")
        curves = {}
        for method in table:
            longest = max((r for r in ppl if r["method"] == method), key=lambda r: r["length"])
            curves[method] = longest["bucket_loss"]
        if folder is not None:
            entry.figures.append(
                plot_loss_by_position(
                    curves,
                    folder / "ppl.png",
                    bucket=ppl[0]["bucket"],
                    title=f"Loss by position on {texts}",
                    trained_length=trained_length,
                )
            )
        tables.append(entry)
    summary = _summary(tables, lengths[-1]) if lengths else None
    return [summary, *tables] if summary else tables


def read_run(folder: Path) -> dict:
    """``run.json`` of a results folder: model, trained length, commands, versions, summaries."""
    path = Path(folder) / RUN
    return json.loads(path.read_text()) if path.is_file() else {}


def folder_records(folder: Path) -> list[dict]:
    """The cells of a folder the report counts: the latest record of each, asked with the
    prompts its task builds now."""
    recorded = [r for r in read_records(Path(folder) / RESULTS) if "task" in r and "method" in r and "length" in r]
    return latest_cells([r for r in recorded if current_prompts(r)])


def write_report(folder: Path) -> Path:
    """Rebuild ``report.md`` and its PNGs in ``folder`` from ``results.jsonl`` (and the commands
    in ``run.json``), and the summaries ``run.json`` names (``passkey``, ``perplexity``).

    Example:
        >>> write_report(Path("results/compare"))  # doctest: +SKIP
        PosixPath('results/compare/report.md')
    """
    folder = Path(folder)
    recorded = [r for r in read_records(folder / RESULTS) if "task" in r]
    records = latest_cells([r for r in recorded if current_prompts(r)])
    outdated = {cell_key(r) for r in recorded if not current_prompts(r)} - {cell_key(r) for r in records}
    if not records:
        raise ValueError(f"{folder / RESULTS} holds no results; run `longreach compare --out {folder}` first")
    run = read_run(folder)
    trained = run.get("trained_length")
    tables = build_tables(records, folder, trained_length=trained)
    lines = [f"# LongReach comparison: {records[0].get('model') or run.get('model', '')}", ""]
    if trained:
        lines += [f"Trained length {trained} tokens; seed {records[0]['seed']}.", ""]
    methods = _ordered(f"`{r['method']}`" for r in records)
    lines += [
        f"Methods: {', '.join(methods)}. Scores are the share of expected strings found in the answer "
        "(RULER's string_match_all), in percent.",
        "",
    ]
    if outdated:
        lines += [
            f"{len(outdated)} cells recorded with older prompts than their tasks build now are left out; "
            "rerun the compare command to measure them again.",
            "",
        ]
    for table in tables:
        lines += [f"## {table.title}", "", *markdown_table(table), ""]
        if table.note:
            lines += [f"_{table.note}_", ""]
        lines += [f"![{table.title}]({figure.name})" for figure in table.figures]
        if table.figures:
            lines.append("")
    settings: dict[tuple[str, str], set[int]] = defaultdict(set)
    for r in records:
        if r["settings"] != r["method"]:
            settings[r["method"], r["settings"]].add(r["length"])
    if settings:
        lines += ["## Settings used", "", "| method | lengths | settings |", "| --- | --- | --- |"]
        for (method, spec), used in sorted(settings.items(), key=lambda item: (item[0][0], min(item[1]))):
            lines.append(f"| {method} | {', '.join(length_label(n) for n in sorted(used))} | `{spec}` |")
        lines.append("")
    if run.get("commands"):
        lines += ["## Commands", "", "```", *run["commands"], "```", ""]
    versions = records[-1].get("versions") or {}
    if versions:
        lines += ["Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()), ""]
    path = folder / REPORT
    path.write_text("\n".join(lines))
    for kind in run.get("summaries", []):
        if kind in SUMMARIES:
            write_summary(kind, folder, records, run)
    return path


def passkey_accuracy(records: list[dict]) -> dict[str, dict[int, tuple[int, int]]]:
    """{method: {length: (correct, total)}} of the passkey cells among ``records`` (pass them
    through ``latest_cells`` first: a cell recorded twice would count twice).

    Example:
        >>> passkey_accuracy([{"task": "passkey", "method": "m", "length": 8, "score": 1.0},
        ...                   {"task": "passkey", "method": "m", "length": 8, "score": 0.0}])
        {'m': {8: (1, 2)}}
    """
    cells = [r for r in records if r["task"] == "passkey"]
    table: dict[str, dict[int, tuple[int, int]]] = {r["method"]: {} for r in cells}  # methods in order
    for r in sorted(cells, key=lambda r: r["length"]):
        correct, total = table.setdefault(r["method"], {}).get(r["length"], (0, 0))
        table[r["method"]][r["length"]] = (correct + int(float(r["score"]) >= 1.0), total + 1)
    return table


def perplexities(records: list[dict]) -> dict[str, dict[int, float]]:
    """{method: {length: perplexity}} of the ``ppl`` cells among ``records``."""
    cells = [r for r in records if r["task"] == PPL]
    table: dict[str, dict[int, float]] = {r["method"]: {} for r in cells}  # methods in order
    for r in sorted(cells, key=lambda r: r["length"]):
        table.setdefault(r["method"], {})[r["length"]] = r["perplexity"]
    return table


def summary_table(kind: str, records: list[dict], run: dict) -> Table:
    """The table a preset command prints: passkey accuracy or perplexity, methods x lengths."""
    model, trained = run.get("model") or _first(records, "model"), run.get("trained_length")
    trained_note = f" (trained to {trained} tokens)" if trained else ""
    if kind == "passkey":
        accuracy = passkey_accuracy(records)
        cells = {m: {n: f"{100 * c / t:.0f}% ({c}/{t})" for n, (c, t) in by.items()} for m, by in accuracy.items()}
        title = f"Passkey retrieval, {model}{trained_note}"
    elif kind == "perplexity":
        cells = _format(perplexities(records), "{:.2f}")
        title = f"Perplexity on {_texts(records)}, {model}{trained_note}"
    else:
        raise ValueError(f"unknown summary {kind!r}; known: {', '.join(SUMMARIES)}")
    lengths = sorted({n for by in cells.values() for n in by})
    return Table(title, lengths, cells)


def write_summary(kind: str, folder: Path, records: list[dict], run: dict) -> list[Path]:
    """Write a preset's summary of ``records`` into ``folder``: its JSON and its PNG."""
    folder = Path(folder)
    model, trained = run.get("model") or _first(records, "model"), run.get("trained_length")
    json_name, png_name = SUMMARIES[kind]
    cells = [r for r in records if r["task"] == ("passkey" if kind == "passkey" else PPL)]
    if not cells:
        return []
    common = {"model": model, "trained_length": trained, "seeds": sorted({r.get("seed", 0) for r in records})}
    settings: dict[str, dict[str, str]] = defaultdict(dict)
    if kind == "passkey":
        accuracy = passkey_accuracy(cells)
        summary = {
            **common,
            "prompt_version": PROMPT_VERSION,
            "depths": sorted({r["depth"] for r in cells if r.get("depth") is not None}),
            "samples": len({r.get("sample", 0) for r in cells}),
            "accuracy": {
                m: {str(n): {"correct": c, "total": t} for n, (c, t) in by.items()} for m, by in accuracy.items()
            },
        }
        png = plot_accuracy_by_length(
            accuracy, folder / png_name, title=f"Passkey retrieval, {model}", trained_length=trained
        )
    else:
        table = perplexities(cells)
        longest = {m: max((r for r in cells if r["method"] == m), key=lambda r: r["length"]) for m in table}
        bucket = cells[0]["bucket"]
        curves = {m: [round(math.exp(x), 4) for x in r["bucket_loss"]] for m, r in longest.items()}
        summary = {
            **common,
            "text": _texts(cells),
            "perplexity": {m: {str(n): v for n, v in by.items()} for m, by in table.items()},
            "bucket": bucket,
            "bucket_perplexity": curves,
        }
        png = plot_perplexity_by_position(
            curves,
            folder / png_name,
            bucket=bucket,
            title=f"Perplexity by position, {_texts(cells)}",
            trained_length=trained,
        )
    for r in cells:
        settings[r["method"]][str(r["length"])] = r.get("settings") or r["method"]
    summary.update(settings=dict(settings), versions=run.get("versions") or _first(records, "versions") or {})
    path = folder / json_name
    path.write_text(json.dumps(summary, indent=2) + "\n")
    return [path, png]


def _first(records: list[dict], key: str):
    return next((r[key] for r in records if r.get(key)), None)


def _texts(records: list[dict]) -> str:
    return ", ".join(_first([r for r in records if r["task"] == PPL], "texts") or [])


def markdown_table(table: Table) -> list[str]:
    """The lines of a markdown table: methods x columns."""
    head = f"| {table.row_label} | " + " | ".join(column_label(c) for c in table.columns) + " |"
    rule = "| --- |" + " ---: |" * len(table.columns)
    rows = [
        f"| {m} | " + " | ".join(cells.get(c, "-") for c in table.columns) + " |" for m, cells in table.cells.items()
    ]
    return [head, rule, *rows]


def column_label(column: int | str) -> str:
    """A length as "4k", a task by its name."""
    return length_label(column) if isinstance(column, int) else column


def _summary(tables: list[Table], length: int) -> Table | None:
    """Every task at ``length``, one column a task (the RULER average for RULER; its tasks have a
    table of their own): what a reader choosing a method for that length looks at first. None
    for a single task, whose own table says it all."""
    per_task = [t for t in tables if t.row_label == "method"]
    if len(per_task) < 2:
        return None
    columns = [t.title.partition(":")[0] for t in per_task]
    cells: dict[str, dict] = {}
    for column, table in zip(columns, per_task, strict=True):
        for method, by_length in table.cells.items():
            if length in by_length:
                cells.setdefault(method, {})[column] = by_length[length]
    note = "scores in percent, ppl a perplexity; the tables below hold every length and their samples"
    return Table(f"At {length_label(length)}: every task", columns, cells, note=note) if cells else None


def _format_scores(records: list[dict], task: str, pattern: str) -> dict[str, dict[int, str]]:
    """Scores formatted, with the sample count added where a cell has fewer than the fullest
    cell of its length (a comparison may sample longer lengths at fewer depths)."""
    table, count = scores(records, task), counts(records, task)
    full = _samples_per_length(records, task)
    return {
        m: {
            n: pattern.format(v) + ("" if count[m][n] == full[n] else f" ({count[m][n]} of {full[n]})")
            for n, v in cells.items()
        }
        for m, cells in table.items()
    }


def _format(table: dict[str, dict[int, float]], pattern: str) -> dict[str, dict[int, str]]:
    return {m: {n: pattern.format(v) for n, v in cells.items()} for m, cells in table.items()}


def _depth_grids(records: list[dict], task: str) -> dict[str, dict[tuple[float, int], float]]:
    """Per method, the mean score per (depth, length); empty when the task has no depths."""
    sums: dict[str, dict[tuple[float, int], list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        if r["task"] == task and r.get("depth") is not None:
            sums[r["method"]][(r["depth"], r["length"])].append(float(r["score"]))
    if len({d for by in sums.values() for d, _ in by}) < 2:
        return {}
    return {m: {cell: 100.0 * sum(v) / len(v) for cell, v in by.items()} for m, by in sums.items()}


def _per_cell(samples: dict[int, int]) -> str:
    """``"5 samples per cell"``, naming the lengths that hold another number, e.g. ``" (3 at 16k, 32k)"``."""
    if not samples:
        return "0 samples per cell"
    usual = Counter(samples.values()).most_common(1)[0][0]
    others = defaultdict(list)
    for length, n in sorted(samples.items()):
        if n != usual:
            others[n].append(length_label(length))
    exceptions = "; ".join(f"{n} at {', '.join(labels)}" for n, labels in others.items())
    return f"{usual} sample{'s' if usual != 1 else ''} per cell" + (f" ({exceptions})" if exceptions else "")


def _samples_per_length(records: list[dict], task: str) -> dict[int, int]:
    """The samples in the fullest cell of each length: what a finished cell holds."""
    full: dict[int, int] = defaultdict(int)
    for by in counts(records, task).values():
        for length, n in by.items():
            full[length] = max(full[length], n)
    return full


def _depth_note(records: list[dict], task: str) -> str:
    depths = sorted({r["depth"] for r in records if r["task"] == task and r.get("depth") is not None})
    return f" over depths {', '.join(f'{d:g}' for d in depths)}" if depths else ""


def _ordered(items) -> list:
    """Distinct items in order of first appearance."""
    return list(dict.fromkeys(items))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()
