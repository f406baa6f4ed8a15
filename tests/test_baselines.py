"""Baselines: trainable sets, uploaded tensors and their bytes, deployed models, two-round runs, cost tables."""

from __future__ import annotations

import argparse
import json
import math
import re

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, BertForMaskedLM, DistilBertConfig

from baselines.prune_depth import uniform_layers
from baselines.prune_magnitude import magnitude_mask
from fedbt import cli_costs, cli_distill
from fedbt.config import ModelConfig
from fedbt.costs import cost_table
from fedbt.data.corpus import load_corpus
from fedbt.distill import COSTS_FILE, DistillSettings, distill_student, init_student
from fedbt.errors import ConfigError
from fedbt.federated import method as method_module
from fedbt.federated.method import available_methods, create_method
from fedbt.ledger import Ledger, payload_nbytes
from fedbt.models import ModelArch, load_model
from fedbt.run import execute, prepare
from tests.conftest import REPO

BASELINES = ["centralized", "none", "freeze-bottom", "head-only", "prune-depth", "prune-magnitude", "lora", "distill"]
TINY = ModelConfig(source="tiny", max_length=32, tiny_layers=4, tiny_hidden=32, tiny_heads=2, tiny_ffn=64)


@pytest.fixture(scope="module")
def tiny_model():
    """The tiny MLM model of the ``tiny_config`` runs (seed 0), with weights."""
    return load_model(TINY, "mlm", seed=0)


def method(name: str, model, scenario: str = "pretrain", rounds: int = 2, **options):
    return create_method(name, model, rounds, seed=0, options=options, scenario=scenario)


def run(tiny_config, name: str, *extra: str):
    """A two-round run of ``name`` on the tiny config: (prepared run, metrics, ledger rows)."""
    prepared = prepare(tiny_config(f"method.name={name}", "federation.rounds=2", *extra))
    metrics = execute(prepared)
    return prepared, metrics, Ledger(prepared.out_dir / "ledger.csv").rows()


def saved_model(prepared) -> dict[str, torch.Tensor]:
    return load_file(str(prepared.out_dir / "model/model.safetensors"))


def assert_uploads_match_plans(prepared, rows) -> None:
    """Every client-round uploaded exactly its plan's trainable tensors, 4 bytes each (fp32)."""
    arch = prepared.method.arch
    for row in rows:
        plan = prepared.method.plan(row.round, row.client)
        assert (row.upload_params, row.upload_bytes) == (arch.numel(plan.trainable), 4 * arch.numel(plan.trainable))


def test_every_baseline_is_registered_and_an_unsupported_scenario_is_a_clear_error(tiny_model, tiny_config):
    methods = available_methods()
    assert set(BASELINES) <= set(methods)
    assert methods["none"].scenarios == ("pretrain",)
    assert all(methods[name].scenarios == ("pretrain", "finetune") for name in set(BASELINES) - {"none"})
    with pytest.raises(ConfigError, match="none does not support scenario 'finetune'; it supports: pretrain"):
        method("none", tiny_model, scenario="finetune")
    finetune = tiny_config(
        "method.name=none", "scenario=finetune", "data.task=citation_intent", "local.objective=classification"
    )
    with pytest.raises(ConfigError, match="it supports: pretrain"):
        prepare(finetune)


# ------------------------------------------------------------------------------------ centralized, none


def test_centralized_pools_all_clients_and_sends_nothing(tiny_config):
    prepared, metrics, rows = run(tiny_config, "centralized")
    arch = prepared.method.arch
    assert prepared.method.plan(0, 0).trainable == frozenset(arch.names)
    assert [(r.round, r.client) for r in rows] == [(0, 0), (1, 0)], "one client per round"
    total_examples = sum(metrics["partition"]["sizes"])
    assert all(r.examples == total_examples and r.steps == 3 * 2 for r in rows), "3 clients' data and steps"
    assert all(r.upload_bytes == r.download_bytes == r.upload_params == 0 for r in rows)
    assert metrics["costs"]["total_upload_bytes"] == 0


def test_none_trains_nothing_and_deploys_the_starting_model(tiny_config, tiny_model):
    prepared, metrics, rows = run(tiny_config, "none")
    assert prepared.method.plan(1, 2).trainable == frozenset()
    assert len(rows) == 2 * 3
    assert all(r.steps == r.upload_bytes == r.download_bytes == r.measured_flops == 0 for r in rows)
    saved = saved_model(prepared)
    start = tiny_model.state_dict()
    assert saved and all(torch.equal(value, start[name]) for name, value in saved.items())


# ---------------------------------------------------------------------------------------- freeze-bottom


def test_freeze_bottom_trains_and_uploads_the_top_layers_and_head(tiny_config, tiny_model):
    arch = ModelArch.from_model(tiny_model)
    plan = method("freeze-bottom", tiny_model, top_layers=2).plan(0, 0)
    assert plan.layer_map == (0, 1, 2, 3) and plan.trained_layers(arch) == [2, 3]
    assert plan.trainable == frozenset(arch.layer_params(2) + arch.layer_params(3) + arch.head_params())
    with pytest.raises(ConfigError, match="method.options.top_layers.*must be in 1..4"):
        method("freeze-bottom", tiny_model, top_layers=5)

    prepared, _, rows = run(tiny_config, "freeze-bottom")
    assert_uploads_match_plans(prepared, rows)
    top = prepared.method.plan(0, 0).trainable
    assert top == frozenset(arch.layer_params(3) + arch.head_params()), "default: the top layer"
    saved, start = saved_model(prepared), tiny_model.state_dict()
    changed = {n for n in saved if not torch.equal(saved[n], start[n])}
    assert changed and changed <= top


def test_head_only_trains_and_uploads_only_the_head_on_the_frozen_encoder(tiny_config, tiny_model):
    arch = ModelArch.from_model(tiny_model)
    assert method("head-only", tiny_model).plan(0, 0).trainable == frozenset(arch.head_params())
    prepared, _, rows = run(tiny_config, "head-only")
    assert_uploads_match_plans(prepared, rows)
    saved, start = saved_model(prepared), tiny_model.state_dict()
    changed = {n for n in saved if not torch.equal(saved[n], start[n])}
    assert changed and changed <= set(arch.head_params()), "the encoder and the tied decoder stay as they were"


# ------------------------------------------------------------------------------------------ prune-depth


@pytest.mark.parametrize(
    ("total", "keep", "expected"),
    [(12, 6, [0, 2, 4, 7, 9, 11]), (6, 3, [0, 3, 5]), (4, 2, [0, 3]), (4, 4, [0, 1, 2, 3]), (4, 1, [3])],
)
def test_uniform_layers(total, keep, expected):
    assert uniform_layers(total, keep) == expected


def test_prune_depth_trains_the_pruned_model_and_deploys_it(tiny_config, tiny_model):
    arch = ModelArch.from_model(tiny_model)
    prune = method("prune-depth", tiny_model)
    plan = prune.plan(1, 0)
    assert plan.layer_map == (0, 3), "default keep_layers = L_G // 2, first and last layer kept"
    kept = arch.embedding_params() + arch.layer_params(0) + arch.layer_params(3) + arch.head_params()
    assert plan.trainable == frozenset(kept) == frozenset(plan.download_names(arch))
    deployed = prune.deploy(tiny_model)
    assert deployed.config.num_hidden_layers == 2
    deployed_params = dict(deployed.named_parameters())
    for name in arch.layer_params(3):
        assert torch.equal(deployed_params[name.replace("layer.3.", "layer.1.")], tiny_model.get_parameter(name))
    with pytest.raises(ConfigError, match="method.options.keep_layers"):
        method("prune-depth", tiny_model, keep_layers=5)

    prepared, _, rows = run(tiny_config, "prune-depth")
    assert_uploads_match_plans(prepared, rows)
    assert {r.trained_layers for r in rows} == {"0;3"}
    saved = saved_model(prepared)
    assert {arch.layer_of(n) for n in saved} - {None} == {0, 1}, "the saved model has two layers"
    assert json.loads((prepared.out_dir / "model/config.json").read_text())["num_hidden_layers"] == 2


# -------------------------------------------------------------------------------------- prune-magnitude


def test_magnitude_mask_keeps_the_largest_entries():
    weight = torch.tensor([[0.1, -3.0, 0.2], [2.0, -0.05, 1.0]])
    assert magnitude_mask(weight, 3).tolist() == [[False, True, False], [True, False, True]]


def test_prune_magnitude_payload_is_kept_values_plus_packed_mask(tiny_model):
    model = BertForMaskedLM(tiny_model.config)
    model.load_state_dict(tiny_model.state_dict())
    prune = method("prune-magnitude", model, sparsity=0.75)
    model = prune.prepare_model(model)
    arch = prune.arch
    pruned = [n for n in arch.names if arch.layer_of(n) is not None and model.get_parameter(n).dim() == 2]
    assert sorted(prune.kept) == sorted(pruned) and len(pruned) == 4 * 6  # Q, K, V, attention out, FFN in, out
    tensors = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name in pruned:
        n = arch.param_numel[name]
        kept = n - round(0.75 * n)
        assert int((tensors[name] != 0).sum()) == kept
        encoded = prune.encode({name: tensors[name]})
        assert payload_nbytes(encoded) == (kept + math.ceil(n / 8), 4 * kept + math.ceil(n / 8))
        assert encoded[f"{name}::mask_bits"].dtype == torch.uint8
    dense = ["bert.embeddings.word_embeddings.weight", "bert.encoder.layer.0.output.LayerNorm.weight"]
    assert set(prune.encode({n: tensors[n] for n in dense})) == set(dense), "embeddings and norms stay dense"
    decoded = prune.decode(prune.encode(tensors))
    assert decoded.keys() == tensors.keys() and all(torch.equal(decoded[n], tensors[n]) for n in tensors)


def test_prune_magnitude_zeros_stay_zero_through_training(tiny_config, tiny_model):
    prepared, metrics, rows = run(tiny_config, "prune-magnitude", "local.weight_decay=0.1")
    prune, arch = prepared.method, prepared.method.arch
    start = tiny_model.state_dict()
    expected_bytes = sum(
        4 * prune.kept[n] + math.ceil(arch.param_numel[n] / 8) if n in prune.kept else 4 * arch.param_numel[n]
        for n in arch.names
    )
    assert all(r.upload_bytes == r.download_bytes == expected_bytes for r in rows)
    assert expected_bytes < 4 * sum(arch.param_numel.values())
    saved = saved_model(prepared)
    for name, kept in prune.kept.items():
        mask = magnitude_mask(start[name], kept)
        assert torch.equal(saved[name][~mask], torch.zeros(int((~mask).sum()))), f"{name}: pruned entries stay zero"
        assert not torch.equal(saved[name][mask], start[name][mask]), f"{name}: kept entries trained"
    report = metrics["method_report"]
    assert report["achieved_sparsity"] == 0.5
    assert 0.5 < report["theoretical_sparse_flops_fraction"] < 1.0
    assert metrics["final"]["method.theoretical_sparse_flops_fraction"] == report["theoretical_sparse_flops_fraction"]


# ------------------------------------------------------------------------------------------------- lora


def test_lora_uploads_adapters_and_head_and_deploys_merged(tiny_config, tiny_model):
    lora = method("lora", tiny_model, rank=4)
    arch = lora.arch
    adapters = sorted(n for n in arch.names if ".lora_" in n)
    assert all(re.search(r"\.(query|value)\.lora_[AB]\.default\.weight$", n) for n in adapters)
    assert len(adapters) == 4 * 2 * 2  # layers x (query, value) x (A, B)
    plan = lora.plan(0, 0)
    assert plan.trainable == frozenset(adapters + arch.head_params())
    assert arch.numel(adapters) == 4 * 2 * 2 * 4 * 32, "rank x (in + out) per adapted module, A and B"
    assert "bert.encoder.layer.0.attention.self.query.base_layer.weight" in arch.names
    no_head = method("lora", tiny_model, train_head=False).plan(0, 0)
    assert no_head.trainable == frozenset(adapters)
    with pytest.raises(ConfigError, match="method.options.target_modules"):
        method("lora", tiny_model, target_modules=["no_such_module"])

    prepared, _, rows = run(tiny_config, "lora", "method.options={rank: 4}")
    assert_uploads_match_plans(prepared, rows)
    full = 4 * sum(ModelArch.from_model(tiny_model).param_numel.values())
    assert all(r.upload_bytes < full / 20 for r in rows)
    saved = saved_model(prepared)
    assert not any("lora" in n or "base_layer" in n for n in saved), "merged: plain parameter names"
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert query in saved and set(saved) <= set(tiny_model.state_dict())
    reloaded = AutoModelForMaskedLM.from_pretrained(prepared.out_dir / "model")
    assert not torch.equal(reloaded.get_parameter(query), tiny_model.get_parameter(query)), "adapters merged in"


def test_lora_merge_gives_the_adapted_model_outputs(tiny_model):
    lora = method("lora", tiny_model, rank=2)
    adapted = lora.prepare_model(load_model(TINY, "mlm", seed=0))
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_B" in name:
                param.normal_()
    merged = lora.deploy(adapted)
    assert type(merged) is BertForMaskedLM and not any("lora" in n for n, _ in merged.named_parameters())
    ids = torch.randint(0, 1000, (2, 7))
    adapted.eval(), merged.eval()
    torch.testing.assert_close(merged(input_ids=ids).logits, adapted(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert any(".lora_" in n for n, _ in adapted.named_parameters()), "the global model keeps its adapters"


# ---------------------------------------------------------------------------------------------- distill


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory):
    """A 2-layer student of the tiny teacher (layers 1 and 3), distilled for 2 steps on SST-2 sentences."""
    out = tmp_path_factory.mktemp("students") / "tiny-L2"
    settings = DistillSettings(
        layers=(1, 3),
        corpus="sst2",
        data_dir=str(REPO / "data"),
        max_examples=32,
        max_length=32,
        steps=2,
        batch_size=8,
    )
    distill_student(settings, out, teacher_config=TINY)
    return out


def test_student_starts_from_the_chosen_teacher_layers(tiny_model):
    student = init_student(tiny_model, [1, 3])
    assert student.config.num_hidden_layers == 2
    student_params = dict(student.named_parameters())
    for name, param in tiny_model.named_parameters():
        local = name.replace("layer.1.", "layer.0.").replace("layer.3.", "layer.1.")
        if ".layer.0." in name or ".layer.2." in name:
            continue
        assert torch.equal(student_params[local], param), name
    with pytest.raises(ConfigError, match="increasing order"):
        init_student(tiny_model, [3, 1])


def test_distilled_student_is_a_loadable_checkpoint_of_the_chosen_depth(student_dir, tiny_model):
    costs = json.loads((student_dir / COSTS_FILE).read_text())
    assert costs["steps"] == 2 and costs["seconds"] > 0 and costs["measured_flops"] > 0
    assert costs["settings"]["layers"] == [1, 3] and costs["settings"]["teacher"] == "tiny"
    student = AutoModelForMaskedLM.from_pretrained(student_dir)
    assert student.config.num_hidden_layers == 2
    trained = student.get_parameter("bert.encoder.layer.1.output.dense.weight").detach()
    teacher = {i: tiny_model.get_parameter(f"bert.encoder.layer.{i}.output.dense.weight") for i in range(4)}
    distances = {i: float((trained - w.detach()).norm()) for i, w in teacher.items()}
    assert min(distances, key=distances.get) == 3 and 0 < distances[3] < 0.1 * distances[2]


def test_distill_cli_builds_a_student(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="fedbt")
    cli_distill.add_parser(parser.add_subparsers(dest="command"))
    flags = ["--teacher", "tiny", "--layers", "0,3", "--steps", "1", "--max-examples", "16", "--batch-size", "8"]
    args = parser.parse_args(["distill", *flags, "--data-dir", str(REPO / "data"), "--out", str(tmp_path / "s")])
    assert args.layers == (0, 3) and args.handler is cli_distill.main
    assert cli_distill.main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["steps"] == 1 and (tmp_path / "s" / COSTS_FILE).is_file()
    assert AutoModelForMaskedLM.from_pretrained(tmp_path / "s").config.num_hidden_layers == 2
    with pytest.raises(SystemExit):
        parser.parse_args(["distill", "--layers", "0,x", "--out", "o"])
    args = parser.parse_args(["distill", "--teacher", "tiny", "--layers", "0", "--corpus", "wiki", "--out", "o"])
    assert cli_distill.main(args) == 2
    assert "known corpora" in capsys.readouterr().err


def test_distill_corpus_names():
    sentences = load_corpus("sst2", REPO / "data")
    assert len(sentences) > 4000 and all(len(s.split()) >= 5 for s in sentences)
    with pytest.raises(
        ConfigError, match="known corpora: biology, cifar10, cifar10-4, cifar10-central, cs, medicine, sst2"
    ):
        load_corpus("wiki", REPO / "data")


def test_distill_trains_and_deploys_the_student(tiny_config, student_dir, tmp_path):
    prepared, _, rows = run(tiny_config, "distill", f"method.options={{student: {student_dir}}}")
    arch = prepared.method.arch
    assert arch.num_layers == 2 and prepared.model_config.source == str(student_dir)
    assert all(r.upload_bytes == 4 * sum(arch.param_numel.values()) for r in rows)
    assert json.loads((prepared.out_dir / "model/config.json").read_text())["num_hidden_layers"] == 2

    with pytest.raises(ConfigError, match="method.options.student.*distill needs a student"):
        prepare(tiny_config("method.name=distill"))
    distilbert = tmp_path / "distilbert"
    DistilBertConfig().save_pretrained(distilbert)
    with pytest.raises(ConfigError, match="'distilbert' model; the layer surgery supports: bert"):
        prepare(tiny_config("method.name=distill", f"method.options={{student: {distilbert}}}"))


# ------------------------------------------------------------------------------------------- cost tables


def test_costs_work_for_every_baseline_on_bert_base(capsys):
    parser = argparse.ArgumentParser(prog="fedbt")
    cli_costs.add_parser(parser.add_subparsers(dest="command"))
    tables = {}
    for name in BASELINES:
        student = ["--student", "huawei-noah/TinyBERT_General_4L_312D"] if name == "distill" else []
        args = parser.parse_args(["costs", "--arch", "bert-base-uncased", "--method", name, "--json", *student])
        assert cli_costs.main(args) == 0
        tables[name] = json.loads(capsys.readouterr().out)
    assert all(len(t["rounds"]) == 5 for t in tables.values()), "default: the paper's 5 pre-training rounds"
    assert tables["centralized"]["total"]["upload_bytes"] == tables["none"]["total"]["upload_bytes"] == 0
    assert tables["none"]["flops_ratio_vs_fedavg"] == 0
    assert tables["freeze-bottom"]["upload_ratio_vs_fedavg"] == pytest.approx(0.0704, abs=5e-4)
    assert tables["prune-depth"]["upload_ratio_vs_fedavg"] == pytest.approx(0.6117, abs=5e-4)
    layer_matrices = 12 * (4 * 768 * 768 + 2 * 768 * 3072)
    dense_rest = 109_514_298 - layer_matrices
    row = tables["prune-magnitude"]["rounds"][0]
    assert row["upload_bytes"] == 4 * (layer_matrices // 2 + dense_rest) + layer_matrices // 8
    assert tables["lora"]["rounds"][0]["upload_params"] == 12 * 2 * 8 * (768 + 768) + 592_128 + 30_522
    distill = tables["distill"]
    assert distill["arch"]["layers"] == 4 and distill["fedavg_reference_arch"] == "bert-base-uncased"
    assert 100 * distill["upload_ratio_vs_fedavg"] == pytest.approx(13.13, abs=0.01), "the paper's TinyBERT-4 row"


def test_centralized_cost_table_pools_the_clients():
    one_trainer = cost_table("bert-base-uncased", "fedavg", 1, {}, sequences=6 * 256)
    central = cost_table("bert-base-uncased", "centralized", 1, {}, clients=6, sequences=256)
    assert central["rounds"][0]["analytic_flops"] == one_trainer["rounds"][0]["analytic_flops"]
    assert central["flops_ratio_vs_fedavg"] == pytest.approx(6, rel=1e-4)  # masked positions are rounded


# ------------------------------------------------------------------------------------ the worked example


def test_docs_example_is_the_tested_module():
    doc = (REPO / "docs/adding-a-baseline.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.DOTALL)
    example = (REPO / "tests/example_baseline.py").read_text()
    assert example in blocks
    assert len(example.splitlines()) < 100


def test_example_baseline_registers_from_a_plugin_file_and_runs_two_rounds(tiny_config, tmp_path, monkeypatch):
    available_methods()  # the built-in methods first; the plugin's registration is undone after the test
    monkeypatch.setattr(method_module, "_REGISTRY", dict(method_module._REGISTRY))
    plugin = tmp_path / "random_layers.py"
    plugin.write_text((REPO / "tests/example_baseline.py").read_text())
    prepared, metrics, rows = run(tiny_config, "example-random-layers", f"plugins=[{plugin}]")
    assert "example-random-layers" in available_methods()
    assert len(metrics["rounds"]) == 2 and len(rows) == 2 * 3
    assert_uploads_match_plans(prepared, rows)
    assert all(len(r.trained_layers.split(";")) == 1 for r in rows)
    assert len({r.trained_layers for r in rows}) > 1, "clients draw different layers"
