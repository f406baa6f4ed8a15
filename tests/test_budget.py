"""The budget study (config/budget.yaml): non-integer local-step budgets dealt over the client-rounds, FLOP-matched
variants planned from the methods' plans (fedbt/matching.py), the second reference's p column and the series'
gaps and figures (fedbt/report/series.py)."""

from __future__ import annotations

import copy
import csv
import json
import math

import pytest

from fedbt.costs import analytic_train_flops
from fedbt.errors import ConfigError, FedBTError
from fedbt.matching import client_flops, matched_budget
from fedbt.pipeline import Plan
from fedbt.report.build import build_report
from fedbt.report.spec import from_dict
from fedbt.report.stats import PAIRED, t_interval
from fedbt.training.loop import dealt_steps

from .test_planning import study_config
from .test_stats import write_run


@pytest.mark.parametrize(
    ("mean", "first"),
    [(1.2, [1, 1, 1, 1, 2, 1, 1, 1, 1, 2]), (2.5, [2, 3, 2, 3]), (3.0, [3, 3, 3]), (1.1671, [1] * 5 + [2])],
)
def test_a_mean_budget_is_dealt_so_every_prefix_runs_the_mean_within_a_step(mean, first):
    assert [dealt_steps(mean, i) for i in range(len(first))] == first
    for k in range(1, 60):
        assert sum(dealt_steps(mean, i) for i in range(k)) == math.floor(k * mean + 1e-9)


def test_a_run_deals_a_mean_budget_over_its_client_rounds(tiny_config):
    from fedbt.run import execute, prepare

    config = tiny_config("local.steps=1.5", "method.name=fedavg", "tracking.enabled=false")
    execute(prepare(config))
    with (config.resolved_out_dir() / "ledger.csv").open(newline="") as handle:
        steps = {(int(r["round"]), int(r["client"])): int(r["steps"]) for r in csv.DictReader(handle)}
    clients = config.federation.clients
    assert steps == {(r, c): dealt_steps(1.5, r * clients + c) for r in range(3) for c in range(clients)}
    assert sum(steps.values()) == 13  # floor(9 client-rounds x 1.5)


def fedbt_flops_by_hand(config) -> int:
    """FedBT's client FLOPs from its plans, as the issue asks: every round and client, one batch of max_length
    tokens of its plan (15 % predicted) times its steps."""
    from fedbt.matching import _method

    method = _method(config)
    batch, length = config.local.batch_size, config.model.max_length
    predicted = round(config.local.mlm_probability * batch * length)
    per_step = sum(
        analytic_train_flops(method.arch, method.client_plan(r, c), batch, length, predicted)
        for r in range(config.federation.rounds)
        for c in range(config.federation.clients)
    )
    return per_step * config.local.steps


@pytest.fixture(scope="module")
def budget_plan() -> Plan:
    return Plan(study_config("budget.yaml"))


def job_config(plan: Plan, study: str, variant: str, seed: int = 0):
    """The run config, as planning sees it (its starting model as the architecture it has), of the job a study's
    table reads for a variant and seed (at the first point of a grid)."""
    spec = plan.config["studies"][study]
    runs = plan.cell_runs(study, variant, plan.points(study, variant)[0])[spec["data"][0]]
    return plan.planning_config(plan.jobs[runs[spec["seeds"].index(seed)].removesuffix("/metrics.json")])


@pytest.mark.parametrize(("study", "budget"), [("budget-s2", 2), ("budget-s8", 8), ("budget-s32", 32)])
def test_fedavg_matched_steps_are_derived_from_the_fedbt_plans_flops(budget_plan, study, budget):
    matched, fedavg, fedbt = (job_config(budget_plan, study, v) for v in ("fedavg-matched", "fedavg", "fedbt"))
    assert fedavg.local.steps == fedbt.local.steps == budget
    assert matched.method.name == "fedavg"
    expected = budget * fedbt_flops_by_hand(fedbt) / client_flops(fedavg)
    assert matched.local.steps == pytest.approx(round(expected, 4))
    assert 0 < matched.local.steps < 0.45 * budget  # FedBT trains one layer of a half-depth local model


def test_a_matched_budget_follows_the_reference_method_not_a_constant(budget_plan):
    config = copy.deepcopy(budget_plan.config)
    config["variants"]["fedbt"] = {"options": {"local_layers": 5}}
    deeper = Plan(config)
    assert (
        job_config(deeper, "budget-s8", "fedavg-matched").local.steps
        > job_config(budget_plan, "budget-s8", "fedavg-matched").local.steps
    )


def test_matched_client_flops_are_within_a_few_percent_of_the_reference():
    from fedbt.estimate import estimate

    jobs = estimate(study_config("budget.yaml"), 1.0)["jobs"]
    flops = {(j["study"], j["variant"], j["seed"]): j["client_flops"] for j in jobs}
    matched = [(key, value) for key, value in flops.items() if key[1].startswith("fedavg-matched-")]
    assert len(matched) == 15  # 2 learning rates x 3 seeds at 2 and 8 steps, 3 seeds at 32 (lr_from budget-s8)
    for (study, variant, seed), value in matched:
        fedbt = flops[(study, variant.replace("fedavg-matched", "fedbt"), seed)]
        assert value == pytest.approx(fedbt, rel=0.05)


@pytest.mark.parametrize(
    ("change", "key", "message"),
    [
        (lambda c: c["studies"]["budget-s2"].update(variants=["fedavg", "fedavg-matched"]), "match_flops", "fedbt"),
        (lambda c: c["variants"]["fedavg-matched"].update(match_flops="fedavg-matched"), "match_flops", "itself"),
        (lambda c: c["studies"]["budget-s2"].update(second_reference="lora"), "second_reference", "lora"),
        (lambda c: c["series"]["budget"].update(gaps=[["fedbt", "lora"]]), "series.budget.gaps[0]", "lora"),
    ],
)
def test_bad_budget_configs_fail_at_planning_naming_the_key(budget_plan, change, key, message):
    config = copy.deepcopy(budget_plan.config)
    change(config)
    with pytest.raises((ConfigError, FedBTError), match=message) as error:
        Plan(config).report_spec()
    assert key in str(error.value)


def test_a_mean_budget_below_one_step_sits_out_the_client_rounds_dealt_none(tiny_config):
    """FedAvg matched to FedBT at 2 steps runs 0.78 steps a client-round: those dealt 0 sit the round out (no
    transfer, no compute), and the others' steps add up to the mean."""
    from fedbt.run import execute, prepare

    config = tiny_config("local.steps=0.5", "method.name=fedavg", "tracking.enabled=false")
    execute(prepare(config))
    with (config.resolved_out_dir() / "ledger.csv").open(newline="") as handle:
        rows = {(int(r["round"]), int(r["client"])): r for r in csv.DictReader(handle)}
    clients = config.federation.clients
    dealt = {(r, c): dealt_steps(0.5, r * clients + c) for r in range(3) for c in range(clients)}
    assert set(rows) == set(dealt) and 0 in dealt.values()
    for key, steps in dealt.items():
        if steps:
            assert int(rows[key]["steps"]) == 1 and int(rows[key]["upload_bytes"]) > 0, key
        else:
            assert rows[key]["status"] == "idle" and not int(rows[key]["upload_bytes"] or 0), key
    assert sum(int(r["steps"] or 0) for r in rows.values()) == 4  # floor(9 client-rounds x 0.5)


def test_matching_needs_budgets_of_one_kind(tiny_config):
    with pytest.raises(ConfigError, match="both set local.steps"):
        matched_budget(tiny_config("method.name=fedbt"), tiny_config("method.name=fedavg", "local.steps=null"))


# ------------------------------------------------------------------------------------------ the report


def test_the_second_reference_gets_its_own_p_column_and_json(tmp_path):
    spec = series_spec(tmp_path)
    spec["series"] = []
    build_report(from_dict(spec), tmp_path / "out")
    table = json.loads((tmp_path / "out" / "tables" / "budget-s3.json").read_text())
    assert table["second_reference"] == "fedavg-matched"
    rows = {row["variant"]: row for row in table["rows"]}
    assert rows["fedavg-matched"]["second_reference"]["cs"] == {
        "p_value": None,
        "p_adjusted": None,
        "test": None,
        "no_test": None,
    }
    fedbt = rows["fedbt"]["second_reference"]["cs"]
    assert fedbt["test"] == PAIRED and 0 < fedbt["p_value"] <= fedbt["p_adjusted"] <= 1
    lines = (tmp_path / "out" / "tables" / "budget-s3.md").read_text().splitlines()
    assert "p vs fedavg (Holm) | p vs fedavg-matched (Holm) |" in lines[2]
    assert len({len(line.split("|")) for line in lines[2:7]}) == 1


def series_spec(tmp_path) -> dict:
    """Two budget points, three rows, three seeds; fedbt's held-out loss 0.3 above fedavg's at budget 3 and 0.1, 0.0,
    0.2 above it at budget 12 (per seed)."""
    losses = {
        ("s3", "fedavg"): [7.0, 7.1, 7.2],
        ("s3", "fedbt"): [7.3, 7.4, 7.5],
        ("s3", "fedavg-matched"): [7.6, 7.5, 7.7],
        ("s12", "fedavg"): [6.5, 6.6, 6.7],
        ("s12", "fedbt"): [6.6, 6.6, 6.9],
        ("s12", "fedavg-matched"): [6.8, 6.9, 7.0],
    }
    flops = {"fedavg": 30, "fedbt": 12, "fedavg-matched": 12}  # cumulative client FLOPs of a run
    tables = []
    for point in ("s3", "s12"):
        rows = []
        for variant in ("fedavg", "fedbt", "fedavg-matched"):
            paths = [
                write_run(
                    tmp_path / point,
                    variant,
                    s,
                    [0.5],
                    loss=loss,
                    costs={"total_measured_flops": flops[variant]},
                    extra={
                        "rounds": [
                            {"round": 0, "measured_flops": flops[variant], "upload_bytes": 4, "heldout_mlm_loss": loss}
                        ]
                    },
                )
                for s, loss in enumerate(losses[(point, variant)])
            ]
            rows.append({"variant": variant, "method": variant, "options": {}, "runs": {"cs": paths}})
        tables.append(
            {
                "name": f"budget-{point}",
                "title": point,
                "scenario": "pretrain",
                "columns": [{"data": "cs", "label": "rct"}],
                "rows": rows,
                "second_reference": "fedavg-matched",
            }
        )
    series = {
        "name": "budget",
        "title": "Budget (test)",
        "axis": "local steps per round",
        "points": [
            {"study": "budget-s3", "data": "cs", "value": 3},
            {"study": "budget-s12", "data": "cs", "value": 12},
        ],
        "gaps": [["fedbt", "fedavg"], ["fedbt", "fedavg-matched"]],
    }
    return {"tables": tables, "series": [series]}


def test_series_gaps_are_paired_per_seed_with_interval_and_holm_over_the_points(tmp_path):
    written = build_report(from_dict(series_spec(tmp_path)), tmp_path / "out")
    out = tmp_path / "out"
    for name in ("budget.json", "budget.md", "budget.tex", "budget.html"):
        assert out / "tables" / name in written
    for kind in ("cost", "gap"):
        assert (out / "figures" / f"budget_{kind}.png").stat().st_size > 0
    gaps = json.loads((out / "tables" / "budget.json").read_text())["gaps"]
    loss = {(g["value"], g["a"], g["b"]): g for g in gaps if g["metric"] == "heldout_mlm_loss"}
    at3 = loss[(3, "fedbt", "fedavg")]
    assert at3["mean"] == pytest.approx(0.3) and at3["n"] == 3 and at3["test"] == PAIRED
    at12 = loss[(12, "fedbt", "fedavg")]
    assert at12["mean"] == pytest.approx(0.1)
    assert at12["ci95"] == pytest.approx(list(t_interval([0.1, 0.0, 0.2])))
    small, large = sorted((loss[(v, "fedbt", "fedavg")]["p_value"], v) for v in (3, 12))
    assert loss[(small[1], "fedbt", "fedavg")]["p_adjusted"] == pytest.approx(min(1, 2 * small[0]))
    assert loss[(large[1], "fedbt", "fedavg")]["p_adjusted"] == pytest.approx(max(min(1, 2 * small[0]), large[0]))
    assert loss[(3, "fedbt", "fedavg")]["a_flops_pct_of_b"] == pytest.approx(40.0)
    assert loss[(3, "fedbt", "fedavg-matched")]["a_flops_pct_of_b"] == pytest.approx(100.0)
    assert loss[(3, "fedbt", "fedavg-matched")]["mean"] == pytest.approx(-0.2)
    table = (out / "tables" / "budget.md").read_text()
    assert "| local steps per round | data | score | fedbt − fedavg |" in table and "+0.3000 ±" in table


def test_the_budget_study_declares_its_series_outputs(budget_plan):
    outputs = budget_plan.report_outputs()
    assert "results/budget/tables/budget.json" in outputs["tables"]
    assert "results/budget/figures/budget_gap.png" in outputs["figures"]
    spec = budget_plan.report_spec()
    assert [p["value"] for p in spec["series"][0]["points"]] == [2, 8, 32]
    rows = {r["variant"]: r for r in spec["tables"][0]["rows"]}
    assert "fedavg-matched: fedavg at local.steps = " in rows["fedavg-matched"]["note"]
    captions = dict((path, caption) for path, caption, _ in budget_plan.report_captions(outputs["figures"]))
    assert captions["results/budget/figures/budget_cost.png"] == "series_cost.rst"


def test_the_caption_says_when_a_matched_row_sits_client_rounds_out(budget_plan):
    assert "local.steps = 0.7781 (cs-s2)" in budget_plan.match_note("budget-s2", "fedavg-matched")
    assert "sits the round out" in budget_plan.match_note("budget-s2", "fedavg-matched")
    assert "sits the round out" not in budget_plan.match_note("budget-s8", "fedavg-matched")


@pytest.fixture(scope="module")
def rounds_plan() -> Plan:
    return Plan(study_config("budget-rounds.yaml"))


def test_the_rounds_study_is_budget_s32_run_for_10_rounds(budget_plan, rounds_plan):
    """config/budget-rounds.yaml repeats budget.yaml's federation; only the rounds (and so FedBT's depth) differ,
    and the AdamW kernel: budget.yaml's fused one came after budget-rounds' committed results (the same update up to
    float rounding)."""
    import dataclasses

    longer, s32 = (
        dataclasses.asdict(job_config(plan, study, "fedavg", seed=1))
        for plan, study in ((rounds_plan, "budget-rounds"), (budget_plan, "budget-s32"))
    )
    assert (longer["federation"].pop("rounds"), s32["federation"].pop("rounds")) == (10, 5)
    assert (longer["local"].pop("fused_optimizer"), s32["local"].pop("fused_optimizer")) == (False, True)
    for section in ("model", "federation", "local"):
        assert longer[section] == s32[section], section
    for key in ("corpus", "max_examples", "heldout_examples", "dev_examples"):
        assert longer["data"][key] == s32["data"][key], key


def test_the_rounds_study_matches_fedavg_to_a_fedbt_that_can_reach_its_last_layer(rounds_plan):
    fedbt = rounds_plan.planning_config(rounds_plan.job("budget-rounds", "cs-s32", "fedbt-L4-lr0.001", 0))
    fedavg = job_config(rounds_plan, "budget-rounds", "fedavg")
    matched = job_config(rounds_plan, "budget-rounds", "fedavg-matched")
    from fedbt.matching import _method
    from fedbt.methods.fedbt import progressive_schedule

    assert progressive_schedule(10) == [0] * 5 + [1] * 3 + [2, 3]
    assert {len(_method(fedbt).client_plan(r, c).layer_map) for r in range(10) for c in range(6)} == {4}
    expected = 32 * fedbt_flops_by_hand(fedbt) / client_flops(fedavg)
    assert matched.local.steps == pytest.approx(round(expected, 4))
