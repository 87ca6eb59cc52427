"""Per-stage CPU cost of the loader's work on one example, in milliseconds of this process's
CPU time: the record read (and apart: the array_record read of its bytes, their parse by
`hgmt.data.tf_example` and by tfds, and the parse of a frame's number alone, what an
evaluation's frame selection reads of every record), each image feature's decode, the host
path's crop of decoded arrays (`cropping.crop_with`, warps, gain and labels) and the
batching copy of each placement's arrays, as training does them for the config's tasks (the
maps no target is made from, `device_augment.unread_maps`, neither cropped nor batched).
What is left to the loader on the device path is read + decodes + its batching; grain's own
bookkeeping is the rest of benchmarks/input_pipeline.py's figure.

    python3 benchmarks/input_stages.py [--config=configs/demo.py] [--config.image_size=256] \\
        [--config.data_dir=DIR] [--examples=300]

Reads the train split of the config's dataset (default configs/demo.py, whose demo data are
built when missing), crops at `image_size` and batches `batch_size` examples. Prints one JSON
line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags
from cli import config_path, print_line

from hgmt import cli
from hgmt.data import builds, cropping, device_augment, records, tf_example
from hgmt.data.augment import Augment
from hgmt.tasks import parse_tasks

DEFAULT_CONFIG = config_path("demo")


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("examples", 300, "examples timed per stage", flag_values=fv,
                         lower_bound=1)


def cpu_ms(fn, n: int) -> float:
    """Mean CPU milliseconds of fn(i) over i = 0..n-1."""
    start = time.process_time()
    for i in range(n):
        fn(i)
    return round(1e3 * (time.process_time() - start) / n, 3)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON line; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    # A bad field fails before the demo data is built.
    from hgmt.training import config_check

    config = config_check.exit_if_refused(args.config)
    if "demo" in config:
        from hgmt.main import prepare_demo_dataset

        prepare_demo_dataset(config)
    res, batch, n = config.image_size, config.batch_size, args.examples
    source = builds.open_split(config.dataset, config.data_dir, "train")
    stored = [source[i] for i in range(len(source))]
    k = len(stored)
    tasks = parse_tasks(config.tasks)
    unread = device_augment.unread_maps(tasks)
    out = {"benchmark": "input_stages", "res": res, "records": k, "tasks": "+".join(tasks),
           "unread": sorted(unread),
           "read_ms": cpu_ms(lambda i: source[i % k], n)}
    tfds_source = source.source  # the tfds data source that open_split's ParsedSource reads
    serialized = [tfds_source.data_source[i] for i in range(k)]
    frame_specs = tf_example.parsed(tfds_source, ("frame", "num_frames")).specs
    features = tfds_source.dataset_info.features
    out.update(
        read_bytes_ms=cpu_ms(lambda i: tfds_source.data_source[i % k], n),
        parse_ms=cpu_ms(lambda i: tf_example.parse(serialized[i % k], source.specs), n),
        parse_tfds_ms=cpu_ms(lambda i: features.deserialize_example_np(
            serialized[i % k], decoders=tfds_source.decoders), n),
        parse_frame_ms=cpu_ms(lambda i: tf_example.parse(serialized[i % k], frame_specs), n))
    for key in records.IMAGE_FEATURES:
        out[f"decode_{key}_ms"] = cpu_ms(lambda i, key=key: records.decoded(
            stored[i % k], key), n)
    decoded = [{**r, **{key: records.decoded(r, key)
                        for key in records.IMAGE_FEATURES}} for r in stored]
    rng = np.random.default_rng(0)
    augment = Augment.from_config(config.augment)
    params = [cropping.draw_crop_params(augment, rng) for _ in range(k)]
    out["host_crop_ms"] = cpu_ms(lambda i: cropping.crop_with(
        decoded[i % k], res, params[i % k], tasks, unread), n)
    cropped = [cropping.crop_with(decoded[i % k], res, params[i % k], tasks, unread)
               for i in range(batch)]  # a batch larger than the split repeats its records
    raw = [device_augment.decode_record(stored[i % k], device_augment.target_maps(tasks))
           for i in range(batch)]
    for name, examples in (("host", cropped), ("device", raw)):
        out[f"batch_{name}_ms_per_example"] = round(cpu_ms(
            lambda _, e=examples: {key: np.stack([x[key] for x in e]) for key in e[0]},
            max(1, n // batch)) / batch, 3)
    print_line(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
