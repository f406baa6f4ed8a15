"""Statistics on independent replicates: the t interval and Holm on hand-computed numbers, n = federation seeds
(evaluation seeds averaged first), no test for n < 3, diverged runs, dropped client-rounds and counted FLOP steps
in the tables."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from fedbt.report.runs import load_run
from fedbt.report.spec import from_dict
from fedbt.report.stats import PAIRED, compare, holm, t_interval
from fedbt.report.tables import build_table, to_json, to_latex, to_markdown

T_975_DF2 = 4.302652729911275  # Student t quantile 0.975 with 2 degrees of freedom


def test_t_interval_is_mean_plus_minus_t_times_the_standard_error():
    low, high = t_interval([1.0, 2.0, 3.0])  # mean 2, s = 1, n = 3
    half = T_975_DF2 / math.sqrt(3)
    assert (low, high) == (pytest.approx(2 - half), pytest.approx(2 + half))
    assert t_interval([5.0, 5.0]) == (5.0, 5.0)
    assert t_interval([1.0]) is None


def test_holm_multiplies_the_ith_smallest_by_m_minus_i_plus_1_and_keeps_the_order():
    adjusted = holm({"a": 0.01, "b": 0.04, "c": 0.03, "ref": None})
    # sorted: a 0.01 * 3 = 0.03; c 0.03 * 2 = 0.06; b 0.04 * 1 = 0.04 -> raised to 0.06 (monotone)
    assert adjusted == {"a": pytest.approx(0.03), "b": pytest.approx(0.06), "c": pytest.approx(0.06), "ref": None}
    assert holm({"x": 0.6, "y": 0.7}) == {"x": 1.0, "y": 1.0}
    assert holm({"only": 0.2}) == {"only": 0.2}


def test_paired_t_over_three_seeds_and_no_test_below_three():
    paired = compare({"0": 0.5, "1": 0.7, "2": 0.6}, {"0": 0.4, "1": 0.5, "2": 0.6})
    # differences 0.1, 0.2, 0.0: t = sqrt(3) with 2 df, p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(3/5)
    assert paired.test == PAIRED and paired.p_value == pytest.approx(1 - math.sqrt(3 / 5))
    assert compare({"0": 0.5, "1": 0.7}, {"0": 0.4, "1": 0.5}) is None
    assert compare({"0": 0.5, "1": 0.7, "2": math.nan}, {"0": 0.4, "1": 0.5, "2": 0.6}) is None


# ------------------------------------------------------------------------------------------ tables


def write_run(
    root: Path,
    variant: str,
    seed: int,
    accuracies: list[float],
    loss: float = 2.0,
    extra: dict | None = None,
    costs: dict | None = None,
) -> str:
    """A pre-training run's metrics.json: one round, the held-out loss, a downstream score per evaluation seed."""
    path = root / variant / f"seed{seed}" / "metrics.json"
    path.parent.mkdir(parents=True)
    metrics = {
        "scenario": "pretrain",
        "method": variant,
        "data": "cs",
        "seed": seed,
        "rounds": [{"round": 0, "train_loss": loss, "measured_flops": 10, "upload_bytes": 4, "heldout_mlm_loss": loss}],
        "costs": {
            "client_rounds": 3,
            "total_steps": 9,
            "total_measured_flops": 30,
            "total_analytic_flops": 30,
            "total_client_seconds": 1.0,
            "total_upload_bytes": 12,
            **(costs or {}),
        },
        "evaluation": {
            "metrics": ["accuracy"],
            "primary": "accuracy",
            "seeds": [{"seed": i, "test": {"accuracy": a}} for i, a in enumerate(accuracies)],
        },
        **(extra or {}),
    }
    path.write_text(json.dumps(metrics))
    return str(path)


def table_of(rows: dict[str, list[str]], tiers: bool = False):
    raw = {
        "tables": [
            {
                "name": "pretrain",
                "title": "t",
                "scenario": "pretrain",
                "columns": [{"data": "cs", "label": "rct"}],
                "rows": [
                    {"variant": v, "method": v, "options": {}, "runs": {"cs": paths}} for v, paths in rows.items()
                ],
            }
        ]
    }
    table = from_dict(raw).tables[0]
    results = {p: load_run(p) for paths in rows.values() for p in paths}
    return build_table(table, results, {})


def as_json(data) -> dict:
    """The table's JSON as a script reads it (``<table>.json``); NaN would fail to parse."""
    return json.loads(json.dumps(to_json(data)), parse_constant=lambda name: pytest.fail(f"{name} in the JSON"))


FEDAVG = [[0.5, 0.7], [0.4, 0.6], [0.6, 0.8]]  # per federation seed: two evaluation seeds (means 0.6, 0.5, 0.7)
FEDBT = [[0.6, 0.8], [0.6, 0.8], [0.6, 0.6]]  # means 0.7, 0.7, 0.6
LORA = [[0.8, 0.8], [0.7, 0.9], [0.8, 0.8]]  # means 0.8, 0.8, 0.8


def three_rows(tmp_path: Path) -> dict[str, list[str]]:
    return {
        variant: [write_run(tmp_path, variant, s, acc, loss=2.0 + 0.1 * s) for s, acc in enumerate(scores)]
        for variant, scores in (("fedavg", FEDAVG), ("fedbt", FEDBT), ("lora", LORA))
    }


def test_evaluation_seeds_are_averaged_per_federation_seed_before_the_test(tmp_path):
    data = table_of(three_rows(tmp_path))
    rows = {row["variant"]: row for row in as_json(data)["rows"]}
    fedbt = rows["fedbt"]["scores"]["cs"]["accuracy"]
    assert fedbt["n"] == 3 and fedbt["mean"] == pytest.approx(2 / 3) and fedbt["test"] == PAIRED
    half = T_975_DF2 * math.sqrt(1 / 300) / math.sqrt(3)  # s of (0.7, 0.7, 0.6) = sqrt(1/300)
    assert fedbt["ci95"] == [pytest.approx(2 / 3 - half), pytest.approx(2 / 3 + half)]
    # per-seed differences vs fedavg: fedbt 0.1, 0.2, -0.1 (t^2 = 4/7), lora 0.2, 0.3, 0.1 (t^2 = 12)
    p_fedbt, p_lora = 1 - math.sqrt(2) / 3, 1 - math.sqrt(6 / 7)
    assert fedbt["p_vs_reference"] == pytest.approx(p_fedbt)
    assert rows["lora"]["scores"]["cs"]["accuracy"]["p_vs_reference"] == pytest.approx(p_lora)
    # Holm over the two tested rows: lora's smaller p doubles, fedbt's stays (already larger)
    assert rows["lora"]["scores"]["cs"]["accuracy"]["p_adjusted"] == pytest.approx(2 * p_lora)
    assert fedbt["p_adjusted"] == pytest.approx(p_fedbt)
    assert rows["fedavg"]["scores"]["cs"]["accuracy"]["p_adjusted"] is None
    markdown = to_markdown(data)
    assert f"| {2 / 3:.4f} ± {half:.4f} | {p_fedbt:.4f} |" in markdown
    assert "n = 3 federation seeds" in markdown and "mean over the 2 evaluation seeds" in markdown
    assert "Holm-adjusted" in markdown and "p vs fedavg (Holm)" in markdown


def test_two_federation_seeds_give_no_p_value_and_say_n_below_3(tmp_path):
    rows = {v: paths[:2] for v, paths in three_rows(tmp_path).items()}
    data = table_of(rows)
    cell = as_json(data)["rows"][1]["scores"]["cs"]["accuracy"]
    assert cell["n"] == 2 and cell["p_vs_reference"] is None and cell["p_adjusted"] is None
    assert cell["no_test"] == "n<3" and cell["ci95"] is not None
    fedbt_line = next(line for line in to_markdown(data).splitlines() if line.startswith("| fedbt |"))
    assert fedbt_line.count("| n<3 |") == 2  # held-out loss and downstream accuracy
    assert "n$<$3" in to_latex(data)


def test_a_diverged_seed_shows_as_diverged_never_as_a_p_value(tmp_path):
    rows = three_rows(tmp_path)
    rows["fedbt"][2] = write_run(tmp_path / "nan", "fedbt", 2, [0.6, 0.6], loss=math.nan)
    data = table_of(rows)
    table = as_json(data)
    fedbt, lora = table["rows"][1]["scores"]["cs"], table["rows"][2]["scores"]["cs"]
    for metric in ("heldout_mlm_loss", "accuracy"):  # a finite downstream score of a diverged run is no sample
        assert fedbt[metric]["diverged"] == 1 and fedbt[metric]["n"] == 3
        assert fedbt[metric]["mean"] is None and fedbt[metric]["p_vs_reference"] is None
    assert lora["accuracy"]["p_adjusted"] == pytest.approx(1 - math.sqrt(6 / 7))  # alone in the Holm family
    fedbt_line = next(line for line in to_markdown(data).splitlines() if line.startswith("| fedbt |"))
    assert "| diverged 1/3 |" in fedbt_line and "1.0000" not in fedbt_line
    assert "NaN or infinite" in table["notes"]


def test_dropped_share_and_counted_flop_steps_reach_the_json_and_caption(tmp_path):
    rows = three_rows(tmp_path)
    rows["fedbt"] = [
        write_run(tmp_path / "d", "fedbt", s, FEDBT[s], extra={"dropped_client_rounds_pct": pct})
        for s, pct in enumerate([0.0, 20.0, 40.0])
    ]
    data = table_of(rows)
    table = as_json(data)
    assert [row["dropped_pct"] for row in table["rows"]] == [None, pytest.approx(20.0), None]
    assert "dropped %" not in to_markdown(data)  # no tiers: no column
    assert table["rows"][0]["steps"] == 27 and table["rows"][0]["measured_steps"] is None
    assert "do not record how many" in table["notes"]

    for counted, caption in ((3, "counted on 9 of the 27 local steps"), (9, "counted on every local step (27)")):
        root = tmp_path / f"counted{counted}"
        paths = [write_run(root, "fedavg", s, FEDAVG[s], costs={"total_measured_steps": counted}) for s in range(3)]
        table = as_json(table_of({"fedavg": paths}))
        assert table["rows"][0]["measured_steps"] == 3 * counted and caption in table["notes"]


def test_counted_steps_come_from_the_ledger_and_config_when_the_summary_lacks_them(tmp_path):
    path = Path(write_run(tmp_path, "fedavg", 0, [0.5]))
    (path.parent / "config.yaml").write_text("local:\n  flop_count_steps: 2\n")
    (path.parent / "ledger.csv").write_text("round,client,steps\n0,0,3\n0,1,1\n0,2,0\n")
    assert load_run(path).measured_steps == 2 + 1 + 0
    (path.parent / "config.yaml").write_text("local:\n  flop_count_steps: -1\n")  # every step
    assert load_run(path).measured_steps == 3 + 1 + 0


def test_tiered_tables_show_the_dropped_share_column(tmp_path):
    tier = {
        "measured_flops_per_client_round": 10.0,
        "upload_mb_per_client_round": 1.0,
        "max_state_mb": 5.0,
        "max_peak_memory_mb": 6.0,
        "memory_budget_mb": 8.0,
        "state_exceeds_budget": False,
        "peak_memory_exceeds_budget": False,
    }
    extra = {"tiers": {"weak": tier}, "dropped_client_rounds_pct": 12.5}
    rows = {v: [write_run(tmp_path, v, s, FEDAVG[s], extra=extra) for s in range(3)] for v in ("fedavg", "fedbt")}
    markdown = to_markdown(table_of(rows))
    header = next(line for line in markdown.splitlines() if line.startswith("| method"))
    assert "| bert-base upload % | dropped % | cs: held-out MLM loss (ppl) |" in header and "weak" not in header
    assert "| – | 12.5 | 2.0000 ± 0.0000 (7.4) |" in markdown and "budget_policy: drop" in markdown
