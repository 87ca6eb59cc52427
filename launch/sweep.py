"""Train and evaluate every task subset (the seed paper's study), one workdir each.

    python3 launch/sweep.py --sweep_dir=runs/sweep --config=configs/default.py \\
        [--tasks=pose2d,pose2d+segm,...] [--protocols=bodynet,surreal] \\
        [--print_only [--sbatch=OPTIONS]] [-- --config.total_steps=1000 ...]

Runs `python -m hgmt.main --config=CONFIG:tasks=T --workdir=SWEEP_DIR/T` for each subset T (all
15 by default), one after another on this host, logging to SWEEP_DIR/T.log: each attempt appends
a segment to it that starts with a line giving its start time (UTC) and command and ends with
one giving its outcome and wall time, so a retried run keeps the earlier attempts' output and
errors. A subset whose SWEEP_DIR/T/eval_test.json exists and reads is done and skipped, so
rerunning the sweep resumes it (and an interrupted subset resumes from its last checkpoint;
one whose eval_test.json does not read is trained again, which from its last checkpoint
evaluates it anew). SIGTERM to the sweep is passed on to the run in progress (a training
saves a checkpoint and exits 75, hgmt.main's preemption handling); the sweep writes the
outcome line and stops with status 75, as it does when a run exits 75 on its own signal, and
with 130 after Ctrl-C (which reaches the run from the terminal): the run is never left
training unwatched, and rerunning the sweep resumes it. The config's test evaluation must run
after training (config.evals.test.at_end), which writes that file. Arguments after `--` go
to every run (one task's loss weight or options, `--config.loss_weights.segm=2`, to the runs
of that task).
`--protocols` also evaluates each finished subset under those metric protocols
(`python -m hgmt.evaluate --protocol=P`, into SWEEP_DIR/T/eval_test_P.json) for
`python -m hgmt.report --protocol=P`, skipped where that file holds P's numbers of the step the
run's training ended at (eval_test.json's: an evaluation before a rerun trained on is made
again): the protocols other than the one each run's training evaluates into its
eval_test.json (config.evals.test.protocol, hgmt by default), which is refused.
A folder of SWEEP_DIR that is not named as a run (<subset>[@seed<k>]: a backup `pose2d.old`)
is left out with a warning, here and by hgmt.report.
`--print_only` prints the commands instead (SWEEP_DIR made absolute), one line per run with
something left to do, as this host would run them: its training unless it is done, `&&` its
missing protocol evaluations; the runs that are done are left out (their number goes to
stderr), so the same call prints what is left after some runs have finished.
`--print_only --sbatch=OPTIONS` prints Slurm submissions of those instead, to pipe to a shell
from the directory the sweep is called from (the jobs take relative paths from there, as the
runs here do):

    python3 launch/sweep.py --sweep_dir=/scratch/sweep --config=configs/default.py \\
        --print_only --sbatch="--nodes=1 --gpus-per-node=8 --time=24:00:00" \\
        -- --config.data_dir=/scratch/tfds | sh

A run to train is one `HGMT_REPO=<repo> HGMT_PYTHON=<this Python> sbatch
--job-name=hgmt-<run> --output=SWEEP_DIR/%x-%j.out OPTIONS <repo>/launch/slurm.sbatch
SWEEP_DIR/<run> CONFIG:tasks=T ...` with the run's arguments (its seed, those after `--`): the
same training as here, by the same interpreter, its Slurm log in SWEEP_DIR beside the run,
with slurm.sbatch's checkpoint before the time limit and requeue (OPTIONS override its
#SBATCH defaults: 2 nodes x 8 GPUs, 48 h) and the run's own JAX compilation cache,
SWEEP_DIR/<run>/compilation_cache (jobs on several nodes
sharing the default one on a network filesystem could write one entry at once, while the
run's own is written by one job at a time and serves its requeued segments; a
`--compilation_cache=...` after `--` replaces it). A run that has trained gets one
`sbatch --job-name=hgmt-<run>-<protocol> ... OPTIONS --wrap="PYTHONPATH=<repo> python -m
hgmt.evaluate ..."` per missing protocol: run the same command again after the trainings end
to submit the protocol evaluations (one process on one node with slurm.sbatch's 8 GPUs and
32 cores unless OPTIONS say otherwise; OPTIONS may differ from the trainings'). A run whose
job is still queued or training is printed again: submit once its job has ended.

With a config that makes its demo data (a `demo` section, configs/demo.py) it first builds that
data as hgmt.main would (relative paths taken from the working directory, as the runs take
them): jobs started together would otherwise all build it into the same folder at once.

SWEEP_DIR/sweep.json records the plan (config, subsets, seeds), which the report counts
finished runs against; a later call with the same config adds its subsets and seeds to it, so
a few subsets can run first (`--tasks`), and another config in the same directory is refused.
Every run's command line is parsed as hgmt.main parses it before the plan is written: a
misspelt config, override or flag stops the sweep in one line and leaves the directory free.
A later call may change where the data is and how it is read (`SWEEP_FREE`:
`--config.data_dir`, ...), not what the runs train or how they are evaluated.
Then `python -m hgmt.report --sweep_dir=SWEEP_DIR --out_dir=REPORT_DIR` compares the subsets.
Each run keeps the config it was trained with (SWEEP_DIR/<run>/config.json); after an edit of
the config file, `python -m hgmt.report --sweep_dir=SWEEP_DIR --check_config` lists the runs
that no longer match it, and an unfinished run stops rather than train on with the edited
config (hgmt.training.resume) unless the sweep is given `--resume_with_changed_config`, which
it passes to every training run (not part of the plan; the report names the runs trained with
more than one config).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLURM_SCRIPT = os.path.join(REPO, "launch", "slurm.sbatch")  # what --sbatch submits
# A printed command's environment as `_run_env` gives the runs here: this checkout first.
HERE_PYTHONPATH = f"PYTHONPATH={shlex.quote(REPO)}${{PYTHONPATH:+:$PYTHONPATH}}"
sys.path.insert(0, REPO)

from hgmt import cli, disk_space, paths, workdirs  # noqa: E402
from hgmt.evaluation import protocols  # noqa: E402
from hgmt.study import runs  # noqa: E402
from hgmt.tasks import all_subsets, parse_tasks  # noqa: E402

if TYPE_CHECKING:
    from absl import flags


def run_args(config: str, tasks: str, sweep_dir: str, extra: list[str],
             seed_index: int = 0, resume_with_changed_config: bool = False
             ) -> tuple[str, str, list[str]]:
    """hgmt.main's arguments of one run: the subset `tasks` with the config's seed s
    (seed_index 0) or with `config.seed = s + seed_index` (its config arguments
    `runs.config_args`, which `hgmt.report --check_config` rebuilds). -> (the `--config`
    value, the workdir SWEEP_DIR/`workdirs.run_name`, the flags after them)."""
    config_arg, *rest = runs.config_args(config, tasks, extra, seed_index)
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
    --compilation_cache (why: the module's docstring). Slurm's log: SWEEP_DIR/hgmt-<run>-<job
    id>.out, beside the run (unless `options` give another --output)."""
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
    """Submits `protocol_command` to Slurm (`sbatch --wrap`), hgmt importable as `_run_env`
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
        changed = ["the config file"] if runs.without_tasks(
            plan_config(_resolved(old["config"]))) != runs.without_tasks(
                plan_config(_resolved(plan["config"]))) else trained_differently(
                    config, old["extra"], plan["subsets"][0], first)
        if changed:
            raise SystemExit(
                f"error: {sweep_dir} holds a sweep of --config={old['config']} with arguments "
                f"{old['extra']}, not --config={plan['config']} with {plan['extra']} "
                f"({', '.join(changed)} differ): give another --sweep_dir, or the same config "
                f"and arguments (where the data is and how it is read may differ: "
                f"{', '.join(SWEEP_FREE)})")
        plan = {**plan, "subsets": old["subsets"] + [
            s for s in plan["subsets"] if s not in old["subsets"]],
            "seeds": max(old["seeds"], plan["seeds"])}
    disk_space.write_atomically(path, lambda f: json.dump(plan, f, indent=1))
    return plan


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
        return workdirs.flat_fields(json.loads(parsed.to_json_best_effort()))

    try:
        before = fields(trainer.parse([*runs.config_args(config, tasks, old, 0),
                                       "--workdir=unused"]).config)
    except SystemExit:
        return ["the recorded arguments"]
    after = fields(new)
    return sorted(f for f in set(before) | set(after)
                  if before.get(f) != after.get(f) and not workdirs.is_under(f, SWEEP_FREE))


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
                         f"in the working directory or in {REPO}: give a config file such as "
                         f"configs/default.py")
    try:
        parsed = trainer.parse([*runs.config_args(f"{path}{colon}{argument}", tasks, extra, 0),
                                "--workdir=unused"])
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
                         f"{parsed.config.seed} plus {seeds - 1}, is {last}, beyond 2**32 - 1: "
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
            f"evaluation writes after training, so every call would train every run again: "
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
    """How the plan names `config` (check_first_run's, its file's path absolute): a file in
    the repository by its path from the repository root, which stays true in another
    checkout; any other file by its absolute path, which `hgmt.report --check_config` reads
    from wherever it runs."""
    path, colon, argument = config.partition(":")
    inside = os.path.relpath(path, REPO)
    if not inside.startswith(os.pardir + os.sep):
        path = inside
    return f"{path}{colon}{argument}"


def _run_env() -> dict[str, str]:
    """The runs' environment: this one with hgmt's checkout importable. They run in the
    caller's working directory, so that relative paths given to the sweep mean the same."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": REPO + (os.pathsep + path if path else "")}


# hgmt.main's status when it saved a checkpoint and stopped on a signal (its preemption
# handling, hgmt.training.preemption), repeated to keep jax out of the sweep's process.
EXIT_PREEMPTED = 75


class Stop:
    """SIGTERM to the sweep while it runs its runs (`held`): noted in `by`, and passed on to
    the run in progress (`proc`), which a training answers by saving a checkpoint and exiting
    EXIT_PREEMPTED; between runs the sweep stops before starting the next."""

    def __init__(self):
        self.by: str | None = None  # the signal that asked the sweep to stop
        self.proc: subprocess.Popen | None = None

    def note(self, signum: int, frame: types.FrameType | None) -> None:
        """The SIGTERM handler `held` sets: notes the signal, passes it on to the run."""
        self.by = self.by or signal.Signals(signum).name
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """SIGTERM noted while the block runs, where it is at its default (not where the
        sweep was started to ignore it, or a caller of `main` in the same process has its
        own handler)."""
        if signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
            yield
            return
        previous = signal.signal(signal.SIGTERM, self.note)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)


def run_logged(cmd: list[str], log: str, stop: Stop) -> tuple[int, str | None]:
    """Runs `cmd` (a run's training or evaluation) here, its output appended to `log`, until
    it ends -> (its exit status, the signal that asked the sweep to stop or None). A SIGTERM
    `stop` holds is passed on to it, one that arrived while it started too; Ctrl-C reaches it
    from the terminal, and is passed on where it did not (the sweep alone signalled). The
    sweep waits for it either way: a run left behind would train on unwatched, its workdir
    locked against the rerun."""
    with open(log, "a") as f:
        proc = stop.proc = subprocess.Popen(cmd, env=_run_env(), stdout=f,
                                            stderr=subprocess.STDOUT)
    try:
        if stop.by:  # arrived while it started
            proc.send_signal(signal.SIGTERM)
        while True:
            try:
                return proc.wait(), stop.by
            except KeyboardInterrupt:
                stop.by = "SIGINT"
                try:  # the terminal's Ctrl-C reached it too: it stops on its own
                    return proc.wait(timeout=10), "SIGINT"
                except (subprocess.TimeoutExpired, KeyboardInterrupt):
                    proc.send_signal(signal.SIGINT)
    finally:
        stop.proc = None


def _define_flags(fv: flags.FlagValues) -> None:
    from absl import flags

    flags.DEFINE_string("sweep_dir", None, "sweep directory: each run's workdir goes into it",
                        flag_values=fv, required=True)
    flags.DEFINE_string("config", None, "config file[:argument] for hgmt.main, without tasks=",
                        flag_values=fv, required=True)
    flags.DEFINE_string("tasks", None, "comma-separated subsets (default: all 15)",
                        flag_values=fv)
    flags.DEFINE_string("protocols", "", "comma-separated extra metric protocols (bodynet, "
                        "surreal) to evaluate each run with", flag_values=fv)
    flags.DEFINE_integer("seeds", 1, "runs per subset: the config's seed s, then config.seed = "
                         "s+1, s+2, ... (the report gives their mean and spread)", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_bool("print_only", False, "record the plan and print the commands of the "
                      "runs not done, run nothing", flag_values=fv)
    flags.DEFINE_string("sbatch", "", "with --print_only: print Slurm submissions through "
                        "launch/slurm.sbatch with these sbatch options (e.g. '--nodes=1 "
                        "--gpus-per-node=8 --time=24:00:00'), one job a run", flag_values=fv)
    flags.DEFINE_bool(cli.RESUME_FLAG.removeprefix("--"), False, "let unfinished runs train on "
                      "with the config file as it is now (hgmt.main's flag of that name)",
                      flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """`python launch/sweep.py --sweep_dir=DIR --config=FILE[:ARG] [--tasks=A,B]
    [--protocols=P,Q] [--seeds=N] [--print_only [--sbatch=OPTIONS]] [-- --config.x=y ...]`:
    what follows `--` goes to every `hgmt.main` run."""
    args, extra = cli.parse(_define_flags, argv, cli.usage_first(__doc__), positional="--")
    if args.sbatch and not args.print_only:
        raise SystemExit(f"error: --sbatch={args.sbatch} prints Slurm submissions and needs "
                         f"--print_only: add --print_only, or drop --sbatch to run the sweep "
                         f"here")
    try:
        sbatch_options = shlex.split(args.sbatch)
    except ValueError as e:
        raise SystemExit(f"error: --sbatch={args.sbatch}: {e}: quote it as a shell would "
                         f"(e.g. --sbatch='--nodes=1 --gpus-per-node=8')") from None
    # Each run's tasks are the sweep's: a tasks= in --config, or a --config.tasks override
    # passed on, would train other tasks in a run folder named after a subset.
    if any(a.startswith("tasks=") for a in args.config.partition(":")[2].split(",")):
        raise SystemExit(f"error: --config={args.config}: give the config without tasks=: "
                         f"the sweep names each run's tasks (--tasks=A,B; default all 15 "
                         f"subsets)")
    for arg in extra:
        if arg.lstrip("-").partition("=")[0] in ("config.tasks", "noconfig.tasks"):
            raise SystemExit(f"error: {arg} after `--`: each run trains the tasks of its "
                             f"subset (--tasks=A,B); drop it")
    if paths.is_url(args.sweep_dir):
        raise SystemExit(f"error: --sweep_dir={args.sweep_dir}: a sweep directory is a local "
                         f"folder (the sweep and hgmt.report read it with the local file "
                         f"system): give one on a local or mounted disk (a bucket mounted with "
                         f"gcsfuse, for one)")
    # One folder whatever the caller's working directory, which the runs share.
    sweep_dir = paths.absolute(args.sweep_dir)
    try:  # each subset once, however it is written (segm+pose2d is pose2d+segm)
        subsets = list(dict.fromkeys("+".join(parse_tasks(t)) for t in args.tasks.split(",")
                                     if t)) if args.tasks is not None else [
            "+".join(c) for c in all_subsets()]
    except ValueError as e:
        raise SystemExit(f"error: --tasks={args.tasks}: {e}, in each comma-separated subset "
                         f"(leave --tasks out for all 15 subsets)") from None
    if not subsets:  # an unset shell variable, say: not a request for all 15 subsets
        raise SystemExit(f"error: --tasks={args.tasks} names no subset: give them (e.g. "
                         f"--tasks=pose2d,pose2d+segm), or leave --tasks out for all 15")
    try:
        extra_protocols = [protocols.check(x) for x in args.protocols.split(",") if x]
    except ValueError as e:
        raise SystemExit(f"error: --protocols={args.protocols}: {e}") from None
    # Before the plan is recorded, which holds the sweep directory to this config: every
    # run's command line, since an override of one task's field reaches its runs only.
    config, first = check_run(args.config, subsets[0], extra, args.seeds)
    for tasks in subsets[1:]:
        check_run(args.config, tasks, extra, args.seeds)
    trained = first.evals.test.protocol  # what each run's training puts in eval_test.json
    if trained in extra_protocols:
        others = ", ".join(x for x in protocols.PROTOCOLS if x != trained)
        raise SystemExit(f"error: --protocols={args.protocols}: each run's training evaluates "
                         f"{trained} into {workdirs.result_file()} already "
                         f"(config.evals.test.protocol={trained}); list only the extra "
                         f"protocols ({others})")
    try:  # a reference protocol measures the references' label size only
        for x in extra_protocols:
            protocols.check_label_size(
                x, {t for s in subsets for t in s.split("+")}, first.image_size,
                f"drop --protocols, or train at --config.image_size="
                f"{protocols.reference_image_size()}")
    except ValueError as e:
        raise SystemExit(f"error: --protocols={args.protocols}: {e}") from None
    resume = args[cli.RESUME_FLAG.removeprefix("--")].value
    # Seed by seed: a sweep stopped half-way has every subset at the same number of seeds.
    planned = [(tasks, k) for k in range(args.seeds) for tasks in subsets]
    os.makedirs(sweep_dir, exist_ok=True)
    record_plan(sweep_dir, {"config": plan_config(config), "subsets": subsets,
                            "seeds": args.seeds, "extra": extra}, config, first)
    runs.warn_strays(sweep_dir)
    if args.print_only:
        todos = [(tasks, k, pending(sweep_dir, tasks, k, extra_protocols))
                 for tasks, k in planned]
        if "demo" in first and any(todo for *_, todo in todos):
            # built once, before the printed runs (trainings, evaluations) start together
            from hgmt import main as trainer

            logging.basicConfig(level=logging.INFO, format="%(message)s")
            trainer.prepare_demo_dataset(first)
        done = 0
        for tasks, k, todo in todos:
            done += not todo
            for why in filter(None, todo.values()):  # stdout is for the commands
                print(f"launch/sweep.py: {workdirs.run_name(tasks, k)}: {why}",
                      file=sys.stderr)
            if args.sbatch and "train" in todo:  # the evaluations once it has trained
                print(sbatch_command(sbatch_options, config, tasks, sweep_dir, extra, k,
                                     resume))
            elif args.sbatch:
                for x in todo:
                    print(sbatch_protocol_command(sbatch_options, tasks, sweep_dir, x, k))
            elif todo:
                print(" && ".join(f"{HERE_PYTHONPATH} {shlex.join(cmd)}" for _, cmd in
                                  pending_commands(todo, config, tasks, sweep_dir, extra, k,
                                                   resume)))
        if done:
            print(f"launch/sweep.py: {done} of {len(planned)} runs done already, not printed",
                  file=sys.stderr)
        return 0
    stop = Stop()
    with stop.held():
        return _run_all(planned, stop, config, sweep_dir, extra, extra_protocols, resume)


def _run_all(planned: list[tuple[str, int]], stop: Stop, config: str, sweep_dir: str,
             extra: list[str], extra_protocols: list[str], resume: bool) -> int:
    """Trains and evaluates the runs `planned` ((subset, seed number) each) here, one after
    another, each skipped where done (`pending`): `main`'s loop -> the sweep's exit status."""
    failed = []
    for i, (tasks, k) in enumerate(planned, 1):
        name = workdirs.run_name(tasks, k)
        lacks = pending(sweep_dir, tasks, k, extra_protocols)
        todo = pending_commands(lacks, config, tasks, sweep_dir, extra, k, resume)
        if not todo:
            print(f"[{i}/{len(planned)}] {name}: done already", flush=True)
            continue
        for why in filter(None, lacks.values()):
            print(f"[{i}/{len(planned)}] {name}: {why}", flush=True)
        for what, cmd in todo:
            if stop.by:  # arrived between two commands: the next is not started
                print(f"launch/sweep.py: {stop.by} received: the sweep stopped before {name} "
                      f"{what}; rerun the same command to go on", file=sys.stderr)
                _say_failed(failed)
                return EXIT_PREEMPTED
            log = os.path.join(sweep_dir, f"{name}.log" if what == "train" else
                               f"{name}.{what}.log")
            print(f"[{i}/{len(planned)}] {name}: {shlex.join(cmd)} >> {shlex.quote(log)}",
                  flush=True)
            start = time.perf_counter()
            with open(log, "a") as f:  # after the earlier attempts' segments
                f.write(f"launch/sweep.py: {name} {what}: started "
                        f"{time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}: "
                        f"{shlex.join(cmd)}\n")
            rc, stopped = run_logged(cmd, log, stop)
            status = ("ok" if rc == 0 and not stopped else
                      f"stopped by {stopped} (exit {rc})" if stopped else
                      f"stopped: it saved a checkpoint and exited {rc}" if rc == EXIT_PREEMPTED
                      else f"FAILED (exit {rc}; see {log})")
            took = f"{name} {what}: {status} in {time.perf_counter() - start:.0f} s"
            print(f"[{i}/{len(planned)}] {took}", flush=True)
            with open(log, "a") as f:  # the segment's outcome and wall time end it
                f.write(f"launch/sweep.py: {took}\n")
            if stopped or rc == EXIT_PREEMPTED:  # asked to stop: not a failure to go past
                print(f"launch/sweep.py: the sweep stopped at {name}; rerun the same command to "
                      f"go on (a training resumes from its last checkpoint)", file=sys.stderr)
                return 130 if stopped == "SIGINT" else EXIT_PREEMPTED
            if rc:
                failed.append(name)
                break
    _say_failed(failed)
    return 1 if failed else 0


def _say_failed(failed: list[str]) -> None:
    """The closing line naming the `failed` runs, if any."""
    if failed:
        print(f"failed runs: {failed}; rerun the same command to retry them (a run whose "
              f"log says CannotResume: the config file changed since it started; add "
              f"{cli.RESUME_FLAG} to train on with it)", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
