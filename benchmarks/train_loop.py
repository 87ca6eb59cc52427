"""The training loop's overhead: `hgmt.loop.train()` against its compiled step alone.

    python3 benchmarks/train_loop.py --stacks 1 --features 32 --res 64 --batch 8 --tasks all \
        --steps 40 --repeats 2

Both run the same config on all local devices in one process, alternating `--repeats` times
(best of each kept): the compiled step on a fixed batch already on the devices
(benchmarks/train_step.py), and `train()` fed from memory (one fixed host batch, so the input
pipeline's cost is left out; the loop still shards and copies each batch to the devices, as it
does in training). `train()`'s rate is the one it logs over `--steps` steps after `--steps`
warm-up steps (compilation), which excludes start-up and the final checkpoint. Prints one JSON
line; `loop_overhead` = 1 - train() img/s / compiled step img/s (the target is <= 0.05).
"""

from __future__ import annotations

import json
import os
import platform
import tempfile

import cli
import jax
import train_step

from configs.common import base_config
from hgmt.tasks import parse_tasks
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
        self.img_per_s[step] = float(scalars["img_per_s"])


def loop_img_per_s(a, tasks: str) -> float:
    config = base_config(tasks)
    config.image_size, config.batch_size = a.res, a.batch
    config.model.num_stacks, config.model.features = a.stacks, a.features
    config.model.depth, config.model.dtype = 4, a.dtype
    config.total_steps, config.log_every = 2 * a.steps, a.steps
    config.checkpoint_every = 10 * config.total_steps  # only the final one, after timing
    rates = Rates()
    with tempfile.TemporaryDirectory() as workdir:
        loop.train(config, workdir, writer=rates,
                    loader=InMemory(train_step.random_batch(a.batch, a.res)))
    return rates.img_per_s[2 * a.steps]


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args(argv)
    tasks = "+".join(parse_tasks(a.tasks))
    devices = jax.local_device_count()
    step_rates, loop_rates = [], []
    for _ in range(a.repeats):
        step_rates.append(train_step.measure(a.stacks, a.features, a.res, a.batch, tasks,
                                             a.dtype, a.steps, a.warmup, devices)["img_per_s"])
        loop_rates.append(loop_img_per_s(a, tasks))
    step, loop = max(step_rates), max(loop_rates)
    result = {"backend": jax.default_backend(), "device": jax.local_devices()[0].device_kind,
              "devices": devices, "cpus": os.cpu_count(), "machine": platform.machine(),
              "stacks": a.stacks, "features": a.features, "res": a.res, "batch": a.batch,
              "tasks": tasks, "dtype": a.dtype, "steps": a.steps,
              "compiled_step_img_per_s": round(step, 2), "train_loop_img_per_s": round(loop, 2),
              "loop_overhead": round(1 - loop / step, 4),
              "all_step_img_per_s": step_rates, "all_loop_img_per_s": loop_rates}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
