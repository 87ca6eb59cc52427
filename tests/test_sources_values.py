"""Values of hgmt.sources' SURREAL modules on crafted inputs, each derived by hand: the drawn
skeleton, the segment and depth ranges the readers accept, the reference loaders' unset-joint
check, the references' crop sizes."""

import numpy as np
import pytest
import scipy.io

from hgmt.sources import body, frame_selection, surreal


def test_the_skeleton_joins_each_limb_along_its_own_side():
    """15 edges, a tree over the 16 joints: each leg ankle-knee-hip-pelvis, the spine
    pelvis-thorax-upper_neck-head_top, each arm wrist-elbow-shoulder-thorax, never a joint of
    one side to a joint of the other."""
    expected = {
        ("r_ankle", "r_knee"), ("r_knee", "r_hip"), ("r_hip", "pelvis"),
        ("l_ankle", "l_knee"), ("l_knee", "l_hip"), ("l_hip", "pelvis"),
        ("pelvis", "thorax"), ("thorax", "upper_neck"), ("upper_neck", "head_top"),
        ("r_wrist", "r_elbow"), ("r_elbow", "r_shoulder"), ("r_shoulder", "thorax"),
        ("l_wrist", "l_elbow"), ("l_elbow", "l_shoulder"), ("l_shoulder", "thorax"),
    }  # fmt: skip
    edges = {frozenset((body.JOINT_NAMES[a], body.JOINT_NAMES[b])) for a, b in body.SKELETON}
    assert len(body.SKELETON) == 15
    assert edges == {frozenset(e) for e in expected}


def test_segm_reader_takes_raw_values_up_to_24_and_refuses_25(tmp_path):
    """SURREAL's raw segments are 1..24, one per SMPL joint (24: rightHandIndex1), 0 the
    background: a map holding 24 reads back unchanged, one holding 25 is a FormatError."""
    assert body.NUM_SMPL_SEGMENTS == 24 and body.SMPL_SEGMENT_NAMES[24] == "rightHandIndex1"
    frame = np.zeros((240, 320), np.uint8)
    frame[10, 20] = 24
    path = str(tmp_path / "a_segm.mat")
    scipy.io.savemat(path, {"segm_1": frame})
    segm = surreal.load_segm(path)
    assert segm.shape == (1, 240, 320) and segm[0, 10, 20] == 24 and segm.sum() == 24
    frame[10, 20] = 25
    scipy.io.savemat(path, {"segm_1": frame})
    with pytest.raises(surreal.FormatError):
        surreal.load_segm(path)


def test_depth_reader_keeps_1000_m_and_zeroes_what_lies_above(tmp_path):
    """The references take depth <= 1e3 as the person and > 1e3 as background (surreal
    training/loader_SURREAL.lua:104-105, torch.le / torch.gt against 1e3): 1000.0 m stays, the
    next float32 above it (1000 + 2**-14, float32's spacing at 2**9..2**10 being 2**(9-23)) and
    the background's 1e10 become 0."""
    above = np.float32(1000.0) + np.float32(2.0**-14)
    assert above > np.float32(1000.0)
    frame = np.full((240, 320), 2.5, np.float32)
    frame[0, :3] = [1000.0, above, 1e10]
    path = str(tmp_path / "a_depth.mat")
    scipy.io.savemat(path, {"depth_1": frame, "depth_2": frame * 0 + 3.0})
    depth = surreal.load_depth(path)
    assert depth.shape == (2, 240, 320)
    assert list(depth[0, 0, :4]) == [1000.0, 0.0, 0.0, 2.5]
    assert (depth[1] == 3.0).all()  # depth_2 is the second frame


def test_joints_unset_needs_all_16_joints_at_the_mark():
    """The loaders skip a frame only when every one of the 16 used joints is at 1-based
    (1, 239) (surreal training/loader_SURREAL.lua:49-50: the per-joint matches eq(1) x eq(239)
    summed over the 16 and divided by 16 must be 1). 15 joints at 0-based (0, 238) and one at
    (100, 100): not unset. Its 1-based joints span x 1..101, y 101..239, so getCenter lies
    inside the frame, and every joint is inside the 320 x 240 image: usable to both."""
    joints = np.zeros((24, 2))
    joints[body.SMPL_TO_JOINT] = [0.0, 238.0]
    assert frame_selection.reference_frame_problem(joints) == "joints_unset"
    joints[body.SMPL_TO_JOINT[0]] = [100.0, 100.0]
    assert frame_selection.reference_frame_problem(joints) is None
    assert frame_selection.frame_problem(joints) is None


def _named_map():
    """(240, 320) int32 map whose pixel (row, col) holds 1000 row + col."""
    return (1000 * np.arange(240)[:, None] + np.arange(320)[None, :]).astype(np.int32)


def test_reference_label_crop_truncates_the_shrunk_maps_height():
    """crop(map, (160, 120), 0.6656, 0, 64, 'simple') (surreal training/img.lua:87-144):
    - img.lua:96-99: scaleFactor = 200 x 0.6656 / 64 = 2.08 >= 2; newSize = floor(320 / 2.08)
      = floor(153.85) = 153.
    - img.lua:105, torch/image init.lua `scale`: the longest side becomes 153, the height
      240 x 153 / 320 = 114.75, which the tensor's size truncates to 114: the shrunk map is
      114 x 153, sy = 240 / 114 = 2.10526, sx = 320 / 153 = 2.09150 (float32,
      generic/image.c scaleSimple: shrunk (r, c) = map (trunc(r sy), trunc(c sx))).
    - img.lua:112-115: c = (160, 120) / 2.08 = (76.923, 57.692), h = 200 x 0.6656 / 2.08 = 64;
      ul = trunc(c - 32 + 1e-4) + 1 = (45, 26), br = ul + 64.
    - img.lua:121-130: label (k, l) = shrunk (k + 25, l + 44), all inside the 114 x 153 map.
    Label (0, 0) = shrunk (25, 44) = map (trunc(52.63), trunc(92.03)) = (52, 92); label (63, 0)
    = shrunk (88, 44) = map (trunc(185.26), 92) = (185, 92); label (63, 63) = shrunk (88, 107)
    = map (185, trunc(223.79)) = (185, 223). A height rounded to 115 would give sy = 2.08696
    and map row trunc(183.65) = 183 for label row 63."""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(_named_map(), np.array([160.0, 120.0]), 0.6656)
    assert out.shape == (64, 64)
    assert out[0, 0] == 52 * 1000 + 92
    assert out[63, 0] == 185 * 1000 + 92
    assert out[63, 63] == 185 * 1000 + 223


def test_reference_label_crop_is_all_zero_when_the_shrunk_map_would_be_one_pixel():
    """crop(map, (32, 32), 12.8, 0, 64, 'simple') of a 64 x 64 map of 7s: scaleFactor = 200 x
    12.8 / 64 = 40, newSize = floor(64 / 40) = 1 < 2, so crop returns its zeros (surreal
    training/img.lua:99-103) though the window (2560 px around the map) covers the map."""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(np.full((64, 64), 7, np.int32), np.array([32.0, 32.0]), 12.8)
    assert out.shape == (64, 64) and not out.any()


def test_info_reader_puts_each_frame_joint_and_axis_in_place(tmp_path):
    """MATLAB's (2, 24, T), (3, 24, T), (72, T), (10, T) and (T, 1) arrays -> frame-major:
    with joints2D[a, j, t] = 1000 t + 10 j + a, joints2d[t, j, a] holds it (t = 2, j = 23,
    a = 1: 2231); joints3D[a, j, t] = 1000 t + 10 j + a likewise; pose[i, t] = 100 t + i is
    pose[t, i] (frame 1's last value 171); shape[i, t] = 10 t + i is shape[t, i]; zrot and
    gender per frame in order; camLoc (3, 1) is (x, y, z)."""
    t, j, a = np.meshgrid(np.arange(3), np.arange(24), np.arange(3), indexing="ij")
    value = (1000 * t + 10 * j + a).astype(np.float32)  # (T, 24, 3)
    fields = {
        "joints2D": np.transpose(value[..., :2], (2, 1, 0)).copy(),
        "joints3D": np.transpose(value, (2, 1, 0)).copy(),
        "camLoc": np.array([[6.0], [-1.0], [-2.0]], np.float32),
        "zrot": np.array([[0.5], [1.5], [2.5]], np.float32),
        "gender": np.array([[0], [1], [0]], np.uint8),
        "pose": (100 * np.arange(3)[None, :] + np.arange(72)[:, None]).astype(np.float32),
        "shape": (10 * np.arange(3)[None, :] + np.arange(10)[:, None]).astype(np.float32),
        "sequence": np.array(["01_01_c0001"]),
    }
    path = str(tmp_path / "a_info.mat")
    scipy.io.savemat(path, fields)
    info = surreal.load_info(path)
    assert info.joints2d[2, 23, 1] == 2231 and info.joints2d[1, 4, 0] == 1040
    np.testing.assert_array_equal(info.joints2d, value[..., :2])
    assert info.joints3d[2, 23, 2] == 2232 and info.joints3d[0, 1, 2] == 12
    np.testing.assert_array_equal(info.joints3d, value)
    assert info.pose[1, 71] == 171 and info.pose[2, 0] == 200 and info.pose[0, 5] == 5
    assert info.shape[2, 9] == 29 and info.shape[1, 0] == 10
    assert list(info.zrot) == [0.5, 1.5, 2.5] and list(info.gender) == [0, 1, 0]
    assert list(info.cam_loc) == [6.0, -1.0, -2.0] and info.sequence == "01_01_c0001"


def test_frame_stack_readers_order_frames_by_number_past_nine(tmp_path):
    """depth_1 .. depth_11: frame t (1-based) of the result is depth_t, so depth_10 and
    depth_11 come after depth_9, not after depth_1 as the variable names sort as text."""
    path = str(tmp_path / "a_depth.mat")
    scipy.io.savemat(path, {f"depth_{t}": np.full((240, 320), float(t), np.float32)
                            for t in range(1, 12)})
    depth = surreal.load_depth(path)
    assert depth.shape == (11, 240, 320)
    assert [float(d[0, 0]) for d in depth] == [float(t) for t in range(1, 12)]


def test_cutting_a_clip_to_its_shortest_file_cuts_every_per_frame_annotation():
    """`load_clip` keeps the frames all four files share (`_cut_info`): cut to 2 of 3 frames,
    every per-frame array of the info (joints, zrot, gender, pose, shape) keeps its first 2
    frames, frame t holding the values t; the clip's camera is not per frame and stays."""
    def per_frame(*shape):
        return np.arange(3, dtype=np.float32).reshape((3,) + (1,) * len(shape)) + np.zeros(shape)

    info = surreal.ClipInfo(
        joints2d=per_frame(24, 2), joints3d=per_frame(24, 3), cam_loc=np.array([6.0, -1, -2]),
        zrot=per_frame(), gender=np.arange(3, dtype=np.uint8), pose=per_frame(72),
        shape=per_frame(10), sequence="01_01_c0001")
    cut = surreal._cut_info(info, 2)
    assert cut.num_frames == 2
    for name in ("joints2d", "joints3d", "zrot", "gender", "pose", "shape"):
        value = getattr(cut, name)
        assert len(value) == 2 and (value[0] == 0).all() and (value[1] == 1).all(), name
    assert list(cut.cam_loc) == [6.0, -1.0, -2.0] and cut.sequence == "01_01_c0001"


def test_reference_window_is_as_wide_as_a_person_lying_down():
    """Joints at x 0..200, y 100..120 (0-based), wider than tall: 1-based x 1..201, y
    101..121 (surreal training/loader_SURREAL.lua:47); getTightBox (surreal training/util.lua:
    128-147): w = 201, h = 21; x -49.25 to 251.25, width 301.5; y 101 - 7.35 = 93.65 to 121 +
    5.25 = 126.25, height 33.6. getCenter (util.lua:149-155): (-49.25 + 150.75, 93.65 + 16.8)
    = (101.5, 110.45); getScale (util.lua:157-160) takes the longer side: max(33.6, 301.5) /
    240 = 1.25625, a window of 251.25 px."""
    from hgmt.sources import reference_crop

    joints = np.zeros((16, 2))
    joints[:, 0] = np.linspace(0, 200, 16)
    joints[:, 1] = np.linspace(100, 120, 16)
    centre, scale = reference_crop.reference_centre_scale(joints)
    np.testing.assert_allclose(centre, [101.5, 110.45], atol=1e-9)
    assert scale == pytest.approx(1.25625, abs=1e-12)
    assert reference_crop.reference_box(joints)[1] == pytest.approx(251.25, abs=1e-9)


def test_reference_shrink_weighs_the_partly_covered_pixels_at_both_ends():
    """image.scale bilinear shrinking a row (generic/image.c scaleLinear_rowcol, dst < src):
    output di averages the source over [di t, (di + 1) t), t = src / dst, each end pixel
    weighted by the part covered.
    - 5 -> 2 px, t = 2.5, source (0, 0, 10, 0, 0): output 0 covers pixels 0, 1 and half of 2:
      (0 + 0 + 0.5 x 10) / 2.5 = 2; output 1 the other half of 2, and 3, 4: (0.5 x 10) / 2.5 = 2.
    - 13 -> 11 px, t = float32(13 / 11) = 1.1818181: float32(11 t) = 12.999999 falls short of
      13, so the last output covers 0.18 of pixel 11 (from 10 t = 11.818181) and 0.999999 of
      pixel 12, and the check that pixel 12 lies inside the row (12 < 13) keeps it: with only
      pixel 12 at 1, the last output is 0.999999 / 1.181818 = 0.846153 (11 / 13), the others 0."""
    from hgmt.sources import reference_crop

    out = reference_crop.scale_bilinear(np.array([[0, 0, 10, 0, 0]], np.float32), 1, 2)
    np.testing.assert_allclose(out, [[2.0, 2.0]], atol=1e-6)
    row = np.zeros((1, 13), np.float32)
    row[0, 12] = 1.0
    out = reference_crop.scale_bilinear(row, 1, 11)
    assert out.shape == (1, 11) and not out[0, :10].any()
    assert out[0, 10] == pytest.approx(11 / 13, abs=1e-5)


def test_reference_label_crop_enlarging_a_small_window_reaches_its_last_row_and_column():
    """crop(map, (100.3, 80), 0.3, 0, 64, 'simple') (surreal training/img.lua:87-144): a window
    of 60 px, scaleFactor 60 / 64 < 2 so 1 (img.lua:96-97); ul = trunc(c - 30 + 1e-4) + 1 =
    (71, 51), br = trunc(c + 30 + 1e-4) + 1 = (131, 111) (img.lua:113-114): a 60 x 60 block,
    map rows 50..109 and columns 70..129 (0-based). image.scale 'simple' to 64 x 64
    (generic/image.c scaleSimple): s = 60 / 64 = 0.9375, label (j, i) = block (trunc(0.9375 j),
    trunc(0.9375 i)): label 0 and 1 -> block 0, label 16 -> 15, label 63 -> trunc(59.06) = 59,
    the block's last row and column (clamped to the last only beyond it)."""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(_named_map(), np.array([100.3, 80.0]), 0.3)
    assert out[0, 0] == 50 * 1000 + 70 and out[1, 1] == 50 * 1000 + 70
    assert out[16, 16] == 65 * 1000 + 85
    assert out[63, 63] == 109 * 1000 + 129 and out[63, 0] == 109 * 1000 + 70
