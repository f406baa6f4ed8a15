"""Shared fixtures: offline environment, tiny model configs, a run config factory."""

from __future__ import annotations

import os
import shutil
import tempfile

_SCRATCH = tempfile.mkdtemp(prefix="fedbt-tests-")
for _key, _value in {
    "FEDBT_CACHE_DIR": os.path.join(_SCRATCH, "cache"),  # token caches: one per test process, never in results/
    "HF_DATASETS_CACHE": os.path.join(_SCRATCH, "hf-datasets"),
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[_key] = _value

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from fedbt.config import load_config  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)


def tiny_overrides(tmp_path: Path) -> list[str]:
    """Overrides that make any run config tiny and keep its outputs in ``tmp_path``."""
    return [
        "model.source=tiny",
        "model.max_length=32",
        "model.tiny_layers=4",
        "model.tiny_hidden=32",
        "model.tiny_heads=2",
        "model.tiny_ffn=64",
        "data.max_examples=96",
        "data.heldout_examples=16",
        f"data.data_dir={REPO / 'data'}",
        f"data.partition_dir={tmp_path / 'partitions'}",
        "federation.clients=3",
        "federation.rounds=3",
        "local.steps=2",
        "local.batch_size=8",
        "local.lr=0.001",
        "local.flop_count_steps=1",  # count one step per client-round: FlopCounterMode slows a tiny model by ~25 %
        "evaluation.task=null",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "tracking.enabled=false",
        f"out_dir={tmp_path / 'run'}",
    ]


@pytest.fixture
def tiny_config(tmp_path):
    """A factory: the smoke config made tiny, plus extra ``key=value`` overrides."""

    def make(*extra: str):
        return load_config(REPO / "config/runs/smoke.yaml", tiny_overrides(tmp_path) + list(extra))

    return make


@pytest.fixture(scope="session")
def _empty_mlflow_db(tmp_path_factory) -> Path:
    """An MLflow sqlite store with its schema (creating the tables takes seconds; copying the file does not)."""
    from fedbt.tracking import ensure_experiment

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    ensure_experiment(f"sqlite:///{path}", "Default")
    return path


@pytest.fixture
def mlflow_uri(tmp_path, _empty_mlflow_db) -> str:
    """The URI of a fresh MLflow store at ``tmp_path/mlflow.db`` (where ``tiny_config`` tracks to)."""
    shutil.copyfile(_empty_mlflow_db, tmp_path / "mlflow.db")
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def die_after_checkpoint(monkeypatch, round_idx: int, error: BaseException | None = None) -> None:
    """Make every Simulator raise ``error`` (default: KeyboardInterrupt, a killed job) right after it has
    checkpointed round ``round_idx``."""
    from fedbt.federated.simulator import Simulator

    original = Simulator._checkpoint

    def checkpoint_then_die(self, r):
        original(self, r)
        if r == round_idx:
            raise error if error is not None else KeyboardInterrupt(f"killed after round {round_idx}")

    monkeypatch.setattr(Simulator, "_checkpoint", checkpoint_then_die)


def kill_and_resume(tiny_config, out: Path, monkeypatch, extra: list[str], round_idx: int = 1) -> tuple[dict, Path]:
    """Run ``extra`` once whole and once killed after round ``round_idx`` then resumed; assert both give the same
    round records (timings aside) and the same final model. Returns the whole run's metrics and the killed run's
    directory (its checkpoint: the state it resumed from)."""
    from safetensors.torch import load_file

    from fedbt.federated.simulator import Simulator
    from fedbt.run import execute, prepare

    reference = execute(prepare(tiny_config(*extra, f"out_dir={out / 'reference'}")))
    original = Simulator._checkpoint
    die_after_checkpoint(monkeypatch, round_idx)
    with pytest.raises(KeyboardInterrupt):
        execute(prepare(tiny_config(*extra, f"out_dir={out / 'killed'}")))
    monkeypatch.setattr(Simulator, "_checkpoint", original)
    checkpoint = out / "killed" / "checkpoint"
    saved = {path.name: path.read_bytes() for path in checkpoint.iterdir() if path.is_file()}
    resumed = execute(prepare(tiny_config(*extra, f"out_dir={out / 'killed'}")))
    timing = {"round_seconds", "client_seconds", "client_wall_seconds"}
    same = [[{k: v for k, v in r.items() if k not in timing} for r in m["rounds"]] for m in (resumed, reference)]
    assert same[0] == same[1]
    final = load_file(str(out / "killed/model/model.safetensors"))
    expected = load_file(str(out / "reference/model/model.safetensors"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    kept = out / "killed-checkpoint"
    kept.mkdir()
    for name, content in saved.items():
        (kept / name).write_bytes(content)
    return reference, kept
