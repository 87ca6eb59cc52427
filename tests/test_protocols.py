"""Metric protocols: each reproduces the reference code on crafted predictions.

Every expected value below was computed by hand from the reference files, cited as
repository/path:line (gulvarol/bodynet at f07dec6, gulvarol/surreal at its released master).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hgmt import workdirs
from hgmt.evaluation import evaluator, protocols
from hgmt.sources import surreal
from hgmt.tasks import depth, pose2d, pose3d, segm

R = 64


def _run(protocol, task, pred, batch):
    m = protocols.metric(protocol, task, int(batch.get("position", jnp.zeros(1)).shape[0]))
    return m.protocol, m.summarize(jax.tree.map(np.asarray, m.stats(pred, batch)))


# --- BodyNet 2D PCK -----------------------------------------------------------------------------
def _pose2d_case():
    """6 examples = BodyNet test batches {0,1,2,3} and {4,5} (batch size 4). Ground truth joint
    j at integer pixel (10 + 2j, 20); predictions are one-hot heatmaps at chosen pixels."""
    b = 6
    gt = np.stack([np.stack([10.0 + 2 * np.arange(16), np.full(16, 20.0)], -1)] * b)
    visible = np.ones((b, 16), np.float32)
    gt[2, 2] = [0.0, 30.0]  # ex 2, r_hip on column 0: calcDists needs label > 1 (1-based)
    visible[3, 3] = 0.0  # ex 3, l_hip not visible: empty ground-truth heatmap
    visible[4, 5] = visible[5, 5] = 0.0  # l_ankle never valid in the second batch
    pred_xy = gt.copy()
    pred_xy[1, 0] += [3, 0]  # distance 3 <= 3.2: correct
    pred_xy[1, 1] += [3, 2]  # sqrt(13) = 3.61 > 3.2: wrong
    pred_xy[1, 10] += [2, 2]  # 2.83: correct
    pred_xy[5, 15] += [4, 0]  # 4: wrong
    pred_xy[2, 2] += [10, 0]  # wrong, but ex 2's r_hip is not scored (column 0)
    pred = np.zeros((b, R, R, 16), np.float32)
    for i in range(b):
        for j in range(16):
            x, y = pred_xy[i, j].astype(int)
            pred[i, y, x, j] = 1.0
    pred[3, :, :, 4] = 0.0  # ex 3, l_knee: max 0 -> predicted at the first pixel: wrong
    batch = {"joints2d": jnp.asarray(gt, jnp.float32), "visible": jnp.asarray(visible),
             "image": jnp.zeros((b, 4 * R, 4 * R, 3), jnp.uint8),  # the label size
             "crop": jnp.tile(jnp.eye(2, 3, dtype=jnp.float32), (b, 1, 1)),
             "position": jnp.arange(b, dtype=jnp.int32)}
    return jnp.asarray(pred), batch


def test_bodynet_pck_reproduces_eval_lua():
    pred, batch = _pose2d_case()
    used, s = _run("bodynet", "pose2d", pred, batch)
    assert used == "bodynet"
    # bodynet training/util/eval.lua:317 scores joints {1,2,3,4,5,6,11,12,15,16} (1-based);
    # :88-111 heatmapAccuracy: per joint correct / valid within the batch (:78 distAccuracy,
    # threshold .5 of heatmapSize/10 = 6.4 px, :93), joints without a valid instance skipped
    # (:109-111); :13 calcDists skips ground truth on the first row/column; :48 a heatmap
    # with max <= 0 predicts pixel (1,1).
    # Batch 1: r_knee 3/4, l_knee 3/4, r_hip 3/3 (ex 2 skipped), l_hip 3/3, the rest 4/4:
    #   (8 + 0.75 + 0.75) / 10 = 0.95.
    # Batch 2: l_ankle skipped, l_wrist 1/2, the rest 2/2: (8 + 0.5) / 9.
    # bodynet training/test.lua:272 sums per-batch PCK, :81 divides by the batch count.
    expected = (0.95 + 8.5 / 9) / 2
    assert s["pck"] == pytest.approx(expected, abs=1e-9) and s["num_batches"] == 2
    assert s["pck_per_joint"]["r_knee"] == pytest.approx(5 / 6)
    assert s["pck_per_joint"]["r_hip"] == 1.0 and s["pck_per_joint"]["l_ankle"] == 1.0
    assert s["pck_per_joint"]["l_wrist"] == pytest.approx(5 / 6)
    assert "pelvis" not in s["pck_per_joint"] and len(s["pck_per_joint"]) == 10
    # hgmt's protocol on the same predictions: 16 joints, sub-pixel, pooled over the split.
    used, h = _run("hgmt", "pose2d", pred, batch)
    assert used == "hgmt" and h["pck@3.2px"] != pytest.approx(expected)


def test_bodynet_pck_batches_follow_the_test_order():
    """The same examples in another order fall in other batches: the mean changes as the
    reference's would (ex 1 and 3 together, 5 alone...)."""
    pred, batch = _pose2d_case()
    batch = dict(batch, position=jnp.array([0, 4, 1, 5, 2, 3], jnp.int32))
    _, s = _run("bodynet", "pose2d", pred, batch)
    # Batch 1 = ex 0, 2, 4, 5: r_hip 3/3, l_ankle 2/2 (ex 4, 5 not valid), l_wrist 3/4 ->
    #   (9 + 0.75) / 10. Batch 2 = ex 1, 3: r_knee 1/2, l_knee 1/2, l_hip 1/1 -> 9 / 10.
    assert s["pck"] == pytest.approx((0.975 + 0.9) / 2, abs=1e-9)


# --- BodyNet 3D MJD -------------------------------------------------------------------------
def _pose3d_case():
    """One example: the crop maps image pixel (u, v) to label ((u - 160)/4 + 32, (v - 120)/4 +
    32); the ground-truth pelvis is at depth 6 m on the optical axis, r_ankle 0.16 m to its
    right at the same depth, every other joint at the pelvis."""
    crop = jnp.array([[[0.25, 0.0, -8.0], [0.0, 0.25, 2.0]]], jnp.float32)
    joints = np.zeros((1, 16, 3), np.float32)
    joints[..., 2] = 6.0
    joints[0, 0, 0] = 0.16  # label pixel (36, 32): u = 176 -> X = 16 / 600 * 6 m
    batch = {"crop": crop, "pelvis_depth": jnp.array([6.0], jnp.float32),
             "joints3d": jnp.asarray(joints), "joints2d": jnp.zeros((1, 16, 2)),
             "visible": jnp.ones((1, 16)), "image": jnp.zeros((1, 4 * R, 4 * R, 3), jnp.uint8)}
    vol = np.zeros((1, 16, R, R, 19), np.float32)  # (B, joint, y, x, bin + 9)
    vol[0, :, 32, 32, 9 + 1] = 1.0  # every joint, the pelvis too, at (32, 32) bin +1
    vol[0, 0] = 0.0
    vol[0, 0, 32, 36, 9 + 0] = 1.0  # r_ankle at (36, 32), bin 0
    vol[0, 1, 40, 40, 9 - 3] = 0.5  # r_knee: a lower second peak is ignored
    pred = jnp.asarray(np.transpose(vol, (0, 2, 3, 1, 4)).reshape(1, R, R, 16 * 19))
    return pred, batch


def test_bodynet_mjd_reproduces_eval_lua():
    pred, batch = _pose3d_case()
    used, s = _run("bodynet", "pose3d", pred, batch)
    assert used == "bodynet"
    # bodynet training/util/eval.lua:416 getPreds3DCropped (global argmax, :23 tensorMax);
    # :479-485 depth = -(z - middleZ) * stp + pelvis depth, back-projected, then aligned at the
    # *predicted* pelvis (bin +1, 6.045 m). r_ankle: (0.16, 0, 6.0) - (0, 0, 6.045) against
    # ground truth (0.16, 0, 0): 45 mm. Every other joint sits with the pelvis: 0 mm.
    # :191 PE_off; bodynet training/test.lua:87-90: mean over examples, then over 16 joints.
    assert s["mjd_mm_per_joint"]["r_ankle"] == pytest.approx(45.0, abs=1e-3)
    assert s["mjd_mm_per_joint"]["r_knee"] == pytest.approx(0.0, abs=1e-3)
    assert s["mjd_mm"] == pytest.approx(45.0 / 16, abs=1e-3)
    # hgmt's decoding puts the pelvis at its ground-truth depth (bin 0): 14 joints are 45 mm
    # off and r_ankle is right.
    _, h = _run("hgmt", "pose3d", pred, batch)
    assert h["mjd_mm"] == pytest.approx(14 * 45.0 / 16, abs=1e-3)


# --- SURREAL segmentation ---------------------------------------------------------------------
def _segm_case():
    """Image 1 (4x4): ground truth background, parts 1..14, background; predicted the same but
    head -> torso, part 5 -> background, the last background pixel -> part 14. Image 2: all
    torso, predicted right."""
    gt1 = np.array([0, *range(1, 15), 0]).reshape(4, 4)
    pr1 = gt1.copy().reshape(-1)
    pr1[1], pr1[5], pr1[15] = 2, 0, 14
    gt = np.stack([gt1, np.full((4, 4), 2)])
    pr = np.stack([pr1.reshape(4, 4), np.full((4, 4), 2)])
    return jax.nn.one_hot(pr, 15) * 5.0, {"segm": jnp.asarray(gt, jnp.int32)}


def test_surreal_segmentation_reproduces_eval_lua():
    pred, batch = _segm_case()
    used, s = _run("surreal", "segm", pred, batch)
    assert used == "surreal"
    # surreal training/eval.lua:22-50 segmPerformance accumulates per class tp (intersection),
    # npos + p - tp (union) and npos; training/test.lua:54-57: IoU = intersection / union and
    # pixel accuracy = intersection / npos over the split, averaged over classes 2..15.
    # head: 0/1, torso: 17/18 (16 + 1 right, 1 more predicted), part 5: 0/1, part 14: 1/2,
    # the 10 others 1: mean IoU = (17/18 + 1/2 + 10) / 14.
    assert s["iou_per_part"]["torso"] == pytest.approx(17 / 18)
    assert s["mean_iou"] == pytest.approx((17 / 18 + 0.5 + 10) / 14, abs=1e-12)
    # Accuracy per class: head 0, torso 17/17, part 5 0, part 14 1/1, others 1 -> 12 / 14.
    assert s["pixel_accuracy"] == pytest.approx(12 / 14, abs=1e-12)
    assert s["undefined"] == []
    # hgmt's pixel accuracy counts background too: 29 of 32 pixels.
    _, h = _run("hgmt", "segm", pred, batch)
    assert h["pixel_accuracy"] == pytest.approx(29 / 32)
    # BodyNet's segmentation code is SURREAL's (bodynet training/util/eval.lua:130).
    assert _run("bodynet", "segm", pred, batch) == ("bodynet", s)


def test_surreal_segmentation_undefined_where_reference_is_nan():
    # Only the head occurs: the reference's 0/0 for the 13 other parts makes its means NaN.
    pred = jax.nn.one_hot(jnp.array([[[1, 0]]]), 15)
    _, s = _run("surreal", "segm", pred, {"segm": jnp.array([[[1, 0]]], jnp.int32)})
    assert s["mean_iou"] is None and s["pixel_accuracy"] is None
    assert s["iou_per_part"]["head"] == 1.0 and s["iou_per_part"]["torso"] is None
    assert len(s["undefined"]) == 13


# --- SURREAL depth ----------------------------------------------------------------------------
def _depth_case():
    """Three 2x2 images, pelvis at 5 m. Ground-truth classes (0 background, 10 = the pelvis's
    bin): A [[10, 11], [0, 12]], B all 10, C no foreground. Predictions: A [[10, 13], [5, 0]],
    B all 11, C anything."""
    gt = np.array([[[10, 11], [0, 12]], [[10, 10], [10, 10]], [[0, 0], [0, 0]]])
    # A depth inside each class's 45 mm interval: class c holds ((c-11)*45, (c-10)*45] mm.
    metres = np.where(gt > 0, 5.0 + (gt - 10) * 0.045 - 0.02, 0.0)
    pr = np.array([[[10, 13], [5, 0]], [[11, 11], [11, 11]], [[3, 4], [5, 6]]])
    batch = {"depth": jnp.asarray(metres, jnp.float32),
             "pelvis_depth": jnp.full((3,), 5.0, jnp.float32)}
    np.testing.assert_array_equal(depth.targets(batch), gt)
    return jax.nn.one_hot(pr, 20) * 5.0, batch


def test_surreal_depth_rmse_reproduces_eval_lua():
    pred, batch = _depth_case()
    used, s = _run("surreal", "depth", pred, batch)
    assert used == "surreal"
    # surreal training/eval.lua:54-69 depthRMSE: per image sqrt(mean over ground-truth
    # foreground (label ~= 1, i.e. class 0 here) of (label - argmax)^2), summed and divided by
    # the batch size (an empty image adds nothing but counts); training/test.lua:58 averages
    # the batches. A: errors 0, 2, 12 (predicted background on class 12) -> sqrt(148/3);
    # B: 1; C: 0 (no foreground). Times 45 mm per bin.
    bins = (np.sqrt(148 / 3) + 1.0 + 0.0) / 3
    assert s["rmse_bins"] == pytest.approx(bins, rel=1e-6)
    assert s["rmse_mm"] == pytest.approx(bins * 45.0, rel=1e-6)
    # hgmt pools the pixels of the split: sqrt((148 + 4) / 7) bins.
    _, h = _run("hgmt", "depth", pred, batch)
    assert h["rmse_mm"] == pytest.approx(np.sqrt(152 / 7) * 45.0, rel=1e-5)
    assert _run("bodynet", "depth", pred, batch) == ("bodynet", s)


# --- Selection, JSON and Markdown ----------------------------------------------------------------
def test_protocol_selection_and_labels():
    assert protocols.task_protocol("surreal", "pose2d") == "hgmt"  # SURREAL has no pose metric
    assert protocols.task_protocol("surreal", "segm") == "surreal"
    assert protocols.task_protocol("bodynet", "pose3d") == "bodynet"
    with pytest.raises(ValueError, match="hgmt, bodynet, surreal"):
        protocols.check("h36m")
    assert workdirs.result_file() == "eval_test.json"
    assert workdirs.result_file("bodynet") == "eval_test_bodynet.json"
    assert workdirs.result_file("surreal", "validation", "best_8") == (
        "eval_validation_best_8_surreal.json")
    summary = {"protocol": "surreal", "num_examples": 2, "split": "test", "flip": False,
               "pose2d": {"protocol": "hgmt", "pckh@0.5": 0.5, "pck@3.2px": 0.25,
                          "pckh@0.5_per_joint": {j: 0.5 for j in surreal.JOINT_NAMES}},
               "segm": {"protocol": "surreal", "mean_iou": None, "pixel_accuracy": 0.5,
                        "iou_per_part": {p: None for p in surreal.PART_NAMES}}}
    assert evaluator.headline(summary) == {"pose2d/pckh@0.5": 0.5, "pose2d/pck@3.2px": 0.25,
                                          "segm/mean_iou": None, "segm/pixel_accuracy": 0.5}
    md = evaluator.to_markdown(summary)
    assert "metric protocol `surreal`" in md
    assert "| pose2d/pckh@0.5 | 0.5 | hgmt |" in md
    assert "| segm/mean_iou | undefined | surreal |" in md
    # The per-item tables, one per kind of item, from the tasks' Headlines.
    assert "| joint | pckh@0.5_per_joint (hgmt) |" in md
    assert f"| {surreal.JOINT_NAMES[0]} | 0.500 |" in md
    assert "| part | iou_per_part (surreal) |" in md
    assert f"| {surreal.PART_NAMES[0]} | absent |" in md


def test_pose3d_and_pose2d_modules_keep_the_task_interface():
    for module in (pose2d, pose3d, segm, depth):
        assert callable(module.summarize) and callable(module.metric_stats)
