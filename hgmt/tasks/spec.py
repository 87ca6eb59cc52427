"""The types of the task interface (hgmt/tasks/__init__.py lists it): how each metric
protocol's numbers of a task are shown (`Headline`), and where one image's predictions are
decoded (`Frame`)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Headline:
    """How a task's numbers under one metric protocol are shown and compared."""

    metrics: tuple[str, ...]  # one-number metrics: logs, TensorBoard, tables, best checkpoint
    compare: str  # the one the task-combination study compares (hgmt.report)
    higher_is_better: bool
    label: str  # its name in the study's tables and charts
    per_item: str | None = None  # key of the per-item breakdown ({item name: value})
    item: str | None = None  # what an item is ("joint", "part"): one table per kind
    item_format: str = ".3f"  # format of a per-item value in the evaluation tables


@dataclasses.dataclass(frozen=True)
class Frame:
    """Where one image's predictions are decoded (hgmt.predict, the evaluation's TensorBoard
    pictures): `batch` is the decoding context of a batch of one ('crop' (1,2,3) image px ->
    label px, 'pelvis_depth' (1,) metres, as in a cropped example); `back` (2,3) maps label
    px to the original image's px, of shape `image_shape` (H, W); `shift` (2,) is what
    `batch`'s image frame adds to the original image's px (SURREAL's principal point)."""

    batch: dict
    back: np.ndarray | None = None
    image_shape: tuple[int, int] | None = None
    shift: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(2))

    def to_image(self, label_map: np.ndarray) -> np.ndarray:
        """(r,r) uint8 classes -> (H,W) in the original image (nearest)."""
        import cv2

        return cv2.warpAffine(label_map, self.back, self.image_shape[::-1],
                              flags=cv2.INTER_NEAREST)
