"""Downstream evaluation on a tiny model and small task subsets (CPU, offline)."""

import socket
from pathlib import Path

import pytest

import fedbt.evaluation as evaluation
from fedbt.config import EvaluationConfig, ModelConfig
from fedbt.data.tasks import load_task
from fedbt.evaluation import finetune_and_score
from fedbt.models import load_model, load_tokenizer
from fedbt.training.objectives import SequenceClassification

TINY = ModelConfig(source="tiny", tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_ffn=64, max_length=32)
EVAL = EvaluationConfig(epochs=2, seeds=[0, 1], batch_size=8, max_train_examples=64, max_eval_examples=32)
TASK = "citation_intent"
DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture(scope="module", autouse=True)
def offline():
    """Hub offline and every network connection an error, for all of this module (fixtures included)."""

    def no_network(*args, **kwargs):
        raise AssertionError("evaluation tried to open a network connection")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")
        patch.setenv("HF_DATASETS_OFFLINE", "1")
        patch.setattr(socket.socket, "connect", no_network)
        patch.setattr(socket, "create_connection", no_network)
        yield


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("global") / "model"
    load_model(TINY, "mlm", 0).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


@pytest.fixture(scope="module")
def result(model_dir, tokenizer):
    return finetune_and_score(model_dir, TASK, EVAL, TINY, data_dir=DATA, device="cpu", tokenizer=tokenizer)


def without_seconds(result: dict) -> list[dict]:
    return [{k: v for k, v in seed.items() if k != "seconds"} for seed in result["seeds"]]


def test_tokenize_task_truncates_and_keeps_labels(tokenizer):
    split = load_task(TASK, DATA)["dev"].select(range(5))
    examples = SequenceClassification.encode(split, tokenizer, max_length=8)
    assert [e["label"] for e in examples] == list(split["label"])
    assert all(2 <= len(e["input_ids"]) <= 8 for e in examples)
    assert examples[0]["input_ids"][0] == tokenizer.cls_token_id
    assert examples[0]["input_ids"][-1] == tokenizer.sep_token_id


def test_result_structure(result):
    assert result["task"] == TASK
    assert result["metrics"] == ["accuracy", "macro_f1"]
    assert result["primary"] == "accuracy"
    assert [s["seed"] for s in result["seeds"]] == [0, 1]
    for seed in result["seeds"]:
        assert [row["epoch"] for row in seed["per_epoch"]] == [1, 2]
        assert seed["seconds"] > 0
        for scores in [seed["dev"], seed["test"]] + [row[s] for row in seed["per_epoch"] for s in ("dev", "test")]:
            assert set(scores) == {"accuracy", "macro_f1"}
            assert all(0.0 <= v <= 1.0 for v in scores.values())


def test_reports_test_at_best_dev_epoch(result):
    for seed in result["seeds"]:
        dev = [row["dev"]["accuracy"] for row in seed["per_epoch"]]
        assert seed["best_epoch"] == dev.index(max(dev)) + 1  # index() finds the earliest of ties
        best = seed["per_epoch"][seed["best_epoch"] - 1]
        assert (seed["dev"], seed["test"]) == (best["dev"], best["test"])


def test_mean_and_std_over_seeds(result):
    for metric in result["metrics"]:
        values = [seed["test"][metric] for seed in result["seeds"]]
        assert result["mean"][metric] == pytest.approx(sum(values) / 2)
        assert result["std"][metric] == pytest.approx(abs(values[0] - values[1]) / 2**0.5)  # ddof=1


def test_deterministic(result, model_dir, tokenizer):
    again = finetune_and_score(model_dir, TASK, EVAL, TINY, data_dir=DATA, device="cpu", tokenizer=tokenizer)
    assert without_seconds(again) == without_seconds(result)
    assert (again["mean"], again["std"]) == (result["mean"], result["std"])


def test_source_without_further_training():
    config = EvaluationConfig(epochs=1, seeds=[3], batch_size=8, max_train_examples=16, max_eval_examples=8)
    result = finetune_and_score("source", "rct", config, TINY, data_dir=DATA, device="cpu")
    assert result["task"] == "rct"
    (seed,) = result["seeds"]
    assert (seed["seed"], seed["best_epoch"]) == (3, 1)
    assert result["mean"] == seed["test"]
    assert result["std"] == {"accuracy": 0.0, "macro_f1": 0.0}


def test_selects_on_dev_never_on_test(monkeypatch, model_dir, tokenizer):
    """Scripted scores: dev peaks (with a tie) where test does not; subsets and steps are as configured."""
    dev = iter([0.2, 0.5, 0.5, 0.1])
    test = iter([0.9, 0.3, 0.4, 0.8])
    seen = {"train": [], "eval": []}
    real_train = evaluation.train

    def scripted_score(spec, examples, predictions):
        seen["eval"].append(len(examples))
        value = next(dev) if len(seen["eval"]) % 2 else next(test)
        return {"accuracy": value, "macro_f1": 1 - value}

    def counting_train(model, objective, examples, **kwargs):
        seen["train"].append((len(examples), kwargs["steps"]))
        return real_train(model, objective, examples, **kwargs)

    monkeypatch.setattr(evaluation, "score", scripted_score)
    monkeypatch.setattr(evaluation, "train", counting_train)
    config = EvaluationConfig(epochs=4, seeds=[0], batch_size=8, max_train_examples=20, max_eval_examples=6)
    result = finetune_and_score(model_dir, TASK, config, TINY, data_dir=DATA, device="cpu", tokenizer=tokenizer)
    (seed,) = result["seeds"]
    assert seed["best_epoch"] == 2
    assert seed["dev"] == {"accuracy": 0.5, "macro_f1": 0.5}
    assert seed["test"] == {"accuracy": 0.3, "macro_f1": pytest.approx(0.7)}
    assert seen == {"train": [(20, 3)] * 4, "eval": [6] * 8}
    assert result["mean"] == seed["test"]
