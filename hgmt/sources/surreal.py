"""SURREAL's files: where a split's clips are (`find_clips`), and the readers of a clip's four
files, which normalise MATLAB's arrays to frame-major layouts in one place (``load_info``):
joints2d (T,24,2) pixels, joints3d (T,24,3) metres (world frame).

Everything here follows docs/surreal_format.md, which was checked against real SURREAL files.
The body labels the files' joints and segments map to are `hgmt.sources.body`, the camera the
joints are seen by `hgmt.sources.camera`.

A clip on disk is ``<root>/cmu/<split>/run<r>/<seq>/<seq>_c<NNNN>`` plus ``.mp4``,
``_info.mat``, ``_depth.mat`` and ``_segm.mat``.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os

import numpy as np

from hgmt.sources import body, camera

DEPTH_BACKGROUND = 1e10  # value of background pixels in SURREAL's _depth.mat
# A depth above this many metres is background (SURREAL's code's threshold on its maps).
BACKGROUND_ABOVE_M = 1e3
SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}


class FormatError(ValueError):
    """A SURREAL file is missing, truncated or has the wrong content. Names the file."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- Readers: one of a clip's four files each -------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ClipInfo:
    """The annotations of one clip (``_info.mat``), frame-major."""

    joints2d: np.ndarray  # (T,24,2) float32 pixels
    joints3d: np.ndarray  # (T,24,3) float32 metres, world frame
    cam_loc: np.ndarray  # (3,) float32 metres, world frame
    zrot: np.ndarray  # (T,) float32 radians
    gender: np.ndarray  # (T,) uint8, 0 female, 1 male
    pose: np.ndarray  # (T,72) float32 SMPL axis-angle per joint, radians
    shape: np.ndarray  # (T,10) float32 SMPL betas
    sequence: str  # e.g. "01_01_c0001"

    @property
    def num_frames(self) -> int:
        return int(self.joints2d.shape[0])


def _loadmat(path: str) -> dict:
    import scipy.io

    if not os.path.exists(path):
        raise FormatError(path, "file is missing")
    try:
        return scipy.io.loadmat(path)
    except Exception as e:  # scipy raises many types for truncated/corrupt files
        raise FormatError(path, f"not a readable MATLAB file ({type(e).__name__}: {e})") from e


def _field(mat: dict, path: str, key: str) -> np.ndarray:
    if key not in mat:
        raise FormatError(path, f"has no '{key}' variable")
    return np.asarray(mat[key])


def _frames_last(a: np.ndarray, path: str, key: str, lead: tuple[int, ...]) -> np.ndarray:
    """MATLAB (lead..., T) -> (T, lead...); restores T==1 when MATLAB dropped the last dim."""
    if a.shape == lead:
        a = a[..., None]
    if a.ndim != len(lead) + 1 or a.shape[:-1] != lead:
        raise FormatError(path, f"'{key}' has shape {a.shape}, expected {lead + ('T',)}")
    return np.moveaxis(a, -1, 0).astype(np.float32)


def _per_frame(a: np.ndarray, path: str, key: str, num_frames: int) -> np.ndarray:
    """(T,1), (1,T) or (T,) per-frame scalars -> (T,)."""
    flat = a.reshape(-1)
    if flat.size != num_frames:
        raise FormatError(path, f"'{key}' has {flat.size} values, expected one per frame "
                                f"({num_frames})")
    return flat


def load_info(path: str) -> ClipInfo:
    """Reads a ``_info.mat``; raises FormatError naming the file on any problem, one that
    holds no frames included."""
    mat = _loadmat(path)
    joints2d = _frames_last(_field(mat, path, "joints2D"), path, "joints2D", (2, 24))
    joints3d = _frames_last(_field(mat, path, "joints3D"), path, "joints3D", (3, 24))
    t = joints2d.shape[0]
    if joints3d.shape[0] != t:
        raise FormatError(path, f"joints2D has {t} frames but joints3D {joints3d.shape[0]}")
    if t == 0:  # no middle frame: the reference loaders fail on it as on a missing file
        raise FormatError(path, "holds no frames (joints2D and joints3D are empty)")
    cam_loc = _field(mat, path, "camLoc").astype(np.float32).reshape(-1)
    if cam_loc.size != 3:
        raise FormatError(path, f"'camLoc' has {cam_loc.size} values, expected 3")
    pose = _field(mat, path, "pose").astype(np.float32)
    shape = _field(mat, path, "shape").astype(np.float32)
    pose = pose.reshape(72, -1).T if pose.size == 72 * t else None
    shape = shape.reshape(10, -1).T if shape.size == 10 * t else None
    if pose is None or shape is None:
        raise FormatError(path, f"'pose'/'shape' do not hold 72/10 values for each of {t} frames")
    sequence = _field(mat, path, "sequence").reshape(-1)
    return ClipInfo(
        joints2d=np.transpose(joints2d, (0, 2, 1)).copy(),
        joints3d=np.transpose(joints3d, (0, 2, 1)).copy(),
        cam_loc=cam_loc,
        zrot=_per_frame(_field(mat, path, "zrot"), path, "zrot", t).astype(np.float32),
        gender=_per_frame(_field(mat, path, "gender"), path, "gender", t).astype(np.uint8),
        pose=pose,
        shape=shape,
        sequence=str(sequence[0]) if sequence.size else "",
    )


def _load_frame_stack(path: str, prefix: str, dtype: np.dtype) -> np.ndarray:
    mat = _loadmat(path)
    keys = [k for k in mat if k.startswith(prefix)]
    try:
        indices = sorted(int(k[len(prefix):]) for k in keys)
    except ValueError as e:
        raise FormatError(path, f"unexpected variable names {sorted(keys)[:3]}...") from e
    if not indices:
        raise FormatError(path, f"has no '{prefix}<t>' variables")
    if indices != list(range(1, len(indices) + 1)):
        raise FormatError(path, f"'{prefix}<t>' variables are not numbered 1..T")
    frames = []
    for i in indices:
        a = np.asarray(mat[f"{prefix}{i}"])
        if a.shape != (camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH):
            raise FormatError(path, f"'{prefix}{i}' has shape {a.shape}, expected "
                                    f"({camera.IMAGE_HEIGHT}, {camera.IMAGE_WIDTH})")
        frames.append(a.astype(dtype, copy=False))
    return np.stack(frames)


def load_depth(path: str) -> np.ndarray:
    """Reads a ``_depth.mat`` -> (T,240,320) float32 distance from the camera centre in metres
    (not the planar depth z: docs/surreal_format.md), background 0.0."""
    depth = _load_frame_stack(path, "depth_", np.float32)
    depth[depth > BACKGROUND_ABOVE_M] = 0.0
    return depth


def load_segm(path: str) -> np.ndarray:
    """Reads a ``_segm.mat`` -> (T,240,320) uint8 raw SMPL segments 0..24 (0 background)."""
    segm = _load_frame_stack(path, "segm_", np.uint8)
    if segm.max(initial=0) > body.NUM_SMPL_SEGMENTS:
        raise FormatError(path, f"segment value {segm.max()} > {body.NUM_SMPL_SEGMENTS}")
    return segm


def read_video(path: str) -> np.ndarray:
    """Decodes an mp4 (H.264 in real SURREAL) -> (T,240,320,3) uint8 RGB.

    Frames decoded before a corrupt packet are kept only if decoding finishes cleanly; any
    decoder error raises FormatError naming the file.
    """
    import av

    if not os.path.exists(path):
        raise FormatError(path, "file is missing")
    frames = []
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise FormatError(path, "has no video stream")
            for frame in container.decode(video=0):
                frames.append(frame.to_ndarray(format="rgb24"))
    except FormatError:
        raise
    except Exception as e:  # av raises InvalidDataError, EOFError, ... on broken files
        raise FormatError(path, f"cannot be decoded ({type(e).__name__}: {e})") from e
    if not frames:
        raise FormatError(path, "holds no decodable video frames")
    video = np.stack(frames)
    if video.shape[1:] != (camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH, 3):
        raise FormatError(path, f"frames are {video.shape[1:3]}, expected "
                                f"({camera.IMAGE_HEIGHT}, {camera.IMAGE_WIDTH})")
    return video


# --- Clips ------------------------------------------------------------------------------------
CLIP_SUFFIXES = {"video": ".mp4", "info": "_info.mat", "depth": "_depth.mat", "segm": "_segm.mat"}


def clip_paths(stem: str) -> dict[str, str]:
    """``.../01_01/01_01_c0001`` -> paths of its four files, keyed video/info/depth/segm."""
    return {k: stem + s for k, s in CLIP_SUFFIXES.items()}


@dataclasses.dataclass(frozen=True)
class ClipId:
    """Where a clip comes from: split dir (train/val/test), run, sequence and clip name."""

    split: str
    run: str  # e.g. "run0"
    sequence: str  # e.g. "01_01"
    clip: str  # e.g. "c0001"

    @property
    def name(self) -> str:
        return f"{self.sequence}_{self.clip}"


def parse_stem(stem: str) -> ClipId:
    """``<root>/cmu/train/run0/01_01/01_01_c0001`` -> ClipId(train, run0, 01_01, c0001)."""
    parts = os.path.normpath(stem).split(os.sep)
    if len(parts) < 4:
        raise ValueError(f"{stem}: not a SURREAL clip path <split>/run<r>/<seq>/<seq>_c<NNNN>")
    split, run, seq, name = parts[-4:]
    prefix = seq + "_"
    if not name.startswith(prefix) or not name[len(prefix):].startswith("c"):
        raise ValueError(f"{stem}: clip name {name!r} does not match sequence {seq!r}")
    return ClipId(split=split, run=run, sequence=seq, clip=name[len(prefix):])


def find_clips(root: str, split: str) -> list[str]:
    """Sorted clip stems of ``<root>/cmu/<split dir>/run*/<seq>/`` (split: train/validation/test
    or the directory names train/val/test). A clip is listed if any of its four files exists;
    a split folder that is missing holds none. `root` is a local or mounted folder: glob lists
    no object store (gs://...). A `root` without cmu/ (not there, or not SURREAL's folder) is
    a FileNotFoundError naming it and the fix, not an empty list."""
    if not os.path.isdir(os.path.join(root, "cmu")):
        state = "holds no cmu/ folder" if os.path.isdir(root) else "is not a folder here"
        raise FileNotFoundError(
            f"SURREAL root {root} {state}; give the folder that contains cmu/ (cmu/train, "
            f"cmu/val, cmu/test; docs/surreal_format.md), on a local or mounted file system")
    split_dir = SPLIT_DIRS.get(split, split)
    base = os.path.join(root, "cmu", split_dir)
    stems = set()
    for suffix in CLIP_SUFFIXES.values():
        for path in glob.glob(os.path.join(base, "run*", "*", "*_c*" + suffix)):
            stems.add(path[: -len(suffix)])
    return sorted(stems)


@dataclasses.dataclass(frozen=True)
class Clip:
    """All four files of a clip, cut to the frame count they share."""

    id: ClipId
    info: ClipInfo
    video: np.ndarray  # (T,240,320,3) uint8 RGB
    depth: np.ndarray  # (T,240,320) float32 metres, 0 on background
    segm: np.ndarray  # (T,240,320) uint8 raw SMPL segments
    frame_counts: dict[str, int]  # what each file held before cutting

    @property
    def num_frames(self) -> int:
        return int(self.video.shape[0])

    @property
    def mismatch(self) -> bool:
        """Whether the clip's files held different numbers of frames (`frame_counts`)."""
        return len(set(self.frame_counts.values())) > 1


def _cut_info(info: ClipInfo, t: int) -> ClipInfo:
    return dataclasses.replace(
        info, joints2d=info.joints2d[:t], joints3d=info.joints3d[:t], zrot=info.zrot[:t],
        gender=info.gender[:t], pose=info.pose[:t], shape=info.shape[:t])


def load_clip(stem: str) -> Clip:
    """Loads a clip's four files and keeps their common frame prefix.

    A frame-count mismatch is logged (and recorded in ``Clip.frame_counts``); a missing or
    unreadable file raises FormatError naming it.
    """
    paths = clip_paths(stem)
    info = load_info(paths["info"])
    video = read_video(paths["video"])
    depth = load_depth(paths["depth"])
    segm = load_segm(paths["segm"])
    counts = {"video": len(video), "info": info.num_frames, "depth": len(depth),
              "segm": len(segm)}
    t = min(counts.values())
    if len(set(counts.values())) > 1:
        logging.warning("%s: frame counts disagree %s; using the first %d", stem, counts, t)
    return Clip(id=parse_stem(stem), info=_cut_info(info, t), video=video[:t], depth=depth[:t],
                segm=segm[:t], frame_counts=counts)
