"""Significance of a score difference over seeds (scipy's t-tests), as the paper compares FedBT with BERT-FL.

A row's samples and the reference row's samples are keyed by their seeds (:class:`fedbt.report.runs.RunResult`).
When both rows hold exactly the same keys, the runs pair up (same partition, data order and evaluation seed)
and the test is the paired t-test over the per-seed differences (``scipy.stats.ttest_rel``); otherwise Welch's
t-test (``scipy.stats.ttest_ind(equal_var=False)``). Both are two-sided. Fewer than two samples on either side
gives no test. Samples without any spread on both sides and no difference give p = 1 (scipy returns NaN there).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

PAIRED, WELCH = "paired t", "Welch t"


@dataclass(frozen=True)
class Comparison:
    """Two-sided p-value of a row against the reference, and the test that gave it."""

    p_value: float
    test: str


def compare(samples: Mapping[str, float], reference: Mapping[str, float]) -> Comparison | None:
    """The t-test of ``samples`` against ``reference`` (both keyed by seed); None with fewer than 2 on a side."""
    from scipy import stats

    if len(samples) < 2 or len(reference) < 2:
        return None
    with warnings.catch_warnings():  # near-identical samples: scipy warns about precision, the p-value stands
        warnings.simplefilter("ignore", RuntimeWarning)
        if samples.keys() == reference.keys():
            keys = sorted(samples)
            result = stats.ttest_rel([samples[k] for k in keys], [reference[k] for k in keys])
            test = PAIRED
        else:
            result = stats.ttest_ind(list(samples.values()), list(reference.values()), equal_var=False)
            test = WELCH
    p_value = float(result.pvalue)
    return Comparison(1.0 if math.isnan(p_value) else p_value, test)
