"""Run a trained model on any image: 2D/3D pose, part segmentation and depth.

    python -m hgmt.predict --workdir=DIR IMAGE [IMAGE ...] --out=OUTDIR [--bbox=x,y,w,h] [--step=N]

For each image writes OUTDIR/<name>.png (a panel: input crop, 2D skeleton, part segmentation,
depth, 3D skeleton; panels of tasks the model was not trained on are left out) and
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
import json
import logging
import os
import sys
from collections.abc import Sequence

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hgmt import checkpoints, cli, input_pipeline, surreal, viz
from hgmt.models import create_model, predict_last_stage
from hgmt.tasks import TASKS, common, parse_tasks

# Metres a training crop spans at the person's depth (side_px * pelvis_depth / focal), measured
# on the demo data: 2.29 +- 0.22 m over 46 training frames.
CROP_METRES = 2.3


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
        model = create_model(self.config.model, self.tasks)
        self._apply = jax.jit(functools.partial(predict_last_stage, model))

    def __call__(self, image: np.ndarray, bbox: Sequence[float] | None = None) -> dict:
        """-> {'crop_image' (R,R,3) uint8, 'crop' (2,3) image px -> label px, per task:
        'joints2d' (16,2) image px, 'joints3d_rel_mm' (16,3), 'segm' (r,r) and 'segm_image'
        (H,W) part classes 0..14, 'depth' (r,r) and 'depth_image' (H,W) classes 0..19,
        'depth_rel_mm' (r,r) depth relative to the pelvis (nan on background),
        'raw' {task: (r,r,C)}}."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected an RGB uint8 image (H,W,3), got {image.dtype} "
                             f"{image.shape}")
        size, r = self.image_size, self.image_size // 4
        centre, side = crop_window(image.shape, bbox)
        m_image = input_pipeline.crop_affine(centre, side, size)
        m_label = input_pipeline.crop_affine(centre, side, r)
        crop = cv2.warpAffine(image, m_image, (size, size), flags=cv2.INTER_LINEAR)
        raw = {t: np.asarray(p[0]) for t, p in self._apply(self.variables, crop[None]).items()}
        out = {"crop_image": crop, "crop": m_label, "raw": raw}
        # Decoding frame: the image centre moved to SURREAL's principal point (160, 120).
        shift = np.array([surreal.INTRINSICS[0, 2] - (image.shape[1] - 1) / 2,
                          surreal.INTRINSICS[1, 2] - (image.shape[0] - 1) / 2])
        m_virtual = m_label.copy()
        m_virtual[:, 2] -= m_label[:, :2] @ shift
        batch = {"crop": jnp.asarray(m_virtual[None], jnp.float32),
                 "pelvis_depth": jnp.asarray([surreal.INTRINSICS[0, 0] * CROP_METRES / side],
                                             jnp.float32)}
        back = cv2.invertAffineTransform(m_label)
        for t, pred in raw.items():
            decoded = {k: np.asarray(v[0]) for k, v in TASKS[t].decode(pred[None], batch).items()}
            if t == "pose2d":
                out["joints2d"] = decoded["joints2d_image"] - shift
            elif t == "pose3d":
                out["joints3d_rel_mm"] = decoded["joints3d_rel_mm"]
            elif t in ("segm", "depth"):
                classes = decoded[f"{t}_classes"].astype(np.uint8)
                out[t] = classes
                out[f"{t}_image"] = cv2.warpAffine(classes, back, image.shape[1::-1],
                                                   flags=cv2.INTER_NEAREST)
                if t == "depth":
                    rel = common.bin_centre(classes.astype(np.int32) - common.MAX_BIN - 1)
                    out["depth_rel_mm"] = np.where(classes > 0, np.asarray(rel) * 1000.0,
                                                   np.nan)
        return out


def to_json(result: dict, tasks: Sequence[str]) -> dict:
    """The JSON-able part of a result: joints and class maps as lists."""
    out = {"tasks": list(tasks), "joint_names": list(surreal.JOINT_NAMES),
           "part_names": ["background", *surreal.PART_NAMES],
           "crop_affine_image_to_label": np.round(result["crop"], 6).tolist()}
    if "joints2d" in result:
        out["joints2d_image_px"] = np.round(result["joints2d"], 2).tolist()
    if "joints3d_rel_mm" in result:
        out["joints3d_rel_mm"] = np.round(result["joints3d_rel_mm"], 1).tolist()
    for t in ("segm", "depth"):
        if t in result:
            out[f"{t}_classes"] = result[t].tolist()  # (r,r) in the crop's label frame
    if "depth_rel_mm" in result:
        out["depth_bin_mm"] = common.BIN_SIZE * 1000.0
    return out


PANEL_MIN_SIZE = 256  # pixels per picture in the panel (small crops are enlarged)


def panel(result: dict) -> np.ndarray:
    """(D, D*k, 3) uint8, D = max(R, PANEL_MIN_SIZE): input, 2D skeleton, parts, depth,
    3D skeleton (the pictures of the tasks present in `result`)."""
    r = result["crop_image"].shape[0] // 4
    size = max(result["crop_image"].shape[0], PANEL_MIN_SIZE)
    crop = cv2.resize(result["crop_image"], (size, size), interpolation=cv2.INTER_LINEAR)
    pics = [crop]
    if "joints2d" in result:
        label = result["raw"]["pose2d"]
        joints, _ = common.subpixel_argmax(np.moveaxis(label, -1, 0))
        pics.append(viz.draw_skeleton(crop, np.asarray(joints), scale=size / r))
    if "segm" in result:
        pics.append(cv2.resize(viz.colour_parts(result["segm"]), (size, size),
                               interpolation=cv2.INTER_NEAREST))
    if "depth" in result:
        pics.append(cv2.resize(viz.colour_depth(result["depth"]), (size, size),
                               interpolation=cv2.INTER_NEAREST))
    if "joints3d_rel_mm" in result:
        pics.append(skeleton3d(result["joints3d_rel_mm"], size))
    return np.concatenate(pics, axis=1)


def skeleton3d(joints_mm: np.ndarray, size: int) -> np.ndarray:
    """(16,3) root-relative mm -> (size,size,3) uint8: front view (x,y) left, side (z,y) right."""
    out = np.full((size, size, 3), 255, np.uint8)
    half = size // 2
    extent = max(float(np.abs(joints_mm[:, :2]).max()), 200.0) * 1.15
    for k, axes in enumerate(((0, 1), (2, 1))):
        view = np.zeros((size, half, 3), np.uint8) + 255
        pts = joints_mm[:, axes] / extent * (half / 2) + [half / 2, size / 2]
        view = viz.draw_skeleton(view, pts, thickness=1)
        cv2.putText(view, "front" if k == 0 else "side", (3, 12), cv2.FONT_HERSHEY_SIMPLEX,
                    0.35, (0, 0, 0), 1, cv2.LINE_AA)
        out[:, k * half:(k + 1) * half] = view
    return out


def read_image(path: str) -> np.ndarray:
    """Any format OpenCV reads -> RGB uint8; a clear error when it cannot."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found")
    bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError(f"image {path} cannot be decoded (not an image OpenCV reads)")
    return bgr[..., ::-1].copy()


def _define_flags(fv) -> None:
    from absl import flags

    cli.define_workdir(fv)
    flags.DEFINE_string("out", None, "output directory", flag_values=fv, required=True)
    flags.DEFINE_string("bbox", None, "x,y,w,h of the person in pixels (default: the "
                        "whole image)", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    """`python -m hgmt.predict --workdir=DIR --out=DIR [--bbox=x,y,w,h] [--step=N|best]
    IMAGE...`."""
    args, images = cli.parse(_define_flags, argv, __doc__.splitlines()[0],
                             cli.workdir_config(argv))
    if not images:
        raise SystemExit("error: give one or more image files after the flags")
    logging.basicConfig(level=logging.WARNING)
    bbox = None
    if args.bbox:
        try:
            bbox = [float(v) for v in args.bbox.split(",")]
        except ValueError:
            bbox = []
        if len(bbox) != 4:
            raise SystemExit(f"error: --bbox={args.bbox!r}: give four numbers x,y,w,h")
    predictor = Predictor(args.workdir, cli.checkpoint_step(args.step), args.config)
    os.makedirs(args.out, exist_ok=True)
    failed = []
    for path in images:
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            result = predictor(read_image(path), bbox)
        except (OSError, ValueError) as e:
            print(f"skipped {path}: {e}", file=sys.stderr)
            failed.append(path)
            continue
        cv2.imwrite(os.path.join(args.out, name + ".png"),
                    panel(result)[..., ::-1])
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump({"image": os.path.abspath(path), "bbox": bbox, "step": predictor.step,
                       **to_json(result, predictor.tasks)}, f)
        print(f"{path} -> {os.path.join(args.out, name)}.png/.json")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
