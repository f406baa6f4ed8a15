"""Making a distilled student offline: the default config's stand-in for DistilBERT / TinyBERT.

A student of depth ``k`` is a model of the teacher's class whose local layer ``j`` starts from teacher layer
``layers[j]`` (embeddings and MLM head copied too, as DistilBERT was initialised). It is then distilled from
the frozen teacher on a general-domain corpus with masked inputs (BERT masking, 15 %):

* soft targets: ``T^2 * KL(softmax(teacher / T) || softmax(student / T))`` of the MLM logits at the masked
  positions (temperature ``T``);
* hidden states: mean squared error between the student's embedding output and layer outputs and the
  teacher's at the mapped layers (student ``j`` <-> teacher ``layers[j]``), over real tokens, times
  ``hidden_weight``.

The MiniLM teacher ships without an MLM head (the suite gives it a new one), so its soft targets are those of
a random projection of its last hidden state; the hidden-state term carries most of the signal there.

The step is its own pipeline stage with its own cost: :func:`distill_student` writes the student checkpoint
(weights, config, tokenizer) and ``distill_costs.json`` (seconds, measured FLOPs, steps, ...).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fedbt.config import ModelConfig
from fedbt.data.corpus import MIN_WORDS, load_corpus
from fedbt.errors import ConfigError, DataError
from fedbt.models import (
    ModelArch,
    build_local_model,
    load_from_global,
    load_model,
    load_tokenizer,
    local_to_global_names,
    model_config_for,
)
from fedbt.training import loop
from fedbt.training.objectives import IGNORE_INDEX, MaskedLM, make_objective, mlm_head

COSTS_FILE = "distill_costs.json"


def init_student(teacher: nn.Module, layers: Sequence[int]) -> nn.Module:
    """A model of the teacher's class with ``len(layers)`` layers, layer ``j`` copied from teacher layer
    ``layers[j]``; embeddings and head copied."""
    arch = ModelArch.from_model(teacher)
    if not layers or list(layers) != sorted(set(layers)):
        raise ConfigError("layers", f"got {list(layers)}, must be distinct teacher layers in increasing order")
    student = build_local_model(teacher, len(layers))
    load_from_global(student, dict(teacher.named_parameters()), local_to_global_names(arch, layers))
    return student


@dataclass
class DistillationLoss:
    """The training objective of the student (the :class:`~fedbt.training.objectives.Objective` protocol):
    masked batches as for MLM, loss = soft-target KL + ``hidden_weight`` * hidden-state MSE."""

    teacher: nn.Module
    masking: MaskedLM
    layers: tuple[int, ...]
    temperature: float = 2.0
    hidden_weight: float = 1.0
    head: str = "mlm"

    def collate(self, examples: Sequence[dict], generator: torch.Generator) -> dict[str, torch.Tensor]:
        return self.masking.collate(examples, generator)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        chosen = batch["labels"] != IGNORE_INDEX
        with torch.no_grad():
            teacher = self.teacher.base_model(**inputs, output_hidden_states=True)
            teacher_logits = mlm_head(self.teacher)(teacher.last_hidden_state[chosen]).float()
        student = model.base_model(**inputs, output_hidden_states=True)
        student_logits = mlm_head(model)(student.last_hidden_state[chosen]).float()
        t = self.temperature
        student_log_p = F.log_softmax(student_logits / t, -1)
        teacher_log_p = F.log_softmax(teacher_logits / t, -1)
        kl = F.kl_div(student_log_p, teacher_log_p, reduction="sum", log_target=True)
        soft = kl * t * t / max(int(chosen.sum()), 1)

        real = batch["attention_mask"].unsqueeze(-1).to(student.last_hidden_state.dtype)
        pairs = [(0, 0), *((j + 1, layer + 1) for j, layer in enumerate(self.layers))]  # hidden_states[0]: embeddings
        squared = sum((((student.hidden_states[s] - teacher.hidden_states[g]) ** 2) * real).sum() for s, g in pairs)
        hidden = squared / (len(pairs) * real.sum() * student.last_hidden_state.shape[-1])
        return soft + self.hidden_weight * hidden

    def shape(self, batch: dict[str, torch.Tensor]) -> tuple[int, int]:
        return self.masking.shape(batch)

    def input_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.masking.input_tokens(batch)

    def predicted_tokens(self, batch: dict[str, torch.Tensor]) -> int:
        return self.masking.predicted_tokens(batch)


@dataclass
class DistillSettings:
    """What :func:`distill_student` does (the ``fedbt distill`` flags)."""

    teacher: str = "minilm"
    layers: tuple[int, ...] = (0, 2, 4)
    corpus: str = "sst2"
    data_dir: str = "data"
    max_examples: int | None = None
    max_length: int = 64
    epochs: float = 1.0
    steps: int | None = None
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.01
    temperature: float = 2.0
    hidden_weight: float = 1.0
    seed: int = 0
    device: str = "auto"


def distill_student(settings: DistillSettings, out_dir: str | Path, teacher_config: ModelConfig | None = None) -> dict:
    """Build, distil and save a student to ``out_dir``; returns (and writes to ``distill_costs.json``) its
    costs. ``teacher_config`` overrides the teacher's :class:`ModelConfig` (e.g. a ``tiny`` shape in tests)."""
    out_dir = Path(out_dir)
    teacher_config = teacher_config or ModelConfig(source=settings.teacher, max_length=settings.max_length)
    model_type = model_config_for(teacher_config).model_type
    if model_type != "bert":
        raise ConfigError(
            "teacher", f"{settings.teacher!r} is a {model_type!r} model; distillation supports BERT-type teachers only"
        )
    texts = load_corpus(settings.corpus, settings.data_dir, settings.max_examples, key="corpus")
    if not texts:
        raise DataError(f"corpus {settings.corpus!r} has no sentences of at least {MIN_WORDS} words")
    device = loop.resolve_device(settings.device)
    tokenizer = load_tokenizer(teacher_config)
    examples = [
        {"input_ids": ids} for ids in tokenizer(texts, truncation=True, max_length=settings.max_length)["input_ids"]
    ]

    teacher = load_model(teacher_config, "mlm", settings.seed).to(device).eval().requires_grad_(False)
    student = init_student(teacher, settings.layers)
    masking = make_objective("mlm", tokenizer, max_length=settings.max_length, padding="fixed")
    objective = DistillationLoss(teacher, masking, tuple(settings.layers), settings.temperature, settings.hidden_weight)
    steps = loop.steps_for(len(examples), settings.batch_size, settings.epochs, settings.steps)
    result = loop.train(
        student,
        objective,
        examples,
        steps=steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        generator=torch.Generator().manual_seed(settings.seed),
        device=device,
        flop_count_steps=1,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    student.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    costs: dict[str, Any] = {
        "seconds": result.seconds,
        "measured_flops": result.measured_flops,
        "steps": result.steps,
        "examples": result.examples,
        "tokens": result.tokens,
        "peak_memory_bytes": result.peak_memory_bytes,
        "mean_loss": result.mean_loss,
        "sentences": len(examples),
        "device": str(device),
        "settings": {**asdict(settings), "layers": list(settings.layers), "teacher": teacher_config.source},
    }
    (out_dir / COSTS_FILE).write_text(json.dumps(costs, indent=1))
    return costs
