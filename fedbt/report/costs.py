"""Weight-free bert-base cost figures for the tables and the layer-schedule figure (via :mod:`fedbt.costs`)."""

from __future__ import annotations

from typing import Any

from fedbt.errors import FedBTError
from fedbt.report.spec import PAPER_HEAD, PAPER_ROUNDS

BASE_ARCH = "bert-base-uncased"


def _table(arch: str, method: str, options: dict[str, Any], scenario: str) -> dict[str, Any]:
    from fedbt.costs import cost_table

    return cost_table(arch, method, PAPER_ROUNDS[scenario], options, head=PAPER_HEAD[scenario])


def upload_pct(bert_base: dict[str, Any] | None, scenario: str) -> float | None:
    """Total upload of ``bert_base`` (``{"method", "options", "arch"}``, arch default bert-base-uncased) over the
    paper's rounds, in percent of full-model FedAvg on bert-base-uncased; None when not computable."""
    if bert_base is None:
        return None
    try:
        ours = _table(bert_base.get("arch", BASE_ARCH), bert_base["method"], bert_base.get("options", {}), scenario)
        fedavg = _table(BASE_ARCH, "fedavg", {}, scenario)
    except (FedBTError, KeyError, OSError, ValueError):
        return None
    return 100.0 * ours["total"]["upload_params"] / fedavg["total"]["upload_params"]


def schedule(bert_base: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    """Per-round ``trained_layers`` and ``local_layers`` (client 0) of a method on bert-base, no weights."""
    return _table(bert_base.get("arch", BASE_ARCH), bert_base["method"], bert_base.get("options", {}), scenario)[
        "rounds"
    ]
