"""Augmentation on the device: the host decodes a record into fixed-size arrays, the person
crop, rotation, scale, flip and colour gain run batched inside the jitted train step.

The host's share (`decode_record`, `decode_loader`): read the record, decode the frame and the
label maps the selected tasks' training targets are made from (`target_maps`), each at the
stored resolution (SURREAL's 240 x 320), and pass the joints and the camera as they are. The
device's (`Prepare`, called first in the train step): draw each example's crop parameters from
a key of (seed, step, the example's index in the global batch), so a resumed run draws the
same ones; build the crop of `cropping.crop_with` (the same person box, scale, rotation
and mirror); sample the frame bilinearly and the label maps at the nearest pixel with a gather
(outside the frame: 0, as OpenCV's constant border; a source exactly on the frame's far edge
takes the last pixel, as OpenCV 5.1 does: `_nearest_pixel`); and make each task's labels with
its own `labels`, given a batched `DeviceCrop` (maps not decoded warp to zeros). The output
is the host path's cropped batch, to OpenCV's interpolation rounding
(tests/test_device_augment.py).

`placement` chooses the path: config.augment_on = "host" | "device" | "auto" (by backend,
measured: docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Literal

from hgmt.data import cropping, input_pipeline, placeholders, record_reads, records
from hgmt.data.augment import Augment
from hgmt.sources import body, camera, reference_crop
from hgmt.tasks import TASKS, common, spec

FRAME_SHAPE = (camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH)  # the stored resolution (H, W)
# The record's label maps a task may read (raw segments, depth mm, depth classes).
LABEL_MAPS = tuple(k for k in records.IMAGE_FEATURES if k != "image")
PLACEMENTS = ("host", "device")
# "auto": where the augmentation runs by backend. CPU: host (the crop in the step shares the
# loader's cores and costs more there than OpenCV's); accelerators: device (the host's cores
# are what runs short). docs/performance.md has the measurements.
AUTO = {"cpu": "host", "gpu": "device", "cuda": "device", "rocm": "device", "tpu": "device"}
# World -> camera rotation of SURREAL's camera (a signed permutation, so exact in float32):
# camera = (world - cam_loc) @ CAMERA_ROTATION.T (camera.world_to_camera).
CAMERA_ROTATION = camera.camera_matrices(np.zeros(3))[1][:, :3].astype(np.float32)


def placement(augment_on: str, backend: str | None = None) -> str:
    """config.augment_on -> "host" or "device"; "auto" picks by `backend` (default JAX's)."""
    if augment_on in PLACEMENTS:
        return augment_on
    if augment_on != "auto":
        raise ValueError(f"config.augment_on={augment_on!r}: choose host (crop on the loader's "
                         f"CPU workers), device (crop inside the train step) or auto")
    return AUTO.get(backend or jax.default_backend(), "host")


# --- Host: records -> fixed-size arrays -----------------------------------------------------
def decode_record(record: dict, maps: Sequence[str] = LABEL_MAPS) -> dict:
    """A SURREAL record -> its arrays at the stored resolution: image (H,W,3) uint8 RGB, the
    label `maps` (H,W) as stored (segm uint8 raw segments, depth uint16 mm, depth_class uint8),
    joints2d (24,2) image px, joints3d (24,3) world metres, cam_loc (3,) metres, all float32.
    DamagedRecord (hgmt.data.record_reads) when an image does not decode."""
    out = {"image": records.decoded(record, "image")}
    for key in maps:
        out[key] = records.decoded(record, key)
    for key, value in out.items():
        if value.shape[:2] != FRAME_SHAPE:
            raise ValueError(f"record feature {key!r} is {value.shape[:2]} (H, W), the device "
                             f"augmentation batches frames of {FRAME_SHAPE}; a dataset of "
                             f"other frames needs config.augment_on='host'")
    for key in ("joints2d", "joints3d", "cam_loc"):
        out[key] = np.asarray(record[key], np.float32)
    return out


class DecodeRecord(grain.MapTransform):
    """`decode_record` of a record of a `record_reads.Guarded` source, decoding only the label maps
    in `maps`: as `input_pipeline.TrainCrop`, a damaged record is replaced by the next good
    one of its shard that is not a placeholder and the example's `damaged` field lists what it
    replaced."""

    def __init__(self, maps: Sequence[str], source: Any = None):
        self.maps, self.source = tuple(maps), source
        self.shards = None if source is None else record_reads.Shards.of(source)

    def map(self, element: dict) -> dict:
        """`decode_record` of `element`, a damaged one replaced (`record_reads.make_guarded`)."""
        def decode(record: dict) -> dict:
            return decode_record(record, self.maps)

        return record_reads.make_guarded(element, self.source, self.shards, decode,
                                         usable=placeholders.passes_filter)


@functools.cache
def target_maps(tasks: tuple[str, ...] | None = None) -> tuple[str, ...]:
    """The label maps the training targets of `tasks` (default all) are made from: each task's
    `labels` then `targets` traced on an abstract batch, the targets' inputs followed back to
    the record's maps. Training decodes only these (the depth task's metres feed pictures and
    evaluation, not its target)."""
    names = tuple(TASKS if tasks is None else tasks)
    h, w = FRAME_SHAPE
    maps = {k: jax.ShapeDtypeStruct((1, h, w), jnp.uint16) for k in LABEL_MAPS}

    def targets(maps: dict) -> list:
        raw = {"image": jnp.zeros((1, h, w, 3), jnp.uint8), "joints2d": jnp.zeros((1, 24, 2)),
               "joints3d": jnp.zeros((1, 24, 3)), "cam_loc": jnp.zeros((1, 3)), **maps}
        crop = DeviceCrop(raw, jnp.zeros((1, 2, 3)), 4, jnp.zeros(1, bool))
        batch = {"image": raw["image"], "crop": crop.m_label, "unusable": jnp.zeros(1)}
        for t in names:
            try:
                batch.update(TASKS[t].labels(crop))
            except KeyError as e:
                if not e.args or e.args[0] in raw:  # the task's own KeyError
                    raise
                raise ValueError(
                    f"task {t}'s labels read the record's {e.args[0]!r}, which training's "
                    f"crops do not carry (they carry {', '.join(sorted(raw))}); a task's labels "
                    f"read those (hgmt.tasks.spec.Crop), or decode_record must carry it too"
                    ) from None
        return [TASKS[t].targets(batch) for t in names]

    jaxpr = jax.make_jaxpr(targets)(maps).jaxpr
    used = set(v for v in jaxpr.outvars if not isinstance(v, Literal))
    for eqn in reversed(jaxpr.eqns):  # an equation's inputs are used when an output is
        if any(v in used for v in eqn.outvars):
            used.update(v for v in eqn.invars if not isinstance(v, Literal))
    # make_jaxpr's inputs are the flattened dict's leaves: its keys in sorted order
    return tuple(k for k in LABEL_MAPS if jaxpr.invars[sorted(maps).index(k)] in used)


def unread_maps(tasks: Sequence[str] | None = None) -> frozenset[str]:
    """The label maps training does not decode for `tasks`: those no target is made from."""
    return frozenset(LABEL_MAPS) - set(target_maps(None if tasks is None else tuple(tasks)))


def decode_loader(source: Any, *, batch_size: int, seed: int, worker_count: int = -1,
                  tasks: Sequence[str] | None = None, read_threads: int = 0
                  ) -> grain.DataLoader:
    """`input_pipeline.train_loader`'s records (the same sampler: shuffle, shards, resume;
    the same replacement of damaged records) as `decode_record`'s arrays, batched, with
    `damaged`; the crop happens in the step (`Prepare`). Only the maps of `target_maps`
    are decoded."""
    maps = target_maps(None if tasks is None else tuple(tasks))
    return input_pipeline.endless_loader(source, DecodeRecord(maps, source),
                                         batch_size=batch_size, seed=seed,
                                         worker_count=worker_count,
                                         read_threads=read_threads)


# --- Device: crop parameters, crops, labels -------------------------------------------------
def draw_params(key: jax.Array, augment: Augment) -> dict[str, jax.Array]:
    """One example's crop parameters from `augment`'s distributions (those of
    `cropping.draw_crop_params`): scale (), rotation () degrees, flip () bool, gain (3,)."""
    k_scale, k_rotate, k_angle, k_flip, k_gain = jax.random.split(key, 5)
    scale = jnp.float32(1.0)
    if augment.scale_sigma:
        scale = 2.0 ** jnp.clip(augment.scale_sigma * jax.random.normal(k_scale),
                                -augment.scale_clip, augment.scale_clip)
    rotation = jnp.float32(0.0)
    if augment.rotate_p:
        angle = jnp.clip(augment.rotate_sigma * jax.random.normal(k_angle),
                         -augment.rotate_clip, augment.rotate_clip)
        rotation = jnp.where(jax.random.uniform(k_rotate) < augment.rotate_p, angle, 0.0)
    flip = jnp.asarray(False)
    if augment.flip_p:
        flip = jax.random.uniform(k_flip) < augment.flip_p
    gain = jnp.ones(3, jnp.float32)
    if augment.gain != (1.0, 1.0):
        gain = jax.random.uniform(k_gain, (3,), jnp.float32, *augment.gain)
    return {"scale": scale, "rotation": rotation, "flip": flip, "gain": gain}


def example_keys(seed: int, step: jax.Array, index: jax.Array) -> jax.Array:
    """(B,) keys of the examples at global batch positions `index` (B,) of step `step`: a
    pure function of (seed, step, position), so a resumed run draws the same crops."""
    key = jax.random.fold_in(jax.random.key(seed), step)
    return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def person_box(joints2d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B,16,2) joints px -> centre (B,2), side (B,): `cropping.person_box`, batched."""
    lo, hi = joints2d.min(1), joints2d.max(1)
    w, h = (hi - lo)[:, 0], (hi - lo)[:, 1]
    margin = cropping.BOX_MARGINS
    x0, x1 = lo[:, 0] - margin["left"] * w, hi[:, 0] + margin["right"] * w
    y0, y1 = lo[:, 1] - margin["top"] * h, hi[:, 1] + margin["bottom"] * h
    side = jnp.maximum(jnp.maximum(x1 - x0, y1 - y0), cropping.MIN_WINDOW_SIDE_PX)
    return jnp.stack([(x0 + x1) / 2, (y0 + y1) / 2], -1), side


def reference_box(joints2d: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(B,16,2) joints px -> centre (B,2), side (B,): `reference_crop.reference_box`, batched (in
    float32, where the host's box is in float64)."""
    margin = reference_crop.BOX_MARGINS
    j = joints2d.astype(jnp.float32) + 1.0
    lo, hi = j.min(1), j.max(1)
    size = hi - lo + 1
    start = lo - jnp.asarray([margin["left"], margin["top"]]) * size
    full = hi + jnp.asarray([margin["right"], margin["bottom"]]) * size - start + 1
    return start + full / 2, (reference_crop.WINDOW_PER_SCALE_PX * full.max(-1)
                              / reference_crop.SCALE_DIVISOR_PX)


# The boxes of the training windows (cropping.TRAIN_WINDOWS), batched.
WINDOW_BOXES = {"hgmt": person_box, "reference_box": reference_box}


def crop_affine(centre: jax.Array, side: jax.Array, size: int, rotation: jax.Array,
                flip: jax.Array) -> jax.Array:
    """(B,2,3) image px -> size x size crop px: `cropping.crop_affine`, batched."""
    s = size / side
    a = jnp.deg2rad(rotation)
    cos, sin = jnp.cos(a) * s, jnp.sin(a) * s
    mirror = jnp.where(flip, -1.0, 1.0)
    rot = jnp.stack([jnp.stack([cos * mirror, sin * mirror], -1),
                     jnp.stack([-sin, cos], -1)], -2)  # (B,2,2)
    offset = (size - 1) / 2 - jnp.einsum("bij,bj->bi", rot, centre, precision=common.EXACT)
    return jnp.concatenate([rot, offset[..., None]], -1)


def _source_coords(m: jax.Array, size: int) -> tuple[jax.Array, jax.Array]:
    """(2,3) image -> crop affine: the image px (x, y), each (size, size), that each crop
    pixel samples (the inverse map, as cv2.warpAffine applies it)."""
    inv = common.invert_affine(m[None])[0]
    grid = jnp.arange(size, dtype=jnp.float32)
    u, v = grid[None, :], grid[:, None]
    return inv[0, 0] * u + inv[0, 1] * v + inv[0, 2], inv[1, 0] * u + inv[1, 1] * v + inv[1, 2]


def _taps(image: jax.Array, x: jax.Array, y: jax.Array) -> jax.Array:
    """image (H,W,...) at integer px (x, y) (S,S) -> (S,S,...); 0 outside the image."""
    h, w = image.shape[:2]
    inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
    flat = image.reshape((h * w,) + image.shape[2:])
    values = flat[jnp.clip(y, 0, h - 1) * w + jnp.clip(x, 0, w - 1)]
    mask = inside.reshape(inside.shape + (1,) * (values.ndim - inside.ndim))
    return jnp.where(mask, values, jnp.zeros((), values.dtype))


def warp_bilinear(image: jax.Array, m: jax.Array, size: int) -> jax.Array:
    """(H,W,C) image, (2,3) affine -> the (size,size,C) float32 crop, bilinear, 0 outside
    (cv2.warpAffine with INTER_LINEAR and a constant 0 border, in exact arithmetic). The
    values of `jax.scipy.ndimage.map_coordinates` (order 1 per channel), 4-6 times faster on
    a CPU (docs/performance.md, "The device crop's sampling")."""
    x, y = _source_coords(m, size)
    x0, y0 = jnp.floor(x), jnp.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)

    def tap(dx: int, dy: int) -> jax.Array:
        return _taps(image, x0 + dx, y0 + dy).astype(jnp.float32)

    top = tap(0, 0) * (1 - fx) + tap(1, 0) * fx
    bottom = tap(0, 1) * (1 - fx) + tap(1, 1) * fx
    return top * (1 - fy) + bottom * fy


def _nearest_pixel(x: jax.Array, n: int) -> jax.Array:
    """Source coordinates `x` (px, any shape) along a frame axis of `n` px -> the int32 index
    of the nearest pixel, a tie half-way between two taking the higher (floor(x + 0.5)); the
    frame is closed, [-0.5, n - 0.5]: a source exactly on its far outer edge, x = n - 0.5,
    takes the last pixel n - 1, where floor(x + 0.5) = n lies outside (0). A label map's
    pixel there sits on the frame, so it takes the frame's label, as OpenCV 5.1's
    INTER_NEAREST gives it (the host path, `spec.Crop.warp`); its near edge, x = -0.5, is
    pixel 0 either way."""
    return jnp.where(x == n - 0.5, n - 1, jnp.floor(x + 0.5)).astype(jnp.int32)


def warp_nearest(label_map: jax.Array, m: jax.Array, size: int) -> jax.Array:
    """(H,W) map, (2,3) affine -> (size,size) of the map's dtype, the `_nearest_pixel` along
    each axis, 0 outside (cv2.warpAffine with INTER_NEAREST, OpenCV 5.1's rule)."""
    h, w = label_map.shape[:2]
    x, y = _source_coords(m, size)
    return _taps(label_map, _nearest_pixel(x, w), _nearest_pixel(y, h))


@dataclasses.dataclass(frozen=True)
class DeviceCrop(spec.Crop):
    """A batch of crops on the device for the tasks' `labels`: `record` the batch of
    `decode_record` arrays (B,...), `m_label` (B,2,3), `flip` (B,) bool; the methods of
    `spec.Crop`, batched, as jax arrays."""

    read_map: None = None

    def warp(self, key: str) -> jax.Array:
        """(B,r,r) label map `key`, nearest; zeros (uint8) for a map in `unread`."""
        if key in self.unread:
            return jnp.zeros((self.flip.shape[0], self.size, self.size), jnp.uint8)
        return jax.vmap(lambda a, m: warp_nearest(a, m, self.size))(self.record[key],
                                                                    self.m_label)

    def joints2d(self) -> jax.Array:
        """(B,16,2) label px, sides swapped where mirrored."""
        joints = common.apply_affine(self.m_label,
                                     self.record["joints2d"][:, body.SMPL_TO_JOINT])
        return jnp.where(self.flip[:, None, None], joints[:, body.JOINT_FLIP], joints)

    def joints3d(self) -> jax.Array:
        """(B,16,3) camera metres, mirrored (x negated, sides swapped) where flipped."""
        world = self.record["joints3d"][:, body.SMPL_TO_JOINT]
        in_camera = jnp.matmul(world - self.record["cam_loc"][:, None], CAMERA_ROTATION.T,
                               precision=common.EXACT)
        mirrored = in_camera[:, body.JOINT_FLIP] * jnp.array([-1.0, 1.0, 1.0])
        return jnp.where(self.flip[:, None, None], mirrored, in_camera)

    def swap_sides(self, table: np.ndarray, classes: jax.Array) -> jax.Array:
        """(B,...) class ids through `table` where the example's crop is mirrored."""
        flip = self.flip.reshape(self.flip.shape + (1,) * (classes.ndim - 1))
        return jnp.where(flip, jnp.asarray(table)[classes], classes)


def crop_batch(raw: dict, params: dict, image_size: int,
               tasks: Sequence[str] | None = None,
               unread: frozenset[str] = frozenset(), window: str = "hgmt") -> dict:
    """A batch of `decode_record` arrays (B,...) and crop parameters (`draw_params`, batched)
    -> the cropped batch of `cropping.crop_with` around the `window`'s box
    (`WINDOW_BOXES`): image (B,R,R,3) uint8, crop (B,2,3), and the labels of `tasks`
    (default all), zeros for the maps in `unread` (which `raw` may lack)."""
    r = image_size // common.LABEL_STRIDE
    box = WINDOW_BOXES[cropping.check_window(window, cropping.TRAIN_WINDOWS,
                                             "training crop window")]
    centre, side = box(raw["joints2d"][:, body.SMPL_TO_JOINT])
    side = side * params["scale"]
    flip = params["flip"]
    m_image = crop_affine(centre, side, image_size, params["rotation"], flip)
    m_label = crop_affine(centre, side, r, params["rotation"], flip)
    image = jax.vmap(lambda a, m: warp_bilinear(a, m, image_size))(raw["image"], m_image)
    image = jnp.round(image)  # the host's warp writes uint8, then the gain rounds again
    image = jnp.clip(jnp.round(image * params["gain"][:, None, None, :]), 0, 255)
    crop = DeviceCrop(raw, m_label, r, flip, unread=frozenset(unread))
    out = {"image": image.astype(jnp.uint8), "crop": m_label.astype(jnp.float32),
           # as crop_with's; training never reads a flagged record
           # (placeholders.SkipUnusable)
           "unusable": jnp.zeros(image.shape[0], jnp.float32)}
    for t in (TASKS if tasks is None else tasks):
        out.update(TASKS[t].labels(crop))
    return out


@dataclasses.dataclass(frozen=True)
class Prepare:
    """The train step's first stage on the device path: a batch of `decode_record` arrays
    -> the cropped, augmented batch. Hashable, so the train step is built once per kind."""

    image_size: int
    seed: int
    tasks: tuple[str, ...] | None = None
    augment: Augment = Augment()
    window: str = "hgmt"  # cropping.TRAIN_WINDOWS

    def __call__(self, raw: dict, step: jax.Array, first_index: jax.Array | int = 0) -> dict:
        """`raw` (B,...) of the examples at global batch positions first_index..+B of step
        `step` -> the cropped batch (other entries of `raw` pass through)."""
        n = raw["image"].shape[0]
        keys = example_keys(self.seed, step, first_index + jnp.arange(n))
        params = jax.vmap(lambda k: draw_params(k, self.augment))(keys)
        decoded = {"image", "joints2d", "joints3d", "cam_loc", *LABEL_MAPS}
        rest = {k: v for k, v in raw.items() if k not in decoded}
        return {**rest, **crop_batch(raw, params, self.image_size, self.tasks,
                                     unread_maps(self.tasks), self.window)}
