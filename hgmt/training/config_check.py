"""Training's config, checked before any work: `check_config` (what `run` reads of it; the
benchmarks and launch/sweep.py check with it too) and `check_data_settings` (how training and
evaluation read the data; `hgmt.evaluate` checks them before a checkpoint is read). A bad
field raises ValueError naming it and its choices; `exit_if_refused` is the check of a script
that runs a config outside the trainer (a benchmark, an experiment)."""

from __future__ import annotations

import logging

import jax
import ml_collections
import numpy as np

from hgmt import devices
from hgmt.data import augment, cropping, damage, device_augment, input_pipeline, records
from hgmt.models import check_image_size, create_model
from hgmt.sources import synthetic
from hgmt.tasks import (
    check_loss_options,
    check_loss_weights,
    config_tasks,
    heads,
    untrained_settings,
)
from hgmt.training import eval_settings, steps


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
    eval_settings.check_evals(config, weights)
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


def exit_if_refused(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config`, once `check_config` passes it as `hgmt.main` runs it, less what depends on
    this host's devices (a benchmark picks its own, e.g. train_step.py --devices) and without
    its warnings: for a script that runs a config outside the trainer (a benchmark, an
    experiment). A refused field exits in one line ("error: ...") naming it and the fix,
    before any work."""
    try:
        check_config(config, warn=False, on_devices=False)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    return config


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
