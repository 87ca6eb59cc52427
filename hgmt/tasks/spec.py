"""The task interface: what a task module provides (`TaskModule`, checked by `check_task`), how
each metric protocol's numbers of a task are shown (`Headline`), the crop its labels are cut
from (`Crop`, with the labels that several tasks share), and where one image's predictions are
decoded (`Frame`)."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    from jax.typing import ArrayLike


@dataclasses.dataclass(frozen=True)
class Headline:
    """How a task's numbers under one metric protocol are shown and compared."""

    metrics: tuple[str, ...]  # one-number metrics: logs, TensorBoard, tables, best checkpoint
    compare: str  # the one the task-combination study compares (hgmt.report)
    lower_is_better: tuple[str, ...]  # those of `metrics` that are better lower (errors)
    label: str  # its name in the study's tables and charts
    per_item: str | None = None  # key of the per-item breakdown ({item name: value})
    item: str | None = None  # what an item is ("joint", "part"): one table per kind
    item_format: str = ".3f"  # format of a per-item value in the evaluation tables
    # What one item's value is ("IoU", "error (mm)"), as the study's per-item chart names it:
    # `label` names the headline metric, which may be a mean over the items.
    item_label: str | None = None
    # The items in the dataset's order: the rows of the per-item tables (a breakdown of a
    # subset of them, BodyNet's 10 joints, keeps this order beside one of all 16).
    item_names: tuple[str, ...] = ()
    # {summary key: what it counts}: the counters beside the numbers that qualify them (a
    # reference protocol's examples it never evaluates, images it cannot score), each shown
    # with its meaning in the evaluation's Markdown where it is not 0.
    caveats: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        unknown = (set(self.lower_is_better) | {self.compare}) - set(self.metrics)
        if unknown:
            raise ValueError(f"Headline {self.label!r}: {', '.join(sorted(unknown))} not in "
                             f"its metrics {', '.join(self.metrics)}")
        if self.per_item and not (self.item and self.item_label and self.item_names):
            raise ValueError(f"Headline {self.label!r}: a per-item breakdown "
                             f"({self.per_item!r}) needs `item` (what an item is, e.g. "
                             f"'joint'), `item_label` (what its value is, e.g. 'IoU') and "
                             f"`item_names` (the items in the dataset's order)")

    @property
    def higher_is_better(self) -> bool:
        """The direction of `compare`."""
        return self.compare not in self.lower_is_better


@dataclasses.dataclass(frozen=True)
class Frame:
    """Where one image's predictions are decoded (hgmt.predict, the evaluation's TensorBoard
    pictures): `batch` is the decoding context of a batch of one ('crop' (1,2,3) decoding
    frame px -> label px, 'pelvis_depth' (1,) metres, as in a cropped example); `back` (2,3)
    maps label px to the original image's px, of shape `image_shape` (H, W), None where no
    image-sized maps are made (`to_image`: a video's frames, TensorBoard); `virtual` (2,3)
    maps the original image's px to the decoding frame's, a SURREAL camera's, pixel centres at
    integers in both (`hgmt.inference.predictor.decoding_frame`: exactly the identity for a
    SURREAL frame, whose pixels training decodes as they are)."""

    batch: dict
    back: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None
    virtual: np.ndarray = dataclasses.field(default_factory=lambda: np.eye(2, 3))

    def to_original(self, points: np.ndarray) -> np.ndarray:
        """(...,2) decoding frame px -> the original image's px."""
        scale, offset = self.virtual[:, :2], self.virtual[:, 2]
        return (np.asarray(points) - offset) @ np.linalg.inv(scale).T

    def to_image(self, label_map: np.ndarray) -> np.ndarray | None:
        """(r,r) uint8 classes -> (H,W) in the original image (nearest); None when `back` is
        None."""
        import cv2

        if self.back is None:
            return None
        return cv2.warpAffine(label_map, self.back, self.image_shape[::-1],
                              flags=cv2.INTER_NEAREST)


@dataclasses.dataclass(frozen=True)
class Crop:
    """One record cut to a training or evaluation crop (hgmt.data.cropping.crop_example):
    what a task module's `labels` reads. `m_label` (2,3) maps the original image's px to the
    r x r label map's, the mirror included when `flip`; `read_map(record, key)` decodes one of
    the record's image features. The maps in `unread` (training's: those no target is made
    from, e.g. the depth in metres that only pictures show) are not decoded: `warp` gives
    zeros for them.

    The device path (hgmt.data.device_augment.DeviceCrop) gives `labels` a batch of crops
    with the same methods, returning jax arrays with a leading batch axis: so a task's
    `labels` uses array methods and `swap_sides`, not numpy functions or `if crop.flip`. Its
    `record` holds the fields training's crops carry (`device_augment.decode_record`: the
    image, the label maps, joints2d, joints3d, cam_loc), which is all a task's `labels` may
    read."""

    record: dict
    m_label: np.ndarray
    size: int
    flip: bool
    read_map: Callable[[dict, str], np.ndarray]
    unread: frozenset[str] = frozenset()

    def warp(self, key: str) -> np.ndarray:
        """The record's map `key` in the r x r label frame (nearest: labels are not blended);
        zeros (uint8) for a map in `unread`."""
        import cv2

        if key in self.unread:
            return np.zeros((self.size, self.size), np.uint8)
        return cv2.warpAffine(self.read_map(self.record, key), self.m_label,
                              (self.size, self.size), flags=cv2.INTER_NEAREST)

    def joints2d(self) -> np.ndarray:
        """(16,2) label px, in the person's joint order (left/right swapped when mirrored)."""
        from hgmt.sources import body

        joints = self.record["joints2d"][body.SMPL_TO_JOINT].astype(np.float64)
        joints = joints @ self.m_label[:, :2].T + self.m_label[:, 2]
        return joints[body.JOINT_FLIP] if self.flip else joints

    def joints3d(self) -> np.ndarray:
        """(16,3) camera-frame metres, mirrored (x negated, sides swapped) with the crop."""
        from hgmt.sources import body, camera

        joints = camera.world_to_camera(self.record["joints3d"][body.SMPL_TO_JOINT],
                                         np.asarray(self.record["cam_loc"], np.float64))
        return joints[body.JOINT_FLIP] * [-1.0, 1.0, 1.0] if self.flip else joints

    def swap_sides(self, table: np.ndarray, classes: np.ndarray) -> np.ndarray:
        """Class ids `classes` (any shape) through `table` ((K,): each class's mirror image)
        where the crop is mirrored; the same shape."""
        return np.asarray(table)[classes] if self.flip else classes


def joint_labels(crop: Crop) -> dict[str, ArrayLike]:
    """The 2D joint labels of pose2d and pose3d: 'joints2d' (16,2) label px and 'visible'
    (16,) 1 where the joint lies inside the label map: in one of its pixels, pixel k centred
    at k and spanning [k - 0.5, k + 0.5)."""
    joints = crop.joints2d()
    visible = ((joints >= -0.5) & (joints < crop.size - 0.5)).all(axis=-1)
    return {"joints2d": joints.astype(np.float32), "visible": visible.astype(np.float32)}


def pelvis_depth(crop: Crop) -> dict[str, ArrayLike]:
    """'pelvis_depth' (): the camera depth of the pelvis in metres, the reference of pose3d's
    and depth's bins."""
    from hgmt.sources import body

    return {"pelvis_depth": crop.joints3d()[..., body.PELVIS, 2].astype(np.float32)}


@runtime_checkable
class TaskModule(Protocol):
    """What a task module provides: hgmt loops over `hgmt.tasks.TASKS` and calls only these.
    Arrays: `pred` is one stage's (B,r,r,NUM_CHANNELS) output, `batch` a cropped batch (the
    labels of every selected task), r the label size (image size / 4)."""

    # The model's head and the loss's defaults.
    NAME: str
    NUM_CHANNELS: int
    CHANNEL_FLIP: Sequence[int]  # the channels' permutation under a horizontal flip
    DEFAULT_LOSS_WEIGHT: float
    LOSS_OPTIONS: Mapping[str, float]  # keyword options of `loss`, defaults = the reference's
    # Whether `predict` reads the frame's 'pelvis_depth', the person's camera distance in
    # metres, which prediction infers from the window's side and the metres a training window
    # spans (hgmt.inference.crop_scale): only such a task's results rest on that figure.
    READS_DISTANCE: bool
    HEADLINES: Mapping[str, Headline]  # {metric protocol: how its numbers are shown}
    # What an output channel means, JSON-able ("channels" = NUM_CHANNELS, "channel", "values",
    # names, bins, and "decoding" where hgmt's results are more than an argmax): how a consumer
    # of an export decodes it (hgmt.inference.export).
    OUTPUT_LAYOUT: Mapping[str, Any]

    def labels(self, crop: Crop) -> dict:
        """Numpy labels cut from the record by the crop (flips included)."""

    def targets(self, batch: dict) -> Any:
        """Training targets, made on the device inside the jitted step."""

    def loss(self, pred: Any, target: Any, *, axis_name: str | None = None,
             **options: float) -> Any:
        """Scalar loss of a batch (jit-able). With the global batch split over the devices
        of the axis `axis_name`, this device's share: the devices' mean of it is the global batch's
        loss on any number of devices (a mean over the examples is; a ratio of sums divides
        by the devices' mean denominator, `common.batch_mean`). None: the batch is all."""

    def decode(self, pred: Any, batch: dict) -> dict:
        """Predictions decoded for the metrics (jit-able)."""

    def metric_stats(self, decoded: dict, batch: dict) -> dict:
        """Per-example metric sums, additive over a split (hgmt's protocol)."""

    def summarize(self, stats: dict) -> dict:
        """A split's sums -> {metric: value} (hgmt's protocol); None with a reason where a
        metric is undefined."""

    def protocol_metric(self, protocol: str, num_examples: int) -> tuple:
        """(stats, summarize) of a reference protocol of HEADLINES other than hgmt, for a split
        of `num_examples`: summarize(sums, num_damaged=0) gives None, with a reason, for a
        number the damaged records left out would make other than the reference's."""

    def summary_pictures(self, summary: dict, stem: str) -> list[str]:
        """Writes the pictures of a split's summary beside its JSON (`stem` + suffix, e.g.
        the PCKh curve); returns their paths ([] for none)."""

    def locate(self, pred: ArrayLike) -> dict:
        """Where one crop's (r,r,C) prediction (a numpy array, or the Predictor's JAX array on
        its device: np.asarray brings it to the host) sees the person, in label px: 'joints' (J,2)
        with 'joint_scores' (J,) (peak heights, 1 at a target's peak), and/or 'foreground'
        (r,r) bool (finding the person, hgmt.inference.person)."""

    def predict(self, pred: ArrayLike, frame: Frame) -> dict:
        """One image's result in the original image from its crop's (r,r,C) prediction (an
        array as `locate`'s), its image-sized maps by `frame.to_image` (None where the frame
        makes none)."""

    def to_json(self, result: dict) -> dict:
        """The JSON-able part of `predict`'s result."""

    def plot(self, result: dict) -> Any:
        """A readable matplotlib Figure of one image's prediction (the prediction panel),
        `drawing.PLOT_HEIGHT` pixels tall: units, colour bars, legends."""

    def draw(self, pred: ArrayLike, rgb: np.ndarray, frame: Frame, *,
             result: dict | None = None) -> np.ndarray:
        """(R,R,3) uint8 quick picture of one crop's prediction (TensorBoard, video frames).
        `result`: the crop's `predict` entries when they are at hand (a video's frames), for
        a picture of what they decoded without decoding it again; None: decode `pred`."""


def check_task(module: Any) -> None:
    """Raises TypeError naming what `module` lacks of `TaskModule`: a constant missing or of
    the wrong type, a function missing or with other parameter names."""
    hints = {"NAME": str, "NUM_CHANNELS": int, "DEFAULT_LOSS_WEIGHT": (int, float),
             "LOSS_OPTIONS": Mapping, "READS_DISTANCE": bool, "HEADLINES": Mapping,
             "OUTPUT_LAYOUT": Mapping}
    name = getattr(module, "__name__", repr(module))
    for attr, kind in hints.items():
        if not isinstance(getattr(module, attr, None), kind):
            raise TypeError(f"task module {name}: {attr} missing or not {kind}")
    if len(module.CHANNEL_FLIP) != module.NUM_CHANNELS or sorted(
            int(c) for c in module.CHANNEL_FLIP) != list(range(module.NUM_CHANNELS)):
        raise TypeError(f"task module {name}: CHANNEL_FLIP is not a permutation of its "
                        f"{module.NUM_CHANNELS} channels")
    layout = module.OUTPUT_LAYOUT
    if layout.get("channels") != module.NUM_CHANNELS or not {"channel", "values"} <= set(layout):
        raise TypeError(f"task module {name}: OUTPUT_LAYOUT needs 'channels' (= NUM_CHANNELS "
                        f"{module.NUM_CHANNELS}), 'channel' and 'values'")
    if "hgmt" not in module.HEADLINES or not all(
            isinstance(h, Headline) for h in module.HEADLINES.values()):
        raise TypeError(f"task module {name}: HEADLINES needs an 'hgmt' entry, all Headline")
    for attr, proto in vars(TaskModule).items():
        if attr.startswith("_") or not inspect.isfunction(proto):
            continue
        fn = getattr(module, attr, None)
        if not callable(fn):
            raise TypeError(f"task module {name}: function {attr} missing")
        want = inspect.signature(proto).parameters.values()
        positional = [p.name for p in want
                      if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
        keywords = [p.name for p in want if p.kind is p.KEYWORD_ONLY]
        have = list(inspect.signature(fn).parameters)
        if have[:len(positional)] != positional:
            raise TypeError(f"task module {name}: {attr}{inspect.signature(fn)} should take "
                            f"({', '.join(positional)}, ...)")
        extra = [p for p in have[len(positional):] if p not in keywords and not (
            attr == "loss" and p in module.LOSS_OPTIONS)]
        if extra:
            raise TypeError(f"task module {name}: {attr} has parameters {extra} that hgmt "
                            f"never passes" + (" (loss options must be in LOSS_OPTIONS)"
                                               if attr == "loss" else ""))
        missing = [k for k in keywords if k not in have]
        if missing:
            raise TypeError(f"task module {name}: {attr}{inspect.signature(fn)} lacks the "
                            f"keyword parameter(s) {missing} that hgmt passes; add them "
                            f"(see spec.TaskModule.{attr})")
