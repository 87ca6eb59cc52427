"""The training loop's overhead: `hgmt.training.loop.train()` against its compiled step alone.

    python3 benchmarks/train_loop.py --config=configs/default.py:tasks=all \\
        --config.model.num_stacks=1 --config.model.features=32 --config.image_size=64 \\
        --config.batch_size=8 --steps=40 --repeats=2

Both run the same config on all local devices in one process, alternating `--repeats` times
(best of each kept): the compiled step on a fixed batch already on the devices
(benchmarks/train_step.py), and `train()` fed from memory (one fixed host batch, so the input
pipeline's cost is left out; the loop still shards and copies each batch to the devices, as it
does in training). `train()`'s rate is the one it logs over `--steps` steps after `--steps`
warm-up steps (compilation), which excludes start-up and the final checkpoint. Prints one JSON
line; `loop_overhead` = 1 - train() img/s / compiled step img/s (the target is <= 0.05).
Needs no TensorFlow (the loop's summaries go to the benchmark's own writer).
"""

from __future__ import annotations

import json
import platform
import sys
import tempfile
from collections.abc import Sequence

import cli
import jax
import ml_collections
import train_step
from absl import flags
from cli import print_line

from hgmt import cores
from hgmt.training import loop


class InMemory:
    """A loader that yields one fixed host batch forever; its position is a step count (what
    the trainer's checkpoint saves)."""

    def __init__(self, batch: dict):
        self.batch, self.count = batch, 0

    def __iter__(self) -> InMemory:
        return self

    def __next__(self) -> dict:
        self.count += 1
        return self.batch

    def get_state(self) -> bytes:
        return json.dumps({"count": self.count}).encode()

    def set_state(self, state: bytes) -> None:
        self.count = json.loads(state)["count"]


class Rates:
    """A metric writer that keeps the logged img/s by step."""

    def __init__(self) -> None:
        self.img_per_s: dict[int, float] = {}

    def write_scalars(self, step: int, scalars: dict) -> None:
        if "img_per_s" in scalars:  # not at a first step that logs: it compiled
            self.img_per_s[step] = float(scalars["img_per_s"])


def loop_img_per_s(config: ml_collections.ConfigDict, steps: int) -> float:
    """train()'s logged img/s over its second `steps` steps (the first `steps` compile)."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.total_steps, config.log_every = 2 * steps, steps
    config.checkpoint_every = 10 * config.total_steps  # only the final one, after timing
    for evaluator in config.get("evals", {}).values():  # no evaluation: no dataset here
        evaluator.every, evaluator.at_end = 0, False
    if "augment_on" in config:
        config.augment_on = "host"  # the in-memory batch is already cropped, as the host's
    rates = Rates()
    with tempfile.TemporaryDirectory() as workdir:
        loop.train(config, workdir, writer=rates,
                   loader=InMemory(train_step.random_batch(config.batch_size,
                                                           config.image_size)))
    return rates.img_per_s[2 * steps]


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_timing(fv, steps=20, warmup=2)
    flags.DEFINE_integer("repeats", 2, "rounds of both measurements; the best of each is kept",
                         flag_values=fv, lower_bound=1)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    config = fv.config
    devices = jax.local_device_count()
    step_rates, loop_rates = [], []
    for _ in range(fv.repeats):
        step_rates.append(train_step.measure(config, fv.steps, fv.warmup,
                                             devices)["img_per_s"])
        loop_rates.append(loop_img_per_s(config, fv.steps))
    step, loop_rate = max(step_rates), max(loop_rates)
    result = {"backend": jax.default_backend(), "device": jax.local_devices()[0].device_kind,
              "devices": devices, "cpus": cores.usable_cores(), "machine": platform.machine(),
              **cli.describe(config), "steps": fv.steps,
              "compiled_step_img_per_s": round(step, 2),
              "train_loop_img_per_s": round(loop_rate, 2),
              "loop_overhead": round(1 - loop_rate / step, 4),
              "all_step_img_per_s": step_rates, "all_loop_img_per_s": loop_rates}
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
