"""A sweep's plan (SWEEP_DIR/sweep.json: config, subsets, seeds, the arguments after `--`) and
the checks before it is written: every run's command line parsed as hgmt.main parses it
(`check_run`), and a later call's config held to the recorded one (`record_plan`), but for
where the data is and how it is read (`SWEEP_FREE`)."""

from __future__ import annotations

import json
import os
import shlex
import sys

import ml_collections

from hgmt import disk_space, run_config, workdirs
from hgmt.study import run_configs, runs
from launch.sweep_commands import REPO


def record_plan(sweep_dir: str, plan: dict, config: str, first: ml_collections.ConfigDict
                ) -> dict:
    """Writes SWEEP_DIR/sweep.json, the sweep's plan (config, subsets, seeds, extra arguments),
    which the report counts finished runs against. A sweep directory holds one config: a later
    call with the same config and arguments adds its subsets and seeds to the plan (running a
    few subsets first keeps the whole plan), another config exits naming the fix. `config`
    and `first`: `check_run`'s of the plan's first subset (the config file's absolute path,
    that run's config)."""
    path = os.path.join(sweep_dir, workdirs.SWEEP_PLAN)
    old = _recorded_plan(sweep_dir)
    if old is not None:
        # A plan's config as written by any version (as given, or `plan_config`'s), compared
        # by the file it names; a tasks= that an older version took in --config (each run's
        # tasks replaced it) is no part of it.
        changed = ["the config file"] if run_configs.without_tasks(
            plan_config(_resolved(old["config"]))) != run_configs.without_tasks(
                plan_config(_resolved(plan["config"]))) else trained_differently(
                    config, old["extra"], plan["subsets"][0], first)
        if changed:
            raise SystemExit(
                f"error: {sweep_dir} holds a sweep of --config={old['config']} with "
                f"{_arguments(old['extra'])}, not --config={plan['config']} with "
                f"{_arguments(plan['extra'])} ({', '.join(changed)} differ); give another "
                f"--sweep_dir, or the same config and arguments (where the data is and how it "
                f"is read may differ: {', '.join(SWEEP_FREE)})")
        plan = {**plan, "subsets": old["subsets"] + [
            s for s in plan["subsets"] if s not in old["subsets"]],
            "seeds": max(old["seeds"], plan["seeds"])}
    disk_space.write_atomically(path, lambda f: json.dump(plan, f, indent=1))
    return plan


def _arguments(extra: list[str]) -> str:
    """The arguments after `--` of a plan, as typed in a shell: 'arguments --config.x=5' or
    'no arguments'."""
    return f"arguments {shlex.join(extra)}" if extra else "no arguments"


def _recorded_plan(sweep_dir: str) -> dict | None:
    """The plan of `sweep_dir` (`runs.plan`), None where there is none or it does not read
    (unreadable, empty, not a JSON object, lacking a field): then it is written anew from
    this call's plan, with a warning naming the file and what is wrong."""
    path = os.path.join(sweep_dir, workdirs.SWEEP_PLAN)
    if not os.path.isfile(path):
        return None
    anew = "It is written anew from this call's config, subsets and seeds."
    try:
        old = runs.plan(sweep_dir, anew)
    except OSError as e:
        print(f"launch/sweep.py: warning: {path} does not read ({e.strerror or e}). {anew}",
              file=sys.stderr)
        return None
    except workdirs.DamagedRunFile as e:
        print(f"launch/sweep.py: warning: {e}", file=sys.stderr)
        return None
    return old


# The fields a later call of the sweep may change: where the data is, how it is read, logged
# and saved, how the same function is compiled. Not the evaluations (what the report compares)
# nor `worker_count` (which records make each batch), which a rerun of one run may change.
SWEEP_FREE = ("data_dir", "demo.surreal_root", "read_threads", "prefetch",
              "max_damaged_fraction", "log_every", "checkpoint_every", "keep_checkpoints",
              "eval_batch_size", "model.stream_mode", "model.ops")


def trained_differently(config: str, old: list[str], tasks: str,
                        new: ml_collections.ConfigDict) -> list[str]:
    """The config fields in which `new`, the config of a run of `tasks` (`check_run`'s),
    differs from that run's config of `config` given the arguments `old` after `--` (parsed
    as hgmt.main parses them, so `--config.x 5`, `--config.x=5` and a boolean's spellings are
    alike), but `SWEEP_FREE`; ['the recorded arguments'] where `old` no longer parses."""
    from hgmt import main as trainer

    def fields(parsed: ml_collections.ConfigDict) -> dict:
        return run_config.flat_fields(json.loads(parsed.to_json_best_effort()))

    try:
        before = fields(trainer.parse([*run_configs.config_args(config, tasks, old, 0),
                                       "--workdir=unused"]).config)
    except SystemExit:
        return ["the recorded arguments"]
    after = fields(new)
    return sorted(f for f in set(before) | set(after)
                  if before.get(f) != after.get(f) and not run_config.is_under(f, SWEEP_FREE))


def check_run(config: str, tasks: str, extra: list[str], seeds: int = 1
              ) -> tuple[str, ml_collections.ConfigDict]:
    """Parses a run's command line (the subset `tasks`) as hgmt.main does, its config file read with
    its argument and the arguments after `--`: a missing file, a bad argument or override, a
    flag hgmt.main lacks, a value hgmt.main refuses (`config_check.check_config`, but what
    depends on the devices the runs train on; the last of the `seeds` runs' seeds too), or a
    config whose test evaluation does not run after training (`config.evals.test.at_end`: its
    eval_test.json is what makes a run done, so without it every call would train every run
    again) exits in one line naming it, before the sweep records its plan or starts a run. A
    relative config path is taken from the caller's working directory, else from the repository,
    where `hgmt.report --check_config` reads it. -> (`config` with its file's absolute path,
    which the runs are given (they start in the working directory), the run's config)."""
    from hgmt import main as trainer

    path, colon, argument = _resolved(config).partition(":")
    if not os.path.isfile(path):
        raise SystemExit(f"error: --config={config}: no config file {config.partition(':')[0]} "
                         f"in the working directory or in {REPO}; give a config file such as "
                         f"configs/default.py")
    try:
        parsed = trainer.parse([*run_configs.config_args(f"{path}{colon}{argument}", tasks,
                                                         extra, 0), "--workdir=unused"])
    except SystemExit as e:
        if e.code in (0, None):
            raise
        raise SystemExit(f"error: the {tasks} runs' hgmt.main (--config={config} and the "
                         f"arguments after `--`): {str(e.code).removeprefix('error: ')}"
                         ) from None
    from hgmt.data import input_pipeline
    from hgmt.training import config_check

    try:  # the values hgmt.main checks, but those of the devices the runs will train on
        config_check.check_config(parsed.config, warn=False, on_devices=False)
    except ValueError as e:
        raise SystemExit(f"error: the {tasks} runs' config (--config={config} and the "
                         f"arguments after `--`): {e}") from None
    last = parsed.config.seed + seeds - 1  # each run's seed is the config's plus its number
    try:
        input_pipeline.check_seed(last)
    except ValueError:
        raise SystemExit(f"error: --seeds={seeds}: the last run's seed, config.seed="
                         f"{parsed.config.seed} plus {seeds - 1}, is {last}, beyond 2**32 - 1; "
                         f"give a lower config.seed or fewer seeds") from None
    test = parsed.config.get("evals", {}).get("test")
    if test is None or not test.get("at_end"):
        given = [a for a in extra if a.partition("=")[0] in (
            "--config.evals.test.at_end", "--config.evals.test", "--config.evals")]
        fix = (f"drop {' '.join(given)}" if given else
               f"set config.evals.test.at_end=True in {path} (or give "
               f"--config.evals.test.at_end=True after `--`)")
        what = ("is missing" if test is None else
                "does not run after training (config.evals.test.at_end=False)")
        raise SystemExit(
            f"error: the runs' config.evals.test {what}: "
            f"launch/sweep.py counts a run as done by the {workdirs.result_file()} that test "
            f"evaluation writes after training, so every call would train every run again; "
            f"{fix}")
    return f"{path}{colon}{argument}", parsed.config


def _resolved(config: str) -> str:
    """`config` (FILE[:ARG]) with its file's absolute path: a relative one from the working
    directory where it is there, else from the repository."""
    path, colon, argument = config.partition(":")
    if not os.path.isabs(path):
        path = os.path.abspath(path if os.path.isfile(path) else os.path.join(REPO, path))
    return f"{path}{colon}{argument}"


def plan_config(config: str) -> str:
    """How the plan names `config` (`check_run`'s, its file's path absolute): a file in
    the repository by its path from the repository root, which stays true in another
    checkout; any other file by its absolute path, which `hgmt.report --check_config` reads
    from wherever it runs."""
    path, colon, argument = config.partition(":")
    inside = os.path.relpath(path, REPO)
    if not inside.startswith(os.pardir + os.sep):
        path = inside
    return f"{path}{colon}{argument}"
