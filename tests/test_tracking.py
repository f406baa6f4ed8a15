"""Live MLflow runs into a sqlite store: RUNNING while training with each round logged as it ends, FINISHED,
FAILED or KILLED, resumed into the same run; tags, dataset inputs, the model; studies that share runs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from fedbt.data.provenance import files_sha256
from fedbt.federated.simulator import Simulator
from fedbt.run import execute, prepare
from fedbt.tracking import (
    MODEL_DIR_TAG,
    RUN_KEY_TAG,
    STATE_FILE,
    StudyScope,
    artifact_root,
    logged_model_name,
    runs_view,
    study_filter,
    sync_studies,
)

from .conftest import REPO, die_after_checkpoint


@pytest.fixture
def tracked(tiny_config, mlflow_uri):
    """``tiny_config`` with tracking on, into a fresh store."""
    return lambda *extra: tiny_config("tracking.enabled=true", *extra)


def _run(client: MlflowClient, run_dir):
    return client.get_run(json.loads((run_dir / STATE_FILE).read_text())["run_id"])


def _steps(client: MlflowClient, run_id: str, key: str = "train_loss") -> list[int]:
    return sorted(m.step for m in client.get_metric_history(run_id, key))


def test_run_is_running_while_it_trains_and_ends_finished(tracked, tmp_path, monkeypatch):
    config = tracked()
    client = MlflowClient(tracking_uri=config.tracking.uri)
    seen = []
    original = Simulator._run_round

    def watch(self, round_idx):
        run = _run(client, config.resolved_out_dir())
        seen.append((round_idx, run.info.status, _steps(client, run.info.run_id)))
        return original(self, round_idx)

    monkeypatch.setattr(Simulator, "_run_round", watch)
    metrics = execute(prepare(config))
    assert seen == [(0, "RUNNING", []), (1, "RUNNING", [0]), (2, "RUNNING", [0, 1])], "rounds appear as they end"
    run = client.get_run(metrics["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.info.end_time > run.info.start_time
    assert _steps(client, run.info.run_id) == [0, 1, 2]
    assert run.data.params["federation.rounds"] == "3"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"metrics.json", "ledger.csv", "config.yaml"}
    [model] = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and run.outputs.model_outputs[0].model_id == model.model_id
    kept = config.resolved_out_dir() / "model"
    assert model.tags[MODEL_DIR_TAG] == str(kept.resolve()) and (kept / "model.safetensors").is_file()
    assert client.list_logged_model_artifacts(model.model_id) == [], "a kept model is logged by reference, not copied"
    assert (tmp_path / "mlartifacts").is_dir() and artifact_root(config.tracking.uri).endswith("mlartifacts")
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"


def test_tags_and_dataset_inputs(tracked):
    config = tracked("tracking.tags={variant: fedavg-x, data: cs-small}", "seed=3")
    metrics = execute(prepare(config))
    client = MlflowClient(tracking_uri=config.tracking.uri)
    run = client.get_run(metrics["mlflow_run_id"])
    tags = run.data.tags
    expected = {"study": "smoke", "variant": "fedavg-x", "method": "fedavg", "data": "cs-small", "seed": "3"}
    assert {k: tags[k] for k in expected} == expected and tags["scenario"] == "pretrain"
    assert len(tags["mlflow.source.git.commit"]) == 40 and tags["mlflow.user"]
    assert tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["fedbt.device"] == "cpu" and tags[RUN_KEY_TAG] == "smoke/smoke/fedavg/cs/seed3"
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    corpus = inputs["corpus-cs"]
    sha = files_sha256([REPO / "data/corpus_cs/cs_abstracts.txt"])
    assert sha == hashlib.sha256((REPO / "data/corpus_cs/cs_abstracts.txt").read_bytes()).hexdigest()
    assert corpus.dataset.digest == sha[:16] and json.loads(corpus.dataset.profile)["sha256"] == sha
    assert [t.value for t in corpus.tags] == ["training"]
    [partition] = [i for name, i in inputs.items() if name.startswith("partition-")]
    assert json.loads(partition.dataset.profile)["sha256"] == metrics["partition"]["sha256"]
    assert json.loads(partition.dataset.profile)["client_sizes"] == metrics["partition"]["sizes"]


def test_a_model_not_kept_is_logged_once_as_a_copy(tracked):
    config = tracked("keep_model=false")
    metrics = execute(prepare(config))
    assert metrics["model_kept"] is False and not (config.resolved_out_dir() / "model").exists()
    client = MlflowClient(tracking_uri=config.tracking.uri)
    [model] = client.search_logged_models([client.get_run(metrics["mlflow_run_id"]).info.experiment_id])
    assert MODEL_DIR_TAG not in model.tags
    assert "model.safetensors" in {a.path for a in client.list_logged_model_artifacts(model.model_id)}


def test_model_artifact_can_be_switched_off(tracked):
    config = tracked("tracking.log_model=false")
    metrics = execute(prepare(config))
    client = MlflowClient(tracking_uri=config.tracking.uri)
    run = client.get_run(metrics["mlflow_run_id"])
    assert client.search_logged_models([run.info.experiment_id]) == []


@pytest.mark.parametrize(("error", "status"), [(RuntimeError("disk full"), "FAILED"), (KeyboardInterrupt(), "KILLED")])
def test_dead_job_is_marked_then_resumed_into_the_same_run(tracked, monkeypatch, error, status):
    config = tracked()
    client = MlflowClient(tracking_uri=config.tracking.uri)
    die_after_checkpoint(monkeypatch, 1, error)
    with pytest.raises(type(error)):
        execute(prepare(config))
    dead = _run(client, config.resolved_out_dir())
    assert dead.info.status == status and dead.info.end_time is not None
    assert type(error).__name__ in dead.data.tags["fedbt.error"]
    assert _steps(client, dead.info.run_id) == [0], "round 1 was checkpointed but died before it was logged"
    monkeypatch.undo()

    metrics = execute(prepare(config))
    assert metrics["mlflow_run_id"] == dead.info.run_id
    run = client.get_run(dead.info.run_id)
    assert run.info.status == "FINISHED" and run.info.start_time == dead.info.start_time
    assert _steps(client, run.info.run_id) == [0, 1, 2], "each round once: the missing one caught up on resume"
    assert len(client.search_runs([run.info.experiment_id])) == 1


def test_fresh_start_and_a_changed_config_replace_the_earlier_run(tracked, monkeypatch):
    config = tracked()
    client = MlflowClient(tracking_uri=config.tracking.uri)
    first = execute(prepare(config))["mlflow_run_id"]
    second = execute(prepare(config), fresh=True)["mlflow_run_id"]
    die_after_checkpoint(monkeypatch, 0, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        execute(prepare(config), fresh=True)
    monkeypatch.undo()
    changed = tracked("tracking.log_model=false")  # other params, same fingerprint: the checkpoint is kept
    third = execute(prepare(changed))["mlflow_run_id"]
    experiment = client.get_experiment_by_name("smoke")
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [third]
    assert len({first, second, third}) == 3
    assert client.get_run(first).info.lifecycle_stage == "deleted"


def _scopes() -> list[StudyScope]:
    return [
        StudyScope("pretrain", "Table 1", ("cs", "medicine"), ("fedavg", "fedbt", "lora"), (0,)),
        StudyScope("ablation", "Table 4", ("cs",), ("fedavg", "fedbt", "fedbt-all"), (0,)),
    ]


def test_a_run_shared_by_studies_shows_in_each_of_them(tiny_config, tmp_path, mlflow_uri):
    uri = mlflow_uri
    experiment_id = sync_studies(uri, "pretrain", _scopes())
    client = MlflowClient(tracking_uri=uri)
    runs = {}
    for data, variant in [("cs", "fedavg"), ("cs", "fedbt-all"), ("medicine", "lora"), ("cs", "fedbt")]:
        tags = f"tracking.tags={{variant: {variant}, data: {data}}}"
        config = tiny_config(
            "tracking.enabled=true",
            "tracking.experiment=pretrain",
            "tracking.log_model=false",
            f"name={data}-{variant}",
            tags,
            f"out_dir={tmp_path / data / variant}",
            "federation.rounds=1",
        )
        runs[(data, variant)] = execute(prepare(config))["mlflow_run_id"]

    def study(name):
        return {r.info.run_id for r in client.search_runs([experiment_id], filter_string=study_filter(name))}

    assert study("pretrain") == {runs["cs", "fedavg"], runs["medicine", "lora"], runs["cs", "fedbt"]}
    assert study("ablation") == {runs["cs", "fedavg"], runs["cs", "fedbt-all"], runs["cs", "fedbt"]}
    assert client.get_run(runs["cs", "fedavg"]).data.tags["studies"] == "ablation, pretrain"
    note = client.get_experiment(experiment_id).tags["mlflow.note.content"]
    assert study_filter("ablation") in note

    smaller = [_scopes()[0], StudyScope("ablation", "Table 4", ("cs",), ("fedbt-all",), (0,))]
    sync_studies(uri, "pretrain", smaller)  # a changed study config re-tags the runs already in the store
    assert study("ablation") == {runs["cs", "fedbt-all"]}
    assert "study.ablation" not in client.get_run(runs["cs", "fedavg"]).data.tags
    assert runs_view(experiment_id, "ablation").startswith(f"http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?")


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.e2e
def test_sigterm_and_kill_9_then_the_job_resumes_into_the_same_run(tmp_path, mlflow_uri):
    """A real `fedbt run` process: SIGTERM ends its run KILLED; a kill -9 leaves it RUNNING; both resume it."""
    uri = mlflow_uri
    out = tmp_path / "run"
    rounds = 16
    command = [sys.executable, "-m", "fedbt.cli", "run", str(REPO / "config/runs/smoke.yaml"), "--out", str(out)]
    for item in (
        f"tracking.uri={uri}",
        "tracking.log_model=false",
        f"data.partition_dir={tmp_path / 'partitions'}",
        f"data.data_dir={REPO / 'data'}",
        "model.tiny_layers=2",
        "model.tiny_hidden=32",
        "model.max_length=32",
        f"federation.rounds={rounds}",
        "local.steps=2",
        "data.max_examples=96",
        "data.heldout_examples=16",
        "local.flop_count_steps=0",
        "evaluation.task=null",
    ):
        command += ["--set", item]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    client = MlflowClient(tracking_uri=uri)

    def logged() -> int:
        if not (out / STATE_FILE).is_file():
            return 0
        return int(_run(client, out).data.tags.get("fedbt.rounds_logged", 0))

    statuses, run_ids = [], []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        start = logged()
        job = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        _wait_for(lambda start=start, job=job: logged() >= start + 2 or job.poll() is not None)
        job.send_signal(sig)
        stderr = job.communicate(timeout=60)[1]
        assert job.returncode == (-sig if sig == signal.SIGKILL else 128 + sig), stderr[-2000:]
        run = _run(client, out)
        statuses.append(run.info.status)
        run_ids.append(run.info.run_id)
        assert logged() < rounds, "the job was killed before its last round"
    assert statuses == ["KILLED", "RUNNING"], "kill -9 cannot be caught: the run stays RUNNING until resumed"

    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    run = _run(client, out)
    assert {run.info.run_id} == set(run_ids) and run.info.status == "FINISHED"
    assert _steps(client, run.info.run_id) == list(range(rounds))


def test_a_grid_run_name_is_a_valid_logged_model_name():
    from mlflow.utils.validation import _validate_logged_model_name

    name = logged_model_name("ag_news-fedavg-lr0.0003-seed1")
    _validate_logged_model_name(name)  # MLflow's own check: no / : . % " '
    assert name == "ag_news-fedavg-lr0_0003-seed1"
