"""2D pose: 16 Gaussian heatmaps (sigma 1 px) at the label resolution, MSE loss.

Metrics (protocol hgmt): PCKh@0.5 (head segment = |head_top - upper_neck| in the crop) per
joint and mean, PCK@3.2px (sub-pixel distance < 3.2 px at 64x64, all 16 joints), and the PCKh
curve; means over the joints visible in the split. Protocol bodynet: `bodynet_stats`, BodyNet's
own PCK (docs/metrics.md).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from hgmt.sources import surreal
from hgmt.tasks import common, spec
from hgmt.tasks.spec import Frame, Headline

NAME = "pose2d"
NUM_JOINTS = len(surreal.JOINT_NAMES)
NUM_CHANNELS = NUM_JOINTS
DEFAULT_LOSS_WEIGHT = 1000.0
LOSS_OPTIONS: dict = {}  # none: `loss` takes no options
SIGMA = 1.0
CHANNEL_FLIP = surreal.JOINT_FLIP  # channel permutation under a horizontal flip
HEADLINES = {
    "hgmt": Headline(("pckh@0.5", "pck@3.2px"), "pckh@0.5", (), "PCKh@0.5",
                     "pckh@0.5_per_joint", "joint"),
    "bodynet": Headline(("pck",), "pck", (), "PCK (BodyNet)", "pck_per_joint", "joint"),
}
# BodyNet averages its 2D PCK per test batch of opt.batchSize: 4 by default
# (gulvarol/bodynet training/opts.lua `-batchSize 4`, as in training/exp/run.sh).
BODYNET_TEST_BATCH = 4
PCK_THRESHOLDS = np.linspace(0.0, 1.0, 21)  # fractions of the head segment, for curves


def labels(crop: spec.Crop) -> dict:
    """The cropped example's entries this task reads: 'joints2d', 'visible'."""
    return spec.joint_labels(crop)


def targets(batch: dict) -> jnp.ndarray:
    """batch['joints2d'] (B,16,2), ['visible'] (B,16) -> heatmaps (B,r,r,16), zero where the
    joint is not visible. r is the label size."""
    r = common.label_size(batch)
    maps = common.gaussian(batch["joints2d"], r, SIGMA) * batch["visible"][..., None, None]
    return jnp.moveaxis(maps, 1, -1)


def loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    return common.mse(pred, target)


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,16) heatmaps -> joints (B,16,2) in label px and in original-image px."""
    joints, score = common.subpixel_argmax(jnp.moveaxis(pred.astype(jnp.float32), -1, 1))
    image = common.apply_affine(common.invert_affine(batch["crop"]), joints)
    return {"joints2d": joints, "joints2d_image": image, "score": score}


def metric_stats(decoded: dict, batch: dict) -> dict:
    """Additive statistics of a batch: correct counts per joint at each PCKh threshold, PCK
    (distance < 3.2 px at 64x64, scaled with r) and visible counts, each example weighted by
    `common.example_weights`."""
    r = common.label_size(batch)
    gt = batch["joints2d"]
    vis = batch["visible"] * common.example_weights(batch, gt.shape[0])[:, None]
    dist = jnp.linalg.norm(decoded["joints2d"] - gt, axis=-1)  # (B,16)
    head = jnp.linalg.norm(gt[:, surreal.HEAD_TOP] - gt[:, surreal.UPPER_NECK], axis=-1)
    rel = dist / jnp.maximum(head, 1e-6)[:, None]
    thr = jnp.asarray(PCK_THRESHOLDS, jnp.float32)
    within = (rel[..., None] <= thr) * vis[..., None]  # (B,16,K)
    return {"pckh_correct": within.sum(0), "visible": vis.sum(0),
            "pck_correct": ((dist < 3.2 * r / 64) * vis).sum(0)}


def summarize(stats: dict) -> dict:
    """Sums of metric_stats -> PCKh@0.5 per joint and mean, PCK@3.2px, and the PCKh curve.

    Means are over the joints that were visible at least once in the split; a joint never
    visible has no score (None per joint) rather than counting as 0."""
    vis = np.asarray(stats["visible"])
    seen = vis > 0
    curve = np.asarray(stats["pckh_correct"]) / np.maximum(vis, 1)[:, None]  # (16,K)
    at_half = curve[:, int(np.argmin(np.abs(PCK_THRESHOLDS - 0.5)))]
    pck = np.asarray(stats["pck_correct"]) / np.maximum(vis, 1)

    def mean(values: np.ndarray):
        return values[seen].mean(0) if seen.any() else values[:0].sum(0) * np.nan

    return {
        "pckh@0.5": float(mean(at_half)),
        "pckh@0.5_per_joint": {n: float(v) if s else None
                               for n, v, s in zip(surreal.JOINT_NAMES, at_half, seen,
                                                  strict=True)},
        "pck@3.2px": float(mean(pck)),
        "pckh_curve": {"thresholds": PCK_THRESHOLDS.tolist(), "mean": mean(curve).tolist()},
    }


# --- Protocol "bodynet": gulvarol/bodynet training/util/eval.lua `heatmapAccuracy` (PCK at
# 0.5 x heatmapSize/10 = 3.2 px at 64x64 between the integer argmaxes of the predicted and the
# ground-truth heatmaps) on 10 joints, averaged per test batch as its training/test.lua does.
BODYNET_JOINTS = (0, 1, 2, 3, 4, 5, 10, 11, 14, 15)  # eval.lua: {1,2,3,4,5,6,11,12,15,16}


def integer_argmax(maps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(...,H,W) -> ((...,2) int (x,y) of the first maximum in row-major order, (...) max)."""
    h, w = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], h * w)
    idx = jnp.argmax(flat, axis=-1)
    return jnp.stack([idx % w, idx // w], -1), jnp.max(flat, axis=-1)


def bodynet_hits(pred: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(B,r,r,16) predicted heatmaps -> (correct, valid), each (B,16) float, per eval.lua.

    getPreds2DCropped: a heatmap whose maximum is <= 0 predicts the first pixel. calcDists: a
    joint counts only if its ground-truth argmax (of the target heatmap) lies beyond the first
    row and column (`label > 1`, 1-based), which also drops joints with an empty heatmap.
    distAccuracy: correct if the distance / (r/10) <= 0.5."""
    r = pred.shape[1]
    p_xy, p_max = integer_argmax(jnp.moveaxis(pred.astype(jnp.float32), -1, 1))
    p_xy = jnp.where((p_max > 0)[..., None], p_xy, 0)
    g_xy, g_max = integer_argmax(jnp.moveaxis(targets(batch), -1, 1))
    g_xy = jnp.where((g_max > 0)[..., None], g_xy, 0)
    valid = (g_xy[..., 0] >= 1) & (g_xy[..., 1] >= 1)
    dist = jnp.linalg.norm((p_xy - g_xy).astype(jnp.float32), axis=-1) / (r / 10)
    return ((dist <= 0.5) & valid).astype(jnp.float32), valid.astype(jnp.float32)


def bodynet_stats(pred: jnp.ndarray, batch: dict, *, num_groups: int,
                  group_size: int) -> dict:
    """Correct and valid counts (num_groups,16) per BodyNet test batch: example
    batch['position'] (its index in the split's test order) belongs to batch
    position // group_size."""
    correct, valid = bodynet_hits(pred, batch)
    weights = common.example_weights(batch, correct.shape[0])[:, None]
    correct, valid = correct * weights, valid * weights
    group = jax.nn.one_hot(batch["position"] // group_size, num_groups)  # (B,G)
    return {"correct": jnp.einsum("bg,bj->gj", group, correct),
            "valid": jnp.einsum("bg,bj->gj", group, valid)}


def bodynet_summarize(stats: dict) -> dict:
    """test.lua: PCK = the mean over test batches of heatmapAccuracy, which is the mean over
    the 10 joints with a valid instance in the batch of correct / valid; a batch with none
    (NaN) is left out (nanCntPck). Per joint: correct / valid over the whole split (not in
    BodyNet's log; a breakdown)."""
    correct = np.asarray(stats["correct"])[:, BODYNET_JOINTS]  # (G,10)
    valid = np.asarray(stats["valid"])[:, BODYNET_JOINTS]
    seen = valid > 0
    per_batch = np.where(seen, correct / np.maximum(valid, 1), 0).sum(1) / np.maximum(
        seen.sum(1), 1)
    batches = seen.any(1)
    totals = correct.sum(0) / np.maximum(valid.sum(0), 1)
    return {
        "pck": float(per_batch[batches].mean()) if batches.any() else None,
        "pck_per_joint": {surreal.JOINT_NAMES[j]: float(v) if n > 0 else None
                          for j, v, n in zip(BODYNET_JOINTS, totals, valid.sum(0),
                                             strict=True)},
        "num_batches": int(batches.sum()),
    }


def protocol_metric(protocol: str, num_examples: int) -> tuple:
    """(stats, summarize) of a protocol of HEADLINES other than hgmt, for a split of
    `num_examples`: BodyNet's PCK, averaged per test batch of BODYNET_TEST_BATCH."""
    groups = -(-num_examples // BODYNET_TEST_BATCH)
    return (functools.partial(bodynet_stats, num_groups=groups, group_size=BODYNET_TEST_BATCH),
            bodynet_summarize)


# --- One image's prediction: result, JSON, picture -------------------------------------------
def predict(pred: np.ndarray, frame: Frame) -> dict:
    """(r,r,16) heatmaps -> {'joints2d': (16,2) original-image px}."""
    joints = decode(jnp.asarray(pred)[None], frame.batch)["joints2d_image"]
    return {"joints2d": np.asarray(joints[0]) - frame.shift}


def to_json(result: dict) -> dict:
    return {"joints2d_image_px": np.round(result["joints2d"], 2).tolist()}


def draw(pred: np.ndarray, rgb: np.ndarray, frame: Frame) -> np.ndarray:
    """The decoded skeleton on the (S,S,3) crop."""
    from hgmt.tasks import drawing

    joints, _ = common.subpixel_argmax(np.moveaxis(pred, -1, 0))
    return drawing.draw_skeleton(rgb, np.asarray(joints), scale=rgb.shape[0] / pred.shape[0])
