"""2D pose: 16 Gaussian heatmaps (sigma 1 px) at the label resolution, MSE loss.

Metrics (protocol hgmt): PCKh@0.5 (head segment = |head_top - upper_neck| in the crop) per
joint and mean, PCK@3.2px (sub-pixel distance <= 3.2 px at 64x64, all 16 joints), and the PCKh
curve; means over the joints visible in the split. Protocol bodynet: `bodynet_stats`, BodyNet's
own PCK (docs/metrics.md).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hgmt.sources import body
from hgmt.tasks import common, spec
from hgmt.tasks.spec import Frame, Headline

if TYPE_CHECKING:  # matplotlib is imported when a figure is first drawn
    from matplotlib.figure import Figure

NAME = "pose2d"
NUM_JOINTS = len(body.JOINT_NAMES)
NUM_CHANNELS = NUM_JOINTS
DEFAULT_LOSS_WEIGHT = 1000.0
LOSS_OPTIONS: dict = {}  # none: `loss` takes no options
READS_DISTANCE = False
SIGMA = 1.0
CHANNEL_FLIP = body.JOINT_FLIP  # channel permutation under a horizontal flip
# The sub-pixel peak of an (h, w) map, exactly as `common.subpixel_argmax` computes it in
# float32: what an export's consumer repeats to get hgmt's joints (pose3d's too).
SUBPIXEL_PEAK = (
    "(x, y) = the integer position of the (r, r) map's maximum (the first in row-major order "
    "on ties), p = its value; on each axis where that position is not on the map's border "
    "(0 < x < r - 1; likewise y), with l, m, n = ln(max(v, 1e-8)) of the values v at x - 1, "
    "x, x + 1 (y fixed; likewise along y, x fixed) and d = l - 2m + n, the offset is "
    "clip(0.5 (l - n) / d, -0.5, 0.5) where d < -1e-6, else 0; on the border it is 0. The "
    "peak is at (x + offset_x, y + offset_y) label px, its score p")
# What a (B,r,r,NUM_CHANNELS) output holds, for a consumer of an export (its hgmt.json).
OUTPUT_LAYOUT = {
    "channels": NUM_CHANNELS,
    "channel": "joint: channel j is joint_names[j]",
    "joint_names": list(body.JOINT_NAMES),
    "sides": body.SIDES,
    "values": f"heatmaps: a target is a Gaussian of sigma {SIGMA} label px with peak 1",
    "decoding": f"hgmt's joint j (hgmt.predict's joint_scores, and joints2d: in image px, "
                f"crop.image_px_to_label_px inverted) is the sub-pixel peak of channel j: "
                f"{SUBPIXEL_PEAK}",
}
HEADLINES = {
    "hgmt": Headline(("pckh@0.5", "pck@3.2px"), "pckh@0.5", (), "PCKh@0.5",
                     "pckh@0.5_per_joint", "joint", item_label="PCKh@0.5",
                     item_names=body.JOINT_NAMES),
    "bodynet": Headline(("pck",), "pck", (), "PCK (BodyNet)", "pck_per_joint", "joint",
                        item_label="PCK", item_names=body.JOINT_NAMES, caveats={
                            "examples_not_evaluated": common.NOT_EVALUATED,
                            "batches_without_scored_joint":
                                "full test batches without a scored joint: NaN to the "
                                "reference, left out of the sum and the divisor",
                            "examples_with_unscored_joint":
                                "evaluated examples with one of the 10 joints unscored (not "
                                "drawn, or on the first row or column): with U of them the "
                                "test order moves the PCK by at most 10U/(N - U) "
                                "(docs/metrics.md)"}),
}
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


def loss(pred: jnp.ndarray, target: jnp.ndarray, *,
         axis_name: str | None = None) -> jnp.ndarray:
    """() float32 mean square error of (B,r,r,16) heatmaps `pred` against `target`
    (`targets`'): a mean over equal per-device batches, so `axis_name` changes nothing (the
    devices' mean is the global batch's)."""
    return common.mse(pred, target)


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,16) heatmaps -> joints (B,16,2) in label px and in original-image px."""
    joints, score = common.subpixel_argmax(jnp.moveaxis(pred.astype(jnp.float32), -1, 1))
    image = common.apply_affine(common.invert_affine(batch["crop"]), joints)
    return {"joints2d": joints, "joints2d_image": image, "score": score}


def metric_stats(decoded: dict, batch: dict) -> dict:
    """Additive statistics of a batch: correct counts per joint at each PCKh threshold, PCK
    (distance <= 3.2 px at 64x64, scaled with r; every threshold compares with <=) and visible
    counts, each example weighted by `common.example_weights`. Reads the cropped batch's
    `joints2d`, `visible` and `image` (whose size R gives r = R / 4: `common.label_size`)."""
    r = common.label_size(batch)
    gt = batch["joints2d"]
    vis = batch["visible"] * common.example_weights(batch, gt.shape[0])[:, None]
    dist = jnp.linalg.norm(decoded["joints2d"] - gt, axis=-1)  # (B,16)
    head = jnp.linalg.norm(gt[:, body.HEAD_TOP] - gt[:, body.UPPER_NECK], axis=-1)
    rel = dist / jnp.maximum(head, 1e-6)[:, None]
    thr = jnp.asarray(PCK_THRESHOLDS, jnp.float32)
    within = (rel[..., None] <= thr) * vis[..., None]  # (B,16,K)
    return {"pckh_correct": within.sum(0), "visible": vis.sum(0),
            "pck_correct": ((dist <= 3.2 * r / common.REFERENCE_LABEL_SIZE) * vis).sum(0)}


def summarize(stats: dict) -> dict:
    """Sums of metric_stats -> PCKh@0.5 per joint and mean, PCK@3.2px, and the PCKh curve.

    Means are over the joints that were visible at least once in the split; a joint never
    visible has no score (None per joint) rather than counting as 0, and with no visible joint
    at all every number is None, with its reason under "null_reasons"."""
    vis = np.asarray(stats["visible"])
    seen = vis > 0
    curve = np.asarray(stats["pckh_correct"]) / np.maximum(vis, 1)[:, None]  # (16,K)
    at_half = curve[:, int(np.argmin(np.abs(PCK_THRESHOLDS - 0.5)))]
    pck = np.asarray(stats["pck_correct"]) / np.maximum(vis, 1)
    any_seen = bool(seen.any())
    return common.with_null_reasons({
        "pckh@0.5": float(at_half[seen].mean()) if any_seen else None,
        "pckh@0.5_per_joint": {n: float(v) if s else None
                               for n, v, s in zip(body.JOINT_NAMES, at_half, seen,
                                                  strict=True)},
        "pck@3.2px": float(pck[seen].mean()) if any_seen else None,
        "pckh_curve": {"thresholds": PCK_THRESHOLDS.tolist(),
                       "mean": curve[seen].mean(0).tolist() if any_seen else None},
    }, dict.fromkeys(("pckh@0.5", "pck@3.2px"), "no joint visible in the split"))


# --- Protocol "bodynet": gulvarol/bodynet training/util/eval.lua `heatmapAccuracy` (PCK at
# 0.5 x heatmapSize/10 = 3.2 px at 64x64 between the integer argmaxes of the predicted and the
# ground-truth heatmaps) on 10 joints, averaged per test batch as its training/test.lua does.
BODYNET_JOINTS = (0, 1, 2, 3, 4, 5, 10, 11, 14, 15)  # eval.lua:317 {1,2,3,4,5,6,11,12,15,16}
# image.gaussian(7)'s peak (1-based) in the 7 x 7 kernel that drawGaussian pastes (sigma 1).
_KERNEL_PEAK = 4


def integer_argmax(maps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(...,H,W) -> ((...,2) int (x,y) of the first maximum in row-major order, (...) max)."""
    h, w = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], h * w)
    idx = jnp.argmax(flat, axis=-1)
    return jnp.stack([idx % w, idx // w], -1), jnp.max(flat, axis=-1)


def bodynet_label_peaks(batch: dict, r: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Where BodyNet's ground-truth heatmaps peak: ((B,16,2) int 1-based (x,y), (B,16) bool
    drawn), from batch['joints2d'] (label px) and batch['crop'].

    bodynet training/donkey.lua:288-289 draws joint j only if its image y (1-based) is > 1,
    at `transform(...)` = the integer pixel trunc(x + 1e-4) + 1 (img.lua:62-64) of its
    BodyNet label x, hgmt's + `common.BODYNET_LABEL_SHIFT` (the pixel holding the joint);
    drawGaussian (img.lua:223-243) pastes image.gaussian(7) (peak at kernel index 4) from
    ul = pt - 3 to br = pt + 3 (:226-227), skipping a kernel wholly outside (:229), but starts
    the kernel at index max(1, -ul) (:234-235) instead of 2 - ul: a peak near the left or top
    edge moves right or down (1-based column 3 -> 4, 2 -> 4, 1 -> 3, 0 -> 2, -1 -> 1,
    -2 -> 1)."""
    image_y = common.apply_affine(common.invert_affine(batch["crop"]), batch["joints2d"])[..., 1]
    shifted = batch["joints2d"] + common.BODYNET_LABEL_SHIFT
    pt = common.torch_int(shifted + 1e-4) + 1  # img.lua:62-64
    ul, br = pt - 3, pt + 3  # img.lua:226-227 (sigma 1, integer pt)
    drawn = (image_y + 1 > 1) & jnp.all((ul <= r) & (br >= 1), -1)  # donkey.lua:288, img:229
    first = jnp.maximum(1, ul)  # img.lua:237-238, the image range
    last = jnp.minimum(br, r)
    g_first = jnp.maximum(1, -ul)  # img.lua:234-235, the kernel range
    g_peak = jnp.clip(_KERNEL_PEAK, g_first, g_first + last - first)
    return first + g_peak - g_first, drawn


def bodynet_hits(pred: jnp.ndarray, batch: dict) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(B,r,r,16) predicted heatmaps -> (correct, valid), each (B,16) float, per eval.lua.

    getPreds2DCropped (eval.lua:40-52): the first maximum in row-major order, 1-based; a
    heatmap whose maximum is <= 0 predicts pixel (1,1). The ground truth is the same of
    BodyNet's heatmap (`bodynet_label_peaks`; not drawn: all zero, pixel (1,1)). calcDists
    (eval.lua:13): a joint counts only if its ground truth lies beyond the first row and
    column (`label > 1`). distAccuracy (eval.lua:78-86): correct if distance / (r/10) <= 0.5."""
    r = pred.shape[1]
    p_xy, p_max = integer_argmax(jnp.moveaxis(pred.astype(jnp.float32), -1, 1))
    p_xy = jnp.where((p_max > 0)[..., None], p_xy + 1, 1)
    g_xy, drawn = bodynet_label_peaks(batch, r)
    g_xy = jnp.where(drawn[..., None], g_xy, 1)
    valid = (g_xy[..., 0] > 1) & (g_xy[..., 1] > 1)
    dist = jnp.linalg.norm((p_xy - g_xy).astype(jnp.float32), axis=-1) / (r / 10)
    return ((dist <= 0.5) & valid).astype(jnp.float32), valid.astype(jnp.float32)


def bodynet_stats(pred: jnp.ndarray, batch: dict, *, num_examples: int) -> dict:
    """Correct and valid counts (G,16) per BodyNet test batch, G = floor(N / 4) full
    batches: example batch['position'] (its index in the split's test order) belongs to batch
    position // 4; the last partial batch is not evaluated (test.lua:62)."""
    size = common.REFERENCE_TEST_BATCH["bodynet"]
    correct, valid = bodynet_hits(pred, batch)
    # An unusable frame's ground-truth heatmaps are all 1 (bodynet dataset.lua:786-792) or
    # all 0: either way pixel (1,1), never scored (eval.lua:13).
    scored = 1.0 - common.unusable(batch, correct.shape[0])[:, None]
    correct, valid = correct * scored, valid * scored
    weights = common.full_batch_weights(batch, correct.shape[0], num_examples, size)[:, None]
    correct, valid = correct * weights, valid * weights
    group = jax.nn.one_hot(batch["position"] // size, max(num_examples // size, 1))  # (B,G)
    return {"correct": jnp.einsum("bg,bj->gj", group, correct, precision=common.EXACT),
            "valid": jnp.einsum("bg,bj->gj", group, valid, precision=common.EXACT),
            "unscored": common.weighted_sum(weights[:, 0], jnp.any(
                valid[:, BODYNET_JOINTS] == 0, -1).astype(jnp.float32))}


def bodynet_summarize(stats: dict, *, num_examples: int, num_damaged: int = 0) -> dict:
    """test.lua: PCK = the sum over the floor(N/4) full test batches of heatmapAccuracy (the
    mean over the 10 joints with a valid instance in the batch of correct / valid, eval.lua:
    106-111), divided by N/4 minus the batches where it is NaN (no valid joint: test.lua:272,
    :81). That is 0/0 if every batch is NaN and N is a multiple of 4, and no batch at all if
    N < 4 (the reference prints 0): null then, with the reason. Per joint: correct / valid
    over the evaluated examples (not in BodyNet's log; a breakdown).
    `examples_with_unscored_joint` bounds how much the test order can move the PCK
    (docs/metrics.md). A damaged record left out (`num_damaged`) scores no joint, so each
    batch's mean is over the records that read: the PCK stays defined."""
    size = common.REFERENCE_TEST_BATCH["bodynet"]
    full = num_examples // size
    no_batch = common.reference_null(num_examples, size)
    correct = np.asarray(stats["correct"])[:full, BODYNET_JOINTS]  # (G,10)
    valid = np.asarray(stats["valid"])[:full, BODYNET_JOINTS]
    seen = valid > 0
    per_batch = np.where(seen, correct / np.maximum(valid, 1), 0).sum(1) / np.maximum(
        seen.sum(1), 1)
    batches = seen.any(1)
    divisor = num_examples / size - int((~batches).sum())
    totals = correct.sum(0) / np.maximum(valid.sum(0), 1)
    return common.with_null_reasons({
        "pck": float(per_batch[batches].sum() / divisor) if divisor > 0 and not no_batch
        else None,
        "pck_per_joint": {body.JOINT_NAMES[j]: float(v) if n > 0 else None
                          for j, v, n in zip(BODYNET_JOINTS, totals, valid.sum(0),
                                             strict=True)},
        "num_batches": full,
        "batches_without_scored_joint": int((~batches).sum()),
        "examples_not_evaluated": num_examples - full * size,
        "examples_with_unscored_joint": int(round(float(stats["unscored"]))),
    }, {"pck": no_batch or "no test batch has a scored joint (the reference divides 0 by 0)"})


def protocol_metric(protocol: str, num_examples: int) -> tuple:
    """(stats, summarize) of a protocol of HEADLINES other than hgmt, for a split of
    `num_examples`: BodyNet's PCK, averaged per test batch of 4; summarize(sums,
    num_damaged=0)."""
    return (functools.partial(bodynet_stats, num_examples=num_examples),
            functools.partial(bodynet_summarize, num_examples=num_examples))


# --- One image's prediction: result, JSON, picture -------------------------------------------
def summary_pictures(summary: dict, stem: str) -> list[str]:
    """The PCKh curve of hgmt's protocol: `<stem>_pckh.png`."""
    if (summary.get("pckh_curve") or {}).get("mean") is None:  # nothing visible: no curve
        return []
    from hgmt.tasks import drawing

    drawing.plot_pck_curve(summary["pckh_curve"], stem + "_pckh.png")
    return [stem + "_pckh.png"]


def predict(pred: ArrayLike, frame: Frame) -> dict:
    """(r,r,16) heatmaps -> {'joints2d': (16,2) original-image px, 'joint_scores': (16,) each
    heatmap's maximum (1 at a training target's peak; `locate`)}."""
    joints = decode(jnp.asarray(pred)[None], frame.batch)["joints2d_image"]
    return {"joints2d": frame.to_original(joints[0]),
            "joint_scores": locate(pred)["joint_scores"]}


def locate(pred: ArrayLike) -> dict:
    """Where the (r,r,16) heatmaps see the person: 'joints' (16,2) label px (sub-pixel
    peaks), 'joint_scores' (16,) the peaks' heights (1 at a training target's peak)."""
    joints, score = common.subpixel_argmax(np.moveaxis(np.asarray(pred, np.float32), -1, 0))
    return {"joints": np.asarray(joints), "joint_scores": np.asarray(score)}


def to_json(result: dict) -> dict:
    """`predict`'s result -> JSON: 'joint_names' (16,) the joints' order; 'joints2d_image_px'
    (16,2) original-image px, rounded to 0.01 px; 'joint_scores' (16,) heatmap peaks, rounded
    to 4 decimals."""
    return {"joint_names": list(body.JOINT_NAMES),
            "joints2d_image_px": np.round(result["joints2d"], 2).tolist(),
            "joint_scores": np.round(np.asarray(result["joint_scores"], np.float64), 4).tolist()}


def draw(pred: ArrayLike, rgb: np.ndarray, frame: Frame, *,
         result: dict | None = None) -> np.ndarray:
    """The decoded skeleton on the (S,S,3) crop (its peaks in the label map; `result`, in
    image px, is not needed)."""
    from hgmt.tasks import drawing

    joints, _ = common.subpixel_argmax(np.moveaxis(pred, -1, 0))
    return drawing.draw_skeleton(rgb, common.label_to_crop_px(np.asarray(joints), rgb.shape[0],
                                                              pred.shape[0]))


def plot(result: dict) -> Figure:
    """The panel's figure: the predicted skeleton on the crop."""
    from hgmt.tasks import drawing

    crop = result["crop"]  # image px -> label px
    label = result["joints2d"] @ crop[:, :2].T + crop[:, 2]
    return drawing.figure_image(result["crop_image"], "2D pose", common.label_to_crop_px(
        label, result["crop_image"].shape[0], result["raw"][NAME].shape[0]))
