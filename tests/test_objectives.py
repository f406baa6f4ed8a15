"""Objectives: BERT masking statistics and the masked-positions-only MLM loss."""

import pytest
import torch

from fedbt.config import ModelConfig
from fedbt.models import load_model, load_tokenizer
from fedbt.training.objectives import IGNORE_INDEX, make_objective, pad_batch

TINY = ModelConfig(source="tiny", tiny_layers=2, tiny_hidden=32, tiny_heads=2, tiny_ffn=64, max_length=32)


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(TINY)


def _examples(tokenizer, n=64):
    text = "federated training of transformer layers on weak clients with masked language modelling"
    return [{"input_ids": tokenizer(f"{text} {i}")["input_ids"]} for i in range(n)]


def test_pad_batch():
    ids, mask = pad_batch([[1, 2, 3], [4]], pad_id=0, pad_to=5)
    assert ids.tolist() == [[1, 2, 3, 0, 0], [4, 0, 0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]]
    assert pad_batch([[1, 2, 3], [4]], pad_id=0, pad_to=None)[0].shape == (2, 3)


def test_masking_statistics(tokenizer):
    objective = make_objective("mlm", tokenizer, max_length=32, padding="fixed")
    examples = _examples(tokenizer, 400)
    original, _ = pad_batch([e["input_ids"] for e in examples], tokenizer.pad_token_id, 32)
    batch = objective.collate(examples, torch.Generator().manual_seed(0))
    chosen = batch["labels"] != IGNORE_INDEX
    special = torch.isin(original, torch.tensor(tokenizer.all_special_ids))
    assert not (chosen & special).any(), "special tokens and padding are never chosen"
    real = (~special).sum().item()
    assert 0.13 < chosen.sum().item() / real < 0.17
    masked = (batch["input_ids"] == tokenizer.mask_token_id) & chosen
    unchanged = (batch["input_ids"] == original) & chosen
    assert 0.76 < masked.sum().item() / chosen.sum().item() < 0.84
    assert 0.06 < unchanged.sum().item() / chosen.sum().item() < 0.14
    assert torch.equal(batch["labels"][chosen], original[chosen])


def test_masking_repeats_for_a_seed(tokenizer):
    objective = make_objective("mlm", tokenizer, max_length=32, padding="fixed")
    examples = _examples(tokenizer, 8)
    first = objective.collate(examples, torch.Generator().manual_seed(5))
    second = objective.collate(examples, torch.Generator().manual_seed(5))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_masked_only_loss_equals_full_logits_loss(tokenizer):
    model = load_model(TINY, "mlm", seed=0).eval()
    examples = _examples(tokenizer, 16)
    masked_only = make_objective("mlm", tokenizer, max_length=32, padding="fixed")
    full = make_objective("mlm", tokenizer, max_length=32, padding="fixed", masked_only=False)
    batch = masked_only.collate(examples, torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(masked_only.loss(model, batch), full.loss(model, batch), atol=1e-5)
    assert masked_only.predicted_tokens(batch) < full.predicted_tokens(batch)


def test_classification_collate(tokenizer):
    objective = make_objective("classification", tokenizer)
    batch = objective.collate([{"input_ids": [101, 5, 102], "label": 2}, {"input_ids": [101, 102], "label": 0}], None)
    assert batch["labels"].tolist() == [2, 0]
    assert batch["input_ids"].shape == (2, 3)
