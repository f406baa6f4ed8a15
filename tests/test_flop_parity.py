"""Measured against analytic FLOPs for every registered method, in the simulator, on a tiny BERT.

Every method runs a short federation (two clients of two resource tiers, so depth- and width-scaled methods slice)
with ``FlopCounterMode`` on every local step; each ledger row's measured FLOPs must equal the analytic model's
exactly under eager attention (the model's count) and within 2 % under PyTorch's fused attention kernel (SDPA
without attention dropout; its backward recomputes ``Q K^T`` and every operand's gradient: up to 1.5 % here, the
most for LoRA). With attention dropout, as in training by default, CPU SDPA runs eager matmuls and counts exactly.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from fedbt.config import LocalConfig
from fedbt.federated.method import ClientPlan, available_methods, create_method
from fedbt.federated.simulator import SimulationSetup, Simulator
from fedbt.federated.tiers import Tier
from fedbt.ledger import TRAINED, Ledger, LedgerRow
from fedbt.training.objectives import MaskedLM, SequenceClassification

VOCAB, LENGTH, ROUNDS = 64, 16, 3
TIERS = (Tier("weak", 0.5, local_layers=3, width=0.5), Tier("full", 0.5))
OPTIONS = {
    "distill": {"student": "a 3-layer tiny BERT"},  # the student is the model the test builds
    "fedbt-no-sp": {"local_layers": 4},  # its sequential schedule reaches layer 2 in 3 rounds
}
SCENARIOS = {"pretrain": "mlm", "finetune": "classification"}
CASES = [(name, scenario) for name, cls in available_methods().items() for scenario in cls.scenarios]


def tiny_bert(head: str, attention: str, layers: int) -> torch.nn.Module:
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=128,
        max_position_embeddings=LENGTH,
        num_labels=3,
        attn_implementation=attention,
        attention_probs_dropout_prob=0.0 if attention == "sdpa" else 0.1,  # with dropout, CPU SDPA runs eager matmuls
    )
    torch.manual_seed(0)
    return (BertForMaskedLM if head == "mlm" else BertForSequenceClassification)(config)


def client_examples(head: str, client: int) -> list[dict]:
    """Random token sequences of 5..16 tokens (dynamic padding: steps of several lengths)."""
    generator = torch.Generator().manual_seed(client)
    lengths = torch.randint(5, LENGTH + 1, (8,), generator=generator).tolist()
    return [
        {"input_ids": torch.randint(4, VOCAB, (n,), generator=generator).tolist(), "label": i % 3}
        for i, n in enumerate(lengths)
    ]


def ledger_rows(name: str, scenario: str, attention: str, tmp_path) -> list[LedgerRow]:
    """The ledger of ``ROUNDS`` rounds of ``name`` with every local step counted."""
    head = SCENARIOS[scenario]
    model = tiny_bert(head, attention, layers=3 if name == "distill" else 4)
    method = create_method(name, model, ROUNDS, 0, OPTIONS.get(name, {}), scenario, TIERS)
    objective = (
        MaskedLM(pad_id=0, mask_id=1, vocab_size=VOCAB, special_ids=frozenset(range(4)), max_length=LENGTH)
        if head == "mlm"
        else SequenceClassification(pad_id=0)
    )
    local = LocalConfig(objective=head, steps=2, batch_size=4, lr=1e-3, flop_count_steps=-1)
    clients = [client_examples(head, k) for k in range(len(TIERS))]
    setup = SimulationSetup(clients, objective, local, ROUNDS, 1.0, "weighted", 0, torch.device("cpu"), TIERS)
    ledger = Ledger(tmp_path / "ledger.csv")
    Simulator(method.prepare_model(model), method, setup, ledger, tmp_path / "checkpoint", name).run()
    return ledger.rows()


@pytest.mark.parametrize(("name", "scenario"), CASES)
@pytest.mark.parametrize(("attention", "tolerance"), [("eager", 0.0), ("sdpa", 0.02)])
def test_measured_flops_match_the_analytic_model(name, scenario, attention, tolerance, tmp_path):
    rows = ledger_rows(name, scenario, attention, tmp_path)
    trained = [row for row in rows if row.status == TRAINED and row.steps]
    assert all(row.measured_steps == row.steps for row in rows), "every step counted"
    for row in trained:
        assert row.analytic_flops > 0
        assert row.measured_flops == pytest.approx(row.analytic_flops, rel=tolerance, abs=0), (row.round, row.client)
    if name == "none":
        assert not trained and all(row.measured_flops == row.analytic_flops == 0 for row in rows)
    else:
        assert trained


@pytest.mark.parametrize(("count", "counted"), [(-1, 3), (1, 1), (0, 0)])
def test_measured_steps_say_how_many_steps_were_counted(count, counted):
    """Every step counted, or the first scaled to the others by the analytic model of their shapes (exact here:
    eager attention), or none."""
    from fedbt.costs import analytic_train_flops
    from fedbt.models import ModelArch
    from fedbt.training import loop

    model, objective = tiny_bert("classification", "eager", layers=2), SequenceClassification(pad_id=0)
    arch = ModelArch.from_model(model)
    plan = ClientPlan((0, 1), frozenset(arch.names))

    def analytic(shapes) -> int:
        return sum(analytic_train_flops(arch, plan, s, n, p, "classification") for n, (s, p) in shapes.items())

    def train(flop_count_steps: int) -> loop.TrainResult:
        return loop.train(
            model,
            objective,
            client_examples("classification", 0),
            steps=3,
            batch_size=3,
            lr=1e-3,
            weight_decay=0.0,
            generator=torch.Generator().manual_seed(0),
            device=torch.device("cpu"),
            flop_count_steps=flop_count_steps,
            flops_model=analytic,
        )

    result, every = train(count), train(-1)
    assert len(every.shapes) > 1, "steps of several padded lengths"
    assert result.measured_steps == counted
    assert every.measured_flops == analytic(every.shapes) > 0
    assert result.measured_flops == (every.measured_flops if counted else 0)


def test_flop_count_steps_allows_every_step_and_names_its_values(tiny_config):
    from fedbt.errors import ConfigError

    assert tiny_config("local.flop_count_steps=-1").local.flop_count_steps == -1
    with pytest.raises(ConfigError, match=r"local.flop_count_steps.*-1 \(every step\), 0 \(none\)"):
        tiny_config("local.flop_count_steps=-2")


def test_the_ledger_sums_measured_steps_per_run(tmp_path):
    ledger = Ledger(tmp_path / "ledger.csv")
    ledger.append([LedgerRow(0, 0, 8, steps=2, measured_steps=2), LedgerRow(0, 1, 8, steps=2, measured_steps=1)])
    assert [row.measured_steps for row in ledger.rows()] == [2, 1]
    assert ledger.summary()["total_measured_steps"] == 3
