"""Which frames of a SURREAL clip count: the test protocol's one frame per clip
(`middle_frame`), the frames hgmt leaves out (`frame_problem`) and those the reference test
loaders cannot use (`reference_frame_problem`; docs/metrics.md says how each is counted).
"""

from __future__ import annotations

import numpy as np

from hgmt.sources import body, camera, reference_crop


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
    j = j[body.SMPL_TO_JOINT]
    if _unset(j):
        return "joints_unset"
    if joints3d is not None and _zero_3d(joints3d):
        return "joints3d_zero"
    inside = (j[:, 0] >= 0) & (j[:, 0] <= camera.IMAGE_WIDTH - 1) & (j[:, 1] >= 0) & (
        j[:, 1] <= camera.IMAGE_HEIGHT - 1)
    if 2 * int(inside.sum()) < len(j):
        return "person_outside"
    return None


def _unset(joints: np.ndarray) -> bool:
    """Whether the 16 used joints (16,2), 0-based, are all at 1-based (1, 239): the reference
    loaders' mark of joints that were never set."""
    return bool(np.all(np.asarray(joints, np.float64) + 1 == [1.0, 239.0]))


def _zero_3d(joints3d: np.ndarray) -> bool:
    """Whether the 16 used joints of (24,3) `joints3d` are all exactly zero: the reference
    loaders' mark of 3D joints that were never set."""
    return not np.any(np.asarray(joints3d)[body.SMPL_TO_JOINT])


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
    j = np.asarray(joints2d, np.float64)[body.SMPL_TO_JOINT]
    if _unset(j):
        return "joints_unset"
    if joints3d is not None and _zero_3d(joints3d):
        return "joints3d_zero"
    centre, _ = reference_crop.reference_box(j)
    if (centre < 1).any() or centre[0] > camera.IMAGE_WIDTH or centre[1] > camera.IMAGE_HEIGHT:
        return "centre_outside"
    return None


def middle_frame(num_frames: int) -> int:
    """0-based index of the test-protocol frame ceil(T/2) (1-based) of a T-frame clip; a clip
    of no frames has none (`surreal.load_info` refuses its _info.mat)."""
    if num_frames < 1:
        raise ValueError(f"a clip of {num_frames} frames has no middle frame")
    return int(np.ceil(num_frames / 2)) - 1
