"""hgmt.study.claims: the seed paper's conclusions checked on crafted studies (report.compare of
hand-made evaluation summaries, 3 seeds each unless said). With 3 seeds of standard deviation
s on both sides, Welch's t-test has 4 degrees of freedom and a change's 95 % interval is
+- 2.776 * s * sqrt(2/3) = +- 2.27 s wide: 0.1 with s = 0.01 is better (p 0.0003, below 0.05
after Holm over 7 tests), 0.005 is no detectable change. With 4 degrees of freedom the
two-sided p of t is 1 - sin(a) (1 + cos(a)^2 / 2), tan(a) = t / 2; with 2 (one side
constant), 1 - t / sqrt(2 + t^2). A conclusion's tests are Holm-adjusted together."""

import pytest

import hgmt.report
from hgmt import workdirs
from hgmt.sources import body
from hgmt.study import claims, report
from hgmt.tasks import TASKS

AGREES, DISAGREES, UNRESOLVED = claims.AGREES, claims.DISAGREES, claims.UNRESOLVED


def _summary(task: str, value: float, items: dict | None = None) -> dict:
    """One run's evaluation of `task` with headline `value` (per-item values `items`, default
    all equal to `value`)."""
    if task == "pose2d":
        per = {j: value for j in body.JOINT_NAMES} | (items or {})
        return {"pckh@0.5": value, "pckh@0.5_per_joint": per}
    if task == "pose3d":
        per = {j: value for j in body.JOINT_NAMES} | (items or {})
        return {"mjd_mm": value, "mjd_mm_per_joint": per}
    if task == "segm":
        per = {p: value for p in body.PART_NAMES} | (items or {})
        return {"mean_iou": value, "iou_per_part": per}
    return {"rmse_mm": value, "bin_accuracy": 0.3}


def _study(values: dict[str, dict[str, list[float]]]) -> dict:
    """{subset: {task: [value per seed]}} -> report.compare's study."""
    results = {}
    for subset, per_task in values.items():
        seeds = len(next(iter(per_task.values())))
        results[subset] = [{t: _summary(t, v[k]) for t, v in per_task.items()}
                           for k in range(seeds)]
    return report.compare(results)


def _verdict(rule, values):
    return rule(_study(values))[0]


SPREAD = [0.0, 0.01, -0.01]  # seed offsets: standard deviation 0.01


def _seeds(x: float, scale: float = 1.0) -> list[float]:
    return [x + scale * d for d in SPREAD]


def test_pose2d_helping_pose3d_or_depth_disagrees_with_the_paper():
    """'pose2d helps neither' agrees only when both changes are detectably worse: a change the
    test cannot detect (0.5 mm with seed sd 1 mm: [-1.8, +2.8]) may hide a gain. A change of
    5 mm with seed sd 1 mm has t = 5 / sqrt(2/3) = 6.12, p = 0.0036; Holm over the
    conclusion's two tests doubles the smaller p: 0.0072."""
    rule = claims.pose2d_helps_neither_pose3d_nor_depth
    within = {"pose3d": {"pose3d": _seeds(60, 100)},  # MJD 60 +- 1 mm
              "pose2d+pose3d": {"pose3d": _seeds(65, 100)},  # 5 mm worse: worse
              "depth": {"depth": _seeds(200, 100)},
              "pose2d+depth": {"depth": _seeds(205, 100)}}  # 5 mm worse: worse
    assert _verdict(rule, within) == AGREES
    undetected = within | {"pose2d+pose3d": {"pose3d": _seeds(59.5, 100)}}  # 0.5 mm better
    verdict, evidence = rule(_study(undetected))
    assert verdict == UNRESOLVED
    assert ("pose3d in pose2d+pose3d: +0.5 [-1.8, +2.8], p (Holm) 0.57, no detectable change; "
            "depth in pose2d+depth: -5 [-7.3, -2.7], p (Holm) 0.0072, worse [Holm over this "
            "conclusion's 2 tests]") == evidence
    helped = within | {"pose2d+pose3d": {"pose3d": _seeds(55, 100)}}  # 5 mm better
    verdict, evidence = rule(_study(helped))
    assert verdict == DISAGREES
    assert "pose3d in pose2d+pose3d: +5 [+2.7, +7.3], p (Holm) 0.0072, better" in evidence
    one_seed = within | {"pose2d+depth": {"depth": [205.0]}}
    verdict, evidence = rule(_study(one_seed))
    assert verdict == UNRESOLVED
    assert "depth in pose2d+depth: -5 (n=1 vs 3), untested: one seed" in evidence
    # every seed alike on both sides: a difference, but no spread to test it against
    flat = within | {"depth": {"depth": [200.0] * 3}, "pose2d+depth": {"depth": [205.0] * 3}}
    verdict, evidence = rule(_study(flat))
    assert verdict == UNRESOLVED
    assert ("depth in pose2d+depth: -5 (n=3 vs 3), untested: no spread over the seeds to "
            "test against (205 vs 200 in every run)") in evidence
    missing = {k: v for k, v in within.items() if k != "pose2d+depth"}
    verdict, evidence = claims.pose2d_helps_neither_pose3d_nor_depth(_study(missing))
    assert verdict == UNRESOLVED and "no pose2d+depth run" in evidence


def test_a_conclusions_tests_are_holm_adjusted_together():
    """'pose2d helps neither' rests on two tests from two tables: pose3d in pose2d+pose3d and
    depth in pose2d+depth, each 2.5 mm better with seed sd 1 mm: t = 2.5 / sqrt(2/3) = 3.062,
    p = 0.0376, below 0.05 in its table of one row. Read alone, each would make the
    conclusion disagree, so a verdict from either of two tests at 0.05 is false up to about
    twice as often; Holm over the conclusion's two tests doubles each: 0.075, no detectable
    change, unresolved."""
    study = _study({"pose3d": {"pose3d": _seeds(60, 100)},
                    "pose2d+pose3d": {"pose3d": _seeds(57.5, 100)},
                    "depth": {"depth": _seeds(200, 100)},
                    "pose2d+depth": {"depth": _seeds(197.5, 100)}})
    for task in ("pose3d", "depth"):
        t = study[task]["tests"][f"pose2d+{task}"]
        assert t["p"] == pytest.approx(0.037590, abs=1e-6)
        assert t["p_holm"] == t["p"] and t["verdict"] == claims.BETTER  # its table: one row
    verdict, evidence = claims.pose2d_helps_neither_pose3d_nor_depth(study)
    assert verdict == UNRESOLVED
    assert evidence == ("pose3d in pose2d+pose3d: +2.5 [+0.23, +4.8], p (Holm) 0.075, no "
                        "detectable change; depth in pose2d+depth: +2.5 [+0.23, +4.8], p (Holm) "
                        "0.075, no detectable change [Holm over this conclusion's 2 tests]")


def test_segm_helped_by_pose2d_but_not_pose3d():
    rule = claims.segm_helped_by_pose2d_not_pose3d
    base = {"segm": {"segm": _seeds(0.50)}, "pose2d+segm": {"segm": _seeds(0.60)},
            "pose3d+segm": {"segm": _seeds(0.40)}}
    assert _verdict(rule, base) == AGREES
    # "not from 3D pose" is unresolved when the test cannot detect pose3d's change either way
    verdict, evidence = rule(_study(base | {"pose3d+segm": {"segm": _seeds(0.505)}}))
    assert verdict == UNRESOLVED
    assert evidence.endswith("segm in pose3d+segm: +0.005 [-0.018, +0.028], p (Holm) 0.57, "
                             "no detectable change [Holm over this conclusion's 2 tests]")
    assert _verdict(rule, base | {"pose3d+segm": {"segm": _seeds(0.60)}}) == DISAGREES
    assert _verdict(rule, base | {"pose2d+segm": {"segm": _seeds(0.40)}}) == DISAGREES
    # a gain the test cannot detect neither confirms nor refutes "benefits"
    assert _verdict(rule, base | {"pose2d+segm": {"segm": _seeds(0.505)}}) == UNRESOLVED
    assert _verdict(rule, base | {"pose2d+segm": {"segm": [0.6]}}) == UNRESOLVED
    # without the isolated run, both changes lack it: said once
    verdict, evidence = rule(_study({"pose2d+segm": {"segm": _seeds(0.60)},
                                     "pose3d+segm": {"segm": _seeds(0.40)}}))
    assert (verdict, evidence) == (UNRESOLVED, "no isolated segm run"), evidence


def test_a_change_whose_metric_is_undefined_says_so_not_that_the_run_is_missing():
    """SURREAL's mean IoU is undefined (None) where a part is absent from the split: the
    pose2d+segm runs exist, but have no value to compare, and the evidence says that rather
    than 'no pose2d+segm run'; with the isolated runs undefined, likewise."""
    def study(isolated, with_pose2d):
        results = {"segm": [{"segm": {"mean_iou": v, "iou_per_part": {}}} for v in isolated],
                   "pose2d+segm": [{"segm": {"mean_iou": v, "iou_per_part": {}}}
                                   for v in with_pose2d],
                   "pose3d+segm": [{"segm": _summary("segm", v)} for v in _seeds(0.5)]}
        return report.compare(results)

    s = study(_seeds(0.5), [None] * 3)
    assert s["segm"]["undefined"] == ["pose2d+segm"]
    assert claims.untested(s["segm"], "segm", "pose2d+segm") == (
        "mean_iou undefined under this protocol in pose2d+segm")
    verdict, evidence = claims.segm_helped_by_pose2d_not_pose3d(s)
    assert verdict == UNRESOLVED
    assert evidence.startswith("mean_iou undefined under this protocol in pose2d+segm; "), (
        evidence)
    s = study([None] * 3, _seeds(0.6))
    assert claims.untested(s["segm"], "segm", "pose3d+segm") == (
        "mean_iou undefined under this protocol in segm")
    assert claims.untested(s["segm"], "segm", "depth+segm") == (
        "mean_iou undefined under this protocol in segm")


def _pose2d_subsets(value_of: dict[str, float]) -> dict:
    """Every subset holding pose2d, 3 seeds of PCKh around value_of[subset] (default 0.80)."""
    subsets = ["+".join(s) for s in claims.all_subsets() if "pose2d" in s
               and set(s) <= set(claims.PAPER_TASKS)]
    assert len(subsets) == 8
    return {s: {"pose2d": _seeds(value_of.get(s, 0.80))} for s in subsets}


def test_all_four_tasks_best_for_pose2d():
    """The four-task model 0.1 above the isolated pose2d and above each of the 6 rivals (seed
    sd 0.01 everywhere): t = 0.1 / (0.01 sqrt(2/3)) = 12.25, p = 0.000255 each; Holm over the
    conclusion's 7 tests: 0.0018."""
    rule = claims.all_four_best_for_pose2d
    assert rule(_study(_pose2d_subsets({claims.ALL_FOUR: 0.90}))) == (
        AGREES, f"pose2d in {claims.ALL_FOUR}: +0.1 [+0.077, +0.12], p (Holm) 0.0018, better; "
                f"better than each other combination [Holm over this conclusion's 7 tests]")
    rival = _pose2d_subsets({claims.ALL_FOUR: 0.90, "pose2d+segm": 0.95})
    verdict, evidence = rule(_study(rival))
    assert verdict == DISAGREES
    assert f"{claims.ALL_FOUR} against pose2d+segm: -0.05 [-0.073, -0.027]" in evidence
    close = _pose2d_subsets({claims.ALL_FOUR: 0.90, "pose2d+segm": 0.905})
    verdict, evidence = rule(_study(close))
    assert verdict == UNRESOLVED
    assert f"{claims.ALL_FOUR} not detectably better than pose2d+segm (-0.005" in evidence
    partial = _pose2d_subsets({claims.ALL_FOUR: 0.90})
    del partial["pose2d+pose3d+depth"]
    verdict, evidence = rule(_study(partial))
    assert verdict == UNRESOLVED and evidence.endswith(
        "untested against pose2d+pose3d+depth [Holm over this conclusion's 6 tests]")
    no_gain = _pose2d_subsets({claims.ALL_FOUR: 0.805})
    assert _verdict(rule, no_gain) == UNRESOLVED
    assert _verdict(rule, _pose2d_subsets({claims.ALL_FOUR: 0.70})) == DISAGREES  # worse


def test_every_task_benefits_from_some_combination():
    values = {t: {t: _seeds(0.5)} for t in claims.PAPER_TASKS}
    values["pose2d+segm"] = {"pose2d": _seeds(0.6), "segm": _seeds(0.6)}
    values["pose3d+depth"] = {"pose3d": _seeds(0.4), "depth": _seeds(0.4)}  # lower: better
    others = [s for s in ("+".join(c) for c in claims.all_subsets())
              if "+" in s and s not in values]
    unhelpful = values | {s: {t: _seeds(0.5) for t in s.split("+")} for s in others}
    assert _verdict(claims.every_task_benefits, unhelpful) == AGREES
    assert _verdict(claims.every_task_benefits, values) == AGREES  # each has one already
    # Of two better combinations, the evidence shows the one of the lower adjusted p (it
    # showed the first in table order).
    twice = unhelpful | {"pose2d+depth": {"pose2d": _seeds(0.7), "depth": _seeds(0.5)}}
    evidence = claims.every_task_benefits(_study(twice))[1]
    assert evidence.startswith("pose2d in pose2d+depth: +0.2 ["), evidence
    assert evidence.split("; ")[0].endswith(", better (the strongest of 2 better)"), evidence
    no_depth_gain = unhelpful | {"pose3d+depth": {"pose3d": _seeds(0.4),
                                                  "depth": _seeds(0.5)}}
    assert _verdict(claims.every_task_benefits, no_depth_gain) == UNRESOLVED
    # Every combination tested: the evidence counts no untested one.
    assert "untested" not in claims.every_task_benefits(_study(no_depth_gain))[1]
    depth_hurt = no_depth_gain | {s: {t: _seeds(0.6 if t == "depth" else 0.5)
                                      for t in s.split("+")}
                                  for s in values | unhelpful if "depth" in s and "+" in s}
    assert _verdict(claims.every_task_benefits, depth_hurt) == DISAGREES
    del no_depth_gain["depth+segm"]
    no_depth_gain["pose2d+depth"] = {"pose2d": [0.5], "depth": [0.45]}  # one seed
    verdict, evidence = claims.every_task_benefits(_study(no_depth_gain))
    assert verdict == UNRESOLVED
    assert ("depth: no combination detectably better (largest: pose3d+depth, 0 [-0.023, "
            "+0.023], p (Holm) 1); 2 of 7 combinations untested (pose2d+depth: one seed, "
            "depth+segm: no depth+segm run)") in evidence
    # A reason shared by the untested combinations is given once, after their names; by all
    # of them, alone.
    one_seed = no_depth_gain | {"depth+segm": {"depth": [0.45], "segm": [0.5]}}
    assert ("2 of 7 combinations untested (pose2d+depth, depth+segm: one seed)"
            in claims.every_task_benefits(_study(one_seed))[1])
    del no_depth_gain["depth"]
    verdict, evidence = claims.every_task_benefits(_study(no_depth_gain))
    assert ("depth: no combination detectably better; 7 of 7 combinations untested (no "
            "isolated depth run)") in evidence


def _items_study(task: str, top_item: str, seeds: int = 3, spread: float = 1.0,
                 others: dict[str, list[float]] | None = None) -> dict:
    """`task` isolated at 0.7 + (0, 0.01, -0.01) at every joint over the three seeds, and
    pose2d+segm (pose2d+pose3d for pose3d) at 0.75 + the same offsets, `top_item` at
    0.9 + twice them; pose3d's MJD is 100 * (1 - that) mm, lower better, so every change
    and p-value is pose2d's with the interval times 100 (30 mm, 25 mm, top 10 mm). `others`:
    more multi-task subsets, {subset: each seed's value at every joint}."""
    def run(value: float, items: dict | None = None) -> dict:
        if task == "pose2d":
            return {task: _summary(task, value, items)}
        return {task: _summary(task, 100 * (1 - value),
                               {k: 100 * (1 - v) for k, v in (items or {}).items()})}

    offsets = [spread * d for d in SPREAD[:seeds]]
    multi = "pose2d+segm" if task == "pose2d" else "pose2d+pose3d"
    results = {task: [run(0.7 + d) for d in offsets],
               multi: [run(0.75 + d, {top_item: 0.9 + 2 * d}) for d in offsets]}
    results |= {s: [run(v) for v in values] for s, values in (others or {}).items()}
    return report.compare(results)


@pytest.mark.parametrize("task, multi, interval", [
    ("pose2d", "pose2d+segm", "+0.2 [+0.16, +0.24]"),
    ("pose3d", "pose2d+pose3d", "+20 [+16, +24]")])  # lower is better: MJD 10 mm against 30
def test_largest_gain_at_a_wrist_or_ankle(task, multi, interval):
    """The top joint gains 0.2 (20 mm), every other 0.05 (5 mm), in each run beyond the others.
    The conclusion's 31 tests, Holm-adjusted together: the 16 joints' changes and the top's
    lead over each of the 15 others. The top's change: 0.2 with seed sd 0.02 against 0.01,
    t = 0.2 / sqrt((0.02^2 + 0.01^2) / 3) = 15.49 with 50/17 degrees of freedom
    (Welch-Satterthwaite), p = 0.000651, the smallest, times 31: 0.020. A lead: the
    within-run difference 0.15 + (0, 0.01, -0.01) against 0 in every isolated run, t = 0.15
    sqrt(3) / 0.01 = 25.98 with 2 degrees of freedom, p = 1 - t / sqrt(2 + t^2) = 0.00148,
    times at most 30: 0.044, each detectable. The other joints' changes (0.05, p 0.0036)
    come last: 15 * 0.0036 = 0.054, not detectable."""
    rule = claims.largest_gains_at_wrists_and_ankles
    study = _items_study(task, "l_ankle")
    t = study[task]["per_item_tests"]["l_ankle"]
    assert t["p"] == pytest.approx(0.000651, abs=1e-6)
    # the per-joint table's test is signed as the metric reads: + = better for MJD too
    assert (t["change"], t["verdict"]) == (pytest.approx(float(interval.split()[0])),
                                           claims.BETTER)
    verdict, evidence = rule(study)
    assert verdict == AGREES
    assert evidence == (f"{task}: {multi} improves l_ankle most ({interval}, p (Holm) 0.02), "
                        f"detectably ahead of every other [Holm over this conclusion's 31 "
                        f"tests]")
    assert rule(_items_study(task, "head_top"))[0] == DISAGREES
    verdict, evidence = rule(_items_study(task, "l_ankle", seeds=1))
    assert verdict == UNRESOLVED
    gain = interval.split()[0]
    assert evidence == f"{task}: {multi}'s largest gain (l_ankle: {gain}) is untested: one seed"
    # every seed alike on both sides: no spread to test the gains against
    verdict, evidence = rule(_items_study(task, "l_ankle", spread=0.0))
    assert verdict == UNRESOLVED
    values = "0.9 vs 0.7" if task == "pose2d" else "10 vs 30"  # pose3d: 100 * (1 - pose2d's)
    assert evidence == (f"{task}: {multi}'s largest gain (l_ankle: {gain}) is untested: no "
                        f"spread over the seeds to test against ({values} in every run)")


def test_the_per_item_tests_count_every_multi_task_subset_the_best_was_picked_from():
    """The best multi-task subset is picked by its mean on the same runs whose items it
    tests: with a second multi-task subset (pose2d+pose3d at 0.74 in every seed and joint)
    the per-item table's family is both subsets' 16 joints, 32 tests, so the top joint's p
    (0.000651, `test_largest_gain_at_a_wrist_or_ankle`) is multiplied by 32, not by the
    table's 16: 0.0208. pose2d+pose3d's joints: 0.04 against 0.7 + (0, 0.01, -0.01), one side
    constant: t = 0.04 sqrt(3) / 0.01 = 6.93, p = 1 - t / sqrt(2 + t^2) = 0.0204 each. The
    conclusion adds the top's 15 leads (p 0.00148; pose2d+pose3d's joints all gain alike and
    vary alike, so its leads have no spread: untested): 47 tests, in which a lead is
    0.00148 * 46 = 0.068, not detectable, so every joint ties with the ankle: unresolved."""
    study = _items_study("pose2d", "l_ankle", others={"pose2d+pose3d": [0.74] * 3})
    e = study["pose2d"]
    assert e["best_multi_task"] == "pose2d+segm"
    assert e["per_item_family"] == {"subsets": 2, "tests": 32}
    assert e["per_item_tests"]["l_ankle"]["p_holm"] == pytest.approx(
        32 * e["per_item_tests"]["l_ankle"]["p"])
    assert e["per_item_tests"]["l_ankle"]["p_holm"] == pytest.approx(0.0208, abs=1e-4)
    assert set(e["per_item_tests"]) == set(body.JOINT_NAMES)  # the best's joints only
    assert e["per_item_gains"]["pose2d+pose3d"]["l_wrist"] == pytest.approx(0.04)
    verdict, evidence = claims.largest_gains_at_wrists_and_ankles(study)
    assert verdict == UNRESOLVED
    assert evidence.startswith("pose2d: pose2d+segm improves l_ankle most (+0.2 [+0.16, "
                               "+0.24], p (Holm) 0.031), not detectably ahead of "), evidence
    assert evidence.endswith("[Holm over this conclusion's 47 tests]"), evidence


def test_the_per_item_evidence_names_the_runner_up_of_the_best_mean():
    """pose2d+segm (PCKh 0.75 + the seed offsets, l_ankle 0.9 + twice them) has the best
    mean, so the per-joint changes are its; pose2d+pose3d (0.74 in every seed) is the
    runner-up. Welch with one side constant has the other's n - 1 = 2 degrees of freedom:
    t = 0.01 / (0.01 / sqrt(3)) = sqrt(3), p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(3/5) = 0.23.
    The claim's evidence and the per-joint section say so, the section that the pick was
    made on these runs and what its p-values are adjusted over; a runner-up of one seed is
    named as untested."""
    iso = [{"pose2d": _summary("pose2d", 0.7 + d)} for d in SPREAD]
    multi = [{"pose2d": _summary("pose2d", 0.75 + d, {"l_ankle": 0.9 + 2 * d})} for d in SPREAD]
    close = [{"pose2d": _summary("pose2d", 0.74)} for _ in SPREAD]
    study = report.compare({"pose2d": iso, "pose2d+segm": multi, "pose2d+pose3d": close})
    assert study["pose2d"]["best_multi_task"] == "pose2d+segm"
    assert study["pose2d"]["runner_up_multi_task"]["test"]["p"] == pytest.approx(
        1 - (3 / 5) ** 0.5)
    evidence = claims.largest_gains_at_wrists_and_ankles(study)[1]
    assert evidence.endswith("(best mean; runner-up pose2d+pose3d at p 0.23) [Holm over this "
                             "conclusion's 47 tests]"), evidence
    assert ("Per joint: pose2d+segm over isolated pose2d (+ = better). pose2d+segm is the "
            "multi-task subset of best mean, picked on these same runs (runner-up "
            "pose2d+pose3d at p 0.23, Welch over seeds, unadjusted): with another pick a "
            "joint's change and verdict can differ. So that the pick does not inflate the "
            "verdicts, p (Holm) is adjusted over the joints of all 2 multi-task subsets "
            "containing pose2d (32 tests), not over this table's alone.\n"
            ) in report.to_markdown(study, "note")
    study = report.compare({"pose2d": iso, "pose2d+segm": multi, "pose2d+pose3d": close[:1]})
    assert claims.largest_gains_at_wrists_and_ankles(study)[1].endswith(
        "(best mean; runner-up pose2d+pose3d, untested: one seed) [Holm over this "
        "conclusion's 31 tests]")  # one seed of pose2d+pose3d: its joints untested


def test_largest_gain_ties_when_its_lead_is_not_detectable():
    """The knee's lead over the ankle is tested within each run (knee minus ankle): the two
    move apart by 0.002 from seed to seed (standard deviation of the difference 0.002, 0 in
    the isolated runs, so Welch's test has 2 degrees of freedom): a lead of 0.003 gives
    t = 0.003 / (0.002 / sqrt(3)) = 2.6 and p = 1 - t / sqrt(2 + t^2) = 0.12, not detectable
    even last in Holm's order; one of 0.05 is detectable."""
    def study(knee: float, ankle: float, other: float = 0.85) -> dict:
        iso = [{"pose2d": _summary("pose2d", 0.8)} for _ in SPREAD]
        multi = [{"pose2d": _summary("pose2d", 0.85, {"l_knee": knee + d / 10,
                                                       "r_ankle": ankle - d / 10})}
                 for d in SPREAD]
        for run in multi:
            run["pose2d"]["pckh@0.5_per_joint"] |= {
                j: other for j in body.JOINT_NAMES if j not in ("l_knee", "r_ankle")}
        return report.compare({"pose2d": iso, "pose2d+segm": multi})

    rule = claims.largest_gains_at_wrists_and_ankles
    verdict, evidence = rule(study(knee=0.953, ankle=0.95))
    assert verdict == UNRESOLVED
    assert evidence == ("pose2d: pose2d+segm improves l_knee most (+0.153 [+0.15, +0.16], "
                        "p (Holm) 0.00024), not detectably ahead of r_ankle (+0.15) [Holm over "
                        "this conclusion's 17 tests]")
    assert rule(study(knee=0.95, ankle=0.953))[0] == UNRESOLVED  # the ankle's lead alike
    assert rule(study(knee=0.95, ankle=1.0))[0] == AGREES
    assert rule(study(knee=1.0, ankle=0.95))[0] == DISAGREES
    # a gain of 0.002 with seed sd 0.001 against a constant side: t = 3.46 with 2 degrees of
    # freedom, p = 1 - t / sqrt(2 + t^2) = 0.075 before Holm
    verdict, evidence = rule(study(knee=0.802, ankle=0.8, other=0.8))
    assert verdict == UNRESOLVED
    assert "pose2d+segm's largest gain is not detectable (l_knee: +0.002 [" in evidence
    s = study(knee=0.95, ankle=1.0)["pose2d"]
    assert "head_top" not in s["per_item_tests"]  # 0.85 in every seed against 0.8: untested
    assert set(s["per_item_tests"]) == {"l_knee", "r_ankle"}  # Holm over these two alone
    assert s["per_item_family"] == {"subsets": 1, "tests": 2}
    assert s["per_item_tests"]["l_knee"]["n"] == [3, 3]


def test_distal_items_are_names_the_tasks_report():
    names = set(body.JOINT_NAMES) | set(body.PART_NAMES)
    assert claims.DISTAL_ITEMS <= names
    assert set(claims.PAPER_TASKS) <= set(TASKS)


def test_report_lists_the_claims(tmp_path):
    import json

    sweep_dir = tmp_path / "sweep"
    for subset, values in {"segm": [0.50, 0.51, 0.49],
                           "pose2d+segm": [0.60, 0.61, 0.59]}.items():
        for k, v in enumerate(values):
            run = sweep_dir / workdirs.run_name(subset, k)
            run.mkdir(parents=True)
            (run / "eval_test.json").write_text(json.dumps({"segm": _summary("segm", v)}))
    note = tmp_path / "note.md"
    note.write_text("Crafted runs.\n\nSecond paragraph.\n")
    out = tmp_path / "report"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}",
                             f"--note_file={note}"]) == 0
    text = (out / "README.md").read_text()
    assert text.startswith("# Task-combination study\n\nCrafted runs.\n\nSecond paragraph."
                           "\n\nMetric protocol: `hgmt`")
    assert ("| Body-part segmentation benefits from 2D pose but not from 3D pose | "
            "**unresolved** | segm in pose2d+segm: +0.1 [+0.077, +0.12], p (Holm) 0.00026, "
            "better; no pose3d+segm run [Holm over this conclusion's 1 test] |") in text
    assert ("one that a task does not help is *unresolved* unless the change is detectably "
            "worse (*agrees*) or better (*disagrees*): a test over a few seeds that detects no "
            "change does not show the absence of a gain.") in text
    assert "*agrees* unless the change is better" not in text
    checked = json.loads((out / "claims.json").read_text())
    assert [c["claim"] for c in checked] == [text for text, _ in claims.CLAIMS]
    with pytest.raises(SystemExit, match="--note_file=.*missing.md: not found; give"):
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}",
                          f"--note_file={tmp_path / 'missing.md'}"])


def test_every_task_benefits_is_unresolved_when_a_task_is_worse_in_only_some_combinations():
    """depth (RMSE, lower is better) 0.1 worse in pose2d+depth (0.6 against 0.5, seed sd 0.01
    on both sides: t = 0.1 / (0.01 sqrt(2/3)) = 12.25 with 4 degrees of freedom, p = 0.000255,
    times at most 28 in Holm's order: 0.0071, worse) and no different in its 6 other
    combinations (p 1): not better anywhere, but not worse in every combination either, so
    unresolved, not a disagreement; the other three tasks are each better in one
    combination (`test_every_task_benefits_from_some_combination`: worse in all 7, depth
    disagrees)."""
    values = {t: {t: _seeds(0.5)} for t in claims.PAPER_TASKS}
    combos = [s for s in ("+".join(c) for c in claims.all_subsets())
              if "+" in s and set(s.split("+")) <= set(claims.PAPER_TASKS)]
    values |= {s: {t: _seeds(0.5) for t in s.split("+")} for s in combos}
    values["pose2d+segm"] = {"pose2d": _seeds(0.6), "segm": _seeds(0.6)}
    values["pose3d+depth"] = {"pose3d": _seeds(0.4), "depth": _seeds(0.5)}  # MJD: lower
    values["pose2d+depth"] = {"pose2d": _seeds(0.5), "depth": _seeds(0.6)}
    verdict, evidence = claims.every_task_benefits(_study(values))
    assert verdict == UNRESOLVED
    assert "depth: no combination detectably better (largest: " in evidence, evidence
    assert "worse in every combination" not in evidence
    assert evidence.endswith("[Holm over this conclusion's 28 tests]")


def test_all_four_beating_every_rival_is_not_enough_against_the_isolated_pose2d():
    """The four-task model 0.1 below the isolated pose2d (0.80 against 0.90) and 0.1 above
    each of the 6 rivals (0.70), seed sd 0.01 everywhere: each of the 7 tests has
    t = 0.1 / (0.01 sqrt(2/3)) = 12.25 with 4 degrees of freedom, p = 0.000255, Holm over 7:
    0.0018. Beating every rival does not make it the best when the isolated model is
    detectably better: the conclusion disagrees, on the worse change; its interval is
    -0.1 +- 2.776 * 0.008165 = [-0.123, -0.077]. With the isolated model at 0.80 and the
    four-task one at 0.805 (t = 0.005 / 0.008165 = 0.61, p = 0.57, last in Holm's order) the
    gain over the isolated model is not detectable: unresolved, rivals beaten or not."""
    rule = claims.all_four_best_for_pose2d
    rivals = {s: 0.70 for s in claims._subsets_with("pose2d")
              if s not in ("pose2d", claims.ALL_FOUR)}
    values = _pose2d_subsets({"pose2d": 0.90, claims.ALL_FOUR: 0.80} | rivals)
    assert rule(_study(values)) == (
        DISAGREES, f"pose2d in {claims.ALL_FOUR}: -0.1 [-0.12, -0.077], p (Holm) 0.0018, worse "
                   f"[Holm over this conclusion's 7 tests]")
    values = _pose2d_subsets({"pose2d": 0.80, claims.ALL_FOUR: 0.805} | rivals)
    assert rule(_study(values)) == (
        UNRESOLVED, f"pose2d in {claims.ALL_FOUR}: +0.005 [-0.018, +0.028], p (Holm) 0.57, no "
                    f"detectable change [Holm over this conclusion's 7 tests]")


def test_all_four_best_for_pose2d_reads_the_metrics_direction():
    """The same study with every PCKh negated and lower called better (as a pose2d error
    metric would be) is the same study: the four-task model is still 0.1 better than the
    isolated model and than each rival (`test_all_four_tasks_best_for_pose2d`), so the
    verdict and evidence are the same. The rivals' tests read the direction as the isolated
    model's does."""
    study = _study(_pose2d_subsets({claims.ALL_FOUR: 0.90}))
    e = study["pose2d"]
    flipped = {"pose2d": e | {"higher_is_better": False,
                              "values": {s: [-v for v in vs] for s, vs in e["values"].items()},
                              "subsets": {s: -v for s, v in e["subsets"].items()}}}
    expected = (AGREES, f"pose2d in {claims.ALL_FOUR}: +0.1 [+0.077, +0.12], p (Holm) 0.0018, "
                        f"better; better than each other combination [Holm over this "
                        f"conclusion's 7 tests]")
    assert claims.all_four_best_for_pose2d(study) == expected
    assert claims.all_four_best_for_pose2d(flipped) == expected
