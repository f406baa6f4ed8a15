"""Choosing each row's grid point on dev, for studies with a grid (a study's ``lr_grid``, a variant's ``grid``).

Each row of such a study has runs for every point of its grid (``lr0.0003``, ``lr0.0003-mu0.01``). For every
data set the report keeps the point whose runs have the best mean dev score over the seeds: fine-tuning
maximises the task's primary dev score (at each run's selected round), pre-training minimises the loss on the
dev slice of held-out sentences (``data.dev_examples``) of the final global model. Ties go to the first point of
the grid; a point with a run unfinished, unscored on dev or diverged (a non-finite dev score) is no candidate.
Test scores never take part in the choice. The row's ``runs`` become those of the chosen point, so every column
of the table (costs, scores, p-values) is that of the chosen runs. A row that runs untuned in a grid study
(:attr:`fedbt.report.spec.Row.not_tuned`) gets no choice, with the reason.

A study with ``lr_from: <study>`` runs no grid of its own: each of its jobs makes, when it starts, the choice
the report makes for its variant in that study (:func:`choose_point`, from the same runs, via ``fedbt run
--choose-from``), and the report shows that study's choice (:func:`transferred`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fedbt.report.runs import RunResult
from fedbt.report.spec import Row

CHOICE_FILE = "grid_choice.json"
"""What a run of an ``lr_from`` study records in its run directory: the choice it made (:func:`choose_from`)."""
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
    study: str | None = None
    """Where the choice was made when not in this table: the study its row's runs took it from (``lr_from``)."""


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


def _choice(candidates: Mapping[str, list[str]], results: Mapping[str, RunResult]) -> LrChoice:
    """The choice among grid points (label -> the runs of one data set, one per seed) on their mean dev score."""
    dev = {point: _mean_dev(paths, results) for point, paths in candidates.items()}
    finished = [results[p] for paths in candidates.values() for p in paths if p in results]
    chosen = _best(dev, HIGHER_IS_BETTER[finished[0].scenario]) if finished else None
    return LrChoice(chosen, dev, None if chosen else "no grid point has a finite dev score")


def choose(row: Row, results: Mapping[str, RunResult]) -> tuple[Row, dict[str, LrChoice]]:
    """``row`` with the runs of its chosen grid point per data set, and the choices (none without a grid)."""
    if row.not_tuned:
        return row, {data: LrChoice(None, {}, row.not_tuned) for data in row.runs}
    if not row.lr_runs:
        return row, {}
    runs, choices = {}, {}
    for data in next(iter(row.lr_runs.values())):
        choices[data] = _choice({point: by_data[data] for point, by_data in row.lr_runs.items()}, results)
        chosen = choices[data].chosen
        runs[data] = row.lr_runs[chosen][data] if chosen else []
    return dataclasses.replace(row, runs=runs), choices


def choose_point(candidates: Mapping[str, list[str]]) -> LrChoice:
    """The choice a run of an ``lr_from`` study makes when it starts: among the grid points (label -> the
    ``metrics.json`` of each seed) of its variant in the other study, as that study's table chooses."""
    from fedbt.report.runs import load_run

    paths = [path for group in candidates.values() for path in group]
    return _choice(candidates, {path: load_run(path) for path in paths if Path(path).is_file()})


def choose_from(raw: str) -> tuple[list[str], LrChoice]:
    """``fedbt run --choose-from``: the ``--set`` s of the grid point chosen, and the choice, from JSON
    ``{"study": <study>, "points": {<label>: {"sets": [...], "runs": [<metrics.json>, ...]}}}``."""
    from fedbt.errors import FedBTError

    try:
        spec = json.loads(raw)
        study, points = spec["study"], spec["points"]
        candidates = {label: point["runs"] for label, point in points.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        expected = "{'study': ..., 'points': {label: {'sets': [...], 'runs': [...]}}}"
        raise FedBTError(f"--choose-from: expected {expected}: {error!r}") from None
    choice = dataclasses.replace(choose_point(candidates), study=study)
    if choice.chosen is None:
        raise FedBTError(f"--choose-from: no grid point of studies.{study} has finished runs with a finite dev score")
    return list(points[choice.chosen]["sets"]), choice


def transferred(row: Row, choices: Mapping[str, Mapping[str, dict[str, LrChoice]]]) -> dict[str, LrChoice]:
    """The choices of a row tuned in another study (:attr:`Row.tuned_in`; ``choices``: table -> variant -> data
    set -> choice): per data set of this table, that study's choice for the variant on the data set it maps to,
    marked with the study."""
    study, data_map = row.tuned_in["study"], row.tuned_in["data"]
    source = choices.get(study, {}).get(row.variant, {})
    missing = LrChoice(None, {}, f"studies.{study} has no choice for {row.variant}")
    return {data: dataclasses.replace(source.get(src, missing), study=study) for data, src in data_map.items()}


def shown(choice: LrChoice | None) -> str | None:
    """A choice as a table cell shows it: an lr-only point as its learning rate (``0.0003``), another point as
    its label (``lr0.0003-mu0.01``); None without a chosen point."""
    if choice is None or choice.chosen is None:
        return None
    lr_only = re.fullmatch(r"lr[0-9.e+-]+", choice.chosen)
    return choice.chosen.removeprefix("lr") if lr_only else choice.chosen
