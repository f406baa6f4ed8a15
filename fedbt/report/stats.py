"""Statistics over independent replicates: the federation seeds of a row (scipy's t distribution and t-tests).

A row's samples are keyed by federation seed (:class:`fedbt.report.runs.RunResult`: the evaluation seeds of one
federated model are averaged into its one sample first), so n is the number of federated runs. Each score gets a
Student t confidence interval over them (:func:`t_interval`). Against the reference row: when both rows hold
exactly the same seeds, the runs pair up (same partition and data order) and the test is the paired t-test over
the per-seed differences (``scipy.stats.ttest_rel``); otherwise Welch's t-test
(``scipy.stats.ttest_ind(equal_var=False)``). Both are two-sided and need at least :data:`MIN_N` samples on each
side. Samples without any spread on both sides and no difference give p = 1 (scipy returns NaN there); a
non-finite sample (a diverged run) gives no test. The p-values of one table column are Holm-adjusted
(:func:`holm`).
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping
from dataclasses import dataclass

PAIRED, WELCH = "paired t", "Welch t"
MIN_N = 3
"""Fewest samples (federation seeds) on each side for a test: n = 2 leaves the paired test 1 degree of freedom."""


@dataclass(frozen=True)
class Comparison:
    """Two-sided p-value of a row against the reference, and the test that gave it."""

    p_value: float
    test: str


def t_interval(values: list[float], confidence: float = 0.95) -> tuple[float, float] | None:
    """The Student t interval ``mean ± t_{(1+confidence)/2, n-1} * s / sqrt(n)``; None for fewer than 2 values."""
    from scipy import stats

    if len(values) < 2:
        return None
    mean = statistics.fmean(values)
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1)) * statistics.stdev(values) / math.sqrt(len(values))
    return mean - half, mean + half


def compare(samples: Mapping[str, float], reference: Mapping[str, float]) -> Comparison | None:
    """The t-test of ``samples`` against ``reference`` (both keyed by federation seed); None with fewer than
    :data:`MIN_N` on a side or a non-finite sample."""
    from scipy import stats

    if len(samples) < MIN_N or len(reference) < MIN_N:
        return None
    if not all(math.isfinite(v) for v in [*samples.values(), *reference.values()]):
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


def holm(p_values: Mapping[str, float | None]) -> dict[str, float | None]:
    """Holm's step-down adjustment over the non-null p-values (None stays None): the i-th smallest of m becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))``."""
    tested = sorted((p, key) for key, p in p_values.items() if p is not None)
    adjusted: dict[str, float | None] = dict.fromkeys(p_values)
    running = 0.0
    for rank, (p, key) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[key] = running
    return adjusted
