"""SURREAL's files, camera and label maps: the one module that knows the format.

Everything here follows docs/surreal_format.md, which was checked against real SURREAL files.
Arrays are normalised to frame-major layouts in one place (``load_info``):
joints2d (T,24,2) pixels, joints3d (T,24,3) metres (world frame).

A clip on disk is ``<root>/cmu/<split>/run<r>/<seq>/<seq>_c<NNNN>`` plus ``.mp4``,
``_info.mat``, ``_depth.mat`` and ``_segm.mat``.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
from typing import TYPE_CHECKING

import numpy as np

from hgmt.sources import reference_crop

if TYPE_CHECKING:  # hgmt.sources (SURREAL's files, the demo clips) does not import JAX
    from jax.typing import ArrayLike

IMAGE_WIDTH = 320
IMAGE_HEIGHT = 240
DEPTH_BACKGROUND = 1e10  # value of background pixels in SURREAL's _depth.mat
# A depth above this many metres is background (SURREAL's code's threshold on its maps).
BACKGROUND_ABOVE_M = 1e3
SPLIT_DIRS = {"train": "train", "validation": "val", "test": "test"}

# --- Joints: 16 MPII-order joints taken from the 24 SMPL joints (0-based SMPL index).
JOINT_NAMES = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis", "thorax",
    "upper_neck", "head_top", "r_wrist", "r_elbow", "r_shoulder", "l_shoulder",
    "l_elbow", "l_wrist",
)  # fmt: skip
SMPL_TO_JOINT = np.array([7, 4, 1, 2, 5, 8, 0, 6, 12, 15, 20, 18, 16, 17, 19, 21], np.int32)
PELVIS = JOINT_NAMES.index("pelvis")
HEAD_TOP = JOINT_NAMES.index("head_top")
UPPER_NECK = JOINT_NAMES.index("upper_neck")
# Skeleton edges (pairs of indices into JOINT_NAMES) for drawing.
SKELETON = (
    (0, 1), (1, 2), (2, 6), (3, 6), (3, 4), (4, 5), (6, 7), (7, 8), (8, 9),
    (7, 12), (12, 11), (11, 10), (7, 13), (13, 14), (14, 15),
)  # fmt: skip


def _flip_permutation(names: tuple[str, ...]) -> np.ndarray:
    """Index permutation swapping every ``r_*`` name with its ``l_*`` twin."""
    def twin(name: str) -> str:
        if name.startswith("r_"):
            return "l_" + name[2:]
        if name.startswith("l_"):
            return "r_" + name[2:]
        return name
    return np.array([names.index(twin(n)) for n in names], np.int32)


JOINT_FLIP = _flip_permutation(JOINT_NAMES)

# --- Body parts: 14 foreground classes (+ background 0) from the 24 SMPL segments.
# Named by the person's own side, like the joints. SURREAL's renders swap SMPL's left and right
# (gulvarol/surreal datageneration/misc/smpl_relations/smpl_relations.py: "note that left/right
# are swapped"): the segment SMPL calls "rightArm" (raw 18) covers the rendered person's *left*
# upper arm, just as SMPL joint 20 (0-based; "L_Wrist") is the person's right wrist (r_wrist above).
# So class 3 (raw 18, SMPL rightArm) is l_upper_arm and r_wrist lies on class 8 (r_hand).
# See docs/surreal_format.md.
PART_NAMES = (
    "head", "torso", "l_upper_arm", "l_forearm", "l_hand", "r_upper_arm", "r_forearm",
    "r_hand", "l_upper_leg", "l_lower_leg", "l_foot", "r_upper_leg", "r_lower_leg", "r_foot",
)  # fmt: skip
# The names of the part classes: class c is PART_CLASS_NAMES[c], 0 the background.
PART_CLASS_NAMES = ("background", *PART_NAMES)
NUM_PARTS = len(PART_CLASS_NAMES)  # with background
NUM_SMPL_SEGMENTS = 24
# SURREAL's segment names, raw value 1..24 (SMPL's, as in the released _segm.mat; index 0 is
# background). Raw value v is the region of SMPL joint v - 1.
SMPL_SEGMENT_NAMES = (
    "background", "hips", "leftUpLeg", "rightUpLeg", "spine", "leftLeg", "rightLeg", "spine1",
    "leftFoot", "rightFoot", "spine2", "leftToeBase", "rightToeBase", "neck", "leftShoulder",
    "rightShoulder", "head", "leftArm", "rightArm", "leftForeArm", "rightForeArm", "leftHand",
    "rightHand", "leftHandIndex1", "rightHandIndex1",
)  # fmt: skip
# What l_ and r_ of JOINT_NAMES and PART_NAMES mean, for a consumer of the names (an export's
# hgmt.json), who cannot tell from a name alone that the swap above was undone.
SIDES = ("l_ and r_ are the person's own left and right (the rendered person's anatomical "
         "side, not the image's; SURREAL's renders swap SMPL's left and right, and hgmt's "
         "names follow the person: docs/surreal_format.md, Left and right)")
# Raw 1-based SMPL segment value -> part class; index 0 (background) -> 0. SMPL "left*"
# segments map to r_* classes and "right*" to l_* (the swap above).
SEGM_TO_PART = np.array(
    [0, 2, 12, 9, 2, 13, 10, 2, 14, 11, 2, 14, 11, 2, 2, 2, 1, 6, 3, 7, 4, 8, 5, 8, 5], np.uint8
)
# Permutation of the 15 classes (background first) under a horizontal flip.
PART_FLIP = np.concatenate([[0], 1 + _flip_permutation(PART_NAMES)]).astype(np.int32)


class FormatError(ValueError):
    """A SURREAL file is missing, truncated or has the wrong content. Names the file."""

    def __init__(self, path: str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


# --- Camera ----------------------------------------------------------------------------------
INTRINSICS = np.array([[600.0, 0.0, 160.0], [0.0, 600.0, 120.0], [0.0, 0.0, 1.0]])
_R_W2B = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [-1.0, 0.0, 0.0]]).T
_R_B2CV = np.diag([1.0, -1.0, -1.0])


def camera_matrices(cam_loc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """SURREAL's camera for a clip: intrinsics K (3,3) and extrinsics RT (3,4), world -> camera.

    The camera frame is OpenCV's: x right, y down, z forward, in metres.
    """
    cam_loc = np.asarray(cam_loc, np.float64).reshape(3)
    t = -_R_W2B @ cam_loc
    rt = np.concatenate([_R_B2CV @ _R_W2B, (_R_B2CV @ t)[:, None]], axis=1)
    return INTRINSICS.copy(), rt


def world_to_camera(points_world: np.ndarray, cam_loc: np.ndarray) -> np.ndarray:
    """(...,3) world metres -> (...,3) camera-frame metres (x right, y down, z depth)."""
    _, rt = camera_matrices(cam_loc)
    p = np.asarray(points_world, np.float64)
    return p @ rt[:, :3].T + rt[:, 3]


def camera_depth(points_world: np.ndarray, cam_loc: np.ndarray) -> np.ndarray:
    """(...,3) world points -> (...) camera-frame depth in metres."""
    return world_to_camera(points_world, cam_loc)[..., 2]


def project(points_world: np.ndarray, cam_loc: np.ndarray) -> np.ndarray:
    """(...,3) world points in metres -> (...,2) pixel coordinates (u right, v down)."""
    return project_camera(world_to_camera(points_world, cam_loc))


def project_camera(points_cam: np.ndarray) -> np.ndarray:
    """(...,3) camera-frame points -> (...,2) pixels with SURREAL's intrinsics."""
    p = np.asarray(points_cam, np.float64) @ INTRINSICS.T
    return p[..., :2] / p[..., 2:3]


_PIXEL_TO_RAY = np.linalg.inv(INTRINSICS).T  # rows: the ray's change per u, per v, and at 0


def backproject(uv: ArrayLike, depth: ArrayLike) -> ArrayLike:
    """(...,2) pixels and (...) camera depth in metres -> (...,3) camera-frame points. NumPy or
    JAX arrays (only elementwise products and sums, so it also runs inside a jitted step, and
    exactly in float32 on any backend, where a matmul may round its inputs to TF32 or
    bfloat16)."""
    # K^-1 [u, v, 1] = (x/z, y/z, 1), written out
    ray = uv[..., :1] * _PIXEL_TO_RAY[0] + uv[..., 1:2] * _PIXEL_TO_RAY[1] + _PIXEL_TO_RAY[2]
    return ray * depth[..., None]


def ray_lengths() -> np.ndarray:
    """(240,320) per pixel (u, v) the length of K^-1 [u, v, 1], the ray reaching camera depth
    z = 1: a point seen at the pixel with camera depth z lies at distance z * ray length from
    the camera centre, which is what a ``_depth.mat`` holds (docs/surreal_format.md)."""
    v, u = np.mgrid[0:IMAGE_HEIGHT, 0:IMAGE_WIDTH]
    return np.linalg.norm(backproject(np.stack([u, v], -1).astype(np.float64),
                                      np.ones(u.shape)), axis=-1)


# --- Files ------------------------------------------------------------------------------------
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
        if a.shape != (IMAGE_HEIGHT, IMAGE_WIDTH):
            raise FormatError(path, f"'{prefix}{i}' has shape {a.shape}, expected "
                                    f"({IMAGE_HEIGHT}, {IMAGE_WIDTH})")
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
    if segm.max(initial=0) > NUM_SMPL_SEGMENTS:
        raise FormatError(path, f"segment value {segm.max()} > {NUM_SMPL_SEGMENTS}")
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
    if video.shape[1:] != (IMAGE_HEIGHT, IMAGE_WIDTH, 3):
        raise FormatError(path, f"frames are {video.shape[1:3]}, expected "
                                f"({IMAGE_HEIGHT}, {IMAGE_WIDTH})")
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
            f"SURREAL root {root} {state}: give the folder that contains cmu/ (cmu/train, "
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


def frame_problem(joints2d: np.ndarray, joints3d: np.ndarray | None = None) -> str | None:
    """Why a frame is unusable, or None. joints2d: (24,2) SMPL joints in pixels; joints3d:
    (24,3) in metres, when known.

    Unusable: all 2D joints at zero ("joints_zero"), the reference loaders' unset 2D joints
    or all-zero 3D joints ("joints_unset", "joints3d_zero", `reference_frame_problem`), or the
    person mostly outside the 320x240 image: fewer than half of the 16 used joints inside it
    ("person_outside"). A person cut by the border is kept: the crop pads, and SURREAL has
    many such frames.
    """
    j = np.asarray(joints2d)
    if not np.any(j):
        return "joints_zero"
    j = j[SMPL_TO_JOINT]
    if _unset(j):
        return "joints_unset"
    if joints3d is not None and _zero_3d(joints3d):
        return "joints3d_zero"
    inside = (j[:, 0] >= 0) & (j[:, 0] <= IMAGE_WIDTH - 1) & (j[:, 1] >= 0) & (
        j[:, 1] <= IMAGE_HEIGHT - 1)
    if 2 * int(inside.sum()) < len(j):
        return "person_outside"
    return None


def reference_box(joints2d: np.ndarray) -> tuple[np.ndarray, float]:
    """(16,2) joints in SURREAL's 0-based pixels -> (centre (2,), side) of BodyNet's and
    SURREAL's crop window in the same pixels, about 0.84 of hgmt's
    (`hgmt.data.cropping.person_box`).

    Their loaders add 1 to the joints (surreal training/loader_SURREAL.lua:47, bodynet
    training/util/dataloader/SURREAL.lua:50); `getTightBox` (surreal training/util.lua:128-147,
    bodynet training/util/img.lua:362-381) widens the box of the 1-based joints by 0.25 w left
    and right, 0.35 h top and 0.25 h bottom, w and h counted inclusively (max - min + 1)
    before and after; `getCenter` (util.lua:149-155, img.lua:383-389) is the widened box's
    (x_min + w/2, y_min + h/2) and `getScale` (util.lua:157-160, img.lua:392-396) max(h, w) /
    240, which `getTransform` (surreal training/img.lua:20-29, bodynet img.lua:18-27) makes a
    window of 200 x scale pixels around the centre. `transform` (surreal img.lua:56-58,
    bodynet img.lua:54-56) compares the centre with the joints minus 1, so in 0-based pixels
    the window is centred on the 1-based box's centre."""
    centre, scale = reference_centre_scale(joints2d)
    return centre, reference_crop.WINDOW_PER_SCALE_PX * scale


def reference_centre_scale(joints2d: np.ndarray) -> tuple[np.ndarray, float]:
    """(16,2) joints in SURREAL's 0-based pixels -> the references' own `getCenter` (2,) and
    `getScale` values (`reference_box`: the window is 200 x scale pixels around the centre),
    as their label crop takes them (`hgmt.sources.reference_crop.label_crop`)."""
    # + 1 in float32 (loader_SURREAL.lua:47: the _info.mat's float32 joints), the box in double
    # (Lua numbers, util.lua:128-160).
    j = (np.asarray(joints2d, np.float32) + np.float32(1)).astype(np.float64)
    margin = reference_crop.BOX_MARGINS
    lo, hi = j.min(0), j.max(0)
    size = hi - lo + 1
    start = lo - np.array([margin["left"], margin["top"]]) * size
    end = hi + np.array([margin["right"], margin["bottom"]]) * size
    full = end - start + 1
    divisor = reference_crop.SCALE_DIVISOR_PX
    return start + full / 2, float(max(full[1] / divisor, full[0] / divisor))


def _unset(joints: np.ndarray) -> bool:
    """Whether the 16 used joints (16,2), 0-based, are all at 1-based (1, 239): the reference
    loaders' mark of joints that were never set."""
    return bool(np.all(np.asarray(joints, np.float64) + 1 == [1.0, 239.0]))


def _zero_3d(joints3d: np.ndarray) -> bool:
    """Whether the 16 used joints of (24,3) `joints3d` are all exactly zero: the reference
    loaders' mark of 3D joints that were never set."""
    return not np.any(np.asarray(joints3d)[SMPL_TO_JOINT])


def reference_frame_problem(joints2d: np.ndarray,
                            joints3d: np.ndarray | None = None) -> str | None:
    """Why the reference test loaders cannot use a frame, or None. joints2d: (24,2) SMPL
    joints in pixels; joints3d: (24,3) in metres, when known. "joints_unset": each of the 16
    used joints at 1-based (1, 239), the loaders' check for joints that were never set (surreal
    training/loader_SURREAL.lua:49-52, bodynet training/util/dataloader/SURREAL.lua:52-55);
    "joints3d_zero": the 16 used 3D joints all zero (loader_SURREAL.lua:66-69, read by
    BodyNet's loader and SURREAL's for its depth model, not for its segmentation model);
    "centre_outside": `getCenter` outside the 1-based image [1, 320] x [1, 240] (surreal
    training/donkey.lua:118-119, bodynet training/donkey.lua:264). Such a frame gets a zero
    input and all-background labels in their test loops and still counts (docs/metrics.md)."""
    j = np.asarray(joints2d, np.float64)[SMPL_TO_JOINT]
    if _unset(j):
        return "joints_unset"
    if joints3d is not None and _zero_3d(joints3d):
        return "joints3d_zero"
    centre, _ = reference_box(j)
    if (centre < 1).any() or centre[0] > IMAGE_WIDTH or centre[1] > IMAGE_HEIGHT:
        return "centre_outside"
    return None


def middle_frame(num_frames: int) -> int:
    """0-based index of the test-protocol frame ceil(T/2) (1-based) of a T-frame clip; a clip
    of no frames has none (`load_info` refuses its _info.mat)."""
    if num_frames < 1:
        raise ValueError(f"a clip of {num_frames} frames has no middle frame")
    return int(np.ceil(num_frames / 2)) - 1
