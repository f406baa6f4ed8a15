"""Reading finished run directories (``metrics.json``) into the few numbers the tables and figures need."""

from __future__ import annotations

import csv
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

MB = 10**6


@dataclass(frozen=True)
class RunCosts:
    """Client costs of a run per *trained* client-round (a client that sat a round out is not counted)."""

    measured_flops: float
    analytic_flops: float
    seconds: float
    """Compute seconds: process CPU time of the job on CPU, synchronised device time on CUDA."""
    wall_seconds: float
    upload_mb: float


@dataclass(frozen=True)
class RunResult:
    """One run's summary.

    ``scores[metric]`` is ``{"<federation seed>": score}``, one independent sample per federated run: after
    further pre-training the mean over the evaluation seeds of the downstream fine-tuning of its one model (they
    replicate the evaluation, not the federation), after federated fine-tuning the test score at the selected
    (best dev) round. Samples of two runs with the same key were made with the same seed, so they pair up.
    ``curve`` is the per-round held-out MLM (MIM) loss of pre-training or dev primary score of fine-tuning.
    """

    path: str
    scenario: str
    method: str
    data: str
    seed: int
    device: str
    metric: str
    """The primary test metric ("" when the run has no task score)."""
    scores: dict[str, dict[str, float]]
    """Task scores, and for pre-training the final held-out loss (``heldout_mlm_loss``, ``heldout_mim_loss``)."""
    majority: dict[str, float]
    """The task metrics of always predicting the most frequent training label, on the same test examples."""
    dev: dict[str, float]
    """What a grid chooses on (:mod:`fedbt.report.selection`): fine-tuning's dev scores of the selected round;
    pre-training's final-round loss on the dev slice, under the test metric's name (``heldout_mlm_loss``);
    empty without a dev split or slice."""
    curve_name: str
    curve: dict[int, float]
    spent: dict[int, tuple[float, float]]
    """Round -> (client FLOPs measured, bytes uploaded) summed over all clients up to the end of that round."""
    costs: RunCosts
    upload_bytes_total: float
    plan_sha256: str | None
    tiers: dict[str, dict[str, Any]] | None = None
    """Costs per resource tier (``metrics.json``'s ``tiers``; None for a run without tiers)."""
    evaluation_seeds: int = 0
    """Evaluation seeds averaged into each downstream score (0: no downstream evaluation)."""
    diverged: bool = False
    """A loss or score of the run is NaN or infinite: its scores are no sample of the method."""
    dropped_pct: float | None = None
    """Share (0..100) of client-rounds dropped for not fitting the memory budget (None: not recorded)."""
    steps: int = 0
    """Local steps of all its client-rounds."""
    measured_steps: int | None = None
    """How many of them FlopCounterMode counted (the others are scaled); None: not recorded."""
    privacy: dict[str, Any] | None = None
    """``metrics.json``'s ``privacy`` with the means over the rounds of :data:`PRIVACY_MEANS` (None: no DP)."""
    clock: dict[int, float] = field(default_factory=dict)
    """Round -> simulated seconds from the run's start to the end of that round on the clients' devices
    (:mod:`fedbt.timing`; empty for a run without devices)."""
    timing: dict[str, Any] | None = None
    """``metrics.json``'s ``timing`` (simulated seconds, deadline misses, the device model); None without devices."""

    @property
    def headline(self) -> str:
        """The metric a run is summarised by: the final held-out loss of pre-training, the primary test metric
        of fine-tuning."""
        return self.curve_name if self.scenario == "pretrain" and self.curve_name in self.scores else self.metric

    @property
    def headline_scores(self) -> list[float]:
        """The headline metric's samples."""
        return list(self.scores.get(self.headline, {}).values())


def _scores(metrics: dict[str, Any]) -> tuple[str, dict[str, dict[str, float]], int]:
    """The primary task metric, every task score keyed by federation seed (fine-tuning: at the selected round;
    after pre-training: the mean over the evaluation seeds) and the number of evaluation seeds averaged."""
    seed = str(metrics["seed"])
    selection = metrics.get("selection")
    if selection:
        return selection["primary"], {name: {seed: float(v)} for name, v in selection["test"].items()}, 0
    evaluation = metrics.get("evaluation")
    if evaluation:
        samples = evaluation["seeds"]
        scores = {
            name: {seed: statistics.fmean(float(sample["test"][name]) for sample in samples)}
            for name in evaluation["metrics"]
        }
        return evaluation["primary"], scores, len(samples)
    return "", {}, 0


def _diverged(metrics: dict[str, Any], scores: dict[str, dict[str, float]]) -> bool:
    """Whether a number of a round's record (training or held-out loss, dev score), or a score, is NaN or
    infinite."""
    recorded = [v for r in metrics["rounds"] for v in r.values() if isinstance(v, int | float)]
    return not all(math.isfinite(v) for v in [*recorded, *(v for s in scores.values() for v in s.values())])


def _measured_steps(path: Path, costs: dict[str, Any]) -> int | None:
    """Local steps FlopCounterMode counted: the ledger summary's ``total_measured_steps``, else (a run from before
    the ledger counted them) each ledger row's ``min(steps, local.flop_count_steps)`` (all its steps for -1) from
    the run directory's ``ledger.csv`` and ``config.yaml``; None without them."""
    if "total_measured_steps" in costs:
        return int(costs["total_measured_steps"])
    ledger, config = path.parent / "ledger.csv", path.parent / "config.yaml"
    if not (ledger.is_file() and config.is_file()):
        return None
    counted = int((yaml.safe_load(config.read_text()).get("local") or {}).get("flop_count_steps", 0))
    with ledger.open(newline="") as handle:
        steps = [int(row["steps"]) for row in csv.DictReader(handle)]
    return sum(steps) if counted < 0 else sum(min(n, counted) for n in steps)


def _dropped_pct(metrics: dict[str, Any]) -> float | None:
    """``dropped_client_rounds_pct`` of the run's summary (top level or its costs); None when not recorded."""
    value = metrics.get("dropped_client_rounds_pct", metrics["costs"].get("dropped_client_rounds_pct"))
    return None if value is None else float(value)


PRIVACY_MEANS = ("update_dim", "noise_norm", "clipped_fraction", "update_norm")
"""The per-round ``dp_<key>`` diagnostics of a run with ``privacy`` that its summary averages."""


def _privacy(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """A run's ``privacy`` with the means over its rounds of the ``dp_*`` diagnostics (None: no DP)."""
    privacy = metrics.get("privacy")
    if not privacy:
        return None
    means = {}
    for key in PRIVACY_MEANS:
        values = [float(r[f"dp_{key}"]) for r in metrics["rounds"] if r.get(f"dp_{key}") is not None]
        means[key] = statistics.fmean(values) if values else None
    return dict(privacy) | means


def _heldout(metrics: dict[str, Any], curve: dict[int, float], curve_name: str) -> dict[str, dict[str, float]]:
    """Pre-training: the held-out loss of the final global model (and, for MLM, its perplexity), one sample per
    federation seed: the loss belongs to the federated run, evaluation seeds give it no spread."""
    if metrics["scenario"] != "pretrain" or not curve:
        return {}
    seed, loss = str(metrics["seed"]), curve[max(curve)]
    scores = {curve_name: {seed: loss}}
    if curve_name == "heldout_mlm_loss":
        scores["heldout_mlm_perplexity"] = {seed: math.exp(loss)}
    return scores


def _dev(metrics: dict[str, Any], curve_name: str) -> dict[str, float]:
    """Fine-tuning: the selected round's dev scores; pre-training: ``{curve_name: the last round's
    dev_<curve_name>}`` (the round whose test loss is reported); empty when not recorded."""
    if metrics["scenario"] == "finetune":
        return {k: float(v) for k, v in (metrics.get("selection") or {}).get("dev", {}).items()}
    scored = [r for r in metrics["rounds"] if curve_name in r]
    last = max(scored, key=lambda r: r["round"]) if scored else {}
    return {curve_name: float(last[f"dev_{curve_name}"])} if f"dev_{curve_name}" in last else {}


def _costs(costs: dict[str, Any]) -> RunCosts:
    trained = max(1, int(costs.get("client_rounds", 1)))
    return RunCosts(
        measured_flops=float(costs["total_measured_flops"]) / trained,
        analytic_flops=float(costs["total_analytic_flops"]) / trained,
        seconds=float(costs["total_client_seconds"]) / trained,
        wall_seconds=float(costs.get("total_client_wall_seconds", costs["total_client_seconds"])) / trained,
        upload_mb=float(costs["total_upload_bytes"]) / trained / MB,
    )


def load_run(path: str | Path) -> RunResult:
    """Summarise the run whose ``metrics.json`` is ``path`` (or the run directory holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    metrics = json.loads(path.read_text())
    metric, scores, evaluation_seeds = _scores(metrics)
    if metrics["scenario"] == "finetune":
        curve_name = f"dev_{metric}"
    else:  # heldout_mlm_loss (text) or heldout_mim_loss (images)
        curve_name = next((k for k in metrics["rounds"][0] if k.startswith("heldout_")), "heldout_mlm_loss")
    curve = {int(r["round"]): float(r[curve_name]) for r in metrics["rounds"] if curve_name in r}
    spent, flops, upload, clock, elapsed = {}, 0.0, 0.0, {}, 0.0
    for record in metrics["rounds"]:
        flops, upload = flops + float(record["measured_flops"]), upload + float(record["upload_bytes"])
        spent[int(record["round"])] = (flops, upload)
        if "sim_round_seconds" in record:
            elapsed += float(record["sim_round_seconds"])
            clock[int(record["round"])] = elapsed
    return RunResult(
        path=str(path),
        scenario=metrics["scenario"],
        method=metrics["method"],
        data=metrics["data"],
        seed=int(metrics["seed"]),
        device=str(metrics.get("device", "cpu")),
        metric=metric,
        scores=scores | _heldout(metrics, curve, curve_name),
        majority={k: float(v) for k, v in (metrics.get("majority") or {}).items()},
        dev=_dev(metrics, curve_name),
        curve_name=curve_name,
        curve=curve,
        spent=spent,
        costs=_costs(metrics["costs"]),
        upload_bytes_total=float(metrics["costs"]["total_upload_bytes"]),
        plan_sha256=metrics.get("plan_sha256"),
        tiers=metrics.get("tiers"),
        evaluation_seeds=evaluation_seeds,
        diverged=_diverged(metrics, scores),
        dropped_pct=_dropped_pct(metrics),
        steps=int(metrics["costs"].get("total_steps", 0)),
        measured_steps=_measured_steps(path, metrics["costs"]),
        privacy=_privacy(metrics),
        clock=clock,
        timing=metrics.get("timing"),
    )
