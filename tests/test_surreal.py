"""hgmt.sources' SURREAL modules (`camera`, `body`, `surreal`, `frame_selection`): the camera on
the real SURREAL file, label maps, loaders and their errors, the frames that count."""

import os
import shutil

import numpy as np
import pytest
import scipy.io

from hgmt.sources import body, camera, frame_selection, surreal, synthetic, synthetic_person


def test_projection_reproduces_real_joints2d(real_info_path):
    info = surreal.load_info(real_info_path)
    assert info.joints2d.shape == (100, 24, 2) and info.joints3d.shape == (100, 24, 3)
    np.testing.assert_array_equal(np.round(camera.project(info.joints3d, info.cam_loc)),
                                  info.joints2d)
    # The pelvis depth is camLoc_x - X_x (docs/surreal_format.md "dPelvis").
    np.testing.assert_allclose(camera.camera_depth(info.joints3d[:, 0], info.cam_loc),
                               info.cam_loc[0] - info.joints3d[:, 0, 0], atol=1e-5)
    assert info.sequence == "01_01_c0001"
    assert info.pose.shape == (100, 72) and info.shape.shape == (100, 10)


def test_backproject_inverts_projection(real_info_path):
    info = surreal.load_info(real_info_path)
    cam = camera.world_to_camera(info.joints3d[0], info.cam_loc)
    back = camera.backproject(camera.project_camera(cam), cam[:, 2])
    np.testing.assert_allclose(back, cam, atol=1e-9)


def test_the_camera_maps_a_known_point_to_the_pixel_and_ray_by_hand():
    """SURREAL's camera at camLoc (cx, cy, cz) sees world (X, Y, Z) at camera (cz - Z, Y - cy,
    cx - X) (x right, y down, depth along world -x; docs/surreal_format.md): camLoc (6, -1, 2)
    and (2, -0.8, 1.6) -> (0.4, 0.2, 4) m -> u = 600 * 0.4 / 4 + 160 = 220, v = 600 * 0.2 / 4
    + 120 = 150. `camera_depth` is the planar depth z = cx - X = 4, not the point's distance
    from the camera centre |(0.4, 0.2, 4)| = sqrt(16.2), which a `_depth.mat` holds (z times
    the ray length below); (3, 0, 2) is at camera (0, 1, 3): depth 3, distance sqrt(10).
    `ray_lengths` at pixel (u, v) is |((u - 160) / 600, (v - 120) / 600, 1)|: 1 at the
    principal point (160, 120), sqrt(1 + (160/600)^2 + (120/600)^2) = sqrt(10) / 3 at
    (0, 0), and at (319, 239) sqrt(1 + (159/600)^2 + (119/600)^2)."""
    cam_loc, point = np.array([6.0, -1.0, 2.0]), np.array([2.0, -0.8, 1.6])
    np.testing.assert_allclose(camera.world_to_camera(point, cam_loc), [0.4, 0.2, 4.0],
                               atol=1e-12)
    np.testing.assert_allclose(camera.project(point, cam_loc), [220.0, 150.0], atol=1e-9)
    assert camera.camera_depth(point, cam_loc) == pytest.approx(4.0, abs=1e-12)
    np.testing.assert_allclose(camera.camera_depth(np.stack([point, [3.0, 0.0, 2.0]]), cam_loc),
                               [4.0, 3.0], atol=1e-12)  # (...,3) -> (...)
    np.testing.assert_allclose(camera.backproject(np.array([220.0, 150.0]), np.array(4.0)),
                               [0.4, 0.2, 4.0], atol=1e-12)
    rays = camera.ray_lengths()
    assert rays.shape == (240, 320)
    assert rays[120, 160] == pytest.approx(1.0, abs=1e-12)
    assert rays[0, 0] == pytest.approx(np.sqrt(10) / 3, abs=1e-12)
    assert rays[239, 319] == pytest.approx(np.sqrt(1 + (159 / 600) ** 2 + (119 / 600) ** 2),
                                           abs=1e-12)


def test_label_maps_match_design():
    assert body.JOINT_NAMES[6] == "pelvis" and len(body.JOINT_NAMES) == 16
    smpl = dict(zip(body.JOINT_NAMES, body.SMPL_TO_JOINT.tolist(), strict=True))
    assert smpl == {"r_ankle": 7, "r_knee": 4, "r_hip": 1, "l_hip": 2, "l_knee": 5,
                    "l_ankle": 8, "pelvis": 0, "thorax": 6, "upper_neck": 12, "head_top": 15,
                    "r_wrist": 20, "r_elbow": 18, "r_shoulder": 16, "l_shoulder": 17,
                    "l_elbow": 19, "l_wrist": 21}
    raw_to_class = {1: 2, 2: 12, 3: 9, 4: 2, 5: 13, 6: 10, 7: 2, 8: 14, 9: 11, 10: 2, 11: 14,
                    12: 11, 13: 2, 14: 2, 15: 2, 16: 1, 17: 6, 18: 3, 19: 7, 20: 4, 21: 8,
                    22: 5, 23: 8, 24: 5, 0: 0}
    assert {i: int(c) for i, c in enumerate(body.SEGM_TO_PART)} == raw_to_class
    assert body.SEGM_TO_PART.dtype == np.uint8
    # Parts are named by the person's own side: SMPL's "right*" segments (raw 3, 6, 9, 12, 18,
    # 20, 22, 24) are the person's left in SURREAL's renders.
    assert body.PART_NAMES == (
        "head", "torso", "l_upper_arm", "l_forearm", "l_hand", "r_upper_arm", "r_forearm",
        "r_hand", "l_upper_leg", "l_lower_leg", "l_foot", "r_upper_leg", "r_lower_leg",
        "r_foot")
    for raw in (3, 6, 9, 12, 18, 20, 22, 24):
        assert body.SMPL_SEGMENT_NAMES[raw].startswith("right")
        assert body.PART_NAMES[body.SEGM_TO_PART[raw] - 1].startswith("l_")
    assert body.PART_NAMES[body.SEGM_TO_PART[21] - 1] == "r_hand"  # SMPL leftHand


@pytest.mark.parametrize("names,flip", [
    (body.JOINT_NAMES, body.JOINT_FLIP),
    (body.PART_CLASS_NAMES, body.PART_FLIP),
])
def test_flips_are_involutions_swapping_sides(names, flip):
    np.testing.assert_array_equal(flip[flip], np.arange(len(names)))
    for i, j in enumerate(flip):
        a, b = names[i], names[j]
        if a.startswith("r_"):
            assert b == "l_" + a[2:]
        elif a.startswith("l_"):
            assert b == "r_" + a[2:]
        else:
            assert a == b
    pairs = {(3, 6), (4, 7), (5, 8), (9, 12), (10, 13), (11, 14)}
    if len(names) == 15:
        assert {(i, int(j)) for i, j in enumerate(flip) if i < j} == pairs


def _save_info(path, t, **overrides):
    fields = {
        "joints2D": np.zeros((2, 24, t), np.float32) + 100,
        "joints3D": np.zeros((3, 24, t), np.float32),
        "camLoc": np.array([[6.0], [-1.0], [-2.0]], np.float32),
        "zrot": np.zeros((t, 1), np.float32), "gender": np.ones((t, 1), np.uint8),
        "pose": np.zeros((72, t), np.float32), "shape": np.zeros((10, t), np.float32),
        "sequence": np.array(["01_01_c0001"]),
    }
    fields.update(overrides)
    fields = {k: v for k, v in fields.items() if v is not None}
    scipy.io.savemat(path, fields)


def test_single_frame_info_where_matlab_dropped_the_frame_dim(tmp_path):
    path = str(tmp_path / "a_info.mat")
    _save_info(path, 1, joints2D=np.full((2, 24), 5.0, np.float32),
               joints3D=np.zeros((3, 24), np.float32))
    assert scipy.io.loadmat(path)["joints2D"].shape == (2, 24)
    info = surreal.load_info(path)
    assert info.num_frames == 1
    assert info.joints2d.shape == (1, 24, 2) and info.joints3d.shape == (1, 24, 3)
    assert info.pose.shape == (1, 72) and info.zrot.shape == (1,)
    assert np.all(info.joints2d == 5.0)


@pytest.fixture(scope="module")
def demo_clip(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return synthetic.generate(str(root), clips_per_split=1, frames=6, seed=3,
                              splits=("train",))[0]


def _copy_clip(stem, dst_dir):
    name = os.path.basename(stem)
    dst = os.path.join(dst_dir, "cmu", "train", "run0", name[:5])
    os.makedirs(dst, exist_ok=True)
    for path in surreal.clip_paths(stem).values():
        shutil.copy(path, dst)
    return os.path.join(dst, name)


def _truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


@pytest.mark.parametrize("kind", ["info", "depth", "segm", "video"])
def test_missing_file_names_it(demo_clip, tmp_path, kind):
    stem = _copy_clip(demo_clip, tmp_path)
    os.remove(surreal.clip_paths(stem)[kind])
    with pytest.raises(surreal.FormatError, match="missing") as e:
        surreal.load_clip(stem)
    assert e.value.path == surreal.clip_paths(stem)[kind]


@pytest.mark.parametrize("kind", ["info", "depth", "segm", "video"])
def test_truncated_file_names_it(demo_clip, tmp_path, kind):
    stem = _copy_clip(demo_clip, tmp_path)
    path = surreal.clip_paths(stem)[kind]
    _truncate(path, 0.3)
    with pytest.raises(surreal.FormatError) as e:
        surreal.load_clip(stem)
    assert path in str(e.value)


def test_garbage_video_names_it(tmp_path):
    path = str(tmp_path / "x.mp4")
    with open(path, "wb") as f:
        f.write(os.urandom(5000))
    with pytest.raises(surreal.FormatError, match="x.mp4"):
        surreal.read_video(path)


def test_wrong_shaped_joints(tmp_path):
    path = str(tmp_path / "a_info.mat")
    _save_info(path, 4, joints2D=np.zeros((3, 24, 4), np.float32))
    with pytest.raises(surreal.FormatError, match="joints2D.*shape"):
        surreal.load_info(path)


def test_missing_variable(tmp_path):
    path = str(tmp_path / "a_info.mat")
    _save_info(path, 4, camLoc=None)
    with pytest.raises(surreal.FormatError, match="camLoc"):
        surreal.load_info(path)


def test_wrong_sized_depth_frame(tmp_path):
    path = str(tmp_path / "a_depth.mat")
    scipy.io.savemat(path, {"depth_1": np.zeros((240, 320), np.float32),
                            "depth_2": np.zeros((120, 160), np.float32)})
    with pytest.raises(surreal.FormatError, match="depth_2.*shape"):
        surreal.load_depth(path)


def test_out_of_range_segment(tmp_path):
    path = str(tmp_path / "a_segm.mat")
    scipy.io.savemat(path, {"segm_1": np.full((240, 320), 30, np.uint8)})
    with pytest.raises(surreal.FormatError, match="segment value 30"):
        surreal.load_segm(path)


def test_depth_background_becomes_zero(demo_clip):
    raw = scipy.io.loadmat(surreal.clip_paths(demo_clip)["depth"])["depth_1"]
    depth = surreal.load_depth(surreal.clip_paths(demo_clip)["depth"])
    assert raw.max() == np.float32(1e10)
    assert depth.shape == (6, 240, 320) and depth.dtype == np.float32
    np.testing.assert_array_equal(depth[0] == 0, raw == np.float32(1e10))


def test_frame_count_mismatch_keeps_common_prefix(demo_clip, tmp_path):
    stem = _copy_clip(demo_clip, tmp_path)
    segm_path = surreal.clip_paths(stem)["segm"]
    segm = scipy.io.loadmat(segm_path)
    scipy.io.savemat(segm_path, {f"segm_{t}": segm[f"segm_{t}"] for t in range(1, 5)})
    clip = surreal.load_clip(stem)
    assert clip.frame_counts == {"video": 6, "info": 6, "depth": 6, "segm": 4}
    assert clip.mismatch and clip.num_frames == 4
    assert clip.info.num_frames == 4 and clip.depth.shape[0] == 4 and clip.video.shape[0] == 4


def test_frame_problem_and_middle_frame():
    ok = np.full((24, 2), 100.0)
    assert frame_selection.frame_problem(ok) is None
    assert frame_selection.frame_problem(np.zeros((24, 2))) == "joints_zero"
    cut = ok.copy()
    cut[body.SMPL_TO_JOINT[9]] = [100.0, -20.0]  # head top above the image: kept
    assert frame_selection.frame_problem(cut) is None
    out = ok.copy()
    out[body.SMPL_TO_JOINT[:8]] = [400.0, 100.0]  # 8 of 16 joints right of the image
    assert frame_selection.frame_problem(out) is None
    out[body.SMPL_TO_JOINT[8]] = [100.0, 300.0]  # 9 of 16 outside
    assert frame_selection.frame_problem(out) == "person_outside"
    unset = np.zeros((24, 2))
    unset[body.SMPL_TO_JOINT] = [0.0, 238.0]
    assert frame_selection.frame_problem(unset) == "joints_unset"
    assert frame_selection.middle_frame(100) == 49 and frame_selection.middle_frame(5) == 2
    assert frame_selection.middle_frame(1) == 0


def test_the_frames_edges_count_as_inside():
    """The image's last column and row (x 319, y 239) and its first (0) hold a joint inside it:
    8 of 16 there and 8 beyond the edge keep the frame, 8 half a pixel further out do not.
    The references' centre of the 1-based box, (lo + hi + 1) / 2 of the 1-based joints
    (test_reference_frame_problem_follows_the_reference_loaders' formula), is inside up to
    exactly 320 (x) and 240 (y): 0-based x 318 and 319 -> (319 + 320 + 1) / 2 = 320."""
    j = body.SMPL_TO_JOINT
    for axis, last in ((0, 319.0), (1, 239.0)):
        for edge in (0.0, last):
            joints = np.full((24, 2), 100.0)
            joints[j[:8], axis] = edge
            joints[j[8:], axis] = 400.0 if edge else -5.0
            assert frame_selection.frame_problem(joints) is None, (axis, edge)
            joints[j[:8], axis] = edge + (0.5 if edge else -0.5)
            assert frame_selection.frame_problem(joints) == "person_outside", (axis, edge)
        joints = np.full((24, 2), 100.0)
        joints[j[:8], axis], joints[j[8:], axis] = last - 1, last
        assert frame_selection.reference_frame_problem(joints) is None, axis
        joints[j[:8], axis] = last - 0.5  # centre 320.25 (x), 240.25 (y)
        assert frame_selection.reference_frame_problem(joints) == "centre_outside", axis


def test_reference_frame_problem_follows_the_reference_loaders():
    """surreal training/loader_SURREAL.lua:47-52 (joints + 1, all 16 at (1, 239): nil) and
    donkey.lua:118-119 (getCenter of the 1-based joints outside [1, 320] x [1, 240]: nil),
    by hand with util.lua:128-155's getTightBox and getCenter."""
    j = body.SMPL_TO_JOINT
    joints = np.zeros((24, 2))
    joints[j] = [0.0, 238.0]  # 1-based (1, 239)
    assert frame_selection.reference_frame_problem(joints) == "joints_unset"
    # All zero: 1-based (1, 1); w = h = 1, x_min = 1 - 0.25 = 0.75, width 1.5: centre 1.5,
    # inside. The references evaluate it (a 1.25-pixel window); hgmt does not.
    assert frame_selection.reference_frame_problem(np.zeros((24, 2))) is None
    assert frame_selection.frame_problem(np.zeros((24, 2))) == "joints_zero"
    # 9 joints at x -3, 7 at x 20 (1-based -2 and 21): w = 24, x -8 to 27, width 36, centre
    # x = -8 + 18 = 10: inside, though 9 of 16 joints are outside (hgmt: person_outside).
    joints = np.full((24, 2), 100.0)
    joints[j[:9], 0], joints[j[9:], 0] = -3.0, 20.0
    assert frame_selection.reference_frame_problem(joints) is None
    assert frame_selection.frame_problem(joints) == "person_outside"
    # 8 joints at x 0..5, 8 at x -60 (1-based 1..6 and -59): w = 66, x -75.5 to 22.5, width
    # 99, centre x = -75.5 + 49.5 = -26 < 1; 8 of 16 inside is enough for hgmt.
    joints[j[:8], 0], joints[j[8:], 0] = np.linspace(0, 5, 8), -60.0
    assert frame_selection.reference_frame_problem(joints) == "centre_outside"
    assert frame_selection.frame_problem(joints) is None
    # A centre of exactly 1 is inside (`center[1] < 1`): 1-based x -1 and 2: w = 4, x -2 to
    # 3, width 6, centre -2 + 3 = 1.
    joints[j[:8], 0], joints[j[8:], 0] = -2.0, 1.0
    assert frame_selection.reference_frame_problem(joints) is None
    joints[j[:8], 0] = -2.5  # w = 4.5, x -2.625 to 3.125, width 6.75, centre 0.75
    assert frame_selection.reference_frame_problem(joints) == "centre_outside"
    # loader_SURREAL.lua:66-69: the 16 used 3D joints all zero; others may be anything.
    joints3d = np.zeros((24, 3))
    joints3d[np.setdiff1d(np.arange(24), j)] = 1.0
    ok = np.full((24, 2), 100.0)
    assert frame_selection.reference_frame_problem(ok, joints3d) == "joints3d_zero"
    assert frame_selection.frame_problem(ok, joints3d) == "joints3d_zero"
    joints3d[j[0], 2] = 1e-6
    assert frame_selection.reference_frame_problem(ok, joints3d) is None
    assert frame_selection.frame_problem(ok, joints3d) is None
    # Below the image: y 1-based 241 and 250 -> h = 10, y 241 - 3.5 = 237.5 to 252.5, height
    # 16, centre 245.5 > 240.
    joints = np.full((24, 2), 100.0)
    joints[j[:8], 1], joints[j[8:], 1] = 240.0, 249.0
    assert frame_selection.reference_frame_problem(joints) == "centre_outside"


def test_parse_stem_and_find_clips(demo_clip):
    cid = surreal.parse_stem(demo_clip)
    assert (cid.split, cid.run, cid.sequence, cid.clip) == ("train", "run0", "01_01", "c0001")
    root = demo_clip.split(os.sep + "cmu" + os.sep)[0]
    assert surreal.find_clips(root, "train") == [demo_clip]
    assert surreal.find_clips(root, "validation") == []


def test_find_clips_names_a_root_without_cmu_and_the_fix(tmp_path):
    """A root that is not there, or is not the folder holding cmu/, is an error naming it (an
    empty list would read as a SURREAL without clips); a missing split folder holds none."""
    fix = "give the folder that contains cmu/ (cmu/train, cmu/val, cmu/test"
    missing = str(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError) as e:
        surreal.find_clips(missing, "train")
    assert str(e.value).startswith(f"SURREAL root {missing} is not a folder here; {fix}")
    with pytest.raises(FileNotFoundError) as e:
        surreal.find_clips(str(tmp_path), "train")
    assert str(e.value).startswith(f"SURREAL root {tmp_path} holds no cmu/ folder; {fix}")
    (tmp_path / "cmu").mkdir()
    assert surreal.find_clips(str(tmp_path), "test") == []


def _lateral_sign_fraction(joints3d_world: np.ndarray, cam_loc: np.ndarray) -> dict:
    """Per sided joint pair, the fraction of frames where r_* lies on the person's right of
    l_*: in the (right-handed) camera frame, right = forward x up, forward = ankle -> toe."""
    cam = camera.world_to_camera(joints3d_world, cam_loc)  # (T,24,3)
    j = cam[:, body.SMPL_TO_JOINT]
    name = body.JOINT_NAMES.index
    forward = cam[:, [10, 11]].mean(1) - cam[:, [7, 8]].mean(1)  # SMPL feet - ankles
    up = j[:, name("upper_neck")] - j[:, name("pelvis")]
    right = np.cross(forward, up)
    return {side: float((((j[:, name("r_" + side)] - j[:, name("l_" + side)]) * right).sum(-1)
                          > 0).mean())
            for side in ("hip", "knee", "ankle", "shoulder", "elbow", "wrist")}


def test_joint_names_follow_the_persons_own_side(real_info_path):
    """On the real file, hgmt's r_* joints are on the person's anatomical right."""
    info = surreal.load_info(real_info_path)
    fractions = _lateral_sign_fraction(info.joints3d, info.cam_loc)
    assert min(fractions.values()) >= 0.9, fractions


def test_demo_bodies_have_surreals_sides():
    """The demo renders through SURREAL's (mirroring) camera, so its SMPL "L_*" joints end up
    on the person's right as on real files."""
    motion = synthetic_person.make_motion(np.random.default_rng(0), 20)
    fractions = _lateral_sign_fraction(motion.joints_world, motion.cam_loc)
    assert min(fractions.values()) >= 0.8, fractions  # swinging legs cross now and then


def test_the_pckh_head_segment_is_about_a_label_pixel_and_a_half(real_info_path):
    """SMPL has no head-top joint: `head_top` is its joint 15 ('head', mid-head) and
    `upper_neck` its 12 ('neck'), 9 cm apart on the real clip, so PCKh@0.5's radius is about
    0.8 label pixel at 64 x 64 in hgmt's crop window (docs/metrics.md)."""
    from hgmt.data import cropping

    info = surreal.load_info(real_info_path)
    apart = np.linalg.norm(info.joints3d[:, 15] - info.joints3d[:, 12], axis=-1)
    assert 0.085 < apart.mean() < 0.095
    joints = camera.project(info.joints3d, info.cam_loc)[:, body.SMPL_TO_JOINT]
    segment = [np.linalg.norm(j[body.HEAD_TOP] - j[body.UPPER_NECK]) * 64
               / cropping.person_box(j)[1] for j in joints]
    assert 1.4 < np.median(segment) < 1.8 and min(segment) > 1.2 and max(segment) < 2.2


def test_the_frames_decoded_equal_what_the_references_opencv_reads(demo_dataset):
    """The reference loaders read frame t of a clip with OpenCV's VideoCapture after a seek to
    it (surreal training/loader_SURREAL.lua:31-34: `cap:set{propId=1, value=t-1}`, then
    `cap:read{}`, BGR); hgmt decodes the clip with PyAV: the same pixels, at the middle frame
    the test protocol reads and at every other frame, on each demo test clip."""
    import cv2

    for stem in surreal.find_clips(demo_dataset[0], "test"):
        frames = surreal.load_clip(stem).video
        cap = cv2.VideoCapture(surreal.clip_paths(stem)["video"])
        assert cap.isOpened(), stem
        for t in range(len(frames)):
            cap.set(cv2.CAP_PROP_POS_FRAMES, t)
            ok, bgr = cap.read()
            assert ok, (stem, t)
            np.testing.assert_array_equal(bgr[..., ::-1], frames[t], err_msg=f"{stem} {t}")
        cap.release()
