"""SURREAL builder speed on demo clips: the Python path and Beam's DirectRunner side by side.

    python3 benchmarks/build_throughput.py --clips_per_split=6 --frames_per_clip=50 --beam_workers=2

Generates `clips_per_split` demo clips of `frames_per_clip` frames (train split) and builds them
with config `all`, once with the plain Python path (one process) and once with Beam on
`beam_workers` local processes. Prints one JSON line: frames/s and frames/s per core for each
path (Python: frames per CPU-second, threads included; Beam: frames / wall / workers, so it
includes the runner's start-up and shuffle cost) and the bytes per stored example;
`full_surreal_hours` projects the Python-path per-core rate to SURREAL's 6.5 M frames on 16, 64
and 256 Beam workers (one core each).
"""

import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence

from absl import flags
from cli import print_line

from hgmt import cli, cores

SURREAL_FRAMES = 6.5e6


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("clips_per_split", 6, "demo clips in the train split (validation and "
                         "test get one 2-frame clip each)", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("frames_per_clip", 50, "frames per train clip", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("beam_workers", 2, "Beam DirectRunner worker processes",
                         flag_values=fv, lower_bound=1)

def build(manual_dir: str, data_dir: str, workers: int = 0) -> tuple[float, float]:
    """Builds surreal/all -> (wall seconds, CPU seconds of this process and its reaped
    children). workers > 0: Beam DirectRunner processes."""
    import tensorflow_datasets as tfds

    import data_builders.surreal  # noqa: F401  (registers `surreal`)

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


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON line; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__)
    import tensorflow_datasets as tfds

    from hgmt.sources import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        manual = os.path.join(tmp, "surreal")
        # TFDS needs every split non-empty: a 2-frame test clip and its copy in val, counted
        # too.
        synthetic.generate(manual, args.clips_per_split, args.frames_per_clip, seed=0,
                           splits=("train",))
        synthetic.generate(manual, 1, 2, seed=1, splits=("val", "test"))
        frames = args.clips_per_split * args.frames_per_clip + 4
        python_s, python_cpu = build(manual, os.path.join(tmp, "py"))
        beam_s, _ = build(manual, os.path.join(tmp, "beam"), args.beam_workers)
        shards = list((tfds.builder("surreal/all", data_dir=os.path.join(tmp, "py"))
                       .data_path).glob("surreal-*.array_record-*"))
        stored = sum(os.path.getsize(s) for s in shards)
    per_core = frames / max(python_s, python_cpu)
    print_line({
  "benchmark": "build_throughput", "config": "all", "frames": frames,
  "python": {"seconds": round(python_s, 2), "cpu_seconds": round(python_cpu, 2),
             "frames_per_s": round(frames / python_s, 1),
             "frames_per_s_per_core": round(per_core, 1)},
  "beam_direct": {"workers": args.beam_workers, "seconds": round(beam_s, 2),
                  "frames_per_s": round(frames / beam_s, 1),
                  "frames_per_s_per_core": round(frames / beam_s / args.beam_workers,
                                                 1)},
  "bytes_per_example": round(stored / frames),
  "full_surreal_hours": {str(n): round(SURREAL_FRAMES / (per_core * n) / 3600, 1)
                         for n in (16, 64, 256)},
  "cpus": cores.usable_cores()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
