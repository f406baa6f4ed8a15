"""FedProx's variable local work (the paper's inexact local solves): each tier runs its share of the local steps,
stated (``local_work``) or from its depth share ``L_k / L_G``; the ledger's steps and FLOPs follow; ``mu = 0`` at
full work is FedAvg; and the client-side hook and a server optimizer run the same over Flower."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fedbt.config import ModelConfig, load_config
from fedbt.errors import ConfigError
from fedbt.federated.method import create_method
from fedbt.federated.tiers import FULL, Tier, deal
from fedbt.ledger import Ledger
from fedbt.models import ModelArch, meta_model, model_config_for
from fedbt.run import execute, prepare
from tests.conftest import REPO

TINY = ModelConfig(source="tiny", max_length=32, tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64)
TIERS = "federation.tiers=[{share: 0.5, local_layers: 2}, {share: 0.25, local_layers: 3}, {share: 0.25}]"
FULL_WORK = (
    "federation.tiers=[{share: 0.5, local_layers: 2, local_work: 1}, {share: 0.25, local_layers: 3, local_work: 1},"
    " {share: 0.25}]"
)


def tier(local_layers: int | None = None, local_work: float | None = None) -> Tier:
    return Tier("t", 1.0, local_layers, local_work=local_work)


def test_each_tier_runs_its_share_of_the_local_steps():
    arch = ModelArch.from_model(meta_model(model_config_for(TINY), "mlm"))  # L_G = 4
    fedprox = create_method("fedprox", arch, 2, 0, {}, "pretrain")
    assert fedprox.local_work(tier(2)) == 0.5 and fedprox.local_work(tier(3, 0.25)) == 0.25
    assert fedprox.local_work(FULL) == 1.0
    # floor(f S + 1/2), at least 1: 0.5 of 4 = 2; 0.75 of 4 = 3; 0.5 of 3 = 1.5 -> 2; 0.25 of 3 = 0.75 -> 1;
    # 0.1 of 2 = 0.2 -> 1 (at least one step); full: all
    assert [fedprox.local_steps(t, s) for t, s in [(tier(2), 4), (tier(3), 4), (tier(2), 3)]] == [2, 3, 2]
    assert [fedprox.local_steps(t, s) for t, s in [(tier(None, 0.25), 3), (tier(None, 0.1), 2), (FULL, 5)]] == [1, 1, 5]
    fedavg = create_method("fedavg", arch, 2, 0, {}, "pretrain")
    assert fedavg.local_steps(tier(2), 4) == 4, "the default hook: every method but FedProx runs all the steps"


def test_local_work_is_checked():
    for value, says in [(0, r"in \(0, 1\]"), (1.5, r"in \(0, 1\]")]:
        with pytest.raises(ConfigError, match=rf"federation.tiers\[0\].local_work.*{says}"):
            load_config(None, [f"federation.tiers=[{{share: 1, local_work: {value}}}]"])


def tiered(tiny_config, tmp_path, label: str, *extra: str):
    prepared = prepare(
        tiny_config(
            "federation.clients=4", "federation.rounds=2", "local.steps=4", *extra, f"out_dir={tmp_path / label}"
        )
    )
    metrics = execute(prepared)
    dealt = deal(prepared.method.tiers, 4, prepared.config.seed)
    rows = {(r.round, r.client): r for r in Ledger(prepared.out_dir / "ledger.csv").rows()}
    return metrics, rows, dealt, load_file(str(prepared.out_dir / "model/model.safetensors"))


def test_fedprox_tiers_run_the_fraction_of_steps_and_the_ledger_follows(tiny_config, tmp_path):
    _, prox, dealt, _ = tiered(tiny_config, tmp_path, "prox", "method.name=fedprox", TIERS)
    _, avg, _, _ = tiered(tiny_config, tmp_path, "avg", "method.name=fedavg", TIERS)
    expected = {2: 2, 3: 3, None: 4}  # L_k / L_G of 4 local steps
    assert {t.local_layers for t in dealt} == set(expected)
    for key, row in prox.items():
        steps = expected[dealt[key[1]].local_layers]
        assert row.steps == steps and avg[key].steps == 4
        if steps < 4:  # the same batches, fewer of them
            assert row.tokens < avg[key].tokens and row.analytic_flops < avg[key].analytic_flops
            assert 0 < row.measured_flops < avg[key].measured_flops
        elif key[0] == 0:  # round 0 of the full tier: the same work as fedavg's client
            assert (row.tokens, row.analytic_flops) == (avg[key].tokens, avg[key].analytic_flops)
    stated = "federation.tiers=[{share: 0.5, local_layers: 2, local_work: 0.75}, {share: 0.5, local_work: 0.25}]"
    _, rows, dealt, _ = tiered(tiny_config, tmp_path, "stated", "method.name=fedprox", stated)
    assert all(r.steps == (3 if dealt[c].local_layers == 2 else 1) for (_, c), r in rows.items()), "stated shares win"


def test_fedprox_with_mu_0_and_full_work_is_fedavg(tiny_config, tmp_path):
    prox, _, _, prox_model = tiered(
        tiny_config, tmp_path, "prox", "method.name=fedprox", "method.options={mu: 0}", FULL_WORK
    )
    avg, _, _, avg_model = tiered(tiny_config, tmp_path, "avg", "method.name=fedavg", FULL_WORK)
    assert [r["train_loss"] for r in prox["rounds"]] == [r["train_loss"] for r in avg["rounds"]]
    assert all(torch.equal(prox_model[n], avg_model[n]) for n in avg_model)


@pytest.mark.flower
@pytest.mark.xdist_group("flower")
def test_fedprox_local_work_and_a_server_optimizer_run_the_same_over_flower(tmp_path):
    """The client-side hook (``local_steps``, by the tier the ClientApp deals itself) and the server optimizer (in the
    ServerApp's round loop) give the in-process run exactly."""
    pytest.importorskip("flwr", reason="needs the Flower extra: pip install -e '.[flower]'")
    from fedbt.flower.local import LocalFederation
    from tests.test_flower import THREADS, assert_same_run, in_process, run_settings

    tiers = "federation.tiers=[{share: 0.34, local_layers: 2}, {share: 0.33, local_layers: 3}, {share: 0.33}]"
    momentum = "server.optimizer={name: fedavgm, lr: 1.5, momentum: 0.5}"
    settings = run_settings(tmp_path, "method.name=fedprox", "local.steps=4", tiers, momentum)
    with LocalFederation("simulation", 3, tmp_path / "flower", cwd=REPO, env=THREADS) as federation:
        run = federation.run(settings, timeout=900)
        assert run.succeeded, f"{run.status}\n{run.output[-4000:]}\n{federation.logs()}"
    in_process(settings, tmp_path / "reference")
    assert_same_run(tmp_path / "run", tmp_path / "reference")
    assert sorted(r.steps for r in Ledger(tmp_path / "run/ledger.csv").rows() if r.round == 0) == [2, 3, 4]
