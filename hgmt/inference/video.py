"""Video in, video out: every frame of a clip predicted, in batches, on JAX's default device.

`predict_video` streams the frames with PyAV (never the whole clip in memory), predicts
`Predictor.batch_size` frames at a time, and writes one JSON line per frame and an annotated
H.264 mp4: each frame with the person's window drawn on it (green when given or found, red
when nothing was seen), then each task's quick picture of the crop (its `draw`) at the frame's
height."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from hgmt.inference import predictor as prediction
from hgmt.tasks import TASKS

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


def is_video(path: str) -> bool:
    """Whether `hgmt.predict` treats the file as a video (by its suffix)."""
    return path.lower().endswith(VIDEO_SUFFIXES)


def _open(path: str):
    """The PyAV container of a video file; FileNotFoundError or ValueError naming the file
    when it is missing, not a video, or has no video stream."""
    import av

    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path} not found")
    try:
        container = av.open(path)
    except Exception as e:  # av raises InvalidDataError and others on non-videos
        raise ValueError(f"video {path} cannot be opened ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def frame_rate(path: str) -> float:
    """The video's average frame rate (frames per second), 30 when it does not say."""
    with _open(path) as container:
        rate = container.streams.video[0].average_rate
    return float(rate) if rate else 30.0


def upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    """A decoded (H,W,3) frame turned as players display it: `rotation` is the video's display
    matrix's counterclockwise turn in degrees (PyAV's `VideoFrame.rotation`; a phone's portrait
    clip holds landscape frames and -90)."""
    turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb


def square_pixels(rgb: np.ndarray, sample_aspect_ratio: float) -> np.ndarray:
    """A decoded (H,W,3) frame of an anamorphic clip, whose pixels are `sample_aspect_ratio`
    times as wide as they are tall (4/3 for HDV's 1440x1080 shown at 1920x1080) -> the frame
    as players show it, (H, round(W * sample_aspect_ratio), 3) with square pixels; unchanged
    when the ratio is 1."""
    h, w = rgb.shape[:2]
    width = max(round(w * sample_aspect_ratio), 1)
    if width == w:
        return rgb
    shrink = width < w
    return cv2.resize(rgb, (width, h), interpolation=cv2.INTER_AREA if shrink
                      else cv2.INTER_LINEAR)


def read_frames(path: str, batch_size: int) -> Iterator[tuple[list[float], list[np.ndarray]]]:
    """Yields (times in seconds, RGB uint8 frames) of up to batch_size frames at a time,
    decoding as it goes, each frame as it is displayed: with square pixels (`square_pixels`,
    by the stream's sample aspect ratio) and turned (`upright`). Errors name the file
    (`_open`; ValueError on a damaged stream)."""
    with _open(path) as container:
        ratio = float(container.streams.video[0].sample_aspect_ratio or 1) or 1.0
        times, frames = [], []
        decoded = container.decode(video=0)
        while True:
            try:
                frame = next(decoded)
            except StopIteration:
                break
            except Exception as e:  # av raises InvalidDataError and others on damaged data
                raise ValueError(f"video {path} cannot be decoded ({type(e).__name__}: "
                                 f"{e})") from e
            times.append(float(frame.time or 0.0))
            rgb = square_pixels(frame.to_ndarray(format="rgb24"), ratio)
            frames.append(upright(rgb, frame.rotation))
            if len(frames) == batch_size:
                yield times, frames
                times, frames = [], []
        if frames:
            yield times, frames


def annotate(image: np.ndarray, result: dict) -> np.ndarray:
    """(H,W,3) frame and its result -> (H, W + k*H, 3) uint8: the frame with the window
    (green: the person given or seen, red: not seen, `person.Window.person_seen`; its
    `found_by` written above it), then each task's `draw` of the crop, H pixels square."""
    h = image.shape[0]
    out = np.ascontiguousarray(image.copy())
    window = result["window"]
    x, y, w, _ = window.bbox
    colour = (40, 220, 60) if window.person_seen else (230, 40, 40)
    cv2.rectangle(out, (round(x), round(y)), (round(x + w - 1), round(y + w - 1)), colour, 2)
    cv2.putText(out, window.found_by, (max(round(x), 2), max(round(y) - 5, 12)),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
    crop = result["crop_image"]
    pictures = [TASKS[t].draw(pred, crop, result["frame"]) for t, pred in result["raw"].items()]
    pictures = [cv2.resize(p, (h, h), interpolation=cv2.INTER_NEAREST) for p in pictures]
    return np.concatenate([out, *pictures], axis=1)


class _Writer:
    """H.264 (libx264, yuv420p) mp4 writer; frames are padded to even sizes as yuv420p needs."""

    def __init__(self, path: str, fps: float):
        import fractions

        import av

        self._container = av.open(path, mode="w")
        self._stream = self._container.add_stream(
            "libx264", rate=fractions.Fraction(fps).limit_denominator(1001))
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": "20", "preset": "veryfast"}
        self._size = None

    def write(self, rgb: np.ndarray) -> None:
        import av

        if self._size is None:
            self._size = (rgb.shape[0] + rgb.shape[0] % 2, rgb.shape[1] + rgb.shape[1] % 2)
            self._stream.height, self._stream.width = self._size
        padded = np.zeros((*self._size, 3), np.uint8)
        padded[:rgb.shape[0], :rgb.shape[1]] = rgb
        frame = av.VideoFrame.from_ndarray(padded, format="rgb24")
        self._container.mux(self._stream.encode(frame))

    def close(self) -> None:
        self._container.mux(self._stream.encode())
        self._container.close()


def outputs(path: str, out_dir: str) -> dict[str, str]:
    """The files the prediction of the video at `path` writes into `out_dir`: 'jsonl' (a line
    per frame), 'annotated_video' (`predict_video`) and 'summary' (hgmt.predict's)."""
    name = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    return {"jsonl": name + ".jsonl", "annotated_video": name + ".annotated.mp4",
            "summary": name + ".summary.json"}


def predict_video(model: prediction.Predictor, path: str, out_dir: str,
                  bbox: Sequence[float] | None = None) -> dict:
    """Predicts every frame of the video at `path` (each frame's person found, or the window
    around `bbox` in every frame) and writes OUT_DIR/<name>.jsonl (one line per frame:
    'frame' index, 'time_s', and `predictor.to_json`'s fields) and OUT_DIR/<name>.annotated.mp4
    (`annotate`, at the video's frame rate). -> a summary: frames, seconds, 'frames_per_second'
    end to end (reading, the model, drawing and writing included) and of `Predictor.predict`
    alone, each without the first batch (JAX compiles there) when there is more than one, and
    the device."""
    import jax

    lines_path, video_path = (outputs(path, out_dir)[k] for k in ("jsonl", "annotated_video"))
    if os.path.abspath(video_path) == os.path.abspath(path):
        raise ValueError(f"the annotated video would overwrite {path}: choose another --out_dir")
    writer = _Writer(video_path, frame_rate(path))
    count, batches = 0, []  # (frames, seconds end to end, seconds predicting) per batch
    try:
        with open(lines_path, "w") as lines:
            start = time.perf_counter()
            for times, frames in read_frames(path, model.batch_size):
                began = time.perf_counter()
                results = model.predict(frames, None if bbox is None else [bbox] * len(frames))
                predicting = time.perf_counter() - began
                for t, frame, result in zip(times, frames, results, strict=True):
                    record = {"frame": count, "time_s": round(t, 4),
                              **prediction.to_json(result, model.tasks)}
                    lines.write(json.dumps(record) + "\n")
                    writer.write(annotate(frame, result))
                    count += 1
                now = time.perf_counter()
                batches.append((len(frames), now - start, predicting))
                start = now
    finally:
        writer.close()
    if not count:
        raise ValueError(f"video {path} holds no frames")
    steady = batches[1:] or batches
    frames = sum(b[0] for b in steady)
    return {"video": os.path.abspath(path), "frames": count,
            "seconds": round(sum(b[1] for b in batches), 3),
            "frames_per_second": round(frames / sum(b[1] for b in steady), 3),
            "predict_frames_per_second": round(frames / sum(b[2] for b in steady), 3),
            "first_batch_excluded": len(batches) > 1, "batch_size": model.batch_size,
            "device": str(jax.devices()[0].device_kind), "jsonl": lines_path,
            "annotated_video": video_path}
