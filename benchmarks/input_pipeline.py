"""Input-pipeline speed: examples/s per core of the training loader (record read, PNG/JPEG
decode, person crop, augmentation, batching), next to what the train step consumes.

    python3 benchmarks/input_pipeline.py [--config=configs/demo.py] --config.image_size=128 \\
        [--config.batch_size=16] [--batches=30] [--train_img_per_s=X]

Reads the train split of the config's dataset (`dataset`, `data_dir`; default config
configs/demo.py) as training does, at `image_size`, `batch_size` and with the labels of
`tasks`. A config with a `demo` section has its demo data generated and built first when
missing, as `hgmt.main` does. With `worker_count=0` (configs/demo.py's) the loader runs in the
main process, so examples/s over the process's CPU seconds is the per-core rate;
`--config.worker_count=N` (-1: the cores this process may use less 2, `hgmt.cores`, as
training does) measures the wall rate of N grain worker processes. Heatmaps and other targets
are made inside the train step, on the device (hgmt.tasks), so they are in train_step.py's
figure, not here. With
--train_img_per_s (benchmarks/train_step.py's img/s on this machine) it prints the ratio
`examples/s per core` / `train-step img/s per core` (the loader keeps up with room to spare
when it is >= 2).

The placement of the crop and augmentation is the config's `augment_on`;
`--placements=host,device --repeats=3` compares the two placements of the crop and augmentation
(hgmt.data.device_augment) in one run, alternating: "host" is the loader above; "device" is
the loader that only decodes the records, plus the batched crop that then runs inside the
train step, timed apart here on this machine's JAX backend (`step_ms_per_batch`, wall and CPU;
on a CPU-only machine it competes with the loader for the same cores, so
`examples_per_cpu_s_with_step` = examples over the loader's and the crop's CPU seconds
together). One JSON line per measurement, then a summary line: the medians per placement and
the ratio device/host of each alternating pair.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence

import jax
import ml_collections
from absl import flags
from cli import config_path, print_line

from hgmt import cli, cores
from hgmt.data import augment, builds, device_augment, input_pipeline
from hgmt.tasks import parse_tasks

DEFAULT_CONFIG = config_path("demo")


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batches", 30, "timed batches (after a warm-up)", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_float("train_img_per_s", None, "train_step.py's img/s on this machine, for "
                       "the ratio (with config.worker_count=0)", flag_values=fv, lower_bound=0)
    flags.DEFINE_list("placements", None, "placements of the crop to measure alternately "
                      "(host, device); default: the config's augment_on", flag_values=fv)
    flags.DEFINE_integer("repeats", 1, "alternating rounds", flag_values=fv, lower_bound=1)


def measure(config: ml_collections.ConfigDict, batches: int, warmup: int = 2,
            augment_on: str = "host") -> dict:
    """Loader speed on the train split of `config.dataset` at its image_size, batch_size and
    tasks. With config.worker_count=0 the main process does all the work, so
    `examples_per_cpu_s` is the per-core rate; with grain workers only the wall rate
    (`examples_per_s`) is the loader's, since their CPU time is not this process's.
    augment_on="device": the decoding loader, plus the step's crop timed apart."""
    batch, res = config.batch_size, config.image_size
    source = builds.open_split(config.dataset, config.data_dir, "train")
    workers = input_pipeline.auto_worker_count(config.worker_count)
    names = parse_tasks(config.tasks)
    tasks = "+".join(names)
    distributions = augment.Augment.from_config(config.augment)
    if augment_on == "host":
        loader = input_pipeline.train_loader(source, batch_size=batch, image_size=res, seed=0,
                                             augment=distributions, worker_count=workers,
                                             tasks=names, unread=device_augment.unread_maps(names),
                                             read_threads=config.read_threads,
                                             window=config.window)
    else:
        loader = device_augment.decode_loader(source, batch_size=batch, seed=0,
                                              worker_count=workers, tasks=names,
                                              read_threads=config.read_threads)
    it = iter(loader)
    for _ in range(warmup + 2 * workers):  # workers start and fill their buffers first
        last = next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    n = batch * batches
    result = {"benchmark": "input_pipeline", "augment_on": augment_on,
              "dataset": config.dataset, "res": res, "tasks": tasks, "batch": batch,
              "examples": n,
              "records": len(source), "examples_per_s": round(n / wall, 1),
              "worker_count": workers, "cpus": cores.usable_cores(),
              **({"examples_per_cpu_s": round(n / cpu, 1)} if workers == 0 else {})}
    if augment_on == "device":
        step_wall, step_cpu = measure_step_crop(last, res, names, batches, distributions,
                                                config.window)
        result.update(backend=jax.default_backend(),
                      step_ms_per_batch=round(1e3 * step_wall, 2),
                      step_cpu_ms_per_batch=round(1e3 * step_cpu, 2))
        if workers == 0:
            result["examples_per_cpu_s_with_step"] = round(n / (cpu + batches * step_cpu), 1)
    return result


def measure_step_crop(raw: dict, res: int, tasks: tuple[str, ...], batches: int,
                      distributions: augment.Augment,
                      window: str = "hgmt") -> tuple[float, float]:
    """(wall, CPU) seconds per batch of the device path's crop (`device_augment.Prepare` with
    the augmentation's `distributions` around the `window`'s box, jitted as in the train
    step) on a decoded batch,
    compiled first."""
    raw = jax.device_put({k: v for k, v in raw.items() if k != "damaged"})
    crop = jax.jit(device_augment.Prepare(res, 0, tasks, distributions, window))
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


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON lines; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    from hgmt.training import config_check

    config = config_check.exit_if_refused(args.config)  # a bad field fails before any work
    try:  # so does an unknown placement
        places = [device_augment.placement(p) for p in (args.placements or [config.augment_on])]
    except ValueError as e:
        raise SystemExit(f"error: --placements: {e}") from None
    flags.FLAGS.mark_as_parsed()  # grain's worker processes read absl flags (their defaults)
    if "demo" in config:
        from hgmt.main import prepare_demo_dataset

        prepare_demo_dataset(config)
    results = []
    for _ in range(args.repeats):
        for place in places:
            results.append(measure(config, args.batches, augment_on=place))
            if len(places) > 1 or args.repeats > 1:
                print_line(results[-1])
    if len(results) > 1:
        print_line(summarize(results))
        sys.stdout.flush()
        return 0
    result = results[0]
    if args.train_img_per_s and "examples_per_cpu_s" in result:
        per_core = args.train_img_per_s / cores.usable_cores()
        result["train_img_per_s"] = args.train_img_per_s
        result["ratio_per_core"] = round(result["examples_per_cpu_s"] / per_core, 2)
    print_line(result)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
