"""Reading finished run directories (``metrics.json``) into the few numbers the tables and figures need."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 10**6


@dataclass(frozen=True)
class RunResult:
    """One run's summary.

    ``scores`` are test scores of the primary metric: one per evaluation seed after further pre-training,
    or the test score at the best dev round of federated fine-tuning. ``curve`` is the per-round held-out
    MLM loss (pre-training) or dev primary score (fine-tuning). Costs are per client and round.
    """

    path: str
    method: str
    data: str
    seed: int
    metric: str
    scores: list[float]
    curve_name: str
    curve: dict[int, float]
    client_seconds: float
    upload_mb: float
    upload_bytes_total: float


def _scores(metrics: dict[str, Any]) -> tuple[str, list[float]]:
    selection = metrics.get("selection")
    if selection:
        primary = selection["primary"]
        return primary, [float(selection["test"][primary])]
    evaluation = metrics.get("evaluation")
    if evaluation:
        primary = evaluation["primary"]
        return primary, [float(seed["test"][primary]) for seed in evaluation["seeds"]]
    return "", []


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
    costs = metrics["costs"]
    client_rounds = max(1, int(costs.get("client_rounds", 1)))
    return RunResult(
        path=str(path),
        method=metrics["method"],
        data=metrics["data"],
        seed=int(metrics["seed"]),
        metric=metric,
        scores=scores,
        curve_name=curve_name,
        curve=curve,
        client_seconds=float(costs["total_client_seconds"]) / client_rounds,
        upload_mb=float(costs["total_upload_bytes"]) / client_rounds / MB,
        upload_bytes_total=float(costs["total_upload_bytes"]),
    )
