"""FedBT further pre-training: schedule, deep sampling, trainable sets, payloads, invariants, errors."""

import csv
from collections import Counter

import pytest
import torch
from safetensors.torch import load_file

from fedbt.config import ModelConfig
from fedbt.errors import ConfigError
from fedbt.federated.method import available_methods, create_method
from fedbt.methods.fedbt import progressive_schedule
from fedbt.models import ModelArch, load_model, meta_model, model_config_for
from fedbt.run import execute, prepare

VARIANTS = ["fedbt", "fedbt-all", "fedbt-no-pl", "fedbt-no-s", "fedbt-no-m", "fedbt-no-sp"]
MLM_HEAD = {
    "cls.predictions.bias",
    "cls.predictions.transform.dense.weight",
    "cls.predictions.transform.dense.bias",
    "cls.predictions.transform.LayerNorm.weight",
    "cls.predictions.transform.LayerNorm.bias",
}


@pytest.fixture(scope="module")
def arch12():
    """A 12-layer BERT shape on the meta device (no weights)."""
    config = model_config_for(ModelConfig(source="tiny", tiny_layers=12, tiny_hidden=16, tiny_heads=2, tiny_ffn=32))
    return ModelArch.from_model(meta_model(config, "mlm"))


def method(name, arch, rounds=5, **options):
    return create_method(name, arch, rounds, seed=0, options=options, scenario="pretrain")


@pytest.mark.parametrize(
    ("rounds", "expected"),
    [
        (1, [0]),
        (5, [0, 0, 0, 1, 2]),
        (10, [0, 0, 0, 0, 0, 1, 1, 1, 2, 3]),
        (20, [0] * 10 + [1] * 5 + [2] * 3 + [3, 4]),
    ],
)
def test_progressive_schedule(rounds, expected):
    assert progressive_schedule(rounds) == expected


def test_every_variant_is_registered():
    assert set(VARIANTS) <= set(available_methods())


def test_variant_schedules(arch12):
    assert method("fedbt-no-pl", arch12, rounds=4).schedule == [0, 0, 0, 0]
    assert method("fedbt-no-sp", arch12, rounds=4).schedule == [0, 1, 2, 3]
    assert method("fedbt", arch12, rounds=20, local_layers=6).schedule == progressive_schedule(20)


def test_deep_sampling_properties(arch12):
    fedbt = method("fedbt", arch12, rounds=20, local_layers=6)
    maps = {(r, k): fedbt.plan(r, k).layer_map for r in range(20) for k in range(6)}
    duplicates = 0
    for (r, _), layer_map in maps.items():
        layer = fedbt.schedule[r]
        assert len(layer_map) == 6
        assert list(layer_map[: layer + 1]) == list(range(layer + 1))
        deep = list(layer_map[layer + 1 :])
        assert deep == sorted(deep)
        assert all(layer + 1 <= g <= 11 for g in deep)
        duplicates += len(deep) - len(set(deep))
    assert duplicates > 0, "sampling is with replacement"
    assert len({maps[(0, k)] for k in range(6)}) > 1, "clients differ"
    assert len({maps[(r, 0)] for r in range(10)}) > 1, "rounds differ"
    again = method("fedbt", arch12, rounds=20, local_layers=6)
    assert all(again.plan(r, k).layer_map == m for (r, k), m in maps.items()), "repeatable for a seed"
    other_seed = create_method("fedbt", arch12, 20, seed=1, options={"local_layers": 6}, scenario="pretrain")
    assert any(other_seed.plan(r, k).layer_map != m for (r, k), m in maps.items())


def test_no_sampling_is_truncation(arch12):
    plan = method("fedbt-no-s", arch12, rounds=5, local_layers=6).plan(4, 3)
    assert plan.layer_map == (0, 1, 2, 3, 4, 5)


def test_no_mapping_keeps_round_zero_layers(arch12):
    no_m = method("fedbt-no-m", arch12, rounds=5, local_layers=6)
    first = no_m.plan(0, 2)
    later = no_m.plan(4, 2)  # l = 2
    assert first.stale_positions == frozenset()
    assert later.layer_map[:3] == (0, 1, 2)
    assert later.layer_map[3:] == first.layer_map[3:]
    assert later.stale_positions == frozenset({3, 4, 5})
    downloaded_layers = {arch12.layer_of(n) for n in later.download_names(arch12)} - {None}
    assert downloaded_layers == {0, 1, 2}, "stale layers are not downloaded again"


def test_trainable_sets(arch12):
    plan = method("fedbt", arch12, rounds=5, local_layers=6).plan(4, 0)  # l = 2
    assert plan.trained_layers(arch12) == [2]
    assert plan.trainable == frozenset(arch12.layer_params(2)) | MLM_HEAD
    assert "bert.embeddings.word_embeddings.weight" not in plan.trainable, "tied decoder/embeddings stay frozen"
    everything = method("fedbt-all", arch12, rounds=5, local_layers=6).plan(4, 0)
    assert everything.trainable == frozenset(everything.download_names(arch12))
    assert set(everything.trained_layers(arch12)) == set(everything.layer_map)
    assert "bert.embeddings.word_embeddings.weight" in everything.trainable


def test_invalid_settings_fail_before_training(arch12):
    with pytest.raises(ConfigError, match=r"L_k = 13 must be in 1..12"):
        method("fedbt", arch12, local_layers=13)
    with pytest.raises(ConfigError, match=r"reaches layer l = 6, which needs L_k > 6, but L_k = 6"):
        method("fedbt-no-sp", arch12, rounds=7, local_layers=6)
    with pytest.raises(ConfigError, match=r"reaches layer l = 4"):
        method("fedbt", arch12, rounds=20, local_layers=4)
    with pytest.raises(ConfigError, match="unknown method 'fedbt-no-x'; known methods: .*fedbt-no-m"):
        method("fedbt-no-x", arch12)
    with pytest.raises(ConfigError, match="method.options.depth"):
        method("fedbt", arch12, depth=3)
    with pytest.raises(ConfigError, match="does not support scenario 'finetune'"):
        create_method("fedbt", arch12, 5, 0, {}, "finetune")


def _ledger(run_dir):
    with open(run_dir / "ledger.csv") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_runs_and_its_ledger_adds_up(tiny_config, tmp_path, variant):
    config = tiny_config(f"method.name={variant}", "method.options={local_layers: 3}", "federation.rounds=3")
    prepared = prepare(config)
    arch = prepared.method.arch
    metrics = execute(prepared)
    rows = _ledger(prepared.out_dir)
    assert len(rows) == 3 * 3
    for row in rows:
        plan = prepared.method.plan(int(row["round"]), int(row["client"]))
        assert int(row["upload_params"]) == arch.numel(plan.trainable)
        assert int(row["upload_bytes"]) == 4 * arch.numel(plan.trainable)
        assert int(row["download_params"]) == arch.numel(plan.download_names(arch))
    fedavg_bytes = 4 * sum(arch.param_numel.values())
    if variant != "fedbt-all":
        assert all(int(r["upload_bytes"]) < fedavg_bytes / 2 for r in rows)
    assert len(metrics["rounds"]) == 3


def test_untrained_tensors_stay_bit_identical(tiny_config):
    config = tiny_config("method.name=fedbt", "method.options={local_layers: 2}", "federation.rounds=3")
    prepared = prepare(config)
    start = {n: p.detach().clone() for n, p in load_model(config.model, "mlm", config.seed).named_parameters()}
    execute(prepared)
    final = load_file(str(prepared.out_dir / "model/model.safetensors"))
    arch = prepared.method.arch
    trained = set()
    for r in range(3):
        for k in range(3):
            trained |= prepared.method.plan(r, k).trainable
    assert {arch.layer_of(n) for n in trained} - {None} == {0, 1}  # schedule [0, 0, 1]
    changed = {n for n in start if n in final and not torch.equal(start[n], final[n])}
    assert changed, "trained tensors moved"
    assert changed <= trained, f"untrained tensors changed: {sorted(changed - trained)[:3]}"
    untouched = set(start) - trained
    assert all(torch.equal(start[n], final[n]) for n in untouched if n in final)
    assert "bert.encoder.layer.3.output.dense.weight" in untouched


def test_sampled_layer_frequencies_are_uniform(arch12):
    fedbt = method("fedbt", arch12, rounds=1, local_layers=6)
    counts = Counter(g for k in range(2000) for g in fedbt.plan(0, k).layer_map[1:])
    assert set(counts) == set(range(1, 12))
    assert max(counts.values()) / min(counts.values()) < 1.2
