"""Weight-free full-size cost figures (bert-base-uncased, or a table's ``base_arch`` such as vit-base) for the
tables and the layer-schedule figure (via :mod:`fedbt.costs`)."""

from __future__ import annotations

from typing import Any

from fedbt.errors import FedBTError
from fedbt.report.spec import PAPER_HEAD, PAPER_ROUNDS

BASE_ARCH = "bert-base-uncased"


VISION_HEAD = {"pretrain": "mim", "finetune": "image_classification"}


def _table(arch: str, method: str, options: dict[str, Any], scenario: str) -> dict[str, Any]:
    from fedbt.costs import cost_table
    from fedbt.models import arch_config, is_vision

    head = (VISION_HEAD if is_vision(arch_config(arch)) else PAPER_HEAD)[scenario]
    return cost_table(arch, method, PAPER_ROUNDS[scenario], options, head=head)


def upload_pct(bert_base: dict[str, Any] | None, scenario: str, base_arch: str = BASE_ARCH) -> float | None:
    """Total upload of ``bert_base`` (``{"method", "options", "arch"}``, arch default ``base_arch``) over the
    paper's rounds, in percent of full-model FedAvg on ``base_arch``; None when not computable."""
    if bert_base is None:
        return None
    try:
        ours = _table(bert_base.get("arch", base_arch), bert_base["method"], bert_base.get("options", {}), scenario)
        fedavg = _table(base_arch, "fedavg", {}, scenario)
    except (FedBTError, KeyError, OSError, ValueError):
        return None
    return 100.0 * ours["total"]["upload_params"] / fedavg["total"]["upload_params"]


def schedule(bert_base: dict[str, Any], scenario: str, base_arch: str = BASE_ARCH) -> list[dict[str, Any]]:
    """Per-round ``trained_layers`` and ``local_layers`` (client 0) of a method on ``base_arch``, no weights."""
    arch = bert_base.get("arch", base_arch)
    return _table(arch, bert_base["method"], bert_base.get("options", {}), scenario)["rounds"]
