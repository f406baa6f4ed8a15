"""Build every table and figure of a report specification from the run directories it names."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from fedbt.report import costs, figures, privacy, selection, series
from fedbt.report.runs import RunResult, load_run
from fedbt.report.spec import (
    FIGURE_KINDS,
    PRIVACY_FIGURE,
    SCHEDULE_FIGURE,
    TIER_SUFFIX,
    TIME_FIGURE,
    Row,
    Spec,
    Table,
)
from fedbt.report.tables import build_table, grids, html, identical_plans, latex, markdown, tier_json, to_json

log = logging.getLogger(__name__)
BERT_BASE_LAYERS = 12


def _paths(row: Row) -> list[str]:
    """Every run a row may read: its runs, or those of every learning rate of its grid."""
    groups = [row.runs, *(row.lr_runs or {}).values()]
    return [path for runs in groups for paths in runs.values() for path in paths]


def choose_learning_rates(table: Table, results: dict[str, RunResult]) -> tuple[Table, dict]:
    """``table`` with each row's runs those of the learning rate chosen on dev, and the choices by variant."""
    chosen = [selection.choose(row, results) for row in table.rows]
    choices = {row.variant: rates for row, rates in chosen if rates}
    return dataclasses.replace(table, rows=[row for row, _ in chosen]), choices


def choose_all(spec: Spec, results: dict[str, RunResult]) -> tuple[dict[str, Table], dict[str, dict]]:
    """Every table with its rows' chosen runs, and the choices (table -> variant -> data set -> choice): a row's
    own on dev (:func:`choose_learning_rates`) or, for a row tuned in another study, that study's
    (:func:`fedbt.report.selection.transferred`), checked against the choice its runs recorded."""
    tables, choices = {}, {}
    for table in spec.tables:
        tables[table.name], choices[table.name] = choose_learning_rates(table, results)
    for table in spec.tables:
        for row in (row for row in table.rows if row.tuned_in):
            choices[table.name][row.variant] = selection.transferred(row, choices)
            _check_recorded(table.name, row, choices[table.name][row.variant])
    return tables, choices


def _check_recorded(table: str, row: Row, choices: dict[str, selection.LrChoice]) -> None:
    """Warn where a run of a row tuned in another study ran at another point than that study now chooses (its
    ``grid_choice.json``, written by ``fedbt run --choose-from``): the study's runs changed after it started."""
    for data, paths in row.runs.items():
        for path in paths:
            record = Path(path).parent / selection.CHOICE_FILE
            ran = json.loads(record.read_text())["chosen"] if record.is_file() else None
            if ran is not None and ran != choices[data].chosen:
                log.warning(
                    "%s: %s ran at %s but studies.%s now chooses %s for %s: rerun it",
                    table,
                    path,
                    ran,
                    row.tuned_in["study"],
                    choices[data].chosen,
                    row.variant,
                )


def load_results(spec: Spec) -> dict[str, RunResult]:
    """Every run the spec names that has finished (missing ones are reported and left out)."""
    results = {}
    for table in spec.tables:
        for row in table.rows:
            for path in _paths(row):
                if path in results:
                    continue
                if Path(path).is_file():
                    results[path] = load_run(path)
                else:
                    log.warning("run not finished, left out: %s", path)
    return results


def build_report(spec: Spec, out: str | Path) -> list[Path]:
    """Write ``out/tables/<table>.md|.tex|.json|.html`` (and ``<table>-tiers.md|.tex|.json|.html`` for a study with
    tiers) and ``out/figures/<table>_<kind>.png|.pdf`` for every table (``<table>_time`` too for a study with
    devices), and ``out/figures/layer_schedule.png|.pdf``; returns the written paths."""
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    results = load_results(spec)
    written: list[Path] = []
    schedules = {}
    chosen, all_choices = choose_all(spec, results)
    for table in spec.tables:
        table, lr_choices = chosen[table.name], all_choices[table.name]
        ratios = {
            row.variant: costs.upload_pct(row.bert_base, table.scenario, table.base_arch, table.base_tiers)
            for row in table.rows
        }
        data = build_table(table, results, ratios, lr_choices)
        study_json = to_json(data)
        (out / "tables" / f"{table.name}.json").write_text(json.dumps(study_json, indent=1) + "\n")
        written.append(out / "tables" / f"{table.name}.json")
        per_tier = tier_json(study_json)
        if per_tier is not None:
            (out / "tables" / f"{table.name}{TIER_SUFFIX}.json").write_text(json.dumps(per_tier, indent=1) + "\n")
            written.append(out / "tables" / f"{table.name}{TIER_SUFFIX}.json")
        for grid in grids(data):
            for ext, render in (("md", markdown), ("tex", latex), ("html", html)):
                (out / "tables" / f"{grid.name}.{ext}").write_text(render(grid))
                written.append(out / "tables" / f"{grid.name}.{ext}")
        for group in identical_plans(data.rows):
            log.warning(
                "%s: %s trained and sent the same tensors for the same steps every round (equal plans)",
                table.name,
                group,
            )
        makers = {
            "rounds": figures.rounds_figure,
            "pareto": figures.pareto_figure,
            "cost": figures.cost_figure,
            "compute": figures.compute_figure,
        }
        for kind in FIGURE_KINDS:
            written += makers[kind](table, results, out / "figures" / f"{table.name}_{kind}")
        if table.private:
            stem = out / "figures" / f"{table.name}_{PRIVACY_FIGURE}"
            written += privacy.privacy_figure(table, results, stem)
        if table.timed:
            written += figures.time_figure(table, results, out / "figures" / f"{table.name}_{TIME_FIGURE}")
        for row in table.rows:
            if row.method.startswith("fedbt") and row.bert_base is not None and row.variant not in schedules:
                schedules[row.variant] = costs.schedule(row.bert_base, table.scenario, table.base_arch)
    written += figures.schedule_figure(schedules, BERT_BASE_LAYERS, out / "figures" / SCHEDULE_FIGURE)
    for raw in spec.series:
        written += build_series(series.Series.from_dict(raw), chosen, results, out)
    return written


def build_series(
    found: series.Series, tables: dict[str, Table], results: dict[str, RunResult], out: Path
) -> list[Path]:
    """Write a series' table (``tables/<series>.json|.md|.tex|.html``) and figures (:mod:`fedbt.report.series`)."""
    gaps = series.gaps(found, tables, results)
    path = out / "tables" / f"{found.name}.json"
    path.write_text(json.dumps(series.to_json(found, gaps), indent=1) + "\n")
    written = [path]
    grid = series.grid(found, gaps)
    for ext, render in (("md", markdown), ("tex", latex), ("html", html)):
        (out / "tables" / f"{found.name}.{ext}").write_text(render(grid))
        written.append(out / "tables" / f"{found.name}.{ext}")
    written += series.cost_figure(found, tables, results, out / "figures" / f"{found.name}_cost")
    written += series.gap_figure(found, gaps, out / "figures" / f"{found.name}_gap")
    return written
