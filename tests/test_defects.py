"""Regression tests for defects that bent results: stale copies trained, non-atomic checkpoints, empty clients,
the saved fine-tuning model, resumes across changed evaluation settings, AdamW's no-decay rule (BERT's and timm's
ViT), equal plans."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import fedbt.checkpoint as checkpoint_module
from fedbt.config import ModelConfig
from fedbt.errors import FedBTError
from fedbt.federated.method import create_method
from fedbt.federated.simulator import LocalTrainer, Simulator
from fedbt.ledger import NO_DATA, TRAINED
from fedbt.models import ModelArch, load_model, meta_model, model_config_for
from fedbt.run import execute, prepare
from fedbt.training.loop import adamw
from tests.conftest import die_after_checkpoint


def _rows(run_dir):
    with (run_dir / "ledger.csv").open() as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------- stale copies (fedbt-no-m)


def _stale_case():
    """A fedbt-no-m plan (6-layer tiny BERT, L_k = 4, 5 rounds) whose stale positions hold the trained layer."""
    config = model_config_for(ModelConfig(source="tiny", tiny_layers=6, tiny_hidden=16, tiny_heads=2, tiny_ffn=32))
    arch = ModelArch.from_model(meta_model(config, "mlm"))
    for seed in range(50):
        method = create_method("fedbt-no-m", arch, 5, seed, {"local_layers": 4}, "pretrain")
        for round_idx in range(1, 5):
            plan = method.plan(round_idx, 0)
            layer = method.schedule[round_idx]
            if any(plan.layer_map[j] == layer for j in plan.stale_positions):
                return config, seed, round_idx, plan, layer
    raise AssertionError("no stale duplicate of the trained layer found")


def test_a_stale_copy_of_the_trained_layer_is_never_trained_nor_uploaded():
    config, seed, round_idx, plan, layer = _stale_case()
    arch = ModelArch.from_model(meta_model(config, "mlm"))
    assert not any(plan.trains_position(j, arch) for j in plan.stale_positions)
    trained = [j for j in range(len(plan.layer_map)) if plan.trains_position(j, arch)]
    assert trained == [plan.layer_map.index(layer)], "only the fresh position of layer l trains"

    from fedbt.costs import analytic_train_flops

    counted = analytic_train_flops(arch, plan, sequences=4, seq_len=8, predicted_tokens=4)
    as_if_trained = type(plan)(plan.layer_map, plan.trainable)  # the defect: the stale copy of l trained too
    defect = analytic_train_flops(arch, as_if_trained, sequences=4, seq_len=8, predicted_tokens=4)
    stale_copies_of_l = sum(plan.layer_map[j] == layer for j in plan.stale_positions)
    weight_gradients = 4 * 8 * 2 * (4 * 16 * 16 + 2 * 16 * 32)  # tokens x W
    assert defect - counted == stale_copies_of_l * weight_gradients


def test_stale_positions_keep_the_starting_weights_and_stay_out_of_the_upload(tiny_config, tmp_path):
    config, seed, round_idx, plan, layer = _stale_case()
    run = tiny_config(
        "method.name=fedbt-no-m",
        "method.options={local_layers: 4}",
        "model.tiny_layers=6",
        "model.tiny_hidden=16",
        "model.tiny_ffn=32",
        f"seed={seed}",
        "federation.rounds=5",
    )
    prepared = prepare(run)
    model = load_model(prepared.model_config, "mlm", seed)
    captured = {}
    original = LocalTrainer._prepare_local_model

    def spy(self, client_plan, received):
        local, name_map = original(self, client_plan, received)
        captured["stale_trainable"] = [
            n for n, p in local.named_parameters() if self._is_stale(n, client_plan) and p.requires_grad
        ]
        return local, name_map

    simulator = Simulator(model, prepared.method, _setup(prepared, model), _ledger(tmp_path), tmp_path / "ck", "f")
    LocalTrainer._prepare_local_model = spy
    try:
        payload, row = simulator.train_client(round_idx, 0)
    finally:
        LocalTrainer._prepare_local_model = original
    assert captured["stale_trainable"] == []
    assert set(payload) == plan.trainable and row.status == TRAINED


def _setup(prepared, model):
    from fedbt.data.corpus import load_corpus
    from fedbt.federated.simulator import SimulationSetup
    from fedbt.models import load_tokenizer
    from fedbt.training.objectives import make_objective

    tokenizer = load_tokenizer(prepared.model_config)
    sentences = load_corpus("cs", prepared.config.data.data_dir, max_examples=24)
    examples = [{"input_ids": ids} for ids in tokenizer(sentences, truncation=True, max_length=32)["input_ids"]]
    return SimulationSetup(
        clients=[examples[:8], examples[8:16], examples[16:]],
        objective=make_objective("mlm", tokenizer, max_length=32, padding="fixed"),
        local=prepared.config.local,
        rounds=prepared.config.federation.rounds,
        fraction=1.0,
        aggregation="weighted",
        seed=prepared.config.seed,
        device=torch.device("cpu"),
    )


def _ledger(tmp_path):
    from fedbt.ledger import Ledger

    return Ledger(tmp_path / "ledger.csv")


# ------------------------------------------------------------------------------- checkpoints


def test_a_kill_between_weights_and_state_resumes_with_identical_results(tiny_config, tmp_path, monkeypatch):
    reference = execute(prepare(tiny_config(f"out_dir={tmp_path / 'reference'}")))
    original = checkpoint_module._atomic_write_text
    calls = []

    def die_before_the_second_state(path, text):
        calls.append(path)
        if len(calls) == 2:  # round 1's weights are on disk, its state is not
            raise KeyboardInterrupt("killed between the weights and the state file")
        original(path, text)

    monkeypatch.setattr(checkpoint_module, "_atomic_write_text", die_before_the_second_state)
    prepared = prepare(tiny_config(f"out_dir={tmp_path / 'killed'}"))
    with pytest.raises(KeyboardInterrupt):
        execute(prepared)
    directory = prepared.out_dir / "checkpoint"
    state = json.loads((directory / "state.json").read_text())
    assert state["completed_round"] == 0 and (directory / state["weights"]).is_file()
    monkeypatch.setattr(checkpoint_module, "_atomic_write_text", original)

    resumed = execute(prepare(tiny_config(f"out_dir={tmp_path / 'killed'}")))
    drop = {"round_seconds", "client_seconds", "client_wall_seconds"}
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed["rounds"]] == [
        {k: v for k, v in r.items() if k not in drop} for r in reference["rounds"]
    ]
    final = load_file(str(prepared.out_dir / "model/model.safetensors"))
    expected = load_file(str(tmp_path / "reference/model/model.safetensors"))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert [int(r["round"]) for r in _rows(prepared.out_dir)] == [0] * 3 + [1] * 3 + [2] * 3


def test_a_checkpoint_keeps_only_the_files_its_state_names(tiny_config, monkeypatch):
    names = []
    original = Simulator._checkpoint

    def spy(self, round_idx):
        original(self, round_idx)
        names.append(sorted(p.name for p in self.checkpoint_dir.iterdir()))

    monkeypatch.setattr(Simulator, "_checkpoint", spy)
    execute(prepare(tiny_config()))
    assert names == [[f"global-r{r}.safetensors", "state.json"] for r in range(3)]


def test_a_resume_refuses_changed_evaluation_settings(tiny_config, monkeypatch):
    def die(self, round_idx):
        raise KeyboardInterrupt

    original = Simulator._checkpoint
    monkeypatch.setattr(Simulator, "_checkpoint", lambda self, r: original(self, r) or die(self, r))
    finetune = ("scenario=finetune", "data.corpus=null", "data.task=rct", "local.objective=classification")
    with pytest.raises(KeyboardInterrupt):
        execute(prepare(tiny_config(*finetune, "evaluation.max_eval_examples=16")))
    monkeypatch.setattr(Simulator, "_checkpoint", original)
    with pytest.raises(FedBTError, match="evaluation settings"):
        execute(prepare(tiny_config(*finetune, "evaluation.max_eval_examples=24")))


# ------------------------------------------------------------------------------- empty clients


@pytest.mark.parametrize("scheme", ["skewed", "quantity"])
def test_an_empty_client_sits_the_round_out(tiny_config, scheme):
    prepared = prepare(
        tiny_config(
            "federation.clients=12",
            f"federation.partition.scheme={scheme}",
            "federation.partition.alpha=0.1",
            "federation.partition.min_size=0",
            "data.max_examples=24",
            "federation.rounds=2",
        )
    )
    metrics = execute(prepared)
    sizes = metrics["partition"]["sizes"]
    assert 0 in sizes, "the setting leaves a client without examples"
    rows = _rows(prepared.out_dir)
    for row in rows:
        empty = sizes[int(row["client"])] == 0
        assert (row["status"] == NO_DATA) == empty
        if empty:
            assert int(row["upload_bytes"]) == int(row["measured_flops"]) == int(row["steps"]) == 0
    costs = metrics["costs"]
    assert costs["idle_client_rounds"] == 2 * sizes.count(0)
    assert costs["client_rounds"] == 2 * (12 - sizes.count(0))


# ----------------------------------------------------------------------- the saved fine-tuning model


def test_federated_fine_tuning_saves_the_model_of_the_round_it_reports(tiny_config, tmp_path, monkeypatch):
    import fedbt.run as run_module

    monkeypatch.setattr(run_module, "selected_round", lambda records, primary: 0 if records else None)
    snapshots = {}
    original = Simulator._checkpoint

    def spy(self, round_idx):
        snapshots[round_idx] = {n: p.detach().clone() for n, p in self.global_params.items()}
        original(self, round_idx)

    monkeypatch.setattr(Simulator, "_checkpoint", spy)
    finetune = ("scenario=finetune", "data.corpus=null", "data.task=rct", "local.objective=classification")
    prepared = prepare(tiny_config(*finetune))
    metrics = execute(prepared)
    assert metrics["selection"]["round"] == 0
    saved = load_file(str(prepared.out_dir / "model/model.safetensors"))
    assert all(torch.equal(saved[n], snapshots[0][n]) for n in saved if n in snapshots[0])
    assert any(not torch.equal(snapshots[0][n], snapshots[2][n]) for n in snapshots[0])


def test_the_selected_round_survives_a_resume(tiny_config, tmp_path, monkeypatch):
    import fedbt.run as run_module

    monkeypatch.setattr(run_module, "selected_round", lambda records, primary: 0 if records else None)
    finetune = ("scenario=finetune", "data.corpus=null", "data.task=rct", "local.objective=classification")
    reference = prepare(tiny_config(*finetune, f"out_dir={tmp_path / 'reference'}"))
    execute(reference)
    original = Simulator._checkpoint

    die_after_checkpoint(monkeypatch, 1)
    killed = prepare(tiny_config(*finetune, f"out_dir={tmp_path / 'killed'}"))
    with pytest.raises(KeyboardInterrupt):
        execute(killed)
    state = json.loads((killed.out_dir / "checkpoint/state.json").read_text())
    assert state["best_round"] == 0 and state["best_weights"] == "best-r0.safetensors"
    monkeypatch.setattr(Simulator, "_checkpoint", original)
    execute(prepare(tiny_config(*finetune, f"out_dir={tmp_path / 'killed'}")))
    saved = load_file(str(killed.out_dir / "model/model.safetensors"))
    expected = load_file(str(reference.out_dir / "model/model.safetensors"))
    assert all(torch.equal(saved[n], expected[n]) for n in expected)


# ----------------------------------------------------------------------------------- AdamW


def _groups(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], list[float]]:
    """The decayed and undecayed parameters (by name) of :func:`adamw` over ``model``, and the groups' decays."""
    optimizer = adamw(model, lr=1e-3, weight_decay=0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay, no_decay = ({names[id(p)]: p for p in g["params"]} for g in optimizer.param_groups)
    return decay, no_decay, [g["weight_decay"] for g in optimizer.param_groups]


def test_adamw_skips_weight_decay_on_vit_tokens_position_embeddings_and_one_dimensional_tensors():
    from transformers import ViTForMaskedImageModeling

    from fedbt.models import arch_config

    model = ViTForMaskedImageModeling(arch_config("vit:layers=2,hidden=16,heads=2,ffn=32,image=8,patch=4"))
    decay, no_decay, decays = _groups(model)
    tokens = {"vit.embeddings.cls_token", "vit.embeddings.position_embeddings", "vit.embeddings.mask_token"}
    assert decays == [0.01, 0.0]
    assert {n for n, p in no_decay.items() if p.ndim > 1} == tokens  # timm: cls token, position embeddings, mask
    assert {n for n, p in no_decay.items() if p.ndim == 1} == {n for n, p in model.named_parameters() if p.ndim == 1}
    # 4 patches + [CLS] -> (1, 5, 16) positions, (1, 1, 16) tokens; 1-D: patch bias 16, per layer 3 * 16 (q, k, v)
    # + 16 + 32 + 16 (dense biases) + 4 * 16 (two LayerNorms), final LayerNorm 32, decoder bias 4 * 4 * 3 = 48
    assert sum(p.numel() for p in no_decay.values()) == 80 + 16 + 16 + 16 + 2 * 176 + 32 + 48
    assert set(decay) == {n for n, p in model.named_parameters() if p.ndim > 1} - tokens
    assert "vit.embeddings.patch_embeddings.projection.weight" in decay and "decoder.0.weight" in decay


def test_adamw_on_bert_skips_weight_decay_on_one_dimensional_tensors_only():
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32)
    model = BertForMaskedLM(config)
    decay, no_decay, _ = _groups(model)
    assert set(no_decay) == {n for n, p in model.named_parameters() if p.ndim == 1}
    assert set(decay) == {n for n, p in model.named_parameters() if p.ndim > 1}
    assert "bert.embeddings.position_embeddings.weight" in decay  # an embedding table, decayed as before


# --------------------------------------------------------------------------------- equal plans


def test_methods_with_identical_plans_give_identical_flop_columns(tiny_config, tmp_path):
    from fedbt.report.runs import load_run

    runs = {}
    for name in ("fedbt", "fedbt-no-sp"):
        prepared = prepare(tiny_config(f"method.name={name}", "federation.rounds=2", f"out_dir={tmp_path / name}"))
        execute(prepared)
        runs[name] = load_run(prepared.out_dir)
    a, b = runs["fedbt"], runs["fedbt-no-sp"]
    assert a.plan_sha256 == b.plan_sha256
    assert a.costs.measured_flops == b.costs.measured_flops > 0
    assert a.costs.analytic_flops == b.costs.analytic_flops > 0
    assert a.costs.upload_mb == b.costs.upload_mb


def test_the_ablation_study_gives_every_variant_its_own_plans():
    import yaml

    from fedbt.costs import meta_arch

    study = yaml.safe_load(Path("config/ablation.yaml").read_text())
    settings = {**study["defaults"], **study["scenarios"]["pretrain"]}
    rounds, clients = settings["federation.rounds"], settings["federation.clients"]
    arch = ModelArch.from_model(meta_arch("minilm", "mlm")[0])
    plans = {}
    for variant in study["studies"]["ablation"]["variants"]:
        spec = study["variants"][variant] or {}
        method = create_method(spec.get("method", variant), arch, rounds, 0, spec.get("options"), "pretrain")
        plans[variant] = [
            (plan.layer_map, sorted(plan.trainable), sorted(plan.stale_positions))
            for plan in (method.plan(r, k) for r in range(rounds) for k in range(clients))
        ]
    distinct = {json.dumps(p) for p in plans.values()}
    assert len(distinct) == len(plans), "two ablation variants would be one method at this number of rounds"
