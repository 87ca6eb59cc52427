"""Task modules: targets then decoding recovers the ground truth; names validate; metrics."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hgmt.sources import body, camera
from hgmt.tasks import (
    TASKS,
    all_subsets,
    channel_flips,
    common,
    depth,
    heads,
    parse_tasks,
    pose2d,
    pose3d,
    segm,
)

R = 64


def make_batch(seed=0, b=3, r=R):
    """A cropped batch consistent with docs/interfaces.md §4: camera-frame joints around 6.5 m
    projected with SURREAL's camera and mapped into the r x r label map by a crop affine."""
    rng = np.random.default_rng(seed)
    pelvis = np.stack([rng.uniform(-0.3, 0.3, b), rng.uniform(-0.3, 0.3, b),
                       rng.uniform(5.5, 7.5, b)], -1)
    joints = pelvis[:, None] + rng.uniform(-0.6, 0.6, (b, 16, 3)) * [1, 1.4, 0.5]
    joints[:, body.PELVIS] = pelvis
    uv = camera.project_camera(joints)
    lo, hi = uv.min(1) - 10, uv.max(1) + 10
    side = (hi - lo).max(1)
    scale = r / side
    crop = np.zeros((b, 2, 3))
    crop[:, 0, 0] = crop[:, 1, 1] = scale
    crop[:, :, 2] = -lo * scale[:, None]
    joints2d = np.einsum("bij,bnj->bni", crop[..., :2], uv) + crop[:, None, :, 2]
    seg = rng.integers(0, 15, (b, r, r))  # depths stay inside the ±9 bins below
    dep = np.where(seg > 0, pelvis[:, 2, None, None] + rng.uniform(-0.4, 0.4, (b, r, r)), 0)
    return {"joints2d": jnp.asarray(joints2d, jnp.float32),
            "visible": jnp.ones((b, 16), jnp.float32),
            "joints3d": jnp.asarray(joints, jnp.float32),
            "pelvis_depth": jnp.asarray(pelvis[:, 2], jnp.float32),
            "segm": jnp.asarray(seg, jnp.int32), "depth": jnp.asarray(dep, jnp.float32),
            "depth_class": jnp.asarray(depth.classes(dep.astype(np.float32), pelvis[:, 2]),
                                       jnp.int32),
            "crop": jnp.asarray(crop, jnp.float32),
            "image": jnp.zeros((b, 4 * r, 4 * r, 3), jnp.uint8)}


def test_parse_tasks():
    assert parse_tasks("segm+pose2d") == ("pose2d", "segm")
    assert parse_tasks("all") == tuple(TASKS) == ("pose2d", "pose3d", "depth", "segm")
    assert parse_tasks(["depth"]) == ("depth",)
    with pytest.raises(ValueError, match="pose2d, pose3d, depth, segm"):
        parse_tasks("pose2d+normals")
    with pytest.raises(ValueError, match="unknown task"):
        parse_tasks("")
    # heads and channel_flips take tasks as parse_tasks does (before: a '+'-joined string
    # was taken letter by letter, KeyError: 'p').
    assert list(heads("segm+pose2d")) == list(heads(["pose2d", "segm"])) == ["pose2d", "segm"]
    assert list(channel_flips("all")) == list(TASKS)
    with pytest.raises(ValueError, match="unknown task"):
        heads(["hands"])


def test_task_modules_share_one_interface():
    for name, module in TASKS.items():
        assert module.NAME == name
        for attr in ("NUM_CHANNELS", "DEFAULT_LOSS_WEIGHT", "LOSS_OPTIONS", "targets", "loss",
                     "decode", "metric_stats", "summarize"):
            assert hasattr(module, attr), (name, attr)


def test_pose2d_targets_decode_within_half_pixel():
    batch = make_batch()
    heat = jax.jit(pose2d.targets)(batch)
    assert heat.shape == (3, R, R, 16)
    np.testing.assert_allclose(heat.max(axis=(1, 2)), 1.0, atol=0.25)
    dec = pose2d.decode(heat, batch)
    err = np.linalg.norm(np.asarray(dec["joints2d"] - batch["joints2d"]), axis=-1)
    assert err.max() < 0.5
    assert err.mean() < 0.05  # the parabola refinement is exact for Gaussians
    # Back in original image pixels through the inverse crop.
    uv = camera.project_camera(np.asarray(batch["joints3d"], np.float64))
    scale = float(batch["crop"][0, 0, 0])
    assert np.abs(np.asarray(dec["joints2d_image"]) - uv).max() < 0.5 / scale + 1e-3


def test_invisible_joints_get_empty_heatmaps():
    batch = make_batch()
    batch["visible"] = batch["visible"].at[:, 3].set(0.0)
    assert float(jnp.abs(pose2d.targets(batch)[..., 3]).max()) == 0.0


def test_a_joint_in_any_pixel_of_the_label_map_is_visible():
    """Label pixel k is centred at k and spans [k - 0.5, k + 0.5): on an 8 x 8 map a joint at
    x = -0.4 or 7.4 lies in pixel 0 or 7 (visible), one at -0.6 or 7.5 beyond it."""
    from hgmt.tasks import spec

    joints = np.full((24, 2), 3.0)
    for k, (x, y) in enumerate([(-0.4, 3), (7.4, 3), (3, -0.4), (3, 7.4), (-0.6, 3), (7.5, 3),
                                (3, -0.6), (3, 7.5)]):
        joints[body.SMPL_TO_JOINT[k]] = (x, y)
    crop = spec.Crop({"joints2d": joints}, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 8, False,
                     lambda record, key: None)
    np.testing.assert_array_equal(spec.joint_labels(crop)["visible"], [1] * 4 + [0] * 4 + [1] * 8)


def _one_joint_batch(r: int = 16) -> dict:
    """One example whose joint 0 lies at label pixel (x 10, y 5), 0.2 m nearer the camera than
    the pelvis (bin round(-0.2 / 0.045) = -4); the other joints are not visible."""
    joints2d = np.zeros((1, 16, 2), np.float32)
    joints2d[0, 0] = (10, 5)
    joints3d = np.full((1, 16, 3), 6.0, np.float32)
    joints3d[0, 0, 2] = 5.8
    return {"joints2d": jnp.asarray(joints2d),
            "visible": jnp.asarray(np.eye(16, dtype=np.float32)[:1]),
            "joints3d": jnp.asarray(joints3d), "pelvis_depth": jnp.asarray([6.0], jnp.float32),
            "image": jnp.zeros((1, 4 * r, 4 * r, 3), jnp.uint8)}


def test_pose_targets_are_unit_gaussians_of_sigma_one_label_pixel():
    """Hand values of exp(-d^2 / 2) for d^2 = 0, 1, 2, 4 (pixels; and bins for pose3d): the
    reference's sigma of 1 at the label map's resolution."""
    batch = _one_joint_batch()
    heat = np.asarray(pose2d.targets(batch))[0]  # (r,r,16) [y, x, joint]
    for (y, x), want in {(5, 10): 1.0, (5, 11): np.exp(-0.5), (4, 10): np.exp(-0.5),
                         (6, 11): np.exp(-1.0), (7, 10): np.exp(-2.0)}.items():
        assert heat[y, x, 0] == pytest.approx(want, rel=1e-6), (y, x)
    assert np.abs(heat[..., 1:]).max() == 0.0  # not visible: empty
    vol = np.asarray(pose3d.targets(batch))[0].reshape(16, 16, 16, 19)  # [y, x, joint, bin+9]
    k = -4 + 9
    assert vol[5, 10, 0, k] == pytest.approx(1.0, rel=1e-6)
    assert vol[5, 10, 0, k + 1] == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert vol[5, 11, 0, k - 1] == pytest.approx(np.exp(-1.0), rel=1e-6)
    assert vol[5, 10, 0, k + 2] == pytest.approx(np.exp(-2.0), rel=1e-6)
    assert np.abs(vol[..., 1:, :]).max() == 0.0


@pytest.mark.parametrize("task", [pose2d, pose3d])
def test_pose_losses_are_the_mean_square_error_over_every_map_value(task):
    """A prediction c above the target everywhere costs c^2; a zero prediction costs the
    target's squared sum, separable per axis (sum over the offsets of exp(-k^2)), over the
    count of values."""
    batch = _one_joint_batch()
    target = task.targets(batch)
    assert float(task.loss(target + 0.5, target)) == pytest.approx(0.25, rel=1e-6)
    x, y = np.arange(16) - 10, np.arange(16) - 5
    squared = np.exp(-x.astype(float) ** 2).sum() * np.exp(-y.astype(float) ** 2).sum()
    if task is pose3d:
        squared *= np.exp(-(np.arange(19) - 5.0) ** 2).sum()
    assert float(task.loss(jnp.zeros_like(target), target)) == pytest.approx(
        squared / target.size, rel=1e-5)


def test_pose3d_targets_decode_within_half_bin():
    batch = make_batch(seed=1)
    vol = jax.jit(pose3d.targets)(batch)
    assert vol.shape == (3, R, R, 16 * 19)
    dec = pose3d.decode(vol, batch)
    gt = pose3d.root_relative_mm(batch["joints3d"])
    err = np.asarray(dec["joints3d_rel_mm"] - gt)
    assert np.abs(err[..., 2]).max() <= 22.5 + 0.1  # depth: within half a 45 mm bin
    # x,y follow from the 2D location back-projected at that depth: a few mm more at most.
    assert np.linalg.norm(err, axis=-1).max() < 22.5 * 1.05
    np.testing.assert_array_equal(dec["joints3d_rel_mm"][:, body.PELVIS], 0.0)


def test_never_visible_joint_is_not_averaged_as_zero():
    """Perfect heatmaps with one joint never visible in the split score 1, not 15/16."""
    batch = make_batch(seed=5)
    batch["visible"] = batch["visible"].at[:, 3].set(0.0)
    s = _summaries(pose2d, pose2d.targets(batch), batch)
    assert s["pckh@0.5"] == 1.0 and s["pck@3.2px"] == 1.0
    assert s["pckh@0.5_per_joint"]["l_hip"] is None
    assert s["pckh@0.5_per_joint"]["r_hip"] == 1.0
    assert s["pckh_curve"]["mean"][-1] == 1.0


@pytest.fixture(scope="module")
def demo_record():
    """The builder's record of one rendered demo frame (no files): raw frame, raw SMPL
    segments, depth in mm, 24 SMPL joints and the camera."""
    from hgmt.sources import synthetic_person

    rng = np.random.default_rng(3)
    motion, look = synthetic_person.make_motion(rng, 4), synthetic_person.make_look(rng)
    rgb, dep, seg = synthetic_person.render_frame(motion, look, 2)
    pelvis = motion.joints_world[2][body.SMPL_TO_JOINT[body.PELVIS]]
    return {"image": rgb, "segm": seg[..., None],
            "depth": np.where(seg > 0, np.round(dep * 1000), 0).astype(np.uint16)[..., None],
            "depth_class": depth.classes(np.where(seg > 0, dep, 0), float(
                motion.cam_loc[0]) - float(pelvis[0]))[..., None],
            "joints2d": camera.project(motion.joints_world[2], motion.cam_loc).astype(
                np.float32),
            "joints3d": motion.joints_world[2].astype(np.float32), "cam_loc": motion.cam_loc}


@pytest.mark.parametrize("scale_sigma,rotate_p,flip_p", [
    (0.0, 0.0, 0.0), (0.0, 0.0, 1.0), (0.0, 1.0, 0.0), (0.25, 1.0, 1.0), (0.25, 0.0, 0.0)])
def test_pose3d_target_decodes_to_its_own_crop_pose(demo_record, scale_sigma, rotate_p, flip_p):
    """For any crop
    (flipped, rotated, scaled), decoding the target gives back the crop's 3D joints within
    the quantisation: depth within half a 45 mm bin."""
    from hgmt.data import cropping
    from hgmt.data import input_pipeline as ip

    augment = ip.Augment(scale_sigma=scale_sigma, rotate_p=rotate_p, rotate_sigma=40.0,
                         gain=(1.0, 1.0), flip_p=flip_p)
    for seed in range(3):
        ex = cropping.crop_example(demo_record, 256, augment, np.random.default_rng(seed))
        batch = {k: jnp.asarray(v)[None] for k, v in ex.items()}
        assert batch["visible"].sum() == 16
        if flip_p:
            assert float(common.crop_mirror(batch["crop"])[0]) == -1.0
        dec = pose3d.decode(pose3d.targets(batch), batch)
        gt = np.asarray(pose3d.root_relative_mm(batch["joints3d"]))[0]
        err = np.linalg.norm(np.asarray(dec["joints3d_rel_mm"])[0] - gt, axis=-1)
        inside = np.abs(gt[:, 2]) <= 9 * 45  # beyond, depth is clamped to the last bin
        assert inside.sum() >= 14
        assert err[inside].max() < 22.5 * 1.05 and err[inside].mean() < 15.0, (seed, err)


def test_joint_bins_round_as_bodynet():
    # gulvarol/bodynet training/donkey.lua:321: clamp(torch.round(z / 0.045), -9, 9); torch
    # rounds halves away from zero.
    np.testing.assert_array_equal(
        common.joint_bin(jnp.array([0.0, 0.02, 0.0225, 0.023, -0.0225, -0.05, 1.0, -1.0])),
        [0, 0, 1, 1, -1, -1, 9, -9])


@pytest.mark.parametrize("name", ["depth", "segm"])
def test_foreground_weighted_loss(name):
    """Weight 1 is SURREAL's plain spatial cross-entropy, exactly; weight w counts a foreground
    pixel w times (crafted: one foreground and one background pixel of known cross-entropy)."""
    task = TASKS[name]
    n = task.NUM_CHANNELS
    logits = np.zeros((1, 1, 2, n), np.float32)
    logits[0, 0, 1, 0] = np.log(3.0 * (n - 1))  # background: p = 3/4
    target = np.array([[[5, 0]]], np.int32)  # a foreground class (uniform logits), background
    ce_fg, ce_bg = np.log(n), -np.log(0.75)
    plain = task.loss(jnp.asarray(logits), jnp.asarray(target))
    assert plain == common.spatial_cross_entropy(jnp.asarray(logits), jnp.asarray(target))
    np.testing.assert_allclose(plain, (ce_fg + ce_bg) / 2, rtol=1e-6)
    weighted = task.loss(jnp.asarray(logits), jnp.asarray(target), foreground_weight=9.0)
    np.testing.assert_allclose(weighted, (9 * ce_fg + ce_bg) / 10, rtol=1e-6)
    assert task.LOSS_OPTIONS == {"foreground_weight": 1.0}
    for other in ("pose2d", "pose3d"):
        assert TASKS[other].LOSS_OPTIONS == {}


def test_the_foreground_weighted_loss_under_pmap_is_the_global_batchs():
    """Split over devices with the axis named, the devices' mean of the weighted loss is the
    whole batch's sum(w * ce) / sum(w), however unequal their foreground; without the axis
    each device's is its own ratio, whose mean is another number."""
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(4, 3, 3, segm.NUM_CHANNELS)), jnp.float32)
    target = rng.integers(1, segm.NUM_CHANNELS, (4, 3, 3))
    target[:2] = np.where(rng.random((2, 3, 3)) < 0.2, target[:2], 0)  # little foreground
    target = jnp.asarray(target, jnp.int32)
    whole = segm.loss(logits, target, foreground_weight=10.0)
    w = np.where(np.asarray(target) > 0, 10.0, 1.0)
    ce = np.asarray(optax.softmax_cross_entropy_with_integer_labels(logits, target))
    np.testing.assert_allclose(whole, (w * ce).sum() / w.sum(), rtol=1e-6)

    def devices_mean(axis_name):
        share = jax.pmap(lambda p, t: segm.loss(p, t, axis_name=axis_name,
                                                foreground_weight=10.0),
                         axis_name="batch", devices=jax.devices()[:2])
        return float(np.mean(share(logits.reshape(2, 2, 3, 3, -1), target.reshape(2, 2, 3, 3))))

    np.testing.assert_allclose(devices_mean("batch"), whole, rtol=1e-6)
    assert abs(devices_mean(None) - float(whole)) > 0.05


def test_compute_losses_passes_each_task_its_loss_options():
    from hgmt.tasks import compute_losses

    batch = make_batch()
    logits = jax.random.normal(jax.random.key(0), (2, 3, R, R, depth.NUM_CHANNELS))
    logits = logits.at[..., 0].add(3.0)  # a head that says background: low loss there only
    target = depth.targets(batch)
    expected = sum(depth.loss(logits[s], target, foreground_weight=5.0) for s in range(2))
    total, per_task = compute_losses({"depth": logits}, batch, {"depth": 2.0},
                                     {"depth": {"foreground_weight": 5.0}})
    np.testing.assert_allclose(per_task["depth"], expected, rtol=1e-6)
    np.testing.assert_allclose(total, 2.0 * expected, rtol=1e-6)
    _, default = compute_losses({"depth": logits}, batch, {"depth": 1.0})
    assert float(expected) > float(default["depth"]) + 0.2


def test_depth_and_segm_decode_exactly():
    batch = make_batch(seed=2)
    t = depth.targets(batch)
    assert int(t.min()) >= 0 and int(t.max()) <= 19
    np.testing.assert_array_equal(np.asarray(t) == 0, np.asarray(batch["depth"]) == 0)
    logits = jax.nn.one_hot(t, depth.NUM_CHANNELS) * 10
    dec = depth.decode(logits, batch)
    np.testing.assert_array_equal(dec["depth_classes"], t)
    fg = np.asarray(batch["depth"]) > 0
    assert np.abs(np.asarray(dec["depth_m"])[fg] - np.asarray(batch["depth"])[fg]).max() <= (
        0.0225 + 1e-4)
    s = segm.targets(batch)
    np.testing.assert_array_equal(segm.decode(jax.nn.one_hot(s, 15), batch)["segm_classes"], s)


def test_raw_to_part():
    raw = np.arange(25, dtype=np.uint8)
    np.testing.assert_array_equal(segm.raw_to_part(raw), body.SEGM_TO_PART)
    np.testing.assert_array_equal(segm.raw_to_part(jnp.asarray(raw)), body.SEGM_TO_PART)


def test_pose3d_channel_flip_swaps_left_and_right_joints_keeping_the_bin():
    """Channel j*19+k (joint j at depth bin k) goes, under a horizontal flip, to the channel
    of joint j's mirror twin by name ('l_' <-> 'r_', others themselves) at the same bin."""
    names = list(body.JOINT_NAMES)
    twin = {"l_": "r_", "r_": "l_"}
    expected = []
    for name in names:
        mirror = twin[name[:2]] + name[2:] if name[:2] in twin else name
        expected += [names.index(mirror) * 19 + k for k in range(19)]
    assert len(expected) == 304 and pose3d.NUM_CHANNELS == 304
    np.testing.assert_array_equal(pose3d.CHANNEL_FLIP, expected)
    assert expected[0] == names.index("l_ankle") * 19  # r_ankle's bin 0 -> l_ankle's
    assert expected[6 * 19 + 5] == 6 * 19 + 5  # pelvis stays


def _summaries(task, pred_batch, batch):
    dec = task.decode(pred_batch, batch)
    return task.summarize(task.metric_stats(dec, batch))


def test_metrics_perfect_predictions():
    batch = make_batch(seed=3)
    assert _summaries(pose2d, pose2d.targets(batch), batch)["pckh@0.5"] == 1.0
    assert _summaries(pose3d, pose3d.targets(batch), batch)["mjd_mm"] < 22.5
    d = _summaries(depth, jax.nn.one_hot(depth.targets(batch), 20), batch)
    assert d["rmse_mm"] == 0.0 and d["bin_accuracy"] == 1.0
    s = _summaries(segm, jax.nn.one_hot(segm.targets(batch), 15), batch)
    assert s["mean_iou"] == 1.0 and s["pixel_accuracy"] == 1.0


def test_metrics_known_offsets():
    batch = make_batch(seed=4, b=2)
    gt = batch["joints2d"]
    head = np.linalg.norm(np.asarray(gt[:, body.HEAD_TOP] - gt[:, body.UPPER_NECK]), axis=-1)
    # Shift every joint by 0.4 head segments: correct at PCKh@0.5; by 0.52 or 0.6: wrong (0.52
    # is wrong at 0.5 but right at the next threshold, 0.55). The curve's thresholds are
    # 0, 0.05, ..., 1 head segments; a joint counts where its distance <= the threshold.
    thresholds = np.arange(21) / 20
    for frac, expected in ((0.4, 1.0), (0.52, 0.0), (0.6, 0.0)):
        dec = {"joints2d": gt + jnp.asarray(head * frac, jnp.float32)[:, None, None]
               * jnp.array([1.0, 0.0])}
        s = pose2d.summarize(pose2d.metric_stats(dec, batch))
        assert s["pckh@0.5"] == expected, frac
        np.testing.assert_allclose(s["pckh_curve"]["thresholds"], thresholds, atol=1e-12)
        # 1 from the shift on, 0 below; not at a threshold equal to the shift, where float32
        # rounding of the shifted joints decides.
        apart = np.abs(thresholds - frac) > 1e-6
        np.testing.assert_array_equal(np.asarray(s["pckh_curve"]["mean"])[apart],
                                      (thresholds > frac)[apart], err_msg=str(frac))
    # 3D: every non-pelvis joint off by 30 mm along x -> MJD = 15/16 * 30 mm.
    rel = pose3d.root_relative_mm(batch["joints3d"])
    off = jnp.zeros_like(rel).at[..., 0].set(30.0).at[:, body.PELVIS].set(0.0)
    mjd = pose3d.summarize(pose3d.metric_stats({"joints3d_rel_mm": rel + off}, batch))
    assert mjd["mjd_mm"] == pytest.approx(30.0 * 15 / 16, abs=1e-3)
    # Depth: every foreground bin one off -> RMSE 45 mm, accuracy 0.
    t = depth.targets(batch)
    off_by_one = {"depth_classes": jnp.where(t > 0, jnp.where(t < 19, t + 1, t - 1), 0)}
    d = depth.summarize(depth.metric_stats(off_by_one, batch))
    assert d["rmse_mm"] == pytest.approx(45.0, abs=1e-3) and d["bin_accuracy"] == 0.0
    # Segmentation: hand-computed IoU on a 2-pixel case.
    one = {"segm": jnp.array([[[1, 2]]], jnp.int32)}
    s = segm.summarize(segm.metric_stats({"segm_classes": jnp.array([[[1, 1]]])}, one))
    assert s["iou_per_part"]["head"] == 0.5 and s["iou_per_part"]["torso"] == 0.0
    # Parts in neither labels nor predictions are not scored: the mean is over head and torso.
    assert s["iou_per_part"]["r_hand"] is None and s["mean_iou"] == 0.25
    assert s["pixel_accuracy"] == 0.5
    # A part only predicted is scored too: labels head, torso, torso; predictions head, head,
    # r_hand (class 8, absent from the labels): head 1/2, torso 0/2, r_hand 0/1 -> mean 1/6.
    three = {"segm": jnp.array([[[1, 2, 2]]], jnp.int32)}
    s = segm.summarize(segm.metric_stats({"segm_classes": jnp.array([[[1, 1, 8]]])}, three))
    assert s["iou_per_part"]["r_hand"] == 0.0 and s["iou_per_part"]["head"] == 0.5
    assert s["mean_iou"] == pytest.approx(1 / 6) and s["pixel_accuracy"] == pytest.approx(1 / 3)


def test_all_task_combinations_are_fifteen():
    """all_subsets() lists the 15 non-empty subsets of the four tasks, written out here by
    hand, singles first, each in the tasks' canonical order."""
    a, b, c, d = TASKS
    assert all_subsets() == [
        (a,), (b,), (c,), (d,),
        (a, b), (a, c), (a, d), (b, c), (b, d), (c, d),
        (a, b, c), (a, b, d), (a, c, d), (b, c, d),
        (a, b, c, d)]
    assert all(parse_tasks("+".join(s)) == s for s in all_subsets())


def test_the_video_skeleton_sits_where_the_panel_puts_the_joints():
    """Label px -> crop picture px with pixel centres at integers: label px k of 16 spans
    picture px 4k-0.5 .. 4k+3.5 of 64, centre 4k+1.5; `pose2d.draw` (the video's picture)
    puts a joint there, as the panel's `plot` does."""
    from hgmt.tasks import pose2d
    from hgmt.tasks.common import label_to_crop_px

    np.testing.assert_allclose(label_to_crop_px(np.array([[0.0, 0.0], [15.0, 8.0]]), 64, 16),
                               [[1.5, 1.5], [61.5, 33.5]])
    # Every joint at label (x=6.2, y=9.95), a sigma-1 Gaussian whose log-parabola peak is
    # exactly there: picture px (4 * 6.2 + 1.5, 4 * 9.95 + 1.5) = (26.3, 41.3), drawn
    # at whole pixel (26, 41); half a label px off, (27, 42), is 0.7 away.
    yy, xx = np.mgrid[0:16, 0:16]
    blob = np.exp(-((xx - 6.2) ** 2 + (yy - 9.95) ** 2) / 2).astype(np.float32)
    pred = np.repeat(blob[..., None], 16, -1)
    drawn = pose2d.draw(pred, np.zeros((64, 64, 3), np.uint8), None)
    ys, xs = np.nonzero(drawn.sum(-1) > 0)
    assert abs(xs.mean() - 26.3) <= 0.4 and abs(ys.mean() - 41.3) <= 0.4, (xs.mean(), ys.mean())


def test_a_peak_on_the_maps_border_is_not_refined_on_that_axis():
    """pose2d.SUBPIXEL_PEAK: on the border (x = 0 or x = r - 1; likewise y) the offset is 0,
    since one of the parabola's three points is missing. Gaussians (sigma 1) centred at
    x = 7.3 and x = -0.3 of an 8 x 8 map peak at columns 7 and 0: x is 7 and 0 exactly, while y
    (3.4, off the border) is refined by the parabola, exact for a Gaussian."""
    maps = common.gaussian(jnp.array([[7.3, 3.4], [-0.3, 3.4]], jnp.float32), 8)
    xy, _ = common.subpixel_argmax(maps)
    assert np.asarray(xy[:, 0]).tolist() == [7.0, 0.0]
    np.testing.assert_allclose(np.asarray(xy[:, 1]), [3.4, 3.4], atol=1e-4)
    # Transposed: the border is the last and the first row, x refined.
    xy, _ = common.subpixel_argmax(jnp.swapaxes(maps, -1, -2))
    assert np.asarray(xy[:, 1]).tolist() == [7.0, 0.0]
    np.testing.assert_allclose(np.asarray(xy[:, 0]), [3.4, 3.4], atol=1e-4)


def test_pck_means_are_over_joints_not_over_pooled_joint_instances():
    """Both PCKs are the mean over the joints seen in the split of each joint's correct /
    visible, not correct / visible pooled over the joints. Two examples, only r_ankle (seen in
    both) and l_wrist (seen in the first only) visible; r_ankle is 100 px off in the second,
    every other joint exact: r_ankle 1/2, l_wrist 1/1, mean (1/2 + 1) / 2 = 3/4 (pooled: 2/3)."""
    batch = make_batch(seed=6, b=2)
    ankle, wrist = body.JOINT_NAMES.index("r_ankle"), body.JOINT_NAMES.index("l_wrist")
    batch["visible"] = jnp.zeros((2, 16), jnp.float32).at[:, ankle].set(1.0).at[
        0, wrist].set(1.0)
    dec = {"joints2d": batch["joints2d"].at[1, ankle, 0].add(100.0)}
    s = pose2d.summarize(pose2d.metric_stats(dec, batch))
    assert s["pckh@0.5"] == 0.75 and s["pck@3.2px"] == 0.75
    assert s["pckh@0.5_per_joint"]["r_ankle"] == 0.5
    assert s["pckh@0.5_per_joint"]["l_wrist"] == 1.0
    assert s["pckh@0.5_per_joint"]["r_hip"] is None


def test_pose2d_and_segm_channel_flips_swap_left_and_right():
    """A horizontal flip swaps each 'l_'/'r_' channel with its twin and keeps the others:
    joints r_ankle, r_knee, r_hip, l_hip, l_knee, l_ankle (0-5), pelvis, thorax, upper_neck,
    head_top (6-9, kept), r_wrist, r_elbow, r_shoulder, l_shoulder, l_elbow, l_wrist (10-15);
    classes background, head, torso (0-2, kept), l_upper_arm, l_forearm, l_hand (3-5) with
    r_upper_arm, r_forearm, r_hand (6-8), l_upper_leg, l_lower_leg, l_foot (9-11) with
    r_upper_leg, r_lower_leg, r_foot (12-14). Depth bins keep their channels."""
    assert tuple(pose2d.CHANNEL_FLIP) == (5, 4, 3, 2, 1, 0, 6, 7, 8, 9, 15, 14, 13, 12, 11, 10)
    assert tuple(segm.CHANNEL_FLIP) == (0, 1, 2, 6, 7, 8, 3, 4, 5, 12, 13, 14, 9, 10, 11)
    assert tuple(depth.CHANNEL_FLIP) == tuple(range(20))
    assert channel_flips("pose2d+segm") == {"pose2d": tuple(pose2d.CHANNEL_FLIP),
                                            "segm": tuple(segm.CHANNEL_FLIP)}


def test_mjd_aligns_the_prediction_at_its_own_pelvis():
    """MJD compares pelvis-relative joints, each pose at its own pelvis: a prediction that is
    the ground truth moved 30 mm along x, pelvis included, has MJD 0 (aligned at the ground
    truth's pelvis every joint would be 30 mm off)."""
    batch = make_batch(seed=7, b=2)
    moved = batch["joints3d"].at[..., 0].add(0.03)
    dec = {"joints3d": moved, "joints3d_rel_mm": pose3d.root_relative_mm(moved)}
    s = pose3d.summarize(pose3d.metric_stats(dec, batch))
    assert s["mjd_mm"] == pytest.approx(0.0, abs=1e-3)


def test_pose3d_decoding_puts_the_pelvis_at_its_own_depth_whatever_its_volume_says():
    """The pelvis is the depth reference (OUTPUT_LAYOUT's bin b = 0): a pelvis volume peaking
    at bin +3 (the ground-truth pelvis 3 x 45 mm = 135 mm behind batch['pelvis_depth']) still
    decodes at pelvis_depth, and the other joints keep their own bins."""
    batch = make_batch(seed=8, b=2)
    moved = dict(batch, joints3d=batch["joints3d"].at[:, body.PELVIS, 2].add(0.135))
    bins = pose3d.joint_bins(moved)
    assert np.asarray(bins[:, body.PELVIS]).tolist() == [3, 3]
    dec = pose3d.decode(pose3d.targets(moved), moved)
    np.testing.assert_allclose(np.asarray(dec["joints3d"][:, body.PELVIS, 2]),
                               np.asarray(batch["pelvis_depth"]), rtol=0, atol=1e-6)
    others = np.arange(16) != body.PELVIS
    np.testing.assert_allclose(
        np.asarray(dec["joints3d"][:, others, 2]),
        np.asarray(batch["pelvis_depth"][:, None] + bins[:, others] * 0.045), atol=1e-5)


def test_mean_iou_leaves_the_background_out_pixel_accuracy_counts_it():
    """Labels background, head, torso, background; predictions background, head, head, head.
    Background IoU 1/2 (1 common pixel, union 2), head 1/3 (1, union 3), torso 0 (0, union
    1): mean IoU over the foreground parts (1/3 + 0) / 2 = 1/6, not (1/2 + 1/3 + 0) / 3 with
    the background; pixel accuracy over every pixel, background included, 2/4."""
    labels = {"segm": jnp.array([[[0, 1, 2, 0]]], jnp.int32)}
    s = segm.summarize(segm.metric_stats({"segm_classes": jnp.array([[[0, 1, 1, 1]]])},
                                         labels))
    assert s["mean_iou"] == pytest.approx(1 / 6) and s["pixel_accuracy"] == 0.5
    assert s["iou_per_part"]["head"] == pytest.approx(1 / 3)
    assert s["iou_per_part"]["torso"] == 0.0 and "background" not in s["iou_per_part"]


def test_depth_prediction_is_each_bins_centre_in_millimetres():
    """OUTPUT_LAYOUT: class c > 0 is bin b = c - 10 holding ((b - 1) * 45, b * 45] mm, decoded
    at its centre (b - 0.5) * 45 mm: classes 1, 10, 19 (bins -9, 0, 9) give -427.5, -22.5 and
    382.5 mm; the background (class 0) none (NaN)."""
    from hgmt.tasks.spec import Frame

    classes = np.array([[0, 1], [10, 19]])
    frame = Frame(batch={"crop": np.eye(2, 3, dtype=np.float32)[None],
                         "pelvis_depth": np.array([6.0], np.float32)})
    result = depth.predict(np.eye(20, dtype=np.float32)[classes], frame)
    assert np.asarray(result["depth"]).tolist() == classes.tolist()
    rel = result["depth_rel_mm"]
    assert np.isnan(rel[0, 0])
    np.testing.assert_allclose(rel.ravel()[1:], [-427.5, -22.5, 382.5], rtol=1e-6)


def test_crop_mirror_is_the_sign_of_the_affines_determinant():
    """A crop mirrors the image where its linear part has a negative determinant, whatever its
    rotation: a plain flip diag(-1, 1) (det -1) mirrors; a half turn diag(-1, -1) (det +1)
    does not, though its x axis is reversed too; the swap of x and y [[0, 1], [1, 0]] (det
    -1, a flip then a quarter turn) mirrors though its x-to-x entry is 0; scale is no part."""
    crops = jnp.asarray([[[-1, 0, 15], [0, 1, 0]], [[-1, 0, 15], [0, -1, 15]],
                         [[0, 1, 0], [1, 0, 0]], [[0.5, 0, 3], [0, 0.5, 2]]], jnp.float32)
    assert np.asarray(common.crop_mirror(crops)).tolist() == [-1.0, 1.0, -1.0, 1.0]


def test_pose3d_reads_the_bin_at_the_rounded_sub_pixel_peak():
    """decode's bin is the argmax of the joint's 19 channels at label px (round(x),
    round(y)). Joint 0's volume is a sigma-1 Gaussian in (x, y) centred at (5.6, 5.0) (its
    sub-pixel peak, exact for a Gaussian) that is one-hot in bin +3 at columns x >= 6 and in
    bin -2 left of them: round(5.6) = 6 reads bin +3, so joint 0 decodes at the pelvis depth
    6.0 m + 3 x 45 mm (truncating 5.6 to 5 would read bin -2, 6.0 - 0.09)."""
    r = 16
    yy, xx = np.mgrid[0:r, 0:r]
    plane = np.exp(-((xx - 5.6) ** 2 + (yy - 5.0) ** 2) / 2)
    vol = np.zeros((r, r, 16, 19), np.float32)  # [y, x, joint, bin + 9]
    vol[..., 0, 3 + 9] = np.where(xx >= 6, plane, 0)
    vol[..., 0, -2 + 9] = np.where(xx >= 6, 0, plane)
    batch = {"crop": jnp.asarray(np.eye(2, 3)[None], jnp.float32),
             "pelvis_depth": jnp.asarray([6.0], jnp.float32)}
    dec = pose3d.decode(jnp.asarray(vol.reshape(1, r, r, 16 * 19)), batch)
    assert float(dec["joints3d"][0, 0, 2]) == pytest.approx(6.0 + 3 * 0.045, abs=1e-6)


def test_a_joint_on_the_left_or_top_edge_of_pixel_zero_is_visible():
    """Pixel 0 spans [-0.5, 0.5), its left and top edge included: on an 8 x 8 map a joint at
    x = -0.5 or y = -0.5 is visible, as one at x = 7.5 (the right edge of pixel 7, which
    belongs to no pixel) is not."""
    from hgmt.tasks import spec

    joints = np.full((24, 2), 3.0)
    for k, xy in enumerate([(-0.5, 3), (3, -0.5), (-0.5, -0.5), (7.5, 3)]):
        joints[body.SMPL_TO_JOINT[k]] = xy
    crop = spec.Crop({"joints2d": joints}, np.array([[1.0, 0, 0], [0, 1.0, 0]]), 8, False,
                     lambda record, key: None)
    np.testing.assert_array_equal(spec.joint_labels(crop)["visible"], [1, 1, 1, 0] + [1] * 12)


def test_depth_decodes_each_class_at_its_bins_centre_and_the_background_at_zero():
    """depth.decode: class c > 0 is bin b = c - 10, at the pelvis depth plus (b - 0.5) x 45 mm;
    the predicted background is 0 m. With the pelvis at 6 m, classes 1, 10, 19 (bins -9, 0, 9)
    decode at 6 - 0.4275, 6 - 0.0225 and 6 + 0.3825 m, class 0 at 0."""
    classes = np.array([[[0, 1], [10, 19]]])
    dec = depth.decode(jnp.asarray(np.eye(20, dtype=np.float32)[classes]),
                       {"pelvis_depth": jnp.asarray([6.0], jnp.float32)})
    assert np.asarray(dec["depth_classes"]).tolist() == classes.tolist()
    np.testing.assert_allclose(np.asarray(dec["depth_m"])[0],
                               [[0.0, 6.0 - 0.4275], [6.0 - 0.0225, 6.0 + 0.3825]], atol=1e-6)
