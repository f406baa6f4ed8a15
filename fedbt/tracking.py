"""MLflow tracking: the only module that imports mlflow.

One MLflow run per (study, method, data, seed), identified by the tag ``fedbt.run_key``; re-running the
same key replaces the earlier run so the store never holds stale duplicates. Params are the flattened
resolved config, metrics are logged per round (``step = round``) in batched calls, and the run
directory's small files are attached as artifacts. Telemetry is off.
"""

from __future__ import annotations

import os
import platform
import subprocess
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

T = TypeVar("T")
RUN_KEY_TAG = "fedbt.run_key"
BATCH_LIMIT = 900  # MLflow accepts at most 1000 metrics and 100 params per log_batch call
PARAM_BATCH_LIMIT = 90
ARTIFACTS = ("metrics.json", "ledger.csv", "config.yaml")


def artifact_root(uri: str) -> str | None:
    """For a ``sqlite:///dir/mlflow.db`` store: ``dir/mlartifacts`` (artifacts live beside the DB)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db_path.parent / "mlartifacts").as_uri()


def _retry(action: Callable[[], T], attempts: int = 8) -> T:
    """Retry on sqlite's 'database is locked' when parallel jobs write the same store."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # mlflow wraps sqlalchemy's OperationalError in its own exceptions
            if "locked" not in str(error).lower() or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (with artifacts beside the DB) if missing."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    existing = _retry(lambda: client.get_experiment_by_name(name))
    if existing is not None:
        return existing.experiment_id
    try:
        return _retry(lambda: client.create_experiment(name, artifact_location=artifact_root(uri)))
    except MlflowException:  # created concurrently by another job
        return client.get_experiment_by_name(name).experiment_id


def run_tags(device: str, runtime: str = "in-process") -> dict[str, str]:
    """Provenance tags: git commit, package versions, device, host, and the runtime clients trained in."""
    tags = {
        "fedbt.device": device,
        "fedbt.runtime": runtime,
        "fedbt.python": platform.python_version(),
        "fedbt.host": platform.node(),
    }
    for package in ("fedbt-bench", "torch", "transformers", "datasets", "mlflow"):
        try:
            tags[f"fedbt.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=5).stdout
        tags["mlflow.source.git.commit"] = commit
        tags["fedbt.git_dirty"] = str(bool(dirty.strip()))
    except (OSError, subprocess.SubprocessError):
        tags["mlflow.source.git.commit"] = "unknown"
    return tags


def log_run(
    uri: str,
    experiment: str,
    run_key: str,
    run_name: str,
    params: Mapping[str, Any],
    round_metrics: list[Mapping[str, float]],
    final_metrics: Mapping[str, float],
    tags: Mapping[str, str],
    run_dir: Path,
) -> str:
    """Create the MLflow run of ``run_key`` (replacing an earlier one) and log everything; returns its id."""
    from mlflow.entities import Metric, Param, RunTag

    client = _client(uri)
    experiment_id = ensure_experiment(uri, experiment)
    for old in _retry(lambda: client.search_runs([experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'")):
        _retry(lambda old=old: client.delete_run(old.info.run_id))
    all_tags = {**tags, RUN_KEY_TAG: run_key}
    run = _retry(lambda: client.create_run(experiment_id, run_name=run_name, tags=all_tags))
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    param_list = [Param(k, str(v)[:6000]) for k, v in params.items()]
    metrics = [
        Metric(key, float(value), now, int(record["round"]))
        for record in round_metrics
        for key, value in record.items()
        if key != "round" and isinstance(value, int | float)
    ]
    metrics += [Metric(key, float(value), now, 0) for key, value in final_metrics.items()]
    for start in range(0, len(param_list), PARAM_BATCH_LIMIT):
        chunk = param_list[start : start + PARAM_BATCH_LIMIT]
        _retry(lambda chunk=chunk: client.log_batch(run_id, params=chunk))
    for start in range(0, len(metrics), BATCH_LIMIT):
        chunk = metrics[start : start + BATCH_LIMIT]
        _retry(
            lambda chunk=chunk: client.log_batch(run_id, metrics=chunk, tags=[RunTag("fedbt.run_dir", str(run_dir))])
        )
    for name in ARTIFACTS:
        if (run_dir / name).is_file():
            client.log_artifact(run_id, str(run_dir / name))
    _retry(lambda: client.set_terminated(run_id, "FINISHED"))
    return run_id
