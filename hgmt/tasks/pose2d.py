"""2D pose: 16 Gaussian heatmaps (sigma 1 px) at the label resolution, MSE loss.

Metrics: PCKh@0.5 (head segment = |head_top - upper_neck| in the crop) per joint and mean, the
BodyNet-compatible PCK (distance < 3.2 px at 64x64), and PCK curves.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hgmt import surreal
from hgmt.tasks import common

NAME = "pose2d"
NUM_JOINTS = len(surreal.JOINT_NAMES)
NUM_CHANNELS = NUM_JOINTS
DEFAULT_LOSS_WEIGHT = 1000.0
SIGMA = 1.0
CHANNEL_FLIP = surreal.JOINT_FLIP  # channel permutation under a horizontal flip
PCK_THRESHOLDS = np.linspace(0.0, 1.0, 21)  # fractions of the head segment, for curves


def targets(batch: dict) -> jnp.ndarray:
    """batch['joints2d'] (B,16,2), ['visible'] (B,16) -> heatmaps (B,r,r,16), zero where the
    joint is not visible. r is the label size (segm's size)."""
    r = batch["segm"].shape[-1]
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
    """Additive statistics of a batch: correct counts per joint at each PCKh threshold, the
    BodyNet PCK (distance < 3.2 px at 64x64, scaled with r) and visible counts."""
    r = batch["segm"].shape[-1]
    gt, vis = batch["joints2d"], batch["visible"]
    dist = jnp.linalg.norm(decoded["joints2d"] - gt, axis=-1)  # (B,16)
    head = jnp.linalg.norm(gt[:, surreal.HEAD_TOP] - gt[:, surreal.UPPER_NECK], axis=-1)
    rel = dist / jnp.maximum(head, 1e-6)[:, None]
    thr = jnp.asarray(PCK_THRESHOLDS, jnp.float32)
    within = (rel[..., None] <= thr) * vis[..., None]  # (B,16,K)
    return {"pckh_correct": within.sum(0), "visible": vis.sum(0),
            "pck_correct": ((dist < 3.2 * r / 64) * vis).sum(0)}


def summarize(stats: dict) -> dict:
    """Sums of metric_stats -> PCKh@0.5 per joint and mean, PCK, and the PCKh curve.

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
        "pck_bodynet": float(mean(pck)),
        "pckh_curve": {"thresholds": PCK_THRESHOLDS.tolist(), "mean": mean(curve).tolist()},
    }
