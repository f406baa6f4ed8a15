"""MLflow tracking: the only module that imports mlflow.

Runs are live. :class:`RunTracker` creates a job's run (status RUNNING) when the job starts, logs each round's
record as the round ends (one batched call, ``step = round``) and ends the run FINISHED with the final
metrics, the run directory's files and the model; an exception ends it FAILED, SIGTERM or SIGINT KILLED. The
run id is kept in the run directory (``tracking.json``), so a job that resumes after a kill (``kill -9``
included, which leaves the run RUNNING) continues the same MLflow run. A fresh start of a run key replaces
the earlier run of that key, so the store never holds stale duplicates.

Experiments hold one scenario of a study config each (the pipeline names them); a study is a tag filter.
:func:`sync_studies` writes each study's scope (data sets, variants, seeds) as experiment tags and tags every
run with the studies whose tables read it (``study.<name> = yes`` and ``studies``), so a run shared by several
studies shows in each study's view. Parallel jobs writing one sqlite store retry on its lock. Telemetry is
off.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import logging
import os
import platform
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from fedbt.config import RunConfig

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")

log = logging.getLogger(__name__)
T = TypeVar("T")

RUN_KEY_TAG = "fedbt.run_key"
CONFIG_TAG = "fedbt.config_sha256"
ROUNDS_TAG = "fedbt.rounds_logged"
MODEL_DIR_TAG = "fedbt.model_dir"  # logged-model tag: the run directory's model/ it stands for (not copied)
STUDY_SCOPE_TAG = "fedbt.study."  # experiment tag prefix: one JSON scope per study
STUDIES_TAG = "studies"  # run tag: the studies that read the run, comma-separated
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # MLflow 3's UI opens on the runs list
STATE_FILE = "tracking.json"  # in the run directory: where the job's MLflow run lives
BATCH_LIMIT = 900  # MLflow accepts at most 1000 metrics and 100 params per log_batch call
PARAM_BATCH_LIMIT = 90
ARTIFACTS = ("metrics.json", "ledger.csv", "config.yaml")
UI = "http://127.0.0.1:5000"


def membership_tag(study: str) -> str:
    """The run tag that puts a run into ``study``'s view (value ``yes``)."""
    return f"study.{study}"


def study_filter(study: str) -> str:
    """The MLflow search filter (UI search box, ``search_runs``) of ``study``'s runs."""
    return f"tags.`{membership_tag(study)}` = 'yes'"


def runs_view(experiment_id: str, study: str | None = None, base: str = UI) -> str:
    """The MLflow UI's runs list of an experiment, filtered to one study's runs if given."""
    from urllib.parse import quote

    url = f"{base}/#/experiments/{experiment_id}/runs"
    return f"{url}?searchFilter={quote(study_filter(study))}" if study else url


def artifact_root(uri: str) -> str | None:
    """For a ``sqlite:///dir/mlflow.db`` store: ``dir/mlartifacts`` (artifacts live beside the DB)."""
    if not uri.startswith("sqlite:///"):
        return None
    db_path = Path(uri.removeprefix("sqlite:///")).resolve()
    return (db_path.parent / "mlartifacts").as_uri()


def _retry(action: Callable[[], T], attempts: int = 8) -> T:
    """Retry when parallel jobs write the same store: sqlite's 'database is locked', and a row another job inserted
    first ('UNIQUE constraint failed', e.g. two runs logging the same dataset: the retry finds and reuses it)."""
    for attempt in range(attempts):
        try:
            return action()
        except Exception as error:  # mlflow wraps sqlalchemy's errors in its own exceptions
            transient = any(text in str(error).lower() for text in ("locked", "unique constraint failed"))
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.2 * 2**attempt)
    raise AssertionError("unreachable")


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def ensure_experiment(uri: str, name: str) -> str:
    """The id of experiment ``name``, created (artifacts beside the DB) if missing, tagged as model training."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    existing = _retry(lambda: client.get_experiment_by_name(name))
    if existing is None:
        try:
            experiment_id = _retry(
                lambda: client.create_experiment(name, artifact_location=artifact_root(uri), tags=EXPERIMENT_KIND)
            )
        except MlflowException:  # created concurrently by another job
            existing = client.get_experiment_by_name(name)
        else:
            return experiment_id
    for key, value in EXPERIMENT_KIND.items():
        if existing.tags.get(key) != value:
            _retry(lambda key=key, value=value: client.set_experiment_tag(existing.experiment_id, key, value))
    return existing.experiment_id


# ------------------------------------------------------------------------------------------ studies


def logged_model_name(run_name: str) -> str:
    """A run name as an MLflow logged-model name, which may not hold ``/ : . % " '`` (``cs-fedavg-lr0.0003-seed0``
    becomes ``cs-fedavg-lr0_0003-seed0``)."""
    return re.sub(r"[/:.%\"']", "_", run_name)


@dataclass(frozen=True)
class StudyScope:
    """The runs one study's table reads: every (data set, variant, seed) combination of its lists, at each grid
    point of a variant with one."""

    name: str
    title: str
    data: tuple[str, ...]
    variants: tuple[str, ...]
    seeds: tuple[int, ...]
    grid: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Per variant with a grid, the ``grid`` tags of its points (``lr0.0003``, ``lr0.0003-mu0.01``); the runs of
    the other variants carry no ``grid`` tag."""

    def includes(self, tags: Mapping[str, str]) -> bool:
        """Whether a run with these tags (``data``, ``variant``, ``seed``, ``grid``) is one of the study's."""
        return (
            tags.get("data") in self.data
            and tags.get("variant") in self.variants
            and tags.get("seed") in {str(s) for s in self.seeds}
            and tags.get("grid") in self.grid.get(tags.get("variant"), (None,))
        )

    def to_json(self) -> str:
        scope = {"title": self.title, "data": self.data, "variants": self.variants, "seeds": self.seeds}
        return json.dumps(scope | ({"grid": self.grid} if self.grid else {}))

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> StudyScope:
        """From ``{"name", "title", "data", "variants", "seeds"[, "grid"]}`` as ``Plan.study_scopes`` gives it."""
        fields = ("data", "variants", "seeds")
        grid = {variant: tuple(labels) for variant, labels in (spec.get("grid") or {}).items()}
        return cls(spec["name"], spec["title"], *(tuple(spec.get(field, ())) for field in fields), grid)


def study_scopes(experiment_tags: Mapping[str, str]) -> list[StudyScope]:
    """The studies recorded on an experiment (by :func:`sync_studies`)."""
    return [
        StudyScope.from_dict({"name": key.removeprefix(STUDY_SCOPE_TAG), **json.loads(value)})
        for key, value in sorted(experiment_tags.items())
        if key.startswith(STUDY_SCOPE_TAG)
    ]


def membership_tags(scopes: Iterable[StudyScope], run_tags: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """(tags to set, tag keys to delete) that make a run's study tags match ``scopes``."""
    members = sorted(s.name for s in scopes if s.includes(run_tags))
    wanted = {membership_tag(s): "yes" for s in members} | ({STUDIES_TAG: ", ".join(members)} if members else {})
    stale = [k for k in run_tags if (k.startswith("study.") or k == STUDIES_TAG) and k not in wanted]
    return {k: v for k, v in wanted.items() if run_tags.get(k) != v}, stale


def sync_studies(uri: str, experiment: str, scopes: list[StudyScope]) -> str:
    """Record ``scopes`` as the studies of ``experiment`` (replacing earlier ones), re-tag its runs to match and
    describe the study filters in the experiment's note. Returns the experiment id."""
    experiment_id = ensure_experiment(uri, experiment)
    client = _client(uri)
    current = _retry(lambda: client.get_experiment(experiment_id)).tags
    wanted = {STUDY_SCOPE_TAG + s.name: s.to_json() for s in scopes}
    note = "\n".join(
        [f"Runs of {experiment!r}. Each study (one table) is a filter of this list:", ""]
        + [f"* **{s.name}** ({s.title}): `{study_filter(s.name)}`" for s in scopes]
    )
    wanted["mlflow.note.content"] = note
    for key, value in wanted.items():
        if current.get(key) != value:
            _retry(lambda key=key, value=value: client.set_experiment_tag(experiment_id, key, value))
    for key in current:
        if key.startswith(STUDY_SCOPE_TAG) and key not in wanted:
            _retry(lambda key=key: client.delete_experiment_tag(experiment_id, key))
    for run in _retry(lambda: client.search_runs([experiment_id], max_results=50000)):
        to_set, to_delete = membership_tags(scopes, run.data.tags)
        for key, value in to_set.items():
            _retry(lambda key=key, value=value, run=run: client.set_tag(run.info.run_id, key, value))
        for key in to_delete:
            _retry(lambda key=key, run=run: client.delete_tag(run.info.run_id, key))
    return experiment_id


# ------------------------------------------------------------------------------------------ tags


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=5, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip()


def provenance_tags() -> dict[str, str]:
    """MLflow's standard tags (``mlflow.user``, ``mlflow.source.*`` with the git commit, branch and remote of the
    fedbt source tree) and ours: package versions, Python, host, Slurm job and visible GPUs where set."""
    from mlflow.tracking.context.registry import resolve_tags
    from mlflow.utils import git_utils

    tags = {k: v for k, v in resolve_tags().items() if not k.startswith("mlflow.source.git")}
    tags.setdefault("mlflow.user", getpass.getuser())
    source = str(Path(__file__).resolve().parent)
    git = {
        "mlflow.source.git.commit": git_utils.get_git_commit(source),
        "mlflow.source.git.branch": git_utils.get_git_branch(source),
        "mlflow.source.git.repoURL": git_utils.get_git_repo_url(source),
    }
    tags.update({k: v for k, v in git.items() if v})
    tags.setdefault("mlflow.source.git.commit", "unknown")
    dirty = _git(["status", "--porcelain", "--untracked-files=no"], Path(source))
    if dirty is not None:
        tags["fedbt.git_dirty"] = str(bool(dirty))
    tags.update({"fedbt.python": platform.python_version(), "fedbt.host": platform.node()})
    for package in ("fedbt-bench", "torch", "transformers", "datasets", "mlflow"):
        try:
            tags[f"fedbt.version.{package}"] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    for variable in ("SLURM_JOB_ID", "CUDA_VISIBLE_DEVICES"):
        if os.environ.get(variable) is not None:
            tags[f"fedbt.env.{variable}"] = os.environ[variable]
    return tags


def identity_tags(config: RunConfig) -> dict[str, str]:
    """What a run is: study, variant, method, data, seed, scenario (the pipeline sets variant and data labels
    through ``tracking.tags``; a standalone run uses the method and corpus/task names)."""
    data = config.data.corpus if config.scenario == "pretrain" else config.data.task
    tags = {
        "study": config.study,
        "variant": config.method.name,
        "method": config.method.name,
        "data": str(data),
        "seed": str(config.seed),
        "scenario": config.scenario,
    }
    return tags | {str(k): str(v) for k, v in config.tracking.tags.items()}


# ------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class DatasetRecord:
    """A data set a run used, logged as an MLflow dataset input (``digest``: a sha256 of its content)."""

    name: str
    digest: str
    source: str
    context: str
    profile: dict[str, Any] = field(default_factory=dict)


class RunKilled(SystemExit):
    """Raised in the main thread on SIGTERM so the run can be marked KILLED before the process exits."""


def _raise_killed(signum: int, frame) -> None:
    raise RunKilled(128 + signum)


class RunTracker:
    """One job's live MLflow run: ``with RunTracker(...) as tracker``: start, ``log_round`` per round,
    ``log_inputs``, ``finish``; leaving the block by an exception ends the run FAILED or KILLED."""

    def __init__(self, config: RunConfig, run_dir: Path, run_key: str):
        from fedbt.config import to_flat_dict

        self.uri = config.tracking.uri
        self.experiment = config.tracking.experiment or config.study
        self.run_key = run_key
        self.run_name = config.name
        self.params = {k: str(v)[:6000] for k, v in to_flat_dict(config).items()}
        self.config_sha = hashlib.sha256(json.dumps(self.params, sort_keys=True).encode()).hexdigest()
        self.tags = identity_tags(config)
        self.run_dir = Path(run_dir)
        self.log_model = config.tracking.log_model
        self.keep_model = config.keep_model
        self.system_metrics = config.tracking.system_metrics
        self.run_id: str | None = None
        self.experiment_id: str | None = None
        self.resumed = False
        self.rounds_logged = 0
        self._finished = False
        self._monitor = None
        self._previous_sigterm = None

    # ------------------------------------------------------------------------------ lifecycle

    def __enter__(self) -> RunTracker:
        self.start()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        self._restore_sigterm()
        try:
            if not self._finished and self.run_id is not None:
                killed = exc_type is not None and not issubclass(exc_type, Exception)
                status = "KILLED" if killed else "FAILED"
                reason = f"{exc_type.__name__}: {exc}" if exc_type else "the job ended before the run finished"
                self._end(status, {"fedbt.error": reason[:1000]})
        finally:
            self._stop_monitor()

    def start(self) -> str:
        """Continue the run stored in the run directory if it is this job's unfinished run, else create it
        (replacing earlier runs of the same key). Returns the run id."""
        client = _client(self.uri)
        self.experiment_id = ensure_experiment(self.uri, self.experiment)
        stored = self._stored_run(client)
        if stored is not None and self._continues(stored):
            self.run_id, self.resumed = stored.info.run_id, True
            self.rounds_logged = int(stored.data.tags.get(ROUNDS_TAG, 0))
            _retry(lambda: client.update_run(self.run_id, status="RUNNING"))
            log.info("MLflow: continuing run %s after round %d", self.run_id, self.rounds_logged - 1)
        else:
            self._replace_earlier(client, stored)
            tags = {
                **provenance_tags(),
                **self.tags,
                RUN_KEY_TAG: self.run_key,
                CONFIG_TAG: self.config_sha,
                "fedbt.run_dir": str(self.run_dir),
            }
            run = _retry(lambda: client.create_run(self.experiment_id, run_name=self.run_name, tags=tags))
            self.run_id = run.info.run_id
            self._store_state()
        self._log_params(client)
        self._tag_studies(client)
        self._watch_sigterm()
        self._start_monitor()
        log.info("MLflow run %s: %s", self.run_id, self.view())
        return self.run_id

    def view(self) -> str:
        """The run's page in the MLflow UI (``mlflow ui`` on its default address)."""
        return f"{UI}/#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def _stored_run(self, client):
        path = self.run_dir / STATE_FILE
        if not path.is_file():
            return None
        state = json.loads(path.read_text())
        if state.get("uri") != self.uri:
            return None
        from mlflow.exceptions import MlflowException

        try:
            return _retry(lambda: client.get_run(state["run_id"]))
        except MlflowException:  # deleted from the store or never committed
            return None

    def _continues(self, run) -> bool:
        """A stored run is continued if it is this config's unfinished run in this experiment."""
        return (
            run.info.lifecycle_stage == "active"
            and run.info.experiment_id == self.experiment_id
            and run.info.status != "FINISHED"
            and run.data.tags.get(CONFIG_TAG) == self.config_sha
        )

    def _replace_earlier(self, client, stored) -> None:
        earlier = _retry(
            lambda: client.search_runs([self.experiment_id], filter_string=f"tags.`{RUN_KEY_TAG}` = '{self.run_key}'")
        )
        ids = {run.info.run_id for run in earlier}
        if stored is not None and stored.info.lifecycle_stage == "active":
            ids.add(stored.info.run_id)
        for run_id in sorted(ids):
            _retry(lambda run_id=run_id: client.delete_run(run_id))

    def _store_state(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        state = {"uri": self.uri, "experiment_id": self.experiment_id, "run_id": self.run_id}
        tmp = self.run_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, self.run_dir / STATE_FILE)

    def _log_params(self, client) -> None:
        from mlflow.entities import Param

        params = [Param(k, v) for k, v in self.params.items()]
        for start in range(0, len(params), PARAM_BATCH_LIMIT):
            chunk = params[start : start + PARAM_BATCH_LIMIT]
            _retry(lambda chunk=chunk: client.log_batch(self.run_id, params=chunk))

    def _tag_studies(self, client) -> None:
        scopes = study_scopes(_retry(lambda: client.get_experiment(self.experiment_id)).tags)
        run_tags = _retry(lambda: client.get_run(self.run_id)).data.tags
        to_set, to_delete = membership_tags(scopes, run_tags)
        self._log(client, tags=to_set)
        for key in to_delete:
            _retry(lambda key=key: client.delete_tag(self.run_id, key))

    def _end(self, status: str, tags: Mapping[str, str] | None = None) -> None:
        client = _client(self.uri)
        if tags:
            self._log(client, tags=tags)
        _retry(lambda: client.set_terminated(self.run_id, status))
        log.info("MLflow run %s: %s", self.run_id, status)

    # ------------------------------------------------------------------------------ logging

    def _log(self, client, metrics: list | None = None, tags: Mapping[str, str] | None = None) -> None:
        """Metrics in batched calls, the tags with the last batch (so they mark what was written)."""
        from mlflow.entities import RunTag

        metrics = metrics or []
        chunks = [metrics[i : i + BATCH_LIMIT] for i in range(0, len(metrics), BATCH_LIMIT)] or [[]]
        tag_list = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        for i, chunk in enumerate(chunks):
            batch_tags = tag_list if i == len(chunks) - 1 else []
            if chunk or batch_tags:
                _retry(lambda chunk=chunk, batch_tags=batch_tags: client.log_batch(self.run_id, chunk, tags=batch_tags))

    def log_round(self, record: Mapping[str, Any]) -> None:
        """Log one round's numeric record at ``step = round``; rounds the run already has are skipped (a resumed job
        replays the rounds of its checkpoint, logging those a kill cut off between checkpoint and log)."""
        from mlflow.entities import Metric

        step = int(record["round"])
        if step < self.rounds_logged:
            return
        now = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now, step)
            for key, value in record.items()
            if key != "round" and isinstance(value, int | float) and not isinstance(value, bool)
        ]
        self._log(_client(self.uri), metrics, tags={ROUNDS_TAG: str(step + 1)})
        self.rounds_logged = step + 1

    def log_inputs(self, datasets: Iterable[DatasetRecord]) -> None:
        """Log the run's data sets (MLflow dataset inputs, digest = the content hash's first 16 hex digits)."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        inputs = [
            DatasetInput(
                Dataset(
                    name=record.name,
                    digest=record.digest[:16],
                    source_type="local",
                    source=json.dumps({"uri": record.source}),
                    profile=json.dumps({"sha256": record.digest, **record.profile}),
                ),
                tags=[InputTag("mlflow.data.context", record.context)],
            )
            for record in datasets
        ]
        client = _client(self.uri)
        _retry(lambda: client.log_inputs(self.run_id, datasets=inputs))

    def finish(self, final_metrics: Mapping[str, float], tags: Mapping[str, str], model_dir: Path | None) -> str:
        """Log the final metrics, tags, the run directory's files and the model (unless ``tracking.log_model``
        is off: by reference while the run directory keeps it, else a copy); end the run FINISHED. Returns the run
        id."""
        from mlflow.entities import Metric

        client = _client(self.uri)
        now = int(time.time() * 1000)
        self._log(client, [Metric(k, float(v), now, 0) for k, v in final_metrics.items()], tags=tags)
        for name in ARTIFACTS:
            if (self.run_dir / name).is_file():
                _retry(lambda name=name: client.log_artifact(self.run_id, str(self.run_dir / name)))
        if self.log_model and model_dir is not None and model_dir.is_dir():
            self._log_model(client, model_dir, step=max(self.rounds_logged - 1, 0), copy=not self.keep_model)
        self._stop_monitor()
        self._end("FINISHED")
        self._finished = True
        return self.run_id

    def _log_model(self, client, model_dir: Path, step: int, copy: bool) -> None:
        """The run directory's ``model/`` (a transformers checkpoint) as an MLflow logged model of the run: its files
        copied into the artifact store (``copy``), or by reference, the tag ``fedbt.model_dir`` naming the kept
        directory (no second copy on disk)."""
        from mlflow.entities import LoggedModelOutput

        tags = {"fedbt.format": "transformers save_pretrained", "method": self.tags["method"]}
        if not copy:
            tags[MODEL_DIR_TAG] = str(model_dir.resolve())
        model = _retry(
            lambda: client.create_logged_model(
                self.experiment_id,
                name=logged_model_name(self.run_name),
                source_run_id=self.run_id,
                tags=tags,
                model_type="transformers",
            )
        )
        if copy:
            client.log_model_artifacts(model.model_id, str(model_dir))
        _retry(lambda: client.finalize_logged_model(model.model_id, "READY"))
        _retry(lambda: client.log_outputs(self.run_id, [LoggedModelOutput(model.model_id, step)]))

    # ------------------------------------------------------------------------------ signals, system metrics

    def _watch_sigterm(self) -> None:
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm = signal.signal(signal.SIGTERM, _raise_killed)

    def _restore_sigterm(self) -> None:
        if self._previous_sigterm is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm)
            self._previous_sigterm = None

    def _start_monitor(self) -> None:
        if not self.system_metrics:
            return
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        self._monitor = SystemMetricsMonitor(self.run_id, resume_logging=self.resumed, tracking_uri=self.uri)
        self._monitor.start()

    def _stop_monitor(self) -> None:
        if self._monitor is not None:
            self._monitor.finish()
            self._monitor = None


class NoTracking:
    """The tracker of a run with ``tracking.enabled: false``: every call does nothing."""

    run_id = None

    def __enter__(self) -> NoTracking:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def log_round(self, record: Mapping[str, Any]) -> None:
        return None

    def log_inputs(self, datasets: Iterable[DatasetRecord]) -> None:
        return None

    def finish(self, final_metrics, tags, model_dir) -> None:
        return None


def open_run(config: RunConfig, run_dir: Path, run_key: str) -> RunTracker | NoTracking:
    """The live MLflow run of a job (use as a context manager), or a no-op tracker when tracking is off."""
    return RunTracker(config, run_dir, run_key) if config.tracking.enabled else NoTracking()
