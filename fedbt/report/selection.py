"""Choosing each row's grid point on dev, for studies with a grid (a study's ``lr_grid``, a variant's ``grid``).

Each row of such a study has runs for every point of its grid (``lr0.0003``, ``lr0.0003-mu0.01``). For every
data set the report keeps the point whose runs have the best mean dev score over the seeds: fine-tuning
maximises the task's primary dev score (at each run's selected round), pre-training minimises the loss on the
dev slice of held-out sentences (``data.dev_examples``) of the final global model. Ties go to the first point of
the grid; a point with a run unfinished, unscored on dev or diverged (a non-finite dev score) is no candidate.
Test scores never take part in the choice. The row's ``runs`` become those of the chosen point, so every column
of the table (costs, scores, p-values) is that of the chosen runs. A row that runs untuned in a grid study
(:attr:`fedbt.report.spec.Row.not_tuned`) gets no choice, with the reason.
"""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass

from fedbt.report.runs import RunResult
from fedbt.report.spec import Row

HIGHER_IS_BETTER = {"finetune": True, "pretrain": False}
"""The direction of the dev score a scenario's grid is chosen on: task scores up, held-out losses down."""


@dataclass(frozen=True)
class LrChoice:
    """The grid point chosen for one data set of a row (None: none, see ``reason``) and the mean dev score of
    every candidate (None: not a candidate)."""

    chosen: str | None
    dev: dict[str, float | None]
    reason: str | None = None
    """Why ``chosen`` is None: the row runs untuned, or no candidate has a dev score."""


def _mean_dev(paths: list[str], results: Mapping[str, RunResult]) -> float | None:
    """The mean dev score (of each run's headline metric) over the runs; None unless every run has a finite one."""
    runs = [results[p] for p in paths if p in results]
    scores = [run.dev[run.headline] for run in runs if run.headline in run.dev]
    if not scores or len(scores) != len(paths) or not all(math.isfinite(s) for s in scores):
        return None
    return statistics.fmean(scores)


def _best(dev: Mapping[str, float | None], higher_is_better: bool) -> str | None:
    """The candidate with the best dev score in that direction (the first of equal ones)."""
    scored = [point for point, score in dev.items() if score is not None]
    if not scored:
        return None
    pick = max if higher_is_better else min  # both keep the first of equal scores
    return pick(scored, key=lambda point: dev[point])


def choose(row: Row, results: Mapping[str, RunResult]) -> tuple[Row, dict[str, LrChoice]]:
    """``row`` with the runs of its chosen grid point per data set, and the choices (none without a grid)."""
    if row.not_tuned:
        return row, {data: LrChoice(None, {}, row.not_tuned) for data in row.runs}
    if not row.lr_runs:
        return row, {}
    runs, choices = {}, {}
    for data in next(iter(row.lr_runs.values())):
        dev = {point: _mean_dev(by_data[data], results) for point, by_data in row.lr_runs.items()}
        finished = [results[p] for by_data in row.lr_runs.values() for p in by_data[data] if p in results]
        chosen = _best(dev, HIGHER_IS_BETTER[finished[0].scenario]) if finished else None
        choices[data] = LrChoice(chosen, dev, None if chosen else "no grid point has a finite dev score")
        runs[data] = row.lr_runs[chosen][data] if chosen else []
    return dataclasses.replace(row, runs=runs), choices


def shown(choice: LrChoice | None) -> str | None:
    """A choice as a table cell shows it: an lr-only point as its learning rate (``0.0003``), another point as
    its label (``lr0.0003-mu0.01``); None without a chosen point."""
    if choice is None or choice.chosen is None:
        return None
    lr_only = re.fullmatch(r"lr[0-9.e+-]+", choice.chosen)
    return choice.chosen.removeprefix("lr") if lr_only else choice.chosen
