"""hgmt (JAX) against the plain PyTorch network, back to back on the same configs.

    python3 benchmarks/compare.py                     # the issue's two CPU configs + 4 tasks
    python3 benchmarks/compare.py --configs 2,128,128,16,pose2d --repeats 3

Each measurement runs in its own process (benchmarks/train_step.py, then
benchmarks/torch_reference.py, alternating for --repeats rounds; the best of the rounds is
kept, the machines being noisy). Prints one JSON line per config with both results and the
ratio jax/torch of img/s, then one summary line with the multi-task overhead (the 4-task step
time over the 1-task one at the same size, per implementation). Needs the `bench` extra.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import cli

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIGS = ("2,128,128,16,pose2d", "2,256,256,8,pose2d", "2,128,128,16,all")


def run(script: str, stacks: int, features: int, res: int, batch: int, tasks: str,
        dtype: str, steps: int, devices: int = 1) -> dict:
    cmd = [sys.executable, os.path.join(HERE, script), f"--stacks={stacks}",
           f"--features={features}", f"--res={res}", f"--batch={batch}", f"--tasks={tasks}",
           f"--dtype={dtype}", f"--steps={steps}"]
    env = dict(os.environ)
    if devices > 1:  # split the CPU into devices (pmap over them), as for training on a CPU
        cmd.append(f"--devices={devices}")
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                            f" --xla_force_host_platform_device_count={devices}")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS),
                   help="stacks,features,res,batch,tasks")
    p.add_argument("--dtype", default="float32", choices=cli.DTYPES)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--jax_devices", type=int, default=1,
                   help="pmap the JAX step over this many virtual CPU devices (CPU only)")
    a = p.parse_args(argv)
    rows = []
    for spec in a.configs:
        try:
            s, f, r, b, tasks = spec.split(",")
            shape = (int(s), int(f), int(r), int(b))
        except ValueError:
            p.error(f"--configs {spec!r}: give stacks,features,res,batch,tasks")
        best: dict[str, dict] = {}
        for _ in range(a.repeats):
            for impl, script in (("jax", "train_step.py"), ("torch", "torch_reference.py")):
                result = run(script, *shape, tasks, a.dtype, a.steps,
                             a.jax_devices if impl == "jax" else 1)
                if impl not in best or result["img_per_s"] > best[impl]["img_per_s"]:
                    best[impl] = result
        jx, th = best["jax"], best["torch"]
        if jx["params"] != th["params"]:
            raise RuntimeError(f"{spec}: the two networks differ ({jx['params']} vs "
                               f"{th['params']} parameters)")
        row = {"config": spec, "dtype": a.dtype, "params": jx["params"],
               "jax_img_per_s": jx["img_per_s"], "torch_img_per_s": round(th["img_per_s"], 2),
               "ratio_jax_over_torch": round(jx["img_per_s"] / th["img_per_s"], 3),
               "jax_compile_s": jx["compile_s"], "jax_gflop_per_img": jx["gflop_per_img"],
               "jax_mfu": jx["mfu"], "jax_devices": jx["devices"], "device": jx["device"],
               "cpus": jx["cpus"],
               "jax": jx["jax"], "torch": th["torch"], "torch_threads": th["threads"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    by_shape = {}
    for row in rows:
        *shape, tasks = row["config"].split(",")
        by_shape.setdefault(tuple(shape), {})[tasks] = row
    overhead = {}
    for shape, group in by_shape.items():
        single = [t for t in group if "+" not in t and t != "all"]
        if "all" in group and single:
            one, four = group[single[0]], group["all"]
            overhead[",".join(shape)] = {
                impl: round(one[f"{impl}_img_per_s"] / four[f"{impl}_img_per_s"], 2)
                for impl in ("jax", "torch")}
    print(json.dumps({"summary": "four-task step time / one-task step time",
                      "overhead": overhead}))
    return rows


if __name__ == "__main__":
    main()
