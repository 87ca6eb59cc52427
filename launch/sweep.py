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
A later call may change where the data is and how it is read (`sweep_plan.SWEEP_FREE`:
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

import logging
import os
import shlex
import sys
from typing import TYPE_CHECKING

# This checkout, importable where the file runs as a script (`python3 launch/sweep.py`).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from hgmt import cli, paths, workdirs  # noqa: E402
from hgmt.choices import not_some_of  # noqa: E402
from hgmt.evaluation import protocols  # noqa: E402
from hgmt.study import runs  # noqa: E402
from hgmt.tasks import all_subsets, parse_tasks  # noqa: E402
from launch import sweep_commands, sweep_plan, sweep_runner  # noqa: E402

if TYPE_CHECKING:
    from absl import flags


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
        raise SystemExit(f"error: --sbatch={args.sbatch}: prints Slurm submissions, so it needs "
                         f"--print_only; add --print_only, or drop --sbatch to run the sweep "
                         f"here")
    try:
        sbatch_options = shlex.split(args.sbatch)
    except ValueError as e:
        raise SystemExit(f"error: --sbatch={args.sbatch}: {e}; quote it as a shell would "
                         f"(e.g. --sbatch='--nodes=1 --gpus-per-node=8')") from None
    # Each run's tasks are the sweep's: a tasks= in --config, or a --config.tasks override
    # passed on, would train other tasks in a run folder named after a subset.
    if any(a.startswith("tasks=") for a in args.config.partition(":")[2].split(",")):
        raise SystemExit(f"error: --config={args.config}: the sweep names each run's tasks "
                         f"(--tasks=A,B; default all 15 subsets); give the config without "
                         f"tasks=")
    for arg in extra:
        if arg.lstrip("-").partition("=")[0] in ("config.tasks", "noconfig.tasks"):
            raise SystemExit(f"error: {arg} after `--`: each run trains the tasks of its "
                             f"subset (--tasks=A,B); drop it")
    if paths.is_url(args.sweep_dir):
        raise SystemExit(f"error: --sweep_dir={args.sweep_dir}: a sweep directory is a local "
                         f"folder (the sweep and hgmt.report read it with the local file "
                         f"system); give one on a local or mounted disk (a bucket mounted with "
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
        raise SystemExit(f"error: --tasks={args.tasks}: names no subset; give them (e.g. "
                         f"--tasks=pose2d,pose2d+segm), or leave --tasks out for all 15")
    extra_protocols = [x for x in args.protocols.split(",") if x]
    unknown = [x for x in extra_protocols if x not in protocols.PROTOCOLS]
    if unknown:
        given = f"--protocols={args.protocols}"
        raise SystemExit(f"error: {not_some_of(given, 'protocol', unknown, protocols.PROTOCOLS)}")
    # Before the plan is recorded, which holds the sweep directory to this config: every
    # run's command line, since an override of one task's field reaches its runs only.
    config, first = sweep_plan.check_run(args.config, subsets[0], extra, args.seeds)
    for tasks in subsets[1:]:
        sweep_plan.check_run(args.config, tasks, extra, args.seeds)
    trained = first.evals.test.protocol  # what each run's training puts in eval_test.json
    if trained in extra_protocols:
        others = ", ".join(x for x in protocols.PROTOCOLS if x != trained)
        raise SystemExit(f"error: --protocols={args.protocols}: each run's training evaluates "
                         f"{trained!r} into {workdirs.result_file()} already "
                         f"(config.evals.test.protocol={trained!r}); list only the extra "
                         f"protocols ({others})")
    try:  # a reference protocol measures the references' label size only
        for x in extra_protocols:
            protocols.check_label_size(
                x, {t for s in subsets for t in s.split("+")}, first.image_size,
                f"drop --protocols, or train at --config.image_size="
                f"{protocols.reference_image_size()}",
                f"--protocols={args.protocols}" + (f" ({x})" if len(extra_protocols) > 1
                                                   else ""))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    resume = args[cli.RESUME_FLAG.removeprefix("--")].value
    # Seed by seed: a sweep stopped half-way has every subset at the same number of seeds.
    planned = [(tasks, k) for k in range(args.seeds) for tasks in subsets]
    os.makedirs(sweep_dir, exist_ok=True)
    sweep_plan.record_plan(sweep_dir, {"config": sweep_plan.plan_config(config),
                                       "subsets": subsets, "seeds": args.seeds, "extra": extra},
                           config, first)
    runs.warn_strays(sweep_dir)
    if args.print_only:
        todos = [(tasks, k, sweep_commands.pending(sweep_dir, tasks, k, extra_protocols))
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
                print(sweep_commands.sbatch_command(sbatch_options, config, tasks, sweep_dir,
                                                    extra, k, resume))
            elif args.sbatch:
                for x in todo:
                    print(sweep_commands.sbatch_protocol_command(sbatch_options, tasks,
                                                                 sweep_dir, x, k))
            elif todo:
                print(" && ".join(
                    f"{sweep_commands.HERE_PYTHONPATH} {shlex.join(cmd)}" for _, cmd in
                    sweep_commands.pending_commands(todo, config, tasks, sweep_dir, extra, k,
                                                    resume)))
        if done:
            print(f"launch/sweep.py: {done} of {len(planned)} runs done already, not printed",
                  file=sys.stderr)
        return 0
    stop = sweep_runner.Stop()
    with stop.held():
        return sweep_runner.run_all(planned, stop, config, sweep_dir, extra, extra_protocols,
                                    resume)


if __name__ == "__main__":
    sys.exit(main())
