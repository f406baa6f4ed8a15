"""Choosing a grid point per method on dev (a study's lr_grid times a variant's grid): dev decides, test never
does; fine-tuning maximises the dev score, pre-training minimises the dev slice's held-out loss."""

from __future__ import annotations

import json
import math

import pytest

from fedbt.errors import ConfigError
from fedbt.report.runs import RunCosts, RunResult, load_run
from fedbt.report.selection import LrChoice, choose, shown
from fedbt.report.spec import Row


def run(path: str, seed: int, dev: float, test: float, scenario: str = "finetune") -> RunResult:
    """A run of one grid point: fine-tuning scored by accuracy, pre-training by held-out loss (its dev slice)."""
    metric, curve, data, method = ("accuracy", "dev_accuracy", "ag_news", "fedavg")
    if scenario == "pretrain":
        metric, curve, data, method = ("heldout_mlm_loss", "heldout_mlm_loss", "cs", "fedbt")
    last = 0 if scenario == "finetune" else 3
    return RunResult(
        path=path,
        scenario=scenario,
        method=method,
        data=data,
        seed=seed,
        device="cpu",
        metric=metric if scenario == "finetune" else "",
        scores={metric: {str(seed): test}},
        majority={},
        dev={metric: dev},
        curve_name=curve,
        curve={last: dev if scenario == "finetune" else test},
        spent={last: (1.0, 1.0)},
        costs=RunCosts(1.0, 1.0, 1.0, 1.0, 1.0),
        upload_bytes_total=1.0,
        plan_sha256=None,
    )


def grid_row(results: dict[str, RunResult], data: str = "ag_news", variant: str = "fedavg") -> Row:
    lr_runs = {}
    for path in results:
        lr_runs.setdefault(path.split("/")[0], {data: []})[data].append(path)
    return Row(variant=variant, method=variant, options={}, runs={}, lr_runs=lr_runs)


def test_a_row_without_a_grid_is_left_as_it_is():
    row = Row(variant="fedavg", method="fedavg", options={}, runs={"ag_news": ["a"]})
    assert choose(row, {}) == (row, {})


def pretrain_run(path: str, seed: int, dev: float, test: float) -> RunResult:
    return run(path, seed, dev, test, scenario="pretrain")


def pretrain_row(results: dict[str, RunResult]) -> Row:
    return grid_row(results, data="cs", variant="fedbt")


def test_pretraining_picks_the_lowest_mean_dev_loss_whatever_the_test_loss_says():
    results = {
        "lr0.0003-mu0.01/s0": pretrain_run("lr0.0003-mu0.01/s0", 0, dev=4.0, test=9.0),
        "lr0.0003-mu0.01/s1": pretrain_run("lr0.0003-mu0.01/s1", 1, dev=5.0, test=9.5),
        "lr0.001-mu0.01/s0": pretrain_run("lr0.001-mu0.01/s0", 0, dev=4.25, test=1.0),
        "lr0.001-mu0.01/s1": pretrain_run("lr0.001-mu0.01/s1", 1, dev=4.5, test=1.5),
    }
    row, choices = choose(pretrain_row(results), results)
    assert choices["cs"] == LrChoice("lr0.001-mu0.01", {"lr0.0003-mu0.01": 4.5, "lr0.001-mu0.01": 4.375})
    assert row.runs == {"cs": ["lr0.001-mu0.01/s0", "lr0.001-mu0.01/s1"]}, "4.375 < 4.5: lower dev loss wins"


def test_pretraining_never_reads_test_and_skips_diverged_points():
    base = {
        "lr0.0001/s0": pretrain_run("lr0.0001/s0", 0, dev=6.0, test=2.0),
        "lr0.0003/s0": pretrain_run("lr0.0003/s0", 0, dev=5.0, test=8.0),
        "lr0.001/s0": pretrain_run("lr0.001/s0", 0, dev=math.nan, test=0.1),
    }
    flipped = {
        path: pretrain_run(path, 0, dev=run.dev["heldout_mlm_loss"], test=-run.headline_scores[0])
        for path, run in base.items()
    }
    for results in (base, flipped):
        choice = choose(pretrain_row(results), results)[1]["cs"]
        assert choice.chosen == "lr0.0003" and choice.dev == {"lr0.0001": 6.0, "lr0.0003": 5.0, "lr0.001": None}


def test_a_row_without_any_dev_score_says_why():
    results = {"lr0.0001/s0": pretrain_run("lr0.0001/s0", 0, dev=1.0, test=1.0)}
    results["lr0.0001/s0"].dev.clear()  # no dev slice: data.dev_examples was 0
    choice = choose(pretrain_row(results), results)[1]["cs"]
    assert choice.chosen is None and "no grid point" in choice.reason


def test_an_untuned_row_carries_no_choice_with_its_reason():
    row = Row(variant="none", method="none", options={}, runs={"cs": ["none/s0"]}, not_tuned="tuned is false")
    assert choose(row, {}) == (row, {"cs": LrChoice(None, {}, "tuned is false")})


def test_a_table_cell_shows_an_lr_only_point_as_its_rate_and_others_by_label():
    assert shown(LrChoice("lr5e-05", {})) == "5e-05" and shown(LrChoice("lr0.0003", {})) == "0.0003"
    assert shown(LrChoice("lr0.0003-mu0.01", {})) == "lr0.0003-mu0.01"
    assert shown(LrChoice(None, {}, "tuned is false")) is None and shown(None) is None


def test_a_pretraining_run_reads_its_final_dev_slice_loss_as_its_dev_score(tmp_path):
    rounds = [
        {"round": r, "heldout_mlm_loss": test, "dev_heldout_mlm_loss": dev, "measured_flops": 1, "upload_bytes": 1}
        for r, test, dev in ((1, 5.0, 5.5), (2, 4.0, 4.5))
    ]
    costs = {"total_measured_flops": 2, "total_analytic_flops": 2, "total_client_seconds": 1, "total_upload_bytes": 2}
    metrics = {"scenario": "pretrain", "seed": 0, "method": "fedavg", "data": "cs", "rounds": rounds, "costs": costs}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    run = load_run(tmp_path)
    assert run.dev == {"heldout_mlm_loss": 4.5} and run.scores["heldout_mlm_loss"] == {"0": 4.0}
    assert run.curve == {1: 5.0, 2: 4.0}, "the test curve keeps its name; the dev slice is not in it"


def test_the_table_json_carries_the_chosen_point_and_every_candidate_for_every_row():
    from fedbt.report.build import choose_learning_rates
    from fedbt.report.spec import Column, Table
    from fedbt.report.tables import build_table, to_json

    results = {
        "fedavg-lr0.0003/s0": pretrain_run("fedavg-lr0.0003/s0", 0, dev=5.0, test=5.1),
        "fedavg-lr0.001/s0": pretrain_run("fedavg-lr0.001/s0", 0, dev=4.0, test=4.1),
        "fedprox-lr0.001-mu0.01/s0": pretrain_run("fedprox-lr0.001-mu0.01/s0", 0, dev=4.2, test=4.0),
        "fedprox-lr0.001-mu0.1/s0": pretrain_run("fedprox-lr0.001-mu0.1/s0", 0, dev=3.9, test=4.4),
        "none/s0": pretrain_run("none/s0", 0, dev=7.0, test=7.0),
    }

    def row(variant: str, points: list[str]) -> Row:
        return Row(variant, variant, {}, {}, lr_runs={p: {"cs": [f"{variant}-{p}/s0"]} for p in points})

    rows = [
        Row("none", "none", {}, {"cs": ["none/s0"]}, not_tuned="variants.none.tuned is false"),
        row("fedavg", ["lr0.0003", "lr0.001"]),
        row("fedprox", ["lr0.001-mu0.01", "lr0.001-mu0.1"]),
    ]
    table, choices = choose_learning_rates(Table("t", "T", "pretrain", [Column("cs", "cs")], rows), results)
    shown = {r["variant"]: r["lr"]["cs"] for r in to_json(build_table(table, results, {}, choices))["rows"]}
    assert shown["fedavg"] == {
        "chosen": "lr0.001",
        "dev": {"lr0.0003": 5.0, "lr0.001": 4.0},
        "reason": None,
        "study": None,
    }
    assert shown["fedprox"]["chosen"] == "lr0.001-mu0.1" and shown["fedprox"]["dev"]["lr0.001-mu0.01"] == 4.2
    assert shown["none"] == {"chosen": None, "dev": {}, "reason": "variants.none.tuned is false", "study": None}


def write_pretrain_run(path, dev: float, test: float) -> str:
    """A finished pre-training run directory whose final dev-slice loss is ``dev``; returns its metrics.json."""
    scores = {"heldout_mlm_loss": test, "dev_heldout_mlm_loss": dev}
    rounds = [{"round": 1, **scores, "measured_flops": 1, "upload_bytes": 1}]
    costs = {"total_measured_flops": 1, "total_analytic_flops": 1, "total_client_seconds": 1, "total_upload_bytes": 1}
    metrics = {"scenario": "pretrain", "seed": 0, "method": "fedavg", "data": "cs", "rounds": rounds, "costs": costs}
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    return str(path / "metrics.json")


def candidates(tmp_path, devs: dict[str, list[float | None]]) -> dict:
    """``fedbt run --choose-from``'s JSON over points (label -> dev loss per seed; None: the run is unfinished)."""
    points = {}
    for label, losses in devs.items():
        runs = [str(tmp_path / label / f"s{seed}" / "metrics.json") for seed in range(len(losses))]
        for seed, loss in enumerate(losses):
            if loss is not None:
                write_pretrain_run(tmp_path / label / f"s{seed}", loss, test=1.0)
        points[label] = {"sets": [f"local.lr={label.removeprefix('lr')}"], "runs": runs}
    return {"study": "budget-s8", "points": points}


def test_a_run_of_an_lr_from_study_takes_the_best_mean_dev_point_of_the_other_study(tmp_path):
    from fedbt.report.selection import choose_from

    raw = candidates(tmp_path, {"lr0.0003": [4.0, 5.0], "lr0.001": [4.4, 4.5], "lr0.003": [3.0, None]})
    sets, choice = choose_from(json.dumps(raw))
    assert sets == ["local.lr=0.001"], "the lowest mean dev loss among points whose every seed has finished"
    assert choice == LrChoice("lr0.001", {"lr0.0003": 4.5, "lr0.001": 4.45, "lr0.003": None}, None, "budget-s8")


def test_a_run_of_an_lr_from_study_fails_clearly_without_a_choice(tmp_path):
    from fedbt.errors import FedBTError
    from fedbt.report.selection import choose_from

    with pytest.raises(FedBTError, match="no grid point of studies.budget-s8 has finished runs"):
        choose_from(json.dumps(candidates(tmp_path, {"lr0.0003": [None]})))
    with pytest.raises(FedBTError, match="--choose-from: expected"):
        choose_from('{"study": "budget-s8"}')


def test_a_table_tuned_in_another_study_shows_that_studys_choice_and_checks_its_runs(tmp_path, caplog):
    from fedbt.report.build import choose_all
    from fedbt.report.spec import Column, Spec, Table
    from fedbt.report.tables import build_table, notes, to_json

    source = {p: write_pretrain_run(tmp_path / "s8" / p, dev, 4.0) for p, dev in (("lr0.0003", 4.0), ("lr0.001", 3.0))}
    ran = write_pretrain_run(tmp_path / "s32" / "fedavg", 2.5, 3.5)
    (tmp_path / "s32" / "fedavg" / "grid_choice.json").write_text(json.dumps({"chosen": "lr0.0003"}))
    rows = {
        "s8": [Row("fedavg", "fedavg", {}, {}, lr_runs={p: {"cs-s8": [path]} for p, path in source.items()})],
        "s32": [Row("fedavg", "fedavg", {}, {"cs-s32": [ran]}, tuned_in={"study": "s8", "data": {"cs-s32": "cs-s8"}})],
    }
    spec = Spec([Table(name, name, "pretrain", [Column(f"cs-{name}", "cs")], rows[name]) for name in ("s8", "s32")], [])
    results = {path: load_run(path) for path in [*source.values(), ran]}
    tables, choices = choose_all(spec, results)
    choice = choices["s32"]["fedavg"]["cs-s32"]
    assert (choice.chosen, choice.study, choice.dev) == ("lr0.001", "s8", {"lr0.0003": 4.0, "lr0.001": 3.0})
    assert "ran at lr0.0003 but studies.s8 now chooses lr0.001" in caplog.text, "a run that chose otherwise is named"
    data = build_table(tables["s32"], results, {}, choices["s32"])
    assert to_json(data)["rows"][0]["lr"]["cs-s32"]["study"] == "s8"
    assert "chosen for it on dev in studies.s8 (lr_from" in notes(data)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["data.dev_examples=-1"], "must be >= 0"),
        (["scenario=finetune", "data.task=rct", "local.objective=classification", "data.dev_examples=8"], "only pre"),
    ],
)
def test_only_pretraining_takes_a_dev_slice_of_zero_or_more_sentences(tiny_config, extra, message):
    assert tiny_config("data.dev_examples=8").data.dev_examples == 8
    with pytest.raises(ConfigError, match=message) as error:
        tiny_config(*extra)
    assert error.value.key == "data.dev_examples"
