"""SURREAL's camera: the 320 x 240 frame, its intrinsics, and the map between the world frame
of an ``_info.mat`` (metres) and the camera frame and pixels (docs/surreal_format.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # hgmt.sources (SURREAL's files, the demo clips) does not import JAX
    from jax.typing import ArrayLike

IMAGE_WIDTH = 320
IMAGE_HEIGHT = 240
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
