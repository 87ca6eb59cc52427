"""Metric protocols: each reproduces the reference code on crafted predictions.

Every expected value below was computed by hand from the reference files, cited as
repository/path:line (gulvarol/bodynet at commit f07dec6, gulvarol/surreal at commit 6a8d1a1,
as docs/metrics.md pins them).
"""

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from hgmt import workdirs
from hgmt.evaluation import evaluator, markdown, protocols
from hgmt.sources import body, reference_crop
from hgmt.tasks import TASKS, depth, pose2d, pose3d, segm

R = 64


def _run(protocol, task, pred, batch):
    m = protocols.metric(protocol, task, int(batch.get("position", jnp.zeros(1)).shape[0]))
    return m.protocol, m.summarize(jax.tree.map(np.asarray, m.stats(pred, batch)))


# --- BodyNet 2D PCK -----------------------------------------------------------------------------
def _heatmaps(pred_xy, b):
    """One-hot (b, R, R, 16) heatmaps at integer 0-based (x, y) pixels."""
    pred = np.zeros((b, R, R, 16), np.float32)
    for i in range(b):
        for j in range(16):
            x, y = np.asarray(pred_xy[i, j]).astype(int)
            if 0 <= x < R and 0 <= y < R:
                pred[i, y, x, j] = 1.0
    return pred


def _pose2d_case():
    """14 examples, identity crop (label px = image px): BodyNet test batches A = ex 0-3,
    B = 4-7, C = 8-11 and the partial batch 12-13. Ground truth joint j at (10 + 2j, 20);
    predictions one-hot at the ground truth unless changed below. BodyNet's label x is
    hgmt's + 0.5 (bodynet training/util/img.lua:18-28 maps the crop window onto [0, 64],
    hgmt onto [-0.5, 63.5]), so ground truth (10 + 2j, 20) is BodyNet's (10.5 + 2j, 20.5):
    pixel trunc(10.5 + 2j) + 1 = 11 + 2j, 1-based, where the prediction is."""
    b = 14
    gt = np.stack([np.stack([10.0 + 2 * np.arange(16), np.full(16, 20.0)], -1)] * b)
    pred_xy = gt.copy()
    # Batch A.
    gt[0, 1, 0] = 2.0  # r_knee: BodyNet 2.5, pixel trunc(2.5) + 1 = 3, drawn peaked at 4
    pred_xy[0, 1] = [6, 20]  # 3 px from the peak (0-based 3): correct; 4 px from pixel 2
    gt[1, 2, 1] = -0.5  # r_hip: image y (1-based) 0.5 is not > 1: not drawn, not scored
    pred_xy[1, 2] = [14, 30]  # (it would be pixel 1 -> peak 3, 10 px away: wrong)
    gt[1, 3, 1] = 0.25  # l_hip: image y 1.25 (1-based) is drawn, at BodyNet 0.75: pixel 1,
    # peaked at 3 -> scored
    pred_xy[1, 3] = [16, 7]  # 5 px from the peak (0-based 2): wrong
    gt[2, 4, 0] = 64.0  # l_knee right of the map: BodyNet 64.5, pixel 65, peaked at 64
    pred_xy[2, 4] = [59, 20]  # 4 px from column 63 (0-based): wrong
    gt[2, 5, 0] = -2.5  # l_ankle: BodyNet -2, trunc(-1.9999) = -1 -> pixel 0, peaked at 2:
    pred_xy[2, 5] = [5, 20]  # scored, 4 px from 0-based 1: wrong (floor: unscored)
    pred_xy[3, 10] = [-1, -1]  # r_wrist: all-zero heatmap predicts pixel (1,1): wrong
    gt[0, 14, 0] = 37.6  # l_elbow: BodyNet 38.1, pixel 39 (0-based 38; not 37 of trunc(37.6))
    pred_xy[0, 14] = [41, 20]  # 3 px from it: correct (4 px from 0-based 37)
    # Batch B: l_wrist unscored in all four (BodyNet -3.5: pixel trunc(-3.4999) + 1 = -2
    # peaks at column 1, not > 1); r_ankle 4 px off in ex 4.
    gt[4:8, 15, 0] = -4.0
    pred_xy[4, 0] += [4, 0]
    # Batch C: every joint far right of the map (BodyNet 70.5, pixel 71: ul = 68 > 64,
    # nothing drawn).
    gt[8:12, :, 0] = 70.0
    # Partial batch: all wrong; never evaluated.
    pred_xy[12:] += [0, 9]
    pred = _heatmaps(pred_xy, b)
    # r_elbow: a tie between (x 40, y 10) and (32, 21); row-major order meets y 10 first.
    pred[3, 10, 40, 11] = pred[3, 21, 32, 11] = 1.0
    pred[3, 20, 32, 11] = 0.0
    batch = {"joints2d": jnp.asarray(gt, jnp.float32), "visible": jnp.ones((b, 16)),
             "image": jnp.zeros((b, 4 * R, 4 * R, 3), jnp.uint8),  # the label size
             "crop": jnp.tile(jnp.eye(2, 3, dtype=jnp.float32), (b, 1, 1)),
             "position": jnp.arange(b, dtype=jnp.int32)}
    return jnp.asarray(pred), batch


def test_bodynet_pck_reproduces_eval_lua():
    pred, batch = _pose2d_case()
    used, s = _run("bodynet", "pose2d", pred, batch)
    assert used == "bodynet"
    # Ground truth (bodynet training/donkey.lua:288-289, util/img.lua:62-64 and 223-243):
    # a joint is drawn if its image y (1-based) > 1, at pixel trunc(x + 1e-4) + 1 of its
    # BodyNet label x (util/img.lua:18-28, hgmt's + 0.5); drawGaussian
    # starts the 7x7 kernel at index max(1, -ul), ul = pixel - 3, so pixels 3, 2, 1, 0, -1, -2
    # peak at 4, 4, 3, 2, 1, 1 and pixel 65 (right of a 64 map) at 64.
    # util/eval.lua:317 scores joints {1,2,3,4,5,6,11,12,15,16}; :40-52 the first maximum in
    # row-major order, (1,1) for a max <= 0; :13 only ground truth beyond the first row and
    # column; :78-86 correct if distance / 6.4 <= 0.5; :106-111 the mean over the joints with
    # a scored instance in the batch.
    # A: r_ankle 1, r_knee 4/4 (3 px from the shifted peak), r_hip 3/3 (ex 1 not drawn),
    #    l_hip 3/4, l_knee 3/4, l_ankle 3/4, r_wrist 3/4, r_elbow 3/4 (the tie's first maximum
    #    is (40, 10)), l_elbow 1, l_wrist 1 -> (5 + 5 * 0.75) / 10 = 0.875.
    # B: l_wrist never scored, r_ankle 3/4, 8 others 1 -> 8.75 / 9.  C: no joint scored: NaN.
    # training/test.lua:62 loops over floor(14 / 4) = 3 batches (ex 12-13 never evaluated),
    # :272 adds the non-NaN batches, :81 divides by 14 / 4 - 1 NaN batch = 2.5.
    expected = (0.875 + 8.75 / 9) / 2.5
    assert s["pck"] == pytest.approx(expected, abs=1e-9)
    assert s["num_batches"] == 3 and s["batches_without_scored_joint"] == 1
    assert s["examples_not_evaluated"] == 2
    assert s["examples_with_unscored_joint"] == 9  # ex 1, batch B, batch C
    # Per joint over the evaluated examples: r_knee 8/8, l_wrist 4/4 (batch A only).
    assert s["pck_per_joint"]["r_knee"] == 1.0 and s["pck_per_joint"]["l_wrist"] == 1.0
    assert s["pck_per_joint"]["r_ankle"] == pytest.approx(7 / 8)
    assert s["pck_per_joint"]["l_hip"] == pytest.approx(7 / 8)
    assert "pelvis" not in s["pck_per_joint"] and len(s["pck_per_joint"]) == 10
    # hgmt's protocol on the same predictions: all 16 joints of all 14 examples, pooled,
    # correct within 3.2 px (a one-hot peak decodes to its pixel). Wrong: ex 0 r_knee (4 px)
    # and l_elbow (3.4), ex 1 r_hip (30.5) and l_hip (6.75), ex 2 l_knee (5) and l_ankle
    # (7.5), ex 3 r_wrist ((0, 0)) and r_elbow ((40, 10)), ex 4 r_ankle (4) and l_wrist (44),
    # ex 5-7 l_wrist, ex 8-13 all 16 -> (5 * 14 + 3 * 15) / 224.
    used, h = _run("hgmt", "pose2d", pred, batch)
    assert used == "hgmt" and h["pck@3.2px"] == pytest.approx(115 / 224, abs=1e-6)


def test_bodynet_pck_sends_a_heatmap_whose_maximum_is_not_positive_to_pixel_one():
    """getPreds2DCropped (bodynet training/util/eval.lua:40-52) takes the first maximum of each
    heatmap, then `predMask = max:gt(0)` (:48) and `preds:add(-1):cmul(predMask):add(1)` (:49):
    where the maximum is not > 0 the prediction is pixel (1,1), 1-based, wherever that maximum
    lies. _pose2d_case with two heatmaps of batch A made non-positive, each peaking exactly
    at its ground truth (so without the rule both would be correct):
    - ex 0 r_ankle: -1 everywhere but -0.5 at 0-based (10, 20), 1-based (11, 21), where
      BodyNet's ground truth peaks (10.5 -> trunc(10.5 + 1e-4) + 1 = 11, util/img.lua:62-64;
      away from the edges, drawGaussian's peak is that pixel): max -0.5 <= 0 -> (1,1),
      sqrt(10^2 + 20^2) = 22.4 px from (11, 21): 22.4 / 6.4 > 0.5, wrong (eval.lua:78-86).
    - ex 1 l_wrist: -1 everywhere but 0 at 0-based (40, 20), 1-based (41, 21): max 0 is not
      > 0 -> (1,1), 44.7 px away: wrong. Ground truth is drawn and scored in both (image
      y 21 > 1, donkey.lua:288; label > 1, eval.lua:13).
    Batch A (test_bodynet_pck_reproduces_eval_lua: r_ankle and l_wrist 4/4 there) becomes
    r_ankle 3/4, l_wrist 3/4, r_knee, r_hip, l_elbow 1, the 5 others 3/4 as before
    -> (3 + 7 * 0.75) / 10 = 0.825; batch B 8.75 / 9; C NaN: / (14 / 4 - 1) (test.lua:81)."""
    pred, batch = _pose2d_case()
    pred = np.array(pred)
    pred[0, :, :, 0] = -1.0
    pred[0, 20, 10, 0] = -0.5
    pred[1, :, :, 15] = -1.0
    pred[1, 20, 40, 15] = 0.0
    _, s = _run("bodynet", "pose2d", jnp.asarray(pred), batch)
    assert s["pck"] == pytest.approx((0.825 + 8.75 / 9) / 2.5, abs=1e-9)
    # Per joint over the 12 evaluated examples: r_ankle wrong in ex 0 and ex 4, of 8 scored
    # (batches A and B); l_wrist wrong in ex 1, of the 4 scored (batch A only).
    assert s["pck_per_joint"]["r_ankle"] == pytest.approx(6 / 8)
    assert s["pck_per_joint"]["l_wrist"] == pytest.approx(3 / 4)


def test_bodynet_pck_batches_follow_the_test_order():
    """The same examples in another order fall in other batches: ex 0-3 and 4-7 swap halves
    and ex 12-13 change places with ex 10-11."""
    pred, batch = _pose2d_case()
    order = [0, 1, 4, 5, 2, 3, 6, 7, 8, 9, 12, 13, 10, 11]
    batch = dict(batch, position=jnp.asarray(order, jnp.int32))
    _, s = _run("bodynet", "pose2d", pred, batch)
    # Batch 1 = ex 0, 1, 4, 5: r_ankle 3/4, r_hip 3/3, l_hip 3/4, l_wrist 2/2, 6 others 1
    #   -> 9.5 / 10. Batch 2 = ex 2, 3, 6, 7: l_knee, l_ankle, r_wrist, r_elbow 3/4, l_wrist
    #   2/2, 5 others 1 -> 9 / 10. Batch 3 = ex 8, 9, 12, 13: ex 12-13's 10 joints are
    #   scored, all 9 px off: 0. Ex 10-11 are not evaluated; no batch is NaN: / 3.5.
    assert s["pck"] == pytest.approx((0.95 + 0.9 + 0.0) / 3.5, abs=1e-9)
    assert s["batches_without_scored_joint"] == 0


def test_bodynet_draws_a_joint_by_its_image_y_not_its_label_y():
    """bodynet training/donkey.lua:288 draws joint j's heatmap only if joints2D[j][2] > 1: its
    y in the original image, 1-based (util/dataloader/SURREAL.lua:50 adds 1 to the _info.mat's
    0-based joints), before any crop. Two crops where the two disagree, each image px -> label
    px: A = 0.5 image + (2, 3), B = 0.5 image + (2, -3), so image y = 2 (label y - 3) under A,
    2 (label y + 3) under B. One BodyNet test batch of 4 (opts.lua:69); every joint at label
    (10 + 2j, 20) (image y 34 under A, 46 under B: drawn) and predicted there (one-hot),
    but r_ankle (joint 0, scored: eval.lua:317):
    - ex 0 (A): label y 2.25, image y -1.5, 1-based -0.5: not > 1, not drawn: an all-zero
      heatmap peaks at pixel (1, 1) (eval.lua:40-52), never scored (`label > 1`, eval.lua:13);
      predicted at (10, 40).
    - ex 1 (B): label y -0.75, image y 4.5, 1-based 5.5 > 1: drawn. BodyNet's label y is
      hgmt's + 0.5 (util/img.lua:18-28), -0.25, pixel trunc(-0.2499) + 1 = 1 (img.lua:62-64);
      drawGaussian (img.lua:223-243): ul = -2, br = 4 (:226-227), not wholly outside (:229);
      image rows max(1, -2) = 1 to min(4, 64) = 4 take kernel rows from max(1, 2) = 2
      (:234-238), so the kernel's peak (row 4 of image.gaussian(7)) lands on row 1 + 4 - 2 =
      3 > 1: scored. x: 10 + 0.5 -> pixel 11. Predicted at 0-based (10, 2), 1-based (11, 3):
      distance 0, correct (eval.lua:78-86).
    - ex 2 (A): at (10, 20), predicted there: correct; ex 3 (A): predicted at (10, 30),
      10 px / 6.4 > 0.5: wrong.
    r_ankle 2 correct of 3 scored, the 9 other joints 1: PCK = (9 + 2/3) / 10 (eval.lua:
    106-111), one batch over N / 4 = 1 (test.lua:81). Drawn by label y instead (label y + 1
    > 1), ex 0 would be scored (pixel trunc(2.75) + 1 = 3, ul = 0, peak row 1 + 4 - 1 = 4;
    (11, 41) is far: wrong) and ex 1 not: 1 of 3, (9 + 1/3) / 10."""
    b = 4
    gt = np.stack([np.stack([10.0 + 2 * np.arange(16), np.full(16, 20.0)], -1)] * b)
    pred_xy = gt.copy()
    gt[0, 0, 1], pred_xy[0, 0] = 2.25, [10, 40]
    gt[1, 0, 1], pred_xy[1, 0] = -0.75, [10, 2]
    pred_xy[3, 0] = [10, 30]
    crop_a = [[0.5, 0.0, 2.0], [0.0, 0.5, 3.0]]
    crop_b = [[0.5, 0.0, 2.0], [0.0, 0.5, -3.0]]
    batch = {"joints2d": jnp.asarray(gt, jnp.float32), "visible": jnp.ones((b, 16)),
             "image": jnp.zeros((b, 4 * R, 4 * R, 3), jnp.uint8),
             "crop": jnp.asarray([crop_a, crop_b, crop_a, crop_a], jnp.float32),
             "position": jnp.arange(b, dtype=jnp.int32)}
    _, s = _run("bodynet", "pose2d", jnp.asarray(_heatmaps(pred_xy, b)), batch)
    assert s["pck_per_joint"]["r_ankle"] == pytest.approx(2 / 3, abs=1e-6)
    assert s["pck"] == pytest.approx((9 + 2 / 3) / 10, abs=1e-6)
    assert s["examples_with_unscored_joint"] == 1  # ex 0


# --- BodyNet 3D MJD -------------------------------------------------------------------------
# The crop maps image pixel (u, v) to label (0.3 (u - 160) + 32, 0.3 (v - 120) + 32): label
# pixel (32, 32) is image pixel (160, 120) on the optical axis. BodyNet un-projects a label
# pixel's 0-based index as its own label coordinate, hgmt's minus 0.5 (util/img.lua:18-28,
# :62-64): pixel (32, 32) goes to image (158.33, 118.33), (33, 32) to (161.67, 118.33).
_CROP = [[0.3, 0.0, -16.0], [0.0, 0.3, -4.0]]


def _pose3d_case():
    """5 examples: BodyNet's batch of ex 0-3, and ex 4 in the partial batch. The pelvis is at
    6 m on the optical axis; ground truth: r_ankle (0.03333, 0, 6) m, on the ray of image u =
    163.33 (label x 33), r_knee 2 bins (90 mm) behind the pelvis, every other joint at the
    pelvis. Predictions: each joint at its ground-truth label pixel and bin; in ex 0 r_knee
    also at bin -1 with the same score (a tie); in ex 2 l_ankle's volume is all zero; in ex 3
    the pelvis is one pixel right and one bin nearer (label (33, 32), bin -1); ex 4's joints
    are all 10 bins off."""
    b = 5
    joints = np.zeros((b, 16, 3), np.float32)
    joints[..., 2] = 6.0
    joints[:, 0, 0] = 6.0 * (1 / 0.3) / 600  # r_ankle
    joints[:, 1, 2] = 6.09  # r_knee
    batch = {"crop": jnp.tile(jnp.asarray([_CROP], jnp.float32), (b, 1, 1)),
             "pelvis_depth": jnp.full((b,), 6.0, jnp.float32), "joints3d": jnp.asarray(joints),
             "joints2d": jnp.zeros((b, 16, 2)), "visible": jnp.ones((b, 16)),
             "image": jnp.zeros((b, 4 * R, 4 * R, 3), jnp.uint8),
             "position": jnp.arange(b, dtype=jnp.int32)}
    vol = np.zeros((b, 16, R, R, 19), np.float32)  # (B, joint, y, x, bin + 9)
    vol[:, :, 32, 32, 9] = 1.0
    vol[:, 0, 32, 32, 9] = 0.0
    vol[:, 0, 32, 33, 9] = 1.0  # r_ankle at label (33, 32), bin 0
    vol[:, 1, 32, 32, 9] = 0.0
    vol[:, 1, 32, 32, 9 + 2] = 1.0  # r_knee at bin +2
    vol[0, 1, 32, 32, 9 - 1] = 1.0  # the tie: bin -1 as high
    vol[2, 5] = 0.0  # l_ankle: an all-zero volume
    vol[3, 6] = 0.0
    vol[3, 6, 32, 33, 9 - 1] = 1.0  # ex 3's pelvis: label (33, 32), bin -1
    vol[4] = np.roll(vol[4], -9, axis=-1)
    pred = jnp.asarray(np.transpose(vol, (0, 2, 3, 1, 4)).reshape(b, R, R, 16 * 19))
    return pred, batch


def _cam(u, v, z):
    """SURREAL's camera (bodynet training/util/camerautils.lua:3-28, f 600 px, centre (160,
    120)): integer 0-based image pixel (u, v) at depth z m -> camera metres, K^-1 [u v 1] z
    (reconstruct3D, camerautils.lua:72-80)."""
    return np.array([(u - 160) * z / 600, (v - 120) * z / 600, z])


def _err_mm(pred, pelvis, truth):
    """PE_off (bodynet training/util/eval.lua:181-195) of one joint: camera metres `pred`
    aligned at the predicted `pelvis` against the pelvis-relative `truth`, in mm."""
    return 1000 * np.linalg.norm((pred - pelvis) - truth)


def test_bodynet_mjd_reproduces_eval_lua():
    pred, batch = _pose3d_case()
    used, s = _run("bodynet", "pose3d", pred, batch)
    assert used == "bodynet"
    # bodynet training/util/eval.lua:416 getPreds3DCropped, :23-27 tensorMax: the first
    # maximum of nonzero() in (z, y, x) order; z = 1 is the farthest bin +9 (donkey.lua:
    # 315-322, z = round(-dz / stp) + 10), so r_knee's tie goes to bin +2: 0 mm.
    # An all-zero volume ties everywhere: l_ankle in ex 2 at z = 1 (bin +9), pixel (0, 0).
    # :464-465 transform(..., true) (util/img.lua:62-64): the pixel's 0-based index is BodyNet's
    # label coordinate (hgmt's index - 0.5), to the image pixel trunc(u + 1e-4) + 1,
    # back-projected minus 1 (:484): label (32, 32) -> (158, 118) (u = 158.33), (33, 32) ->
    # (161, 118) (u = 161.67, not 162), (0, 0) -> (51, 11) (u = 51.67, v = 11.67).
    # :479-485: depth = pelvis + bin x 45 mm, K^-1 [u v 1] x depth (util/camerautils.lua:
    # 72-80; K = [[600, 0, 160], [0, 600, 120]]), aligned at the predicted pelvis (`_cam`,
    # `_err_mm`).
    cam, err_mm = _cam, _err_mm
    pelvis, far = cam(158, 118, 6.0), 6.0 + 9 * 0.045
    r_ankle_truth, r_knee_truth = np.array([6.0 / 0.3 / 600, 0, 0]), np.array([0, 0, 0.09])
    zero = np.zeros(3)
    # Ex 0-2: the pelvis at (158, 118), 6 m. r_ankle at (161, 118), 6 m: 3 px x 6 m / 600 =
    # 30 mm right of it where the truth is 33.33 mm; r_knee at the pelvis pixel 90 mm behind:
    # 2 px x 0.09 m / 600 = 0.3 mm off in x and in y; l_ankle of ex 2 at (51, 11), bin +9.
    ankle = err_mm(cam(161, 118, 6.0), pelvis, r_ankle_truth)
    knee = err_mm(cam(158, 118, 6.09), pelvis, r_knee_truth)
    l_ankle = err_mm(cam(51, 11, far), pelvis, zero)
    # Ex 3: the predicted pelvis at (161, 118) and 5.955 m: every joint is off by the shift.
    pelvis3 = cam(161, 118, 5.955)
    ex3 = {"r_ankle": err_mm(cam(161, 118, 6.0), pelvis3, r_ankle_truth),
           "r_knee": err_mm(cam(158, 118, 6.09), pelvis3, r_knee_truth),
           "pelvis": 0.0, "l_hip": err_mm(cam(158, 118, 6.0), pelvis3, zero)}
    assert 3.33 < ankle < 3.34 and 0.42 < knee < 0.43 and ex3["l_hip"] > 45
    # training/test.lua:62 evaluates floor(5 / 4) = 1 batch (ex 4 never); eval.lua:490, 520
    # sum the batch's errors and divide by 4; test.lua:87 divides by 5 / 4 batches: / 5.
    per_joint = s["mjd_mm_per_joint"]
    assert per_joint["r_ankle"] == pytest.approx((3 * ankle + ex3["r_ankle"]) / 5, abs=2e-3)
    assert per_joint["r_knee"] == pytest.approx((3 * knee + ex3["r_knee"]) / 5, abs=2e-3)
    assert per_joint["l_ankle"] == pytest.approx((l_ankle + ex3["l_hip"]) / 5, rel=1e-5)
    assert per_joint["l_hip"] == pytest.approx(ex3["l_hip"] / 5, rel=1e-5)
    assert per_joint["pelvis"] == pytest.approx(0.0, abs=1e-3)
    total = 3 * ankle + 3 * knee + l_ankle + ex3["r_ankle"] + ex3["r_knee"] + 13 * ex3["l_hip"]
    assert s["mjd_mm"] == pytest.approx(total / 5 / 16, rel=1e-5)
    assert s["examples_not_evaluated"] == 1
    # hgmt's decoding on ex 0-2 keeps the fractional pixel (r_ankle exact) and breaks
    # r_knee's tie towards the near bin -1 (135 mm off).
    _, h = _run("hgmt", "pose3d", pred[:3], jax.tree.map(lambda x: x[:3], batch))
    assert h["mjd_mm_per_joint"]["r_ankle"] == pytest.approx(0.0, abs=1e-3)
    assert h["mjd_mm_per_joint"]["r_knee"] == pytest.approx(135.0 / 3, abs=1e-2)


def test_bodynet_mjd_truncates_negative_image_coordinates_toward_zero():
    """_pose3d_case in a window 60 px left of and 40 px above _CROP's, label (0.3 (u - 100) +
    32, 0.3 (v - 80) + 32): image pixel u = (x - 2) / 0.3, v = (y - 8) / 0.3 of hgmt's label
    (x, y). bodynet training/util/eval.lua:464-465 `transform(..., true)` ends in
    `new_point:int():add(1)` (util/img.lua:62-64), the C cast, which truncates toward zero;
    eval.lua:484 back-projects that minus 1. Ex 2's all-zero l_ankle volume goes to bin +9,
    1-based pixel (1, 1) (tensorMax, eval.lua:23-27), 0-based index 0, BodyNet's label
    coordinate 0, hgmt's -0.5 (util/img.lua:18-28): u = (-0.5 - 2) / 0.3 = -8.33,
    v = (-0.5 - 8) / 0.3 = -28.33, left of and above the image. trunc(-8.33 + 1e-4) = -8,
    + 1 - 1 -> u = -8; v -> -28 (floor would give -9 and -29). The pelvis, label (32, 32):
    u = 29.5 / 0.3 = 98.33 -> 98, v = 23.5 / 0.3 = 78.33 -> 78; ex 3's predicted pelvis,
    label (33, 32), bin -1: (101, 78) (u = 101.67) at 6 - 0.045 = 5.955 m. l_ankle's
    truth is the pelvis (zero); the evaluated batch is ex 0-3, divided by N = 5 (test.lua:87):
    ex 0 and 1 add 0, ex 2 its (-8, -28) at bin +9 against its pelvis, ex 3 its (98, 78) at
    6 m against the moved pelvis; l_hip has ex 3's error alone."""
    pred, batch = _pose3d_case()
    crop = [[0.3, 0.0, -16.0 + 0.3 * 60], [0.0, 0.3, -4.0 + 0.3 * 40]]
    batch = dict(batch, crop=jnp.tile(jnp.asarray([crop], jnp.float32), (5, 1, 1)))
    _, s = _run("bodynet", "pose3d", pred, batch)
    zero, far = np.zeros(3), 6.0 + 9 * 0.045
    pelvis, pelvis3 = _cam(98, 78, 6.0), _cam(101, 78, 5.955)
    ex2 = _err_mm(_cam(-8, -28, far), pelvis, zero)
    ex3 = _err_mm(_cam(98, 78, 6.0), pelvis3, zero)
    assert 1698.8 < ex2 < 1699.0  # floor's (-9, -29): 1713.56 mm
    per_joint = s["mjd_mm_per_joint"]
    assert per_joint["l_ankle"] == pytest.approx((ex2 + ex3) / 5, rel=1e-5)  # floor: 354.06
    assert per_joint["l_hip"] == pytest.approx(ex3 / 5, rel=1e-5)


# --- SURREAL segmentation ---------------------------------------------------------------------
def _segm_case():
    """Image 1 (4x4): ground truth background, parts 1..14, background; predicted the same but
    head -> torso, part 5 -> background, the last background pixel -> part 14. Image 2: all
    torso, predicted right. Images 3-6: background, predicted right but for image 5's first
    pixel, predicted part 3. Image 7: all head, predicted torso."""
    gt1 = np.array([0, *range(1, 15), 0]).reshape(4, 4)
    pr1 = gt1.copy().reshape(-1)
    pr1[1], pr1[5], pr1[15] = 2, 0, 14
    zero = np.zeros((4, 4), int)
    gt = np.stack([gt1, np.full((4, 4), 2), zero, zero, zero, zero, np.ones((4, 4), int)])
    pr5 = zero.copy()
    pr5[0, 0] = 3
    pr = np.stack([pr1.reshape(4, 4), np.full((4, 4), 2), zero, zero, pr5, zero,
                   np.full((4, 4), 2)])
    batch = {"segm": jnp.asarray(gt, jnp.int32), "position": jnp.arange(7, dtype=jnp.int32)}
    return jax.nn.one_hot(pr, 15) * 5.0, batch


def test_surreal_segmentation_reproduces_eval_lua():
    pred, batch = _segm_case()
    used, s = _run("surreal", "segm", pred, batch)
    assert used == "surreal"
    # surreal training/eval.lua:22-50 segmPerformance accumulates per class tp (intersection),
    # npos + p - tp (union) and npos; training/test.lua:54-57: IoU = intersection / union and
    # pixel accuracy = intersection / npos over the split, averaged over classes 2..15.
    # SURREAL's final evaluation (training/exp/eval.sh:10, -batchSize 1) runs test.lua:35's
    # loop over floor(7 / 1) = 7 batches of one image: every image is scored, image 7 too.
    # head: 0/17 (image 1's pixel and image 7's 16, none predicted head); torso: 17 right
    # (image 1's pixel, image 2's 16) of 17 labelled and 34 predicted (1 + 16 more in images
    # 1 and 7): 17 / (17 + 34 - 17) = 1/2; part 3: 1/2 (image 5); part 5: 0/1; part 14: 1/2;
    # the 9 others 1: mean IoU = (0 + 1/2 + 1/2 + 0 + 1/2 + 9) / 14 = 0.75.
    assert s["iou_per_part"]["head"] == 0.0
    assert s["iou_per_part"]["torso"] == pytest.approx(0.5)
    assert s["mean_iou"] == pytest.approx(0.75, abs=1e-12)
    assert s["iou_per_part"][body.PART_NAMES[2]] == pytest.approx(0.5)
    # Accuracy per class: head 0, torso 17/17, part 5 0, part 14 1/1, others 1 -> 12 / 14.
    assert s["pixel_accuracy"] == pytest.approx(12 / 14, abs=1e-12)
    assert s["iou_undefined"] == s["pixel_accuracy_undefined"] == []
    assert s["examples_not_evaluated"] == 0
    # hgmt's pixel accuracy counts background too, and every image: 92 of 112 pixels.
    _, h = _run("hgmt", "segm", pred, batch)
    assert h["pixel_accuracy"] == pytest.approx(92 / 112)
    # BodyNet's segmentation code is SURREAL's (bodynet training/util/eval.lua:130) in its
    # batches of 4 (bodynet opts.lua:69, test.lua:62): floor(7 / 4) = 1 batch, images 1-4,
    # so image 5's part 3 is not scored: part 3's IoU is 1, mean IoU (17/18 + 1/2 + 10) / 14.
    used, b = _run("bodynet", "segm", pred, batch)
    assert used == "bodynet" and b["examples_not_evaluated"] == 3
    assert b["iou_per_part"]["torso"] == pytest.approx(17 / 18)
    assert b["iou_per_part"][body.PART_NAMES[2]] == 1.0
    assert b["mean_iou"] == pytest.approx((17 / 18 + 0.5 + 10) / 14, abs=1e-12)
    assert b["pixel_accuracy"] == pytest.approx(12 / 14, abs=1e-12)
    assert b["iou_undefined"] == b["pixel_accuracy_undefined"] == []


def test_surreal_segmentation_undefined_where_reference_is_nan():
    # Only the head occurs: the reference's 0/0 for the 13 other parts makes its means NaN.
    pred = jax.nn.one_hot(jnp.array([[[1, 0]]] * 6), 15)
    batch = {"segm": jnp.array([[[1, 0]]] * 6, jnp.int32), "position": jnp.arange(6)}
    _, s = _run("surreal", "segm", pred, batch)
    assert s["mean_iou"] is None and s["pixel_accuracy"] is None
    assert s["iou_per_part"]["head"] == 1.0 and s["iou_per_part"]["torso"] is None
    assert len(s["iou_undefined"]) == 13 and "torso" in s["null_reasons"]["mean_iou"]
    assert s["pixel_accuracy_undefined"] == s["iou_undefined"]


def test_surreal_segmentation_lists_each_means_own_undefined_parts():
    """A part predicted but absent from the labels has IoU 0 / (its predicted pixels) = 0,
    defined, and accuracy 0/0 (surreal training/eval.lua:22-50: npos = 0): it makes
    pixel_accuracy null, not mean_iou. Six 1x3 images, all evaluated (eval.sh:10), each
    labelled head, torso, background and predicted so, but for image 1's background pixel,
    predicted l_upper_arm (class 3): IoU is 0/0 for the 11 parts in neither, accuracy for
    the 12 parts absent from the labels (l_upper_arm among them)."""
    labels = jnp.array([[[1, 2, 0]]] * 6, jnp.int32)
    predicted = np.array([[[1, 2, 0]]] * 6)
    predicted[0, 0, 2] = 3  # part 3 predicted once, never in the labels
    batch = {"segm": labels, "position": jnp.arange(6)}
    _, s = _run("surreal", "segm", jax.nn.one_hot(predicted, 15), batch)
    part3 = body.PART_NAMES[2]
    assert s["iou_per_part"][part3] == 0.0 and s["pixel_accuracy_per_part"][part3] is None
    assert part3 not in s["iou_undefined"] and part3 in s["pixel_accuracy_undefined"]
    assert len(s["iou_undefined"]) == 11 and len(s["pixel_accuracy_undefined"]) == 12
    assert part3 not in s["null_reasons"]["mean_iou"]
    assert part3 in s["null_reasons"]["pixel_accuracy"]


# --- SURREAL depth ----------------------------------------------------------------------------
def _depth_case():
    """Eight 3x3 images, pelvis at 5 m; ground-truth classes (0 background, 10 the pelvis's
    bin) and predictions, foreground pixels in row-major order:
    A gt 10, 11, 12 | pred 10, 13, 0 (background)   B gt 10 x4 | pred 11 x4
    C no foreground                                  D one pixel 15 | pred 0
    E gt 10 x5 | pred 13, 10, 10, 10, 17             F gt 9, 10 | pred 9, 12
    G, H gt 10 x4 | pred 14 x4."""
    gt = np.zeros((8, 3, 3), int)
    pr = np.zeros((8, 3, 3), int)
    gt[0].flat[[0, 1, 4]], pr[0].flat[[0, 1, 3]] = [10, 11, 12], [10, 13, 5]
    gt[1].flat[:4], pr[1] = 10, 11
    gt[3, 1, 1] = 15
    gt[4].flat[:5], pr[4].flat[:5] = 10, [13, 10, 10, 10, 17]
    gt[5].flat[[7, 8]], pr[5].flat[[7, 8]] = [9, 10], [9, 12]
    gt[6:].reshape(2, 9)[:, :4], pr[6:] = 10, 14
    # A depth inside each class's 45 mm interval: class c holds ((c-11)*45, (c-10)*45] mm.
    metres = np.where(gt > 0, 5.0 + (gt - 10) * 0.045 - 0.02, 0.0)
    classes = depth.classes(metres.astype(np.float32), np.full(8, 5.0))
    np.testing.assert_array_equal(classes, gt)
    batch = {"depth_class": jnp.asarray(classes, jnp.int32),
             "pelvis_depth": jnp.full((8,), 5.0, jnp.float32),
             "position": jnp.arange(8, dtype=jnp.int32)}
    return jax.nn.one_hot(pr, 20) * 5.0, batch


def test_surreal_depth_rmse_reproduces_eval_lua():
    pred, batch = _depth_case()
    used, s = _run("surreal", "depth", pred, batch)
    assert used == "surreal"
    # surreal training/eval.lua:54-70 depthRMSE: per image, the ground-truth foreground
    # (label ~= 1, class 0 here) in row-major order, `unfold(1, 2, 2)` into pairs (an odd
    # last pixel is dropped), sqrt of the mean squared class error, a predicted background
    # counting as class 0. A: errors 0, 2 (12's error 12 dropped) -> sqrt(2); B: 1; C: no
    # foreground, adds 0 (:62-67); D: one pixel, where unfold raises: hgmt adds 0 and counts
    # it; E: 3, 0, 0, 0 (7 dropped) -> 1.5; F: 0, 2 -> sqrt(2).
    # G, H: 4 bins off at each pixel -> 4. SURREAL's final evaluation (training/exp/eval.sh:10,
    # -batchSize 1): training/test.lua:35 evaluates floor(8 / 1) = 8 batches of one image,
    # eval.lua:69 divides each batch's sum by 1, test.lua:58 their sum by 8 / 1:
    # (sqrt(2) + 1 + 0 + 0 + 1.5 + sqrt(2) + 4 + 4) / 8 = 1.666 bins, 74.97 mm.
    bins = (np.sqrt(2) + 1 + 0 + 0 + 1.5 + np.sqrt(2) + 4 + 4) / 8
    assert s["rmse_bins"] == pytest.approx(bins, rel=1e-6)
    assert s["rmse_mm"] == pytest.approx(bins * 45.0, rel=1e-6)
    assert 74.96 < s["rmse_mm"] < 74.98
    assert s["images_no_foreground"] == 1 and s["images_one_foreground_pixel"] == 1
    assert s["foreground_pixels_dropped"] == 2 and s["examples_not_evaluated"] == 0
    # BodyNet runs the same function in batches of 4 (bodynet opts.lua:69, test.lua:62, :86):
    # over the 8 images 2 full batches, every image, the same sum / 8; over the first 7, one
    # batch, A-D (E-G never evaluated): (sqrt(2) + 1 + 0 + 0) / 7, while SURREAL's batches of
    # one take E-G too.
    _, b = _run("bodynet", "depth", pred, batch)
    assert b["rmse_bins"] == pytest.approx(bins, rel=1e-6)
    assert b["examples_not_evaluated"] == 0
    _, b7 = _run("bodynet", "depth", *_first(7, pred, batch))
    assert b7["rmse_bins"] == pytest.approx((np.sqrt(2) + 1) / 7, rel=1e-6)
    assert b7["examples_not_evaluated"] == 3
    _, s7 = _run("surreal", "depth", *_first(7, pred, batch))
    assert s7["rmse_bins"] == pytest.approx((np.sqrt(2) + 2.5 + np.sqrt(2) + 4) / 7, rel=1e-6)
    # hgmt pools every foreground pixel of the split: sqrt(567 / 23) bins.
    _, h = _run("hgmt", "depth", pred, batch)
    assert h["rmse_mm"] == pytest.approx(np.sqrt(567 / 23) * 45.0, rel=1e-5)


# --- What the references cannot give: no full batch, damaged records ------------------------------
def _first(n, pred, batch):
    return pred[:n], jax.tree.map(lambda x: x[:n], batch)


def test_reference_numbers_without_a_full_test_batch_are_null():
    """N below the reference's test batch size: its test loop `for i = 1, nTest/opt.batchSize`
    (bodynet training/test.lua:62, surreal training/test.lua:35) runs floor(N / batchSize) = 0
    batches, and the zero sums divided by N / batchSize (bodynet test.lua:80-89, surreal
    test.lua:53-58) would print PCK, MJD and RMSE 0. Each such number is null with the reason,
    for every task at BodyNet's batch of 4 (opts.lua:69); hgmt's definitions score the same
    examples. SURREAL's final evaluation tests one example a batch (training/exp/eval.sh:10),
    so any N >= 1 has its numbers."""
    cases = [("pose2d", _first(3, *_pose2d_case()), ("pck",)),
             ("pose3d", _first(3, *_pose3d_case()), ("mjd_mm", "mjd_mm_per_joint")),
             ("segm", _first(3, *_segm_case()), ("mean_iou", "pixel_accuracy")),
             ("depth", _first(3, *_depth_case()), ("rmse_mm", "rmse_bins"))]
    for task, (pred, batch), keys in cases:
        _, s = _run("bodynet", task, pred, batch)
        for key in keys:
            assert s[key] is None or set(s[key].values()) == {None}, (task, key)
            assert s["null_reasons"][key] == (
                "fewer than one reference test batch (N = 3 < 4): the reference evaluates no "
                "example"), (task, key)
        assert s["examples_not_evaluated"] == 3
    # `surreal` over the first 5 images of _segm_case and _depth_case, all evaluated
    # (test.lua:35 runs 5 batches of one): segm head 0/1, torso 17/18, part 3 1/2 (image 5),
    # part 5 0/1, part 14 1/2, the 9 others 1 (test_surreal_segmentation_reproduces_eval_lua);
    # depth A-E (test_surreal_depth_rmse_reproduces_eval_lua) / 5 (test.lua:58).
    _, seg = _run("surreal", "segm", *_first(5, *_segm_case()))
    assert seg["mean_iou"] == pytest.approx((17 / 18 + 0.5 + 0.5 + 9) / 14, abs=1e-12)
    _, dep = _run("surreal", "depth", *_first(5, *_depth_case()))
    assert dep["rmse_bins"] == pytest.approx((np.sqrt(2) + 1 + 0 + 0 + 1.5) / 5, rel=1e-6)
    for s in (seg, dep):
        assert "null_reasons" not in s and s["examples_not_evaluated"] == 0
    for task, case in (("pose3d", _pose3d_case), ("depth", _depth_case)):
        _, h = _run("hgmt", task, *_first(3, *case()))
        assert "null_reasons" not in h, task
    # One full batch gives a number: bodynet's MJD over N = 4 (test.lua:87).
    _, s = _run("bodynet", "pose3d", *_first(4, *_pose3d_case()))
    assert s["mjd_mm"] > 0 and "null_reasons" not in s


def test_reference_numbers_that_divide_by_n_are_null_with_damaged_records():
    """A damaged record is padding at its own position (eval_data.eval_batches: mask 0):
    a reference's sums leave it out while N counts it. BodyNet's MJD (its error sum / N,
    test.lua:87) and SURREAL's depth RMSE (the sum of the images' RMSEs / N, test.lua:58)
    would then be those of the records that read, shrunk by (N - 1) / N: null, with the
    reason. BodyNet's PCK (a per-batch mean over the scored joints, eval.lua:106-111) and
    SURREAL's segmentation means (ratios of totals) stay over the records that read, and
    hgmt's numbers do too."""
    why = ("1 damaged record(s): the reference's figure cannot be reproduced; evaluate with "
           "--protocol=hgmt or rebuild the shard")

    def summaries(protocol, task, pred, batch, lost):
        m = protocols.metric(protocol, task, len(batch["position"]))
        mask = np.ones(len(batch["position"]), np.float32)
        mask[lost] = 0.0
        sums = jax.tree.map(np.asarray, m.stats(pred, dict(batch, mask=jnp.asarray(mask))))
        every = jax.tree.map(np.asarray, m.stats(pred, batch))
        return m.summarize(every), m.summarize(sums), m.summarize(sums, num_damaged=1)

    every, shrunk, damaged = summaries("bodynet", "pose3d", *_pose3d_case(), 3)
    assert damaged["mjd_mm"] is None and damaged["null_reasons"]["mjd_mm"] == why
    assert set(damaged["mjd_mm_per_joint"].values()) == {None}
    assert damaged["null_reasons"]["mjd_mm_per_joint"] == why
    # What a number over N would have been: ex 3's errors (its pelvis off, every joint more
    # than 45 mm) gone from the sum, still counted in N = 5.
    assert 0 < shrunk["mjd_mm"] < every["mjd_mm"] - 13 * 45 / 5 / 16
    every, shrunk, damaged = summaries("surreal", "depth", *_depth_case(), 1)
    assert damaged["rmse_mm"] is None and damaged["null_reasons"]["rmse_bins"] == why
    assert shrunk["rmse_bins"] == pytest.approx(every["rmse_bins"] - 1 / 8)  # image B's 1 bin
    _, _, pck = summaries("bodynet", "pose2d", *_pose2d_case(), 1)
    # Batch A over ex 0, 2, 3 (test_bodynet_pck_reproduces_eval_lua): l_knee, l_ankle,
    # r_wrist, r_elbow 2/3, the 6 others 1 -> (6 + 4 * 2/3) / 10; batch B as before.
    assert pck["pck"] == pytest.approx(((6 + 8 / 3) / 10 + 8.75 / 9) / 2.5, abs=1e-6)
    # Image 5 gone, its part 3 with it: part 3 1/1; head 0/17, torso 1/2, part 5 0/1,
    # part 14 1/2 and the 9 others 1 as in test_surreal_segmentation_reproduces_eval_lua.
    _, _, seg = summaries("surreal", "segm", *_segm_case(), 4)
    assert seg["mean_iou"] == pytest.approx((0.5 + 1 + 0.5 + 9) / 14, abs=1e-12)
    for task, case in (("pose3d", _pose3d_case), ("depth", _depth_case)):
        _, left_out, with_count = summaries("hgmt", task, *case(), 1)
        assert with_count == left_out and "null_reasons" not in with_count, task


# --- hgmt's own protocol: empty cases and thresholds ---------------------------------------------
def test_hgmt_protocol_writes_null_with_a_reason_for_empty_cases():
    import json

    empty = {
        "segm": segm.summarize({"confusion": np.diag([5.0] + [0.0] * 14)}),  # background only
        "depth": depth.summarize({"sq_error_mm": 0.0, "correct": 0.0, "foreground": 0.0}),
        "pose3d": pose3d.summarize({"error_mm_sum": np.zeros(16), "count": np.zeros(16)}),
        "pose2d": pose2d.summarize({"pckh_correct": np.zeros((16, 21)),
                                    "visible": np.zeros(16), "pck_correct": np.zeros(16)}),
    }
    for task, metrics in [("segm", ["mean_iou"]), ("depth", ["rmse_mm", "bin_accuracy"]),
                          ("pose3d", ["mjd_mm"]), ("pose2d", ["pckh@0.5", "pck@3.2px"])]:
        for m in metrics:
            assert empty[task][m] is None, (task, m)
            assert empty[task]["null_reasons"][m], (task, m)
    assert empty["segm"]["pixel_accuracy"] == 1.0 and "pixel_accuracy" not in empty[
        "segm"]["null_reasons"]
    assert "no joint visible" in empty["pose2d"]["null_reasons"]["pckh@0.5"]
    assert "no ground-truth foreground" in empty["depth"]["null_reasons"]["rmse_mm"]
    json.dumps(empty, allow_nan=False)  # no NaN anywhere
    # A defined number has no reason.
    assert "null_reasons" not in segm.summarize({"confusion": np.eye(15)})


def test_hgmt_thresholds_compare_with_less_or_equal():
    """PCK@3.2px at label size 80 is a 4.0 px threshold: a joint exactly 4 px off counts, as
    PCKh's and BodyNet's thresholds do."""
    r, b = 80, 1
    gt = np.stack([np.stack([20.0 + 2 * np.arange(16), np.full(16, 30.0)], -1)])
    gt[0, body.HEAD_TOP] = [60.0, 30.0]
    gt[0, body.UPPER_NECK] = [60.0, 38.0]  # head segment 8 px: PCKh@0.5 at 4 px
    pred_xy = gt.copy()
    pred_xy[0, 0] += [4, 0]  # exactly at both thresholds
    pred_xy[0, 1] += [0, 5]  # beyond both
    pred = np.zeros((b, r, r, 16), np.float32)
    for j in range(16):
        x, y = pred_xy[0, j].astype(int)
        pred[0, y, x, j] = 1.0
    batch = {"joints2d": jnp.asarray(gt, jnp.float32), "visible": jnp.ones((b, 16)),
             "image": jnp.zeros((b, 4 * r, 4 * r, 3), jnp.uint8),
             "crop": jnp.tile(jnp.eye(2, 3, dtype=jnp.float32), (b, 1, 1))}
    _, h = _run("hgmt", "pose2d", jnp.asarray(pred), batch)
    assert h["pck@3.2px"] == pytest.approx(15 / 16)
    assert h["pckh@0.5"] == pytest.approx(15 / 16)


# --- Selection, JSON and Markdown ----------------------------------------------------------------
def test_protocol_selection_and_labels():
    assert protocols.task_protocol("surreal", "pose2d") == "hgmt"  # SURREAL has no pose metric
    assert protocols.task_protocol("surreal", "segm") == "surreal"
    assert protocols.task_protocol("bodynet", "pose3d") == "bodynet"
    with pytest.raises(ValueError) as e:
        protocols.check("h36m")
    assert str(e.value) == "protocol='h36m': choose one of hgmt, bodynet, surreal"
    with pytest.raises(ValueError) as e:
        protocols.check("h36m", "config.evals.test.protocol='h36m'")
    assert str(e.value) == ("config.evals.test.protocol='h36m': choose one of hgmt, bodynet, "
                            "surreal")
    assert workdirs.result_file() == "eval_test.json"
    assert workdirs.result_file("bodynet") == "eval_test_bodynet.json"
    assert workdirs.result_file("surreal", "validation", "best_8") == (
        "eval_validation_best_8_surreal.json")
    assert workdirs.protocol_file("hgmt") == "eval_test_hgmt.json"
    assert workdirs.protocol_file("bodynet", "validation") == "eval_validation_bodynet.json"
    summary = {"protocol": "surreal", "num_examples": 2, "split": "test", "flip": False,
               "pose2d": {"protocol": "hgmt", "pckh@0.5": 0.5, "pck@3.2px": 0.25,
                          "pckh@0.5_per_joint": {j: 0.5 for j in body.JOINT_NAMES}},
               "segm": {"protocol": "surreal", "mean_iou": None, "pixel_accuracy": 0.5,
                        "iou_per_part": {p: None for p in body.PART_NAMES}}}
    assert protocols.headline(summary) == {"pose2d/pckh@0.5": 0.5, "pose2d/pck@3.2px": 0.25,
                                          "segm/mean_iou": None, "segm/pixel_accuracy": 0.5}
    md = markdown.to_markdown(summary)
    assert "metric protocol `surreal`" in md
    assert "| pose2d/pckh@0.5 | 0.5 | hgmt |" in md
    assert "| segm/mean_iou | undefined | surreal |" in md
    # The per-item tables, one per kind of item, from the tasks' Headlines.
    assert "| joint | pckh@0.5_per_joint (hgmt) |" in md
    assert f"| {body.JOINT_NAMES[0]} | 0.500 |" in md
    assert "| part | iou_per_part (surreal) |" in md
    assert f"| {body.PART_NAMES[0]} | absent |" in md
    # A joint table with BodyNet's PCK beside hgmt's PCKh: rows in JOINT_NAMES' order, the
    # 6 joints BodyNet does not score marked so.
    scored = [j for j in body.JOINT_NAMES if j not in (
        "pelvis", "thorax", "upper_neck", "head_top", "r_shoulder", "l_shoulder")]
    summary["pose2d"] = {"protocol": "bodynet", "pck": 0.5,
                         "pck_per_joint": {j: 0.5 for j in scored}}
    summary["pose3d"] = {"protocol": "hgmt", "mjd_mm": 50.0,
                         "mjd_mm_per_joint": {j: 50.0 for j in body.JOINT_NAMES}}
    rows = [line for line in markdown.to_markdown(summary).splitlines()
            if line.split(" | ")[0][2:] in body.JOINT_NAMES]
    assert [r.split(" | ")[0][2:] for r in rows] == list(body.JOINT_NAMES)
    assert "| pelvis | not scored | 50.0 |" in rows and "| r_ankle | 0.500 | 50.0 |" in rows


def test_markdown_gives_every_reference_caveat_with_its_meaning():
    """The counters that qualify a reference number (each task's `Headline.caveats`) and the
    reasons of its nulls are in the Markdown, not only the JSON: one line each where not 0,
    with what it counts. The cases above under `bodynet`: pose2d's 14 examples (2 beyond the
    3 full batches, 1 batch without a scored joint, 9 examples with an unscored joint);
    depth's 8 images in 2 full batches (1 without foreground, 1 with one foreground pixel, 2
    with an odd count); 6 segmentation images of the head alone (2 beyond the full batch;
    13 parts 0/0)."""
    _, p2 = _run("bodynet", "pose2d", *_pose2d_case())
    _, dep = _run("bodynet", "depth", *_depth_case())
    head = {"segm": jnp.array([[[1, 0]]] * 6, jnp.int32), "position": jnp.arange(6)}
    _, seg = _run("bodynet", "segm", jax.nn.one_hot(head["segm"], 15), head)
    summary = {"protocol": "bodynet", "num_examples": 14, "split": "test", "flip": False,
               "pose2d": {"protocol": "bodynet", **p2}, "depth": {"protocol": "bodynet", **dep},
               "segm": {"protocol": "bodynet", **seg}}
    lines = markdown.to_markdown(summary).splitlines()
    caveats = {t: TASKS[t].HEADLINES["bodynet"].caveats for t in ("pose2d", "depth", "segm")}
    for task, key, shown in (("pose2d", "examples_not_evaluated", "2"),
                             ("pose2d", "batches_without_scored_joint", "1"),
                             ("pose2d", "examples_with_unscored_joint", "9"),
                             ("depth", "images_no_foreground", "1"),
                             ("depth", "images_one_foreground_pixel", "1"),
                             ("depth", "foreground_pixels_dropped", "2"),
                             ("segm", "examples_not_evaluated", "2"),
                             ("segm", "iou_undefined", ", ".join(body.PART_NAMES[1:]))):
        assert f"- {task}/{key} = {shown}: {caveats[task][key]}." in lines, (task, key)
    assert not [x for x in lines if x.startswith("- depth/examples_not_evaluated")]  # 0
    assert caveats["pose2d"]["examples_not_evaluated"] == (
        "examples of the last partial test batch (N mod the reference's batch size), which "
        "the reference's test loop never evaluates")
    assert "unfold raises" in caveats["depth"]["images_one_foreground_pixel"]
    assert (f"- segm/mean_iou is null: the reference's mean is NaN: 0/0 for "
            f"{', '.join(body.PART_NAMES[1:])}.") in lines


# --- The reference protocols' crop window ----------------------------------------------------
def test_reference_window_follows_get_center_and_get_scale():
    """Joints at x 10..30, y 20..100 (0-based) are 11..31, 21..101 to the references' loaders
    (surreal training/loader_SURREAL.lua:47: +1). getTightBox (surreal training/util.lua:
    128-147): w = 31 - 11 + 1 = 21, h = 101 - 21 + 1 = 81; x 11 - 5.25 = 5.75 to 31 + 5.25 =
    36.25, width 36.25 - 5.75 + 1 = 31.5; y 21 - 28.35 = -7.35 to 101 + 20.25 = 121.25,
    height 129.6. getCenter (:149-155): (5.75 + 15.75, -7.35 + 64.8) = (21.5, 57.45), which
    transform (training/img.lua:56-58) compares with the joints minus 1, so the window is
    centred there in 0-based pixels; getScale (:157-160) max(129.6, 31.5) / 240 = 0.54, a
    window of 200 x 0.54 = 108 pixels (img.lua:20-30). hgmt's window: the widened box
    without the +1s, centred on (20, 56), 80 x 1.6 = 128 pixels."""
    from hgmt.data import cropping

    joints = np.zeros((16, 2))
    joints[:, 0] = np.linspace(10, 30, 16)
    joints[:, 1] = np.linspace(20, 100, 16)
    centre, side = reference_crop.reference_box(joints)
    np.testing.assert_allclose(centre, [21.5, 57.45], atol=1e-9)
    assert side == pytest.approx(108.0, abs=1e-9)
    centre, side = cropping.window_box(joints, "hgmt")
    np.testing.assert_allclose(centre, [20.0, 56.0], atol=1e-9)
    assert side == pytest.approx(128.0, abs=1e-9)
    with pytest.raises(ValueError, match="crop window 'tight': choose one of hgmt, reference"):
        cropping.window_box(joints, "tight")


def test_reference_window_adds_the_one_in_float32():
    """The _info.mat's joints2D are float32, so the loader's +1 (surreal
    training/loader_SURREAL.lua:47) is a float32 sum: x = float32(128 - 2**-17) + 1 = 129 -
    2**-17 lies halfway between float32's 129 - 2**-16 and 129, and rounds to the even 129.0.
    With the other joints at x 200 (201 after the +1), getCenter's x (util.lua:128-155) is
    x_min + w / 2 of the widened box = (lo + hi + 1) / 2 = (129 + 201 + 1) / 2 = 165.5, where
    the sum in double would give (128.99999237060547 + 202) / 2 = 165.49999618530273."""
    joints = np.full((16, 2), [200.0, 100.0], np.float32)
    joints[0] = [np.float32(128 - 2**-17), 50.0]
    centre, _ = reference_crop.reference_centre_scale(joints)
    assert centre[0] == 165.5


def test_reference_protocols_evaluate_at_the_reference_window(demo_dataset):
    """An evaluation under `bodynet` or `surreal` crops each test frame around the
    references' window (`reference_crop.reference_box`), hgmt's around the run's training window
    (`person_box`, or the references' box for config.window=reference_box, whatever the
    protocol); the summary's `window` says which."""
    from hgmt.data import builds, cropping
    from hgmt.models import create_model
    from hgmt.tasks import heads, parse_tasks
    from hgmt.training import steps
    from tests.conftest import tiny_config

    # The references' 64 x 64 label maps (`check_label_size`).
    config = tiny_config(demo_dataset[1], tasks="pose2d", image_size=256)
    config.evals.test.max_examples = 2
    model = create_model(config.model, heads(parse_tasks(config.tasks)))
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = steps.init_variables(model, jax.random.key(0), images)
    source = builds.open_split(config.dataset, config.data_dir, "test")
    for protocol, window, trained in [("bodynet", "reference", "hgmt"),
                                      ("surreal", "reference", "hgmt"),
                                      ("hgmt", "hgmt", "hgmt"),
                                      ("bodynet", "reference", "reference_box"),
                                      ("hgmt", "reference_box", "reference_box")]:
        config.window = trained
        ev = evaluator.Evaluator(config, protocol=protocol, max_examples=2)
        summary = ev(variables)
        assert summary["window"] == window and summary["protocol"] == protocol
        assert summary["label_size"] == 64
        assert (summary["dataset"], summary["data_dir"]) == (config.dataset, config.data_dir)
        header = markdown.to_markdown(summary).splitlines()[0]
        assert (f"in the `{window}` crop window" in header) == (window != "hgmt"), header
        record = source[ev.indices[0]]
        joints = record["joints2d"][body.SMPL_TO_JOINT].astype(np.float64)
        centre, side = cropping.window_box(joints, window)
        r = config.image_size // 4
        np.testing.assert_allclose(ev.first_batch["crop"][0],
                                   cropping.crop_affine(centre, side, r), atol=1e-4)
    hgmt_side = cropping.person_box(joints)[1]
    assert 0.8 < reference_crop.reference_box(joints)[1] / hgmt_side < 0.9


def test_reference_protocols_are_refused_on_other_label_sizes():
    """Both references measure 64 x 64 label maps (bodynet training/opts.lua:34 heatmapSize,
    util/eval.lua:464-465 transform(..., 64, true); surreal training/opts.lua:33 outSize), from
    a 256 px input: at config.image_size 128 a reference protocol's thresholds and integer
    steps would be applied to 32 x 32 maps under its name. The evaluator refuses, in one line
    naming the setting and the fix, before it opens the split; hgmt's protocol runs at any
    size, and so does `surreal` where every task keeps hgmt's definition."""
    from tests.conftest import tiny_config

    for size, r in ((128, 32), (64, 16)):
        config = tiny_config("unused", tasks="pose2d+segm", image_size=size)
        for protocol in ("bodynet", "surreal"):
            with pytest.raises(ValueError) as e:
                evaluator.Evaluator(config, protocol=protocol)
            assert str(e.value) == (
                f"--protocol={protocol}: measures 64x64 label maps, as its reference code does "
                f"(config.image_size=256), but config.image_size={size} gives {r}x{r}; "
                f"evaluate this model with --protocol=hgmt, or train one with "
                f"--config.image_size=256 for the reference protocols")
        protocols.check_label_size("hgmt", ("pose2d", "segm"), size)
        protocols.check_label_size("surreal", ("pose2d", "pose3d"), size)
    protocols.check_label_size("bodynet", ("pose2d", "segm"), protocols.reference_image_size())


def test_an_evaluation_with_a_damaged_record_nulls_the_reference_numbers_over_n(
        demo_dataset, monkeypatch, caplog):
    """Four demo test frames under `bodynet`, all read, then with the fourth damaged (it does
    not read: `record_reads.DamagedRecord`). The damaged record is padding at its position, left out
    of the sums while N = 4 counts it: BodyNet's MJD and the per-image depth RMSE (sums / N)
    are null with the reason, in the JSON, the Markdown and the warning; the PCK and the
    segmentation means, over the records that read, keep a value or their own reason."""
    import logging

    from hgmt.data import record_reads
    from hgmt.models import create_model
    from hgmt.tasks import common, heads, parse_tasks
    from hgmt.training import steps
    from tests.conftest import tiny_config

    config = tiny_config(demo_dataset[1], tasks="all", image_size=256)
    model = create_model(config.model, heads(parse_tasks(config.tasks)))
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = steps.init_variables(model, jax.random.key(0), images)
    ev = evaluator.Evaluator(config, protocol="bodynet", indices=[0, 1, 2, 3])
    every = ev(variables)
    assert every["num_damaged"] == 0 and every["pose3d"]["mjd_mm"] > 0
    assert every["depth"]["rmse_mm"] is not None

    read = record_reads.read

    def damaged_fourth(source, index):
        if index == 3:
            raise record_reads.DamagedRecord("does not read (a test's damage)")
        return read(source, index)

    monkeypatch.setattr(record_reads, "read", damaged_fourth)
    with caplog.at_level(logging.WARNING):
        summary = ev(variables)
    assert summary["num_examples"] == 3 and summary["num_damaged"] == 1
    why = f"1 {common.DAMAGED}"
    assert summary["pose3d"]["mjd_mm"] is None and summary["depth"]["rmse_mm"] is None
    for key in ("mjd_mm", "mjd_mm_per_joint"):
        assert summary["pose3d"]["null_reasons"][key] == why
    assert summary["depth"]["null_reasons"]["rmse_mm"] == why
    for task in ("pose2d", "segm"):
        assert why not in summary[task].get("null_reasons", {}).values(), task
    nulled = "pose3d/mjd_mm, pose3d/mjd_mm_per_joint, depth/rmse_mm, depth/rmse_bins: null"
    assert nulled in caplog.text and "cannot be reproduced" in caplog.text
    text = markdown.to_markdown(summary)
    assert f"**1 damaged record(s) left out: {summary['damaged_records'][0]}. {nulled}" in text
    assert f"- pose3d/mjd_mm is null: {why}." in text
    assert "| pelvis | " in text and "| null |" in text  # the breakdown's cells


# --- Precision on accelerators ------------------------------------------------------------------
def _dot_precisions(jaxpr) -> list:
    """The `precision` of every dot_general in a closed jaxpr, its sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):  # jax.core's: gone in 0.12
            found += _dot_precisions(sub)
    return found


@pytest.mark.parametrize("protocol", sorted(protocols.PROTOCOLS))
def test_every_metric_product_is_full_float32_on_any_backend(protocol):
    """A metric's sums and the decoding's coordinate products are dot_generals at precision
    HIGHEST: at JAX's default a GPU may round their float32 inputs to TF32 and a TPU to
    bfloat16, which a CPU (where these tests run) never shows."""
    from tests.test_tasks import make_batch

    b = 4
    batch = {**make_batch(seed=0, b=b, r=R), "position": jnp.arange(b),
             "mask": jnp.ones(b), "unusable": jnp.zeros(b), "rejected": jnp.zeros(b)}
    preds = {"pose2d": pose2d.targets(batch), "pose3d": pose3d.targets(batch),
             "depth": jax.nn.one_hot(depth.targets(batch), 20),
             "segm": jax.nn.one_hot(segm.targets(batch), 15)}
    exact = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    for task, pred in preds.items():
        m = protocols.metric(protocol, task, b)
        precisions = _dot_precisions(jax.make_jaxpr(m.stats)(pred, batch).jaxpr)
        assert all(p == exact for p in precisions), (protocol, task, precisions)


# --- The references' label crop ------------------------------------------------------------------
# A 240 x 320 map whose pixel (row, col), 0-based, holds 1000 (row + 1) + col + 1: every value
# names its source pixel, and 0 is what the crop puts outside the map.
_ROWS, _COLS = np.mgrid[:240, :320]
_NAMED = (1000 * (_ROWS + 1) + _COLS + 1).astype(np.int32)


def _named(rows, cols):
    """The values of _NAMED at 0-based source rows (64,) x cols (64,); 0 where a col is < 0."""
    rows, cols = np.asarray(rows)[:, None], np.asarray(cols)[None, :]
    return np.where(cols >= 0, 1000 * (rows + 1) + cols + 1, 0)


def test_reference_label_crop_shrinks_the_map_first_from_a_212_px_window():
    """crop(map, (160.3, 120.7), 1.06, 0, 64, 'simple') (surreal training/img.lua:87-144,
    the same lines as bodynet training/util/img.lua:85-142): a window of 212 px.
    - img.lua:96-99: scaleFactor sf = 200 x 1.06 / 64 = 3.3125 >= 2; newSize =
      floor(320 / 3.3125) = floor(96.6) = 96.
    - img.lua:105, torch/image init.lua `scale`: image.scale(map, 96, 'simple') makes the
      longest side 96: width 320 x 96 / 320 = 96, height 240 x 96 / 320 = 72 (an integer
      here). generic/image.c:388-398 (scaleSimple): shrunk (j, i) = map (trunc(j sy),
      trunc(i sx)), sx = float32(320) / float32(96) = float32(10/3) = 3.33333325..., sy =
      240 / 72 the same; the product is float32 too, so for i = 3 the exact 9.99999976 rounds
      to 10.0 and trunc gives 10: for every i < 96, trunc(i sx) = floor(10 i / 3).
    - img.lua:112-113: c = (160.3, 120.7) / 3.3125 = (48.3925, 36.4377), s = 1.06 / 3.3125
      = 0.32, h = 200 s = 64; transform({1,1}, c, s, 0, 64, true) (img.lua:56-67) maps label
      (0, 0) back to c - h / 2 = (16.3925, 4.4377), + 1e-4, cast to int (16, 4), + 1: the
      1-based corner ul = (17, 5) of the shrunk map; br = ul + 64 (img.lua:115).
    - img.lua:121-130: label (k, l) = shrunk (k + 5 - 1, l + 17 - 1) = map (floor(10 (k + 4) /
      3), floor(10 (l + 16) / 3)), all inside the 72 x 96 shrunk map.
    So label (0, 0) is map (13, 53), (63, 63) map (223, 263). hgmt's warp of the same window
    (`crop_affine`, nearest) samples each label pixel's centre: label (0, 0) at (120.7 -
    31.5 x 3.3125, 160.3 - 31.5 x 3.3125) = (16.4, 55.96), map (16, 56), 3 px away."""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(_NAMED, np.array([160.3, 120.7]), 1.06)
    k = np.arange(64)
    expected = _named(10 * (k + 4) // 3, 10 * (k + 16) // 3)
    assert out.shape == (64, 64) and out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    assert out[0, 0] == 1000 * 14 + 54 and out[63, 63] == 1000 * 224 + 264
    # Label (2, 2) is shrunk (6, 18): float32(6 sy) = 20.0 and float32(18 sx) = 60.0, so map
    # (20, 60), where products in float64 (19.9999995, 59.9999986) would give (19, 59).
    assert out[2, 2] == _NAMED[20, 60]


def test_reference_label_crop_copies_a_smaller_window_then_resizes_it():
    """crop(map, (100.3, 80.0), 0.4525, 0, 64, 'simple'): a window of h = 200 x 0.4525 =
    90.5 px.
    - img.lua:96-97: sf = 90.5 / 64 = 1.414 < 2, so scaleFactor = 1 and the map is not shrunk.
    - img.lua:112-114: ul = trunc(c - h/2 + 1e-4) + 1 = (trunc(55.0501) + 1, trunc(34.7501) +
      1) = (56, 35), br = trunc(c + h/2 + 1e-4) + 1 = (trunc(145.5501) + 1, trunc(125.2501) +
      1) = (146, 126), 1-based: a block of 146 - 56 = 90 columns and 126 - 35 = 91 rows
      (img.lua:129), block (k, l) = map (k + 34, l + 55) (img.lua:121-130).
    - img.lua:139: image.scale(block, 64, 64, 'simple'): sx = 90 / 64 = 1.40625 and sy = 91 /
      64 = 1.421875, exact in float32, so label (j, i) = block (floor(91 j / 64), floor(90 i
      / 64)) (generic/image.c:388-398) = map (floor(91 j / 64) + 34, floor(90 i / 64) + 55).
    Label (0, 0) is map (34, 55); (63, 63) map (89 + 34, 88 + 55) = (123, 143)."""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(_NAMED, np.array([100.3, 80.0]), 0.4525)
    j = np.arange(64)
    np.testing.assert_array_equal(out, _named(91 * j // 64 + 34, 90 * j // 64 + 55))
    assert out[0, 0] == 35 * 1000 + 56 and out[63, 63] == 124 * 1000 + 144


def test_reference_label_crop_truncates_the_corner_toward_zero_and_fills_outside_with_0():
    """The window of the first case moved to x 20.0: c_x / sf = 20 / 3.3125 = 6.0377, and
    c_x - h/2 + 1e-4 = -25.9621 cast to an integer is -25 (toward zero; floor would give -26),
    so ul_x = -24 (img.lua:56-67, 112-113). Label column l is shrunk column l - 24 - 1 = l -
    25: columns 0..24 lie left of the map and stay 0 (img.lua:121-130), column 25 is shrunk
    column 0, map column 0; rows as in the first case. A window wholly outside the map makes
    the copy raise, which pcall leaves as all 0 (img.lua:130-132)."""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(_NAMED, np.array([20.0, 120.7]), 1.06)
    k = np.arange(64)
    cols = np.where(k >= 25, 10 * (k - 25) // 3, -1)
    np.testing.assert_array_equal(out, _named(10 * (k + 4) // 3, cols))
    assert (out[:, :25] == 0).all() and out[0, 25] == 14 * 1000 + 1
    assert not reference_crop.label_crop(_NAMED, np.array([-200.0, 120.7]), 1.06).any()


# A 240 x 320 RGB frame whose values encode their position: red x + 10 (up to 255), green
# y + 10, blue 100 where x + y is even and 150 where it is odd.
_ROWS_RGB, _COLS_RGB = np.mgrid[0:240, 0:320]
_POSITIONS = np.stack([np.minimum(_COLS_RGB + 10, 255), _ROWS_RGB + 10,
                       100 + 50 * ((_ROWS_RGB + _COLS_RGB) % 2)], -1).astype(np.uint8)


def test_reference_image_crop_copies_the_window_then_scales_it_ends_onto_ends():
    """crop(rgb, (100.3, 80.6), 0.5, 0, 256, 'bilinear') (surreal training/img.lua:87-144,
    bodynet training/util/img.lua:85-142) of the frame as float32 value / 255 (surreal
    loader_SURREAL.lua:34): a window of h = 200 x 0.5 = 100 px.
    - img.lua:96-97: sf = 100 / 256 < 2, so scaleFactor = 1: no shrinking.
    - img.lua:112-114: ul = trunc(c - 50 + 1e-4) + 1 = (trunc(50.3001) + 1, trunc(30.6001) +
      1) = (51, 31), br = trunc(c + 50 + 1e-4) + 1 = (151, 131): a block of 100 x 100, block
      (k, l) = frame (k + 30, l + 50) (img.lua:121-130).
    - img.lua:139, generic/image.c:213-275 and 80-104: image.scale(block, 256, 256,
      'bilinear') resizes each row, then each column, 100 -> 256 with t = float32(99) /
      float32(255): output i < 255 is (1 - f) b[n] + f b[n + 1], n = trunc(i t), f = i t - n;
      output 255 is b[99]. So output column i samples frame x = 50 + 99 i / 255 (ends onto
      ends: i = 0 is x 50, i = 255 is x 149) and row j frame y = 30 + 99 j / 255.
    - Red is linear in x: 10 + 50 + 99 i / 255, rounded to uint8 (image_crop's one step of
      its own; 99 i / 255 is a multiple of 1/255, never within 0.002 of a half): 60 + round(99
      i / 255). Green likewise 40 + round(99 j / 255).
    - Blue at (1, 1): n = 0, f = float32(99/255) = 0.38823530 in both axes, block (0, 0) is
      frame (30, 50), even (100), its neighbours (30, 51) and (31, 50) odd (150), (31, 51)
      even: 100 + 50 (2 f (1 - f)) = 100 + 23.751 = 123.75 -> 124.
    hgmt's bilinear warp of the same window samples x = 100.3 + (i - 127.5) 100 / 256 =
    50.5 + 0.390625 i: at i = 0 red 60.5, not 60. Its frame (`crop_affine`, which the joints'
    label frame `m_label` scales by 1/4) puts x 50 at (50 - 100.3) 2.56 + 127.5 = -1.268 and x
    149 at 252.172, where this crop shows them at 0 and 255: the content lies 1.268 px right
    of hgmt's frame at the left edge and 2.828 px at the right (rows: 2.036 and 3.596 down)."""
    from hgmt.data import cropping
    from hgmt.sources import reference_crop

    out = reference_crop.image_crop(_POSITIONS, np.array([100.3, 80.6]), 0.5)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    i = np.arange(256)
    red = 60 + np.rint(99 * i / 255)
    green = 40 + np.rint(99 * i / 255)
    np.testing.assert_array_equal(out[..., 0], np.broadcast_to(red[None, :], (256, 256)))
    np.testing.assert_array_equal(out[..., 1], np.broadcast_to(green[:, None], (256, 256)))
    assert out[0, 0, 2] == 100 and out[1, 1, 2] == 124 and out[255, 255, 2] == 100
    assert out[0, 0, 0] == 60 and out[0, 255, 0] == 159 and out[255, 0, 1] == 139

    m = cropping.crop_affine(np.array([100.3, 80.6]), 100.0, 256)
    np.testing.assert_allclose(m @ [50, 30, 1], [-1.268, -2.036], atol=1e-9)
    np.testing.assert_allclose(m @ [149, 129, 1], [252.172, 251.404], atol=1e-9)


def test_reference_image_crop_truncates_the_corner_and_blends_the_zeros_outside():
    """The window of the first case moved up to y 20.6: ul_y = trunc(20.6 - 50 + 1e-4) + 1 =
    trunc(-29.3999) + 1 = -28 (toward zero) and br_y = trunc(70.6001) + 1 = 71 (img.lua:56-67,
    112-114): a block of 99 rows, block row k = frame row k - 29, zeros for k < 29 (img.lua:
    121-130). Resizing 99 -> 256 rows (image.c:80-104): t = float32(98) / float32(255), output
    row j samples block position p = 98 j / 255 and blends the block's rows trunc(p) and
    trunc(p) + 1 by its fraction. Green of block row k is 0 for k < 29 and 10 + (k - 29) after:
    - j = 72: p = 27.67, rows 27 and 28 both 0 -> 0;
    - j = 73: p = 28.055, 0.055 of row 29 (10) -> 0.55 -> 1;
    - j = 74: p = 28.439 -> 4.39 -> 4; j = 75: p = 28.824 -> 8.24 -> 8;
    - j = 76: p = 29.208, 10 + 0.208 -> 10.
    Every row is np.interp of p over the block's green column (float64 here, float32 there: p's
    fraction is a multiple of 1/255, so no value comes within 0.001 of a half)."""
    from hgmt.sources import reference_crop

    out = reference_crop.image_crop(_POSITIONS, np.array([100.3, 20.6]), 0.5)
    k = np.arange(99)
    block_green = np.where(k >= 29, 10 + k - 29, 0)
    p = 98 * np.arange(256) / 255
    green = np.rint(np.interp(p, k, block_green))
    np.testing.assert_array_equal(out[..., 1], np.broadcast_to(green[:, None], (256, 256)))
    assert (out[:73] == 0).all()
    assert list(out[73:77, 0, 1]) == [1, 4, 8, 10]


def test_reference_image_crop_shrinks_the_frame_first_from_a_512_px_window():
    """crop(rgb, (160.7, 120.2), 3.2, 0, 256, 'bilinear'): a window of 640 px.
    - img.lua:96-99: sf = 640 / 256 = 2.5 >= 2; newSize = floor(320 / 2.5) = 128;
      image.scale(rgb, 128, 'bilinear') (init.lua `scale`) makes it 96 x 128 (240 x 128 / 320).
    - generic/image.c:105-131 (shrinking, rows then columns): t = 320 / 128 = 2.5, output d
      averages the frame over [2.5 d, 2.5 (d + 1)), the pixel cut at a half weighted 0.5: d = 0
      is (v0 + v1 + 0.5 v2) / 2.5, d = 1 (0.5 v2 + v3 + v4) / 2.5. On a linear value a + x the
      mean x is 2.5 d + 0.8 for even d and 2.5 d + 0.7 for odd d; rows the same (240 / 96 =
      2.5).
    - img.lua:112-115: c / sf = (64.28, 48.08), h = 256: ul = trunc(c / sf - 128 + 1e-4) + 1 =
      (trunc(-63.7199) + 1, trunc(-79.9199) + 1) = (-62, -78), a 256 x 256 block: output (k, l)
      = shrunk (k - 79, l - 63), 0 outside it (img.lua:121-132); no resize after.
    Red at column l = 63 + d (d < 97, where x + 10 < 255 throughout) is 10 + the mean x,
    rounded: 10.8 -> 11, 13.2 -> 13, ...; green at row k = 79 + e likewise 10 + 2.5 e + 0.8 or
    0.7. Columns l < 63 and l >= 191, rows k < 79 and k >= 175 are 0."""
    from hgmt.sources import reference_crop

    out = reference_crop.image_crop(_POSITIONS, np.array([160.7, 120.2]), 3.2)
    d = np.arange(97)
    red = np.rint(10 + 2.5 * d + np.where(d % 2 == 0, 0.8, 0.7))
    np.testing.assert_array_equal(out[79:175, 63:160, 0],
                                  np.broadcast_to(red[None, :], (96, 97)))
    e = np.arange(96)
    green = np.rint(10 + 2.5 * e + np.where(e % 2 == 0, 0.8, 0.7))
    np.testing.assert_array_equal(out[79:175, 63:191, 1],
                                  np.broadcast_to(green[:, None], (96, 128)))
    assert out[79, 63, 0] == 11 and out[79, 64, 0] == 13 and out[80, 63, 1] == 13
    assert not out[:79].any() and not out[175:].any()
    assert not out[:, :63].any() and not out[:, 191:].any()


def test_reference_crop_corners_are_computed_in_float32_as_torchs():
    """crop(rgb, (252.78755276910726, 120), 1.317876581215345, 0, 256, 'bilinear'), the centre
    a float32 tensor (img.lua:88; surreal training/dataset.lua:2 makes float32 the default):
    - img.lua:96: sf = 263.5753 / 256 < 2, so 1; c_x = float32(252.78755276910726) =
      252.78755187988281 (img.lua:112).
    - getTransform (img.lua:20-30), h = 200 x 1.317876581215345 = 263.575316243069 in double,
      stored in a float32 eye(3): a = float32(256 / h) = 0.97125941514968872, b =
      float32(256 (-c_x / h + 0.5)) = -117.52228546142578.
    - torch.inverse (img.lua:62; LAPACK trti2 on the upper-triangular matrix): 1 / a =
      1.0295910835266113, then -(1.0295910835266113 x b) = 120.9999008178711, in float32.
    - img.lua:64-66: 120.9999008178711 + float32(1e-4) = 121.0 in float32, cast 121, + 1:
      ul_x = 122, where the exact c - h / 2 + 1e-4 = 120.99999464757278 casts to 120, ul_x =
      121. The crop's first column is the block's first (ends onto ends): the frame's 0-based
      column 121, not 120 (on the rows the window has inside the frame)."""
    from hgmt.sources import reference_crop

    frame = np.broadcast_to((np.arange(320) % 256).astype(np.uint8)[None, :, None],
                            (240, 320, 3)).copy()
    out = reference_crop.image_crop(frame, np.array([252.78755276910726, 120.0]),
                                    1.317876581215345)
    assert (out[20:240, 0] == 121).all()  # the rows inside the frame (ul_y = -10)


def test_reference_protocols_cut_the_image_and_label_maps_as_the_references_do(demo_dataset):
    """Under `surreal` (and `bodynet`: the same window and crop) the evaluation's input image
    is the references' crop of the frame (`reference_crop.image_crop`) and its segm and
    depth_class labels their crop of the frame's maps (`reference_crop.label_crop`), both
    around getCenter with getScale, not hgmt's bilinear and nearest warps of the same window,
    which differ on the demo frames; under `hgmt` they are hgmt's warps of hgmt's window. A
    rotated, mirrored or colour-gained reference crop is refused."""
    import cv2

    from hgmt.data import builds, cropping, records
    from hgmt.models import create_model
    from hgmt.sources import reference_crop
    from hgmt.tasks import heads, parse_tasks
    from hgmt.training import steps
    from tests.conftest import tiny_config

    config = tiny_config(demo_dataset[1], tasks="segm+depth", image_size=256)
    model = create_model(config.model, heads(parse_tasks(config.tasks)))
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = steps.init_variables(model, jax.random.key(0), images)
    source = builds.open_split(config.dataset, config.data_dir, "test")
    for protocol in ("surreal", "hgmt"):
        ev = evaluator.Evaluator(config, protocol=protocol, max_examples=2)
        ev(variables)
        for row, index in enumerate(ev.indices):
            record = source[index]
            joints = record["joints2d"][body.SMPL_TO_JOINT].astype(np.float64)
            frame = records.decoded(record, "image")
            raw = records.decoded(record, "segm")
            classes = records.decoded(record, "depth_class")
            centre, side = cropping.window_box(joints, ev.window)
            m = cropping.crop_affine(centre, side, R)
            warped_image = cv2.warpAffine(frame, cropping.crop_affine(centre, side, 256),
                                          (256, 256), flags=cv2.INTER_LINEAR)
            warped_segm = body.SEGM_TO_PART[_nearest_warp(raw, m)]
            warped_depth = _nearest_warp(classes, m)
            centre, scale = reference_crop.reference_centre_scale(joints)
            ref_image = reference_crop.image_crop(frame, centre, scale)
            ref_segm = body.SEGM_TO_PART[reference_crop.label_crop(raw, centre, scale)]
            ref_depth = reference_crop.label_crop(classes, centre, scale)
            got_image = ev.first_batch["image"][row]
            got_segm, got_depth = ev.first_batch["segm"][row], ev.first_batch["depth_class"][row]
            if protocol == "surreal":
                np.testing.assert_array_equal(got_image, ref_image)
                np.testing.assert_array_equal(got_segm, ref_segm)
                np.testing.assert_array_equal(got_depth, ref_depth)
                # The frame tells the two apart.
                assert (ref_image != warped_image).any() and (ref_segm != warped_segm).any()
            else:
                np.testing.assert_array_equal(got_image, warped_image)
                np.testing.assert_array_equal(got_segm, warped_segm)
                np.testing.assert_array_equal(got_depth, warped_depth)
    for params in (cropping.CropParams(rotation=10.0),
                   cropping.CropParams(gain=(1.2, 1.0, 1.0))):
        with pytest.raises(ValueError, match="crop window 'reference' cuts the image and "
                                             "labels as the references' test crop does"):
            cropping.crop_with(source[ev.indices[0]], 256, params, ("segm",),
                               window="reference")


def _nearest_warp(label_map, m):
    """hgmt's nearest warp of a label map to R x R by the (2,3) affine `m`."""
    import cv2

    return cv2.warpAffine(label_map, m, (R, R), flags=cv2.INTER_NEAREST)


def test_bodynet_does_not_draw_a_joint_at_image_y_exactly_zero():
    """bodynet donkey.lua:288 draws joint j only if its 1-based image y > 1, i.e. 0-based y > 0:
    a joint at image y = 0.0 exactly is not drawn. Crop image ->
    label: 0.5 image + (2, 3), so label (10, 3) is image (16, 0) exactly in float32; a joint at
    label (10, 23) is image y 40: drawn."""
    from hgmt.tasks import pose2d

    joints = np.stack([np.full(16, 10.0), np.full(16, 23.0)], -1)
    joints[0] = [10.0, 3.0]
    batch = {"joints2d": jnp.asarray(joints[None], jnp.float32),
             "crop": jnp.asarray([[[0.5, 0.0, 2.0], [0.0, 0.5, 3.0]]], jnp.float32)}
    _, drawn = pose2d.bodynet_label_peaks(batch, 64)
    assert not bool(drawn[0, 0]) and bool(drawn[0, 1:].all())


def _numbered_map(h=240, w=320):
    """(h, w) int32 map whose value names its pixel: 1000 (row + 1) + column + 1."""
    rows, cols = np.mgrid[0:h, 0:w]
    return (1000 * (rows + 1) + cols + 1).astype(np.int32)


def test_reference_label_crop_shrinks_first_at_exactly_two_source_px_per_crop_px():
    """img.lua:96-97 shrinks the map first when sf = 200 scale / res >= 2, 2 included. scale
    0.5, res 50: sf = 2.0 exactly. Shrink: newSize floor(320 / 2) = 160, the map scaled to 120 x
    160 ('simple': shrunk (j, i) = map (2j, 2i)); c = (101, 81) / 2 = (50.5, 40.5), h = 50,
    ul = trunc(c - 25 + 1e-4) + 1 = (26, 16): label (l, k) = shrunk (15 + l, 25 + k) = map
    (30 + 2l, 50 + 2k). (Copy-then-resize would give map (31 + 2l, 51 + 2k).)"""
    from hgmt.sources import reference_crop

    out = reference_crop.label_crop(_numbered_map(), np.array([101.0, 81.0]), 0.5, res=50)
    k = np.arange(50)
    np.testing.assert_array_equal(out, _numbered_map()[30 + 2 * k[:, None], 50 + 2 * k[None, :]])


def test_reference_protocols_are_refused_on_larger_label_maps_too():
    """A reference protocol measures 64 x 64 label maps only: config.image_size 512 (128 x 128
    maps) is refused as 128 (32 x 32) is; hgmt's protocol takes it."""
    for protocol in ("bodynet", "surreal"):
        with pytest.raises(ValueError, match="config.image_size=512 gives 128x128"):
            protocols.check_label_size(protocol, ("pose2d", "segm"), 512)
    protocols.check_label_size("hgmt", ("pose2d", "segm"), 512)
