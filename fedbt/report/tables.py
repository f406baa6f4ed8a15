"""Paper-style tables: one row per method variant with compute, communication and task scores, rendered as
Markdown, LaTeX and HTML."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape

from fedbt.report.paper import SOURCE, paper_row
from fedbt.report.runs import RunResult
from fedbt.report.spec import PAPER_ROUNDS, Table

DASH = "–"


@dataclass(frozen=True)
class Cell:
    """Mean and sample standard deviation of a score over ``n`` seeds (``n == 0``: no runs)."""

    mean: float | None
    std: float | None
    n: int


@dataclass(frozen=True)
class TableRow:
    """The numbers of one row, ready to print."""

    variant: str
    client_seconds: float | None
    compute_pct: float | None
    upload_mb: float | None
    comm_pct: float | None
    bert_base_pct: float | None
    paper_compute_pct: float | None
    paper_comm_pct: float | None
    scores: dict[str, Cell]
    paper_scores: dict[str, float | None]


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def _cell(scores: list[float]) -> Cell:
    if not scores:
        return Cell(None, None, 0)
    return Cell(statistics.fmean(scores), statistics.stdev(scores) if len(scores) > 1 else 0.0, len(scores))


def _pct(value: float | None, reference: float | None) -> float | None:
    return None if value is None or not reference else 100.0 * value / reference


def build_rows(
    table: Table, results: Mapping[str, RunResult], bert_base_pct: Mapping[str, float | None]
) -> list[TableRow]:
    """The rows of ``table`` from the run results (keyed by metrics path) and the exact bert-base upload
    percentages (keyed by variant)."""
    costs = {}
    for row in table.rows:
        runs = [results[p] for paths in row.runs.values() for p in paths if p in results]
        costs[row.variant] = (_mean([r.client_seconds for r in runs]), _mean([r.upload_mb for r in runs]))
    reference = costs.get(table.reference, (None, None))
    rows = []
    for row in table.rows:
        seconds, upload = costs[row.variant]
        paper = paper_row(table.paper, row.paper_row)
        scores = {
            c.data: _cell([s for p in row.runs.get(c.data, []) if p in results for s in results[p].scores])
            for c in table.columns
        }
        rows.append(
            TableRow(
                variant=row.variant,
                client_seconds=seconds,
                compute_pct=_pct(seconds, reference[0]),
                upload_mb=upload,
                comm_pct=_pct(upload, reference[1]),
                bert_base_pct=bert_base_pct.get(row.variant),
                paper_compute_pct=paper.compute_pct if paper else None,
                paper_comm_pct=paper.comm_pct if paper else None,
                scores=scores,
                paper_scores={c.data: paper.scores.get(c.label) if paper else None for c in table.columns},
            )
        )
    return rows


def _num(value: float | None, digits: int) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def _score(cell: Cell, pm: str) -> str:
    return DASH if cell.mean is None else f"{cell.mean:.4f} {pm} {cell.std:.4f}"


def _header(table: Table) -> list[str]:
    base = table.base_arch.removesuffix("-uncased")
    head = ["method", "client s", "% ref", "upload MB", "% ref", f"{base} upload %", "paper compute %"]
    head.append("paper comm %")
    for column in table.columns:
        name = column.label if column.label == column.data else f"{column.label} ({column.data})"
        head += [name, "paper"]
    return head


def _cells(table: Table, row: TableRow, pm: str) -> list[str]:
    cells = [
        row.variant,
        _num(row.client_seconds, 2),
        _num(row.compute_pct, 1),
        _num(row.upload_mb, 2),
        _num(row.comm_pct, 1),
        _num(row.bert_base_pct, 2),
        _num(row.paper_compute_pct, 2),
        _num(row.paper_comm_pct, 2),
    ]
    for column in table.columns:
        cells += [_score(row.scores[column.data], pm), _num(row.paper_scores[column.data], 4)]
    return cells


def notes(table: Table, rows: list[TableRow], metrics: Mapping[str, str]) -> str:
    """The caption text under a table: what every column means."""
    seeds = sorted({cell.n for row in rows for cell in row.scores.values() if cell.n})
    scored = ", ".join(f"{c.label}: {metrics.get(c.data, 'score')}" for c in table.columns)
    return (
        f"client s: measured seconds of local training per client per round; upload MB: 10^6 bytes uploaded per "
        f"client per round; % ref: percent of `{table.reference}` in this table (mean over the row's runs). "
        f"{table.base_arch.removesuffix('-uncased')} upload %: exact upload of the method on {table.base_arch} over "
        f"the paper's "
        f"{PAPER_ROUNDS[table.scenario]} rounds relative to full-model FedAvg (`fedbt costs`). Scores: test "
        f"{scored}; mean ± sample std over the seeds (n = {', '.join(map(str, seeds)) or 0}). paper: {SOURCE}"
        + (f", {table.paper.replace('table', 'Table ')}." if table.paper else "; no paper table.")
    )


def to_markdown(table: Table, rows: list[TableRow], metrics: Mapping[str, str]) -> str:
    """The table as GitHub Markdown with a title and the column notes."""
    head = _header(table)
    rule = "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"
    lines = [f"### {table.title}", "", "| " + " | ".join(head) + " |", rule]
    lines += ["| " + " | ".join(_cells(table, row, "±")) + " |" for row in rows]
    return "\n".join([*lines, "", notes(table, rows, metrics), ""])


def _latex_escape(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return text.replace("–", "--").replace("±", r"$\pm$")


def to_latex(table: Table, rows: list[TableRow], metrics: Mapping[str, str]) -> str:
    """The table as a LaTeX ``table`` with booktabs rules and the notes as caption."""
    head = _header(table)
    body = [" & ".join(_latex_escape(c) for c in _cells(table, row, "±")) + r" \\" for row in rows]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering\small",
            r"\caption{" + _latex_escape(table.title) + ". " + _latex_escape(notes(table, rows, metrics)) + "}",
            r"\label{tab:" + table.name + "}",
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


def to_html(table: Table, rows: list[TableRow], metrics: Mapping[str, str]) -> str:
    """The table as a small standalone HTML page (what ``snakemake --report`` shows inline)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in _header(table))
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in _cells(table, row, "±")) + "</tr>" for row in rows)
    style = (
        "body{font-family:sans-serif;font-size:13px} table{border-collapse:collapse} "
        "th,td{border:1px solid #ccc;padding:3px 6px;text-align:right} td:first-child,th:first-child{text-align:left}"
    )
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{escape(table.title)}</title>'
        f"<style>{style}</style></head><body><h3>{escape(table.title)}</h3>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        f"<p>{escape(notes(table, rows, metrics))}</p></body></html>\n"
    )
