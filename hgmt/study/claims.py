"""The seed paper's conclusions (Sánchez et al., FG 2019, abstract) checked against a study.

Each conclusion gets a verdict from `report.compare`'s numbers: `agrees`, `disagrees` or
`unresolved` (a run it needs is missing, has one seed, or the change is within the seed
spread where the claim needs one). A change counts only when it is beyond the seed spread as
`stats.beyond_spread` defines it (both subsets over at least 2 seeds), so a claim that a task does
*not* help is met by a change within the spread: the study cannot tell it from no change.
"""

from __future__ import annotations

from collections.abc import Callable

from hgmt.study.stats import beyond_spread
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
BETTER, WORSE, SAME, UNKNOWN = "better", "worse", "within spread", "unknown"


def effect(study: dict, task: str, subset: str) -> tuple[str, str]:
    """(BETTER | WORSE | SAME | UNKNOWN, evidence) of training `task` within `subset` instead of
    alone, from `report.compare`'s entry of `task`."""
    e = study.get(task)
    if e is None or e.get("isolated") is None:
        return UNKNOWN, f"no isolated {task} run"
    if subset not in e["subsets"]:
        return UNKNOWN, f"no {subset} run"
    gain = e["gain"][subset]
    said = f"{task} in {subset}: {gain:+.3g} (n={e['seeds'][subset]} vs {e['seeds'][task]})"
    beyond = e["beyond_spread"].get(subset)
    if beyond is None:
        return UNKNOWN, f"{said}, one seed"
    if not beyond:
        return SAME, f"{said}, within the seed spread"
    return (BETTER if gain > 0 else WORSE), f"{said}, beyond the seed spread"


def _combine(verdicts: list[str]) -> str:
    """One verdict of several parts: DISAGREES if a part does, else UNRESOLVED if a part is,
    else AGREES."""
    return (DISAGREES if DISAGREES in verdicts else
            UNRESOLVED if UNRESOLVED in verdicts else AGREES)


def _verdict(found: list[tuple[str, str]], agree_if: Callable[[str], bool]) -> str:
    """AGREES when every effect satisfies `agree_if`, DISAGREES when a known one does not,
    else UNRESOLVED."""
    return _combine([UNRESOLVED if kind == UNKNOWN else AGREES if agree_if(kind) else DISAGREES
                     for kind, _ in found])


def every_task_benefits(study: dict) -> tuple[str, str]:
    """Each of the four tasks is better, beyond the spread, in some combination."""
    notes, verdicts = [], []
    for task in PAPER_TASKS:
        found = [effect(study, task, s) for s in _subsets_with(task) if s != task]
        helped = [why for kind, why in found if kind == BETTER]
        if helped:
            verdicts.append(AGREES)
            notes.append(helped[0])
        elif all(kind != UNKNOWN for kind, _ in found):
            verdicts.append(DISAGREES)
            notes.append(f"{task}: no combination better beyond the spread")
        else:
            verdicts.append(UNRESOLVED)
            missing = sum(kind == UNKNOWN for kind, _ in found)
            gains = {s: g for s, g in study.get(task, {}).get("gain", {}).items() if s != task}
            best = max(gains, key=gains.get) if gains else None
            so_far = f" (best mean so far: {best}, {gains[best]:+.3g})" if best else ""
            notes.append(f"{task}: none better beyond the spread yet{so_far}; {missing} of "
                         f"{len(found)} comparisons without 2 seeds on both sides")
    return _combine(verdicts), "; ".join(notes)


def all_four_best_for_pose2d(study: dict) -> tuple[str, str]:
    """The four-task model has the best pose2d of all combinations, beyond the spread of the
    isolated run; another combination better than it beyond both spreads disagrees."""
    e = study.get("pose2d")
    if e is None or ALL_FOUR not in e["subsets"]:
        return UNRESOLVED, f"no {ALL_FOUR} run"
    sign = 1.0 if e["higher_is_better"] else -1.0
    sd = e["spread"]
    lead = {s: sign * (e["subsets"][s] - e["subsets"][ALL_FOUR]) for s in e["subsets"]
            if s not in ("pose2d", ALL_FOUR)}  # > 0: better than the four-task model
    rivals = [s for s, d in lead.items() if d > 0 and beyond_spread(d, sd[s], sd[ALL_FOUR])]
    if rivals:
        return DISAGREES, f"better than {ALL_FOUR} beyond both spreads: {', '.join(rivals)}"
    kind, why = effect(study, "pose2d", ALL_FOUR)
    subsets = _subsets_with("pose2d")
    done = [s for s in subsets if e["seeds"].get(s, 0) >= 2]
    if kind != BETTER or len(done) < len(subsets):
        return UNRESOLVED, (f"{why}; {len(done)} of {len(subsets)} pose2d subsets have 2 "
                            f"seeds or more")
    if e["best"] != ALL_FOUR:
        return UNRESOLVED, f"{why}; {e['best']} has a better mean, within the seed spread"
    return AGREES, why


def pose2d_helps_neither_pose3d_nor_depth(study: dict) -> tuple[str, str]:
    """Neither pose3d in pose2d+pose3d nor depth in pose2d+depth is better beyond the
    spread."""
    found = [effect(study, t, f"pose2d+{t}") for t in ("pose3d", "depth")]
    return _verdict(found, lambda kind: kind != BETTER), "; ".join(w for _, w in found)


def segm_helped_by_pose2d_not_pose3d(study: dict) -> tuple[str, str]:
    """segm is better beyond the spread in pose2d+segm, and not in pose3d+segm."""
    by_pose2d = effect(study, "segm", "pose2d+segm")
    by_pose3d = effect(study, "segm", "pose3d+segm")
    verdict = _combine([_verdict([by_pose2d], lambda kind: kind == BETTER),
                        _verdict([by_pose3d], lambda kind: kind != BETTER)])
    return verdict, f"{by_pose2d[1]}; {by_pose3d[1]}"


def largest_gains_at_wrists_and_ankles(study: dict) -> tuple[str, str]:
    """In each task with a per-joint or per-part breakdown, the item the best multi-task
    model improves most is a wrist, an ankle or a part next to one (DISTAL_ITEMS). Items are
    judged as subsets are, each against its own seed spread (2 seeds of both runs): the
    largest gain must be beyond its spread, and the items it does not lead beyond both
    spreads tie with it. A task agrees when every tied item is distal, disagrees when none
    is, and is unresolved when they are mixed or no item gains beyond its spread."""
    notes, verdicts = [], []
    for task in PAPER_TASKS:
        e = study.get(task)
        if not e or not e.get("per_item_gain"):
            continue
        best = e["best_multi_task"]
        if min(e["seeds"][task], e["seeds"][best]) < 2:
            verdicts.append(UNRESOLVED)
            notes.append(f"{task}: one seed")
            continue
        gain, sd = e["per_item_gain"], e["per_item_spread"]
        top = max(gain, key=gain.get)
        if not (gain[top] > 0 and e["per_item_beyond_spread"][top]):
            verdicts.append(UNRESOLVED)
            notes.append(f"{task}: {best} improves no item beyond its seed spread "
                         f"(largest: {top}, {gain[top]:+.3g})")
            continue
        tied = [k for k in sorted(gain, key=gain.get, reverse=True)
                if not beyond_spread(gain[top] - gain[k], sd[top], sd[k])]
        distal = [k for k in tied if k in DISTAL_ITEMS]
        verdicts.append(AGREES if len(distal) == len(tied) else
                        DISAGREES if not distal else UNRESOLVED)
        ties = (f", tied within the seed spread with "
                f"{', '.join(f'{k} ({gain[k]:+.3g})' for k in tied[1:])}" if len(tied) > 1
                else "")
        notes.append(f"{task}: {best} improves {top} most ({gain[top]:+.3g}){ties}")
    if not verdicts:
        return UNRESOLVED, "no per-item breakdown to compare"
    return _combine(verdicts), "; ".join(notes)


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


def to_markdown(checked: list[dict]) -> list[str]:
    """The report's section on the paper's conclusions."""
    return [
        "## The seed paper's conclusions on these runs", "",
        "Each conclusion of the paper's abstract, checked on this study's numbers "
        "(hgmt/claims.py): a change counts only beyond the seed spread, so *unresolved* means "
        "a run it needs is missing, has one seed, or its change is within the spread.", "",
        "| the paper concludes | here | evidence |", "|---|---|---|",
        *[f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in checked], ""]
