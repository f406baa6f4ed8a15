"""Client resource tiers: what each client can hold, dealt to the clients by seed.

A tier (``federation.tiers`` in the run config) has a share of the clients, a local depth ``L_k``, a width (the share
of each layer's attention heads and FFN neurons a width-scaled method gives it) and an optional memory budget
``memory_mb``: MB (10^6 bytes) of device memory a client of the tier has for local training, against which
:mod:`fedbt.memory` estimates every client plan (never a fraction of full-model training);
``federation.budget_policy`` (warn, drop, refuse) says what a plan over it does. :func:`deal` turns the shares into a
tier per client: the counts are the shares times the number of clients, rounded by the largest-remainder rule (ties
to the earlier tier), so they always sum to the number of clients; which clients get which tier is a permutation
drawn from the run seed. Without tiers every client has :data:`FULL`, a tier that holds the whole model.

Methods read a client's tier as the third argument of ``plan(round_idx, client_id, tier)``; a method that does
not scale with resources ignores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from fedbt.seeding import derive_seed

TIERS = 21  # tag of the tier-dealing random stream


@dataclass(frozen=True)
class Tier:
    """One resource tier: ``local_layers`` / ``width`` None mean "no limit" (the method's default depth, full
    width); ``memory_mb`` (MB of device memory) None means no budget. ``key`` names the tier in errors (its config
    key). ``local_work`` is the share of the local steps its clients run under a method with variable local work
    (``fedprox``; None: the method's default)."""

    name: str = "all"
    share: float = 1.0
    local_layers: int | None = None
    width: float | None = None
    memory_mb: float | None = None
    key: str = "federation.tiers"
    local_work: float | None = None

    def holds_full_model(self, num_layers: int) -> bool:
        """True when a client of this tier can train the whole global model (every layer, full width)."""
        return (self.local_layers is None or self.local_layers >= num_layers) and (self.width or 1.0) >= 1.0


FULL = Tier()
"""The tier of every client when no tiers are configured."""


def tiers_from_config(tiers: Sequence, key: str = "federation.tiers", data_dir: str = "data") -> tuple[Tier, ...]:
    """The configured tiers (:class:`~fedbt.config.TierConfig` items, under config key ``key``) as
    :class:`Tier` s; none: ``(FULL,)``. A tier without ``memory_mb`` takes its device's (presets under
    ``data_dir``)."""
    if not tiers:
        return (FULL,)
    return tuple(
        Tier(
            name=tier.name or f"tier{i}",
            share=tier.share,
            local_layers=tier.local_layers,
            width=tier.width,
            memory_mb=tier.memory_mb if tier.memory_mb is not None else _device_memory(tier, f"{key}[{i}]", data_dir),
            local_work=tier.local_work,
            key=f"{key}[{i}]",
        )
        for i, tier in enumerate(tiers)
    )


def _device_memory(tier, key: str, data_dir: str) -> float | None:
    """The ``memory_mb`` of a tier's device (None: no device, or a device without one)."""
    if getattr(tier, "device", None) is None:
        return None
    from fedbt.federated.devices import resolve

    return resolve(tier.device, f"{key}.device", data_dir).memory_mb


def tier_counts(shares: Sequence[float], clients: int) -> list[int]:
    """Clients per tier: ``share * clients`` rounded down, the remaining clients to the largest remainders
    (ties: the earlier tier)."""
    exact = [share * clients for share in shares]
    counts = [math.floor(x + 1e-9) for x in exact]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in by_remainder[: clients - sum(counts)]:
        counts[i] += 1
    return counts


def deal(tiers: Sequence[Tier], clients: int, seed: int) -> list[Tier]:
    """The tier of each client ``0..clients-1``: :func:`tier_counts` clients per tier, placed by a permutation
    seeded by ``seed`` (the same seed always deals the same tiers)."""
    if len(tiers) == 1:
        return [tiers[0]] * clients
    order = torch.randperm(clients, generator=torch.Generator().manual_seed(derive_seed(seed, TIERS))).tolist()
    dealt: list[Tier] = [FULL] * clients
    start = 0
    for tier, count in zip(tiers, tier_counts([t.share for t in tiers], clients), strict=True):
        for client in order[start : start + count]:
            dealt[client] = tier
        start += count
    return dealt
