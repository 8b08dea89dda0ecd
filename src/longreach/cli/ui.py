"""What the commands show: a status line and progress on stderr, result tables on stdout."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table as Grid

console = Console(stderr=True)
# Piped into a file or a log, result tables get room for long method specs (rich assumes 80 columns).
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120)


def error(message: str) -> None:
    """The one line a misuse gets."""
    console.print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)


def print_table(table) -> None:
    """A report table (``longreach.eval.report.Table``): rows x columns (lengths or tasks)."""
    from longreach.eval.report import column_label

    # The title on a line of its own: a table's title would wrap to the width of its columns.
    out.print(table.title, style="table.title", highlight=False, soft_wrap=True)
    grid = Grid()
    # A narrow terminal folds the long method specs, never the figures or their headers.
    grid.add_column(table.row_label, overflow="fold")
    for c in table.columns:
        grid.add_column(column_label(c), justify="right", no_wrap=True, min_width=len(column_label(c)))
    for row, cells in table.cells.items():
        grid.add_row(row, *(cells.get(c, "-") for c in table.columns))
    out.print(grid)


def print_facts(title: str, rows: list[tuple[str, str]]) -> None:
    """Two columns, a name and its value (``longreach info``)."""
    grid = Grid(title=title, show_header=False)
    grid.add_column("", style="bold")
    grid.add_column("", overflow="fold")  # specs are copied whole
    for name, value in rows:
        grid.add_row(name, value)
    out.print(grid)


class CellProgress:
    """The bar of an evaluation, weighted by the tokens each cell reads, and a line per finished
    cell above it: ``on_start`` and ``on_cell`` are ``evaluate``'s callbacks. The bar shows
    from ``on_start`` on, once every check has passed, so an error stays one line."""

    def __init__(self, description: str):
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[cells]} cells"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
        )
        self.progress = Progress(*columns, console=console)
        self.bar = self.progress.add_task(description, total=None, cells=0)

    def __enter__(self) -> CellProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.progress.live.is_started:
            self.progress.stop()

    def on_start(self, tokens: int) -> None:
        self.progress.update(self.bar, total=max(tokens, 1))
        self.progress.start()

    def on_cell(self, record: dict, tokens: int) -> None:
        if record["task"] == "ppl":
            mark = f"perplexity {record['perplexity']:.2f}"
        else:
            missed = "" if record["score"] == 1 else f" [red]({escape(repr(record['answer']))})[/]"
            mark = f"score {100 * record['score']:.0f}%{missed}"
        where = "" if record.get("depth") is None else f", depth {record['depth']:g}"
        self.progress.console.print(
            f"  {record['task']} {record['settings']} {record['length']} tokens{where}: {mark}", highlight=False
        )
        cells = self.progress.tasks[0].fields["cells"] + 1
        description = f"{record['method']} {record['task']} {record['length']}"
        self.progress.update(self.bar, advance=tokens, cells=cells, description=description)
