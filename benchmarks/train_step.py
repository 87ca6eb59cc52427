"""Steady-state training speed of the real hgmt train step (`hgmt.training.steps.train_step`
under pmap).

    python3 benchmarks/train_step.py --stacks 2 --features 128 --res 128 --batch 16 \
        --tasks pose2d --dtype float32

Runs the step that training runs (forward, targets, losses, backward, gradient pmean, RMSprop
update, BatchNorm statistics) on a fixed random batch already on the devices, so the figure is
the model's, not the input pipeline's (benchmarks/input_pipeline.py measures that). Prints one
JSON line: img/s after compilation and warm-up, compile time, parameter count, GFLOP per image
from XLA's cost analysis of the compiled step, achieved GFLOP/s, and MFU: achieved over a
measured matmul peak (a large jnp.dot in the same dtype on the same devices).

`--devices N` splits the batch over N local devices (default 1). On a CPU, one XLA device uses
every core; with XLA_FLAGS=--xla_force_host_platform_device_count=N it is split into N virtual
devices, which measured ~10 % faster at 2 x 128 @ 128 on 2 cores (README, Performance).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time

import cli
import flax
import jax
import jax.numpy as jnp
import numpy as np

from configs.common import base_config
from hgmt.models import create_model
from hgmt.tasks import heads, parse_tasks
from hgmt.training import steps


def random_batch(batch: int, res: int, seed: int = 0) -> dict:
    """A batch with the structure and value ranges of input_pipeline's crops."""
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
        "segm": rng.integers(0, 15, (batch, r, r)).astype(np.int32),
        "depth": np.where(rng.uniform(size=(batch, r, r)) < 0.3,
                          rng.normal(5, 0.2, (batch, r, r)), 0).astype(np.float32),
        "crop": crop,
    }


def matmul_peak(dtype, devices: int, n: int | None = None, reps: int = 10) -> float:
    """Measured GFLOP/s of an n x n x n matmul on `devices` devices (the MFU denominator);
    n = 2048 on a CPU, 8192 on an accelerator (large enough to reach its peak)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    f = jax.pmap(lambda a, b: a @ b, devices=jax.local_devices()[:devices])
    a = jnp.ones((devices, n, n), dtype)
    f(a, a).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(reps):
        out = f(a, a)
    out.block_until_ready()
    return 2 * n**3 * devices * reps / (time.perf_counter() - t0) / 1e9


def cpu_cost_analysis(config, state, data) -> dict:
    """XLA's cost analysis of one device's train step (replicated `state`, sharded `data`)
    lowered for the CPU: the program before any backend's optimisation, on any host."""
    one = jax.tree.map(lambda x: x[:1], (state, data))  # one device's share, device axis kept
    step = jax.vmap(functools.partial(steps.train_step, weights=dict(config.loss_weights)),
                    axis_name="batch")
    return jax.jit(step).trace(*one).lower(lowering_platforms=("cpu",)).cost_analysis()


def compiled_step(stacks: int, features: int, res: int, batch: int, tasks: str, dtype: str,
                  devices: int = 1, depth: int = 4) -> tuple:
    """The train step of this configuration compiled for `devices` local devices, with its
    replicated initial state and a random batch on them: (compiled, state, data, params,
    compile seconds, FLOPs per step, where the FLOPs were counted). FLOPs come from XLA's cost
    analysis of the lowered (pre-backend) program: after compilation a GPU's convolutions are
    cuDNN calls that the analysis does not count. Where the backend gives no lowered analysis
    (jax 0.11.2 on an H200), the same per-device step is lowered for the CPU ("cpu-lowered"),
    whose count is the same program's; the compiled count is the last resort ("compiled",
    which undercounts convolutions on a GPU)."""
    if batch % devices:
        raise ValueError(f"--batch={batch} must be divisible by --devices={devices}")
    names = parse_tasks(tasks)
    config = base_config("+".join(names))
    config.image_size, config.batch_size = res, batch
    config.model.num_stacks, config.model.features = stacks, features
    config.model.depth, config.model.dtype = depth, dtype
    model = create_model(config.model, heads(names), axis_name="batch")
    state = steps.create_train_state(jax.random.key(0), config, model)
    params = sum(x.size for x in jax.tree.leaves(state.params))
    devs = jax.local_devices()[:devices]
    state = flax.jax_utils.replicate(state, devs)
    host = random_batch(batch, res)
    data = next(flax.jax_utils.prefetch_to_device(iter([jax.tree.map(
        lambda x: x.reshape((devices, -1) + x.shape[1:]), host)]), 1, devs))
    step = jax.pmap(functools.partial(steps.train_step, weights=dict(config.loss_weights)),
                    axis_name="batch", devices=devs, donate_argnums=(0,))
    t0 = time.perf_counter()
    lowered = step.lower(state, data)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops, source = float("nan"), "none"
    for name, analysis in (("lowered", lowered.cost_analysis),
                           ("cpu-lowered", lambda: cpu_cost_analysis(config, state, data)),
                           ("compiled", compiled.cost_analysis)):
        cost = analysis()
        cost = cost[0] if isinstance(cost, list | tuple) else cost
        if cost and "flops" in cost:
            flops, source = float(cost["flops"]) * devices, name  # per-device program
            break
    return compiled, state, data, int(params), compile_s, flops, source


def measure(stacks: int, features: int, res: int, batch: int, tasks: str, dtype: str,
            steps: int = 5, warmup: int = 2, devices: int = 1, depth: int = 4) -> dict:
    compiled, state, data, params, compile_s, flops, flops_from = compiled_step(
        stacks, features, res, batch, tasks, dtype, devices, depth)

    for _ in range(warmup):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
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
    peak = matmul_peak(jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, devices)
    achieved = flops / step_s / 1e9
    return {
        "impl": "jax", "jax": jax.__version__, "backend": jax.default_backend(),
        "device": jax.local_devices()[0].device_kind, "devices": devices, "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "stacks": stacks, "features": features, "res": res, "batch": batch,
        "tasks": "+".join(parse_tasks(tasks)), "dtype": dtype, "params": params,
        "compile_s": round(compile_s, 2), "step_s": round(step_s, 4),
        "img_per_s": round(batch / step_s, 2),
        "gflop_per_img": round(flops / batch / 1e9, 3), "flops_from": flops_from,
        "gflop_per_s": round(achieved, 1), "matmul_peak_gflop_per_s": round(peak, 1),
        "mfu": round(achieved / peak, 3), "loss": round(loss, 5),
        "peak_device_gib": round(peak_mem / 2**30, 2) if peak_mem else None,
    }


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=1)
    a = p.parse_args(argv)
    result = measure(a.stacks, a.features, a.res, a.batch, a.tasks, a.dtype, a.steps,
                     a.warmup, a.devices)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
