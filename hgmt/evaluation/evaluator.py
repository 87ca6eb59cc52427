"""The evaluator of a split: one compiled evaluation step over the frames it selects, metric sums
accumulated over the split (padding never counts) and summarised under a metric protocol
(`protocols`), recording the version of that protocol's definitions (`metrics_versions`). The
summary's files are `report_files.write_report`'s.

Used by the trainer's evaluators (`config.evals`, hgmt.training.evaluators) and by the
`hgmt.evaluate` command."""

from __future__ import annotations

import collections
import functools
import logging
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hgmt import devices, run_config
from hgmt.data import builds, cropping, damage, eval_data, record_reads
from hgmt.evaluation import markdown, metrics_versions, pictures, protocols
from hgmt.models import (
    IMAGE_MEAN,
    IMAGE_STD,
    MultiTaskHourglass,
    create_model,
    predict_last_stage,
    variable_differences,
)
from hgmt.tasks import TASKS, channel_flips, check_loss_options, common, heads, parse_tasks


def _one(tree: Any) -> Any:
    """Adds a batch dim of 1 to every leaf (to call batched functions per example)."""
    return jax.tree.map(lambda x: x[None], tree)


def _example_loss(task: ModuleType, options: dict, pred: jax.Array, batch: dict) -> jax.Array:
    """The loss of a single example, as a batch of one (called under vmap): a pixel-weighted
    loss is normalised by that example's own weights."""
    return task.loss(_one(pred), task.targets(_one(batch)), **options)


def model_input(batch: dict, unusable_input: np.ndarray) -> jnp.ndarray:
    """(B,R,R,3) float32 on [0, 255]: the images the evaluation gives the model, batch['image']
    with each flagged unusable frame (batch['unusable']) given the image `unusable_input`
    everywhere, as the references give it their zero input."""
    flagged = batch["unusable"][:, None, None, None] > 0
    return jnp.where(flagged, jnp.asarray(unusable_input, jnp.float32),
                     batch["image"].astype(jnp.float32))


def predict(variables: dict, batch: dict, *, model: MultiTaskHourglass, flip: bool,
            unusable_input: np.ndarray) -> dict:
    """{task: (B,r,r,C)} the last stage's predictions that the evaluation scores, on
    `model_input`, averaged with the mirrored image's when `flip`: what `eval_step` measures
    and `Evaluator.pictures` draws."""
    return predict_last_stage(model, variables, model_input(batch, unusable_input),
                              channel_flips(model.tasks) if flip else None)


def eval_step(variables: dict, batch: dict, *, model: MultiTaskHourglass, flip: bool,
              metrics: dict, loss_options: dict, unusable_input: np.ndarray) -> dict:
    """Per-device: sums of every task's metric statistics (metrics: {task:
    protocols.Metric}; each weights the examples by batch['mask'], 0 for padding) and of its
    examples' losses (loss_options: {task: options of its loss}, as in training), each
    example's loss that of a batch of one: a foreground-weighted cross-entropy is normalised
    by the example's own pixel weights here, by the global batch's in training (the two agree
    at foreground_weight 1). A flagged unusable frame (batch['unusable']) is given the image
    `unusable_input` ((3,) RGB on [0, 255]) everywhere, as the references give it their zero
    input; the reference protocols' statistics treat it as their code does, hgmt's
    statistics and the loss leave it out, and every frame hgmt's own check rejects
    (batch['rejected'])."""
    preds = predict(variables, batch, model=model, flip=flip, unusable_input=unusable_input)
    mask = batch["mask"]
    usable = mask * (1.0 - batch["rejected"])
    stats = {}
    for name, pred in preds.items():
        stats[name] = dict(metrics[name].stats(pred, batch))
        losses = jax.vmap(functools.partial(_example_loss, TASKS[name],
                                            loss_options[name]))(pred, batch)
        stats[name]["loss"] = common.weighted_sum(usable, losses.astype(jnp.float32))
    stats["count"] = jnp.sum(mask)
    stats["unusable"] = jnp.sum(mask * batch["unusable"])
    stats["rejected"] = jnp.sum(mask * batch["rejected"])
    return jax.lax.psum(stats, devices.AXIS)


def unusable_level(protocol: str) -> float:
    """The normalised input a reference protocol gives a flagged unusable test frame: 0
    (BodyNet, dataset.lua:773, a zero tensor: the mean colour), 0.5 (SURREAL, dataset.lua:
    334). hgmt's protocol leaves these frames out, so its value does not matter."""
    return 0.5 if protocol == "surreal" else 0.0


def unusable_input(protocol: str) -> np.ndarray:
    """(3,) the RGB value, on [0, 255], that the model is given for a flagged unusable test
    frame: `unusable_level` in hgmt's normalisation."""
    return (np.asarray(IMAGE_MEAN) + unusable_level(protocol) * np.asarray(IMAGE_STD)) * 255.0


def unusable_report(protocol: str, tasks: Sequence[str], metrics: dict, flagged: int,
                    rejected: int) -> dict:
    """How many evaluated frames were flagged unusable (`count`: the reference test loaders'
    placeholders), how many hgmt's own check rejects (`rejected_by_hgmt`, the flagged ones
    included), and how each task's protocol treated them (the JSON's `unusable_frames`)."""
    treatment = {}
    for name in tasks:
        used = metrics[name].protocol
        treatment[name] = ("left out (hgmt's definition), with every frame hgmt's check "
                           "rejects" if used == "hgmt" else
                           f"evaluated as {used}'s code does: input normalised to "
                           f"{unusable_level(protocol)}, the labels of a frame without a "
                           f"person (no joint, part or foreground), counted in N")
    return {"count": flagged, "rejected_by_hgmt": rejected, "treatment": treatment}


# The fields of an evaluator's settings (`config.evals.<name>` in training; the command's flags in
# `hgmt.evaluate`): which frames of which split, under which metric protocol, with or without the
# flip test, at most how many examples (0: all).
SETTINGS = ("split", "frames", "protocol", "flip", "max_examples")
# hgmt's test protocol: the Evaluator's defaults, and configs/common.py evaluator_config's.
DEFAULT_SETTINGS = {"split": "test", "frames": "middle", "protocol": "hgmt", "flip": False,
                    "max_examples": 0}
# How many batches an evaluation dispatches ahead of the devices at most (`Evaluator.totals`).
IN_FLIGHT = 2


def check_batch_size(config: ml_collections.ConfigDict) -> None:
    """A ValueError for a `config.eval_batch_size` below 1 (one the devices do not divide is
    rounded to a multiple of them, `Evaluator`)."""
    if config.eval_batch_size < 1:
        raise ValueError(f"config.eval_batch_size={config.eval_batch_size} must be at least 1")


def settings_of(config: ml_collections.ConfigDict, name: str = "test") -> dict:
    """The evaluation settings (SETTINGS) of `config.evals[name]`, for a config without `evals`
    (an older workdir's) of the evaluator its fields amount to (`run_config.older_evals`); the
    test protocol's (DEFAULT_SETTINGS) when the config has no such evaluator."""
    evals = run_config.evals_of(config)
    if name in evals:
        return {k: evals[name][k] for k in SETTINGS}
    return dict(DEFAULT_SETTINGS)


def step_examples(protocol: str, tasks: Sequence[str], num_examples: int) -> int:
    """The number of examples the statistics of `eval_step` depend on: the split's for a
    reference protocol's (BodyNet's per-batch averages), 0 where every task is measured by
    hgmt's, whose statistics are sums whatever the split's size."""
    used = {protocols.task_protocol(protocol, t) for t in tasks}
    return num_examples if used - {"hgmt"} else 0


@functools.lru_cache(maxsize=8)
def _compiled_step(model: MultiTaskHourglass, flip: bool, protocol: str, tasks: tuple[str, ...],
                   num_examples: int, loss_options: tuple) -> Callable:
    """`eval_step` for (model, flip, protocol, tasks, examples, loss options: ((task,
    ((option, value), ...)), ...)) as one jitted function over the devices, shared by the
    Evaluators of the same setting in this process, so that only the first traces and
    compiles it (a training run's evaluators, and the evaluators of a test, a notebook or a
    script evaluating several checkpoints of one configuration). `num_examples` matters to
    the reference protocols' statistics only (`step_examples`)."""
    metrics = {name: protocols.metric(protocol, name, num_examples) for name in tasks}
    return devices.spmd(functools.partial(
        eval_step, model=model, flip=flip, metrics=metrics,
        loss_options={task: dict(options) for task, options in loss_options},
        unusable_input=unusable_input(protocol)))


@functools.lru_cache(maxsize=8)
def _compiled_pictures(model: MultiTaskHourglass, flip: bool, protocol: str) -> Callable:
    """(variables, {'image', 'unusable'}) -> (`predict`'s predictions, `model_input`): what
    `Evaluator.pictures` draws, as one program compiled at its first call and shared like
    `_compiled_step`; run eagerly, the model's ops would each be dispatched and compiled on
    their own."""
    given = unusable_input(protocol)

    def pictured(variables: dict, batch: dict) -> tuple[dict, jnp.ndarray]:
        return (predict(variables, batch, model=model, flip=flip, unusable_input=given),
                model_input(batch, given))

    return jax.jit(pictured)


@functools.cache
def _add_on_devices() -> Callable:
    """The sums of two batches' statistics on the devices (`eval_step`'s trees, each leaf
    (devices, ...)): their leaves added one by one. One function for every Evaluator, so
    that evaluators whose statistics have the same tree, shapes and dtypes trace and compile
    it once between them."""
    return devices.spmd(lambda a, b: jax.tree.map(jnp.add, a, b))


class Evaluator:
    """The evaluation of one (config, split, frames, flip, protocol), set up once: the split's
    frames that `frames` selects ('middle', SURREAL's test protocol; 'all'; 'everyK'), or the
    records `indices`, at most `max_examples` of them (0: all), the model and its compiled
    evaluation step (`_compiled_step`: Evaluators of the same setting in a process share it).
    Calling it with variables gives the summary; the trainer keeps one per configured
    evaluator and calls it at its steps without recompiling. A reference protocol
    is refused unless config.image_size gives its 64 x 64 label maps
    (`protocols.check_label_size`)."""

    def __init__(self, config: ml_collections.ConfigDict,
                 tasks: str | Sequence[str] | None = None, *, split: str = "test",
                 frames: str = "middle", flip: bool = False, protocol: str = "hgmt",
                 max_examples: int = 0, indices: list[int] | None = None):
        self.tasks = parse_tasks(tasks or config.tasks)
        check_batch_size(config)
        self.split, self.flip, self.protocol = split, flip, protocols.check(protocol)
        protocols.check_label_size(protocol, self.tasks, config.image_size)
        self.window = protocols.window(protocol, cropping.config_window(config))
        self.image_size = config.image_size
        self.frames = "indices" if indices is not None else frames
        self.dataset, self.data_dir = config.dataset, config.data_dir
        self.source = builds.open_split(config.dataset, config.data_dir, split)
        if self.window == "reference":
            builds.check_reference_flags(self.source, config.dataset, config.data_dir)
        self.shards = record_reads.Shards.of(self.source)
        # The records that did not read while the frames were selected: their frames, so
        # whether `frames` takes them, are unknown (`_damaged` reports them apart).
        self.unreadable: list[int] = []
        # Each process meets the damaged records of its share of the batches: their union
        # (a collective) is what every process reports.
        self.combine = damage.union_over_processes if jax.process_count() > 1 else None
        if indices is None:  # by default each clip's middle frame
            indices = eval_data.eval_indices(config.dataset, config.data_dir, split,
                                             self.frames, self.unreadable)
            if self.combine is not None:
                # Every process selects the frames alone; a record that one of them could not
                # read (a damaged one) is left out by all, so that they split the same frames
                # between them and run the same batches.
                self.unreadable = self.combine(self.unreadable)
                left_out = set(self.unreadable)
                indices = [i for i in indices if i not in left_out]
        self.max_examples = max_examples
        self.frames_selected = len(indices)  # before the limit: the split's frames asked for
        if max_examples and len(indices) > max_examples:
            # Selection follows the split's order: a record after the last one taken would not
            # have been reached had it read.
            self.unreadable = [i for i in self.unreadable if i < indices[max_examples - 1]]
            indices = indices[:max_examples]
        if not indices and self.unreadable:  # the frames asked for may be among them
            raise eval_data.unreadable_split(self.source, self.unreadable)
        if not indices:
            raise ValueError(f"{config.dataset!r} split {split!r} has no frames to evaluate "
                             f"(frames={self.frames!r})")
        self.indices = indices
        # A batch splits evenly over the devices, which may be other than training's
        # (hgmt.evaluate on another host); the sums, hence the numbers, do not depend on it
        # but for float32 rounding (a batch's per-device sums are added in another order).
        count = jax.device_count()
        self.batch_size = max(config.eval_batch_size - config.eval_batch_size % count, count)
        if self.batch_size != config.eval_batch_size:
            logging.warning("evaluating in batches of %d, config.eval_batch_size=%d rounded to "
                            "a multiple of the %d devices", self.batch_size,
                            config.eval_batch_size, count)
        self.model = create_model(config.model, heads(self.tasks))
        self.metrics = {name: protocols.metric(protocol, name, len(indices))
                        for name in self.tasks}
        loss_options = check_loss_options(config, self.tasks)
        self.p_step = _compiled_step(
            self.model, self.flip, self.protocol, self.tasks,
            step_examples(self.protocol, self.tasks, len(indices)),
            tuple((t, tuple(sorted(loss_options[t].items()))) for t in self.tasks))
        self.p_add = _add_on_devices()
        self.threads = eval_data.eval_threads()
        self.first_batch = None
        self.fits = False  # whether the variables of a call were found to fit the model

    def __call__(self, variables: dict, stop: Callable[[], None] | None = None) -> dict:
        """Metrics of `variables` under the metric protocol: {task: {metric: value,
        'protocol': the protocol that defined them}, 'protocol': ..., 'label_size': r of the
        r x r label maps, 'loss': {task: the mean over the usable examples of each example's
        last-stage loss (`eval_step`)}}. Neither
        the batch size nor the number of devices changes it, but for float32 rounding (the
        order in which a batch's per-device sums are added). `stop` is called before each
        batch (every process has as many); it raises to stop the evaluation."""
        damaged: list[int] = []
        return self.summary(self.totals(variables, damaged, stop), damaged)

    def totals(self, variables: dict, damaged: list[int],
               stop: Callable[[], None] | None = None) -> dict:
        """The sums of `eval_step`'s statistics over the evaluation's batches, on the host
        (numpy); the damaged records met are appended to `damaged`. The batches are made by
        `threads` threads (`eval_data.eval_batches`) while the devices run the last
        ones; the sums stay on the devices, each batch's added to them in its order (the
        additions numpy's would make), and are fetched once, at the end. At most IN_FLIGHT
        batches are dispatched ahead of the devices (their inputs held in device memory).
        Variables that do not fit the model of `tasks` and config.model are a ValueError:
        flax would take a tree with more than the model's (another task subset's) and compute
        another network with part of it."""
        if not self.fits:
            differences = variable_differences(self.model, self.image_size, variables)
            if differences:
                raise ValueError(
                    f"the variables do not fit the model of tasks {'+'.join(self.tasks)} and "
                    f"this config.model ({differences}); evaluate them with the tasks and "
                    f"config they were trained with (`hgmt.inference.trained_model."
                    f"restore_for_inference(workdir)` returns a workdir's, with its variables)")
            self.fits = True
        replicated = devices.replicate(variables)
        total = None
        in_flight: collections.deque = collections.deque()
        for batch in eval_data.eval_batches(self.source, self.indices,
                                            batch_size=self.batch_size,
                                            image_size=self.image_size,
                                            tasks=self.tasks, damaged=damaged,
                                            window=self.window, threads=self.threads):
            if stop is not None:
                stop()
            stats = self.p_step(replicated, devices.place_batch(batch))
            total = stats if total is None else self.p_add(total, stats)
            in_flight.append(stats)
            if len(in_flight) > IN_FLIGHT:
                jax.block_until_ready(in_flight.popleft())
            self.first_batch = self.first_batch or batch
        return devices.to_host(total)

    def summary(self, total: dict, damaged: list[int]) -> dict:
        """The summary (`__call__`) of the sums `total` (`totals`) of an evaluation that met
        the damaged records `damaged`."""
        count = float(total["count"])
        records = self._damaged(damaged)
        summary = {name: {"protocol": self.metrics[name].protocol,
                          **self.metrics[name].summarize(
                              total[name], num_damaged=records["num_damaged"])}
                   for name in self.tasks}
        summary["protocol"], summary["window"] = self.protocol, self.window
        summary["label_size"] = self.image_size // common.LABEL_STRIDE  # r: r x r label maps
        summary["dataset"], summary["data_dir"] = self.dataset, self.data_dir  # what it read
        usable = max(count - float(total["rejected"]), 1.0)
        summary["loss"] = {t: float(total[t]["loss"]) / usable for t in self.tasks}
        summary["num_examples"] = int(count)
        summary["unusable_frames"] = unusable_report(
            self.protocol, self.tasks, self.metrics, int(round(float(total["unusable"]))),
            int(round(float(total["rejected"]))))
        summary["split"], summary["flip"], summary["frames"] = self.split, self.flip, self.frames
        summary["metrics_version"] = metrics_versions.metrics_version(self.protocol)
        summary["max_examples"] = self.max_examples  # the limit asked for (0: none)
        summary["frames_selected"] = self.frames_selected  # the frames before that limit
        summary.update(records)
        if records["num_damaged"]:
            logging.warning("evaluation of split %r: %s", self.split,
                            markdown.damaged_note(summary))
        return summary

    def pictures(self, variables: dict, n: int = 4) -> np.ndarray:
        """(n, R, R*(1+tasks), 3) uint8: the first examples' inputs as the model is given
        them and each task's picture of the prediction the evaluation scores (`predict`:
        with the flip test if this evaluator has it)."""
        batch = {k: np.asarray(v[:n]) for k, v in self.first_batch.items()}
        preds, given = self._pictured(variables, {k: batch[k] for k in ("image", "unusable")})
        images = np.clip(np.round(np.asarray(given)), 0, 255)
        # A jitted function returns a dict's keys sorted: the strips follow the model's order.
        return pictures.prediction_strips(
            images.astype(np.uint8), {t: np.asarray(preds[t]) for t in self.model.tasks}, batch)

    @property
    def _pictured(self) -> Callable:
        """This evaluator's `_compiled_pictures`."""
        return _compiled_pictures(self.model, self.flip, self.protocol)

    def _damaged(self, damaged: list[int]) -> dict:
        """The damaged records, never left out silently: {'num_damaged', 'damaged_records'}
        the records the evaluation took that did not read, left out of its numbers (every
        process's, `combine`; what that does to each number: `markdown.damaged_note`), and
        {'num_unreadable', 'unreadable_records'} those that did not read on any process while
        the frames were selected, whose frames are unknown: each is left out if it is one of
        the frames asked for, which cannot be told.
        Records beyond `max_examples`' reach are in neither."""
        if self.combine is not None:
            damaged = self.combine(damaged)
        lost = [self.shards.name(i) for i in sorted(set(damaged))]
        unknown = [self.shards.name(i) for i in sorted(set(self.unreadable))]
        if unknown:
            logging.warning("split %r holds %d record(s) that do not read, whose frames are "
                            "unknown: each is left out of the evaluation if it is one of the "
                            "frames asked for (frames=%s), which cannot be told, so a protocol "
                            "compared with published tables needs them rebuilt: %s",
                            self.split, len(unknown), self.frames, "; ".join(unknown))
        return {"num_damaged": len(lost), "damaged_records": lost,
                "num_unreadable": len(unknown), "unreadable_records": unknown}


def evaluate(config: ml_collections.ConfigDict, variables: dict,
             tasks: str | Sequence[str] | None = None, **settings: Any) -> dict:
    """Metrics of `variables` (a checkpoint's {'params', 'batch_stats'}, as
    `hgmt.inference.trained_model.restore_for_inference` returns them) under the settings of
    `config.evals.test` (`settings_of`), updated by `settings` (SETTINGS' keys: split, frames,
    protocol, flip, max_examples; see `Evaluator`) -> the summary (`Evaluator.__call__`),
    e.g. summary['pose2d']['pckh@0.5'] a fraction in [0, 1], summary['pose3d']['mjd_mm'] and
    summary['depth']['rmse_mm'] in millimetres, None where nothing was averaged (the keys per
    protocol: docs/metrics.md). `tasks` (default `config.tasks`) must be those the variables
    were trained with."""
    return Evaluator(config, tasks, **{**settings_of(config), **settings})(variables)
