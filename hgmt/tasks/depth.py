"""Full-body depth as 20 classes: 0 background, 1..19 = clamp(ceil((d - dPelvis)/45 mm), -9, 9)
+ 10 on the foreground. Spatial cross-entropy. Metrics: RMSE in mm over ground-truth foreground
pixels (bin index error x 45 mm) and the accuracy of the bin class there."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hgmt.tasks import common

NAME = "depth"
NUM_CHANNELS = 2 * common.MAX_BIN + 2  # background + 19 bins
DEFAULT_LOSS_WEIGHT = 1.0
CHANNEL_FLIP = np.arange(NUM_CHANNELS)  # depth bins do not change under a flip


def targets(batch: dict) -> jnp.ndarray:
    """batch['depth'] (B,r,r) metres (0 background), ['pelvis_depth'] (B,) -> (B,r,r) int32."""
    d = batch["depth"]
    bins = common.depth_bin(d - batch["pelvis_depth"][:, None, None]) + common.MAX_BIN + 1
    return jnp.where(d > 0, bins, 0).astype(jnp.int32)


def loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    return common.spatial_cross_entropy(pred, target)


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,20) logits -> class map and metric depth (metres, 0 on predicted background)."""
    classes = common.argmax_classes(pred)
    dz = common.bin_centre(classes - common.MAX_BIN - 1)
    metres = jnp.where(classes > 0, batch["pelvis_depth"][:, None, None] + dz, 0.0)
    return {"depth_classes": classes, "depth_m": metres}


def metric_stats(decoded: dict, batch: dict) -> dict:
    gt = targets(batch)
    fg = gt > 0
    err_mm = (decoded["depth_classes"] - gt) * common.BIN_SIZE * 1000.0
    return {"sq_error_mm": jnp.sum(jnp.where(fg, err_mm**2, 0.0)),
            "correct": jnp.sum(fg & (decoded["depth_classes"] == gt)),
            "foreground": jnp.sum(fg)}


def summarize(stats: dict) -> dict:
    n = max(float(stats["foreground"]), 1.0)
    return {"rmse_mm": float(np.sqrt(float(stats["sq_error_mm"]) / n)),
            "bin_accuracy": float(stats["correct"]) / n}
