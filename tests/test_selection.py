"""Choosing a learning rate per method on dev (studies with an lr_grid): dev decides, test never does."""

from __future__ import annotations

from fedbt.report.runs import RunCosts, RunResult
from fedbt.report.selection import choose
from fedbt.report.spec import Row


def run(path: str, seed: int, dev: float, test: float) -> RunResult:
    return RunResult(
        path=path,
        scenario="finetune",
        method="fedavg",
        data="ag_news",
        seed=seed,
        device="cpu",
        metric="accuracy",
        scores={"accuracy": {str(seed): test}},
        majority={},
        dev={"accuracy": dev},
        curve_name="dev_accuracy",
        curve={0: dev},
        spent={0: (1.0, 1.0)},
        costs=RunCosts(1.0, 1.0, 1.0, 1.0, 1.0),
        upload_bytes_total=1.0,
        plan_sha256=None,
    )


def grid_row(results: dict[str, RunResult]) -> Row:
    lr_runs = {}
    for path in results:
        lr = path.split("/")[0]
        lr_runs.setdefault(lr, {"ag_news": []})["ag_news"].append(path)
    return Row(variant="fedavg", method="fedavg", options={}, runs={}, lr_runs=lr_runs)


def test_the_learning_rate_with_the_best_mean_dev_score_wins_whatever_test_says():
    results = {
        "lr0.0001/s0": run("lr0.0001/s0", 0, dev=0.70, test=0.95),
        "lr0.0001/s1": run("lr0.0001/s1", 1, dev=0.72, test=0.96),
        "lr0.0003/s0": run("lr0.0003/s0", 0, dev=0.80, test=0.50),
        "lr0.0003/s1": run("lr0.0003/s1", 1, dev=0.78, test=0.52),
    }
    row, choices = choose(grid_row(results), results)
    assert choices["ag_news"].chosen == "lr0.0003", "dev decides even though test is better at lr0.0001"
    assert choices["ag_news"].dev == {"lr0.0001": 0.71, "lr0.0003": 0.79}
    assert row.runs == {"ag_news": ["lr0.0003/s0", "lr0.0003/s1"]}


def test_ties_go_to_the_first_rate_and_unfinished_rates_are_not_candidates():
    results = {
        "lr0.0001/s0": run("lr0.0001/s0", 0, dev=0.5, test=0.1),
        "lr0.0003/s0": run("lr0.0003/s0", 0, dev=0.5, test=0.9),
    }
    row = grid_row(results)
    assert choose(row, results)[1]["ag_news"].chosen == "lr0.0001"
    row.lr_runs["lr0.001"] = {"ag_news": ["lr0.001/s0"]}  # not finished: no result
    assert choose(row, results)[1]["ag_news"].dev["lr0.001"] is None


def test_a_row_without_a_grid_is_left_as_it_is():
    row = Row(variant="fedavg", method="fedavg", options={}, runs={"ag_news": ["a"]})
    assert choose(row, {}) == (row, {})
