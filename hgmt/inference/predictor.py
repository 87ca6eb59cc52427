"""Run a trained model on any image: 2D/3D pose, part segmentation and depth.

    python -m hgmt.predict --workdir=DIR IMAGE [IMAGE ...] --out=OUTDIR [--bbox=x,y,w,h] [--step=N]

For each image writes OUTDIR/<name>.png (a panel: the input crop, then a figure per task the
model predicts: 2D skeleton; 3D skeleton, front and side, axes in mm; depth with a colour bar in
mm from the pelvis; body parts with a legend) and
OUTDIR/<name>.json (2D joints in image pixels, root-relative 3D joints in mm, class maps).

The person crop is the square window around `--bbox` (x, y, w, h in pixels: the person with a
margin, as training crops are), else the whole image, centred. Python use:

    from hgmt.predict import Predictor
    predictor = Predictor("runs/demo")
    result = predictor(rgb_uint8_image, bbox=(x, y, w, h))  # dict of numpy arrays

3D decoding needs the person's depth, which one image does not give: it is estimated from the
crop size (a training crop spans about CROP_METRES at the person), and the image centre is taken
as the principal point. Root-relative joints depend on it only through their overall scale.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hgmt.data import input_pipeline
from hgmt.models import create_model, predict_last_stage
from hgmt.sources import surreal
from hgmt.tasks import TASKS, common, drawing, heads, parse_tasks
from hgmt.tasks.spec import Frame
from hgmt.training import checkpoints

# Metres a training crop spans at the person's depth (side_px * pelvis_depth / focal): 2.23 +-
# 0.24 m over 800 frames of generated demo clips, 2.48 +- 0.17 m over the 100 frames of a real
# SURREAL clip; this value is within one standard deviation of both
# (tests/test_predict_export.py::test_crop_metres_is_what_training_crops_span).
CROP_METRES = 2.35


def crop_window(image_shape: Sequence[int], bbox: Sequence[float] | None
                ) -> tuple[np.ndarray, float]:
    """(centre (2,), side) of the square crop: around bbox (x, y, w, h) or the whole image."""
    h, w = image_shape[:2]
    if bbox is None:
        return np.array([(w - 1) / 2, (h - 1) / 2]), float(max(h, w))
    x, y, bw, bh = (float(v) for v in bbox)
    if bw <= 0 or bh <= 0:
        raise ValueError(f"bbox {tuple(bbox)}: width and height must be positive")
    return np.array([x + bw / 2 - 0.5, y + bh / 2 - 0.5]), max(bw, bh)


class Predictor:
    """A restored checkpoint as a function: RGB uint8 (H,W,3) image -> per-task results."""

    def __init__(self, workdir: str, step: int | str | None = None,
                 config: ml_collections.ConfigDict | None = None):
        self.config, self.variables, self.step = checkpoints.restore_for_inference(
            workdir, step, config)
        self.tasks = parse_tasks(self.config.tasks)
        self.image_size = int(self.config.image_size)
        model = create_model(self.config.model, heads(self.tasks))
        self._apply = jax.jit(functools.partial(predict_last_stage, model))

    def __call__(self, image: np.ndarray, bbox: Sequence[float] | None = None) -> dict:
        """-> {'crop_image' (R,R,3) uint8, 'crop' (2,3) image px -> label px, 'raw' {task:
        (r,r,C)}, 'frame' (the decoding `Frame`), and each task's `predict` entries: 'joints2d'
        (16,2) image px, 'joints3d_rel_mm' (16,3), 'segm' (r,r) and 'segm_image' (H,W) part
        classes 0..14, 'depth' (r,r) and 'depth_image' (H,W) classes 0..19, 'depth_rel_mm'
        (r,r) depth relative to the pelvis (nan on background)}."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H,W,3), got {image.dtype} "
                             f"{image.shape}")
        size, r = self.image_size, self.image_size // common.LABEL_STRIDE
        centre, side = crop_window(image.shape, bbox)
        m_image = input_pipeline.crop_affine(centre, side, size)
        m_label = input_pipeline.crop_affine(centre, side, r)
        crop = cv2.warpAffine(image, m_image, (size, size), flags=cv2.INTER_LINEAR)
        outputs = self._apply(self.variables, crop[None])
        raw = {t: np.asarray(outputs[t][0]) for t in self.tasks}  # in the tasks' order
        out = {"crop_image": crop, "crop": m_label, "raw": raw}
        # Decoding frame: the image centre moved to SURREAL's principal point (160, 120).
        shift = np.array([surreal.INTRINSICS[0, 2] - (image.shape[1] - 1) / 2,
                          surreal.INTRINSICS[1, 2] - (image.shape[0] - 1) / 2])
        m_virtual = m_label.copy()
        m_virtual[:, 2] -= m_label[:, :2] @ shift
        batch = {"crop": jnp.asarray(m_virtual[None], jnp.float32),
                 "pelvis_depth": jnp.asarray([surreal.INTRINSICS[0, 0] * CROP_METRES / side],
                                             jnp.float32)}
        out["frame"] = Frame(batch, cv2.invertAffineTransform(m_label), image.shape[:2], shift)
        for t, pred in raw.items():
            out.update(TASKS[t].predict(pred, out["frame"]))
        return out


def to_json(result: dict, tasks: Sequence[str]) -> dict:
    """The JSON-able part of a result: each task's `to_json` (joints, class maps in the crop's
    label frame, as lists)."""
    out = {"tasks": list(tasks), "joint_names": list(surreal.JOINT_NAMES),
           "crop_affine_image_to_label": np.round(result["crop"], 6).tolist()}
    for t in tasks:
        out.update(TASKS[t].to_json(result))
    return out


PANEL_MAX_WIDTH = 1400  # pixels: the panel's figures wrap into rows no wider


def panel(result: dict) -> np.ndarray:
    """(rows*PLOT_HEIGHT, W, 3) uint8 RGB: the input crop, then each predicted task's figure
    (its `plot`) in task order (2D skeleton; 3D skeleton, front and side, axes in mm; depth
    with a colour bar in mm from the pelvis; parts with a legend), in rows of at most
    PANEL_MAX_WIDTH pixels."""
    pictures = [drawing.render(drawing.figure_image(result["crop_image"], "input crop"))]
    pictures += [drawing.render(TASKS[t].plot(result)) for t in result["raw"]]
    return drawing.tile(pictures, PANEL_MAX_WIDTH)


def read_image(path: str) -> np.ndarray:
    """Any format OpenCV reads -> RGB uint8; a clear error when it cannot."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"image {path} cannot be decoded (not an image OpenCV reads)")
    return bgr[..., ::-1].copy()


