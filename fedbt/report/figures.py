"""Figures (PNG and PDF): score per round, score against uplink bytes (Pareto), score against the cost spent
so far (cumulative client FLOPs and upload, per round), client compute per method, the layer schedule of
each FedBT variant, and (runs with devices) score against simulated wall-clock."""

from __future__ import annotations

import statistics
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from fedbt.report.runs import RunResult  # noqa: E402
from fedbt.report.spec import Table  # noqa: E402


def save(fig, stem: Path) -> list[Path]:
    """Write ``stem.png`` and ``stem.pdf`` and close the figure."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".pdf")]
    fig.tight_layout()
    fig.savefig(paths[0], dpi=120)
    fig.savefig(paths[1], metadata={"CreationDate": None})
    plt.close(fig)
    return paths


def _runs(row, data: str, results: Mapping[str, RunResult]) -> list[RunResult]:
    return [results[p] for p in row.runs.get(data, []) if p in results]


def _title(column) -> str:
    return column.label if column.label == column.data else f"{column.label} ({column.data})"


def _panels(n: int, title: str, width: float = 4.2, height: float = 3.4):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    fig.suptitle(textwrap.fill(title, width=int(55 * n)), fontsize=9)
    return fig, list(axes[0])


def rounds_figure(table: Table, results: Mapping[str, RunResult], stem: Path) -> list[Path]:
    """Per column, the per-round curve (held-out MLM loss or dev score) of every row, mean over seeds."""
    fig, axes = _panels(len(table.columns), table.title)
    for ax, column in zip(axes, table.columns, strict=True):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ylabel = ""
        for row in table.rows:
            runs = [r for r in _runs(row, column.data, results) if r.curve]
            if not runs:
                continue
            ylabel = runs[0].curve_name
            rounds = sorted(set().union(*(r.curve for r in runs)))
            means = [statistics.fmean(r.curve[i] for r in runs if i in r.curve) for i in rounds]
            ax.plot([i + 1 for i in rounds], means, marker="o", label=row.variant)
        ax.set(title=_title(column), xlabel="round", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    return save(fig, stem)


def pareto_figure(table: Table, results: Mapping[str, RunResult], stem: Path) -> list[Path]:
    """Per column, each row's headline score (the final held-out loss of pre-training, the test score of
    fine-tuning) against its total uplink bytes; the Pareto front (less upload and a better score) is drawn as a
    step line. Rows that upload nothing (centralised, no training) have no place on the axis."""
    from fedbt.report.tables import higher_is_better

    fig, axes = _panels(len(table.columns), table.title)
    for ax, column in zip(axes, table.columns, strict=True):
        points, metric = [], "score"
        for row in table.rows:
            runs = _runs(row, column.data, results)
            scores = [s for r in runs for s in r.headline_scores]
            if not scores or not any(r.upload_bytes_total for r in runs):
                continue
            metric = runs[0].headline
            x = statistics.fmean(r.upload_bytes_total for r in runs)
            y, err = statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0
            points.append((x, y))
            ax.errorbar(x, y, yerr=err, fmt="o", capsize=3, label=row.variant)
        sign = 1 if higher_is_better(metric) else -1
        front, best = [], -np.inf
        for x, y in sorted(points):
            if sign * y > best:
                front.append((x, y))
                best = sign * y
        if front:
            ax.step(*zip(*front, strict=True), where="post", color="grey", alpha=0.5, linestyle="--")
        ylabel = metric if metric.startswith("heldout_") else f"test {metric}"
        ax.set(title=_title(column), xlabel="total uplink bytes", ylabel=ylabel)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="best")
    return save(fig, stem)


def cost_figure(table: Table, results: Mapping[str, RunResult], stem: Path) -> list[Path]:
    """Per column, two panels: the per-round curve (held-out MLM loss, or dev score) of every row against the
    client FLOPs and against the bytes uploaded so far (all clients, cumulative; mean over seeds). A method
    close to FedAvg at a fraction of the cost reaches FedAvg's level further left."""
    fig, axes = plt.subplots(
        2, len(table.columns), figsize=(4.2 * len(table.columns), 6.4), squeeze=False, sharey="col"
    )
    fig.suptitle(textwrap.fill(table.title, width=int(55 * len(table.columns))), fontsize=9)
    for col, column in enumerate(table.columns):
        ylabel = ""
        for row in table.rows:
            runs = [r for r in _runs(row, column.data, results) if r.curve and any(f for f, _ in r.spent.values())]
            if not runs:
                continue
            ylabel = runs[0].curve_name
            rounds = sorted(set().union(*(r.curve for r in runs)))
            y = [statistics.fmean(r.curve[i] for r in runs if i in r.curve) for i in rounds]
            for ax, part in ((axes[0][col], 0), (axes[1][col], 1)):
                x = [statistics.fmean(r.spent[i][part] for r in runs if i in r.spent) for i in rounds]
                ax.plot(x, y, marker="o", markersize=3, label=row.variant)
        for ax, xlabel in (
            (axes[0][col], "cumulative client FLOPs (measured)"),
            (axes[1][col], "cumulative bytes uploaded"),
        ):
            ax.set(xlabel=xlabel, ylabel=ylabel)
            ax.set_xscale("log")
            ax.grid(alpha=0.3)
        axes[0][col].set_title(_title(column))
    axes[0][-1].legend(fontsize=7, loc="best")
    return save(fig, stem)


def compute_figure(table: Table, results: Mapping[str, RunResult], stem: Path) -> list[Path]:
    """Client compute per client and trained round, per row (mean over all the row's runs): measured FLOPs
    (deterministic) beside compute seconds (process CPU time on CPU, synchronised device time on CUDA)."""
    labels, flops, seconds = [], [], []
    for row in table.rows:
        runs = [r for c in table.columns for r in _runs(row, c.data, results)]
        if runs:
            labels.append(row.variant)
            flops.append(statistics.fmean(r.costs.measured_flops for r in runs) / 1e9)
            seconds.append(statistics.fmean(r.costs.seconds for r in runs))
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 0.45 * max(len(labels), 2) + 1.4), sharey=True)
    for ax, values, xlabel in (
        (axes[0], flops, "measured GFLOPs per client-round"),
        (axes[1], seconds, "compute seconds per client-round"),
    ):
        ax.barh(labels, values, color="tab:blue")
        ax.set(xlabel=xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[0].invert_yaxis()
    fig.suptitle(textwrap.fill(table.title, width=90), fontsize=9)
    return save(fig, stem)


def _step_values(run: RunResult, grid: np.ndarray) -> np.ndarray:
    """The run's score at each time of ``grid``: that of the last round finished by then (NaN before its first)."""
    rounds = sorted(r for r in run.curve if r in run.clock)
    ends = np.array([run.clock[r] for r in rounds])
    scores = np.array([run.curve[r] for r in rounds])
    index = np.searchsorted(ends, grid, side="right") - 1
    return np.where(index >= 0, scores[np.clip(index, 0, None)], np.nan)


def time_figure(table: Table, results: Mapping[str, RunResult], stem: Path) -> list[Path]:
    """Per column, each row's per-round score (held-out MLM loss, or dev score) against simulated wall-clock on the
    clients' devices (minutes, :mod:`fedbt.timing`): per seed a step curve (the score of the last finished round),
    the mean over seeds drawn with its 95 % t interval as a band, from the time every seed has finished a round."""
    from fedbt.report.stats import t_interval

    fig, axes = _panels(len(table.columns), f"{table.title}: score against simulated time", width=7.0, height=4.4)
    for ax, column in zip(axes, table.columns, strict=True):
        ylabel = ""
        for row in table.rows:
            runs = [r for r in _runs(row, column.data, results) if r.curve and r.clock]
            if not runs:
                continue
            ylabel = runs[0].curve_name
            start, end = max(min(r.clock.values()) for r in runs), max(max(r.clock.values()) for r in runs)
            grid = np.unique(np.concatenate([[start, end], *[list(r.clock.values()) for r in runs]]))
            grid = grid[grid >= start]
            values = np.array([_step_values(run, grid) for run in runs])
            mean = values.mean(axis=0)
            label = f"{row.variant} (n={len(runs)})"
            (line,) = ax.step(grid / 60, mean, where="post", marker="o", markersize=3, label=label)
            bands = [t_interval(list(values[:, i])) for i in range(len(grid))] if len(runs) > 1 else []
            if bands and all(bands):
                low, high = zip(*bands, strict=True)
                ax.fill_between(grid / 60, low, high, step="post", alpha=0.08, color=line.get_color(), linewidth=0)
        ax.set(title=_title(column), xlabel="simulated wall-clock on the devices (minutes)", ylabel=ylabel)
        ax.grid(alpha=0.3)
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save(fig, stem)


def schedule_figure(schedules: Mapping[str, list[dict[str, Any]]], layers: int, stem: Path) -> list[Path]:
    """One panel per variant: rounds x global layers, dark = trained and uploaded, light = in the local model
    but frozen, white = not on the client."""
    names = list(schedules)
    cols = min(3, max(len(names), 1))
    nrows = max(1, -(-len(names) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 2.6 * nrows), squeeze=False)
    cmap = matplotlib.colors.ListedColormap(["white", "#9ecae1", "#08519c"])
    for ax, name in zip(axes.flat, names, strict=False):
        rows = schedules[name]
        grid = np.zeros((len(rows), layers))
        for i, row in enumerate(rows):
            grid[i, list(row["local_layers"])] = 1
            grid[i, list(row["trained_layers"])] = 2
        ax.imshow(grid, cmap=cmap, vmin=0, vmax=2, aspect="auto")
        ax.set(title=name, xlabel="global layer", ylabel="round", xticks=range(layers), yticks=range(len(rows)))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.suptitle("Layer schedule on bert-base-uncased (client 0): dark trained+uploaded, light frozen", fontsize=9)
    return save(fig, stem)
