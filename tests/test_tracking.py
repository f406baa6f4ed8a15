"""MLflow tracking into a sqlite store: params, per-round metrics (step = round), tags, artifacts."""

import json

from mlflow.tracking import MlflowClient

from fedbt.tracking import RUN_KEY_TAG, artifact_root, log_run, run_tags


def _log(tmp_path, uri, value):
    run_dir = tmp_path / "run"
    run_dir.mkdir(exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps({"ok": True}))
    (run_dir / "ledger.csv").write_text("round,client\n0,0\n")
    return log_run(
        uri,
        "study-x",
        "study-x/run/fedavg/cs/seed0",
        "run",
        {"federation.rounds": 2, "method.name": "fedavg"},
        [{"round": 0, "train_loss": value, "upload_bytes": 10}, {"round": 1, "train_loss": value / 2}],
        {"downstream.accuracy_mean": 0.5},
        run_tags("cpu"),
        run_dir,
    )


def test_run_lands_in_sqlite_with_everything(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run_id = _log(tmp_path, uri, 4.0)
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.data.params["federation.rounds"] == "2"
    assert run.data.tags[RUN_KEY_TAG] == "study-x/run/fedavg/cs/seed0"
    assert "mlflow.source.git.commit" in run.data.tags
    assert run.data.tags["fedbt.version.torch"].startswith("2.13.0")
    history = client.get_metric_history(run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(0, 4.0), (1, 2.0)]
    assert run.data.metrics["downstream.accuracy_mean"] == 0.5
    assert {a.path for a in client.list_artifacts(run_id)} == {"metrics.json", "ledger.csv"}
    assert artifact_root(uri).endswith("mlartifacts")
    assert (tmp_path / "mlartifacts").is_dir()


def test_same_run_key_replaces_the_earlier_run(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _log(tmp_path, uri, 4.0)
    second = _log(tmp_path, uri, 6.0)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("study-x")
    active = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in active] == [second]
    assert client.get_run(first).info.lifecycle_stage == "deleted"
