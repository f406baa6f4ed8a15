"""The baselines for heterogeneous clients and the method hooks: each baseline's defining rule on a hand-computed
case, the hooks' worked example (docs), client and server state surviving a kill (killed run == uninterrupted
run), and every new method on tiny BERT and ViT runs with three tiers."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from baselines.fedavg import FedAvg
from baselines.fedprox import proximal_term
from fedbt.config import ModelConfig, load_config
from fedbt.errors import ConfigError
from fedbt.federated import method as method_module
from fedbt.federated.method import ClientPlan, LocalContext, RoundInfo, available_methods, create_method
from fedbt.federated.server_optimizer import OPTIMIZERS
from fedbt.federated.simulator import Simulator
from fedbt.federated.tiers import FULL, Tier, deal
from fedbt.ledger import IDLE, TRAINED, Ledger
from fedbt.models import ModelArch, load_model, meta_model, model_config_for
from fedbt.run import execute, prepare
from tests.conftest import REPO, kill_and_resume

NEW = ["fedprox", "fedadam", "fedyogi", "heterofl", "inclusivefl", "fedavg-drop-weak"]
TINY = ModelConfig(source="tiny", max_length=32, tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64)
TIERS = "federation.tiers=[{share: 0.5, local_layers: 2}, {share: 0.25, local_layers: 3}, {share: 0.25}]"


def tiny_arch() -> ModelArch:
    return ModelArch.from_model(meta_model(model_config_for(TINY), "mlm"))


def weak(depth: int | None = 2, width: float | None = None) -> Tier:
    return Tier("weak", 0.5, depth, width, key="federation.tiers[0]")


def context(trained, start, state=None) -> LocalContext:
    model = nn.Module()
    return LocalContext(0, 0, ClientPlan((0,), frozenset()), model, trained, start, state or {}, 1, 0.1)


def tiered_run(tiny_config, name: str, *extra: str):
    prepared = prepare(tiny_config(f"method.name={name}", "federation.clients=4", "federation.rounds=2", TIERS, *extra))
    metrics = execute(prepared)
    dealt = deal(prepared.method.tiers, 4, prepared.config.seed)
    return prepared, metrics, Ledger(prepared.out_dir / "ledger.csv").rows(), dealt


def spy_uploads(monkeypatch) -> list[tuple[int, int, dict, int]]:
    """Record every (round, client, decoded upload, examples) the server receives."""
    seen = []
    original = Simulator.receive

    def receive(self, task, update):
        payload, row = original(self, task, update)
        seen.append((task.round_idx, task.client_id, payload, row.examples))
        return payload, row

    monkeypatch.setattr(Simulator, "receive", receive)
    return seen


def weighted_mean(uploads, name):
    """Hand rule: the n_k-weighted mean of the uploads that hold ``name``."""
    held = [(payload[name], n) for payload, n in uploads if name in payload]
    return sum(t * n for t, n in held) / sum(n for _, n in held)


# --------------------------------------------------------------------------------------------- fedprox


def test_fedprox_adds_mu_half_the_squared_distance_to_the_global_tensors():
    w = nn.Parameter(torch.tensor([1.0, 2.0]))
    b = nn.Parameter(torch.tensor([0.5]))
    start = {"w": torch.tensor([0.0, 0.0]), "b": torch.tensor([1.5])}
    term = proximal_term(context([("w", w), ("b", b)], start), mu=0.5)
    assert term.item() == pytest.approx(0.25 * (1 + 4 + 1))  # mu/2 * (1^2 + 2^2 + (-1)^2)
    term.backward()
    assert w.grad.tolist() == [0.5, 1.0] and b.grad.tolist() == [-0.5], "gradient mu * (w - w_global)"
    with pytest.raises(ConfigError, match="method.options.mu"):
        create_method("fedprox", tiny_arch(), 2, 0, {"mu": -1}, "pretrain")


def test_fedprox_pulls_local_training_towards_the_global_model(tiny_config, tmp_path):
    def drift(mu):
        prepared = prepare(
            tiny_config(
                "method.name=fedprox",
                f"method.options={{mu: {mu}}}",
                "federation.rounds=1",
                f"out_dir={tmp_path / str(mu)}",
            )
        )
        execute(prepared)
        saved = load_file(str(prepared.out_dir / "model/model.safetensors"))
        start = load_model(TINY, "mlm", 0).state_dict()
        return sum(float((saved[n] - start[n]).norm()) for n in saved)

    fedavg = execute(prepare(tiny_config("method.name=fedavg", "federation.rounds=1", f"out_dir={tmp_path / 'avg'}")))
    same = execute(
        prepare(
            tiny_config(
                "method.name=fedprox", "method.options={mu: 0}", "federation.rounds=1", f"out_dir={tmp_path / 'mu0'}"
            )
        )
    )
    assert same["rounds"][0]["train_loss"] == fedavg["rounds"][0]["train_loss"], "mu = 0 at full work is FedAvg"
    assert same["plan_sha256"] != fedavg["plan_sha256"], "equal plans, another training rule: no equal-plan warning"
    assert drift(1000.0) < drift(0.0)


# ---------------------------------------------------------------------------------- fedadam / fedyogi


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_fedadam_and_fedyogi_are_fedavg_with_that_server_optimizer(name):
    """Hand-computed, one element: x = 1, the clients' mean 1.1 (Delta 0.1), then 1.0 from the new x. The rule lives
    in fedbt.federated.server_optimizer (tests/test_server_optimizer.py); the method names it with its options."""
    lr, b1, b2, tau = 0.01, 0.9, 0.99, 1e-3
    method = create_method(name, tiny_arch(), 2, 0, {"server_lr": lr, "beta1": b1, "beta2": b2, "tau": tau}, "pretrain")
    optimizer = method.server_optimizer()
    assert optimizer == OPTIMIZERS[name](lr=lr, beta1=b1, beta2=b2, tau=tau)
    assert type(method).aggregate is FedAvg.aggregate and type(method).plan is FedAvg.plan, "FedAvg otherwise"
    x, m, v = 1.0, 0.0, tau**2
    for mean in (1.1, 1.0):
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        if name == "fedadam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * math.copysign(1.0, v - delta**2)
        expected = x + lr * m / (math.sqrt(v) + tau)
        out = optimizer.step({"p": torch.tensor([x])}, {"p": torch.tensor([mean])})
        assert out["p"].item() == pytest.approx(expected, rel=1e-5)
        x = out["p"].item()
    state = optimizer.state_tensors()
    assert set(state) == {"m/p", "v/p"} and state["v/p"].item() == pytest.approx(v, rel=1e-5)
    fresh = create_method(name, tiny_arch(), 2, 0, {"server_lr": lr}, "pretrain").server_optimizer()
    fresh.load_state_tensors(state)
    assert fresh.state["m/p"].item() == pytest.approx(m, rel=1e-5)
    with pytest.raises(ConfigError, match="method.options.beta2"):
        create_method(name, tiny_arch(), 2, 0, {"beta2": 1.0}, "pretrain")


# ---------------------------------------------------------------------------------------------- heterofl


def test_heterofl_width_of_a_tier_and_its_plan():
    arch = tiny_arch()  # hidden 32, 2 heads of 16, FFN 64
    heterofl = create_method("heterofl", arch, 2, 0, {}, "pretrain", (weak(),))
    assert heterofl.width_of(weak()) == 0.5 and heterofl.width_of(weak(None, 0.25)) == 0.25
    plan = heterofl.client_plan(0, 0, weak())
    assert plan.sub_shapes["bert.embeddings.word_embeddings.weight"] == (30522, 16), "the hidden size is sliced"
    assert plan.sub_shapes["bert.encoder.layer.0.attention.self.query.weight"] == (16, 16)
    assert plan.trainable == frozenset(arch.names) and plan.layer_map == (0, 1, 2, 3) and plan.scaler_rate == 0.5
    assert heterofl.client_plan(0, 0, FULL).slices == {}, "full width: fedavg"


def test_heterofl_averages_each_element_over_the_clients_holding_it(tiny_config, monkeypatch):
    """Tiers r = 1/2, 3/4, 1 (2, 1, 1 clients); layer 1's query weight (rows: 2 heads of 16): r = 1/2 holds rows
    0..7, 16..23 and columns 0..15, r = 3/4 rows 0..11, 16..27 and columns 0..23."""
    uploads = spy_uploads(monkeypatch)
    prepared, metrics, rows, dealt = tiered_run(tiny_config, "heterofl", "federation.rounds=1")
    arch, method = prepared.method.arch, prepared.method
    for row in rows:
        plan = method.client_plan(row.round, row.client, dealt[row.client])
        expected = sum(math.prod(plan.sub_shapes.get(n, arch.param_shapes[n])) for n in arch.names)
        assert row.upload_params == expected and row.upload_bytes == 4 * expected
    assert len({r.upload_bytes for r in rows}) == 3, "three widths, three upload sizes"
    start = load_model(TINY, "mlm", 0).state_dict()
    saved = load_file(str(prepared.out_dir / "model/model.safetensors"))
    query = "bert.encoder.layer.1.attention.self.query.weight"
    held = {16: [], 24: [], 32: []}  # by the width each client holds
    for _, _, payload, n in uploads:
        held[payload[query].shape[1]].append((payload[query], n))
    assert [len(v) for v in held.values()] == [2, 1, 1]

    def mean(pairs):
        return sum(t * n for t, n in pairs) / sum(n for _, n in pairs)

    everyone, wide = held[16] + held[24] + held[32], held[24] + held[32]
    cases = {  # global (row, column) -> (the clients holding it, its local row index for r = 1/2, 3/4, 1)
        (0, 0): (everyone, (0, 0, 0)),
        (20, 0): (everyone, (12, 16, 20)),  # head 1's 5th dimension
        (10, 0): (wide, (None, 10, 10)),
        (14, 0): (held[32], (None, None, 14)),
    }
    for (i, j), (pairs, local) in cases.items():
        rows_at = dict(zip((16, 24, 32), local, strict=True))
        expected = mean([(t[rows_at[t.shape[1]], j], n) for t, n in pairs])
        torch.testing.assert_close(saved[query][i, j], expected)
    torch.testing.assert_close(saved[query][0, 20], mean([(t[0, 20], n) for t, n in wide]))
    assert not torch.equal(saved[query][14], start[query][14])


# ------------------------------------------------------------------------------------------- inclusivefl


def test_inclusivefl_trains_the_bottom_layers_with_its_depths_head_and_averages_per_layer(tiny_config, monkeypatch):
    """The global model's tensors; the per-depth heads and top layers and the momentum: tests/test_inclusivefl.py."""
    arch = tiny_arch()
    inclusive = create_method("inclusivefl", arch, 2, 0, {}, "pretrain", (weak(), FULL))
    plan = inclusive.client_plan(0, 0, weak())
    assert plan.layer_map == (0, 1) and plan.trained_layers(arch) == [0, 1]
    assert set(arch.head_params()) | set(arch.embedding_params()) <= plan.trainable
    assert inclusive.client_plan(0, 0, FULL).layer_map == (0, 1, 2, 3)

    uploads = spy_uploads(monkeypatch)
    prepared, _, rows, dealt = tiered_run(tiny_config, "inclusivefl", "federation.rounds=1")
    saved = load_file(str(prepared.out_dir / "model/model.safetensors"))
    by_depth = {len(prepared.method.client_plan(0, c, t).layer_map) for c, t in enumerate(dealt)}
    assert by_depth == {2, 3, 4}
    depth = {c: len(prepared.method.client_plan(0, c, t).layer_map) for c, t in enumerate(dealt)}
    for name, deeper_than in (
        ("bert.encoder.layer.0.output.dense.weight", 0),
        ("bert.encoder.layer.1.output.dense.weight", 2),  # the depth-2 group's top layer: not in the global average
        ("bert.encoder.layer.3.output.dense.weight", 3),
        (arch.head_params()[0], 3),  # the global head: the full-depth model's, each depth has its own
    ):
        held = [(p, n) for _, c, p, n in uploads if depth[c] > deeper_than]
        assert len(held) == {0: 4, 2: 2, 3: 1}[deeper_than]
        torch.testing.assert_close(saved[name], weighted_mean(held, name))


# -------------------------------------------------------------------------------------- fedavg-drop-weak


def test_fedavg_drop_weak_averages_only_the_clients_that_hold_the_full_model(tiny_config, monkeypatch):
    arch = tiny_arch()
    with pytest.raises(ConfigError, match="federation.tiers.*every tier is weak"):
        create_method("fedavg-drop-weak", arch, 2, 0, {}, "pretrain", (weak(2), weak(3)))
    drop = create_method("fedavg-drop-weak", arch, 2, 0, {}, "pretrain", (weak(), FULL))
    assert drop.client_plan(0, 0, weak()).trainable == frozenset()
    assert drop.client_plan(0, 0, weak(None, 0.5)).trainable == frozenset(), "a narrow tier is weak too"
    assert drop.client_plan(0, 0, FULL).trainable == frozenset(arch.names)

    uploads = spy_uploads(monkeypatch)
    prepared, metrics, rows, dealt = tiered_run(tiny_config, "fedavg-drop-weak", "federation.rounds=1")
    strong = [c for c, t in enumerate(dealt) if t.local_layers is None]
    assert {r.client for r in rows if r.status == TRAINED} == set(strong)
    assert all(r.status == IDLE and r.upload_bytes == r.measured_flops == 0 for r in rows if r.client not in strong)
    saved = load_file(str(prepared.out_dir / "model/model.safetensors"))
    name = "bert.encoder.layer.2.intermediate.dense.weight"
    torch.testing.assert_close(saved[name], weighted_mean([(p, n) for _, _, p, n in uploads], name))
    assert metrics["tiers"]["tier0"]["upload_mb_per_client_round"] == 0


# ---------------------------------------------------------------------------- the hooks' worked example


@pytest.mark.parametrize("module", ["tests/example_hooks.py", "baselines/scaffold.py"])
def test_docs_hooks_examples_are_the_tested_modules(module):
    doc = (REPO / "docs/adding-a-baseline.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    assert (REPO / module).read_text() in blocks


def _feddyn(tmp_path, monkeypatch):
    available_methods()
    monkeypatch.setattr(method_module, "_REGISTRY", dict(method_module._REGISTRY))
    plugin = tmp_path / "feddyn.py"
    plugin.write_text((REPO / "tests/example_hooks.py").read_text())
    return plugin


def test_feddyn_example_rules_on_a_hand_computed_case(tmp_path, monkeypatch):
    from fedbt.federated.method import load_plugins

    load_plugins([str(_feddyn(tmp_path, monkeypatch))])
    feddyn = create_method("example-feddyn", tiny_arch(), 2, 0, {"alpha": 0.5}, "pretrain")
    w = nn.Parameter(torch.tensor([2.0]))
    client = context([("w", w)], {"w": torch.tensor([1.0])}, {"w": torch.tensor([0.4])})
    assert feddyn.local_loss(client).item() == pytest.approx(0.25 * 1 - 0.4 * 2)  # alpha/2 (w-w_t)^2 - <g, w>
    assert feddyn.client_state(client)["w"].item() == pytest.approx(0.4 - 0.5 * 1)  # g - alpha (w - w_t)
    everyone = RoundInfo(0, 2, (0, 1))
    out = feddyn.aggregate({"w": torch.tensor([1.0])}, {"w": torch.tensor([1.2])}, everyone)
    assert feddyn.h["w"].item() == pytest.approx(-0.5 * 0.2)  # h = 0 - alpha (mean - w_t)
    assert out["w"].item() == pytest.approx(1.2 + 0.1 / 0.5)  # mean - h / alpha
    feddyn.h = {}
    feddyn.aggregate({"w": torch.tensor([1.0])}, {"w": torch.tensor([1.2])}, RoundInfo(0, 4, (2,)))
    assert feddyn.h["w"].item() == pytest.approx(-0.5 * 0.2 / 4)  # one of m = 4 clients took part
    optimizer = feddyn.local_optimizer(nn.Linear(2, 1), load_config(None).local)
    assert isinstance(optimizer, torch.optim.SGD)


@pytest.mark.parametrize("name", ["example-feddyn", "fedadam"])
def test_client_and_server_state_survive_a_kill(tiny_config, tmp_path, monkeypatch, name):
    plugin = _feddyn(tmp_path, monkeypatch)
    extra = [f"plugins=[{plugin}]", f"method.name={name}", "federation.rounds=3", TIERS, "federation.clients=4"]
    _, checkpoint = kill_and_resume(tiny_config, tmp_path, monkeypatch, extra)
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["method_tensors"] == "method-r1.safetensors"
    if name == "example-feddyn":
        clients = load_file(str(checkpoint / state["client_states"]))
        assert {key.split("/")[0] for key in clients} == {"0", "1", "2", "3"}


def test_client_state_travels_through_the_flower_codec():
    pytest.importorskip("flwr", reason="needs the Flower extra")
    from fedbt.federated.simulator import ClientTask, ClientUpdate
    from fedbt.flower import codec
    from fedbt.ledger import LedgerRow

    plan = ClientPlan((0, 1), frozenset({"a"}), slices={"a": (2, (0, 3))}, scaler_rate=0.5)
    task = ClientTask(1, 2, plan, {"a": torch.ones(2, 2)}, {"g": torch.arange(3.0)})
    back = codec.from_content(ClientTask, codec.to_content(task))
    assert back.plan == plan and back.plan.slices == {"a": (2, (0, 3))} and back.plan.scaler_rate == 0.5
    assert torch.equal(back.state["g"], task.state["g"])
    update = codec.from_content(
        ClientUpdate, codec.to_content(ClientUpdate({}, LedgerRow(1, 2, 3), {"g": torch.ones(1)}))
    )
    assert torch.equal(update.state["g"], torch.ones(1))


# -------------------------------------------------------------------------------------- BERT and ViT runs


@pytest.mark.parametrize("name", NEW)
def test_every_new_method_runs_with_three_tiers_on_tiny_bert(tiny_config, name):
    prepared, metrics, rows, dealt = tiered_run(tiny_config, name)
    assert len(metrics["rounds"]) == 2 and set(metrics["tiers"]) == {"tier0", "tier1", "tier2"}
    arch = prepared.method.arch
    for row in rows:
        plan = prepared.method.client_plan(row.round, row.client, dealt[row.client])
        params = sum(math.prod(plan.sub_shapes.get(n, arch.param_shapes[n])) for n in plan.trainable)
        assert row.upload_params == params, f"{name}: client {row.client} uploads exactly its plan"


@pytest.mark.parametrize("name", NEW + ["fedbt"])
def test_every_new_method_runs_with_three_tiers_on_a_tiny_vit(tmp_path, name):
    from tests.test_vision import vit_overrides

    tiers = "federation.tiers=[{share: 0.34, local_layers: 2}, {share: 0.33, local_layers: 3}, {share: 0.33}]"
    overrides = vit_overrides(tmp_path, f"method.name={name}", "data.corpus=cifar10", "local.objective=mim", tiers)
    prepared = prepare(load_config(None, [*overrides, f"out_dir={tmp_path / 'run'}"]))
    metrics = execute(prepared)
    assert all(r["heldout_mim_loss"] > 0 for r in metrics["rounds"])
    rows = Ledger(tmp_path / "run/ledger.csv").rows()
    trained = [r for r in rows if r.status == TRAINED]
    assert trained and all(r.upload_bytes > 0 and r.measured_flops > 0 for r in trained)
    assert {r.tier for r in rows} == {"tier0", "tier1", "tier2"}


# ------------------------------------------------------------------------------------------------- Flower


@pytest.mark.flower
@pytest.mark.xdist_group("flower")
@pytest.mark.parametrize("name", ["example-feddyn", "heterofl", "scaffold"])
def test_hooks_state_and_slices_run_the_same_over_flower(tmp_path, monkeypatch, name):
    """Client state, the extra loss, the local optimizer, the server step (FedDyn), width slices (HeteroFL) and the
    message channel's extras (SCAFFOLD) go through Flower's ClientApps exactly as in process, with three tiers."""
    pytest.importorskip("flwr", reason="needs the Flower extra: pip install -e '.[flower]'")
    from fedbt.flower.local import LocalFederation
    from tests.test_flower import THREADS, assert_same_run, assert_wire_matches_ledger, in_process, run_settings

    plugin = _feddyn(tmp_path, monkeypatch)
    tiers = "federation.tiers=[{share: 0.34, local_layers: 2}, {share: 0.33, local_layers: 3}, {share: 0.33}]"
    settings = run_settings(tmp_path, f"plugins=[{plugin}]", f"method.name={name}", tiers)
    with LocalFederation("simulation", 3, tmp_path / "flower", cwd=REPO, env=THREADS) as federation:
        run = federation.run(settings, timeout=900)
        assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{federation.logs()}"
    in_process(settings, tmp_path / "reference")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    assert_wire_matches_ledger(tmp_path / "run")  # the model tensors and the extras on the wire are the ledger's
    wire = json.loads((tmp_path / "run/metrics.json").read_text())["runtime"]["wire"]["rows"]
    assert all(m["download_state_bytes"] == m["upload_state_bytes"] == 0 for m in wire), "client state never travels"
    node_state = tmp_path / "run/node-state"
    kept = sorted(path.relative_to(node_state).as_posix() for path in node_state.rglob("*.safetensors"))
    if name != "heterofl":  # FedDyn's g_k and SCAFFOLD's c_i stay on the nodes: the last two versions of each
        assert kept == [f"client-{k}/r{r}.safetensors" for k in range(3) for r in (0, 1)]
