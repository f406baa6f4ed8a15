"""Reading finished run directories (``metrics.json``) into the few numbers the tables and figures need."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    ``scores[metric][sample]`` are test scores: one sample per evaluation seed after further pre-training
    (``"<seed>/<evaluation seed>"``), or the test score at the selected (best dev) round of federated
    fine-tuning (``"<seed>"``). Samples of two runs with the same key were made with the same seeds, so they pair
    up. ``curve`` is the per-round held-out MLM (MIM) loss of pre-training or dev primary score of fine-tuning.
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
    """Fine-tuning: the dev scores of the selected round (what chooses a learning rate); empty otherwise."""
    curve_name: str
    curve: dict[int, float]
    spent: dict[int, tuple[float, float]]
    """Round -> (client FLOPs measured, bytes uploaded) summed over all clients up to the end of that round."""
    costs: RunCosts
    upload_bytes_total: float
    plan_sha256: str | None
    tiers: dict[str, dict[str, Any]] | None = None
    """Costs per resource tier (``metrics.json``'s ``tiers``; None for a run without tiers)."""

    @property
    def headline(self) -> str:
        """The metric a run is summarised by: the final held-out loss of pre-training, the primary test metric
        of fine-tuning."""
        return self.curve_name if self.scenario == "pretrain" and self.curve_name in self.scores else self.metric

    @property
    def headline_scores(self) -> list[float]:
        """The headline metric's samples."""
        return list(self.scores.get(self.headline, {}).values())


def _scores(metrics: dict[str, Any]) -> tuple[str, dict[str, dict[str, float]]]:
    """The primary task metric and every task score (fine-tuning: at the selected round; after pre-training:
    per evaluation seed)."""
    seed = int(metrics["seed"])
    selection = metrics.get("selection")
    if selection:
        return selection["primary"], {name: {str(seed): float(v)} for name, v in selection["test"].items()}
    evaluation = metrics.get("evaluation")
    if evaluation:
        scores: dict[str, dict[str, float]] = {name: {} for name in evaluation["metrics"]}
        for sample in evaluation["seeds"]:
            for name in evaluation["metrics"]:
                scores[name][f"{seed}/{sample['seed']}"] = float(sample["test"][name])
        return evaluation["primary"], scores
    return "", {}


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
    metric, scores = _scores(metrics)
    if metrics["scenario"] == "finetune":
        curve_name = f"dev_{metric}"
    else:  # heldout_mlm_loss (text) or heldout_mim_loss (images)
        curve_name = next((k for k in metrics["rounds"][0] if k.startswith("heldout_")), "heldout_mlm_loss")
    curve = {int(r["round"]): float(r[curve_name]) for r in metrics["rounds"] if curve_name in r}
    spent, flops, upload = {}, 0.0, 0.0
    for record in metrics["rounds"]:
        flops, upload = flops + float(record["measured_flops"]), upload + float(record["upload_bytes"])
        spent[int(record["round"])] = (flops, upload)
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
        dev={k: float(v) for k, v in (metrics.get("selection") or {}).get("dev", {}).items()},
        curve_name=curve_name,
        curve=curve,
        spent=spent,
        costs=_costs(metrics["costs"]),
        upload_bytes_total=float(metrics["costs"]["total_upload_bytes"]),
        plan_sha256=metrics.get("plan_sha256"),
        tiers=metrics.get("tiers"),
    )
