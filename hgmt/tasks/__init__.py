"""The four tasks, one module each; `TASKS` is a plain dict from task name to module, and the
rest of hgmt loops over it. Adding a task means one module plus an entry in `TASKS`
(tests/test_task_interface.py registers a fifth). A task module provides:

- the model's head: `NAME`, `NUM_CHANNELS`, `CHANNEL_FLIP` (the channels' permutation under a
  horizontal flip), `DEFAULT_LOSS_WEIGHT`, `LOSS_OPTIONS` (the keyword options of its `loss`
  and their defaults, which reproduce the reference's loss; `{}` for none);
- its labels: `labels(crop: spec.Crop) -> dict` of numpy arrays, cut from the record by the
  crop (flips included); the loader decodes only what the selected tasks' labels read;
- training: `targets(batch)` and `loss(pred, target, **options)` (jit-able, batched);
- evaluation: `decode(pred, batch)`, `metric_stats(decoded, batch)` (split-additive sums),
  `summarize(sums)` (hgmt's definitions), `HEADLINES` {protocol: `spec.Headline`} (the
  protocols it implements and how their numbers are shown, compared and tabulated), and
  `protocol_metric(protocol, num_examples) -> (stats, summarize)` for those other than hgmt;
- one image's prediction: `predict(pred, frame: spec.Frame) -> dict` (its result in the
  original image), `to_json(result)`, and `draw(pred, rgb, frame)` (its picture in the
  prediction panel and in TensorBoard).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from types import ModuleType

import jax.numpy as jnp

from hgmt.tasks import depth, pose2d, pose3d, segm

TASKS: dict[str, ModuleType] = {
    "pose2d": pose2d, "pose3d": pose3d, "depth": depth, "segm": segm,
}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)


def all_subsets() -> list[tuple[str, ...]]:
    """The non-empty task subsets (15 of the four tasks) in canonical order, singles first."""
    return [c for k in range(1, len(TASKS) + 1) for c in itertools.combinations(TASKS, k)]


def parse_tasks(spec: str | Sequence[str]) -> tuple[str, ...]:
    """'pose2d+segm' | 'all' | ['segm', 'pose2d'] -> names in canonical order.

    Raises ValueError naming the unknown task and the valid ones.
    """
    names = spec.split("+") if isinstance(spec, str) else list(spec)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return tuple(TASKS)
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or spec!r}: choose a non-empty subset of "
                         f"{', '.join(TASKS)} joined by '+', or 'all'")
    return tuple(n for n in TASKS if n in names)


def compute_losses(outputs: Mapping[str, jnp.ndarray], batch: Mapping[str, jnp.ndarray],
                   weights: Mapping[str, float],
                   options: Mapping[str, Mapping[str, float]] | None = None,
                   ) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """outputs {task: (S,B,r,r,C)} -> (weighted total, {task: unweighted loss summed over the
    S stages}). Targets are made here, inside the jitted step, from the cropped batch.
    options: {task: keyword options of its loss} (absent: the task's defaults)."""
    per_task = {}
    for name, preds in outputs.items():
        task = TASKS[name]
        target = task.targets(batch)
        kwargs = dict((options or {}).get(name, {}))
        per_task[name] = sum(task.loss(preds[s], target, **kwargs)
                             for s in range(preds.shape[0]))
    total = sum(weights[name] * value for name, value in per_task.items())
    return total, per_task
