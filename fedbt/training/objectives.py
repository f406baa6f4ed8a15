"""Training objectives, one registry: what a model trains on, how examples become batches, and what it costs.

An objective (``local.objective``, also the name of the model head it trains) is one class registered with
:func:`register_objective`. It declares, in one place,

* ``modality`` (``text`` or ``image``), ``scenario`` (``pretrain``: an unlabelled corpus; ``finetune``: a task of
  the kind named like the objective) and ``auto_class`` (the transformers model class of its head);
* ``collate`` (examples -> batch), ``loss``, and the per-batch counts the ledger needs (``shape``,
  ``input_tokens``, ``predicted_tokens``);
* ``head_stages``: the head's matmuls for the analytic FLOP model (:mod:`fedbt.costs`);
* for task objectives, ``encode`` (a task split -> examples) and ``score`` (predictions -> the task's metrics).

Built-in objectives live in the modules of :mod:`fedbt.training` (masked LM and sequence classification here,
token classification and the image objectives next to it); a plugin module (config ``plugins``) may register
more. Nothing else in the suite branches on objective names.

Examples are dicts with ``input_ids`` (a list or 1-D array of token ids, unpadded) and, for tasks, ``label``
or ``labels``. Collation pads to the objective's ``pad_to`` (fixed padding) or to the longest sequence of the
batch (dynamic padding, the default). Masked LM draws its masks over ``max_length`` positions whatever the
padding, so a batch is masked identically under fixed and dynamic padding.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedbt.errors import ConfigError, FedBTError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class ObjectiveSettings:
    """The run settings objectives are built from (``local.*`` and ``model.max_length``)."""

    max_length: int = 128
    padding: str = "dynamic"
    mlm_probability: float = 0.15
    masked_only: bool = True
    mask_ratio: float = 0.6
    patches: int = 0
    """Image patches per example (image objectives only)."""

    @property
    def pad_to(self) -> int | None:
        return self.max_length if self.padding == "fixed" else None


class Objective:
    """Base class of objectives; subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    modality: ClassVar[str] = "text"
    scenario: ClassVar[str] = "finetune"
    auto_class: ClassVar[str]
    image_counterpart: ClassVar[str | None] = None
    """The objective an image model trains when this (text) one is asked for, in cost tables (None: none)."""

    @property
    def head(self) -> str:
        """The model head it trains (its name)."""
        return self.name

    @classmethod
    def build(cls, processor, settings: ObjectiveSettings) -> Objective:
        """The objective for a model's ``processor`` (tokenizer or image processor)."""
        raise NotImplementedError

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(**batch).loss

    def shape(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        """``(sequences, positions per sequence)`` the model computes on (padding included)."""
        return tuple(batch["input_ids"].shape)

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Real (non-padding) input positions of the batch."""
        return int(batch["attention_mask"].sum())

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        """Positions at which the output head runs (for analytic FLOPs)."""
        raise NotImplementedError

    @staticmethod
    def expected_predicted(sequences: int, tokens: int, settings: ObjectiveSettings) -> int:
        """``predicted_tokens`` expected for ``sequences`` sequences of ``tokens`` real tokens in all (cost
        tables and estimates, where no batch is drawn)."""
        raise NotImplementedError

    @staticmethod
    def head_stages(arch, sequences: int, predicted_tokens: int) -> list[tuple[int, str, list[str]]]:
        """The head's matmuls bottom-up: ``(flops, weight name, names whose training makes the output need a
        gradient)``."""
        raise NotImplementedError

    @classmethod
    def encode(cls, split, processor, max_length: int) -> list[dict]:
        """Examples of a task split (task objectives only)."""
        raise FedBTError(f"objective {cls.name!r} trains on a corpus, not on a task")

    @classmethod
    def score(cls, task, examples: Sequence[dict], predictions: Sequence) -> dict[str, float]:
        """The task's metrics of ``predictions`` (from :func:`fedbt.training.loop.predict`) of ``examples``."""
        raise FedBTError(f"objective {cls.name!r} is not scored on a task")

    @classmethod
    def majority_predictions(cls, train: Sequence[dict], examples: Sequence[dict]) -> list:
        """The majority-class baseline's predictions of ``examples``: train's most frequent ``label`` (the
        smallest such label id on ties) for every example."""
        counts = Counter(int(e["label"]) for e in train)
        label = min(counts, key=lambda value: (-counts[value], value))
        return [label] * len(examples)


# ------------------------------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Objective]] = {}


def register_objective(cls: type[Objective]) -> type[Objective]:
    """Class decorator: make objective ``cls`` available under ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name].__qualname__ != cls.__qualname__:
        raise ValueError(f"objective name {cls.name!r} is already registered by {_REGISTRY[cls.name].__module__}")
    _REGISTRY[cls.name] = cls
    return cls


_BUILTIN_LOADED = False


def available_objectives() -> dict[str, type[Objective]]:
    """Every registered objective by name (the built-in modules of :mod:`fedbt.training` imported first)."""
    global _BUILTIN_LOADED
    if not _BUILTIN_LOADED:
        import fedbt.training as package

        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package.__name__}.{info.name}")
        _BUILTIN_LOADED = True
    return dict(sorted(_REGISTRY.items()))


def get_objective(name: str, key: str = "local.objective") -> type[Objective]:
    """The objective class registered as ``name``; an unknown name lists the known ones under ``key``."""
    objectives = available_objectives()
    if name not in objectives:
        raise ConfigError(key, f"unknown objective {name!r}; allowed: {', '.join(objectives)}")
    return objectives[name]


def make_objective(name: str, processor, settings: ObjectiveSettings | None = None, **overrides: Any) -> Objective:
    """The objective ``name`` built for ``processor``; ``overrides`` replace fields of ``settings``."""
    settings = settings or ObjectiveSettings()
    if overrides:
        settings = ObjectiveSettings(**{**settings.__dict__, **overrides})
    return get_objective(name).build(processor, settings)


# -------------------------------------------------------------------------------------- helpers


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, pad_to: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id sequences into ``(input_ids, attention_mask)`` of length ``pad_to`` or the longest."""
    length = pad_to or max(len(s) for s in sequences)
    input_ids = torch.full((len(sequences), length), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, seq in enumerate(sequences):
        seq = torch.as_tensor(np.asarray(seq, dtype=np.int64)[:length])
        input_ids[row, : len(seq)] = seq
        attention_mask[row, : len(seq)] = 1
    return input_ids, attention_mask


def named(arch, suffix: str, names: list[str] | None = None) -> str | None:
    """The parameter whose name ends with ``suffix`` (searched in ``names``, default all)."""
    return next((n for n in (names if names is not None else arch.names) if n.endswith(suffix)), None)


def mlm_head(model: nn.Module) -> nn.Module:
    """The module mapping hidden states to vocabulary logits (``cls`` for BERT-family models)."""
    for name in ("cls", "lm_head", "vocab_projector"):
        if hasattr(model, name):
            return getattr(model, name)
    raise TypeError(f"{type(model).__name__}: no MLM head found (tried cls, lm_head); use masked_only_logits=false")


# ----------------------------------------------------------------------------- text objectives


@register_objective
@dataclass
class MaskedLM(Objective):
    """BERT masked-language modelling: ``p`` of the real tokens are chosen; of those 80 % become ``[MASK]``,
    10 % a random token, 10 % stay, drawn from an explicit generator so runs repeat. With ``masked_only`` the
    MLM head runs only at the chosen positions: the same loss as the full-logits path for a fraction of the
    decoder FLOPs."""

    name: ClassVar[str] = "mlm"
    scenario: ClassVar[str] = "pretrain"
    auto_class: ClassVar[str] = "AutoModelForMaskedLM"
    image_counterpart: ClassVar[str] = "mim"

    pad_id: int
    mask_id: int
    vocab_size: int
    special_ids: frozenset[int]
    probability: float = 0.15
    masked_only: bool = True
    pad_to: int | None = None
    max_length: int = 0
    """Width of the random draws (at least the batch's length): masks do not depend on the padding."""

    @classmethod
    def build(cls, tokenizer, settings: ObjectiveSettings) -> MaskedLM:
        return cls(
            pad_id=tokenizer.pad_token_id,
            mask_id=tokenizer.mask_token_id,
            vocab_size=len(tokenizer),
            special_ids=frozenset(tokenizer.all_special_ids),
            probability=settings.mlm_probability,
            masked_only=settings.masked_only,
            pad_to=settings.pad_to,
            max_length=settings.max_length,
        )

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, self.pad_to)
        length = input_ids.shape[1]
        draws = (len(examples), max(length, self.max_length))
        labels = input_ids.clone()
        maskable = attention_mask.bool() & ~torch.isin(input_ids, torch.tensor(sorted(self.special_ids)))
        chosen = (torch.rand(draws, generator=generator)[:, :length] < self.probability) & maskable
        labels[~chosen] = IGNORE_INDEX
        draw = torch.rand(draws, generator=generator)[:, :length]
        to_mask = chosen & (draw < 0.8)
        to_random = chosen & (draw >= 0.8) & (draw < 0.9)
        random_tokens = torch.randint(self.vocab_size, draws, generator=generator)[:, :length]
        input_ids = torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        input_ids = torch.where(to_random, random_tokens, input_ids)
        # the masked positions (row-major), known here on the host, so the loss needs no device sync to find them
        masked_index = chosen.flatten().nonzero().squeeze(1)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "labels": labels,
            "masked_index": masked_index,
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if not self.masked_only:
            return model(**inputs, labels=batch["labels"]).loss
        index = batch["masked_index"]
        hidden = model.base_model(**inputs)[0]
        if index.numel() == 0:  # nothing masked in this batch: a zero loss that keeps the graph
            return hidden.sum() * 0.0
        logits = mlm_head(model)(hidden.flatten(0, 1).index_select(0, index))
        return F.cross_entropy(logits.float(), batch["labels"].flatten().index_select(0, index))

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["masked_index"].numel()) if self.masked_only else int(batch["input_ids"].numel())

    @staticmethod
    def expected_predicted(sequences: int, tokens: int, settings: ObjectiveSettings) -> int:
        return round(settings.mlm_probability * tokens) if settings.masked_only else tokens

    @staticmethod
    def head_stages(arch, sequences: int, predicted_tokens: int) -> list[tuple[int, str, list[str]]]:
        H = arch.hidden_size
        head_names = arch.head_params()
        transform = named(arch, "transform.dense.weight", head_names)
        # The decoder weight is usually tied to the word embeddings and then listed under that name only.
        decoder = named(arch, "decoder.weight", head_names) or named(arch, "word_embeddings.weight")
        if transform is None or decoder is None:
            raise FedBTError("no MLM head (transform.dense.weight, decoder/word-embedding weight) found")
        transform_group = [n for n in head_names if ".transform." in n]
        return [
            (predicted_tokens * 2 * H * H, transform, transform_group),
            (predicted_tokens * 2 * arch.param_numel[decoder], decoder, [decoder]),
        ]


@register_objective
@dataclass
class SequenceClassification(Objective):
    """Cross-entropy on the sequence-classification head (pooler + classifier); examples carry a ``label``."""

    name: ClassVar[str] = "classification"
    auto_class: ClassVar[str] = "AutoModelForSequenceClassification"
    image_counterpart: ClassVar[str] = "image_classification"

    pad_id: int
    pad_to: int | None = None

    @classmethod
    def build(cls, tokenizer, settings: ObjectiveSettings) -> SequenceClassification:
        return cls(pad_id=tokenizer.pad_token_id, pad_to=settings.pad_to)

    def collate(self, examples: Sequence[dict], generator: torch.Generator | None) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = pad_batch([e["input_ids"] for e in examples], self.pad_id, self.pad_to)
        labels = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return int(batch["input_ids"].shape[0])

    @staticmethod
    def expected_predicted(sequences: int, tokens: int, settings: ObjectiveSettings) -> int:
        return sequences

    @staticmethod
    def head_stages(arch, sequences: int, predicted_tokens: int) -> list[tuple[int, str, list[str]]]:
        H = arch.hidden_size
        classifier = named(arch, "classifier.weight", arch.head_params())
        if classifier is None:
            raise FedBTError("no classification head (classifier.weight) found")
        stages = []
        pooler = named(arch, "pooler.dense.weight")
        if pooler is not None:
            stages.append((sequences * 2 * H * H, pooler, [n for n in arch.names if ".pooler." in n]))
        stages.append((sequences * 2 * arch.param_numel[classifier], classifier, [classifier]))
        return stages

    @classmethod
    def encode(cls, split, tokenizer, max_length: int) -> list[dict]:
        """``{"input_ids", "label"}`` per row, truncated to ``max_length`` tokens and unpadded."""
        encoded = tokenizer(list(split["text"]), truncation=True, max_length=max_length)
        return [
            {"input_ids": ids, "label": int(label)}
            for ids, label in zip(encoded["input_ids"], split["label"], strict=True)
        ]

    @classmethod
    def score(cls, task, examples: Sequence[dict], predictions: Sequence) -> dict[str, float]:
        from fedbt.metrics import compute_metrics

        return compute_metrics(task.scored_metrics, list(predictions), [int(e["label"]) for e in examples])
