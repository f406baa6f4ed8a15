"""SCAFFOLD and the message channel it runs on: its rules on a hand-computed case, the loop's choice of clipping a
``local_loss`` correction, the extras counted in the ledger (twice the model each way) and seen by the hooks, the
server variate as the mean of the clients' variates, a killed run resuming exactly, and plan digests."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from baselines.fedavg import FedAvg
from fedbt.config import load_config
from fedbt.federated import method as method_module
from fedbt.federated.method import ClientPlan, LocalContext, RoundInfo, available_methods, create_method, register
from fedbt.federated.simulator import Simulator
from fedbt.ledger import TRAINED, Ledger
from fedbt.run import execute, prepare
from fedbt.training import loop
from tests.conftest import kill_and_resume
from tests.test_heterogeneous_baselines import tiny_arch

SCAFFOLD = ["method.name=scaffold", "local.lr=0.05", "federation.rounds=2"]


def scaffold_context(w: nn.Parameter, x: float, c: float, c_i: float | None, steps: int, lr: float) -> LocalContext:
    state = {} if c_i is None else {"w": torch.tensor([c_i])}
    return LocalContext(
        0,
        0,
        ClientPlan((0,), frozenset({"w"})),
        nn.Module(),
        [("w", w)],
        {"w": torch.tensor([x])},
        state,
        steps,
        lr,
        received_extra={"w": torch.tensor([c])},
        num_clients=4,
        participants=(0, 1),
    )


def test_scaffold_rules_on_a_hand_computed_case():
    scaffold = create_method("scaffold", tiny_arch(), 2, 0, {}, "pretrain")
    w = nn.Parameter(torch.tensor([0.8]))  # y after K = 2 steps of lr 0.1 from x = 1
    client = scaffold_context(w, x=1.0, c=0.3, c_i=0.1, steps=2, lr=0.1)
    scaffold.local_loss(client).backward()
    assert w.grad.item() == pytest.approx(0.3 - 0.1)  # the correction c - c_i
    new = scaffold.client_state(client)["w"].item()
    assert new == pytest.approx(0.1 - 0.3 + (1.0 - 0.8) / (2 * 0.1))  # option II: c_i - c + (x - y) / (K lr)
    assert scaffold.upload_extra(client)["w"].item() == pytest.approx(new - 0.1)  # delta c_i
    first = scaffold_context(w, x=1.0, c=0.0, c_i=None, steps=2, lr=0.1)  # first round: c_i = 0
    assert scaffold.client_state(first)["w"].item() == pytest.approx(1.0)

    name = scaffold.arch.names[0]
    scaffold.load_state_tensors({name: torch.full(scaffold.arch.param_shapes[name], 0.3)})
    extras = {0: {name: torch.full(scaffold.arch.param_shapes[name], 0.8)}, 2: {}}
    round_info = RoundInfo(0, 4, (0, 2), extras, {0: 1.0, 2: 1.0})
    averaged = {name: torch.ones(scaffold.arch.param_shapes[name])}
    assert scaffold.aggregate({}, averaged, round_info) == averaged  # y averaged as FedAvg
    assert scaffold.c[name].flatten()[0].item() == pytest.approx(0.3 + 0.8 / 4)  # c + (1/N) sum delta c_i
    plan = scaffold.plan(1, 3)
    sent = scaffold.download_extra(round_info, 3, plan)
    assert sent.keys() == plan.trainable and torch.equal(sent[name], scaffold.c[name])
    assert isinstance(scaffold.local_optimizer(nn.Linear(2, 1), load_config(None).local), torch.optim.SGD)


class _Linear:
    """An objective of one example: loss = slope * w on a 1x1 linear model (for the clipping test)."""

    head = "none"

    def __init__(self, slope: float):
        self.slope = slope

    def collate(self, examples, generator):
        return {"x": torch.ones(len(examples), 1)}

    def shape(self, batch):
        return len(batch["x"]), 1

    def predicted_tokens(self, batch):
        return 0

    def input_tokens(self, batch):
        return len(batch["x"])

    def loss(self, model, batch):
        return self.slope * model(batch["x"]).mean()


@pytest.mark.parametrize(("clip_extra", "expected"), [(True, -1.0), (False, -1.0 - 5.0)])
def test_the_loop_clips_a_local_loss_correction_only_when_told(clip_extra, expected):
    """Objective gradient 100, correction gradient 5, max_grad_norm 1, SGD lr 1 from w = 0: clipping the sum moves w
    by 1; clipping the objective only moves it by 1 + 5."""
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    loop.train(
        model,
        _Linear(100.0),
        [{}],
        steps=1,
        batch_size=1,
        lr=1.0,
        weight_decay=0.0,
        generator=torch.Generator().manual_seed(0),
        device=torch.device("cpu"),
        max_grad_norm=1.0,
        optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
        extra_loss=lambda: 5.0 * model.weight.sum(),
        clip_extra_loss=clip_extra,
    )
    assert model.weight.item() == pytest.approx(expected)


def test_scaffold_sends_twice_the_model_each_way_and_the_server_variate_is_the_clients_mean(
    tiny_config, tmp_path, monkeypatch
):
    checkpointed = []
    original = Simulator._checkpoint

    def spy(self, round_idx):
        checkpointed.append((dict(self.method.state_tensors()), dict(self.client_states)))
        original(self, round_idx)

    monkeypatch.setattr(Simulator, "_checkpoint", spy)
    prepared = prepare(tiny_config(*SCAFFOLD, "federation.clients=3", f"out_dir={tmp_path / 'run'}"))
    metrics = execute(prepared)
    model_bytes = 4 * prepared.method.arch.numel(prepared.method.arch.names)
    rows = Ledger(tmp_path / "run/ledger.csv").rows()
    assert rows and all(r.status == TRAINED for r in rows)
    assert all(r.download_bytes == r.upload_bytes == 2 * model_bytes for r in rows)
    assert all(r["upload_bytes"] == 3 * 2 * model_bytes for r in metrics["rounds"])
    assert len(checkpointed) == 2
    for server, clients in checkpointed:  # every client in every round: c = mean_i c_i after each round
        assert set(clients) == {0, 1, 2} and set(server) == set(prepared.method.arch.names)
        for name, c in server.items():
            mean = sum(clients[client][name] for client in range(3)) / 3
            torch.testing.assert_close(c, mean, rtol=1e-5, atol=1e-7)
    assert any(c.abs().sum() > 0 for c in checkpointed[-1][0].values())


def test_scaffold_with_zero_variates_is_fedavg_with_sgd_in_its_first_round(tiny_config, tmp_path, monkeypatch):
    """In round 0, c = c_i = 0: the correction is zero, so SCAFFOLD trains exactly as FedAvg with plain SGD."""
    monkeypatch.setattr(method_module, "_REGISTRY", available_methods())

    @register
    class FedAvgSGD(FedAvg):
        name = "test-fedavg-sgd"
        description = "FedAvg with plain SGD"

        def local_optimizer(self, model, local):
            return torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=local.lr)

    one = ["local.lr=0.05", "federation.rounds=1"]
    scaffold = execute(prepare(tiny_config("method.name=scaffold", *one, f"out_dir={tmp_path / 's'}")))
    reference = execute(prepare(tiny_config("method.name=test-fedavg-sgd", *one, f"out_dir={tmp_path / 'f'}")))
    assert scaffold["rounds"][0]["train_loss"] == reference["rounds"][0]["train_loss"]
    final, expected = (load_file(str(tmp_path / d / "model/model.safetensors")) for d in ("s", "f"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)


def test_a_killed_scaffold_run_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    _, checkpoint = kill_and_resume(tiny_config, tmp_path, monkeypatch, [*SCAFFOLD, "federation.rounds=3"])
    state = json.loads((checkpoint / "state.json").read_text())
    assert state["method_tensors"] and state["client_states"]


def test_the_run_config_overrides_the_methods_clipping_choice(tiny_config, tmp_path):
    """With a tight ``local.max_grad_norm``, clipping SCAFFOLD's correction (``local.clip_local_loss: true``) changes
    round 1's training (round 0's correction is zero)."""
    clipped = ["local.clip_local_loss=true", "local.max_grad_norm=0.01"]
    runs = [
        execute(prepare(tiny_config(*SCAFFOLD, "local.max_grad_norm=0.01", *extra, f"out_dir={tmp_path / label}")))
        for label, extra in (("own", []), ("clipped", clipped))
    ]
    assert runs[0]["rounds"][-1]["train_loss"] != runs[1]["rounds"][-1]["train_loss"]
