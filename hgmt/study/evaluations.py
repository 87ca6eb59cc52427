"""A sweep's evaluated runs, read for the task-combination study's report:
`evaluated_runs` finds the runs evaluated under a protocol and reads each one's summary
(`_result`: which of its files holds those numbers), `load_sweep` gathers them by subset,
refusing runs whose numbers do not compare (hgmt/study/comparable.py: two runs of a subset
with one seed; runs trained, with losses, evaluated or at label sizes unlike the others), and
`progress` says how many of the sweep's planned runs finished and how they were evaluated.
The files the report reads are read here; hgmt/study/report.py compares what `load_sweep`
returns.
"""

from __future__ import annotations

import math
import os

from hgmt import workdirs
from hgmt.evaluation import metrics_versions
from hgmt.study import comparable
from hgmt.study import runs as sweep_runs  # `runs` names a subset's runs below
from hgmt.tasks import TASKS, parse_tasks
from hgmt.training import checkpoints


def evaluated_runs(sweep_dir: str, protocol: str = "hgmt") -> dict[str, tuple[str, dict]]:
    """{run: (file, summary)} of every run in `sweep_dir` evaluated under `protocol`, in name
    order (`_result`'s: the name of the file that holds its numbers and its summary, parsed),
    each run's evaluation files read once; a folder that is not a run (`runs.run_names`) is
    left out. `load_sweep` and `progress` take it, so that `hgmt.report` reads the sweep once
    for both. FileNotFoundError when `sweep_dir` is missing; ValueError, naming the
    hgmt.evaluate command, for a run whose file holds another protocol's numbers, or naming
    a file that does not read and what to do (`_result`)."""
    sweep_runs.check_folder(sweep_dir)
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
    not compare: two runs of a subset with one seed (`comparable.check_seed`), runs trained
    (`comparable.check_trained_alike`), with other losses (`comparable.check_losses_alike`)
    or evaluated (`comparable.check_evaluated_alike`) unlike the others. A metric that is not
    finite (a run whose weights diverged) is read as null, with that reason
    (`_non_finite_as_null`)."""
    if found is None:
        found = evaluated_runs(sweep_dir, protocol)
    name_of = workdirs.result_file(protocol)
    results, seeds, evaluated, limits, files, configs = {}, {}, {}, {}, {}, {}
    for name, (file, summary) in found.items():
        tasks = "+".join(parse_tasks(workdirs.run_tasks(name)))
        if os.path.isfile(os.path.join(sweep_dir, name, workdirs.CONFIG_FILE)):
            configs[name] = sweep_runs.saved_config(sweep_dir, name)
            comparable.check_seed(sweep_dir, name, configs[name], seeds.setdefault(tasks, {}))
        results.setdefault(tasks, []).append(_non_finite_as_null(summary))
        evaluated[name] = comparable.evaluation_settings(summary)
        limits[name] = summary.get("max_examples")
        files[name] = file
    if not results:
        fix = (f"run launch/sweep.py --sweep_dir={sweep_dir} with the sweep's config and "
               f"arguments to train them" if protocol == "hgmt" else
               f"evaluate finished runs with: python -m hgmt.evaluate --workdir={sweep_dir}/"
               f"<tasks> --protocol={protocol} --out_file={sweep_dir}/<tasks>/{name_of}, or rerun "
               f"launch/sweep.py with --protocols={protocol} (such a file counts once the run's "
               f"{workdirs.result_file()} is there, and only for the step its training ended at)")
        raise FileNotFoundError(f"no <tasks>/{name_of} in {sweep_dir}: no subset has "
                                f"finished; {fix}")
    comparable.check_trained_alike(sweep_dir, configs)
    comparable.check_losses_alike(sweep_dir, configs)
    # The runs' training window (alike by now: a run trained on another is refused above).
    trained = next((c.get("window", "hgmt") for c in configs.values()), "hgmt")
    comparable.check_evaluated_alike(sweep_dir, protocol, evaluated, limits, files, trained)
    comparable.check_label_sizes_alike(sweep_dir,
                                       {n: s.get("label_size") for n, (_, s) in found.items()})
    return results


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
        raise ValueError(f"{path} holds protocol {held!r} numbers, not {protocol!r}; "
                         f"evaluate the run under {protocol!r} into it again: {evaluate}")
    behind = None if summary is None else sweep_runs.behind_training(run_dir, summary, trained)
    if summary is not None and behind is None:
        return file, summary
    if protocol != "hgmt":
        return file, trained if protocol_of(trained) == protocol else None
    found = protocol_of(trained)
    why = "" if behind is None else f" (it is there but not of the trained weights: {behind})"
    raise ValueError(f"{trained_path} holds protocol {found!r} numbers, not {protocol!r} "
                     f"(the run's test evaluator ran under {found!r}); report them with "
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
    num_examples, split, frames, flip, version, window = comparable.evaluation_settings(first)
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
            f"{comparable.some_runs(kept)}); the others would have to be trained again")
    command, others = comparable.evaluate_command(sweep_dir, protocol,
                                                  comparable.evaluation_settings(first),
                                                  [s.get("max_examples") for s in summaries],
                                                  {n: files[n] for n in kept or files})
    return (f"{line} Version {version} is older than today's {today} "
            f"(hgmt.evaluation.metrics_versions.METRICS_CHANGES), so today's hgmt.evaluate can "
            f"give these models other numbers; what changed: {changes}. {have}. A run with its "
            f"checkpoints is evaluated under today's definitions by, for each <run>: "
            f"`{command}`{others}.")
