"""Per-stage CPU cost of the loader's work on one example, in milliseconds of this process's
CPU time: the record read, each image feature's decode, the host path's crop of decoded
arrays (`input_pipeline.crop_with`, warps, gain and labels) and the batching copy of each
placement's arrays. What is left to the loader on the device path is read + decodes + its
batching; grain's own bookkeeping is the rest of benchmarks/input_pipeline.py's figure.

    python3 benchmarks/input_stages.py --data_dir DIR [--res 256] [--n 300]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from hgmt.data import device_augment, input_pipeline


def cpu_ms(fn, n: int) -> float:
    """Mean CPU milliseconds of fn(i) over i = 0..n-1."""
    start = time.process_time()
    for i in range(n):
        fn(i)
    return round(1e3 * (time.process_time() - start) / n, 3)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data_dir", required=True, help="a built surreal/all dataset")
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--n", type=int, default=300, help="examples per stage")
    p.add_argument("--batch", type=int, default=16)
    a = p.parse_args(argv)
    source = input_pipeline.open_split("surreal/all", a.data_dir, "train")
    records = [source[i] for i in range(len(source))]
    k = len(records)
    out = {"benchmark": "input_stages", "res": a.res, "records": k,
           "read_ms": cpu_ms(lambda i: source[i % k], a.n)}
    for key in input_pipeline.IMAGE_FEATURES:
        out[f"decode_{key}_ms"] = cpu_ms(lambda i, key=key: input_pipeline.decoded(
            records[i % k], key), a.n)
    decoded = [{**r, **{key: input_pipeline.decoded(r, key)
                        for key in input_pipeline.IMAGE_FEATURES}} for r in records]
    rng = np.random.default_rng(0)
    params = [input_pipeline.draw_crop_params(input_pipeline.Augment(), rng) for _ in range(k)]
    out["host_crop_ms"] = cpu_ms(lambda i: input_pipeline.crop_with(
        decoded[i % k], a.res, params[i % k]), a.n)
    cropped = [input_pipeline.crop_with(decoded[i], a.res, params[i]) for i in range(a.batch)]
    raw = [device_augment.decode_record(records[i]) for i in range(a.batch)]
    for name, examples in (("host", cropped), ("device", raw)):
        out[f"batch_{name}_ms_per_example"] = round(cpu_ms(
            lambda _, e=examples: {key: np.stack([x[key] for x in e]) for key in e[0]},
            max(1, a.n // a.batch)) / a.batch, 3)
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
