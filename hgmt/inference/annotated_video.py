"""The annotated video of a clip's predictions: each frame with the person's window drawn on
it (green when given or found, red when nothing was seen; what found it written above), then
each task's quick picture of the crop (its `draw`) at the frame's height (`annotate`), encoded
as H.264 in an mp4 (`Writer`), each frame at its time in the clip."""

from __future__ import annotations

import fractions
import functools

import cv2
import numpy as np

from hgmt.tasks import TASKS

# The annotated video's sides are at most this many pixels: libx264 refuses a side over
# 16384, and the frame with k task pictures beside it is W + k*H wide (17520 px for a
# portrait 4K clip with four tasks); larger annotated frames are scaled down, aspect kept.
MAX_ANNOTATED_SIDE = 8192


def annotated_scale(height: int, width: int, pictures: int,
                    max_side: int = MAX_ANNOTATED_SIDE) -> float:
    """The factor (<= 1) an (height, width) frame and its `pictures` square task pictures
    beside it, (height, width + pictures * height) px in all, are drawn at so that neither
    side exceeds max_side px, the pixel sizes rounded down (`annotated_sizes`)."""
    return min(1.0, max_side / (width + pictures * height), max_side / height)


def annotated_sizes(height: int, width: int, pictures: int,
                    max_side: int = MAX_ANNOTATED_SIDE) -> tuple[int, int]:
    """-> (h, w) px: the annotated frame's height (each task picture is h x h) and the width
    of the frame in it, both `annotated_scale` times the frame's, rounded down (>= 1)."""
    scale = annotated_scale(height, width, pictures, max_side)
    return max(1, int(height * scale)), max(1, int(width * scale))


def fit(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h,w,3) -> (H,W,3) = `size`: the picture resized, aspect kept, to the largest size
    within (H, W) (kept as it is when it fits and reaches a side to within a pixel), centred on
    black."""
    h, w = rgb.shape[:2]
    height, width = size
    if not (h <= height and w <= width and min(height - h, width - w) <= 1):
        scale = min(height / h, width / w)
        new_w = min(width, max(1, round(w * scale)))
        new_h = min(height, max(1, round(h * scale)))
        rgb = cv2.resize(rgb, (new_w, new_h),
                         interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
        h, w = new_h, new_w
    if (h, w) == (height, width):
        return rgb
    out = np.zeros((height, width, 3), np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    out[top:top + h, left:left + w] = rgb
    return out


# The window's label (`annotate`): OpenCV's plain font, about 7 px a character, 9 px tall.
LABEL_FONT, LABEL_SCALE, LABEL_THICKNESS = cv2.FONT_HERSHEY_SIMPLEX, 0.4, 1
LABEL_MARGIN_PX = 2  # the label's least distance from the frame's left and right edges


def label_width(text: str) -> int:
    """The width in px of `text` drawn as the window's label (OpenCV's measure of it)."""
    return cv2.getTextSize(text, LABEL_FONT, LABEL_SCALE, LABEL_THICKNESS)[0][0]


@functools.lru_cache(maxsize=256)
def fitted_label(text: str, width: int) -> str:
    """`text` where it is at most `width` px wide as a label, else as much of it as fits with
    "..." after it ("" where not even that fits). Cached: a clip's labels are few, each
    measured once."""
    if label_width(text) <= width:
        return text
    for end in range(len(text) - 1, -1, -1):
        cut = text[:end].rstrip() + "..."
        if label_width(cut) <= width:
            return cut
    return ""


def annotate(image: np.ndarray, result: dict) -> np.ndarray:
    """(H,W,3) frame and its result -> (h, w + k*h, 3) uint8: the frame with the window
    (green: the person given or seen, red: not seen, `person.Window.person_seen`; its
    `found_by` written above it, moved left or cut with "..." to end inside the frame:
    `fitted_label`), then each task's `draw` of the crop, h pixels square; (h, w) is (H, W)
    scaled down so that no side exceeds MAX_ANNOTATED_SIDE (`annotated_sizes`)."""
    pictures = [TASKS[t].draw(pred, result["crop_image"], result["frame"], result=result)
                for t, pred in result["raw"].items()]
    h, w = annotated_sizes(*image.shape[:2], len(pictures), MAX_ANNOTATED_SIDE)
    scale = h / image.shape[0]
    out = np.ascontiguousarray(image.copy() if h == image.shape[0] else
                               cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA))
    window = result["window"]
    x, y, side, _ = (np.asarray(window.bbox) + [0.5, 0.5, 0, 0]) * scale - [0.5, 0.5, 0, 0]
    colour = (40, 220, 60) if window.person_seen else (230, 40, 40)
    cv2.rectangle(out, (round(x), round(y)), (round(x + side - 1), round(y + side - 1)),
                  colour, 2)
    label = fitted_label(window.found_by, w - 2 * LABEL_MARGIN_PX)
    if label:
        left = min(max(round(x), LABEL_MARGIN_PX), w - LABEL_MARGIN_PX - label_width(label))
        cv2.putText(out, label, (left, max(round(y) - 5, 12)), LABEL_FONT, LABEL_SCALE, colour,
                    LABEL_THICKNESS, cv2.LINE_AA)
    pictures = [cv2.resize(p, (h, h), interpolation=cv2.INTER_NEAREST) for p in pictures]
    return np.concatenate([out, *pictures], axis=1)


def next_pts(time_s: float, last: int | None, time_base: fractions.Fraction,
             frame_rate: float) -> int:
    """A frame's time stamp in ticks of `time_base`: its source time `time_s`, or, when that
    is not after the last one written (`last`; a clip of missing or repeated stamps), one
    frame (1 / frame_rate s, at least a tick) after it."""
    pts = round(time_s / time_base)
    if last is not None and pts <= last:
        pts = last + max(1, round(1 / (frame_rate * time_base)))
    return pts


class Writer:
    """H.264 (libx264, yuv420p) mp4 writer. Each frame is shown at the time it is written
    with (`write`: the clip's time, 0 for its first frame, in the source's `time_base`: a
    variable-frame-rate clip stays in time) and is fitted (`fit`) into the first frame's
    size, padded to even sides as yuv420p needs."""

    def __init__(self, path: str, frame_rate: float, time_base: fractions.Fraction):
        import av

        # The movie's time scale, the unit of its length and of its edit list's durations, is
        # the frames' too, so both are exact in the frames' ticks (the mp4 muxer's default is
        # milliseconds).
        self._container = av.open(path, mode="w", format="mp4",
                                  options={"movie_timescale": str(time_base.denominator)})
        self._stream = self._container.add_stream(
            "libx264", rate=fractions.Fraction(frame_rate).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "20", "preset": "veryfast"}
        self._stream.codec_context.time_base = self._stream.time_base = time_base
        self._time_base, self._frame_rate = time_base, frame_rate
        self._size: tuple[int, int] | None = None
        self._last: int | None = None

    def write(self, rgb: np.ndarray, time_s: float) -> None:
        """Encodes the (h,w,3) RGB frame shown at `time_s` seconds from the movie's start
        (`next_pts`): a first frame written at 0 starts the movie, one written later is
        preceded by an empty edit that long."""
        import av

        if self._size is None:
            self._size = (rgb.shape[0] + rgb.shape[0] % 2, rgb.shape[1] + rgb.shape[1] % 2)
            self._stream.height, self._stream.width = self._size
        frame = av.VideoFrame.from_ndarray(fit(rgb, self._size), format="rgb24")
        self._last = next_pts(time_s, self._last, self._time_base, self._frame_rate)
        frame.pts, frame.time_base = self._last, self._time_base
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        """Flushes the encoder and closes the file."""
        self._container.mux(self._stream.encode())
        self._container.close()

    def abandon(self) -> None:
        """Closes the file without flushing (after an error: the file is deleted)."""
        try:
            self._container.close()
        except Exception:  # noqa: BLE001 - the error being handled is the one to report
            pass

