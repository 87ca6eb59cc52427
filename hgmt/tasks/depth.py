"""Full-body depth as 20 classes: 0 background, 1..19 = clamp(ceil((d - dPelvis)/45 mm), -9, 9)
+ 10 on the foreground, computed in float32 exactly as SURREAL's loader does (`classes`; the
builder stores them, `depth_class`). Spatial cross-entropy. Metrics (protocol hgmt): RMSE in mm
over all ground-truth foreground pixels of the split (bin index error x 45 mm) and the accuracy
of the bin class there. Protocols surreal/bodynet: `surreal_stats`, the mean over images of each
image's RMSE as SURREAL's code computes it (docs/metrics.md)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hgmt.sources import surreal
from hgmt.tasks import common, spec
from hgmt.tasks.spec import Frame, Headline

if TYPE_CHECKING:  # matplotlib is imported when a figure is first drawn
    from matplotlib.figure import Figure

NAME = "depth"
NUM_CHANNELS = common.NUM_BINS + 1  # background + the 19 bins
DEFAULT_LOSS_WEIGHT = 1.0
# foreground_weight: how much more a foreground pixel counts in the loss than a background one
# (1.0: SURREAL's plain cross-entropy; see `loss`).
LOSS_OPTIONS = {"foreground_weight": 1.0}
READS_DISTANCE = False  # its predictions are relative to the pelvis
CHANNEL_FLIP = np.arange(NUM_CHANNELS)  # depth bins do not change under a flip
# What a (B,r,r,NUM_CHANNELS) output holds, for a consumer of an export (its hgmt.json).
OUTPUT_LAYOUT = {
    "channels": NUM_CHANNELS,
    "channel": f"class c: 0 background; c = 1..{NUM_CHANNELS - 1} is depth bin "
               f"b = c - {common.MAX_BIN + 1} of bins",
    "bins": list(common.BINS),
    "bin_mm": round(common.BIN_MM, 6),
    "bin_depth": "bin b holds depths in ((b - 1) * bin_mm, b * bin_mm] relative to the pelvis "
                 "(the pixel's distance from the camera centre minus the pelvis's camera z, "
                 "positive farther); the end bins also hold everything nearer or farther",
    "values": "logits: a pixel's class is the argmax over the channels (the first on ties)",
    "decoding": "hgmt.predict's depth_rel_mm of a pixel of class c > 0 is its bin's centre, "
                f"(b - 0.5) * bin_mm with b = c - {common.MAX_BIN + 1}; of the background "
                "(c = 0) none (NaN)",
}
# BodyNet's depth metric is SURREAL's function (the same code in both repositories).
_REFERENCE_CAVEATS = {
    "examples_not_evaluated": common.NOT_EVALUATED,
    "images_no_foreground": "evaluated images without a ground-truth foreground pixel: each "
                            "adds 0 and counts in N, as in the reference",
    "images_one_foreground_pixel": "evaluated images with exactly one foreground pixel, where "
                                   "the reference's unfold raises and its evaluation stops: "
                                   "each adds 0 and counts in N here",
    "foreground_pixels_dropped": "evaluated images with an odd number of foreground pixels, "
                                 "whose last one (row-major) the reference drops",
}
HEADLINES = {
    "hgmt": Headline(("rmse_mm", "bin_accuracy"), "rmse_mm", ("rmse_mm",), "RMSE (mm)"),
    "bodynet": Headline(("rmse_mm",), "rmse_mm", ("rmse_mm",), "RMSE (mm, per image)",
                        caveats=_REFERENCE_CAVEATS),
    "surreal": Headline(("rmse_mm",), "rmse_mm", ("rmse_mm",), "RMSE (mm, per image)",
                        caveats=_REFERENCE_CAVEATS),
}


def classes(depth: np.ndarray, d_pelvis: float | np.ndarray) -> np.ndarray:
    """(...,H,W) depth map in metres as _depth.mat stores it (the distance from the camera
    centre, float32; > 1000 on the background, or 0 in maps made so) and (...) the pelvis's
    planar camera depth camLoc_x - pelvis_x in metres (double)
    -> (...,H,W) uint8 classes, bit for bit what gulvarol/surreal training/loader_SURREAL.lua
    computes (the depth is a FloatTensor, so Torch works in float32):
    foreground = depth <= 1e3 (:99, :104); bin = clamp(ceil(float32(depth +
    float32(-dPelvis)) * float32(1 / 0.045)), -9, 9) (:106; donkey.lua:94 dPelvis); background
    -10 (:107); + 10 (:108). One addition: a depth of 0 is background here, where the
    reference would give it the nearest bin; SURREAL's files hold 1e10 there, never 0 (maps
    made with 0 off the person, as tests' and pictures', read as such). A float32 step rounds
    differently from a double one near a bin's edge, and millimetres differently again, so
    this is the one place the classes are made."""
    d = np.asarray(depth, np.float32)
    shift = np.asarray(-np.asarray(d_pelvis, np.float64), np.float32)[..., None, None]
    q = (d + shift) * np.float32(1.0 / common.BIN_SIZE)  # float32 arithmetic throughout
    bins = np.clip(np.ceil(q), -common.MAX_BIN, common.MAX_BIN)
    foreground = (d > 0) & (d <= np.float32(surreal.BACKGROUND_ABOVE_M))
    return np.where(foreground, bins + common.MAX_BIN + 1, 0).astype(np.uint8)


def labels(crop: spec.Crop) -> dict:
    """The cropped example's entries this task reads: 'depth_class' (r,r) uint8 classes (the
    record's, `classes`, cut nearest), 'pelvis_depth', and 'depth' (r,r) float32 camera metres
    (0 on the background; the record stores millimetres), which only pictures show: absent
    where the crop does not read the map (training's `unread`). A mirror keeps the depth."""
    out = {"depth_class": crop.warp("depth_class").astype(np.uint8), **spec.pelvis_depth(crop)}
    if "depth" not in crop.unread:
        out["depth"] = crop.warp("depth").astype(np.float32) / 1000.0
    return out


def targets(batch: dict) -> jnp.ndarray:
    """batch['depth_class'] (B,r,r) classes (0 background, 1..19) -> (B,r,r) int32."""
    return batch["depth_class"].astype(jnp.int32)


def loss(pred: jnp.ndarray, target: jnp.ndarray, *, axis_name: str | None = None,
         foreground_weight: float = 1.0) -> jnp.ndarray:
    """(B,r,r,20) logits, (B,r,r) classes -> spatial cross-entropy, SURREAL's at
    foreground_weight 1. Above 1, each foreground pixel weighs that much more than a background
    one and the sum is divided by the weights' sum over the global batch, so the loss keeps
    cross-entropy's scale: about 9 label pixels in 10 are background, and with equal weights
    the head first learns to predict background everywhere (docs/learning.md)."""
    return common.foreground_weighted_cross_entropy(pred, target, foreground_weight, axis_name)


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,20) logits -> class map and metric depth (metres, 0 on predicted background)."""
    classes = common.argmax_classes(pred)
    dz = common.bin_centre(classes - common.MAX_BIN - 1)
    metres = jnp.where(classes > 0, batch["pelvis_depth"][:, None, None] + dz, 0.0)
    return {"depth_classes": classes, "depth_m": metres}


def metric_stats(decoded: dict, batch: dict) -> dict:
    """Additive sums over a batch's ground-truth foreground pixels (batch['depth_class']
    (B,r,r) > 0), each weighted by its example's `common.example_weights`: 'sq_error_mm' ()
    of the squared class error (decoded['depth_classes'] (B,r,r) - truth) x 45 mm, in mm^2;
    'correct' () the pixels in the right class; 'foreground' () the pixels."""
    gt = targets(batch)
    # Foreground pixels, each weighted by its example's weight.
    fg = (gt > 0) * common.example_weights(batch, gt.shape[0])[:, None, None]
    # BIN_SIZE then 1000, not BIN_MM: this order of float operations makes the reported mm.
    err_mm = (decoded["depth_classes"] - gt) * common.BIN_SIZE * 1000.0
    return {"sq_error_mm": jnp.sum(fg * err_mm**2),
            "correct": jnp.sum(fg * (decoded["depth_classes"] == gt)),
            "foreground": jnp.sum(fg)}


def summarize(stats: dict) -> dict:
    """Split sums -> RMSE (mm) and bin accuracy over the ground-truth foreground pixels; both
    None, with the reason, where the split has no foreground pixel."""
    n = float(stats["foreground"])
    return common.with_null_reasons({
        "rmse_mm": float(np.sqrt(float(stats["sq_error_mm"]) / n)) if n > 0 else None,
        "bin_accuracy": float(stats["correct"]) / n if n > 0 else None,
    }, dict.fromkeys(("rmse_mm", "bin_accuracy"), "no ground-truth foreground pixel"))


# --- Protocols "surreal" and "bodynet": gulvarol/surreal training/eval.lua `depthRMSE` (lines
# 54-70; the same function in BodyNet's training/util/eval.lua), averaged by training/test.lua:
# per image the RMSE in bins between the argmax class and the ground-truth class over the
# image's ground-truth foreground, the last foreground pixel dropped when there is an odd
# number of them, then the sum over the images of the full test batches divided by the number
# of images. The SURREAL paper reports it in mm: bins x 45 mm.
def surreal_stats(pred: jnp.ndarray, batch: dict, *, num_examples: int,
                  batch_size: int) -> dict:
    """(B,r,r,20) logits -> the sum over the images of the floor(N / batch_size) full test
    batches of each image's RMSE in bins, and counts of the images it could not score.

    eval.lua:59-63: `label[b][ix]` and `pred[ix]` list the foreground pixels in row-major
    order and `unfold(1, 2, 2)` cuts them into pairs, so with an odd count n the last one is
    dropped and the mean is over 2 * floor(n / 2) pixels (a predicted background pixel
    counts as class 0 there). An image without foreground adds 0 (eval.lua:62-67). With n = 1
    `unfold` raises and the reference stops; hgmt adds 0 for that image as for an image
    without foreground and counts it in `images_one_foreground_pixel`."""
    gt = targets(batch)
    b = gt.shape[0]
    fg = (gt > 0).reshape(b, -1)
    n = fg.sum(1)
    pairs = 2 * (n // 2)
    kept = fg & (jnp.cumsum(fg, 1) <= pairs[:, None])  # drops the odd one out
    err = (common.argmax_classes(pred) - gt).reshape(b, -1).astype(jnp.float32)
    rmse = jnp.sqrt(jnp.where(kept, err**2, 0.0).sum(1) / jnp.maximum(pairs, 1))
    weights = common.full_batch_weights(batch, b, num_examples, batch_size)
    return {"rmse_bins_sum": common.weighted_sum(weights, jnp.where(pairs > 0, rmse, 0.0)),
            "images_no_foreground": common.weighted_sum(weights, (n == 0).astype(jnp.float32)),
            "images_one_foreground_pixel": common.weighted_sum(
                weights, (n == 1).astype(jnp.float32)),
            "pixels_dropped": common.weighted_sum(
                weights, ((n % 2) * (n > 1)).astype(jnp.float32))}


def surreal_summarize(stats: dict, *, num_examples: int, batch_size: int,
                      num_damaged: int = 0) -> dict:
    """test.lua:135 sums the batches' depthRMSE (each the sum over its images / the batch
    size) and :58 divides by N / batch_size: the sum over the evaluated images / N, in bins
    and in mm. Null, with the reason (`common.reference_null`), without a full test batch
    (the reference's sum is 0) and where `num_damaged` records were left out of the sum but
    count in N."""
    why = common.reference_null(num_examples, batch_size, num_damaged)
    rmse_bins = None if why else float(stats["rmse_bins_sum"]) / num_examples

    def count(key: str) -> int:
        return int(round(float(stats[key])))

    return common.with_null_reasons({
        # BIN_SIZE then 1000, as err_mm above (the reported figure's float rounding).
        "rmse_mm": None if rmse_bins is None else rmse_bins * common.BIN_SIZE * 1000.0,
        "rmse_bins": rmse_bins,
        "images_no_foreground": count("images_no_foreground"),
        "images_one_foreground_pixel": count("images_one_foreground_pixel"),
        "foreground_pixels_dropped": count("pixels_dropped"),
        "examples_not_evaluated": num_examples - (num_examples // batch_size) * batch_size,
    }, dict.fromkeys(("rmse_mm", "rmse_bins"), why))


def protocol_metric(protocol: str, num_examples: int) -> tuple:
    """(stats, summarize) of a protocol of HEADLINES other than hgmt: SURREAL's function, which
    BodyNet's code also uses, averaged over that reference's test batches; summarize(sums,
    num_damaged=0)."""
    size = common.REFERENCE_TEST_BATCH[protocol]
    kw = {"num_examples": num_examples, "batch_size": size}
    return (functools.partial(surreal_stats, **kw), functools.partial(surreal_summarize, **kw))


# --- One image's prediction: result, JSON, picture -------------------------------------------
def summary_pictures(summary: dict, stem: str) -> list[str]:
    """No pictures ([]): the evaluation's JSON and tables show everything of this task."""
    return []


def predict(pred: ArrayLike, frame: Frame) -> dict:
    """(r,r,20) -> {'depth': (r,r) classes 0..19 in the crop's label frame, 'depth_image' (H,W)
    in the original image (None where the frame makes no image-sized maps), 'depth_rel_mm'
    (r,r) depth relative to the pelvis (nan on background)}."""
    classes = np.asarray(pred).argmax(-1).astype(np.uint8)
    rel = np.asarray(common.bin_centre(classes.astype(np.int32) - common.MAX_BIN - 1))
    return {"depth": classes, "depth_image": frame.to_image(classes),
            "depth_rel_mm": np.where(classes > 0, rel * 1000.0, np.nan)}


def locate(pred: ArrayLike) -> dict:
    """Where the (r,r,20) logits see the person: 'foreground' (r,r) bool, any bin but
    background."""
    return {"foreground": np.asarray(pred).argmax(-1) > 0}


def to_json(result: dict) -> dict:
    """`predict`'s result -> JSON: 'depth_classes' (r,r) the crop's classes 0..19 in label
    px (0 background, c > 0 bin c - 10); 'depth_bin_mm' a bin's depth, 45.0 mm."""
    return {"depth_classes": result["depth"].tolist(), "depth_bin_mm": common.BIN_MM}


def draw(pred: ArrayLike, rgb: np.ndarray, frame: Frame, *,
         result: dict | None = None) -> np.ndarray:
    """(R,R,3) uint8: the depth classes of (r,r,20) `pred` (`result`'s when given), near bright
    and far dark, at the size of the (R,R,3) crop `rgb`."""
    from hgmt.tasks import drawing

    classes = result["depth"] if result else np.asarray(pred).argmax(-1)
    return drawing.enlarge(drawing.colour_depth(classes), rgb.shape[0])


def plot(result: dict) -> Figure:
    """The panel's figure: each foreground pixel's bin, relative to the pelvis, over the crop,
    with a colour bar in mm at the bins' edges ((b-1)*45, b*45] for b in -9..9; the end bins
    also hold everything nearer or farther."""
    from hgmt.tasks import drawing

    edges = np.arange(-common.MAX_BIN - 1, common.MAX_BIN + 1) * common.BIN_MM
    return drawing.figure_depth(result["depth_rel_mm"], result["crop_image"], edges,
                                f"depth ({common.BIN_MM:.0f} mm bins)")
