"""The command line of the speed benchmarks (train_step.py, train_loop.py, profile_step.py,
torch_reference.py, profile_torch.py, compare.py), in hgmt's convention (`hgmt.cli`): absl
flags, and the training config as `--config` (default: the paper's network for pose2d,
configs/default.py:tasks=pose2d) with `--config.x=y` overrides in the config's own field
names, e.g.

    python3 benchmarks/train_step.py --config=configs/default.py:tasks=all \\
        --config.image_size=128 --config.batch_size=16 --config.model.features=128 \\
        --config.model.dtype=bfloat16 --steps=5

The benchmarks read the tasks, the model (`model.*`), `image_size`, `batch_size`, the loss
weights and options from it. Every benchmark that takes a config checks it first as training
does (`hgmt.training.config_check.exit_if_refused`): a field training would refuse exits in one
line before any work."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags

from hgmt import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def require_torch(script: str) -> None:
    """Ends the process in one line naming the fix where PyTorch, which the benchmark `script`
    (its __file__) needs and hgmt does not (the bench extra's), is not installed: before the
    script imports it."""
    import importlib.util
    import sys

    if importlib.util.find_spec("torch") is None:
        sys.exit(f"error: benchmarks/{os.path.basename(script)} needs PyTorch, which hgmt "
                 f"itself does not: pip install -e '.[bench]' (or a torch build for your "
                 f"accelerator)")


def config_path(name: str) -> str:
    """The absolute path of the repository's configs/<name>.py, e.g. config_path("demo")."""
    return os.path.join(REPO, "configs", f"{name}.py")


DEFAULT_CONFIG = config_path("default") + ":tasks=pose2d"
# torch.compile's modes (torch_reference.py --compile_mode, compare.py --compile_mode)
COMPILE_MODES = ("max-autotune", "max-autotune-no-cudagraphs", "reduce-overhead", "default")


def define_timing(fv: flags.FlagValues, steps: int = 5, warmup: int = 2) -> None:
    """--steps (timed steps) and --warmup (untimed steps before them, compilation included)."""
    flags.DEFINE_integer("steps", steps, "timed steps after the warm-up", flag_values=fv,
                         lower_bound=1)
    flags.DEFINE_integer("warmup", warmup, "untimed steps first (the first compiles)",
                         flag_values=fv, lower_bound=0)


def parse(define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None,
          doc: str) -> flags.FlagValues:
    """Parses argv (default sys.argv[1:]) against `define`'s flags and `--config`, the config
    checked (`config_check.exit_if_refused`); positional arguments are an error."""
    fv = cli.parse(define, argv, doc, config_file=DEFAULT_CONFIG)[0]
    from hgmt.training import config_check  # jax after a benchmark's XLA_FLAGS

    config_check.exit_if_refused(fv.config)
    return fv


def config_args(fv: flags.FlagValues) -> list[str]:
    """The `--config` flags that give another process the parsed config: the file (its path
    made absolute) and the overrides."""
    flag = fv["config"]
    path, colon, argument = flag.config_filename.partition(":")
    return [f"--config={os.path.abspath(path)}{colon}{argument}"] + [
        f"--config.{k}={v}" for k, v in flag.override_values.items()]


def describe(config) -> dict:
    """The JSON fields that name a benchmark's configuration."""
    from hgmt.tasks import parse_tasks

    return {"stacks": config.model.num_stacks, "features": config.model.features,
            "res": config.image_size, "batch": config.batch_size,
            "tasks": "+".join(parse_tasks(config.tasks)), "dtype": config.model.dtype}


def alternate_rounds(calls: Mapping[str, Callable[[], Any]], *, rounds: int, steps: int,
                     warmup: int, benchmark: str) -> dict[str, float]:
    """Times each of `calls` (way -> a call of its compiled program) in `rounds` rounds that
    alternate the ways: in each, per way, `warmup` untimed calls, then `steps` timed ones to
    their last result; one line a way and round ({"benchmark", "way", "round", "ms"}) ->
    {way: median milliseconds a call}."""
    import statistics

    import jax

    ms: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        for name, call in calls.items():
            for _ in range(warmup):
                jax.block_until_ready(call())
            t0 = time.perf_counter()
            for _ in range(steps):
                out = call()
            jax.block_until_ready(out)
            ms[name].append(1e3 * (time.perf_counter() - t0) / steps)
            print_line({"benchmark": benchmark, "way": name, "round": r + 1,
                        "ms": round(ms[name][-1], 3)})
    return {name: statistics.median(v) for name, v in ms.items()}


def print_line(line: dict) -> dict:
    """Prints a benchmark's JSON line, dated: `line` with `provenance`'s fields where it has
    none of its own (a line made from other runs' lines keeps theirs), flushed (a run stopped
    later keeps the lines before); -> the line printed."""
    dated = {**provenance(), **line}
    print(json.dumps(dated), flush=True)
    return dated


@functools.cache
def provenance() -> dict:
    """The JSON fields that date a benchmark's line: "commit", the repository's HEAD (short
    hash; "+changes" where the tracked files differ from it, "unknown" outside a git
    checkout), and "date", the day in UTC (YYYY-MM-DD) of the process's first line."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", REPO, *args], capture_output=True, text=True)

    head = git("rev-parse", "--short", "HEAD")
    if head.returncode:
        commit = "unknown"
    else:
        changed = git("diff", "--quiet", "HEAD").returncode != 0
        commit = head.stdout.strip() + ("+changes" if changed else "")
    return {"commit": commit, "date": time.strftime("%Y-%m-%d", time.gmtime())}
