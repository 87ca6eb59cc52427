# ruff: noqa: E501  (HLO lines are quoted verbatim)
"""The benchmark scripts: the train-step and input-pipeline benchmarks run from a clone (the
latter building its own demo data) and their figures agree with each other; the profile groups
XLA ops by what they compute (not by their metadata)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import depth_baselines  # noqa: E402
import input_pipeline  # noqa: E402
import learning  # noqa: E402
import limb_depth  # noqa: E402
import profile_step  # noqa: E402
import train_step  # noqa: E402

# A compiled-HLO excerpt in XLA:CPU's format: a 3x3 convolution, its kernel gradient (window =
# the feature map), a 1x1 matmul, a real transpose and a backward-pass elementwise fusion whose
# metadata says "transpose(jvp(...))", as every backward op's does.
HLO = """\
%fused_computation.1 (param_0.1: f32[8,32,32,64], param_1.1: f32[3,3,64,64]) -> f32[8,32,32,64] {
  %param_0.1 = f32[8,32,32,64]{3,2,1,0} parameter(0)
  %param_1.1 = f32[3,3,64,64]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[8,32,32,64]{3,2,1,0} convolution(%param_0.1, %param_1.1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f, metadata={op_name="jit(f)/jvp(M)/Conv_0/conv_general_dilated"}
}

%fused_computation.2 (param_0.2: f32[64,32,32,8], param_1.2: f32[32,32,8,64]) -> f32[64,3,3,64] {
  %param_0.2 = f32[64,32,32,8]{3,2,1,0} parameter(0)
  %param_1.2 = f32[32,32,8,64]{3,2,1,0} parameter(1)
  ROOT %convolution.2 = f32[64,3,3,64]{3,2,1,0} convolution(%param_0.2, %param_1.2), window={size=32x32 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

%fused_computation.3 (param_0.3: f32[8,32,32,64]) -> f32[64,32,32,8] {
  %param_0.3 = f32[8,32,32,64]{3,2,1,0} parameter(0)
  ROOT %transpose.3 = f32[64,32,32,8]{3,2,1,0} transpose(%param_0.3), dimensions={3,1,2,0}
}

%fused_computation.4 (param_0.4: f32[8,32,32,64], param_1.4: f32[8,32,32,64]) -> f32[8,32,32,64] {
  %param_0.4 = f32[8,32,32,64]{3,2,1,0} parameter(0)
  %param_1.4 = f32[8,32,32,64]{3,2,1,0} parameter(1)
  ROOT %multiply.4 = f32[8,32,32,64]{3,2,1,0} multiply(%param_0.4, %param_1.4), metadata={op_name="jit(f)/transpose(jvp(M))/BatchNorm_0/mul"}
}

ENTRY %main.5 (a: f32[8,32,32,64], k: f32[3,3,64,64], w: f32[64,64]) -> f32[8,32,32,64] {
  %a = f32[8,32,32,64]{3,2,1,0} parameter(0)
  %k = f32[3,3,64,64]{3,2,1,0} parameter(1)
  %w = f32[64,64]{1,0} parameter(2)
  %conv_fusion = f32[8,32,32,64]{3,2,1,0} fusion(%a, %k), kind=kCustom, calls=%fused_computation.1
  %kgrad_fusion = f32[64,3,3,64]{3,2,1,0} fusion(%t_fusion, %b), kind=kCustom, calls=%fused_computation.2
  %t_fusion = f32[64,32,32,8]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(f)/transpose(jvp(M))/Conv_0/conv_general_dilated"}
  %dot.5 = f32[65536,64]{1,0} dot(%b, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %bn_fusion = f32[8,32,32,64]{3,2,1,0} fusion(%a, %conv_fusion), kind=kLoop, calls=%fused_computation.4, metadata={op_name="jit(f)/transpose(jvp(M))/BatchNorm_0/mul"}
}
"""


def test_profile_groups_ops_by_instruction_not_metadata():
    kinds = profile_step.op_kinds(HLO)
    assert kinds["conv_fusion"] == "conv 3x3 (forward, input gradient)"
    assert kinds["kgrad_fusion"] == "conv kernel-gradient (window = feature map)"
    assert kinds["t_fusion"] == "transpose"
    assert kinds["dot.5"] == "matmul (1x1 convs, dense)"
    # Its metadata names "transpose(jvp(M))" but it multiplies: elementwise, not a transpose.
    assert kinds["bn_fusion"] == "elementwise (BatchNorm, ReLU, adds, pooling)"


def test_train_step_benchmark_figures_agree():
    """A tiny configuration on 2 of the 4 test devices: img/s is batch / step time, the
    parameter count is the model's, FLOPs and MFU are positive and MFU below 1."""
    r = train_step.measure(stacks=1, features=16, res=32, batch=4, tasks="pose2d+segm",
                           dtype="float32", steps=2, warmup=1, devices=2, depth=2)
    assert r["devices"] == 2 and r["tasks"] == "pose2d+segm"
    assert np.isclose(r["img_per_s"], 4 / r["step_s"], rtol=0.01)
    assert r["params"] > 10_000
    assert r["gflop_per_img"] > 0
    assert np.isclose(r["gflop_per_s"], r["gflop_per_img"] * r["img_per_s"], rtol=0.02)
    assert 0 < r["mfu"] < 1
    assert np.isfinite(r["loss"])


def test_input_pipeline_benchmark_builds_its_data_and_reports_the_ratio(capsys):
    r = input_pipeline.main(["--res", "64", "--batch", "4", "--batches", "3",
                             "--train_img_per_s", "10"])
    assert r["examples"] == 12 and r["records"] == 60  # 2 demo train clips of 30 frames
    assert r["examples_per_cpu_s"] > 0
    assert np.isclose(r["ratio_per_core"],
                      r["examples_per_cpu_s"] / (10 / r["cpus"]), rtol=0.01)
    assert '"benchmark": "input_pipeline"' in capsys.readouterr().out


def test_learning_benchmark_writes_curves(demo_dataset, tmp_path):
    """A tiny learning run on the test demo data: one curve point per evaluation, every
    task's metrics in range, the targets judged, JSON and PNG written."""
    out = str(tmp_path / "learning")
    r = learning.main(["--out", out, "--data_dir", demo_dataset[1], "--res", "32",
                       "--stacks", "1", "--features", "16", "--depth", "2", "--batch", "4",
                       "--steps", "2", "--eval_every", "1", "--frames", "all",
                       "--train_frames", "middle", "--flip"])
    assert [p["step"] for p in r["curve"]] == [1, 2]
    assert all(p["flip"] is True for p in r["curve"]) and r["settings"]["flip"] is True
    assert set(r["curve"][-1]["train_split"]) == set(r["final"])
    assert r["test_frames"] == 12  # all 6 frames of both test clips
    final = r["final"]
    assert 0 <= final["pose2d/pckh@0.5"] <= 1 and final["pose3d/mjd_mm"] > 0
    assert 0 <= final["depth/bin_accuracy"] <= 1
    assert 0 <= final["segm/min_part_iou"] <= final["segm/mean_iou"] <= 1
    assert set(r["targets_met"]) == set(learning.TARGETS)
    assert os.path.getsize(out + ".png") > 0 and os.path.exists(out + ".json")


def test_learning_benchmark_model_flags_reach_the_config():
    """The model's architecture flags set config.model (defaults: configs/study.py's)."""
    from configs import study

    default = learning.make_config(learning.parse_args(["--out", "x"]))
    assert default.model.shared_trunk == study.get_config().model.shared_trunk is False
    c = learning.make_config(learning.parse_args(
        ["--out", "x", "--shared_trunk", "--interaction", "none", "--stacks", "1"]))
    assert (c.model.shared_trunk, c.model.interaction, c.model.num_stacks) == (True, "none", 1)


def test_depth_baselines_on_crafted_pixels():
    """Six pixels, by hand: the most common bin (3) holds 3 of 6; each part's own most common
    bin 2 + 3 (part 1: bins 1,1,2; part 2: 3,3,3); per part and frame every pixel but the
    part-1 frame-0 outlier (bins 1,1,4 in frame 0, 2 in frame 1)."""
    bins = np.array([1, 1, 2, 3, 3, 3, 4])
    parts = np.array([1, 1, 1, 2, 2, 2, 1])
    frames = np.array([0, 0, 1, 0, 1, 1, 0])
    r = depth_baselines.baselines(bins, parts, frames)
    assert r["pixels"] == 7
    assert np.isclose(r["most_common_bin"], 3 / 7)
    assert np.isclose(r["part_mode"], 5 / 7)  # part 1: {1,1,2,4} -> 2; part 2: 3
    assert np.isclose(r["part_frame_mode"], 6 / 7)  # (0,1): {1,1,4} -> 2; others all
    assert depth_baselines.baselines(bins[:0], parts[:0], frames[:0])["most_common_bin"] == 0


def test_depth_baselines_on_demo_clips(demo_dataset):
    """Depth bins are relative to the pelvis, in front negative: the visible torso surface is
    nearer the camera than the pelvis joint inside the body. A head that knows each part's
    depth per frame scores at least as well as one that knows the parts only."""
    from hgmt.sources import surreal

    test_dir = os.path.join(demo_dataset[0], "cmu", "test")
    for stem in surreal.find_clips(demo_dataset[0], "test"):
        bins, parts, frames = depth_baselines.clip_pixels(stem, every=2)
        assert set(np.unique(frames)) == {0, 2, 4}
        torso = bins[parts == surreal.PART_NAMES.index("torso") + 1]
        assert -4 <= np.median(torso) <= -1
    r = depth_baselines.main(["--clips", test_dir, "--every", "1"])[test_dir]
    assert r["clips"] == 2 and r["pixels"] > 0
    assert r["most_common_bin"] <= r["part_mode"] <= r["part_frame_mode"] <= 1


def test_limb_depth_spread_of_a_real_clip(real_info_path, tmp_path):
    """A camera depth is camLoc_x - X_x (docs/surreal_format.md), so a joint's depth
    relative to the pelvis is the pelvis's world x minus the joint's."""
    import pytest

    from hgmt.sources import surreal

    rel = limb_depth.relative_depth(real_info_path)
    x = surreal.load_info(real_info_path).joints3d[:, surreal.SMPL_TO_JOINT, 0]
    np.testing.assert_allclose(rel, x[:, [surreal.PELVIS]] - x, atol=1e-6)
    out = limb_depth.spread([real_info_path])
    assert (out["clips"], out["frames"]) == (1, 100)
    assert out["within_clip_sd_mm"] == out["overall_sd_mm"]  # one clip
    assert out["overall_sd_mm"]["pelvis"] == 0.0
    assert out["overall_sd_mm"]["r_ankle"] == pytest.approx(
        round(float(np.std(x[:, surreal.PELVIS] - x[:, 0]) * 1000.0), 1), abs=0.11)
    with pytest.raises(SystemExit, match="no \\*_info.mat under"):
        limb_depth.info_files(str(tmp_path))


def test_depth_free_mjd_back_projects_true_pixels_at_the_guessed_depth(real_info_path):
    """A joint 0.2 m behind the pelvis guessed at the pelvis's depth lands on its own camera
    ray at 3.0 m instead of 3.2 m: error |(x, y, z) * (3.0/3.2 - 1)| (crafted by hand)."""
    from hgmt.sources import surreal

    cam = np.zeros((1, 16, 3))
    cam[..., 2] = 3.0  # every joint at the pelvis (error 0) but one
    cam[0, 0] = [0.3, 0.1, 3.2]
    err = limb_depth.mjd_mm(cam, np.zeros((1, 16)))
    expected = np.linalg.norm(np.array([0.3, 0.1, 3.2]) * (3.0 / 3.2 - 1)) * 1000.0
    np.testing.assert_allclose(err[0], expected, rtol=1e-6)
    assert np.all(err[1:] < 1e-6)
    np.testing.assert_allclose(limb_depth.mjd_mm(cam, cam[..., 2] - 3.0), 0.0, atol=1e-6)
    out = limb_depth.depth_free_mjd([real_info_path])
    assert out["joint_bins"]["mjd_mm"] < out["mean_offset"]["mjd_mm"] <= (
        out["pelvis_plane"]["mjd_mm"])
    assert out["mean_offset"]["per_joint_mm"][surreal.JOINT_NAMES[surreal.PELVIS]] == 0.0
