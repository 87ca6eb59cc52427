"""Demo-data generation speed: frames/s (render + H.264 + .mat writing) in `--workers`
processes.

    python3 benchmarks/synthetic_throughput.py --clips_per_split=3 --frames_per_clip=100 \\
        [--workers=2]

Generates the train split only. Prints one JSON line.
"""

import sys
import tempfile
import time
from collections.abc import Sequence

from absl import flags
from cli import print_line

from hgmt import cli, cores


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("clips_per_split", 3, "clips generated (train split)", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("frames_per_clip", 100, "frames per clip", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("workers", 1, "processes writing clips", flag_values=fv,
                         lower_bound=1)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON line; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__)
    from hgmt.sources import synthetic

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthetic.generate(tmp, clips_per_split=args.clips_per_split,
                           frames=args.frames_per_clip, seed=0, splits=("train",),
                           workers=args.workers)
        seconds = time.perf_counter() - start
    frames = args.clips_per_split * args.frames_per_clip
    print_line({"benchmark": "synthetic", "frames": frames, "seconds": round(seconds, 3),
                "frames_per_s": round(frames / seconds, 1), "workers": args.workers,
                "cpus": cores.usable_cores()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
