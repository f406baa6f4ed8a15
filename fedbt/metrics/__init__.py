"""Evaluation metrics as evaluate modules kept in the project, so that they load offline.

Each metric ``<name>`` is an evaluate module script at ``fedbt/metrics/<name>/<name>.py``;
:func:`load_metric` loads it by its local path, which never consults the Hugging Face Hub. A new metric
is one more such folder. A module may return several scores: ``seqeval`` (NER, on lists of BIO tag strings)
gives ``ner_f1``, ``ner_precision`` and ``ner_recall``, which :func:`compute_metrics` accepts by those names.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import evaluate

METRICS_DIR = Path(__file__).parent
SCORE_MODULES = {"ner_f1": "seqeval", "ner_precision": "seqeval", "ner_recall": "seqeval"}
"""Scores computed by a module of another name; every other score ``name`` comes from module ``name``."""


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

    Each module (``SCORE_MODULES.get(name, name)``) runs once and returns a mapping; the value under the
    metric's own name is the score.
    """
    predictions, references = list(predictions), list(references)
    results: dict[str, dict] = {}
    scores = {}
    for name in names:
        module = SCORE_MODULES.get(name, name)
        if module not in results:
            results[module] = load_metric(module).compute(predictions=predictions, references=references)
        if name not in results[module]:
            raise ValueError(f"metric module {module!r} gives the scores {', '.join(results[module])}; ask for those")
        scores[name] = float(results[module][name])
    return scores
