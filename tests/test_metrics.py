"""The metrics shipped as local evaluate modules: values on hand-made cases, offline loading, errors."""

import socket

import pytest

from fedbt.metrics import compute_metrics, known_metrics, load_metric

# 3 classes; per class (TP, predicted, true): 0 -> (1, 1, 2), 1 -> (1, 2, 2), 2 -> (1, 2, 1)
PREDICTIONS = [0, 1, 2, 2, 1]
REFERENCES = [0, 1, 1, 2, 0]


def test_accuracy_by_hand():
    assert compute_metrics(["accuracy"], PREDICTIONS, REFERENCES) == {"accuracy": pytest.approx(3 / 5)}


def test_macro_f1_by_hand():
    # F1 per class: 0 -> P 1, R 1/2: 2/3; 1 -> P 1/2, R 1/2: 1/2; 2 -> P 1/2, R 1: 2/3
    expected = (2 / 3 + 1 / 2 + 2 / 3) / 3
    assert compute_metrics(["macro_f1"], PREDICTIONS, REFERENCES) == {"macro_f1": pytest.approx(expected)}


def test_macro_f1_counts_a_never_predicted_class_as_zero():
    # class 1 is never predicted: F1 0 -> 1, 1 -> 0
    assert compute_metrics(["macro_f1"], [0, 0], [0, 1]) == {"macro_f1": pytest.approx((2 / 3 + 0) / 2)}


def test_compute_metrics_several_in_order():
    scores = compute_metrics(("macro_f1", "accuracy"), PREDICTIONS, REFERENCES)
    assert list(scores) == ["macro_f1", "accuracy"]
    assert all(isinstance(v, float) for v in scores.values())


def test_perfect_predictions():
    assert compute_metrics(["accuracy", "macro_f1"], [2, 0, 1], [2, 0, 1]) == {
        "accuracy": 1.0,
        "macro_f1": 1.0,
    }


def test_loads_offline_without_network(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError("metric loading tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    for name in known_metrics():
        assert load_metric(name).name == name
    assert compute_metrics(["accuracy"], [1], [1]) == {"accuracy": 1.0}


def test_known_metrics():
    assert {"accuracy", "macro_f1"} <= set(known_metrics())


def test_unknown_metric_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown metric 'f1'.*accuracy, macro_f1"):
        load_metric("f1")
    with pytest.raises(ValueError, match="known metrics"):
        compute_metrics(["accuracy", "bleu"], [0], [0])
