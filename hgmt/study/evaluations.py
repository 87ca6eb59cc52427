"""A sweep's evaluated runs, read and checked for the task-combination study's report:
`evaluated_runs` finds the runs evaluated under a protocol and reads each one's summary
(`_result`: which of its files holds those numbers), `load_sweep` gathers them by subset,
refusing runs whose numbers do not compare (two runs of a subset with one seed; runs
trained, with losses, evaluated or at label sizes unlike the others), and `progress` says
how many of the sweep's planned runs finished and how they were evaluated. The files the
report reads are read here; hgmt/study/report.py compares what `load_sweep` returns.
"""

from __future__ import annotations

import json
import math
import os

import ml_collections

from hgmt import workdirs
from hgmt.evaluation import metrics_versions, protocols
from hgmt.study import run_configs
from hgmt.study import runs as sweep_runs  # `runs` names a subset's runs below
from hgmt.tasks import TASKS, check_loss_options, check_loss_weights, parse_tasks
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
        evaluated[name] = evaluation_settings(summary)
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
    (`run_configs.trained_differences`: a field outside those a sweep's runs differ in by design
    and those a rerun may change): a run trained with other settings (a test run into the
    sweep's folder after an edit of the config, a rerun with --resume_with_changed_config)
    is another experiment, and its numbers do not belong in the means, tests and verdicts.
    The largest group of runs trained alike (on a tie, the first run's) is the sweep's; the
    error names each other run with each field, its value and theirs, and the fix."""
    groups: list[list[str]] = []
    for name, config in configs.items():
        alike = next((g for g in groups
                      if not run_configs.trained_differences(config, configs[g[0]])), None)
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
                                    for field, theirs, ours in run_configs.trained_differences(
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
    their tasks' losses only in which tasks they have (`run_configs.PER_RUN`), so a task's gain
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
    def finite(v: object) -> bool:
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
# definitions (`metrics_versions.metrics_version`); runs compare only when these agree.
EVALUATION = ("num_examples", "split", "frames", "flip", "metrics_version", "window")
# A summary without a field was made before it was recorded: `window` in hgmt's crop window,
# whatever its protocol; `metrics_version` under the first definitions.
_BEFORE = {"window": "hgmt", "metrics_version": 1}


def evaluation_settings(summary: dict) -> tuple:
    """The summary's EVALUATION values (`_BEFORE`'s for a field it lacks)."""
    return tuple(summary.get(k, _BEFORE.get(k)) for k in EVALUATION)


def _check_evaluated_alike(sweep_dir: str, protocol: str, evaluated: dict[str, tuple],
                           limits: dict[str, int | None], files: dict[str, str],
                           trained: str = "hgmt") -> None:
    """Refuses runs (`evaluated`: {run: `evaluation_settings`}) not all evaluated alike:
    their numbers do not compare, so neither do the tables and verdicts made of them. The
    error names each group of runs with its evaluation and the hgmt.evaluate command that
    evaluates the others as the most runs were (every run where their crop window or metric
    definitions are not those hgmt.evaluate uses for `protocol` today on runs trained on
    `trained`'s windows, config.window), with the example limit they asked for (`limits`:
    {run: the summary's max_examples}; where no summary records it, the frames they
    evaluated), into each run's file (`files`: {run: `_result`'s file name})."""
    groups: dict[tuple, list[str]] = {}
    for name, settings in evaluated.items():
        groups.setdefault(settings, []).append(name)
    if len(groups) < 2:
        return
    today = protocols.window(protocol, trained)

    def as_today(settings: tuple) -> bool:  # what hgmt.evaluate gives now
        return settings[-2:] == (metrics_versions.metrics_version(protocol), today)

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
             f"{today}, metrics_version {metrics_versions.metrics_version(protocol)})"
             if not as_today(target)
             else f"{_some(redo)} again as the others")
    raise ValueError(f"{sweep_dir}: the runs were not all evaluated alike, so their numbers "
                     f"do not compare: {found}. Evaluate {which}, for each <run>: {command}"
                     f"{others}")


def _evaluate_command(sweep_dir: str, protocol: str, settings: tuple,
                      limits: list[int | None], runs: dict[str, str]) -> tuple[str, str]:
    """The hgmt.evaluate command that evaluates each of the sweep's `runs` ({name: the name
    of the file the report reads that run's numbers from, `_result`'s}), as <run>, under
    `protocol` on the frames of `settings` (an `evaluation_settings`) into that file, with the
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
    if protocol == "hgmt" and protocol_of(trained) == protocol:
        return workdirs.result_file(), trained
    file = workdirs.protocol_file(protocol)
    path = os.path.join(run_dir, file)
    evaluate = sweep_runs.evaluation_command(run_dir, protocol, path)
    summary = sweep_runs.read_summary(path, f"Evaluate the run into it again: {evaluate}")
    held = protocol_of(summary)
    if held not in (None, protocol):
        raise ValueError(f"{path} holds protocol {held!r} numbers, not {protocol!r}: "
                         f"evaluate the run under {protocol!r} into it again: {evaluate}")
    behind = None if summary is None else sweep_runs.behind_training(run_dir, summary, trained)
    if summary is not None and behind is None:
        return file, summary
    if protocol != "hgmt":
        return file, trained if protocol_of(trained) == protocol else None
    found = protocol_of(trained)
    why = "" if behind is None else f" (it is there but not of the trained weights: {behind})"
    raise ValueError(f"{trained_path} holds protocol {found!r} numbers, not {protocol!r} "
                     f"(the run's test evaluator ran under {found!r}): report them with "
                     f"--protocol={found}, or evaluate the run under {protocol!r} into "
                     f"{path}, which the report reads then{why}: {evaluate}")


def protocol_of(summary: dict | None) -> str | None:
    """The protocol of an evaluation `summary` (hgmt for one made before summaries recorded
    it); None for no summary."""
    return None if summary is None else summary.get("protocol", "hgmt")


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
    plan = sweep_runs.plan(sweep_dir, needs=("subsets",))
    subsets, seeds = plan["subsets"], plan["seeds"]
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
    the metric definitions (`metrics_versions.metrics_version`) of the finished runs (`files`: {run:
    `_result`'s file name}; alike: `load_sweep`), from their `summaries`; under definitions
    older than today's, what changed since (`metrics_versions.METRICS_CHANGES`) and the command that
    evaluates the runs again into those files, with how many kept the checkpoints it needs (a
    step in `<run>/checkpoints`). '' for summaries that do not record their frames (made by
    hand)."""
    first = summaries[0]
    if "num_examples" not in first:
        return ""
    num_examples, split, frames, flip, version, window = evaluation_settings(first)
    line = (f" Each is evaluated on {num_examples} frames of split `{split or 'test'}` (frames: "
            f"{frames or 'middle'}; {'with' if flip else 'no'} flip test"
            f"{'' if window == 'hgmt' else f'; crop window: {window}'}; metric definitions "
            f"version {version}).")
    today = metrics_versions.metrics_version(protocol)
    if version >= today:
        return line
    changes = "; ".join(f"version {v}: {what}"
                        for v, what in metrics_versions.metrics_changes(protocol, version))
    # A run kept its checkpoints when its folder holds a step (a folder left empty is not one).
    kept = [n for n in files if checkpoints.steps_on_disk(os.path.join(sweep_dir, n))]
    where = f"`<run>/{workdirs.CHECKPOINT_DIR}`"
    have = (f"None of these {len(files)} runs kept its checkpoints ({where}), so their numbers "
            f"stay under version {version} unless they are trained again" if not kept else
            f"Every one of these {len(files)} runs kept its checkpoints ({where})"
            if len(kept) == len(files) else
            f"{len(kept)} of these {len(files)} runs kept their checkpoints ({where}: "
            f"{_some(kept)}); the others would have to be trained again")
    command, others = _evaluate_command(sweep_dir, protocol, evaluation_settings(first),
                                        [s.get("max_examples") for s in summaries],
                                        {n: files[n] for n in kept or files})
    return (f"{line} Version {version} is older than today's {today} "
            f"(hgmt.evaluation.metrics_versions.METRICS_CHANGES), so today's hgmt.evaluate can "
            f"give these models other numbers; what changed: {changes}. {have}. A run with its "
            f"checkpoints is evaluated under today's definitions by, for each <run>: "
            f"`{command}`{others}.")
