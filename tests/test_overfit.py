"""Overfit a handful of demo examples: heads, targets, losses and decoding line up.

Every loss must fall by >= 90 % from its first-step value, and the decoded predictions on the
same examples must be good, far from those of an all-zero prediction (heads start near zero,
so the first-step loss of pose2d and pose3d is about that of an all-zero prediction). Minutes
each on 2 CPU cores: marked slow (`pytest -m slow`); the default suite runs a 60-step cut of
the four tasks together.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hgmt.data import builds, cropping
from hgmt.data import input_pipeline as ip
from hgmt.models import create_model
from hgmt.tasks import TASKS, compute_losses, heads, parse_tasks

STEPS = 400
FEATURES = 64  # 32 caps pose3d: a 1x1 head from 32 features to 16x19 channels


def _examples(data_dir, n=8):
    source = builds.open_split("surreal/all", data_dir, "train")
    picks = np.linspace(0, len(source) - 1, n).astype(int)
    examples = [cropping.crop_example(source[int(i)], 64, ip.Augment.none()) for i in picks]
    return {k: jnp.asarray(np.stack([e[k] for e in examples])) for k in examples[0]}


def overfit(tasks, batch, steps=STEPS, learning_rate=5e-3, features=FEATURES):
    """Trains a 1-stack, `features`-wide model on `batch` alone; returns the first and last
    losses and the last-stage predictions."""
    model = create_model(ml_collections.ConfigDict(dict(
        num_stacks=1, features=features, depth=2, interaction="sum", shared_trunk=False,
        dtype="float32")), heads(tasks))
    variables = model.init(jax.random.key(0), batch["image"][:1], train=False)
    tx = optax.adam(learning_rate)
    weights = {t: TASKS[t].DEFAULT_LOSS_WEIGHT for t in tasks}

    @jax.jit
    def step(params, batch_stats, opt_state):
        def loss_fn(p):
            outputs, updates = model.apply({"params": p, "batch_stats": batch_stats},
                                           batch["image"], train=True, mutable=["batch_stats"])
            total, per_task = compute_losses(outputs, batch, weights)
            return total, (per_task, updates["batch_stats"], outputs)

        grads, (per_task, batch_stats, outputs) = jax.grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, per_task, outputs

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    for i in range(steps):
        params, batch_stats, opt_state, losses, outputs = step(params, batch_stats, opt_state)
        if i == 0:
            first = losses
    return first, losses, {t: o[-1] for t, o in outputs.items()}


# Decoded-metric floors, far above an all-zero prediction's. Measured after 400 steps, all four
# tasks together / alone: pose2d PCK 1.0 / 1.0; segm mIoU 0.90 / 0.16-0.30 and pixel accuracy
# 0.99 / 0.947-0.97; depth bin accuracy 0.97 / 0.84, RMSE 56 / 113 mm; pose3d MJD 16 / 16 mm.
# Depth alone on the demo data's distance depth maps (SURREAL's; the generator's format 2):
# bin accuracy 0.883, RMSE 154 mm (on format 1's planar depth 0.860, 121 mm; all-zero logits,
# decoded as background: 0.0, 439 mm), its loss as low (0.046 against 0.052).
# Alone, segm is on a plateau at 400 steps (the large parts learned, hands and feet not yet)
# whose level depends on float rounding: across XLA's optimisation levels and device counts its
# mIoU was 0.159, 0.214, 0.234 or 0.276 (all-zero logits: 0.0, pixel accuracy 0.896); it leaves
# the plateau between 700 and 1200 steps.
SEGM_FLOORS = {"together": (0.95, 0.25), "alone": (0.93, 0.12)}  # pixel accuracy, mean IoU


def _check(tasks, data_dir):
    batch = _examples(data_dir)
    first, last, preds = overfit(parse_tasks(tasks), batch)
    for t in preds:
        drop = 1 - float(last[t]) / float(first[t])
        assert drop >= 0.9, f"{t}: loss {float(first[t]):.4g} -> {float(last[t]):.4g}"
        task = TASKS[t]
        summary = task.summarize(task.metric_stats(task.decode(preds[t], batch), batch))
        if t == "pose2d":
            assert summary["pck@3.2px"] >= 0.9, summary
        elif t == "segm":
            accuracy, iou = SEGM_FLOORS["alone" if len(preds) == 1 else "together"]
            assert summary["pixel_accuracy"] >= accuracy and summary["mean_iou"] >= iou, summary
        elif t == "depth":
            assert summary["bin_accuracy"] >= 0.7 and summary["rmse_mm"] < 200, summary
        elif t == "pose3d":
            # All-zero volumes decode to ~435 mm; measured 16 mm.
            assert summary["mjd_mm"] < 40, summary


@pytest.mark.slow
def test_overfit_all_four_tasks(demo_dataset):
    _check("all", demo_dataset[1])


@pytest.mark.slow
@pytest.mark.parametrize("task", ["pose2d", "pose3d", "depth", "segm"])
def test_overfit_single_task(demo_dataset, task):
    _check(task, demo_dataset[1])


def test_every_loss_falls_within_60_steps(demo_dataset):
    """The default suite's check that the four tasks learn together: a 16-wide model, 60 steps.
    Measured drops: depth 0.88, pose2d 0.90, segm 0.88, pose3d 0.56 (its 304 channels move
    slowest); an all-zero or a sign-flipped gradient leaves them near 0."""
    batch = _examples(demo_dataset[1])
    first, last, _ = overfit(parse_tasks("all"), batch, steps=60, features=16)
    for t, floor in {"pose2d": 0.7, "segm": 0.7, "depth": 0.7, "pose3d": 0.4}.items():
        drop = 1 - float(last[t]) / float(first[t])
        assert 0 < float(last[t]) and drop >= floor, (
            f"{t}: loss {float(first[t]):.4g} -> {float(last[t]):.4g}")
