"""The majority-class baseline every fine-tuning table shows: hand-computed cases per objective."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from fedbt.training.objectives import IGNORE_INDEX, get_objective


def test_classification_predicts_the_most_frequent_training_label_smallest_on_ties():
    objective = get_objective("classification")
    train = [{"label": 2}, {"label": 1}, {"label": 2}, {"label": 1}, {"label": 0}]
    test = [{"label": 0}, {"label": 1}, {"label": 2}]
    assert objective.majority_predictions(train, test) == [1, 1, 1]  # 1 and 2 tie: the smaller id
    task = SimpleNamespace(scored_metrics=("accuracy", "macro_f1"))
    scores = objective.score(task, test, objective.majority_predictions(train, test))
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["macro_f1"] == pytest.approx((0 + 0.5 + 0) / 3)  # class 1: precision 1/3, recall 1


def test_token_classification_predicts_the_most_frequent_tag_at_every_token():
    objective = get_objective("token_classification")
    train = [{"input_ids": [0, 5, 6, 1], "labels": [IGNORE_INDEX, 0, 1, IGNORE_INDEX]}, {"labels": [0, 0, 2]}]
    test = [{"input_ids": [0, 7, 1]}, {"input_ids": [0, 8, 9, 1]}]
    assert objective.majority_predictions(train, test) == [[0, 0, 0], [0, 0, 0, 0]]
    task = SimpleNamespace(scored_metrics=("ner_f1",), labels=("O", "B-Disease", "I-Disease"))
    gold = [{"input_ids": [0, 7, 1], "labels": [IGNORE_INDEX, 1, IGNORE_INDEX]}]
    assert objective.score(task, gold, objective.majority_predictions(train, gold))["ner_f1"] == 0.0
