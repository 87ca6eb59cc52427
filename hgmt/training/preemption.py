"""Preemption: a SIGTERM or SIGUSR1 makes every process save at one agreed step, then exit.

Schedulers warn before they kill a job: Slurm sends SIGTERM on preemption or `scancel` (and
the signal `--signal=USR1@<s>` asks for ahead of the time limit), a preemptible TPU VM sends
SIGTERM. `PreemptionWatch.reached(step)` says when the trainer should save and stop:

- one process: at the first step that ends after the signal;
- several processes: at the step JAX's preemption sync manager agrees on (the coordination
  service propagates one process's notice to all, and every process returns True at the same
  step, max over processes + 1), so a signal to one host makes all save the same step. That
  manager catches SIGTERM itself; SIGUSR1 is forwarded to it as a SIGTERM to this process.

The trainer then raises `Preempted`, and `hgmt.main` exits with `EXIT_PREEMPTED` (75,
sysexits' EX_TEMPFAIL: a temporary failure, rerun to resume), which launch/slurm.sbatch
requeues on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import types

import jax

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):  # noqa: N818  (a state, not an error in the program)
    """Training stopped on a preemption signal after saving a checkpoint at `step`."""

    def __init__(self, step: int, checkpoint_dir: str):
        self.step = step
        super().__init__(
            f"preempted: saved a checkpoint at step {step} in {checkpoint_dir} on a "
            f"preemption signal (SIGTERM or SIGUSR1, to this or another process). Rerun the "
            f"same command to resume from it (exit status {EXIT_PREEMPTED} = preempted)")


def _sync_manager_available() -> bool:
    """Whether JAX's preemption sync manager runs (jax.distributed.initialize started it)."""
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None


class PreemptionWatch:
    """Context manager: installs the signal handlers, restores the previous ones on exit."""

    def __init__(self) -> None:
        self.multihost = jax.process_count() > 1
        self.received: int | None = None  # the signal number, once one arrived here
        self._previous: dict[int, object] = {}

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        self.received = signum
        logging.warning("%s received: finishing this step, then saving a checkpoint",
                        signal.Signals(signum).name)
        if self.multihost and signum != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # to JAX's notifier: it syncs the step

    def __enter__(self) -> PreemptionWatch:
        if self.multihost and not _sync_manager_available():
            logging.warning("JAX's preemption service is off (jax_enable_preemption_service): "
                            "a SIGTERM will kill this multi-host run without saving")
            return self
        if threading.current_thread() is not threading.main_thread():
            logging.warning("training outside the main thread: no preemption handling "
                            "(Python installs signal handlers only in the main thread)")
            return self
        # With several processes JAX's C++ notifier owns SIGTERM; replacing it would stop
        # the notice from reaching the other processes.
        for signum in SIGNALS[1:] if self.multihost else SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def reached(self, step: int) -> bool:
        """True at the step where every process should save and stop; call it every step."""
        if self.multihost:
            from jax.experimental import multihost_utils

            return _sync_manager_available() and multihost_utils.reached_preemption_sync_point(
                step)
        return self.received is not None
