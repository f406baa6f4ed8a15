"""The memory estimate of a client plan (fedbt.memory): hand-computed tiny cases, the estimate against what a tiny
local step really holds, and the budget policies warn / drop / refuse with a method that shrinks its plan to fit."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from fedbt.config import ModelConfig
from fedbt.errors import ConfigError
from fedbt.federated.method import ClientPlan, create_method
from fedbt.federated.tiers import Tier
from fedbt.ledger import MB, OVER_BUDGET, TRAINED, Ledger
from fedbt.memory import MemorySettings, activation_bytes, estimate, fit_plan, memory_settings
from fedbt.models import (
    ModelArch,
    build_local_model,
    load_model,
    load_tokenizer,
    local_to_global_names,
    meta_model,
    model_config_for,
)
from fedbt.run import execute, prepare
from fedbt.training.loop import adamw, training_state_bytes
from fedbt.training.objectives import ObjectiveSettings, get_objective

TINY = ModelConfig(source="tiny", tiny_layers=2, tiny_hidden=16, tiny_heads=2, tiny_ffn=32)


def tiny_arch(head: str = "classification", num_labels: int = 3) -> ModelArch:
    return ModelArch.from_model(meta_model(model_config_for(TINY, num_labels), head))


# ------------------------------------------------------------------------------------------ hand-computed


def test_a_plan_training_the_top_layer_and_the_classifier_hand_computed():
    """H = 16, A = 2 heads, I = 32, 3 labels; B = 2 sequences of S = 4 (T = 8); layer 1 and the head train.

    Layer 0 is below every trained tensor: it keeps nothing. Layer 1 keeps 10 T H (its input, Q, K, V, the
    attention-output input, two dropout masks, two LayerNorm inputs, the FFN input) + 2 T I (GELU in and out) +
    3 B A S^2 (probabilities, their dropout mask, the dropped copy) + 4 T (two LayerNorms' mean and rstd)
    = 1280 + 512 + 192 + 32 = 2016 elements. The head: the pooler's input, tanh output, dropout mask and the
    classifier's input (4 x B H = 128) and the log-softmax (B x 3 = 6): 134 elements; plus 2 int64 targets.
    """
    arch = tiny_arch()
    trained = arch.layer_params(1) + arch.head_params()
    plan = ClientPlan((0, 1), frozenset(trained))
    settings = MemorySettings(batch_size=2, seq_len=4, head="classification", predicted=0)
    assert activation_bytes(arch, plan, settings) == (2016 + 134) * 4 + 2 * 8
    layer = 4 * (16 * 16 + 16) + (16 * 32 + 32) + (32 * 16 + 16) + 2 * 2 * 16
    assert arch.numel(arch.layer_params(1)) == layer == 2224
    found = estimate(arch, plan, settings, extra_numel=10)
    assert found.params == 4 * arch.numel(arch.names)
    assert found.gradients == 4 * arch.numel(trained) and found.optimizer == 2 * found.gradients
    assert found.extra == 40
    assert found.total == found.params + 3 * found.gradients + (2016 + 134) * 4 + 16 + 40


def test_stale_copies_and_a_repeated_layer_count_once_per_local_position():
    """FedBT's local model may hold a global layer twice (sampling with replacement): two copies of its
    parameters; a stale position does not train, so it has no gradient and no moments."""
    arch = tiny_arch()
    settings = MemorySettings(2, 4, "classification", 0)
    head = arch.numel(arch.head_params())
    twice = estimate(arch, ClientPlan((0, 1, 1), frozenset(arch.layer_params(1))), settings)
    assert twice.params == 4 * (arch.numel(arch.names) + 2224)
    assert twice.gradients == 4 * 2 * 2224
    stale = ClientPlan((0, 1, 1), frozenset(arch.layer_params(1) + arch.head_params()), frozenset({2}))
    assert estimate(arch, stale, settings).gradients == 4 * (2224 + head)


def test_nothing_trained_keeps_no_activations():
    arch = tiny_arch()
    settings = MemorySettings(4, 16, "classification", 0)
    assert activation_bytes(arch, ClientPlan((0, 1), frozenset()), settings) == 0


# ----------------------------------------------------------------------------------- against a real step


def _measured(head: str, plan_of, batch: int = 4, length: int = 16) -> tuple[int, int, int, int]:
    """What a tiny local step really holds: ``(saved activation bytes, their estimate, training state after an
    AdamW step, its estimate)``. Saved activations are summed by ``saved_tensors_hooks`` (each storage once,
    parameters excluded): exact, unlike the CPU's peak RSS."""
    config = ModelConfig(source="tiny", tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64)
    model = load_model(config, head, 0, None if head == "mlm" else 3)
    arch = ModelArch.from_model(model)
    plan = plan_of(arch)
    local = build_local_model(model, len(plan.layer_map))
    names = local_to_global_names(arch, plan.layer_map)
    for name, param in local.named_parameters():
        param.requires_grad_(names[name] in plan.trainable)
    objective = get_objective(head).build(load_tokenizer(config), ObjectiveSettings(max_length=length))
    generator = torch.Generator().manual_seed(0)
    words = [torch.randint(1000, 5000, (length - 2,), generator=generator).tolist() for _ in range(batch)]
    batch_tensors = objective.collate([{"input_ids": [101, *w, 102], "label": 1} for w in words], generator)
    params = {p.untyped_storage().data_ptr() for p in local.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        pointer = tensor.untyped_storage().data_ptr()
        if pointer not in params:
            saved[pointer] = max(saved.get(pointer, 0), tensor.numel() * tensor.element_size())
        return tensor

    local.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = objective.loss(local, batch_tensors)
    loss.backward()
    optimizer = adamw(local, 1e-3, 0.01)
    optimizer.step()
    settings = MemorySettings(batch, length, head, objective.predicted_tokens(batch_tensors))
    found = estimate(arch, plan, settings)
    state = found.params + found.gradients + found.optimizer
    return sum(saved.values()), found.activations, training_state_bytes(local, optimizer), state


def _full(arch: ModelArch) -> ClientPlan:
    return ClientPlan(tuple(range(arch.num_layers)), frozenset(arch.names))


def _fedbt(arch: ModelArch) -> ClientPlan:  # FedBT's round with l = 1: positions 0, 1 and a deep layer
    return ClientPlan((0, 1, 3), frozenset(arch.layer_params(1) + arch.head_params()))


@pytest.mark.parametrize("head", ["mlm", "classification"])
@pytest.mark.parametrize("plan_of", [_full, _fedbt], ids=["fedavg", "fedbt"])
def test_the_estimate_matches_what_a_tiny_local_step_holds(head, plan_of):
    """Margin: the activations within 0.1 % (the estimate leaves out the position-id buffer's view and the loss
    scalar: bytes, against 0.2-1.8 MB), the training state (parameters, gradients, AdamW moments) exact."""
    saved, activations, state, estimated_state = _measured(head, plan_of)
    assert activations == pytest.approx(saved, rel=1e-3)
    assert estimated_state == state
    total = saved + state
    assert activations + estimated_state == pytest.approx(total, rel=1e-3)


# ---------------------------------------------------------------------------------------- budget policies

TIERS = "federation.tiers=[{name: weak, share: 0.34, local_layers: 2, memory_mb: 5}, {name: strong, share: 0.66}]"


def _run(tiny_config, tmp_path, name: str, *extra: str) -> tuple[dict, list]:
    prepared = prepare(tiny_config(f"out_dir={tmp_path / name}", "federation.rounds=2", *extra))
    metrics = execute(prepared)
    return metrics, Ledger(prepared.out_dir / "ledger.csv").rows()


def test_drop_sits_the_over_budget_client_out_and_its_update_never_enters_the_average(tiny_config, tmp_path):
    """fedavg's full plan (about 17 MB on the tiny model) cannot fit the weak tier's 5 MB: under drop the weak
    client sits both rounds out, with the estimate and the budget in its row; the model is exactly that of
    fedavg-drop-weak (the same clients trained, the weak one never averaged)."""
    metrics, rows = _run(tiny_config, tmp_path, "drop", "method.name=fedavg", TIERS, "federation.budget_policy=drop")
    weak = [row for row in rows if row.tier == "weak"]
    assert len(weak) == 2 and all(row.status == OVER_BUDGET for row in weak)
    for row in weak:
        assert row.upload_bytes == row.download_bytes == row.analytic_flops == row.measured_flops == row.steps == 0
        assert row.memory_budget_mb == 5.0 and row.memory_estimate_bytes > 5 * MB
    assert all(row.status == TRAINED and row.memory_estimate_bytes > 0 for row in rows if row.tier == "strong")
    assert metrics["dropped_client_rounds_pct"] == pytest.approx(100 / 3)
    assert metrics["tiers"]["weak"]["dropped_client_rounds_pct"] == 100.0
    assert metrics["tiers"]["weak"]["over_budget_client_rounds"] == 2
    assert metrics["tiers"]["strong"]["dropped_client_rounds_pct"] == 0.0
    _run(tiny_config, tmp_path, "reference", "method.name=fedavg-drop-weak", TIERS.replace(", memory_mb: 5", ""))
    dropped, reference = (load_file(str(tmp_path / d / "model/model.safetensors")) for d in ("drop", "reference"))
    assert all(torch.equal(dropped[k], reference[k]) for k in reference)


def test_warn_trains_every_plan_and_marks_the_estimate_over_budget(tiny_config, tmp_path):
    metrics, rows = _run(tiny_config, tmp_path, "warn", "method.name=fedavg", TIERS)
    assert all(row.status == TRAINED for row in rows)
    assert metrics["dropped_client_rounds_pct"] == 0.0
    weak = metrics["tiers"]["weak"]
    assert weak["estimate_exceeds_budget"] is True and weak["max_memory_estimate_mb"] > 5
    assert metrics["tiers"]["strong"]["estimate_exceeds_budget"] is None, "no budget"


def test_refuse_fails_before_training_naming_the_tier_the_estimate_and_the_budget(tiny_config, tmp_path):
    config = tiny_config("method.name=fedavg", TIERS, "federation.budget_policy=refuse")
    with pytest.raises(ConfigError, match=r"federation.tiers\[0\].memory_mb'.* MB in round 0, over the budget of 5 MB"):
        prepare(config)
    assert not (tmp_path / "run").exists(), "nothing trained, nothing written"


def test_a_bad_policy_fails_naming_the_key_and_the_allowed_values(tiny_config):
    with pytest.raises(ConfigError, match=r"'federation.budget_policy': got 'never', allowed values: warn, drop"):
        tiny_config("federation.budget_policy=never")


def test_fedbt_shrinks_its_depth_to_the_largest_that_fits(tiny_config):
    """A budget between FedBT's plans at L_k = 2 and L_k = 3: drop and refuse plan the client at L_k = 2 (warn
    keeps L_k = 4 and marks it); a budget below even L_k = l + 1 drops the client."""
    config = tiny_config("method.name=fedbt", "federation.rounds=2")
    method = create_method("fedbt", prepare(config).method.arch, 2, 0, {}, "pretrain")
    settings = memory_settings(config, method.arch)
    size = {depth: estimate(method.arch, method.plan(1, 0, Tier(local_layers=depth)), settings).mb for depth in (2, 3)}
    assert size[2] < size[3]
    tier = Tier("weak", 1.0, local_layers=4, memory_mb=(size[2] + size[3]) / 2)
    for policy in ("drop", "refuse"):
        fitted = fit_plan(method, 1, 0, tier, settings, policy)
        assert fitted.shrunk == 2 and len(fitted.plan.layer_map) == 2 and not fitted.over_budget
        assert fitted.plan.trainable == frozenset(method.arch.layer_params(1) + method.arch.head_params())
    warned = fit_plan(method, 1, 0, tier, settings, "warn")
    assert len(warned.plan.layer_map) == 4 and warned.over_budget and not warned.dropped
    tight = Tier("weak", 1.0, local_layers=4, memory_mb=size[2] / 2)
    dropped = fit_plan(method, 1, 0, tight, settings, "drop")
    assert dropped.dropped and not dropped.plan.trainable
