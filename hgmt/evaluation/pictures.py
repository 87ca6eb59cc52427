"""Pictures of a batch's predictions: one row per example, the input then each task's picture
(TensorBoard images during evaluation)."""

from __future__ import annotations

import jax
import numpy as np

from hgmt.tasks import TASKS
from hgmt.tasks.spec import Frame


def prediction_strips(images: np.ndarray, preds: dict, batch: dict) -> np.ndarray:
    """(n,R,R,3) uint8 RGB crops, {task: (n,r,r,C)} and their cropped batch -> (n,R,R*(1+tasks),3)
    uint8 rows: the input, then each task's picture (the task module's `draw`)."""
    rows = []
    for i in range(images.shape[0]):
        rgb = np.asarray(images[i], np.uint8)
        frame = Frame({k: jax.numpy.asarray(v[i:i + 1]) for k, v in batch.items()})
        pics = [TASKS[t].draw(np.asarray(p[i]), rgb, frame) for t, p in preds.items()]
        rows.append(np.concatenate([rgb, *pics], axis=1))
    return np.stack(rows)
