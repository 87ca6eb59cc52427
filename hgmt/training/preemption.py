"""Preemption: a SIGTERM or SIGUSR1 makes every process save at one agreed step, then exit.

Schedulers warn before they kill a job: Slurm sends SIGTERM on preemption or `scancel
--signal=TERM` (and the signal `--signal=USR1@<s>` asks for ahead of the time limit, which
launch/slurm.sbatch passes on), a preemptible TPU VM sends SIGTERM.
`PreemptionWatch.reached(step)` says when the trainer should save and stop:

- one process: at the first step that ends after the signal;
- several processes: at the step JAX's preemption sync manager agrees on (the coordination
  service propagates one process's notice to all, and every process returns True at the same
  step, max over processes + 1), so a signal to one host makes all save the same step. That
  manager catches SIGTERM itself; SIGUSR1 is forwarded to it as a SIGTERM to this process.

After the last step the evaluations after training (`config.evals.<name>.at_end`) ask
`stop_after_training()` before each evaluator and each of its batches: a signal then stops
them (every process at the same check), the last step's checkpoint already saved, so the
rerun resumes at the last step and runs those not finished (`Evaluators.finished_at_end`).

The trainer then raises `Preempted`, and `hgmt.main` exits with `EXIT_PREEMPTED` (75,
sysexits' EX_TEMPFAIL: a temporary failure, rerun to resume), which launch/slurm.sbatch
requeues on after the time limit's warning.
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
    """Training stopped on a preemption signal after saving a checkpoint at `step` (0: before
    its first step was trained, nothing saved)."""

    def __init__(self, step: int, checkpoint_dir: str, after_training: bool = False):
        self.step = step
        self.after_training = after_training  # stopped the evaluations after the last step
        if after_training:
            what = (f"stopped the evaluations after training; the last step's checkpoint "
                    f"(step {step}) is saved in {checkpoint_dir}")
            then = "resume from it and run them"
        elif step == 0:
            what = f"stopped before its first step was trained: nothing saved in {checkpoint_dir}"
            then = "start it again"
        else:
            what = f"saved a checkpoint at step {step} in {checkpoint_dir}"
            then = "resume from it"
        super().__init__(
            f"preempted: {what} on a preemption signal (SIGTERM or SIGUSR1, to this or "
            f"another process). Rerun the same command to {then} (exit status "
            f"{EXIT_PREEMPTED} = preempted)")


def _sync_manager_available() -> bool:
    """Whether JAX's preemption sync manager runs (jax.distributed.initialize started it)."""
    from jax._src import distributed

    return distributed.global_state.preemption_sync_manager is not None


class PreemptionWatch:
    """Context manager: installs the signal handlers, restores the previous ones on exit."""

    def __init__(self, last_step: int | None = None) -> None:
        self.multihost = jax.process_count() > 1
        self.received: int | None = None  # the signal number, once one arrived here
        self.last_step = last_step  # config.total_steps: what the signal's log line says
        # The step (after training: the check) last given to `reached`, or the step training
        # starts from (`start`); None before that.
        self.step: int | None = None
        self.evaluations_after = True  # whether evaluations follow the last step
        self._agreed = False  # `reached` said True: every process stops
        self._previous: dict[int, object] = {}

    def resumes_from(self, step: int) -> None:
        """With several processes, gives JAX's sync protocol `step`, the step training starts
        from (0, or a checkpoint's), as soon as it is known: a notice before the first
        step's check (while the run restores its checkpoint or compiles) is agreed on the
        step after the counter the processes last gave, which would otherwise be 0 in a
        resumed run, a sync point no step reaches. A step above the one training starts
        from (the newest checkpoint on disk, when it does not read) only agrees later."""
        if self.multihost and _sync_manager_available():
            from jax.experimental import multihost_utils

            self._agreed = self._agreed or multihost_utils.reached_preemption_sync_point(step)

    def start(self, step: int, evaluations_after: bool = True) -> None:
        """Training starts after `step` (0, or the checkpoint it resumes from, given to the
        sync protocol: `resumes_from`); `evaluations_after`: whether evaluations follow its
        last step."""
        self.step, self.evaluations_after = step, evaluations_after
        self.resumes_from(step)

    def _plan(self) -> str:
        """What the trainer does on a signal arriving now: the signal's log line."""
        if self.step is None or self.last_step is None or self.step + 1 < self.last_step:
            return "finishing this step, then saving a checkpoint"
        if self.step >= self.last_step:
            if not self.evaluations_after:
                return "training is done and no evaluation follows: the run ends as it would"
            return ("training is done: stopping the evaluations after training at their next "
                    "batch, once the last step's checkpoint is saved; rerun the same command "
                    "to run them")
        if not self.evaluations_after:
            return "finishing the last step and saving its checkpoint: the run then ends"
        return ("finishing the last step, saving its checkpoint, then stopping before the "
                "evaluations after training; rerun the same command to run them")

    def _on_signal(self, signum: int, frame: types.FrameType | None) -> None:
        del frame
        self.received = signum
        logging.warning("%s received: %s", signal.Signals(signum).name, self._plan())
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

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def reached(self, step: int) -> bool:
        """True at the step where every process should save and stop (and after it); call it
        every step."""
        self.step = step
        if self.multihost:
            from jax.experimental import multihost_utils

            agreed = _sync_manager_available() and \
                multihost_utils.reached_preemption_sync_point(step)
        else:
            agreed = self.received is not None
        self._agreed = self._agreed or agreed
        return self._agreed

    def stop_after_training(self) -> bool:
        """After the last step: True once every process should stop (also when `reached` said
        so at the last step). Every process calls it at the same points (before each
        evaluation after training and each of its batches); with several processes each call
        is one more check of JAX's sync protocol (after the last step's, numbered on from
        it), so all return True at the same call."""
        if self._agreed:
            return True
        step = self.step if self.step is not None else 0
        return self.reached(max(step, self.last_step or 0) + 1)
