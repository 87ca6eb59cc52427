"""Training: `run(config, workdir)`, readable top to bottom.

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
`checkpoints.stop_on_full_disk` (a full disk stops the run, the earlier checkpoints intact),
`device_memory` (out of device memory: one error naming the settings to lower).
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import time
from collections.abc import Callable, Iterable
from typing import NoReturn

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from hgmt import cli, code_version, devices, disk_space, paths, workdirs
from hgmt.data import (
    augment,
    crop_metres,
    cropping,
    damage,
    device_augment,
    input_pipeline,
    records,
    shards,
)
from hgmt.models import check_image_size, create_model, to_checkpoint_layout, to_model_layout
from hgmt.sources import synthetic
from hgmt.tasks import (
    check_loss_options,
    check_loss_weights,
    config_tasks,
    heads,
    untrained_settings,
)
from hgmt.training import (
    checkpoints,
    device_memory,
    evaluators,
    peers,
    preemption,
    resume,
    step_metrics,
    steps,
    summary_writer,
    workdir_lock,
)

# The exceptions `run` stops with whose message says what happened, what is intact and what to
# do; `hgmt.main` shows them in one line, and `hgmt.evaluate` those of them it meets.
FAULTS = (disk_space.DiskFull, device_memory.OutOfDeviceMemory, shards.SplitFault,
          damage.TooManyDamaged, workdir_lock.WorkdirLocked, workdir_lock.WorkdirUnusable,
          workdirs.DamagedRunFile,
          resume.CannotResume, FloatingPointError, FileNotFoundError,
          input_pipeline.NotInBuild)


# --- The loop --------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str, writer=None,
          loader: Iterable | None = None, *,
          resume_with_changed_config: bool = False) -> steps.TrainState:
    """`run`'s final state."""
    return run(config, workdir, writer, loader,
               resume_with_changed_config=resume_with_changed_config)[0]


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       resume_with_changed_config: bool = False) -> dict[str, dict]:
    """`run`'s summaries of the evaluators that run after the last step ({name: summary})."""
    return run(config, workdir, resume_with_changed_config=resume_with_changed_config)[1]


def check_config(config: ml_collections.ConfigDict, *, warn: bool = True,
                 on_devices: bool = True) -> tuple[tuple[str, ...], dict, dict]:
    """Checks what training reads of `config` before any work (the tasks, loss weights and
    options, the evaluators, the model's fields, the optimizer, the step counts, the crop's
    size and placement, the loader's workers and read threads, the training and evaluation
    batches over the devices) -> (tasks, loss weights, loss options). Raises ValueError
    naming the field and its choices; with `warn`, logs a warning for settings that run but
    are likely mistakes (a warm-up as long as the run, an evaluator that never runs). Without
    `on_devices`, what depends on this host's devices is not checked (launch/sweep.py checks
    runs that train elsewhere)."""
    tasks = config_tasks(config)
    records.check_dataset_name(config.dataset)
    weights = check_loss_weights(config, tasks)
    options = check_loss_options(config, tasks)
    if warn and (unused := untrained_settings(config, tasks)):
        logging.warning("config.%s: set for a task not trained (config.tasks=%s), so without "
                        "effect", ", config.".join(unused), "+".join(tasks))
    evaluators.check(config, weights)
    create_model(config.model, heads(tasks))  # the model's fields and values
    steps.create_optimizer(config)  # the optimizer's name and schedule
    for field in ("total_steps", "log_every", "checkpoint_every", "prefetch",
                  "keep_checkpoints", "batch_size", "image_size"):
        if config[field] < 1:
            raise ValueError(f"config.{field}={config[field]} must be at least 1")
    _check_values(config, weights, options, warn)
    check_image_size(config.image_size, config.model.depth)
    device_augment.placement(config.augment_on)
    augment.Augment.from_config(config.augment)
    check_data_settings(config)
    if "demo" in config:  # before hgmt.main replaces a demo build of other settings
        synthetic.check_settings(config.demo.clips_per_split, config.demo.frames,
                                 config.demo.seed, prefix="config.demo.")
    if not on_devices:
        return tasks, weights, options
    devices.check_even()
    for field in ("batch_size", "eval_batch_size"):
        if config[field] % jax.device_count():
            raise ValueError(f"config.{field}={config[field]} must be divisible by the "
                             f"{jax.device_count()} devices")
    return tasks, weights, options


def check_data_settings(config: ml_collections.ConfigDict) -> None:
    """Checks how training and evaluation read the data (`hgmt.evaluate` checks them too,
    before a checkpoint is read): the crop window, the loader's workers and read threads, the
    damaged fraction that stops a run. Raises ValueError naming the field and its choices."""
    cropping.config_window(config)
    input_pipeline.auto_worker_count(config.worker_count)
    input_pipeline.read_options(config.read_threads)
    damage.check_max_fraction(config.max_damaged_fraction)


def _check_values(config: ml_collections.ConfigDict, weights: dict, options: dict,
                  warn: bool) -> None:
    """Refuses values training would take without complaint and make wrong: a rate, warm-up,
    loss weight or loss option below 0 (a negative weight maximises its loss), a rate, loss
    weight or option that is not finite (the loss would be, blamed on the rate), a rate of 0, a
    seed outside [0, 2**32) (`input_pipeline.check_seed`: the loader would refuse it late, the
    model's JAX key wrap it); with `warn`, warns where the schedule or an evaluator cannot do
    what it says within `total_steps`."""
    opt = config.optimizer
    if not (np.isfinite(opt.learning_rate) and opt.learning_rate > 0):
        raise ValueError(f"config.optimizer.learning_rate={opt.learning_rate} must be finite "
                         f"and > 0")
    if opt.warmup_steps < 0:
        raise ValueError(f"config.optimizer.warmup_steps={opt.warmup_steps} must be >= 0")
    for task, weight in weights.items():
        if not (np.isfinite(weight) and weight >= 0):
            raise ValueError(f"config.loss_weights.{task}={weight} must be finite and >= 0 (a "
                             f"negative weight maximises the loss)")
    for task, given in options.items():
        for name, value in given.items():
            if not (np.isfinite(value) and value >= 0):
                raise ValueError(f"config.loss_options.{task}.{name}={value} must be finite "
                                 f"and >= 0")
    input_pipeline.check_seed(config.seed)
    if warn and opt.warmup_steps >= config.total_steps:
        logging.warning("config.optimizer.warmup_steps=%d is not below config.total_steps=%d: "
                        "the learning rate does not reach config.optimizer.learning_rate=%g",
                        opt.warmup_steps, config.total_steps, opt.learning_rate)
    for name, entry in config.evals.items():
        if warn and entry.every > config.total_steps and not entry.at_end:
            logging.warning("config.evals.%s.every=%d is beyond config.total_steps=%d and it "
                            "does not run at the end: it never runs (lower every, or set it "
                            "to 0 to make that plain)", name, entry.every, config.total_steps)
        if warn and entry.best_metric and not entry.every:
            logging.warning("config.evals.%s.best_metric=%r keeps no best checkpoint: the "
                            "evaluator runs only after training (every=0), and a best one is "
                            "chosen among evaluations during it (set every > 0, or "
                            "best_metric='')", name, entry.best_metric)


def run(config: ml_collections.ConfigDict, workdir: str, writer=None,
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
    `resume.CannotResume` before any work, unless `resume_with_changed_config`.

    Raises `preemption.Preempted` after saving on SIGTERM/SIGUSR1 (during training, or during
    the evaluations after it: the last step saved, those not finished run on resuming),
    FloatingPointError on a non-finite loss, `disk_space.DiskFull` when a checkpoint or
    summary cannot be written (the partial checkpoint removed, the earlier ones intact),
    `device_memory.OutOfDeviceMemory` naming the settings to lower when the step does not
    fit in the device's memory, `damage.TooManyDamaged` when more of the training split is
    damaged than config.max_damaged_fraction, `workdir_lock.WorkdirLocked` when another
    trainer holds the workdir (`WorkdirLockLost` when this trainer's lock is lost while it
    runs), `peers.PeerLost` when a process of a multi-host run died, `peers.PeerFailed` (a
    PeerLost) when one stopped on an error of its own."""
    tasks, weights, options = check_config(config)  # a bad config stops the run before any work
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
        functools.partial(input_pipeline.built_split, config.dataset, config.data_dir, "train"))
    lock = workdir_lock.hold_for_job(workdir, built)
    try:
        # A preemption stops every process at one step: not a failure for the peers to see.
        with preemption.PreemptionWatch(config.total_steps) as watch, \
                peers.watched(agreed=(preemption.Preempted,)) as peer_watch, \
                device_memory.explained(config, "while compiling or running the training step"), \
                contextlib.ExitStack() as opened:
            return _train(config, workdir, writer, loader, tasks, weights, options, watch,
                          opened, peer_watch, lock, changed)
    finally:
        lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str, writer, loader: Iterable | None,
           tasks: tuple[str, ...], weights: dict, options: dict,
           watch: preemption.PreemptionWatch, opened: contextlib.ExitStack,
           peer_watch: peers.PeerWatch | None = None,
           lock: workdir_lock.WorkdirLock | None = None,
           changed: list | None = None) -> tuple[steps.TrainState, dict[str, dict]]:
    """`run`'s body: what the run reads and opens, in the order that keeps a refused run from
    changing the workdir; then `_Training` trains and evaluates. What it opens (its
    TensorBoard writer, the checkpoint managers) is closed by `opened` when the run ends,
    however it ends. A lost workdir `lock` stops it at the next step (`WorkdirLock.check`).
    `changed`: the config's accepted changes from the workdir's config.json
    (`resume.check_config`)."""
    # Before the split opens and the checkpoint restores: a preemption notice from now on is
    # agreed on a step this run reaches.
    newest = checkpoints.newest_step_on_disk(workdir)
    watch.resumes_from(newest)
    _check_total_steps(config, workdir, newest)
    # The training split first: one that is not there stops the run before the workdir
    # gets its summaries and evaluators' folders.
    source = None if loader is not None else input_pipeline.open_split(
        config.dataset, config.data_dir, "train")
    prepare = augmentation(config, tasks)
    evals = evaluators.Evaluators(config, workdir, weights, jax.process_index() == 0)
    opened.push(_closing(evals))
    damaged = None  # the account of damaged records the loader skipped
    if source is not None:
        loader, damaged = _open_training_data(config, workdir, tasks, prepare, evals, source)
    # After the checks above: a run refused the workdir (another process count, seed or
    # split) leaves no summaries file in it.
    own_writer = writer is None
    with disk_space.reported(workdir, "the TensorBoard summaries"):
        writer = writer or summary_writer.create(workdir, jax.process_index())
    writer = disk_space.CheckedWriter(writer, workdir)
    if own_writer:
        opened.push(_closing(writer))
    # The damaged records of a batch are noted when the step consumes it, not when it is
    # prefetched: the account at a step is of the batches trained on.
    data_iter = input_pipeline.ConsumedPosition(input_pipeline.WorkersStartShielded(loader),
                                                None if damaged is None else damaged.met)
    opened.callback(data_iter.close)  # the loader's workers stop as the run ends, however

    model = create_model(config.model, heads(tasks), axis_name=devices.AXIS)
    state = steps.create_train_state(jax.random.key(config.seed), config, model)
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    opened.push(_closing(mngr))
    state, resumed = _restore(config, workdir, model, state, data_iter, mngr)
    start_step = int(state.step)
    if own_writer:  # what an earlier run logged after this step is not this run's
        _restart_summaries(writer, workdir, start_step)
    # The loader's workers start now, their position set, from threads that block the job's
    # signals (`input_pipeline.WorkersStartShielded`); a restore has started them already.
    data_iter.start_prefetch()
    # What a signal's log line says from now on; the last step's periodic evaluations, which
    # a signal during it skips, count among those after training.
    watch.start(start_step, bool(evals.at_end() or evals.due(config.total_steps)))
    # Written once the workdir's checkpoints are known to be this config's: a config that
    # does not fit them (another task set, say) stops above and leaves config.json as it was.
    # Likewise the metres a training window spans (3D decoding's scale for prediction on any
    # image): a trainer refused the workdir (held by another, or not this config's) leaves
    # the file of the run that wrote it.
    if jax.process_index() == 0:
        resume.save_config(config, workdir, changed, start_step)
        record_start(workdir, start_step)
        if source is not None:
            crop_metres.record_in_workdir(config.dataset, config.data_dir, workdir,
                                          config.window)
    training = _Training(config, workdir, model=model, state=state, resumed=resumed,
                         mngr=mngr, evals=evals, writer=writer, data_iter=data_iter,
                         damaged=damaged, watch=watch, peer_watch=peer_watch, lock=lock,
                         train_step=jitted_train_step(weights, options, prepare))
    opened.callback(training.close_batches)
    training.set_aside_what_follows_the_start()
    training.evaluate_missed()
    training.log_plan(tasks, "host" if prepare is None else "device")
    training.train()
    return training.finish()


def _check_total_steps(config: ml_collections.ConfigDict, workdir: str, newest: int) -> None:
    """CannotResume where `config.total_steps` is below `newest`, the step of the workdir's
    newest checkpoint (--resume_with_changed_config lets such a config through `run`'s
    check)."""
    if newest > config.total_steps:
        raise resume.CannotResume(
            f"config.total_steps={config.total_steps} is below step {newest}, the "
            f"workdir's latest checkpoint ({workdirs.checkpoint_dir(workdir)}): the run would "
            f"label step {newest}'s weights as step {config.total_steps}. Give "
            f"--config.total_steps={newest} or more, or train into a new --workdir")


def _open_training_data(config: ml_collections.ConfigDict, workdir: str,
                        tasks: tuple[str, ...], prepare: device_augment.Prepare | None,
                        evals: evaluators.Evaluators, source
                        ) -> tuple[input_pipeline.grain.DataLoader, damage.DamageLog]:
    """The training loader of the built split `source` and the account of the damaged
    records it skips, after the checks that refuse a workdir before it changes."""
    # The evaluators' frames must be in this build: checked before the workdir changes.
    evals.check_frames(source.dataset_info)
    # A saved loader position resumes only with its seed and split size: named here, not
    # by the restore below as checkpoints of another model.
    resume.check_sampler(config, workdir, len(source))
    # A resumed loader needs the worker count this process's saved position was made
    # with; -1 (auto) otherwise counts this host's usable cores.
    saved = checkpoints.resume_worker_count(workdir, config.worker_count, jax.process_count())
    workers = input_pipeline.auto_worker_count(saved)
    # Which records make each batch depends on it (`input_pipeline.endless_loader`);
    # every checkpoint's data/process_<i>-of-<n>.json records this process's count.
    logging.info("process %d's loader runs %d worker process(es) (config.worker_count=%d"
                 "%s); which records make each batch depends on that count",
                 jax.process_index(), workers, config.worker_count,
                 ", resumed with its checkpoint's" if saved != config.worker_count else "",
                 extra=cli.EVERY_PROCESS)
    loader = train_loader(config, source, tasks, prepare, workers)
    damaged = damage.DamageLog(
        damage.Shards.of(source), len(source), config.max_damaged_fraction,
        workdirs.damaged_file(workdir) if jax.process_index() == 0 else None,
        damage.union_over_processes if jax.process_count() > 1 else None)
    return loader, damaged


def _restore(config: ml_collections.ConfigDict, workdir: str, model, state: steps.TrainState,
             data_iter, mngr: ocp.CheckpointManager
             ) -> tuple[steps.TrainState, steps.TrainState | None]:
    """-> (the state to train from, the restored state or None): the workdir's newest
    readable checkpoint, its loader position set in `data_iter`, else the fresh `state`.
    The restored state is the host state of the step resumed from as the checkpoint holds
    it, which `_Training.host_state` gives until a step trains (averaging the devices'
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


def _restart_summaries(writer, workdir: str, start_step: int) -> None:
    """Marks the TensorBoard summaries as restarting at `start_step` + 1 (what an earlier run
    logged after it is not this run's); a start at step 0 moves an earlier run's event files
    aside."""
    writer.restart(start_step + 1)
    if start_step == 0 and jax.process_index() == 0:
        aside = f"{workdirs.events_superseded_dir(workdir)}/{workdirs.set_aside_name(0)}"
        moved = summary_writer.set_aside_earlier(workdir, writer.path, aside)
        if moved:
            logging.info("a start at step 0 over an earlier run's TensorBoard summaries: "
                         "moved %s to %s", ", ".join(moved), aside)


class _Training:
    """The training steps from the state restored or fresh to config.total_steps, then the
    evaluations after training, with what they share: the checkpoint manager and the write
    it may still be making, the state on the devices and the outputs of the last step
    dispatched, the interval's timing and the ETA's clock. Orderings that matter: the
    damaged records met up to a step are synced before its checkpoint is saved (the
    checkpoint's data position is after them); a step's batch is consumed before its state
    is saved; the interval and the ETA's clock start after the evaluations a preemption
    skipped."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, *, model,
                 state: steps.TrainState, resumed: steps.TrainState | None,
                 mngr: ocp.CheckpointManager, evals: evaluators.Evaluators, writer,
                 data_iter, damaged: damage.DamageLog | None,
                 watch: preemption.PreemptionWatch, peer_watch: peers.PeerWatch | None,
                 lock: workdir_lock.WorkdirLock | None, train_step: Callable):
        self.config, self.workdir, self.model, self.mngr = config, workdir, model, mngr
        self.evals, self.writer, self.data_iter, self.damaged = evals, writer, data_iter, damaged
        self.watch, self.peer_watch, self.lock = watch, peer_watch, lock
        self.start_step = int(state.step)
        self.restored = resumed is not None
        # The restored host state, which `host_state` gives for the step resumed from while
        # no step has trained since.
        self.resumed = resumed
        self.state = devices.replicate(state)
        self.p_train_step = train_step
        self.device_iter = input_pipeline.prefetch_to_device(data_iter.batches(),
                                                             config.prefetch)
        self.metrics = step_metrics.StepMetrics()
        # Evaluated op by op (eagerly), not compiled: XLA would turn the schedule's divisions
        # by constants into multiplications and fold its constants, which rounds otherwise.
        self.lr_fn = steps.create_lr(config)
        self.step_values = None  # the last dispatched step's outputs: ready once it ran
        self.saving = None  # the step of the newest checkpoint orbax may still be writing
        self.joined = True  # whether the outcome of that write was read (its thread joined)
        # The interval's timing, and the ETA's clock: wall time since training began (after
        # the first step's compilation), evaluations and saves included, over the steps done
        # since; both restarted by `log_plan`, after the evaluations a preemption skipped.
        self.interval = step_metrics.Interval(self.start_step)
        self.since, self.since_step = time.perf_counter(), self.start_step

    def close_batches(self) -> None:
        """Ends the batches' generators, which hold the last batch drawn from the loader (in
        its workers' shared memory, until the interpreter's exit otherwise); the loader
        itself is closed after (`ConsumedPosition.close`)."""
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
        with checkpoints.stop_on_full_disk(self.workdir, saving):
            self.mngr.wait_until_finished()
        # exit together, after process 0 finalised the save
        devices.barrier("preemption checkpoint saved")
        raise preemption.Preempted(step, workdirs.checkpoint_dir(self.workdir), after_training)

    def check_finite(self) -> None:
        """Stops on the first non-finite step since the last check, before any save."""
        bad = self.metrics.check()
        if bad is None:
            return
        self.mngr.wait_until_finished()
        raise FloatingPointError(
            f"non-finite loss at step {bad.step} in task(s) {', '.join(bad.tasks)}: "
            f"{bad.metrics} (steps {bad.first}..{bad.last} checked together). Nothing was "
            f"saved for it or after it; "
            f"{_after_non_finite(self.mngr.latest_step(), self.workdir)}")

    # --- The state on the host: saves and evaluations ----------------------------------------

    def host_state(self, step: int) -> steps.TrainState:
        """The state on the host, BatchNorm statistics averaged, for a save or a validation;
        a non-finite loss since the last check or a non-finite state stops the run here. At
        the step resumed from, the restored state itself."""
        if step == self.start_step and self.resumed is not None:
            return self.resumed
        self.check_finite()
        host = devices.to_host(steps.sync_batch_stats(self.state))
        bad = [jax.tree_util.keystr(k) for k, v in jax.tree_util.tree_leaves_with_path(host)
               if np.issubdtype(np.asarray(v).dtype, np.inexact) and not np.isfinite(v).all()]
        if bad:
            self.mngr.wait_until_finished()
            raise FloatingPointError(
                f"non-finite train state after step {step} (e.g. {bad[:3]}) although its "
                f"losses are finite; nothing was saved for it, "
                f"{_after_non_finite(self.mngr.latest_step(), self.workdir)}")
        return host

    def save_and_evaluate(self, step: int, *, checkpoint: bool = True,
                          evaluate: list[str] | None = None) -> None:
        """Once the device has run `step`, the state after it on the host (`host_state`,
        which stops the run on a non-finite loss or state) saved as the checkpoint of `step`
        (when `checkpoint`) and evaluated by the evaluators `evaluate`; this time is set apart
        from the interval's training time, and a full disk stops the run as
        `disk_space.DiskFull` (`checkpoints.stop_on_full_disk`). The damaged records met up to
        `step` are to be synced (`damaged.sync`) before: the checkpoint's data position is
        after them."""
        jax.block_until_ready(self.step_values)  # the step is training time; what follows not
        with self.interval.set_apart(), checkpoints.stop_on_full_disk(self.workdir, step):
            host = self.host_state(step)
            if checkpoint:
                self.mngr.save(step, args=ocp.args.Composite(
                    **checkpoints.saved(to_checkpoint_layout(self.model, host)),
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
            logging.info("evaluating step %d, which its run did not: %s", start, missed)
            self._evaluate(missed, start, self.host_state(start),
                           stop=self.stop_if_preempted
                           if start == self.config.total_steps else self.lock_check)
        if start < self.config.total_steps:
            self.resumed = None

    def log_plan(self, tasks: tuple[str, ...], augment_on: str) -> None:
        """The line that says what this run trains, from which step, on what; the interval
        and the ETA's clock start now."""
        config, count = self.config, jax.device_count()
        if self.start_step == config.total_steps:
            logging.info("training %s ended at step %d: what is left to do after it runs now",
                         "+".join(tasks), self.start_step)
        else:
            logging.info("training %s for steps %d..%d, %d device%s, global batch %d, "
                         "augmentation on the %s", "+".join(tasks), self.start_step,
                         config.total_steps, count, "s" * (count != 1), config.batch_size,
                         augment_on)
        self.interval = step_metrics.Interval(self.start_step)
        self.since, self.since_step = time.perf_counter(), self.start_step

    # --- The steps ----------------------------------------------------------------------------

    def train(self) -> None:
        """Trains the steps after `start_step` up to config.total_steps: each step's batch,
        its dispatch, its log line, checkpoint and evaluations when due, and a preemption's
        save and stop."""
        config = self.config
        for step in range(self.start_step + 1, config.total_steps + 1):
            self._join_finished_write()
            self.lock_check()  # another trainer may take the workdir: stop before writing more
            batch = self._next_batch(step)
            self.state, self.step_values = self.p_train_step(self.state, batch)
            # no host copy: the next step queues behind it
            self.metrics.append(step, self.step_values)
            preempted = self.watch.reached(step)
            if (step == self.start_step + 1 and step % config.log_every
                    and step < config.total_steps):
                # The first step compiles: timed apart from img/s and the ETA.
                jax.block_until_ready(self.step_values)
                logging.info("step %d (compilation included) took %.1f s", step,
                             self.interval.training_time())
                self.interval.restart(step)
                self.since, self.since_step = time.perf_counter(), step
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
            with checkpoints.stop_on_full_disk(self.workdir, self.saving):
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
        (input_pipeline.WorkersStartShielded), but the job's shutdown may end them by other
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
            steps_timed=step - self.since_step, timed_s=time.perf_counter() - self.since,
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
                         100 * pace.data_wait, 100 * pace.data_idle, cli.hms(pace.eta_s))
        if compiled:  # the ETA's clock starts after the compilation
            self.since, self.since_step = time.perf_counter(), step
        interval.restart(step)

    # --- After the last step ------------------------------------------------------------------

    def finish(self) -> tuple[steps.TrainState, dict[str, dict]]:
        """The final state on the host, once the last checkpoint is written, and the
        evaluations after training: -> (state, {evaluator: summary})."""
        config, evals = self.config, self.evals
        final = self.host_state(config.total_steps)
        with checkpoints.stop_on_full_disk(self.workdir, self.saving):
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


def record_start(workdir: str, step: int) -> None:
    """Appends this start of the trainer to <workdir>/starts.jsonl: the step it trains from,
    the time (UTC), the code (`code_version.describe`: hgmt's version, commit, modified) and
    what it runs on (JAX's version and backend, devices, processes), so that a run's numbers
    can be traced to the code of each of its parts."""
    record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **code_version.describe(), "jax": jax.__version__,
              "backend": jax.default_backend(), "devices": jax.device_count(),
              "processes": jax.process_count()}
    disk_space.append_line(workdirs.starts_file(workdir), json.dumps(record),
                           "the record of the trainer's starts")


def augmentation(config: ml_collections.ConfigDict,
                 tasks: tuple[str, ...]) -> device_augment.Prepare | None:
    """Where the crop and augmentation run (config.augment_on): in the train step, on the
    device (the `Prepare` it runs first on the loader's decoded records), or None: on the
    loader's CPU workers."""
    if device_augment.placement(config.augment_on) == "host":
        return None
    return device_augment.Prepare(config.image_size, config.seed, tasks,
                                  augment.Augment.from_config(config.augment), config.window)


def train_loader(config: ml_collections.ConfigDict, source, tasks: tuple[str, ...],
                 prepare: device_augment.Prepare | None,
                 worker_count: int | None = None) -> input_pipeline.grain.DataLoader:
    """The training loader of `source` (a split of `input_pipeline.open_split`) for the step
    of `jitted_train_step(..., prepare)`: cropped batches, or decoded records when the step
    crops (`prepare`). `worker_count` replaces config.worker_count."""
    workers = config.worker_count if worker_count is None else worker_count
    if prepare is None:
        return input_pipeline.train_loader(
            source, batch_size=config.batch_size, image_size=config.image_size,
            seed=config.seed, augment=augment.Augment.from_config(config.augment),
            worker_count=workers, tasks=tasks,
            unread=device_augment.unread_maps(tasks), read_threads=config.read_threads,
            window=config.window)
    return device_augment.decode_loader(source, batch_size=config.batch_size, seed=config.seed,
                                        worker_count=workers, tasks=tasks,
                                        read_threads=config.read_threads)


def jitted_train_step(weights: dict, options: dict,
                      prepare: device_augment.Prepare | None = None
                      ) -> Callable[[steps.TrainState, dict], tuple[steps.TrainState, dict]]:
    """The train step the loop runs on every device over its share of the batch
    (`hgmt.devices.spmd`, axis "batch", the state donated): `steps.train_step` with the loss
    `weights` and `options` of `check_config`, and the crop inside where `prepare`
    (`augmentation`) is given. It takes and returns the state as `devices.replicate` places
    it and the batch as `input_pipeline.prefetch_to_device` does."""
    return _jitted_train_step(
        tuple(sorted(weights.items())),
        tuple((t, tuple(sorted(o.items()))) for t, o in sorted(options.items())), prepare)


@functools.cache
def _jitted_train_step(weights: tuple[tuple[str, float], ...],
                       options: tuple[tuple[str, tuple[tuple[str, float], ...]], ...],
                       prepare: device_augment.Prepare | None = None):
    """One jitted step per loss weighting, options (hashable tuples of `weights` and
    `options` items) and device-side crop (`prepare`, or None when the loader crops), so that
    a second `train()` in a process (a resume, the tests) reuses its trace instead of tracing
    the model again."""
    return devices.spmd(functools.partial(steps.train_step, weights=dict(weights),
                                          options={t: dict(o) for t, o in options},
                                          prepare=prepare),
                        donate_argnums=(0,))


def _closing(resource) -> Callable:
    """An exit callback (contextlib.ExitStack.push) closing `resource`, a writer or checkpoint
    manager, and its background threads. When the run stops on an exception, an error while
    closing (e.g. the failed background write that stopped it, raised again) is logged, never
    raised over the run's own."""

    def close(exc_type, exc, traceback) -> None:
        if exc_type is None:
            resource.close()
            return
        try:
            resource.close()
        except Exception as e:
            logging.warning("closing %s after the run stopped: %s: %s",
                            type(resource).__name__, type(e).__name__, e)

    return close


def device_done(values) -> bool:
    """Whether the device has computed `values`, the outputs of the last step dispatched to
    it: steps run in order, so then it has no step queued. A wait for data that ends with it
    done counts whole as device idle time (an upper bound: the device may have finished
    during the wait)."""
    return all(x.is_ready() for x in jax.tree.leaves(values))


def _after_non_finite(latest: int | None, workdir: str) -> str:
    """The end of the error of a non-finite loss or state: the checkpoint left intact
    (`latest`, the newest checkpoint's step; None before the first) and what to do."""
    advice = "Lower optimizer.learning_rate or set optimizer.grad_clip_norm, and rerun"
    if latest is None:
        return (f"no checkpoint was saved yet in {workdirs.checkpoint_dir(workdir)}. "
                f"{advice}.")
    return (f"the last good checkpoint (step {latest}) in {workdirs.checkpoint_dir(workdir)} "
            f"is intact. {advice} with {resume.FLAG}.")
