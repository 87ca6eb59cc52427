"""The task-combination study's report, made of a sweep's evaluations: `evaluated_runs` reads
the sweep's evaluated runs, `load_sweep` gathers them by subset (refusing runs trained or
evaluated unlike the others), `compare` sets each task's subsets against its isolated run
with Welch's t-tests over the seeds (hgmt/study/stats.py), `to_markdown` writes the report with
the paper's conclusions (hgmt/study/claims.py), and `charts` draws the charts (in memory: the
command writes every file once all are made). `python -m hgmt.report`
(hgmt/report.py) is the command: its docstring gives the usage and the files read and
written.
"""

from __future__ import annotations

import io
import json
import math
import os

import ml_collections
import numpy as np

from hgmt import workdirs
from hgmt.evaluation import evaluator, protocols
from hgmt.study import claims, stats
from hgmt.study import runs as sweep_runs  # `runs` names a subset's runs below
from hgmt.tasks import TASKS, check_loss_options, check_loss_weights, drawing, parse_tasks
from hgmt.training import checkpoints


def evaluated_runs(sweep_dir: str, protocol: str = "hgmt") -> dict[str, tuple[str, dict]]:
    """{run: (file, summary)} of every run in `sweep_dir` evaluated under `protocol`, in name
    order (`_result`'s: the name of the file that holds its numbers and its summary, parsed),
    each run's evaluation files read once; a folder that is not a run (`runs.run_names`) is
    left out. `load_sweep` and `progress` take it, so that `hgmt.report` reads the sweep once
    for both. FileNotFoundError when `sweep_dir` is missing; ValueError, naming the
    hgmt.evaluate command, for a run whose file holds another protocol's numbers, or naming
    a file that does not read and what to do (`_result`)."""
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"--sweep_dir={sweep_dir} is not a folder (missing, or a "
                                f"file): give the folder launch/sweep.py made")
    found = {}
    for name in sweep_runs.run_names(sweep_dir):
        file, summary = _result(os.path.join(sweep_dir, name), protocol)
        if summary is not None:
            found[name] = file, summary
    return found


def load_sweep(sweep_dir: str, protocol: str = "hgmt",
               found: dict[str, tuple[str, dict]] | None = None) -> dict[str, list[dict]]:
    """{'pose2d+segm': [evaluation summary of each finished seed], ...} of every finished run
    in `sweep_dir`, evaluated under `protocol`. `found`: `evaluated_runs(sweep_dir,
    protocol)` when already made (default: made here). ValueError for runs whose numbers do
    not compare: two runs of a subset with one seed (`_check_seed`), runs trained
    (`_check_trained_alike`), with other losses (`_check_losses_alike`) or evaluated
    (`_check_evaluated_alike`) unlike the others. A metric that is not finite (a run whose
    weights diverged) is read as null, with that reason (`_non_finite_as_null`)."""
    if found is None:
        found = evaluated_runs(sweep_dir, protocol)
    name_of = workdirs.result_file(protocol)
    results, seeds, evaluated, limits, files, configs = {}, {}, {}, {}, {}, {}
    for name, (file, summary) in found.items():
        tasks = "+".join(parse_tasks(workdirs.run_tasks(name)))
        if os.path.isfile(os.path.join(sweep_dir, name, workdirs.CONFIG_FILE)):
            configs[name] = sweep_runs.saved_config(sweep_dir, name)
            _check_seed(sweep_dir, name, configs[name], seeds.setdefault(tasks, {}))
        results.setdefault(tasks, []).append(_non_finite_as_null(summary))
        evaluated[name] = _evaluation(summary)
        limits[name] = summary.get("max_examples")
        files[name] = file
    if not results:
        hint = "" if protocol == "hgmt" else (
            f" (evaluate finished runs with: python -m hgmt.evaluate --workdir={sweep_dir}/"
            f"<tasks> --protocol={protocol} --out_file={sweep_dir}/<tasks>/{name_of}, or rerun "
            f"launch/sweep.py with --protocols={protocol}; such a file counts once the run's "
            f"{workdirs.result_file()} is there, and only for the step its training ended at)")
        raise FileNotFoundError(f"no <tasks>/{name_of} in {sweep_dir}: no subset has "
                                f"finished{hint}")
    _check_trained_alike(sweep_dir, configs)
    _check_losses_alike(sweep_dir, configs)
    # The runs' training window (alike by now: a run trained on another is refused above).
    trained = next((c.get("window", "hgmt") for c in configs.values()), "hgmt")
    _check_evaluated_alike(sweep_dir, protocol, evaluated, limits, files, trained)
    _check_label_sizes_alike(sweep_dir, {n: s.get("label_size") for n, (_, s) in found.items()})
    return results


def _check_label_sizes_alike(sweep_dir: str, sizes: dict[str, int | None]) -> None:
    """Refuses runs evaluated at other label sizes ({run: its summary's label_size}; a summary
    that does not record it, made before it was, is not compared): an evaluation with another
    --config.image_size than the runs were trained at measures other maps."""
    groups: dict[int, list[str]] = {}
    for name, size in sorted(sizes.items()):
        if size is not None:
            groups.setdefault(size, []).append(name)
    if len(groups) > 1:
        found = "; ".join(f"{size} x {size} ({_some(names)})"
                          for size, names in sorted(groups.items()))
        raise ValueError(f"{sweep_dir}: the runs were evaluated at other label sizes, so their "
                         f"numbers do not compare: {found}. Evaluate them again at the image "
                         f"size they were trained at (hgmt.evaluate without "
                         f"--config.image_size)")


def _check_trained_alike(sweep_dir: str, configs: dict[str, dict]) -> None:
    """Refuses runs (`configs`: {run: its config.json}, in name order) not all trained alike
    (`runs.trained_differences`: a field outside those a sweep's runs differ in by design
    and those a rerun may change): a run trained with other settings (a test run into the
    sweep's folder after an edit of the config, a rerun with --resume_with_changed_config)
    is another experiment, and its numbers do not belong in the means, tests and verdicts.
    The largest group of runs trained alike (on a tie, the first run's) is the sweep's; the
    error names each other run with each field, its value and theirs, and the fix."""
    groups: list[list[str]] = []
    for name, config in configs.items():
        alike = next((g for g in groups
                      if not sweep_runs.trained_differences(config, configs[g[0]])), None)
        if alike is None:
            groups.append([name])
        else:
            alike.append(name)
    if len(groups) < 2:
        return
    sweep = max(groups, key=len)  # the first of the largest: the first run's on a tie
    odd = sorted(n for g in groups if g is not sweep for n in g)
    found = "; ".join(
        f"{name} not: " + ", ".join(f"{field} {json.dumps(theirs)} (theirs: {json.dumps(ours)})"
                                    for field, theirs, ours in sweep_runs.trained_differences(
                                        configs[name], configs[sweep[0]]))
        for name in odd)
    raise ValueError(
        f"{sweep_dir}: the runs were not all trained alike, so their numbers do not compare: "
        f"{len(sweep)} run{'s' if len(sweep) > 1 else ''} trained alike ({_some(sweep)}); "
        f"{found}. Move {'each of ' if len(odd) > 1 else ''}{_some(odd)} out of {sweep_dir}: "
        f"the report then leaves it out, and launch/sweep.py with the sweep's arguments "
        f"trains it again")


def _check_losses_alike(sweep_dir: str, configs: dict[str, dict]) -> None:
    """Refuses runs (`configs`: {run: its config.json}) that train a task with another loss
    weight or other loss options than the other runs of that task: a sweep's runs differ in
    their tasks' losses only in which tasks they have (`runs.PER_RUN`), so a task's gain
    between two subsets is not of a changed loss. The value most runs of the task train with
    (on a tie, the first run's) is the sweep's; the error names each other run, its value,
    theirs and the fix."""
    trained = {}  # {run: {task: its loss weight and options}}
    for name, config in configs.items():
        tasks = parse_tasks(workdirs.run_tasks(name))
        c = ml_collections.ConfigDict({k: config.get(k, {}) for k in ("loss_weights",
                                                                      "loss_options")})
        weights, options = check_loss_weights(c, tasks), check_loss_options(c, tasks)
        trained[name] = {t: {"loss_weights": weights[t], "loss_options": options[t]}
                         for t in tasks}
    found = []
    for task in TASKS:
        losses = {name: of[task] for name, of in trained.items() if task in of}
        values = [json.dumps(v, sort_keys=True) for v in losses.values()]
        if not values:
            continue
        sweep = max(dict.fromkeys(values), key=values.count)  # the first on a tie
        for (name, loss), value in zip(losses.items(), values, strict=True):
            if value != sweep:
                theirs = json.loads(sweep)
                found.append(f"{name} trains {task} with " + ", ".join(
                    f"{field}.{task} {json.dumps(loss[field])} (theirs: "
                    f"{json.dumps(theirs[field])})" for field in loss
                    if loss[field] != theirs[field]))
    if found:
        raise ValueError(
            f"{sweep_dir}: the runs of a task do not all train it with the same loss, so its "
            f"changes between subsets would be of the loss too: {'; '.join(found)}. Move each "
            f"such run out of {sweep_dir}: the report then leaves it out, and launch/sweep.py "
            f"with the sweep's arguments trains it again")


# A metric whose value is not finite (NaN, inf): the run's weights or its evaluation diverged.
NOT_FINITE = "not finite (NaN or inf: the run diverged), left out"


def _non_finite_as_null(summary: dict) -> dict:
    """A copy of an evaluation summary whose task metrics (and per-item values) that are not
    finite numbers are null, each headline one with the reason NOT_FINITE in its task's
    `null_reasons`, so that it is left out of means and tests and said so, as a null metric
    is (a NaN would otherwise pass as the best subset, and fail the charts)."""
    def finite(v):
        return not (isinstance(v, float) and not math.isfinite(v))

    out = dict(summary)
    for task in TASKS:
        entry = summary.get(task)
        if not isinstance(entry, dict):
            continue
        entry = dict(entry)
        for key, value in list(entry.items()):
            if not finite(value):
                entry[key] = None
                entry["null_reasons"] = {**entry.get("null_reasons", {}), key: NOT_FINITE}
            elif isinstance(value, dict) and not all(finite(v) for v in value.values()):
                entry[key] = {k: v if finite(v) else None for k, v in value.items()}
        out[task] = entry
    return out


# What an evaluation summary records of the frames it was made on and the metrics'
# definitions (`evaluator.metrics_version`); runs compare only when these agree.
EVALUATION = ("num_examples", "split", "frames", "flip", "metrics_version", "window")
# A summary without a field was made before it was recorded: `window` in hgmt's crop window,
# whatever its protocol; `metrics_version` under the first definitions.
_BEFORE = {"window": "hgmt", "metrics_version": 1}


def _evaluation(summary: dict) -> tuple:
    """The summary's EVALUATION values (`_BEFORE`'s for a field it lacks)."""
    return tuple(summary.get(k, _BEFORE.get(k)) for k in EVALUATION)


def _check_evaluated_alike(sweep_dir: str, protocol: str, evaluated: dict[str, tuple],
                           limits: dict[str, int | None], files: dict[str, str],
                           trained: str = "hgmt") -> None:
    """Refuses runs (`evaluated`: {run: `_evaluation`}) not all evaluated alike: their numbers
    do not compare, so neither do the tables and verdicts made of them. The error names each
    group of runs with its evaluation and the hgmt.evaluate command that evaluates the others
    as the most runs were (every run where their crop window or metric definitions are not
    those hgmt.evaluate uses for `protocol` today on runs trained on `trained`'s windows,
    config.window), with the example limit they asked for
    (`limits`: {run: the summary's max_examples}; where no summary records it, the frames
    they evaluated), into each run's file (`files`: {run: `_result`'s file name})."""
    groups: dict[tuple, list[str]] = {}
    for name, settings in evaluated.items():
        groups.setdefault(settings, []).append(name)
    if len(groups) < 2:
        return
    today = protocols.window(protocol, trained)

    def as_today(settings: tuple) -> bool:  # what hgmt.evaluate gives now
        return settings[-2:] == (evaluator.metrics_version(protocol), today)

    target = max(groups, key=lambda k: (as_today(k), len(groups[k]), str(k)))
    redo = (sorted(evaluated) if not as_today(target) else
            sorted(n for k, names in groups.items() if k != target for n in names))
    command, others = _evaluate_command(sweep_dir, protocol, target,
                                        [limits[n] for n in groups[target]],
                                        {n: files[n] for n in redo})
    found = "; ".join(
        f"{len(groups[settings])} run{'s' if len(groups[settings]) > 1 else ''} with "
        f"{', '.join(f'{k} {v}' for k, v in zip(EVALUATION, settings, strict=True))} "
        f"({_some(groups[settings])})"
        for settings in sorted(groups, key=lambda k: (-len(groups[k]), str(k))))
    which = (f"every run again (hgmt.evaluate evaluates protocol {protocol} in crop window "
             f"{today}, metrics_version {evaluator.metrics_version(protocol)})"
             if not as_today(target)
             else f"{_some(redo)} again as the others")
    raise ValueError(f"{sweep_dir}: the runs were not all evaluated alike, so their numbers "
                     f"do not compare: {found}. Evaluate {which}, for each <run>: {command}"
                     f"{others}")


def _evaluate_command(sweep_dir: str, protocol: str, settings: tuple,
                      limits: list[int | None], runs: dict[str, str]) -> tuple[str, str]:
    """The hgmt.evaluate command that evaluates each of the sweep's `runs` ({name: the name
    of the file the report reads that run's numbers from, `_result`'s}), as <run>, under
    `protocol` on the frames of `settings` (an `_evaluation`) into that file, with the
    example limit the runs asked for (`limits`: their summaries' max_examples, None where a
    summary does not record it; when none does, the frames they evaluated). Where the runs'
    files are named differently (under hgmt: eval_test_hgmt.json for a run whose trainer's
    eval_test.json holds another protocol's numbers, which the command must not overwrite),
    the command names the file of most runs and the clause returned with it (' (for a, b,
    whose ...: --out_file=...)'; '' when there are no others) the others'."""
    num_examples, split, frames, flip, _, _ = settings
    asked = [n for n in limits if n is not None]
    limit = asked[0] if asked else num_examples
    files: dict[str, list[str]] = {}
    for name, file in runs.items():
        files.setdefault(file, []).append(name)
    usual = workdirs.result_file(protocol)
    common = max(files, key=lambda f: (len(files[f]), f == usual, f), default=usual)
    others = "".join(
        f" (for {_some(names)}, whose {usual} "
        f"{'holds another protocol' if f != usual else f'is missing or holds {protocol}'}'s "
        f"numbers: --out_file={os.path.join(sweep_dir, '<run>', f)})"
        for f, names in sorted(files.items()) if f != common)
    return (f"python -m hgmt.evaluate --workdir={os.path.join(sweep_dir, '<run>')} "
            f"--split={split or 'test'} --frames={frames or 'middle'} "
            f"--{'' if flip else 'no'}flip"
            + ("" if limit is None else f" --max_examples={limit}")
            + f" --protocol={protocol} --out_file="
            f"{os.path.join(sweep_dir, '<run>', common)}", others)


def _some(names: list[str], shown: int = 5) -> str:
    """'a, b, c' or, for more than `shown` + 1 names, the first `shown` and how many more."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} other runs"


def _check_seed(sweep_dir: str, name: str, config: dict, seen: dict[int, str]) -> None:
    """Refuses a run whose config.json (`config`) has the seed of another run of its subset
    (`seen`: {seed: run}): the two trained alike, and counting them as two seeds would make
    the spread look smaller than it is."""
    seed = config.get("seed")
    if seed in seen:
        raise ValueError(f"{sweep_dir}: runs {seen[seed]} and {name} were both trained with "
                         f"config.seed={seed}, so they are one seed, not two: remove one, or "
                         f"retrain it with another seed (launch/sweep.py gives seed index k "
                         f"the first seed + k)")
    seen[seed] = name


def _result(run_dir: str, protocol: str) -> tuple[str, dict | None]:
    """(file, summary) of a sweep's run under `protocol`, each of its evaluation files read
    at most once.

    file: the name of the file that holds, or is to hold, its numbers under `protocol`, the
    one an evaluation of the run goes to: `workdirs.result_file` (the trainer's
    eval_test.json for hgmt, eval_test_<protocol>.json for another, which launch/sweep.py
    --protocols writes), but for hgmt `workdirs.protocol_file('hgmt')` (eval_test_hgmt.json)
    where eval_test.json holds another protocol's numbers: the trainer's, which an
    evaluation there would overwrite.

    summary: the run's evaluation summary under `protocol`, parsed; None for a run whose
    training has not finished (no eval_test.json: a protocol's file without it is not
    counted). eval_test.json's where it holds that protocol's numbers (for a protocol other
    than hgmt, where `file` does not hold them); `file`'s where it holds them for the step the
    training ended at (one that `runs.behind_training` finds of another step, or of none,
    counts as missing: launch/sweep.py evaluates it again); else None, or under hgmt
    ValueError naming the hgmt.evaluate command that writes `file`. ValueError too when
    `file` holds another protocol's numbers, and (DamagedRunFile) naming a file that does not
    read and what to do."""
    trained_path = os.path.join(run_dir, workdirs.result_file())  # the trainer's
    trained = sweep_runs.read_summary(trained_path, sweep_runs.training_fix(run_dir))
    if trained is None:  # not finished
        return workdirs.result_file(protocol), None
    if protocol == "hgmt" and _protocol_of(trained) == protocol:
        return workdirs.result_file(), trained
    file = workdirs.protocol_file(protocol)
    path = os.path.join(run_dir, file)
    evaluate = sweep_runs.evaluation_command(run_dir, protocol, path)
    summary = sweep_runs.read_summary(path, f"Evaluate the run into it again: {evaluate}")
    held = _protocol_of(summary)
    if held not in (None, protocol):
        raise ValueError(f"{path} holds protocol {held!r} numbers, not {protocol!r}: "
                         f"evaluate the run under {protocol!r} into it again: {evaluate}")
    behind = None if summary is None else sweep_runs.behind_training(run_dir, summary, trained)
    if summary is not None and behind is None:
        return file, summary
    if protocol != "hgmt":
        return file, trained if _protocol_of(trained) == protocol else None
    found = _protocol_of(trained)
    why = "" if behind is None else f" (it is there but not of the trained weights: {behind})"
    raise ValueError(f"{trained_path} holds protocol {found!r} numbers, not {protocol!r} "
                     f"(the run's test evaluator ran under {found!r}): report them with "
                     f"--protocol={found}, or evaluate the run under {protocol!r} into "
                     f"{path}, which the report reads then{why}: {evaluate}")


def _protocol_of(summary: dict | None) -> str | None:
    """The protocol of an evaluation `summary` (hgmt for one made before summaries recorded
    it); None for no summary."""
    return None if summary is None else summary.get("protocol", "hgmt")


def _headline(entry_or_summary: dict, task: str):
    """The task's `Headline` under the protocol its numbers were made with."""
    return protocols.headline_of(task, entry_or_summary.get("protocol", "hgmt"))


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

    Each entry records how the runs were evaluated (`evaluation`: the EVALUATION fields of
    their summaries, `_BEFORE`'s for a field they lack, and `metrics_version_today`, today's
    version of their protocol's definitions, `evaluator.metrics_version`). Changes are
    signed so that positive is better (PCKh and IoU up, MJD and RMSE down)."""
    out = {}
    for task in TASKS:
        having = {s: [r[task] for r in runs if task in r] for s, runs in results.items()}
        having = {s: runs for s, runs in having.items() if runs}
        if not having:
            continue
        first = next(s for s in results.values() if s)[0]
        task_protocol = next(iter(having.values()))[0].get("protocol", "hgmt")
        # How the numbers were made (alike in every run: load_sweep), for the JSON's reader.
        evaluation = dict(zip(EVALUATION, _evaluation(first), strict=True)) | {
            "metrics_version_today": evaluator.metrics_version(_protocol_of(first))}
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
        h = _headline(e, task)
        item, label = h.item, h.label
        better = "higher" if e["higher_is_better"] else "lower"
        lines += [f"## {task}: {label} ({better} is better; protocol "
                  f"`{e.get('protocol', 'hgmt')}`)", ""]
        if e["subsets"]:
            lines += [f"![{task} by subset]({task}_subsets.png)", ""]
        seeded = max(e.get("seeds", {}).values(), default=1) > 1
        if seeded:
            lines += [f"| subset | {label}: mean ± sd (seeds) | change vs isolated (+ = better)"
                      f" | {CI_HEADER} | p | p (Holm) | verdict |",
                      "|---|---|---|---|---|---|---|"]
        else:
            lines += ["| subset | " + label + " | change vs isolated (+ = better) |",
                      "|---|---|---|"]
        for s, v in sorted(e["subsets"].items(), key=lambda kv: (kv[0].count("+"), kv[0])):
            gain = e.get("gain", {}).get(s)
            mark = " (isolated)" if s == task else (" **best mean**" if s == e["best"] else "")
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
                      f"| {item} | change | {CI_HEADER} | p | p (Holm) | verdict |",
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


CI_HEADER = f"{stats.LEVEL:.0%} CI (per comparison)"
TESTED = "How changes are tested"
# The report's one account of its tests, above its first table; the rest refer to it.
TEST_NOTE = (
    f"Each change is tested with Welch's t-test over the seeds (two-sided) and is **better** "
    f"or **worse** when its Holm-adjusted p is below {stats.ALPHA} (hgmt/study/stats.py). "
    f"Holm adjusts over one family of tests: a task's table of subsets; a task's per-item "
    f"tests of every multi-task subset containing it (its per-item table shows the subset of "
    f"best mean, picked on the same runs); or the tests that one of the paper's conclusions "
    f"rests on. The {CI_HEADER} is the unadjusted {stats.LEVEL:.0%} confidence interval of "
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


def charts(study: dict[str, dict]) -> dict[str, bytes]:
    """{file name: PNG} of the charts per task (`subsets_figure`, `per_item_figure`), drawn
    in memory, so that the report writes nothing until every part of it is made."""
    out = {}
    for task, e in study.items():
        for kind, make in (("subsets", subsets_figure), ("per_item", per_item_figure)):
            fig = make(e, task)
            if fig is not None:
                png = io.BytesIO()
                fig.savefig(png, format="png", dpi=100)
                out[f"{task}_{kind}.png"] = png.getvalue()
    return out


def subsets_figure(e: dict, task: str):
    """`task`'s headline metric in every subset of its study entry `e` (`compare`), a dot per
    subset with the seeds' sd as whiskers, on a y axis spanning the values (changes of 0.01
    on values near 0.86 show), the isolated value as a dashed line; the title says what is
    drawn. None when no subset has a value."""
    if not e["subsets"]:
        return None
    names = sorted(e["subsets"], key=lambda s: (s.count("+"), s))
    values = np.array([e["subsets"][s] for s in names])
    spreads = [e.get("spread", {}).get(s) for s in names]  # None: one seed, nothing to draw
    fig = drawing.figure(int(100 * max(4.0, 0.6 * len(names) + 2)), 320)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.scatter(x, values, s=36, zorder=3, color=[
        "tab:grey" if s == task else ("tab:green" if s == e["best"] else "tab:blue")
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
    ax.set_ylabel(_headline(e, task).label)
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"{task}: {_subsets_key(e, task, names, spreads)}", fontsize=9)
    fig.tight_layout()
    return fig


def _subsets_key(e: dict, task: str, names: list[str], spreads: list) -> str:
    """The subsets chart's key, of what it draws: which dot is the isolated run and which the
    best, and what the whiskers are (a subset of one seed has none)."""
    if task not in names:
        runs = ["no isolated run", "best mean (green)"]
    elif e["best"] == task:
        runs = ["isolated and best mean (grey, dashed line)"]
    else:
        runs = ["isolated (grey, dashed line)", "best mean (green)"]
    if set(names) - {task, e["best"]}:
        runs.append("others (blue)")
    whiskers = ((["whiskers: seed sd"] if any(sd is not None for sd in spreads) else [])
                + (["one seed: no whisker"] if any(sd is None for sd in spreads) else []))
    return ", ".join(runs) + "\n" + "; ".join(whiskers)


def per_item_figure(e: dict, task: str):
    """The bar chart of each item's change of the best multi-task subset over the isolated
    `task` (`e['per_item_gain']`, + = better), whiskers the tested items' confidence
    intervals; an untested item's bar is hatched, with no whisker, its name marked; the
    title says the subset was picked by its mean on these runs. None without per-item
    changes."""
    gains = e.get("per_item_gain")
    if not gains:
        return None
    h = _headline(e, task)
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
    key = ([f"whiskers: {CI_HEADER}, not Holm-adjusted"] if tested else []) + (
        ["(untested) items: hatched, no whisker"] if len(tested) < len(tests) else [])
    best, picked_from = e["best_multi_task"], e["per_item_family"]["subsets"]
    picked = ("" if picked_from < 2 else f"\n{best}: best mean of the {picked_from} "
              f"multi-task subsets, picked on these runs")
    ax.set_title(f"{task}: {best} vs isolated, per {h.item} (+ = better){picked}\n"
                 + "; ".join(key), fontsize=9)
    fig.tight_layout()
    return fig


def item_change_label(h) -> str:
    """What a bar of the per-item chart shows, signed + = better by the metric's direction
    (`Headline.higher_is_better`): 'gain in the part's IoU', 'decrease in the joint's error
    (mm)'."""
    return f"{'gain' if h.higher_is_better else 'decrease'} in the {h.item}'s {h.item_label}"


def progress(sweep_dir: str, results: dict[str, list[dict]],
             found: dict[str, tuple[str, dict]] | None = None) -> str:
    """A line saying how many of the sweep's planned runs (its sweep.json) have finished,
    which planned runs are missing and which finished runs are not in the plan (the tables
    count every finished run), then how they were evaluated (`load_sweep` refuses runs
    evaluated otherwise: `_evaluated_as`). `results`: `load_sweep`'s; `found`: the
    `evaluated_runs` it was made of, when at hand (default: made here again)."""
    summaries = [s for runs in results.values() for s in runs]
    protocol = summaries[0].get("protocol", "hgmt")
    if found is None:
        found = evaluated_runs(sweep_dir, protocol)
    files = {n: file for n, (file, _) in found.items()}
    finished = list(files)
    evaluation = _evaluated_as(sweep_dir, protocol, summaries, files)
    path = os.path.join(sweep_dir, workdirs.SWEEP_PLAN)
    if not os.path.isfile(path):
        return f"Runs finished: {len(summaries)}.{evaluation}"
    with open(path) as f:
        plan = json.load(f)
    subsets, seeds = plan["subsets"], plan.get("seeds", 1)
    planned = {workdirs.run_name(s, k) for k in range(seeds) for s in subsets}
    missing, extra = sorted(planned - set(finished)), sorted(set(finished) - planned)
    rest = "" if not missing else (
        f"; missing: {', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''} "
        f"(launch/sweep.py with the same arguments resumes them)")
    outside = "" if not extra else (
        f"; finished but not in the plan, counted in the tables: {', '.join(extra)}")
    return (f"Runs finished: {len(planned & set(finished))} of {len(planned)} ({len(subsets)} "
            f"subsets x {seeds} seed{'s' if seeds > 1 else ''}){rest}{outside}.{evaluation}")


def _evaluated_as(sweep_dir: str, protocol: str, summaries: list[dict],
                 files: dict[str, str]) -> str:
    """' Each is evaluated on 240 frames ...': the frames, the flip test and the version of
    the metric definitions (`evaluator.metrics_version`) of the finished runs (`files`: {run:
    `_result`'s file name}; alike: `load_sweep`), from their `summaries`; under definitions
    older than today's, what changed since (`evaluator.METRICS_CHANGES`) and the command that
    evaluates the runs again into those files, with how many kept the checkpoints it needs (a
    step in `<run>/checkpoints`). '' for summaries that do not record their frames (made by
    hand)."""
    first = summaries[0]
    if "num_examples" not in first:
        return ""
    num_examples, split, frames, flip, version, window = _evaluation(first)
    line = (f" Each is evaluated on {num_examples} frames of split `{split or 'test'}` (frames: "
            f"{frames or 'middle'}; {'with' if flip else 'no'} flip test"
            f"{'' if window == 'hgmt' else f'; crop window: {window}'}; metric definitions "
            f"version {version}).")
    today = evaluator.metrics_version(protocol)
    if version >= today:
        return line
    changes = "; ".join(f"version {v}: {what}"
                        for v, what in evaluator.metrics_changes(protocol, version))
    # A run kept its checkpoints when its folder holds a step (a folder left empty is not one).
    kept = [n for n in files if checkpoints.steps_on_disk(os.path.join(sweep_dir, n))]
    where = f"`<run>/{workdirs.CHECKPOINT_DIR}`"
    have = (f"None of these {len(files)} runs kept its checkpoints ({where}), so their numbers "
            f"stay under version {version} unless they are trained again" if not kept else
            f"Every one of these {len(files)} runs kept its checkpoints ({where})"
            if len(kept) == len(files) else
            f"{len(kept)} of these {len(files)} runs kept their checkpoints ({where}: "
            f"{_some(kept)}); the others would have to be trained again")
    command, others = _evaluate_command(sweep_dir, protocol, _evaluation(first),
                                        [s.get("max_examples") for s in summaries],
                                        {n: files[n] for n in kept or files})
    return (f"{line} Version {version} is older than today's {today} "
            f"(hgmt.evaluation.evaluator.METRICS_CHANGES), so today's hgmt.evaluate can give "
            f"these models other numbers; what changed: {changes}. {have}. A run with its "
            f"checkpoints is evaluated under today's definitions by, for each <run>: "
            f"`{command}`{others}.")
