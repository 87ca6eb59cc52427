"""Input-pipeline speed: examples/s per core of the training loader (record read, PNG/JPEG
decode, person crop, augmentation, batching), next to what the train step consumes.

    python3 benchmarks/input_pipeline.py --res 128 [--data_dir DIR] [--train_img_per_s X]

Reads the built `surreal/all` demo dataset under --data_dir, or generates and builds a small one
in a temporary directory. Runs the loader in the main process (worker_count=0), so examples/s
over the process's CPU seconds is the per-core rate. Heatmaps and other targets are made inside
the train step, on the device (hgmt.tasks), so they are in train_step.py's figure, not here.
With --train_img_per_s (benchmarks/train_step.py's img/s on this machine) it prints the ratio
`examples/s per core` / `train-step img/s per core` (the issue's target is >= 2).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from hgmt import input_pipeline


def build_demo(root: str) -> str:
    """A small built demo dataset under root; returns its data_dir."""
    import tensorflow_datasets as tfds

    import data_builders.surreal  # noqa: F401
    from hgmt import synthetic

    # Every split: the builder requires each to yield examples; the benchmark reads train.
    synthetic.generate(os.path.join(root, "surreal"), 2, 30, seed=0)
    data_dir = os.path.join(root, "tfds")
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.join(root, "surreal")))
    return data_dir


def measure(data_dir: str, res: int, batch: int, batches: int, warmup: int = 2) -> dict:
    source = input_pipeline.open_split("surreal/all", data_dir, "train")
    loader = input_pipeline.train_loader(source, batch_size=batch, image_size=res, seed=0,
                                         worker_count=0)
    it = iter(loader)
    for _ in range(warmup):
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batch * batches
    return {"benchmark": "input_pipeline", "res": res, "batch": batch, "examples": n,
            "records": len(source), "examples_per_s": round(n / wall, 1),
            "examples_per_cpu_s": round(n / cpu, 1), "cpus": os.cpu_count()}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--data_dir", default=None, help="default: build demo data in a temp dir")
    p.add_argument("--train_img_per_s", type=float, default=None,
                   help="train_step.py's img/s on this machine, for the ratio")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = a.data_dir or build_demo(tmp)
        result = measure(data_dir, a.res, a.batch, a.batches)
    if a.train_img_per_s:
        per_core = a.train_img_per_s / os.cpu_count()
        result["train_img_per_s"] = a.train_img_per_s
        result["ratio_per_core"] = round(result["examples_per_cpu_s"] / per_core, 2)
    print(json.dumps(result))
    sys.stdout.flush()
    return result


if __name__ == "__main__":
    main()
