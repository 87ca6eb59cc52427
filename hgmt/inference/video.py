"""Video in, video out: every frame of a clip predicted, in batches, on JAX's default device.

`predict_video` streams the frames with PyAV (never the whole clip in memory), predicts
`Predictor.batch_size` frames at a time, and writes one JSON line per frame and an annotated
H.264 mp4: each frame with the person's window drawn on it (green when given or found, red
when nothing was seen), then each task's quick picture of the crop (its `draw`) at the frame's
height."""

from __future__ import annotations

import collections
import dataclasses
import fractions
import heapq
import itertools
import json
import logging
import os
import struct
import time
from collections.abc import Iterator, Sequence

import cv2
import numpy as np

from hgmt import console, disk_space, paths
from hgmt.inference import predictor as prediction
from hgmt.tasks import TASKS

# The suffixes of the containers FFmpeg reads that hold video: files with them are videos.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts",
                  ".mpg", ".mpeg", ".3gp", ".flv", ".wmv", ".ogv")


# The suffixes of still-image formats that may hold an animation, of which OpenCV reads the
# first frame only: a file with one of them that PyAV plays as a video is one (`is_video`).
ANIMATION_SUFFIXES = (".gif", ".webp", ".apng")

# The most frames a decoder holds back to put them in display order (H.264's limit).
REORDER_DEPTH = 16
PROGRESS_EVERY_S = 10.0  # seconds between a video's progress lines


class OutOfHostMemory(MemoryError):
    """The host ran out of memory while an input was read or predicted: not the file's fault
    (the next input would likely fail too); the message names the file and what to do."""


def out_of_host_memory(what: str, error: MemoryError) -> OutOfHostMemory:
    """The `OutOfHostMemory` of `error` (Python's, or PyAV's av.error.MemoryError, FFmpeg's
    ENOMEM) raised while `what` (a video, or images: their paths) was read or predicted."""
    return OutOfHostMemory(
        f"out of host memory while reading or predicting {what} ({type(error).__name__}: "
        f"{error}), which is not a fault of the file: free the machine's memory (other "
        f"processes), or give a smaller --batch_size (a batch's frames or images are held "
        f"decoded), and predict it again")


def out_of_host_memory_probing(path: str, error: MemoryError) -> OutOfHostMemory:
    """The `OutOfHostMemory` of `error` raised while PyAV opened the file at `path` to tell
    what it holds (`plays_as_video`, `sound_only`), before anything is predicted."""
    return OutOfHostMemory(
        f"out of host memory while PyAV probed whether {path} is a video "
        f"({type(error).__name__}: {error}), which is not a fault of the file: free the "
        f"machine's memory (other processes) and run the command again")


def is_video(path: str) -> bool:
    """Whether `hgmt.predict` treats the file as a video: its suffix is one of VIDEO_SUFFIXES,
    or one of ANIMATION_SUFFIXES, or `.png` for an animated PNG (`animated_png`), and PyAV
    plays it as a video (`plays_as_video`: an animated GIF, not a GIF of one frame);
    `OutOfHostMemory` naming the file when the host runs out of memory while PyAV probes it."""
    name = path.lower()
    return name.endswith(VIDEO_SUFFIXES) or (
        (name.endswith(ANIMATION_SUFFIXES) or (name.endswith(".png") and animated_png(path)))
        and plays_as_video(path))


def animated_png(path: str) -> bool:
    """Whether the file is an animated PNG (APNG, usually named `.png`: an acTL chunk before
    its first IDAT), from its chunk headers alone, so a still PNG costs a few small reads
    and no decoder."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            while len(head := f.read(8)) == 8:
                kind = head[4:]
                if kind == b"acTL":
                    return True
                if kind in (b"IDAT", b"IEND"):
                    return False
                f.seek(int.from_bytes(head[:4], "big") + 4, os.SEEK_CUR)  # data, CRC
    except OSError:
        return False
    return False


def _open(path: str):
    """The PyAV container of a video file; FileNotFoundError or ValueError naming the file
    when it is missing, empty, ends before its first frame, is not a video, or has no video
    stream."""
    import av

    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a folder: give the video files in it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path} not found")
    if not os.path.getsize(path):
        raise ValueError(f"video {path} is empty (0 bytes)")
    try:
        container = av.open(path)
    except MemoryError:  # the host's, not the file's (av.error.MemoryError is one)
        raise
    except av.error.EOFError as e:  # the demuxer met the file's end probing its streams
        raise ValueError(f"video {path} ends before its first frame: it holds no frames or "
                         f"is cut short ({type(e).__name__}: {e})") from e
    except Exception as e:  # av raises InvalidDataError and others on non-videos
        raise ValueError(f"video {path} cannot be opened ({type(e).__name__}: {e})") from e
    if not container.streams.video:
        container.close()
        raise ValueError(f"{path} has no video stream")
    return container


def plays_as_video(path: str) -> bool:
    """Whether PyAV decodes two frames of the file's first video stream: a video, whatever
    its name says (a still image gives one frame, even in a video container such as HEIC's;
    a file PyAV cannot open or decode gives none). An allocation that fails meanwhile is the
    host's, not the file's: `OutOfHostMemory` naming the file."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return False
            frames = container.decode(container.streams.video[0])
            return sum(1 for _ in itertools.islice(frames, 2)) == 2
    except MemoryError as e:  # the host's, not the file's (av.error.MemoryError is one)
        raise out_of_host_memory_probing(path, e) from e
    except (av.FFmpegError, OSError, ValueError):
        return False


def sound_only(path: str) -> bool:
    """Whether PyAV opens the file and finds audio streams but no video stream (an .m4a);
    `OutOfHostMemory` naming the file when an allocation fails meanwhile."""
    import av

    try:
        with av.open(path) as container:
            return bool(container.streams.audio) and not container.streams.video
    except MemoryError as e:  # the host's, not the file's
        raise out_of_host_memory_probing(path, e) from e
    except (av.FFmpegError, OSError, ValueError):
        return False


def display_matrix(frame) -> tuple[int, ...] | None:
    """The 3x3 display matrix (FFmpeg's 16.16 fixed-point layout, row by row) a decoded PyAV
    frame carries as side data, or None."""
    import av

    for data in frame.side_data:
        if data.type == av.sidedata.sidedata.Type.DISPLAYMATRIX:
            return struct.unpack("=9i", bytes(data))
    return None


def upright(rgb: np.ndarray, rotation: float,
            matrix: Sequence[int] | None = None) -> np.ndarray:
    """A decoded (H,W,3) frame turned and mirrored as players display it: `rotation` is the
    display matrix's counterclockwise turn in degrees (PyAV's `VideoFrame.rotation`; a phone's
    portrait clip holds landscape frames and -90), `matrix` the matrix itself
    (`display_matrix`), whose signs say the mirroring. The quarter turns and flips are those
    ffmpeg's command-line tool applies (fftools/ffmpeg_filter.c: a clockwise angle theta in
    [0, 360) from the rotation; 90: `transpose` clock, or cclock_flip when matrix[3] > 0; 180:
    hflip when matrix[0] < 0, vflip when matrix[4] < 0; 270: cclock, or clock_flip when
    matrix[3] < 0; 0: vflip when matrix[4] < 0); another angle is rounded to quarter turns."""
    theta = -round(rotation)
    theta -= 360 * np.floor(theta / 360 + 0.9 / 360)
    if matrix is None or not any(abs(theta - a) < 1 for a in (0, 90, 180, 270)):
        turns = round(rotation / 90) % 4
        return np.ascontiguousarray(np.rot90(rgb, turns)) if turns else rgb
    if abs(theta - 90) < 1:
        out = rgb.transpose(1, 0, 2) if matrix[3] > 0 else np.rot90(rgb, -1)
    elif abs(theta - 270) < 1:
        out = rgb[::-1, ::-1].transpose(1, 0, 2) if matrix[3] < 0 else np.rot90(rgb, 1)
    else:
        out = rgb
        if abs(theta - 180) < 1 and matrix[0] < 0:
            out = out[:, ::-1]
        if matrix[4] < 0:
            out = out[::-1]
    return rgb if out is rgb else np.ascontiguousarray(out)


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


class Clip:
    """An open video file, read as players display it (`batches`); a context manager.

    `frame_rate` is the stream's average rate (frames per second, 30 when it does not say),
    `time_base` the seconds per tick of its time stamps (1/90000 when it does not say),
    `start_time_s` the clip's start on the stream's clock, in seconds, which `batches`
    subtracts from every frame's time stamp (`start_time`; None until the first frame is shown
    when the file does not say), and `damaged_packets` counts the packets `batches` skipped
    because the decoder found them damaged."""

    def __init__(self, path: str):
        self.path = path
        self._container = _open(path)
        # The decoder is left with PyAV's default threading, slice threads only: with frame
        # threads too ("AUTO", which decodes a 1080p clip twice as fast) a damaged packet
        # raises no error and its frame is dropped uncounted (`_decoded`).
        self._stream = self._container.streams.video[0]
        rate, base = self._stream.average_rate, self._stream.time_base
        self.frame_rate = float(rate) if rate else 30.0
        self.time_base = fractions.Fraction(base) if base else fractions.Fraction(1, 90000)
        self.start_time_s = start_time(self._container, self._stream)
        self.damaged_packets = 0
        # The frames the container's header lists (an mp4's sample count), 0 when it does not
        # say, and the packets of frames `_decoded` read: fewer than listed is a clip cut short
        # (a trimmed mp4's edit list drops frames from the decoding, not from the packets).
        self.listed_frames = int(self._stream.frames or 0)
        self.read_packets = 0

    def __enter__(self) -> Clip:
        return self

    def __exit__(self, *exc) -> None:
        self._container.close()

    def _decoded(self) -> Iterator:
        """PyAV's frames, decoded a packet at a time: a packet the decoder finds damaged
        (InvalidDataError) is counted and skipped, as ffmpeg does, with one warning per clip;
        any other error, or a damaged container, is a ValueError naming the file, but an
        allocation that fails (MemoryError, av.error.MemoryError among them), the host's and
        not the file's, propagates."""
        import av

        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except MemoryError:
                raise
            except av.FFmpegError as e:
                raise ValueError(f"video {self.path} cannot be read ({type(e).__name__}: "
                                 f"{e})") from e
            self.read_packets += bool(packet.size)
            try:
                frames = packet.decode()  # the empty packet at the end flushes the decoder
            except av.InvalidDataError as e:
                self.damaged_packets += 1
                if self.damaged_packets == 1:
                    logging.warning("%s: skipped a damaged packet at %s s (%s); its frame is "
                                    "left out and frames after it may show errors; the "
                                    "summary's damaged_packets counts all such packets",
                                    self.path, self._seconds(packet.pts), e)
                continue
            except MemoryError:
                raise
            except av.FFmpegError as e:
                raise ValueError(f"video {self.path} cannot be decoded ({type(e).__name__}: "
                                 f"{e})") from e
            yield from frames

    def _shown(self) -> Iterator[tuple[float, object]]:
        """(time in seconds, PyAV frame) of each frame in display order. AVI stores decoding
        times only: with B-frames the time stamps FFmpeg gives the frames, which come in
        display order, are out of it (ffmpeg's tools repair them with a heuristic,
        best_effort_timestamp, that PyAV does not expose). They are the right stamps in a
        wrong order within the decoder's reordering depth (at most REORDER_DEPTH frames), so
        each frame gets the smallest stamp not yet given once the stamps of the frames up to
        that depth after it are known; a dropped frame's gap stays. In any container a frame
        without a stamp (a raw H.264 stream's) is one frame after the latest one."""
        last = None

        def stamped(frame) -> float:
            nonlocal last
            time_s = frame.time
            if time_s is None:
                time_s = 0.0 if last is None else last + 1 / self.frame_rate
            last = float(time_s) if last is None else max(last, float(time_s))
            return float(time_s)

        if self._container.format.name != "avi":
            for frame in self._decoded():
                yield stamped(frame), frame
            return
        stamps: list[float] = []
        held: collections.deque = collections.deque()
        for frame in self._decoded():
            time_s = stamped(frame)
            heapq.heappush(stamps, float(time_s))
            held.append(frame)
            if len(held) > REORDER_DEPTH:
                yield heapq.heappop(stamps), held.popleft()
        while held:
            yield heapq.heappop(stamps), held.popleft()

    def _seconds(self, pts: int | None) -> str:
        """A packet's time stamp on the clip's clock (`start_time_s` subtracted once known),
        in seconds for a message ("?" when it has none)."""
        if pts is None:
            return "?"
        return f"{float(pts * self.time_base) - (self.start_time_s or 0.0):.3f}"

    def batches(self, batch_size: int) -> Iterator[tuple[list[float], list[np.ndarray]]]:
        """Yields (times in seconds on the clip's clock, RGB uint8 frames) of up to
        batch_size frames at a time, decoding as it goes: each frame's time stamp minus
        `start_time_s` (set to the first frame's time stamp when the file gives no start), as
        a player counts it, and the frame as it is displayed: with square pixels
        (`square_pixels`, by the stream's sample aspect ratio) and turned and mirrored
        (`upright`)."""
        ratio = float(self._stream.sample_aspect_ratio or 1) or 1.0
        times, frames = [], []
        for time_s, frame in self._shown():
            if self.start_time_s is None:
                self.start_time_s = time_s
            times.append(time_s - self.start_time_s)
            rgb = square_pixels(frame.to_ndarray(format="rgb24"), ratio)
            frames.append(upright(rgb, frame.rotation, display_matrix(frame)))
            if len(frames) == batch_size:
                yield times, frames
                times, frames = [], []
        if frames:
            yield times, frames


def start_time(container, stream) -> float | None:
    """Where a clip starts on its stream's clock, in seconds: the video `stream`'s start time
    (its first shown frame's time stamp, as FFmpeg reads it), else the `container`'s (in
    microseconds), else None. Most mp4, mkv and avi files start at 0; MPEG-TS and MPEG-PS
    files often do not (an .mpg PyAV writes starts at 0.54 s, a broadcast or camcorder
    capture at any time). Players count a clip's time from it."""
    if stream.start_time is not None and stream.time_base:
        return float(stream.start_time * stream.time_base)
    if container.start_time is not None:
        return container.start_time / 1e6
    return None


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


def annotate(image: np.ndarray, result: dict) -> np.ndarray:
    """(H,W,3) frame and its result -> (h, w + k*h, 3) uint8: the frame with the window
    (green: the person given or seen, red: not seen, `person.Window.person_seen`; its
    `found_by` written above it), then each task's `draw` of the crop, h pixels square; (h, w)
    is (H, W) scaled down so that no side exceeds MAX_ANNOTATED_SIDE (`annotated_sizes`)."""
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
    cv2.putText(out, window.found_by, (max(round(x), 2), max(round(y) - 5, 12)),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)
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


class _Writer:
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


def partial_name(path: str) -> str:
    """Where an output is written until the clip is done (`predict_video`)."""
    return path + ".partial"


def outputs(path: str, out_dir: str) -> dict[str, str]:
    """The files the prediction of the video at `path` writes into `out_dir` (`predict_video`):
    'jsonl' (a line per frame), 'annotated_video' and 'summary'."""
    name = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    return {"jsonl": name + ".jsonl", "annotated_video": name + ".annotated.mp4",
            "summary": name + ".summary.json"}


def predict_video(model: prediction.Predictor, path: str, out_dir: str,
                  bbox: Sequence[float] | None = None) -> dict:
    """Predicts every frame of the video at `path` (each frame's person found, or the window
    around `bbox` in every frame) and writes OUT_DIR/<name>.jsonl (one line per frame:
    'frame', the 0-based index among the frames decoded and predicted (a damaged packet's
    frame, `Clip`, is not counted), 'time_s' on the clip's clock (`Clip.batches`), and
    `predictor.to_json`'s fields) and OUT_DIR/<name>.annotated.mp4 (`annotate`, each frame
    at its 'time_s'), and OUT_DIR/<name>.summary.json, the returned summary: frames,
    'start_time_s' (where the clip starts on its stream's clock, `Clip.start_time_s`),
    'frames_person_not_seen' (frames whose window is drawn red, `person.Window.person_seen`),
    'seconds' (the wall-clock time from the first frame's reading to the annotated video's
    last frame encoded), 'frames_per_second' end to end (reading, the model, drawing and
    writing included) and of `Predictor.predict` alone, both timed after `Predictor.warm_up`
    has compiled everything ('warm_up_seconds'), the device, 'damaged_packets' (`Clip`),
    'listed_frames' (the frames the file's header lists, null when it does not: more than the
    frames' packets read is a clip cut short, warned about), the checkpoint's
    step, tasks and whether the flip test ran. A progress line is logged every
    PROGRESS_EVERY_S seconds.

    The files are written under `partial_name`s and renamed together when the clip is done,
    their data synced first (`disk_space.rename_together`): on an error they are deleted, so
    the three files there are always one whole clip's, of one run."""
    lines_path, video_path, summary_path = (outputs(path, out_dir)[k] for k in
                                            ("jsonl", "annotated_video", "summary"))
    if os.path.abspath(video_path) == os.path.abspath(path):
        raise ValueError(f"the annotated video would overwrite {path}: choose another --out_dir")
    with Clip(path) as clip:
        writer = _Writer(partial_name(video_path), clip.frame_rate, clip.time_base)
        try:
            with open(partial_name(lines_path), "w") as lines:
                warm_up_seconds = _warmed_up(model, path)
                tally = _predict_frames(model, clip, bbox, lines, writer)
            if not tally.frames:
                raise _no_frames(path, clip.damaged_packets)
            writer.close()
            seconds = time.perf_counter() - tally.started
            _warn_if_cut_short(path, clip, tally.frames)
            summary = _summary(model, path, clip, tally, seconds, warm_up_seconds,
                               lines_path, video_path)
            with open(partial_name(summary_path), "w") as f:
                json.dump(summary, f, indent=1)
            disk_space.rename_together([(partial_name(name), name) for name in
                                        (lines_path, video_path, summary_path)])
        except BaseException:
            writer.abandon()
            _remove_partials((lines_path, video_path, summary_path))
            raise
    return summary


@dataclasses.dataclass
class _Tally:
    """What `_predict_frames` counted: the frames predicted, those whose window is drawn red
    (`person.Window.person_seen`), the seconds spent in `Predictor.predict`, and when the
    first frame began to be read (`time.perf_counter`)."""

    started: float
    frames: int = 0
    person_not_seen: int = 0
    predicting_s: float = 0.0


def _warmed_up(model: prediction.Predictor, path: str) -> float:
    """Compiles everything a frame needs before any is timed: the model for each batch shape
    (`Predictor.warm_up`) and the drawing's eager ops (`annotate` of a black image) -> the
    seconds it took."""
    began = time.perf_counter()
    logging.info("%s: compiling the model for batches of up to %d frames", path,
                 model.batch_size)
    black = np.zeros((model.image_size, model.image_size, 3), np.uint8)
    annotate(black, model.warm_up())
    return time.perf_counter() - began


def _predict_frames(model: prediction.Predictor, clip: Clip, bbox: Sequence[float] | None,
                    lines, writer: _Writer) -> _Tally:
    """Predicts the clip's frames `model.batch_size` at a time, writing each frame's JSON line
    to `lines` and its annotated frame to `writer`, with a progress line every
    PROGRESS_EVERY_S seconds -> what it counted."""
    tally = _Tally(started=time.perf_counter())
    last_line = tally.started
    for times, frames in clip.batches(model.batch_size):
        if time.perf_counter() - last_line >= PROGRESS_EVERY_S:
            last_line = time.perf_counter()
            _log_progress(clip, tally.frames, tally.frames / (last_line - tally.started))
        began_batch = time.perf_counter()
        results = model.predict(frames, None if bbox is None else [bbox] * len(frames),
                                image_maps=False)
        tally.predicting_s += time.perf_counter() - began_batch
        for t, frame, result in zip(times, frames, results, strict=True):
            record = {"frame": tally.frames, "time_s": round(t, 4),
                      **prediction.to_json(result, model.tasks)}
            lines.write(json.dumps(record) + "\n")
            writer.write(annotate(frame, result), t)
            tally.frames += 1
            tally.person_not_seen += not result["window"].person_seen
    return tally


def _log_progress(clip: Clip, done: int, rate: float) -> None:
    """Logs the frames predicted so far (of those the header lists, when it does), the rate
    in frames per second and, from both, the time left."""
    listed = clip.listed_frames
    of = f" of {listed}" if listed else ""
    left = (f", about {console.hms((listed - done) / rate)} left"
            if listed > done and rate > 0 else "")
    logging.info("%s: %d%s frames, %.1f frames/s%s", clip.path, done, of, rate, left)


def _no_frames(path: str, damaged: int) -> ValueError:
    """The error of a video of which no frame decoded, `damaged` packets skipped."""
    return ValueError(f"video {path} holds no frames" + (
        f" that decode ({damaged} damaged packet{'s' * (damaged != 1)}: the file is damaged "
        f"or cut short)" if damaged else ""))


def _warn_if_cut_short(path: str, clip: Clip, decoded: int) -> None:
    """Warns when fewer frames' packets were there to read than the header lists."""
    if clip.listed_frames > clip.read_packets:
        logging.warning("%s: %d of the %d frames its header lists were there to read (%d "
                        "decoded): the file is cut short", path, clip.read_packets,
                        clip.listed_frames, decoded)


def _summary(model: prediction.Predictor, path: str, clip: Clip, tally: _Tally,
             seconds: float, warm_up_seconds: float, lines_path: str,
             video_path: str) -> dict:
    """The summary `predict_video` writes and returns (its docstring says each field)."""
    import jax

    return {
        "video": paths.text(os.path.abspath(path)), "frames": tally.frames,
        "start_time_s": round(clip.start_time_s, 6),
        "frames_person_not_seen": tally.person_not_seen,
        "damaged_packets": clip.damaged_packets, "listed_frames": clip.listed_frames or None,
        "seconds": round(seconds, 3),
        "frames_per_second": round(tally.frames / seconds, 3),
        "predict_frames_per_second": round(tally.frames / tally.predicting_s, 3),
        "warm_up_seconds": round(warm_up_seconds, 3), "batch_size": model.batch_size,
        "flip": model.flip, "device": str(jax.devices()[0].device_kind),
        "jsonl": paths.text(os.path.abspath(lines_path)),
        "annotated_video": paths.text(os.path.abspath(video_path)), "step": model.step,
        "tasks": list(model.tasks)}


def _remove_partials(names: Sequence[str]) -> None:
    """Deletes the `partial_name`s of `names` that exist (after an error)."""
    for name in names:
        if os.path.exists(partial_name(name)):
            os.remove(partial_name(name))
