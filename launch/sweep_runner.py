"""Running a sweep's runs here, one after another (`run_all`): each command's output appended
to its run's log between a start and an outcome line, SIGTERM to the sweep passed on to the
run in progress (`Stop`), the sweep's exit status from the runs'."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
import types
from collections.abc import Iterator

from hgmt import cli, workdirs
from launch import sweep_commands

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
        sweep was started to ignore it, or a caller of launch/sweep.py's `main` in the same
        process has its own handler)."""
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
        proc = stop.proc = subprocess.Popen(cmd, env=sweep_commands.run_env(), stdout=f,
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


def run_all(planned: list[tuple[str, int]], stop: Stop, config: str, sweep_dir: str,
            extra: list[str], extra_protocols: list[str], resume: bool) -> int:
    """Trains and evaluates the runs `planned` ((subset, seed number) each) here, one after
    another, each skipped where done (`sweep_commands.pending`): launch/sweep.py's loop -> the
    sweep's exit status."""
    failed = []
    for i, (tasks, k) in enumerate(planned, 1):
        name = workdirs.run_name(tasks, k)
        lacks = sweep_commands.pending(sweep_dir, tasks, k, extra_protocols)
        todo = sweep_commands.pending_commands(lacks, config, tasks, sweep_dir, extra, k, resume)
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
        print(f"failed runs: {', '.join(failed)}; rerun the same command to retry them (a run "
              f"whose log says CannotResume: the config file changed since it started; add "
              f"{cli.RESUME_FLAG} to train on with it)", file=sys.stderr)
