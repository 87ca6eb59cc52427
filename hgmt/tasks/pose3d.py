"""3D pose (BodyNet's volumetric representation): per joint a 19-bin x r x r volume.

The (x,y) of a joint are its 2D position in the crop; its z bin is BodyNet's
clamp(round((z_joint - z_pelvis) / 45 mm), -9, 9) in camera depth (gulvarol/bodynet
training/donkey.lua). Targets are 3D Gaussians (sigma 1 px / 1 bin), loss MSE. Decoding: argmax
-> inverse crop -> depth bin x 45 mm plus the ground-truth pelvis depth -> back-projection with
SURREAL's intrinsics -> root-relative mm. A flipped crop's target is the mirrored person (camera
x negated, left/right swapped, see cropping.crop_example); decoding mirrors the
back-projected joints of a flipped crop the same way, so target and decoding agree for any crop.
Metric (protocol hgmt): MJD, the mean per-joint Euclidean distance in mm after aligning the
pelvis, over the 16 joints. `bodynet_stats` / `bodynet_summarize` compute BodyNet's own
(docs/metrics.md).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hgmt.sources import body, camera
from hgmt.tasks import common, pose2d, spec
from hgmt.tasks.spec import Frame, Headline

if TYPE_CHECKING:  # matplotlib is imported when a figure is first drawn
    from matplotlib.figure import Figure

NAME = "pose3d"
NUM_JOINTS = len(body.JOINT_NAMES)
NUM_BINS = common.NUM_BINS
NUM_CHANNELS = NUM_JOINTS * NUM_BINS  # channel = joint * 19 + (bin + 9)
DEFAULT_LOSS_WEIGHT = 1000.0
LOSS_OPTIONS: dict = {}  # none: `loss` takes no options
READS_DISTANCE = True  # its joints' x and y: back-projected at the pelvis depth
SIGMA = 1.0
HEADLINES = {
    "hgmt": Headline(("mjd_mm",), "mjd_mm", ("mjd_mm",), "MJD (mm)", "mjd_mm_per_joint",
                     "joint", ".1f", item_label="error (mm)", item_names=body.JOINT_NAMES),
    "bodynet": Headline(("mjd_mm",), "mjd_mm", ("mjd_mm",), "MJD (mm, BodyNet)",
                        "mjd_mm_per_joint", "joint", ".1f", item_label="error (mm)",
                        item_names=body.JOINT_NAMES,
                        caveats={"examples_not_evaluated": common.NOT_EVALUATED}),
}
# Channel permutation under a horizontal flip: swap joints, keep depth bins.
CHANNEL_FLIP = (body.JOINT_FLIP[:, None] * NUM_BINS + np.arange(NUM_BINS)).reshape(-1)
# What a (B,r,r,NUM_CHANNELS) output holds, for a consumer of an export (its hgmt.json).
OUTPUT_LAYOUT = {
    "channels": NUM_CHANNELS,
    "channel": f"joint * {NUM_BINS} + k: joint_names[joint] at depth bin bins[k] "
               f"(k = bin + {common.MAX_BIN})",
    "joint_names": list(body.JOINT_NAMES),
    "sides": body.SIDES,
    "bins": list(common.BINS),
    "bin_mm": round(common.BIN_MM, 6),
    "bin_depth": "bin b: the joint's camera depth z is the pelvis's plus b * bin_mm "
                 "(positive farther from the camera); training's bins are round((z - z_pelvis) "
                 "/ bin_mm) clamped to the end bins, and hgmt's decoding puts the pelvis at 0",
    "values": f"per joint a volume over (y, x, bin): a target is a 3D Gaussian of sigma "
              f"{SIGMA} label px and {SIGMA} bin with peak 1",
    "decoding": {
        "joint_px": f"joint j's (x, y) is the sub-pixel peak of the (r, r) map of its volume's "
                    f"maximum over the {NUM_BINS} bins: {pose2d.SUBPIXEL_PEAK}",
        "bin": "joint j's bin b = bins[k], k the argmax (the first on ties) of its "
               f"{NUM_BINS} channels at label px (round(x), round(y)), rounded half to even "
               "and clipped to [0, r - 1]; the pelvis's b is 0: it is the depth reference",
        "depth_m": "Z = z_pelvis + b * bin_mm / 1000 (z_pelvis: camera.pelvis_depth_m)",
        "camera_px": "(u, v) = the joint's label px (x, y) in image px (crop."
                     "image_px_to_label_px inverted), then in SURREAL's camera (camera."
                     "image_px_to_camera_px)",
        "back_projection": "X = (u - cx) Z / f, Y = (v - cy) Z / f (camera.focal_px f, "
                           "camera.principal_point_px (cx, cy)); X negated where the crop "
                           "mirrors the image (its image px -> label px map has a negative "
                           "determinant; hgmt.predict's never do)",
        "joints3d_rel_mm": "1000 * ((X, Y, Z) of joint j - (X, Y, Z) of the pelvis): "
                           "hgmt.predict's joints3d_rel_mm",
    },
}


def labels(crop: spec.Crop) -> dict:
    """The cropped example's entries this task reads: 'joints2d', 'visible' (where each joint's
    volume lies), 'joints3d' (16,3) camera metres, 'pelvis_depth'."""
    return {**spec.joint_labels(crop), "joints3d": crop.joints3d().astype(np.float32),
            **spec.pelvis_depth(crop)}


def relative_depth(batch: dict) -> jnp.ndarray:
    """(B,16) each joint's camera depth minus the pelvis's ('pelvis_depth'), metres."""
    return batch["joints3d"][..., 2] - batch["pelvis_depth"][:, None]


def joint_bins(batch: dict) -> jnp.ndarray:
    """(B,16) int bins of each joint's camera depth relative to the pelvis."""
    return common.joint_bin(relative_depth(batch))


def targets(batch: dict) -> jnp.ndarray:
    """-> (B,r,r,16*19) volumes, zero for invisible joints."""
    r = common.label_size(batch)
    plane = common.gaussian(batch["joints2d"], r, SIGMA)  # (B,16,r,r)
    k = joint_bins(batch) + common.MAX_BIN
    zs = jnp.exp(-((jnp.arange(NUM_BINS) - k[..., None]) ** 2) / (2 * SIGMA**2))  # (B,16,19)
    vol = plane[..., None] * zs[:, :, None, None, :] * batch["visible"][..., None, None, None]
    b = vol.shape[0]
    return jnp.transpose(vol, (0, 2, 3, 1, 4)).reshape(b, r, r, NUM_CHANNELS)


def loss(pred: jnp.ndarray, target: jnp.ndarray, *,
         axis_name: str | None = None) -> jnp.ndarray:
    """() float32 mean square error of (B,r,r,16*19) volumes `pred` against `target`
    (`targets`'): a mean over equal per-device batches, so `axis_name` changes nothing (the
    devices' mean is the global batch's)."""
    return common.mse(pred, target)


def volumes(pred: jnp.ndarray) -> jnp.ndarray:
    """(B,r,r,16*19) head output -> (B,16,r,r,19) per-joint volumes."""
    b, r = pred.shape[0], pred.shape[1]
    vol = pred.astype(jnp.float32).reshape(b, r, r, NUM_JOINTS, NUM_BINS)
    return jnp.transpose(vol, (0, 3, 1, 2, 4))


def to_camera(xy: jnp.ndarray, bins: jnp.ndarray, batch: dict) -> jnp.ndarray:
    """Label-map (B,16,2) joint positions and (B,16) depth bins -> (B,16,3) camera metres of
    the person the crop shows (mirrored, x negated, when the crop is flipped)."""
    uv = common.apply_affine(common.invert_affine(batch["crop"]), xy)
    cam = camera.backproject(uv, batch["pelvis_depth"][:, None] + common.joint_bin_depth(bins))
    return cam.at[..., 0].multiply(common.crop_mirror(batch["crop"])[:, None])


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,16*19) -> joints (B,16,3): camera metres and root-relative millimetres."""
    b, r = pred.shape[0], pred.shape[1]
    vol = volumes(pred)  # (B,16,r,r,19)
    xy, _ = common.subpixel_argmax(vol.max(-1))
    xi = jnp.clip(jnp.round(xy[..., 0]).astype(jnp.int32), 0, r - 1)
    yi = jnp.clip(jnp.round(xy[..., 1]).astype(jnp.int32), 0, r - 1)
    column = vol[jnp.arange(b)[:, None], jnp.arange(NUM_JOINTS)[None], yi, xi]  # (B,16,19)
    bins = jnp.argmax(column, -1) - common.MAX_BIN
    bins = bins.at[:, body.PELVIS].set(0)  # the pelvis is the depth reference itself
    cam = to_camera(xy, bins, batch)
    return {"joints3d": cam, "joints3d_rel_mm": root_relative_mm(cam)}


def root_relative_mm(joints3d: jnp.ndarray) -> jnp.ndarray:
    """(B,16,3) camera metres -> pelvis-relative millimetres."""
    return (joints3d - joints3d[:, body.PELVIS:body.PELVIS + 1]) * 1000.0


def metric_stats(decoded: dict, batch: dict) -> dict:
    """Summed pelvis-relative joint errors (mm) and example counts per joint, each example
    weighted by `common.example_weights`."""
    err = jnp.linalg.norm(decoded["joints3d_rel_mm"] - root_relative_mm(batch["joints3d"]),
                          axis=-1)
    weights = common.example_weights(batch, err.shape[0])
    return {"error_mm_sum": common.weighted_sum(weights, err),
            "count": jnp.full((NUM_JOINTS,), weights.sum(), jnp.float32)}


def summarize(stats: dict) -> dict:
    """Summed errors -> MJD per joint and its mean over the 16 joints (None, with its reason,
    where no example was evaluated)."""
    count = np.asarray(stats["count"])
    per_joint = np.asarray(stats["error_mm_sum"]) / np.maximum(count, 1)
    any_example = bool((count > 0).all())
    return common.with_null_reasons({
        "mjd_mm": float(per_joint.mean()) if any_example else None,
        "mjd_mm_per_joint": {n: float(v) if c > 0 else None
                             for n, v, c in zip(body.JOINT_NAMES, per_joint, count,
                                                strict=True)},
    }, {"mjd_mm": "no example evaluated"})


# --- Protocol "bodynet": gulvarol/bodynet training/util/eval.lua `evalPerf` (joints3D part,
# lines 414-520) and `getPreds3DCropped`: each joint at the global maximum of its 19 x r x r
# volume, the first in (z, y, x) order with z = 1 the farthest bin (`tensorMax`); its label
# pixel to the *integer* image pixel of `transform(..., true)`; depth bin x 45 mm from the
# ground-truth pelvis depth (`reconstruct3D` with `-(z - middleZ) * opt.stp + (T1 - T2)`),
# back-projected, aligned at the *predicted* pelvis (`rec3D_q[7]`); MJD over all 16 joints,
# pelvis included (PE_off), summed over the examples of the full test batches and divided by
# the number of examples (test.lua:87).
def bodynet_decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,16*19) -> joints (B,16,3) camera metres and root-relative millimetres.

    tensorMax (eval.lua:23-27) takes the first maximum of `nonzero()` in (z, y, x) order; z = 1
    is BodyNet's bin +9, the farthest (donkey.lua:315-322: z = round(-dz/stp) + 10 with -dz
    the joint's depth towards the camera), so ties go to the farthest bin, then the top row,
    then the left column. eval.lua:464-465 `transform(..., true)` (img.lua:62-64) takes the
    label pixel's 0-based index as its BodyNet label coordinate (the pixel's top-left corner:
    hgmt's index - `common.BODYNET_LABEL_SHIFT`) and returns the integer image pixel
    trunc(u + 1e-4) + 1 (the cast truncates toward zero); eval.lua:484 back-projects it minus
    1: the 0-based integer pixel."""
    vol = jnp.moveaxis(volumes(pred), -1, 2)[:, :, ::-1]  # (B,16,19,r,r): z=0 is bin +9
    b, _, nb, r, _ = vol.shape
    idx = jnp.argmax(vol.reshape(b, NUM_JOINTS, nb * r * r), -1)  # first maximum
    bins = common.MAX_BIN - idx // (r * r)
    xy = jnp.stack([idx % r, (idx // r) % r], -1) - common.BODYNET_LABEL_SHIFT
    uv = common.torch_int(common.apply_affine(common.invert_affine(batch["crop"]), xy) + 1e-4)
    cam = camera.backproject(uv.astype(jnp.float32),
                              batch["pelvis_depth"][:, None] + common.joint_bin_depth(bins))
    cam = cam.at[..., 0].multiply(common.crop_mirror(batch["crop"])[:, None])
    return {"joints3d": cam, "joints3d_rel_mm": root_relative_mm(cam)}


def bodynet_stats(pred: jnp.ndarray, batch: dict, *, num_examples: int) -> dict:
    """Summed errors per joint of BodyNet's decoding of (B,r,r,16*19) `pred` over the examples
    of the floor(N/4) full test batches (test.lua:62; the last partial batch is not
    evaluated): 'error_mm_sum' (16,) in mm."""
    err = jnp.linalg.norm(bodynet_decode(pred, batch)["joints3d_rel_mm"]
                          - root_relative_mm(batch["joints3d"]), axis=-1)
    weights = common.full_batch_weights(batch, err.shape[0], num_examples,
                                        common.REFERENCE_TEST_BATCH["bodynet"])
    # An unusable frame has no annotations (bodynet dataset.lua:795 `instance = {}`): eval.lua
    # :430-433 adds no error for it, but it counts in the batch size (:520).
    weights = weights * (1.0 - common.unusable(batch, err.shape[0]))
    return {"error_mm_sum": common.weighted_sum(weights, err)}


def bodynet_summarize(stats: dict, *, num_examples: int, num_damaged: int = 0) -> dict:
    """eval.lua:490 and :520 sum a batch's errors per joint and divide by the batch size;
    test.lua:277 and :87 sum the batches and divide by N/4 (minus the batches whose mean is
    NaN, which finite predictions never give): per joint, the error sum over the evaluated
    examples / N, in mm; `mjd_mm` is its mean over the 16 joints (test.lua:90). Null, with
    the reason (`common.reference_null`), without a full test batch (the reference's sum is
    0) and where `num_damaged` records were left out of the sum but count in N."""
    size = common.REFERENCE_TEST_BATCH["bodynet"]
    why = common.reference_null(num_examples, size, num_damaged)
    per_joint = np.asarray(stats["error_mm_sum"]) / max(num_examples, 1)
    return common.with_null_reasons({
        "mjd_mm": None if why else float(per_joint.mean()),
        "mjd_mm_per_joint": {n: None if why else v for n, v in zip(
            body.JOINT_NAMES, per_joint.tolist(), strict=True)},
        "examples_not_evaluated": num_examples - (num_examples // size) * size,
    }, dict.fromkeys(("mjd_mm", "mjd_mm_per_joint"), why))


def protocol_metric(protocol: str, num_examples: int) -> tuple:
    """(stats, summarize) of a protocol of HEADLINES other than hgmt: BodyNet's decoding and
    averaging, for a split of `num_examples`; summarize(sums, num_damaged=0)."""
    return (functools.partial(bodynet_stats, num_examples=num_examples),
            functools.partial(bodynet_summarize, num_examples=num_examples))


# --- One image's prediction: result, JSON, picture -------------------------------------------
def summary_pictures(summary: dict, stem: str) -> list[str]:
    """No pictures ([]): the evaluation's JSON and tables show everything of this task."""
    return []


# One crop's decoding and location, each one jitted program run where the crop's outputs are
# (the Predictor keeps them on JAX's device): eagerly, their dozens of small ops would each be
# dispatched on their own, and a host array copied to the device first.
_decode_one = jax.jit(lambda pred, batch: decode(pred[None], batch)["joints3d_rel_mm"][0])
_locate_one = jax.jit(lambda pred: common.subpixel_argmax(volumes(pred[None])[0].max(-1)))


def predict(pred: ArrayLike, frame: Frame) -> dict:
    """(r,r,16*19) -> {'joints3d_rel_mm': (16,3) pelvis-relative camera mm (`decode`), and what
    they were decoded with: 'focal_px' the focal length in the original image's px,
    'pelvis_depth_m' the pelvis's camera depth in metres}."""
    return {"joints3d_rel_mm": np.asarray(_decode_one(pred, frame.batch)),
            "focal_px": float(camera.INTRINSICS[0, 0] / frame.virtual[0, 0]),
            "pelvis_depth_m": float(frame.batch["pelvis_depth"][0])}


def locate(pred: ArrayLike) -> dict:
    """Where the (r,r,16*19) volumes see the person: 'joints' (16,2) label px (sub-pixel
    peaks of each joint's volume's maximum over the bins), 'joint_scores' (16,) their heights."""
    joints, score = jax.device_get(_locate_one(pred))
    return {"joints": joints, "joint_scores": score}


def to_json(result: dict) -> dict:
    """`predict`'s result -> JSON: 'joint_names' (16,) the joints' order; 'joints3d_rel_mm'
    (16,3) pelvis-relative camera mm, rounded to 0.1 mm; 'focal_px' (px, 3 decimals);
    'pelvis_depth_m' (m, 4 decimals)."""
    return {"joint_names": list(body.JOINT_NAMES),
            "joints3d_rel_mm": np.round(result["joints3d_rel_mm"], 1).tolist(),
            "focal_px": round(result["focal_px"], 3),
            "pelvis_depth_m": round(result["pelvis_depth_m"], 4)}


def draw(pred: ArrayLike, rgb: np.ndarray, frame: Frame, *,
         result: dict | None = None) -> np.ndarray:
    """Front (x,y) and side (z,y) views of the decoded skeleton (`result`'s when given), the
    crop's size."""
    from hgmt.tasks import drawing

    joints = (result or predict(pred, frame))["joints3d_rel_mm"]
    return drawing.skeleton3d(joints, rgb.shape[0])


def plot(result: dict) -> Figure:
    """The panel's figure: front and side views of the pelvis-relative joints, axes in mm."""
    from hgmt.tasks import drawing

    return drawing.figure_skeleton3d(result["joints3d_rel_mm"])
