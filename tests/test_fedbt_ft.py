"""FedBT federated fine-tuning: cyclic schedule, local model, trainable sets, errors, a tiny end-to-end run."""

import csv

import pytest

from fedbt.config import ModelConfig
from fedbt.errors import ConfigError
from fedbt.federated.method import create_method
from fedbt.methods.fedbt_ft import cyclic_schedule
from fedbt.models import ModelArch, meta_model, model_config_for
from fedbt.run import execute, prepare


def classification_arch(layers: int) -> ModelArch:
    config = model_config_for(
        ModelConfig(source="tiny", tiny_layers=layers, tiny_hidden=16, tiny_heads=2, tiny_ffn=32), num_labels=13
    )
    return ModelArch.from_model(meta_model(config, "classification"))


@pytest.fixture(scope="module")
def arch12():
    return classification_arch(12)


def method(name, arch, rounds=10, **options):
    return create_method(name, arch, rounds, seed=0, options=options, scenario="finetune")


@pytest.mark.parametrize(
    ("layers", "cycle", "rounds", "expected"),
    [
        (12, 6, 10, [11, 10, 9, 8, 7, 6, 11, 10, 9, 8]),
        (12, 3, 5, [11, 10, 9, 11, 10]),
        (6, 3, 7, [5, 4, 3, 5, 4, 3, 5]),
        (4, 1, 3, [3, 3, 3]),
    ],
)
def test_cyclic_schedule(layers, cycle, rounds, expected):
    assert cyclic_schedule(layers, cycle, rounds) == expected
    assert method("fedbt-ft", classification_arch(layers), rounds, cycle=cycle).schedule == expected


def test_default_cycle_is_half_the_depth(arch12):
    assert method("fedbt-ft", arch12).cycle == 6
    assert method("fedbt-ft", classification_arch(6)).cycle == 3


def test_full_depth_plan_trains_top_layers_and_head(arch12):
    plan = method("fedbt-ft", arch12).plan(2, 0)  # l = 9
    assert plan.layer_map == tuple(range(12))
    assert plan.trained_layers(arch12) == [9, 10, 11]
    head = set(arch12.head_params())
    assert {"bert.pooler.dense.weight", "classifier.weight", "classifier.bias"} <= head
    assert plan.trainable == frozenset(n for i in (9, 10, 11) for n in arch12.layer_params(i)) | head
    assert not any(n.startswith("bert.embeddings") for n in plan.trainable)


def test_shallow_local_models(arch12):
    plan = method("fedbt-ft", arch12, local_layers=8).plan(4, 0)  # l = 7: top 7..11, lower 0..2
    assert plan.layer_map == (0, 1, 2, 7, 8, 9, 10, 11)
    mapped = method("fedbt-ft-map", arch12, local_layers=8)
    maps = set()
    for r in range(6):
        lowest = mapped.schedule[r]
        for k in range(4):
            layer_map = mapped.plan(r, k).layer_map
            lower, top = layer_map[: 8 - (12 - lowest)], layer_map[8 - (12 - lowest) :]
            assert top == tuple(range(lowest, 12))
            assert list(lower) == sorted(lower) and all(0 <= g < lowest for g in lower)
            maps.add(layer_map)
    assert len(maps) > 6, "the lower part is resampled per round and client"


def test_no_add_trains_only_the_lowest_layer(arch12):
    plan = method("fedbt-ft-no-add", arch12).plan(3, 0)  # l = 8
    assert plan.trained_layers(arch12) == [8]
    assert plan.trainable == frozenset(arch12.layer_params(8)) | frozenset(arch12.head_params())


def test_invalid_settings(arch12):
    with pytest.raises(ConfigError, match=r"L_k = 4 must be in 6..12"):
        method("fedbt-ft", arch12, local_layers=4)
    with pytest.raises(ConfigError, match=r"c = 13 must be in 1..12"):
        method("fedbt-ft", arch12, cycle=13)
    with pytest.raises(ConfigError, match="does not support scenario 'pretrain'"):
        create_method("fedbt-ft", arch12, 5, 0, {}, "pretrain")


@pytest.mark.parametrize("variant", ["fedavg", "fedbt-ft", "fedbt-ft-no-add"])
def test_finetune_scenario_end_to_end(tiny_config, variant):
    config = tiny_config(
        "scenario=finetune",
        "local.objective=classification",
        "data.task=chemprot",
        "data.corpus=null",
        f"method.name={variant}",
        "federation.rounds=3",
    )
    prepared = prepare(config)
    metrics = execute(prepared)
    assert all("dev_accuracy" in r and "test_accuracy" in r for r in metrics["rounds"])
    selection = metrics["selection"]
    best = max(metrics["rounds"], key=lambda r: r["dev_accuracy"])
    assert selection["round"] == best["round"]
    assert selection["test"]["accuracy"] == best["test_accuracy"]
    assert metrics["final"]["finetune.test_accuracy"] == best["test_accuracy"]
    arch = prepared.method.arch
    with open(prepared.out_dir / "ledger.csv") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        plan = prepared.method.plan(int(row["round"]), int(row["client"]))
        assert int(row["upload_bytes"]) == 4 * arch.numel(plan.trainable)
    if variant == "fedbt-ft":
        assert [r["trained_layers"] for r in rows[::3]] == ["3", "2-3", "3"]


@pytest.mark.parametrize("variant", ["fedavg", "fedbt-ft"])
def test_ner_finetune_end_to_end(tiny_config, variant):
    config = tiny_config(
        "scenario=finetune",
        "local.objective=token_classification",
        "data.task=ncbi_disease",
        "data.corpus=null",
        f"method.name={variant}",
        "federation.rounds=2",
        "evaluation.task=ncbi_disease",
        "evaluation.epochs=1",
        "evaluation.max_train_examples=32",
        "evaluation.max_eval_examples=16",
    )
    prepared = prepare(config)
    assert prepared.head == "token_classification"
    metrics = execute(prepared)
    assert all(0.0 <= r["dev_ner_f1"] <= 1.0 for r in metrics["rounds"])
    assert set(metrics["evaluation"]["mean"]) == {"ner_f1", "ner_precision", "ner_recall"}
    trained = [r["trained_layers"] for r in metrics_rows(prepared.out_dir)]
    assert trained[0] == ("0-3" if variant == "fedavg" else "3")


def test_objective_must_fit_the_task(tiny_config):
    with pytest.raises(
        ConfigError, match="'ncbi_disease' is a token_classification task: set local.objective=token_classification"
    ):
        prepare(tiny_config("scenario=finetune", "local.objective=classification", "data.task=ncbi_disease"))


def metrics_rows(run_dir):
    with open(run_dir / "ledger.csv") as handle:
        return list(csv.DictReader(handle))


def test_best_round_selects_on_dev_earliest_on_ties():
    from fedbt.run import best_round

    records = [
        {"round": 0, "dev_accuracy": 0.5, "test_accuracy": 0.9},
        {"round": 1, "dev_accuracy": 0.7, "test_accuracy": 0.1},
        {"round": 2, "dev_accuracy": 0.7, "test_accuracy": 0.8},
    ]
    pick = best_round(records, "accuracy")
    assert pick == {"round": 1, "primary": "accuracy", "dev": {"accuracy": 0.7}, "test": {"accuracy": 0.1}}
    assert best_round([{"round": 0, "heldout_mlm_loss": 3.0}], "accuracy") is None
