"""Steady-state training speed of the real hgmt train step (`hgmt.training.steps.train_step`
under jax.pmap, or as the trainer runs it: `--feed=trainer`).

    python3 benchmarks/train_step.py --config=configs/default.py:tasks=pose2d \\
        --config.image_size=128 --config.batch_size=16 --config.model.features=128

Runs the step that training runs (forward, targets, losses, backward, gradient pmean, RMSprop
update, BatchNorm statistics) on a fixed random batch already on the devices, so the figure is
the model's, not the input pipeline's (benchmarks/input_pipeline.py measures that). Prints one
JSON line: img/s after compilation and warm-up, compile time, parameter count, GFLOP per image
(counted as `compiled_step` says; `flops_from` names the count), achieved GFLOP/s, and MFU
two ways: `mfu`, achieved over a matmul peak measured in the process (a large jnp.dot of
matrices of ones in the same dtype on the same devices), and `mfu_spec`, achieved over the
device's dense peak from its datasheet (`SPEC_PEAK_GFLOP_PER_S`, by JAX's device kind and the
dtype; null where the table has none, e.g. on a CPU).

The config (`--config`, default the paper's network for pose2d, with `--config.x=y` overrides:
benchmarks/cli.py) gives the tasks, the model, `image_size`, `batch_size` and the loss weights
and options. `--devices=N` splits the batch over N local devices (default 1). On a CPU, one
XLA device uses every core; with XLA_FLAGS=--xla_force_host_platform_device_count=N it is split
into N virtual devices, which measured faster at 2 x 128 @ 128 on 2 cores (docs/performance.md,
"Train step against PyTorch, CPU": its 1- and 2-device rows of that config).

`--feed=trainer` times the trainer's own program instead (`hgmt.training.steps.jitted_train_step`
on every local device, `hgmt.devices.spmd`, fed one batch of config.dataset read here; with
config.augment_on "device", auto's choice on an accelerator, decoded records that the step
crops and augments):
`benchmarks/trainer_speed.py` compares the trainer with it, and the trainer then loads the
step from the persistent compilation cache instead of compiling it again.
"""

from __future__ import annotations

import collections
import functools
import platform
import sys
import time
from collections.abc import Sequence

import cli
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import xla_ops
from absl import flags
from cli import print_line

from hgmt import cores
from hgmt import devices as hgmt_devices
from hgmt.data import builds, prefetch
from hgmt.models import create_model, resolve_ops, resolve_stream_mode
from hgmt.models.summary import first_flop_count
from hgmt.tasks import check_loss_options, check_loss_weights, heads, parse_tasks
from hgmt.training import config_check, steps, train_data


def random_batch(batch: int, res: int, seed: int = 0) -> dict:
    """A batch with the structure, dtypes and value ranges of input_pipeline's training
    crops."""
    rng = np.random.default_rng(seed)
    r = res // 4
    joints3d = rng.normal([0, 0, 5], [0.4, 0.5, 0.2], (batch, 16, 3)).astype(np.float32)
    crop = np.tile(np.array([[r / 200, 0, r / 2 - 160 * r / 200],
                             [0, r / 200, r / 2 - 120 * r / 200]], np.float32), (batch, 1, 1))
    return {
        "image": rng.integers(0, 256, (batch, res, res, 3), dtype=np.uint8),
        "joints2d": rng.uniform(0, r - 1, (batch, 16, 2)).astype(np.float32),
        "visible": (rng.uniform(size=(batch, 16)) < 0.9).astype(np.float32),
        "joints3d": joints3d,
        "pelvis_depth": joints3d[:, 0, 2].copy(),
        "segm": rng.integers(0, 15, (batch, r, r)).astype(np.uint8),
        # the builder's depth classes: 0 background, 1..19 the bins around the pelvis
        "depth_class": np.where(rng.uniform(size=(batch, r, r)) < 0.3,
                                rng.integers(1, 20, (batch, r, r)), 0).astype(np.uint8),
        "crop": crop,
    }


def matmul_peak(dtype, devices: int, n: int | None = None, reps: int = 10) -> float:
    """Measured GFLOP/s of an n x n x n matmul on `devices` devices (the MFU denominator);
    n = 2048 on a CPU, 8192 on an accelerator (large enough to reach its peak)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    f = jax.pmap(lambda a, b: a @ b, devices=jax.local_devices()[:devices])
    # The operands placed as the pmapped call places its outputs (as the step's state is), so
    # that the timed calls do not move them to the devices each time.
    a = f(*[jnp.ones((devices, n, n), dtype)] * 2)
    f(a, a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a, a)
    out.block_until_ready()
    return 2 * n**3 * devices * reps / (time.perf_counter() - t0) / 1e9


# Dense (no 2:4 sparsity) bfloat16 tensor-core peaks in GFLOP/s by JAX's device_kind: the
# conventional MFU denominator. H100 SXM5: 528 tensor cores x 1024 FLOP a clock x 1.83 GHz =
# 989.4 TFLOP/s (NVIDIA H100 Tensor Core GPU Architecture whitepaper, GTC22, its table of
# H100 SXM5 peaks: BF16 Tensor 989.4, 1978.9 with sparsity; the arithmetic as in
# https://glennklockwood.com/garden/peak-FLOPS). The H200 SXM is the same GH100 part with
# HBM3e: the same 989.4 (NVIDIA's H200 datasheet: BF16 Tensor Core 1,979 TFLOPS with
# sparsity).
SPEC_PEAK_GFLOP_PER_S = {
    ("NVIDIA H200", "bfloat16"): 989_400.0,
    ("NVIDIA H100 80GB HBM3", "bfloat16"): 989_400.0,  # the H100 SXM5
}


def spec_peak(device_kind: str, dtype: str) -> float | None:
    """The datasheet's dense peak in GFLOP/s of `device_kind` (JAX's name of the device) for
    matmuls in `dtype`; None where the table has none (a CPU, an unlisted device or dtype)."""
    return SPEC_PEAK_GFLOP_PER_S.get((device_kind, dtype))


def mfu_fields(flops: float, step_s: float, measured_peak: float, device_kind: str,
               dtype: str, devices: int = 1) -> dict:
    """The JSON fields of the step's FLOP rate on `devices` devices: achieved GFLOP/s, `mfu`
    over the peak measured in the process (`matmul_peak` on those devices, GFLOP/s) and
    `mfu_spec` over the datasheet's (`spec_peak` x devices; None where unknown)."""
    achieved = flops / step_s / 1e9
    spec = spec_peak(device_kind, dtype)
    spec = spec * devices if spec else None
    return {"gflop_per_s": round(achieved, 1), "matmul_peak_gflop_per_s": round(measured_peak, 1),
            "mfu": round(achieved / measured_peak, 3), "peak_spec_gflop_per_s": spec,
            "mfu_spec": round(achieved / spec, 3) if spec else None}


def step_function(config: ml_collections.ConfigDict):
    """`steps.train_step` with the config's loss weights and options, as the trainer runs it."""
    tasks = parse_tasks(config.tasks)
    return functools.partial(steps.train_step, weights=check_loss_weights(config, tasks),
                             options=check_loss_options(config, tasks))


def initial_state(config: ml_collections.ConfigDict, tasks: tuple[str, ...],
                  seed: int) -> tuple[steps.TrainState, int, float]:
    """The train state of `config`'s model for `tasks` from `seed`, on the host -> (state,
    parameter count, seconds to initialise, compilations or loads from the cache included)."""
    model = create_model(config.model, heads(tasks), axis_name="batch")
    t0 = time.perf_counter()
    state = steps.create_train_state(jax.random.key(seed), config, model)
    init_s = time.perf_counter() - t0
    return state, int(sum(x.size for x in jax.tree.leaves(state.params))), init_s


def placed_step(config: ml_collections.ConfigDict, devices: int = 1) -> tuple:
    """The pmapped train step of `config` for `devices` local devices, not yet compiled,
    with its replicated initial state and a random batch of `config.batch_size` at
    `config.image_size` on them: (step, state, data, params, seconds to initialise the
    parameters, their compilation or loads from the cache included)."""
    batch, res = config.batch_size, config.image_size
    if batch % devices:
        raise ValueError(f"config.batch_size={batch} must be divisible by --devices={devices}")
    state, params, init_s = initial_state(config, parse_tasks(config.tasks), seed=0)
    devs = jax.local_devices()[:devices]
    state = flax.jax_utils.replicate(state, devs)
    host = random_batch(batch, res)
    data = next(flax.jax_utils.prefetch_to_device(iter([jax.tree.map(
        lambda x: x.reshape((devices, -1) + x.shape[1:]), host)]), 1, devs))
    step = jax.pmap(step_function(config), axis_name="batch", devices=devs,
                    donate_argnums=(0,))
    return step, state, data, params, init_s


def compile_noting_cache(lowered) -> tuple:
    """`lowered.compile()` -> (compiled, what JAX's persistent compilation cache did: "hit" (a
    load, not a compilation), "miss" (compiled) or "off" (no cache folder set)). Meant for a
    process's first compilation of a program: a repeat can be answered by JAX's in-memory
    caches, which raise no cache event."""
    events = collections.Counter()

    def count(event: str, **_) -> None:
        events[event] += 1

    jax.monitoring.register_event_listener(count)
    try:
        compiled = lowered.compile()
    finally:
        jax.monitoring.unregister_event_listener(count)
    if events["/jax/compilation_cache/cache_hits"]:
        return compiled, "hit"
    return compiled, "miss" if jax.config.jax_compilation_cache_dir else "off"


def hlo_shape_flops(hlo: str) -> dict:
    """{"flops": 2 x the multiply-adds of the convolutions and matmuls of the compiled
    program `hlo` (XLA's HLO text), from their shapes, a while's body times its trip count},
    or {} where it has none. Where some of them run an unknown number of times (a while whose
    trip count XLA does not state, a conditional's branch), they count once and
    "flops_runs_unknown" gives their part of the count."""
    ops = xla_ops.classify(xla_ops.parse(hlo), set())
    flops = sum(v["flops"] for v in ops.values())
    unknown = sum(v["flops"] for v in ops.values() if v["runs"] is None)
    return {"flops": flops, **({"flops_runs_unknown": unknown} if unknown else {})} if flops else {}


def trainer_placed_step(config: ml_collections.ConfigDict) -> tuple:
    """The trainer's own step and input, as `placed_step` gives them: the trainer's step,
    `hgmt.training.steps.jitted_train_step` (its loss weights and options; the crop and
    augmentation inside where config.augment_on puts them there) on every local device, its
    initial state placed as the trainer places it, and one batch of the trainer's loader of
    config.dataset's training split (read here, in this process) on the devices. The program
    is the trainer's, so the two share their entry in a persistent compilation cache."""
    tasks, weights, options = config_check.check_config(config)
    prepare = train_data.augmentation(config, tasks)
    source = builds.open_split(config.dataset, config.data_dir, "train")
    batch = next(iter(train_data.train_loader(config, source, tasks, prepare, worker_count=0)))
    batch.pop("damaged", None)  # as the loop's damage log takes it
    state, params, init_s = initial_state(config, tasks, seed=config.seed)
    data = next(prefetch.prefetch_to_device(iter([batch]), 1))
    step = steps.jitted_train_step(weights, options, prepare)
    return step, hgmt_devices.replicate(state), data, params, init_s


def step_devices(feed: str, devices: int = 1) -> int:
    """How many local devices the step of `feed` runs on: `devices` for "cropped"; every local
    device for "trainer" (the trainer's step), where a `devices` other than 1 or that number
    is an error."""
    if feed != "trainer":
        return devices
    if devices not in (1, jax.local_device_count()):
        raise ValueError(f"--devices={devices} with --feed=trainer: the trainer's step runs "
                         f"on every local device ({jax.local_device_count()})")
    return jax.local_device_count()


def compiled_step(config: ml_collections.ConfigDict, devices: int = 1,
                  feed: str = "cropped") -> tuple:
    """`placed_step`'s step (`feed` "cropped") or `trainer_placed_step`'s ("trainer") compiled:
    (compiled, state, data, params, compile seconds, FLOPs per step on all the devices it runs
    on (`step_devices`), where the FLOPs were counted, the compilation cache's answer
    (`compile_noting_cache`)). FLOPs come from XLA's cost analysis of the lowered (pre-backend)
    program ("lowered"). Where the backend gives none (JAX's GPU plugin: jax 0.11.2 on an
    H200), they are the convolutions and matmuls of the compiled program counted from their HLO
    shapes ("hlo-shapes", `xla_ops`; close to the lowered count on a CPU, whose elementwise
    FLOPs it leaves out: docs/performance.md, "Measured on an H200, 2026-12-04, first
    run", gives both counts of the paper's step); XLA's count of the compiled program is
    the last resort ("compiled": after compilation a GPU's convolutions are cuDNN calls it
    does not count). An analysis that fails is skipped (`first_flop_count`,
    hgmt.models.summary's, which counts its forward pass from the lowered program alone). Both
    of XLA's analyses count a while's body once whatever its trip count (the hlo-shapes count
    multiplies it: `hlo_shape_flops`); the step has no while."""
    devices = step_devices(feed, devices)
    step, state, data, params, _ = (trainer_placed_step(config) if feed == "trainer"
                                    else placed_step(config, devices))
    t0 = time.perf_counter()
    lowered = step.lower(state, data)
    compiled, cache = compile_noting_cache(lowered)
    compile_s = time.perf_counter() - t0
    flops, source = first_flop_count((
        ("lowered", lowered.cost_analysis),
        ("hlo-shapes", lambda: hlo_shape_flops(compiled.as_text())),
        ("compiled", compiled.cost_analysis)))
    # the count is of the per-device program: times the devices that run it
    return compiled, state, data, params, compile_s, flops * devices, source, cache


def measure(config: ml_collections.ConfigDict, steps: int = 5, warmup: int = 2,
            devices: int = 1, feed: str = "cropped") -> dict:
    """Compiles and times the train step of `config` -> the JSON line's fields. `feed`:
    "cropped" (a random cropped batch on `devices` devices) or "trainer" (the trainer's own
    program and one batch of its data, on every local device: `trainer_placed_step`)."""
    devices = step_devices(feed, devices)
    compiled, state, data, params, compile_s, flops, flops_from, cache = compiled_step(
        config, devices, feed)

    for _ in range(warmup):
        state, metrics = compiled(state, data)
    jax.block_until_ready(state)
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready((state, metrics))
    step_s = (time.perf_counter() - t0) / steps
    loss = float(jax.device_get(metrics["loss/total"])[0])
    if not np.isfinite(loss):
        raise FloatingPointError(f"benchmark step produced loss {loss}")

    stats = jax.local_devices()[0].memory_stats() or {}  # None on CPU
    peak_mem = stats.get("peak_bytes_in_use")
    dtype = config.model.dtype
    peak = matmul_peak(jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, devices)
    kind = jax.local_devices()[0].device_kind
    batch = config.batch_size
    return {
        "impl": "jax", "jax": jax.__version__, "backend": jax.default_backend(),
        "device": kind, "devices": devices,
        "cpus": cores.usable_cores(), "machine": platform.machine(), **cli.describe(config),
        "feed": feed,
        "params": params,
        "stream_mode": resolve_stream_mode(config.model.get("stream_mode", "auto")),
        "ops": resolve_ops(config.model.get("ops", "auto")),
        "batch_norm_stats": config.model.get("batch_norm_stats", "global"),
        "compile_s": round(compile_s, 2), "compile_cache": cache, "step_s": round(step_s, 4),
        "img_per_s": round(batch / step_s, 2),
        "gflop_per_img": round(flops / batch / 1e9, 3), "flops_from": flops_from,
        **mfu_fields(flops, step_s, peak, kind, dtype, devices), "loss": round(loss, 5),
        "peak_device_gib": round(peak_mem / 2**30, 2) if peak_mem else None,
    }


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_timing(fv)
    flags.DEFINE_integer("devices", 1, "local devices to split the batch over",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_enum("feed", "cropped", ["cropped", "trainer"], "what the step takes: a "
                      "random cropped batch, or the trainer's own program and one batch of "
                      "config.dataset (with config.augment_on's crop inside the step where it "
                      "puts it there), on every local device", flag_values=fv)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    result = measure(fv.config, fv.steps, fv.warmup, fv.devices, fv.feed)
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
