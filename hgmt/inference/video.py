"""Video in, video out: every frame of a clip predicted, in batches, on JAX's default device.

`predict_video` streams the frames (`video_file.Clip`: never the whole clip in memory),
predicts `Predictor.batch_size` frames at a time, and writes one JSON line per frame, an
annotated H.264 mp4 (`annotated_video`) and a summary of the run (frame rates, frames where
no person was seen, damaged packets)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Sequence
from typing import TextIO

import numpy as np

from hgmt import console, disk_space, paths
from hgmt.inference import annotated_video, result_outputs, video_file
from hgmt.inference import predictor as prediction

PROGRESS_EVERY_S = 10.0  # seconds between a video's progress lines


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
    frame, `video_file.Clip`, is not counted), 'time_s' on the clip's clock
    (`video_file.Clip.batches`), and `result_outputs.to_json`'s fields) and
    OUT_DIR/<name>.annotated.mp4 (`annotated_video.annotate`, each frame at its 'time_s'), and
    OUT_DIR/<name>.summary.json, the returned summary: frames, 'start_time_s' (where the clip
    starts on its stream's clock, `video_file.Clip.start_time_s`), 'frames_person_not_seen'
    (frames whose window is drawn red, `person.Window.person_seen`), 'seconds' (the
    wall-clock time from the first frame's reading to the annotated video's last frame
    encoded), 'frames_per_second' end to end (reading, the model, drawing and writing
    included) and of `Predictor.predict` alone, both timed after `Predictor.warm_up` has
    compiled everything ('warm_up_seconds'), the device, 'damaged_packets'
    (`video_file.Clip`), 'listed_frames' (the frames the file's header lists, null when it
    does not: more than the frames' packets read is a clip cut short, warned about), the
    checkpoint's step, tasks and whether the flip test ran. A progress line is logged every
    PROGRESS_EVERY_S seconds.

    The files are written under `partial_name`s and renamed together when the clip is done,
    their data synced first (`disk_space.rename_together`): on an error they are deleted, so
    the three files there are always one whole clip's, of one run."""
    lines_path, video_path, summary_path = (outputs(path, out_dir)[k] for k in
                                            ("jsonl", "annotated_video", "summary"))
    if os.path.abspath(video_path) == os.path.abspath(path):
        raise ValueError(f"the annotated video would overwrite {path}; choose another --out_dir")
    with video_file.Clip(path) as clip:
        writer = annotated_video.Writer(partial_name(video_path), clip.frame_rate, clip.time_base)
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
    (`Predictor.warm_up`) and the drawing's eager ops (`annotated_video.annotate` of a black
    image) -> the seconds it took. It says so only where the model is not yet compiled: the
    videos after the first of a command share its compiled passes."""
    began = time.perf_counter()
    if not model.compiled():
        logging.info("%s: compiling the model for batches of up to %d frames", path,
                     model.batch_size)
    black = np.zeros((model.image_size, model.image_size, 3), np.uint8)
    annotated_video.annotate(black, model.warm_up())
    return time.perf_counter() - began


def _predict_frames(model: prediction.Predictor, clip: video_file.Clip,
                    bbox: Sequence[float] | None, lines: TextIO,
                    writer: annotated_video.Writer) -> _Tally:
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
                      **result_outputs.to_json(result, model.tasks)}
            lines.write(json.dumps(record) + "\n")
            writer.write(annotated_video.annotate(frame, result), t)
            tally.frames += 1
            tally.person_not_seen += not result["window"].person_seen
    return tally


def _log_progress(clip: video_file.Clip, done: int, rate: float) -> None:
    """Logs the frames predicted so far (of those the header lists, when it does), the rate
    in frames per second and, from both, the time left."""
    listed = clip.listed_frames
    of = f" of {listed}" if listed else ""
    left = (f", about {console.hms((listed - done) / rate)} left"
            if listed > done and rate > 0 else "")
    logging.info("%s: %d%s frames, %.1f frames/s%s", clip.path, done, of, rate, left)


def _no_frames(path: str, damaged: int) -> ValueError:
    """The error of a video of which no frame decoded, `damaged` packets skipped: an mp4 whose
    index is cut says so (`video_file.index_error`)."""
    return video_file.index_error(path) or ValueError(f"video {path} holds no frames" + (
        f" that decode ({damaged} damaged packet{'s' * (damaged != 1)}: the file is damaged "
        f"or cut short)" if damaged else ""))


def _warn_if_cut_short(path: str, clip: video_file.Clip, decoded: int) -> None:
    """Warns when fewer frames' packets were there to read than the header lists."""
    if clip.listed_frames > clip.read_packets:
        logging.warning("%s: %d of the %d frames its header lists were there to read (%d "
                        "decoded): the file is cut short", path, clip.read_packets,
                        clip.listed_frames, decoded)


def _summary(model: prediction.Predictor, path: str, clip: video_file.Clip, tally: _Tally,
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
