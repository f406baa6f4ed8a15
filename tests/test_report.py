"""The report on fixed run files: tables against golden Markdown, LaTeX shape, every figure written."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedbt.report.build import build_report
from fedbt.report.spec import from_dict, output_files

GOLDEN = Path(__file__).parent / "golden"
RUNS = GOLDEN / "runs"


def spec_dict() -> dict:
    def row(scenario, data, variant, method, paper_row, options=None):
        return {
            "variant": variant,
            "method": method,
            "options": options or {},
            "runs": {data: [str(RUNS / scenario / data / variant / "metrics.json")]},
            "paper_row": paper_row,
            "bert_base": {"method": method, "options": {}},
        }

    return {
        "tables": [
            {
                "name": "pretrain",
                "title": "Further pre-training (golden)",
                "scenario": "pretrain",
                "paper": "table1",
                "columns": [{"data": "cs", "label": "rct"}],
                "rows": [
                    row("pretrain", "cs", "fedavg", "fedavg", "BERT-FL"),
                    row("pretrain", "cs", "fedbt", "fedbt", "FedBT", {"local_layers": 2}),
                ],
            },
            {
                "name": "finetune",
                "title": "Federated fine-tuning (golden)",
                "scenario": "finetune",
                "paper": "table3",
                "columns": [{"data": "rct", "label": "rct"}],
                "rows": [
                    row("finetune", "rct", "fedavg", "fedavg", "BERT-FL"),
                    row("finetune", "rct", "fedbt-ft", "fedbt-ft", "FedBT"),
                ],
            },
        ]
    }


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    written = build_report(from_dict(spec_dict()), out)
    return out, written


@pytest.mark.parametrize("table", ["pretrain", "finetune"])
def test_markdown_tables_match_golden(report, table):
    out, _ = report
    assert (out / "tables" / f"{table}.md").read_text() == (GOLDEN / f"{table}.md").read_text()


def test_latex_table_is_a_booktabs_table_with_every_row(report):
    out, _ = report
    tex = (out / "tables" / "pretrain.tex").read_text()
    assert tex.startswith("\\begin{table}") and "\\toprule" in tex and "\\bottomrule" in tex
    assert "fedbt & " in tex and "$\\pm$" in tex and "\\label{tab:pretrain}" in tex


def test_html_table_has_the_markdown_rows(report):
    """The HTML table (shown inline by `snakemake --report`) holds the same cells as the Markdown one."""
    out, _ = report
    page = (out / "tables" / "pretrain.html").read_text()
    markdown = (out / "tables" / "pretrain.md").read_text().splitlines()
    rows = [line.strip("|").split("|") for line in markdown if line.startswith("| ") and "---" not in line]
    assert page.count("<tr>") == len(rows) and page.count("<th>") == len(rows[0])
    for cell in rows[-1]:
        assert f"<td>{cell.strip()}</td>" in page


def test_every_declared_output_is_written(report):
    out, written = report
    expected = output_files(["pretrain", "finetune"], str(out))
    assert sorted(map(str, written)) == sorted(expected["tables"] + expected["figures"])
    assert all(Path(p).stat().st_size > 0 for p in expected["tables"] + expected["figures"])


def test_missing_runs_leave_dashes(tmp_path):
    raw = spec_dict()
    raw["tables"] = raw["tables"][:1]
    raw["tables"][0]["rows"][1]["runs"] = {"cs": [str(tmp_path / "missing" / "metrics.json")]}
    build_report(from_dict(raw), tmp_path)
    fedbt_row = next(
        line for line in (tmp_path / "tables" / "pretrain.md").read_text().splitlines() if "| fedbt |" in line
    )
    assert fedbt_row == "| fedbt | – | – | – | – | 7.04 | 34.31 | 7.04 | – | 0.8312 |"
