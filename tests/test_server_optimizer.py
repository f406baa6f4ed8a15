"""Server optimizers as a server-side option (``server.optimizer``): FedAvgM, FedAdam and FedYogi steps on hand-made
tensors, the config's checks, composition with any method on tiny runs (fedbt + fedadam differs from fedbt; the
``fedadam`` method is fedavg + the optimizer), and a killed run resuming exactly with the optimizer's state."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fedbt.config import ModelConfig, ServerOptimizerConfig, load_config
from fedbt.errors import ConfigError
from fedbt.federated.server_optimizer import FedAdam, FedAvgM, FedYogi, from_config
from fedbt.federated.simulator import SERVER_OPTIMIZER, Simulator
from fedbt.models import load_model
from fedbt.run import execute, prepare
from tests.conftest import kill_and_resume

TINY = ModelConfig(source="tiny", max_length=32, tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64)
X, MEANS = torch.tensor([1.0, -2.0]), [torch.tensor([1.1, -2.5]), torch.tensor([1.0, -2.0])]
"""The global tensor, then the clients' mean in two rounds (the second taken against the new global tensor)."""


def two_steps(optimizer) -> torch.Tensor:
    """The global tensor after each round (rows), computed in float64."""
    x, seen = X.double(), []
    for mean in MEANS:
        x = optimizer.step({"p": x}, {"p": mean.double()})["p"]
        seen.append(x)
    return torch.stack(seen)


def test_fedavgm_adds_lr_times_the_momentum_of_the_pseudo_gradients():
    lr, beta = 0.5, 0.9
    x, m, expected = X.tolist(), [0.0, 0.0], []
    for mean in MEANS:
        delta = [a - b for a, b in zip(mean.tolist(), x, strict=True)]
        m = [beta * mi + d for mi, d in zip(m, delta, strict=True)]
        x = [xi + lr * mi for xi, mi in zip(x, m, strict=True)]
        expected.append(x)
    torch.testing.assert_close(two_steps(FedAvgM(lr=lr, momentum=beta)), torch.tensor(expected, dtype=torch.float64))
    # round 1 by hand: Delta = (0.1, -0.5), m = Delta, x = (1.05, -2.25); round 2: Delta = (-0.05, 0.25)
    assert expected[0] == pytest.approx([1.05, -2.25]) and expected[1][0] == pytest.approx(1.05 + 0.5 * 0.04)
    plain = FedAvgM(lr=1.0, momentum=0.0)
    torch.testing.assert_close(plain.step({"p": X}, {"p": MEANS[0]})["p"], MEANS[0])  # lr 1, no momentum: the mean


@pytest.mark.parametrize("cls", [FedAdam, FedYogi])
def test_fedadam_and_fedyogi_follow_reddi_et_al_algorithm_2(cls):
    lr, b1, b2, tau = 0.01, 0.9, 0.99, 1e-3
    expected = []
    for i in range(2):  # each element on its own
        x, m, v, steps = X[i].item(), 0.0, tau**2, []
        for mean in MEANS:
            delta = mean[i].item() - x
            m = b1 * m + (1 - b1) * delta
            if cls is FedAdam:
                v = b2 * v + (1 - b2) * delta**2
            else:
                v = v - (1 - b2) * delta**2 * math.copysign(1.0, v - delta**2)
            x = x + lr * m / (math.sqrt(v) + tau)
            steps.append(x)
        expected.append(steps)
    optimizer = cls(lr=lr, beta1=b1, beta2=b2, tau=tau)
    got = two_steps(optimizer)
    torch.testing.assert_close(got.T, torch.tensor(expected, dtype=torch.float64))
    # round 1 by hand (Adam): m = 0.01, v = 0.99e-6 + 1e-4 = 1.0099e-4, x = 1 + 0.01 * 0.01 / (0.0100494 + 0.001)
    if cls is FedAdam:
        assert got[0, 0].item() == pytest.approx(1 + 1e-4 / (math.sqrt(1.0099e-4) + 1e-3), rel=1e-6)
    assert set(optimizer.state_tensors()) == {"m/p", "v/p"}


def test_the_state_round_trips_and_continues_the_same():
    first = FedYogi()
    first.step({"p": X}, {"p": MEANS[0]})
    resumed = FedYogi()
    resumed.load_state_tensors(first.state_tensors())
    x = torch.tensor([1.2, -2.4])
    assert torch.equal(resumed.step({"p": x}, {"p": MEANS[1]})["p"], first.step({"p": x}, {"p": MEANS[1]})["p"])


def test_config_keys_are_checked_and_defaults_filled():
    assert from_config(ServerOptimizerConfig()) is None
    assert from_config(ServerOptimizerConfig("fedavgm")) == FedAvgM(lr=1.0, momentum=0.9)
    assert from_config(ServerOptimizerConfig("fedyogi", lr=0.1, tau=1e-2)) == FedYogi(lr=0.1, tau=1e-2)
    for overrides, key, says in [
        (["server.optimizer.name=adam"], "server.optimizer.name", "allowed values: none, fedavgm, fedadam, fedyogi"),
        (["server.optimizer.name=fedadam", "server.optimizer.momentum=0.9"], "momentum", "a setting of: fedavgm"),
        (["server.optimizer.lr=0.1"], "server.optimizer.lr", "none takes no lr"),
        (["server.optimizer.name=fedavgm", "server.optimizer.momentum=1"], "momentum", r"in \[0, 1\)"),
        (["server.optimizer.name=fedadam", "server.optimizer.tau=0"], "server.optimizer.tau", "> 0"),
    ]:
        with pytest.raises(ConfigError, match=rf"{key}.*{says}"):
            load_config(None, overrides)


# ------------------------------------------------------------------------------------------- tiny runs


def run(tiny_config, tmp_path, label: str, *extra: str):
    prepared = prepare(tiny_config(*extra, f"out_dir={tmp_path / label}"))
    metrics = execute(prepared)
    return prepared, metrics, load_file(str(prepared.out_dir / "model/model.safetensors"))


def test_fedbt_with_a_server_optimizer_steps_on_what_fedbt_aggregates(tiny_config, tmp_path, monkeypatch):
    """One round of fedbt + fedavgm (lr 2, no momentum): the tensors fedbt's aggregate returned move twice as far
    from the global model as fedbt's average; every other tensor stays as it was."""
    returned = {}
    original = Simulator._server_step

    def spy(self, average, round_info):
        returned.update(self.method.aggregate(self.global_params, average.result(self.global_params)))
        return original(self, average, round_info)

    monkeypatch.setattr(Simulator, "_server_step", spy)
    extra = ["method.name=fedbt", "federation.rounds=1", "server.optimizer={name: fedavgm, lr: 2, momentum: 0}"]
    prepared, _, saved = run(tiny_config, tmp_path, "fedavgm", *extra)
    start = load_model(TINY, "mlm", 0).state_dict()
    assert 0 < len(returned) < len(saved), "fedbt returns the trained tensors only"
    for name, value in saved.items():
        expected = start[name] + 2 * (returned[name] - start[name]) if name in returned else start[name]
        torch.testing.assert_close(value, expected)


def test_fedbt_plus_fedadam_differs_from_fedbt_and_the_fedadam_method_is_fedavg_plus_it(tiny_config, tmp_path):
    adam = "server.optimizer={name: fedadam, lr: 0.01}"
    _, fedbt, fedbt_model = run(tiny_config, tmp_path, "fedbt", "method.name=fedbt", "federation.rounds=2")
    _, composed, composed_model = run(
        tiny_config, tmp_path, "fedbt-adam", "method.name=fedbt", adam, "federation.rounds=2"
    )
    assert fedbt["rounds"][0]["train_loss"] == composed["rounds"][0]["train_loss"], "round 0 trains from one model"
    assert fedbt["rounds"][1]["train_loss"] != composed["rounds"][1]["train_loss"]
    assert any(not torch.equal(fedbt_model[n], composed_model[n]) for n in fedbt_model)
    assert fedbt["plan_sha256"] != composed["plan_sha256"], "another server step: no equal-plan warning"

    _, alias, alias_model = run(tiny_config, tmp_path, "alias", "method.name=fedadam", "federation.rounds=2")
    _, fedavg, fedavg_model = run(tiny_config, tmp_path, "avg-adam", "method.name=fedavg", adam, "federation.rounds=2")
    assert [r["train_loss"] for r in alias["rounds"]] == [r["train_loss"] for r in fedavg["rounds"]]
    assert all(torch.equal(alias_model[n], fedavg_model[n]) for n in alias_model)


def test_a_method_with_its_own_server_optimizer_refuses_a_second(tiny_config):
    with pytest.raises(ConfigError, match="server.optimizer.name.*method fedyogi already runs the fedyogi"):
        prepare(tiny_config("method.name=fedyogi", "server.optimizer.name=fedavgm"))


def test_a_killed_run_with_a_server_optimizer_resumes_exactly(tiny_config, tmp_path, monkeypatch):
    extra = ["method.name=fedbt", "federation.rounds=3", "server.optimizer.name=fedyogi"]
    _, checkpoint = kill_and_resume(tiny_config, tmp_path, monkeypatch, extra)
    state = json.loads((checkpoint / "state.json").read_text())
    moments = load_file(str(checkpoint / state["method_tensors"]))
    assert all(k.startswith(SERVER_OPTIMIZER) for k in moments) and {k.split("/")[1] for k in moments} == {"m", "v"}
