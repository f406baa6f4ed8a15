"""FedBT on vision transformers: image data, preprocessing, MIM masking, ViT surgery, cost accounting, runs."""

import json
from collections import Counter

import numpy as np
import pytest
import torch

from fedbt.config import ModelConfig, load_config
from fedbt.costs import analytic_train_flops, cost_table
from fedbt.data import get_task, load_task, partition_indices
from fedbt.data.images import IMAGE_CORPORA, interleave_classes, load_image_corpus, load_image_splits
from fedbt.errors import ConfigError, DataError
from fedbt.federated.method import ClientPlan, create_method
from fedbt.methods.fedbt import progressive_schedule
from fedbt.methods.fedbt_ft import cyclic_schedule
from fedbt.models import ModelArch, arch_config, load_model, load_processor, meta_model, model_config_for
from fedbt.run import execute, prepare
from fedbt.training.objectives import make_objective
from fedbt.training.vision import image_examples, pixel_values, random_patch_mask

from .conftest import REPO

VIT = "vit:layers=4,hidden=32,heads=2,ffn=64,image=32,patch=4"
TINY_VIT = ModelConfig(source=f"scratch:{VIT}")
DATA = REPO / "data"


def vit_arch(head: str = "mim", layers: int = 4) -> ModelArch:
    config = model_config_for(ModelConfig(source=f"scratch:{VIT.replace('layers=4', f'layers={layers}')}"), 10)
    return ModelArch.from_model(meta_model(config, head))


# ------------------------------------------------------------------------------------------ data


def test_cifar_splits_are_disjoint_balanced_and_interleaved():
    splits = load_image_splits("cifar10", DATA)
    assert {k: len(v) for k, v in splits.items()} == {"central": 1000, "dev": 500, "train": 3500, "test": 1000}
    for split in splits.values():
        assert split.images.shape[1:] == (32, 32, 3) and split.images.dtype == np.uint8
        counts = np.bincount(split.labels, minlength=10)
        assert (counts == counts[0]).all()
        assert split.labels[:10].tolist() == list(range(10)), "any prefix is class-balanced"
    train_parts = [splits[p].images.reshape(len(splits[p]), -1) for p in ("central", "dev", "train")]
    seen = {row.tobytes() for part in train_parts for row in part}
    assert len(seen) == 5000, "central, dev and train hold different images"


def test_interleave_classes_keeps_order_within_a_class():
    labels = np.array([1, 1, 0, 0, 1, 2])
    assert interleave_classes(np.arange(6), labels).tolist() == [2, 0, 5, 3, 1, 4]


def test_cifar_task_and_corpora():
    spec = get_task("cifar10")
    assert spec.kind == "image_classification" and len(spec.labels) == 10
    task = load_task("cifar10", DATA)
    assert {s: len(task[s]) for s in task} == spec.split_sizes
    assert set(IMAGE_CORPORA) == {"cifar10", "cifar10-4", "cifar10-central"}
    assert len(load_image_corpus("cifar10-central", DATA)) == 1000


def test_cifar10_4_keeps_the_first_four_classes_dealt_as_cifar10():
    full, four = load_image_splits("cifar10", DATA), load_image_splits("cifar10-4", DATA)
    assert {k: len(v) for k, v in four.items()} == {"central": 400, "dev": 200, "train": 1400, "test": 400}
    for part in four:
        kept = full[part].labels < 4
        assert np.array_equal(four[part].images, full[part].images[kept]), part
        assert np.array_equal(four[part].labels, full[part].labels[kept]), part
    spec = get_task("cifar10-4")
    assert spec.labels == ("airplane", "automobile", "bird", "cat")
    assert {s: len(split) for s, split in load_task("cifar10-4", DATA).items()} == spec.split_sizes
    assert len(load_image_corpus("cifar10-4", DATA)) == 1400


def test_image_data_errors_name_the_problem(tmp_path):
    with pytest.raises(ConfigError, match="unknown image corpus 'mnist'; known: cifar10, cifar10-4, cifar10-central"):
        load_image_corpus("mnist", DATA)
    with pytest.raises(DataError, match="image data file not found"):
        load_image_splits("cifar10", tmp_path)
    (tmp_path / "cifar10").mkdir()
    np.savez(
        tmp_path / "cifar10/cifar10_subset_500x10_train_100x10_test.npz",
        x_train=np.zeros((5000, 32, 32, 3), np.uint8),
        y_train=np.full(5000, 11),
        x_test=np.zeros((1000, 32, 32, 3), np.uint8),
        y_test=np.zeros(1000, np.int64),
    )
    with pytest.raises(DataError, match=r"y_train\[0\] is not a class id 0..9"):
        load_image_splits("cifar10", tmp_path)


def test_dirichlet_label_skew_on_cifar_labels():
    labels = load_image_corpus("cifar10", DATA).labels[:1000].tolist()
    clients = partition_indices(len(labels), 5, "dirichlet", seed=0, labels=labels, alpha=0.3)
    assert sorted(i for c in clients for i in c) == list(range(1000))
    shares = [np.bincount([labels[i] for i in c], minlength=10) / max(len(c), 1) for c in clients]
    assert max(s.max() for s in shares) > 0.3, "label skew: some client is dominated by a class (iid: ~0.1)"
    iid = partition_indices(len(labels), 5, "iid", seed=0)
    assert max(np.bincount([labels[i] for i in c], minlength=10).max() / len(c) for c in iid) < 0.2


# --------------------------------------------------------------------------------- preprocessing


def test_image_processor_shapes_and_normalisation(tmp_path):
    processor = load_processor(TINY_VIT)
    images = load_image_corpus("cifar10", DATA).images[:5]
    pixels = pixel_values(processor, image_examples(images))
    assert pixels.shape == (5, 3, 32, 32) and pixels.dtype == torch.float32
    assert pixels.min() >= -1.0 and pixels.max() <= 1.0  # mean 0.5, std 0.5 on [0, 1]
    expected = torch.from_numpy(images[0].astype(np.float32) / 255.0 * 2 - 1).permute(2, 0, 1)
    assert torch.allclose(pixels[0], expected, atol=1e-5)
    bigger = load_processor(ModelConfig(source="scratch:vit:layers=1,hidden=8,heads=1,ffn=8,image=48,patch=16"))
    assert pixel_values(bigger, image_examples(images)).shape == (5, 3, 48, 48)
    load_model(TINY_VIT, "mim", 0).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)  # saved with the model, loaded back from the run's model/
    assert load_processor(ModelConfig(source=str(tmp_path))).size == processor.size


def test_mim_mask_has_a_fixed_share_and_repeats():
    mask = random_patch_mask(4, 64, 0.6, torch.Generator().manual_seed(0))
    assert mask.shape == (4, 64) and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [38, 38, 38, 38]
    assert torch.equal(mask, random_patch_mask(4, 64, 0.6, torch.Generator().manual_seed(0)))
    assert not torch.equal(mask[0], mask[1]), "each image gets its own mask"
    assert random_patch_mask(2, 64, 0.001, None).sum(1).tolist() == [1, 1]


def test_mim_objective_reconstructs_masked_patches():
    model = load_model(TINY_VIT, "mim", seed=0)
    objective = make_objective("mim", load_processor(TINY_VIT), mask_ratio=0.5, patches=64)
    batch = objective.collate(image_examples(load_image_corpus("cifar10", DATA).images[:3]), torch.Generator())
    assert batch["pixel_values"].shape == (3, 3, 32, 32) and batch["bool_masked_pos"].sum() == 3 * 32
    loss = objective.loss(model, batch)
    assert loss.ndim == 0 and loss.item() > 0
    loss.backward()
    assert model.vit.embeddings.mask_token.grad.abs().sum() > 0, "masked patches use the learnt mask token"
    assert objective.input_tokens(batch) == 3 * 65 and objective.predicted_tokens(batch) == 3 * 64


# ------------------------------------------------------------------------------------ surgery


def test_vit_layers_and_heads_are_found():
    arch = vit_arch("mim")
    assert arch.layer_prefix == "vit.layers." and arch.num_layers == 4 and arch.num_patches == 64
    assert set(arch.head_params()) == {
        "vit.layernorm.weight",
        "vit.layernorm.bias",
        "decoder.0.weight",
        "decoder.0.bias",
    }
    assert "vit.embeddings.mask_token" in arch.embedding_params()
    classification = vit_arch("image_classification")
    assert set(classification.head_params()) == {
        "vit.layernorm.weight",
        "vit.layernorm.bias",
        "classifier.weight",
        "classifier.bias",
    }


def test_fedbt_on_vit_trains_one_layer_and_the_mim_head():
    arch = vit_arch("mim", layers=8)
    fedbt = create_method("fedbt", arch, 5, seed=0, options={}, scenario="pretrain")
    assert fedbt.schedule == progressive_schedule(5) and fedbt.local_layers == 4
    for round_idx in range(5):
        plan = fedbt.plan(round_idx, client_id=1)
        layer = fedbt.schedule[round_idx]
        assert plan.trainable == frozenset(arch.layer_params(layer) + arch.head_params())
        assert plan.layer_map[: layer + 1] == tuple(range(layer + 1)) and len(plan.layer_map) == 4
        assert all(layer < g < 8 for g in plan.layer_map[layer + 1 :])
    assert not any(n.startswith("vit.embeddings.") for n in fedbt.plan(0, 0).trainable)
    payload = arch.numel(fedbt.plan(0, 0).trainable)
    assert payload == arch.numel(arch.layer_params(0)) + 2 * 32 + 32 * 48 + 48


def test_fedbt_ft_on_vit_reuses_the_cyclic_schedule():
    arch = vit_arch("image_classification", layers=8)
    method = create_method("fedbt-ft", arch, 7, seed=0, options={}, scenario="finetune")
    assert method.schedule == cyclic_schedule(8, 4, 7) == [7, 6, 5, 4, 7, 6, 5]
    plan = method.plan(1, 0)
    assert plan.trainable == frozenset(arch.layer_params(6) + arch.layer_params(7) + arch.head_params())


@pytest.mark.parametrize("head", ["mim", "image_classification"])
def test_analytic_flops_equal_flop_counter_on_vit(head):
    """Eager attention so that FlopCounterMode sees Q K^T and P V; every plan kind, exact equality."""
    from torch.utils.flop_counter import FlopCounterMode

    config = arch_config(VIT)
    config.num_labels, config._attn_implementation = 10, "eager"
    torch.manual_seed(0)
    from fedbt.models import auto_class

    model = auto_class(head).from_config(config)
    arch = ModelArch.from_model(model)
    batch = {"pixel_values": torch.randn(2, 3, 32, 32)}
    if head == "mim":
        batch["bool_masked_pos"] = random_patch_mask(2, 64, 0.5, torch.Generator().manual_seed(0))
    else:
        batch["labels"] = torch.tensor([1, 2])
    layers = range(4)
    for trainable in (
        set(arch.names),
        set(arch.layer_params(1) + arch.head_params()),
        set(arch.head_params()),
        set(arch.layer_params(3) + arch.layer_params(2) + arch.head_params()),
    ):
        for name, param in model.named_parameters():
            param.requires_grad_(name in trainable)
        with FlopCounterMode(display=False) as counter:
            model(**batch).loss.backward()
        plan = ClientPlan(tuple(layers), frozenset(trainable))
        expected = analytic_train_flops(arch, plan, sequences=2, seq_len=65, predicted_tokens=128, head=head)
        assert counter.get_total_flops() == expected, (head, plan.trained_layers(arch))


def test_costs_on_vit_base_work_without_weights():
    inline = cost_table("vit:layers=12,hidden=768,heads=12,ffn=3072,image=224,patch=16", "fedbt", 5, {})
    shipped = cost_table("vit-base", "fedbt", 5, {})
    assert inline["head"] == "mim" and inline["arch"]["seq_len"] == 197
    assert inline["total"]["upload_params"] == shipped["total"]["upload_params"]
    layer = 4 * (768 * 768 + 768) + 2 * (768 * 3072) + 3072 + 768 + 4 * 768
    head = 2 * 768 + 768 * 768 + 768  # final LayerNorm + 1x1 decoder to 16*16*3 = 768 values
    assert inline["rounds"][0]["upload_params"] == layer + head
    assert 0.08 < inline["upload_ratio_vs_fedavg"] < 0.10
    finetune = cost_table("vit-base", "fedbt-ft", 10, {}, head="classification", num_labels=10)
    assert finetune["head"] == "image_classification"
    explicit = cost_table("vit-base", "fedbt-ft", 10, {}, head="image_classification", num_labels=10)
    assert explicit["total"] == finetune["total"]
    assert finetune["rounds"][0]["upload_params"] == layer + 2 * 768 + 768 * 10 + 10
    token = cost_table("vit-base", "fedbt-ft", 10, {}, head="token_classification", num_labels=10)
    assert token["head"] == "image_classification", "an image model's fine-tuning head, whatever the text head"


def test_costs_cli_json_for_an_inline_vit(capsys):
    from fedbt.cli import main

    assert (
        main(
            [
                "costs",
                "--arch",
                "vit:layers=12,hidden=768,heads=12,ffn=3072,image=224,patch=16",
                "--method",
                "fedbt",
                "--json",
            ]
        )
        == 0
    )
    table = json.loads(capsys.readouterr().out)
    assert [r["trained_layers"] for r in table["rounds"]] == [[0], [0], [0], [1], [2]]


def test_inline_vit_shape_errors_name_the_key():
    with pytest.raises(ConfigError, match="image=30 must be a multiple of patch=4"):
        arch_config("vit:layers=2,hidden=8,heads=1,ffn=8,image=30,patch=4")
    with pytest.raises(ConfigError, match="allowed keys: layers, hidden, heads, ffn, image, patch, channels"):
        arch_config("vit:layers=2,vocab=10")


# ------------------------------------------------------------------------------------- runs


def vit_overrides(tmp_path, *extra):
    return [
        f"model.source=scratch:{VIT}",
        f"data.data_dir={DATA}",
        f"data.partition_dir={tmp_path / 'partitions'}",
        "data.max_examples=60",
        "data.heldout_examples=16",
        "federation.clients=3",
        "federation.rounds=2",
        "federation.partition.scheme=dirichlet",
        "local.steps=2",
        "local.batch_size=8",
        "local.lr=0.001",
        "tracking.enabled=false",
        *extra,
    ]


def test_modality_mismatches_fail_before_training(tmp_path):
    text_on_vit = load_config(None, vit_overrides(tmp_path, "local.objective=mlm", "data.corpus=cifar10"))
    with pytest.raises(ConfigError, match="is an image model; allowed objectives: image_classification, mim"):
        prepare(text_on_vit)
    images_on_bert = load_config(None, ["model.source=tiny", "data.corpus=cifar10"])
    with pytest.raises(ConfigError, match="data.corpus.*does not suit a text model"):
        prepare(images_on_bert)


@pytest.mark.e2e
def test_tiny_vit_fedbt_pretraining_then_fedbt_ft(tmp_path):
    """FedBT MIM further pre-training for two rounds, then FedBT cyclic fine-tuning of its model on CIFAR-10."""
    pretrain = load_config(
        None,
        vit_overrides(
            tmp_path,
            "method.name=fedbt",
            "scenario=pretrain",
            "data.corpus=cifar10",
            "local.objective=mim",
            f"out_dir={tmp_path / 'pretrain'}",
        ),
    )
    prepared = prepare(pretrain)
    start = {n: p.detach().clone() for n, p in load_model(pretrain.model, "mim", 0).named_parameters()}
    metrics = execute(prepared)
    assert [r["heldout_mim_loss"] > 0 for r in metrics["rounds"]] == [True, True]
    arch = prepared.method.arch
    per_client = arch.nbytes(arch.layer_params(0) + arch.head_params())
    assert [r["upload_bytes"] for r in metrics["rounds"]] == [3 * per_client, 3 * per_client]
    assert all(r["measured_flops"] > 0 and r["analytic_flops"] > 0 for r in metrics["rounds"])
    saved = load_model(ModelConfig(source=str(prepared.out_dir / "model")), "mim", 0)
    final = {n: p.detach() for n, p in saved.named_parameters()}
    assert set(final) == set(start)
    assert prepared.method.schedule == [0, 1]
    trained = set(arch.layer_params(0) + arch.layer_params(1) + arch.head_params())
    assert all(torch.equal(start[n], final[n]) for n in set(start) - trained), "untrained tensors stay bit-identical"
    assert all(not torch.equal(start[n], final[n]) for n in ("vit.layers.0.mlp.fc1.weight", "decoder.0.weight"))
    assert (prepared.out_dir / "model/preprocessor_config.json").is_file()

    finetune = load_config(
        None,
        vit_overrides(
            tmp_path,
            "method.name=fedbt-ft",
            "scenario=finetune",
            "data.corpus=null",
            "data.task=cifar10",
            "local.objective=image_classification",
            f"model.source={prepared.out_dir / 'model'}",
            "evaluation.max_eval_examples=20",
            f"out_dir={tmp_path / 'finetune'}",
        ),
    )
    result = execute(prepare(finetune))
    ledger_layers = [r["trained_layers"] for r in csv_rows(tmp_path / "finetune/ledger.csv")]
    assert ledger_layers == ["3"] * 3 + ["2-3"] * 3
    assert 0.0 <= result["final"]["finetune.test_accuracy"] <= 1.0
    assert Counter(r["round"] for r in result["rounds"]) == Counter({0: 1, 1: 1})


def csv_rows(path):
    import csv

    with open(path) as handle:
        return list(csv.DictReader(handle))


VIT_METHODS = [
    "fedbt",
    "fedbt-all",
    "fedbt-no-pl",
    "fedbt-no-s",
    "fedbt-no-m",
    "fedbt-no-sp",
    "fedavg",
    "centralized",
    "none",
    "freeze-bottom",
    "prune-depth",
    "prune-magnitude",
    "lora",
]


@pytest.mark.parametrize("name", VIT_METHODS)
def test_every_pretraining_method_runs_on_vit(tmp_path, name):
    """The same method code on a tiny ViT: two MIM rounds; the ledger's uploads are the planned tensors."""
    config = load_config(
        None,
        vit_overrides(
            tmp_path,
            f"method.name={name}",
            "data.corpus=cifar10",
            "local.objective=mim",
            "federation.rounds=2",
            f"out_dir={tmp_path / 'run'}",
        ),
    )
    prepared = prepare(config)
    metrics = execute(prepared)
    assert len(metrics["rounds"]) == 2 and all(r["heldout_mim_loss"] > 0 for r in metrics["rounds"])
    method, rows = prepared.method, csv_rows(tmp_path / "run/ledger.csv")
    if not method.transmits or name == "none":
        assert all(int(r["upload_bytes"]) == 0 for r in rows)
        return
    assert all(int(r["upload_bytes"]) > 0 for r in rows)
    if name.startswith("fedbt") and name != "fedbt-all":
        for row in rows:
            plan = method.plan(int(row["round"]), int(row["client"]))
            assert int(row["upload_bytes"]) == method.arch.nbytes(plan.trainable)


def test_distillation_refuses_a_vit_teacher(tmp_path):
    from fedbt.distill import DistillSettings, distill_student

    settings = DistillSettings(teacher=f"scratch:{VIT}", layers=(0, 2), data_dir=str(DATA))
    with pytest.raises(ConfigError, match="'vit' model; distillation supports BERT-type teachers only"):
        distill_student(settings, tmp_path / "student")
