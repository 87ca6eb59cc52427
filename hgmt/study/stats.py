"""Statistics of the study: seed means and spreads, Welch's t-test of a change over
training seeds, and Holm's correction within a table of changes.

A change between two subsets is the difference of their means over seeds, signed so that
positive is better. Welch's t-test (scipy.stats.ttest_ind, unequal variances) gives its
two-sided p-value and 95 % confidence interval; Holm's step-down correction adjusts the
p-values of one table (one family of comparisons) so that the chance of any false "better"
or "worse" in that table stays at most ALPHA. A change is *better* or *worse* when its
Holm-adjusted p-value is below ALPHA, else *no detectable change*.

A run's evaluation keeps one number per split (not one per test frame), and every run is
evaluated on the same test frames, so the test is over training seeds on those frames: it
says whether a change holds across seeds, not whether it would hold on other frames.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  # the family-wise error rate of one table
LEVEL = 0.95  # the confidence level of each interval (per comparison)
BETTER, WORSE, UNDETECTED = "better", "worse", "no detectable change"


def mean(values: list[float]) -> float:
    return float(np.mean(values))


def spread(values: list[float]) -> float | None:
    """The seeds' standard deviation (n - 1 in the denominator); None for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def welch(a: Sequence[float], b: Sequence[float], sign: float = 1.0) -> dict | None:
    """Welch's t-test of mean(a) - mean(b), times `sign` (-1 where lower is better), over the
    seeds' values `a` and `b` (each at least 2). -> {'change', 'low', 'high' (the LEVEL
    confidence interval of the signed change), 'p' (two-sided), 'df', 'n': [len(a), len(b)]};
    None when either side has fewer than 2 values (no spread to test against).

    When neither side varies over its seeds, the interval is the change itself and p is 1.0
    for no change, 0.0 for any other."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if min(len(a), len(b)) < 2:
        return None
    n = [len(a), len(b)]
    if np.all(a == a[0]) and np.all(b == b[0]):  # exact: a mean of equal floats may round
        change = float(sign * (a[0] - b[0])) + 0.0  # + 0.0: no -0.0
        return {"change": change, "n": n, "low": change, "high": change,
                "p": 1.0 if change == 0 else 0.0, "df": float(len(a) + len(b) - 2)}
    change = float(sign * (a.mean() - b.mean())) + 0.0
    out = {"change": change, "n": n}
    with warnings.catch_warnings():  # one side's seeds may agree exactly: a valid case
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(LEVEL)
    low, high = sorted((float(sign * ci.low), float(sign * ci.high)))
    return out | {"low": low, "high": high, "p": float(t.pvalue), "df": float(t.df)}


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the k-th smallest of m is
    multiplied by m - k + 1, made non-decreasing in that order, and capped at 1."""
    p = np.asarray(p_values, float)
    adjusted, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def judge(tests: Mapping[str, dict | None]) -> dict[str, dict]:
    """One table's tests ({row: welch(...) or None}) -> the tested rows with 'p_holm' (Holm
    within this table) and 'verdict' (BETTER | WORSE | UNDETECTED) added; untested rows left
    out."""
    rows = {k: t for k, t in tests.items() if t is not None}
    adjusted = holm([t["p"] for t in rows.values()])
    return {k: t | {"p_holm": q, "verdict": (UNDETECTED if q >= ALPHA else
                                              BETTER if t["change"] > 0 else WORSE)}
            for (k, t), q in zip(rows.items(), adjusted, strict=True)}


def signed(x: float, digits: int = 2) -> str:
    """x with its sign and `digits` significant digits, whole numbers from 100 on: '+0.0065',
    '-41', '+118'; '0' for zero."""
    return "0" if x == 0 else f"{x:+.0f}" if abs(x) >= 100 else f"{x:+.{digits}g}"


def bounds(t: dict) -> str:
    """'[+0.00026, +0.023]': a test's confidence interval."""
    return f"[{signed(t['low'])}, {signed(t['high'])}]"


def interval(t: dict) -> str:
    """'+0.0115 [+0.00026, +0.023]': a change with its confidence interval."""
    return f"{signed(t['change'], 3)} {bounds(t)}"
