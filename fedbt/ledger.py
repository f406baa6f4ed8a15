"""The cost ledger of a run: one CSV row per client per round (``ledger.csv`` in the run directory).

Rows are appended one round at a time and flushed to disk, so a crashed run keeps every finished round;
on resume :meth:`Ledger.truncate_after` drops the rows of rounds that will be run again.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from fedbt.federated.tiers import Tier

MIB = 2**20
MB = 10**6


TRAINED, IDLE, NO_DATA, OVER_BUDGET = "trained", "idle", "no_data", "over-budget"
FAILED, MISSED_DEADLINE = "failed", "missed-deadline"
UNAVAILABLE = "unavailable"
"""Row statuses: the client trained; its plan trained nothing (it sat the round out); it holds no examples (it
sat the round out: no bytes, no FLOPs, aggregation weight 0); its plan's memory estimate exceeds its tier's budget
under ``federation.budget_policy: drop`` (it sat the round out as a device out of memory would; the row keeps the
estimate and the budget). Over Flower, a node whose ClientApp raised (``failed``) or that did not reply within the
round's deadline (``missed-deadline``) is dropped for the round: its download was sent and is counted, it uploads
nothing, weighs 0 in the average and keeps its state; the runtime's report (``metrics.json``) holds the reason.
With devices (:mod:`fedbt.timing`) a client whose simulated time is past the round's deadline is ``missed-deadline``
too (its FLOPs and seconds those of its work until the deadline), and a client whose device is offline in the round
(its ``availability``) is ``unavailable``: it sits the round out like an idle one."""
DROPPED = (OVER_BUDGET, FAILED, MISSED_DEADLINE)
"""Statuses of a client that was meant to train in the round and did not."""


@dataclass
class LedgerRow:
    """What one client cost in one round (communication counted from the payload tensors)."""

    round: int
    client: int
    examples: int
    status: str = TRAINED
    tier: str = ""
    """The client's resource tier (empty without tiers)."""
    steps: int = 0
    tokens: int = 0
    trained_layers: str = ""
    upload_params: int = 0
    upload_bytes: int = 0
    download_params: int = 0
    download_bytes: int = 0
    measured_flops: int = 0
    analytic_flops: int = 0
    measured_steps: int = 0
    """Steps whose FLOPs ``FlopCounterMode`` counted (``local.flop_count_steps``): all ``steps``, or ``measured_flops``
    is those steps' count scaled to the others by the analytic model of their shapes."""
    seconds: float = 0.0
    """Compute seconds of local training (process CPU time on CPU, synchronised time on CUDA)."""
    wall_seconds: float = 0.0
    peak_memory_bytes: int = 0
    """Peak memory during local training (CPU: the process's peak RSS, CUDA: the allocator's peak), so in-process
    it includes the server's global model."""
    state_bytes: int = 0
    """What the client held to train, activations excluded: its local model's parameters, the trained ones'
    gradients and the optimizer's state (counted from the tensors: deterministic)."""
    memory_estimate_bytes: int = 0
    """The memory estimate of the client's plan (:mod:`fedbt.memory`: parameters, gradients, optimizer moments,
    activations, the method's extra tensors; for an over-budget row, of the plan that did not fit)."""
    memory_budget_mb: float = 0.0
    """The client's tier's ``memory_mb`` (0: no budget)."""
    train_loss: float = 0.0
    sim_seconds: float = 0.0
    """Simulated seconds the client needs for the round on its device (:mod:`fedbt.timing`: download + compute +
    upload; for a ``missed-deadline`` row the time it would have needed); 0 without devices."""


FIELDS = [f.name for f in dataclasses.fields(LedgerRow)]
_TYPES = {f.name: {"int": int, "float": float, "str": str}[f.type] for f in dataclasses.fields(LedgerRow)}


def format_layers(layers: Iterable[int]) -> str:
    """Global layer indices as a compact string: ``[0..11]`` -> ``"0-11"``, ``[0, 3]`` -> ``"0;3"``."""
    runs: list[list[int]] = []
    for layer in sorted(set(layers)):
        if runs and layer == runs[-1][1] + 1:
            runs[-1][1] = layer
        else:
            runs.append([layer, layer])
    return ";".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def payload_nbytes(tensors: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """``(parameters, bytes)`` of a payload in the dtypes actually held; a tensor whose storage is shared
    by several names (tied weights) counts once."""
    seen: set[tuple[int, int, int, tuple[int, ...]]] = set()
    params = nbytes = 0
    for tensor in tensors.values():
        ptr = tensor.untyped_storage().data_ptr()
        key = (ptr or id(tensor), tensor.storage_offset(), tensor.element_size(), tuple(tensor.shape))
        if key in seen:
            continue
        seen.add(key)
        params += tensor.numel()
        nbytes += tensor.numel() * tensor.element_size()
    return params, nbytes


class Ledger:
    """Append-only CSV of :class:`LedgerRow` (header = field names)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def append(self, rows: list[LedgerRow]) -> None:
        """Append ``rows`` (normally one round) and flush them to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = not self.path.is_file() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(dataclasses.asdict(row) for row in rows)
            handle.flush()
            os.fsync(handle.fileno())

    def rows(self) -> list[LedgerRow]:
        """Every row in file order (empty when the file does not exist yet)."""
        if not self.path.is_file():
            return []
        with self.path.open(newline="") as handle:
            return [LedgerRow(**{k: _TYPES[k](v) for k, v in record.items()}) for record in csv.DictReader(handle)]

    def truncate_after(self, round_idx: int) -> None:
        """Keep only the rows with ``round <= round_idx``; the file is replaced atomically."""
        kept = [row for row in self.rows() if row.round <= round_idx]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=FIELDS)
                writer.writeheader()
                writer.writerows(dataclasses.asdict(row) for row in kept)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def summary(self) -> dict[str, float]:
        """Totals over all rows, and means per round (all clients of a round summed) and per client-round (per
        *trained* client-round: a client that sat a round out costs nothing and is counted apart, in
        ``idle_client_rounds``).

        ``last_round_train_loss`` is the example-weighted mean loss of the clients that trained in the last round.
        """
        rows = self.rows()
        rounds = sorted({row.round for row in rows})
        trained = sum(row.status == TRAINED for row in rows)
        n_rounds, n_rows = max(len(rounds), 1), max(trained, 1)
        totals = {
            name: sum(getattr(row, name) for row in rows)
            for name in (
                "examples",
                "steps",
                "tokens",
                "upload_params",
                "upload_bytes",
                "download_params",
                "download_bytes",
                "measured_flops",
                "analytic_flops",
                "measured_steps",
            )
        }
        over = sum(row.status == OVER_BUDGET for row in rows)
        dropped = sum(row.status in DROPPED for row in rows)
        summary: dict[str, float] = {
            "rounds": len(rounds),
            "client_rounds": trained,
            "idle_client_rounds": len(rows) - trained,
            "over_budget_client_rounds": over,
            "failed_client_rounds": sum(row.status == FAILED for row in rows),
            "missed_deadline_client_rounds": sum(row.status == MISSED_DEADLINE for row in rows),
            "dropped_client_rounds_pct": 100.0 * dropped / max(len(rows), 1),
        }
        summary.update({f"total_{name}": value for name, value in totals.items()})
        summary["total_client_seconds"] = sum(row.seconds for row in rows)
        summary["total_client_wall_seconds"] = sum(row.wall_seconds for row in rows)
        summary["max_peak_memory_bytes"] = max((row.peak_memory_bytes for row in rows), default=0)
        summary["max_state_bytes"] = max((row.state_bytes for row in rows), default=0)
        summary["max_memory_estimate_bytes"] = max((row.memory_estimate_bytes for row in rows), default=0)
        for direction in ("upload", "download"):
            nbytes = totals[f"{direction}_bytes"]
            for unit, size in (("bytes", 1), ("mib", MIB), ("mb", MB)):
                summary[f"{direction}_{unit}_per_round"] = nbytes / size / n_rounds
                summary[f"{direction}_{unit}_per_client_round"] = nbytes / size / n_rows
        for name in ("measured_flops", "analytic_flops"):
            summary[f"{name}_per_client_round"] = totals[name] / n_rows
        for name in ("client_seconds", "client_wall_seconds"):
            summary[f"{name}_per_round"] = summary[f"total_{name}"] / n_rounds
            summary[f"{name}_per_client_round"] = summary[f"total_{name}"] / n_rows
        last = [row for row in rows if rounds and row.round == rounds[-1] and row.status == TRAINED]
        weight = sum(row.examples for row in last)
        if weight:  # absent when nobody trained (e.g. the no-training reference)
            summary["last_round_train_loss"] = sum(row.train_loss * row.examples for row in last) / weight
        return summary

    def tier_summary(self, tiers: Sequence[Tier]) -> dict[str, dict[str, Any]]:
        """Per resource tier: its clients and client-rounds, its costs per client-round of the tier (FLOPs, bytes,
        seconds; a round a client sat out costs 0 and counts, so a tier that never trains costs 0), its largest
        peak memory, training state and memory estimate, whether they exceed the tier's memory budget (None: no
        budget), and the client-rounds it sat out over budget (``dropped_client_rounds_pct``: the share of the
        tier's client-rounds dropped over budget, failed or past the deadline)."""
        rows = self.rows()
        summary = {}
        for tier in tiers:
            own = [row for row in rows if row.tier == tier.name]
            n = max(len(own), 1)
            peak = max((row.peak_memory_bytes for row in own), default=0)
            state = max((row.state_bytes for row in own), default=0)
            estimated = max((row.memory_estimate_bytes for row in own), default=0)
            over = sum(row.status == OVER_BUDGET for row in own)
            dropped = sum(row.status in DROPPED for row in own)
            budget = None if tier.memory_mb is None else tier.memory_mb * MB
            summary[tier.name] = {
                "share": tier.share,
                "local_layers": tier.local_layers,
                "width": tier.width,
                "clients": sorted({row.client for row in own}),
                "client_rounds": len(own),
                "trained_client_rounds": sum(row.status == TRAINED for row in own),
                "measured_flops_per_client_round": sum(row.measured_flops for row in own) / n,
                "analytic_flops_per_client_round": sum(row.analytic_flops for row in own) / n,
                "upload_mb_per_client_round": sum(row.upload_bytes for row in own) / MB / n,
                "download_mb_per_client_round": sum(row.download_bytes for row in own) / MB / n,
                "client_seconds_per_client_round": sum(row.seconds for row in own) / n,
                "max_peak_memory_mb": peak / MB,
                "max_state_mb": state / MB,
                "max_memory_estimate_mb": estimated / MB,
                "memory_budget_mb": tier.memory_mb,
                "peak_memory_exceeds_budget": None if budget is None else peak > budget,
                "state_exceeds_budget": None if budget is None else state > budget,
                "estimate_exceeds_budget": None if budget is None else estimated > budget,
                "over_budget_client_rounds": over,
                "dropped_client_rounds_pct": 100.0 * dropped / n,
            }
        return summary
