"""Training objectives: how examples become batches and batches become a loss.

* :class:`MaskedLM`: BERT masking (``p`` of the real tokens are chosen; of those 80 % become ``[MASK]``,
  10 % a random token, 10 % stay), drawn from an explicit generator so runs repeat. With
  ``masked_only=True`` the MLM head runs only at the chosen positions: the same loss as the full-logits
  path (mean cross-entropy over chosen positions) for a fraction of the decoder FLOPs.
* :class:`SequenceClassification`: cross-entropy of the sequence-classification head.
* Token classification (NER) and the image objectives (masked image modelling, image classification) live in
  :mod:`fedbt.training.token_classification` and :mod:`fedbt.training.vision`; :func:`make_objective` builds
  any of them by name.

Examples are tokenised dicts with ``input_ids`` (list of ints, unpadded) and, for classification,
``label``. Collation pads to the objective's ``pad_to`` (a fixed length, so every step has the same shape
and measured FLOPs of one step extrapolate exactly) or to the longest sequence in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from fedbt.config import IMAGE_OBJECTIVES, OBJECTIVES

IGNORE_INDEX = -100


class Objective(Protocol):
    """What the training loop needs from an objective."""

    head: str

    def collate(self, examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]: ...

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Real (non-padding) input positions of the batch: tokens, or patches + [CLS] for images."""
        ...

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Positions at which the output head runs (for analytic FLOPs)."""
        ...


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, pad_to: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into ``(input_ids, attention_mask)`` of length ``pad_to`` or the longest."""
    length = pad_to or max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = list(seq)[:length]
        input_ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


@dataclass
class MaskedLM:
    """BERT masked-language modelling (80/10/10) with an optional masked-positions-only decoder."""

    pad_id: int
    mask_id: int
    vocab_size: int
    special_ids: frozenset[int]
    probability: float = 0.15
    masked_only: bool = True
    pad_to: int | None = None
    head: str = "mlm"

    def collate(self, examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, self.pad_to)
        labels = input_ids.clone()
        maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(sorted(self.special_ids)))
        chosen = (torch.rand(input_ids.shape, generator=generator) < self.probability) & maskable
        labels[~chosen] = IGNORE_INDEX
        draw = torch.rand(input_ids.shape, generator=generator)
        to_mask = chosen & (draw < 0.8)
        to_random = chosen & (draw >= 0.8) & (draw < 0.9)
        random_tokens = torch.randint(self.vocab_size, input_ids.shape, generator=generator)
        input_ids = torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        input_ids = torch.where(to_random, random_tokens, input_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.masked_only:
            return model(**batch).loss
        labels = batch["labels"]
        hidden = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])[0]
        chosen = labels != IGNORE_INDEX
        if not chosen.any():  # nothing masked in this batch: a zero loss that keeps the graph
            return hidden.sum() * 0.0
        logits = mlm_head(model)(hidden[chosen])
        return F.cross_entropy(logits.float(), labels[chosen])

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        if self.masked_only:
            return int((batch["labels"] != IGNORE_INDEX).sum())
        return int(batch["input_ids"].numel())


def mlm_head(model: nn.Module) -> nn.Module:
    """The module mapping hidden states to vocabulary logits (``cls`` for BERT-family models)."""
    for name in ("cls", "lm_head", "vocab_projector"):
        if hasattr(model, name):
            return getattr(model, name)
    raise TypeError(f"{type(model).__name__}: no MLM head found (tried cls, lm_head); use masked_only_logits=false")


@dataclass
class SequenceClassification:
    """Cross-entropy on the sequence-classification head; examples carry an integer ``label``."""

    pad_id: int
    pad_to: int | None = None
    head: str = "classification"

    def collate(self, examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, self.pad_to)
        labels = torch.tensor([e["label"] for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["attention_mask"].sum())

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])


def make_objective(
    objective: str,
    processor,
    *,
    mlm_probability: float = 0.15,
    masked_only: bool = True,
    pad_to: int | None = None,
    mask_ratio: float = 0.6,
    patches: int = 0,
):
    """The objective named in ``local.objective``. ``processor`` is the tokenizer of a text model or the image
    processor of an image model (whose ``patches`` per image the image objectives need)."""
    if objective in IMAGE_OBJECTIVES:
        from fedbt.training.vision import ImageClassification, MaskedImageModeling

        if patches < 1:
            raise ValueError(f"objective {objective!r} needs the number of patches per image, got {patches}")
        if objective == "mim":
            return MaskedImageModeling(processor, patches, mask_ratio)
        return ImageClassification(processor, patches)
    tokenizer = processor
    if objective == "mlm":
        return MaskedLM(
            pad_id=tokenizer.pad_token_id,
            mask_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            special_ids=frozenset(tokenizer.all_special_ids),
            probability=mlm_probability,
            masked_only=masked_only,
            pad_to=pad_to,
        )
    if objective == "classification":
        return SequenceClassification(pad_id=tokenizer.pad_token_id, pad_to=pad_to)
    if objective == "token_classification":
        from fedbt.training.token_classification import TokenClassification

        return TokenClassification(pad_id=tokenizer.pad_token_id, pad_to=pad_to)
    raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
