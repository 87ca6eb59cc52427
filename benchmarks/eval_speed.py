"""Evaluation speed: examples/s of an evaluation (`hgmt.evaluation.evaluator.Evaluator`) made
the serial way and the evaluator's own way, alternating in one run; one JSON line.

    python3 benchmarks/eval_speed.py [--config=configs/demo.py] --config.image_size=256 \\
        [--config.eval_batch_size=16] [--split=test] [--frames=all] [--max_examples=240] \\
        [--rounds=3]

Serial: the batches made in the evaluating thread (`eval_data.eval_batches` with
`threads=0`), each batch's statistics fetched to the host and added there before the next
batch is made (`serial_totals`), so that the host and the devices take turns. The evaluator's
way (`Evaluator.totals`): the examples made by `eval_data.eval_threads()` threads while
the devices run the batches before, the sums kept on the devices and fetched once. Both give
the same sums, to the bit (tests/test_evaluators.py). Each round times, in this order, the
batch generator alone made serially, then by the threads (`batches_*`: the host's part, what
a GPU waits on), then the whole evaluation each way (`eval_*`: the model's evaluation step on
this machine's JAX devices included), with the config's model, freshly initialised, at its
`image_size`, `eval_batch_size` and `tasks`, on `--split`'s `--frames`, at most
`--max_examples` of them, under hgmt's metric protocol. Compilation is done before the rounds
(on a batch of each way). A config with a `demo` section has its demo data generated and built
first when missing, as `hgmt.main` does.

The line holds each round's examples/s (wall) of the four, their medians, the ratios of the
medians (threaded / serial, overlapped / serial), the thread count, the usable cores, the JAX
backend and device count, and the load average before and after (the machine may be shared).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import flags
from cli import config_path, print_line

from hgmt import cli, cores, devices
from hgmt.data import eval_data
from hgmt.evaluation import evaluator
from hgmt.tasks import parse_tasks

DEFAULT_CONFIG = config_path("demo")
WAYS = ("batches_serial", "batches_threaded", "eval_serial", "eval_overlapped")


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("split", "test", ["test", "validation", "train"], "split to evaluate",
                      flag_values=fv)
    flags.DEFINE_string("frames", "all", "frames of each clip: middle (SURREAL's test "
                        "protocol), all, or everyK", flag_values=fv)
    flags.DEFINE_integer("max_examples", 240, "at most this many frames (0: all)",
                         flag_values=fv, lower_bound=0)
    flags.DEFINE_integer("rounds", 3, "alternating rounds", flag_values=fv, lower_bound=1)


def serial_totals(ev: evaluator.Evaluator, variables: dict, threads: int = 0) -> dict:
    """The sums of `ev`'s statistics made the serial way: each batch made by `threads` threads
    (0: this one), evaluated, and its statistics fetched to the host and added there (numpy)
    before the next batch is made."""
    replicated = devices.replicate(variables)
    total = None
    for batch in eval_data.eval_batches(ev.source, ev.indices, batch_size=ev.batch_size,
                                        image_size=ev.image_size, tasks=ev.tasks,
                                        damaged=[], window=ev.window, threads=threads):
        stats = devices.to_host(ev.p_step(replicated, devices.place_batch(batch)))
        total = stats if total is None else jax.tree.map(np.add, total, stats)
    return total


def _batches(ev: evaluator.Evaluator, threads: int) -> None:
    """Makes every batch of `ev` with `threads` threads, and drops it."""
    for _ in eval_data.eval_batches(ev.source, ev.indices, batch_size=ev.batch_size,
                                    image_size=ev.image_size, tasks=ev.tasks, damaged=[],
                                    window=ev.window, threads=threads):
        pass


def measure(config, split: str, frames: str, max_examples: int, rounds: int) -> dict:
    """The JSON line (module docstring)."""
    load_before = os.getloadavg()
    ev = evaluator.Evaluator(config, split=split, frames=frames, max_examples=max_examples)
    from hgmt.training import steps

    state = steps.create_train_state(jax.random.key(0), config, ev.model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    everything, ev.indices = ev.indices, ev.indices[:ev.batch_size]
    serial_totals(ev, variables)  # compiles the step, and the sums' addition below
    ev.totals(variables, [])
    ev.indices = everything
    n = len(everything)
    runs = {
        "batches_serial": lambda: _batches(ev, 0),
        "batches_threaded": lambda: _batches(ev, ev.threads),
        "eval_serial": lambda: serial_totals(ev, variables),
        "eval_overlapped": lambda: ev.totals(variables, []),
    }
    rates: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            start = time.perf_counter()
            runs[way]()
            rates[way].append(round(n / (time.perf_counter() - start), 1))
    medians = {f"{way}_median": statistics.median(rates[way]) for way in WAYS}
    return {
        "benchmark": "eval_speed", "dataset": config.dataset, "split": split, "frames": frames,
        "res": config.image_size, "tasks": "+".join(parse_tasks(config.tasks)),
        "batch": ev.batch_size, "examples": n, "rounds": rounds, "threads": ev.threads,
        "cpus": cores.usable_cores(), "backend": jax.default_backend(),
        "devices": jax.device_count(), **rates, **medians,
        "batches_threaded_over_serial": round(
            medians["batches_threaded_median"] / medians["batches_serial_median"], 2),
        "eval_overlapped_over_serial": round(
            medians["eval_overlapped_median"] / medians["eval_serial_median"], 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON line; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    eval_data.frames_flag(args.frames)  # before the demo data is built
    from hgmt.training import config_check

    config = config_check.exit_if_refused(args.config)  # so is a bad config field
    if "demo" in config:
        from hgmt.main import prepare_demo_dataset

        prepare_demo_dataset(config)
    print_line(measure(config, args.split, args.frames, args.max_examples,
                       args.rounds))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
