# ruff: noqa: E501  (HLO lines are quoted verbatim)
"""The benchmark scripts: the train-step and input-pipeline benchmarks run from a clone (the
latter building its own demo data) and their figures agree with each other; the profile groups
XLA ops by what they compute (not by their metadata)."""

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "benchmarks"))

import input_pipeline  # noqa: E402
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


def test_input_pipeline_benchmark_compares_host_and_device_augmentation(demo_dataset, capsys):
    r = input_pipeline.main(["--res", "64", "--batch", "4", "--batches", "2",
                             "--data_dir", demo_dataset[1], "--augment_on", "host,device"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("augment_on") for x in lines] == ["host", "device", None]
    host, device = lines[0], lines[1]
    assert r["runs"] == 2 and r["device_over_host"] == [
        round(device["examples_per_cpu_s"] / host["examples_per_cpu_s"], 2)]
    assert device["step_cpu_ms_per_batch"] > 0 and "step_ms_per_batch" not in host
    # The crop's CPU time counted in: fewer examples per CPU-second than the loader alone.
    assert device["examples_per_cpu_s_with_step"] < device["examples_per_cpu_s"]
