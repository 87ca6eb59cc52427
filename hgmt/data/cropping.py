"""The person crop of a decoded SURREAL record, on the host: the crop windows (hgmt's person
box, `BOX_MARGINS` around the joints' tight box, the square of side max(h, w) centred on it,
docs/surreal_format.md; or the references' box, `config.window="reference_box"`; or the
references' test crop, "reference"), the affine from image to crop pixels, the random crop
parameters of `Augment`'s distributions, and the cropped example every task's labels are made
from (docs/interfaces.md §4), with OpenCV warps: the image bilinear to R x R, labels nearest to
r x r = R/4 x R/4. The loader's workers run it (`input_pipeline.TrainCrop`, the evaluation's
batches); the same crop runs batched on the device in hgmt/data/device_augment.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence

import cv2
import ml_collections
import numpy as np

from hgmt.choices import not_one_of
from hgmt.data import records
from hgmt.data.augment import Augment
from hgmt.sources import body, reference_crop
from hgmt.tasks import TASKS, common
from hgmt.tasks.spec import Crop

# The crops' parallelism is the loader's worker processes and the evaluation's threads
# (`eval_data`); OpenCV's own thread pool in each of them would oversubscribe the host's cores
# and spin (measured on a 2-core and a 16-core host: docs/performance.md, "Input pipeline,
# CPU").
cv2.setNumThreads(1)

# The person box's margins around the joints' tight box: fractions of its width (left, right)
# and of its height (top, bottom); and the least side of the square window, in pixels.
BOX_MARGINS = {"left": 0.25, "right": 0.25, "top": 0.35, "bottom": 0.25}
MIN_WINDOW_SIDE_PX = 8.0


def person_box(joints2d: np.ndarray) -> tuple[np.ndarray, float]:
    """(16,2) joints in pixels -> (centre (2,), side) of the square crop window."""
    lo, hi = joints2d.min(0), joints2d.max(0)
    w, h = hi - lo
    x0, x1 = lo[0] - BOX_MARGINS["left"] * w, hi[0] + BOX_MARGINS["right"] * w
    y0, y1 = lo[1] - BOX_MARGINS["top"] * h, hi[1] + BOX_MARGINS["bottom"] * h
    side = max(x1 - x0, y1 - y0, MIN_WINDOW_SIDE_PX)
    return np.array([(x0 + x1) / 2, (y0 + y1) / 2]), float(side)


# The crop windows a run trains on (config.window), cut by hgmt's warps, with any augmentation:
# "hgmt"'s (`person_box`, docs/surreal_format.md) and "reference_box", the box of BodyNet's
# and SURREAL's crop (`reference_crop.reference_box`, about 0.84 of hgmt's side), so that training
# sees the person at the scale their protocols measure it.
TRAIN_WINDOWS = ("hgmt", "reference_box")
# And "reference": the references' test crop (their protocols), the same box whose image and
# label maps are cut as theirs are (`ReferenceCrop`, `reference_crop.image_crop`), unaugmented.
WINDOWS = (*TRAIN_WINDOWS, "reference")


def check_window(window: str, choices: Sequence[str] = WINDOWS,
                 name: str = "crop window") -> str:
    """`window` when it is one of `choices`, else ValueError naming `name` (a config field's
    path as `name=value`) and the choices."""
    if window not in choices:
        given = f"{name}={window!r}" if name.startswith("config.") else f"{name} {window!r}"
        raise not_one_of(given, choices)
    return window


def config_window(config: ml_collections.ConfigDict) -> str:
    """The run's training window, `config.window` (TRAIN_WINDOWS), checked: the window its
    crops are cut around, which hgmt's protocol evaluates and prediction searches in."""
    return check_window(config.window, TRAIN_WINDOWS, "config.window")


def window_box(joints2d: np.ndarray, window: str = "hgmt") -> tuple[np.ndarray, float]:
    """(16,2) joints in pixels -> (centre (2,), side) of the `window`'s crop (WINDOWS)."""
    if check_window(window) == "hgmt":
        return person_box(joints2d)
    return reference_crop.reference_box(joints2d)


def crop_affine(centre: np.ndarray, side: float, size: int, rotation_deg: float = 0.0,
                flip: bool = False) -> np.ndarray:
    """(2,3) affine from image pixels to a size x size crop: the window of `side` pixels around
    `centre` (pixel centres at integers, so the window spans [-0.5, size - 0.5]), rotated by
    `rotation_deg` and mirrored horizontally when `flip`."""
    s = size / side
    a = np.deg2rad(rotation_deg)
    rot = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]]) * s
    if flip:
        rot[0] *= -1
    offset = (size - 1) / 2 - rot @ centre
    return np.concatenate([rot, offset[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class CropParams:
    """One example's random crop: the person box's side times `scale`, rotated by `rotation`
    degrees, mirrored when `flip`, the frame's RGB channels times `gain` (3,)."""

    scale: float = 1.0
    rotation: float = 0.0
    flip: bool = False
    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)


def draw_crop_params(augment: Augment, rng: np.random.Generator) -> CropParams:
    """The crop parameters of `augment`'s distributions, drawn from `rng` in a fixed order
    (scale, rotation, flip, gain); a disabled augmentation draws nothing."""
    scale = 1.0
    if augment.scale_sigma:
        scale = float(2.0 ** np.clip(rng.normal(0, augment.scale_sigma), -augment.scale_clip,
                                     augment.scale_clip))
    rotation = 0.0
    if augment.rotate_p and rng.uniform() < augment.rotate_p:
        rotation = float(np.clip(rng.normal(0, augment.rotate_sigma), -augment.rotate_clip,
                                 augment.rotate_clip))
    flip = bool(augment.flip_p and rng.uniform() < augment.flip_p)
    gain = (1.0, 1.0, 1.0)
    if augment.gain != (1.0, 1.0):
        gain = tuple(float(g) for g in rng.uniform(*augment.gain, size=3))
    return CropParams(scale, rotation, flip, gain)


def crop_example(example: dict, image_size: int, augment: Augment,
                 rng: np.random.Generator | None = None,
                 tasks: Sequence[str] | None = None,
                 unread: frozenset[str] = frozenset(), window: str = "hgmt") -> dict:
    """A decoded SURREAL record -> the cropped example (docs/interfaces.md §4), numpy, with
    crop parameters drawn from `augment`'s distributions (`draw_crop_params`), around the
    `window`'s box (`window_box`: hgmt's, the references' box, or their test crop).

    Image features may be decoded arrays or their encoded bytes (a split opened with
    `builds.open_split`'s default), which OpenCV decodes here, only those the `tasks`
    read (default: all tasks).

    image (R,R,3) RGB uint8 (the model normalises it); crop (2,3) image pixels -> label
    pixels; unusable () 1.0 for a flagged placeholder of an unusable test frame (the
    evaluation decides what it becomes), else 0.0; and each task's `labels`: joints2d (16,2) in
    r x r label pixels, visible (16,), joints3d (16,3) camera metres, pelvis_depth (), segm
    (r,r) uint8 part classes, depth_class (r,r) uint8 depth classes (the depth task's training
    label), depth (r,r) float32 metres (left out when "depth" is in `unread`).
    """
    params = draw_crop_params(augment, rng or np.random.default_rng(0))
    return crop_with(example, image_size, params, tasks, unread, window)


def crop_with(example: dict, image_size: int, params: CropParams,
              tasks: Sequence[str] | None = None,
              unread: frozenset[str] = frozenset(), window: str = "hgmt") -> dict:
    """`crop_example` with given crop parameters, around the `window`'s box (`window_box`);
    the label maps in `unread` are not decoded (`spec.Crop.warp` gives zeros; the depth task
    leaves its picture-only depth in metres out). In the "reference" window the image and
    the label maps are cut as the references cut theirs (`reference_label_crop`,
    `reference_crop.image_crop`); the joints map through hgmt's label frame of the same
    window (`crop_affine`), as the references' own labels do, against which their image crop
    moves the content right and down by up to about two source pixels (docs/metrics.md,
    "Crop resampling")."""
    r = image_size // common.LABEL_STRIDE
    joints = example["joints2d"][body.SMPL_TO_JOINT].astype(np.float64)
    centre, side = window_box(joints, window)
    side *= params.scale
    m_label = crop_affine(centre, side, r, params.rotation, params.flip)
    if window == "reference":
        crop = reference_label_crop(example, joints, params, m_label, r, unread)
        image = reference_crop.image_crop(records.decoded(example, "image"), crop.centre,
                                          crop.scale, image_size)
    else:
        m_image = crop_affine(centre, side, image_size, params.rotation, params.flip)
        image = cv2.warpAffine(records.decoded(example, "image"), m_image, (image_size, image_size),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if params.gain != (1.0, 1.0, 1.0):
            image = apply_gain(image, params.gain)
        crop = Crop(example, m_label, r, params.flip, records.decoded, frozenset(unread))
    out = {"image": image, "crop": m_label.astype(np.float32),
           "unusable": np.float32(bool(example.get("unusable", b"")))}
    for t in (TASKS if tasks is None else tasks):
        out.update(TASKS[t].labels(crop))
    return out


@dataclasses.dataclass(frozen=True)
class ReferenceCrop(Crop):
    """A `Crop` whose label maps (segm, depth_class, depth) are cut as the references cut
    theirs, `reference_crop.label_crop` around their `getCenter` `centre` (2,) with their
    `getScale` `scale`, instead of hgmt's nearest warp of the window; the joints still map
    through `m_label`, hgmt's label frame of the same window."""

    centre: np.ndarray | None = None
    scale: float = 1.0

    def warp(self, key: str) -> np.ndarray:
        """The record's map `key` as the references crop it, (r,r) of its dtype; `Crop.warp`'s
        zeros for a map in `unread`."""
        if key in self.unread:
            return super().warp(key)
        return reference_crop.label_crop(self.read_map(self.record, key), self.centre,
                                         self.scale, self.size)


def reference_label_crop(example: dict, joints: np.ndarray, params: CropParams,
                         m_label: np.ndarray, r: int,
                         unread: Iterable[str] = ()) -> ReferenceCrop:
    """The crop of the reference window (`reference_crop.reference_box`) of a record whose 16 joints
    are `joints` (16,2), `m_label` (2,3) its r x r label frame (`crop_affine`), with label
    maps cut as the references cut theirs (`ReferenceCrop`), the references' scale times
    `params.scale`, as their scale augmentation multiplies it. ValueError for a rotation, a
    mirror or a colour gain, which their test crop never has and `reference_crop` does not
    follow."""
    if params.rotation or params.flip or params.gain != (1.0, 1.0, 1.0):
        raise ValueError(f"crop window 'reference' cuts the image and labels as the "
                         f"references' test crop does, unrotated, unmirrored and without colour "
                         f"gain, but rotation={params.rotation}, flip={params.flip} and "
                         f"gain={params.gain}; crop with window='hgmt' to augment")
    centre, scale = reference_crop.reference_centre_scale(joints)
    return ReferenceCrop(example, m_label, r, False, records.decoded, frozenset(unread), centre,
                         scale * params.scale)


def apply_gain(image: np.ndarray, gain: Sequence[float]) -> np.ndarray:
    """(H,W,3) uint8 times a per-channel gain (3,), rounded and saturated in uint8: one lookup
    table per channel (the products of the 256 values), faster than cv2.multiply and equal
    to it (docs/performance.md, "Crop and augmentation: on the host or on the device")."""
    table = np.clip(np.rint(np.arange(256.0)[:, None] * np.asarray(gain, np.float64)), 0, 255)
    return cv2.LUT(image, table.astype(np.uint8)[None])
