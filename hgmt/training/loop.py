"""Training: `run(config, workdir)`, readable top to bottom: the config checked
(`hgmt.training.config_check`), then what a run reads and opens (the training split and its
loader, the evaluators, the TensorBoard writer, the checkpoint manager, the newest readable
checkpoint), in the order that keeps a refused run from changing the workdir; the steps, logs,
saves and evaluations are `hgmt.training.trainer.Trainer`'s, the train step
`hgmt.training.steps.jitted_train_step`, the training loader `hgmt.training.train_data`'s,
the run's records in the workdir (config.json, starts.jsonl, the TensorBoard summaries'
restart) `hgmt.training.workdir_records`'.

One jitted step over every device of every process (`hgmt.devices`: the global batch split
across devices and hosts), BatchNorm's batch statistics over the global batch
(`axis_name="batch"`) or each device's share (`config.model.batch_norm_stats`), its running
statistics averaged over the devices before evaluation and checkpointing, gradients averaged
with `pmean`. Orbax checkpoints every `checkpoint_every` steps and at the end; a rerun resumes
from the workdir's newest readable checkpoint, data position included. The step's metrics
stay on the device and are copied and checked at log steps and before every checkpoint
(`hgmt.training.step_metrics`): a non-finite loss stops the run naming the step and task, and
a non-finite state is never saved.

Faults of long runs, each in its own module: `workdir_lock` (one trainer per workdir),
`preemption` (SIGTERM/SIGUSR1: save at an agreed step, exit 75), `peers` (a dead process of a
multi-host run is named, not waited for), `checkpoints.restore_newest_readable` (a damaged
checkpoint is skipped), `shards` (a missing or truncated dataset shard stops the run before
training), `damage` (a damaged record is skipped, named, counted and replaced),
`checkpoint_write_faults.stop_on_full_disk` (a full disk stops the run, the earlier checkpoints
intact), `device_memory` (out of device memory: one error naming the settings to lower).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable, Iterable
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from hgmt import devices, disk_space, paths, workdirs
from hgmt.data import (
    builds,
    input_pipeline,
    prefetch,
    record_reads,
    shards,
)
from hgmt.models import MultiTaskHourglass, create_model, to_checkpoint_layout, to_model_layout
from hgmt.tasks import heads
from hgmt.training import (
    checkpoint_write_faults,
    checkpoints,
    config_check,
    device_memory,
    evaluators,
    peers,
    preemption,
    resume,
    steps,
    summary_writer,
    train_data,
    trainer,
    workdir_lock,
    workdir_records,
)

# The exceptions `run` stops with whose message says what happened, what is intact and what to
# do; `hgmt.main` shows them in one line, and `hgmt.evaluate` those of them it meets.
FAULTS = (disk_space.DiskFull, device_memory.OutOfDeviceMemory, shards.SplitFault,
          record_reads.TooManyDamaged, workdir_lock.WorkdirLocked, workdir_lock.WorkdirUnusable,
          workdirs.DamagedRunFile,
          resume.CannotResume, FloatingPointError, FileNotFoundError,
          builds.NotInBuild)


# --- The loop --------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str, writer: Any = None,
          loader: Iterable | None = None, *,
          resume_with_changed_config: bool = False) -> steps.TrainState:
    """`run`'s final state."""
    return run(config, workdir, writer, loader,
               resume_with_changed_config=resume_with_changed_config)[0]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_with_changed_config: bool = False) -> dict[str, dict]:
    """`run`'s summaries of the evaluators that run after the last step ({name: summary})."""
    return run(config, workdir, resume_with_changed_config=resume_with_changed_config)[1]


def run(config: ml_collections.ConfigDict, workdir: str, writer: Any = None,
        loader: Iterable | None = None, *, resume_with_changed_config: bool = False
        ) -> tuple[steps.TrainState, dict[str, dict]]:
    """Trains `config` in `workdir` up to `config.total_steps`, resuming from the workdir's
    newest readable checkpoint, running the evaluators of `config.evals` at their steps and
    after the last one (hgmt.training.evaluators); on a built split (no `loader` given),
    process 0 also keeps the metres a training window spans in the workdir
    (`hgmt.data.crop_metres.record_in_workdir`). Returns the final state on the host
    (BatchNorm statistics averaged) and the final evaluators' summaries. `writer` replaces the
    TensorBoard writer; `loader` the dataset's grain loader (its iterator needs get_state and
    set_state; benchmarks feed batches from memory with it). A resumed run whose config
    differs from the workdir's config.json (`hgmt.training.resume`) raises
    `resume.CannotResume` before any work, unless `resume_with_changed_config`. A run that
    stops on an error with no file written in the workdir it made removes that workdir
    (`workdir_records.removed_if_nothing_written`).

    Raises `preemption.Preempted` after saving on SIGTERM/SIGUSR1 (during training, or during
    the evaluations after it: the last step saved, those not finished run on resuming),
    FloatingPointError on a non-finite loss, `disk_space.DiskFull` when a checkpoint or
    summary cannot be written (the partial checkpoint removed, the earlier ones intact),
    `device_memory.OutOfDeviceMemory` naming the settings to lower when the step does not
    fit in the device's memory, `record_reads.TooManyDamaged` when more of the training split is
    damaged than config.max_damaged_fraction, `workdir_lock.WorkdirLocked` when another
    trainer holds the workdir (`WorkdirLockLost` when this trainer's lock is lost while it
    runs), `peers.PeerLost` when a process of a multi-host run died, `peers.PeerFailed` (a
    PeerLost) when one stopped on an error of its own."""
    tasks, weights, options = config_check.check_config(config)  # before any work
    workdir = paths.absolute(workdir)  # `~` expanded (a shell leaves it in --workdir=~/x)
    config = config.copy_and_resolve_references()  # the caller's left as it is
    config.tasks = "+".join(tasks)  # as config.json records them: each once, in TASKS' order
    resume.absolute_data_location(config)  # config.json names the data from any directory
    # A config the workdir's checkpoints were not trained with stops it too, before the data
    # is looked at and the lock is written (every process reads the same config.json).
    changed = resume.check_config(config, workdir, resume_with_changed_config)
    # A training split that is not built stops the run before the lock creates the workdir.
    built = None if loader is not None else (
        "that the training split is built",
        functools.partial(builds.built_split, config.dataset, config.data_dir, "train"))
    # A run refused after the lock made the workdir (a damaged shard of a split it
    # evaluates, say) leaves no empty workdir behind.
    with workdir_records.removed_if_nothing_written(workdir):
        lock = workdir_lock.hold_for_job(workdir, built)
        try:
            # A preemption stops every process at one step: not a failure for the peers to see.
            with preemption.PreemptionWatch(config.total_steps) as watch, \
                    peers.watched(agreed=(preemption.Preempted,)) as peer_watch, \
                    device_memory.explained(config,
                                            "while compiling or running the training step"), \
                    contextlib.ExitStack() as opened:
                return _train(config, workdir, writer, loader, tasks, weights, options, watch,
                              opened, peer_watch, lock, changed)
        finally:
            lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str, writer: Any, loader: Iterable | None,
           tasks: tuple[str, ...], weights: dict, options: dict,
           watch: preemption.PreemptionWatch, opened: contextlib.ExitStack,
           peer_watch: peers.PeerWatch | None = None,
           lock: workdir_lock.WorkdirLock | None = None,
           changed: list | None = None) -> tuple[steps.TrainState, dict[str, dict]]:
    """`run`'s body: what the run reads and opens, in the order that keeps a refused run from
    changing the workdir; then `trainer.Trainer` trains and evaluates. What it opens (its
    TensorBoard writer, the checkpoint managers) is closed by `opened` when the run ends,
    however it ends. A lost workdir `lock` stops it at the next step (`WorkdirLock.check`).
    `changed`: the config's accepted changes from the workdir's config.json
    (`resume.check_config`)."""
    # Before the split opens and the checkpoint restores: a preemption notice from now on is
    # agreed on a step this run reaches.
    newest = checkpoints.newest_step_on_disk(workdir)
    watch.resumes_from(newest)
    resume.check_total_steps(config, workdir, newest)
    # The training split first: one that is not there stops the run before the workdir
    # gets its summaries and evaluators' folders.
    source = None if loader is not None else builds.open_split(
        config.dataset, config.data_dir, "train")
    prepare = train_data.augmentation(config, tasks)
    evals = evaluators.Evaluators(config, workdir, weights, jax.process_index() == 0)
    opened.push(_closing(evals))
    damaged = None  # the account of damaged records the loader skipped
    if source is not None:
        loader, damaged = train_data.open_training_data(config, workdir, tasks, prepare,
                                                        evals, source)
    # The partial folders of checkpoint writes an earlier run did not finish (killed during
    # one) go, once the checks above let this run in and before it writes a checkpoint.
    checkpoint_write_faults.remove_leftovers(workdir)
    # After the checks above: a run refused the workdir (another process count, seed or
    # split) leaves no summaries file in it.
    own_writer = writer is None
    writer = _checked_writer(workdir, writer, opened)
    data_iter = train_data.consumed_batches(loader, damaged, opened)
    model = create_model(config.model, heads(tasks), axis_name=devices.AXIS)
    state, restored, mngr = _train_state(config, workdir, model, data_iter, opened)
    start_step = int(state.step)
    if own_writer:  # what an earlier run logged after this step is not this run's
        workdir_records.restart_summaries(writer, workdir, start_step)
    # The loader's workers start now, their position set, from threads that block the job's
    # signals (`worker_signals.WorkersStartShielded`); a restore has started them already.
    data_iter.start_prefetch()
    # What a signal's log line says from now on; the last step's periodic evaluations, which
    # a signal during it skips, count among those after training.
    watch.start(start_step, bool(evals.at_end() or evals.due(config.total_steps)))
    if jax.process_index() == 0:
        workdir_records.record_what_trains(config, workdir, changed, start_step,
                                           source is not None)
    training = trainer.Trainer(config, workdir, model=model, state=state,
                               restored_state=restored, mngr=mngr, evals=evals, writer=writer,
                               data_iter=data_iter, damaged=damaged, watch=watch,
                               peer_watch=peer_watch, lock=lock,
                               train_step=steps.jitted_train_step(weights, options, prepare))
    opened.callback(training.close_batches)
    training.set_aside_what_follows_the_start()
    training.evaluate_missed()
    training.log_plan(tasks, "host" if prepare is None else "device")
    training.train()
    return training.finish()


def _checked_writer(workdir: str, writer: Any, opened: contextlib.ExitStack
                    ) -> disk_space.CheckedWriter:
    """`writer`, or the workdir's own TensorBoard writer (closed by `opened`) where it is
    None, wrapped so that a full disk stops the run as `disk_space.DiskFull`, its closing
    included (an object store uploads the file then)."""
    own = writer is None
    if own:
        with disk_space.reported(workdir, "the TensorBoard summaries"):
            writer = summary_writer.create(workdir, jax.process_index())
    checked = disk_space.CheckedWriter(writer, workdir)
    if own:
        opened.push(_closing(checked))
    return checked


def _train_state(config: ml_collections.ConfigDict, workdir: str, model: MultiTaskHourglass,
                 data_iter: prefetch.ConsumedPosition, opened: contextlib.ExitStack
                 ) -> tuple[steps.TrainState, steps.TrainState | None, ocp.CheckpointManager]:
    """-> (the state to train from, the restored state or None, the workdir's checkpoint
    manager, closed by `opened`): the newest readable checkpoint's state, its loader position
    set in `data_iter` (`_restore`), else a fresh state of `config.seed`."""
    state = steps.create_train_state(jax.random.key(config.seed), config, model)
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    # On an error, a write still under way that fails leaves no partial folder.
    opened.push(lambda exc_type, *_: mngr.close() if exc_type is None
                else checkpoint_write_faults.close_after_stop(mngr, workdir))
    state, restored = _restore(config, workdir, model, state, data_iter, mngr)
    return state, restored, mngr


def _restore(config: ml_collections.ConfigDict, workdir: str, model: MultiTaskHourglass,
             state: steps.TrainState, data_iter: prefetch.ConsumedPosition,
             mngr: ocp.CheckpointManager
             ) -> tuple[steps.TrainState, steps.TrainState | None]:
    """-> (the state to train from, the restored state or None): the workdir's newest
    readable checkpoint, its loader position set in `data_iter`, else the fresh `state`.
    The restored state is the host state of the step resumed from as the checkpoint holds
    it, which `trainer.Trainer.host_state` gives until a step trains (averaging the devices'
    identical copies of its BatchNorm statistics again would round some of them, on 8
    devices)."""
    # Checkpoints hold the streams per task whatever config.model.stream_mode trains them.
    def restore_args(template: steps.TrainState) -> Callable[[], ocp.args.Composite]:
        return lambda: ocp.args.Composite(
            state=ocp.args.StandardRestore(to_checkpoint_layout(model, template)),
            data=input_pipeline.grain.PyGrainCheckpointRestore(data_iter))

    clipped_before = checkpoints.OlderLayout(
        "gradient clipping in the optimizer chain", restore_args(
            steps.with_clip_state_before(state)),
        lambda r: {"state": steps.without_clip_state(r["state"]), "data": r["data"]})
    # Restored beside the fresh state on the device: a state that does not fit twice is
    # named as such, not as a checkpoint that does not read.
    with device_memory.explained(config, "while restoring the newest checkpoint beside the "
                                         "initial train state"):
        restored = checkpoints.restore_newest_readable(mngr, restore_args(state), workdir,
                                                       [clipped_before])
    if restored is None:
        return state, None
    state = to_model_layout(model, restored[1]["state"])
    logging.info("resumed from %s at step %d", workdirs.checkpoint_dir(workdir),
                 int(state.step))
    return state, state


def _closing(resource: Any) -> Callable:
    """An exit callback (contextlib.ExitStack.push) closing `resource`, a writer or checkpoint
    manager, and its background threads. When the run stops on an exception, an error while
    closing (e.g. the failed background write that stopped it, raised again) is logged, never
    raised over the run's own."""

    def close(exc_type: type[BaseException] | None, exc: BaseException | None,
              traceback: types.TracebackType | None) -> None:
        if exc_type is None:
            resource.close()
            return
        try:
            resource.close()
        except Exception as e:
            logging.warning("closing %s after the run stopped: %s: %s",
                            type(resource).__name__, type(e).__name__, e)

    return close
