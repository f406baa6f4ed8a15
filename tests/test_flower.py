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

from fedbt.config import load_config  # noqa: E402
from fedbt.errors import ConfigError, FedBTError  # noqa: E402
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
FAULTS = f"plugins=[{REPO / 'tests/flower_faults.py'}]"
"""The plugin method with injected faults (tests/flower_faults.py)."""
FINETUNE = ("scenario=finetune", "data.corpus=null", "data.task=rct", "local.objective=classification")
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


def untimed(record: dict) -> dict:
    """A round's record without its timings."""
    return {k: v for k, v in record.items() if "seconds" not in k}


def assert_same_run(flower_dir, reference_dir) -> None:
    """Every round's record (train loss, evaluation, bytes, FLOPs, plan digest; timings aside), every ledger row
    and every final global tensor are equal."""
    flower = json.loads((flower_dir / "metrics.json").read_text())
    reference = json.loads((reference_dir / "metrics.json").read_text())
    assert [untimed(r) for r in flower["rounds"]] == [untimed(r) for r in reference["rounds"]]
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


def test_run_config_round_trips_and_bad_keys_fail():
    settings = RunSettings("c.yaml", ("seed=1", "federation.rounds=3"), "out", True, False, 5.0, round_deadline=30.0)
    assert RunSettings.from_run_config(settings.as_run_config()) == settings
    assert RunSettings.from_run_config({}).round_deadline == 0.0  # no deadline unless asked: reproducible runs
    config = load_config(None, ["federation.deadline_s=45"])
    assert RunSettings.from_run_config({}).deadline(config) == 45.0  # the run config's deadline drives it
    assert settings.deadline(config) == 30.0 and RunSettings.from_run_config({}).deadline(load_config(None)) == 0.0
    with pytest.raises(ConfigError, match="run-config.round-deadline.*>= 0.*got -1"):
        RunSettings.from_run_config({"round-deadline": -1})
    with pytest.raises(ConfigError, match="run-config.deadline.*allowed keys: .*round-deadline"):
        RunSettings.from_run_config({"deadline": 30})


def test_client_state_versions_on_the_node(tmp_path):
    """A node keeps each round's state in its Context and on disk, serves the version a task asks for (from disk
    in a new run's Context), deletes the older ones, and fails as a setup error when a version is gone."""
    from flwr.app import Context, RecordDict

    from fedbt.flower.node_state import NodeState, continue_state

    store = NodeState(Context(1, 1, {}, RecordDict(), {}), tmp_path)
    for round_idx in range(3):
        store.save(round_idx, {"c": torch.full((2,), float(round_idx))}, keep_from=round_idx - 1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["r1.safetensors", "r2.safetensors"]
    assert torch.equal(store.load(1)["c"], torch.ones(2)) and store.load(0) is None
    resumed = NodeState(Context(2, 1, {}, RecordDict(), {}), tmp_path)  # a new Flower run: an empty Context
    assert torch.equal(continue_state(resumed, 2, has_state=True)["c"], torch.full((2,), 2.0))
    assert continue_state(resumed, -1, has_state=True) == {} == continue_state(resumed, 0, has_state=False)
    with pytest.raises(FedBTError, match="^fedbt node setup failed: the client state of round 0 is not on"):
        continue_state(resumed, 0, has_state=True)


def _reply(client: int, reason: str | None = None):
    """A reply from node ``client`` (outside any run): an error with ``reason``, or an empty update."""
    from flwr.app import Error, Message, Metadata, RecordDict

    metadata = Metadata(1, "", client, 1, str(client), "0", 0.0, 60.0, "train")
    if reason is None:
        return Message(RecordDict(), metadata=metadata)
    return Message(error=Error(code=0, reason=reason), metadata=metadata)


def test_setup_errors_stop_the_run_device_errors_drop_the_client():
    from fedbt.flower.server_app import _stop_on_setup_errors

    _stop_on_setup_errors({0: _reply(0), 1: _reply(1, "<'out of memory'>")}, sent=3)  # one device failed
    _stop_on_setup_errors({0: _reply(0, "<'killed'>")}, sent=2)  # the other missed the deadline
    with pytest.raises(FedBTError, match="client 1: .*fedbt node setup failed: no data"):
        _stop_on_setup_errors({0: _reply(0), 1: _reply(1, codec.SETUP_FAILED + "no data")}, sent=2)
    with pytest.raises(FedBTError, match=r"client 0: <'a'> \(and 1 more\)"):
        _stop_on_setup_errors({0: _reply(0, "<'a'>"), 1: _reply(1, "<'b'>")}, sent=2)  # every client raised


def test_a_task_for_another_run_is_a_setup_error(tmp_path):
    """A node asked to train for a run config other than its own fails as a setup error (the server stops)."""
    from flwr.app import ConfigRecord, Context, RecordDict

    from fedbt.flower.client_app import _checked_task

    settings = run_settings(tmp_path)
    content = codec.to_content(ClientTask(0, 0, ClientPlan(layer_map=(0,), trainable=frozenset()), {}))
    content["run"] = ConfigRecord({"fingerprint": "another run"})
    message = _reply(0)
    message.content = content
    context = Context(1, 1, {"partition-id": 0}, RecordDict(), settings.as_run_config())
    with pytest.raises(FedBTError, match="^fedbt node setup failed: the server's run config differs"):
        _checked_task(message, context)


# ----------------------------------------------------------------------------------- simulation engine


@pytest.fixture(scope="module")
def simulation(tmp_path_factory):
    with LocalFederation("simulation", 3, tmp_path_factory.mktemp("flower-sim"), cwd=REPO, env=THREADS) as fed:
        yield fed


@pytest.mark.parametrize(
    "method",
    [("fedavg",), ("fedbt",), ("fedadam",), ("fedbt-ft", *FINETUNE)],
    ids=["fedavg", "fedbt", "fedadam", "fedbt-ft"],
)
def test_simulation_equals_in_process(simulation, tmp_path, method):
    settings = run_settings(tmp_path, f"method.name={method[0]}", *method[1:])
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


def test_a_failing_client_is_dropped_for_its_round(simulation, tmp_path):
    """A ClientApp that raises loses its round (ledger ``failed``, its download counted, nothing uploaded); the
    others' average makes the round and the client trains again in the next."""
    options = "method.options={fail_client: 1}"
    settings = run_settings(tmp_path, FAULTS, "method.name=test-faulty-scaffold", options)
    run = simulation.run(settings, timeout=900)
    assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{simulation.logs()}"
    rows = {(int(r["round"]), int(r["client"])): r for r in ledger(tmp_path / "run")}
    failed = rows[0, 1]
    assert failed["status"] == "failed" and failed["upload_bytes"] == "0" and failed["steps"] == "0"
    assert int(failed["download_bytes"]) == int(rows[0, 0]["download_bytes"]) > 0
    assert [rows[key]["status"] for key in sorted(rows) if key != (0, 1)] == ["trained"] * 5
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    [dropped] = metrics["runtime"]["dropped"]
    assert (dropped["round"], dropped["client"], dropped["status"]) == (0, 1, "failed")
    assert "injected failure of client 1" in dropped["reason"]
    assert metrics["costs"]["failed_client_rounds"] == 1
    assert metrics["dropped_client_rounds_pct"] == pytest.approx(100 / 6)


def test_a_device_late_on_the_simulated_clock_is_dropped_as_in_process(simulation, tmp_path):
    """Devices over Flower: the server times each reply on its client's device as in process and drops the client
    that is late on the simulated clock (SCAFFOLD: its control variate stays the version the server last took, kept
    on its node), so the run equals the in-process one bit for bit; ``federation.deadline_s`` (600 s) bounds the real
    replies too, which all arrive in time."""
    slow = "{train_gflops: 1.0e-6, downlink_mbps: 100, uplink_mbps: 100}"
    fast = "{train_gflops: 1000, downlink_mbps: 1000, uplink_mbps: 1000}"
    tiers = f"[{{name: weak, share: 0.34, device: {slow}}}, {{name: strong, share: 0.66, device: {fast}}}]"
    settings = run_settings(tmp_path, "method.name=scaffold", f"federation.tiers={tiers}", "federation.deadline_s=600")
    run = simulation.run(settings, timeout=900)
    assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{simulation.logs()}"
    in_process(settings, tmp_path / "reference")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    rows = ledger(tmp_path / "run")
    assert {r["status"] for r in rows if r["tier"] == "weak"} == {"missed-deadline"}
    assert {r["status"] for r in rows if r["tier"] == "strong"} == {"trained"}
    assert "dropped" not in json.loads((tmp_path / "run/metrics.json").read_text())["runtime"], "no real-clock drop"


def test_a_crashed_flower_run_resumes(simulation, tmp_path):
    """The ServerApp dies in round 1's aggregation; ``flwr run`` again (not fresh) resumes from round 0's
    checkpoint and ends exactly where the uninterrupted run ends."""
    marker = tmp_path / "crashed"
    options = f"method.options={{fault_round: 1, crash_marker: {marker}}}"
    settings = run_settings(tmp_path, FAULTS, "method.name=test-faulty-scaffold", options, "federation.rounds=3")
    crashed = simulation.run(settings, timeout=900)
    assert crashed.status == "finished:failed" and marker.exists()
    assert json.loads((tmp_path / "run/checkpoint/state.json").read_text())["completed_round"] == 0
    resumed = simulation.run(settings, timeout=900)
    assert resumed.succeeded, f"{resumed.status}\n{resumed.output[-4000:]}\n{simulation.logs()}"
    in_process(settings, tmp_path / "reference")  # the marker exists: no crash in process
    assert_same_run(tmp_path / "run", tmp_path / "reference")


# ---------------------------------------------------------------------------------------- deployment


@pytest.mark.heavy  # a SuperLink and two SuperNodes as processes: about 4 minutes
def test_deployment_with_two_supernodes(tmp_path):
    settings = run_settings(tmp_path, "federation.clients=2", "method.name=fedbt")
    with LocalFederation("deployment", 2, tmp_path / "flower", cwd=REPO, env=THREADS) as federation:
        too_many = run_settings(tmp_path / "three", "federation.clients=3")
        failed = federation.run(dataclasses.replace(too_many, wait_nodes=2.0), timeout=600)
        assert failed.status == "finished:failed"
        assert "needs SuperNodes with partition-id 0..2" in failed.output
        run = federation.run(settings, timeout=900)
        assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{federation.logs()}"
        _a_stalled_node_misses_the_deadline(federation, tmp_path)
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


def _a_stalled_node_misses_the_deadline(federation: LocalFederation, tmp_path: Path) -> None:
    """Node 1 stalls (sleeps in its ClientApp) past the round's deadline: the round goes on without it, its row says
    ``missed-deadline``. The deadline is three times the slowest round of the run just made on these nodes, set as
    the run config's ``federation.deadline_s`` (no devices: it binds the real replies only)."""
    slowest = max(r["round_seconds"] for r in json.loads((tmp_path / "run/metrics.json").read_text())["rounds"])
    deadline = max(30.0, 3 * slowest)
    options = f"method.options={{slow_client: 1, slow_seconds: {10 * deadline:.0f}}}"
    stalled = run_settings(
        tmp_path / "stalled", "federation.clients=2", "federation.rounds=1", FAULTS, "method.name=test-faulty-scaffold"
    )
    stalled = dataclasses.replace(stalled, overrides=(*stalled.overrides, options, f"federation.deadline_s={deadline}"))
    run = federation.run(stalled, timeout=900)
    assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{federation.logs()}"
    rows = ledger(tmp_path / "stalled/run")
    assert [(r["client"], r["status"]) for r in rows] == [("0", "trained"), ("1", "missed-deadline")]
    metrics = json.loads((tmp_path / "stalled/run/metrics.json").read_text())
    assert metrics["runtime"]["dropped"][0]["reason"] == f"no reply within the round's deadline of {deadline:g} s"
    assert metrics["rounds"][0]["round_seconds"] < deadline + slowest + 30
