"""Where the person is: the square crop window a prediction is made on, given by the user or
found from what the model's own predictions on a coarser crop say (each task's `locate`).

The window found is the one training crops are cut with (the run's config.window,
`cropping.window_box`: hgmt's joints' box with margins, squared, or the reference code's
box), so the model then sees the person at the scale it learnt: from the joints when enough of
them are seen on the person, else from the silhouette's box."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from hgmt.data import cropping

# Training window side / the longer side of the silhouette's box, per training window
# (config.window): its mean on the demo's training clips (docs/evaluation.md, "Metres a
# training window spans", measured by experiments/window_scale.py); a silhouette's window is
# centred on that box (docs/predict.md).
FOREGROUND_TO_SIDE = {"hgmt": 1.28, "reference_box": 1.07}
MIN_JOINT_SCORE = 0.2  # a joint counts when its peak is this high (a target's peak is 1)
MIN_JOINTS = 12  # of 16: fewer, and the joints' box would miss limbs; use the silhouette
NEAR_FOREGROUND = 2  # label px: a joint counts only this close to the silhouette, if any
CONVERGED = 0.05  # a window within this fraction of its side of the last one ends the search
NOT_FOUND = "whole image: no person found"  # found_by when the first pass sees nothing
# Appended to found_by when a later pass sees nothing on the window the last one found.
NOTHING_SEEN_LAST = "nothing seen in the final window"


@dataclasses.dataclass(frozen=True)
class Window:
    """A square crop window in image pixels (pixel centres at integers) and how it was had:
    "given", "whole image", NOT_FOUND, or what found it (`find_window`'s "joints (<task>)",
    "joints (<task>, <n> of 16)", "foreground (<tasks>)", "foreground (<tasks>), larger than
    joints (<task>, <n> of 16)", followed by "; " NOTHING_SEEN_LAST when the model saw nothing
    on it)."""

    centre: np.ndarray  # (2,) x, y
    side: float
    found_by: str

    @staticmethod
    def whole(image_shape: Sequence[int]) -> Window:
        """The whole image, centred (the longer side)."""
        h, w = image_shape[:2]
        return Window(np.array([(w - 1) / 2, (h - 1) / 2]), float(max(h, w)), "whole image")

    @staticmethod
    def given(bbox: Sequence[float]) -> Window:
        """The square window around bbox (x, y, w, h in pixels; side max(w, h))."""
        if np.ndim(bbox) != 1 or len(bbox) != 4:
            raise ValueError(f"bbox {bbox!r}: give 4 numbers, x, y, w, h in pixels")
        x, y, bw, bh = (float(v) for v in bbox)
        if not np.isfinite([x, y, bw, bh]).all():
            raise ValueError(f"bbox {tuple(bbox)}: x, y, w, h must be finite numbers of "
                             f"pixels")
        if bw <= 0 or bh <= 0:
            raise ValueError(f"bbox {tuple(bbox)}: width and height must be positive")
        return Window(np.array([x + bw / 2 - 0.5, y + bh / 2 - 0.5]), max(bw, bh), "given")

    @staticmethod
    def given_in(bbox: Sequence[float], shape: Sequence[int]) -> Window:
        """`given`, for an image of `shape` (H, W, ...) that the bbox must overlap: one wholly
        outside it (given for another resolution, or for the frame before its rotation)
        would be predicted on black."""
        window = Window.given(bbox)
        if not window.overlaps(shape):
            h, w = shape[:2]
            raise ValueError(f"bbox {tuple(bbox)} lies wholly outside the {w} x {h} image: "
                             f"give x, y, w, h in this image's pixels")
        return window

    def overlaps(self, shape: Sequence[int]) -> bool:
        """Whether the window shares pixels with an image of `shape` (H, W, ...)."""
        x, y, side, _ = self.bbox
        h, w = shape[:2]
        return x < w and y < h and x + side > 0 and y + side > 0

    @property
    def bbox(self) -> list[float]:
        """(x, y, w, h) of the window, as `given` takes it (w == h)."""
        x0, y0 = self.centre - self.side / 2 + 0.5
        return [float(x0), float(y0), self.side, self.side]

    @property
    def person_seen(self) -> bool:
        """Whether the window is given, or the model saw the person on it: False for the whole
        image where nothing was seen, and for a window found by one pass on which the next
        pass saw nothing."""
        return not (self.found_by.startswith("whole image")
                    or self.found_by.endswith(NOTHING_SEEN_LAST))

    def close_to(self, other: Window) -> bool:
        """Centres and sides within CONVERGED of this window's side."""
        return (float(np.abs(self.centre - other.centre).max()) <= CONVERGED * self.side
                and abs(self.side - other.side) <= CONVERGED * self.side)


def _largest_component(mask: np.ndarray) -> np.ndarray | None:
    """(r,r) bool -> its largest 8-connected component, None when empty."""
    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8),
                                                                connectivity=8)
    if count <= 1:
        return None
    return labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))


def silhouette_box(mask: np.ndarray) -> np.ndarray | None:
    """(H,W) bool -> (2,2) [[x0, y0], [x1, y1]]: the tight box of its pixels, in pixels
    (pixel centres at integers, so the box reaches half a pixel beyond the outer ones: its
    sides are the pixel counts spanned); None when no pixel is set."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None
    return np.array([[xs.min() - 0.5, ys.min() - 0.5], [xs.max() + 0.5, ys.max() + 0.5]])


def find_window(evidence: Mapping[str, dict], m_label: np.ndarray,
                image_shape: Sequence[int] | None = None,
                window: str = "hgmt") -> Window | None:
    """What the tasks' `locate` say on one crop ({task: dict}, in the tasks' order), the
    crop's (2,3) affine from image px to label px and the image's shape (H, W, ...) -> the
    training `window` (config.window, `cropping.TRAIN_WINDOWS`) around the person, in
    image px, or None when nothing is seen.

    The silhouette is the largest connected region of the union of the tasks' foregrounds within
    the image (a foreground seen on the crop's black margins is no person's); its window is its
    box's longer side times FOREGROUND_TO_SIDE's around its centre, at most the whole image's
    window's side (a silhouette filling the crop would otherwise grow the window by
    FOREGROUND_TO_SIDE on every pass) and at least training's least side,
    `cropping.MIN_WINDOW_SIDE_PX` (a speck of a tiny image's would otherwise give a window
    of a pixel or two, the crop enlarging it a hundredfold and 3D decoding putting the person
    tens of metres away). The joints are those of the first task giving joints, kept where their
    peak reaches MIN_JOINT_SCORE and (when there is a silhouette) lies within NEAR_FOREGROUND
    label px of it. With all 16 kept, the window is training's box of them
    (`cropping.window_box`), "joints (<task>)", whatever its size: a training crop of a
    person near the frame's edge holds black margins too, and the window's side is the scale 3D
    decoding reads (the pelvis depth is inversely proportional to it), so it is not cut to the
    image. With MIN_JOINTS to 15 kept, the box of those misses the others (a person cut off at
    the knees, whose training box spans the feet outside the frame): the window is that box,
    "joints (<task>, <n> of 16)", or the silhouette's when larger, "foreground (<tasks>), larger
    than joints (<task>, <n> of 16)". With fewer, the silhouette's. A window from the joints
    that lies wholly outside the image is no person's either: the silhouette's is taken, or
    none. Without `image_shape`, no bound is put on either."""
    back = cv2.invertAffineTransform(m_label)
    masks = [e["foreground"] for e in evidence.values() if "foreground" in e]
    seen = np.logical_or.reduce(masks) if masks else None
    if seen is not None and image_shape is not None:
        seen = seen & _within_image(seen.shape, back, image_shape)
    silhouette = _largest_component(seen) if seen is not None else None
    max_side = Window.whole(image_shape).side if image_shape is not None else np.inf
    outline = None
    if silhouette is not None:
        corners = silhouette_box(silhouette) @ back[:, :2].T + back[:, 2]
        side = FOREGROUND_TO_SIDE[window] * float(np.abs(corners[1] - corners[0]).max())
        tasks = "+".join(t for t, e in evidence.items() if "foreground" in e)
        side = max(min(side, max_side), cropping.MIN_WINDOW_SIDE_PX)
        outline = Window(corners.mean(0), side, f"foreground ({tasks})")
    givers = [t for t, e in evidence.items() if "joints" in e]
    if givers:
        joints = np.asarray(evidence[givers[0]]["joints"], np.float64)
        keep = np.asarray(evidence[givers[0]]["joint_scores"]) >= MIN_JOINT_SCORE
        if silhouette is not None:
            size = 2 * NEAR_FOREGROUND + 1
            near = cv2.dilate(silhouette.astype(np.uint8), np.ones((size, size), np.uint8))
            r = silhouette.shape[0]
            xi, yi = (np.clip(np.round(joints[:, k]).astype(int), 0, r - 1) for k in (0, 1))
            keep &= near[yi, xi] > 0
        kept = int(keep.sum())
        if kept >= MIN_JOINTS:
            centre, side = cropping.window_box(joints[keep] @ back[:, :2].T + back[:, 2],
                                               window)
            side = max(side, cropping.MIN_WINDOW_SIDE_PX)  # the references' has no floor
            if kept == len(joints):
                found = Window(centre, side, f"joints ({givers[0]})")
            else:
                found_by = f"joints ({givers[0]}, {kept} of {len(joints)})"
                found = Window(centre, side, found_by)
                if outline is not None and outline.side > side:
                    found = dataclasses.replace(
                        outline, found_by=f"{outline.found_by}, larger than {found_by}")
            if image_shape is None or found.overlaps(image_shape):
                return found
    return outline


def _within_image(label_shape: Sequence[int], back: np.ndarray,
                  image_shape: Sequence[int]) -> np.ndarray:
    """(r,r) bool: the label pixels whose centres `back` ((2,3) label px -> image px) puts
    on the image's pixels."""
    ys, xs = np.mgrid[:label_shape[0], :label_shape[1]].astype(np.float64)
    x = back[0, 0] * xs + back[0, 1] * ys + back[0, 2]
    y = back[1, 0] * xs + back[1, 1] * ys + back[1, 2]
    h, w = image_shape[:2]
    return (x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)


def after_pass(window: Window, seen: Window | None, first_pass: bool) -> tuple[Window, bool]:
    """One search pass's outcome: the window it ran on and what it saw there (`find_window`)
    -> (the window to keep or run on next, whether the search is done). Nothing seen ends the
    search on the window run on, marked NOT_FOUND on the first pass and "; "
    NOTHING_SEEN_LAST after; a window seen close to it (`close_to`) ends it with what saw the
    person; any other goes on to the window seen."""
    if seen is None:
        found_by = NOT_FOUND if first_pass else f"{window.found_by}; {NOTHING_SEEN_LAST}"
        return dataclasses.replace(window, found_by=found_by), True
    if seen.close_to(window):
        return dataclasses.replace(window, found_by=seen.found_by), True
    return seen, False
