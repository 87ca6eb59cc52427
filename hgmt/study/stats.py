"""Statistics of the study: seed means and spreads, Welch's t-test of a change over
training seeds, and Holm's correction within a family of changes.

A change between two subsets is the difference of their means over seeds, signed so that
positive is better. Welch's t-test (scipy.stats.ttest_ind, unequal variances) gives its
two-sided p-value and 95 % confidence interval; Holm's step-down correction adjusts the
p-values of one family of comparisons (a table, or the tests one conclusion rests on: the
report's TEST_NOTE lists the families) so that the chance of any false "better" or "worse"
in that family stays at most ALPHA. A change is *better* or *worse* when its
Holm-adjusted p-value is below ALPHA, else *no detectable change*.

The intervals are per comparison: Holm adjusts the p-values, not the intervals, so an
interval can exclude zero while the family's Holm-adjusted test detects no change (its
unadjusted p is below ALPHA, its adjusted one is not). The verdicts follow the adjusted test;
the interval shows the size and sign the seeds allow for that one change alone.

A run's evaluation keeps one number per split (not one per test frame), and every run is
evaluated on the same test frames, so the test is over training seeds on those frames: it
says whether a change holds across seeds, not whether it would hold on other frames. Seed k
of every subset has the same config.seed (data order, augmentation draws), so the seeds of
two subsets pair up; Welch's unpaired test gives up that pairing, which is conservative only
where paired seeds correlate positively (a paired test rests on that correlation, which a few
seeds cannot estimate well), and its error rate holds only as far as the seeds are
independent.
"""

from __future__ import annotations

import warnings
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  # the family-wise error rate of one family of tests
LEVEL = 0.95  # the confidence level of each interval (per comparison, not Holm-adjusted)
# A table's header of those intervals.
CI_HEADER = f"{LEVEL:.0%} CI (per comparison)"
BETTER, WORSE, UNDETECTED = "better", "worse", "no detectable change"
ONE_SEED, NO_SPREAD = "one seed", "no spread over the seeds to test against"
NOT_FINITE = "a seed's value is not a finite number"


def mean(values: list[float]) -> float:
    """The seeds' mean."""
    return float(np.mean(values))


def spread(values: list[float]) -> float | None:
    """The seeds' standard deviation (n - 1 in the denominator); None for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def welch(a: Sequence[float], b: Sequence[float], sign: float = 1.0) -> dict | None:
    """Welch's t-test of mean(a) - mean(b), times `sign` (-1 where lower is better), over the
    seeds' values `a` and `b` (each at least 2, all finite). -> {'change', 'low', 'high' (the
    LEVEL confidence interval of the signed change, per comparison), 'p' (two-sided), 'df',
    'n': [len(a), len(b)]}; None when the test has nothing to go on (`untested_because` says
    why): a NaN or infinite value (a diverged run's: the mean and variance it enters are not
    numbers either), a side with fewer than 2 values, or neither side varying over its seeds,
    whether their values differ or not. Without any spread the t statistic is undefined, and a
    difference between two constant sides says nothing of how it varies with the seed:
    per-joint PCKh moves in steps of 1 / (test frames), so such ties are common and are not
    verdicts."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if untested_because(a, b) is not None:
        return None
    change = float(sign * (a.mean() - b.mean())) + 0.0  # + 0.0: no -0.0
    out = {"change": change, "n": [len(a), len(b)]}
    with warnings.catch_warnings():  # one side's seeds may agree exactly: a valid case
        warnings.simplefilter("ignore", RuntimeWarning)
        t = stats.ttest_ind(a, b, equal_var=False)
    ci = t.confidence_interval(LEVEL)
    low, high = sorted((float(sign * ci.low), float(sign * ci.high)))
    return out | {"low": low, "high": high, "p": float(t.pvalue), "df": float(t.df)}


def untested_because(a: Sequence[float], b: Sequence[float]) -> str | None:
    """Why `welch(a, b)` gives no test, in the report's words: NOT_FINITE when a value is NaN
    or infinite, ONE_SEED when a side has fewer than 2 values, NO_SPREAD and the values when
    neither side varies over its seeds; None when it tests. One function decides both, so the
    reason a report gives is the one that applied."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return NOT_FINITE
    if min(len(a), len(b)) < 2:
        return ONE_SEED
    if np.all(a == a[0]) and np.all(b == b[0]):  # exact: a mean of equal floats may round
        # The value says why: a joint at 0 by construction, a part no run predicts.
        same = (f"{a[0]:.4g} in every run" if a[0] == b[0] else
                f"{a[0]:.4g} vs {b[0]:.4g} in every run")
        return f"{NO_SPREAD} ({same})"
    return None


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the given order: the k-th smallest of m is
    multiplied by m - k + 1, made non-decreasing in that order, and capped at 1. ValueError
    for a p-value that is not a number in [0, 1] (NaN sorts anywhere and would give its
    neighbours its rank's factor)."""
    p = np.asarray(p_values, float)
    bad = [i for i, x in enumerate(p) if not 0.0 <= x <= 1.0]
    if bad:
        given = ", ".join(f"p_values[{i}]={float(p[i])!r}" for i in bad)
        raise ValueError(f"holm: {given}: not numbers in [0, 1]; leave their tests out of the "
                         f"family (welch gives None for values that are not finite)")
    adjusted, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, (len(p) - rank) * p[i])
        adjusted[i] = min(1.0, running)
    return adjusted.tolist()


def judge(tests: Mapping[Hashable, dict | None]) -> dict[Hashable, dict]:
    """One family's tests ({key: welch(...) or None}) -> the tested keys with 'p_holm' (Holm
    within this family) and 'verdict' (BETTER | WORSE | UNDETECTED) added; untested keys left
    out."""
    rows = {k: t for k, t in tests.items() if t is not None}
    adjusted = holm([t["p"] for t in rows.values()])
    return {k: t | {"p_holm": q, "verdict": (UNDETECTED if q >= ALPHA else
                                              BETTER if t["change"] > 0 else WORSE)}
            for (k, t), q in zip(rows.items(), adjusted, strict=True)}


def signed(x: float, digits: int = 2) -> str:
    """x with its sign and `digits` significant digits, whole numbers from 100 on: '+0.0065',
    '-41', '+118'; '0' for zero. The cut is on x rounded to `digits` digits, so a value that
    rounds up to 100 (99.7 at 2 digits) prints '+100', not '+1e+02'."""
    if x == 0:
        return "0"
    return f"{x:+.0f}" if abs(float(f"{x:.{digits}g}")) >= 100 else f"{x:+.{digits}g}"


def bounds(t: dict) -> str:
    """'[+0.00026, +0.023]': a test's confidence interval (per comparison, unadjusted)."""
    return f"[{signed(t['low'])}, {signed(t['high'])}]"


def interval(t: dict) -> str:
    """'+0.0115 [+0.00026, +0.023]': a change with its confidence interval (per comparison,
    unadjusted)."""
    return f"{signed(t['change'], 3)} {bounds(t)}"
