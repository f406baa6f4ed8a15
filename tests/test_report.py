"""The report on fixed run files (``tests/golden/runs``, made by ``tests/golden/regenerate.py``): tables against
golden Markdown, LaTeX shape, the JSON interface, samples per federation seed, equal-plan warnings, every figure
written. The golden runs have two federation seeds: no p-values (n < 3; tests/test_stats.py tests them)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pytest

from fedbt.report.build import build_report
from fedbt.report.spec import from_dict, output_files
from fedbt.report.tables import MAX_COLUMNS

GOLDEN = Path(__file__).parent / "golden"
RUNS = GOLDEN / "runs"


def spec_dict() -> dict:
    def row(scenario, data, variant, method, paper_row, options=None):
        return {
            "variant": variant,
            "method": method,
            "options": options or {},
            "runs": {data: [str(RUNS / scenario / data / variant / f"seed{s}" / "metrics.json") for s in (0, 1)]},
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
        assert f"<td>{escape(cell.strip())}</td>" in page  # n<3 is n&lt;3


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
    assert fedbt_row == "| fedbt | – | – | – | – | – | – | – | 7.04 | – | – | – | – | 0.8312 |"


def test_golden_tables_keep_to_fifteen_columns_and_the_paper_costs_move_to_the_caption():
    for table in ("pretrain", "finetune"):
        text = (GOLDEN / f"{table}.md").read_text()
        header = next(line for line in text.splitlines() if line.startswith("| method"))
        assert header.count("|") - 1 <= MAX_COLUMNS and "paper compute" not in header
    notes = (GOLDEN / "pretrain.md").read_text().splitlines()[-1]
    assert "Paper compute % / comm %" in notes and "fedavg 100.00 / 100.00; fedbt 34.31 / 7.04;" in notes


def test_json_interface_has_the_documented_fields(report):
    out, _ = report
    table = json.loads((out / "tables" / "pretrain.json").read_text())
    assert table["study"] == "pretrain" and table["reference"] == "fedavg"
    fedavg, fedbt = table["rows"]
    for row in (fedavg, fedbt):
        for key in ("variant", "method", "flops_per_client_round", "flops_pct", "analytic_flops_pct", "seconds_pct"):
            assert key in row
        assert {"upload_pct", "bert_base_upload_pct", "scores"} <= set(row)
    assert fedavg["flops_pct"] == 100.0 and 0 < fedbt["flops_pct"] < 100
    assert {"dropped_pct", "steps", "measured_steps"} <= set(fedbt) and fedbt["dropped_pct"] is None
    cell = fedbt["scores"]["cs"]["accuracy"]
    fields = {"mean", "std", "n", "ci95", "p_vs_reference", "p_adjusted", "diverged", "higher_is_better"}
    assert fields <= set(cell) and cell["higher_is_better"]
    assert cell["n"] == 2 and cell["diverged"] == 0 and cell["ci95"][0] <= cell["mean"] <= cell["ci95"][1]
    assert cell["p_vs_reference"] is None and cell["p_adjusted"] is None and cell["no_test"] == "n<3"
    assert fedavg["scores"]["cs"]["accuracy"]["no_test"] is None
    assert "macro_f1" in fedbt["scores"]["cs"]


def test_downstream_samples_are_federation_seeds_each_the_mean_of_its_evaluation_seeds(report):
    out, _ = report

    def seed_means(variant):
        paths = [RUNS / "pretrain" / "cs" / variant / f"seed{s}" / "metrics.json" for s in (0, 1)]
        return [json.loads(p.read_text())["evaluation"]["mean"]["accuracy"] for p in paths]

    cell = json.loads((out / "tables" / "pretrain.json").read_text())["rows"][1]["scores"]["cs"]["accuracy"]
    assert cell["n"] == 2 and cell["mean"] == pytest.approx(sum(seed_means("fedbt")) / 2)


def test_welch_when_the_seeds_do_not_pair_up():
    from fedbt.report.stats import PAIRED, WELCH, compare

    paired = compare({"0": 0.5, "1": 0.7, "2": 0.6}, {"0": 0.4, "1": 0.5, "2": 0.6})
    welch = compare({"0": 0.5, "1": 0.7, "5": 0.6}, {"2": 0.4, "3": 0.5, "4": 0.45})
    assert paired.test == PAIRED and welch.test == WELCH
    assert compare({"0": 0.5, "1": 0.6}, {"0": 0.4, "1": 0.5}) is None
    same = {"0": 0.5, "1": 0.5, "2": 0.5}
    assert compare(same, same).p_value == 1.0


def test_rows_with_identical_plans_are_flagged(tmp_path):
    raw = spec_dict()
    table = raw["tables"][0]
    twin = dict(table["rows"][1], variant="fedbt-twin")
    table["rows"].append(twin)
    build_report(from_dict(raw), tmp_path)
    text = (tmp_path / "tables" / "pretrain.md").read_text()
    assert "Warning: fedbt, fedbt-twin trained and sent exactly the same tensors" in text
    assert json.loads((tmp_path / "tables" / "pretrain.json").read_text())["identical_plans"] == [
        ["fedbt", "fedbt-twin"]
    ]


def test_equal_plans_for_fewer_steps_are_not_flagged(tmp_path):
    """FedAvg at a matched budget trains the same tensors as FedAvg, for fewer steps: not the same method."""
    raw = spec_dict()
    table = raw["tables"][0]
    runs = []
    for path in table["rows"][0]["runs"]["cs"]:
        metrics = json.loads(Path(path).read_text())
        metrics["costs"]["total_steps"] = metrics["costs"]["total_steps"] // 2
        copy = tmp_path / "runs" / Path(path).parent.name / "metrics.json"
        copy.parent.mkdir(parents=True)
        copy.write_text(json.dumps(metrics))
        runs.append(str(copy))
    table["rows"].append(dict(table["rows"][0], variant="fedavg-fewer-steps", runs={"cs": runs}))
    build_report(from_dict(raw), tmp_path / "out")
    assert json.loads((tmp_path / "out" / "tables" / "pretrain.json").read_text())["identical_plans"] == []


def test_cost_figure_plots_each_run_against_its_cumulative_spend(report):
    from fedbt.report.runs import load_run

    out, _ = report
    assert (out / "figures" / "pretrain_cost.png").stat().st_size > 0
    run = load_run(RUNS / "pretrain" / "cs" / "fedbt" / "seed0")
    metrics = json.loads((RUNS / "pretrain" / "cs" / "fedbt" / "seed0" / "metrics.json").read_text())
    last = metrics["rounds"][-1]["round"]
    assert run.spent[last] == (
        sum(r["measured_flops"] for r in metrics["rounds"]),
        sum(r["upload_bytes"] for r in metrics["rounds"]),
    )
    assert list(run.spent) == sorted(run.spent) and set(run.curve) <= set(run.spent)


def test_a_study_with_tiers_lists_its_per_tier_table_as_a_report_output():
    import yaml

    from fedbt.pipeline import Plan

    root = Path(__file__).resolve().parents[1]
    plan = Plan(yaml.safe_load((root / "config" / "hetero.yaml").read_text()))
    outputs = plan.report_outputs()["tables"]
    tier_tables = [p for p in outputs if "-tiers." in p]
    assert sorted(tier_tables) == sorted(
        f"results/hetero/tables/{study}-tiers.{ext}"
        for study in plan.config["studies"]
        for ext in ("md", "tex", "json", "html")
    )
    captions = {path: (caption, sub) for path, caption, sub in plan.report_captions(outputs)}
    title = plan.config["studies"]["hetero-pretrain"]["title"]
    assert captions["results/hetero/tables/hetero-pretrain-tiers.md"] == ("tiers.rst", title)
    assert captions["results/hetero/tables/hetero-pretrain.md"] == ("table.rst", title)
    assert all(table["tiered"] for table in plan.report_spec()["tables"])
    assert output_files(["pretrain"], "results", tiered=()) == output_files(["pretrain"], "results")
    assert not any("-tiers" in p for p in output_files(["pretrain"])["tables"])


def test_every_committed_table_keeps_to_fifteen_columns():
    """The rule of the narrow tables holds for every study's committed Markdown table (per-tier figures sit in the
    study's -tiers table; the budget study's second p column and downstream score still fit)."""
    tables = sorted((GOLDEN.parents[1] / "results").glob("**/tables/*.md"))
    assert tables
    for path in tables:
        header = next(line for line in path.read_text().splitlines() if line.startswith("| "))
        assert header.count("|") - 1 <= MAX_COLUMNS, path
