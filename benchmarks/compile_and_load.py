"""What a training process pays before its first step: the model's initialisation
(`steps.init_variables`, op by op on a CPU) and the train step compiled, or loaded
from JAX's persistent compilation cache, and the step's time.

    XLA_FLAGS=... python3 benchmarks/compile_and_load.py --config=configs/study.py \\
        --cache=DIR [--steps=3]

Run it twice with the same --cache: the first compiles (an empty folder), the second loads.
Prints one JSON line (seconds): init_s, lower_s, compile_s (a load when the cache holds the
step), step_s, the loss of the last step, process_s, and XLA_FLAGS."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

_START = time.perf_counter()

import cli  # noqa: E402
from absl import flags  # noqa: E402
from cli import print_line  # noqa: E402


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("cache", None, "the persistent compilation cache folder",
                        flag_values=fv, required=True)
    flags.DEFINE_integer("steps", 3, "timed steps after the first", flag_values=fv, lower_bound=1)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    import jax

    jax.config.update("jax_compilation_cache_dir", fv.cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1)
    import train_step

    config = fv.config
    step, state, data, _, init_s = train_step.placed_step(config)
    t = time.perf_counter()
    lowered = step.lower(state, data)
    lower_s = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    t = time.perf_counter()
    for _ in range(fv.steps):
        state, metrics = compiled(state, data)
    jax.block_until_ready(metrics)
    result = {"benchmark": "compile_and_load", **cli.describe(config),
              "xla_flags": os.environ.get("XLA_FLAGS", ""), "init_s": round(init_s, 1),
              "lower_s": round(lower_s, 1), "compile_s": round(compile_s, 1),
              "step_s": round((time.perf_counter() - t) / fv.steps, 3),
              "loss": float(metrics["loss/total"][0]),
              "process_s": round(time.perf_counter() - _START, 1)}
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
