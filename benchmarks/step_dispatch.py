"""The host's cost of dispatching one step over hgmt's train state, two ways side by side in
one run: `jax.pmap` over host-local arrays and `jax.jit` of a `jax.shard_map` over global
arrays (`hgmt.devices.spmd`, the trainer's way); one JSON line.

    python3 benchmarks/step_dispatch.py [--config=configs/default.py] [--processes=1] \\
        [--calls=50] [--repeats=5] [--warmup=3]

The step does almost nothing on the devices, so the time per call is the dispatch: it returns
the train state unchanged (donated, so it is not copied) and, as its metric, the devices' mean
(`jax.lax.pmean` over the axis "batch") of the sum of a batch of one `image` leaf of (local
devices, 1, 8, 8, 3) float32. The state has the tree, shapes and dtypes of the config's real
train state (`hgmt.training.steps.create_train_state`, its shapes from `jax.eval_shape`), its
values zeros: the paper's network for all four tasks, configs/default.py's default, has 3,184
leaves. Each way:

- `pmap`: `jax.pmap(step, axis_name="batch", donate_argnums=(0,))`, the state and the batch
  placed by a pmapped identity (each leaf (local devices, ...), host-local);
- `jit_shard_map`: `hgmt.devices.spmd(step, donate_argnums=(0,))`, a `jax.jit` of a
  `jax.shard_map` on a 1-D mesh of every device, process by process (pmap's order), the
  state placed by `devices.replicate` and the batch by `devices.place` (each leaf a global
  array (devices, ...)), as the trainer places them.

Each way is first called `--warmup` times (the first call compiles). Then `--repeats` rounds
alternate the two ways; in each, a way gets a freshly made state, is called once untimed (the
state placed as the step places its outputs), then `--calls` times, and the time per call is
the wall time of those calls and the wait for their results, over `--calls`. The line holds
each round's milliseconds per call, their medians (`pmap_ms`, `jit_shard_map_ms`) and
`ratio`, pmap's median over jit's (above 1: the jit over global arrays dispatches faster).

`--processes=N` above 1 starts N processes of this script on this machine (JAX's distributed
runtime on a free localhost port, CPU collectives by gloo), each with its local devices, and
prints one line for the N: process 0's figures, with every process's medians beside them
(`*_by_process`).
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

import cli
import jax
import ml_collections
import numpy as np
from absl import flags
from cli import print_line

from hgmt import cli as hgmt_cli
from hgmt import cores

DEFAULT_CONFIG = cli.config_path("default")
WAYS = ("pmap", "jit_shard_map")
BATCH = "image (local devices, 1, 8, 8, 3) float32"
WORKER_TIMEOUT_S = 1800  # a process of a multi-process run that has not ended by then is ended


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("processes", 1, "processes on this machine, each with its local "
                         "devices (above 1: started by this command)", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("calls", 50, "timed calls of a way in each round", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("repeats", 5, "rounds, the ways alternating", lower_bound=1,
                         flag_values=fv)
    flags.DEFINE_integer("warmup", 3, "untimed calls of each way first (the first compiles)",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host): set by "
                         "--processes for the processes it starts; leave it unset",
                         flag_values=fv)
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host): "
                        "set by --processes for the processes it starts", flag_values=fv)


def state_shapes(config: ml_collections.ConfigDict):
    """The tree of `config`'s train state, each leaf a jax.ShapeDtypeStruct (nothing is
    computed: `jax.eval_shape`)."""
    from hgmt.models import create_model
    from hgmt.tasks import heads, parse_tasks
    from hgmt.training import steps

    model = create_model(config.model, heads(parse_tasks(config.tasks)), axis_name="batch")
    return jax.eval_shape(lambda key: steps.create_train_state(key, config, model),
                          jax.random.key(0))


def step(state, batch: dict) -> tuple:
    """The step of both ways, under the axis "batch": (the state unchanged, the devices' mean
    of the sum of batch["image"])."""
    return state, jax.lax.pmean(batch["image"].sum(), "batch")


def pmap_way(shapes) -> tuple[Callable, Callable, dict]:
    """(step, a function making a fresh state, the batch): the step pmapped with the state
    donated, the state and the batch placed by a pmapped identity (each leaf (local devices,
    ...), host-local arrays)."""
    place = jax.pmap(lambda x: x, axis_name="batch")
    n = jax.local_device_count()

    def fresh_state():
        return place(jax.tree.map(lambda s: np.zeros((n, *s.shape), s.dtype), shapes))

    batch = place({"image": np.zeros((n, 1, 8, 8, 3), np.float32)})
    return jax.pmap(step, axis_name="batch", donate_argnums=(0,)), fresh_state, batch


def jit_shard_map_way(shapes) -> tuple[Callable, Callable, dict]:
    """The trainer's way: (step, a function making a fresh state, the batch), the step
    `devices.spmd`'s with the state donated, the state placed by `devices.replicate` and the
    batch by `devices.place` (each leaf a global array (devices, ...))."""
    from hgmt import devices

    def fresh_state():
        return devices.replicate(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes))

    n = jax.local_device_count()
    batch = devices.place({"image": np.zeros((n, 1, 8, 8, 3), np.float32)})
    return devices.spmd(step, donate_argnums=(0,)), fresh_state, batch


def _time_calls(fn: Callable, state, batch: dict, calls: int) -> float:
    """Milliseconds per call of `calls` calls of `fn`, the state carried through, after one
    untimed call (the fresh state placed as the step places its outputs)."""
    state, metric = fn(state, batch)
    jax.block_until_ready((state, metric))
    start = time.perf_counter()
    for _ in range(calls):
        state, metric = fn(state, batch)
    jax.block_until_ready((state, metric))
    return (time.perf_counter() - start) / calls * 1e3


def measure(config: ml_collections.ConfigDict, calls: int, repeats: int,
            warmup: int) -> dict:
    """This process's figures (module docstring): each round's ms per call of each way, their
    medians, and what was measured."""
    load_before = os.getloadavg()
    shapes = state_shapes(config)
    ways = {"pmap": pmap_way(shapes), "jit_shard_map": jit_shard_map_way(shapes)}
    for fn, fresh_state, batch in ways.values():
        state = fresh_state()
        for _ in range(warmup):
            state, metric = fn(state, batch)
        jax.block_until_ready((state, metric))
        del state
    ms: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(repeats):
        for way in WAYS:
            fn, fresh_state, batch = ways[way]
            ms[way].append(round(_time_calls(fn, fresh_state(), batch, calls), 3))
    leaves = jax.tree.leaves(shapes)
    description = {k: v for k, v in cli.describe(config).items() if k not in ("res", "batch")}
    return {
        "benchmark": "step_dispatch", "process": jax.process_index(),
        "processes": jax.process_count(), "devices": jax.device_count(),
        "local_devices": jax.local_device_count(), **description, "leaves": len(leaves),
        "state_mib_per_device": round(sum(s.size * s.dtype.itemsize for s in leaves) / 2**20,
                                      1),
        "batch": BATCH,
        **{f"{way}_ms": round(statistics.median(ms[way]), 3) for way in WAYS},
        "ratio": round(statistics.median(ms["pmap"]) / statistics.median(ms["jit_shard_map"]),
                       3),
        **{f"{way}_ms_repeats": ms[way] for way in WAYS},
        "calls": calls, "repeats": repeats, "warmup": warmup,
        "backend": jax.default_backend(), "device": jax.local_devices()[0].device_kind,
        "jax": jax.__version__, "cpus": cores.usable_cores(),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def combine(lines: list[dict]) -> dict:
    """The line of a multi-process run from its processes' lines (in process order): process
    0's figures, every process's medians beside them."""
    line = dict(lines[0])
    line.pop("process")
    for way in WAYS:
        line[f"{way}_ms_by_process"] = [x[f"{way}_ms"] for x in lines]
    return line


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def run_processes(fv: flags.FlagValues) -> dict:
    """Starts `fv.processes` processes of this script with the same flags, each a process of
    one JAX distributed run on a free localhost port -> `combine` of their lines."""
    address = f"localhost:{_free_port()}"
    args = [*cli.config_args(fv), f"--processes={fv.processes}", f"--calls={fv.calls}",
            f"--repeats={fv.repeats}", f"--warmup={fv.warmup}",
            f"--coordinator_address={address}"]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([cli.REPO, *filter(None, [os.environ.get(
               "PYTHONPATH")])])}
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *args,
                               f"--process_id={i}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env)
             for i in range(fv.processes)]
    outputs = []
    try:
        for proc in procs:
            outputs.append(proc.communicate(timeout=WORKER_TIMEOUT_S))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = []
    for i, (proc, (out, err)) in enumerate(zip(procs, outputs, strict=True)):
        found = [x for x in out.splitlines() if x.startswith("{")]
        if proc.returncode or not found:
            raise RuntimeError(f"process {i} of {fv.processes} exited {proc.returncode} with "
                               f"no result; its stderr ends: {err[-2000:]}")
        lines.append(json.loads(found[-1]))
    return combine(lines)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv`, prints its JSON line; -> the line."""
    fv, _ = hgmt_cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    from hgmt.training import config_check

    config_check.exit_if_refused(fv.config)
    if fv.process_id is not None:  # one process of a multi-process run
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(fv.coordinator_address, num_processes=fv.processes,
                                   process_id=fv.process_id)
        line = measure(fv.config, fv.calls, fv.repeats, fv.warmup)
    elif fv.processes > 1:
        line = run_processes(fv)
    else:
        line = combine([measure(fv.config, fv.calls, fv.repeats, fv.warmup)])
    return print_line(line)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
