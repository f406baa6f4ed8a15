"""Evaluation metrics as evaluate modules kept in the project, so that they load offline.

Each metric ``<name>`` is an evaluate module script at ``fedbt/metrics/<name>/<name>.py``;
:func:`load_metric` loads it by its local path, which never consults the Hugging Face Hub. A new metric
(e.g. ``seqeval`` for NER) is one more such folder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent


def known_metrics() -> list[str]:
    """Names of the metrics shipped here (folders holding a same-named script)."""
    return sorted(p.parent.name for p in METRICS_DIR.glob("*/*.py") if p.stem == p.parent.name)


def load_metric(name: str) -> evaluate.EvaluationModule:
    """The shipped metric ``name``, loaded from its local script (no network, nothing written but the
    module cache); results stay in memory."""
    script = METRICS_DIR / name / f"{name}.py"
    if not script.is_file():
        raise ValueError(f"unknown metric {name!r}; known metrics: {', '.join(known_metrics())}")
    return evaluate.load(str(script), keep_in_memory=True)


def compute_metrics(names: Sequence[str], predictions, references) -> dict[str, float]:
    """``{name: value}`` for each metric in ``names`` on the same predictions and references.

    Each metric returns a mapping; its value under the metric's own name is the score.
    """
    predictions, references = list(predictions), list(references)
    scores = {}
    for name in names:
        result = load_metric(name).compute(predictions=predictions, references=references)
        scores[name] = float(result[name])
    return scores
