"""Entity-level micro precision, recall and F1 of BIO tag sequences (an evaluate module script, via seqeval).

Entities are read with seqeval's default mode, which follows conlleval (CoNLL-2000/2003): an entity starts
at ``B-X``, or at an ``I-X`` that does not continue an ``X`` entity, and runs over the following ``I-X``;
a predicted entity counts as correct only if its type, start and end all equal those of a reference entity.
Scores are micro-averaged over all entities of all types; with no predicted (or no reference) entities
precision (or recall) is 0.
"""

import datasets
import evaluate
from seqeval.metrics import f1_score, precision_score, recall_score

_DESCRIPTION = (
    "Entity-level micro-averaged precision, recall and F1 over BIO tag sequences (seqeval default mode = "
    "conlleval rules: a stray I-X starts an entity; exact type and span match)."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of str): predicted BIO tags, one list per sentence.
    references (list of list of str): gold BIO tags, the same lengths.
Returns:
    ner_precision (float), ner_recall (float), ner_f1 (float): in [0, 1].
Examples:
    >>> metric = evaluate.load("fedbt/metrics/seqeval")
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O", "B-ORG"]], references=[["B-PER", "I-PER", "O", "B-LOC"]])
    {'ner_precision': 0.5, 'ner_recall': 0.5, 'ner_f1': 0.5}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Seqeval(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("string")),
                    "references": datasets.Sequence(datasets.Value("string")),
                }
            ),
            reference_urls=["https://github.com/chakki-works/seqeval"],
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        for predicted, reference in zip(predictions, references, strict=True):
            if len(predicted) != len(reference):
                raise ValueError(f"a prediction has {len(predicted)} tags but its reference has {len(reference)}")
        return {
            "ner_precision": float(precision_score(references, predictions, zero_division=0)),
            "ner_recall": float(recall_score(references, predictions, zero_division=0)),
            "ner_f1": float(f1_score(references, predictions, zero_division=0)),
        }
