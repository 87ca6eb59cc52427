"""A fifth task, registered by tests/test_task_interface.py only: the person's silhouette
(foreground vs background), cut from SURREAL's segmentation. It is the whole of what a task
module declares (hgmt/tasks/__init__.py); nothing else in hgmt names it."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from hgmt.tasks import common, spec
from hgmt.tasks.spec import Frame, Headline

NAME = "silhouette"
NUM_CHANNELS = 2  # background, person
DEFAULT_LOSS_WEIGHT = 1.0
LOSS_OPTIONS: dict = {}  # none: `loss` takes no options
READS_DISTANCE = False
CHANNEL_FLIP = np.arange(NUM_CHANNELS)  # a mirror changes no class
OUTPUT_LAYOUT = {"channels": NUM_CHANNELS, "channel": "class: 0 background, 1 person",
                 "values": "logits: a pixel's class is the argmax over the channels"}
HEADLINES = {"hgmt": Headline(("iou",), "iou", (), "silhouette IoU")}


def labels(crop: spec.Crop) -> dict:
    return {"silhouette": (crop.warp("segm") > 0).astype(np.int32)}


def targets(batch: dict) -> jnp.ndarray:
    return batch["silhouette"]


def loss(pred: jnp.ndarray, target: jnp.ndarray, *,
         axis_name: str | None = None) -> jnp.ndarray:
    return common.spatial_cross_entropy(pred, target)


def decode(pred: jnp.ndarray, batch: dict) -> dict:
    return {"silhouette": common.argmax_classes(pred)}


def metric_stats(decoded: dict, batch: dict) -> dict:
    pred, gt = decoded["silhouette"] > 0, batch["silhouette"] > 0
    weights = common.example_weights(batch, gt.shape[0])[:, None, None]
    return {"intersection": jnp.sum((pred & gt) * weights),
            "union": jnp.sum((pred | gt) * weights)}


def summarize(stats: dict) -> dict:
    return {"iou": float(stats["intersection"]) / max(float(stats["union"]), 1.0)}


def protocol_metric(protocol: str, num_examples: int) -> tuple:
    raise AssertionError("the silhouette has hgmt's definition only")


def summary_pictures(summary: dict, stem: str) -> list[str]:
    """None: the evaluation's JSON and tables show everything of this task."""
    return []


def predict(pred: np.ndarray, frame: Frame) -> dict:
    mask = np.asarray(pred).argmax(-1).astype(np.uint8)
    return {"silhouette": mask, "silhouette_image": frame.to_image(mask)}


def locate(pred: np.ndarray) -> dict:
    return {"foreground": np.asarray(pred).argmax(-1) > 0}


def to_json(result: dict) -> dict:
    return {"silhouette": result["silhouette"].tolist()}


def draw(pred: np.ndarray, rgb: np.ndarray, frame: Frame, *,
         result: dict | None = None) -> np.ndarray:
    from hgmt.tasks import drawing

    mask = np.asarray(pred).argmax(-1).astype(np.uint8) * 255
    return np.repeat(drawing.enlarge(mask, rgb.shape[0])[..., None], 3, axis=-1)


def plot(result: dict):
    from hgmt.tasks import drawing

    return drawing.figure_parts(result["silhouette"], result["crop_image"], ("person",),
                                "silhouette")
