"""The model's two stream modes (`config.model.stream_mode`), alternating, compile and step time.

    python3 benchmarks/stream_modes.py --task_sets=pose2d,all --rounds=2 -- \\
        --config.image_size=128 --config.batch_size=16 --config.model.features=64 --steps=3

Every round measures each task set in each mode, each measurement in its own process
(benchmarks/train_step.py with `--config=configs/default.py:tasks=<set>
--config.model.stream_mode=<mode>` and the flags after `--`: its compile time is that
process's first compilation), the modes' order swapped every round so that neither always
runs first. Prints
train_step.py's JSON line for each, then one summary line: per task set and round, the second
mode's compile and step time over the first's (`vmapped/separate` by default), and per mode
and round, the compile time of the last task set over the first's (the 4-task over 1-task
growth). On a shared machine read the ratios within a round, not absolute times.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

import fresh_process  # noqa: E402
from absl import flags  # noqa: E402
from cli import config_path, print_line  # noqa: E402

from hgmt import cli  # noqa: E402


def run(args: list[str], tasks: str, mode: str) -> dict:
    """One train_step.py measurement in a fresh process -> its JSON line."""
    config = config_path("default")
    return fresh_process.run("train_step.py", [f"--config={config}:tasks={tasks}",
                                               f"--config.model.stream_mode={mode}", *args])


def summarize(results: list[dict], modes: tuple[str, str]) -> dict:
    """The ratios of an alternating run (`results`: train_step.py lines with their "round"):
    {"modes": {task set: {compile_s, step_s: second mode over first}}, "tasks_compile":
    {mode: last task set's compile_s over the first's}}, each {"rounds": [...], "median"}."""
    def ratios(values: list[float]) -> dict:
        return {"rounds": [round(v, 3) for v in values],
                "median": round(float(np.median(values)), 3)}

    by = {(r["round"], r["tasks"], r["stream_mode"]): r for r in results}
    rounds = sorted({r["round"] for r in results})
    task_sets = list(dict.fromkeys(r["tasks"] for r in results))
    a, b = modes
    first, last = task_sets[0], task_sets[-1]
    return {
        "summary": "stream_modes", "over": f"{b}/{a}",
        "modes": {t: {key: ratios([by[i, t, b][key] / by[i, t, a][key] for i in rounds])
                      for key in ("compile_s", "step_s")} for t in task_sets},
        "tasks_compile": {f"{m}: {last}/{first}": ratios(
            [by[i, last, m]["compile_s"] / by[i, first, m]["compile_s"] for i in rounds])
            for m in modes},
    }


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("modes", ["separate", "vmapped"], "the two stream modes to compare",
                      flag_values=fv)
    flags.DEFINE_list("task_sets", ["pose2d", "all"], "task sets, e.g. pose2d,all",
                      flag_values=fv)
    flags.DEFINE_integer("rounds", 2, "rounds, the modes' order swapped every round",
                         flag_values=fv, lower_bound=1)


def benchmark(argv: list[str] | None = None) -> dict:
    """Arguments after `--` go to train_step.py (config overrides, --steps, ...)."""
    args, passed = cli.parse(_define_flags, argv, __doc__,
                             positional="--")
    modes = tuple(args.modes)
    if len(modes) != 2 or not set(modes) <= {"separate", "vmapped"}:
        raise SystemExit(f"error: --modes={','.join(modes)}: give two of separate, vmapped")
    results = []
    for i in range(args.rounds):
        for tasks in args.task_sets:
            for mode in (modes if i % 2 == 0 else modes[::-1]):
                result = {**run(passed, tasks, mode), "round": i}
                print_line(result)
                results.append(result)
    summary = summarize(results, modes)
    print_line(summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
