"""A video file, read with PyAV: whether a file is one (`is_video`, probed when its suffix
does not say), whether an mp4 is cut short or damaged, told from its boxes' headers
(`index_missing`: the index of its frames missing or incomplete; `index_error`, the error
wherever FFmpeg fails on such a file), and its frames as players display them (`Clip`: in
display order, on the clip's clock, with square pixels, turned and mirrored as the file
says), decoded as they are read."""

from __future__ import annotations

import collections
import fractions
import heapq
import itertools
import logging
import os
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import cv2
import numpy as np

from hgmt.inference import host_memory

if TYPE_CHECKING:
    import av

# The suffixes of the containers FFmpeg reads that hold video: files with them are videos
# (.ivf: the VP8, VP9 or AV1 stream vpxenc and aomenc write).
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts",
                  ".mpg", ".mpeg", ".3gp", ".flv", ".wmv", ".ogv", ".ivf")


# The suffixes of still-image formats that may hold an animation, of which OpenCV reads the
# first frame only: a file with one of them that PyAV plays as a video is one (`is_video`).
ANIMATION_SUFFIXES = (".gif", ".webp", ".apng")

# The most frames a decoder holds back to put them in display order (H.264's limit).
REORDER_DEPTH = 16


def is_video(path: str) -> bool:
    """Whether `hgmt.predict` treats the file as a video: its suffix is one of VIDEO_SUFFIXES,
    or one of ANIMATION_SUFFIXES, or `.png` for an animated PNG (`animated_png`), and PyAV
    plays it as a video (`plays_as_video`: an animated GIF, not a GIF of one frame);
    `host_memory.OutOfHostMemory` naming the file when the host runs out of memory while PyAV
    probes it."""
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


# The top-level box types an ISO base media file (mp4, m4v, mov, 3gp) may start with.
ISO_BOX_TYPES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"uuid")
# The most top-level boxes `index_missing` reads before it gives up (an mp4 has a handful; a
# fragmented one finds its index in its first boxes): a damaged file of tiny boxes is not
# walked for minutes.
MAX_TOP_LEVEL_BOXES = 10_000


def index_missing(path: str) -> bool:
    """Whether the file is an ISO base media file (its first box one of ISO_BOX_TYPES) whose
    top-level boxes hold no whole `moov` box, the index of its frames without which FFmpeg
    reads none: the file is cut short (a camera or an encoder writes the index after the
    frames, unless the file is made for streaming) or its boxes are damaged. From the boxes'
    headers alone, a few small reads; False past MAX_TOP_LEVEL_BOXES boxes (cannot tell)."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            at = 0
            for _ in range(MAX_TOP_LEVEL_BOXES):
                if at + 8 > size:
                    return at > 0
                f.seek(at)
                head = f.read(16)
                length, kind = int.from_bytes(head[:4], "big"), head[4:8]
                if at == 0 and kind not in ISO_BOX_TYPES:
                    return False
                if length == 1 and len(head) == 16:  # a 64-bit length follows the type
                    length = int.from_bytes(head[8:], "big")
                elif length == 0:  # the box runs to the end of the file
                    length = size - at
                if length < 8:  # no box is shorter than its header: damaged
                    return True
                if kind == b"moov":
                    return at + length > size
                at += length
    except OSError:
        return False
    return False


def index_error(path: str, error: Exception | None = None) -> ValueError | None:
    """The error of the video at `path` that FFmpeg failed on (with `error`; None where it
    read no frame) when its index is missing or incomplete (`index_missing`): it looks cut
    short or damaged, whatever FFmpeg made of it (a file cut before its index does not open;
    one cut within it opens with no video stream, no decoder or no frame). None otherwise."""
    if not index_missing(path):
        return None
    detail = f" ({type(error).__name__}: {error})" if error is not None else ""
    return ValueError(f"video {path} looks cut short or damaged, the index of its frames (the "
                      f"mp4 moov box) missing or incomplete{detail}: download or export it "
                      f"again")


def failed(path: str, what: str, error: Exception) -> ValueError:
    """The error of the video at `path` that FFmpeg failed on with `error`: it looks cut short
    (`index_error`) where its index is missing, else `video <path> <what> (<error>)`."""
    return index_error(path, error) or ValueError(
        f"video {path} {what} ({type(error).__name__}: {error})")


def _open(path: str) -> av.container.InputContainer:
    """The PyAV container of a video file; FileNotFoundError or ValueError naming the file
    when it is missing, empty, an mp4 without its whole index (`index_error`), ends before
    its first frame, is not a video, or has no video stream."""
    import av

    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: a folder; give the video files in it")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"video {path} not found")
    if not os.path.getsize(path):
        raise ValueError(f"video {path} is empty (0 bytes)")
    try:
        container = av.open(path)
    except MemoryError:  # the host's, not the file's (av.error.MemoryError is one)
        raise
    except av.error.EOFError as e:  # the demuxer met the file's end probing its streams
        raise failed(path, "ends before its first frame: it holds no frames or is cut short",
                     e) from e
    except Exception as e:  # av raises InvalidDataError and others on non-videos
        raise failed(path, "cannot be opened", e) from e
    if not container.streams.video:
        container.close()
        raise index_error(path) or ValueError(f"{path} has no video stream")
    return container


def plays_as_video(path: str) -> bool:
    """Whether PyAV decodes two frames of the file's first video stream: a video, whatever
    its name says (a still image gives one frame, even in a video container such as HEIC's;
    a file PyAV cannot open or decode gives none). An allocation that fails meanwhile is the
    host's, not the file's: `host_memory.OutOfHostMemory` naming the file."""
    import av

    try:
        with av.open(path) as container:
            if not container.streams.video:
                return False
            frames = container.decode(container.streams.video[0])
            return sum(1 for _ in itertools.islice(frames, 2)) == 2
    except MemoryError as e:  # the host's, not the file's (av.error.MemoryError is one)
        raise host_memory.out_of_host_memory_probing(path, e) from e
    except (av.FFmpegError, OSError, ValueError):
        return False


def sound_only(path: str) -> bool:
    """Whether PyAV opens the file and finds audio streams but no video stream (an .m4a);
    `host_memory.OutOfHostMemory` naming the file when an allocation fails meanwhile."""
    import av

    try:
        with av.open(path) as container:
            return bool(container.streams.audio) and not container.streams.video
    except MemoryError as e:  # the host's, not the file's
        raise host_memory.out_of_host_memory_probing(path, e) from e
    except (av.FFmpegError, OSError, ValueError):
        return False


def display_matrix(frame: av.VideoFrame) -> tuple[int, ...] | None:
    """The 3x3 display matrix (FFmpeg's 16.16 fixed-point layout, row by row) a decoded PyAV
    frame carries as side data, or None."""
    import av

    # Looked up by type: PyAV 18.1.1 iterates the side data's types, 18.0 and 18.1.0 the data.
    data = frame.side_data.get(av.sidedata.sidedata.Type.DISPLAYMATRIX)
    return None if data is None else struct.unpack("=9i", bytes(data))


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

    `frame_rate` is the stream's average rate (frames per second; 30 when it does not say, as
    an IVF file's does not: its frames keep their time stamps; the rate times only a frame
    with neither a stamp nor a duration, `_shown`, and spaces the annotated video's repeated
    stamps and sets its last frame's length, `annotated_video.Writer`),
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

    def __exit__(self, *exc: object) -> None:
        self._container.close()

    def _decoded(self) -> Iterator[av.VideoFrame]:
        """PyAV's frames, decoded a packet at a time: a packet the decoder finds damaged
        (InvalidDataError) is counted and skipped, as ffmpeg does, with one warning per clip;
        any other error, or a damaged container, is a ValueError naming the file (saying it
        looks cut short where its index is, `index_error`), but an allocation that fails
        (MemoryError, av.error.MemoryError among them), the host's and not the file's,
        propagates."""
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
                raise failed(self.path, "cannot be read", e) from e
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
                raise failed(self.path, "cannot be decoded", e) from e
            yield from frames

    def _shown(self) -> Iterator[tuple[float, av.VideoFrame]]:
        """(time in seconds, PyAV frame) of each frame in display order. AVI stores decoding
        times only: with B-frames the time stamps FFmpeg gives the frames, which come in
        display order, are out of it (ffmpeg's tools repair them with a heuristic,
        best_effort_timestamp, that PyAV does not expose). They are the right stamps in a
        wrong order within the decoder's reordering depth (at most REORDER_DEPTH frames), so
        each frame gets the smallest stamp not yet given once the stamps of the frames up to
        that depth after it are known; a dropped frame's gap stays. In any container a frame
        without a stamp (a raw H.264 stream's) is one frame after the latest one: the
        frame's own duration later where FFmpeg's parser gives one (from the stream's own
        timing, a constant rate, so the latest frame's duration too; a raw stream's average
        rate is the demuxer's default of 25 frames/s, whatever the stream says), else
        1 / `frame_rate` later."""
        last = None

        def stamped(frame: av.VideoFrame) -> float:
            nonlocal last
            time_s = frame.time
            if time_s is None:
                step = (float(frame.duration * frame.time_base)
                        if frame.duration and frame.time_base else 1 / self.frame_rate)
                time_s = 0.0 if last is None else last + step
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


def start_time(container: av.container.InputContainer, stream: av.VideoStream
               ) -> float | None:
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

