"""Input-pipeline speed: examples/s per core of the training loader (record read, PNG/JPEG
decode, person crop, augmentation, batching), next to what the train step consumes.

    python3 benchmarks/input_pipeline.py --res 128 [--data_dir DIR] [--train_img_per_s X]

Reads the built `surreal/all` demo dataset under --data_dir, or generates and builds a small one
in a temporary directory. By default runs the loader in the main process (worker_count=0), so
examples/s over the process's CPU seconds is the per-core rate; `--worker_count N` (-1: the
host's cores less 2, as training does) measures the wall rate of N grain worker processes.
Heatmaps and other targets are made inside the train step, on the device (hgmt.tasks), so they
are in train_step.py's figure, not here. With --train_img_per_s (benchmarks/train_step.py's
img/s on this machine) it prints the ratio `examples/s per core` / `train-step img/s per core`
(the issue's target is >= 2).

`--augment_on host,device --repeats 3` compares the two placements of the crop and augmentation
(hgmt.data.device_augment) in one run, alternating: "host" is the loader above; "device" is
the loader that only decodes the records, plus the batched crop that then runs inside the
train step, timed apart here on this machine's JAX backend (`step_ms_per_batch`, wall and CPU;
on a CPU-only machine it competes with the loader for the same cores, so
`examples_per_cpu_s_with_step` = examples over the loader's and the crop's CPU seconds
together). One JSON line per measurement, then a summary line: the medians per placement and
the ratio device/host of each alternating pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import jax
from absl import flags

from hgmt.data import device_augment, input_pipeline
from hgmt.tasks import parse_tasks


def build_demo(root: str) -> str:
    """A small built demo dataset under root; returns its data_dir."""
    from hgmt.data import demo

    # Every split: the builder requires each to yield examples; the benchmark reads train.
    return demo.build(os.path.join(root, "surreal"), os.path.join(root, "tfds"), 2, 30)


def measure(data_dir: str, res: int, batch: int, batches: int, warmup: int = 2,
            worker_count: int = 0, tasks: str = "all", augment_on: str = "host") -> dict:
    """Loader speed. With worker_count=0 the main process does all the work, so
    `examples_per_cpu_s` is the per-core rate; with grain workers only the wall rate
    (`examples_per_s`) is the loader's, since their CPU time is not this process's.
    augment_on="device": the decoding loader, plus the step's crop timed apart."""
    source = input_pipeline.open_split("surreal/all", data_dir, "train")
    workers = input_pipeline.auto_worker_count(worker_count)
    names = parse_tasks(tasks)
    if augment_on == "host":
        loader = input_pipeline.train_loader(source, batch_size=batch, image_size=res, seed=0,
                                             worker_count=workers, tasks=names)
    else:
        loader = device_augment.decode_loader(source, batch_size=batch, seed=0,
                                              worker_count=workers, tasks=names)
    it = iter(loader)
    for _ in range(warmup + 2 * workers):  # workers start and fill their buffers first
        last = next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batch * batches
    result = {"benchmark": "input_pipeline", "augment_on": augment_on, "res": res,
              "tasks": tasks, "batch": batch, "examples": n,
              "records": len(source), "examples_per_s": round(n / wall, 1),
              "worker_count": workers, "cpus": os.cpu_count(),
              **({"examples_per_cpu_s": round(n / cpu, 1)} if workers == 0 else {})}
    if augment_on == "device":
        step_wall, step_cpu = measure_step_crop(last, res, names, batches)
        result.update(backend=jax.default_backend(),
                      step_ms_per_batch=round(1e3 * step_wall, 2),
                      step_cpu_ms_per_batch=round(1e3 * step_cpu, 2))
        if workers == 0:
            result["examples_per_cpu_s_with_step"] = round(n / (cpu + batches * step_cpu), 1)
    return result


def measure_step_crop(raw: dict, res: int, tasks: tuple[str, ...], batches: int
                      ) -> tuple[float, float]:
    """(wall, CPU) seconds per batch of the device path's crop (`device_augment.Prepare`,
    jitted as in the train step) on a decoded batch, compiled first."""
    raw = jax.device_put({k: v for k, v in raw.items() if k != "damaged"})
    crop = jax.jit(device_augment.Prepare(res, 0, tasks))
    jax.block_until_ready(crop(raw, 0))
    wall, cpu = time.perf_counter(), time.process_time()
    for step in range(batches):
        jax.block_until_ready(crop(raw, step))
    return (time.perf_counter() - wall) / batches, (time.process_time() - cpu) / batches


def summarize(results: list[dict]) -> dict:
    """Medians per placement and the device/host ratio of each alternating pair."""
    key = "examples_per_cpu_s" if "examples_per_cpu_s" in results[0] else "examples_per_s"
    by = {}
    for r in results:
        by.setdefault(r["augment_on"], []).append(r)
    out = {"benchmark": "input_pipeline_summary", "res": results[0]["res"],
           "tasks": results[0]["tasks"], "batch": results[0]["batch"], "measure": key,
           "runs": len(results)}
    for place, rs in by.items():
        out[f"{place}_median"] = statistics.median(r[key] for r in rs)
        for extra in ("step_ms_per_batch", "step_cpu_ms_per_batch",
                      "examples_per_cpu_s_with_step"):
            if extra in rs[0]:
                out[f"{place}_{extra}_median"] = statistics.median(r[extra] for r in rs)
    if {"host", "device"} <= by.keys():
        pairs = list(zip(by["host"], by["device"], strict=False))
        out["device_over_host"] = [round(d[key] / h[key], 2) for h, d in pairs]
        if "examples_per_cpu_s_with_step" in by["device"][0]:
            out["device_with_step_over_host"] = [
                round(d["examples_per_cpu_s_with_step"] / h[key], 2) for h, d in pairs]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--data_dir", default=None, help="default: build demo data in a temp dir")
    p.add_argument("--tasks", default="all", help="the labels made (and maps decoded) are "
                   "those of these tasks")
    p.add_argument("--worker_count", type=int, default=0,
                   help="grain worker processes (-1: the host's cores less 2); 0 measures the "
                        "per-core rate")
    p.add_argument("--train_img_per_s", type=float, default=None,
                   help="train_step.py's img/s on this machine, for the ratio")
    p.add_argument("--augment_on", default="host",
                   help="host, device, or both comma-separated (measured alternately)")
    p.add_argument("--repeats", type=int, default=1, help="alternating rounds")
    a = p.parse_args(argv)
    places = a.augment_on.split(",")
    for place in places:
        device_augment.placement(place)  # an unknown placement fails before any work
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (their defaults)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = a.data_dir or build_demo(tmp)
        results = []
        for _ in range(a.repeats):
            for place in places:
                results.append(measure(data_dir, a.res, a.batch, a.batches,
                                       worker_count=a.worker_count, tasks=a.tasks,
                                       augment_on=device_augment.placement(place)))
                if len(places) > 1 or a.repeats > 1:
                    print(json.dumps(results[-1]))
    if len(results) > 1:
        summary = summarize(results)
        print(json.dumps(summary))
        sys.stdout.flush()
        return summary
    result = results[0]
    if a.train_img_per_s and a.worker_count == 0:
        per_core = a.train_img_per_s / os.cpu_count()
        result["train_img_per_s"] = a.train_img_per_s
        result["ratio_per_core"] = round(result["examples_per_cpu_s"] / per_core, 2)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
