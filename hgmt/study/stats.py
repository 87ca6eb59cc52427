"""Statistics of the study: means and seed spreads of a metric, and whether a change is beyond
them."""

from __future__ import annotations

import numpy as np


def mean(values: list[float]) -> float:
    return float(np.mean(values))


def spread(values: list[float]) -> float | None:
    """The seeds' standard deviation (n - 1 in the denominator); None for a single seed."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


def beyond_spread(change: float, sd_a: float | None, sd_b: float | None) -> bool | None:
    """The study's test of a change between two subsets: |change| larger than both seed
    standard deviations; None (not judged) when either has a single seed."""
    if sd_a is None or sd_b is None:
        return None
    return abs(change) > max(sd_a, sd_b)
