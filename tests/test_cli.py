"""The command line: help is fast, methods are listed, bad input exits 2 with a one-line message,
and the smoke config runs end to end into MLflow."""

import json
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from fedbt.cli import main

from .conftest import REPO


def test_help_is_fast_and_lists_commands():
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "fedbt.cli", "--help"], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0
    assert time.perf_counter() - started < 5.0
    for command in ("run", "costs", "methods"):
        assert command in result.stdout


def test_methods_lists_fedavg(capsys):
    assert main(["methods", "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["fedavg"]["scenarios"] == ["pretrain", "finetune"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "federation.clientz=3"], "config key 'federation.clientz': unknown key"),
        (["--set", "method.name=fedsgd"], "unknown method 'fedsgd'; known methods: centralized"),
        (["--set", "evaluation.task=imdb"], "unknown task 'imdb'"),
        (["--set", "data.corpus=physics"], "unknown corpus 'physics'"),
        (["--set", "method.options={lr_scale: 2}"], "config key 'method.options.lr_scale': unknown key"),
    ],
)
def test_bad_input_fails_before_training(tmp_path, capsys, extra, message):
    code = main(["run", str(REPO / "config/runs/smoke.yaml"), "--out", str(tmp_path / "run"), *extra])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists(), "nothing is written before validation passes"


@pytest.mark.e2e
def test_smoke_config_runs_into_mlflow(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out = tmp_path / "smoke"
    code = main(
        [
            "run",
            str(REPO / "config/runs/smoke.yaml"),
            "--out",
            str(out),
            "--set",
            f"tracking.uri={uri}",
            "--set",
            f"data.partition_dir={tmp_path / 'partitions'}",
            "--set",
            f"data.data_dir={REPO / 'data'}",
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["run_dir"] == str(out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rounds"]) == 2
    assert metrics["evaluation"]["task"] == "rct"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.data.params["method.name"] == "fedavg"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "heldout_mlm_loss")] == [0, 1]
    assert "downstream.accuracy_mean" in run.data.metrics
