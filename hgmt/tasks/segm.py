"""Body-part segmentation: 15 classes (background + 14 parts) at the label resolution, spatial
cross-entropy. Metrics (protocol hgmt): IoU per part with intersections and unions summed over
the whole split, mean over the foreground parts that occur, and pixel accuracy over all pixels
(background included). Protocols surreal/bodynet: `surreal_summarize` (docs/metrics.md)."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from hgmt.sources import body
from hgmt.tasks import common, spec
from hgmt.tasks.spec import Frame, Headline

if TYPE_CHECKING:  # matplotlib is imported when a figure is first drawn
    from matplotlib.figure import Figure

NAME = "segm"
NUM_CHANNELS = body.NUM_PARTS
DEFAULT_LOSS_WEIGHT = 1.0
# foreground_weight: how much more a body-part pixel counts in the loss than a background one
# (1.0: SURREAL's plain cross-entropy; see `loss`).
LOSS_OPTIONS = {"foreground_weight": 1.0}
READS_DISTANCE = False
CHANNEL_FLIP = body.PART_FLIP  # channel permutation under a horizontal flip
# What a (B,r,r,NUM_CHANNELS) output holds, for a consumer of an export (its hgmt.json).
OUTPUT_LAYOUT = {
    "channels": NUM_CHANNELS,
    "channel": "class c is part_names[c] (0 background)",
    "part_names": list(body.PART_CLASS_NAMES),
    "sides": body.SIDES,
    "values": "logits: a pixel's class is the argmax over the channels (the first on ties)",
}
# BodyNet's segmentation metric is SURREAL's function (the same code in both repositories).
_REFERENCE_CAVEATS = {
    "examples_not_evaluated": common.NOT_EVALUATED,
    "iou_undefined": "parts absent from both the labels and the predictions of the evaluated "
                     "examples: IoU 0/0, NaN to the reference, so mean_iou is null",
    "pixel_accuracy_undefined": "parts absent from the labels of the evaluated examples: "
                                "accuracy 0/0, NaN to the reference, so pixel_accuracy is "
                                "null",
}
HEADLINES = {
    "hgmt": Headline(("mean_iou", "pixel_accuracy"), "mean_iou", (), "mean IoU",
                     "iou_per_part", "part", item_label="IoU", item_names=body.PART_NAMES),
    "bodynet": Headline(("mean_iou", "pixel_accuracy"), "mean_iou", (),
                        "mean IoU (14 parts)", "iou_per_part", "part", item_label="IoU",
                        item_names=body.PART_NAMES,
                        caveats=_REFERENCE_CAVEATS),
    "surreal": Headline(("mean_iou", "pixel_accuracy"), "mean_iou", (),
                        "mean IoU (14 parts)", "iou_per_part", "part", item_label="IoU",
                        item_names=body.PART_NAMES,
                        caveats=_REFERENCE_CAVEATS),
}


def raw_to_part(raw: ArrayLike) -> ArrayLike:
    """Raw SURREAL segment values 0..24 (any shape) -> part classes 0..14 of the same shape
    (works on numpy or jax)."""
    return body.SEGM_TO_PART[raw] if isinstance(raw, np.ndarray) else jnp.asarray(
        body.SEGM_TO_PART)[raw]


def labels(crop: spec.Crop) -> dict:
    """The cropped example's entries this task reads: 'segm' (r,r) uint8 part classes 0..14,
    named by the person's side (a mirror swaps left and right)."""
    parts = crop.swap_sides(body.PART_FLIP, raw_to_part(crop.warp("segm")))
    return {"segm": parts.astype(np.uint8)}


def targets(batch: dict) -> jnp.ndarray:
    """batch['segm'] (B,r,r) part classes -> (B,r,r) int32."""
    return batch["segm"].astype(jnp.int32)


def loss(pred: jnp.ndarray, target: jnp.ndarray, *, axis_name: str | None = None,
         foreground_weight: float = 1.0) -> jnp.ndarray:
    """(B,r,r,15) logits, (B,r,r) classes -> spatial cross-entropy, SURREAL's at
    foreground_weight 1; above 1 each body-part pixel weighs that much more than a background
    one, normalised over the global batch (`common.foreground_weighted_cross_entropy`)."""
    return common.foreground_weighted_cross_entropy(pred, target, foreground_weight, axis_name)


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    """(B,r,r,15) logits -> {'segm_classes': (B,r,r) int32 part classes 0..14, the argmax
    (the first on ties)}; `batch` is not read."""
    return {"segm_classes": common.argmax_classes(pred)}


def metric_stats(decoded: dict, batch: dict) -> dict:
    """{'confusion': (15,15) float32 pixel counts [label class, predicted class]} of
    decoded['segm_classes'] (B,r,r) against batch['segm'] (B,r,r), each example's pixels
    weighted by `common.example_weights`: additive over a split."""
    labels = targets(batch)
    weights = common.example_weights(batch, labels.shape[0])[:, None, None]
    weights = jnp.broadcast_to(weights, labels.shape)
    return {"confusion": common.confusion_counts(decoded["segm_classes"], labels,
                                                 NUM_CHANNELS, weights)}


def summarize(stats: dict) -> dict:
    """IoU per part from the split's summed confusion; the mean is over the foreground parts
    that occur (union > 0) in labels or predictions, so a small split without hands is not
    scored 0 for them. Parts that never occur are None; with no part at all the mean is None
    too, and so is the pixel accuracy of a split without pixels, each with its reason."""
    conf = np.asarray(stats["confusion"], np.float64)  # [label, pred]
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = union[1:] > 0
    iou = inter[1:] / np.maximum(union[1:], 1)
    total = conf.sum()
    return common.with_null_reasons({
        "mean_iou": float(iou[present].mean()) if present.any() else None,
        "iou_per_part": {name: float(v) if p else None
                         for name, v, p in zip(body.PART_NAMES, iou, present, strict=True)},
        "pixel_accuracy": float(inter.sum() / total) if total > 0 else None,
    }, {"mean_iou": "no body part in the labels or the predictions of the split",
        "pixel_accuracy": "no pixel evaluated"})


# --- Protocols "surreal" and "bodynet": gulvarol/surreal training/eval.lua `segmPerformance`
# (BodyNet's training/util/eval.lua has the same function) accumulated by training/test.lua:
# intersection, union and ground-truth pixels per class summed over the full test batches,
# then IoU = intersection / union and pixel accuracy = intersection / ground-truth pixels per
# class, each averaged over the 14 foreground classes.
def surreal_stats(pred: jnp.ndarray, batch: dict, *, num_examples: int,
                  batch_size: int) -> dict:
    """(B,r,r,15) logits -> the split-additive confusion counts of `metric_stats`, over the
    examples of the floor(N / batch_size) full test batches only (the reference's loop,
    surreal test.lua:35, bodynet test.lua:62, never reaches the last partial batch), flagged
    unusable frames included (surreal dataset.lua:333-336, bodynet dataset.lua:771-795: zero
    input, all-background labels)."""
    weights = common.full_batch_weights(batch, pred.shape[0], num_examples, batch_size)
    labels = targets(batch)  # a flagged unusable frame's: all background
    weights = jnp.broadcast_to(weights[:, None, None], labels.shape)
    return {"confusion": common.confusion_counts(common.argmax_classes(pred), labels,
                                                 NUM_CHANNELS, weights)}


def surreal_summarize(stats: dict, *, num_examples: int, batch_size: int,
                      num_damaged: int = 0) -> dict:
    """Split totals -> mean IoU and mean per-class pixel accuracy over the 14 parts.

    Where the reference divides 0 by 0 (a part absent from both labels and predictions for
    IoU, from the labels for accuracy) its mean is NaN; here that part is None and so is the
    mean, with the parts listed in `iou_undefined` (IoU) and `pixel_accuracy_undefined`
    (accuracy: a part predicted but absent from the labels has IoU 0, defined, and is listed
    here only) and the reason in "null_reasons". Without a full test batch both means are
    null for that reason (`common.reference_null`). The means are ratios of totals over the
    evaluated examples, so a damaged record left out (`num_damaged`) leaves them over the
    records that read."""
    conf = np.asarray(stats["confusion"], np.float64)  # [label, pred]
    inter = np.diag(conf)[1:]
    gt, predicted = conf.sum(1)[1:], conf.sum(0)[1:]
    union = gt + predicted - inter

    def per_part(num: np.ndarray, den: np.ndarray) -> dict:
        return {n: float(a / b) if b > 0 else None
                for n, a, b in zip(body.PART_NAMES, num, den, strict=True)}

    def mean(d: dict) -> float | None:
        return None if None in d.values() else float(np.mean(list(d.values())))

    iou, acc = per_part(inter, union), per_part(inter, gt)
    undefined = {key: [n for n in body.PART_NAMES if values[n] is None]
                 for key, values in (("mean_iou", iou), ("pixel_accuracy", acc))}
    no_batch = common.reference_null(num_examples, batch_size)
    return common.with_null_reasons({
        "mean_iou": mean(iou), "iou_per_part": iou,
        "pixel_accuracy": mean(acc), "pixel_accuracy_per_part": acc,
        "iou_undefined": undefined["mean_iou"],
        "pixel_accuracy_undefined": undefined["pixel_accuracy"],
        "examples_not_evaluated": num_examples - (num_examples // batch_size) * batch_size,
    }, {key: no_batch or f"the reference's mean is NaN: 0/0 for {', '.join(parts)}"
        for key, parts in undefined.items()})


def protocol_metric(protocol: str, num_examples: int) -> tuple:
    """(stats, summarize) of a protocol of HEADLINES other than hgmt: SURREAL's function, which
    BodyNet's code also uses, over that reference's full test batches; summarize(sums,
    num_damaged=0)."""
    kw = {"num_examples": num_examples, "batch_size": common.REFERENCE_TEST_BATCH[protocol]}
    return (functools.partial(surreal_stats, **kw), functools.partial(surreal_summarize, **kw))


# --- One image's prediction: result, JSON, picture -------------------------------------------
def summary_pictures(summary: dict, stem: str) -> list[str]:
    """No pictures ([]): the evaluation's JSON and tables show everything of this task."""
    return []


def predict(pred: ArrayLike, frame: Frame) -> dict:
    """(r,r,15) -> {'segm': (r,r) part classes 0..14 in the crop's label frame, 'segm_image':
    (H,W) in the original image (None where the frame makes no image-sized maps)}."""
    classes = np.asarray(pred).argmax(-1).astype(np.uint8)
    return {"segm": classes, "segm_image": frame.to_image(classes)}


def locate(pred: ArrayLike) -> dict:
    """Where the (r,r,15) logits see the person: 'foreground' (r,r) bool, any part."""
    return {"foreground": np.asarray(pred).argmax(-1) > 0}


def to_json(result: dict) -> dict:
    """`predict`'s result -> JSON: 'part_names' (15,) the class names, 0 background;
    'segm_classes' (r,r) the crop's part classes 0..14 in label px."""
    return {"part_names": list(body.PART_CLASS_NAMES),
            "segm_classes": result["segm"].tolist()}


def draw(pred: ArrayLike, rgb: np.ndarray, frame: Frame, *,
         result: dict | None = None) -> np.ndarray:
    """(R,R,3) uint8: the part map of (r,r,15) `pred` (`result`'s when given) in the parts'
    colours, at the size of the (R,R,3) crop `rgb`."""
    from hgmt.tasks import drawing

    classes = result["segm"] if result else np.asarray(pred).argmax(-1)
    return drawing.enlarge(drawing.colour_parts(classes), rgb.shape[0])


def plot(result: dict) -> Figure:
    """The panel's figure: the part map over the crop, with a legend of the 14 parts."""
    from hgmt.tasks import drawing

    return drawing.figure_parts(result["segm"], result["crop_image"], body.PART_NAMES)
