# ruff: noqa: E501  (HLO lines are quoted verbatim)
"""The benchmark scripts: the train-step, train-loop, input-pipeline, input-stages, evaluation,
compile-and-load, demo-generation, stream-convolution, PyTorch-profile and dataset-build
benchmarks run at a tiny size (the input ones on the data of their config) and their figures
agree with each other; the profile groups XLA ops by role and kind from the compiled HLO of a
CPU and of a GPU, with FLOPs and bytes from the shapes; the PyTorch reference and the
comparison take the same config flags; the trainer benchmark reads the trainer's own
TensorBoard figures; the step's levers are flags XLA knows; the step-dispatch benchmark times
both ways over the config's whole train state."""

import datetime
import gc
import gzip
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import torch_marked

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks")
sys.path.insert(0, BENCHMARKS)

import cli  # noqa: E402
import compare  # noqa: E402
import device_warp  # noqa: E402
import eval_speed  # noqa: E402
import host_check  # noqa: E402
import input_pipeline  # noqa: E402
import input_stages  # noqa: E402
import pool_backward  # noqa: E402
import profile_step  # noqa: E402
import step_dispatch  # noqa: E402
import step_levers  # noqa: E402
import synthetic_throughput  # noqa: E402
import train_loop  # noqa: E402
import train_step  # noqa: E402
import trainer_speed  # noqa: E402
import xla_ops  # noqa: E402

TINY = ["--config.model.num_stacks=1", "--config.model.features=8", "--config.image_size=32",
        "--config.model.depth=2"]

# A compiled-HLO excerpt in XLA:CPU's format: a 3x3 convolution, its kernel gradient (window =
# the feature map, two activations in, a kernel-shaped result), a real transpose, 1x1
# convolutions as dots (forward, input gradient by its metadata, weight gradient by its
# shapes) and a backward-pass elementwise fusion whose metadata says "transpose(jvp(...))".
HLO_CPU = """\
HloModule jit_step, is_scheduled=true

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

ENTRY %main.5 (a: f32[8,32,32,64], k: f32[3,3,64,64], w: f32[64,64], b: f32[65536,64], g: f32[65536,64], dy: f32[32,32,8,64]) -> f32[8,32,32,64] {
  %a = f32[8,32,32,64]{3,2,1,0} parameter(0)
  %k = f32[3,3,64,64]{3,2,1,0} parameter(1)
  %w = f32[64,64]{1,0} parameter(2)
  %b = f32[65536,64]{1,0} parameter(3)
  %g = f32[65536,64]{1,0} parameter(4)
  %dy = f32[32,32,8,64]{3,2,1,0} parameter(5)
  %conv_fusion = f32[8,32,32,64]{3,2,1,0} fusion(%a, %k), kind=kCustom, calls=%fused_computation.1
  %t_fusion = f32[64,32,32,8]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_computation.3, metadata={op_name="jit(f)/transpose(jvp(M))/Conv_0/conv_general_dilated"}
  %kgrad_fusion = f32[64,3,3,64]{3,2,1,0} fusion(%t_fusion, %dy), kind=kCustom, calls=%fused_computation.2
  %dot.5 = f32[65536,64]{1,0} dot(%b, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/jvp(M)/Conv1x1_0/dot_general"}
  %dot.6 = f32[65536,64]{1,0} dot(%g, %w), lhs_contracting_dims={1}, rhs_contracting_dims={1}, metadata={op_name="jit(f)/transpose(jvp(M))/Conv1x1_0/dot_general"}
  %dot.7 = f32[64,64]{1,0} dot(%b, %g), lhs_contracting_dims={0}, rhs_contracting_dims={0}, metadata={op_name="jit(f)/transpose(jvp(M))/Conv1x1_0/dot_general"}
  ROOT %bn_fusion = f32[8,32,32,64]{3,2,1,0} fusion(%a, %conv_fusion), kind=kLoop, calls=%fused_computation.4, metadata={op_name="jit(f)/transpose(jvp(M))/BatchNorm_0/mul"}
}
"""

# The same roles in XLA:GPU's format: cuDNN calls named by role (a tuple result with their
# scratch buffer; input features 16, output 64, so that a wrong operand in the FLOP count
# shows), a cuBLAS matmul whose contracting dimensions are in its backend config, a
# BatchNorm reduction fusion and a layout copy.
HLO_GPU = """\
HloModule pmap_step, entry_computation_layout={()}

%fused_reduce (param_0: bf16[8,32,32,64]) -> f32[64] {
  %param_0 = bf16[8,32,32,64]{3,2,1,0} parameter(0)
  %convert = f32[8,32,32,64]{3,2,1,0} convert(%param_0)
  %constant = f32[] constant(0)
  ROOT %reduce = f32[64]{0} reduce(%convert, %constant), dimensions={0,1,2}, to_apply=%add
}

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %sum = f32[] add(%x, %y)
}

%gemm_fusion_dot.6_computation (parameter_0: bf16[8192,16], parameter_1: bf16[8192,64]) -> f32[4,16,64] {
  %parameter_0 = bf16[8192,16]{1,0} parameter(0)
  %bitcast.1 = bf16[4,2048,16]{2,1,0} bitcast(%parameter_0)
  %parameter_1 = bf16[8192,64]{1,0} parameter(1)
  %bitcast.2 = bf16[4,2048,64]{2,1,0} bitcast(%parameter_1)
  ROOT %dot.1 = f32[4,16,64]{2,1,0} dot(%bitcast.1, %bitcast.2), lhs_batch_dims={0}, lhs_contracting_dims={1}, rhs_batch_dims={0}, rhs_contracting_dims={1}
}

ENTRY %main (x: bf16[8,32,32,16], w: bf16[64,3,3,16], dy: bf16[8,32,32,64], m: bf16[8192,16], v: bf16[16,64], dm: bf16[8192,64]) -> bf16[8,32,32,16] {
  %x = bf16[8,32,32,16]{3,2,1,0} parameter(0)
  %w = bf16[64,3,3,16]{3,2,1,0} parameter(1)
  %dy = bf16[8,32,32,64]{3,2,1,0} parameter(2)
  %m = bf16[8192,16]{1,0} parameter(3)
  %v = bf16[16,64]{1,0} parameter(4)
  %dm = bf16[8192,64]{1,0} parameter(5)
  %cudnn-conv.1 = (bf16[8,32,32,64]{3,2,1,0}, u8[0]{0}) custom-call(bf16[8,32,32,16]{3,2,1,0} %x, bf16[64,3,3,16]{3,2,1,0} %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", metadata={op_name="pmap(f)/jvp(M)/Conv_0/conv_general_dilated"}
  %cudnn-conv-bw-input.2 = (bf16[8,32,32,16]{3,2,1,0}, u8[0]{0}) custom-call(bf16[8,32,32,64]{3,2,1,0} %dy, bf16[64,3,3,16]{3,2,1,0} %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardInput"
  %cudnn-conv-bw-filter.3 = (bf16[64,3,3,16]{3,2,1,0}, u8[0]{0}) custom-call(bf16[8,32,32,16]{3,2,1,0} %x, bf16[8,32,32,64]{3,2,1,0} %dy), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convBackwardFilter"
  %gemm.4 = (bf16[8192,64]{1,0}, s8[0]{0}) custom-call(bf16[8192,16]{1,0} %m, bf16[16,64]{1,0} %v), custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],"rhs_contracting_dimensions":["0"]}}}
  %input_reduce_fusion = f32[64]{0} fusion(%dy), kind=kInput, calls=%fused_reduce
  %gemm_fusion_dot.6 = f32[4,16,64]{2,1,0} fusion(bf16[8192,16]{1,0} %m, bf16[8192,64]{1,0} %dm), kind=kCustom, calls=%gemm_fusion_dot.6_computation, backend_config={"fusion_backend_config":{"kind":"__triton_gemm","triton_gemm_config":{"block_m":"64","block_n":"64","block_k":"64","split_k":"4","num_stages":"3","num_warps":"4","num_ctas":"1"}}}, metadata={op_name="pmap(f)/transpose(jvp(M))/dot_general"}
  ROOT %copy.5 = bf16[8,32,32,16]{2,1,3,0} copy(%x)
}
"""



def test_a_bad_frames_or_placements_flag_is_one_line_before_any_data_is_built(tmp_path):
    """eval_speed.py built the demo data (146 MB) before a bad --frames failed with a
    traceback; input_pipeline.py's bad --placements or --config.augment.* was a traceback
    too."""
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as e:
        eval_speed.main(["--frames=bad", f"--config.demo.surreal_root={data}/surreal",
                         f"--config.data_dir={data}/tfds"])
    assert str(e.value.code).startswith("error: --frames=bad: use middle")
    assert not data.exists()
    with pytest.raises(SystemExit) as e:
        input_pipeline.main(["--placements=bogus"])
    assert str(e.value.code).startswith("error: --placements: config.augment_on='bogus': "
                                        "choose host")
    with pytest.raises(SystemExit) as e:  # an augmentation out of its range
        input_pipeline.main(["--config.augment.flip_p=2", f"--config.demo.surreal_root={data}/s",
                             f"--config.data_dir={data}/tfds"])
    assert e.value.code == ("error: config.augment.flip_p=2.0: a probability above 1; give "
                            "one in [0, 1]")
    assert not data.exists()

# Each benchmark that takes a config, with flags that make its work small (were it to run).
CONFIG_TAKERS = {
    "train_step": ["--steps=1", "--warmup=0"], "train_loop": ["--steps=1", "--warmup=0"],
    "profile_step": ["--steps=1", "--warmup=0"],
    "compile_and_load": ["--steps=1", "--cache=cache"],
    "device_warp": ["--steps=1", "--warmup=0", "--rounds=1"],
    "pool_backward": ["--steps=1", "--warmup=0", "--rounds=1"],
    "torch_reference": ["--steps=1", "--warmup=0"], "profile_torch": ["--steps=1", "--warmup=0"],
    "compare": ["--steps=1"], "trainer_speed": ["--nobare"],
    "step_dispatch": ["--calls=1", "--repeats=1", "--warmup=1"],
    "eval_speed": ["--max_examples=1", "--rounds=1"], "input_pipeline": ["--batches=1"],
    "input_stages": ["--examples=1"]}


@pytest.mark.parametrize("script", torch_marked(sorted(CONFIG_TAKERS)))
def test_a_config_field_training_refuses_stops_a_benchmark_in_one_line_before_work(
        script, tmp_path, monkeypatch):
    """Every benchmark that takes a config checks it as training does, less the devices':
    an image size the hourglass cannot take exits in one line naming the field and the
    sizes that fit, before any work (the demo data of a config that has a demo section is
    not made)."""
    import importlib

    data = tmp_path / "data"
    monkeypatch.chdir(tmp_path)  # a benchmark that wrote anything would write it here
    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main([
            *TINY[:2], "--config.model.depth=2", "--config.image_size=100",
            "--config.batch_size=4", f"--config.data_dir={data}/tfds",
            *([f"--config.demo.surreal_root={data}/surreal"]
              if script in ("eval_speed", "input_pipeline", "input_stages") else []),
            *CONFIG_TAKERS[script]])
    assert e.value.code == ("error: config.image_size=100: not a multiple of 16, as an "
                            "hourglass of config.model.depth=2 needs; give one, e.g. 96 or 112")
    assert not data.exists() and os.listdir(tmp_path) == []


def test_cpu_ops_are_grouped_by_role_with_flops_and_bytes_from_their_shapes():
    ops = xla_ops.classify(xla_ops.parse(HLO_CPU), {(3, 3, 64, 64), (64, 64)})
    kinds = {name: op["kind"] for name, op in ops.items()}
    assert kinds == {"conv_fusion": "conv forward", "t_fusion": "transpose / copy",
                     "kgrad_fusion": "conv weight-gradient",
                     "dot.5": "matmul (1x1 conv) forward",
                     "dot.6": "matmul (1x1 conv) input-gradient",
                     "dot.7": "matmul (1x1 conv) weight-gradient",
                     # its metadata names "transpose(jvp(M))" but it multiplies
                     "bn_fusion": "elementwise fusion"}
    conv = 2 * 8 * 32 * 32 * 64 * 3 * 3 * 64  # 2 x N H W C_out x kh kw C_in
    assert ops["conv_fusion"]["flops"] == ops["kgrad_fusion"]["flops"] == conv
    assert ops["dot.5"]["flops"] == ops["dot.6"]["flops"] == ops["dot.7"]["flops"] \
        == 2 * 65536 * 64 * 64
    assert ops["bn_fusion"]["flops"] == 0
    assert ops["bn_fusion"]["bytes"] == 3 * 8 * 32 * 32 * 64 * 4  # two read, one written
    assert ops["t_fusion"]["bytes"] == 2 * 8 * 32 * 32 * 64 * 4


def test_gpu_cudnn_and_cublas_calls_are_grouped_by_role_with_their_flops():
    module = xla_ops.parse(HLO_GPU)
    assert module.name == "pmap_step"
    ops = xla_ops.classify(module, {(3, 16, 64), (16, 64)})  # w (64,3,3,16), v (16,64)
    assert {n: op["kind"] for n, op in ops.items()} == {
        "cudnn-conv.1": "conv forward", "cudnn-conv-bw-input.2": "conv input-gradient",
        "cudnn-conv-bw-filter.3": "conv weight-gradient",
        "gemm.4": "matmul (1x1 conv) forward",
        "input_reduce_fusion": "reduction (BatchNorm statistics, bias gradients, pooling)",
        # a split-K weight gradient (Triton): kernel-shaped behind its batch of 4 splits
        "gemm_fusion_dot.6": "matmul (1x1 conv) weight-gradient",
        "copy.5": "transpose / copy"}
    conv = 2 * 8 * 32 * 32 * 64 * 3 * 3 * 16
    for name in ("cudnn-conv.1", "cudnn-conv-bw-input.2", "cudnn-conv-bw-filter.3"):
        assert ops[name]["flops"] == conv, name
    assert ops["gemm.4"]["flops"] == 2 * 8192 * 64 * 16
    assert ops["gemm_fusion_dot.6"]["flops"] == 2 * 8192 * 64 * 16  # the splits' sum
    assert ops["input_reduce_fusion"]["bytes"] == 8 * 32 * 32 * 64 * 2 + 64 * 4


def test_flops_from_hlo_shapes_count_convolutions_and_matmuls():
    """The FLOP count where XLA's analyses give none (a GPU under jax 0.11): a GPU program's
    cuDNN and cuBLAS calls, and a CPU-compiled 3x3 convolution and matmul, counted by hand
    (2 x output elements x multiply-adds per output) and as XLA's lowered analysis counts."""
    conv = 2 * 8 * 32 * 32 * 64 * 3 * 3 * 16
    assert train_step.hlo_shape_flops(HLO_GPU) == {"flops": 3 * conv + 2 * 2 * 8192 * 64 * 16}

    import jax

    def f(x, k, a, b):
        y = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y, a @ b

    args = (np.ones((2, 8, 8, 3), np.float32), np.ones((3, 3, 3, 4), np.float32),
            np.ones((5, 6), np.float32), np.ones((6, 7), np.float32))
    lowered = jax.jit(f).lower(*args)
    expected = 2 * (2 * 6 * 6 * 4) * (3 * 3 * 3) + 2 * (5 * 7) * 6
    assert train_step.hlo_shape_flops(lowered.compile().as_text()) == {"flops": expected}
    assert lowered.cost_analysis()["flops"] == expected
    assert train_step.hlo_shape_flops("HloModule m\n\nENTRY %e () -> f32[] {\n"
                                      "  ROOT %c = f32[] constant(0)\n}\n") == {}


def test_flops_in_loops_and_conditionals_count_every_run():
    """A while's body counts its trip count times where XLA states it (four 256x512 @ 512x512
    matmuls: 4 x 2 x 256 x 512 x 512); a while whose trip count is not known and a
    conditional's branches count once and say so."""
    x, w = np.ones((256, 512), np.float32), np.ones((512, 512), np.float32)

    def hlo(f, *args):
        return jax.jit(f).lower(*args).compile().as_text()

    looped = hlo(lambda x, w: jax.lax.fori_loop(0, 4, lambda i, y: y @ w, x), x, w)
    matmul = 2 * 256 * 512 * 512
    assert train_step.hlo_shape_flops(looped) == {"flops": 4 * matmul}
    ops = xla_ops.classify(xla_ops.parse(looped), set())
    dot = [v for v in ops.values() if v["flops"]]
    assert [(v["flops"], v["runs"]) for v in dot] == [(4 * matmul, 4)]

    unknown = hlo(lambda x, w, n: jax.lax.fori_loop(0, n, lambda i, y: y @ w, x), x, w, 3)
    assert train_step.hlo_shape_flops(unknown) == {"flops": matmul, "flops_runs_unknown": matmul}
    branches = hlo(lambda x, w, p: jax.lax.cond(p > 0, lambda: x @ w, lambda: x @ w @ w),
                   x, w, 1)
    assert train_step.hlo_shape_flops(branches) == {"flops": 3 * matmul,
                                                    "flops_runs_unknown": 3 * matmul}
    flops, source = train_step.first_flop_count(
        (("hlo-shapes", lambda: train_step.hlo_shape_flops(unknown)),))
    assert flops == matmul and source.startswith("hlo-shapes (0.134 GFLOP of it in loops")


def test_profile_counts_device_events_of_the_module_and_rates_each_kind():
    ops = {"conv": {"kind": "conv forward", "flops": 4e9, "bytes": 1e6},
           "add": {"kind": "elementwise fusion", "flops": 0.0, "bytes": 3e9}}
    events = [
        {"ph": "M", "pid": 1, "name": "process_name", "args": {"name": "/host:CPU"}},
        {"ph": "M", "pid": 2, "name": "process_name", "args": {"name": "/device:GPU:0"}},
        # a host-side launch of the same op: not counted where the device has events
        {"ph": "X", "pid": 1, "dur": 900.0, "args": {"hlo_op": "conv", "hlo_module": "m"}},
        {"ph": "X", "pid": 2, "dur": 2000.0, "args": {"hlo_op": "conv", "hlo_module": "m"}},
        {"ph": "X", "pid": 2, "dur": 2000.0, "args": {"hlo_op": "conv", "hlo_module": "m"}},
        {"ph": "X", "pid": 2, "dur": 1000.0, "args": {"hlo_op": "add", "hlo_module": "m"}},
        {"ph": "X", "pid": 2, "dur": 5000.0, "args": {"hlo_op": "add", "hlo_module": "other"}},
        {"ph": "X", "pid": 2, "dur": 7.0, "name": "memcpy"},
    ]
    per_op = profile_step.op_times(events, "m", ops)
    assert per_op == {"conv": 4000.0, "add": 1000.0}
    assert profile_step.device_us(events) == 10007.0  # every device event, named or not
    assert profile_step.device_us([e for e in events if e["pid"] != 2]) is None  # a CPU's
    kinds = profile_step.summarize(per_op, ops, steps=2, matmul_peak=4e12, bytes_peak=6e12)
    assert list(kinds) == ["conv forward", "elementwise fusion"]  # slowest first
    conv, add = kinds["conv forward"], kinds["elementwise fusion"]
    assert conv["ms"] == 2.0 and add["ms"] == 0.5  # per step
    assert conv["share"] == 0.8 and add["share"] == 0.2
    assert conv["tflop_per_s"] == 2.0 and conv["of_matmul_peak"] == 0.5  # 4 GFLOP in 2 ms
    assert add["gbytes_per_s"] == 6000.0 and add["of_stream_peak"] == 1.0  # 3 GB in 0.5 ms


@pytest.mark.slow
def test_profile_of_a_tiny_step_on_this_cpu(tmp_path):
    r = profile_step.benchmark(TINY + ["--config.batch_size=2", "--steps=2", "--warmup=1",
                                       f"--trace_dir={tmp_path}"])
    hlo = gzip.open(tmp_path / "step_hlo.txt.gz", "rt").read()  # the program beside the trace
    slowest = [key.split(" [")[0] for key in r["slowest_ops"]]
    assert slowest and all(f"%{name} = " in hlo for name in slowest)
    kinds = r["kinds"]
    for kind in ("conv forward", "conv input-gradient", "conv weight-gradient",
                 "matmul (1x1 conv) forward", "matmul (1x1 conv) weight-gradient",
                 "elementwise fusion"):
        assert kinds[kind]["ms"] > 0, kind
    assert sum(k["share"] for k in kinds.values()) == pytest.approx(1, abs=0.01)
    assert r["ops_timed"] > 0.5 * r["ops_in_program"]
    # The convolutions' and matmuls' multiply-adds against XLA's count of the whole step
    # (which also counts elementwise work and skips padding taps).
    assert 0.6 < r["gflop_per_step_counted"] / r["gflop_per_step_xla"] < 1.2


@pytest.mark.slow
def test_the_profile_of_the_trainers_step_counts_every_devices_work(demo_dataset, tmp_path):
    """--feed=trainer runs the step on the 4 test devices and the trace's op time is theirs
    together (each op's events: steps x devices), so the FLOPs per step are the 4 devices':
    4 x the one-device program's, about the FLOPs of the same global batch on one device."""
    config = [f"--config={cli.config_path('default')}:tasks=pose2d,runlocal",
              "--config.dataset=surreal/all", f"--config.data_dir={demo_dataset[1]}",
              *TINY, "--config.batch_size=4", "--config.augment_on=host"]
    r = profile_step.benchmark([*config, "--feed=trainer", "--steps=1", "--warmup=1",
                                f"--trace_dir={tmp_path}"])
    assert r["devices"] == 4 == jax.local_device_count()
    one_device = xla_ops.classify(xla_ops.parse(
        gzip.open(tmp_path / "step_hlo.txt.gz", "rt").read()), set())
    counted = sum(v["flops"] for v in one_device.values())
    assert r["gflop_per_step_counted"] == round(4 * counted / 1e9, 3)
    assert sum(k.get("gflop", 0) for k in r["kinds"].values()) == pytest.approx(
        r["gflop_per_step_counted"], abs=0.01)  # every op with FLOPs was timed
    parsed = cli.parse(cli.define_timing, config, "doc").config
    whole_batch = train_step.compiled_step(parsed)[5]  # the batch of 4 on one device
    assert r["gflop_per_step_xla"] == pytest.approx(whole_batch / 1e9, rel=0.02)


def test_train_step_benchmark_figures_agree():
    """A tiny configuration on 2 of the 4 test devices: img/s is batch / step time, the
    parameter count is the model's, FLOPs and MFU are positive and MFU below 1."""
    from hgmt.models import create_model
    from hgmt.tasks import heads, parse_tasks

    config = cli.config_path("default") + ":tasks=pose2d+segm"
    r = train_step.benchmark([f"--config={config}", *TINY, "--config.batch_size=4", "--steps=2",
                         "--warmup=1", "--devices=2"])
    assert r["devices"] == 2 and r["tasks"] == "pose2d+segm" and r["res"] == 32
    assert np.isclose(r["img_per_s"], 4 / r["step_s"], rtol=0.01)
    parsed = cli.parse(cli.define_timing, [f"--config={config}", *TINY], "doc").config
    model = create_model(parsed.model, heads(parse_tasks(parsed.tasks)))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert r["params"] == sum(x.size for x in jax.tree.leaves(shapes["params"])) > 10_000
    assert r["gflop_per_img"] > 0
    assert np.isclose(r["gflop_per_s"], r["gflop_per_img"] * r["img_per_s"], rtol=0.02)
    assert 0 < r["mfu"] < 1
    assert r["peak_spec_gflop_per_s"] is None and r["mfu_spec"] is None  # no datasheet: a CPU
    assert np.isfinite(r["loss"])
    assert r["compile_cache"] in ("hit", "miss")  # the tests' cache is on (conftest)


def test_mfu_against_the_datasheets_peak_beside_the_measured_ones():
    """`mfu` keeps the peak measured in the process; `mfu_spec` is over the device's dense
    bfloat16 peak by its kind (989.4 TFLOP/s on an H200 or H100 SXM), null where unknown. The
    figures: the H200's bare step of 2026-12-04 (6,362 GFLOP a step in 39.1 ms, 858.7 TFLOP/s
    measured)."""
    assert train_step.spec_peak("NVIDIA H200", "bfloat16") == 989_400.0
    assert train_step.spec_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989_400.0
    assert train_step.spec_peak("NVIDIA H200", "float32") is None
    assert train_step.spec_peak("cpu", "bfloat16") is None
    line = train_step.mfu_fields(6362e9, 0.0391, 858_739.3, "NVIDIA H200", "bfloat16")
    achieved = 6362e9 / 0.0391 / 1e9
    assert line == {"gflop_per_s": round(achieved, 1), "matmul_peak_gflop_per_s": 858_739.3,
                    "mfu": round(achieved / 858_739.3, 3), "peak_spec_gflop_per_s": 989_400.0,
                    "mfu_spec": round(achieved / 989_400.0, 3)}
    assert (line["mfu"], line["mfu_spec"]) == (0.189, 0.164)
    two = train_step.mfu_fields(2 * 6362e9, 0.0391, 2 * 858_739.3, "NVIDIA H200", "bfloat16", 2)
    assert (two["peak_spec_gflop_per_s"], two["mfu_spec"]) == (2 * 989_400.0, 0.164)
    cpu = train_step.mfu_fields(1e9, 0.5, 4.0, "cpu", "float32")
    assert (cpu["mfu"], cpu["peak_spec_gflop_per_s"], cpu["mfu_spec"]) == (0.5, None, None)


def test_a_flop_count_that_fails_falls_through_to_the_next(capsys):
    def fails():
        raise ValueError("no parse of this HLO")

    sources = (("lowered", fails), ("hlo-shapes", dict), ("compiled", lambda: [{"flops": 7}]))
    assert train_step.first_flop_count(sources) == (7.0, "compiled")
    assert "the lowered FLOP count failed (ValueError: no parse of this HLO)" in (
        capsys.readouterr().err)
    flops, source = train_step.first_flop_count((("lowered", fails),))
    assert np.isnan(flops) and source == "none"


@pytest.mark.slow
def test_the_steps_flops_come_from_the_compiled_program_when_both_earlier_counts_fail(
        monkeypatch):
    """The lowered analysis raising and the HLO parse raising (it has never run on a GPU's
    all-four program): the step is still measured, its FLOPs XLA's count of the compiled
    program, as XLA counts that program."""
    import jax.stages

    def fails(*_):
        raise RuntimeError("crafted")

    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", fails)
    monkeypatch.setattr(xla_ops, "parse", fails)
    config = cli.parse(cli.define_timing, [*TINY, "--config.batch_size=2"], "doc").config
    compiled, *_, flops, source, _ = train_step.compiled_step(config)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list | tuple) else cost
    assert source == "compiled" and flops == cost["flops"] > 0


@pytest.mark.slow
def test_train_loop_benchmark_figures_agree():
    """A tiny configuration on the 4 test devices, 2 rounds (about a minute on 2 cores, most
    of it compiling the step and the trainer): the rates are the best of each round's and the
    overhead is 1 - loop / step of them."""
    r = train_loop.benchmark([*TINY, "--config.batch_size=4", "--steps=2", "--warmup=1",
                              "--repeats=2"])
    assert (r["devices"], r["steps"], r["res"], r["batch"], r["tasks"]) == (4, 2, 32, 4,
                                                                            "pose2d")
    steps, loops = r["all_step_img_per_s"], r["all_loop_img_per_s"]
    assert len(steps) == len(loops) == 2 and min(steps + loops) > 0
    assert r["compiled_step_img_per_s"] == round(max(steps), 2)
    assert r["train_loop_img_per_s"] == round(max(loops), 2)
    assert r["loop_overhead"] == round(1 - max(loops) / max(steps), 4)


@pytest.mark.slow
def test_compile_noting_cache_tells_a_load_from_a_compilation():
    """The tests' persistent cache (conftest) keeps every program: a program new to it is a
    miss, the same program compiled again once JAX's in-memory caches are cleared a hit."""
    import jax
    import jax.numpy as jnp

    c = float(np.random.default_rng().uniform(1, 2))  # a constant of the program: a new key
    f = jax.jit(lambda x: x * c + 1.0)
    x = jnp.arange(3.0)
    _, cache = train_step.compile_noting_cache(f.lower(x))
    assert cache == "miss"
    jax.clear_caches()
    compiled, cache = train_step.compile_noting_cache(f.lower(x))
    assert cache == "hit"
    np.testing.assert_allclose(compiled(x), np.arange(3.0) * c + 1.0, rtol=1e-6)
    # a process without a cache folder (JAX still makes cache keys and asks: not a miss)
    code = ("import jax, jax.numpy as jnp, train_step; "
            "print(train_step.compile_noting_cache(jax.jit(jnp.sin).lower(1.0))[1])")
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    out = subprocess.run([sys.executable, "-c", code], cwd=os.path.dirname(train_step.__file__),
                         env=env, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["off"]


@pytest.mark.parametrize("arg, message", [
    ("--parts=trainer,profiles", "unknown part profiles"),
    ("--autotune_s=10m", "--autotune_s=10m: give seconds"),
    ("--size=paper2", "--size=paper2: give paper or tiny"),
    ("--part=trainer", "unknown argument --part=trainer"),
    ("--task_sets=pose2d,al", "unknown task set al"),
    ("--parts=levers --levers=none,flax", "unknown lever flax"),
    ("--parts=levers --levers=n.ne", "unknown lever n.ne"),
    ("--parts=", "--parts is empty"),
    ("--parts=step --levers=none,flax_ops", "the levers part is not in --parts=step"),
    ("--time_s=10m", "--time_s=10m: give seconds")])
def test_the_prepared_accelerator_run_refuses_a_bad_argument_before_any_work(arg, message,
                                                                             tmp_path):
    proc = subprocess.run(["bash", os.path.join(cli.REPO, "benchmarks", "accelerator.sh"),
                           *arg.split()],
                          env={**os.environ, "OUT": str(tmp_path),
                               "ACCELERATOR_WORK": str(tmp_path / "work")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not os.listdir(tmp_path)  # nothing built, installed or written


@pytest.mark.parametrize("script, flag", [
    ("train_step", "--steps=0"), ("compare", "--repeats=0"), ("stream_modes", "--rounds=0"),
    ("trainer_speed", "--bare_steps=0"), ("pool_backward", "--warmup=-1")])
def test_a_benchmark_refuses_a_count_it_cannot_time_in_one_line(script, flag):
    """No steps, rounds or repeats to time (a division by zero or an empty median deep in the
    run) is refused as the flag's error, before any work."""
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(script).main([flag])
    assert isinstance(e.value.code, str) and e.value.code.startswith(f"error: {flag}: ")
    assert "\n" not in e.value.code


def test_a_benchmarks_line_names_the_commit_and_day_it_measured(tmp_path, capsys):
    """`cli.print_line` adds the repository's HEAD (with "+changes" where the tracked files
    differ from it) and the UTC day; a line that names its own keeps them."""
    import subprocess as sp

    head = sp.run(["git", "-C", cli.REPO, "rev-parse", "--short", "HEAD"], capture_output=True,
                  text=True, check=True).stdout.strip()
    changed = sp.run(["git", "-C", cli.REPO, "diff", "--quiet", "HEAD"]).returncode != 0
    today = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    assert cli.print_line({"benchmark": "x", "ms": 1.5}) == {
        "benchmark": "x", "ms": 1.5, "commit": head + ("+changes" if changed else ""),
        "date": today}
    assert json.loads(capsys.readouterr().out)["commit"].startswith(head)
    kept = {"benchmark": "y", "commit": "abc1234", "date": "2026-12-04"}
    assert cli.print_line(kept) == kept


def _scripts_with_usage() -> list[str]:
    """The benchmarks whose docstring gives their own command line."""
    import ast

    return sorted(name[:-3] for name in os.listdir(BENCHMARKS) if name.endswith(".py") and (
        f"    python3 benchmarks/{name}" in (ast.get_docstring(ast.parse(
            open(os.path.join(BENCHMARKS, name)).read())) or "")))


@pytest.mark.parametrize("script", ["torch_reference", "profile_torch"])
def test_a_pytorch_benchmark_without_pytorch_ends_in_one_line_naming_the_fix(script):
    """Where PyTorch is not installed (it is the bench extra's, not hgmt's), the PyTorch
    benchmarks end in one line naming the extra, --help included, not in a traceback of
    `import torch`. PyTorch is made unimportable in the process, installed or not."""
    code = ("import runpy, sys\n"
            "sys.modules['torch'] = None\n"
            f"sys.argv = [{script!r}, '--help']\n"
            f"sys.path.insert(0, {BENCHMARKS!r})\n"
            f"runpy.run_path({os.path.join(BENCHMARKS, script + '.py')!r}, "
            "run_name='__main__')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(BENCHMARKS))
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        1, "", f"error: benchmarks/{script}.py needs PyTorch, which hgmt itself does not: "
               f"pip install -e '.[bench]' (or a torch build for your accelerator)\n")


@pytest.mark.parametrize("script", torch_marked(_scripts_with_usage()))
def test_a_benchmarks_help_prints_its_whole_docstring_usage_included(script, capsys):
    """`--help` prints the module's docstring whole (its usage lines and what the flags after
    `--` are), then the flags, and exits 0."""
    import importlib

    module = importlib.import_module(script)
    with pytest.raises(SystemExit) as e:
        module.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(module.__doc__.strip().splitlines()[0]), out[:200]
    assert module.__doc__.strip()[-60:] in out
    assert f"python3 benchmarks/{script}.py" in out


@pytest.mark.parametrize("arg", ["--help", "-h"])
def test_the_accelerator_run_prints_its_header_on_help(arg, tmp_path):
    """--help prints the script's header (usage, parts, exit statuses) and exits 0, nothing
    written."""
    script = os.path.join(cli.REPO, "benchmarks", "accelerator.sh")
    proc = subprocess.run(["bash", script, arg], env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    header = []
    for line in open(script).read().splitlines()[1:]:
        if not line.startswith("#"):
            break
        header.append(line[2:])
    assert proc.stdout.splitlines() == header and len(header) > 50
    assert header[3].startswith("  benchmarks/accelerator.sh [--size=paper|tiny]")
    assert not os.listdir(tmp_path)


def _copy_of_the_script(tmp_path) -> str:
    """benchmarks/accelerator.sh and the host check it runs first, alone in a folder's
    benchmarks/ (no .whl/: nothing to install) -> the script's path."""
    os.makedirs(tmp_path / "repo" / "benchmarks")
    for name in ("accelerator.sh", "host_check.py"):
        with open(os.path.join(BENCHMARKS, name)) as f:
            (tmp_path / "repo" / "benchmarks" / name).write_text(f.read())
    return str(tmp_path / "repo" / "benchmarks" / "accelerator.sh")


def test_the_prepared_accelerator_run_skips_what_its_time_budget_cannot_hold(tmp_path):
    """--time_s leaves each command the time left less its exit's margin (30 s); a command
    with under a minute left is skipped with a line saying so, and the run goes on. The host's
    line comes first, and at the tiny size a CPU backend does not stop the run."""
    out = tmp_path / "out" / "new"  # made by the script, as its work folder is
    proc = subprocess.run(["bash", _copy_of_the_script(tmp_path), "--size=tiny",
                           "--parts=step,streams", "--time_s=89"],
                          env={**os.environ, "OUT": str(out)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    host, *lines = [json.loads(x) for x in open(out / "accelerator.jsonl")]
    assert (host["benchmark"], host["backend"]) == ("host", "cpu")
    assert [x["command"] for x in lines] == ["train_step.py tasks=pose2d config.batch_size=4",
                                             "train_step.py tasks=pose2d config.batch_size=8",
                                             "train_step.py tasks=all config.batch_size=4",
                                             "stream_modes.py config.batch_size=4"]
    assert all(x["skipped"] == "under a minute left of --time_s=89" for x in lines)


@pytest.mark.slow
def test_the_prepared_accelerator_run_refuses_the_papers_size_on_a_cpu_backend(tmp_path):
    """JAX falls back to the CPU without an error when its CUDA plugin does not load: at
    --size=paper the host's line is written and the run ends there, in seconds (exit 4)."""
    import time

    t0 = time.perf_counter()
    proc = subprocess.run(["bash", _copy_of_the_script(tmp_path), "--size=paper",
                           "--parts=step", "--time_s=89"],
                          env={**os.environ, "OUT": str(tmp_path)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr
    assert time.perf_counter() - t0 < 60
    assert "JAX's backend is cpu" in proc.stderr and "--size=tiny" in proc.stderr
    lines = [json.loads(x) for x in open(tmp_path / "accelerator.jsonl")]
    assert [(x["benchmark"], x["backend"]) for x in lines] == [("host", "cpu")]


def test_the_prepared_accelerator_run_stops_when_the_pipelines_packages_do_not_import(tmp_path):
    """Without .whl/ on the accelerator host (a device run copies the git-ignored folder only
    when its carry names it) every part would fail on its first import: the run ends before
    any, naming the fix (exit 3)."""
    stand_in = tmp_path / "hidden" / "av"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text('raise ImportError("av hidden by a test")\n')
    path = os.pathsep.join(p for p in (str(stand_in.parent), os.environ.get("PYTHONPATH"))
                           if p)
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.run(["bash", _copy_of_the_script(tmp_path), "--size=tiny",
                           "--parts=step", "--time_s=89"],
                          env={**os.environ, "OUT": str(out), "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    message = proc.stderr.strip().splitlines()
    assert len(message) == 1 and "av hidden by a test" in message[0]
    assert 'carry=[".whl"]' in message[0] and "benchmarks/accelerator_wheels.sh" in message[0]
    assert not os.listdir(out)  # nothing measured


@pytest.mark.slow
def test_the_prepared_accelerator_runs_install_and_checks_stop_within_its_time_budget(tmp_path):
    """--time_s=45 leaves 15 s beyond the 30 s exit margin: the wheels' install, the packages'
    import check and the host check each stop there when they hang (a stand-in python3 that
    sleeps in that one), and the run ends within the 45 s: the install and the import check
    end it (exits 1 and 3), a host check that did not finish is passed over and the part it
    leaves no minute is skipped. The 15 s are for the stand-ins that run before the one that
    hangs, which a loaded machine may start slowly. The three runs, one for each place that
    hangs, run at the same time (each mostly waits)."""
    import signal
    import time

    runs = {}
    t0 = time.perf_counter()
    for hangs in ("pip", "import", "host_check"):
        tmp = tmp_path / hangs
        script = _copy_of_the_script(tmp)
        (tmp / "repo" / ".whl").mkdir()
        (tmp / "repo" / ".whl" / "x-1-py3-none-any.whl").write_text("")
        (tmp / "bin").mkdir()
        stub = tmp / "bin" / "python3"
        stub.write_text(f"#!{sys.executable}\nimport json, sys, time\n"
                        f"step = {{'-m': 'pip', '-c': 'import'}}.get(sys.argv[1], 'host_check')\n"
                        f"if step == {hangs!r}:\n    time.sleep(60)\n"
                        f"if step == 'host_check':\n"
                        f"    print(json.dumps({{'benchmark': 'host', 'backend': 'cpu'}}))\n")
        stub.chmod(0o755)
        runs[hangs] = subprocess.Popen(
            ["bash", script, "--size=tiny", "--parts=step", "--time_s=45"],
            env={**os.environ, "OUT": str(tmp), "ACCELERATOR_WORK": str(tmp / "work"),
                 "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}"},
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
            start_new_session=True)
    errs, ended = {}, {}
    try:
        for hangs, proc in runs.items():
            errs[hangs] = proc.communicate(timeout=max(1.0, 90 - (time.perf_counter() - t0)))[1]
            ended[hangs] = time.perf_counter() - t0
    finally:  # a run that did not stop (the stand-in, under its own `timeout`, ends in 60 s)
        for proc in runs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    for hangs, proc in runs.items():
        err = errs[hangs]
        assert ended[hangs] < 45, (hangs, err)
        if hangs == "pip":
            assert proc.returncode == 1 and "installing .whl/ failed (exit 124" in err, err
        elif hangs == "import":
            assert proc.returncode == 3 and "did not finish within --time_s=45" in err, err
        else:
            assert proc.returncode == 0 and "host_check.py failed (exit 124)" in err, err
            lines = [json.loads(x) for x in open(tmp_path / hangs / "accelerator.jsonl")]
            assert lines and all(x["skipped"] == "under a minute left of --time_s=45"
                                 for x in lines)


def _stubbed_run(tmp, *args: str) -> tuple[list[list[str]], str]:
    """benchmarks/accelerator.sh with `args` and `python3` a stand-in that prints its
    arguments as a JSON line, output and work folders in `tmp`: (each command's arguments, in
    order; the work folder)."""
    (tmp / "bin").mkdir()
    stub = tmp / "bin" / "python3"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"print(json.dumps({{'argv': sys.argv[1:]}}))\n")
    stub.chmod(0o755)
    work = str(tmp / "work")
    proc = subprocess.run(
        ["bash", os.path.join(BENCHMARKS, "accelerator.sh"), *args],
        env={**os.environ, "OUT": str(tmp), "ACCELERATOR_WORK": work,
             "PATH": f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(x) for x in open(tmp / "accelerator.jsonl")]
    return [x["argv"] for x in lines if "argv" in x], work


@pytest.fixture(scope="module")
def stubbed_paper_run(tmp_path_factory) -> tuple[list[list[str]], str]:
    """`_stubbed_run` at the paper's size, every part but the on-request streams, levers and
    pool."""
    return _stubbed_run(tmp_path_factory.mktemp("stubbed"), "--size=paper",
                        "--parts=trainer,profile,loader,torch,step")


def _script(argv: list[str]) -> str:
    return os.path.basename(argv[0]) if argv[0] != "-c" else "-c"


def test_the_prepared_accelerator_run_checks_the_host_before_anything(stubbed_paper_run):
    commands, _ = stubbed_paper_run
    assert commands[0] == ["benchmarks/host_check.py", "--require_accelerator"]


def test_the_prepared_accelerator_runs_trainer_part_times_100_bare_steps(stubbed_paper_run):
    """Against the trainer's logged intervals (about 10 s at pose2d batch 128), the bare step
    over 20 steps would be timed over under a second."""
    commands, _ = stubbed_paper_run
    trainer = [c for c in commands if _script(c) == "trainer_speed.py"]
    assert len(trainer) == 2 and all("--bare_steps=100" in c for c in trainer)


def test_the_prepared_accelerator_run_profiles_the_trainers_own_step(stubbed_paper_run):
    """The profile part profiles the program the trainer part times (--feed=trainer) on the
    demo data, built first unless there."""
    commands, work = stubbed_paper_run
    scripts = [_script(c) for c in commands]
    profile = scripts.index("profile_step.py")
    assert scripts[profile - 1] == "-c" and "demo.build(" in commands[profile - 1][1]
    assert scripts[profile:profile + 2] == ["profile_step.py"] * 2  # pose2d, all
    for command in commands[profile:profile + 2]:
        assert {"--feed=trainer", "--config.dataset=surreal/all",
                f"--config.data_dir={work}/demo/tfds"} <= set(command)


def test_the_prepared_accelerator_runs_loader_part_measures_the_device_placement_first(
        stubbed_paper_run):
    """The device placement (the crop's time in the step on the accelerator) is the loader
    part's one accelerator figure: first, so that a time limit takes the host's instead."""
    commands, _ = stubbed_paper_run
    loader = [c for c in commands if _script(c) == "input_pipeline.py"]
    assert len(loader) == 1 and "--placements=device,host" in loader[0]


def test_the_prepared_accelerator_run_times_hgmt_and_pytorch_config_by_config(
        stubbed_paper_run):
    """With the torch and step parts, each config's bare step on a cropped batch (the batch
    PyTorch's reference trains on), then the reference eager and compiled, then the ratio's
    line from those lines alone."""
    commands, work = stubbed_paper_run
    timed = [(_script(c), next(a for a in c if a.startswith(("--config.batch_size=",
                                                              "--from_lines="))))
             for c in commands if _script(c) in ("train_step.py", "torch_reference.py",
                                                  "compare.py")]
    expected = []
    for tasks, batch in (("pose2d", 64), ("pose2d", 128), ("all", 64)):
        expected += [("train_step.py", f"--config.batch_size={batch}")] + [
            ("torch_reference.py", f"--config.batch_size={batch}")] * 2 + [
            ("compare.py", f"--from_lines={work}/pair_{tasks}_{batch}.jsonl")]
    assert timed == expected
    assert not any("--feed=trainer" in c for c in commands if _script(c) == "train_step.py")
    pair = [json.loads(x)["argv"] for x in open(f"{work}/pair_all_64.jsonl")]
    assert [_script(c) for c in pair] == ["train_step.py", "torch_reference.py",
                                          "torch_reference.py"]


def test_the_prepared_accelerator_runs_tests_part_runs_the_device_tests(tmp_path):
    """--parts=tests runs the suite's device-against-host tests (device_tests.py's default
    selection) after the host check, before the levers (a minute's check before minutes of
    compiling)."""
    commands, _ = _stubbed_run(tmp_path, "--size=paper", "--parts=levers,tests",
                               "--levers=none")
    assert [_script(c) for c in commands] == ["host_check.py", "device_tests.py",
                                              "step_levers.py"]
    assert commands[1] == ["benchmarks/device_tests.py"]


@pytest.mark.slow
def test_the_device_tests_line_reports_each_outcome(tmp_path):
    """benchmarks/device_tests.py runs the tests after `--` on JAX's default backend (the CPU
    here) and prints one line: how many passed and skipped, which failed, pytest's status."""
    crafted = tmp_path / "test_crafted.py"
    crafted.write_text("import pytest\n\n"
                       "def test_passes():\n    assert 1 + 1 == 2\n\n"
                       "def test_fails():\n    assert 1 + 1 == 3\n\n"
                       "def test_skips():\n    pytest.skip('not here')\n")
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "device_tests.py"), "--",
                           str(crafted)], capture_output=True, text=True, timeout=300,
                          cwd=str(tmp_path))
    assert proc.returncode == 1, proc.stderr
    line = json.loads(proc.stdout)  # one line: pytest's report went to stderr
    assert line["backend"] == "cpu" and line["exit"] == 1
    assert (line["passed"], line["skipped"]) == (1, 1)
    assert [os.path.basename(x) for x in line["failed"]] == ["test_crafted.py::test_fails"]
    assert "1 failed" in proc.stderr
    # The suite's own tests, run for the accelerator: not with conftest's CPU-only XLA flags.
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "device_tests.py"), "--",
                           "tests/test_device_augment.py", "-k", "placement_by_config"],
                          capture_output=True, text=True, timeout=300, env=env)
    line = json.loads(proc.stdout)
    assert (line["passed"], line["exit"], line["xla_flags"]) == (1, 0, ""), proc.stderr
    # A word before `--` is refused, not passed on.
    proc = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "device_tests.py"),
                           str(crafted)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and not proc.stdout and str(crafted) in proc.stderr


def test_the_task_sets_choose_the_configs_of_the_torch_and_step_parts_too(tmp_path):
    """So that the three configs can go to two device calls: the two pose2d ones, then all
    four tasks."""
    runs = {}
    for task_set in ("pose2d", "all"):
        (tmp_path / task_set).mkdir()
        commands, _ = _stubbed_run(tmp_path / task_set, "--size=paper", "--parts=torch,step",
                                   f"--task_sets={task_set}")
        runs[task_set] = [(c[1].split("tasks=")[1], c[-3]) for c in commands
                          if _script(c) == "train_step.py"]
    assert runs == {"pose2d": [("pose2d", "--config.batch_size=64"),
                               ("pose2d", "--config.batch_size=128")],
                    "all": [("all", "--config.batch_size=64")]}


def test_the_host_check_reports_what_the_benchmarks_run_with(capsys):
    """This CPU host: its Python, JAX (the tests' 4 virtual CPU devices), PyTorch, Triton, C
    compiler and no GPU driver, as found here; with --require_accelerator the CPU backend is
    refused, naming the fix."""
    import importlib.util
    import platform
    import shutil

    import jaxlib

    assert host_check.main([]) == 0
    line = json.loads(capsys.readouterr().out)
    cc = subprocess.run(["cc", "--version"], capture_output=True, text=True).stdout
    torch = pytest.importorskip("torch")
    assert line == {
        "benchmark": "host", "python": platform.python_version(), "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "backend": "cpu", "device_kind": "cpu", "device_count": 4, "jax_platforms": "cpu",
        "torch": torch.__version__, "torch_cuda": False,
        "triton": (importlib.import_module("triton").__version__
                   if importlib.util.find_spec("triton") else None),
        "cc": cc.splitlines()[0].strip(),
        "driver": None if shutil.which("nvidia-smi") is None else line["driver"]}
    assert host_check.main(["--require_accelerator"]) == host_check.EXIT_NO_ACCELERATOR == 4
    err = capsys.readouterr().err
    assert "JAX's backend is cpu" in err and "jax-cuda plugin" in err and "--size=tiny" in err
    assert host_check.refusal({**line, "backend": "gpu"}) is None


def test_the_benchmarks_random_batch_has_what_every_tasks_targets_read():
    from hgmt.tasks import TASKS

    batch = train_step.random_batch(2, 32)
    for name, task in TASKS.items():
        target = np.asarray(task.targets(batch))
        assert target.shape[:3] == (2, 8, 8) and np.isfinite(target).all(), name


def test_the_benchmarks_default_configs_are_the_repositorys_config_files():
    """config_path names the repository's configs/<name>.py, the file each benchmark's default
    `--config` reads."""
    for name in ("default", "demo"):
        path = cli.config_path(name)
        assert path == os.path.join(os.path.dirname(BENCHMARKS), "configs", f"{name}.py")
        assert os.path.isfile(path), path
    assert cli.DEFAULT_CONFIG == cli.config_path("default") + ":tasks=pose2d"
    assert step_dispatch.DEFAULT_CONFIG == cli.config_path("default")
    for module in (eval_speed, input_pipeline, input_stages):
        assert module.DEFAULT_CONFIG == cli.config_path("demo"), module.__name__


def test_benchmark_flags_name_a_field_the_config_lacks():
    with pytest.raises(SystemExit, match="no field.*image_sise"):
        cli.parse(cli.define_timing, ["--config.image_sise=64"], "doc")
    fv = cli.parse(cli.define_timing, ["--config.image_size=64", "--steps=3"], "doc")
    assert fv.config.image_size == 64 and fv.steps == 3 and fv.config.tasks == "pose2d"
    args = cli.config_args(fv)
    assert args[0] == f"--config={cli.DEFAULT_CONFIG}" and args[1:] == ["--config.image_size=64"]


def test_compare_falls_back_to_the_default_compile_mode_when_max_autotune_runs_out_of_time(
        monkeypatch):
    calls = []

    def run(script, config_args, steps, extra=(), devices=1, timeout=None):
        calls.append((script, extra, timeout))
        if "--compile_mode=max-autotune" in extra:
            return None  # out of time
        return {"img_per_s": 5.0, "compile_mode": "default", "compile_s": 80.0}

    monkeypatch.setattr(compare, "run", run)
    result = compare.compiled_torch(["--config.image_size=64"], 3, "max-autotune", 600)
    assert calls == [("torch_reference.py", ("--compile", "--compile_mode=max-autotune"), 600),
                     ("torch_reference.py", ("--compile", "--compile_mode=default"), None)]
    assert result["compile_mode"] == "default" and result["compile_timed_out"]
    assert result["compile_mode_tried"] == "max-autotune" and not result["compile_failed"]
    assert compare.variant_overrides("image_size=64, tasks=all") == [
        "--config.image_size=64", "--config.tasks=all"]
    with pytest.raises(SystemExit, match=r"^error: --variants=image_size: give comma-separated "
                                         r"field=value"):
        compare.variant_overrides("image_size")


def test_compare_falls_back_to_the_default_compile_mode_when_max_autotune_fails(monkeypatch):
    """A max-autotune compilation that fails (its process exits non-zero) is rerun in the
    default mode, the result saying why; a failure in the default mode has nothing to fall
    back to and stops the comparison."""
    import fresh_process

    calls = []

    def run(script, args, env=None, timeout_s=None):
        calls.append((script, args[-1], timeout_s))
        if args[-1] == "--compile_mode=max-autotune" or "--fail_default" in args:
            raise fresh_process.Failed([script, *args], 1, "Traceback ...\n"
                                       "torch._inductor.exc.InductorError: crafted\n\n")
        return {"img_per_s": 5.0, "compile_mode": "default", "compile_s": 80.0}

    monkeypatch.setattr(fresh_process, "run", run)
    result = compare.compiled_torch(["--config.image_size=64"], 3, "max-autotune", 600)
    assert calls == [("torch_reference.py", "--compile_mode=max-autotune", 600),
                     ("torch_reference.py", "--compile_mode=default", None)]
    assert (result["compile_mode"], result["compile_mode_tried"]) == ("default", "max-autotune")
    assert result["compile_failed"] and not result["compile_timed_out"]
    assert result["compile_error"] == "exit 1: torch._inductor.exc.InductorError: crafted"
    with pytest.raises(fresh_process.Failed, match="crafted"):
        compare.compiled_torch(["--fail_default"], 3, "default", 600)


def test_the_ratio_to_pytorch_takes_hgmts_step_on_a_cropped_batch(tmp_path, capsys):
    """One config's lines as accelerator.sh gathers them: hgmt's bare step on the cropped
    batch (not the trainer's own program, which crops inside), PyTorch eager and compiled."""
    shape = {"stacks": 2, "features": 256, "res": 256, "batch": 64, "tasks": "pose2d",
             "dtype": "bfloat16", "params": 6_500_000}
    lines = [{"impl": "jax", "feed": "trainer", "img_per_s": 999.0, **shape},
             {"impl": "jax", "feed": "cropped", "img_per_s": 300.0, **shape,
              "commit": "abc1234", "date": "2026-12-04"},
             {"benchmark": "accelerator_command", "command": "train_step.py", "exit": 0},
             {"impl": "torch", "compile_mode": "eager", "img_per_s": 100.0, **shape},
             {"impl": "torch", "compile_mode": "default", "img_per_s": 150.0, **shape}]
    path = tmp_path / "pair.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert compare.main([f"--from_lines={path}"]) == 0
    row = json.loads(capsys.readouterr().out)
    # dated as the measurement it is made from, not as the day and code it was combined
    assert (row.pop("commit"), row.pop("date")) == ("abc1234", "2026-12-04")
    undated = [{k: v for k, v in x.items() if k not in ("commit", "date")} for x in lines]
    assert (compare.ratio_line(undated)["commit"], compare.ratio_line(undated)["date"]) == (
        "unknown", "unknown")
    assert row == {"benchmark": "hgmt_over_torch", **{k: v for k, v in shape.items()
                                                       if k != "params"},
                   "hgmt_img_per_s": 300.0, "hgmt_feed": "cropped", "torch_img_per_s": 100.0,
                   "torch_compiled_img_per_s": 150.0, "torch_compile_mode": "default",
                   "same_params": True, "over_torch": 3.0, "over_torch_compiled": 2.0,
                   "goal_over_torch_compiled": 1.5}
    alone = compare.ratio_line(lines[:4])  # no compiled line: its ratio is null
    assert alone["over_torch"] == 3.0 and alone["over_torch_compiled"] is None


@pytest.mark.slow
def test_torch_reference_takes_the_config_and_matches_the_jax_parameter_count():
    pytest.importorskip("torch")  # the bench extra's
    import jax
    import torch_reference

    from hgmt.models import create_model
    from hgmt.tasks import heads, parse_tasks

    r = torch_reference.benchmark(TINY + ["--config.batch_size=2", "--steps=1", "--warmup=1"])
    config = cli.parse(cli.define_timing, TINY, "doc").config
    model = create_model(config.model, heads(parse_tasks(config.tasks)))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jax.numpy.zeros((1, 32, 32, 3)))
    assert r["params"] == sum(x.size for x in jax.tree.leaves(shapes["params"]))
    assert r["compile_mode"] == "eager" and r["img_per_s"] > 0 and r["res"] == 32
    with pytest.raises(ValueError, match="interaction='sum'"):
        torch_reference.benchmark(TINY + ["--config.model.interaction=gated"])


@pytest.mark.slow
def test_trainer_benchmark_reads_the_trainers_tensorboard_figures(tmp_path):
    from hgmt.training import summary_writer

    writer = summary_writer.create(str(tmp_path))
    for step, rate, wait in ((10, 50.0, 0.2), (20, 90.0, 0.01), (30, 110.0, 0.03)):
        writer.write_scalars(step, {"img_per_s": rate, "data_wait": wait,
                                    "data_idle": wait / 2, "loss/total": 1.0})
    writer.close()
    scalars = trainer_speed.read_scalars(str(tmp_path))
    assert scalars["img_per_s"] == {10: 50.0, 20: 90.0, 30: 110.0}
    log = "I1203 08:00:00 trainer.py:184] step 1 (compilation included) took 31.5 s\n"
    figures = trainer_speed.trainer_figures(scalars, log)
    # the first interval (the loader's start) is left out of the steady figures
    assert figures["trainer_img_per_s"] == 100.0
    assert figures["data_wait"] == pytest.approx(0.02)
    assert figures["data_idle"] == pytest.approx(0.01)
    assert figures["all_data_idle"] == [0.1, 0.005, 0.015]
    assert figures["trainer_first_step_s"] == 31.5 and figures["intervals"] == 3
    with pytest.raises(RuntimeError, match="log_every"):
        trainer_speed.trainer_figures({}, log)


def test_the_trainer_benchmark_reads_the_first_steps_time_from_either_line():
    """The first step's time, compilation included, whether it has a line of its own (it
    does not log) or is the first log line (`--config.log_every=1`: its time, no rates)."""
    scalars = {"img_per_s": {2: 80.0, 3: 100.0}, "data_wait": {2: 0.1, 3: 0.0}}
    alone = "I1203 08:00:00 trainer.py:184] step 1 (compilation included) took 31.5 s\n"
    logs = ("I1203 08:00:00 trainer.py:340] step 1/3  pose2d 0.012  total 12.13  took 42.0 s, "
            "compilation included: img/s, data wait and ETA from the next line\n")
    assert trainer_speed.trainer_figures(scalars, alone)["trainer_first_step_s"] == 31.5
    assert trainer_speed.trainer_figures(scalars, logs)["trainer_first_step_s"] == 42.0
    later = "I1203 08:00:09 trainer.py:340] step 2/3  total 9.0  80.0 img/s  ETA 0:00:01\n"
    assert trainer_speed.trainer_figures(scalars, later)["trainer_first_step_s"] is None


@pytest.mark.slow
def test_a_failed_bare_step_gives_an_error_line_and_the_trainer_runs_all_the_same(
        monkeypatch, tmp_path, capsys):
    """The bare step's process fails (crafted); the trainer (here a stand-in that logs three
    intervals as hgmt.main does) still runs, and its line has no ratio to the bare step; it
    gives config.worker_count and the loader's workers it resolves to (on 16 cores)."""
    import fresh_process

    from hgmt import cores
    from hgmt.training import summary_writer

    def bare_fails(script, args, env=None, timeout_s=None):
        raise fresh_process.Failed(["train_step.py", *args], 1,
                                   "Traceback ...\nRuntimeError: crafted failure\n")

    ran = []

    def trainer(cmd, env):
        ran.append(cmd)
        workdir = next(a.split("=", 1)[1] for a in cmd if a.startswith("--workdir="))
        writer = summary_writer.create(workdir)
        for step, rate in ((2, 40.0), (4, 60.0), (6, 80.0)):
            writer.write_scalars(step, {"img_per_s": rate, "data_wait": 0.1, "data_idle": 0.0})
        writer.close()
        return 0, "step 1 (compilation included) took 3.5 s\n", False

    monkeypatch.setattr(fresh_process, "run", bare_fails)
    monkeypatch.setattr(trainer_speed, "run_trainer", trainer)
    monkeypatch.setattr(cores, "usable_cores", lambda: 16)
    workdir = tmp_path / "w"
    assert trainer_speed.main([*TINY, f"--workdir={workdir}", "--bare_steps=5"]) == 0
    bare, result = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    # the default config's worker_count -1, and the 16 cores less two that the loader runs
    assert (result["worker_count"], result["loader_workers"], result["cpus"]) == (-1, 14, 16)
    assert bare == {"benchmark": "bare_step", "error": "exit 1: RuntimeError: crafted failure",
                    **cli.provenance()}
    assert len(ran) == 1 and ran[0][1:3] == ["-m", "hgmt.main"]
    assert result["benchmark"] == "trainer" and result["complete"]
    assert result["trainer_img_per_s"] == 70.0 and result["trainer_first_step_s"] == 3.5
    assert "trainer_over_bare" not in result and "bare_img_per_s" not in result


@pytest.mark.slow
def test_trainer_benchmark_stopped_by_sigterm_writes_what_the_trainer_logged(demo_dataset,
                                                                              tmp_path):
    """A time limit's SIGTERM to the benchmark reaches the trainer, which saves and exits; the
    benchmark still writes its line, with the intervals logged until then, and exits 75."""
    import contextlib
    import signal
    import time

    from hgmt.training import checkpoints, preemption
    from tests.conftest import main_command

    workdir = str(tmp_path / "w")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=100_000,
                            checkpoint_every=100_000)
    cmd = [sys.executable, os.path.join(BENCHMARKS, "trainer_speed.py"), "--bare=false",
           *cmd[3:], "--config.log_every=2"]
    with open(tmp_path / "err", "w") as err:
        proc = subprocess.Popen(cmd, cwd=cli.REPO, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True, start_new_session=True)
        try:
            deadline = time.time() + 600  # compiling on a loaded host
            while len(trainer_speed.read_scalars(workdir).get("img_per_s", {})) < 2:
                assert proc.poll() is None and time.time() < deadline, open(
                    tmp_path / "err").read()[-3000:]
                time.sleep(1)
            proc.send_signal(signal.SIGTERM)  # to the benchmark alone: it passes it on
            out = proc.communicate(timeout=120)[0]
        finally:  # whatever is left of its process group (a trainer it did not stop)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    log = open(tmp_path / "err").read()
    assert proc.returncode == preemption.EXIT_PREEMPTED, log[-3000:]
    step = checkpoints.manager(workdir).latest_step()
    assert step and f"saved a checkpoint at step {step}" in log  # the trainer's own output
    result = json.loads(out.splitlines()[-1])
    assert result["complete"] is False and result["intervals"] >= 2
    assert result["trainer_img_per_s"] > 0 and "trainer_over_bare" not in result


@pytest.mark.slow
def test_the_trainer_benchmarks_bare_step_is_the_program_the_trainer_compiles(demo_dataset,
                                                                             tmp_path):
    """`train_step.py --feed=trainer` (trainer_speed's bare step) compiles the trainer's own
    step, with the crop inside (config.augment_on=device): the trainer, given the same
    compilation cache folder (its path is part of the key), writes the same entry. One folder,
    emptied between the two, so the trainer cannot load it and must write it itself."""
    from tests.conftest import main_command

    cache = tmp_path / "cache"
    cmd, env = main_command(str(tmp_path / "w"), demo_dataset[1], total_steps=1,
                            checkpoint_every=1)
    config = [a for a in cmd if a.startswith("--config")] + ["--config.augment_on=device"]
    bare = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "train_step.py"), *config, "--feed=trainer",
         "--steps=1", "--warmup=0"], cwd=cli.REPO, capture_output=True, text=True,
        env={**env, "JAX_COMPILATION_CACHE_DIR": str(cache),
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"})
    assert bare.returncode == 0, bare.stderr[-3000:]
    line = json.loads(bare.stdout.strip().splitlines()[-1])
    assert line["feed"] == "trainer" and line["devices"] == 2 and line["batch"] == 8

    def train_steps() -> dict[str, int]:  # hgmt.devices.spmd names it after train_step
        return {p.name: p.stat().st_size for p in cache.glob("jit_train_step-*")}

    step_entry = max(train_steps().items(), key=lambda item: item[1])[0]  # the largest
    for entry in cache.iterdir():
        entry.unlink()
    trainer = subprocess.run([*cmd, "--config.augment_on=device",
                              "--config.evals.test.at_end=false", f"--compilation_cache={cache}"],
                             cwd=cli.REPO, capture_output=True, text=True, env=env)
    assert trainer.returncode == 0, trainer.stderr[-3000:]
    assert step_entry in train_steps()


def _demo_data(demo_dataset) -> list[str]:
    """The demo config's data (already built from these settings: the demo step finds them)
    at a tiny size."""
    from tests.conftest import DEMO_DATASET_SETTINGS

    return [f"--config.data_dir={demo_dataset[1]}",
            f"--config.demo.surreal_root={demo_dataset[0]}", "--config.image_size=64",
            "--config.batch_size=4",
            *(f"--config.demo.{k}={v}" for k, v in DEMO_DATASET_SETTINGS.items())]


def test_input_pipeline_benchmark_reads_the_configs_data_and_reports_the_ratio(demo_dataset,
                                                                              capsys):
    """The demo config (the default), its sizes overridden as `--config.x=y`, the loader in
    the main process (the demo config's worker_count=0)."""
    assert input_pipeline.main([
        *_demo_data(demo_dataset), "--config.augment_on=host", "--batches=3",
        "--train_img_per_s=10"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert r["benchmark"] == "input_pipeline" and (r["res"], r["batch"]) == (64, 4)
    assert r["tasks"] == "pose2d+pose3d+depth+segm" and r["worker_count"] == 0
    assert r["examples"] == 12 and r["records"] == 12  # 2 demo train clips of 6 frames
    assert r["examples_per_cpu_s"] > 0
    assert np.isclose(r["ratio_per_core"],
                      r["examples_per_cpu_s"] / (10 / r["cpus"]), rtol=0.01)


def test_input_pipeline_benchmark_compares_host_and_device_augmentation(demo_dataset, capsys):
    assert input_pipeline.main([*_demo_data(demo_dataset), "--batches=2",
                                "--placements=host,device"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x.get("augment_on") for x in lines] == ["host", "device", None]
    host, device, r = lines
    assert r["runs"] == 2 and r["device_over_host"] == [
        round(device["examples_per_cpu_s"] / host["examples_per_cpu_s"], 2)]
    assert device["step_cpu_ms_per_batch"] > 0 and "step_ms_per_batch" not in host
    # The crop's CPU time counted in: fewer examples per CPU-second than the loader alone.
    assert device["examples_per_cpu_s_with_step"] < device["examples_per_cpu_s"]


STAGES = ("read_ms", "read_bytes_ms", "parse_ms", "parse_tfds_ms", "parse_frame_ms",
          "decode_image_ms", "decode_segm_ms", "decode_depth_ms", "decode_depth_class_ms",
          "host_crop_ms", "batch_host_ms_per_example", "batch_device_ms_per_example")


def test_input_stages_benchmark_times_every_stage_of_the_configs_records(demo_dataset, capsys):
    """The demo config's 12 training records at 64 px in batches of 16 (more than the
    split's records: they repeat): every stage timed, the maps no target is made from named,
    and a record's read (its bytes, then their parse) costs at least the read of its bytes, as
    a parse of every feature costs at least that of the frame number.

    Those stages cost some microseconds a record (about 4x apart): each record is timed 10
    times (120 examples), and Python's garbage collector, whose pause would fall on one stage
    only, does not run meanwhile, so that the comparison is the stages', not noise's."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        assert input_stages.main([*_demo_data(demo_dataset), "--examples=120",
                                  "--config.batch_size=16"]) == 0
    finally:
        if collecting:
            gc.enable()
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(r) == {"benchmark", "res", "records", "tasks", "unread", *STAGES, "commit", "date"}
    assert (r["benchmark"], r["res"], r["records"]) == ("input_stages", 64, 12)
    assert r["tasks"] == "pose2d+pose3d+depth+segm" and r["unread"] == ["depth"]
    assert all(np.isfinite(r[k]) and r[k] >= 0 for k in STAGES)
    assert r["read_ms"] >= r["read_bytes_ms"] and r["parse_ms"] >= r["parse_frame_ms"]


@pytest.mark.slow
def test_eval_speed_times_both_ways_of_the_same_sums(demo_dataset, capsys):
    """The demo config's first 8 test frames at 64 px, batches of 4, 2 rounds: each way has a
    rate a round, the medians and ratios are those of the rates, and the serial way's sums
    are the evaluator's, to the bit."""
    from hgmt.data import eval_data
    from hgmt.evaluation import evaluator
    from hgmt.training import steps

    assert eval_speed.main([*TINY[:2], *_demo_data(demo_dataset), "--config.eval_batch_size=4",
                            "--max_examples=8", "--rounds=2"]) == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (r["benchmark"], r["res"], r["batch"], r["examples"]) == ("eval_speed", 64, 4, 8)
    assert r["tasks"] == "pose2d+pose3d+depth+segm" and r["threads"] == eval_data.eval_threads()
    for way in eval_speed.WAYS:
        assert len(r[way]) == 2 and all(x > 0 for x in r[way]), way
        assert r[f"{way}_median"] == pytest.approx(np.median(r[way])), way
    assert r["eval_overlapped_over_serial"] == round(
        r["eval_overlapped_median"] / r["eval_serial_median"], 2)
    assert r["batches_threaded_over_serial"] == round(
        r["batches_threaded_median"] / r["batches_serial_median"], 2)
    config = eval_speed.cli.parse(lambda fv: None, [*TINY[:2], *_demo_data(demo_dataset)],
                                  "doc", config_file=eval_speed.DEFAULT_CONFIG)[0].config
    ev = evaluator.Evaluator(config, frames="all", max_examples=8)
    state = steps.create_train_state(jax.random.key(0), config, ev.model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    serial, overlapped = eval_speed.serial_totals(ev, variables), ev.totals(variables, [])
    assert jax.tree.structure(serial) == jax.tree.structure(overlapped)
    for a, b in zip(jax.tree.leaves(serial), jax.tree.leaves(overlapped), strict=True):
        assert a.dtype == b.dtype and np.array_equal(a, b)


def test_synthetic_throughput_counts_the_frames_it_writes(monkeypatch, capsys):
    """1 and 2 worker processes: the frames the JSON counts are the frames written (each
    clip's annotation read back before the temporary folder goes), and the rate is frames
    over seconds."""
    from hgmt.sources import surreal, synthetic

    written, generate = [], synthetic.generate

    def generate_and_count(*args, **kwargs):
        stems = generate(*args, **kwargs)
        written.append([surreal.load_info(s + "_info.mat").joints2d.shape[0] for s in stems])
        return stems

    monkeypatch.setattr(synthetic, "generate", generate_and_count)
    for workers in (1, 2):
        assert synthetic_throughput.main(["--clips_per_split=2", "--frames_per_clip=3",
                                          f"--workers={workers}"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert written == [[3, 3], [3, 3]]
    assert [(r["benchmark"], r["frames"], r["workers"]) for r in lines] == [
        ("synthetic", 6, 1), ("synthetic", 6, 2)]
    for r in lines:
        assert r["seconds"] > 0 and r["cpus"] >= 1
        # frames_per_s rounded to 0.1, seconds to 0.001
        low, high = r["frames_per_s"] - 0.05, r["frames_per_s"] + 0.05
        assert r["frames"] / high - 5e-4 <= r["seconds"] <= r["frames"] / low + 5e-4


@pytest.mark.slow
def test_compile_and_load_compiles_then_loads_the_same_step(tmp_path):
    """Two fresh processes on one cache folder, a tiny model: the first writes the step to
    the cache, the second loads it in less time than the compilation took and steps to the
    same loss; each line describes the config and adds up within its process time."""
    from tests.conftest import xla_flags

    cache = tmp_path / "cache"
    cmd = [sys.executable, os.path.join(BENCHMARKS, "compile_and_load.py"), f"--cache={cache}",
           *TINY, "--config.batch_size=2", "--steps=1"]
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    lines, entries = [], []
    for _ in range(2):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        lines.append(json.loads(out.strip().splitlines()[-1]))
        entries.append({p.name for p in cache.iterdir()})
    first, second = lines
    assert entries[0] and entries[0] <= entries[1]  # the first wrote the step, kept
    for r in lines:
        assert r["benchmark"] == "compile_and_load" and r["xla_flags"] == xla_flags(1)
        assert (r["stacks"], r["features"], r["res"], r["batch"], r["tasks"]) == (
            1, 8, 32, 2, "pose2d")
        assert r["step_s"] > 0 and np.isfinite(r["loss"])
        assert r["process_s"] >= r["init_s"] + r["lower_s"] + r["compile_s"] - 0.15
    assert second["compile_s"] < first["compile_s"]
    assert second["loss"] == first["loss"]


@pytest.mark.slow
def test_stream_convs_times_every_variant_and_the_variants_compute_the_same_gradients():
    """The JSON times each variant of its mode; and every variant is the same function: the
    loss's gradients with respect to the inputs and the kernels equal the separate
    convolutions' (3x3) or matmuls' (1x1), so the benchmark compares like with like."""
    import stream_convs

    t, b, h, c, o = 2, 1, 4, 2, 3
    kx, kk = jax.random.split(jax.random.key(1))
    xs = jax.random.normal(kx, (t, b, h, h, c))
    kernels = {3: jax.random.normal(kk, (t, 3, 3, c, o)) * 0.1}
    kernels[1] = kernels[3][:, 1, 1]
    for im2col in (False, True):
        r = stream_convs.benchmark([f"--shape={t},{b},{h},{c},{o}", "--rounds=1",
                                    f"--im2col={im2col}"])
        ways = stream_convs.variants(t, im2col)
        assert (r["tasks"], r["batch"], r["size"], r["cin"], r["cout"]) == (t, b, h, c, o)
        assert set(r["ms"]) == set(ways) and all(v >= 0 for v in r["ms"].values())
        reference = {3: ways["conv3 separate"][0], 1: stream_convs.variants(t, True)[
            "1x1 separate"][0]}
        for name, (loss, k) in ways.items():
            expected = jax.grad(reference[k], argnums=(0, 1))(xs, kernels[k])
            got = jax.grad(loss, argnums=(0, 1))(xs, kernels[k])
            for g, e in zip(got, expected, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.slow
def test_profile_torch_groups_every_op_of_the_step_by_kind():
    """A tiny model: the per-kind times add up to the step's, and the kinds are the
    reference's convolutions by kernel size (the 7x7 stem, 3x3 and 1x1), BatchNorm, ReLU and
    max-pooling, forward and backward."""
    pytest.importorskip("torch")  # the bench extra's
    import profile_torch
    r = profile_torch.benchmark(TINY + ["--config.batch_size=2", "--steps=1", "--warmup=1"])
    assert (r["benchmark"], r["stacks"], r["features"], r["res"], r["batch"]) == (
        "profile_torch", 1, 8, 32, 2)
    kinds = r["ms_per_kind"]
    assert r["ms_per_step"] == pytest.approx(sum(kinds.values()), abs=0.05 * len(kinds))
    expected = {f"{op} {way}" for way in ("forward", "backward")
                for op in ("conv 7x7", "conv 3x3", "conv 1x1", "BatchNorm", "ReLU", "max-pool")}
    assert set(kinds) == expected | {"other"}
    assert all(v >= 0 for v in kinds.values()) and kinds["conv 3x3 forward"] > 0


def test_profile_torch_refuses_a_host_where_the_step_would_run_on_cuda(monkeypatch):
    """The profile is of CPU activity: where PyTorch sees CUDA (stubbed here) it stops before
    building the step and names how to profile the CPU step."""
    pytest.importorskip("torch")  # the bench extra's
    import profile_torch
    import torch
    import torch_reference

    def never(*_, **__):
        raise AssertionError("the step was built")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch_reference, "make_step", never)
    with pytest.raises(SystemExit, match="run it with CUDA_VISIBLE_DEVICES= to profile the CPU"):
        profile_torch.benchmark(TINY + ["--config.batch_size=2", "--steps=1", "--warmup=1"])


@pytest.mark.slow
def test_build_throughput_builds_the_frames_it_counts_on_both_paths():
    """The smallest build (1 train clip of 2 frames, plus the 2-frame val and test clips) on
    the Python path and on Beam's DirectRunner with 2 workers, in a fresh process (about
    20 s, most of it Beam's start-up): the rates are the frames over each path's seconds and
    the projection follows the per-core rate."""
    cmd = [sys.executable, os.path.join(BENCHMARKS, "build_throughput.py"),
           "--clips_per_split=1", "--frames_per_clip=2", "--beam_workers=2"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    r = json.loads(out.strip().splitlines()[-1])
    assert (r["benchmark"], r["frames"], r["beam_direct"]["workers"]) == ("build_throughput", 6, 2)

    def agrees(rate: float, seconds: float, per: int = 1) -> bool:
        """frames / seconds / per is `rate`, rounded to 0.1, seconds rounded to 0.01."""
        frames = r["frames"] / per
        return frames / (rate + 0.05) - 0.005 <= seconds <= frames / max(
            rate - 0.05, 1e-9) + 0.005

    py, beam = r["python"], r["beam_direct"]
    assert agrees(py["frames_per_s"], py["seconds"]) and agrees(beam["frames_per_s"],
                                                                 beam["seconds"])
    assert agrees(py["frames_per_s_per_core"], max(py["seconds"], py["cpu_seconds"]))
    assert agrees(beam["frames_per_s_per_core"], beam["seconds"], per=2)
    for n, hours in r["full_surreal_hours"].items():
        assert hours == pytest.approx(6.5e6 / (py["frames_per_s_per_core"] * int(n)) / 3600,
                                      rel=0.05, abs=0.05)
    assert r["bytes_per_example"] > 0


def _xla_starts(xla_flags: str) -> subprocess.CompletedProcess:
    code = "import jax.numpy as jnp; jnp.ones(2).block_until_ready()"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "XLA_FLAGS": xla_flags})


def test_the_default_levers_leave_out_those_that_need_several_devices():
    """With the step on one device `batch_norm_device` is the step as configured: a default
    run (accelerator.sh's levers part on one GPU) leaves it out; it runs when named."""
    from absl import flags

    fv = flags.FlagValues()
    step_levers._define_flags(fv)
    fv(["step_levers.py"])
    assert "batch_norm_device" in step_levers.LEVERS
    assert fv.levers == [k for k in step_levers.LEVERS if k != "batch_norm_device"]
    fv(["step_levers.py", "--levers=none,batch_norm_device"])
    assert fv.levers == ["none", "batch_norm_device"]


def test_unknown_levers_are_named_in_the_one_wording_of_a_list_flag():
    """A misspelt lever stops step_levers.py before any process starts, naming each unknown one
    and the levers there are (`hgmt.choices.not_some_of`'s wording)."""
    with pytest.raises(SystemExit) as e:
        step_levers.benchmark(["--levers=none,flax,n.ne"])
    assert e.value.code == (
        "error: --levers=none,flax,n.ne: no lever 'flax', 'n.ne'; give some of "
        f"{', '.join(step_levers.LEVERS)}, comma-separated")


def test_every_levers_xla_flags_are_flags_this_xla_knows():
    """XLA aborts at start on an unknown flag: each lever's flags, all at once, start it (a
    misspelt one, seen here, does not)."""
    xla = [flag for flags, _, _ in step_levers.LEVERS.values() for flag in flags]
    assert len(xla) >= 4
    proc = _xla_starts(" ".join(xla))
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = _xla_starts(" ".join([*xla, "--xla_gpu_enable_triton_gemmm=false"]))
    assert proc.returncode != 0 and "xla_gpu_enable_triton_gemmm" in proc.stderr


def test_a_failed_lever_gives_an_error_line_and_the_summary_leaves_it_out(monkeypatch):
    monkeypatch.setitem(step_levers.LEVERS, "misspelt", (("--xla_gpu_no_such_flag=1",), (),
                                                         "a flag XLA does not know"))
    config = os.path.join(os.path.dirname(BENCHMARKS), "configs", "default.py")
    line = step_levers.run_lever("misspelt", [f"--config={config}", *TINY], 120)
    assert line["lever"] == "misspelt" and line["error"].startswith("exit ")
    assert "xla_gpu_no_such_flag" in line["error"] and "img_per_s" not in line
    results = [{"lever": "none", "img_per_s": 100.0, "mfu": 0.2, "compile_s": 30.0}, line,
               {"lever": "batch_256", "img_per_s": 120.0, "mfu": 0.25, "compile_s": 33.0}]
    assert step_levers.summarize(results) == {"summary": "step_levers", "over": "none", "levers": {
        "none": {"img_per_s": 1.0, "mfu": 1.0, "compile_s": 1.0},
        "batch_256": {"img_per_s": 1.2, "mfu": 1.25, "compile_s": 1.1}}}


@pytest.mark.slow
def test_a_config_lever_reaches_the_measured_step():
    """`flax_ops` changes the config, not XLA's flags: its line is a step built from Flax's ops
    (the line says so, from the config train_step.py ran)."""
    config = os.path.join(os.path.dirname(BENCHMARKS), "configs", "default.py")
    line = step_levers.run_lever("flax_ops", [f"--config={config}", *TINY,
                                              "--config.batch_size=2", "--steps=1",
                                              "--warmup=1"], 300)
    assert "error" not in line, line
    assert line["lever"] == "flax_ops" and line["ops"] == "flax" and line["img_per_s"] > 0


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_every_way_of_the_pool_backward_gives_select_and_scatters_gradient(dtype):
    """On data full of ties, each way's gradient equals nn.max_pool's (the first maximum of
    each window in row-major order takes it), bit for bit."""
    x = jnp.round(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)) * 1.5).astype(dtype)
    g = jax.random.normal(jax.random.key(1), (2, 4, 4, 3), dtype)
    windows = x.reshape(2, 4, 2, 4, 2, 3)
    ties = (windows == windows.max(axis=(2, 4))[:, :, None, :, None]).sum(axis=(2, 4))
    assert int((ties > 1).sum()) > 10  # the case this is about
    reference = jax.vjp(pool_backward.WAYS["flax"], x)[1](g)[0]
    for name, pool in pool_backward.WAYS.items():
        assert jnp.array_equal(jax.vjp(pool, x)[1](g)[0], reference), name


def test_the_device_crop_sampling_equals_jaxs_map_coordinates_and_is_timed_beside_it():
    """`device_augment.warp_bilinear` and `warp_nearest` (hand-written gathers: 4-6x faster
    on a CPU than the library, docs/performance.md, "The device crop's sampling") sample what
    `jax.scipy.ndimage.map_coordinates` samples at the same source pixels, crops reaching past
    the frame included (0 there): order 1 per channel to float32 rounding, order 0 exactly.
    The benchmark's summary compares and times both."""
    data = device_warp.crops(4, 64)
    args = (data["images"], data["maps"], data["m_image"], data["m_label"])
    hand = device_warp.warp_batch("hand", 64)(*args)
    library = device_warp.warp_batch("map_coordinates", 64)(*args)
    outside = (hand[0] == 0).all(-1)
    assert 0 < int(outside.sum()) < outside.size  # the 0 border is compared too
    # Pixel values 0-255: within 3e-5 of each other, but JAX 0.12's map_coordinates under the
    # suite's --xla_backend_optimization_level=0 moves by up to 0.0074 (hgmt's gathers do not).
    np.testing.assert_allclose(hand[0], library[0], atol=1e-2)
    assert float(jnp.abs(hand[0] - library[0]).max()) > 0  # two ways, not one
    assert hand[1].shape == (4, 16, 16) and jnp.array_equal(hand[1], library[1])
    # A 32 px crop is one that trains: an hourglass of depth 2 takes it (the config is checked
    # as training checks it).
    r = device_warp.benchmark(["--config.batch_size=2", "--config.image_size=32",
                               "--config.model.depth=2", "--steps=1", "--warmup=1", "--rounds=1"])
    assert (r["batch"], r["image_size"], r["label_size"]) == (2, 32, 8)
    assert r["differing_label_pixels"] == {"hand": 0, "map_coordinates": 0}
    assert r["max_abs_difference_frames"]["hand"] == 0
    assert 0 < r["max_abs_difference_frames"]["map_coordinates"] < 1e-2
    assert set(r["over_hand"]) == {"hand", "map_coordinates"} and r["over_hand"]["hand"] == 1


@pytest.mark.slow
def test_the_pool_benchmark_records_a_way_that_differs_and_times_it_all_the_same(monkeypatch):
    """A way whose values differ from `stacked`'s (crafted: its outputs doubled) is timed
    like the others; the summary says which ways equal `stacked`'s and by how much each
    differs."""
    monkeypatch.setitem(pool_backward.WAYS, "doubled",
                        lambda x: pool_backward.max_pool2(x) * 2)
    r = pool_backward.benchmark([*TINY, "--config.batch_size=2", "--steps=1", "--warmup=1",
                                 "--rounds=1"])
    assert r["equal"] == {"stacked": True, "first_index": True, "flax": True, "doubled": False}
    assert r["max_abs_difference"]["stacked"] == r["max_abs_difference"]["flax"] == 0.0
    assert r["max_abs_difference"]["doubled"] > 0
    assert set(r["median_ms"]) == {"stacked", "first_index", "flax", "doubled"}
    assert all(v > 0 for v in r["median_ms"].values())


def test_the_pools_largest_difference_keeps_a_nan_in_any_leaf():
    ones = np.ones(3, np.float32)
    assert pool_backward.max_abs_difference([ones, ones], [ones, ones]) == 0.0
    assert pool_backward.max_abs_difference([ones, ones + 2], [ones, ones]) == 2.0
    assert np.isnan(pool_backward.max_abs_difference([ones, ones * np.nan], [ones, ones]))


@pytest.mark.slow
def test_the_pool_benchmark_finds_every_pool_of_the_model():
    """The paper's pose2d network: the stem's pool and four per hourglass, two stacks."""
    config = cli.parse(lambda fv: None, ["--config.batch_size=8",
                                         "--config.model.dtype=bfloat16"], "").config
    shapes = pool_backward.pool_shapes(config)
    assert [s.shape for s in shapes] == [(8, 128, 128, 128)] + [
        (8, r, r, 256) for r in (64, 32, 16, 8)] * 2
    assert {s.dtype for s in shapes} == {jnp.dtype(jnp.bfloat16)}



def test_every_way_of_the_pool_benchmark_computes_its_forward():
    """The timed program returns the pools' outputs with the gradients, so a way whose
    backward does not read its forward's result (select-and-scatter) keeps its forward:
    the compiled program of each way holds a max reduction."""
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    g = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    for name, pool in pool_backward.WAYS.items():
        fn = pool_backward.pools_forward_backward(pool)
        outs, grads = fn([x], [g])
        assert jnp.array_equal(outs[0], pool_backward.WAYS["flax"](x)), name
        hlo = fn.lower([x], [g]).compile().as_text()
        assert "reduce-window" in hlo or "maximum" in hlo, name


@pytest.mark.slow
def test_step_dispatch_times_both_ways_over_the_whole_train_state(capsys):
    """One process, the 4 test devices, a tiny config of all four tasks, 3 calls a round, 2
    rounds: both ways have a positive time a round, the medians and the ratio are those of
    the rounds, the state's leaves are those of the config's train state, and the line is
    dated and names its commit."""
    from hgmt.models import create_model
    from hgmt.tasks import heads, parse_tasks
    from hgmt.training import steps

    config = cli.config_path("default")
    r = step_dispatch.benchmark([f"--config={config}", *TINY, "--calls=3", "--repeats=2",
                                 "--warmup=1"])
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == r
    assert (r["benchmark"], r["processes"], r["devices"], r["local_devices"]) == (
        "step_dispatch", 1, 4, 4)
    assert (r["calls"], r["repeats"], r["tasks"], r["stacks"]) == (
        3, 2, "pose2d+pose3d+depth+segm", 1)
    for way in step_dispatch.WAYS:
        assert len(r[f"{way}_ms_repeats"]) == 2, way
        assert all(np.isfinite(x) and x > 0 for x in r[f"{way}_ms_repeats"]), way
        assert r[f"{way}_ms"] == pytest.approx(np.median(r[f"{way}_ms_repeats"]), abs=1e-3)
        assert r[f"{way}_ms_by_process"] == [r[f"{way}_ms"]]
    assert r["ratio"] == pytest.approx(r["pmap_ms"] / r["jit_shard_map_ms"], abs=2e-3)
    parsed = cli.parse(cli.define_timing, [f"--config={config}", *TINY], "doc").config
    model = create_model(parsed.model, heads(parse_tasks(parsed.tasks)), axis_name="batch")
    shapes = jax.eval_shape(lambda key: steps.create_train_state(key, parsed, model),
                            jax.random.key(0))
    leaves = jax.tree.leaves(shapes)
    assert r["leaves"] == len(leaves) > 500
    assert r["state_mib_per_device"] == round(
        sum(x.size * x.dtype.itemsize for x in leaves) / 2**20, 1) > 0
    head = subprocess.run(["git", "-C", cli.REPO, "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    assert r["commit"] in (head, head + "+changes")
    assert r["date"] == datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")


def test_step_dispatch_reports_process_0_with_every_process_beside_it():
    """The line of a multi-process run is process 0's, each way's median of every process in
    process order beside it."""
    lines = [{"process": i, "processes": 2, "pmap_ms": 50.0 + i, "jit_shard_map_ms": 8.0 + i,
              "ratio": round((50.0 + i) / (8.0 + i), 3)} for i in range(2)]
    assert step_dispatch.combine(lines) == {
        "processes": 2, "pmap_ms": 50.0, "jit_shard_map_ms": 8.0, "ratio": 6.25,
        "pmap_ms_by_process": [50.0, 51.0], "jit_shard_map_ms_by_process": [8.0, 9.0]}


def test_the_trainer_benchmark_refuses_a_used_workdir(tmp_path):
    """An earlier run's checkpoint would be resumed and its event files read as this run's."""
    (tmp_path / "events.out.tfevents.1").write_text("")
    run = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "trainer_speed.py"),
                          f"--workdir={tmp_path}", "--config=configs/demo.py"], cwd=cli.REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and f"--workdir={tmp_path} is not empty" in run.stderr
