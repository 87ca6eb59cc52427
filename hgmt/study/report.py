"""The task-combination study's report, of the evaluated runs of a sweep by subset
(`hgmt.study.evaluations.load_sweep`): `compare` sets each task's subsets against its isolated
run with Welch's t-tests over the seeds (hgmt/study/stats.py), and `to_markdown` writes the
report with the paper's conclusions (hgmt/study/claims.py). Pure: nothing is read or written
here. hgmt/study/charts.py draws the charts; `python -m hgmt.report` (hgmt/report.py) is the
command: its docstring gives the usage and the files read and written.
"""

from __future__ import annotations

from hgmt.evaluation import metrics_versions, protocols
from hgmt.study import claims, comparable, evaluations, stats
from hgmt.tasks import TASKS
from hgmt.tasks.spec import Headline


def headline(entry_or_summary: dict, task: str) -> Headline:
    """The task's `Headline` under the protocol its numbers were made with (of a `compare`
    entry, or of an evaluation summary), for the report's tables and its charts."""
    return protocols.headline_of(task, entry_or_summary.get("protocol", "hgmt"))


def best_marked(e: dict) -> str | None:
    """The subset a task's table and chart mark as of best mean (`e['best']`), or None where
    the entry `e` (`compare`) has one subset only, so that nothing was compared."""
    return e["best"] if len(e["subsets"]) > 1 else None


def compare(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per task: every subset containing it with its headline metric (each seed's value, their
    mean, standard deviation and count), the isolated value, the best subset, and each
    change against the isolated run with its test (`tests`: stats.welch over seeds, Holm
    within the task's table, so `verdict` is better / worse / no detectable change); then
    the per-item change of the best multi-task subset over the isolated one
    (`per_item_gain`) with its tests (`per_item_tests`), and the multi-task subset of
    next-best mean with the test of its difference from the best (`runner_up_multi_task`:
    the pick is by mean, and the report says how close it was). The best subset is picked on
    the same runs whose items it tests, so its item tests are Holm-adjusted over the items
    of every multi-task subset (`per_item_family`: how many subsets and tests), whose
    changes (`per_item_gains`: {subset: {item: change}}) and per-item values
    (`per_item_runs`: {subset: [each seed's breakdown]}, the isolated one included) the
    entry keeps for claims that compare items.

    Each entry records how the runs were evaluated (`evaluation`: their summaries'
    `comparable.evaluation_settings`, named by `comparable.EVALUATION`, and
    `metrics_version_today`, today's version of their protocol's definitions,
    `metrics_versions.metrics_version`). Changes are signed so that positive is better (PCKh and IoU
    up, MJD and RMSE down)."""
    out = {}
    for task in TASKS:
        having = {s: [r[task] for r in runs if task in r] for s, runs in results.items()}
        having = {s: runs for s, runs in having.items() if runs}
        if not having:
            continue
        first = next(s for s in results.values() if s)[0]
        task_protocol = next(iter(having.values()))[0].get("protocol", "hgmt")
        # How the numbers were made (alike in every run: load_sweep), for the JSON's reader.
        settings = comparable.evaluation_settings(first)
        evaluation = dict(zip(comparable.EVALUATION, settings, strict=True)) | {
            "metrics_version_today": metrics_versions.metrics_version(
                evaluations.protocol_of(first))}
        h = protocols.headline_of(task, task_protocol)
        metric, higher, item_key = h.compare, h.higher_is_better, h.per_item
        # A null metric (each run says why in its null_reasons: a part absent from the split,
        # damaged records, fewer examples than one reference batch) is left out of the means
        # and tests, and said so; a subset counts the seeds defining it, and one whose seeds
        # are all null is listed as undefined.
        values = {s: [v[metric] for v in runs if v[metric] is not None]
                  for s, runs in having.items()}
        null = _nulls(having, metric)
        undefined = sorted(s for s, v in values.items() if not v)
        values = {s: v for s, v in values.items() if v}
        rows = {s: stats.mean(v) for s, v in values.items()}
        if not rows:
            out[task] = {"protocol": task_protocol, "evaluation": evaluation,
                         "metric": metric, "subsets": {},
                         "undefined": undefined, "isolated": None, "best": None,
                         "higher_is_better": higher} | ({"null": null} if null else {})
            continue
        sign = 1.0 if higher else -1.0
        best = max(rows, key=lambda s: sign * rows[s])
        multi = [s for s in rows if s != task]
        best_multi = max(multi, key=lambda s: sign * rows[s]) if multi else None
        entry = {"protocol": task_protocol, "evaluation": evaluation, "metric": metric,
                 "higher_is_better": higher,
                 "subsets": rows, "spread": {s: stats.spread(v) for s, v in values.items()},
                 "seeds": {s: len(v) for s, v in values.items()}, "values": values,
                 "undefined": undefined, "isolated": rows.get(task), "best": best,
                 "best_multi_task": best_multi} | ({"null": null} if null else {})
        if entry["isolated"] is not None:
            entry["gain"] = {s: sign * (v - entry["isolated"]) for s, v in rows.items()}
            entry["tests"] = stats.judge({s: stats.welch(values[s], values[task], sign)
                                          for s in multi})
            if best_multi and item_key:
                runs = {s: [r[item_key] for r in having[s]] for s in (task, *multi)}
                iso = _item_values(runs[task])
                gains, item_tests = {}, {}
                for s in multi:
                    top = _item_values(runs[s])
                    gains[s] = {k: sign * (stats.mean(top[k]) - stats.mean(iso[k])) for k in iso
                                if iso[k] and top.get(k)}
                    item_tests |= {(s, k): stats.welch(top[k], iso[k], sign) for k in gains[s]}
                # The subset shown is picked by its mean on these runs: Holm over the items
                # of every multi-task subset, so that the pick does not inflate its verdicts.
                judged = stats.judge(item_tests)
                entry["per_item_gain"] = gains[best_multi]
                entry["per_item_tests"] = {k: t for (s, k), t in judged.items()
                                           if s == best_multi}
                entry["per_item_family"] = {"subsets": len(multi), "tests": len(judged)}
                entry["per_item_gains"] = gains
                entry["per_item_runs"] = runs
                # The pick between close means is noisy: the runner-up and the test of their
                # difference say how close, for the report to disclose.
                runner_up = sorted(multi, key=lambda s: -sign * rows[s])[1:2]
                if runner_up:
                    r = runner_up[0]
                    entry["runner_up_multi_task"] = {
                        "subset": r, "test": stats.welch(values[best_multi], values[r], sign),
                        "untested": stats.untested_because(values[best_multi], values[r])}
        out[task] = entry
    return out


# A null value's reason where its summary records none (made before summaries recorded them).
NO_REASON = "no reason recorded in the run's evaluation"


def _nulls(having: dict[str, list[dict]], metric: str) -> dict[str, dict]:
    """{subset: {"seeds": how many of its runs have `metric` null, "of": how many runs it has,
    "reasons": the runs' own reasons (their task entry's null_reasons[metric]), each once}}
    of the subsets with a null run (`having`: {subset: each run's task entry})."""
    out = {}
    for s, runs in having.items():
        null = [r for r in runs if r[metric] is None]
        if null:
            reasons = [r.get("null_reasons", {}).get(metric) or NO_REASON for r in null]
            out[s] = {"seeds": len(null), "of": len(runs),
                      "reasons": list(dict.fromkeys(reasons))}
    return out


def _null_lines(e: dict) -> list[str]:
    """The report's lines on the null values of a task's entry `e` (`compare`'s `null`): each
    distinct reason the runs give, after the subsets (and how many of their seeds) it left
    out of the means and tests; [] when no run has a null value."""
    null = e.get("null", {})
    if not null:
        return []
    by_reason: dict[str, list[str]] = {}
    for s, n in sorted(null.items(), key=lambda kv: (kv[0].count("+"), kv[0])):
        seeds = (f"all {n['of']} seeds" if n["seeds"] == n["of"] else
                 f"{n['seeds']} of {n['of']} seeds")
        for why in n["reasons"]:
            by_reason.setdefault(why, []).append(f"{s} ({seeds})")
    return ["", f"Null {e['metric']} values, left out of the means and tests, with the runs' "
                f"reasons:"] + [f"- {', '.join(where)}: {why.rstrip('.')}."
                                for why, where in by_reason.items()]


def _dropped(e: dict, subset: str) -> str:
    """'; 1 null, left out' for a table row whose subset had runs with a null value
    (`compare`'s `null`) besides those it shows; '' otherwise."""
    n = e.get("null", {}).get(subset)
    return "" if n is None else f"; {n['seeds']} null, left out"


def _item_values(runs: list[dict]) -> dict[str, list[float]]:
    """{item: its values over the seeds that define it} of per-item breakdowns (`runs`: each
    seed's {item: value or None}, as `compare`'s `per_item_runs` keeps them)."""
    return {k: [r[k] for r in runs if r.get(k) is not None] for k in runs[0]}


def _signed(x: float) -> str:
    """+0.07 / -0.01 / 0 (no '-0' for a zero change)."""
    return "0" if x == 0 else f"{x:+.4g}"


def _tested(t: dict | None, why: str | None = None) -> str:
    """Table cells of a test: interval | p | p (Holm) | verdict; for a change without a test,
    empty cells and `why` (stats.untested_because) in the verdict's, if given."""
    if t is None:
        return " | | |" + ("" if why is None else f" untested: {why}") + " |"
    verdict = t["verdict"] if t["verdict"] == stats.UNDETECTED else f"**{t['verdict']}**"
    return f" {stats.bounds(t)} | {t['p']:.2g} | {t['p_holm']:.2g} | {verdict} |"


def _untested_subset(e: dict, task: str, subset: str) -> str | None:
    """Why `subset`'s change in `task`'s table has no test (`claims.untested`); None when it
    has one or is not a change (the isolated row, or no isolated run to compare with)."""
    if subset == task or e["isolated"] is None:
        return None
    return claims.untested(e, task, subset)


def _untested_item(e: dict, task: str, item: str) -> str | None:
    """Why `item`'s change in the per-item table has no test; None when it has one."""
    if item in e["per_item_tests"]:
        return None
    runs = e["per_item_runs"]
    return stats.untested_because(*(_item_values(runs[s])[item]
                                    for s in (e["best_multi_task"], task)))


def to_markdown(study: dict[str, dict], note: str, checked: list[dict] | None = None,
                runs_section: list[str] | None = None) -> str:
    """The report: title, note, the paper's conclusions (`claims.check`) if given, a section
    per task, then `runs_section` (the runs' config) if given."""
    lines = ["# Task-combination study", "", note, ""]
    if checked or any(max(e.get("seeds", {}).values(), default=1) > 1 for e in study.values()):
        lines += [f"## {TESTED}", "", TEST_NOTE, ""]
    if checked:
        lines += claims.to_markdown(checked, f"#{_anchor(TESTED)}")
    for task, e in study.items():
        h = headline(e, task)
        item, label = h.item, h.label
        better = "higher" if e["higher_is_better"] else "lower"
        lines += [f"## {task}: {label} ({better} is better; protocol "
                  f"`{e.get('protocol', 'hgmt')}`)", ""]
        if e["subsets"]:
            lines += [f"![{task} by subset]({task}_subsets.png)", ""]
        seeded = max(e.get("seeds", {}).values(), default=1) > 1
        if seeded:
            lines += [f"| subset | {label}: mean ± sd (seeds) | change vs isolated (+ = better)"
                      f" | {stats.CI_HEADER} | p | p (Holm) | verdict |",
                      "|---|---|---|---|---|---|---|"]
        else:
            lines += ["| subset | " + label + " | change vs isolated (+ = better) |",
                      "|---|---|---|"]
        for s, v in sorted(e["subsets"].items(), key=lambda kv: (kv[0].count("+"), kv[0])):
            gain = e.get("gain", {}).get(s)
            mark = (" (isolated)" if s == task else
                    " **best mean**" if s == best_marked(e) else "")
            change = "" if gain is None else _signed(gain)
            if not seeded:
                dropped = _dropped(e, s)
                lines.append(f"| {s}{mark} | {v:.4g}"
                             f"{f' (1 seed{dropped})' if dropped else ''} | {change} |")
                continue
            sd = e["spread"][s]
            lines.append(f"| {s}{mark} | {v:.4g} ± {'—' if sd is None else f'{sd:.2g}'} "
                         f"({e['seeds'][s]}{_dropped(e, s)}) | {change} |"
                         + _tested(e.get("tests", {}).get(s), _untested_subset(e, task, s)))
        if seeded:
            lines += ["", f"p (Holm): within this table ([{TESTED.lower()}]"
                          f"(#{_anchor(TESTED)}))."]
        lines += _null_lines(e)
        if not e["subsets"]:
            lines += ["", f"No subset has a value: every run's {e['metric']} is null."]
        elif e["isolated"] is None:
            lines += ["", f"No isolated `{task}` run in the sweep: no changes to compare."]
        if e.get("per_item_gain"):
            lines += ["", _per_item_intro(e, task, item), "",
                      f"![per {item}]({task}_per_item.png)", "",
                      f"| {item} | change | {stats.CI_HEADER} | p | p (Holm) | verdict |",
                      "|---|---|---|---|---|---|"]
            for k, v in e["per_item_gain"].items():
                lines.append(f"| {k} | {_signed(v)} |" + _tested(e["per_item_tests"].get(k),
                                                                 _untested_item(e, task, k)))
        lines.append("")
    lines += runs_section or []
    return "\n".join(lines)


def _per_item_intro(e: dict, task: str, item: str) -> str:
    """What the per-item table of `task`'s entry `e` shows: which subset over which, how it
    was picked, and what its p-values are adjusted over (`compare`'s `per_item_family`)."""
    best, second = e["best_multi_task"], claims.runner_up(e)
    family = e["per_item_family"]
    if not family["tests"]:
        return (f"Per {item}: {best} over isolated {task} (+ = better; untested: each row "
                f"says why).")
    if second is None:
        return (f"Per {item}: {best}, the only multi-task subset, over isolated {task} "
                f"(+ = better; p (Holm) over this table's {family['tests']} tests).")
    return (f"Per {item}: {best} over isolated {task} (+ = better). {best} is the multi-task "
            f"subset of best mean, picked on these same runs ({second}, Welch over seeds, "
            f"unadjusted): with another pick a {item}'s change and verdict can differ. So that "
            f"the pick does not inflate the verdicts, p (Holm) is adjusted over the {item}s of "
            f"all {family['subsets']} multi-task subsets containing {task} "
            f"({family['tests']} tests), not over this table's alone.")


TESTED = "How changes are tested"
# The report's one account of its tests, above its first table; the rest refer to it.
TEST_NOTE = (
    f"Each change is tested with Welch's t-test over the seeds (two-sided) and is **better** "
    f"or **worse** when its Holm-adjusted p is below {stats.ALPHA} (hgmt/study/stats.py). "
    f"Holm adjusts over one family of tests: a task's table of subsets; a task's per-item "
    f"tests of every multi-task subset containing it (its per-item table shows the subset of "
    f"best mean, picked on the same runs); or the tests that one of the paper's conclusions "
    f"rests on. The {stats.CI_HEADER} is the unadjusted {stats.LEVEL:.0%} confidence interval of "
    f"that change alone, not adjusted for the other tests of its family: it can exclude zero "
    f"while the Holm-adjusted test detects no change. A change with one seed on a side, or "
    f"with neither side varying over its seeds, has no test; its verdict cell says which. "
    f"Every run is evaluated on the same test frames: the test is over training seeds, not "
    f"over frames. Seed k of every subset trains with the same `config.seed` (the same data "
    f"order and augmentation draws), so the seeds of two subsets pair up; Welch's test takes "
    f"them as independent, which is conservative only where paired seeds correlate "
    f"positively, and a few seeds cannot estimate that correlation: a paired test could give "
    f"smaller or larger p-values. The verdicts' 5% error rate holds only as far as the seeds "
    f"are independent.")


def _anchor(heading: str) -> str:
    """The link target a Markdown renderer (GitHub's) gives a heading: lower case, spaces as
    hyphens, punctuation dropped."""
    return "".join(c for c in heading.lower().replace(" ", "-") if c.isalnum() or c in "-_")
