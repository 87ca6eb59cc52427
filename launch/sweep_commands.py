"""A sweep's run commands: what each run still lacks (`pending`, the sweep's test of
doneness) and the command lines that do it, here (`command`, `protocol_command`, in the
environment `run_env`) or through Slurm (`sbatch_command`, `sbatch_protocol_command`), as
launch/sweep.py runs or prints them (why these commands: its docstring)."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Iterable

from hgmt import cli, workdirs
from hgmt.study import run_configs, runs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_SCRIPT = os.path.join(REPO, "launch", "slurm.sbatch")  # what --sbatch submits
# A printed command's environment as `run_env` gives the runs here: this checkout first.
HERE_PYTHONPATH = f"PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"


def run_env() -> dict[str, str]:
    """The runs' environment: this one with hgmt's checkout importable. They run in the
    caller's working directory, so that relative paths given to the sweep mean the same."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


def run_args(config: str, tasks: str, sweep_dir: str, extra: list[str],
             seed_index: int = 0, resume_with_changed_config: bool = False
             ) -> tuple[str, str, list[str]]:
    """hgmt.main's arguments of one run: the subset `tasks` with the config's seed s
    (seed_index 0) or with `config.seed = s + seed_index` (its config arguments
    `run_configs.config_args`, which `hgmt.report --check_config` rebuilds). -> (the `--config`
    value, the workdir SWEEP_DIR/`workdirs.run_name`, the flags after them)."""
    config_arg, *rest = run_configs.config_args(config, tasks, extra, seed_index)
    return (config_arg.removeprefix("--config="),
            os.path.join(sweep_dir, workdirs.run_name(tasks, seed_index)),
            [*rest, *([cli.RESUME_FLAG] if resume_with_changed_config else [])])


def command(config: str, tasks: str, sweep_dir: str, extra: list[str],
            seed_index: int = 0, resume_with_changed_config: bool = False) -> list[str]:
    """Trains one run here (`run_args`)."""
    config_value, workdir, rest = run_args(config, tasks, sweep_dir, extra, seed_index,
                                           resume_with_changed_config)
    return [sys.executable, "-m", "hgmt.main", f"--config={config_value}",
            f"--workdir={workdir}", *rest]


def sbatch_command(options: list[str], config: str, tasks: str, sweep_dir: str,
                   extra: list[str], seed_index: int = 0,
                   resume_with_changed_config: bool = False) -> str:
    """Submits one run's training to Slurm through launch/slurm.sbatch (`run_args`: what
    `command` trains here), a shell line with HGMT_REPO naming this checkout, and with the
    run's own JAX compilation cache, `workdirs.compilation_cache_dir`, unless `extra` gives
    --compilation_cache (why: launch/sweep.py's docstring). Slurm's log:
    SWEEP_DIR/hgmt-<run>-<job id>.out, beside the run (unless `options` give another
    --output)."""
    config_value, workdir, rest = run_args(config, tasks, sweep_dir, extra, seed_index,
                                           resume_with_changed_config)
    if not any(a.lstrip("-").partition("=")[0] == "compilation_cache" for a in extra):
        rest.append(f"--compilation_cache={workdirs.compilation_cache_dir(workdir)}")
    cmd = ["sbatch", f"--job-name=hgmt-{workdirs.run_name(tasks, seed_index)}",
           _job_log(sweep_dir), *options, SLURM_SCRIPT, workdir, config_value, *rest]
    return (f"HGMT_REPO={shlex.quote(REPO)} HGMT_PYTHON={shlex.quote(sys.executable)} "
            f"{shlex.join(cmd)}")


def protocol_command(tasks: str, sweep_dir: str, protocol: str, seed_index: int = 0) -> list[str]:
    """Evaluates a finished run under another metric protocol than its training's, into
    `workdirs.protocol_file(protocol)`, the file hgmt.report reads for it."""
    workdir = os.path.join(sweep_dir, workdirs.run_name(tasks, seed_index))
    out = os.path.join(workdir, workdirs.protocol_file(protocol))
    return runs.evaluation_argv(workdir, protocol, out, sys.executable)


def sbatch_protocol_command(options: list[str], tasks: str, sweep_dir: str, protocol: str,
                            seed_index: int = 0) -> str:
    """Submits `protocol_command` to Slurm (`sbatch --wrap`), hgmt importable as `run_env`
    makes it here (the job's PYTHONPATH with this checkout first), on one node with
    slurm.sbatch's GPUs and cores a node (EVALUATION_DEFAULTS; `options` may change them, not
    the one node and task: hgmt.evaluate is one process). Slurm's log:
    SWEEP_DIR/hgmt-<run>-<protocol>-<job id>.out."""
    wrapped = (f"{HERE_PYTHONPATH} "
               f"{shlex.join(protocol_command(tasks, sweep_dir, protocol, seed_index))}")
    return shlex.join(["sbatch", f"--job-name=hgmt-{workdirs.run_name(tasks, seed_index)}"
                       f"-{protocol}", _job_log(sweep_dir), *EVALUATION_DEFAULTS, *options,
                       "--nodes=1", "--ntasks=1", f"--wrap={wrapped}"])


def _job_log(sweep_dir: str) -> str:
    """The sbatch option that writes a job's Slurm log into the sweep directory, beside its
    run's folder and the runs' logs, not where the submission was made."""
    return f"--output={os.path.join(sweep_dir, '%x-%j.out')}"


# An evaluation job's resources before the sweep's --sbatch options (sbatch takes the last of
# a repeated option): launch/slurm.sbatch's GPUs and cores a node, which a --wrap job lacks.
EVALUATION_DEFAULTS = ("--gpus-per-node=8", "--cpus-per-task=32")


def pending(sweep_dir: str, tasks: str, seed_index: int, extra_protocols: list[str]
            ) -> dict[str, str]:
    """What a run still lacks, the sweep's test of doneness: {item: why}, in order. 'train'
    unless its test evaluation (SWEEP_DIR/<run>/eval_test.json) is there and reads; then
    each protocol of `extra_protocols` unless its file (`workdirs.protocol_file`) holds that
    protocol's numbers of the step the training ended at (`runs.behind_training`, as
    hgmt.report counts them). why: '' where the file is missing (or, for a protocol, the
    training is to run first), else what is wrong with it and what is done. {} for a done
    run."""
    workdir = os.path.join(sweep_dir, workdirs.run_name(tasks, seed_index))
    todo = {}
    try:
        trained = runs.read_summary(os.path.join(workdir, workdirs.result_file()),
                                    "It is trained again, which evaluates it anew")
    except workdirs.DamagedRunFile as e:
        trained, todo["train"] = None, str(e)
    else:
        if trained is None:
            todo["train"] = ""
    for x in extra_protocols:
        path = os.path.join(workdir, workdirs.protocol_file(x))
        try:
            summary = runs.read_summary(path, "It is evaluated again")
            if summary is None or trained is None:
                todo[x] = ""
            elif summary.get("protocol", "hgmt") != x:
                todo[x] = (f"{path} holds protocol {summary.get('protocol', 'hgmt')!r} "
                           f"numbers, not {x!r}: it is evaluated again")
            elif behind := runs.behind_training(workdir, summary, trained):
                todo[x] = (f"{path} is not of the run's trained weights ({behind}): it "
                           f"is evaluated again")
        except workdirs.DamagedRunFile as e:
            todo[x] = str(e)
    return todo


def pending_commands(todo: Iterable[str], config: str, tasks: str, sweep_dir: str,
                     extra: list[str], seed_index: int = 0,
                     resume_with_changed_config: bool = False) -> list[tuple[str, list[str]]]:
    """(what, command) of each item of a run's `pending` items `todo`, as this host runs it:
    'train' its training (`command`), a protocol its evaluation (`protocol_command`)."""
    return [(x, command(config, tasks, sweep_dir, extra, seed_index, resume_with_changed_config)
             if x == "train" else protocol_command(tasks, sweep_dir, x, seed_index))
            for x in todo]
