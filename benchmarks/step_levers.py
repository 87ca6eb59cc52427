"""Changes that may move the train step's speed on a GPU, each measured against none.

    python3 benchmarks/step_levers.py [--levers=none,batch_256,...] [--timeout_s=300] -- \\
        --config=configs/default.py:tasks=pose2d --config.batch_size=128 --steps=20 --warmup=3

A lever is one change: XLA flags (added to XLA_FLAGS) or config overrides (after the ones
given after `--`, so they win). Each lever is measured by benchmarks/train_step.py in its own
process (XLA reads its flags once, at start; the process's compile time is its first
compilation), in the order given. Prints train_step.py's JSON line for each with its "lever"
and "xla_flags", a line with "error" for a lever whose process failed or ran past --timeout_s
(the others still run), then one summary line: per lever, its img/s, MFU and compile time over
the first lever's (`none` by default). The XLA flags are GPU flags: on a CPU they are accepted
and change nothing. `batch_norm_device` changes the step only on several devices: it runs
when named, with `--devices=N` after `--`.
"""

from __future__ import annotations

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import fresh_process  # noqa: E402
from absl import flags  # noqa: E402
from cli import print_line  # noqa: E402

from hgmt import cli  # noqa: E402
from hgmt.choices import not_some_of  # noqa: E402

# name -> (XLA flags, config overrides, what it changes). With hgmt's ops (`config.model.ops`
# "custom", hgmt/models/hourglass.py) the 1x1 convolutions are matmuls, which XLA:GPU compiles
# as Triton GEMM fusions by default.
LEVERS: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "none": ((), (), "the step as configured"),
    "batch_256": ((), ("--config.batch_size=256",), "batch 256"),
    "cublas_gemm": (("--xla_gpu_enable_triton_gemm=false",), (),
                    "matmuls by cuBLAS instead of Triton GEMM fusions"),
    "cudnn_gemm_fusion": (("--xla_gpu_cudnn_gemm_fusion_level=2",), (),
                          "matmul fusions by cuDNN"),
    "graphs_small": (("--xla_gpu_graph_min_graph_size=1",), (),
                     "CUDA graphs also for runs of fewer than the default 5 kernels"),
    "triton_exhaustive": (("--xla_gpu_exhaustive_tiling_search=true",), (),
                          "Triton GEMM autotuning over every tiling (the longest compile)"),
    "no_command_buffers": (("--xla_gpu_enable_command_buffer=",), (),
                           "no CUDA graphs, each kernel launched alone (as the profile runs)"),
    "batch_norm_device": ((), ("--config.model.batch_norm_stats=device",),
                          "BatchNorm's statistics over each device's share, no all-reduce a "
                          "layer (the same statistics as none on one device)"),
    "flax_ops": ((), ("--config.model.ops=flax",),
                 "Flax's own ops instead of hgmt's CPU ones (1x1 convolutions as convolutions, "
                 "nn.max_pool, nn.BatchNorm)"),
}


def run_lever(name: str, args: list[str], timeout_s: float) -> dict:
    """One train_step.py measurement with lever `name` in a fresh process -> its JSON line with
    "lever" and "xla_flags", or {"lever", "xla_flags", "error"} when the process failed."""
    xla, overrides, _ = LEVERS[name]
    xla_flags = " ".join([os.environ.get("XLA_FLAGS", ""), *xla]).strip()
    head = {"lever": name, "xla_flags": xla_flags}
    try:
        return {**head, **fresh_process.run("train_step.py", [*args, *overrides],
                                            {**os.environ, "XLA_FLAGS": xla_flags}, timeout_s)}
    except subprocess.TimeoutExpired:
        return {**head, "error": f"ran past --timeout_s={timeout_s:g}"}
    except fresh_process.Failed as failed:
        return {**head, "error": f"exit {failed.returncode}: {failed.stderr.strip()[-800:]}"}


def summarize(results: list[dict]) -> dict:
    """{"summary", "over": the first lever, "levers": {lever: {img_per_s, mfu, compile_s: over
    the first's}}} of the levers measured (those with "error" are left out)."""
    measured = [r for r in results if "error" not in r]
    if not measured:
        return {"summary": "step_levers", "over": None, "levers": {}}
    base = measured[0]
    return {"summary": "step_levers", "over": base["lever"], "levers": {
        r["lever"]: {key: round(r[key] / base[key], 3) for key in ("img_per_s", "mfu",
                                                                     "compile_s")}
        for r in measured}}


# Levers that change nothing with the step on one device: measured only when named, with the
# step on several (train_step.py's --devices).
SEVERAL_DEVICES = ("batch_norm_device",)


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("levers", [k for k in LEVERS if k not in SEVERAL_DEVICES],
                      "levers to measure, in this order (by default all but those for several "
                      f"devices, {', '.join(SEVERAL_DEVICES)}): "
                      + ", ".join(f"{k} ({v[2]})" for k, v in LEVERS.items()), flag_values=fv)
    flags.DEFINE_float("timeout_s", 300, "seconds one lever's process may take",
                       lower_bound=1, flag_values=fv)


def benchmark(argv: list[str] | None = None) -> dict:
    """Arguments after `--` go to train_step.py (its config and overrides, --steps, ...)."""
    args, passed = cli.parse(_define_flags, argv, __doc__,
                             positional="--")
    unknown = [name for name in args.levers if name not in LEVERS]
    if unknown:
        given = f"--levers={','.join(args.levers)}"
        raise SystemExit(f"error: {not_some_of(given, 'lever', unknown, LEVERS)}")
    results = []
    for name in args.levers:
        result = run_lever(name, passed, args.timeout_s)
        print_line(result)
        results.append(result)
    summary = summarize(results)
    print_line(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
