"""The config each run of a sweep is trained with, and how the runs' configs differ: the
config arguments of a run (`config_args`), the config hgmt.main would make of them today
(`expected_config`), how a run's saved config differs from it (`differences`,
`check_configs`: `hgmt.report --check_config`), and whether two runs were trained alike
(`trained_differences`).

The sweep's plan (SWEEP/sweep.json, written by launch/sweep.py) names the config file and the
arguments given to every run; a run <tasks>[@seed<k>] is that file with `tasks=<tasks>`, the
arguments, and, after the first seed, `--config.seed=<s + k>`, s the seed the file and the
arguments give (0 in hgmt's configs), so that no two seeds of a subset train alike.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from hgmt import run_config, workdirs
from hgmt.study import runs
from hgmt.tasks import TASKS, parse_tasks
from hgmt.training import resume

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The config fields a sweep's runs differ in by design: the subset (`tasks`), its tasks'
# losses (`loss_weights`, `loss_options`: one entry per task of the subset) and the seed
# (launch/sweep.py's seed index). Any other difference between two runs' config.json outside
# what a rerun may change (`hgmt.training.resume.differences`) makes them other experiments.
PER_RUN = ("tasks", "seed", "loss_weights", "loss_options")


def with_tasks(config: str, tasks: str) -> str:
    """'configs/default.py:runlocal' + 'pose2d' -> 'configs/default.py:runlocal,tasks=pose2d'
    (a tasks= the config gives is replaced)."""
    base = without_tasks(config)
    return f"{base}{',' if ':' in base else ':'}tasks={tasks}"


def without_tasks(config: str) -> str:
    """`config` (FILE[:ARG]) without a tasks= item in its argument: 'configs/demo.py:tasks=segm'
    -> 'configs/demo.py'."""
    path, _, argument = config.partition(":")
    items = [a for a in argument.split(",") if a and not a.startswith("tasks=")]
    return f"{path}:{','.join(items)}" if items else path


def config_args(config: str, tasks: str, extra: Sequence[str], seed_index: int) -> list[str]:
    """hgmt.main's config arguments of a sweep's run: `--config=<config>:...,tasks=<tasks>`,
    the sweep's `extra` arguments (an override of one task's loss weight or options, e.g.
    `--config.loss_weights.segm=2`, only where the run trains that task: the config of a run
    without it has no such field), then for seeds after the first `--config.seed=<s + k>`,
    s the seed of the first (the config's own, or the one `extra` gives) and k the index."""
    trained = (None, *parse_tasks(tasks))  # a task's override goes to the runs of that task
    args = [f"--config={with_tasks(config, tasks)}",
            *(a for a in extra if _task_of(a) in trained)]
    if not seed_index:
        return args
    return [*args, f"--config.seed={_load(config, args)['seed'] + seed_index}"]


def _task_of(arg: str) -> str | None:
    """The task whose loss weight or options `arg` overrides (`--config.loss_weights.<task>`,
    `--config.loss_options.<task>.<option>`), or None."""
    parts = arg.lstrip("-").partition("=")[0].split(".")
    if len(parts) >= 3 and parts[0] == "config" and parts[1] in ("loss_weights", "loss_options"):
        return parts[2] if parts[2] in TASKS else None
    return None


def expected_config(config: str, tasks: str, extra: Sequence[str], seed_index: int) -> dict:
    """The config that `hgmt.main` would save (as its config.json) for this run today: the
    config file (a relative path is taken from the repository root, as launch/sweep.py runs
    it) loaded with ml_collections' config_flags and the run's overrides."""
    return _load(config, config_args(config, tasks, extra, seed_index))


def _load(config: str, args: Sequence[str]) -> dict:
    """The config `args` (config_args' list, its first item `--config=<config>...`) make."""
    from absl import flags
    from ml_collections import config_flags

    path, _, arg = config.partition(":")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} (the sweep's --config={config}) not "
                                f"found; run the check from the repository that made the sweep")
    given = args[0].partition("=")[2].partition(":")[2]
    argv = ["check", f"--config={path}" + (f":{given}" if given else ""), *args[1:]]
    fv = flags.FlagValues()
    # config_flags defines the --config.x=y overrides it finds in sys_argv
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv, known_only=True)
    return json.loads(fv.config.to_json_best_effort(sort_keys=True))


def differences(made: dict, expected: dict) -> dict[str, list[str]]:
    """How a run's config differs from the expected one: 'changed', the fields both have with
    other values, one line each ('total_steps: 1200 in the run, 1500 now'); 'added', the
    fields only the expected config has (the config gained them after the run: what the code
    did then is not recorded); 'removed', those only the run's config has."""
    a, b = run_config.flat_fields(made), run_config.flat_fields(expected)
    return {"changed": [f"{k}: {json.dumps(a[k])} in the run, {json.dumps(b[k])} now"
                        for k in sorted(set(a) & set(b)) if a[k] != b[k]],
            "added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b))}


def trained_differences(a: Mapping[str, Any], b: Mapping[str, Any]
                        ) -> list[tuple[str, Any, Any]]:
    """(field, its value in `a`, in `b`) of each field, sorted, in which the runs of the
    config.json files `a` and `b` (each read in today's layout, `run_config.current_layout`)
    trained otherwise, beyond what a sweep's runs differ in by design (PER_RUN): the fields
    `hgmt.training.resume.differences` stops a rerun for, less the evaluators (`evals`), whose
    settings do not change the weights trained (the best checkpoint's settings choose what
    is kept, not what is evaluated after the last step) and whose evaluations the report
    compares from their summaries. A field only one of them has is not compared."""
    skip = (*PER_RUN, "evals")
    return [(field, x, y) for field, x, y in resume.differences(a, run_config.current_layout(b))
            if not run_config.is_under(field, skip)]


def check_configs(sweep_dir: str) -> dict[str, dict[str, list[str]]]:
    """{run: its `differences` from the config it would get today} of every finished run, its
    config.json taken in today's layout (`run_config.current_layout`: an older run's evaluation
    fields as the evaluators they amount to, so that a setting renamed since is compared under
    its new name). An evaluator that runs at no step in either config (`every` 0, not
    `at_end`) computed nothing for the run: its fields are not compared; nor are where the
    data is (`resume.DATA_LOCATION`: hgmt.main records them as absolute paths of the host
    that trained)."""
    p = runs.plan(sweep_dir, needs=("config", "extra"))
    out = {}
    for name in runs.finished(sweep_dir):
        if not os.path.isfile(os.path.join(sweep_dir, name, workdirs.CONFIG_FILE)):
            out[name] = {"changed": [f"no {workdirs.CONFIG_FILE}: the run's config is "
                                     f"unknown"], "added": [], "removed": []}
            continue
        made = run_config.current_layout(runs.saved_config(sweep_dir, name))
        expected = expected_config(p["config"], workdirs.run_tasks(name), p["extra"],
                                   workdirs.run_seed_index(name))
        out[name] = differences(*_without_idle_evaluators(
            *(_without_data_location(c) for c in (made, expected))))
        before = workdirs.configs_before(os.path.join(sweep_dir, name))
        if before:  # config.json holds only the config of the steps after the last of them
            out[name]["changed"].append(
                f"trained with more than one config: its earlier steps' in {', '.join(before)}")
    return out


def _without_data_location(config: dict) -> dict:
    """A copy of a config (as JSON) without the fields of `resume.DATA_LOCATION`."""
    config = copy.deepcopy(config)
    for field in resume.DATA_LOCATION:
        parent, name = run_config.field_parent(config, field)
        if parent is not None:
            parent.pop(name, None)
    return config


def _without_idle_evaluators(made: dict, expected: dict) -> tuple[dict, dict]:
    """Copies of both configs less the evaluators (`evals.<name>`) that neither runs: with
    `every` 0 and `at_end` false in each config that has them."""
    def idle(config: dict, name: str) -> bool:
        entry = config.get("evals", {}).get(name)
        return entry is None or (isinstance(entry, dict) and not entry.get("every")
                                 and not entry.get("at_end"))

    names = set(made.get("evals", {})) | set(expected.get("evals", {}))
    skip = {n for n in names if idle(made, n) and idle(expected, n)}
    return tuple({**c, "evals": {n: e for n, e in c["evals"].items() if n not in skip}}
                 if isinstance(c.get("evals"), dict) else c for c in (made, expected))
