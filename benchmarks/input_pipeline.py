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
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from absl import flags

from hgmt.data import input_pipeline
from hgmt.tasks import parse_tasks


def build_demo(root: str) -> str:
    """A small built demo dataset under root; returns its data_dir."""
    from hgmt.data import demo

    # Every split: the builder requires each to yield examples; the benchmark reads train.
    return demo.build(os.path.join(root, "surreal"), os.path.join(root, "tfds"), 2, 30)


def measure(data_dir: str, res: int, batch: int, batches: int, warmup: int = 2,
            worker_count: int = 0, tasks: str = "all") -> dict:
    """Loader speed. With worker_count=0 the main process does all the work, so
    `examples_per_cpu_s` is the per-core rate; with grain workers only the wall rate
    (`examples_per_s`) is the loader's, since their CPU time is not this process's."""
    source = input_pipeline.open_split("surreal/all", data_dir, "train")
    workers = input_pipeline.auto_worker_count(worker_count)
    loader = input_pipeline.train_loader(source, batch_size=batch, image_size=res, seed=0,
                                         worker_count=workers, tasks=parse_tasks(tasks))
    it = iter(loader)
    for _ in range(warmup + 2 * workers):  # workers start and fill their buffers first
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batch * batches
    return {"benchmark": "input_pipeline", "res": res, "tasks": tasks, "batch": batch,
            "examples": n,
            "records": len(source), "examples_per_s": round(n / wall, 1),
            "worker_count": workers, "cpus": os.cpu_count(),
            **({"examples_per_cpu_s": round(n / cpu, 1)} if workers == 0 else {})}


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
    a = p.parse_args(argv)
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (their defaults)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = a.data_dir or build_demo(tmp)
        result = measure(data_dir, a.res, a.batch, a.batches, worker_count=a.worker_count,
                         tasks=a.tasks)
    if a.train_img_per_s and a.worker_count == 0:
        per_core = a.train_img_per_s / os.cpu_count()
        result["train_img_per_s"] = a.train_img_per_s
        result["ratio_per_core"] = round(result["examples_per_cpu_s"] / per_core, 2)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
