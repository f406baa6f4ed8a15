"""The privacy budget in the report: the ``update dim`` and ``epsilon`` columns and JSON fields appear only in a
table with DP rows (blank for a row without DP), the figure of score against epsilon is written and planned only
for studies with DP runs (config/privacy.yaml; not the default study)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from fedbt.pipeline import Plan, privacy_sets
from fedbt.report.build import build_report
from fedbt.report.spec import from_dict
from fedbt.report.tables import MAX_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "runs" / "pretrain" / "cs"


def private_copy(source: Path, target: Path, epsilon: float | None, dim: int) -> str:
    """A golden run's metrics with a ``privacy`` summary and per-round ``dp_*`` diagnostics added."""
    metrics = json.loads(source.read_text())
    metrics["privacy"] = {
        "clip": 0.1,
        "noise_multiplier": 1.0,
        "delta": 1e-4,
        "noise": "central",
        "target_epsilon": None,
        "epsilon": epsilon,
    }
    for record in metrics["rounds"]:
        record.update({"epsilon": epsilon, "dp_update_dim": dim, "dp_noise_norm": 3.0, "dp_clipped_fraction": 1.0})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(metrics))
    return str(target)


def spec(tmp_path: Path) -> dict:
    def row(variant, method, runs):
        return {"variant": variant, "method": method, "options": {}, "runs": {"cs": runs}, "bert_base": None}

    plain = [str(GOLDEN / "fedavg" / f"seed{s}" / "metrics.json") for s in (0, 1)]
    private = [
        private_copy(GOLDEN / "fedbt" / f"seed{s}" / "metrics.json", tmp_path / f"dp/seed{s}/metrics.json", 11.5, 1234)
        for s in (0, 1)
    ]
    clip_only = [
        private_copy(GOLDEN / "fedbt" / f"seed{s}" / "metrics.json", tmp_path / f"clip/seed{s}/metrics.json", None, 99)
        for s in (0, 1)
    ]
    rows = [row("fedavg", "fedavg", plain), row("fedbt-dp1", "fedbt", private), row("fedbt-clip", "fedbt", clip_only)]
    table = {"name": "private", "title": "DP", "scenario": "pretrain", "columns": [{"data": "cs", "label": "cs"}]}
    return {"tables": [table | {"rows": rows, "private": True}]}


def test_a_table_with_dp_rows_shows_epsilon_and_update_dim(tmp_path):
    written = build_report(from_dict(spec(tmp_path)), tmp_path / "out")
    lines = [line for line in (tmp_path / "out/tables/private.md").read_text().splitlines() if line.startswith("|")]
    header = lines[0].split("|")[1:-1]
    assert [h.strip() for h in header[9:11]] == ["update dim", "epsilon"]
    assert len(header) <= MAX_COLUMNS
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]}
    assert cells["fedavg"][9:11] == ["–", "–"], "blank without DP"
    assert cells["fedbt-dp1"][9:11] == ["1234", "11.5"]
    assert cells["fedbt-clip"][10] == "inf", "clipping without noise spends an infinite budget"
    rows = {row["variant"]: row for row in json.loads((tmp_path / "out/tables/private.json").read_text())["rows"]}
    assert rows["fedavg"]["epsilon"] is None and rows["fedavg"]["privacy"] is None
    assert rows["fedbt-dp1"]["epsilon"] == 11.5
    assert rows["fedbt-dp1"]["privacy"]["update_dim"] == 1234 and rows["fedbt-dp1"]["privacy"]["noise_norm"] == 3.0
    notes = json.loads((tmp_path / "out/tables/private.json").read_text())["notes"]
    assert "replace-one" in notes and "delta = 0.0001" in notes
    assert tmp_path / "out/figures/private_epsilon.png" in written


def test_a_table_without_dp_has_no_privacy_columns(tmp_path):
    raw = spec(tmp_path)
    raw["tables"][0]["rows"] = raw["tables"][0]["rows"][:1]
    raw["tables"][0]["private"] = False
    written = build_report(from_dict(raw), tmp_path / "out")
    assert "| epsilon |" not in (tmp_path / "out/tables/private.md").read_text()
    assert "epsilon" not in json.loads((tmp_path / "out/tables/private.json").read_text())["rows"][0]
    assert not any("epsilon" in p.name for p in written)


def test_only_the_privacy_study_plans_the_epsilon_figure():
    plan = Plan(yaml.safe_load((ROOT / "config/privacy.yaml").read_text()))
    figures = plan.report_outputs()["figures"]
    assert "results/privacy/figures/privacy_epsilon.png" in figures
    assert all(table["private"] for table in plan.report_spec()["tables"])
    captions = {path: caption for path, caption, _ in plan.report_captions(figures)}
    assert captions["results/privacy/figures/privacy_epsilon.png"] == "epsilon.rst"
    default = Plan(yaml.safe_load((ROOT / "config/config.yaml").read_text()))
    assert not any("epsilon" in p for p in default.report_outputs()["figures"])
    assert not any(table["private"] for table in default.report_spec()["tables"])


def test_privacy_sets():
    assert privacy_sets(["privacy.clip=0.1"]) and privacy_sets(["privacy={clip: 0.1}"])
    assert not privacy_sets(["federation.rounds=2"]) and not privacy_sets(["privacy=null"])
