"""The seed paper's conclusions (Sánchez et al., FG 2019, abstract) checked against a study.

Each conclusion gets a verdict from its own tests (hgmt/study/stats.py: Welch's t-test over
seeds of the changes it speaks of), Holm-adjusted together, one family per conclusion, so
that the chance of any false *better* or *worse* among the tests a verdict rests on is at
most stats.ALPHA (the report's tables adjust over each table instead, so a change's p there
can differ): `agrees`, `disagrees` or `unresolved`. A change is *better* or *worse* only
when its Holm-adjusted p-value is below stats.ALPHA. A
conclusion that a task helps agrees when the change is better, disagrees when it is worse,
and is unresolved when the test detects no change (it cannot tell a small gain from none).
A conclusion that a task does *not* help agrees when the change is worse (it did not help),
disagrees when it is better, and is unresolved when the test detects no change: a test
over a few seeds that detects no change does not show that there is no gain. A change
without a test (a run missing, a value that is not finite, one seed, or neither side
varying over its seeds: stats.untested_because) leaves its part unresolved, and its evidence
says which.
"""

from __future__ import annotations

from collections.abc import Callable

from hgmt.study import stats
from hgmt.tasks import all_subsets

PAPER_TASKS = ("pose2d", "pose3d", "depth", "segm")
ALL_FOUR = "+".join(PAPER_TASKS)
# The per-item names the paper's "parts with more variability, e.g. wrists and ankles" covers:
# the wrist and ankle joints, and the body parts at and next to them.
DISTAL_ITEMS = frozenset({
    "r_wrist", "l_wrist", "r_ankle", "l_ankle",
    "r_hand", "l_hand", "r_foot", "l_foot", "r_forearm", "l_forearm",
    "r_lower_leg", "l_lower_leg",
})

AGREES, DISAGREES, UNRESOLVED = "agrees", "disagrees", "unresolved"
BETTER, WORSE, UNDETECTED, UNKNOWN = stats.BETTER, stats.WORSE, stats.UNDETECTED, "unknown"


def _said(t: dict) -> str:
    """'+0.012 [+0.0003, +0.023], p (Holm) 0.33': a tested change, its interval per comparison
    (unadjusted), its p Holm-adjusted over its conclusion's tests."""
    return f"{stats.interval(t)}, p (Holm) {t['p_holm']:.2g}"


def _over(judged: dict) -> str:
    """The evidence's last words: how many tests its p-values are Holm-adjusted over."""
    n = len(judged)
    return f" [Holm over this conclusion's {n} test{'s' if n != 1 else ''}]" if n else ""


def untested(e: dict | None, task: str, subset: str) -> str | None:
    """Why `task`'s change in `subset` has no test, from `report.compare`'s entry `e` of
    `task`: its metric undefined under the protocol in the isolated or the `subset` runs
    (`e['undefined']`: runs there, no value to compare), no isolated run, no `subset` run,
    a value that is not finite, one seed, or no spread over the seeds
    (stats.untested_because); None when it has one."""
    undefined = [s for s in (task, subset) if s in (e or {}).get("undefined", ())]
    if undefined:
        return f"{e['metric']} undefined under this protocol in {' and '.join(undefined)}"
    if e is None or e.get("isolated") is None:
        return f"no isolated {task} run"
    if subset not in e["subsets"]:
        return f"no {subset} run"
    return stats.untested_because(e["values"][subset], e["values"][task])


def _change(study: dict, task: str, subset: str) -> dict | None:
    """stats.welch of `task` trained within `subset` against the isolated `task`, from
    `report.compare`'s entry of `task` (+ = better); None when untested (`untested` says
    why)."""
    e = study.get(task) or {}
    values = e.get("values", {})
    if task not in values or subset not in values:
        return None
    return stats.welch(values[subset], values[task], 1.0 if e["higher_is_better"] else -1.0)


def effect(study: dict, judged: dict, task: str, subset: str) -> tuple[str, str]:
    """(BETTER | WORSE | UNDETECTED | UNKNOWN, evidence) of training `task` within `subset`
    instead of alone: its test in `judged` (stats.judge of the conclusion's tests, keyed
    (task, subset)); UNKNOWN's evidence says why it is untested."""
    t = judged.get((task, subset))
    if t is not None:
        return t["verdict"], f"{task} in {subset}: {_said(t)}, {t['verdict']}"
    e = study.get(task) or {}
    why = untested(study.get(task), task, subset)
    if subset not in e.get("gain", {}):  # a run missing: nothing to show
        return UNKNOWN, why
    return UNKNOWN, (f"{task} in {subset}: {e['gain'][subset]:+.3g} "
                     f"(n={e['seeds'][subset]} vs {e['seeds'][task]}), untested: {why}")


def _judged(study: dict, pairs: list[tuple[str, str]]) -> dict:
    """The conclusion's tests of the changes `pairs` ((task, subset) each, against the
    isolated task), Holm-adjusted together (stats.judge); untested pairs left out."""
    return stats.judge({(task, subset): _change(study, task, subset) for task, subset in pairs})


def runner_up(e: dict) -> str | None:
    """'runner-up pose2d+segm at p 0.73': the multi-task subset of second-best mean in `e`
    (`report.compare`'s entry of a task, whose per-item changes are those of the best) and
    the two-sided p of its difference from the best (Welch over seeds, unadjusted), or why
    that is untested; None when there is no other multi-task subset."""
    other = e.get("runner_up_multi_task")
    if other is None:
        return None
    t = other["test"]
    return (f"runner-up {other['subset']} at p {t['p']:.2g}" if t is not None
            else f"runner-up {other['subset']}, untested: {other['untested']}")


def _helps(kind: str) -> str:
    """The verdict of 'it helps' on an effect."""
    return AGREES if kind == BETTER else DISAGREES if kind == WORSE else UNRESOLVED


def _does_not_help(kind: str) -> str:
    """The verdict of 'it does not help' on an effect: agrees only when the change is
    detectably worse, since a test that detects no change cannot show that there is no gain."""
    return AGREES if kind == WORSE else DISAGREES if kind == BETTER else UNRESOLVED


def _combine(verdicts: list[str]) -> str:
    """One verdict of several parts: DISAGREES if a part does, else UNRESOLVED if a part is,
    else AGREES."""
    return (DISAGREES if DISAGREES in verdicts else
            UNRESOLVED if UNRESOLVED in verdicts else AGREES)


def every_task_benefits(study: dict) -> tuple[str, str]:
    """Each of the four tasks is better in some combination; a task that is worse in every
    combination disagrees. Its tests: each task's change in each of its 7 combinations, 28 in
    all; a task's evidence is its better combination of the lowest adjusted p."""
    combinations = {task: [s for s in _subsets_with(task) if s != task] for task in PAPER_TASKS}
    judged = _judged(study, [(t, s) for t, found in combinations.items() for s in found])
    notes, verdicts = [], []
    for task in PAPER_TASKS:
        found = {s: effect(study, judged, task, s) for s in combinations[task]}
        helped = [s for s, (kind, _) in found.items() if kind == BETTER]
        if helped:  # the strongest evidence: the lowest adjusted p, then the largest change
            verdicts.append(AGREES)
            s = min(helped, key=lambda s: (judged[(task, s)]["p_holm"],
                                           -judged[(task, s)]["change"]))
            notes.append(found[s][1] + (f" (the strongest of {len(helped)} better)"
                                        if len(helped) > 1 else ""))
        elif found and all(kind == WORSE for kind, _ in found.values()):
            verdicts.append(DISAGREES)
            notes.append(f"{task}: worse in every combination")
        else:
            verdicts.append(UNRESOLVED)
            tests = {s: judged[(task, s)] for s in found if (task, s) in judged}
            unknown = {s: untested(study.get(task), task, s) for s, (kind, _) in found.items()
                       if kind == UNKNOWN}
            best = max(tests, key=lambda s: tests[s]["change"]) if tests else None
            so_far = f" (largest: {best}, {_said(tests[best])})" if best else ""
            shared = next(iter(unknown.values()), None)
            if len(set(unknown.values())) > 1:
                whys = ", ".join(f"{s}: {why}" for s, why in unknown.items())
            elif len(unknown) == len(found):  # all of them, for one reason
                whys = shared
            else:
                whys = f"{', '.join(unknown)}: {shared}"
            notes.append(f"{task}: no combination detectably better{so_far}"
                         + (f"; {len(unknown)} of {len(found)} combinations untested ({whys})"
                            if unknown else ""))
    return _combine(verdicts), "; ".join(notes) + _over(judged)


def all_four_best_for_pose2d(study: dict) -> tuple[str, str]:
    """The four-task model is better than the isolated pose2d and than every other
    combination; a rival better than it, or a four-task model worse than the isolated one,
    disagrees. Its tests: the four-task model against the isolated pose2d and against each
    of the 6 rivals (Welch over seeds), 7 in all."""
    e = study.get("pose2d")
    if e is None or ALL_FOUR not in e["subsets"]:
        return UNRESOLVED, f"no {ALL_FOUR} run"
    sign = 1.0 if e["higher_is_better"] else -1.0
    rivals = [s for s in _subsets_with("pose2d") if s not in ("pose2d", ALL_FOUR)]
    judged = stats.judge({("pose2d", ALL_FOUR): _change(study, "pose2d", ALL_FOUR)} | {
        s: stats.welch(e["values"][ALL_FOUR], e["values"][s], sign)
        for s in rivals if s in e["values"]})
    kind, why = effect(study, judged, "pose2d", ALL_FOUR)
    if kind == WORSE:
        return DISAGREES, why + _over(judged)
    leads = {s: judged[s] for s in rivals if s in judged}
    beaten = [s for s, t in leads.items() if t["verdict"] == WORSE]
    if beaten:
        return DISAGREES, "; ".join(f"{ALL_FOUR} against {s}: {_said(leads[s])}, worse"
                                    for s in beaten) + _over(judged)
    led = [s for s, t in leads.items() if t["verdict"] == BETTER]
    if kind == BETTER and len(led) == len(rivals):
        return AGREES, f"{why}; better than each other combination{_over(judged)}"
    untested_rivals = [s for s in rivals if s not in leads]
    close = [f"{s} ({_said(leads[s])})" for s in leads if s not in led]
    return UNRESOLVED, "; ".join(
        [why] + ([f"{ALL_FOUR} not detectably better than {', '.join(close)}"]
                 if close else []) + ([f"untested against {', '.join(untested_rivals)}"]
                                      if untested_rivals else [])) + _over(judged)


def pose2d_helps_neither_pose3d_nor_depth(study: dict) -> tuple[str, str]:
    """Neither pose3d in pose2d+pose3d nor depth in pose2d+depth is better: agrees when both
    are worse, disagrees when either is better, else unresolved (`_does_not_help`). Its
    tests: those two changes."""
    pairs = [(t, f"pose2d+{t}") for t in ("pose3d", "depth")]
    judged = _judged(study, pairs)
    found = [effect(study, judged, *pair) for pair in pairs]
    return (_combine([_does_not_help(kind) for kind, _ in found]),
            "; ".join(w for _, w in found) + _over(judged))


def segm_helped_by_pose2d_not_pose3d(study: dict) -> tuple[str, str]:
    """segm is better in pose2d+segm, and not better in pose3d+segm: agrees when the first is
    better and the second worse, disagrees when the first is worse or the second better, else
    unresolved (`_helps`, `_does_not_help`). Its tests: those two changes."""
    pairs = [("segm", "pose2d+segm"), ("segm", "pose3d+segm")]
    judged = _judged(study, pairs)
    by_pose2d, by_pose3d = (effect(study, judged, *pair) for pair in pairs)
    verdict = _combine([_helps(by_pose2d[0]), _does_not_help(by_pose3d[0])])
    said = dict.fromkeys((by_pose2d[1], by_pose3d[1]))  # 'no isolated segm run' said once
    return verdict, "; ".join(said) + _over(judged)


def _item(runs: list[dict], item: str) -> list[float]:
    """`item`'s values over the runs (per-item breakdowns) that define it."""
    return [r[item] for r in runs if r.get(item) is not None]


def _lead(runs: dict[str, list[dict]], multi: str, isolated: str, top: str, other: str,
          sign: float) -> dict | None:
    """Welch's test of how much more item `top` gains than item `other`: the change of
    (top - other) within each run, between the multi-task and the isolated runs."""
    def differences(name: str) -> list[float]:
        return [r[top] - r[other] for r in runs[name]
                if r.get(top) is not None and r.get(other) is not None]

    return stats.welch(differences(multi), differences(isolated), sign)


def largest_gains_at_wrists_and_ankles(study: dict) -> tuple[str, str]:
    """In each task with a per-joint or per-part breakdown, the item the best multi-task
    model (best by its mean; each note names the runner-up, `runner_up`) improves most is a
    wrist, an ankle or a part next to one (DISTAL_ITEMS). The largest gain must be better;
    an item it does not lead detectably (Welch over seeds of the within-run difference of
    the two items) ties with it. A task agrees when every tied item is distal, disagrees when
    none is, and is unresolved when they are mixed or the largest gain is not detectable.

    Its tests, Holm-adjusted together: in every task with a breakdown, for every multi-task
    subset containing it, each item's change and the lead of that subset's largest gain over
    each other item. The best model is picked by its mean on the same runs; with every
    subset's tests in the family the pick does not inflate the verdicts (Holm bounds the
    chance of any false verdict in the whole family, whichever of its tests are read). The
    item of largest gain is picked on those runs too, and its leads are tested as if it had
    been named beforehand."""
    tasks = [t for t in PAPER_TASKS if (study.get(t) or {}).get("per_item_gain")]
    if not tasks:
        return UNRESOLVED, "no per-item breakdown to compare"
    family = {}
    for task in tasks:
        e = study[task]
        sign, runs = (1.0 if e["higher_is_better"] else -1.0), e["per_item_runs"]
        for subset, gain in e["per_item_gains"].items():
            top = max(gain, key=gain.get, default=None)
            for k in gain:
                family[("change", task, subset, k)] = stats.welch(
                    _item(runs[subset], k), _item(runs[task], k), sign)
                if k != top:
                    family[("lead", task, subset, k)] = _lead(runs, subset, task, top, k, sign)
    judged = stats.judge(family)
    notes, verdicts = [], []
    for task in tasks:
        e = study[task]
        best = e["best_multi_task"]
        second = runner_up(e)
        picked = "" if second is None else f" (best mean; {second})"
        gain = e["per_item_gain"]
        top = max(gain, key=gain.get)
        t = judged.get(("change", task, best, top))
        if t is None:
            verdicts.append(UNRESOLVED)
            runs = e["per_item_runs"]
            why = stats.untested_because(*(_item(runs[s], top) for s in (best, task)))
            notes.append(f"{task}: {best}'s largest gain ({top}: {gain[top]:+.3g}) is "
                         f"untested: {why}{picked}")
            continue
        if t["verdict"] != BETTER:
            verdicts.append(UNRESOLVED)
            notes.append(f"{task}: {best}'s largest gain is not detectable ({top}: "
                         f"{_said(t)}){picked}")
            continue
        tied = [top] + [k for k in sorted(gain, key=gain.get, reverse=True) if k != top and
                        judged.get(("lead", task, best, k), {}).get("verdict") != BETTER]
        distal = [k for k in tied if k in DISTAL_ITEMS]
        verdicts.append(AGREES if len(distal) == len(tied) else
                        DISAGREES if not distal else UNRESOLVED)
        ties = (f", not detectably ahead of "
                f"{', '.join(f'{k} ({gain[k]:+.3g})' for k in tied[1:])}" if len(tied) > 1
                else ", detectably ahead of every other")
        notes.append(f"{task}: {best} improves {top} most ({_said(t)}){ties}{picked}")
    return _combine(verdicts), "; ".join(notes) + _over(judged)


def _subsets_with(task: str) -> list[str]:
    """The paper's subsets containing `task`, isolated included."""
    return ["+".join(s) for s in all_subsets() if task in s and set(s) <= set(PAPER_TASKS)]


# (the paper's words, its check), in the abstract's order.
CLAIMS: tuple[tuple[str, Callable[[dict], tuple[str, str]]], ...] = (
    ("All four tasks benefit from the multi-task approach, with different combinations",
     every_task_benefits),
    ("Combining all four tasks improves 2D pose estimation the most", all_four_best_for_pose2d),
    ("2D pose improves neither 3D pose nor full-body depth estimation",
     pose2d_helps_neither_pose3d_nor_depth),
    ("Body-part segmentation benefits from 2D pose but not from 3D pose",
     segm_helped_by_pose2d_not_pose3d),
    ("The largest improvements are at the most variable parts, e.g. wrists and ankles",
     largest_gains_at_wrists_and_ankles),
)


def check(study: dict) -> list[dict]:
    """[{'claim', 'verdict', 'evidence'}] for each of the paper's conclusions."""
    out = []
    for text, rule in CLAIMS:
        verdict, evidence = rule(study)
        out.append({"claim": text, "verdict": verdict, "evidence": evidence})
    return out


def to_markdown(checked: list[dict], tested: str) -> list[str]:
    """The report's section on the paper's conclusions; `tested`: the link to the report's
    account of its tests."""
    return [
        "## The seed paper's conclusions on these runs", "",
        f"Each conclusion of the paper's abstract, checked on this study's tests ([how changes "
        f"are tested]({tested}); hgmt/study/claims.py). A conclusion's tests are Holm-adjusted "
        f"together, so a change's p (Holm) here can differ from its table's; each piece of "
        f"evidence ends with how many tests. A conclusion that a task helps is *unresolved* "
        f"when the test detects no change; one that a task does not help is *unresolved* "
        f"unless the change is detectably worse (*agrees*) or better (*disagrees*): a test "
        f"over a few seeds that detects no change does not show the absence of a gain. A "
        f"change without a test (a run missing, one seed, or neither side varying over its "
        f"seeds) leaves its part unresolved.", "",
        "| the paper concludes | here | evidence |", "|---|---|---|",
        *[f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in checked], ""]
