"""Whether a sweep's evaluated runs compare, for the task-combination study's report: the
checks `evaluations.load_sweep` refuses runs by (two runs of a subset with one seed,
`check_seed`; runs trained, with losses, evaluated or at label sizes unlike the others,
`check_trained_alike`, `check_losses_alike`, `check_evaluated_alike`,
`check_label_sizes_alike`), what a summary records of how it was evaluated
(`evaluation_settings`), and the hgmt.evaluate command that evaluates runs again alike
(`evaluate_command`).
"""

from __future__ import annotations

import json
import os

import ml_collections

from hgmt import workdirs
from hgmt.evaluation import metrics_versions, protocols
from hgmt.study import run_configs
from hgmt.tasks import TASKS, check_loss_options, check_loss_weights, parse_tasks


def check_label_sizes_alike(sweep_dir: str, sizes: dict[str, int | None]) -> None:
    """Refuses runs evaluated at other label sizes ({run: its summary's label_size}; a summary
    that does not record it, made before it was, is not compared): an evaluation with another
    --config.image_size than the runs were trained at measures other maps."""
    groups: dict[int, list[str]] = {}
    for name, size in sorted(sizes.items()):
        if size is not None:
            groups.setdefault(size, []).append(name)
    if len(groups) > 1:
        found = "; ".join(f"{size} x {size} ({some_runs(names)})"
                          for size, names in sorted(groups.items()))
        raise ValueError(f"{sweep_dir}: the runs were evaluated at other label sizes, so their "
                         f"numbers do not compare: {found}. Evaluate them again at the image "
                         f"size they were trained at (hgmt.evaluate without "
                         f"--config.image_size)")


def check_trained_alike(sweep_dir: str, configs: dict[str, dict]) -> None:
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
        f"{name} not: " + ", ".join(f"config.{field}={own!r} (theirs: {others!r})"
                                    for field, own, others in run_configs.trained_differences(
                                        configs[name], configs[sweep[0]]))
        for name in odd)
    raise ValueError(
        f"{sweep_dir}: the runs were not all trained alike, so their numbers do not compare: "
        f"{len(sweep)} run{'s' if len(sweep) > 1 else ''} trained alike ({some_runs(sweep)}); "
        f"{found}. Move {'each of ' if len(odd) > 1 else ''}{some_runs(odd)} out of {sweep_dir}: "
        f"the report then leaves it out, and launch/sweep.py with the sweep's arguments "
        f"trains it again")


def check_losses_alike(sweep_dir: str, configs: dict[str, dict]) -> None:
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
                    f"config.{field}.{task}={loss[field]!r} (theirs: {theirs[field]!r})"
                    for field in loss if loss[field] != theirs[field]))
    if found:
        raise ValueError(
            f"{sweep_dir}: the runs of a task do not all train it with the same loss, so its "
            f"changes between subsets would be of the loss too: {'; '.join(found)}. Move each "
            f"such run out of {sweep_dir}: the report then leaves it out, and launch/sweep.py "
            f"with the sweep's arguments trains it again")


# What an evaluation summary records of the frames it was made on and the metrics'
# definitions (`metrics_versions.metrics_version`); runs compare only when these agree.
EVALUATION = ("num_examples", "split", "frames", "flip", "metrics_version", "window")
# A summary without a field was made before it was recorded: `window` in hgmt's crop window,
# whatever its protocol; `metrics_version` under the first definitions.
_BEFORE = {"window": "hgmt", "metrics_version": 1}


def evaluation_settings(summary: dict) -> tuple:
    """The summary's EVALUATION values (`_BEFORE`'s for a field it lacks)."""
    return tuple(summary.get(k, _BEFORE.get(k)) for k in EVALUATION)


def check_evaluated_alike(sweep_dir: str, protocol: str, evaluated: dict[str, tuple],
                          limits: dict[str, int | None], files: dict[str, str],
                          trained: str = "hgmt") -> None:
    """Refuses runs (`evaluated`: {run: `evaluation_settings`}) not all evaluated alike:
    their numbers do not compare, so neither do the tables and verdicts made of them. The
    error names each group of runs with its evaluation and the hgmt.evaluate command that
    evaluates the others as the most runs were (every run where their crop window or metric
    definitions are not those hgmt.evaluate uses for `protocol` today on runs trained on
    `trained`'s windows, config.window), with the example limit they asked for (`limits`:
    {run: the summary's max_examples}; where no summary records it, the frames they
    evaluated), into each run's file (`files`: {run: `evaluations._result`'s file name})."""
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
    command, others = evaluate_command(sweep_dir, protocol, target,
                                       [limits[n] for n in groups[target]],
                                       {n: files[n] for n in redo})
    found = "; ".join(
        f"{len(groups[settings])} run{'s' if len(groups[settings]) > 1 else ''} with "
        f"{', '.join(f'{k}={v!r}' for k, v in zip(EVALUATION, settings, strict=True))} "
        f"({some_runs(groups[settings])})"
        for settings in sorted(groups, key=lambda k: (-len(groups[k]), str(k))))
    which = (f"every run again (hgmt.evaluate evaluates protocol {protocol!r} in crop window "
             f"{today!r}, metrics_version={metrics_versions.metrics_version(protocol)})"
             if not as_today(target)
             else f"{some_runs(redo)} again as the others")
    raise ValueError(f"{sweep_dir}: the runs were not all evaluated alike, so their numbers "
                     f"do not compare: {found}. Evaluate {which}, for each <run>: {command}"
                     f"{others}")


def evaluate_command(sweep_dir: str, protocol: str, settings: tuple,
                     limits: list[int | None], runs: dict[str, str]) -> tuple[str, str]:
    """The hgmt.evaluate command that evaluates each of the sweep's `runs` ({name: the name
    of the file the report reads that run's numbers from, `evaluations._result`'s}), as <run>, under
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
    missing, another = f"is missing or holds protocol {protocol!r}", "holds another protocol's"
    others = "".join(
        f" (for {some_runs(names)}, whose {usual} {missing if f == usual else another} "
        f"numbers: --out_file={os.path.join(sweep_dir, '<run>', f)})"
        for f, names in sorted(files.items()) if f != common)
    return (f"python -m hgmt.evaluate --workdir={os.path.join(sweep_dir, '<run>')} "
            f"--split={split or 'test'} --frames={frames or 'middle'} "
            f"--{'' if flip else 'no'}flip"
            + ("" if limit is None else f" --max_examples={limit}")
            + f" --protocol={protocol} --out_file="
            f"{os.path.join(sweep_dir, '<run>', common)}", others)


def some_runs(names: list[str], shown: int = 5) -> str:
    """'a, b, c' or, for more than `shown` + 1 names, the first `shown` and how many more."""
    if len(names) <= shown + 1:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} other runs"


def check_seed(sweep_dir: str, name: str, config: dict, seen: dict[int, str]) -> None:
    """Refuses a run whose config.json (`config`) has the seed of another run of its subset
    (`seen`: {seed: run}): the two trained alike, and counting them as two seeds would make
    the spread look smaller than it is."""
    seed = config.get("seed")
    if seed in seen:
        raise ValueError(f"{sweep_dir}: runs {seen[seed]} and {name} were both trained with "
                         f"config.seed={seed}, so they are one seed, not two; remove one, or "
                         f"retrain it with another seed (launch/sweep.py gives seed index k "
                         f"the first seed + k)")
    seen[seed] = name
