"""The suite's methods over Flower: same results as the in-process simulator, bytes on the wire vs the ledger,
a real local deployment (SuperLink + 2 SuperNodes) whose processes are all gone afterwards.

Every Flower process gets ``OMP_NUM_THREADS=1`` and this process trains with one thread (conftest), so the
same float operations run in the same order on both sides and results are compared bit for bit.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("flwr", reason="needs the Flower extra: pip install -e '.[flower]' (make test installs it)")

from safetensors.torch import load_file  # noqa: E402

from fedbt.federated.method import ClientPlan  # noqa: E402
from fedbt.federated.simulator import ClientTask, ClientUpdate  # noqa: E402
from fedbt.flower import codec  # noqa: E402
from fedbt.flower.local import LocalFederation  # noqa: E402
from fedbt.flower.runconfig import RunSettings  # noqa: E402
from fedbt.ledger import LedgerRow, payload_nbytes  # noqa: E402
from fedbt.run import execute, prepare  # noqa: E402
from tests.conftest import REPO, tiny_overrides  # noqa: E402

pytestmark = [pytest.mark.flower, pytest.mark.xdist_group("flower")]
SMOKE = REPO / "config/runs/smoke.yaml"
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING = {"seconds", "wall_seconds", "peak_memory_bytes"}
FRAMING_PER_TENSOR, FRAMING_PER_MESSAGE = 512, 8192
"""Stated framing overhead bound: object headers, array metadata and the record entry of each tensor, plus the
message metadata and the JSON fields (plan, ledger row) of each message."""


def run_settings(tmp_path, *extra: str) -> RunSettings:
    overrides = tiny_overrides(tmp_path) + ["federation.rounds=2", "tracking.enabled=true", *extra]
    return RunSettings(str(SMOKE), tuple(overrides), "", False, True, 60.0)


def in_process(settings: RunSettings, out) -> dict:
    """The same run through ``fedbt run``'s code path, in this process (not tracked: MLflow keeps the Flower run)."""
    overrides = (*settings.overrides, "tracking.enabled=false")
    return execute(prepare(dataclasses.replace(settings, overrides=overrides, out=str(out)).load()))


def ledger(run_dir) -> list[dict]:
    with (run_dir / "ledger.csv").open() as handle:
        return [{k: v for k, v in row.items() if k not in TIMING} for row in csv.DictReader(handle)]


def assert_same_run(flower_dir, reference_dir) -> None:
    """Per-round train losses and evaluation, every ledger row and every final global tensor are equal."""
    flower = json.loads((flower_dir / "metrics.json").read_text())
    reference = json.loads((reference_dir / "metrics.json").read_text())
    assert [r["train_loss"] for r in flower["rounds"]] == [r["train_loss"] for r in reference["rounds"]]
    assert [r["heldout_mlm_loss"] for r in flower["rounds"]] == [r["heldout_mlm_loss"] for r in reference["rounds"]]
    assert ledger(flower_dir) == ledger(reference_dir)
    final = load_file(str(flower_dir / "model/model.safetensors"))
    expected = load_file(str(reference_dir / "model/model.safetensors"))
    assert final.keys() == expected.keys()
    assert all(torch.equal(final[name], expected[name]) for name in expected)


def assert_wire_matches_ledger(run_dir) -> None:
    """Each message's tensor bytes equal the ledger's; what crossed the wire is those bytes, less the content
    Flower sent once, plus a framing overhead within the stated bound."""
    wire = json.loads((run_dir / "metrics.json").read_text())["runtime"]["wire"]["rows"]
    rows = {(int(r["round"]), int(r["client"])): r for r in ledger(run_dir)}
    assert len(wire) == len(rows)
    for measured in wire:
        row = rows[measured["round"], measured["client"]]
        for direction in ("download", "upload"):
            payload = measured[f"{direction}_payload_bytes"]
            assert payload == int(row[f"{direction}_bytes"]) > 0
            framing = measured[f"{direction}_framing_bytes"]
            distinct = payload - measured[f"{direction}_duplicate_bytes"]
            assert measured[f"{direction}_message_bytes"] == distinct + framing
            assert 0 < framing <= FRAMING_PER_TENSOR * measured[f"{direction}_tensors"] + FRAMING_PER_MESSAGE


def mlflow_runtime_tag(settings: RunSettings, run_dir) -> str:
    from mlflow.tracking import MlflowClient

    run_id = json.loads((run_dir / "metrics.json").read_text())["mlflow_run_id"]
    uri = next(o.split("=", 1)[1] for o in settings.overrides if o.startswith("tracking.uri="))
    return MlflowClient(tracking_uri=uri).get_run(run_id).data.tags["fedbt.runtime"]


# ---------------------------------------------------------------------------------------------- codec


def test_tasks_and_updates_travel_unchanged():
    tensors = {
        "w": torch.randn(3, 4),
        "half": torch.randn(5, dtype=torch.bfloat16),
        "bits": torch.tensor([0, 255, 7], dtype=torch.uint8),
        "scalar": torch.tensor(2.5),
        "empty": torch.empty(0, 3),
        "view": torch.arange(12.0).view(3, 4)[:, 1],
    }
    plan = ClientPlan(layer_map=(0, 2, 2), trainable=frozenset({"w", "half"}), stale_positions=frozenset({2}))
    task = codec.from_content(ClientTask, codec.to_content(ClientTask(3, 1, plan, tensors)))
    assert (task.round_idx, task.client_id, task.plan) == (3, 1, plan)
    for name, tensor in tensors.items():
        assert task.download[name].dtype == tensor.dtype and torch.equal(task.download[name], tensor)
    row = LedgerRow(round=3, client=1, examples=7, steps=2, trained_layers="0;2", upload_bytes=9, train_loss=0.1 + 0.2)
    update = codec.from_content(ClientUpdate, codec.to_content(ClientUpdate({"w": tensors["w"]}, row)))
    assert update.row == row and torch.equal(update.upload["w"], tensors["w"])


def test_wire_count_of_a_message():
    from flwr.app import Message, Metadata

    a, b = torch.randn(100), torch.randn(50)
    tensors = {"a": a, "a_again": a.clone(), "b": b}  # identical content crosses once
    content = codec.to_content(ClientUpdate(tensors, LedgerRow(round=0, client=0, examples=1)))
    metadata = Metadata(1, "", 2, 1, "", "0", 0.0, 60.0, "train")  # a reply from node 2, outside any run
    count = codec.count_wire(Message(content, metadata=metadata), "upload")
    assert count.tensors == 3
    assert count.payload_bytes == payload_nbytes(tensors)[1] == 4 * 250
    assert count.duplicate_bytes == 4 * 100
    assert 0 < count.framing_bytes <= FRAMING_PER_TENSOR * 3 + FRAMING_PER_MESSAGE


# ----------------------------------------------------------------------------------- simulation engine


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    with LocalFederation("simulation", 3, tmp_path_factory.mktemp("flower-sim"), cwd=REPO, env=THREADS) as fed:
        yield fed


@pytest.mark.parametrize("method", ["fedavg", "fedbt"])
def test_simulation_equals_in_process(simulation, tmp_path, method):
    settings = run_settings(tmp_path, f"method.name={method}")
    run = simulation.run(settings, timeout=900)
    assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{simulation.logs()}"
    in_process(settings, tmp_path / "reference")
    flower_dir = tmp_path / "run"
    assert_same_run(flower_dir, tmp_path / "reference")
    assert_wire_matches_ledger(flower_dir)
    metrics = json.loads((flower_dir / "metrics.json").read_text())
    assert metrics["runtime"]["name"] == "flower-simulation"
    assert sorted(metrics["runtime"]["nodes"]) == ["0", "1", "2"]
    assert mlflow_runtime_tag(settings, flower_dir) == "flower-simulation"
    reference = json.loads((tmp_path / "reference/metrics.json").read_text())
    assert reference["runtime"] == {"name": "in-process"}


def test_encoded_payloads_travel_encoded(simulation, tmp_path):
    """A method with its own encoding (sparse values + mask bits) puts exactly those bytes on the wire."""
    settings = run_settings(tmp_path, "method.name=prune-magnitude", "method.options={sparsity: 0.5}")
    run = simulation.run(settings, timeout=900)
    assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{simulation.logs()}"
    in_process(settings, tmp_path / "reference")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    assert_wire_matches_ledger(tmp_path / "run")
    costs = json.loads((tmp_path / "run/metrics.json").read_text())["costs"]
    dense = 4 * costs["total_upload_params"]
    assert costs["total_upload_bytes"] < dense, "pruned tensors travel as kept values and mask bits"


# ---------------------------------------------------------------------------------------- deployment


def test_deployment_with_two_supernodes(tmp_path):
    settings = run_settings(tmp_path, "federation.clients=2", "method.name=fedbt")
    with LocalFederation("deployment", 2, tmp_path / "flower", cwd=REPO, env=THREADS) as federation:
        too_many = run_settings(tmp_path / "three", "federation.clients=3")
        failed = federation.run(dataclasses.replace(too_many, wait_nodes=2.0), timeout=600)
        assert failed.status == "finished:failed"
        assert "needs SuperNodes with partition-id 0..2" in failed.output
        run = federation.run(settings, timeout=900)
        assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{federation.logs()}"
        processes = federation.owned()
        names = {Path(p.cmdline()[1]).name for p in processes if len(p.cmdline()) > 1}
        assert {"flower-superlink", "flower-supernode", "flower-superexec"} <= names
    assert not any(p.is_running() and p.status() != "zombie" for p in processes)
    assert not federation.owned(), "every SuperLink, SuperNode, SuperExec and app process is stopped"
    in_process(settings, tmp_path / "reference")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    assert_wire_matches_ledger(tmp_path / "run")
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["runtime"]["name"] == "flower-deployment"
    assert mlflow_runtime_tag(settings, tmp_path / "run") == "flower-deployment"
