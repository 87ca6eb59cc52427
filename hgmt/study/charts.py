"""The charts of the task-combination study's report, drawn from `hgmt.study.report.compare`'s
entries: per task, its headline metric in every subset containing it (`subsets_figure`) and
each item's change of the best multi-task subset over the isolated run (`per_item_figure`);
`draw` renders them as PNGs in memory, so that the command writes every file once all are made.
Each chart's caption says what its numbers are of (`caption`: the data, the seeds, the test
frames), so that a chart shown apart from the report still says so.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from hgmt.study import report, stats
from hgmt.tasks import drawing

if TYPE_CHECKING:  # matplotlib is imported when a figure is first drawn
    from matplotlib.figure import Figure

    from hgmt.tasks.spec import Headline


def draw(study: dict[str, dict], data: str) -> dict[str, bytes]:
    """{file name: PNG} of the charts per task (`subsets_figure`, `per_item_figure`), each
    captioned (`caption`, `data` the runs' data: `provenance.data_of`), drawn in memory, so that the
    report writes nothing until every part of it is made."""
    out = {}
    for task, e in study.items():
        for kind, make in (("subsets", subsets_figure), ("per_item", per_item_figure)):
            fig = make(e, task)
            if fig is not None:
                fig.text(0.005, 0.005, caption(e, data), fontsize=7, color="dimgray",
                         ha="left", va="bottom")
                fig.tight_layout(rect=(0, 0.05, 1, 1))  # room for the caption
                png = io.BytesIO()
                fig.savefig(png, format="png", dpi=100)
                out[f"{task}_{kind}.png"] = png.getvalue()
    return out


def caption(e: dict, data: str) -> str:
    """What a task's charts are of, in one line: `data` (the runs' data, `provenance.data_of`), the
    seeds a subset (`e['seeds']`) and the frames every run was evaluated on
    (`e['evaluation']`), e.g. 'demo clips (hgmt.sources.synthetic), not SURREAL; 3 seeds a
    subset; test split, 240 frames (every4)'."""
    counts = sorted(set(e.get("seeds", {}).values()))
    seeds = ("" if not counts else f"; {counts[0]} seed{'s' * (counts[0] != 1)} a subset"
             if len(counts) == 1 else f"; {counts[0]}-{counts[-1]} seeds a subset")
    ev = e.get("evaluation") or {}
    frames = ("" if "split" not in ev else
              f"; {ev['split']} split, {ev['num_examples']} frames ({ev['frames']})"
              + (", flip test" if ev.get("flip") else ""))
    return f"{data}{seeds}{frames}"


def subsets_figure(e: dict, task: str) -> Figure | None:
    """`task`'s headline metric in every subset of its study entry `e` (`report.compare`), a
    dot per subset with the seeds' sd as whiskers, on a y axis spanning the values (changes
    of 0.01 on values near 0.86 show), the isolated value as a dashed line; the title says
    what is drawn. None when no subset has a value; laid out by `draw`, with its caption."""
    if not e["subsets"]:
        return None
    names = sorted(e["subsets"], key=lambda s: (s.count("+"), s))
    values = np.array([e["subsets"][s] for s in names])
    spreads = [e.get("spread", {}).get(s) for s in names]  # None: one seed, nothing to draw
    best = report.best_marked(e)
    fig = drawing.figure(int(100 * max(4.0, 0.6 * len(names) + 2)), 320)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.scatter(x, values, s=36, zorder=3, color=[
        "tab:grey" if s == task else ("tab:green" if s == best else "tab:blue")
        for s in names])
    seeded = [k for k, sd in enumerate(spreads) if sd is not None]
    if seeded:
        ax.errorbar(x[seeded], values[seeded], yerr=[spreads[k] for k in seeded], fmt="none",
                    ecolor="black", elinewidth=1, capsize=3, zorder=2)
    if e["isolated"] is not None:
        ax.axhline(e["isolated"], color="tab:grey", linestyle="--", linewidth=0.8, zorder=1)
    reach = np.array([sd or 0.0 for sd in spreads])
    lo, hi = float((values - reach).min()), float((values + reach).max())
    margin = 0.1 * (hi - lo) if hi > lo else 0.05 * abs(hi) or 1.0
    ax.set_ylim(lo - margin, hi + margin)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xticks(x, [s.replace("+", "\n+") for s in names], fontsize=7)
    ax.set_ylabel(report.headline(e, task).label)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{task}: {_subsets_key(task, best, names, spreads)}", fontsize=9)
    return fig


def _subsets_key(task: str, best: str | None, names: list[str], spreads: list) -> str:
    """The subsets chart's key, of what it draws: which dot is the isolated run and which the
    best (`best`: `report.best_marked`, None when only one subset is drawn), and what the
    whiskers are (a subset of one seed has none)."""
    isolated = (["no isolated run"] if task not in names else
                ["isolated and best mean (grey, dashed line)"] if best == task else
                ["isolated (grey, dashed line)"])
    runs = isolated + (["best mean (green)"] if best not in (None, task) else [])
    if set(names) - {task, best}:
        runs.append("others (blue)")
    whiskers = ((["whiskers: seed sd"] if any(sd is not None for sd in spreads) else [])
                + (["one seed: no whisker"] if any(sd is None for sd in spreads) else []))
    return ", ".join(runs) + "\n" + "; ".join(whiskers)


def per_item_figure(e: dict, task: str) -> Figure | None:
    """The bar chart of each item's change of the best multi-task subset over the isolated
    `task` (`e['per_item_gain']`, + = better), whiskers the tested items' confidence
    intervals; an untested item's bar is hatched, with no whisker, its name marked; the
    title says the subset was picked by its mean on these runs. None without per-item
    changes; laid out by `draw`, with its caption."""
    gains = e.get("per_item_gain")
    if not gains:
        return None
    h = report.headline(e, task)
    fig = drawing.figure(700, 320)
    ax = fig.add_subplot()
    values = np.array(list(gains.values()))
    tests = [e["per_item_tests"].get(k) for k in gains]
    x = np.arange(len(values))
    bars = ax.bar(x, values, color=["tab:green" if v >= 0 else "tab:red" for v in values])
    for bar, t in zip(bars, tests, strict=True):
        if t is None:
            bar.set_hatch("///")
            bar.set_edgecolor("white")
    tested = [k for k, t in enumerate(tests) if t is not None]
    if tested:
        ax.errorbar(x[tested], values[tested], fmt="none", ecolor="black", capsize=2,
                    yerr=np.array([[tests[k]["change"] - tests[k]["low"],
                                    tests[k]["high"] - tests[k]["change"]] for k in tested]).T)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [k if t else f"{k} (untested)" for k, t in zip(gains, tests, strict=True)],
                  rotation=60, fontsize=7, ha="right")
    ax.set_ylabel(item_change_label(h))
    key = ([f"whiskers: {stats.CI_HEADER}, not Holm-adjusted"] if tested else []) + (
        ["(untested) items: hatched, no whisker"] if len(tested) < len(tests) else [])
    best, picked_from = e["best_multi_task"], e["per_item_family"]["subsets"]
    picked = ("" if picked_from < 2 else f"\n{best}: best mean of the {picked_from} "
              f"multi-task subsets, picked on these runs")
    ax.set_title(f"{task}: {best} vs isolated, per {h.item} (+ = better){picked}\n"
                 + "; ".join(key), fontsize=9)
    return fig


def item_change_label(h: Headline) -> str:
    """What a bar of the per-item chart shows, signed + = better by the metric's direction
    (`Headline.higher_is_better`): 'gain in the part's IoU', 'decrease in the joint's error
    (mm)'."""
    return f"{'gain' if h.higher_is_better else 'decrease'} in the {h.item}'s {h.item_label}"
