"""The training data of a run: where the crop and augmentation run (`augmentation`: on the
loader's CPU workers, or in the train step on the device), the training split's loader for that
step (`train_loader`), opened after the checks that refuse a workdir before it changes, with the
account of the damaged records it skips (`open_training_data`), and its batches as the steps
consume them (`consumed_batches`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import jax
import ml_collections

from hgmt import console, workdirs
from hgmt.data import (
    augment,
    damage,
    device_augment,
    input_pipeline,
    prefetch,
    record_reads,
    worker_signals,
)
from hgmt.training import checkpoints, evaluators, resume


def augmentation(config: ml_collections.ConfigDict,
                 tasks: tuple[str, ...]) -> device_augment.Prepare | None:
    """Where the crop and augmentation run (config.augment_on): in the train step, on the
    device (the `Prepare` it runs first on the loader's decoded records), or None: on the
    loader's CPU workers."""
    if device_augment.placement(config.augment_on) == "host":
        return None
    return device_augment.Prepare(config.image_size, config.seed, tasks,
                                  augment.Augment.from_config(config.augment), config.window)


def train_loader(config: ml_collections.ConfigDict, source: Any, tasks: tuple[str, ...],
                 prepare: device_augment.Prepare | None,
                 worker_count: int | None = None) -> input_pipeline.grain.DataLoader:
    """The training loader of `source` (a split of `builds.open_split`) for the step
    of `steps.jitted_train_step(..., prepare)`: cropped batches, or decoded records when the step
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


def open_training_data(config: ml_collections.ConfigDict, workdir: str,
                       tasks: tuple[str, ...], prepare: device_augment.Prepare | None,
                       evals: evaluators.Evaluators, source: Any
                       ) -> tuple[input_pipeline.grain.DataLoader, damage.DamageLog]:
    """The training loader of the built split `source` and the account of the damaged
    records it skips, after the checks that refuse a workdir before it changes."""
    # The evaluators' frames must be in this build: checked before the workdir changes.
    evals.check_frames(source.dataset_info)
    # A saved loader position resumes only with its seed and split size: named here, not
    # by the checkpoint's restore as checkpoints of another model.
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
                 extra=console.EVERY_PROCESS)
    loader = train_loader(config, source, tasks, prepare, workers)
    damaged = damage.DamageLog(
        record_reads.Shards.of(source), len(source), config.max_damaged_fraction,
        workdirs.damaged_file(workdir) if jax.process_index() == 0 else None,
        damage.union_over_processes if jax.process_count() > 1 else None)
    return loader, damaged


def consumed_batches(loader: Iterable, damaged: damage.DamageLog | None,
                     opened: contextlib.ExitStack) -> prefetch.ConsumedPosition:
    """The training batches of `loader`, whose workers start shielded from the job's signals
    and stop as the run ends (closed by `opened`), however it ends. The damaged records of a
    batch are noted in `damaged` when the step consumes it, not when it is prefetched: the
    account at a step is of the batches trained on."""
    data_iter = prefetch.ConsumedPosition(worker_signals.WorkersStartShielded(loader),
                                          None if damaged is None else damaged.met)
    opened.callback(data_iter.close)
    return data_iter
