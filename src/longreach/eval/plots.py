"""PNG plots of evaluation results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

#: Marker shapes of the lines of score-by-length plots, in order.
MARKERS = "osD^vP*Xhp"


def plot_accuracy_by_length(
    table: dict[str, dict[int, tuple[int, int]]],
    path: Path,
    *,
    title: str,
    trained_length: int | None = None,
) -> Path:
    """Accuracy (%) against input length from (correct, total) cells, one line per method."""
    percent = {m: {n: 100.0 * c / t for n, (c, t) in cells.items()} for m, cells in table.items()}
    return plot_score_by_length(percent, path, title=title, trained_length=trained_length)


def plot_score_by_length(
    table: dict[str, dict[int, float]],
    path: Path,
    *,
    title: str,
    trained_length: int | None = None,
    ylabel: str = "accuracy (%)",
) -> Path:
    """A score in [0, 100] against input length, one line per method; a dashed line at the
    trained length."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for index, (method, cells) in enumerate(table.items()):
        lengths = sorted(cells)
        # Methods often score the same (all 100, or all 0): each later line is drawn thinner with
        # smaller markers of another shape on top, so lines that coincide stay visible.
        axes.plot(
            lengths,
            [cells[n] for n in lengths],
            marker=MARKERS[index % len(MARKERS)],
            markersize=max(3.0, 12.0 - 2.0 * index),
            linewidth=max(1.0, 3.6 - 0.5 * index),
            label=method,
            linestyle=_line_style(index),
        )
    _mark_trained_length(axes, trained_length)
    axes.set_xscale("log", base=2)
    all_lengths = sorted({n for cells in table.values() for n in cells})
    axes.set_xticks(all_lengths, [length_label(n) for n in all_lengths])
    axes.set_ylim(-5, 105)
    axes.set_xlabel("input length (tokens)")
    axes.set_ylabel(ylabel)
    return _save(figure, axes, path, title=title)


def plot_heatmaps(
    grids: dict[str, dict[tuple[float, int], float]],
    path: Path,
    *,
    title: str,
) -> Path:
    """Needle-test heatmaps, one panel per method: depth on y (top = start of the context),
    length on x, score in [0, 100] as colour (red = missed, green = found); grey = not run."""
    methods = list(grids)
    columns = min(len(methods), 3)
    rows = -(-len(methods) // columns)
    depths = sorted({d for grid in grids.values() for d, _ in grid})
    lengths = sorted({n for grid in grids.values() for _, n in grid})
    # Constrained layout keeps titles, axis labels and the colour bar apart at any grid size.
    figure, panels = plt.subplots(
        rows,
        columns,
        figsize=(1.6 + 0.75 * len(lengths) * columns, 0.9 + (0.42 * len(depths) + 0.7) * rows),
        dpi=110,
        squeeze=False,
        layout="constrained",
    )
    for axes in panels.flat[len(methods) :]:
        axes.set_visible(False)
    colours = plt.get_cmap("RdYlGn").with_extremes(bad="#e6e6e6")
    image = None
    for index, (axes, method) in enumerate(zip(panels.flat, methods, strict=False)):
        grid = grids[method]
        values = [[grid.get((d, n), float("nan")) for n in lengths] for d in depths]
        image = axes.imshow(values, cmap=colours, vmin=0, vmax=100, aspect="auto")
        for y, row in enumerate(values):
            for x, value in enumerate(row):
                axes.text(x, y, f"{value:.0f}" if value == value else "-", ha="center", va="center", fontsize=7)
        axes.set_xticks(range(len(lengths)), [length_label(n) for n in lengths], fontsize=8)
        axes.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=8)
        axes.set_title(method, fontsize=9)
        if index + columns >= len(methods):  # no panel below: the lowest of its column
            axes.set_xlabel("input length", fontsize=8)
        if index % columns == 0:
            axes.set_ylabel("needle depth", fontsize=8)
    figure.suptitle(f"{title} (grey: not run)", fontsize=10)
    figure.colorbar(image, ax=panels.ravel().tolist(), shrink=0.8, label="score (%)")
    return _write(figure, path)


def plot_loss_by_position(
    curves: dict[str, list[float]],
    path: Path,
    *,
    bucket: int,
    title: str,
    trained_length: int | None = None,
) -> Path:
    """Mean loss (nats per token) of each ``bucket`` of positions, one line per method: where a
    method stops using its context, its curve turns up."""
    return _plot_by_position(
        curves, path, bucket=bucket, title=title, trained_length=trained_length, ylabel="loss (nats per token)"
    )


def length_label(n: int) -> str:
    """4096 -> "4k"; lengths that are not whole thousands of 1024 stay as numbers."""
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)


def plot_perplexity_by_position(
    curves: dict[str, list[float]],
    path: Path,
    *,
    bucket: int,
    title: str,
    trained_length: int | None = None,
) -> Path:
    """Perplexity of each ``bucket`` of positions, one line per method (log scale)."""
    return _plot_by_position(
        curves, path, bucket=bucket, title=title, trained_length=trained_length, ylabel="perplexity", log=True
    )


def _plot_by_position(
    curves, path: Path, *, bucket: int, title: str, trained_length: int | None, ylabel: str, log: bool = False
) -> Path:
    """One line per method of a value per ``bucket`` of positions; a dashed line at the trained length."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for index, (method, values) in enumerate(curves.items()):
        axes.plot(
            [bucket * (k + 1) for k in range(len(values))],
            values,
            linewidth=1.8,
            marker="o" if len(values) < 4 else None,  # a curve of a point or two shows as points
            label=method,
            linestyle=_line_style(index),
        )
    _mark_trained_length(axes, trained_length)
    if log:
        axes.set_yscale("log")
    axes.set_xlabel(f"position (end of each {bucket}-token bucket)")
    axes.set_ylabel(ylabel)
    return _save(figure, axes, path, title=title)


def _mark_trained_length(axes, trained_length: int | None) -> None:
    """A dashed line at the trained length, labelled above the axes where no curve runs."""
    if trained_length:
        axes.axvline(trained_length, color="grey", linestyle="--", linewidth=1)
        axes.annotate(
            "trained length",
            (trained_length, 1.0),
            xycoords=("data", "axes fraction"),
            xytext=(0, 2),
            textcoords="offset points",
            va="bottom",
            ha="center",
            fontsize=8,
            color="grey",
        )


def _line_style(index: int) -> str:
    """Solid for the first ten lines; the colour cycle has ten colours, so later lines are dashed."""
    return "-" if index < 10 else "--"


def _save(figure, axes, path: Path, *, title: str) -> Path:
    axes.set_title(title, pad=14)  # room for the trained-length label
    axes.grid(alpha=0.3, which="both")
    # Beside the plot, not on it: with ten methods a legend inside covers the lines.
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.set_figwidth(figure.get_figwidth() + 2.6)
    figure.tight_layout()
    return _write(figure, path)


def _write(figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
