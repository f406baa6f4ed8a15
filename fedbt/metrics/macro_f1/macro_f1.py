"""Macro-F1: the unweighted mean of the per-class F1 scores (an evaluate module script, via scikit-learn)."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = (
    "Macro-averaged F1: F1 = 2 * precision * recall / (precision + recall) per class, averaged with equal "
    "weight over the classes that occur in the references or the predictions (a class never predicted "
    "scores 0)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted labels.
    references (list of int): ground-truth labels.
Returns:
    macro_f1 (float): in [0, 1].
Examples:
    >>> metric = evaluate.load("fedbt/metrics/macro_f1")
    >>> metric.compute(predictions=[0, 0, 1], references=[0, 1, 1])
    {'macro_f1': 0.6666666666666666}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MacroF1(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            reference_urls=["https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"],
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        return {"macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0))}
