"""The demo clips' person: a 24-joint SMPL skeleton with random proportions (`make_motion`),
animated with smooth random joint angles (arms and legs swing, knees and elbows bend, so limbs
cross the body and occlude it), dressed in random colours over a random background
(`make_look`), and ray-cast into a frame (`render_frame`).

Each joint drives one body region (a capsule) whose SURREAL segment value is the joint's
index + 1; capsules are ray-cast analytically with a depth buffer, which gives the segment map,
the metric distance from the camera centre (what SURREAL's depth maps hold, Cycles' Z pass;
docs/surreal_format.md) and a shaded, textured RGB frame over the background. World axes and
camera follow SURREAL (world y points down, the camera looks along -x from ``camLoc``), so
``hgmt.sources.camera.project(joints3D, camLoc)`` reproduces ``joints2D`` as on real files.
`hgmt.sources.synthetic` writes the frames into SURREAL's files.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hgmt.sources import camera, surreal

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


def axis_angle(r: np.ndarray) -> np.ndarray:
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
