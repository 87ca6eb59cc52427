"""Demo-data generation speed: frames/s on one process (render + H.264 + .mat writing).

    python3 benchmarks/synthetic_throughput.py --frames 100 --clips 3

Prints one JSON line.
"""

import argparse
import json
import os
import tempfile
import time

from hgmt.sources import synthetic


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--clips", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        synthetic.generate(tmp, clips_per_split=args.clips, frames=args.frames, seed=0,
                           splits=("train",))
        seconds = time.perf_counter() - start
    frames = args.clips * args.frames
    print(json.dumps({"benchmark": "synthetic", "frames": frames, "seconds": round(seconds, 3),
                      "frames_per_s": round(frames / seconds, 1), "cpus": os.cpu_count()}))


if __name__ == "__main__":
    main()
