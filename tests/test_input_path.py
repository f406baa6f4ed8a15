"""The input path of a run: the objective registry, dynamic padding and length-grouped batches (same loss as fixed
padding, exact FLOP accounting on mixed lengths), the token cache a run reads, S2ORC preparation, estimates."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from fedbt.config import ModelConfig
from fedbt.costs import analytic_train_flops
from fedbt.federated.method import ClientPlan
from fedbt.models import ModelArch, load_model, load_tokenizer
from fedbt.run import execute, prepare
from fedbt.training import loop
from fedbt.training.objectives import available_objectives, get_objective, make_objective

from .conftest import REPO

TINY = ModelConfig(source="tiny", tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_ffn=64, max_length=32)
TEXT = "federated training of transformer layers on weak clients with masked language modelling and more words"


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


def _mixed(tokenizer, n=24):
    """Examples of many lengths (3 .. 18 words)."""
    words = TEXT.split()
    return [{"input_ids": tokenizer(" ".join(words[: 3 + i % 16]))["input_ids"], "label": i % 3} for i in range(n)]


def test_every_objective_declares_what_the_suite_needs():
    objectives = available_objectives()
    assert set(objectives) >= {"mlm", "classification", "token_classification", "mim", "image_classification"}
    for name, objective in objectives.items():
        assert objective.name == name and objective.scenario in ("pretrain", "finetune")
        assert objective.modality in ("text", "image") and objective.auto_class.startswith("AutoModelFor")
    with pytest.raises(Exception, match="unknown objective 'mlmx'; allowed: classification"):
        get_objective("mlmx")


@pytest.mark.parametrize("name", ["mlm", "classification"])
def test_dynamic_padding_gives_the_loss_of_fixed_padding(tokenizer, name):
    model = load_model(TINY, name, seed=0, num_labels=3 if name == "classification" else None).eval()
    examples = _mixed(tokenizer, 8)
    dynamic = make_objective(name, tokenizer, max_length=32, padding="dynamic")
    fixed = make_objective(name, tokenizer, max_length=32, padding="fixed")
    short = dynamic.collate(examples, torch.Generator().manual_seed(3))
    full = fixed.collate(examples, torch.Generator().manual_seed(3))
    assert short["input_ids"].shape[1] == max(len(e["input_ids"]) for e in examples) < full["input_ids"].shape[1]
    with torch.no_grad():
        assert torch.allclose(dynamic.loss(model, short), fixed.loss(model, full), atol=1e-5)


def test_length_grouped_batches_cover_every_example_and_pad_less(tokenizer):
    examples = _mixed(tokenizer, 48)
    lengths = np.array([len(e["input_ids"]) for e in examples])
    grouped = loop.epoch_order(48, 8, torch.Generator().manual_seed(0), lengths)
    plain = loop.epoch_order(48, 8, torch.Generator().manual_seed(0))
    assert sorted(i for batch in grouped for i in batch) == list(range(48))

    def padding(batches):
        return sum(len(b) * lengths[b].max() - lengths[b].sum() for b in map(np.array, batches))

    assert padding(grouped) < padding(plain) / 2


def test_analytic_flops_are_exact_per_batch_shape_on_mixed_lengths(tokenizer):
    """The analytic FLOPs of a pass are the sum over its batches' real shapes; torch's counter agrees exactly on
    every step (eager attention)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        attn_implementation="eager",
    )
    model = BertForSequenceClassification(config)
    arch = ModelArch.from_model(model)
    plan = ClientPlan((0, 1), frozenset(arch.names))
    objective = make_objective("classification", tokenizer, max_length=32)
    examples = _mixed(tokenizer, 24)
    generator = torch.Generator().manual_seed(0)
    result = loop.train(
        model,
        objective,
        examples,
        steps=3,
        batch_size=8,
        lr=1e-3,
        weight_decay=0.0,
        generator=generator,
        device=torch.device("cpu"),
        flop_count_steps=3,
        group_by_length=True,
    )
    assert len(result.shapes) > 1, "batches of several padded lengths"
    analytic = sum(
        analytic_train_flops(arch, plan, s, length, p, head="classification")
        for length, (s, p) in result.shapes.items()
    )
    counted = 0
    for batch_examples in loop.batches(
        examples, 8, 3, torch.Generator().manual_seed(0), loop.example_lengths(examples)
    ):
        batch = objective.collate(batch_examples, None)
        with FlopCounterMode(display=False) as counter:
            objective.loss(model, batch).backward()
        counted += counter.get_total_flops()
    assert result.measured_flops == counted == analytic


def test_measured_flops_agree_with_analytic_within_2_percent_on_a_run(tiny_config, tmp_path):
    """A MiniLM-shaped model (random weights), dynamic padding, length-grouped batches of mixed lengths; the
    counter samples the first step and scales the rest by their positions."""
    config = tiny_config(
        "model.source=scratch:bert:layers=2,hidden=384,heads=12,ffn=1536,vocab=30522",
        "federation.rounds=1",
        "federation.clients=2",
        "data.max_examples=64",
        "local.steps=3",
    )
    metrics = execute(prepare(config))
    for record in metrics["rounds"]:
        assert record["measured_flops"] == pytest.approx(record["analytic_flops"], rel=0.02)
    rows = (config.resolved_out_dir() / "ledger.csv").read_text()
    assert "analytic_flops" in rows


def test_runs_read_the_token_cache_built_once(tiny_config, tmp_path, monkeypatch):
    from fedbt.data import run_data

    cache = tmp_path / "tokens-cache"
    built = []
    original = run_data.iter_grouped
    monkeypatch.setattr(run_data, "iter_grouped", lambda *a, **k: built.append(1) or original(*a, **k))
    first = execute(prepare(tiny_config(f"data.cache_dir={cache}", "federation.rounds=1")))
    second = execute(
        prepare(
            tiny_config(
                f"data.cache_dir={cache}", "federation.rounds=1", "method.name=fedbt", f"out_dir={tmp_path / 'second'}"
            )
        )
    )
    assert built == [1], "the corpus is tokenised once; the second job memory-maps the cache"
    assert first["partition"]["sizes"] == second["partition"]["sizes"]
    (folder,) = (cache / "tokens").iterdir()
    assert json.loads((folder / "meta.json").read_text())["splits"]["train"]["examples"] > 1000


def test_prepare_s2orc_builds_the_field_corpus(tmp_path):
    from fedbt.config import SourceConfig, from_dict
    from fedbt.data.corpus import load_corpus
    from fedbt.data.s2orc import SOURCE_TEMPLATE, PrepareSettings, prepare_s2orc

    shards = REPO / "tests" / "data" / "s2orc"
    out = tmp_path / "cs"
    manifest = prepare_s2orc(PrepareSettings("Computer Science", [str(shards)], [str(shards)], str(out)))
    assert (manifest["papers"], manifest["with_full_text"], manifest["abstract_only"]) == (13, 2, 11)
    rows = [json.loads(line) for line in (out / "sentences.jsonl").read_text().splitlines()]
    assert rows[0] == {
        "text": "This technical note studies Markov decision processes under parameter uncertainty.",
        "paper": 0,
    }
    assert "Sequential decision making under uncertainty is common in practice (see e.g. Puterman, 1994)." in [
        r["text"] for r in rows
    ]
    assert "Short one." not in [r["text"] for r in rows]  # fewer than 5 words
    assert not any("outside the field" in r["text"] for r in rows)
    assert [r["paper"] for r in rows] == sorted(r["paper"] for r in rows) and rows[-1]["paper"] == 12
    source = from_dict(SourceConfig, {**SOURCE_TEMPLATE, "location": str(out / "sentences.jsonl")}, "sources.cs")
    assert load_corpus("s2orc-cs", "data", sources={"s2orc-cs": source}) == [r["text"] for r in rows]
    capped = prepare_s2orc(PrepareSettings("Computer Science", [str(shards)], [], str(tmp_path / "two"), max_papers=2))
    assert capped["papers"] == 2 and capped["with_full_text"] == 0


def test_papers_scheme_gives_each_client_a_block_of_papers():
    from fedbt.data.partition import partition_indices

    groups = [0, 0, 1, 1, 1, 2, 3, 3, 4]
    assert partition_indices(9, 2, "papers", 0, groups=groups, papers_per_client=2) == [[0, 1, 2, 3, 4], [5, 6, 7]]
    with pytest.raises(Exception, match="papers needs a corpus that names the paper"):
        partition_indices(9, 2, "papers", 0)


def test_estimate_of_the_paper_study_offline():
    """The paper study's S2ORC corpora and hub tasks are not on this machine: their declared sizes cost it."""
    from fedbt.estimate import estimate

    study = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    pretrain, finetune = study["studies"]["pretrain"], study["studies"]["finetune"]
    pretrain.update(data=["cs", "medicine"], variants=["none", "fedavg", "fedbt"], seeds=[0])
    finetune.update(data=["ncbi_disease", "chemprot"], variants=["fedavg", "fedbt-ft"], seeds=[0])
    pretrain.pop("lr_grid"), finetune.pop("lr_grid")  # one job per cell
    study["studies"] = {"pretrain": pretrain, "finetune": finetune}
    result = estimate(study, tflops=400.0)
    total = result["total"]
    assert total["jobs"] == sum(row["jobs"] for row in result["studies"].values()) == 6 + 4
    assert total["device_hours"] == pytest.approx((total["client_flops"] + total["evaluation_flops"]) / 400e12 / 3600)
    jobs = {(j["study"], j["data"], j["variant"]): j for j in result["jobs"]}
    fedavg, fedbt = jobs[("pretrain", "cs", "fedavg")], jobs[("pretrain", "cs", "fedbt")]
    assert 0 < fedbt["client_flops"] < fedavg["client_flops"] and fedbt["lengths"] == "max_length"
    assert jobs[("pretrain", "cs", "none")]["client_flops"] == 0
    assert (
        jobs[("finetune", "chemprot", "fedbt-ft")]["client_flops"]
        < jobs[("finetune", "chemprot", "fedavg")]["client_flops"]
    )
    assert total["disk_bytes"] == total["kept_inputs_bytes"] == 0, "no job keeps its model; no starting model"

    study["keep_models"] = True  # every job keeps its bert-base model: 4 bytes per parameter
    kept = estimate(study, tflops=400.0)
    bert_base = next(j for j in kept["jobs"] if j["variant"] == "fedavg" and j["study"] == "pretrain")["model_bytes"]
    assert 4 * 109e6 < bert_base < 4 * 111e6  # bert-base-uncased with its MLM head (tied decoder): ~110 M
    assert kept["total"]["disk_bytes"] == sum(j["model_bytes"] for j in kept["jobs"])
