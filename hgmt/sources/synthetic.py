"""SURREAL-format demo data: procedurally animated humanoids rendered into SURREAL's files.

Real SURREAL cannot be downloaded here (and its licence forbids redistribution), so everything
downstream is developed on clips written by this module in SURREAL's exact layout and formats:

    python -m hgmt.sources.synthetic --out_dir=DIR --clips_per_split=4 --frames_per_clip=30 \\
        --seed=0

writes ``DIR/cmu/{train,val,test}/run0/<seq>/<seq>_c<NNNN>`` + ``.mp4`` (H.264),
``_info.mat``, ``_depth.mat`` and ``_segm.mat``, into a DIR whose ``cmu/{train,val,test}``
hold nothing yet (`ClipsExist` otherwise). DIR is the tree, SURREAL's root (what ``tfds build
--manual_dir`` takes): the command refuses a DIR named ``cmu``, whose clips would go into
``cmu/cmu``. As in SURREAL, whose val clips are all test clips
(docs/surreal_format.md), ``val`` holds copies of test clips: here of every one.

The body is the 24-joint SMPL skeleton with random proportions, animated with smooth random
joint angles (arms and legs swing, knees and elbows bend, so limbs cross the body and occlude
it). Each joint drives one body region (a capsule) whose SURREAL segment value is the joint
index + 1; capsules are ray-cast analytically with a depth buffer, which gives the segment map,
the metric distance from the camera centre (what SURREAL's depth maps hold, Cycles' Z pass;
docs/surreal_format.md) and a shaded, textured RGB frame over a random background. World axes and
camera follow SURREAL (world y points down, the camera looks along -x from ``camLoc``), so
``hgmt.sources.camera.project(joints3D, camLoc)`` reproduces ``joints2D`` as on real files.

The ``_info.mat`` has SURREAL's keys, dtypes and shapes, but some of its values are this
generator's own: ``camDist`` is the distance from ``camLoc`` to the first frame's pelvis, where
SURREAL's is the camera distance it drew (about the pelvis's depth + 1 m; gulvarol/surreal
datageneration/main_part1.py); ``zrot`` is the body's yaw (0: facing the camera) and ``pose``
the joints' axis-angle rotations in this skeleton's body frame, not SURREAL's root rotation and
SMPL pose; ``shape`` holds the skeleton's height and limb scales (then 5 random numbers) and
``light`` the light's direction and ambient term (then zeros). hgmt copies ``zrot``, ``pose``
and ``shape`` into the built records and reads none of these values for a label, loss or
metric; ``camDist`` and ``light`` it does not read.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import multiprocessing
import os
import shutil
import sys
import time

import numpy as np
import scipy.io

from hgmt import cores, disk_space
from hgmt.sources import camera, surreal

# The version of what the generator writes: demo data of an older one is written again
# (`hgmt.data.demo`). 2: the depth maps hold the distance from the camera centre, as SURREAL's
# (1 held the planar camera depth z). 3: val holds copies of the test clips, as SURREAL's val
# holds test clips (2 wrote val clips of its own; train and test are 2's, byte for byte).
FORMAT_VERSION = 3

# SMPL kinematic tree and rest offsets (metres) in a body frame: x the side SMPL calls left
# (rendered as the person's right: SURREAL's world-to-camera map is a mirror, which is how
# its renders swap SMPL's sides; docs/surreal_format.md), y up, z forward; arms in a T-pose
# along +-x.
PARENTS = (-1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19, 20, 21)
REST_OFFSETS = np.array([
    [0, 0, 0], [0.09, -0.08, 0], [-0.09, -0.08, 0], [0, 0.11, -0.01],
    [0, -0.40, 0], [0, -0.40, 0], [0, 0.14, 0.01], [0, -0.42, -0.02],
    [0, -0.42, -0.02], [0, 0.06, 0.01], [0, -0.06, 0.12], [0, -0.06, 0.12],
    [0, 0.22, -0.02], [0.07, 0.15, -0.01], [-0.07, 0.15, -0.01], [0, 0.09, 0.03],
    [0.11, 0.03, 0], [-0.11, 0.03, 0], [0.26, 0, 0], [-0.26, 0, 0],
    [0.25, 0, 0], [-0.25, 0, 0], [0.08, 0, 0], [-0.08, 0, 0],
], np.float64)  # fmt: skip
# Body region of each joint: capsule from the joint to `end` (a joint index, or -1 with an
# offset in the joint's frame), with a radius in metres.
CAPSULES = (
    # (joint, end joint or -1, end offset, radius)
    (0, 3, None, 0.12), (1, 4, None, 0.08), (2, 5, None, 0.08), (3, 6, None, 0.12),
    (4, 7, None, 0.055), (5, 8, None, 0.055), (6, 9, None, 0.13), (7, 10, None, 0.045),
    (8, 11, None, 0.045), (9, 12, None, 0.12), (10, -1, (0, 0, 0.07), 0.035),
    (11, -1, (0, 0, 0.07), 0.035), (12, 15, None, 0.05), (13, 16, None, 0.06),
    (14, 17, None, 0.06), (15, -1, (0, 0.13, 0.01), 0.095), (16, 18, None, 0.05),
    (17, 19, None, 0.05), (18, 20, None, 0.04), (19, 21, None, 0.04), (20, 22, None, 0.035),
    (21, 23, None, 0.035), (22, -1, (0.08, 0, 0), 0.03), (23, -1, (-0.08, 0, 0), 0.03),
)  # fmt: skip
# Smoothly animated joint angles: (joint, axis, centre, amplitude) in radians, body frame.
ANGLES = (
    (1, 0, -0.2, 0.6), (2, 0, -0.2, 0.6), (1, 2, 0.05, 0.15), (2, 2, -0.05, 0.15),
    (4, 0, 0.6, 0.6), (5, 0, 0.6, 0.6), (3, 0, 0.05, 0.15), (6, 1, 0.0, 0.25),
    (9, 2, 0.0, 0.1), (12, 0, 0.0, 0.2), (15, 1, 0.0, 0.4),
    (16, 2, -1.0, 0.6), (17, 2, 1.0, 0.6), (16, 1, 0.0, 0.9), (17, 1, 0.0, 0.9),
    (18, 1, 0.8, 0.8), (19, 1, -0.8, 0.8), (7, 0, -0.1, 0.2), (8, 0, -0.1, 0.2),
)  # fmt: skip
SKIN_JOINTS = (15, 18, 19, 20, 21, 22, 23, 12)
SHOE_JOINTS = (7, 8, 10, 11)
PANTS_JOINTS = (0, 1, 2, 4, 5)


def _rotation(axis: int, angle: np.ndarray) -> np.ndarray:
    """(...,) angles -> (...,3,3) rotations about body axis 0/1/2."""
    c, s = np.cos(angle), np.sin(angle)
    o, z = np.ones_like(angle), np.zeros_like(angle)
    if axis == 0:
        m = [[o, z, z], [z, c, -s], [z, s, c]]
    elif axis == 1:
        m = [[c, z, s], [z, o, z], [-s, z, c]]
    else:
        m = [[c, -s, z], [s, c, z], [z, z, o]]
    return np.moveaxis(np.array(m), (0, 1), (-2, -1))


def _axis_angle(r: np.ndarray) -> np.ndarray:
    """(...,3,3) rotations -> (...,3) axis-angle vectors (SMPL's pose parameters)."""
    cos = np.clip((np.trace(r, axis1=-2, axis2=-1) - 1) / 2, -1, 1)
    angle = np.arccos(cos)
    v = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0],
                  r[..., 1, 0] - r[..., 0, 1]], -1)
    s = np.sin(angle)[..., None]
    return np.where(s > 1e-6, v / np.maximum(2 * s, 1e-12), 0.0) * angle[..., None]


@dataclasses.dataclass(frozen=True)
class Motion:
    """A clip's animation: world joints, local rotations and SURREAL's per-clip fields."""

    joints_world: np.ndarray  # (T,24,3) metres, SURREAL world frame
    frames_world: np.ndarray  # (T,24,3,3) joint frames (body axes in world coordinates)
    local_rot: np.ndarray  # (T,24,3,3)
    cam_loc: np.ndarray  # (3,)
    zrot: float
    shape: np.ndarray  # (10,) body-shape code (scales of our skeleton)
    scale: np.ndarray  # (24,) per-bone length scale


# The body's rotation about the vertical (zrot) is uniform within +-ZROT_MAX_DEG of facing the
# camera. SURREAL draws it from the whole circle (gulvarol/surreal datageneration/main_part1.py:
# `random_zrot = 2*np.pi*np.random.rand()`), which is zrot_max_deg=180.
ZROT_MAX_DEG = 60.0


def make_motion(rng: np.random.Generator, frames: int,
                zrot_max_deg: float = ZROT_MAX_DEG) -> Motion:
    """Random body proportions and smooth random joint angles over ``frames`` frames; the body
    turned by zrot, uniform in +-zrot_max_deg degrees from facing the camera."""
    height = rng.uniform(0.85, 1.1)
    limb = rng.uniform(0.9, 1.1, size=4)  # legs, arms, torso, head
    scale = np.full(24, height)
    scale[[4, 5, 7, 8, 10, 11]] *= limb[0]
    scale[[18, 19, 20, 21, 22, 23]] *= limb[1]
    scale[[3, 6, 9, 13, 14, 16, 17]] *= limb[2]
    scale[[12, 15]] *= limb[3]
    t = np.arange(frames) / max(frames, 1)
    local = np.tile(np.eye(3), (frames, 24, 1, 1))
    for joint, axis, centre, amp in ANGLES:
        freq = rng.uniform(0.5, 2.0)
        phase = rng.uniform(0, 2 * np.pi)
        offset = rng.uniform(-0.5, 0.5) * amp
        angle = centre + offset + amp * np.sin(2 * np.pi * freq * t + phase)
        local[:, joint] = local[:, joint] @ _rotation(axis, angle)
    # Global orientation: turned by zrot from facing the camera, slight lean.
    zrot = float(rng.uniform(-np.radians(zrot_max_deg), np.radians(zrot_max_deg)))
    local[:, 0] = _rotation(1, np.full(frames, zrot)) @ _rotation(0, np.full(frames, 0.05))
    # Forward kinematics in the body frame.
    rot = np.zeros_like(local)
    pos = np.zeros((frames, 24, 3))
    for j, parent in enumerate(PARENTS):
        if parent < 0:
            rot[:, j] = local[:, j]
            continue
        rot[:, j] = rot[:, parent] @ local[:, j]
        pos[:, j] = pos[:, parent] + rot[:, parent] @ (REST_OFFSETS[j] * scale[j])
    # Stand on the ground (world y = 0 is the floor, y points down) and drift slowly.
    pos[..., 1] += 0.95 * height * limb[0]
    pos[:, :, [0, 2]] += (t[:, None, None] * rng.normal(0, 0.2, size=(1, 1, 2)))
    # Body frame -> SURREAL world: forward -> +x (towards the camera), up -> -y, SMPL's left
    # -> +z.
    to_world = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])
    body_pos = rng.normal(0, 0.15, size=3) * [1, 0, 1] + [0, 0, -2.0]
    joints_world = pos @ to_world.T + body_pos
    pelvis = joints_world[0, 0]
    cam_loc = np.array([pelvis[0] + rng.uniform(5.5, 7.5), -rng.uniform(0.8, 1.2),
                        pelvis[2] + rng.normal(0, 0.1)])
    shape = np.concatenate([[height, *limb], rng.normal(0, 1, 5)])
    return Motion(joints_world=joints_world, frames_world=to_world @ rot, local_rot=local,
                  cam_loc=cam_loc, zrot=zrot, shape=shape, scale=scale)


@dataclasses.dataclass(frozen=True)
class Look:
    """A clip's appearance: clothing colours, part textures, background and light."""

    colors: np.ndarray  # (24,3) float RGB in [0,1] per body region
    stripes: np.ndarray  # (24,) texture frequency per region
    background: np.ndarray  # (240,320,3) float
    light: np.ndarray  # (3,) unit direction in camera frame
    ambient: float


def make_look(rng: np.random.Generator) -> Look:
    """Random clothes (shirt, trousers, skin, shoes) and a random textured background."""
    shirt, pants = rng.uniform(0.15, 0.95, 3), rng.uniform(0.1, 0.8, 3)
    skin = np.array([0.85, 0.65, 0.5]) * rng.uniform(0.5, 1.1)
    shoes = rng.uniform(0.05, 0.3, 3)
    colors = np.tile(shirt, (24, 1))
    colors[list(PANTS_JOINTS)] = pants
    colors[list(SKIN_JOINTS)] = skin
    colors[list(SHOE_JOINTS)] = shoes
    # Left and right limbs differ slightly, as printed clothes do; parts vary in tone.
    colors[[1, 4, 7, 10, 13, 16, 18, 20, 22]] *= 0.85
    colors *= rng.uniform(0.85, 1.15, size=(24, 1))
    h, w = camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH
    yy, xx = np.mgrid[0:h, 0:w] / np.array([h, w])[:, None, None]
    c0, c1 = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    ramp = (xx * rng.uniform(-1, 1) + yy * rng.uniform(-1, 1))[..., None]
    background = c0 + (c1 - c0) * (ramp - ramp.min()) / (np.ptp(ramp) + 1e-9)
    for _ in range(rng.integers(3, 8)):  # furniture-like boxes
        y0, x0 = rng.integers(0, h), rng.integers(0, w)
        background[y0:y0 + rng.integers(10, 80), x0:x0 + rng.integers(10, 120)] = rng.uniform(
            0, 1, 3)
    background += rng.normal(0, 0.03, size=background.shape)
    light = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.8, -0.2), -1.0])
    return Look(colors=np.clip(colors, 0, 1), stripes=rng.uniform(5, 25, 24),
                background=np.clip(background, 0, 1), light=light / np.linalg.norm(light),
                ambient=float(rng.uniform(0.25, 0.45)))


def _capsule_ends(motion: Motion, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """World endpoints (24,3), (24,3) and radii (24,) of the body-region capsules at frame t."""
    joints = motion.joints_world[t]
    a = np.empty((24, 3))
    b = np.empty((24, 3))
    radius = np.empty(24)
    for i, (joint, end, offset, r) in enumerate(CAPSULES):
        a[i] = joints[joint]
        if end >= 0:
            b[i] = joints[end]
        else:
            b[i] = joints[joint] + motion.frames_world[t, joint] @ (
                np.asarray(offset) * motion.scale[joint])
        radius[i] = r * motion.scale[joint]
    return a, b, radius


def capsule_normals(points: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(...,3) camera-frame points on a capsule's surface, axis ends a, b (3,) -> (...,3) unit
    outward normals, from the axis point nearest to each point. A limb turned towards the camera
    thus faces the light differently from one turned away, as on a rendered mesh."""
    d = b - a
    t = np.clip(((points - a) @ d) / max(float(d @ d), 1e-12), 0.0, 1.0)
    n = points - (a + t[..., None] * d)
    return n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-12)


def lambert(normals: np.ndarray, light: np.ndarray, ambient: float) -> np.ndarray:
    """Lambertian shading in [ambient, 1]: (...,3) camera-frame unit normals (the camera looks
    along +z, so a surface facing it has normal (0, 0, -1)), light (3,) unit camera-frame
    direction towards the light. Surfaces turned away from the light get the ambient term."""
    return ambient + (1 - ambient) * np.clip(normals @ light, 0, 1)


def render_frame(motion: Motion, look: Look, t: int) -> tuple[np.ndarray, np.ndarray,
                                                                np.ndarray]:
    """Ray-casts frame t -> RGB (240,320,3) uint8, depth (240,320) float32 metres from the
    camera centre (SURREAL's depth: `camera.ray_lengths` times the camera depth z; background
    1e10 as in SURREAL), segm (240,320) uint8 raw segment values 0..24."""
    h, w = camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH
    f = camera.INTRINSICS[0, 0]
    a_w, b_w, radius = _capsule_ends(motion, t)
    a = camera.world_to_camera(a_w, motion.cam_loc)
    b = camera.world_to_camera(b_w, motion.cam_loc)
    depth = np.full((h, w), np.inf)
    segm = np.zeros((h, w), np.uint8)
    shade = np.zeros((h, w))
    texture = np.ones((h, w))
    ua, ub = camera.project_camera(a), camera.project_camera(b)
    for i in range(24):
        rz = radius[i] * f / min(a[i, 2], b[i, 2])  # generous pixel radius for the box
        lo = np.floor(np.minimum(ua[i], ub[i]) - rz).astype(int)
        hi = np.ceil(np.maximum(ua[i], ub[i]) + rz).astype(int) + 1
        x0, y0 = max(lo[0], 0), max(lo[1], 0)
        x1, y1 = min(hi[0], w), min(hi[1], h)
        if x0 >= x1 or y0 >= y1:
            continue
        py, px = np.mgrid[y0:y1, x0:x1]
        # Per pixel: nearest point of the projected axis, then the capsule's near surface.
        d = ub[i] - ua[i]
        s = np.clip(((px - ua[i, 0]) * d[0] + (py - ua[i, 1]) * d[1]) / max(d @ d, 1e-9), 0, 1)
        qx, qy = ua[i, 0] + s * d[0], ua[i, 1] + s * d[1]
        zc = a[i, 2] + s * (b[i, 2] - a[i, 2])
        r_px = radius[i] * f / zc
        dx, dy = (px - qx) / r_px, (py - qy) / r_px
        rho2 = dx * dx + dy * dy
        inside = rho2 < 1.0
        nz = np.sqrt(np.maximum(1.0 - rho2, 0.0))
        z = zc - radius[i] * nz
        win = inside & (z < depth[y0:y1, x0:x1])
        if not win.any():
            continue
        depth[y0:y1, x0:x1][win] = z[win]
        segm[y0:y1, x0:x1][win] = i + 1
        surface = camera.backproject(np.stack([px[win], py[win]], -1), z[win])
        shade[y0:y1, x0:x1][win] = lambert(capsule_normals(surface, a[i], b[i]), look.light,
                                           look.ambient)
        texture[y0:y1, x0:x1][win] = 0.85 + 0.15 * np.sign(
            np.sin(look.stripes[i] * s[win] + 3 * dx[win]))
    fg = segm > 0
    rgb = look.background.copy()
    colors = look.colors[np.maximum(segm.astype(int) - 1, 0)]
    rgb[fg] = colors[fg] * (shade[fg] * texture[fg])[:, None]
    depth[fg] *= camera.ray_lengths()[fg]  # the buffer's camera depth z -> distance
    depth[~fg] = surreal.DEPTH_BACKGROUND
    return ((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8), depth.astype(np.float32),
            segm)


def write_video(path: str, frames: np.ndarray) -> None:
    """(T,240,320,3) uint8 RGB -> H.264 mp4 (yuv420p) at 30 fps, as SURREAL's videos."""
    import av

    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "18", "preset": "veryfast"}
        # x264's output depends on its thread count, which it sets from the CPUs it finds:
        # one thread, so that a seed gives the same clip on any machine and in any process,
        # but for one variation: in some processes the bottom-right macroblock of some clips
        # comes out otherwise (62-65 dB PSNR from the usual frames), by every sign memory the
        # encoder reads uninitialised (with a fixed malloc mmap threshold it never varied).
        stream.codec_context.thread_count = 1
        for rgb in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")))
        container.mux(stream.encode())


def write_clip(stem: str, motion: Motion, look: Look, clip_no: int) -> None:
    """Renders every frame of a clip and writes its four SURREAL files next to ``stem``."""
    frames = motion.joints_world.shape[0]
    rendered = [render_frame(motion, look, t) for t in range(frames)]
    paths = surreal.clip_paths(stem)
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    write_video(paths["video"], np.stack([r[0] for r in rendered]))
    scipy.io.savemat(paths["depth"], {f"depth_{t + 1}": r[1] for t, r in enumerate(rendered)},
                     do_compression=True)
    scipy.io.savemat(paths["segm"], {f"segm_{t + 1}": r[2] for t, r in enumerate(rendered)},
                     do_compression=True)
    joints3d = motion.joints_world.astype(np.float32)
    joints2d = np.round(camera.project(joints3d, motion.cam_loc)).astype(np.float32)
    pose = _axis_angle(motion.local_rot).reshape(frames, 72)
    names = np.empty((1, frames), object)
    names[0, :] = [np.array(["synthetic/background.jpg"])] * frames
    cloth = np.empty((1, frames), object)
    cloth[0, :] = [np.array(["synthetic/cloth.jpg"])] * frames
    cam_dist = np.linalg.norm(motion.cam_loc - joints3d[0, 0])
    # (coordinate, joint, frame), as MATLAB saved them: a clip of one frame has no frame axis
    # (MATLAB drops a trailing singleton dimension; the 2-D fields keep theirs).
    joints2d, joints3d = (np.transpose(j, (2, 1, 0)) for j in (joints2d, joints3d))
    if frames == 1:
        joints2d, joints3d = joints2d[..., 0], joints3d[..., 0]
    scipy.io.savemat(paths["info"], {
        "sequence": np.array([os.path.basename(stem)]),
        "clipNo": np.array([[clip_no]], np.uint8),
        "source": np.array(["cmu"]),
        "bg": names,
        "gender": np.full((frames, 1), clip_no % 2, np.uint8),
        "light": np.tile(np.concatenate([look.light, [look.ambient], np.zeros(5)]),
                         (frames, 1)).T.astype(np.float32),
        "stride": np.array([[50]], np.uint8),
        "camDist": np.array([[cam_dist]], np.float32),
        "camLoc": motion.cam_loc.reshape(3, 1).astype(np.float32),
        "joints2D": joints2d,
        "joints3D": joints3d,
        "pose": pose.T.astype(np.float32),
        "zrot": np.full((frames, 1), motion.zrot, np.float32),
        "cloth": cloth,
        "shape": np.tile(motion.shape, (frames, 1)).T.astype(np.float32),
    })


class ClipsExist(FileExistsError):
    """A folder the generator is to write clips into already holds files (real SURREAL clips,
    or demo clips of another run): writing there would overwrite some of them (the demo's clip
    names are SURREAL's) and leave the others among the new clips. Names the folder and the
    fix; `folder` is that folder."""

    def __init__(self, folder: str, out_dir: str):
        super().__init__(
            f"{folder} already holds files (real SURREAL clips, or demo clips of another "
            f"run): the demo's clips, named as SURREAL's (e.g. run0/01_01/01_01_c0001), would "
            f"overwrite those of the same names and leave the others among them. Nothing was "
            f"written. Give another --out_dir than {out_dir}, or remove {folder}")
        self.folder = folder


def check_out_dir(out_dir: str, splits: tuple[str, ...] = ("train", "val", "test")) -> None:
    """Raises ClipsExist naming the first of ``out_dir/cmu/<split>`` that holds anything."""
    for split in splits:
        folder = os.path.join(out_dir, "cmu", split)
        if os.path.isdir(folder) and os.listdir(folder):
            raise ClipsExist(folder, out_dir)


def check_tree_named(out_dir: str) -> None:
    """Ends the command in one line when `--out_dir` names the tree's `cmu` folder rather
    than the tree (SURREAL's root, which holds cmu/ and is what `tfds build --manual_dir`
    takes): the clips would go into <tree>/cmu/cmu/<split>, where no build finds them."""
    if os.path.basename(os.path.normpath(out_dir)) == "cmu":
        tree = os.path.dirname(os.path.normpath(out_dir)) or "."
        raise SystemExit(f"error: --out_dir={out_dir} is a cmu folder: the clips go into "
                         f"<out_dir>/cmu/{{train,val,test}}, as in SURREAL's tree; give the "
                         f"folder that is to hold cmu/, --out_dir={tree} (the tree tfds build "
                         f"takes as --manual_dir)")


def _write_seeded_clip(job: tuple) -> str:
    """One clip of `generate`: (stem, seed, split index, clip index k, frames, zrot_max_deg,
    clip number, stems to copy the clip to) -> stem. Top-level, so that worker processes can
    run it."""
    stem, seed, split_index, k, frames, zrot_max_deg, clip_no, copies = job
    rng = np.random.default_rng([seed, split_index, k])
    write_clip(stem, make_motion(rng, frames, zrot_max_deg), make_look(rng), clip_no)
    for copy in copies:
        os.makedirs(os.path.dirname(copy), exist_ok=True)
        for kind, path in surreal.clip_paths(stem).items():
            shutil.copyfile(path, surreal.clip_paths(copy)[kind])
    return stem


def check_settings(clips_per_split: int, frames: int, seed: int, prefix: str = "") -> None:
    """Raises ValueError naming the setting (`prefix` + its name, e.g. 'config.demo.') when
    `generate` cannot make clips of these: no clip, no frame, or a negative seed."""
    for name, value, least in (("clips_per_split", clips_per_split, 1), ("frames", frames, 1),
                               ("seed", seed, 0)):
        if not isinstance(value, int) or value < least:
            raise ValueError(f"{prefix}{name}={value!r} must be an integer of at least {least}")


def generate(out_dir: str, clips_per_split: int = 4, frames: int = 30, seed: int = 0,
             splits: tuple[str, ...] = ("train", "val", "test"),
             zrot_max_deg: float = ZROT_MAX_DEG, workers: int = 1) -> list[str]:
    """Writes ``clips_per_split`` clips of ``frames`` frames into each split; returns their
    stems, split by split in the order of ``splits``. ``zrot_max_deg``: see `make_motion`
    (180: SURREAL's whole circle). ``workers`` > 1 writes the clips in that many processes
    (started fresh, not forked: the caller may run JAX). Raises ClipsExist, before writing
    anything, when a split's folder ``out_dir/cmu/<split>`` already holds files.

    Deterministic for a given seed: clip k of the split at position i of ``splits`` always
    gets the random stream [seed, i, k], whatever the number of workers. Clip names follow
    SURREAL (sequence ``<NN>_<NN>``, clip ``c<NNNN>``): train and test each use sequences of
    their own (``<i + 1>_<k // 2 + 1>``). SURREAL's val is a subset of its test split (all its
    clips are test clips, docs/surreal_format.md), and so is the demo's: ``val`` holds a copy
    of every test clip, under the test clip's name, which needs ``test`` in ``splits``.
    """
    check_settings(clips_per_split, frames, seed)
    if "val" in splits and "test" not in splits:
        raise ValueError(f"splits={splits}: val holds copies of the test clips, as SURREAL's "
                         f"val holds test clips; add 'test'")
    check_out_dir(out_dir, splits)
    jobs, stems = [[] for _ in splits], {split: [] for split in splits}
    for split_index, split in enumerate(splits):
        if split == "val":
            continue
        for k in range(clips_per_split):
            seq = f"{split_index + 1:02d}_{k // 2 + 1:02d}"
            clip_no = k % 2 + 1
            name = os.path.join("run0", seq, f"{seq}_c{clip_no:04d}")
            stems[split].append(os.path.join(out_dir, "cmu", split, name))
            copies = []
            if split == "test" and "val" in splits:
                copies.append(os.path.join(out_dir, "cmu", "val", name))
                stems["val"].append(copies[-1])
            jobs[split_index].append((stems[split][-1], seed, split_index, k, frames,
                                      zrot_max_deg, clip_no, copies))
    if workers <= 1 or clips_per_split <= 1:
        for job in (job for split_jobs in jobs for job in split_jobs):
            _write_seeded_clip(job)
    else:
        # Split after split, as in one process.
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(min(workers, clips_per_split),
                                                    mp_context=context) as pool:
            for split_jobs in jobs:
                list(pool.map(_write_seeded_clip, split_jobs))
    return [stem for split in splits for stem in stems[split]]


def _define_flags(fv) -> None:
    from absl import flags

    flags.DEFINE_string("out_dir", None, "output directory (gets cmu/{train,val,test}/...)",
                        flag_values=fv, required=True)
    flags.DEFINE_integer("clips_per_split", 4, "clips per split (val's are copies of test's)",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("frames_per_clip", 30, "frames per clip", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("seed", 0, "random seed", lower_bound=0, flag_values=fv)
    flags.DEFINE_float("zrot_max_deg", ZROT_MAX_DEG, "bodies turn uniformly within +- this many "
                       "degrees of facing the camera (180: SURREAL's whole circle)",
                       lower_bound=0.0, upper_bound=180.0, flag_values=fv)
    flags.DEFINE_integer("workers", cores.usable_cores(), "processes writing clips "
                         "(default: the cores this process may use)", lower_bound=1,
                         flag_values=fv)


# The errors of a folder that cannot be written (`disk_space.UNWRITABLE_CODES`, a full disk or
# quota, a file or folder in the way), for which `_unwritable` names another folder as the fix.
_WRITE_ERRNOS = disk_space.UNWRITABLE_CODES | {errno.ENOSPC, errno.EDQUOT, errno.EEXIST,
                                               errno.EISDIR}


def _unwritable(out_dir: str, error: OSError, existed: dict[str, bool]) -> str:
    """The one line of a generation into `out_dir` that failed to write (`error`), after
    removing what it wrote: everything in its split folders ``cmu/<split>``, which were
    empty or missing before (`generate` refuses others; `existed`: which were there), so that
    a rerun is not refused for holding clips (`ClipsExist`). The folders that were there stay."""
    for split, was_there in existed.items():
        folder = os.path.join(out_dir, "cmu", split)
        if not was_there:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):  # a folder it cannot list holds none of ours
                for entry in os.listdir(folder):
                    shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)
    what = error.strerror or str(error)
    where = f" ({error.filename})" if error.filename else ""
    fix = ("Give a folder on a writable file system with room for the clips"
           if error.errno in _WRITE_ERRNOS else "Mend what the error names and run it again")
    return (f"error: --out_dir={out_dir}: cannot write the demo clips: {what}{where}. Nothing "
            f"written is left in {os.path.join(out_dir, 'cmu')}/{{train,val,test}}. {fix}")


def main(argv: list[str] | None = None) -> int:
    """`python -m hgmt.sources.synthetic --out_dir=DIR [--clips_per_split=N]
    [--frames_per_clip=F] [--seed=S] [--zrot_max_deg=D] [--workers=N]`: prints one JSON line
    (the clips written, val's copies included; the frames rendered and their rate). A DIR
    whose cmu/{train,val,test} holds files is refused in one line (`ClipsExist`), exit 1, and
    so is a DIR named cmu (`check_tree_named`); one it cannot write (read-only, full, a file in
    the way) ends in one line too, the clips it had written removed (`_unwritable`)."""
    from hgmt import cli

    args, _ = cli.parse(_define_flags, argv, "Write SURREAL-format demo clips.")
    cli.check_output_folder("out_dir", args.out_dir)
    check_tree_named(args.out_dir)
    start = time.perf_counter()
    splits = ("train", "val", "test")
    existed = {split: os.path.isdir(os.path.join(args.out_dir, "cmu", split)) for split in splits}
    with cli.faults_in_one_line(ClipsExist):
        try:
            stems = generate(args.out_dir, args.clips_per_split, args.frames_per_clip, args.seed,
                             splits, zrot_max_deg=args.zrot_max_deg, workers=args.workers)
        except ClipsExist:  # refused before writing: the clips there are not ours to remove
            raise
        except OSError as e:  # a read-only or full file system, a file in the way
            raise SystemExit(_unwritable(args.out_dir, e, existed)) from None
    seconds = time.perf_counter() - start
    # The frames rendered: val's clips are copies of test's.
    frames = sum(surreal.parse_stem(s).split != "val" for s in stems) * args.frames_per_clip
    print(json.dumps({"out_dir": args.out_dir, "clips": len(stems), "frames": frames,
                      "seconds": round(seconds, 2), "frames_per_s": round(frames / seconds, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
