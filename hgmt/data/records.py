"""SURREAL clips -> the per-frame records the TFDS builder stores (data_builders/surreal).

It lives in the installed package, not next to the builder, because `tfds build`
given the builder's folder imports it under a name Beam's worker processes cannot import:
everything a Beam worker runs is here, referenced by an importable module path.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import cv2
import numpy as np

from hgmt.data import record_reads
from hgmt.sources import body, camera, frame_selection, surreal
from hgmt.tasks import depth

if TYPE_CHECKING:  # Beam is imported by the Beam path alone
    import apache_beam as beam


@dataclasses.dataclass(frozen=True)
class FrameSelection:
    """Which frames of a clip become examples: every `every`-th frame (0, k, 2k, ...) and
    always the middle frame of the test protocol, ceil(T/2) of the T frames of the clip's
    _info.mat (`clip_middle`); `middle_only` keeps just that.
    `keep_unusable` (the test split): an unusable frame or clip is kept as a placeholder
    record flagged with why (`unusable_example`), as the reference test sets keep it.
    `lossless_middle` (the test split): the middle frame, the one the reference test loaders
    read, is stored as PNG, the decoded video frame itself, where the others are JPEG."""

    every: int = 1
    middle_only: bool = False
    keep_unusable: bool = False
    lossless_middle: bool = False

    def keeps(self, t: int, middle: int) -> bool:
        """Whether frame t (0-based) of a clip whose middle frame is `middle` is kept."""
        return t == middle if self.middle_only else (t == middle or t % self.every == 0)


def clip_middle(clip: surreal.Clip) -> int:
    """The clip's test-protocol frame, 0-based: ceil(T/2) of the T frames of its _info.mat
    (its zrot values), as the reference loaders count them (gulvarol/surreal
    training/loader_SURREAL.lua:9-16 getDuration, training/donkey.lua:67,75; bodynet
    training/donkey.lua:136,140), not of the frames all four files share: the two differ when
    the files disagree on frame count, and the frame may then lie beyond the shared ones."""
    return frame_selection.middle_frame(clip.frame_counts["info"])


# The frames each of the builder's configs stores (data_builders/surreal `BUILDER_CONFIGS`):
# a build's config name, kept in its DatasetInfo, says which frames it holds.
BUILD_FRAMES = {"middle": FrameSelection(middle_only=True), "every10": FrameSelection(every=10),
                "all": FrameSelection(every=1)}


def check_dataset_name(dataset: str, given: str | None = None) -> None:
    """ValueError naming the field and the fix for a config's `dataset` that names the SURREAL
    builder with a config it lacks ('surreal/every4'), or one of its configs without it
    ('every10'): TFDS would report either as not built, with a build command that fails.
    'surreal/<config>[:<version>]' passes, and so does another builder's name. `given` is the
    setting as the message names it (default "config.dataset='<dataset>'"; a command's flag as
    typed, "--config.dataset=<dataset>")."""
    given = f"config.dataset={dataset!r}" if given is None else given
    name, slash, config = dataset.partition(":")[0].partition("/")
    configs = ", ".join(BUILD_FRAMES)
    if not name.strip():
        raise ValueError(f"{given}: names no dataset; give "
                         f"surreal/<config>, e.g. surreal/every10 (configs: {configs})")
    if name == "surreal" and config not in BUILD_FRAMES:
        raise ValueError(f"{given}: the SURREAL builder's configs are "
                         f"{configs}; give surreal/<config>, e.g. surreal/every10")
    if not slash and name in BUILD_FRAMES:
        raise ValueError(f"{given}: give surreal/{name} (the SURREAL "
                         f"builder's config {name})")


def png(image: np.ndarray) -> bytes:
    """Lossless PNG at zlib level 1: faster to write than TFDS's default encoder (level 6)
    for a few per cent more bytes on SURREAL-like frames (docs/performance.md, "The SURREAL
    builder, on demo data"). (H,W) or (H,W,3) BGR, uint8 or uint16."""
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise ValueError(f"PNG encoding failed for an array of shape {image.shape}")
    return encoded.tobytes()


# JPEG quality of the stored frames: the frames come from H.264 (4:2:0, lossy), and at 90 the
# re-encoding error is well below the video codec's own (tests/test_builder.py measures both).
# The test split's middle frames, which the reference protocols evaluate, are PNG instead
# (`FrameSelection.lossless_middle`): the references read the decoded video frame.
JPEG_QUALITY = 90


def jpeg(rgb: np.ndarray) -> bytes:
    """(H,W,3) RGB uint8 -> JPEG bytes at JPEG_QUALITY (labels stay lossless PNG)."""
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an array of shape {rgb.shape}")
    return encoded.tobytes()


def depth_classes(clip: surreal.Clip, t: int) -> np.ndarray:
    """(H,W) uint8 depth classes of frame t from the float32 depth of the clip's _depth.mat,
    exactly as SURREAL's loader makes them (`hgmt.tasks.depth.classes`), with its dPelvis =
    camLoc_x - pelvis_x in double (gulvarol/surreal training/donkey.lua:94)."""
    pelvis = clip.info.joints3d[t, body.SMPL_TO_JOINT[body.PELVIS]]
    return depth.classes(clip.depth[t], float(clip.info.cam_loc[0]) - float(pelvis[0]))


def unusable_example(cid: surreal.ClipId, t: int, num_frames: int, reason: str,
                     info_frames: int | None = None) -> dict:
    """The placeholder record of a frame the reference test sets keep but cannot use (its
    files missing or unreadable, its joints unset, the person's centre outside the image,
    `frame_selection.reference_frame_problem`, the middle frame beyond the frames the files share):
    a black frame, background labels, zero annotations, and `unusable` = the reason. Training
    never reads it; the reference protocols evaluate it as their code does (zero input, all
    background), hgmt's protocol leaves it out (docs/metrics.md)."""
    h, w = camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH
    f32 = np.float32
    return {"image": jpeg(np.zeros((h, w, 3), np.uint8)), "segm": png(np.zeros((h, w), np.uint8)),
            "depth": png(np.zeros((h, w), np.uint16)),
            "depth_class": png(np.zeros((h, w), np.uint8)),
            "joints2d": np.zeros((24, 2), f32), "joints3d": np.zeros((24, 3), f32),
            "cam_loc": np.zeros(3, f32), "zrot": f32(0), "gender": np.int32(0),
            "pose": np.zeros(72, f32), "shape": np.zeros(10, f32), "sequence": cid.sequence,
            "clip": cid.clip, "run": cid.run, "frame": np.int32(t),
            "num_frames": np.int32(num_frames),
            "info_frames": np.int32(num_frames if info_frames is None else info_frames),
            "unusable": reason}


def clip_examples(stem: str, frames: FrameSelection,
                  counts: collections.Counter) -> Iterator[tuple[str, dict]]:
    """(key, example) for the kept, usable frames of one clip; counts what it skips.

    A clip with a missing or unreadable file is skipped whole ("clip_<problem>"); a clip whose
    files disagree on frame count keeps their common prefix ("clip_frame_count_mismatch");
    frames with all joints at zero or the person outside the image are skipped one by one
    ("frame_<problem>", see `frame_selection.frame_problem`). With `frames.keep_unusable` (the test
    split) the clips are kept as flagged placeholders instead ("flagged_<problem>",
    `unusable_example`), and so are the frames the reference test loaders cannot use
    (`frame_selection.reference_frame_problem`, and the middle frame `clip_middle` when the
    _info.mat holds more frames than the others, "frame_missing"), the others being kept whole:
    the test split is the references' test set, and hgmt's protocol leaves out the frames
    `frame_selection.frame_problem` rejects when it evaluates (docs/metrics.md). The frame is
    JPEG bytes (PNG for the middle frame with `frames.lossless_middle`), the label maps PNG bytes:
    raw segments, depth in millimetres, and SURREAL's depth classes.
    """
    try:
        clip = surreal.load_clip(stem)
    except surreal.FormatError as e:
        reason = "clip_missing_file" if e.problem == "file is missing" else "clip_unreadable_file"
        if frames.keep_unusable:  # one flagged record, its frame 0 of 1 the clip's middle
            logging.warning("flagging clip %s unusable: %s", stem, e)
            counts[f"flagged_{reason}"] += 1
            cid = surreal.parse_stem(stem)
            yield f"{cid.run}/{cid.name}/0000", unusable_example(cid, 0, 1, reason)
            return
        logging.warning("skipping clip %s: %s", stem, e)
        counts[reason] += 1
        return
    counts["clips"] += 1
    if clip.mismatch:
        counts["clip_frame_count_mismatch"] += 1
    t_all, info_frames, middle = clip.num_frames, clip.frame_counts["info"], clip_middle(clip)
    cid = clip.id
    for t in range(t_all):
        if not frames.keeps(t, middle):
            continue
        problem = (frame_selection.reference_frame_problem if frames.keep_unusable else
                   frame_selection.frame_problem)(clip.info.joints2d[t], clip.info.joints3d[t])
        if problem is not None and frames.keep_unusable:
            logging.info("flagging %s frame %d unusable: %s", stem, t, problem)
            counts[f"flagged_frame_{problem}"] += 1
            yield f"{cid.run}/{cid.name}/{t:04d}", unusable_example(
                cid, t, t_all, f"frame_{problem}", info_frames)
            continue
        if problem is not None:
            logging.info("skipping %s frame %d: %s", stem, t, problem)
            counts[f"frame_{problem}"] += 1
            continue
        counts["examples"] += 1
        depth_mm = np.round(clip.depth[t] * 1000.0)
        yield f"{cid.run}/{cid.name}/{t:04d}", {
            "image": (png(clip.video[t][..., ::-1]) if frames.lossless_middle and t == middle
                      else jpeg(clip.video[t])),
            "segm": png(clip.segm[t]),
            "depth": png(np.clip(depth_mm, 0, 65535).astype(np.uint16)),
            "depth_class": png(depth_classes(clip, t)),
            "joints2d": clip.info.joints2d[t],
            "joints3d": clip.info.joints3d[t],
            "cam_loc": clip.info.cam_loc,
            "zrot": clip.info.zrot[t],
            "gender": np.int32(clip.info.gender[t]),
            "pose": clip.info.pose[t],
            "shape": clip.info.shape[t],
            "sequence": cid.sequence,
            "clip": cid.clip,
            "run": cid.run,
            "frame": np.int32(t),
            "num_frames": np.int32(t_all),
            "info_frames": np.int32(info_frames),
            "unusable": "",
        }
    if middle >= t_all:  # the _info.mat's middle frame is not in the other files
        logging.warning("%s: its middle frame %d (of the _info.mat's %d) is beyond the %d "
                        "frames its files share", stem, middle, info_frames, t_all)
        if frames.keep_unusable:
            counts["flagged_frame_missing"] += 1
            yield f"{cid.run}/{cid.name}/{middle:04d}", unusable_example(
                cid, middle, t_all, "frame_missing", info_frames)
        else:
            counts["frame_missing"] += 1


def python_examples(stems: list[str], frames: FrameSelection,
                    counts: collections.Counter,
                    split: str = "the split") -> Iterator[tuple[str, dict]]:
    """The plain Python path: the clips one after another. ValueError naming `split` and the
    reasons counted when none of its clips gives an example (TFDS's own error for an empty
    split names no reason)."""
    given = 0
    for stem in stems:
        for example in clip_examples(stem, frames, counts):
            given += 1
            yield example
    if not given:
        counted = ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
        raise ValueError(f"{split}: none of its {len(stems)} clips gave a usable frame "
                         f"(counted: {counted}); the warnings above name each clip's file "
                         f"and reason: mend them and build again")


def beam_clip_examples(stem: str, frames: FrameSelection,
                       ) -> Iterator[tuple[str, dict] | beam.pvalue.TaggedOutput]:
    """The Beam path's per-clip step: the clip's examples, then its skip counts (also as Beam
    counters, namespace `surreal`) on the tagged output `counts`."""
    import apache_beam as beam

    counts = collections.Counter()
    yield from clip_examples(stem, frames, counts)
    for reason, n in counts.items():
        beam.metrics.Metrics.counter("surreal", reason).inc(n)
    yield beam.pvalue.TaggedOutput("counts", dict(counts))


def write_counts(per_clip_counts: list[dict], path: str) -> None:
    """Sums per-clip counts and writes them as JSON to `path` (local or remote: epath)."""
    from etils import epath

    total = sum((collections.Counter(c) for c in per_clip_counts), collections.Counter())
    epath.Path(path).write_text(json.dumps(dict(total)))


def beam_examples(stems: list[str], frames: FrameSelection, counts_path: str) -> beam.PTransform:
    """The Beam path as a PTransform for TFDS: one clip per element, reshuffled so the workers
    share the clips; examples to TFDS, the summed skip counts to `counts_path`."""
    import apache_beam as beam

    @beam.ptransform_fn
    def build(pipeline: beam.pvalue.PBegin) -> beam.PCollection:
        out = (pipeline | "clips" >> beam.Create(stems) | "spread" >> beam.Reshuffle()
               | "examples" >> beam.FlatMap(beam_clip_examples, frames=frames)
               .with_outputs("counts", main="examples"))
        _ = (out.counts | "to_list" >> beam.combiners.ToList()
             | "write_counts" >> beam.Map(write_counts, path=counts_path))
        return out.examples

    return build()


# Image features of the built records, and how OpenCV reads each: RGB frame, 1-channel maps.
IMAGE_READ_FLAGS = {"image": cv2.IMREAD_COLOR_RGB, "segm": cv2.IMREAD_UNCHANGED,
                   "depth": cv2.IMREAD_UNCHANGED, "depth_class": cv2.IMREAD_UNCHANGED}
IMAGE_FEATURES = tuple(IMAGE_READ_FLAGS)


def decoded(example: dict, key: str) -> np.ndarray:
    """Image feature `key` of a record as an array: (H,W,3) uint8 RGB for "image", (H,W)
    for the label maps (uint8 segments, uint16 depth in mm), from bytes or a decoded array.
    DamagedRecord when the bytes are not an image, or when "segm" holds a value that is no
    SURREAL segment (above body.NUM_SMPL_SEGMENTS): the host's and the device's crops both
    decode here, so such a record is skipped and named on either, not trained on."""
    value = example[key]
    if isinstance(value, bytes | np.bytes_):
        try:  # OpenCV returns None for most bad bytes, raises on some (no bytes at all)
            array = cv2.imdecode(np.frombuffer(value, np.uint8), IMAGE_READ_FLAGS[key])
        except cv2.error:
            array = None
        if array is None:
            raise record_reads.DamagedRecord(
                f"record feature {key!r} ({len(value)} bytes) is not a readable image: the "
                f"dataset is damaged; rebuild it with tfds build")
    else:
        array = np.asarray(value)
        array = array[..., 0] if key != "image" and array.ndim == 3 else array
    if key == "segm" and array.size and array.max() > body.NUM_SMPL_SEGMENTS:
        raise record_reads.DamagedRecord(
            f"record feature 'segm' holds segment value {int(array.max())}, above SURREAL's "
            f"0..{body.NUM_SMPL_SEGMENTS}: the dataset is damaged or was not built by "
            f"data_builders/surreal; rebuild it with tfds build")
    return array
