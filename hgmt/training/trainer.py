"""The training steps and the evaluations after them (`Trainer`), once `hgmt.training.loop.run`
has checked the config, opened the data, the checkpoint manager, the evaluators and the
TensorBoard writer, and restored the newest readable checkpoint: each step dispatched without
a host copy, its metrics checked at log steps and before every save, checkpoints and
evaluations when due, a preemption's save and stop, and the final state and evaluations."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from hgmt import console, devices, disk_space, workdirs
from hgmt.data import damage, input_pipeline, prefetch
from hgmt.models import MultiTaskHourglass, to_checkpoint_layout
from hgmt.training import (
    checkpoint_digests,
    checkpoint_write_faults,
    device_memory,
    evaluators,
    peers,
    preemption,
    resume,
    step_metrics,
    steps,
    workdir_lock,
)


class Trainer:
    """The training steps from the state restored or fresh to config.total_steps, then the
    evaluations after training, with what they share: the checkpoint manager and the write
    it may still be making, the state on the devices and the outputs of the last step
    dispatched, the interval's timing and the ETA's clock. Orderings that matter: the
    damaged records met up to a step are synced before its checkpoint is saved (the
    checkpoint's data position is after them); a step's batch is consumed before its state
    is saved; the interval and the ETA's clock start after the evaluations a preemption
    skipped."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *,
                 model: MultiTaskHourglass, state: steps.TrainState,
                 restored_state: steps.TrainState | None, mngr: ocp.CheckpointManager,
                 evals: evaluators.Evaluators, writer: disk_space.CheckedWriter,
                 data_iter: prefetch.ConsumedPosition, damaged: damage.DamageLog | None,
                 watch: preemption.PreemptionWatch, peer_watch: peers.PeerWatch | None,
                 lock: workdir_lock.WorkdirLock | None, train_step: Callable):
        self.config, self.workdir, self.model, self.mngr = config, workdir, model, mngr
        self.evals, self.writer, self.data_iter, self.damaged = evals, writer, data_iter, damaged
        self.watch, self.peer_watch, self.lock = watch, peer_watch, lock
        self.start_step = int(state.step)
        self.restored = restored_state is not None  # whether this run resumed a checkpoint
        # The restored host state, which `host_state` gives for the step resumed from while
        # no step has trained since.
        self.restored_state = restored_state
        self.state = devices.replicate(state)
        self.train_step = train_step
        self.device_iter = prefetch.prefetch_to_device(data_iter.batches(),
                                                       config.prefetch)
        self.metrics = step_metrics.StepMetrics()
        # Evaluated op by op (eagerly), not compiled: XLA would turn the schedule's divisions
        # by constants into multiplications and fold its constants, which rounds otherwise.
        self.lr_fn = steps.create_lr(config)
        self.step_values = None  # the last dispatched step's outputs: ready once it ran
        self.saving = None  # the step of the newest checkpoint orbax may still be writing
        self.joined = True  # whether the outcome of that write was read (its thread joined)
        # The log interval's training time (`step_metrics.Interval`), and the ETA's clock: the
        # wall time since training began (after the first step's compilation), evaluations
        # and saves included, and the step it began at. Both start with the steps
        # (`_start_timing`), after the evaluations a preemption skipped.
        self.interval: step_metrics.Interval | None = None
        self.eta_start_time, self.eta_start_step = 0.0, self.start_step

    def close_batches(self) -> None:
        """Ends the batches' generators, which hold the last batch drawn from the loader (in
        its workers' shared memory, until the interpreter's exit otherwise); the loader
        itself is closed after (`prefetch.ConsumedPosition.close`)."""
        self.device_iter.close()

    # --- Checks and stops, at every step and evaluation batch --------------------------------

    def lock_check(self) -> None:
        """Before each step, and each evaluation and each of its batches: a lock lost
        meanwhile stops the run there (an evaluation can outlast the time after which another
        trainer may take the workdir)."""
        if self.lock is not None:
            self.lock.check()

    def stop_if_preempted(self) -> None:
        """Before each evaluation after training and each of its batches (those the last
        step's run did not make included): a lost lock (`lock_check`) stops the run here; so
        does a signal since the last step (or at it), every process at the same check: the
        last step is saved (by the loop, or it is the checkpoint this run resumed from), and
        the rerun resumes there and runs those not finished
        (`Evaluators.finished_at_end`)."""
        self.lock_check()
        if self.watch.stop_after_training():
            self.stop_preempted(self.config.total_steps, None, after_training=True)

    def stop_preempted(self, step: int, saving: int | None, after_training: bool = False
                       ) -> None:
        """Raises Preempted once the checkpoint of `step` is written (`saving`: the step orbax
        may still be writing), every process together; `after_training`: it stops the
        evaluations after the last step."""
        with self.stop_on_full_disk(saving):
            self.mngr.wait_until_finished()
        # exit together, after process 0 finalised the save
        devices.barrier("preemption checkpoint saved")
        raise preemption.Preempted(step, workdirs.checkpoint_dir(self.workdir), after_training)

    @contextlib.contextmanager
    def stop_on_full_disk(self, step: int | None, non_finite: str | None = None
                          ) -> Iterator[None]:
        """`checkpoint_write_faults.stop_on_full_disk` of a checkpoint write of `step` (the
        step orbax may still be writing, for a wait): its DiskFull, the first fault by step
        (a checkpoint is saved only of a finite state), also names a non-finite loss met
        since, `non_finite` (what the caller found) or one the steps not checked yet hold,
        with its fix: the rerun with space would diverge again."""
        try:
            with checkpoint_write_faults.stop_on_full_disk(self.workdir, step):
                yield
        except disk_space.DiskFull as e:
            if non_finite is None:
                with contextlib.suppress(Exception):  # the device's own error: not this one's
                    bad = self.metrics.check()
                    non_finite = None if bad is None else _non_finite_loss(bad)
            if non_finite is None:
                raise
            raise disk_space.DiskFull(e.errno, f"{e.strerror}. Besides, {non_finite}: "
                                               f"{_ADVICE.lower()} before that rerun, with "
                                               f"{resume.FLAG}") from e

    def check_finite(self) -> None:
        """Stops on the first non-finite step since the last check, before any save."""
        bad = self.metrics.check()
        if bad is None:
            return
        with self.stop_on_full_disk(self.saving, _non_finite_loss(bad)):
            self.mngr.wait_until_finished()
        raise FloatingPointError(
            f"non-finite loss at step {bad.step} in task(s) {', '.join(bad.tasks)}: "
            f"{bad.metrics} (steps {bad.first}..{bad.last} checked together). Nothing was "
            f"saved for it or after it; "
            f"{after_non_finite(self.mngr.latest_step(), self.workdir)}")

    # --- The state on the host: saves and evaluations ----------------------------------------

    def host_state(self, step: int) -> steps.TrainState:
        """The state on the host, BatchNorm statistics averaged, for a save or a validation;
        a non-finite loss since the last check or a non-finite state stops the run here. At
        the step resumed from, the restored state itself."""
        if step == self.start_step and self.restored_state is not None:
            return self.restored_state
        self.check_finite()
        host = devices.to_host(steps.sync_batch_stats(self.state))
        bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(host)
               if np.issubdtype(np.asarray(v).dtype, np.inexact) and not np.isfinite(v).all()]
        if bad:
            with self.stop_on_full_disk(self.saving, f"the train state after step {step} is "
                                                     f"non-finite (e.g. {bad[:3]})"):
                self.mngr.wait_until_finished()
            raise FloatingPointError(
                f"non-finite train state after step {step} (e.g. {bad[:3]}) although its "
                f"losses are finite; nothing was saved for it, "
                f"{after_non_finite(self.mngr.latest_step(), self.workdir)}")
        return host

    def save_and_evaluate(self, step: int, *, checkpoint: bool = True,
                          evaluate: list[str] | None = None) -> None:
        """Once the device has run `step`, the state after it on the host (`host_state`,
        which stops the run on a non-finite loss or state) saved as the checkpoint of `step`
        (when `checkpoint`) and evaluated by the evaluators `evaluate`; this time is set apart
        from the interval's training time, and a full disk stops the run as
        `disk_space.DiskFull` (`checkpoint_write_faults.stop_on_full_disk`). The damaged
        records met up to `step` are to be synced (`damaged.sync`) before: the checkpoint's
        data position is after them."""
        jax.block_until_ready(self.step_values)  # the step is training time; what follows not
        with self.interval.set_apart(), self.stop_on_full_disk(step):
            host = self.host_state(step)
            if checkpoint:
                self.mngr.save(step, args=ocp.args.Composite(
                    **checkpoint_digests.saved(to_checkpoint_layout(self.model, host)),
                    data=input_pipeline.grain.PyGrainCheckpointSave(self.data_iter)))
            if evaluate:
                self._evaluate(evaluate, step, host, stop=self.lock_check)

    def _evaluate(self, names: list[str], step: int, host: steps.TrainState, *,
                  stop: Callable[[], None], final: bool = False) -> dict[str, dict]:
        """`Evaluators.run` of the evaluators `names` on `host`, the state after `step`; out of
        device memory is named as the evaluation's batch beside the train state."""
        with device_memory.explained(self.config, "while evaluating", "eval_batch_size",
                                     beside_train_state=True):
            return self.evals.run(names, step, host, self.writer, final=final, stop=stop)

    def set_aside_what_follows_the_start(self) -> None:
        """Moves aside what evaluations recorded of the steps after the one training starts
        from, and a best checkpoint one of them chose (`Evaluators.supersede_after`,
        `forget_after`)."""
        superseded = self.evals.supersede_after(self.start_step)
        if superseded:
            logging.info("moved %s of the steps after %d, where training starts again, to %s",
                         ", ".join(superseded), self.start_step,
                         workdirs.evals_superseded_dir(self.workdir))
        forgotten = self.evals.forget_after(self.start_step,
                                            lambda: devices.to_host(self.state))
        if forgotten:
            logging.warning("moved the best checkpoint kept at step %s in %s to %s: chosen by "
                            "an evaluation after step %d, where training starts again",
                            ", ".join(map(str, forgotten)), workdirs.best_dir(self.workdir),
                            workdirs.superseded_dir(self.workdir), self.start_step)

    def evaluate_missed(self) -> None:
        """A preemption at an evaluation step saved it without evaluating: evaluated on
        resuming (at the last step, as the evaluations after training: a signal stops them).
        Then, where steps train from here, the restored state is not held through
        training."""
        start = self.start_step
        missed = [] if not self.restored else [n for n in self.evals.due(start)
                                               if n not in self.evals.recorded(start)]
        if missed:
            logging.info("evaluating step %d, which its run did not: %s", start,
                         ", ".join(missed))
            self._evaluate(missed, start, self.host_state(start),
                           stop=self.stop_if_preempted
                           if start == self.config.total_steps else self.lock_check)
        if start < self.config.total_steps:
            self.restored_state = None

    def log_plan(self, tasks: tuple[str, ...], augment_on: str) -> None:
        """The line that says what this run trains, from which step, on what."""
        config, count = self.config, jax.device_count()
        if self.start_step == config.total_steps:
            logging.info("training %s ended at step %d: what is left to do after it runs now",
                         "+".join(tasks), self.start_step)
        else:
            logging.info("training %s for steps %d..%d, %d device%s, global batch %d, "
                         "augmentation on the %s", "+".join(tasks), self.start_step,
                         config.total_steps, count, "s" * (count != 1), config.batch_size,
                         augment_on)

    # --- The steps ----------------------------------------------------------------------------

    def train(self) -> None:
        """Trains the steps after `start_step` up to config.total_steps: each step's batch,
        its dispatch, its log line, checkpoint and evaluations when due, and a preemption's
        save and stop."""
        config = self.config
        self._start_timing(self.start_step)
        for step in range(self.start_step + 1, config.total_steps + 1):
            self._join_finished_write()
            self.lock_check()  # another trainer may take the workdir: stop before writing more
            batch = self._next_batch(step)
            self.state, self.step_values = self.train_step(self.state, batch)
            # no host copy: the next step queues behind it
            self.metrics.append(step, self.step_values)
            preempted = self.watch.reached(step)
            if (step == self.start_step + 1 and step % config.log_every
                    and step < config.total_steps):
                # The first step compiles: timed apart from img/s and the ETA.
                jax.block_until_ready(self.step_values)
                logging.info("step %d (compilation included) took %.1f s", step,
                             self.interval.training_time())
                self._start_timing(step)
            # At the last step too when evaluations were due there: they are skipped, below.
            stopping = preempted and (step < config.total_steps or bool(self.evals.due(step)))
            checkpoint_due = (step % config.checkpoint_every == 0
                              or step == config.total_steps or preempted)
            log_due = step % config.log_every == 0 or step == config.total_steps
            if self.damaged is not None and (log_due or checkpoint_due):
                # The damaged records all processes met, counted (and judged) alike
                # everywhere, and in the file before a checkpoint of the position after them
                # is saved.
                self.damaged.sync()
            if log_due:
                self._log(step)
            # A preempted job has no time to evaluate: the step is saved, and the rerun
            # evaluates it first (`evaluate_missed`).
            evals_due = [] if preempted else self.evals.due(step)
            if checkpoint_due or evals_due:
                self.save_and_evaluate(step, checkpoint=checkpoint_due, evaluate=evals_due)
                if checkpoint_due:
                    self.saving, self.joined = step, False
            if stopping:
                self.stop_preempted(step, self.saving,
                                    after_training=step == config.total_steps)

    def _join_finished_write(self) -> None:
        """Once orbax's write of the newest checkpoint has ended, joins its thread, which
        raises its error now, not at the next save (no collective: processes may see it end
        at different steps). Not `check_for_errors`: run before orbax's finalize thread reads
        the error, it takes it from that thread, which then deletes the old checkpoints as
        after a good write (with keep_checkpoints=1 the only one left); run after, it finds
        nothing."""
        if not self.joined and not self.mngr.is_saving_in_progress():
            self.joined = True
            with self.stop_on_full_disk(self.saving):
                self.mngr.wait_until_finished()

    def _next_batch(self, step: int):
        """The batch of `step` on the devices, its wait for data counted in the interval. A
        loader that fails after a preemption signal in a one-process run stops it as a
        preemption at the step before, saved."""
        t0 = time.perf_counter()
        if self.peer_watch is not None:
            self.peer_watch.step = step  # what a lost peer's message names
        try:
            batch = next(self.device_iter)
        except Exception:
            if self.watch.received is None or self.watch.multihost:
                raise
            self._stop_after_loader_failure(step - 1)
        self.data_iter.consumed()
        waited = time.perf_counter() - t0
        self.interval.wait += waited
        if self.step_values is None or device_done(self.step_values):
            self.interval.idle += waited  # the device ran out of steps during the wait
        return batch

    def _stop_after_loader_failure(self, last: int) -> NoReturn:
        """The loader's workers ignore the job's signals, from their start
        (worker_signals.WorkersStartShielded), but the job's shutdown may end them by other
        means: the run stops at `last`, the step before, saved, as a preemption."""
        logging.exception("the loader failed after the preemption signal: %s and stopping",
                          f"saving step {last} (the last one trained)" if last else
                          "no step trained, nothing to save")
        # Not the step training started from: saved already, or 0, the untrained weights.
        if last != self.saving and last != self.start_step:
            if self.damaged is not None:
                self.damaged.sync()
            self.save_and_evaluate(last)
            self.saving = last
        self.stop_preempted(last, self.saving)

    def _log(self, step: int) -> None:
        """The log step's line and TensorBoard scalars: the interval's mean losses, img/s,
        data wait and device idle time, learning rate, damaged records, and the ETA. Checks
        the losses first (`check_finite`: the one host sync of a log interval). A first step
        that logs (`--config.log_every=1`) compiled: its line gives its time instead of the
        rates and ETA (`step_metrics.pace`), which start from the next line."""
        config, interval = self.config, self.interval
        self.check_finite()  # waits for this step: the one host sync of a log interval
        elapsed = interval.training_time()
        compiled = step == self.start_step + 1
        pace = step_metrics.pace(
            steps=step - interval.step, batch_size=config.batch_size, training_s=elapsed,
            wait_s=interval.wait, idle_s=interval.idle, steps_left=config.total_steps - step,
            steps_timed=step - self.eta_start_step,
            timed_s=time.perf_counter() - self.eta_start_time,
            compiled=compiled)
        means = self.metrics.pop_means()
        rates = {} if pace.img_per_s is None else {
            "img_per_s": pace.img_per_s, "data_wait": pace.data_wait,
            "data_idle": pace.data_idle}
        self.writer.write_scalars(step, {
            **means, **rates,
            # this step's update's: optax counts from 0
            "learning_rate": float(self.lr_fn(step - 1)),
            **({} if self.damaged is None else {
                "data/damaged_records": len(self.damaged.found)})})
        losses = "  ".join(f"{k.split('/')[1]} {v:.4g}" for k, v in means.items())
        if pace.img_per_s is None:
            logging.info("step %d/%d  %s  took %.1f s, compilation included%s", step,
                         config.total_steps, losses, elapsed,
                         ": img/s, data wait and ETA from the next line" if pace.eta_s is None
                         else "")
        else:
            logging.info("step %d/%d  %s  %.1f img/s  data-wait %.0f%% (device idle %.0f%%)  "
                         "ETA %s", step, config.total_steps, losses, pace.img_per_s,
                         100 * pace.data_wait, 100 * pace.data_idle, console.hms(pace.eta_s))
        if compiled:  # the rates and the ETA leave the compilation out
            self._start_timing(step)
        else:
            interval.restart(step)

    def _start_timing(self, step: int) -> None:
        """Starts a log interval and the ETA's clock at `step`: as the steps start, and again
        after the first one, whose compilation they leave out."""
        self.interval = step_metrics.Interval(step)
        self.eta_start_time, self.eta_start_step = time.perf_counter(), step

    # --- After the last step ------------------------------------------------------------------

    def finish(self) -> tuple[steps.TrainState, dict[str, dict]]:
        """The final state on the host, once the last checkpoint is written, and the
        evaluations after training: -> (state, {evaluator: summary})."""
        config, evals = self.config, self.evals
        final = self.host_state(config.total_steps)
        with self.stop_on_full_disk(self.saving):
            self.mngr.wait_until_finished()
        if self.damaged is not None and self.damaged.found:
            logging.warning("%s", self.damaged.summary())
        self.lock_check()
        # Those an earlier run finished at this step, the one resumed from (it was stopped
        # between two of them, or it ended), with this config, are not run again.
        finished = (evals.finished_at_end(self.start_step, final)
                    if self.restored and self.start_step == config.total_steps else {})
        if finished:
            logging.info("step %d's evaluations after training that an earlier run finished, "
                         "kept: %s", self.start_step, ", ".join(
                             workdirs.eval_file(self.workdir, n) for n in finished))
        summaries = self._evaluate([n for n in evals.at_end() if n not in finished],
                                   int(final.step), final, stop=self.stop_if_preempted,
                                   final=True)
        if self.watch.received is not None and self.watch.evaluations_after:
            # Its line said the evaluations would stop; their last batch was already running.
            logging.warning("the evaluations after training finished before the signal could "
                            "stop them: the run is complete, nothing to rerun")
        return final, {n: finished.get(n) or summaries[n] for n in evals.at_end()}


def device_done(values: Any) -> bool:
    """Whether the device has computed `values`, the outputs of the last step dispatched to
    it: steps run in order, so then it has no step queued. A wait for data that ends with it
    done counts whole as device idle time (an upper bound: the device may have finished
    during the wait)."""
    return all(x.is_ready() for x in jax.tree.leaves(values))


_ADVICE = "Lower optimizer.learning_rate or set optimizer.grad_clip_norm"


def _non_finite_loss(bad: step_metrics.NonFinite) -> str:
    """What a full disk's error adds of a non-finite loss (`bad`) met besides."""
    return (f"the loss is non-finite at step {bad.step} in task(s) {', '.join(bad.tasks)} "
            f"({bad.metrics})")


def after_non_finite(latest: int | None, workdir: str) -> str:
    """The end of the error of a non-finite loss or state: the checkpoint left intact
    (`latest`, the newest checkpoint's step; None before the first) and what to do."""
    advice = f"{_ADVICE}, and rerun"
    if latest is None:
        return (f"no checkpoint was saved yet in {workdirs.checkpoint_dir(workdir)}. "
                f"{advice}.")
    return (f"the last good checkpoint (step {latest}) in {workdirs.checkpoint_dir(workdir)} "
            f"is intact. {advice} with {resume.FLAG}.")
