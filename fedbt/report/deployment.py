"""Simulated deployment time in a study's report (runs whose tiers have devices, :mod:`fedbt.timing`): per row the
simulated seconds of a round, the share of client-rounds that missed the deadline, and per data set the simulated
time until the global model first reached the study's ``target``.

A target is ``{<curve metric>: value}`` (the per-round metric of the rounds figure: ``heldout_mlm_loss`` in
pre-training, ``dev_<metric>`` in fine-tuning) or ``{within_pct: x}``: within x % of the reference row's reported
score of the same federation seed (pre-training: its final held-out loss, the loss may be up to x % higher;
fine-tuning: its dev score at the selected round, x % lower), so that each seed's data sets its own bar. A run
reaches it at the end of the first round whose score is at least as good; its time is the simulated seconds from
the start to that round's end (:attr:`~fedbt.report.runs.RunResult.clock`). A row's time is the mean over the
seeds that reached it; how many did is kept beside it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fedbt.errors import FedBTError
from fedbt.report.runs import RunResult
from fedbt.report.spec import Row, Table

WITHIN = "within_pct"


@dataclass(frozen=True)
class TargetTime:
    """Simulated seconds to a target, per federation seed (None: never reached)."""

    seconds: dict[str, float | None]
    target: str
    """What the target was (``heldout_mlm_loss <= 7.1``, ``within 2 % of fedavg``)."""

    @property
    def reached(self) -> int:
        return sum(value is not None for value in self.seconds.values())

    @property
    def mean(self) -> float | None:
        """Mean over the seeds that reached the target (None: none did)."""
        reached = [value for value in self.seconds.values() if value is not None]
        return statistics.fmean(reached) if reached else None

    def as_dict(self) -> dict[str, Any]:
        return {"mean_s": self.mean, "reached": self.reached, "n": len(self.seconds), "target": self.target} | {
            "seconds": self.seconds
        }


@dataclass(frozen=True)
class RowTiming:
    """A row's simulated time: means over its runs."""

    sim_round_seconds: float | None
    deadline_miss_pct: float | None
    unavailable_pct: float | None
    wasted_flops: float | None
    """FLOPs per run of the work late clients did until the deadline (part of the FLOPs column)."""
    time_to_target: dict[str, TargetTime] = field(default_factory=dict)
    """Per data set (None target: empty)."""
    tiers: dict[str, dict[str, float | None]] = field(default_factory=dict)
    """Per tier: ``sim_seconds_per_client_round`` (a participating client's simulated seconds, deadline or not)
    and ``deadline_miss_pct``."""

    def as_json(self) -> dict[str, Any]:
        """The row's JSON fields: ``sim_round_seconds``, ``deadline_miss_pct``, ``unavailable_pct``,
        ``wasted_flops``, ``time_to_target_s`` (per data set: the mean seconds, None when no seed reached the
        target), ``time_to_target`` (per data set: per seed, reached, n, the target) and ``tier_timing``."""
        return {
            "sim_round_seconds": self.sim_round_seconds,
            "deadline_miss_pct": self.deadline_miss_pct,
            "unavailable_pct": self.unavailable_pct,
            "wasted_flops": self.wasted_flops,
            "time_to_target_s": {data: target.mean for data, target in self.time_to_target.items()},
            "time_to_target": {data: target.as_dict() for data, target in self.time_to_target.items()},
            "tier_timing": self.tiers,
        }


def _mean(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.fmean(known) if known else None


def reached_at(curve: Mapping[int, float], clock: Mapping[int, float], target: float, lower: bool) -> float | None:
    """The simulated seconds at the end of the first round whose score reaches ``target`` (at most it when
    ``lower`` is better, else at least), None when no round does."""
    for round_idx in sorted(curve):
        score = curve[round_idx]
        if (score <= target if lower else score >= target) and round_idx in clock:
            return clock[round_idx]
    return None


def reported_score(run: RunResult) -> float | None:
    """The per-round score a run reports: the final round's (pre-training), the best dev round's (fine-tuning)."""
    if not run.curve:
        return None
    return max(run.curve.values()) if run.scenario == "finetune" else run.curve[max(run.curve)]


def _target_of(table: Table, run: RunResult, reference: Mapping[str, RunResult]) -> tuple[float | None, str]:
    """The value ``run`` must reach and how the target reads; None when its reference run is missing."""
    (key, value), lower = next(iter(table.target.items())), run.curve_name.endswith("loss")
    if key != WITHIN:
        if key != run.curve_name:
            raise FedBTError(
                f"studies.{table.name}.target.{key}: the study's per-round score is {run.curve_name}; allowed keys: "
                f"{run.curve_name}, {WITHIN}"
            )
        return float(value), f"{key} {'<=' if lower else '>='} {value:g}"
    ref = reference.get(str(run.seed))
    score = reported_score(ref) if ref is not None else None
    text = f"{run.curve_name} within {value:g} % of {table.reference}'s reported score (same seed)"
    if score is None:
        return None, text
    return score * (1 + value / 100 if lower else 1 - value / 100), text


def time_to_target(table: Table, runs: list[RunResult], reference: list[RunResult]) -> TargetTime | None:
    """The runs' simulated seconds to the table's target (None: the table has no target)."""
    if not table.target or not runs:
        return None
    by_seed = {str(run.seed): run for run in reference}
    seconds, text = {}, ""
    for run in runs:
        value, text = _target_of(table, run, by_seed)
        lower = run.curve_name.endswith("loss")
        seconds[str(run.seed)] = None if value is None else reached_at(run.curve, run.clock, value, lower)
    return TargetTime(seconds, text)


def row_timing(
    table: Table, row: Row, reference: Row | None, tiers: list[str], results: Mapping[str, RunResult]
) -> RowTiming | None:
    """The row's simulated time (None: none of its runs has devices)."""

    def runs_of(of: Row | None, data: str | None = None) -> list[RunResult]:
        if of is None:
            return []
        paths = of.runs.get(data, []) if data is not None else [p for ps in of.runs.values() for p in ps]
        return [results[p] for p in paths if p in results and results[p].timing is not None]

    runs = runs_of(row)
    if not runs:
        return None
    timing = [run.timing for run in runs]
    targets = {}
    for column in table.columns:
        found = time_to_target(table, runs_of(row, column.data), runs_of(reference, column.data))
        if found is not None:
            targets[column.data] = found
    per_tier = {
        name: {
            key: _mean([(run.tiers or {}).get(name, {}).get(key) for run in runs])
            for key in ("sim_seconds_per_client_round", "deadline_miss_pct")
        }
        for name in tiers
    }
    return RowTiming(
        sim_round_seconds=_mean([t.get("sim_round_seconds") for t in timing]),
        deadline_miss_pct=_mean([t.get("deadline_miss_pct") for t in timing]),
        unavailable_pct=_mean([t.get("unavailable_pct") for t in timing]),
        wasted_flops=_mean([t.get("wasted_flops") for t in timing]),
        time_to_target=targets,
        tiers=per_tier,
    )


def notes_text(table: Table) -> str:
    """The caption sentences of a timed table's time columns."""
    target = ""
    if table.target:
        key, value = next(iter(table.target.items()))
        goal = (
            f"within {value:g} % of `{table.reference}`'s reported per-round score of the same seed (pre-training: "
            f"its final held-out loss, plus {value:g} %; fine-tuning: its dev score at the selected round, minus "
            f"{value:g} %)"
            if key == WITHIN
            else f"{key} = {value:g}"
        )
        target = (
            f" sim min to target: simulated minutes from the start until the global model's per-round score first "
            f"reached {goal}, mean over the seeds that reached it ((k/n) when only k of n did; – when none did; "
            f"JSON: time_to_target_s in seconds, time_to_target per seed)."
        )
    return (
        f" sim s / round: simulated seconds of a synchronous round on the clients' devices (federation.tiers[].device,"
        f" presets in data/devices/ with their sources): the slowest participant's download / downlink + FLOPs / "
        f"training throughput + upload / uplink, or the round's deadline when a client is later, plus the server's "
        f"measured aggregation seconds; mean over rounds and runs (JSON: sim_round_seconds). deadline miss %: share of "
        f"all client-rounds whose client finished after the round's deadline and was dropped from the average (its "
        f"compute until the deadline counts in the FLOPs per trained client-round; JSON: "
        f"deadline_miss_pct, wasted_flops, unavailable_pct for clients whose device was offline); dropped % counts "
        f"these client-rounds too.{target} To stay "
        f"within 15 columns this table leaves out analytic FLOP %, CPU s and s % (JSON: analytic_flops_pct, "
        f"seconds_per_client_round, seconds_pct)."
    )
