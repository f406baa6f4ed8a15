"""Simulated time of a federated run on real devices: pure functions of each client-round's exact counts.

A client's time in a round (:func:`client_time`) is what its ledger row counts, on its device
(:mod:`fedbt.federated.devices`)::

    download_bytes / downlink + FLOPs / throughput + upload_bytes / uplink

with bandwidths in Mbit/s (10^6 / 8 bytes per second) and the throughput in GFLOP/s at the run's dtype (bf16 with
``local.precision: bf16``, else fp32). A synchronous round lasts as long as its slowest participant
(:func:`round_span`), then the server aggregates (its compute seconds, measured by the simulator, are added).

Deadlines (:func:`round_deadline`): ``federation.deadline_s`` seconds, or ``federation.deadline_percentile`` p:
the round closes once ``ceil(p / 100 * n)`` of its ``n`` participants have reported (the nearest-rank percentile
of their times, as over-selection systems close a round). A participant whose time is past the deadline is late:
the round lasts until the deadline, the client's update is dropped from the average, and the work it did until
the deadline (:meth:`ClientTime.compute_done`: its download, then a share of its computation) is wasted.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fedbt.federated.devices import Device, available

if TYPE_CHECKING:
    from fedbt.ledger import LedgerRow

BYTES_PER_MBIT = 1e6 / 8


@dataclass(frozen=True)
class ClientTime:
    """Simulated seconds of one client-round by part."""

    download: float
    compute: float
    upload: float

    @property
    def total(self) -> float:
        return self.download + self.compute + self.upload

    def compute_done(self, deadline: float) -> float:
        """The share (0..1) of its computation the client finished by ``deadline`` seconds (it computes after its
        download)."""
        if self.compute <= 0:
            return 1.0 if deadline >= self.download else 0.0
        return min(1.0, max(0.0, (deadline - self.download) / self.compute))


def client_time(device: Device, download_bytes: float, flops: float, upload_bytes: float, dtype: str = "fp32"):
    """The client-round's :class:`ClientTime` on ``device`` (see the module docstring)."""
    return ClientTime(
        download=download_bytes / (device.downlink_mbps * BYTES_PER_MBIT),
        compute=flops / device.flops_per_second(dtype),
        upload=upload_bytes / (device.uplink_mbps * BYTES_PER_MBIT),
    )


def percentile_deadline(times: Sequence[float], percentile: float) -> float | None:
    """The nearest-rank ``percentile`` of ``times``: the ``ceil(p / 100 * n)``-th smallest (None: no times)."""
    if not times:
        return None
    ordered = sorted(times)
    rank = max(1, math.ceil(percentile / 100.0 * len(ordered) - 1e-9))
    return ordered[rank - 1]


def round_deadline(
    times: Sequence[float], seconds: float | None = None, percentile: float | None = None
) -> float | None:
    """The round's deadline: ``seconds``, else the ``percentile`` of its participants' ``times``, else none."""
    if seconds is not None:
        return seconds
    if percentile is not None:
        return percentile_deadline(times, percentile)
    return None


def is_late(seconds: float, deadline: float | None) -> bool:
    """Whether a client that needs ``seconds`` misses ``deadline`` (finishing exactly at it is in time)."""
    return deadline is not None and seconds > deadline


def round_span(times: Iterable[float], deadline: float | None) -> float:
    """Seconds from the round's start until the server stops waiting: its slowest participant, or the deadline
    when someone is later (0 without participants)."""
    slowest = max(times, default=0.0)
    return deadline if is_late(slowest, deadline) else slowest


@dataclass(frozen=True)
class Timing:
    """A run's device model: each client's device (dealt by seed), the deadline and the dtype of its training."""

    devices: tuple[Device, ...]
    seed: int
    deadline_s: float | None = None
    deadline_percentile: float | None = None
    dtype: str = "fp32"

    def available(self, round_idx: int, client: int) -> bool:
        return available(self.devices[client], self.seed, round_idx, client)

    def client_time(self, client: int, download_bytes: float, flops: float, upload_bytes: float) -> ClientTime:
        return client_time(self.devices[client], download_bytes, flops, upload_bytes, self.dtype)

    def deadline(self, times: Sequence[float]) -> float | None:
        return round_deadline(times, self.deadline_s, self.deadline_percentile)

    def describe(self) -> dict[str, Any]:
        """The model as ``metrics.json`` records it."""
        return {
            "deadline_s": self.deadline_s,
            "deadline_percentile": self.deadline_percentile,
            "dtype": self.dtype,
            "devices": [device.as_dict() for device in self.devices],
        }


# ------------------------------------------------------------------------------------------- summaries


def _pct(part: int, whole: int) -> float:
    return 100.0 * part / whole if whole else 0.0


def run_summary(rows: Sequence[LedgerRow], records: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """A timed run's totals: simulated seconds in all (``sim_seconds``) and per round, the server's share, the
    share of client-rounds that missed the deadline or were unavailable (of all client-rounds), and the FLOPs of
    the work the late clients did until the deadline (``wasted_flops``, part of the ledger's FLOPs)."""
    from fedbt.ledger import MISSED_DEADLINE, UNAVAILABLE

    rounds = [float(record.get("sim_round_seconds", 0.0)) for record in records]
    missed = [row for row in rows if row.status == MISSED_DEADLINE]
    return {
        "sim_seconds": sum(rounds),
        "sim_round_seconds": statistics.fmean(rounds) if rounds else 0.0,
        "sim_server_seconds": sum(float(record.get("sim_server_seconds", 0.0)) for record in records),
        "deadline_miss_pct": _pct(len(missed), len(rows)),
        "unavailable_pct": _pct(sum(row.status == UNAVAILABLE for row in rows), len(rows)),
        "wasted_flops": float(sum(row.measured_flops or row.analytic_flops for row in missed)),
    }


def tier_summary(rows: Sequence[LedgerRow], tier: str) -> dict[str, float | None]:
    """One tier's timing: the mean simulated seconds a participating client of the tier needed per round (trained
    or late; None when none took part) and its shares of late and unavailable client-rounds."""
    from fedbt.ledger import MISSED_DEADLINE, TRAINED, UNAVAILABLE

    own = [row for row in rows if row.tier == tier]
    raced = [row.sim_seconds for row in own if row.status in (TRAINED, MISSED_DEADLINE)]
    return {
        "sim_seconds_per_client_round": statistics.fmean(raced) if raced else None,
        "deadline_miss_pct": _pct(sum(row.status == MISSED_DEADLINE for row in own), len(own)),
        "unavailable_pct": _pct(sum(row.status == UNAVAILABLE for row in own), len(own)),
    }
