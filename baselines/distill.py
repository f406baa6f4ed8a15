"""FedAvg of a small student model: the paper's DistilBERT / TinyBERT rows.

The option ``student`` names the student checkpoint (a local directory or a hub id); the run starts from it
instead of ``model.source`` (:meth:`Distill.starting_model`), trains it with full-model FedAvg and deploys it.
The paper config names public checkpoints such as ``huawei-noah/TinyBERT_General_4L_312D`` (local paths work
offline); the default offline config uses a student made by ``fedbt distill`` (see :mod:`fedbt.distill`).

Only BERT-type checkpoints (``model_type: bert``: TinyBERT, MiniLM, the google/bert_uncased_L-*_H-* family,
``fedbt distill`` students) work, because the suite's layer surgery and cost model address BERT's layout.
DistilBERT (``model_type: distilbert``) is refused with that reason. Cost tables take the student's shape
from ``fedbt costs --student ARCH`` and compare with FedAvg of the ``--arch`` model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from baselines.fedavg import FedAvg
from fedbt.errors import ConfigError
from fedbt.federated.method import register

SUPPORTED_MODEL_TYPES = ("bert",)


@register
class Distill(FedAvg):
    name = "distill"
    description = "FedAvg of a small student model (DistilBERT/TinyBERT rows; option student, a BERT-type checkpoint)"
    scenarios = ("pretrain", "finetune")

    @dataclass
    class Options:
        student: str | None = None

    @classmethod
    def starting_model(cls, options: Mapping[str, Any], source: str) -> str:
        """The student checkpoint, after checking from its config alone that it is BERT-type."""
        from fedbt.models import arch_config

        student = options.get("student")
        if not isinstance(student, str) or not student:
            raise ConfigError(
                "method.options.student",
                "distill needs a student checkpoint (local path or hub id), e.g. results/students/minilm-L3 "
                "made by `fedbt distill`; for `fedbt costs` pass --student ARCH",
            )
        model_type = arch_config(student).model_type
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                "method.options.student",
                f"{student} is a {model_type!r} model; the layer surgery supports: {', '.join(SUPPORTED_MODEL_TYPES)}",
            )
        return student
