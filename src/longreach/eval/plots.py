"""PNG plots of evaluation results (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy_by_length(
    table: dict[str, dict[int, tuple[int, int]]],
    path: Path,
    *,
    title: str,
    trained_length: int | None = None,
) -> Path:
    """Accuracy (%) against input length, one line per method; a dashed line at the trained length."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for method, cells in table.items():
        lengths = sorted(cells)
        accuracy = [100.0 * cells[n][0] / cells[n][1] for n in lengths]
        axes.plot(lengths, accuracy, marker="o", linewidth=2, label=method)
    if trained_length:
        axes.axvline(trained_length, color="grey", linestyle="--", linewidth=1)
        axes.annotate(" trained length", (trained_length, 102), va="top", ha="left", fontsize=8, color="grey")
    axes.set_xscale("log", base=2)
    all_lengths = sorted({n for cells in table.values() for n in cells})
    axes.set_xticks(all_lengths, [f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in all_lengths])
    axes.set_ylim(-5, 105)
    axes.set_xlabel("input length (tokens)")
    axes.set_ylabel("accuracy (%)")
    axes.legend(fontsize=8, loc="lower left")
    return _save(figure, axes, path, title=title, legend="lower left")


def plot_perplexity_by_position(
    curves: dict[str, list[float]],
    path: Path,
    *,
    bucket: int,
    title: str,
    trained_length: int | None = None,
) -> Path:
    """Perplexity of each ``bucket`` of positions, one line per method (log scale)."""
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    for method, values in curves.items():
        ends = [bucket * (k + 1) for k in range(len(values))]
        axes.plot(ends, values, linewidth=1.8, label=method)
    if trained_length:
        axes.axvline(trained_length, color="grey", linestyle="--", linewidth=1)
    axes.set_yscale("log")
    axes.set_xlabel(f"position (end of each {bucket}-token bucket)")
    axes.set_ylabel("perplexity")
    return _save(figure, axes, path, title=title, legend="upper left")


def _save(figure, axes, path: Path, *, title: str, legend: str) -> Path:
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8, loc=legend)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return path
