"""SURREAL builder speed on demo clips: the Python path and Beam's DirectRunner side by side.

    python3 benchmarks/build_throughput.py --clips 6 --frames 50 --workers 2

Generates `clips` demo clips of `frames` frames (train split) and builds them with config
`all`, once with the plain Python path (one process) and once with Beam on `workers` local
processes. Prints one JSON line: frames/s and frames/s per core for each path (Python: frames per
CPU-second, threads included; Beam: frames / wall / workers, so it includes the runner's
start-up and shuffle cost) and
the bytes per stored example; `full_surreal_hours` projects the Python-path per-core rate to
SURREAL's 6.5 M frames on 16, 64 and 256 Beam workers (one core each).
"""

import argparse
import json
import os
import resource
import tempfile
import time

import tensorflow_datasets as tfds

import data_builders.surreal  # noqa: F401  (registers `surreal`)
from hgmt.sources import synthetic

SURREAL_FRAMES = 6.5e6


def build(manual_dir: str, data_dir: str, workers: int = 0) -> tuple[float, float]:
    """Builds surreal/all -> (wall seconds, CPU seconds of this process and its reaped
    children). workers > 0: Beam DirectRunner processes."""
    kwargs = {}
    if workers:
        import apache_beam as beam

        kwargs["beam_options"] = beam.options.pipeline_options.PipelineOptions(
            [f"--direct_num_workers={workers}", "--direct_running_mode=multi_processing"])
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format="array_record")
    start, cpu = time.perf_counter(), _cpu_seconds()
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir, **kwargs))
    return time.perf_counter() - start, _cpu_seconds() - cpu


def _cpu_seconds() -> float:
    own, children = (resource.getrusage(w) for w in (resource.RUSAGE_SELF,
                                                     resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        manual = os.path.join(tmp, "surreal")
        # TFDS needs every split non-empty: 2-frame clips in val and test, counted too.
        synthetic.generate(manual, 1, 2, seed=1)
        synthetic.generate(manual, args.clips, args.frames, seed=0, splits=("train",))
        frames = args.clips * args.frames + 4
        python_s, python_cpu = build(manual, os.path.join(tmp, "py"))
        beam_s, _ = build(manual, os.path.join(tmp, "beam"), args.workers)
        shards = list((tfds.builder("surreal/all", data_dir=os.path.join(tmp, "py"))
                       .data_path).glob("surreal-*.array_record-*"))
        stored = sum(os.path.getsize(s) for s in shards)
    per_core = frames / max(python_s, python_cpu)
    print(json.dumps({
        "benchmark": "build_throughput", "config": "all", "frames": frames,
        "python": {"seconds": round(python_s, 2), "cpu_seconds": round(python_cpu, 2),
                   "frames_per_s": round(frames / python_s, 1),
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
