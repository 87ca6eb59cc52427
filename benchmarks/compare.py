"""hgmt (JAX) against the plain PyTorch network, back to back on the same configs, PyTorch
eager and, with --compile, compiled.

    python3 benchmarks/compare.py                       # the three CPU configs of the docs
    python3 benchmarks/compare.py --variants=image_size=128,batch_size=16,model.features=128 \\
        --repeats=3 --compile [--config=... --config.model.dtype=bfloat16]

Each variant is the base config (`--config` and its `--config.x=y` overrides, benchmarks/cli.py)
with the variant's `field=value` overrides. Each measurement runs in its own process
(benchmarks/train_step.py, benchmarks/torch_reference.py eager, and with --compile
torch_reference.py --compile), alternating for --repeats rounds; the best of the rounds is
kept, the machines being noisy. The compiled PyTorch runs in --compile_mode (default
max-autotune); when that fails or does not finish within --compile_timeout seconds it is rerun
in the default mode, and the line says which mode was measured (`torch_compile_mode`) and why
the other was left: it ran out of time (`torch_compile_timed_out`) or failed
(`torch_compile_failed`, `torch_compile_error`: its exit status and last line of stderr).
Prints one JSON line per variant with all results and the ratios of img/s, then one summary
line with the multi-task overhead (the 4-task step time over the 1-task one at the same size,
per implementation). Needs the `bench` extra.

`--from_lines=FILE` measures nothing: it prints the ratio line ({"benchmark": "hgmt_over_torch"})
of one config's measurements already taken, the JSON lines in FILE of train_step.py on a random
cropped batch (its default feed, the batch PyTorch's reference also trains on) and of
torch_reference.py eager and compiled, as benchmarks/accelerator.sh writes them config by config
in its `step` and `torch` parts. The trainer's own program (train_step.py --feed=trainer, the
crop inside the step) is not compared: the reference has no crop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence

import cli
import fresh_process
from absl import flags
from cli import print_line

from hgmt.tasks import TASKS, parse_tasks

DEFAULT_VARIANTS = ("model.features=128,image_size=128,batch_size=16",
                    "image_size=256,batch_size=8",
                    "model.features=128,image_size=128,batch_size=16,tasks=all")


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("variants", list(DEFAULT_VARIANTS),
                              "comma-separated field=value overrides of the base config, one "
                              "variant per flag", flag_values=fv)
    flags.DEFINE_integer("steps", 5, "timed steps of each measurement", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("repeats", 1, "rounds; the best of each implementation is kept",
                         flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("jax_devices", 1, "pmap the JAX step over this many virtual CPU "
                         "devices (CPU only)", flag_values=fv, lower_bound=1)
    flags.DEFINE_bool("compile", False, "also measure torch.compile", flag_values=fv)
    flags.DEFINE_enum("compile_mode", "max-autotune", cli.COMPILE_MODES,
                      "torch.compile mode tried first", flag_values=fv)
    flags.DEFINE_string("from_lines", None, "measure nothing: the ratio line of the "
                        "train_step.py (cropped feed) and torch_reference.py JSON lines of one "
                        "config in this file", flag_values=fv)
    flags.DEFINE_integer("compile_timeout", 600, "seconds the compiled PyTorch run may take "
                         "in --compile_mode before it is rerun in the default mode",
                         flag_values=fv, lower_bound=1)


def variant_overrides(spec: str) -> list[str]:
    """'image_size=128,tasks=all' -> ['--config.image_size=128', '--config.tasks=all']."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [s for s in items if "=" not in s]
    if bad or not items:
        raise SystemExit(f"error: --variants={spec}: give comma-separated field=value "
                         f"overrides of the config, e.g. image_size=128,batch_size=16")
    return [f"--config.{s}" for s in items]


def run(script: str, config_args: list[str], steps: int, extra: tuple[str, ...] = (),
        devices: int = 1, timeout: float | None = None) -> dict | None:
    """One measurement in its own process -> its JSON line; None when it ran out of
    `timeout` seconds."""
    args = [*config_args, f"--steps={steps}", *extra]
    env = dict(os.environ)
    if devices > 1:  # split the CPU into devices (pmap over them), as for training on a CPU
        args.append(f"--devices={devices}")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={devices}")
    try:
        return fresh_process.run(script, args, env, timeout)
    except subprocess.TimeoutExpired:
        return None


def compiled_torch(config_args: list[str], steps: int, mode: str, timeout: float) -> dict:
    """torch_reference.py --compile in `mode`, else (out of `timeout` seconds, or failed, in a
    mode other than the default) in the default mode. The result says why it fell back:
    `compile_timed_out`, `compile_failed` with `compile_error` (the exit status and the last
    line of stderr), and `compile_mode_tried`."""
    try:
        result = run("torch_reference.py", config_args, steps,
                     ("--compile", f"--compile_mode={mode}"), timeout=timeout)
    except fresh_process.Failed as e:
        if mode == "default":  # no other mode to fall back to
            raise
        last = [line for line in e.stderr.splitlines() if line.strip()][-1:]
        why = {"compile_timed_out": False, "compile_failed": True,
               "compile_error": f"exit {e.returncode}: {last[0] if last else '(no stderr)'}"}
    else:
        if result is not None:
            return {**result, "compile_timed_out": False, "compile_failed": False}
        why = {"compile_timed_out": True, "compile_failed": False,
               "compile_timeout_s": timeout}
    result = run("torch_reference.py", config_args, steps, ("--compile", "--compile_mode=default"))
    return {**result, **why, "compile_mode_tried": mode}


GOAL_OVER_TORCH_COMPILED = 1.5  # docs/performance.md, "On a GPU"


def ratio_line(lines: Sequence[dict]) -> dict:
    """The ratio line of one config's measurements: hgmt's img/s (the last train_step.py line
    with the cropped feed) over the PyTorch reference's, eager and compiled (the last
    torch_reference.py line of each); a ratio whose two sides are not both there is null."""
    def last(match) -> dict | None:
        found = [x for x in lines if match(x)]
        return found[-1] if found else None

    jx = last(lambda x: x.get("impl") == "jax" and x.get("feed", "cropped") == "cropped")
    eager = last(lambda x: x.get("impl") == "torch" and x.get("compile_mode") == "eager")
    compiled = last(lambda x: x.get("impl") == "torch" and x.get("compile_mode") != "eager")
    first = jx or eager or compiled
    if first is None:
        raise ValueError("no train_step.py or torch_reference.py line to compare")

    def ratio(torch: dict | None) -> float | None:
        return round(jx["img_per_s"] / torch["img_per_s"], 3) if jx and torch else None

    def field(line: dict | None, key: str):
        return None if line is None else line.get(key)

    return {"benchmark": "hgmt_over_torch",
            **{k: first[k] for k in ("stacks", "features", "res", "batch", "tasks", "dtype")},
            "hgmt_img_per_s": field(jx, "img_per_s"), "hgmt_feed": field(jx, "feed"),
            "torch_img_per_s": field(eager, "img_per_s"),
            "torch_compiled_img_per_s": field(compiled, "img_per_s"),
            "torch_compile_mode": field(compiled, "compile_mode"),
            "same_params": len({x["params"] for x in (jx, eager, compiled) if x}) == 1,
            "over_torch": ratio(eager), "over_torch_compiled": ratio(compiled),
            "goal_over_torch_compiled": GOAL_OVER_TORCH_COMPILED,
            # the measured code's, as hgmt's line names it (`cli.print_line`): never this
            # checkout's, which did not measure them
            **{k: (jx or {}).get(k, "unknown") for k in ("commit", "date")}}


def print_ratio_line(path: str) -> dict:
    """`ratio_line` of the JSON lines in the file `path`, printed."""
    with open(path) as f:
        lines = [json.loads(x) for x in f if x.startswith("{")]
    row = ratio_line(lines)
    print_line(row)
    return row


def benchmark(argv: Sequence[str] | None = None) -> list[dict]:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    if fv.from_lines:
        return [print_ratio_line(fv.from_lines)]
    base = cli.config_args(fv)
    rows = []
    for spec in fv.variants:
        config_args = base + variant_overrides(spec)
        impls = [("jax", "train_step.py", ()), ("torch", "torch_reference.py", ())]
        best: dict[str, dict] = {}
        for _ in range(fv.repeats):
            for impl, script, extra in impls:
                result = run(script, config_args, fv.steps, extra,
                             fv.jax_devices if impl == "jax" else 1)
                if impl not in best or result["img_per_s"] > best[impl]["img_per_s"]:
                    best[impl] = result
            if fv["compile"].value:
                result = compiled_torch(config_args, fv.steps, fv.compile_mode,
                                        fv.compile_timeout)
                if ("torch_compiled" not in best
                        or result["img_per_s"] > best["torch_compiled"]["img_per_s"]):
                    best["torch_compiled"] = result
        jx, th = best["jax"], best["torch"]
        if jx["params"] != th["params"]:
            raise RuntimeError(f"{spec}: the two networks differ ({jx['params']} vs "
                               f"{th['params']} parameters)")
        row = {"variant": spec, **{k: jx[k] for k in ("stacks", "features", "res", "batch",
                                                       "tasks", "dtype", "params")},
               "jax_img_per_s": jx["img_per_s"], "torch_img_per_s": th["img_per_s"],
               "ratio_jax_over_torch": round(jx["img_per_s"] / th["img_per_s"], 3),
               "jax_compile_s": jx["compile_s"], "jax_gflop_per_img": jx["gflop_per_img"],
               "jax_mfu": jx["mfu"], "jax_mfu_spec": jx.get("mfu_spec"),
               "jax_devices": jx["devices"], "device": jx["device"],
               "cpus": jx["cpus"], "jax": jx["jax"], "torch": th["torch"],
               "torch_threads": th["threads"]}
        if "torch_compiled" in best:
            tc = best["torch_compiled"]
            row.update({
                "torch_compiled_img_per_s": tc["img_per_s"],
                "ratio_jax_over_torch_compiled": round(jx["img_per_s"] / tc["img_per_s"], 3),
                "torch_compile_mode": tc["compile_mode"], "torch_compile_s": tc["compile_s"],
                "torch_compile_timed_out": tc["compile_timed_out"],
                "torch_compile_failed": tc["compile_failed"],
                **({"torch_compile_error": tc["compile_error"]} if tc["compile_failed"] else {})})
        rows.append(row)
        print_line(row)
    by_shape: dict = {}
    for row in rows:
        shape = tuple(row[k] for k in ("stacks", "features", "res", "batch", "dtype"))
        by_shape.setdefault(shape, {})[row["tasks"]] = row
    overhead = {}
    every = "+".join(parse_tasks("all"))
    for shape, group in by_shape.items():
        single = [t for t in group if t in TASKS]
        if every in group and single:
            one, four = group[single[0]], group[every]
            impls = [i for i in ("jax", "torch", "torch_compiled") if f"{i}_img_per_s" in one
                     and f"{i}_img_per_s" in four]
            overhead[",".join(map(str, shape))] = {
                impl: round(one[f"{impl}_img_per_s"] / four[f"{impl}_img_per_s"], 2)
                for impl in impls}
    print_line({"summary": "four-task step time / one-task step time",
                "overhead": overhead})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
