"""Series: studies read together along an axis (the study config's ``series``; e.g. the budget study's local steps
per round, one study per budget point).

At every point (a study and one of its data sets) each row is the study table's row, at the grid point chosen on
dev (:mod:`fedbt.report.selection`). A gap ``a - b`` is the difference of two rows' scores over the federation
seeds they share (the same seed deals the same partition and data order, so the runs pair up): its mean, the 95 %
Student t interval of the per-seed differences, and the paired t-test's p-value (:mod:`fedbt.report.stats`),
Holm-adjusted over the series' points for each gap and metric. Beside it: ``a``'s cumulative client FLOPs and upload
over the run in percent of ``b``'s (measured), so a gap at equal compute shows that it is one.

Outputs: ``tables/<series>.json|.md|.tex|.html`` (one row per point and shown metric), ``figures/<series>_cost``
(every row's headline curve of every point against the cumulative client FLOPs and uploaded bytes, mean over the
seeds with its 95 % t band) and ``figures/<series>_gap`` (each gap of the headline metric with its interval along
the axis).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import textwrap
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fedbt.report.figures import save
from fedbt.report.runs import RunResult
from fedbt.report.spec import Row, Table
from fedbt.report.stats import MIN_N, compare, holm, t_interval
from fedbt.report.tables import DASH, METRIC_NAMES, Grid, higher_is_better, row_samples


@dataclass(frozen=True)
class Point:
    """One point of a series: a study, one of its data sets, and its value on the axis."""

    study: str
    data: str
    value: float


@dataclass(frozen=True)
class Series:
    """Studies read together along an axis, and the gaps ``a - b`` between rows it reports."""

    name: str
    title: str
    axis: str
    points: list[Point]
    gaps: list[tuple[str, str]]

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Series:
        points = [Point(**point) for point in raw["points"]]
        return cls(raw["name"], raw["title"], raw["axis"], points, [tuple(gap) for gap in raw["gaps"]])


@dataclass(frozen=True)
class Gap:
    """The gap ``a - b`` of one metric at one point (see the module docstring); ``no_test`` says why there is no
    p-value (``n<3``, ``diverged``, a row missing)."""

    a: str
    b: str
    study: str
    data: str
    value: float
    metric: str
    a_mean: float | None
    b_mean: float | None
    mean: float | None
    std: float | None
    n: int
    ci95: tuple[float, float] | None
    p_value: float | None
    p_adjusted: float | None
    test: str | None
    no_test: str | None
    higher_is_better: bool
    a_flops_pct_of_b: float | None
    a_upload_pct_of_b: float | None


def _row(table: Table, variant: str) -> Row | None:
    return next((row for row in table.rows if row.variant == variant), None)


def _runs(row: Row | None, data: str, results: Mapping[str, RunResult]) -> list[RunResult]:
    return [] if row is None else [results[p] for p in row.runs.get(data, []) if p in results]


def _pct(a: list[float], b: list[float]) -> float | None:
    if not a or not b or not statistics.fmean(b):
        return None
    return 100.0 * statistics.fmean(a) / statistics.fmean(b)


def _gap(point: Point, pair: tuple[str, str], metric: str, table: Table, results: Mapping[str, RunResult]) -> Gap:
    """One gap, unadjusted (:func:`gaps` adjusts the p-values)."""
    rows = [_row(table, variant) for variant in pair]
    (a, a_div), (b, b_div) = (row_samples(row, point.data, metric, results) if row else ({}, 0) for row in rows)
    shared = sorted(set(a) & set(b))
    diffs = [a[seed] - b[seed] for seed in shared]
    comparison = compare({s: a[s] for s in shared}, {s: b[s] for s in shared}) if not (a_div or b_div) else None
    no_test = None
    if comparison is None:
        no_test = "diverged" if a_div or b_div else "missing row" if None in rows else f"n<{MIN_N}"
    a_runs, b_runs = (_runs(row, point.data, results) for row in rows)
    return Gap(
        a=pair[0],
        b=pair[1],
        study=point.study,
        data=point.data,
        value=point.value,
        metric=metric,
        a_mean=statistics.fmean(a.values()) if a else None,
        b_mean=statistics.fmean(b.values()) if b else None,
        mean=statistics.fmean(diffs) if diffs else None,
        std=statistics.stdev(diffs) if len(diffs) > 1 else None,
        n=len(diffs),
        ci95=t_interval(diffs),
        p_value=comparison.p_value if comparison else None,
        p_adjusted=None,
        test=comparison.test if comparison else None,
        no_test=no_test,
        higher_is_better=higher_is_better(metric),
        a_flops_pct_of_b=_pct([_spent(r)[0] for r in a_runs], [_spent(r)[0] for r in b_runs]),
        a_upload_pct_of_b=_pct([_spent(r)[1] for r in a_runs], [_spent(r)[1] for r in b_runs]),
    )


def _spent(run: RunResult) -> tuple[float, float]:
    """A run's cumulative client FLOPs and uploaded bytes (the whole run's, not per client-round: a matched run
    below one step a client-round sits some client-rounds out)."""
    return run.spent[max(run.spent)] if run.spent else (0.0, 0.0)


def metrics_of(table: Table, data: str, results: Mapping[str, RunResult]) -> list[str]:
    """The scores a point reports: the headline (held-out loss of pre-training, the test metric of fine-tuning)
    and, after pre-training with a downstream task, the task's primary metric."""
    run = next((run for row in table.rows for run in _runs(row, data, results)), None)
    return [] if run is None else [m for m in dict.fromkeys([run.headline, run.metric]) if m]


def gaps(series: Series, tables: Mapping[str, Table], results: Mapping[str, RunResult]) -> list[Gap]:
    """Every gap of the series at every point and metric, Holm-adjusted per gap and metric over the points."""
    found = [
        _gap(point, pair, metric, tables[point.study], results)
        for point in series.points
        for metric in metrics_of(tables[point.study], point.data, results)
        for pair in series.gaps
    ]
    families: dict[tuple, list[int]] = {}
    for i, gap in enumerate(found):
        families.setdefault((gap.a, gap.b, gap.metric), []).append(i)
    for members in families.values():
        adjusted = holm({i: found[i].p_value for i in members})
        for i in members:
            found[i] = dataclasses.replace(found[i], p_adjusted=adjusted[i])
    return found


# ------------------------------------------------------------------------------------------- tables


def _p(gap: Gap) -> str:
    if gap.p_adjusted is None:
        return gap.no_test or DASH
    return "<0.0001" if gap.p_adjusted < 1e-4 else f"{gap.p_adjusted:.4f}"


def _interval(gap: Gap) -> str:
    if gap.mean is None:
        return DASH
    if gap.ci95 is None:
        return f"{gap.mean:+.4f}"
    return f"{gap.mean:+.4f} ± {(gap.ci95[1] - gap.ci95[0]) / 2:.4f}"


def _value(value: float) -> str:
    return f"{value:g}"


def grid(series: Series, found: list[Gap]) -> Grid:
    """The series' table: one row per point and metric, per gap its mean ± CI half-width, Holm-adjusted p and
    ``a``'s FLOP % of ``b``."""
    head = [series.axis, "data", "score"]
    for a, b in series.gaps:
        head += [f"{a} − {b}", "p (Holm)", f"{a} FLOP % of {b}"]
    keys = list(dict.fromkeys((g.value, g.data, g.metric) for g in found))
    body = []
    for value, data, metric in keys:
        cells = [_value(value), data, METRIC_NAMES.get(metric, metric)]
        for pair in series.gaps:
            gap = next(g for g in found if (g.value, g.data, g.metric, (g.a, g.b)) == (value, data, metric, pair))
            flops = DASH if gap.a_flops_pct_of_b is None else f"{gap.a_flops_pct_of_b:.1f}"
            cells += [_interval(gap), _p(gap), flops]
        body.append(cells)
    return Grid(series.name, series.title, head, body, notes(series, found))


def notes(series: Series, found: list[Gap]) -> str:
    """The caption under the series' table."""
    ns = sorted({g.n for g in found if g.n})
    studies = ", ".join(f"{p.study} ({_value(p.value)})" for p in series.points)
    return (
        f"Gaps a − b of each score at each point of the series (studies: {studies}), each row at its grid point "
        f"chosen on dev in its study's table: mean ± half-width of the 95 % Student t interval of the per-seed "
        f"differences over n = {', '.join(map(str, ns)) or 0} federation seeds (paired: the same seed deals the "
        f"same partition); p (Holm): the paired t-test (scipy) of a against b, Holm-adjusted over the series' "
        f"points for that gap and score (n<{MIN_N}: no test). Losses are better lower, task scores higher: a "
        f"negative loss gap means a has the lower loss, a positive task-score gap the higher score. FLOP % of "
        f"b: a's cumulative measured client FLOPs in percent of b's (100: equal compute). JSON: "
        f"every gap with a_mean, b_mean, std, ci95, p_value, p_adjusted, a_upload_pct_of_b."
    )


def to_json(series: Series, found: list[Gap]) -> dict[str, Any]:
    """The series for scripts: its points and every gap (:class:`Gap` fields)."""
    return {
        "series": series.name,
        "title": series.title,
        "axis": series.axis,
        "points": [asdict(point) for point in series.points],
        "gap_pairs": [list(pair) for pair in series.gaps],
        "gaps": [asdict(gap) for gap in found],
        "notes": notes(series, found),
    }


# ------------------------------------------------------------------------------------------ figures


def _band(values: list[float]) -> tuple[float, float, float]:
    """Mean and 95 % t interval (the mean twice with one value)."""
    mean = statistics.fmean(values)
    low, high = t_interval(values) or (mean, mean)
    return mean, low, high


def cost_figure(
    series: Series, tables: Mapping[str, Table], results: Mapping[str, RunResult], stem: Path
) -> list[Path]:
    """The headline curve of every row at every point against the cumulative client FLOPs (top) and uploaded
    bytes (bottom): color by row, line style and marker by point, mean over seeds with its 95 % t band; a row that
    trains nothing (``none``) as a dotted level line."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, axes = plt.subplots(2, 1, figsize=(8.0, 8.4))
    fig.suptitle(textwrap.fill(series.title, width=100), fontsize=9)
    colors, styles = {}, ["-", "--", ":", "-."]
    markers, ylabel = "osD^v", ""
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, point in enumerate(series.points):
        for row in tables[point.study].rows:
            runs = [r for r in _runs(row, point.data, results) if r.curve]
            if not runs:
                continue
            color = colors.setdefault(row.variant, cycle[len(colors) % len(cycle)])
            ylabel = METRIC_NAMES.get(runs[0].curve_name, runs[0].curve_name)
            rounds = sorted(set.intersection(*(set(r.curve) for r in runs)))
            bands = [_band([r.curve[i] for r in runs]) for i in rounds]
            for ax, part in ((axes[0], 0), (axes[1], 1)):
                spent = [statistics.fmean(r.spent[i][part] for r in runs) for i in rounds]
                if not any(spent):
                    ax.axhline(bands[-1][0], color=color, linestyle=":", linewidth=1)
                    continue
                ax.plot(
                    spent,
                    [b[0] for b in bands],
                    color=color,
                    linestyle=styles[k % 4],
                    marker=markers[k % 5],
                    markersize=3,
                )
                ax.fill_between(spent, [b[1] for b in bands], [b[2] for b in bands], color=color, alpha=0.12)
    handles = [Line2D([], [], color=c, label=v) for v, c in colors.items()]
    handles += [
        Line2D([], [], color="grey", linestyle=styles[k % 4], marker=markers[k % 5], label=f"{_value(p.value)}")
        for k, p in enumerate(series.points)
    ]
    for ax, xlabel in ((axes[0], "cumulative client FLOPs (measured)"), (axes[1], "cumulative bytes uploaded")):
        ax.set(xlabel=xlabel, ylabel=ylabel)
        ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].legend(handles=handles, fontsize=7, loc="best", ncol=2, title=f"row / {series.axis}", title_fontsize=7)
    return save(fig, stem)


def gap_figure(series: Series, found: list[Gap], stem: Path) -> list[Path]:
    """Each gap of the headline metric with its 95 % interval along the axis (log scale), and the zero line."""
    import matplotlib.pyplot as plt

    headline = found[0].metric if found else ""
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    fig.suptitle(textwrap.fill(f"{series.title}: gaps", width=80), fontsize=9)
    values = sorted({p.value for p in series.points})
    spread = (values[-1] / values[0]) ** (1 / 40) if values and values[0] > 0 else 1.0
    for k, pair in enumerate(series.gaps):
        shown = [g for g in found if (g.a, g.b) == pair and g.metric == headline and g.mean is not None]
        offset = spread ** (k - (len(series.gaps) - 1) / 2)
        x = [g.value * offset for g in shown]
        y = [g.mean for g in shown]
        low = [g.mean - g.ci95[0] if g.ci95 else 0.0 for g in shown]
        high = [g.ci95[1] - g.mean if g.ci95 else 0.0 for g in shown]
        ax.errorbar(x, y, yerr=[low, high], fmt="o-", capsize=3, label=f"{pair[0]} − {pair[1]}")
    ax.axhline(0.0, color="grey", linewidth=1)
    better = "better" if not higher_is_better(headline) else "worse"
    ax.set(xlabel=series.axis, ylabel=f"gap in {METRIC_NAMES.get(headline, headline)} (below 0: a {better})")
    if values and values[0] > 0 and math.isfinite(values[-1] / values[0]):
        ax.set_xscale("log", base=2)
        ax.set_xticks(values, [_value(v) for v in values])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return save(fig, stem)
