"""Choosing a learning rate per method on dev, for studies with an ``lr_grid``.

Each row of such a study has runs for every learning rate of the grid. For every data set the report keeps the
learning rate whose runs have the highest mean dev score (the task's primary metric, at each run's selected
round) over the seeds; ties go to the first rate of the grid. Test scores never take part in the choice. The
row's ``runs`` become those of the chosen rate, so every column of the table (costs, scores, p-values) is that
of the chosen runs.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from fedbt.report.runs import RunResult
from fedbt.report.spec import Row


@dataclass(frozen=True)
class LrChoice:
    """The learning rate chosen for one data set of a row, and the mean dev score of every candidate."""

    chosen: str | None
    dev: dict[str, float | None]


def _mean_dev(paths: list[str], results: Mapping[str, RunResult]) -> float | None:
    runs = [results[p] for p in paths if p in results]
    scores = [run.dev[run.metric] for run in runs if run.metric in run.dev]
    return statistics.fmean(scores) if scores and len(scores) == len(paths) else None


def choose(row: Row, results: Mapping[str, RunResult]) -> tuple[Row, dict[str, LrChoice]]:
    """``row`` with the runs of its chosen learning rate per data set, and the choices (none without a grid)."""
    if not row.lr_runs:
        return row, {}
    runs, choices = {}, {}
    for data in next(iter(row.lr_runs.values())):
        dev = {lr: _mean_dev(by_data[data], results) for lr, by_data in row.lr_runs.items()}
        scored = [lr for lr, score in dev.items() if score is not None]
        chosen = max(scored, key=lambda lr: dev[lr]) if scored else None  # max keeps the first of equal scores
        choices[data] = LrChoice(chosen, dev)
        runs[data] = row.lr_runs[chosen][data] if chosen else []
    return dataclasses.replace(row, runs=runs), choices
