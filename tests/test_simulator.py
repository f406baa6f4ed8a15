"""The simulator end to end on a tiny model and real shipped text: run directory, ledger, determinism,
resume after a kill, client selection, one reused local model."""

import json

import pytest
import torch
from safetensors.torch import load_file

from fedbt.federated.simulator import Simulator
from fedbt.run import execute, prepare
from tests.conftest import die_after_checkpoint


def _comparable(metrics):
    drop = {"round_seconds", "client_seconds", "client_wall_seconds"}
    return [{k: v for k, v in r.items() if k not in drop} for r in metrics["rounds"]]


def test_run_directory_and_ledger(tiny_config):
    config = tiny_config()
    prepared = prepare(config)
    metrics = execute(prepared)
    out = prepared.out_dir
    assert {"metrics.json", "ledger.csv", "config.yaml", "model"} <= {p.name for p in out.iterdir()}
    assert not (out / "checkpoint").exists(), "a finished run keeps its state in model/"
    weights = load_file(str(out / "model/model.safetensors"))
    assert any(k.startswith("bert.encoder.layer.3.") for k in weights)
    rows = (out / "ledger.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 3 * 3  # header + rounds x clients
    total_params = sum(prepared.method.arch.param_numel.values())
    for record in metrics["rounds"]:
        assert record["upload_bytes"] == 3 * 4 * total_params  # 3 clients, fp32, tied weights once
        assert record["download_bytes"] == 3 * 4 * total_params
        assert record["measured_flops"] > 0 and record["analytic_flops"] > 0
        assert "heldout_mlm_loss" in record
    assert json.loads((out / "metrics.json").read_text())["costs"]["total_upload_bytes"] == 9 * 4 * total_params
    assert metrics["partition"]["sizes"] == [32, 32, 32]


def test_same_seed_same_metrics(tiny_config, tmp_path):
    first = execute(prepare(tiny_config()))
    second = execute(prepare(tiny_config(f"out_dir={tmp_path / 'again'}")))
    assert _comparable(first) == _comparable(second)
    other = execute(prepare(tiny_config(f"out_dir={tmp_path / 'other'}", "seed=1")))
    assert _comparable(other) != _comparable(first)


def test_fused_optimizer_runs_the_same_training_up_to_float_rounding(tiny_config, tmp_path, monkeypatch):
    import fedbt.training.loop as loop

    kernels = []
    original = loop.adamw

    def recording_adamw(*args):
        optimizer = original(*args)
        kernels.append(optimizer.defaults["fused"])
        return optimizer

    monkeypatch.setattr(loop, "adamw", recording_adamw)
    default = execute(prepare(tiny_config()))
    fused = execute(prepare(tiny_config(f"out_dir={tmp_path / 'fused'}", "local.fused_optimizer=true")))
    assert set(kernels[:9]) == {None} and set(kernels[9:]) == {True} and len(kernels) == 18  # 3 rounds x 3 clients
    same = ("upload_bytes", "download_bytes", "analytic_flops", "measured_flops")
    for plain, kernel in zip(default["rounds"], fused["rounds"], strict=True):
        assert {k: plain[k] for k in same} == {k: kernel[k] for k in same}
        assert kernel["heldout_mlm_loss"] == pytest.approx(plain["heldout_mlm_loss"], rel=1e-4)


def test_killed_run_resumes_with_identical_results(tiny_config, tmp_path, monkeypatch):
    reference = execute(prepare(tiny_config(f"out_dir={tmp_path / 'reference'}")))

    original = Simulator._checkpoint

    die_after_checkpoint(monkeypatch, 1)
    prepared = prepare(tiny_config(f"out_dir={tmp_path / 'killed'}"))
    with pytest.raises(KeyboardInterrupt):
        execute(prepared)
    state = json.loads((prepared.out_dir / "checkpoint/state.json").read_text())
    assert state["completed_round"] == 1
    monkeypatch.setattr(Simulator, "_checkpoint", original)

    trained_rounds = []
    original_round = Simulator._run_round
    monkeypatch.setattr(Simulator, "_run_round", lambda self, r: trained_rounds.append(r) or original_round(self, r))
    resumed = execute(prepare(tiny_config(f"out_dir={tmp_path / 'killed'}")))
    assert trained_rounds == [2], "only the unfinished round is trained again"
    assert _comparable(resumed) == _comparable(reference)
    ledger = (prepared.out_dir / "ledger.csv").read_text().strip().splitlines()
    assert len(ledger) == 1 + 3 * 3, "rows of the interrupted round are not duplicated"
    final = load_file(str(prepared.out_dir / "model/model.safetensors"))
    expected = load_file(str(tmp_path / "reference/model/model.safetensors"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_checkpoint_of_another_config_is_refused(tiny_config, tmp_path, monkeypatch):
    from fedbt.errors import FedBTError

    def die(self, round_idx):
        raise KeyboardInterrupt

    original = Simulator._checkpoint
    monkeypatch.setattr(Simulator, "_checkpoint", lambda self, r: original(self, r) or die(self, r))
    with pytest.raises(KeyboardInterrupt):
        execute(prepare(tiny_config()))
    monkeypatch.setattr(Simulator, "_checkpoint", original)
    with pytest.raises(FedBTError, match="different config"):
        execute(prepare(tiny_config("local.lr=0.01")))
    execute(prepare(tiny_config("local.lr=0.01")), fresh=True)


def test_one_local_model_serves_every_client(tiny_config, monkeypatch):
    import fedbt.federated.simulator as simulator_module

    built = []
    original = simulator_module.build_local_model
    monkeypatch.setattr(simulator_module, "build_local_model", lambda m, d: built.append(d) or original(m, d))
    execute(prepare(tiny_config("federation.clients=4", "federation.rounds=2")))
    assert built == [4], "one local model instance, reused across clients and rounds"


def test_fraction_selects_a_seeded_subset(tiny_config):
    metrics = execute(prepare(tiny_config("federation.clients=4", "federation.fraction=0.5")))
    assert [r["clients"] for r in metrics["rounds"]] == [2, 2, 2]
