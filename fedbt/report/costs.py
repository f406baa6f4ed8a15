"""Weight-free full-size cost figures (bert-base-uncased, or a table's ``base_arch`` such as vit-base) for the
tables and the layer-schedule figure (via :mod:`fedbt.costs`)."""

from __future__ import annotations

from typing import Any

from fedbt import paper
from fedbt.errors import FedBTError


def _table(arch: str, method: str, options: dict[str, Any], scenario: str, tiers: tuple = ()) -> dict[str, Any]:
    from fedbt.costs import cost_table

    return cost_table(arch, method, paper.ROUNDS[scenario], options, head=paper.HEAD[scenario], tiers=tiers)


def _tiers(base_tiers: list[dict[str, Any]] | None) -> tuple:
    """A table's ``base_tiers`` (``federation.tiers`` items) as tiers, checked as the config checks them."""
    if not base_tiers:
        return ()
    from fedbt.config import TierConfig, check_tiers, from_dict
    from fedbt.federated.tiers import tiers_from_config

    configs = [from_dict(TierConfig, item, f"base_tiers[{i}]") for i, item in enumerate(base_tiers)]
    check_tiers(configs, None, "base_tiers")
    return tiers_from_config(configs, key="base_tiers")


def upload_pct(
    bert_base: dict[str, Any] | None,
    scenario: str,
    base_arch: str = paper.BASE_ARCH,
    base_tiers: list[dict[str, Any]] | None = None,
) -> float | None:
    """Total upload of ``bert_base`` (``{"method", "options", "arch"}``, arch default ``base_arch``) over the
    paper's rounds, in percent of full-model FedAvg on ``base_arch``; with ``base_tiers``, that of the clients'
    mean when the tiers hold their shares of the clients. None when not computable."""
    if bert_base is None:
        return None
    try:
        arch, tiers = bert_base.get("arch", base_arch), _tiers(base_tiers)
        ours = _table(arch, bert_base["method"], bert_base.get("options", {}), scenario, tiers)
        if tiers:
            return 100.0 * ours["tier_mix"]["upload_ratio_vs_fedavg"] * _fedavg_ratio(arch, base_arch, scenario)
        fedavg = _table(base_arch, "fedavg", {}, scenario)
    except (FedBTError, KeyError, OSError, ValueError):
        return None
    return 100.0 * ours["total"]["upload_params"] / fedavg["total"]["upload_params"]


def _fedavg_ratio(arch: str, base_arch: str, scenario: str) -> float:
    """FedAvg's upload on ``arch`` over that on ``base_arch`` (1 for the same architecture)."""
    if arch == base_arch:
        return 1.0
    ours, base = _table(arch, "fedavg", {}, scenario), _table(base_arch, "fedavg", {}, scenario)
    return ours["total"]["upload_params"] / base["total"]["upload_params"]


def schedule(bert_base: dict[str, Any], scenario: str, base_arch: str = paper.BASE_ARCH) -> list[dict[str, Any]]:
    """Per-round ``trained_layers`` and ``local_layers`` (client 0) of a method on ``base_arch``, no weights."""
    arch = bert_base.get("arch", base_arch)
    return _table(arch, bert_base["method"], bert_base.get("options", {}), scenario)["rounds"]
