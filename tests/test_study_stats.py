"""hgmt.study.stats: Welch's t-test and Holm's correction against examples worked by hand;
hgmt.study.comparable's pick of the runs to evaluate again."""

import math

import pytest

from hgmt.evaluation import metrics_versions, protocols
from hgmt.study import comparable, stats


def test_welch_matches_a_hand_worked_example():
    """a = [1, 2, 3], b = [1, 1, 1]: change 1, variance of the change 1/3 + 0 (so df = 2),
    t = sqrt(3). With 2 degrees of freedom Student's t has closed forms: two-sided
    p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(3/5), and the 0.975 quantile
    0.95 / sqrt(2 * 0.975 * 0.025) = 4.3027, so the 95 % interval is 1 +- 4.3027 / sqrt(3)."""
    t = stats.welch([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])
    half = 0.95 / math.sqrt(2 * 0.975 * 0.025) / math.sqrt(3)
    assert t["change"] == pytest.approx(1.0)
    assert t["df"] == pytest.approx(2.0)
    assert t["p"] == pytest.approx(1 - math.sqrt(3 / 5), rel=1e-6)
    assert (t["low"], t["high"]) == (pytest.approx(1 - half), pytest.approx(1 + half))
    assert t["n"] == [3, 3]
    lower_is_better = stats.welch([1.0, 2.0, 3.0], [1.0, 1.0, 1.0], sign=-1.0)
    assert lower_is_better["change"] == pytest.approx(-1.0)
    assert (lower_is_better["low"], lower_is_better["high"]) == (
        pytest.approx(-1 - half), pytest.approx(-1 + half))
    assert lower_is_better["p"] == pytest.approx(t["p"])


def test_welch_needs_two_seeds_and_spread_on_a_side():
    """Seeds that agree exactly on both sides leave no spread to test against: per-joint PCKh
    on 240 frames moves in steps of 1/240, so 0.9958 (239/240) in each of three seeds against
    0.9917 (238/240) in each is one frame's difference, untested, not 'better' with p = 0 and
    a zero-width interval. One side without spread still tests (the hand-worked example)."""
    apart = ([0.9958] * 3, [0.9917] * 3)
    assert stats.welch(*apart) is None
    assert stats.judge({"a": stats.welch(*apart)}) == {}  # no verdict at all
    same = ([0.8, 0.8], [0.8, 0.8, 0.8])
    assert stats.welch(*same, sign=-1.0) is None
    assert stats.welch([0.5], [0.4, 0.6]) is None
    assert stats.untested_because([0.5], [0.4, 0.6]) == stats.ONE_SEED == "one seed"
    assert stats.untested_because(*apart) == ("no spread over the seeds to test against "
                                              "(0.9958 vs 0.9917 in every run)")
    assert stats.untested_because(*same) == ("no spread over the seeds to test against (0.8 in "
                                             "every run)")
    assert stats.untested_because([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) is None
    level = stats.welch([1.0, 2.0, 3.0], [2.0, 2.0, 2.0], sign=-1.0)
    assert (level["change"], level["p"]) == (0.0, 1.0)
    assert str(level["change"]) == "0.0"  # no -0.0 in the report


def test_a_value_that_is_not_finite_leaves_its_change_untested():
    """A diverged seed's NaN (or an infinite value) is no number to test with: the change
    with it is untested, saying why, not tested to p = nan; the other seeds' values do not
    make it testable."""
    for bad in (math.nan, math.inf, -math.inf):
        for a, b in (([1.0, 2.0, bad], [1.0, 2.0, 3.0]), ([1.0, 2.0, 3.0], [bad, 2.0, 3.0]),
                     ([bad], [1.0, 2.0])):
            assert stats.welch(a, b) is None, (a, b)
            assert stats.untested_because(a, b) == stats.NOT_FINITE, (a, b)
    assert stats.NOT_FINITE == "a seed's value is not a finite number"
    assert stats.judge({"a": stats.welch([1.0, 2.0, math.nan], [1.0, 2.0, 3.0]),
                        "b": stats.welch([1.0, 2.0, 3.0], [1.0, 1.0, 1.0])}) == {
        "b": stats.welch([1.0, 2.0, 3.0], [1.0, 1.0, 1.0]) | {
            "p_holm": pytest.approx(1 - math.sqrt(3 / 5)), "verdict": stats.UNDETECTED}}


def test_holm_refuses_a_p_value_that_is_not_a_probability():
    """holm([0.01, nan]) gave [0.02, 0.02]: the NaN took the larger factor's rank and the
    adjusted p of the other test. A p that is NaN or outside [0, 1] is an error."""
    for p in ([0.01, math.nan], [math.nan], [0.2, 1.5, 0.1], [-0.1]):
        with pytest.raises(ValueError, match=r"not numbers in \[0, 1\]; leave their tests "
                                             r"out of the family"):
            stats.holm(p)
    with pytest.raises(ValueError, match=r"^holm: p_values\[1\]=nan: not numbers"):
        stats.holm([0.01, math.nan])
    with pytest.raises(ValueError, match=r"^holm: p_values\[1\]=1\.5, p_values\[2\]=-0\.1: "):
        stats.holm([0.2, 1.5, -0.1])
    assert stats.holm([0.0, 1.0]) == [0.0, 1.0]


def test_holm_matches_a_hand_worked_example():
    """p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005 * 4 = 0.02, 0.01 * 3 = 0.03,
    0.03 * 2 = 0.06, 0.04 * 1 = 0.04, raised to 0.06 to keep the order; back in the given
    order: (0.03, 0.06, 0.06, 0.02). Capped at 1: (0.5, 0.6) -> (1.0, 1.0)."""
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_judge_applies_holm_within_one_table():
    """Two changes of p 0.03 each: alone each is below 0.05, in one table each is 0.06."""
    alone = {"change": 0.1, "low": 0.01, "high": 0.2, "p": 0.03, "df": 4.0, "n": [3, 3]}
    assert stats.judge({"a": alone})["a"]["verdict"] == stats.BETTER
    both = stats.judge({"a": alone, "b": alone | {"change": -0.1}, "c": None})
    assert set(both) == {"a", "b"}  # untested rows are left out
    assert both["a"]["p_holm"] == pytest.approx(0.06)
    assert both["a"]["verdict"] == both["b"]["verdict"] == stats.UNDETECTED
    worse = stats.judge({"b": alone | {"change": -0.1, "p": 0.001}, "a": alone})
    assert worse["b"]["verdict"] == stats.WORSE and worse["a"]["verdict"] == stats.BETTER


def test_interval_formats():
    t = {"change": 0.01146, "low": 0.00026, "high": 0.0227}
    assert stats.interval(t) == "+0.0115 [+0.00026, +0.023]"
    assert stats.interval({"change": 79.1, "low": 41.2, "high": 117.6}) == "+79.1 [+41, +118]"


@pytest.mark.parametrize("x, digits, text", [
    (99.4, 2, "+99"), (-99.49, 2, "-99"), (99.5, 2, "+100"), (99.7, 2, "+100"),
    (-99.96, 2, "-100"), (100.4, 2, "+100"), (99.94, 3, "+99.9"), (99.96, 3, "+100"),
    (0.0999, 2, "+0.1"), (-41.2, 2, "-41"), (117.6, 2, "+118")])
def test_signed_prints_values_that_round_to_100_as_whole_numbers(x, digits, text):
    """Either side of 100 at 2 and 3 significant digits: below the rounding boundary the
    digits, from it on a whole number, never an exponent ('+1e+02')."""
    assert stats.signed(x, digits) == text


def test_interval_near_100_prints_whole_numbers():
    t = {"change": 99.96, "low": 99.6, "high": 99.9}
    assert stats.interval(t) == "+100 [+100, +100]"
    assert stats.interval({"change": 99.4, "low": 99.2, "high": 99.45}) == "+99.4 [+99, +99]"


def test_a_holm_adjusted_p_of_exactly_alpha_is_no_detectable_change():
    """'better' or 'worse' only below ALPHA, not at it: two tests at p = 0.025 each
    adjust to 2 x 0.025 = 0.05 = ALPHA exactly (a doubling is exact in binary)."""
    judged = stats.judge({"a": {"p": 0.025, "change": 1.0}, "b": {"p": 0.025, "change": -1.0}})
    assert [judged[k]["p_holm"] for k in "ab"] == [stats.ALPHA, stats.ALPHA]
    assert {judged[k]["verdict"] for k in "ab"} == {stats.UNDETECTED}


def test_spread_is_the_sample_standard_deviation():
    """[1, 2, 3, 4]: mean 2.5, squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5, over
    n - 1 = 3: variance 5/3 (over n it would be 5/4). One seed has no spread."""
    assert stats.spread([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3))
    assert stats.spread([0.79, 0.81]) == pytest.approx(math.sqrt(2) * 0.01)
    assert stats.spread([0.8]) is None
    assert stats.mean([1.0, 2.0, 3.0, 4.0]) == 2.5


def test_holm_caps_each_adjusted_p_at_one():
    """(0.6, 0.7): 2 x 0.6 = 1.2 and 1 x 0.7 raised to 1.2, each capped at 1; (0.3, 0.9):
    0.6, then 0.9, neither capped."""
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    assert stats.holm([0.9, 0.3]) == pytest.approx([0.9, 0.6])


def test_runs_evaluated_unlike_are_evaluated_again_as_todays_evaluation_would_be():
    """Two runs under an older version of the metric definitions against one under today's:
    the larger group is the older one, but hgmt.evaluate gives today's definitions, so the
    runs to evaluate again are the two older ones, not the one already as today."""
    version = metrics_versions.metrics_version("hgmt")
    window = protocols.window("hgmt", "hgmt")
    today = (240, "test", "every4", False, version, window)
    older = today[:4] + (version - 1, window)
    with pytest.raises(ValueError, match=r"Evaluate b, c again as the others, for each <run>"):
        comparable.check_evaluated_alike(
            "sweep", "hgmt", {"a": today, "b": older, "c": older}, dict.fromkeys("abc", 0),
            dict.fromkeys("abc", "eval_test.json"))
