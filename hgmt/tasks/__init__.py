"""The four tasks, one module each; `TASKS` is a plain dict from task name to module, and the
rest of hgmt loops over it. Adding a task means one module plus an entry in `TASKS`
(tests/test_task_interface.py registers a fifth). What a task module provides (its head,
labels, targets and loss, decoding, metrics and protocols, person finding, one image's
prediction, JSON and pictures) is `spec.TaskModule`; `spec.check_task` checks a module
against it.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any

import jax.numpy as jnp
import ml_collections

from hgmt.tasks import depth, pose2d, pose3d, segm

TASKS: dict[str, ModuleType] = {
    "pose2d": pose2d, "pose3d": pose3d, "depth": depth, "segm": segm,
}


def all_subsets() -> list[tuple[str, ...]]:
    """The non-empty task subsets (15 of the four tasks) in canonical order, singles first."""
    return [c for k in range(1, len(TASKS) + 1) for c in itertools.combinations(TASKS, k)]


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'pose2d+segm' | 'all' | ['segm', 'pose2d'] -> names in canonical order.

    Raises ValueError naming the unknown task and the valid ones, after which a caller puts
    where `spec` was given (`config.tasks='x': unknown task(s) x; choose ...`).
    """
    names = spec.split("+") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return tuple(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {', '.join(unknown) or repr(spec)}; choose a "
                         f"non-empty subset of {', '.join(TASKS)} joined by '+', or 'all'")
    return tuple(n for n in TASKS if n in names)


def config_tasks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
    """`parse_tasks` of a config's `tasks` field, its error naming the field (a
    `--config.tasks=` override's mistake reads as such)."""
    try:
        return parse_tasks(config.tasks)
    except ValueError as e:
        raise ValueError(f"config.tasks={config.tasks!r}: {e}") from None


def compute_losses(outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray],
                   weights: Mapping[str, float],
                   options: Mapping[str, Mapping[str, float]] | None = None,
                   axis_name: str | None = None,
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """outputs {task: (S,B,r,r,C)} -> (weighted total, {task: unweighted loss summed over the
    S stages}). Targets are made here, inside the jitted step, from the cropped batch.
    options: {task: keyword options of its loss} (absent: the task's defaults). axis_name:
    the device axis the global batch is split over (None: the batch is all there is); each loss
    is then this device's share, whose mean over the devices is the global batch's loss."""
    per_task = {}
    for name, preds in outputs.items():
        task = TASKS[name]
        target = task.targets(batch)
        kwargs = dict((options or {}).get(name, {}))
        per_task[name] = sum(task.loss(preds[s], target, axis_name=axis_name, **kwargs)
                             for s in range(preds.shape[0]))
    return weighted_total(weights, per_task), per_task


def weighted_total(weights: Mapping[str, float], per_task: Mapping[str, Any]) -> Any:
    """The total loss: each task's loss times its weight, summed in `per_task`'s order."""
    return sum(weights[name] * value for name, value in per_task.items())


def heads(names: str | Sequence[str]) -> dict[str, int]:
    """{task: NUM_CHANNELS} of the given tasks (as `parse_tasks` takes them, in canonical
    order): what the model's heads output."""
    return {n: TASKS[n].NUM_CHANNELS for n in parse_tasks(names)}


def channel_flips(names: str | Sequence[str]) -> dict[str, tuple[int, ...]]:
    """{task: CHANNEL_FLIP} of the given tasks (as `parse_tasks` takes them): each task's
    channel permutation under a horizontal flip."""
    return {n: tuple(TASKS[n].CHANNEL_FLIP) for n in parse_tasks(names)}


def reads_distance(names: str | Sequence[str]) -> bool:
    """Whether one of the given tasks predicts with the person's camera distance (its
    READS_DISTANCE): a model of such a task needs the metres a training window spans."""
    return any(TASKS[n].READS_DISTANCE for n in parse_tasks(names))


def _check_task_names(field: str, given: dict) -> None:
    """A key of config.<field> that is no task is an error naming the valid ones."""
    unknown = sorted(set(given) - set(TASKS))
    if unknown:
        raise ValueError(f"config.{field} has {', '.join(unknown)}, which are no tasks; valid: "
                         f"{', '.join(TASKS)}")


def check_loss_weights(config: ml_collections.ConfigDict, tasks: tuple[str, ...]) -> dict:
    """{task: weight} of the selected tasks: `config.loss_weights[task]` where given, else the
    task's default, so `--config.tasks=...` needs no matching weights. A weight for a name
    that is no task is an error (a typo would otherwise be ignored silently)."""
    given = dict(config.loss_weights)
    _check_task_names("loss_weights", given)
    return {t: float(given.get(t, TASKS[t].DEFAULT_LOSS_WEIGHT)) for t in tasks}


def default_loss_options(tasks: Sequence[str]) -> dict[str, dict[str, float]]:
    """{task: its LOSS_OPTIONS} of the tasks whose loss takes options: the reference's losses,
    and what a config saved before `config.loss_options` trained with."""
    return {t: dict(TASKS[t].LOSS_OPTIONS) for t in parse_tasks(tasks) if TASKS[t].LOSS_OPTIONS}


def untrained_settings(config: ml_collections.ConfigDict, tasks: tuple[str, ...]) -> list[str]:
    """The loss weights and options `config` sets, away from their defaults, for tasks it does
    not train (`tasks`), as 'loss_weights.segm=5.0': they have no effect (a `--config.tasks=`
    override that left out a task set on purpose, or a typo in the tasks)."""
    out = [f"loss_weights.{t}={float(w)}" for t, w in dict(config.loss_weights).items()
           if t in TASKS and t not in tasks and float(w) != TASKS[t].DEFAULT_LOSS_WEIGHT]
    for t, given in dict(config.get("loss_options", {})).items():
        if t in TASKS and t not in tasks:
            out += [f"loss_options.{t}.{k}={float(v)}" for k, v in dict(given).items()
                    if float(v) != TASKS[t].LOSS_OPTIONS.get(k)]
    return out


def check_loss_options(config: ml_collections.ConfigDict,
                       tasks: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """{task: {option: value}} of the selected tasks' loss options: each task's `LOSS_OPTIONS`
    defaults updated by `config.loss_options[task]` (a config without the field, such as one
    saved before it existed, gets the defaults: `default_loss_options`). A task or option name
    that does not exist is an error naming the valid ones."""
    given = {t: dict(o) for t, o in dict(config.get("loss_options", {})).items()}
    _check_task_names("loss_options", given)
    for t, opts in given.items():
        bad = sorted(set(opts) - set(TASKS[t].LOSS_OPTIONS))
        if bad:
            raise ValueError(f"config.loss_options.{t} has {', '.join(bad)}, which {t}'s loss "
                             f"does not take; valid: {', '.join(TASKS[t].LOSS_OPTIONS) or 'none'}")
    return {t: {k: float(v) for k, v in {**TASKS[t].LOSS_OPTIONS, **given.get(t, {})}.items()}
            for t in tasks}
