"""Where the train step's time goes: a JAX profiler trace of the compiled step, its XLA ops
grouped by kind, each kind's share of the op time and how close it runs to the device's limit.

    python3 benchmarks/profile_step.py --config.image_size=128 --config.batch_size=16 \\
        --config.model.features=128 [--trace_dir=DIR]

Kinds (benchmarks/xla_ops.py, from the compiled HLO): convolutions by role (forward, input
gradient, weight gradient; a cuDNN call names its role, otherwise shapes and metadata tell),
hgmt's 1x1 convolutions (matmuls) by the same roles, reductions (BatchNorm statistics, bias
gradients), elementwise fusions, transposes and copies, collectives; an op in a while's body
counts its trip count times where XLA states it, and once where the number of its runs is not
known (a while without a stated trip count, a conditional's branch), its FLOPs then also in
`gflop_per_step_runs_unknown`. For the convolutions and matmuls the achieved FLOP/s (their
multiply-adds from the HLO shapes over their time) is set against the measured matmul peak of
the device in the step's dtype (the line also gives the datasheet's,
`matmul_peak_spec_tflop_per_s`: train_step.SPEC_PEAK_GFLOP_PER_S); for the other kinds the
achieved bytes/s (operands read plus results written, from the HLO shapes) against a measured
streaming peak (one large elementwise pass). Works on a CPU's trace (XLA's thunks on the host
threads; concurrent ops make the op time exceed the step's wall time) and on a GPU's (the
kernels on the device's streams, attributed to their HLO op). On a device, `device_ms_per_step`
is the time of all its events and `ops_ms_per_step` the part attributed to an op: the kernels
XLA:GPU replays from a CUDA graph (its command buffers) carry no op name, so a GPU is profiled
with them off (XLA_FLAGS=--xla_gpu_enable_command_buffer=, as benchmarks/accelerator.sh does).

`--feed=trainer` profiles the trainer's own program (train_step.py --feed=trainer: with
config.augment_on "device", the crop and augmentation inside, fed one batch of config.dataset),
the step benchmarks/trainer_speed.py times; the default, `cropped`, is the step on a random
cropped batch. Prints one JSON line; open the trace in Perfetto (ui.perfetto.dev, the
perfetto_trace.json.gz under --trace_dir) for the timeline.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402
import train_step  # noqa: E402
import xla_ops  # noqa: E402
from cli import print_line  # noqa: E402


def kernel_shapes(params) -> set[tuple[int, ...]]:
    """Sorted non-1 dimensions of every parameter of rank >= 2 (convolution kernels and 1x1
    convolution matrices): what a weight gradient's result looks like."""
    return {tuple(sorted(d for d in np.shape(x) if d != 1))
            for x in jax.tree.leaves(params) if np.ndim(x) >= 2}


def stream_peak(reps: int = 10) -> float:
    """Measured bytes/s of one elementwise pass over a large float32 array, read and written
    in place (its buffer donated), on the default device: 256 MiB on a CPU, 2 GiB on an
    accelerator."""
    n = (64 if jax.default_backend() == "cpu" else 512) * 2**20
    f = jax.jit(lambda x: x * 0.5 + 1.0, donate_argnums=0)
    x = f(jnp.ones((n,), jnp.float32))
    x.block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        x = f(x)
    x.block_until_ready()
    return 2 * 4 * n * reps / (time.perf_counter() - t0)


def op_times(events: list[dict], module: str, ops: dict) -> dict[str, float]:
    """Total µs per HLO op of `module` in a trace's events. XLA marks each op's events (a CPU
    thunk, a GPU kernel) with args hlo_op and hlo_module; where a device process (a GPU or
    TPU) has them, only its events count, not the host's launches."""
    names = {e["pid"]: e["args"]["name"] for e in events
             if e.get("ph") == "M" and e.get("name") == "process_name"}
    timed = [e for e in events if e.get("ph") == "X" and e.get("args", {}).get("hlo_op") in ops]
    # The step's module by name; where the trace names it otherwise, the op names alone (only
    # the step runs while the trace is on).
    timed = [e for e in timed if e["args"].get("hlo_module", module) == module] or timed
    on_device = [e for e in timed if "/device:" in names.get(e["pid"], "")]
    per_op: collections.Counter = collections.Counter()
    for e in on_device or timed:
        per_op[e["args"]["hlo_op"]] += float(e["dur"])
    return dict(per_op)


def device_us(events: list[dict]) -> float | None:
    """Total µs of the events on a device process (a GPU's or TPU's kernels and copies, those
    no HLO op is named on included); None where the trace has no device process (a CPU)."""
    devices = {e["pid"] for e in events if e.get("ph") == "M"
               and e.get("name") == "process_name" and "/device:" in e["args"]["name"]}
    if not devices:
        return None
    return sum(float(e["dur"]) for e in events if e.get("ph") == "X" and e["pid"] in devices)


def summarize(per_op_us: dict[str, float], ops: dict, steps: int, matmul_peak: float,
              bytes_peak: float) -> dict:
    """Per kind: ms per step, share of the op time, and the achieved FLOP/s (kinds that
    compute: convolutions, matmuls) or bytes/s (the others) with its fraction of the peak."""
    kinds: dict[str, dict] = {}
    for name, us in per_op_us.items():
        k = kinds.setdefault(ops[name]["kind"], {"s": 0.0, "flops": 0.0, "bytes": 0.0, "ops": 0})
        k["s"] += us / 1e6 / steps
        k["flops"] += ops[name]["flops"]
        k["bytes"] += ops[name]["bytes"]
        k["ops"] += 1
    total = sum(k["s"] for k in kinds.values()) or float("nan")
    out = {}
    for kind, k in sorted(kinds.items(), key=lambda kv: -kv[1]["s"]):
        row = {"ms": round(1e3 * k["s"], 3), "share": round(k["s"] / total, 4), "ops": k["ops"]}
        if k["flops"]:
            rate = k["flops"] / k["s"]
            row.update(gflop=round(k["flops"] / 1e9, 3), tflop_per_s=round(rate / 1e12, 3),
                       of_matmul_peak=round(rate / matmul_peak, 3))
        else:
            rate = k["bytes"] / k["s"]
            row.update(gbytes=round(k["bytes"] / 1e9, 3), gbytes_per_s=round(rate / 1e9, 1),
                       of_stream_peak=round(rate / bytes_peak, 3))
        out[kind] = row
    return out


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_timing(fv, steps=5, warmup=2)
    flags.DEFINE_enum("feed", "cropped", ["cropped", "trainer"], "the step profiled: "
                      "train_step.py's on a random cropped batch, or the trainer's own program "
                      "and one batch of config.dataset (train_step.py --feed)", flag_values=fv)
    flags.DEFINE_string("trace_dir", None, "where the trace and the compiled program's HLO "
                        "text (step_hlo.txt.gz) go (default: a temporary folder)",
                        flag_values=fv)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    config = fv.config
    devices = train_step.step_devices(fv.feed)
    compiled, state, data, _, compile_s, flops, flops_from, cache = train_step.compiled_step(
        config, devices, fv.feed)
    for _ in range(fv.warmup):
        state, metrics = compiled(state, data)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(fv.steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - t0) / fv.steps
    trace_dir = fv.trace_dir or tempfile.mkdtemp(prefix="hgmt_trace_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(fv.steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events

    hlo = compiled.as_text()
    with gzip.open(os.path.join(trace_dir, "step_hlo.txt.gz"), "wt") as f:
        f.write(hlo)  # the program the trace's kernel names refer to, metadata included
    module = xla_ops.parse(hlo)
    # The program is one device's, the trace's op time every device's: its FLOPs and bytes
    # times the devices (as compiled_step's count), so that their rates are per device.
    ops = {name: {**op, "flops": op["flops"] * devices, "bytes": op["bytes"] * devices}
           for name, op in xla_ops.classify(
               module, kernel_shapes(jax.tree.map(lambda x: x[0], state.params))).items()}
    per_op = op_times(events, module.name, ops)
    dtype = jnp.bfloat16 if config.model.dtype == "bfloat16" else jnp.float32
    matmul_peak = train_step.matmul_peak(dtype, 1) * 1e9
    spec_peak = train_step.spec_peak(jax.local_devices()[0].device_kind, config.model.dtype)
    bytes_peak = stream_peak()
    kinds = summarize(per_op, ops, fv.steps, matmul_peak, bytes_peak)
    counted = sum(v["flops"] for v in ops.values())
    slowest = sorted(per_op.items(), key=lambda kv: -kv[1])[:10]
    device = device_us(events)
    result = {"benchmark": "profile_step", "backend": jax.default_backend(),
              "device": jax.local_devices()[0].device_kind, "devices": devices,
              **cli.describe(config),
              "feed": fv.feed, "step_ms": round(1e3 * step_s, 2), "compile_s": round(compile_s, 2),
              "compile_cache": cache,
              "ops_ms_per_step": round(sum(k["ms"] for k in kinds.values()), 2),
              "device_ms_per_step": (None if device is None
                                     else round(device / 1e3 / fv.steps, 2)),
              "ops_timed": len(per_op), "ops_in_program": len(ops),
              "matmul_peak_tflop_per_s": round(matmul_peak / 1e12, 3),
              "matmul_peak_spec_tflop_per_s": (None if spec_peak is None
                                               else round(spec_peak / 1e3, 1)),
              "stream_peak_gbytes_per_s": round(bytes_peak / 1e9, 1),
              "gflop_per_step_counted": round(counted / 1e9, 3),
              # the part of it in loops or branches run an unknown number of times, counted once
              "gflop_per_step_runs_unknown": round(sum(
                  v["flops"] for v in ops.values() if v["runs"] is None) / 1e9, 3),
              "gflop_per_step_xla": round(flops / 1e9, 3), "flops_from": flops_from,
              "kinds": kinds,
              "slowest_ops": {f"{n} [{ops[n]['kind']}]": round(us / 1e3 / fv.steps, 3)
                              for n, us in slowest},
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "trace": path}
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
