"""Weight-free full-size cost figures (bert-base-uncased, or a table's ``base_arch`` such as vit-base) for the
tables and the layer-schedule figure (via :mod:`fedbt.costs`)."""

from __future__ import annotations

from typing import Any

from fedbt import paper
from fedbt.errors import FedBTError


def _table(arch: str, method: str, options: dict[str, Any], scenario: str) -> dict[str, Any]:
    from fedbt.costs import cost_table

    return cost_table(arch, method, paper.ROUNDS[scenario], options, head=paper.HEAD[scenario])


def upload_pct(bert_base: dict[str, Any] | None, scenario: str, base_arch: str = paper.BASE_ARCH) -> float | None:
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


def schedule(bert_base: dict[str, Any], scenario: str, base_arch: str = paper.BASE_ARCH) -> list[dict[str, Any]]:
    """Per-round ``trained_layers`` and ``local_layers`` (client 0) of a method on ``base_arch``, no weights."""
    arch = bert_base.get("arch", base_arch)
    return _table(arch, bert_base["method"], bert_base.get("options", {}), scenario)["rounds"]
