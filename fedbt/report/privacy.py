"""The privacy budget in the report: a row's epsilon and update dimension (the ``epsilon`` and ``update dim``
columns of a table whose runs have ``privacy``), their caption, and the figure of each method's score against the
epsilon it spent."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedbt.report.runs import PRIVACY_MEANS, RunResult
from fedbt.report.spec import Row, Table
from fedbt.report.stats import t_interval


@dataclass(frozen=True)
class RowPrivacy:
    """What a row's runs spent and how: ``epsilon`` at ``delta`` (None: no noise, infinite), the settings, and the
    means over the runs of the update dimension, the expected noise norm in the mean update, the share of updates
    clipped and their norm before clipping."""

    epsilon: float | None
    delta: float
    noise_multiplier: float
    clip: float
    noise: str
    update_dim: float | None
    noise_norm: float | None
    clipped_fraction: float | None
    update_norm: float | None


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def row_privacy(runs: list[RunResult]) -> RowPrivacy | None:
    """The privacy of a row's runs (None: they have none)."""
    private = [run.privacy for run in runs if run.privacy]
    if not private:
        return None
    first = private[0]
    epsilons = [p["epsilon"] for p in private if p["epsilon"] is not None]
    return RowPrivacy(
        epsilon=max(epsilons) if epsilons else None,
        delta=first["delta"],
        noise_multiplier=first["noise_multiplier"],
        clip=first["clip"],
        noise=first["noise"],
        **{key: _mean([p[key] for p in private if p.get(key) is not None]) for key in PRIVACY_MEANS},
    )


def epsilon_text(privacy: RowPrivacy | None) -> str:
    """The epsilon cell: blank without DP, ``inf`` for clipping without noise."""
    if privacy is None:
        return "–"
    if privacy.epsilon is None:
        return "inf"
    return f"{privacy.epsilon:.0f}" if privacy.epsilon >= 100 else f"{privacy.epsilon:.3g}"


def notes(rows: list[tuple[str, RowPrivacy | None]]) -> str:
    """The caption's sentences on privacy (empty when no row has DP)."""
    private = [(variant, p) for variant, p in rows if p is not None]
    if not private:
        return ""
    deltas = sorted({p.delta for _, p in private})
    return (
        f" epsilon: the client-level differential privacy the run spent by its last round, at delta = "
        f"{', '.join(f'{d:g}' for d in deltas)} (privacy.delta), from dp-accounting's RDP accountant: each round "
        f"samples a fixed-size subset of the clients without replacement, accounted under the replace-one relation "
        f"with noise multiplier sigma / 2 (the sum of updates clipped to C moves by up to 2C when one client's data is "
        f"replaced; fedbt/privacy_accounting.py); – no DP, inf: clipping without noise. update dim: elements a "
        f"client uploads per round, the length of the vector clipped to C; the noise in the round's mean update has "
        f"expected norm sigma C sqrt(dim) / m for m uploads (JSON: privacy.noise_norm, with clip, noise_multiplier, "
        f"the share of updates clipped and their mean norm before clipping)."
    )


def privacy_figure(table: Table, results: Mapping[str, RunResult], stem: Path) -> list[Path]:
    """Per column, each method's headline score (mean and 95 % t interval over the seeds) against the epsilon its
    rows spent, one line per method over its noise levels (log epsilon); a method's row without DP is a dashed
    line of its colour, the untrained starting model (``none``) a grey dotted one. Rows without noise (infinite
    epsilon) have no place on the axis. Methods at one noise level spend the same epsilon, so their points are
    drawn apart around it by a factor 1.06 per method."""
    import matplotlib.pyplot as plt

    from fedbt.report import figures

    fig, axes = figures._panels(len(table.columns), table.title, width=5.2, height=3.8)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    methods = list(dict.fromkeys(row.method for row in table.rows if row.method != "none"))
    colours = {method: palette[i % len(palette)] for i, method in enumerate(methods)}
    for ax, column in zip(axes, table.columns, strict=True):
        metric = "score"
        lines: dict[str, list[tuple[float, float, float, float]]] = {}
        for row in table.rows:
            runs = figures._runs(row, column.data, results)
            scores = [s for run in runs for s in run.headline_scores]
            if not scores:
                continue
            metric = runs[0].headline
            mean, interval = statistics.fmean(scores), t_interval(scores)
            low, high = interval or (mean, mean)
            privacy = row_privacy(runs)
            if privacy is None:
                _reference_line(ax, row, mean, colours)
            elif privacy.epsilon is not None:
                lines.setdefault(row.method, []).append((privacy.epsilon, mean, mean - low, high - mean))
        for method, points in lines.items():
            points.sort()
            x, y, below, above = zip(*points, strict=True)
            # methods at the same sigma spend the same epsilon: each is drawn a little apart (a factor 1.06 per method)
            x = [value * 1.06 ** (methods.index(method) - (len(methods) - 1) / 2) for value in x]
            ax.errorbar(x, y, yerr=[below, above], fmt="o-", capsize=3, color=colours[method], label=method)
        ylabel = metric if metric.startswith("heldout_") else f"test {metric}"
        ax.set(title=figures._title(column), xlabel="epsilon (log scale)", ylabel=ylabel)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    return figures.save(fig, stem)


def _reference_line(ax, row: Row, mean: float, colours: Mapping[str, str]) -> None:
    """A row without DP: the method's no-DP score (dashed), or the starting model's (``none``, grey dotted)."""
    if row.method == "none":
        ax.axhline(mean, color="grey", linestyle=":", label=f"{row.variant} (starting model)")
        return
    ax.axhline(mean, color=colours[row.method], linestyle="--", alpha=0.7, label=f"{row.variant} (no DP)")
