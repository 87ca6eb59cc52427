"""SURREAL builder speed on demo clips: the Python path and Beam's DirectRunner side by side.

    python3 benchmarks/build_throughput.py --clips 6 --frames 50 --workers 2

Generates `clips` demo clips of `frames` frames (train split) and builds them with config
`all`, once with the plain Python path (one process) and once with Beam on `workers` local
processes. Prints one JSON line: frames/s and frames/s per core for each path (per core =
frames / wall / processes used, so the Beam figure includes its start-up and shuffle cost) and
the bytes per stored example; `full_surreal_hours` projects the Python-path per-core rate to
SURREAL's 6.5 M frames on 16, 64 and 256 Beam workers (one core each).
"""

import argparse
import json
import os
import tempfile
import time

import tensorflow_datasets as tfds

import data_builders.surreal  # noqa: F401  (registers `surreal`)
from hgmt import synthetic

SURREAL_FRAMES = 6.5e6


def build(manual_dir: str, data_dir: str, workers: int = 0) -> float:
    """Builds surreal/all; returns wall seconds. workers > 0: Beam DirectRunner processes."""
    kwargs = {}
    if workers:
        import apache_beam as beam

        kwargs["beam_options"] = beam.options.pipeline_options.PipelineOptions(
            [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format="array_record")
    start = time.perf_counter()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, **kwargs))
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manual = os.path.join(tmp, "surreal")
        synthetic.generate(manual, args.clips, args.frames, seed=0, splits=("train",))
        for split in ("val", "test"):  # empty splits: only train is timed
            os.makedirs(os.path.join(manual, "cmu", split), exist_ok=True)
        frames = args.clips * args.frames
        python_s = build(manual, os.path.join(tmp, "py"))
        beam_s = build(manual, os.path.join(tmp, "beam"), args.workers)
        shards = list((tfds.builder("surreal/all", data_dir=os.path.join(tmp, "py"))
                       .data_path).glob("surreal-train.*"))
        stored = sum(s.stat().st_size for s in shards)
    per_core = frames / python_s
    print(json.dumps({
        "benchmark": "build_throughput", "config": "all", "frames": frames,
        "python": {"seconds": round(python_s, 2), "frames_per_s": round(per_core, 1),
                   "frames_per_s_per_core": round(per_core, 1)},
        "beam_direct": {"workers": args.workers, "seconds": round(beam_s, 2),
                        "frames_per_s": round(frames / beam_s, 1),
                        "frames_per_s_per_core": round(frames / beam_s / args.workers, 1)},
        "bytes_per_example": round(stored / frames),
        "full_surreal_hours": {str(n): round(SURREAL_FRAMES / (per_core * n) / 3600, 1)
                               for n in (16, 64, 256)},
        "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
