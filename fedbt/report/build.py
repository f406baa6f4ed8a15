"""Build every table and figure of a report specification from the run directories it names."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from fedbt.report import costs, figures
from fedbt.report.runs import RunResult, load_run
from fedbt.report.spec import FIGURE_KINDS, SCHEDULE_FIGURE, Spec
from fedbt.report.tables import build_table, identical_plans, to_html, to_json, to_latex, to_markdown

log = logging.getLogger(__name__)
BERT_BASE_LAYERS = 12


def load_results(spec: Spec) -> dict[str, RunResult]:
    """Every run the spec names that has finished (missing ones are reported and left out)."""
    results = {}
    for table in spec.tables:
        for row in table.rows:
            for path in (p for paths in row.runs.values() for p in paths):
                if path in results:
                    continue
                if Path(path).is_file():
                    results[path] = load_run(path)
                else:
                    log.warning("run not finished, left out: %s", path)
    return results


def build_report(spec: Spec, out: str | Path) -> list[Path]:
    """Write ``out/tables/<table>.md|.tex|.json|.html`` and ``out/figures/<table>_<kind>.png|.pdf`` for every table, and
    ``out/figures/layer_schedule.png|.pdf``; returns the written paths."""
    out = Path(out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    results = load_results(spec)
    written: list[Path] = []
    schedules = {}
    for table in spec.tables:
        ratios = {
            row.variant: costs.upload_pct(row.bert_base, table.scenario, table.base_arch, table.base_tiers)
            for row in table.rows
        }
        data = build_table(table, results, ratios)
        for path, text in (
            (out / "tables" / f"{table.name}.md", to_markdown(data)),
            (out / "tables" / f"{table.name}.tex", to_latex(data)),
            (out / "tables" / f"{table.name}.json", json.dumps(to_json(data), indent=1) + "\n"),
            (out / "tables" / f"{table.name}.html", to_html(data)),
        ):
            path.write_text(text)
            written.append(path)
        for group in identical_plans(data.rows):
            log.warning("%s: %s trained and sent the same tensors every round (equal plans)", table.name, group)
        makers = {
            "rounds": figures.rounds_figure,
            "pareto": figures.pareto_figure,
            "cost": figures.cost_figure,
            "compute": figures.compute_figure,
        }
        for kind in FIGURE_KINDS:
            written += makers[kind](table, results, out / "figures" / f"{table.name}_{kind}")
        for row in table.rows:
            if row.method.startswith("fedbt") and row.bert_base is not None and row.variant not in schedules:
                schedules[row.variant] = costs.schedule(row.bert_base, table.scenario, table.base_arch)
    written += figures.schedule_figure(schedules, BERT_BASE_LAYERS, out / "figures" / SCHEDULE_FIGURE)
    return written
