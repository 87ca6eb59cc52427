"""Run a trained model on any image: 2D/3D pose, part segmentation and depth.

    python -m hgmt.predict --workdir=DIR --out_dir=OUTDIR [--bbox=x,y,w,h] [--step=N|best]
        [--batch_size=8] [--focal_px=F] [--flip] [--config.<field>=<value> ...]
        IMAGE_OR_VIDEO [IMAGE_OR_VIDEO ...]

Each positional argument, IMAGE_OR_VIDEO, is an image file or a video file (a name ending in
one of hgmt.inference.video_file.VIDEO_SUFFIXES, in upper or lower case, or an animation PyAV plays,
such as a GIF of several frames: hgmt.inference.video_file.is_video).
For each image writes OUTDIR/<name>.png (a panel: the input crop, then a figure per task the
model predicts: 2D skeleton; 3D skeleton, front and side, axes in mm; depth with a colour bar in
mm from the pelvis; body parts with a legend) and
OUTDIR/<name>.json (2D joints in image pixels with their scores, root-relative 3D joints in mm
with the focal length and pelvis depth they were decoded with, class maps). Images are
predicted --batch_size at a time on JAX's default device. An image where the model sees no
person is still predicted (on the whole image), with a warning naming it and the panel's
caption saying so.
For each video, every frame is predicted, --batch_size frames at a time, and it writes
OUTDIR/<name>.jsonl (one such JSON object per frame, with its 'frame' index and 'time_s'),
OUTDIR/<name>.annotated.mp4 (H.264: each frame with the person's window, then each task's
picture of the crop) and OUTDIR/<name>.summary.json (frames, frames where no person was seen,
frames per second end to end and predicting, device), and prints the frame rates.
--flip averages each crop's outputs with its mirror image's (as hgmt.evaluate --flip; the model
runs twice); the JSON and the video's summary record 'flip'.

An input that cannot be read (a folder among them) is reported ("skipped <path>: ...") and the
others go on; a last line counts them, and the exit status is then 1. A full disk, out of
device memory, or out of host memory while reading, probing or predicting an input (not the
file's fault: it is not skipped as unreadable) stops the command with one line naming the file or
the settings (exit status 1); no output is left partly written.

The person crop is the square window around `--bbox` (x, y, w, h in pixels: the person with
training's margin, not a detector's tight box; docs/predict.md says how to widen one).
Without it the person is found: the model runs on the whole image, the joints it sees on the
person (or its silhouette) give the training-like window around them, and the model runs again
on that window until the window stops moving (hgmt/inference/person.py); the JSON records the
window ('bbox') and what found it. Python use:

    from hgmt.inference.predictor import Predictor
    predictor = Predictor("runs/demo")
    result = predictor(rgb_uint8_image, bbox=(x, y, w, h))  # dict of arrays (Predictor.predict)

How 3D is decoded from one image (the camera and the person's distance it assumes, with
`--focal_px`): docs/predict.md#how-3d-is-decoded.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np

from hgmt import cli, compilation_cache, console, disk_space, paths
from hgmt.inference import (
    host_memory,
    image_file,
    person,
    prediction_files,
    predictor,
    result_outputs,
    trained_model,
    video,
    video_file,
)
from hgmt.training import device_memory

if TYPE_CHECKING:
    from absl import flags
# What a full disk's error line says to do.
_THEN = "Free space (or raise the quota), or give another --out_dir, and rerun"


def _define_flags(fv: flags.FlagValues) -> None:
    from absl import flags

    cli.define_workdir(fv)
    flags.DEFINE_string("out_dir", None, "output directory", flag_values=fv, required=True)
    flags.DEFINE_string("bbox", None, "x,y,w,h of the person's crop window in pixels, with "
                        "training's margin around the person (a tight box widened as "
                        "docs/predict.md says), in every image and video frame (default: found "
                        "by the model)",
                        flag_values=fv)
    flags.DEFINE_integer("batch_size", 8, "crops the model runs at once: images and video "
                         "frames are predicted this many at a time", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_float("focal_px", None, "the camera's focal length in pixels, for 3D decoding "
                       "(default: a 30 degree field of view along the image's longer side)",
                       flag_values=fv, lower_bound=1e-6)
    flags.DEFINE_bool("flip", False, "average each crop's outputs with its mirror image's, "
                      "left and right channels swapped back (hgmt.evaluate's --flip); the "
                      "model runs twice", flag_values=fv)
    cli.define_verbosity(fv)
    compilation_cache.define_flag(fv)


def main(argv: list[str] | None = None) -> int:
    """The command of the module's docstring; -> exit status."""
    args, images = cli.parse_on_workdir(_define_flags, argv, __doc__, positional="any")
    if not images:
        raise SystemExit("error: give one or more image or video files after the flags")
    with console.stoppable_console(args.verbosity, command=argv is None):
        return _run(args, images)


def _run(args: flags.FlagValues, images: list[str]) -> int:
    """The prediction of `main`, its flags parsed and its console set up; -> exit status."""
    compilation_cache.enable(args.compilation_cache)
    traceback = args.verbosity >= 1
    bbox = None
    if args.bbox:
        try:
            bbox = [float(v) for v in args.bbox.split(",")]
        except ValueError:
            bbox = []
        if len(bbox) != 4:
            raise SystemExit(f"error: --bbox={args.bbox}: give four numbers x,y,w,h")
        try:
            person.Window.given(bbox)
        except ValueError as e:
            raise SystemExit(f"error: --bbox={args.bbox}: {e}") from e
    images = prediction_files.distinct(images)
    cli.check_output_folder("out_dir", args.out_dir)  # before the model loads
    # Telling videos from images opens some inputs with PyAV, which may run out of memory.
    with cli.faults_in_one_line(host_memory.OutOfHostMemory, traceback=traceback):
        prediction_files.check_outputs(images, args.out_dir)
    with cli.faults_in_one_line(*trained_model.RESTORE_FAULTS, traceback=traceback):
        model = predictor.Predictor(args.workdir, cli.checkpoint_step(args.step), args.config,
                                    batch_size=args.batch_size, focal_px=args.focal_px,
                                    flip=args.flip)
    # A full disk or out of device or host memory ends the command in one line: each would
    # fail every input after it too, so it is not an input to skip.
    with cli.faults_in_one_line(disk_space.DiskFull, device_memory.OutOfDeviceMemory,
                                host_memory.OutOfHostMemory, traceback=traceback), \
            device_memory.explained(model.config, "while predicting",
                                    batch_flag=("--batch_size", model.batch_size)):
        with disk_space.reported(args.out_dir, "the output folder", _THEN):
            prediction_files.make_output_folder(args.out_dir)
        failed = []
        for group in _groups(images, model.batch_size):
            if video_file.is_video(group[0]):
                written = [_predict_video(model, group[0], args.out_dir, bbox)]
            else:
                written = _predict_images(model, group, args.out_dir, bbox)
            failed += [path for path, ok in zip(group, written, strict=True) if not ok]
    if failed:  # the last line says the run is incomplete, however long the list above
        done = (f"the others are predicted in {args.out_dir}" if len(failed) < len(images)
                else "nothing was predicted")
        print(f"error: {len(failed)} of {len(images)} inputs skipped (each named above); "
              f"{done}", file=sys.stderr)
    return 1 if failed else 0


def _groups(paths: list[str], batch_size: int) -> Iterator[list[str]]:
    """The inputs in their order: each video alone, consecutive images in groups of up to
    batch_size (predicted together)."""
    group: list[str] = []
    for path in paths:
        if video_file.is_video(path):
            if group:
                yield group
                group = []
            yield [path]
            continue
        group.append(path)
        if len(group) == batch_size:
            yield group
            group = []
    if group:
        yield group


def _predict_video(model: predictor.Predictor, path: str, out_dir: str,
                   bbox: list[float] | None) -> bool:
    """Predicts the video at `path` into `out_dir` and prints the frame rates -> whether it
    was written; a video that cannot be read or encoded is reported and skipped. A full disk
    raises `disk_space.DiskFull` naming the files, and out of host memory
    `host_memory.OutOfHostMemory` naming the video, none of them left partial."""
    out = prediction_files.outputs_of(path, out_dir)
    names = (f"{os.path.basename(out['jsonl'])}, {os.path.basename(out['annotated_video'])} "
             f"and {os.path.basename(out['summary'])}")

    try:
        # predict_video removes its partial files on any error before this reports it.
        with disk_space.reported(out_dir, f"{names} (the prediction of {path})", _THEN,
                                 cleanup=lambda: "Nothing partial was left behind."):
            summary = video.predict_video(model, path, out_dir, bbox)
    except disk_space.DiskFull:
        raise
    except MemoryError as e:  # the host's (av.error.MemoryError too): not an input to skip
        raise host_memory.out_of_host_memory(path, e) from e
    except (OSError, ValueError, av.FFmpegError) as e:  # FFmpegError: PyAV's
        print(f"skipped {path}: {e}", file=sys.stderr)
        return False
    damaged = (f" (damaged packets skipped: {summary['damaged_packets']})"
               if summary["damaged_packets"] else "")
    not_seen = (f", no person seen in {summary['frames_person_not_seen']} (drawn red)"
                if summary["frames_person_not_seen"] else "")
    out = video.outputs(path, out_dir)
    print(f"{path} -> {out['jsonl']}, {out['annotated_video']}, {out['summary']}: "
          f"{summary['frames']} frame{'s' * (summary['frames'] != 1)}{damaged}{not_seen}, "
          f"{summary['frames_per_second']:.1f} frames/s "
          f"end to end, {summary['predict_frames_per_second']:.1f} frames/s "
          f"predicting ({summary['device']}, batch {model.batch_size})")
    return True


def _read(path: str, bbox: list[float] | None) -> np.ndarray | None:
    """The image at `path`, RGB uint8 (H,W,3), with `bbox` checked against it -> the image, or
    None after reporting why it is skipped."""
    try:
        image = image_file.read_image(path)
        if bbox is not None:
            person.Window.given_in(bbox, image.shape)
    except image_file.UndecodableImage as e:
        print(f"skipped {path}: {e}{_undecodable_hint(path)}", file=sys.stderr)
        return None
    except (OSError, ValueError) as e:
        print(f"skipped {path}: {e}", file=sys.stderr)
        return None
    if path.lower().endswith(video_file.ANIMATION_SUFFIXES) and _frames_held(path) > 1:
        print(f"warning: {path}: an animation PyAV cannot decode (an animated WebP under "
              f"PyAV 18): only its first frame is predicted; convert it to a GIF or a video to "
              f"predict every frame", file=sys.stderr)
    return image


def _undecodable_hint(path: str) -> str:
    """What to do with a file read as an image that OpenCV cannot decode, appended to the
    error: rename a video PyAV plays; nothing for a sound file or a damaged image of a
    format OpenCV reads (its error says so); convert an image of a format OpenCV has no
    codec for (HEIC: its suffix is none of OpenCV's, cv2.haveImageWriter); else nothing."""
    if video_file.plays_as_video(path):
        return (f"; it was read as an image: a video is read as one when its name ends in "
                f"{', '.join(video_file.VIDEO_SUFFIXES)} (rename it)")
    if video_file.sound_only(path):
        return "; it holds sound only, no picture"
    suffix = os.path.splitext(path)[1]
    # OpenCV takes UTF-8 names only (a surrogate escape of another encoding crashes it).
    if suffix and suffix.isascii() and not cv2.haveImageWriter("image" + suffix):
        return f"; OpenCV reads no {suffix} files: convert it to JPEG or PNG"
    return ""


def _frames_held(path: str) -> int:
    """How many frames Pillow finds in the image file at `path` (1 when it cannot read it, or
    refuses it as larger than its decompression-bomb limit: OpenCV has decoded the image,
    whose size the command takes)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                return int(getattr(image, "n_frames", 1))
    except (OSError, ValueError, Image.DecompressionBombError):
        return 1


def _predict_images(model: predictor.Predictor, paths: list[str], out_dir: str,
                    bbox: list[float] | None) -> list[bool]:
    """Predicts the images at `paths` together (one `Predictor.predict`) into `out_dir`, each
    image's panel and JSON written together (both or neither) -> whether each was written; an
    image that cannot be read is reported and skipped. A full disk raises
    `disk_space.DiskFull` naming the file, and out of host memory while they are read or
    predicted `host_memory.OutOfHostMemory` naming them."""
    try:
        images = {path: image for path in paths if (image := _read(path, bbox)) is not None}
        results = model.predict(list(images.values()),
                                None if bbox is None else [bbox] * len(images))
    except host_memory.OutOfHostMemory:  # a probe's (`_undecodable_hint`), naming its file
        raise
    except MemoryError as e:  # the host's: not an input to skip
        raise host_memory.out_of_host_memory(", ".join(paths), e) from e
    for path, result in zip(images, results, strict=True):
        _write_image(model, path, result, out_dir)
    return [path in images for path in paths]


def _write_image(model: predictor.Predictor, path: str, result: dict, out_dir: str) -> None:
    """Writes the prediction `result` of the image at `path`: its panel and JSON, together;
    warns when the model saw no person on the window predicted."""
    out = prediction_files.outputs_of(path, out_dir)
    encoded, png = cv2.imencode(".png", result_outputs.panel(result)[..., ::-1])
    if not encoded:
        raise RuntimeError(f"OpenCV could not encode the panel of {path} as a PNG")
    record = {"image": paths.text(os.path.abspath(path)), "step": model.step, "flip": model.flip,
              **result_outputs.to_json(result, model.tasks)}
    disk_space.write_together([(out["panel"], lambda f: f.write(png.tobytes()), "wb"),
                               (out["json"], lambda f: json.dump(record, f), "w")],
                              then=_THEN)
    print(f"{path} -> {out['panel']}, {out['json']}")
    window = result["window"]
    if not window.person_seen:
        print(f"warning: {path}: " + (
            "no person found; predicted on the whole image"
            if window.found_by == person.NOT_FOUND else
            "the model saw no person in the window it found; predicted on that window"),
              file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
