"""Token classification (NER): word-to-subword label alignment, the training objective, and decoding.

Words are tagged on their *first* sub-token; later sub-tokens and special tokens carry ``-100``
(:data:`~fedbt.training.objectives.IGNORE_INDEX`), so they take no part in the loss or the scores. Words cut
off by truncation to ``max_length`` are neither trained on nor scored.

Examples are dicts ``{"input_ids": [...], "labels": [...]}`` of the same length, made by :func:`tokenize_ner`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedbt.errors import FedBTError
from fedbt.training.objectives import (
    IGNORE_INDEX,
    Objective,
    ObjectiveSettings,
    named,
    pad_batch,
    register_objective,
)


def align_first_subword(word_ids: Sequence[int | None], tags: Sequence[int]) -> list[int]:
    """Per sub-token labels: the word's tag at its first sub-token, ``-100`` at later ones and at special
    tokens (``word_id`` None)."""
    labels = []
    previous = None
    for word_id in word_ids:
        labels.append(IGNORE_INDEX if word_id is None or word_id == previous else tags[word_id])
        previous = word_id
    return labels


def tokenize_ner(
    tokens_batch: Sequence[Sequence[str]], tags_batch: Sequence[Sequence[int]], tokenizer, max_length: int
) -> list[dict]:
    """``[{"input_ids": [...], "labels": [...]}, ...]`` for pre-split sentences, truncated to ``max_length``
    sub-tokens (special tokens included) and unpadded.

    A fast tokenizer encodes the batch with ``is_split_into_words=True`` and reports ``word_ids()``; a slow
    (Python) one encodes word by word. Both give the same ids for a WordPiece tokenizer.
    """
    if tokenizer.is_fast:
        encoded = tokenizer(
            [list(tokens) for tokens in tokens_batch], is_split_into_words=True, truncation=True, max_length=max_length
        )
        word_ids = [encoded.word_ids(row) for row in range(len(tokens_batch))]
        input_ids = encoded["input_ids"]
    else:
        encoded_words = [_encode_words(tokens, tokenizer, max_length) for tokens in tokens_batch]
        input_ids = [ids for ids, _ in encoded_words]
        word_ids = [words for _, words in encoded_words]
    return [
        {"input_ids": list(ids), "labels": align_first_subword(words, tags)}
        for ids, words, tags in zip(input_ids, word_ids, tags_batch, strict=True)
    ]


def _encode_words(tokens: Sequence[str], tokenizer, max_length: int) -> tuple[list[int], list[int | None]]:
    """Input ids and word ids of one sentence, encoded word by word (for tokenizers without ``word_ids``)."""
    pieces: list[int] = []
    piece_words: list[int] = []
    for word_id, word in enumerate(tokens):
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        pieces += ids
        piece_words += [word_id] * len(ids)
    keep = max_length - tokenizer.num_special_tokens_to_add(pair=False)
    pieces, piece_words = pieces[:keep], piece_words[:keep]
    input_ids = tokenizer.build_inputs_with_special_tokens(pieces)
    special = tokenizer.get_special_tokens_mask(pieces)
    words = iter(piece_words)
    return input_ids, [None if is_special else next(words) for is_special in special]


@register_objective
@dataclass
class TokenClassification(Objective):
    """Cross-entropy of the token-classification head over the labelled (first) sub-tokens."""

    name: ClassVar[str] = "token_classification"
    auto_class: ClassVar[str] = "AutoModelForTokenClassification"
    image_counterpart: ClassVar[str] = "image_classification"

    pad_id: int
    pad_to: int | None = None

    @classmethod
    def build(cls, tokenizer, settings: ObjectiveSettings) -> TokenClassification:
        return cls(pad_id=tokenizer.pad_token_id, pad_to=settings.pad_to)

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        """Pad ``input_ids`` with ``pad_id`` and ``labels`` with ``-100`` (no randomness: ``generator`` unused)."""
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, self.pad_to)
        labels = torch.full_like(input_ids, IGNORE_INDEX)
        for row, example in enumerate(examples):
            if len(example["labels"]) != len(example["input_ids"]):
                raise ValueError(
                    f"example {row}: {len(example['labels'])} labels for {len(example['input_ids'])} input ids"
                )
            row_labels = torch.as_tensor(list(example["labels"])[: input_ids.shape[1]], dtype=torch.long)
            labels[row, : len(row_labels)] = row_labels
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """The classifier runs at every position of the padded batch."""
        return int(batch["input_ids"].numel())

    @staticmethod
    def expected_predicted(sequences: int, tokens: int, settings: ObjectiveSettings) -> int:
        return tokens

    @staticmethod
    def head_stages(arch, sequences: int, predicted_tokens: int) -> list[tuple[int, str, list[str]]]:
        classifier = named(arch, "classifier.weight", arch.head_params())
        if classifier is None:
            raise FedBTError("no token-classification head (classifier.weight) found")
        return [(predicted_tokens * 2 * arch.param_numel[classifier], classifier, [classifier])]

    @classmethod
    def encode(cls, split, tokenizer, max_length: int) -> list[dict]:
        """``{"input_ids", "labels"}`` (first-subword tags) per sentence."""
        return tokenize_ner(split["tokens"], split["tags"], tokenizer, max_length)

    @classmethod
    def majority_predictions(cls, train: Sequence[dict], examples: Sequence[dict]) -> list[list[int]]:
        """Train's most frequent tag (``O`` in NER data, so entity F1 0) at every token of ``examples``."""
        counts = Counter(tag for e in train for tag in e["labels"] if tag != IGNORE_INDEX)
        tag = min(counts, key=lambda value: (-counts[value], value))
        return [[tag] * len(e["input_ids"]) for e in examples]

    @classmethod
    def score(cls, task, examples: Sequence[dict], predictions: Sequence) -> dict[str, float]:
        from fedbt.metrics import compute_metrics

        predicted, gold = decode_predictions(predictions, [list(e["labels"]) for e in examples], task.labels)
        return compute_metrics(task.scored_metrics, predicted, gold)


def decode_predictions(
    logits_argmax, labels, id2tag: Sequence[str] | Mapping[int, str]
) -> tuple[list[list[str]], list[list[str]]]:
    """Predicted and gold tag sequences for seqeval, one pair per row, keeping the positions whose label is
    not ``-100``. ``logits_argmax`` and ``labels`` are ``(batch, length)`` tensors or nested lists."""
    predicted_rows = logits_argmax.tolist() if isinstance(logits_argmax, torch.Tensor) else logits_argmax
    label_rows = labels.tolist() if isinstance(labels, torch.Tensor) else labels
    predictions, references = [], []
    for predicted, gold in zip(predicted_rows, label_rows, strict=True):
        kept = [(p, g) for p, g in zip(predicted, gold, strict=True) if g != IGNORE_INDEX]
        predictions.append([id2tag[p] for p, _ in kept])
        references.append([id2tag[g] for _, g in kept])
    return predictions, references
