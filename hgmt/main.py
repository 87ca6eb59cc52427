"""hgmt's command line: train (resuming from the workdir), then evaluate.

    python -m hgmt.main --config=configs/default.py:tasks=pose2d+segm --workdir=DIR \\
        [--config.batch_size=64 ...]

With configs/demo.py the demo dataset is generated and built first unless built already
(from the same demo settings). The evaluations after the last step (config.evals' `at_end`)
end the output: each one's Markdown table, then its JSON line on stdout (the workdir, its
eval_<name>.json, the step, the headline numbers).

Multi-host: in a cluster JAX reads (--distributed's help names them),
`jax.distributed.initialize()` finds its peers itself (`--distributed`); elsewhere pass
--coordinator_address, --num_processes and --process_id (the last two without the first are
refused: each process would train alone). A dead process is detected within --heartbeat_timeout
seconds (hgmt.training.peers).

Exit status 75 (hgmt.training.preemption.EXIT_PREEMPTED): stopped by SIGTERM/SIGUSR1 after saving a
checkpoint; rerun the same command to resume. Exit status 69 (hgmt.training.peers.EXIT_PEER_LOST):
another process of a multi-host run died ("PeerLost: lost process(es) N of M at step S"); rerun
the job to resume from the last checkpoint. A dead process 0, which hosts JAX's coordination
service, makes JAX abort the others at once instead (SIGABRT, status 134 in a shell, no line
of hgmt's): rerun the job likewise. Exit status 1: a fault that needs you (a full disk, out
of device memory, a damaged shard, a non-finite loss, a workdir held by another trainer), named
in one error line that says what is intact and what to do (its traceback with --verbosity=1);
in a multi-host run the other processes then stop too, with status 1 and "PeerFailed: process
N failed at step S: <Kind>: <message>".
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import TYPE_CHECKING

from absl import flags

from hgmt import cli, compilation_cache, console, paths, stops
from hgmt.training import coordinator

if TYPE_CHECKING:
    import ml_collections

RESUME = cli.RESUME_FLAG.removeprefix("--")  # the flag's name
EXIT_INTERRUPTED = stops.EXIT_INTERRUPTED  # Ctrl-C, as shells report it


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "The training workdir: checkpoints, summaries and "
                        "results go there.", flag_values=fv, required=True)
    flags.DEFINE_bool("distributed", False, "Join a multi-process job whose settings a cluster "
                      f"gives ({coordinator.CLUSTERS_READ}), as "
                      "jax.distributed.initialize() reads them.",
                      flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).",
                        flag_values=fv)
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).",
                         flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).",
                         flag_values=fv)
    compilation_cache.define_flag(fv)
    flags.DEFINE_integer("heartbeat_timeout", 60, "Multi-host: seconds without a heartbeat "
                         "after which a process counts as dead and the others stop (at least "
                         "hgmt.training.peers.MIN_HEARTBEAT_TIMEOUT_S, 5).", flag_values=fv)
    flags.DEFINE_integer("connect_timeout", 300, "Multi-host: seconds a process waits for "
                         "every process of the job to connect to the coordinator before it "
                         "stops, naming what to check.", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool(RESUME, False, "Resume a workdir whose checkpoints "
                      "were trained with another config (its config.json) with this one: "
                      "config.json then records it, the previous one kept as "
                      "config_before_step<N>.json. Without it such a rerun stops naming each "
                      "changed field; evaluators, logging, checkpointing and data-reading "
                      "fields may change freely.", flag_values=fv)
    cli.define_verbosity(fv)


def prepare_demo_dataset(config: ml_collections.ConfigDict) -> None:
    """Generates the demo clips and builds them with the TFDS builder, unless built already
    (`demo.build`), into the folders the training reads (`paths.absolute` of
    config.demo.surreal_root and config.data_dir: `~` expanded, as `loop.run` takes them)."""
    from hgmt import cores
    from hgmt.data import demo, worker_signals

    # The clips are written in spawned processes, which start multiprocessing's resource
    # tracker: started here with SIGUSR1 blocked, as the loader would, so that Slurm's SIGUSR1
    # to the whole job later does not kill it (`resource_tracker_without_sigusr1`).
    worker_signals.resource_tracker_without_sigusr1()
    demo.build(paths.absolute(config.demo.surreal_root), paths.absolute(config.data_dir),
               config.demo.clips_per_split, config.demo.frames, config.demo.seed,
               dataset=config.dataset, workers=cores.usable_cores())


def _demo_dataset_on_process_0(config: ml_collections.ConfigDict) -> None:
    """Process 0 prepares the demo dataset (`prepare_demo_dataset`; a full disk or quota is
    `disk_space.DiskFull` naming data_dir) while the others wait; when it fails, every process
    stops: process 0 with its error, the others with `peers.PeerFailed` naming it, as for a
    peer that failed before the first step, rather than waiting in a barrier for a process
    that left."""
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    from hgmt import disk_space
    from hgmt.training import peers

    def prepare() -> None:
        with disk_space.reported(config.data_dir, f"the demo clips "
                                 f"({config.demo.surreal_root}) and their build"):
            try:
                prepare_demo_dataset(config)
            except OSError as e:  # its two folders named as the fix
                if e.errno not in disk_space.UNWRITABLE_CODES:
                    raise
                where = f" ({e.filename})" if e.filename else ""
                raise ValueError(
                    f"cannot write the demo data: {e.strerror}{where}; give "
                    f"config.demo.surreal_root={config.demo.surreal_root} and "
                    f"config.data_dir={config.data_dir} folders on a writable file "
                    f"system") from None

    if jax.process_count() == 1:
        prepare()
        return

    failure = None
    if jax.process_index() == 0:
        try:
            prepare()
        except Exception as e:  # noqa: BLE001  (told to the others, then raised here)
            failure = e
    failed = multihost_utils.broadcast_one_to_all(np.int32(failure is not None))
    if failure is not None:
        raise failure
    if failed:
        raise peers.PeerFailed(
            f"process 0 failed before the first step: it could not prepare the demo dataset "
            f"(process 0's log names the error): this is process {jax.process_index()}, "
            f"stopping. Fix that error, then rerun the job")


def _hide_accelerators_from_tensorflow() -> None:
    """Where JAX runs on GPUs and TensorFlow is installed (TFDS uses it to build the demo
    data, epath to reach an object store), TensorFlow must not take the GPUs from JAX.
    Elsewhere TensorFlow is not imported: training, evaluation and prediction need none."""
    import jax

    if jax.default_backend() != "gpu":
        return
    try:
        import tensorflow as tf
    except ImportError:
        return
    tf.config.set_visible_devices([], "GPU")


def parse(argv: list[str] | None) -> flags.FlagValues:
    """hgmt.main's command line parsed, its config file read with its arguments and overrides
    (launch/sweep.py checks its runs' with it); a bad flag, config or argument, or a multi-host
    flag without the others it needs, exits in one line before any work."""
    FLAGS, _ = cli.parse(_define_flags, argv, cli.usage_first(__doc__), config_file=True)
    if FLAGS.config is None:
        raise SystemExit("error: --config is required: a config file such as "
                         "configs/default.py:tasks=all")
    if not FLAGS.workdir.strip():
        # `--workdir=$WORKDIR` with the variable unset: training would write into the current
        # folder.
        raise SystemExit("error: --workdir is empty; give the folder the run writes its "
                         "checkpoints and results to (made if missing)")
    if FLAGS.workdir.startswith("-"):
        # What a launch script passes on when its WORKDIR argument was left out and a flag
        # took its place (`sbatch launch/slurm.sbatch --config.x=y`).
        raise SystemExit(f"error: --workdir={FLAGS.workdir} starts with '-': a flag where "
                         f"the workdir goes? The launch scripts take WORKDIR first "
                         f"(launch/slurm.sbatch WORKDIR [CONFIG[:ARG]] [flags...]); for a "
                         f"folder whose name starts with '-' give ./{FLAGS.workdir}")
    from hgmt.training import peers

    if FLAGS.heartbeat_timeout < peers.MIN_HEARTBEAT_TIMEOUT_S:
        raise SystemExit(f"error: --heartbeat_timeout={FLAGS.heartbeat_timeout}: give at least "
                         f"{peers.MIN_HEARTBEAT_TIMEOUT_S} seconds (the watchdog beats every "
                         f"{peers.INTERVAL_S} s; a shorter timeout reads a late beat as a dead "
                         f"process)")
    given = [f"--{name}" for name in ("num_processes", "process_id")
             if FLAGS[name].value is not None]
    if given and not (FLAGS.coordinator_address or FLAGS.distributed):
        raise SystemExit(f"error: {' and '.join(given)} need{'s' * (len(given) == 1)} "
                         f"--coordinator_address=host:port "
                         f"of process 0 as well (a multi-host run gives all three), or "
                         f"--distributed, which reads them from the cluster "
                         f"({coordinator.CLUSTERS_READ}); "
                         f"without either each process would train alone as process 0 of 1")
    _check_job_flags(FLAGS)
    return FLAGS


def _check_job_flags(fv: flags.FlagValues) -> None:
    """A malformed coordinator address (`coordinator.address_format_error`: the one JAX takes,
    named as it was given) or a --num_processes / --process_id out of range exits in one line
    naming the flag or variable and the fix."""
    count, index = fv.num_processes, fv.process_id
    wrong = coordinator.address_format_error(fv.coordinator_address, fv.distributed)
    if wrong:
        raise SystemExit(f"error: {wrong}")
    if count is not None and count < 1:
        raise SystemExit(f"error: --num_processes={count}: give the number of processes of "
                         f"the job, at least 1")
    if index is not None and (index < 0 or count is not None and index >= count):
        within = f"0 to {count - 1} (--num_processes={count})" if count else "0 or more"
        raise SystemExit(f"error: --process_id={index}: give this process's index, {within}, "
                         f"each process its own")


def main(argv: list[str] | None = None) -> int:
    """`python -m hgmt.main --config=configs/x.py[:arg] --workdir=DIR [--config.x=y ...]`.
    Given `argv` (a caller in the same process), it gives the console's handlers back as they
    were when it returns; as the command (`argv` None: sys.argv) it keeps them filtered until
    the process exits."""
    FLAGS = parse(argv)
    # The console's handlers show the user's lines only, for this run: a caller of main() in
    # the same process (a test, a notebook) gets its handlers back as they were; the command
    # keeps the filter while the process exits, when asyncio logs the failed writes of a full
    # disk's checkpoint that orbax never retrieved. absl's line format (level, date, time,
    # thread, file:line), as app.run would give it.
    with console.console(FLAGS.verbosity, command=argv is None,
                         line_format="%(levelname).1s%(asctime)s.%(msecs)03d000 %(thread)d "
                                     "%(filename)s:%(lineno)d] %(message)s",
                         date_format="%m%d %H:%M:%S"):
        return _run(FLAGS, command=argv is None)


def _run(fv: flags.FlagValues, command: bool) -> int:
    """The run of `main`, its flags parsed and its console set up; -> exit status. Ctrl-C
    ends the command in one line with status 130; a caller in the same process (`command`
    False: a notebook's interrupt) gets its KeyboardInterrupt."""
    import jax

    compilation_cache.enable(fv.compilation_cache)
    from hgmt.training import checkpoint_write_faults, cluster, peers, preemption, resume

    if fv.coordinator_address or fv.distributed:
        with cli.faults_in_one_line(ValueError, traceback=fv.verbosity >= 1):
            cluster.initialize(fv.coordinator_address, fv.num_processes, fv.process_id,
                               heartbeat_timeout_s=fv.heartbeat_timeout,
                               connect_timeout_s=fv.connect_timeout)
            # Every process must train the same run: before anything is read or written.
            cluster.check_same_settings(
                {"config": json.loads(fv.config.to_json_best_effort()),
                 "workdir": paths.absolute(fv.workdir), RESUME: fv[RESUME].value,
                 "num_processes": fv.num_processes},
                free=tuple(f"config.{f}" for f in resume.DATA_LOCATION))
        # The job's progress is process 0's: the others show their warnings and errors
        # (--verbosity=1: everything).
        console.show_progress(jax.process_index() == 0)
    _hide_accelerators_from_tensorflow()

    from hgmt import workdirs
    from hgmt.evaluation import markdown, report_files
    from hgmt.training import config_check, loop

    checkpoint_write_faults.ignore_callbacks_into_closed_loops()

    config = fv.config
    logging.info("process %d/%d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    # A bad value stops here, in one line, before the demo data or the workdir are touched.
    with cli.faults_in_one_line(ValueError, traceback=fv.verbosity >= 1):
        config_check.check_config(config, warn=False)  # its warnings: the trainer's check's
        # A config the workdir's checkpoints were not trained with: before the demo data,
        # which another demo.* setting would make again (the trainer checks it too).
        resume.check_config(config, fv.workdir, fv[RESUME].value)
    try:
        # A Ctrl-C that Python dropped in a garbage-collection callback stops the run all
        # the same (`ctrl_c_is_the_stop`).
        with stops.ctrl_c_is_the_stop(), \
                cli.faults_in_one_line(*loop.FAULTS, traceback=fv.verbosity >= 1):
            if "demo" in config:
                # In the try, so that a failure ends a multi-process run as any other does
                # (the others as for a failed peer); a bad demo.* value is one line too.
                with cli.faults_in_one_line(ValueError, traceback=fv.verbosity >= 1):
                    _demo_dataset_on_process_0(config)
            summaries = loop.train_and_evaluate(
                config, fv.workdir, resume_with_changed_config=fv[RESUME].value)
    except preemption.Preempted as e:
        logging.warning("%s", e)
        return preemption.EXIT_PREEMPTED
    except peers.PeerLost as e:  # PeerFailed too: exit status 1, the failed process named
        peers.exit_lost(e)  # one line, exit status 69, no exit barrier with the dead peer
    except KeyboardInterrupt:  # Ctrl-C: one line, no traceback, the shell's status 130
        if not command and jax.process_count() == 1:
            raise
        stops.ignore_further_interrupts()
        line = (f"interrupted (Ctrl-C): stopped at once, without saving; rerun the same "
                f"command to resume from the workdir's newest checkpoint. To stop with a "
                f"checkpoint of the step being trained, send SIGTERM instead (kill "
                f"{os.getpid()}): it saves and exits {preemption.EXIT_PREEMPTED}")
        if jax.process_count() == 1:  # without JAX's atexit teardown (`end_interrupted`)
            stops.end_interrupted(line)
        print(line, file=sys.stderr)
        peers.exit_failed(SystemExit(EXIT_INTERRUPTED))  # the peers stop on reading it
    except BaseException as e:
        if jax.process_count() > 1:  # no exit barrier: the peers stop on reading the failure
            peers.exit_failed(e)
        raise
    if jax.process_index() == 0:
        for name, summary in summaries.items():
            out = workdirs.eval_file(fv.workdir, name)
            print(markdown.to_markdown(summary))
            print(report_files.result_line(summary, fv.workdir, out, config.total_steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
