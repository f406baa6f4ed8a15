"""Paper-style tables: one row per method variant with compute, communication and task scores, rendered as
Markdown, LaTeX, HTML and JSON (the machine-readable interface for scripts, ``<table>.json``). A study whose runs
have resource tiers gets a second, per-tier table beside it (``<table>-tiers``: one row per method and tier, its
FLOPs, upload, memory and budget), so the main table keeps to method, cost and score columns (at most
:data:`MAX_COLUMNS`); the paper's compute and communication percentages sit in the caption."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from html import escape
from typing import Any

from fedbt import paper
from fedbt.report.deployment import RowTiming, notes_text, row_timing
from fedbt.report.privacy import RowPrivacy, epsilon_text, row_privacy
from fedbt.report.privacy import notes as privacy_notes
from fedbt.report.runs import RunResult
from fedbt.report.selection import LrChoice, shown
from fedbt.report.spec import TIER_SUFFIX, Row, Table
from fedbt.report.stats import MIN_N, PAIRED, WELCH, Comparison, compare, holm, t_interval

DASH = "–"
DIVERGED = "diverged"
MAX_COLUMNS = 15
"""The widest a main table is meant to be (a test holds the shipped studies to it)."""


def higher_is_better(metric: str) -> bool:
    """Scores are better higher (accuracy, F1), losses lower (``heldout_mlm_loss``)."""
    return not metric.endswith("loss")


@dataclass(frozen=True)
class Cell:
    """A score over ``n`` federation seeds: mean, sample standard deviation, 95 % Student t interval, the p-value
    of the difference from the reference row, Holm-adjusted over the table's rows for that metric, and the test
    that gave it. ``diverged`` of the ``n`` runs had a non-finite loss or score: then mean, spread and test are
    None. ``no_test`` says why a row other than the reference has no p-value (``n<3``, ``diverged``)."""

    mean: float | None
    std: float | None
    n: int
    ci95: tuple[float, float] | None = None
    p_vs_reference: float | None = None
    p_adjusted: float | None = None
    test: str | None = None
    higher_is_better: bool = True
    diverged: int = 0
    no_test: str | None = None


@dataclass(frozen=True)
class Costs:
    """A row's client costs per trained client-round (mean over its runs) and in percent of the reference."""

    flops_per_client_round: float | None
    flops_pct: float | None
    analytic_flops_per_client_round: float | None
    analytic_flops_pct: float | None
    seconds_per_client_round: float | None
    seconds_pct: float | None
    wall_seconds_per_client_round: float | None
    upload_mb_per_client_round: float | None
    upload_pct: float | None
    steps: int
    """Local steps of all the row's client-rounds (summed over its runs)."""
    measured_steps: int | None
    """How many of them FlopCounterMode counted (None: a run does not record it); the FLOPs of the others are
    scaled from the counted ones by the analytic model of each step's shape."""


@dataclass(frozen=True)
class TierCosts:
    """A row's costs for the clients of one resource tier, per client-round of the tier (mean over the row's runs;
    a round a client sat out costs 0), in percent of the reference row's same tier, and its memory."""

    flops_per_client_round: float | None
    flops_pct: float | None
    upload_mb_per_client_round: float | None
    upload_pct: float | None
    state_mb: float | None
    """The largest training state (parameters, gradients, optimizer state) of a client of the tier that trained
    (None: none did)."""
    memory_estimate_mb: float | None
    """The largest memory estimate of a client plan of the tier (:mod:`fedbt.memory`: training state, saved
    activations, the method's extra tensors), what the budget binds; recorded for dropped clients too."""
    peak_memory_mb: float | None
    memory_budget_mb: float | None
    state_exceeds_budget: bool | None
    peak_memory_exceeds_budget: bool | None
    estimate_exceeds_budget: bool | None = None
    """The plan's memory estimate exceeds the budget: under ``budget_policy: drop`` its clients sat out."""


@dataclass(frozen=True)
class TableRow:
    """The numbers of one row, ready to print."""

    variant: str
    method: str
    costs: Costs
    bert_base_upload_pct: float | None
    paper_compute_pct: float | None
    paper_comm_pct: float | None
    scores: dict[str, dict[str, Cell]]
    """data set -> metric -> cell."""
    paper_scores: dict[str, float | None]
    plan_sha256: str | None
    """Digest of the plans and local steps of all the row's runs (by data set and seed): equal digests, equal
    training."""
    lr: dict[str, LrChoice]
    """For a study with a grid (``lr_grid``, a variant's ``grid``): the grid point chosen on dev per data set
    (empty otherwise)."""
    tiers: dict[str, TierCosts] | None = None
    """Per resource tier (None: the table's runs have no tiers)."""
    dropped_pct: float | None = None
    """Share (0..100) of client-rounds dropped for not fitting the memory budget, mean over the row's runs
    (None: its runs do not record it)."""
    second: dict[str, SecondTest] | None = None
    """Per data set, the headline score tested against the table's second reference (None: it has none)."""
    note: str | None = None
    """The spec's sentence about this row (:attr:`fedbt.report.spec.Row.note`), carried into the caption."""
    privacy: RowPrivacy | None = None
    """The row's client-level differential privacy: epsilon spent, settings, update dimension (None: no DP)."""
    timing: RowTiming | None = None
    """Simulated device time (:mod:`fedbt.report.deployment`; None: the row's runs have no devices)."""


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _pct(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else 100.0 * value / reference


def _runs(row: Row, results: Mapping[str, RunResult], data: str | None = None) -> list[RunResult]:
    paths = row.runs.get(data, []) if data is not None else [p for paths in row.runs.values() for p in paths]
    return [results[p] for p in paths if p in results]


def row_samples(row: Row, data: str, metric: str, results: Mapping[str, RunResult]) -> tuple[dict[str, float], int]:
    """The metric's samples (one per federation seed) of the row's runs that did not diverge, and how many did."""
    runs = [run for run in _runs(row, results, data) if metric in run.scores]
    samples = {key: value for run in runs if not run.diverged for key, value in run.scores[metric].items()}
    return samples, sum(run.diverged for run in runs)


def _cost_means(runs: list[RunResult]) -> dict[str, float | None]:
    fields = ("measured_flops", "analytic_flops", "seconds", "wall_seconds", "upload_mb")
    return {name: _mean([getattr(r.costs, name) for r in runs]) for name in fields}


def _measured_steps(runs: list[RunResult]) -> int | None:
    counted = [run.measured_steps for run in runs]
    return None if not runs or None in counted else sum(counted)


def _costs(row: Row, reference: Row | None, results: Mapping[str, RunResult]) -> Costs:
    runs = _runs(row, results)
    ours = _cost_means(runs)
    ref = _cost_means(_runs(reference, results)) if reference else dict.fromkeys(ours)
    return Costs(
        flops_per_client_round=ours["measured_flops"],
        flops_pct=_pct(ours["measured_flops"], ref["measured_flops"]),
        analytic_flops_per_client_round=ours["analytic_flops"],
        analytic_flops_pct=_pct(ours["analytic_flops"], ref["analytic_flops"]),
        seconds_per_client_round=ours["seconds"],
        seconds_pct=_pct(ours["seconds"], ref["seconds"]),
        wall_seconds_per_client_round=ours["wall_seconds"],
        upload_mb_per_client_round=ours["upload_mb"],
        upload_pct=_pct(ours["upload_mb"], ref["upload_mb"]),
        steps=sum(run.steps for run in runs),
        measured_steps=_measured_steps(runs),
    )


def tier_names(table: Table, results: Mapping[str, RunResult]) -> list[str]:
    """The resource tiers of the table's runs, in config order (empty: no run has tiers)."""
    names: list[str] = []
    for row in table.rows:
        for run in _runs(row, results):
            names += [name for name in run.tiers or {} if name not in names]
    return names


def _tier_means(runs: list[RunResult], name: str) -> dict[str, Any]:
    """A tier's figures over the runs; the measured memory (state, peak) only of runs in which a client of the tier
    trained (None where every client-round sat out: nothing was held, nothing measured)."""
    tiers = [run.tiers[name] for run in runs if run.tiers and name in run.tiers]
    trained = [t for t in tiers if t.get("trained_client_rounds", 1)]
    flags = [t["state_exceeds_budget"] for t in trained if t["state_exceeds_budget"] is not None]
    peaks = [t["peak_memory_exceeds_budget"] for t in trained if t["peak_memory_exceeds_budget"] is not None]
    estimates = [t["estimate_exceeds_budget"] for t in tiers if t.get("estimate_exceeds_budget") is not None]
    return {
        "flops": _mean([t["measured_flops_per_client_round"] for t in tiers]),
        "upload": _mean([t["upload_mb_per_client_round"] for t in tiers]),
        "state": max((t["max_state_mb"] for t in trained), default=None),
        "estimate": max((t["max_memory_estimate_mb"] for t in tiers if "max_memory_estimate_mb" in t), default=None),
        "peak": max((t["max_peak_memory_mb"] for t in trained), default=None),
        "budget": next((t["memory_budget_mb"] for t in tiers), None),
        "state_exceeds": any(flags) if flags else None,
        "peak_exceeds": any(peaks) if peaks else None,
        "estimate_exceeds": any(estimates) if estimates else None,
    }


def _tier_costs(
    row: Row, reference: Row | None, names: list[str], results: Mapping[str, RunResult]
) -> dict[str, TierCosts] | None:
    if not names:
        return None
    costs = {}
    for name in names:
        ours = _tier_means(_runs(row, results), name)
        ref = _tier_means(_runs(reference, results), name) if reference else dict.fromkeys(ours)
        costs[name] = TierCosts(
            flops_per_client_round=ours["flops"],
            flops_pct=_pct(ours["flops"], ref["flops"]),
            upload_mb_per_client_round=ours["upload"],
            upload_pct=_pct(ours["upload"], ref["upload"]),
            state_mb=ours["state"],
            memory_estimate_mb=ours["estimate"],
            peak_memory_mb=ours["peak"],
            memory_budget_mb=ours["budget"],
            state_exceeds_budget=ours["state_exceeds"],
            peak_memory_exceeds_budget=ours["peak_exceeds"],
            estimate_exceeds_budget=ours["estimate_exceeds"],
        )
    return costs


def _cell(
    samples: dict[str, float], diverged: int, reference: tuple[dict[str, float], int] | None, metric: str
) -> Cell:
    """A row's cell from its samples and diverged runs, tested against the reference's (None: it is the reference
    or there is none); ``p_adjusted`` is set over the whole column later (:func:`_adjust`)."""
    n, better = len(samples) + diverged, higher_is_better(metric)
    if diverged or not n:
        return Cell(None, None, n, higher_is_better=better, diverged=diverged, no_test=DIVERGED if diverged else None)
    values = list(samples.values())
    comparison, no_test = _test(samples, n, reference) if reference is not None else (None, None)
    return Cell(
        statistics.fmean(values),
        statistics.stdev(values) if n > 1 else 0.0,
        n,
        t_interval(values),
        comparison.p_value if comparison else None,
        test=comparison.test if comparison else None,
        higher_is_better=better,
        no_test=no_test,
    )


def _test(
    samples: dict[str, float], n: int, reference: tuple[dict[str, float], int]
) -> tuple[Comparison | None, str | None]:
    """The t-test of a row's samples (``n`` runs) against a reference's (samples, diverged runs), or why there is
    none (``diverged``, ``n<3``)."""
    ref_samples, ref_diverged = reference
    if ref_diverged:
        return None, DIVERGED
    if min(n, len(ref_samples)) < MIN_N:
        return None, f"n<{MIN_N}"
    return compare(samples, ref_samples), None


@dataclass(frozen=True)
class SecondTest:
    """A row's headline score tested against the table's second reference (``second_reference``): the raw and the
    Holm-adjusted p-value (over the table's rows), the test, or why there is none (None throughout for the second
    reference itself)."""

    p_value: float | None = None
    p_adjusted: float | None = None
    test: str | None = None
    no_test: str | None = None


def _second_tests(
    table: Table, shown: dict[str, list[str]], results: Mapping[str, RunResult]
) -> list[dict[str, SecondTest]] | None:
    """Per row, per data set: its headline score against the second reference's, Holm-adjusted per data set over the
    rows (None: the table has no second reference)."""
    second = next((row for row in table.rows if row.variant == table.second_reference), None)
    if second is None:
        return None
    tests: list[dict[str, SecondTest]] = [{} for _ in table.rows]
    for column in table.columns:
        metric = next(iter(shown[column.data]), None)
        if metric is None:
            continue
        reference = row_samples(second, column.data, metric, results)
        for i, row in enumerate(table.rows):
            samples, diverged = row_samples(row, column.data, metric, results)
            if row is second:
                tests[i][column.data] = SecondTest()
            elif diverged:
                tests[i][column.data] = SecondTest(no_test=DIVERGED)
            else:
                comparison, no_test = _test(samples, len(samples), reference)
                p_value = comparison.p_value if comparison else None
                tests[i][column.data] = SecondTest(p_value, None, comparison.test if comparison else None, no_test)
        adjusted = holm({i: test[column.data].p_value for i, test in enumerate(tests)})
        for i, test in enumerate(tests):
            test[column.data] = dataclasses.replace(test[column.data], p_adjusted=adjusted[i])
    return tests


def _adjust(scores: list[dict[str, dict[str, Cell]]]) -> list[dict[str, dict[str, Cell]]]:
    """Every row's cells with ``p_adjusted``: Holm over the table's rows, per data set and metric."""
    for data, cells in scores[0].items() if scores else ():
        for metric in cells:
            adjusted = holm({i: row[data][metric].p_vs_reference for i, row in enumerate(scores)})
            for i, row in enumerate(scores):
                row[data][metric] = dataclasses.replace(row[data][metric], p_adjusted=adjusted[i])
    return scores


def _metrics(table: Table, data: str, results: Mapping[str, RunResult]) -> list[str]:
    """The metrics of a column (from its first finished run): the headline first (the held-out loss of
    pre-training, the primary test metric of fine-tuning), then the downstream primary metric, then the rest."""
    run = next((run for row in table.rows for run in _runs(row, results, data)), None)
    if run is None:
        return []
    first = [m for m in (run.headline, run.metric) if m]
    return list(dict.fromkeys([*first, *run.scores]))


def _shown(table: Table, data: str, results: Mapping[str, RunResult]) -> list[str]:
    """The metrics a column prints: the headline and, after pre-training, the downstream task's primary one."""
    run = next((run for row in table.rows for run in _runs(row, results, data)), None)
    return [] if run is None else [m for m in dict.fromkeys([run.headline, run.metric]) if m]


def _majority(table: Table, data: str, results: Mapping[str, RunResult]) -> dict[str, float]:
    """The majority-class scores of a column's task (from its first run that records them)."""
    return next((run.majority for row in table.rows for run in _runs(row, results, data) if run.majority), {})


def _plan(row: Row, results: Mapping[str, RunResult]) -> str | None:
    """One digest of the plans of all the row's runs and their local steps, by data set and seed (None if a run
    lacks one): equal plans for fewer steps (FedAvg at a matched budget) are not the same training."""
    runs = _runs(row, results)
    if not runs or any(run.plan_sha256 is None for run in runs):
        return None
    keyed = sorted(f"{run.data}/{run.seed}/{run.steps}/{run.plan_sha256}" for run in runs)
    return hashlib.sha256("\n".join(keyed).encode()).hexdigest()


def _row_scores(
    table: Table, row: Row, reference: Row | None, metrics: dict[str, list[str]], results: Mapping[str, RunResult]
) -> dict[str, dict[str, Cell]]:
    """data set -> metric -> the row's cell, tested against the reference row (unless it is the reference)."""
    scores: dict[str, dict[str, Cell]] = {}
    for column in table.columns:
        scores[column.data] = {}
        for metric in metrics[column.data]:
            ref = None
            if reference is not None and row is not reference:
                ref = row_samples(reference, column.data, metric, results)
            scores[column.data][metric] = _cell(*row_samples(row, column.data, metric, results), ref, metric)
    return scores


@dataclass(frozen=True)
class TableData:
    """A table with its rows, the primary metric of each column and the device its runs trained on."""

    table: Table
    rows: list[TableRow]
    metrics: dict[str, str]
    """data set -> its task's primary metric."""
    device: str
    """``cpu``, ``cuda``, or both joined by ``+`` (what the seconds column measured)."""
    shown: dict[str, list[str]]
    """data set -> the metrics its columns print (held-out loss and/or the task's primary metric)."""
    majority: dict[str, dict[str, float]]
    """data set -> metric -> the score of always predicting the most frequent training label."""
    evaluation_seeds: list[int] = dataclasses.field(default_factory=list)
    """The numbers of evaluation seeds averaged into each downstream score (empty: no downstream evaluation)."""

    @property
    def has_lr_grid(self) -> bool:
        return any(row.lr for row in self.rows)

    @property
    def private(self) -> bool:
        """Whether some row has client-level DP: the table then shows ``update dim`` and ``epsilon``."""
        return any(row.privacy for row in self.rows)

    @property
    def tiered(self) -> bool:
        """Whether the table has a per-tier table (its runs have tiers, or the spec says they will)."""
        return self.table.tiered or any(row.tiers for row in self.rows)

    @property
    def timed(self) -> bool:
        """Whether the table shows simulated device time (its runs have devices, or the spec says they will)."""
        return self.table.timed or any(row.timing for row in self.rows)


def build_table(
    table: Table,
    results: Mapping[str, RunResult],
    bert_base_pct: Mapping[str, float | None],
    lr_choices: Mapping[str, dict[str, LrChoice]] | None = None,
) -> TableData:
    """The rows of ``table`` from the run results (keyed by metrics path), the exact bert-base upload
    percentages (keyed by variant) and, for a study with a grid, the grid points chosen per variant
    (:func:`fedbt.report.selection.choose`; ``table``'s rows then hold the chosen runs)."""
    lr_choices = lr_choices or {}
    reference = next((row for row in table.rows if row.variant == table.reference), None)
    metrics = {c.data: _metrics(table, c.data, results) for c in table.columns}
    tiers = tier_names(table, results)
    scores = _adjust([_row_scores(table, row, reference, metrics, results) for row in table.rows])
    shown = {c.data: _shown(table, c.data, results) for c in table.columns}
    seconds = _second_tests(table, shown, results) or [None] * len(table.rows)
    rows = []
    for row, row_scores, second in zip(table.rows, scores, seconds, strict=True):
        paper_row = paper.paper_row(table.paper, row.paper_row)
        dropped = [run.dropped_pct for run in _runs(row, results) if run.dropped_pct is not None]
        rows.append(
            TableRow(
                variant=row.variant,
                method=row.method,
                costs=_costs(row, reference, results),
                bert_base_upload_pct=bert_base_pct.get(row.variant),
                paper_compute_pct=paper_row.compute_pct if paper_row else None,
                paper_comm_pct=paper_row.comm_pct if paper_row else None,
                scores=row_scores,
                paper_scores={c.data: paper_row.scores.get(c.label) if paper_row else None for c in table.columns},
                plan_sha256=_plan(row, results),
                lr=lr_choices.get(row.variant, {}),
                tiers=_tier_costs(row, reference, tiers, results),
                dropped_pct=_mean(dropped),
                second=second,
                note=row.note,
                privacy=row_privacy(_runs(row, results)),
                timing=row_timing(table, row, reference, tiers, results),
            )
        )
    devices = sorted({run.device.split(":")[0] for row in table.rows for run in _runs(row, results)})
    primary = {
        c.data: next((run.metric for row in table.rows for run in _runs(row, results, c.data) if run.metric), "")
        for c in table.columns
    }
    return TableData(
        table,
        rows,
        {data: metric for data, metric in primary.items() if metric},
        "+".join(devices) or "cpu",
        shown,
        {c.data: _majority(table, c.data, results) for c in table.columns},
        sorted({run.evaluation_seeds for row in table.rows for run in _runs(row, results) if run.evaluation_seeds}),
    )


def identical_plans(rows: list[TableRow]) -> list[list[str]]:
    """Groups of rows whose runs trained and sent exactly the same tensors for the same local steps in every round
    (equal plan digests and steps): at this setting they are one method, whatever their names."""
    groups: dict[str, list[str]] = {}
    for row in rows:
        if row.plan_sha256:
            groups.setdefault(row.plan_sha256, []).append(row.variant)
    return [variants for variants in groups.values() if len(variants) > 1]


# --------------------------------------------------------------------------------------- rendering


def _num(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _flops(value: float | None) -> str:
    """FLOPs with an SI prefix: ``6.12 G``, ``1.23 T``."""
    if value is None:
        return DASH
    for prefix, size in (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("", 1.0)):
        if abs(value) >= size:
            scaled = value / size
            return f"{scaled:.{max(0, 2 - math.floor(math.log10(abs(scaled))))}f} {prefix}".rstrip()
    return f"{value:.3g}"


def _p(cell: Cell) -> str:
    """The Holm-adjusted p-value, or why there is none (``n<3``, ``diverged``; – for the reference)."""
    if cell.p_adjusted is None:
        return cell.no_test or DASH
    return "<0.0001" if cell.p_adjusted < 1e-4 else f"{cell.p_adjusted:.4f}"


def _score(cell: Cell, pm: str) -> str:
    """``mean ± CI half-width`` (the mean alone for n = 1), or ``diverged k/n``."""
    if cell.diverged:
        return f"{DIVERGED} {cell.diverged}/{cell.n}"
    if cell.mean is None:
        return DASH
    if cell.ci95 is None:
        return f"{cell.mean:.4f}"
    return f"{cell.mean:.4f} {pm} {(cell.ci95[1] - cell.ci95[0]) / 2:.4f}"


METRIC_NAMES = {"heldout_mlm_loss": "held-out MLM loss", "heldout_mim_loss": "held-out MIM loss"}


def _cell_of(row: TableRow, data: str, metric: str) -> Cell:
    return row.scores[data].get(metric, Cell(None, None, 0))


def _header(data: TableData) -> list[str]:
    table = data.table
    base = table.base_arch.removesuffix("-uncased")
    head = ["method", "FLOPs", "FLOP %", "analytic FLOP %", "CPU s" if data.device == "cpu" else "s", "s %"]
    head += ["upload MB", "upload %", f"{base} upload %"]
    if data.timed:  # simulated device time instead of this machine's seconds (<= 15 columns)
        head = [h for i, h in enumerate(head) if i not in (3, 4, 5)]
    if data.tiered:
        head.append("dropped %")
    if data.private:
        head += ["update dim", "epsilon"]
    if data.timed:
        head += ["sim s / round", "deadline miss %"]
    for column in table.columns:
        name = column.data
        if data.has_lr_grid:
            head.append(f"{name} lr")
        for i, metric in enumerate(data.shown[column.data]):
            label = METRIC_NAMES.get(metric, metric if column.label == name else f"{column.label} {metric}")
            ppl = " (ppl)" if metric == "heldout_mlm_loss" else ""
            head += [f"{name}: {label}{ppl}", f"p vs {table.reference} (Holm)"]
            if table.second_reference and i == 0:
                head.append(f"p vs {table.second_reference} (Holm)")
        if table.paper:
            head.append("paper")
        if data.timed and table.target:
            head.append(f"{name}: sim min to target")
    return head


def _cells(data: TableData, row: TableRow, pm: str) -> list[str]:
    costs = row.costs
    cells = [
        row.variant,
        _flops(costs.flops_per_client_round),
        _num(costs.flops_pct, 1),
        _num(costs.analytic_flops_pct, 1),
        _num(costs.seconds_per_client_round, 3),
        _num(costs.seconds_pct, 1),
        _num(costs.upload_mb_per_client_round, 2),
        _num(costs.upload_pct, 1),
        _num(row.bert_base_upload_pct, 2),
    ]
    timing = row.timing
    if data.timed:
        cells = [c for i, c in enumerate(cells) if i not in (3, 4, 5)]
    if data.tiered:
        cells.append(_num(row.dropped_pct, 1))
    if data.private:
        cells += [_num(row.privacy.update_dim if row.privacy else None, 0), epsilon_text(row.privacy)]
    if data.timed:
        cells += [_num(timing and timing.sim_round_seconds, 1), _num(timing and timing.deadline_miss_pct, 1)]
    for column in data.table.columns:
        if data.has_lr_grid:
            choice = row.lr.get(column.data)
            cells.append(shown(choice) or DASH)
        for i, metric in enumerate(data.shown[column.data]):
            cell = _cell_of(row, column.data, metric)
            ppl = _cell_of(row, column.data, "heldout_mlm_perplexity").mean if metric == "heldout_mlm_loss" else None
            cells.append(_score(cell, pm) + (f" ({_num(ppl, 1)})" if ppl is not None else ""))
            cells.append(_p(cell))
            if data.table.second_reference and i == 0:
                second = (row.second or {}).get(column.data, SecondTest())
                cells.append(_p(Cell(None, None, 0, p_adjusted=second.p_adjusted, no_test=second.no_test)))
        if data.table.paper:
            cells.append(_num(row.paper_scores[column.data], 4))
        if data.timed and data.table.target:
            cells.append(_target_cell(timing.time_to_target.get(column.data) if timing else None))
    return cells


def _target_cell(target) -> str:
    """Simulated minutes to the target (mean over the seeds that reached it), ``(k/n)`` when not all did."""
    if target is None or target.mean is None:
        return DASH
    n = len(target.seconds)
    return f"{target.mean / 60:.1f}" + ("" if target.reached == n else f" ({target.reached}/{n})")


def _samples_text(data: TableData) -> str:
    """How many samples the score cells hold and what they are."""
    seeds = sorted({c.n for row in data.rows for cells in row.scores.values() for c in cells.values() if c.n})
    what = "independent federated runs"
    if data.table.scenario == "finetune":
        what += ", each scored at its selected (best dev) round"
    elif data.evaluation_seeds:
        counts = " or ".join(map(str, data.evaluation_seeds))
        what += f"; a downstream score is first the mean over the {counts} evaluation seeds of its run's one model"
    return f"n = {', '.join(map(str, seeds)) or 0} federation seeds ({what})"


def _majority_text(data: TableData) -> str:
    parts = [
        f"{column.data} {metric} {value:.4f}"
        for column in data.table.columns
        for metric, value in data.majority.get(column.data, {}).items()
        if metric == data.metrics.get(column.data)
    ]
    return f" Majority class (always the most frequent training label): {', '.join(parts)}." if parts else ""


def _flop_text(rows: list[TableRow]) -> str:
    """On how many local steps FlopCounterMode counted, and how the others were scaled."""
    counted = [row.costs.measured_steps for row in rows if row.costs.steps]
    steps = sum(row.costs.steps for row in rows)
    scaled = "the FLOPs of the others scaled from the counted ones by the analytic model of each step's shape"
    if not counted or None in counted:
        return (
            f"counted on the first local.flop_count_steps steps of each client-round (the runs do not record how "
            f"many), {scaled}"
        )
    if sum(counted) == steps:
        return f"counted on every local step ({steps})"
    return f"counted on {sum(counted)} of the {steps} local steps (JSON: measured_steps, steps), {scaled}"


def _stats_text(data: TableData) -> str:
    """What the p column holds, which test gave it and how it is adjusted."""
    rows, ref = data.rows, data.table.reference
    cells = [c for row in rows for cells in row.scores.values() for c in cells.values()]
    tests = sorted({c.test for c in cells if c.test})
    text = (
        f" p vs {ref} (Holm): two-sided t-test (scipy) of the row's federation seeds against `{ref}`'s, a {PAIRED}-"
        f"test when the runs pair up (same seeds), else {WELCH}-test (here: {', '.join(tests) or 'none'}), only "
        f"where both rows have n >= {MIN_N} (n<{MIN_N} otherwise); the p shown is Holm-adjusted over the table's "
        f"rows for that column (JSON: p_vs_reference raw, p_adjusted)."
    )
    second = data.table.second_reference
    if second:
        text += (
            f" p vs {second} (Holm): the same test of each row's headline score (the first score column of each data "
            f"set) against `{second}`'s, Holm-adjusted over the rows (JSON: second_reference)."
        )
    if any(c.diverged for c in cells):
        text += (
            f" diverged k/n: k of the row's n federated runs have a NaN or infinite loss or score; the row gets no "
            f"mean, interval or test in that column ({DIVERGED} in its p column, or in every row's when `{ref}` "
            f"diverged)."
        )
    return text


def notes(data: TableData) -> str:
    """The caption text under a table: what every column means."""
    table, rows, metrics = data.table, data.rows, data.metrics
    scored = ", ".join(
        f"{c.data}: {metrics[c.data]}" if c.label == c.data else f"{c.data}: {c.label} {metrics[c.data]}"
        for c in table.columns
        if metrics.get(c.data)
    )
    ref, base = table.reference, table.base_arch.removesuffix("-uncased")
    seconds = {
        "cpu": "process CPU seconds of the single-threaded training job (other processes on the machine do not "
        "bend them)",
        "cuda": "device seconds (wall time between CUDA synchronisations)",
    }.get(data.device, "process CPU seconds on CPU, device seconds (between CUDA synchronisations) on CUDA")
    losses = (
        " held-out MLM loss: masked-LM cross-entropy of the final global model on held-out sentences of the "
        "data set's domain corpus (lower is better), with the mean perplexity (ppl = exp(loss)) in brackets; the "
        "`none` row is the starting model."
        if any("heldout_mlm_loss" in shown for shown in data.shown.values())
        else ""
    )
    grid = (
        " lr: the grid point (the learning rate of the study's lr_grid, times the variant's own grid, e.g."
        " lr0.0003-mu0.01) with the best mean dev score over the seeds for that method and data set (fine-tuning:"
        " the highest dev score at each run's selected round; pre-training: the lowest final loss on the dev slice"
        " of held-out sentences); test never takes part in the choice, every column of the row is that of the"
        " chosen runs, and a row without a choice says why in the JSON." + _transferred_text(data)
        if data.has_lr_grid
        else ""
    )
    text = (
        f"Costs per client and trained round, mean over the row's runs; % columns are percent of `{ref}` in this "
        f"table. FLOPs: training FLOPs measured by torch's FlopCounterMode (deterministic: equal plans give equal "
        f"FLOPs; {_flop_text(rows)}); analytic FLOP %: the same ratio from the analytic model (fedbt/costs.py). "
        f"s: {seconds}. upload MB: 10^6 bytes uploaded. {base} upload %: exact upload of the method on "
        f"{table.base_arch} over the paper's {paper.ROUNDS[table.scenario]} rounds relative to full-model FedAvg "
        f"(`fedbt costs`).{_paper_costs_text(data)}{losses} {'Test scores: ' + scored + '; m' if scored else 'M'}"
        f"ean ± half-width of the 95 % Student t interval (JSON: ci95, beside std) over {_samples_text(data)}."
        f"{_majority_text(data)}{grid}{_stats_text(data)} paper: {paper.SOURCE}"
        + (f", {table.paper.replace('table', 'Table ')}." if table.paper else "; no paper table.")
    )
    if table.base_tiers:
        mix = ", ".join(f"{t.get('share')} at L_k {t.get('local_layers', 'all')}" for t in table.base_tiers)
        text += f" Here {base} upload % is the clients' mean with resource tiers on {table.base_arch} ({mix})."
    if data.tiered:
        text += (
            f" dropped %: the share of client-rounds in which a client sat out because its plan did not fit its "
            f"tier's memory budget (federation.budget_policy: drop), mean over the row's runs; – where the runs do "
            f"not record it. Per-tier FLOPs, upload, memory and budgets: the table {table.name}{TIER_SUFFIX} beside "
            f"this one (JSON: each row's tiers)."
        )
    for row in rows:
        text += f" {row.note}" if row.note else ""
    text += privacy_notes([(row.variant, row.privacy) for row in rows])
    if data.timed:
        text += notes_text(table)
    for group in identical_plans(rows):
        text += (
            f" Warning: {', '.join(group)} trained and sent exactly the same tensors for the same local steps in every "
            f"round (equal plan digests and steps); at this setting they are the same method."
        )
    return text


def _paper_costs_text(data: TableData) -> str:
    """The paper's compute and communication percent of the rows that have them (a caption sentence)."""
    figures = [
        f"{row.variant} {_num(row.paper_compute_pct, 2)} / {_num(row.paper_comm_pct, 2)}"
        for row in data.rows
        if row.paper_compute_pct is not None or row.paper_comm_pct is not None
    ]
    if not figures:
        return ""
    return (
        f" Paper compute % / comm % (wall-clock seconds on the authors' GPUs / upload, of their FedAvg; JSON: "
        f"paper): {'; '.join(figures)}; compare compute % with s % of a GPU run, and with FLOP % as the "
        f"hardware-independent share of the work (on CPU at this scale seconds also carry fixed per-step "
        f"overheads)."
    )


TIER_HEADER = [
    "method",
    "tier",
    "FLOPs",
    "FLOP %",
    "upload MB",
    "upload %",
    "state MB",
    "memory estimate MB",
    "peak MB",
    "budget MB",
    "over budget",
]


def _over_budget(tier: TierCosts) -> str:
    """Which measures exceed the tier's budget (``estimate``, ``state``, ``peak``), ``no``, or – without a budget."""
    if tier.memory_budget_mb is None:
        return DASH
    flags = (
        ("estimate", tier.estimate_exceeds_budget),
        ("state", tier.state_exceeds_budget),
        ("peak", tier.peak_memory_exceeds_budget),
    )
    over = [name for name, flag in flags if flag]
    return ", ".join(over) or "no"


TIER_TIME_HEADER = ["sim s / client-round", "deadline miss %"]


def _tier_cells(row: TableRow, name: str, tier: TierCosts, timed: bool = False) -> list[str]:
    timing = row.timing.tiers.get(name, {}) if row.timing else {}
    times = [_num(timing.get("sim_seconds_per_client_round"), 1), _num(timing.get("deadline_miss_pct"), 1)]
    return [
        row.variant,
        name,
        _flops(tier.flops_per_client_round),
        _num(tier.flops_pct, 1),
        _num(tier.upload_mb_per_client_round, 2),
        _num(tier.upload_pct, 1),
        _num(tier.state_mb, 1),
        _num(tier.memory_estimate_mb, 1),
        _num(tier.peak_memory_mb, 1),
        _num(tier.memory_budget_mb, 0),
        _over_budget(tier),
    ] + (times if timed else [])


def tier_notes(data: TableData) -> str:
    """The caption text under the per-tier table."""
    ref = data.table.reference
    return (
        f"Per resource tier (clients dealt to tiers by seed), one row per method and tier, mean over the row's "
        f"runs of the table {data.table.name}: FLOPs and upload MB per client-round of the tier (a round a client "
        f"sat out costs 0), FLOP % and upload % of `{ref}`'s same tier; state MB: the largest training state of a "
        f"client of the tier (its local model's parameters, the trained ones' gradients and the optimizer's state, "
        f"counted from the tensors; activations excluded); memory estimate MB: the largest estimate of a client "
        f"plan of the tier (fedbt.memory: training state, saved activations, the method's extra tensors), what the "
        f"budget binds, recorded for dropped clients too; peak MB: the largest peak memory of the training process "
        f"(in process: the whole simulator's, the server's global model included, so an upper bound); "
        f"budget MB: the tier's memory budget (federation.tiers memory_mb, 10^6 bytes); over budget: the measures "
        f"(estimate, state, peak) that exceeded it, – without a budget; state and peak are – for a tier whose "
        f"clients never trained (all dropped). The scores and the share of dropped client-rounds are "
        f"in {data.table.name}."
        + (
            " sim s / client-round: the simulated seconds a participating client of the tier needed for a round on "
            "its device (download + compute + upload, whether or not it made the deadline), mean over its client-"
            "rounds and the row's runs; deadline miss %: the tier's client-rounds dropped for finishing after the "
            "round's deadline."
            if data.timed
            else ""
        )
    )


@dataclass(frozen=True)
class Grid:
    """A table ready to render: its file name, title, header, body rows and caption."""

    name: str
    title: str
    head: list[str]
    body: list[list[str]]
    notes: str


def main_grid(data: TableData, pm: str = "±") -> Grid:
    """The study's table: method, cost and score columns."""
    body = [_cells(data, row, pm) for row in data.rows]
    return Grid(data.table.name, data.table.title, _header(data), body, notes(data))


def tier_grid(data: TableData) -> Grid | None:
    """The study's per-tier table, one row per method and tier (None: the study has no tiers)."""
    if not data.tiered:
        return None
    body = [_tier_cells(row, name, tier, data.timed) for row in data.rows for name, tier in (row.tiers or {}).items()]
    title = f"{data.table.title}: per resource tier"
    head = TIER_HEADER + (TIER_TIME_HEADER if data.timed else [])
    return Grid(f"{data.table.name}{TIER_SUFFIX}", title, head, body, tier_notes(data))


def tier_json(study: Mapping[str, Any]) -> dict[str, Any] | None:
    """The per-tier table's numbers (``<table>-tiers.json``) from the study's JSON (:func:`to_json`): one row per
    method and tier, its costs and timing as in the study's rows (None: the study has no tiers)."""
    if "tier_notes" not in study:
        return None
    body = [
        {
            "variant": row["variant"],
            "method": row["method"],
            "tier": name,
            **costs,
            **row.get("tier_timing", {}).get(name, {}),
        }
        for row in study["rows"]
        for name, costs in (row.get("tiers") or {}).items()
    ]
    title = f"{study['title']}: per resource tier"
    return {"study": study["study"], "title": title, "rows": body, "notes": study["tier_notes"]}


def grids(data: TableData) -> list[Grid]:
    """The tables a study writes: its own, then its per-tier table when it has tiers."""
    return [grid for grid in (main_grid(data), tier_grid(data)) if grid is not None]


def markdown(grid: Grid) -> str:
    """A table as GitHub Markdown with a title and its notes."""
    rule = "|" + "|".join(["---"] + ["---:"] * (len(grid.head) - 1)) + "|"
    lines = [f"### {grid.title}", "", "| " + " | ".join(grid.head) + " |", rule]
    lines += ["| " + " | ".join(cells) + " |" for cells in grid.body]
    return "\n".join([*lines, "", grid.notes, ""])


def to_markdown(data: TableData) -> str:
    """The study's table as GitHub Markdown with a title and the column notes."""
    return markdown(main_grid(data))


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("–", "--").replace("±", r"$\pm$").replace("<", r"$<$")


def latex(grid: Grid) -> str:
    """A table as a LaTeX ``table`` with booktabs rules and its notes as caption."""
    head = grid.head
    body = [" & ".join(_latex_escape(c) for c in cells) + r" \\" for cells in grid.body]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering\small",
            r"\caption{" + _latex_escape(grid.title) + ". " + _latex_escape(grid.notes) + "}",
            r"\label{tab:" + grid.name + "}",
            r"\begin{tabular}{l" + "r" * (len(head) - 1) + "}",
            r"\toprule",
            " & ".join(_latex_escape(h) for h in head) + r" \\",
            r"\midrule",
            *body,
            r"\bottomrule",
            r"\end{tabular}",
            r"\end{table}",
            "",
        ]
    )


def to_latex(data: TableData) -> str:
    """The study's table as a LaTeX ``table`` with booktabs rules and the notes as caption."""
    return latex(main_grid(data))


def _transferred_text(data: TableData) -> str:
    """The caption's sentence on rows that ran at a point chosen in another study (``lr_from``), if any."""
    studies = sorted({c.study for row in data.rows for c in row.lr.values() if c.study})
    if not studies:
        return ""
    return (
        f" This table runs no grid of its own: each tuned row ran at the point chosen for it on dev in "
        f"{', '.join(f'studies.{s}' for s in studies)} (lr_from; its runs chose it when they started, from that "
        f"study's runs; JSON: lr.<data>.study)."
    )


def to_json(data: TableData) -> dict[str, Any]:
    """The table for scripts: ``{"study", "reference", "rows": [{"variant", "method", "flops_per_client_round",
    "flops_pct", "analytic_flops_pct", "seconds_pct", "upload_pct", "steps", "measured_steps",
    "bert_base_upload_pct", "dropped_pct", "scores": {data: {metric: {"mean", "std", "n", "ci95",
    "p_vs_reference", "p_adjusted", "test", "higher_is_better", "diverged", "no_test"}}}, "lr": {data: {"chosen",
    "dev", "reason", "study"}}, "tiers": {tier: {"flops_pct", "state_mb", "memory_estimate_mb", ...}}, ...}],
    "majority": {data: {metric: value}}, "tier_notes", ...}``; ``n`` counts federation seeds. The per-tier table's
    numbers are the rows' ``tiers`` (and its caption ``tier_notes``), present when the study has tiers."""
    table, rows, metrics = data.table, data.rows, data.metrics
    return {
        "study": table.name,
        "title": table.title,
        "scenario": table.scenario,
        "reference": table.reference,
        **({"second_reference": table.second_reference} if table.second_reference else {}),
        "paper_table": table.paper,
        "device": data.device,
        "columns": [
            {"data": c.data, "task": c.label, "primary_metric": metrics.get(c.data, ""), "shown": data.shown[c.data]}
            for c in table.columns
        ],
        "majority": {data_set: scores for data_set, scores in data.majority.items() if scores},
        "rows": [
            {
                "variant": row.variant,
                "method": row.method,
                **asdict(row.costs),
                "bert_base_upload_pct": row.bert_base_upload_pct,
                "dropped_pct": row.dropped_pct,
                "paper": {"compute_pct": row.paper_compute_pct, "comm_pct": row.paper_comm_pct, **row.paper_scores},
                "scores": {data: {m: asdict(cell) for m, cell in cells.items()} for data, cells in row.scores.items()},
                "plan_sha256": row.plan_sha256,
                "lr": {data_set: asdict(choice) for data_set, choice in row.lr.items()},
                **({"tiers": {n: asdict(t) for n, t in row.tiers.items()}} if row.tiers else {}),
                **({"second_reference": {d: asdict(t) for d, t in row.second.items()}} if row.second else {}),
                **({"note": row.note} if row.note else {}),
                **(_privacy_json(row) if data.private else {}),
                **(row.timing.as_json() if row.timing else {}),
            }
            for row in rows
        ],
        "identical_plans": identical_plans(rows),
        "notes": notes(data),
        **({"tier_notes": tier_notes(data)} if data.tiered else {}),
    }


def _privacy_json(row: TableRow) -> dict[str, Any]:
    """A row's ``epsilon`` (None: no DP, or no noise) and ``privacy`` (None: no DP), in a table with DP."""
    privacy = row.privacy
    return {"epsilon": privacy.epsilon if privacy else None, "privacy": asdict(privacy) if privacy else None}


def html(grid: Grid) -> str:
    """A table as a small standalone HTML page (what ``snakemake --report`` shows inline)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in grid.head)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in cells) + "</tr>" for cells in grid.body)
    style = (
        "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} "
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right} td:first-child,th:first-child{text-align:left}"
    )
    title = escape(grid.title)
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>'
        f"<body><h3>{title}</h3><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>{escape(grid.notes)}</p></body></html>\n"
    )


def to_html(data: TableData) -> str:
    """The study's table as a small standalone HTML page."""
    return html(main_grid(data))
