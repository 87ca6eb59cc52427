"""The real trainer's speed: `python -m hgmt.main` on demo data, its img/s and data wait as it
logs them to TensorBoard, against the bare compiled step of the same config.

    python3 benchmarks/trainer_speed.py --demo_data=/tmp/demo256 \\
        --config=configs/default.py:tasks=pose2d --config.batch_size=128 \\
        --config.model.dtype=bfloat16 --config.total_steps=300 --config.log_every=50

With --demo_data the demo clips are generated and built there first (unless built already:
`hgmt.data.demo`, no TensorFlow needed) and the run reads them (`surreal/all`). The bare step
(benchmarks/train_step.py, the same config, a fixed batch already on the device) runs first in
its own process, then the trainer, both with the same persistent compilation cache. The
trainer's rate and data wait are the means of its TensorBoard intervals after the first (which
holds the loader's start), its compile time the first step's as it logs it. Prints the bare
step's JSON line as soon as it is measured, then the trainer's: `trainer_over_bare` (goal >=
0.95), `data_idle` (goal <= 0.02: the share of the time the device sat idle waiting for a
batch, an upper bound) and `data_wait` (the host's wait for a batch, which overlaps the
device's work on the steps queued before it), with `worker_count` as the config gives it (-1:
auto) and `loader_workers`, the grain worker processes the trainer's loader runs for it
(`input_pipeline.auto_worker_count`). The trainer's output goes to stderr as it comes. A
SIGTERM (a time limit's) stops the trainer, which saves and exits; the line then says
`"complete": false` and holds the intervals logged until then (exit status 75). The bare step
is the trainer's own program (`train_step.py --feed=trainer`: with `config.augment_on` device,
auto's choice on an accelerator, the step crops and augments decoded records) fed one batch of
the same data held on the device, so the ratio counts the loop and the data alone, and the
trainer loads its step from the cache instead of compiling it again. Should the bare step fail,
its line says so ({"benchmark": "bare_step", "error": ...}) and the trainer runs all the same
(its line then has no ratio).
"""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

import cli
import fresh_process
from absl import flags
from cli import print_line

from hgmt import cores
from hgmt.data import input_pipeline
from hgmt.training.preemption import EXIT_PREEMPTED

GOALS = {"trainer_over_bare": 0.95, "data_idle": 0.02}


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("demo_data", None, "build the demo dataset here (if missing) and train "
                        "on it", flag_values=fv)
    flags.DEFINE_integer("demo_clips", 8, "demo clips per split", flag_values=fv, lower_bound=1)
    flags.DEFINE_integer("demo_frames", 30, "frames per demo clip", flag_values=fv, lower_bound=1)
    flags.DEFINE_string("workdir", None, "the trainer's workdir (default: a fresh temporary "
                        "one; it must not hold a checkpoint of this config)", flag_values=fv)
    flags.DEFINE_string("compilation_cache", None, "JAX's persistent compilation cache of both "
                        "runs (default: a fresh temporary folder)", flag_values=fv)
    flags.DEFINE_bool("bare", True, "also measure the bare step (benchmarks/train_step.py)",
                      flag_values=fv)
    flags.DEFINE_integer("bare_steps", 20, "timed steps of the bare step", flag_values=fv,
                         lower_bound=1)


def read_scalars(workdir: str) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every scalar in the TensorBoard event files of `workdir`."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict[str, dict[int, float]] = {}
    for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.HasField("tensor") and value.tensor.float_val:
                    number = value.tensor.float_val[0]
                elif value.HasField("simple_value"):
                    number = value.simple_value
                else:
                    continue
                out.setdefault(value.tag, {})[event.step] = float(number)
    return out


# The first step's line, compilation included: alone ("step 1 (compilation included) took
# 31.5 s"), or as the first log line when that step logs ("step 1/100  ...  took 31.5 s,
# compilation included: ...").
COMPILE_LINE = re.compile(r"step (\d+)(?: \(compilation included\) took ([\d.]+) s|/\d+ .*"
                          r" took ([\d.]+) s, compilation included)")


def trainer_figures(scalars: dict[str, dict[int, float]], log: str) -> dict:
    """The trainer's steady img/s, data wait and device idle time for data (means over the
    logged intervals after the first) and its first step's time (compilation included) from
    its log."""
    rates = [v for _, v in sorted(scalars.get("img_per_s", {}).items())]
    waits = [v for _, v in sorted(scalars.get("data_wait", {}).items())]
    idle = [v for _, v in sorted(scalars.get("data_idle", {}).items())]
    if not rates:
        raise RuntimeError("the trainer logged no img_per_s; raise config.total_steps over "
                           "config.log_every")
    steady = slice(1, None) if len(rates) > 1 else slice(None)

    def steady_mean(values: list[float], digits: int) -> float:
        return round(sum(values[steady]) / len(values[steady]), digits)

    compile_line = COMPILE_LINE.search(log)
    return {"trainer_img_per_s": steady_mean(rates, 2), "data_wait": steady_mean(waits, 4),
            "data_idle": steady_mean(idle, 4) if idle else None,
            "intervals": len(rates), "all_img_per_s": [round(r, 2) for r in rates],
            "all_data_wait": [round(w, 4) for w in waits],
            "all_data_idle": [round(w, 4) for w in idle],
            "trainer_first_step_s": (float(compile_line.group(2) or compile_line.group(3))
                                     if compile_line else None)}


def progress(line: str) -> None:
    """A line on stderr: where the benchmark is, for a log read after a time limit."""
    print(f"trainer_speed {time.strftime('%H:%M:%S')}: {line}", file=sys.stderr, flush=True)


def run_trainer(cmd: Sequence[str], env: dict[str, str]) -> tuple[int, str, bool]:
    """Runs the trainer `cmd`, its output passed on to this process's stderr as it comes. A
    SIGTERM to this process is passed on to the trainer, which saves a checkpoint and exits
    (the same signal to the whole process group, `timeout`'s, reaches it twice: harmless).
    -> (its exit status, its output, whether a SIGTERM stopped it)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    stopped: list[int] = []

    def pass_on(signum: int, frame: object) -> None:
        del frame
        stopped.append(signum)
        proc.send_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, pass_on)
    lines = []
    try:
        for line in proc.stdout:
            sys.stderr.write(line)
            lines.append(line)
        proc.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    return proc.returncode, "".join(lines), bool(stopped)


def measure_bare(config_args: Sequence[str], steps: int, env: dict[str, str]) -> dict | None:
    """The bare step (train_step.py --feed=trainer) in its own process; prints its line at
    once, kept should the trainer not finish. -> its figures, or None when it failed: the line
    then says {"benchmark": "bare_step", "error": ...} (its stderr's end follows on stderr) and
    the trainer runs all the same."""
    progress("the bare step (benchmarks/train_step.py): compiling and timing")
    try:
        bare = fresh_process.run("train_step.py", [*config_args, "--feed=trainer",
                                                   f"--steps={steps}", "--warmup=3"], env)
    except fresh_process.Failed as e:
        last = e.stderr.strip().splitlines()[-1:] or ["no output"]
        print_line({"benchmark": "bare_step", "error": f"exit {e.returncode}: {last[0]}"})
        progress(f"the bare step failed; the trainer runs without it:\n{e}")
        return None
    print_line({"benchmark": "bare_step", **bare})
    return bare


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    if fv.workdir and os.path.isdir(fv.workdir) and os.listdir(fv.workdir):
        raise SystemExit(f"error: --workdir={fv.workdir} is not empty: the trainer would "
                         f"resume its checkpoint and its event files would be read; give a new "
                         f"or empty folder")
    config_args = cli.config_args(fv)
    if fv.demo_data:
        from hgmt.data import demo

        t0 = time.perf_counter()
        demo.build(os.path.join(fv.demo_data, "surreal"), os.path.join(fv.demo_data, "tfds"),
                   fv.demo_clips, fv.demo_frames, workers=cores.usable_cores())
        build_s = time.perf_counter() - t0
        progress(f"demo data ready in {build_s:.1f} s")
        config_args += ["--config.dataset=surreal/all",
                        f"--config.data_dir={os.path.join(fv.demo_data, 'tfds')}"]
    cache = fv.compilation_cache or tempfile.mkdtemp(prefix="hgmt_jax_cache_")
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # as hgmt.main's cache
    bare = measure_bare(config_args, fv.bare_steps, env) if fv.bare else None
    workdir = fv.workdir or tempfile.mkdtemp(prefix="hgmt_trainer_")
    progress(f"the trainer (python -m hgmt.main) in {workdir}")
    t0 = time.perf_counter()
    returncode, log, stopped = run_trainer(
        [sys.executable, "-m", "hgmt.main", *config_args, f"--workdir={workdir}",
         f"--compilation_cache={cache}"], env)
    wall_s = time.perf_counter() - t0
    stopped = stopped and returncode == EXIT_PREEMPTED  # not when it had finished already
    if returncode and not stopped:
        raise RuntimeError(f"hgmt.main failed ({returncode}):\n{log[-3000:]}")
    scalars = read_scalars(workdir)
    figures = (trainer_figures(scalars, log) if scalars.get("img_per_s") or not stopped
               else {"intervals": 0})
    result = {"benchmark": "trainer", "complete": not stopped, **cli.describe(fv.config),
              # config.worker_count as given (-1: auto), and the grain worker processes the
              # trainer's loader starts for it (a fresh workdir: no checkpoint's count to resume)
              "worker_count": fv.config.worker_count,
              "loader_workers": input_pipeline.auto_worker_count(fv.config.worker_count),
              "cpus": cores.usable_cores(),
              "augment_on": fv.config.get("augment_on", "host"),
              "total_steps": fv.config.total_steps, "log_every": fv.config.log_every,
              **figures, "trainer_wall_s": round(wall_s, 1)}
    if fv.demo_data:
        result["demo_build_s"] = round(build_s, 1)
    if bare:
        result.update({
            "bare_feed": bare["feed"], "bare_img_per_s": bare["img_per_s"],
            "bare_compile_s": bare["compile_s"],
            "bare_compile_cache": bare["compile_cache"], "device": bare["device"],
            "backend": bare["backend"], "mfu_bare": bare["mfu"],
            "mfu_spec_bare": bare.get("mfu_spec")})
        if figures["intervals"]:
            result["trainer_over_bare"] = round(
                figures["trainer_img_per_s"] / bare["img_per_s"], 3)
    result["goals"] = GOALS
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status: 0, or EXIT_PREEMPTED (75) when a SIGTERM stopped the
    trainer (its line then has `"complete": false` and the intervals logged until then)."""
    return 0 if benchmark(argv)["complete"] else EXIT_PREEMPTED


if __name__ == "__main__":
    sys.exit(main())
