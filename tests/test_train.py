"""Trainer: 4 CPU devices, checkpoints, exact resume, kill -9, NaN stop, 2 processes."""

import functools
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

from hgmt import code_version, devices, run_config, workdirs
from hgmt.data import builds, input_pipeline, prefetch, worker_signals
from hgmt.data.augment import Augment
from hgmt.inference import trained_model
from hgmt.models import create_model
from hgmt.tasks import check_loss_options, check_loss_weights, heads
from hgmt.training import checkpoints, config_check, loop, resume, steps, trainer
from tests.conftest import NanJointsFrom, main_command, preempted_where_test_is_due, tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def _assert_trees_equal(a, b, **tol):
    fa, fb = _flat(a), _flat(b)
    assert fa.keys() == fb.keys()
    for k in fa:
        np.testing.assert_allclose(fa[k], fb[k], err_msg=k, **tol)


@pytest.mark.slow
def test_interrupted_run_resumes_to_the_same_parameters(demo_dataset, tmp_path, caplog):
    """4 steps then a rerun to 6 equals 6 steps straight: state and data position restored."""
    assert jax.local_device_count() == 4
    kw = dict(tasks="pose2d+depth", **{"optimizer.schedule": "constant"})
    straight = loop.train(tiny_config(demo_dataset[1], total_steps=6, **kw),
                           str(tmp_path / "straight"))
    loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw), str(tmp_path / "split"))
    assert checkpoints.manager(str(tmp_path / "split")).all_steps() == [2, 4]
    with caplog.at_level(logging.INFO):
        resumed = loop.train(tiny_config(demo_dataset[1], total_steps=6, **kw),
                              str(tmp_path / "split"), resume_with_changed_config=True)
    assert "resumed from" in caplog.text and int(resumed.step) == 6
    assert checkpoints.manager(str(tmp_path / "split"), keep=3).all_steps() == [2, 4, 6]
    _assert_trees_equal(straight.params, resumed.params, rtol=1e-5, atol=1e-6)
    _assert_trees_equal(straight.batch_stats, resumed.batch_stats, rtol=1e-5, atol=1e-6)
    # And training moved every kernel and BatchNorm scale. (Conv biases that feed a
    # BatchNorm get ~0 gradient: the normalisation removes them.)
    config = tiny_config(demo_dataset[1], **kw)
    init = steps.create_train_state(jax.random.key(config.seed), config,
                                    create_model(config.model, heads(("pose2d", "depth"))))
    weights = {k: v for k, v in _flat(init.params).items() if "'bias'" not in k}
    still = [k for k, v in weights.items() if np.allclose(v, _flat(straight.params)[k])]
    assert len(weights) > 50 and not still, still


def test_initialisation_op_by_op_equals_the_compiled_one_bit_for_bit():
    """The CPU's default, `model.init` op by op, gives the values of `jit(model.init)`, so a
    run's initial parameters do not depend on which one ran."""
    config = tiny_config("unused", tasks="pose2d+depth")
    model = create_model(config.model, heads(("pose2d", "depth")))
    images = np.zeros((1, config.image_size, config.image_size, 3), np.float32)
    eager = steps.init_variables(model, jax.random.key(3), images)
    compiled = steps.init_variables(model, jax.random.key(3), images, compiled=True)
    assert jax.default_backend() == "cpu"
    fe, fc = _flat(eager), _flat(compiled)
    assert fe.keys() == fc.keys() and len(fe) > 100
    for k in fe:
        np.testing.assert_array_equal(fe[k], fc[k], err_msg=k)
    # Not the same values by accident: another key gives other ones.
    other = _flat(steps.init_variables(model, jax.random.key(4), images))
    kernel = next(k for k in fe if "kernel" in k)
    assert not np.array_equal(other[kernel], fe[kernel])


def test_the_train_step_is_traced_once_per_run(demo_dataset, tmp_path, monkeypatch):
    """The state's placement before the first step equals the step's outputs', so steps 2..n
    reuse step 1's trace and compilation (on 4 devices, resuming from a checkpoint too). A
    run of other optimizer settings traces once more (the optimizer is a static part of the
    state); a later run of settings already run, with its own model and optimizer objects,
    traces nothing."""
    traces, train_step = [], steps.train_step

    def counted(*args, **kwargs):
        traces.append(1)  # runs while JAX traces, not at each call
        return train_step(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", counted)
    steps._jitted_train_step.cache_clear()
    try:
        config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=3, checkpoint_every=2)
        loop.train(config, str(tmp_path))
        assert len(traces) == 1
        config.total_steps = 5  # resumes from step 3's checkpoint
        loop.train(config, str(tmp_path), resume_with_changed_config=True)
        assert len(traces) == 2
        loop.train(tiny_config(demo_dataset[1], tasks="pose2d", total_steps=3),
                   str(tmp_path / "again"))
        assert len(traces) == 2
    finally:
        steps._jitted_train_step.cache_clear()


def test_device_done_tells_a_queued_step_from_a_finished_one():
    """JAX dispatches a step and returns at once: its outputs are not ready while the
    device computes them."""
    x = jax.numpy.ones((2000, 2000))
    f = jax.pmap(lambda a: (a @ a @ a @ a).sum())
    jax.block_until_ready(f(x[None]))  # compiled
    out = {"loss": f(x[None])}
    assert not trainer.device_done(out)
    jax.block_until_ready(out)
    assert trainer.device_done(out)


class SlowLoader:
    """A loader's iterator whose batches each come `delay` seconds late (a slow input
    pipeline), with the position the trainer checkpoints; `after`, if given, is called once
    the delay is over, before the batch is returned."""

    def __init__(self, loader, delay: float, after=None):
        self.it, self.delay, self.after = iter(loader), delay, after

    def __iter__(self):
        return self

    def __next__(self):
        time.sleep(self.delay)
        if self.after is not None:
            self.after()
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


class Scalars:
    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        self.scalars.setdefault(step, {}).update(scalars)

    def write_images(self, step, images):
        pass


@pytest.mark.slow  # the loop's timings by hand, fast: tests/test_trainer_bookkeeping.py
def test_the_loop_logs_the_device_idle_time_of_a_slow_loader(demo_dataset, tmp_path,
                                                             monkeypatch):
    """A loader slower than the step: each wait for a batch ends with the device done with the
    last step, so the whole wait is device idle time (`data_idle` equals `data_wait`). The
    other case (a wait while the device still runs queued steps is no idle time) is
    `device_done`'s, above.

    After its 1 s the loader also waits for the outputs of the step last dispatched (as
    `StepMetrics.append` is given them), so that a machine too loaded to run a step in 1 s
    does not leave one queued: the loop still has to ask the device itself."""
    from hgmt.training import step_metrics

    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=6, log_every=3,
                         checkpoint_every=6, augment_on="host")
    last = {}
    append = step_metrics.StepMetrics.append

    def appended(self, step, values):  # the step just dispatched
        last["values"] = values
        append(self, step, values)

    monkeypatch.setattr(step_metrics.StepMetrics, "append", appended)
    source = builds.open_split(config.dataset, config.data_dir, "train")
    loader = SlowLoader(input_pipeline.train_loader(
        source, batch_size=config.batch_size, image_size=config.image_size, seed=0,
        worker_count=0, tasks=("pose2d",)), delay=1.0,
        after=lambda: jax.block_until_ready(last.get("values")))
    writer = Scalars()
    loop.train(config, str(tmp_path), writer=writer, loader=loader)
    logged = writer.scalars[6]  # steps 4-6: no compilation
    assert logged["data_wait"] > 0.5
    assert logged["data_idle"] == pytest.approx(logged["data_wait"])


def test_the_logged_losses_and_learning_rates_are_device_0s_and_the_schedules(
        demo_dataset, tmp_path, monkeypatch):
    """Two tasks on 4 devices, logged at steps 2 and 4 (in the schedule's warm-up, then its
    decay): each loss is, to the bit, the mean over the interval's steps of device 0's
    value out of every device's copy fetched whole, and each learning rate the schedule run
    op by op (`steps.create_lr`, eagerly) at the step before."""
    from hgmt.training import step_metrics

    config = tiny_config(demo_dataset[1], tasks="pose2d+segm", total_steps=4, log_every=2,
                         checkpoint_every=4, **{"optimizer.warmup_steps": 2})
    dispatched = []
    append = step_metrics.StepMetrics.append

    def appended(self, step, values):
        dispatched.append((step, values))
        append(self, step, values)

    monkeypatch.setattr(step_metrics.StepMetrics, "append", appended)
    writer = Scalars()
    loop.train(config, str(tmp_path), writer=writer)
    lr = steps.create_lr(config)
    assert sorted(writer.scalars) == [2, 4] and [s for s, _ in dispatched] == [1, 2, 3, 4]
    for logged in (2, 4):
        fetched = [{k: float(np.asarray(v).reshape(-1)[0]) for k, v in jax.device_get(m).items()}
                   for s, m in dispatched if logged - 2 < s <= logged]
        assert all(np.asarray(m["loss/total"]).shape == (4,) for _, m in dispatched)
        expected = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
        assert set(expected) == {"loss/pose2d", "loss/segm", "loss/total"}
        assert {k: writer.scalars[logged][k] for k in expected} == expected
        assert writer.scalars[logged]["learning_rate"] == float(lr(logged - 1))
    assert 0 < writer.scalars[2]["learning_rate"] != writer.scalars[4]["learning_rate"]


def _loop_clock(monkeypatch) -> list[float]:
    """Puts the trainer's clock (its `time.perf_counter` and its log intervals') `offset[0]`
    seconds ahead of the real one -> `offset`, for a test to move time on by: the test does
    not then depend on how fast a loaded machine runs the steps."""
    from hgmt.training import step_metrics

    offset = [0.0]

    def clock() -> float:
        return time.perf_counter() + offset[0]

    class LoopTime:  # the trainer's `time`, with `clock` as its perf_counter
        perf_counter = staticmethod(clock)

        def __getattr__(self, name):
            return getattr(time, name)

    monkeypatch.setattr(trainer, "time", LoopTime())
    monkeypatch.setattr(step_metrics, "Interval",
                        functools.partial(step_metrics.Interval, clock=clock))
    return offset


@pytest.mark.slow  # the loop's timings by hand, fast: tests/test_trainer_bookkeeping.py
def test_img_per_s_leaves_out_the_evaluations_between_log_steps(demo_dataset, tmp_path,
                                                                 monkeypatch, caplog):
    """An evaluation after step 2's log line (made to take 1000 s) is not in steps 3-4's
    img/s: the two steps of 8 images take less than that, so their img/s is above 16 / 1000;
    the ETA, the time to the end, counts it.

    The 1000 s pass on the loop's clock only (`_loop_clock`, moved on by the evaluation)."""
    from hgmt.training import evaluators

    offset = _loop_clock(monkeypatch)
    real_run = evaluators.Evaluators.run

    def slow_run(self, *args, **kwargs):
        out = real_run(self, *args, **kwargs)
        offset[0] += 1000.0
        return out

    monkeypatch.setattr(evaluators.Evaluators, "run", slow_run)
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=6, log_every=2,
                         checkpoint_every=6, **{"evals.validation.every": 2,
                                                "evals.validation.max_examples": 8})
    writer = Scalars()
    with caplog.at_level(logging.INFO):
        loop.train(config, str(tmp_path), writer=writer)
    assert writer.scalars[4]["img_per_s"] > 2 * config.batch_size / 1000.0
    # The ETA does count them: at step 4, 2 steps left at the pace of steps 2-4 (one 1000-s
    # evaluation in 3 steps since the compiled first one) is at least 2 * 1000 / 3 s.
    eta = re.search(r"step 4/6 .* ETA (\d+):(\d\d):(\d\d)", caplog.text)
    assert eta and 3600 * int(eta[1]) + 60 * int(eta[2]) + int(eta[3]) >= 2 * 1000 // 3


def test_a_first_step_that_logs_gives_its_time_not_rates_and_the_next_lines_leave_it_out(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """With --config.log_every=1 the first step, which compiles (made to take 1000 s on the
    loop's clock), logs a line with its time and no img/s, data wait or ETA, and no such
    TensorBoard values; from step 2 on they are of the steps after it: step 2's img/s is of
    its own seconds, and its ETA, 2 steps left at step 2's pace, far below 1000 s (counting
    the first step, at least 2 * 1000 / 2)."""
    offset = _loop_clock(monkeypatch)  # 1000 s later once the first step has run
    jitted = steps.jitted_train_step

    def slow_first(*args, **kwargs):
        step = jitted(*args, **kwargs)

        def run(*a, **k):
            out = step(*a, **k)
            if not offset[0]:
                offset[0] = 1000.0
            return out
        return run

    monkeypatch.setattr(steps, "jitted_train_step", slow_first)
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=4, log_every=1,
                         checkpoint_every=4)
    writer = Scalars()
    with caplog.at_level(logging.INFO):
        loop.train(config, str(tmp_path), writer=writer)
    first = re.search(r"step 1/4 .*", caplog.text)[0]
    assert re.fullmatch(r"step 1/4  .+  took 10\d\d\.\d s, compilation included: "
                        r"img/s, data wait and ETA from the next line", first), first
    assert "img/s " not in first and "data-wait" not in first
    assert "img_per_s" not in writer.scalars[1] and "data_wait" not in writer.scalars[1]
    assert writer.scalars[2]["img_per_s"] > config.batch_size / 100
    eta = re.search(r"step 2/4 .* ETA (\d+):(\d\d):(\d\d)", caplog.text)
    assert eta and 3600 * int(eta[1]) + 60 * int(eta[2]) + int(eta[3]) < 100


def test_the_timing_of_the_steps_starts_after_the_evaluation_a_preemption_skipped(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """Preempted at step 2, where `test` is due, the run saves without evaluating; the rerun
    evaluates step 2 first (made to take 1000 s on the loop's clock, `_loop_clock`), then
    trains: the line of its first step, step 3, gives that step's time (compilation
    included), not the evaluation's 1000 s before it."""
    from hgmt.training import evaluators

    offset = _loop_clock(monkeypatch)
    workdir = str(tmp_path / "run")
    config = preempted_where_test_is_due(demo_dataset[1], workdir, Scalars)
    real_run = evaluators.Evaluators.run

    def slow_run(self, names, step, *args, **kwargs):
        out = real_run(self, names, step, *args, **kwargs)
        offset[0] += 1000.0
        return out

    monkeypatch.setattr(evaluators.Evaluators, "run", slow_run)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        loop.train(config, workdir, Scalars())
    assert "evaluating step 2, which its run did not: test" in caplog.text
    took = re.search(r"step 3/4 .* took ([\d.]+) s, compilation included", caplog.text)
    assert took and float(took[1]) < 1000, caplog.text[-2000:]


def test_interval_sets_apart_the_time_it_is_told_to():
    from hgmt.training.step_metrics import Interval

    now = [10.0]
    interval = Interval(3, clock=lambda: now[0])
    now[0] = 12.0
    with interval.set_apart():
        now[0] = 17.0  # an evaluation of 5 s
    now[0] = 18.5
    assert (interval.step, interval.training_time()) == (3, 3.5)
    interval.wait += 1.0
    interval.restart(5)
    assert (interval.step, interval.training_time(), interval.wait) == (5, 0.0, 0.0)


def test_the_pace_of_a_log_interval_leaves_out_a_compiling_first_step():
    """img/s and the data shares are of the interval's training seconds, the ETA of the wall
    seconds per step since the clock started; an interval that compiled has none of them,
    but a last step's ETA, 0."""
    from hgmt.training.step_metrics import Pace, pace

    timed = dict(steps=4, batch_size=8, training_s=2.0, wait_s=0.5, idle_s=0.25,
                 steps_left=10, steps_timed=5, timed_s=4.0)
    assert pace(**timed, compiled=False) == Pace(img_per_s=16.0, data_wait=0.25,
                                                 data_idle=0.125, eta_s=8.0)
    assert pace(**timed, compiled=True) == Pace(None, None, None, None)
    assert pace(**{**timed, "steps_left": 0}, compiled=True) == Pace(None, None, None, 0.0)


def test_batch_size_must_split_over_devices(demo_dataset, tmp_path):
    with pytest.raises(ValueError, match="divisible by the 4 devices"):
        loop.train(tiny_config(demo_dataset[1], batch_size=6), str(tmp_path))


@pytest.mark.parametrize("field, value, message", [
    ("optimizer.name", "sgd", "config.optimizer.name='sgd': choose one of"),
    ("optimizer.schedule", "step", "config.optimizer.schedule='step': choose one of "
                                   "cosine, constant"),
    ("log_every", 0, "config.log_every=0 must be at least 1"),
    ("checkpoint_every", 0, "config.checkpoint_every=0 must be at least 1"),
    ("prefetch", 0, "config.prefetch=0 must be at least 1"),
    ("image_size", 68, "config.image_size=68: not a multiple of 8, as an hourglass of "
                       "config.model.depth=1 needs; give one, e.g. 64 or 72"),
    # A depth below 1 built a depth-1 hourglass, and the size check then passed sizes it
    # cannot take.
    ("model.depth", 0, "config.model.depth=0: must be an integer >= 1"),
    ("model.num_stacks", 0, "config.model.num_stacks=0: must be an integer >= 1"),
    ("model.features", 1, "config.model.features=1: must be an integer >= 2"),
    ("model.interaction", "gated", "config.model.interaction='gated' with shared_trunk=True"),
    # grain refused a seed of 2**32 only once the workdir was made; JAX's key wraps it to 0.
    ("seed", -1, "config.seed=-1 must be in [0, 2**32) (0 to 4294967295)"),
    ("seed", 2**32, "config.seed=4294967296 must be in [0, 2**32) (0 to 4294967295)"),
    # A non-finite weight or option passed, and the run stopped on a non-finite loss that
    # blamed the learning rate.
    ("loss_weights.pose2d", float("nan"), "config.loss_weights.pose2d=nan must be finite "
                                          "and >= 0"),
    ("loss_weights.segm", float("inf"), "config.loss_weights.segm=inf must be finite and >= 0"),
    ("loss_weights.segm", -1.0, "config.loss_weights.segm=-1.0 must be finite and >= 0"),
    ("loss_options.segm.foreground_weight", float("nan"),
     "config.loss_options.segm.foreground_weight=nan must be finite and >= 0"),
    ("loss_options.segm.foreground_weight", float("inf"),
     "config.loss_options.segm.foreground_weight=inf must be finite and >= 0"),
    # The evaluator rounded these to a multiple of the devices (up to one batch a device).
    ("eval_batch_size", 0, "config.eval_batch_size=0 must be at least 1"),
    ("eval_batch_size", 6, "config.eval_batch_size=6 must be divisible by the 4 devices"),
    # The references' test crop is unaugmented: training cuts their box with hgmt's warps.
    ("window", "reference", "config.window='reference': choose one of hgmt, reference_box"),
])
def test_bad_training_fields_are_refused_before_any_work(field, value, message):
    """check_config, which hgmt.main calls before the demo data or the workdir are touched."""
    config = tiny_config("unused", tasks="pose2d+segm", **{field: value})
    config.model.shared_trunk = field == "model.interaction"
    with pytest.raises(ValueError, match=re.escape(message)):
        config_check.check_config(config)


def test_loss_weight_of_no_task_is_an_error(demo_dataset, tmp_path):
    config = tiny_config(demo_dataset[1], tasks="pose2d")
    config.unlock()
    config.loss_weights.normals = 1.0
    with pytest.raises(ValueError, match="^config.loss_weights has normals, which are no tasks"):
        loop.train(config, str(tmp_path))


def test_nan_loss_stops_with_step_and_task_and_keeps_last_checkpoint(demo_dataset, tmp_path):
    config = tiny_config(demo_dataset[1], tasks="segm", total_steps=20, checkpoint_every=1,
                         **{"optimizer.learning_rate": 1e30, "optimizer.schedule": "constant",
                            "optimizer.warmup_steps": 0})
    threads = set(threading.enumerate())
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step (\d+) in task\(s\) "
                                                 r"segm.*last good checkpoint") as err:
        loop.train(config, str(tmp_path))
    # The stopped run closed what it opened: no thread of its checkpoint manager is left. The
    # worker of an event loop orbax has closed is told to stop but not joined, so it may still
    # be ending: each new thread gets a few seconds, and one that lives on fails the test.
    for thread in set(threading.enumerate()) - threads:
        thread.join(timeout=10)
    assert not [thread for thread in set(threading.enumerate()) - threads if thread.is_alive()]
    bad_step = int(err.value.args[0].split("step ")[1].split()[0])
    assert bad_step >= 2
    assert checkpoints.manager(str(tmp_path)).latest_step() == bad_step - 1
    restored_config, variables, step = trained_model.restore_for_inference(str(tmp_path))
    assert step == bad_step - 1
    assert restored_config.tasks == "segm" and restored_config.total_steps == 20
    assert all(np.isfinite(v).all() for v in _flat(variables["params"]).values())


def test_a_non_finite_loss_before_the_first_checkpoint_says_none_was_saved(demo_dataset,
                                                                            tmp_path):
    """A NaN loss at step 1, found at the first log step (2) before any checkpoint: the error
    says that no checkpoint was saved yet, not that the one of step None is intact."""
    config = tiny_config(demo_dataset[1], tasks="pose2d", checkpoint_every=100)
    source = builds.open_split(config.dataset, config.data_dir, "train")
    loader = input_pipeline.train_loader(
        source, batch_size=config.batch_size, image_size=config.image_size, seed=config.seed,
        worker_count=0, tasks=("pose2d",))
    with pytest.raises(FloatingPointError) as err:
        loop.train(config, str(tmp_path), loader=NanJointsFrom(loader, 1))
    message = str(err.value)
    assert message.startswith("non-finite loss at step 1 in task(s) pose2d, total: ")
    assert message.endswith(
        f"(steps 1..2 checked together). Nothing was saved for it or after it; no checkpoint "
        f"was saved yet in {workdirs.checkpoint_dir(str(tmp_path))}. Lower "
        f"optimizer.learning_rate or set optimizer.grad_clip_norm, and rerun.")
    assert checkpoints.manager(str(tmp_path)).all_steps() == []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kill_9_then_rerun_finishes_from_the_last_checkpoint(demo_dataset, tmp_path):
    workdir = str(tmp_path / "w")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=400, checkpoint_every=5)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    ckpt = workdirs.checkpoint_dir(workdir)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        steps = [int(d) for d in os.listdir(ckpt) if d.isdigit()] if os.path.isdir(ckpt) else []
        if any(s >= 10 for s in steps):
            break
        time.sleep(0.5)
    assert proc.poll() is None, "training ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = checkpoints.manager(workdir).latest_step()
    assert killed_at is not None and 10 <= killed_at < 400

    cmd[cmd.index("--config.total_steps=400")] = f"--config.total_steps={killed_at + 5}"
    cmd.append("--resume_with_changed_config")
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {killed_at}" in rerun.stderr and "resumed from" in rerun.stderr
    assert f"step {killed_at + 5}/{killed_at + 5}" in rerun.stderr
    assert checkpoints.manager(workdir).latest_step() == killed_at + 5
    # The console holds the user's lines: INFO only from hgmt's own modules (orbax and
    # TFDS log dozens of INFO lines on a resume), unless --verbosity=1.
    info_from = set(re.findall(r"^I\d{4} [\d:.]+ +\d+ ([\w.]+):\d+\]", rerun.stderr, re.M))
    hgmt_modules = {f for _, _, files in os.walk(os.path.join(REPO, "hgmt")) for f in files
                    if f.endswith(".py")}
    assert "loop.py" in info_from and info_from <= hgmt_modules, info_from
    result = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert 0.0 <= result["pose2d/pckh@0.5"] <= 1.0


@pytest.mark.slow
def test_two_processes_train_the_same_replicated_parameters(demo_dataset, tmp_path):
    from hgmt.evaluation import evaluator

    port = _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "multihost_worker.py"),
                               str(tmp_path), demo_dataset[1], str(i), str(port)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i in range(2)]
    outs = [p.communicate(timeout=400)[0] for p in procs]
    for p, out in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-3000:]
    topology = [json.loads((tmp_path / f"topology_{i}.json").read_text()) for i in range(2)]
    # Each process's rows on its own devices, process 0's first (the mesh positions the
    # sampler and the device crop take as each example's place in the global batch).
    assert topology == [{"process_index": i, "process_count": 2, "local_devices": 2,
                         "devices": 4, "positions": [2 * i, 2 * i + 1],
                         "gathered": [0, 1, 10, 11]} for i in range(2)]
    p0, p1 = (np.load(tmp_path / f"params_{i}.npz") for i in range(2))
    assert p0.files == p1.files and len(p0.files) > 10
    for k in p0.files:
        np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    e0, e1 = (json.loads((tmp_path / f"eval_{i}.json").read_text()) for i in range(2))
    assert e0 == e1 and e0["num_examples"] == 2
    # The host-sharded evaluation equals a single-process one of the same parameters.
    config, variables, _ = trained_model.restore_for_inference(str(tmp_path))
    for k, v in _flat(variables["params"]).items():
        np.testing.assert_array_equal(v, p0[k], err_msg=k)
    single = evaluator.evaluate(config, variables)
    assert single["num_examples"] == 2
    np.testing.assert_allclose(single["pose2d"]["pckh@0.5"], e0["pose2d"]["pckh@0.5"])
    np.testing.assert_allclose(single["segm"]["mean_iou"], e0["segm"]["mean_iou"], rtol=1e-5)


def test_rmsprop_is_the_reference_codes():
    """The reference trains with Torch's optim.rmsprop (surreal training/opts.lua: -alpha 0.99,
    -epsilon 1e-8; torch/optim rmsprop.lua): m = 0 at first, then each step
    m <- alpha m + (1 - alpha) g^2 and x <- x - lr g / (sqrt(m) + epsilon)."""
    from hgmt.training import steps

    config = tiny_config("unused", **{"optimizer.name": "rmsprop",
                                      "optimizer.schedule": "constant",
                                      "optimizer.warmup_steps": 0,
                                      "optimizer.learning_rate": 0.5})
    opt = steps.create_optimizer(config)
    state = opt.init(jax.numpy.zeros(2, np.float32))
    # Step 1 by hand, g = (1e-3, 1e-5): m = 0.01 g^2, sqrt(m) = 0.1 |g|, so the step is
    # -0.5 g / (0.1 |g| + 1e-8) = (-4.9995, -4.9505). With epsilon inside the square root
    # (optax's default) the second would be -0.5e-5 / sqrt(1e-12 + 1e-8) = -0.04999.
    update, state = opt.update(np.array([1e-3, 1e-5], np.float32), state)
    np.testing.assert_allclose(np.asarray(update), [-4.9995, -4.9505], rtol=1e-4)
    # Step 2, g = (2e-3, -3e-5): the same formula on m = 0.99 m + 0.01 g^2.
    m = 0.99 * 0.01 * np.array([1e-3, 1e-5]) ** 2 + 0.01 * np.array([2e-3, -3e-5]) ** 2
    update, state = opt.update(np.array([2e-3, -3e-5], np.float32), state)
    np.testing.assert_allclose(np.asarray(update),
                               -0.5 * np.array([2e-3, -3e-5]) / (np.sqrt(m) + 1e-8), rtol=1e-4)


@pytest.mark.slow
def test_a_foreground_weighted_step_is_the_same_on_one_device_and_on_two():
    """The foreground-weighted cross-entropy divides by the weights' sum over the global
    batch: one 8-example batch whose halves have very different foreground gives the same
    loss and gradient on 1 device and split over 2. An SGD step of rate 1 moves the
    parameters by minus the gradient."""
    import flax
    import jax.numpy as jnp
    import optax

    from tests.test_tasks import make_batch

    tasks = ("depth", "segm")
    config = tiny_config("unused", tasks="+".join(tasks), image_size=64, **{
        "loss_options.depth.foreground_weight": 10.0,
        "loss_options.segm.foreground_weight": 10.0})
    model = create_model(config.model, heads(tasks), axis_name="batch")
    variables = steps.init_variables(model, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    state = steps.TrainState.create(apply_fn=model.apply, params=variables["params"],
                                    batch_stats=variables["batch_stats"], tx=optax.sgd(1.0))
    batch = make_batch(seed=1, b=8, r=16)
    rng = np.random.default_rng(0)
    batch["image"] = jnp.asarray(rng.integers(0, 255, (8, 64, 64, 3)), jnp.uint8)
    # The first 4 examples keep about 1 foreground pixel in 10 of the last 4's.
    segm = np.array(batch["segm"])
    segm[:4] = np.where(rng.random((4, 16, 16)) < 0.1, segm[:4], 0)
    batch["segm"] = jnp.asarray(segm)
    batch["depth_class"] = jnp.where(segm > 0, batch["depth_class"], 0)
    weights = check_loss_weights(config, tasks)
    options = check_loss_options(config, tasks)

    def step(devices: int):
        step = jax.pmap(lambda s, b: steps.train_step(s, b, weights, options),
                        axis_name="batch", devices=jax.devices()[:devices])
        split = jax.tree.map(lambda x: x.reshape((devices, -1) + x.shape[1:]), batch)
        new, metrics = step(flax.jax_utils.replicate(state, jax.devices()[:devices]), split)
        return (jax.tree.map(lambda x: np.asarray(x[0]), new.params),
                {k: float(v[0]) for k, v in metrics.items()})

    (one, loss_one), (two, loss_two) = step(1), step(2)
    assert loss_one.keys() == loss_two.keys() == {"loss/depth", "loss/segm", "loss/total"}
    for k in loss_one:
        assert loss_two[k] == pytest.approx(loss_one[k], rel=1e-5), k
    def flat(tree) -> np.ndarray:
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])

    gradient = flat(state.params) - flat(one)
    # float32 rounding of the cross-device sums: 2e-3 of the gradient here (5e-15 in
    # float64); 2.5 with each device's own weights' sum.
    assert np.linalg.norm(flat(two) - flat(one)) < 1e-2 * np.linalg.norm(gradient)


@pytest.mark.slow
def test_the_jitted_step_is_pmaps_and_the_host_state_flaxs_unreplicated_one_bit_for_bit():
    """Two tasks (a volume and a class map, with their interaction) on 4 devices with the
    config's optimizer, two steps then the BatchNorm statistics' sync (as
    `trainer.Trainer.host_state`): the trainer's step over global arrays (`steps.jitted_train_step`,
    `devices.replicate`, `prefetch.prefetch_to_device`) gives
    `jax.pmap`'s step's state and losses on the same inputs, bit for bit; every device holds
    the same state, so one device's copy is the state; `devices.to_host` gives flax's
    unreplicated copy on the host exactly: the same tree, numpy leaves of the same dtypes,
    shapes and bytes."""
    import flax

    from tests.test_tasks import make_batch

    tasks = ("pose3d", "segm")
    config = tiny_config("unused", image_size=64, tasks="+".join(tasks))
    model = create_model(config.model, heads(tasks), axis_name="batch")
    state = steps.create_train_state(jax.random.key(0), config, model)
    batch = make_batch(seed=1, b=8, r=16)
    batch["image"] = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3)).astype(np.uint8)
    batch = jax.device_get(batch)
    weights, options = check_loss_weights(config, tasks), check_loss_options(config, tasks)
    p_step = steps.jitted_train_step(weights, options)
    placed = devices.replicate(state)
    pmapped = jax.pmap(functools.partial(steps.train_step, weights=weights, options=options),
                       axis_name="batch")
    theirs = flax.jax_utils.replicate(state)
    for on_devices in prefetch.prefetch_to_device(iter([batch, batch]), 2):
        placed, ours_losses = p_step(placed, on_devices)
        theirs, their_losses = pmapped(theirs, jax.tree.map(
            lambda x: x.reshape((4, 2) + x.shape[1:]), batch))
        for k in their_losses:
            assert np.asarray(ours_losses[k]).tobytes() == \
                np.asarray(their_losses[k]).tobytes(), k
    for a, b in zip(jax.tree.leaves(devices.to_host(placed)),
                    jax.tree.leaves(jax.device_get(flax.jax_utils.unreplicate(theirs))),
                    strict=True):
        assert a.tobytes() == b.tobytes()
    synced = steps.sync_batch_stats(placed)
    for path, leaf in jax.tree_util.tree_leaves_with_path(synced):
        first, *others = [np.asarray(s.data) for s in leaf.addressable_shards]
        assert len(others) == 3 and all(o.tobytes() == first.tobytes() for o in others), \
            jax.tree_util.keystr(path)
    old = jax.device_get(flax.jax_utils.unreplicate(synced))
    new = devices.to_host(synced)
    assert jax.tree.structure(new) == jax.tree.structure(old)
    old_leaves, new_leaves = jax.tree.leaves(old), jax.tree.leaves(new)
    assert len(new_leaves) == len(jax.tree.leaves(state)) > 100
    for a, b in zip(old_leaves, new_leaves, strict=True):
        assert type(b) is np.ndarray and type(a) is np.ndarray
        assert (b.dtype, b.shape) == (a.dtype, a.shape) and b.tobytes() == a.tobytes()
    assert int(new.step) == 2


@pytest.mark.slow
def test_per_device_batch_norm_normalises_each_devices_share_and_saves_their_mean():
    """config.model.batch_norm_stats on 4 devices, one trainer step: with "device" each
    device's running BatchNorm statistics are those of the model without a device axis run
    on its own 2 examples (PyTorch DataParallel's BatchNorm), so they differ between devices,
    and `sync_batch_stats` (before each evaluation and save) gives their mean; with "global"
    every device's are those of all 8 examples."""
    from tests.test_tasks import make_batch

    tasks = ("pose2d", "segm")
    batch = make_batch(seed=1, b=8, r=16)
    batch["image"] = np.random.default_rng(0).integers(0, 255, (8, 64, 64, 3)).astype(np.uint8)
    batch = jax.device_get(batch)
    for mode in ("device", "global"):
        config = tiny_config("unused", image_size=64, **{"model.batch_norm_stats": mode})
        weights, options = check_loss_weights(config, tasks), check_loss_options(config, tasks)
        state = steps.create_train_state(jax.random.key(0), config, create_model(
            config.model, heads(tasks), axis_name="batch"))
        placed, _ = steps.jitted_train_step(weights, options)(
            devices.replicate(state),
            next(prefetch.prefetch_to_device(iter([batch]), 1)))
        alone = create_model(config.model, heads(tasks))  # no device axis
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        own = [alone.apply(variables, batch["image"][rows], train=True,
                           mutable=["batch_stats"])[1]["batch_stats"]
               for rows in ([slice(2 * d, 2 * d + 2) for d in range(4)] if mode == "device"
                            else [slice(0, 8)] * 4)]
        on_devices = jax.device_get(placed.batch_stats)  # each leaf (4, ...), device order
        for d, expected in enumerate(own):
            for a, b in zip(jax.tree.leaves(on_devices), jax.tree.leaves(expected), strict=True):
                np.testing.assert_allclose(a[d], b, rtol=1e-4, atol=1e-6)
        synced = jax.device_get(steps.sync_batch_stats(placed).batch_stats)
        for a, b in zip(jax.tree.leaves(synced), jax.tree.leaves(on_devices), strict=True):
            np.testing.assert_allclose(a, np.broadcast_to(b.mean(0), b.shape), rtol=1e-5,
                                       atol=1e-7)
        if mode == "device":  # the devices' shares differ
            assert all(np.abs(leaf[0] - leaf[1]).max() > 1e-4
                       for leaf in jax.tree.leaves(on_devices))


def test_gradient_clipping_keeps_the_optimizer_states_layout():
    """With optimizer.grad_clip_norm the optimizer state has the tree of the unclipped one
    (checkpoints read alike), and its updates are optax.chain(clip_by_global_norm, rmsprop)'s:
    a first gradient of global norm 5 clipped to 1 changes the second step's mean square.
    0 and None turn clipping off."""
    import optax

    kw = {"optimizer.name": "rmsprop", "optimizer.schedule": "constant",
          "optimizer.warmup_steps": 0, "optimizer.learning_rate": 0.5}
    plain = steps.create_optimizer(tiny_config("unused", **kw))
    clip = steps.create_optimizer(tiny_config("unused", **kw, **{"optimizer.grad_clip_norm": 1.0}))
    reference = optax.chain(optax.clip_by_global_norm(1.0), optax.rmsprop(
        0.5, decay=0.99, eps=1e-8, eps_in_sqrt=False))
    params = {"a": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    assert jax.tree.structure(clip.init(params)) == jax.tree.structure(plain.init(params))
    grads = [{"a": np.array([3.0, 0.0], np.float32), "b": np.array([4.0], np.float32)},
             {"a": np.array([0.3, -0.1], np.float32), "b": np.array([0.2], np.float32)}]
    states = {"clip": clip.init(params), "reference": reference.init(params),
              "plain": plain.init(params)}
    opts = {"clip": clip, "reference": reference, "plain": plain}
    for g in grads:
        updates = {}
        for name, opt in opts.items():
            updates[name], states[name] = opt.update(g, states[name], params)
        _assert_trees_equal(updates["clip"], updates["reference"], rtol=1e-6)
    # The second step of the unclipped optimizer is another: the clipping took effect.
    assert not np.allclose(updates["plain"]["a"], updates["clip"]["a"], rtol=0.1)
    with pytest.raises(ValueError, match=r"optimizer.grad_clip_norm=-1.0: give a positive"):
        steps.create_optimizer(tiny_config("unused", **{"optimizer.grad_clip_norm": -1.0}))
    # One object per setting (the train state's static part); None is no clipping, as 0;
    # a constant rate is one setting whatever total_steps, a cosine decay is not.
    assert steps.create_optimizer(tiny_config("unused", **kw)) is plain
    assert steps.create_optimizer(tiny_config("unused", **kw, **{
        "optimizer.grad_clip_norm": None})) is plain
    longer = tiny_config("unused", **kw)
    longer.total_steps += 1000
    assert steps.create_optimizer(longer) is plain
    cosine = {**kw, "optimizer.schedule": "cosine"}
    longer = tiny_config("unused", **cosine)
    longer.total_steps += 1000
    assert steps.create_optimizer(longer) is not steps.create_optimizer(
        tiny_config("unused", **cosine))


def test_a_run_trained_without_clipping_resumes_with_it(demo_dataset, tmp_path, caplog):
    """The fix the non-finite-loss errors advise: rerun the workdir with
    optimizer.grad_clip_norm set and --resume_with_changed_config. Its checkpoints (written
    without clipping) restore; config.json records the new config, the previous one kept as
    config_before_step2.json. A rerun changing only when to log and save resumes as it is.
    Each start is recorded in starts.jsonl."""
    workdir = str(tmp_path / "run")
    kw = {"tasks": "pose2d", "worker_count": 0}
    loop.train(tiny_config(demo_dataset[1], total_steps=2, **kw), workdir)
    loop.train(tiny_config(demo_dataset[1], total_steps=2, log_every=1, checkpoint_every=1,
                           **kw), workdir)
    before = open(os.path.join(workdir, workdirs.CONFIG_FILE)).read()
    clipped = tiny_config(demo_dataset[1], total_steps=4, **kw,
                          **{"optimizer.grad_clip_norm": 1.0})
    with pytest.raises(resume.CannotResume, match=r"config\.optimizer\.grad_clip_norm=0\.0 -> "
                                                  r"1\.0; config\.total_steps=2 -> 4\."):
        loop.train(clipped, workdir)
    with caplog.at_level(logging.INFO):
        state = loop.train(clipped, workdir, resume_with_changed_config=True)
    assert "resumed from" in caplog.text and "at step 2" in caplog.text
    assert ("resuming at step 2 with a changed config (--resume_with_changed_config): "
            "config.optimizer.grad_clip_norm=0.0 -> 1.0; config.total_steps=2 -> 4; the config of "
            "the steps "
            "up to 2 is kept in ") in caplog.text
    assert int(state.step) == 4
    assert checkpoints.manager(workdir).all_steps() == [2, 4]
    assert open(workdirs.config_before_file(workdir, 2)).read() == before
    assert json.loads(before)["log_every"] == 1  # the free change was recorded
    assert run_config.load_config(workdir).optimizer.grad_clip_norm == 1.0
    # Each start that trained is recorded with its step, code and devices; the refused one not.
    starts = [json.loads(line) for line in open(workdirs.starts_file(workdir))]
    assert [s["step"] for s in starts] == [0, 2, 2]
    code = code_version.describe()
    assert all({k: s[k] for k in code} == code and s["devices"] == jax.device_count()
               and s["processes"] == 1 and s["jax"] == jax.__version__ for s in starts)


@pytest.mark.slow  # an older hgmt's checkpoint layout
def test_a_run_clipped_in_the_older_optimizer_layout_resumes(demo_dataset, tmp_path, caplog,
                                                             monkeypatch):
    """Checkpoints written with clipping as `optax.chain(clip_by_global_norm, rmsprop)` (how
    hgmt built the clipped optimizer before its state kept the optimizer's own layout) are
    read with their values as saved, and resume with or without clipping."""
    import optax

    def optimizer_before(config):
        tx = optax.rmsprop(steps.create_lr(config), decay=0.99, eps=1e-8, eps_in_sqrt=False)
        return optax.chain(optax.clip_by_global_norm(config.optimizer.grad_clip_norm), tx)

    workdir = str(tmp_path / "run")
    kw = {"tasks": "pose2d", "worker_count": 0, "optimizer.grad_clip_norm": 1.0}
    with monkeypatch.context() as m:
        m.setattr(steps, "create_optimizer", optimizer_before)
        before = loop.train(tiny_config(demo_dataset[1], total_steps=2, **kw), workdir)
    with caplog.at_level(logging.INFO):
        read = loop.train(tiny_config(demo_dataset[1], total_steps=2, **kw), workdir)
    assert "older layout" in caplog.text
    leaves = jax.tree.leaves
    assert len(leaves(read.opt_state)) == len(leaves(before.opt_state)) > 0
    for a, b in zip(leaves((read.params, read.opt_state[0])),
                    leaves((before.params, before.opt_state[1])), strict=True):
        np.testing.assert_array_equal(a, b)
    after = loop.train(tiny_config(demo_dataset[1], total_steps=4,
                                   **{**kw, "optimizer.grad_clip_norm": 0.0}), workdir,
                       resume_with_changed_config=True)
    assert int(after.step) == 4


def test_a_resume_takes_the_loader_workers_its_checkpoint_was_saved_with(demo_dataset, tmp_path,
                                                                        caplog):
    """grain restores a data position only into the worker count (and process count) that
    saved it. Auto (-1) takes the checkpoint's count, so a requeued job on a host with other
    cores resumes; a fixed other count, or another process count, is named with its fix
    instead of reading as a config that does not fit the checkpoints (leaving no summaries
    file behind). The count the loader runs, which decides which records make each batch,
    is logged."""
    workdir = str(tmp_path / "run")
    kw = {"tasks": "pose2d", "worker_count": 0}
    with caplog.at_level(logging.INFO):
        loop.train(tiny_config(demo_dataset[1], total_steps=2, **kw), workdir)
    assert ("process 0's loader runs 0 worker process(es) (config.worker_count=0); which "
            "records make each batch depends on that count") in caplog.text
    assert checkpoints.resume_worker_count(workdir, -1, 1) == 0
    newer = tmp_path / "run" / "checkpoints" / "4" / "data"  # a damaged newer position
    newer.mkdir(parents=True)
    (newer / "process_0-of-1.json").write_text("{not json")
    assert checkpoints.resume_worker_count(workdir, -1, 1) == 0  # the older one's
    shutil.rmtree(newer.parent)
    saved = tmp_path / "run" / "checkpoints" / "2" / "data" / "process_0-of-1.json"
    position = json.loads(saved.read_text())
    saved.write_text(json.dumps({**position, "worker_count": 3}))
    assert checkpoints.resume_worker_count(workdir, -1, 1) == 3
    assert checkpoints.resume_worker_count(workdir, 3, 1) == 3
    with pytest.raises(ValueError, match=r"config.worker_count=0: the checkpoint .*/2 saved the "
                                         r"loader's position with 3 worker\(s\), .* rerun with "
                                         r"--config.worker_count=3 \(or -1"):
        loop.train(tiny_config(demo_dataset[1], total_steps=3, **kw), workdir,
                   resume_with_changed_config=True)
    saved.write_text(json.dumps(position))
    saved.rename(saved.with_name("process_0-of-2.json"))
    events = sorted(p.name for p in (tmp_path / "run").glob("events.*"))
    with pytest.raises(ValueError, match=r"its data position was saved by 2 process\(es\), one "
                                         r"file each, and this run has 1; rerun with 2"):
        loop.train(tiny_config(demo_dataset[1], total_steps=3, **kw), workdir,
                   resume_with_changed_config=True)
    # A refused rerun leaves no TensorBoard file of its own in the workdir.
    assert sorted(p.name for p in (tmp_path / "run").glob("events.*")) == events
    saved.with_name("process_0-of-2.json").rename(saved)
    # Another seed or split size than the position's sampler: named with the fix (grain's
    # refusal of the sampler read as checkpoints of another model configuration). The
    # sampler's seed is grain_seed(config.seed); config.seed itself is an older hgmt's.
    seed_0, seed_3 = input_pipeline.grain_seed(0), input_pipeline.grain_seed(3)
    assert "num_records=12," in position["sampler"] and f"seed={seed_0})" in position["sampler"]
    for sampler, message in (
            (position["sampler"].replace(f"seed={seed_0})", f"seed={seed_3})"),
             rf"config.seed=0: the checkpoint .*/2 saved the loader's position with grain seed "
             rf"{seed_3}, which is config.seed=3 if this hgmt saved it .*and only that seed "
             rf"resumes it; rerun with --config.seed=3, or resume config.seed={seed_3} with the "
             rf"hgmt version that wrote the checkpoint, or train in a new --workdir$"),
            (position["sampler"].replace(f"seed={seed_0})", "seed=0)"),
             rf"config.seed=0: the checkpoint .*/2 saved the loader's position with the seed "
             rf"itself as grain's seed, as an older hgmt did; this one gives grain a hash of it "
             rf"\({seed_0}, .*one epoch apart\), so it cannot continue that data stream "
             rf"\(--resume_with_changed_config does not change that\); train in a new "
             rf"--workdir, or resume with the hgmt version that wrote the checkpoint$"),
            (position["sampler"].replace("num_records=12,", "num_records=10,"),
             r"the training split of 'surreal/all' under data_dir=.* now has 12 records; the "
             r"checkpoint .*/2 saved the loader's position over 10, and it resumes only over "
             r"as many; rebuild the split as it was")):
        saved.write_text(json.dumps({**position, "sampler": sampler}))
        with pytest.raises(resume.CannotResume, match=message):
            loop.train(tiny_config(demo_dataset[1], total_steps=2, **kw), workdir)
    saved.write_text(json.dumps(position))
    resumed = loop.train(tiny_config(demo_dataset[1], total_steps=3, **{**kw,
                                                                         "worker_count": -1}),
                         workdir, resume_with_changed_config=True)
    assert int(resumed.step) == 3



def test_another_grain_seed_is_named_with_both_config_seeds_it_can_be(tmp_path):
    """A position saved with a grain seed other than grain_seed(config.seed) reads two ways:
    this hgmt's hash of one config.seed (`input_pipeline.config_seed` of it), or an older
    hgmt's config.seed given as it was. The error names both, each with its fix, so that a
    checkpoint of an older hgmt saved with seed 3 and resumed with seed 0 does not read as
    one of a 10-digit config.seed alone."""
    import ml_collections

    data = tmp_path / "run" / "checkpoints" / "2" / "data"
    data.mkdir(parents=True)
    workdir = str(tmp_path / "run")
    config = ml_collections.ConfigDict({"seed": 0, "dataset": "surreal/all", "data_dir": "d"})
    hashed_3 = input_pipeline.grain_seed(3)
    assert input_pipeline.config_seed(3) not in (0, 3, hashed_3)  # the two readings differ
    for grain, this, older in ((3, input_pipeline.config_seed(3), 3),  # an older hgmt's seed 3
                               (hashed_3, 3, hashed_3)):  # this hgmt's seed 3
        (data / "process_0-of-1.json").write_text(json.dumps(
            {"worker_count": 0, "sampler": f"IndexSampler(num_records=12, seed={grain})"}))
        with pytest.raises(resume.CannotResume) as raised:
            resume.check_sampler(config, workdir, 12)
        assert str(raised.value) == (
            f"config.seed=0: the checkpoint {tmp_path / 'run' / 'checkpoints' / '2'} saved the "
            f"loader's position with grain seed {grain}, which is config.seed={this} if this "
            f"hgmt saved it (it gives grain a hash of the seed, "
            f"`hgmt.data.input_pipeline.grain_seed`), or config.seed={older} if an older hgmt "
            f"did (it gave grain the seed itself), and only that seed resumes it; rerun with "
            f"--config.seed={this}, or resume config.seed={older} with the hgmt version that "
            f"wrote the checkpoint, or train in a new --workdir")
    (data / "process_0-of-1.json").write_text(json.dumps(
        {"worker_count": 0,
         "sampler": f"IndexSampler(num_records=12, seed={input_pipeline.grain_seed(0)})"}))
    resume.check_sampler(config, workdir, 12)  # its own seed: nothing to refuse


def test_each_process_resumes_with_the_loader_workers_of_its_own_position(tmp_path,
                                                                          monkeypatch):
    """Under worker_count -1 hosts with other usable cores save other counts, one file each
    (data/process_<i>-of-<n>.json): each process takes its own file's count (before, every
    process took process 0's, and grain refused the position on the others). A checkpoint
    saved by fewer processes than this run has no file of this process: its first file names
    the process count it was saved by."""
    data = tmp_path / "run" / "checkpoints" / "2" / "data"
    data.mkdir(parents=True)
    sampler = f"IndexSampler(num_records=12, seed={input_pipeline.grain_seed(0)})"
    for index, workers in ((0, 3), (1, 5)):
        (data / f"process_{index}-of-2.json").write_text(json.dumps(
            {"worker_count": workers, "sampler": sampler}))
    workdir = str(tmp_path / "run")
    for index, workers in ((0, 3), (1, 5)):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        assert checkpoints.resume_worker_count(workdir, -1, 2) == workers
        assert checkpoints.saved_position(workdir)[0].name == f"process_{index}-of-2.json"
        with pytest.raises(checkpoints.CannotResume,
                           match=rf"config.worker_count=4: the checkpoint .*/2 saved the "
                                 rf"loader's position with {workers} worker\(s\)"):
            checkpoints.resume_worker_count(workdir, 4, 2)
    for index in (0, 1):
        (data / f"process_{index}-of-2.json").unlink()
    (data / "process_0-of-1.json").write_text(json.dumps({"worker_count": 3,
                                                          "sampler": sampler}))
    with pytest.raises(checkpoints.CannotResume,
                       match=r"its data position was saved by 1 process\(es\), one file "
                             r"each, and this run has 2"):
        checkpoints.resume_worker_count(workdir, -1, 2)  # as process 1


def test_a_checkpoint_lacking_this_processs_position_file_is_passed_over(tmp_path,
                                                                        monkeypatch):
    """A checkpoint saved by this run's 2 processes whose process-1 position file is missing
    does not restore on process 1 (grain reads only its own file), so process 1 takes its
    worker count from the previous checkpoint's own file, not from process 0's file of the
    newest (5 workers, not 3: with 3 every older restore failed too); process 0, whose file
    is there, still takes the newest."""
    sampler = f"IndexSampler(num_records=12, seed={input_pipeline.grain_seed(0)})"
    for step, indices in ((2, (0, 1)), (4, (0,))):
        data = tmp_path / "run" / "checkpoints" / str(step) / "data"
        data.mkdir(parents=True)
        for index in indices:
            (data / f"process_{index}-of-2.json").write_text(json.dumps(
                {"worker_count": (3, 5)[index], "sampler": sampler}))
    workdir = str(tmp_path / "run")
    for index, workers, step in ((0, 3, 4), (1, 5, 2)):
        monkeypatch.setattr(jax, "process_index", lambda index=index: index)
        assert checkpoints.resume_worker_count(workdir, -1, 2) == workers
        file, _ = checkpoints.saved_position(workdir)
        assert (file.parent.parent.name, file.name) == (str(step), f"process_{index}-of-2.json")


def test_a_resume_with_another_config_stops_naming_each_field_unless_asked(tmp_path):
    """A rerun in a workdir with checkpoints whose learning rate differs from its config.json
    stops before it writes anything, in one line naming the field, its two values and the
    fixes; the seed, which the loader's saved position needs, cannot change even when asked;
    evaluator, logging and checkpointing fields may change; a config.json of an older layout
    (before `evals`, `model.ops`, `optimizer.grad_clip_norm`) is compared field by field, not
    refused. (Resuming with the flag: test_a_run_trained_without_clipping_resumes_with_it.)"""
    workdir = tmp_path / "run"
    kw = {"tasks": "pose2d", "worker_count": 0, "total_steps": 2}
    run_config.save_config(tiny_config("data", **kw), str(workdir))
    (workdir / "checkpoints" / "2").mkdir(parents=True)  # checked before it is read
    saved = (workdir / "config.json").read_text()
    files = sorted(str(p) for p in workdir.rglob("*"))
    with pytest.raises(resume.CannotResume) as err:
        loop.train(tiny_config("data", **kw, **{"optimizer.learning_rate": 1e-3}),
                   str(workdir))
    assert str(err.value) == (
        f"the checkpoints of {workdir} (the newest of step 2) were trained with another "
        f"config ({workdir}/config.json): config.optimizer.learning_rate=0.00025 -> 0.001. "
        f"Rerun with the workdir's values (--config.optimizer.learning_rate=0.00025), or train "
        f"in a new --workdir, or pass --resume_with_changed_config to train on with the new values "
        f"(config.json then records them; the previous one is kept as "
        f"config_before_step<N>.json, N the step resumed from)")
    assert (workdir / "config.json").read_text() == saved
    assert sorted(str(p) for p in workdir.rglob("*")) == files
    with pytest.raises(resume.CannotResume, match=r": config\.seed=0 -> 1; "
                                                  r"config\.total_steps=2 -> 3\. Rerun "
                                                  r"with the workdir's values \(--config.seed=0 "
                                                  r"--config.total_steps=2\), or train in a new "
                                                  r"--workdir \(seed cannot change"):
        loop.train(tiny_config("data", **{**kw, "total_steps": 3}, seed=1), str(workdir),
                   resume_with_changed_config=True)

    free = tiny_config("elsewhere", **{**kw, "worker_count": 2}, log_every=1,
                       checkpoint_every=1, **{"evals.test.every": 1, "model.ops": "flax"})
    assert resume.check_config(free, str(workdir)) == []
    older = json.loads(saved)
    del older["evals"], older["model"]["ops"], older["optimizer"]["grad_clip_norm"]
    older.update(eval_every=0, eval_frames="middle", eval_max_examples=8)
    (workdir / "config.json").write_text(json.dumps(older))
    assert resume.check_config(tiny_config("data", **kw), str(workdir)) == []
    with pytest.raises(resume.CannotResume,
                       match="config.optimizer.learning_rate=0.00025 -> 0.001"):
        resume.check_config(tiny_config("data", **kw, **{"optimizer.learning_rate": 1e-3}),
                            str(workdir))


def test_a_resume_keeps_what_the_best_checkpoints_scores_are_of(tmp_path):
    """The evaluator that keeps the best checkpoint may change when it runs, not what its
    scores are of (its metric, split, frames, examples, flip, protocol: a new score is
    compared with the kept best's); another evaluator may change any setting. A fresh start
    over another config's config.json (its checkpoints removed) keeps that file aside, not as
    a config of the new run's steps."""
    workdir = tmp_path / "run"
    kw = {"tasks": "pose2d", "worker_count": 0, "total_steps": 2}
    run_config.save_config(tiny_config("data", **kw, **{"evals.validation.every": 1}),
                           str(workdir))
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    kw["evals.validation.every"] = 2
    for field, value in (("best_metric", "pose2d/pckh@0.5"), ("frames", "every10"),
                         ("max_examples", 4), ("flip", True), ("protocol", "bodynet"),
                         ("split", "test")):
        with pytest.raises(resume.CannotResume, match=rf"config\.evals\.validation\.{field}="):
            resume.check_config(tiny_config("data", **kw, **{f"evals.validation.{field}": value}),
                                str(workdir))
    free = {"evals.test.frames": "every10", "evals.test.flip": True}
    assert resume.check_config(tiny_config("data", **kw, **free), str(workdir)) == []

    saved = (workdir / "config.json").read_text()
    other = tiny_config("data", **kw, **{"optimizer.learning_rate": 1e-3})
    resume.save_config(other, str(workdir), [], 0)
    [kept] = (workdir / "config_superseded").iterdir()
    assert re.fullmatch(r"0-\d{8}-\d{6}\.json", kept.name) and kept.read_text() == saved
    assert json.loads((workdir / "config.json").read_text())["optimizer"]["learning_rate"] == 1e-3
    # Not a config of this run's steps: the run was trained with one config (hgmt.report).
    assert workdirs.configs_before(str(workdir)) == []
    (workdir / "config_before_step0.json").write_text(saved)
    assert workdirs.configs_before(str(workdir)) == []
    resume.save_config(other, str(workdir), [], 0)  # the same config: nothing more kept
    assert len(list((workdir / "config_superseded").iterdir())) == 1


def test_a_resume_may_change_what_an_evaluator_that_kept_no_best_scores(tmp_path):
    """An evaluator with a best_metric that runs only after the last step keeps no best
    checkpoint (`eval_settings.keeper`: none to compare new scores with), so a rerun may change
    any of its settings; once it runs during training (every > 0), it keeps the best and they
    are locked. A rerun that makes it run during training may not change them either: its
    earlier evals.jsonl lines, which the saved settings measured, become the scores to
    beat."""
    workdir = tmp_path / "run"
    kw = {"tasks": "pose2d", "worker_count": 0, "total_steps": 2,
          "evals.validation.every": 0, "evals.validation.at_end": True}
    run_config.save_config(tiny_config("data", **kw), str(workdir))
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    changes = {"evals.validation.best_metric": "pose2d/pckh@0.5",
               "evals.validation.frames": "every10", "evals.validation.max_examples": 4}
    assert tiny_config("data", **kw).evals.validation.best_metric == "loss/total"
    assert resume.check_config(tiny_config("data", **kw, **changes), str(workdir)) == []
    starts = {**kw, "evals.validation.every": 1}
    assert resume.check_config(tiny_config("data", **starts), str(workdir)) == []
    with pytest.raises(resume.CannotResume, match=r"config\.evals\.validation\.best_metric="
                                                  r"'loss/total' -> 'pose2d/pckh@0.5'; "
                                                  r"config\.evals\.validation\.frames="):
        resume.check_config(tiny_config("data", **starts, **changes), str(workdir))
    run_config.save_config(tiny_config("data", **{**kw, "evals.validation.every": 1}),
                           str(workdir))
    with pytest.raises(resume.CannotResume, match=r"config\.evals\.validation\.best_metric="
                                                  r"'loss/total' -> 'pose2d/pckh@0.5'; "
                                                  r"config\.evals\.validation\.frames="):
        resume.check_config(tiny_config("data", **{**kw, "evals.validation.every": 1},
                                        **changes), str(workdir))


def test_an_older_shared_trunk_config_with_an_interaction_resumes_as_sum(tmp_path):
    """A config.json an older hgmt wrote with shared_trunk=True and another interaction (which
    one shared stream never used) is read as 'sum' by the resume check as by `load_config`,
    so the command that today's create_model accepts resumes."""
    workdir = tmp_path / "run"
    kw = {"tasks": "pose2d", "worker_count": 0, "model.shared_trunk": True}
    run_config.save_config(tiny_config("data", **kw), str(workdir))
    saved = json.loads((workdir / "config.json").read_text())
    saved["model"]["interaction"] = "concat"
    (workdir / "config.json").write_text(json.dumps(saved))
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    assert resume.check_config(tiny_config("data", **kw), str(workdir)) == []
    assert run_config.load_config(str(workdir)).model.interaction == "sum"


def test_an_older_config_without_loss_options_resumes_only_with_the_default_losses(tmp_path):
    """A config.json written before `config.loss_options` trained with the tasks' default losses:
    a rerun with those resumes, one with another option is a difference named like any other
    (before, a field the saved config lacks was not compared, and the loss changed silently),
    and `load_config` fills the other fields added since (augment_on, max_damaged_fraction,
    the augment section at the augmentation training used before it)."""
    workdir = tmp_path / "run"
    kw = {"tasks": "pose2d+depth", "worker_count": 0}
    run_config.save_config(tiny_config("data", **kw), str(workdir))
    saved = json.loads((workdir / "config.json").read_text())
    for field in ("loss_options", "augment_on", "max_damaged_fraction", "augment"):
        del saved[field]
    (workdir / "config.json").write_text(json.dumps(saved))
    (workdir / "checkpoints" / "2").mkdir(parents=True)
    assert resume.check_config(tiny_config("data", **kw), str(workdir)) == []
    with pytest.raises(resume.CannotResume,
                       match=r": config\.loss_options\.depth\.foreground_weight=1\.0 -> 10\.0\. "):
        resume.check_config(tiny_config(
            "data", **kw, **{"loss_options.depth.foreground_weight": 10.0}), str(workdir))
    loaded = run_config.load_config(str(workdir))
    assert (loaded.augment_on, loaded.max_damaged_fraction) == ("auto", 0.001)
    assert Augment.from_config(loaded.augment) == Augment()
    # Saved when depth had options and segm not yet ({} or depth's only): segm's are the
    # defaults too, not a field the saved config lacks and the check passes over.
    kw["tasks"] = "segm+depth"
    run_config.save_config(tiny_config("data", **kw), str(workdir))
    saved = json.loads((workdir / "config.json").read_text())
    for partial in ({}, {"depth": {"foreground_weight": 1.0}}):
        saved["loss_options"] = partial
        (workdir / "config.json").write_text(json.dumps(saved))
        assert resume.check_config(tiny_config("data", **kw), str(workdir)) == []
        with pytest.raises(resume.CannotResume,
                           match=r": config\.loss_options\.segm\.foreground_weight=1\.0 -> "
                                 r"10\.0\. "):
            resume.check_config(tiny_config(
                "data", **kw, **{"loss_options.segm.foreground_weight": 10.0}), str(workdir))


def test_the_data_location_is_made_absolute_for_the_workdirs_config(tmp_path, monkeypatch):
    """hgmt.main records config.data_dir and demo.surreal_root as absolute paths of its
    working directory (`~` expanded, an object store's URL kept): a workdir trained with the
    demo's relative `runs/demo_data/tfds` was not found by hgmt.evaluate run from elsewhere,
    whose error then said to build data that was there."""
    from configs import demo

    monkeypatch.chdir(tmp_path)
    config = demo.get_config()
    resume.absolute_data_location(config)
    assert config.data_dir == str(tmp_path / "runs" / "demo_data" / "tfds")
    assert config.demo.surreal_root == str(tmp_path / "runs" / "demo_data" / "surreal")
    config = tiny_config("~/tfds")
    config.data_dir = "gs://bucket/tfds"
    resume.absolute_data_location(config)  # no demo section
    assert config.data_dir == "gs://bucket/tfds"
    config.data_dir = "~/tfds"
    resume.absolute_data_location(config)
    assert config.data_dir == os.path.join(os.path.expanduser("~"), "tfds")


def test_the_demo_data_is_built_into_the_folders_the_training_reads(tmp_path, monkeypatch):
    """`hgmt.main.prepare_demo_dataset` (hgmt.main's, launch/sweep.py's and the benchmarks'
    demo build) builds into config.data_dir and demo.surreal_root as `loop.run` reads them:
    `~` expanded, a relative path of the working directory. Before, the sweep's build of
    `--config.data_dir=~/tfds` went into a folder named `~` in the working directory, while
    its runs read $HOME/tfds and built the data there again."""
    from configs import demo as demo_config
    from hgmt import main
    from hgmt.data import demo

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    built = []
    monkeypatch.setattr(worker_signals, "resource_tracker_without_sigusr1", lambda: None)
    monkeypatch.setattr(demo, "build", lambda root, data_dir, *args, **kwargs: built.append(
        (root, data_dir)))
    config = demo_config.get_config()
    config.data_dir, config.demo.surreal_root = "~/tfds", "data/surreal"
    main.prepare_demo_dataset(config)
    assert built == [(str(tmp_path / "data" / "surreal"), str(tmp_path / "home" / "tfds"))]
    assert (config.data_dir, config.demo.surreal_root) == ("~/tfds", "data/surreal")


def test_a_total_steps_below_the_latest_checkpoint_is_refused_even_when_changes_are_allowed(
        demo_dataset, tmp_path):
    """A run trained to step 4, rerun with total_steps=2 and --resume_with_changed_config:
    refused before anything is written (config.json keeps total_steps 4), naming the
    checkpoint's step and the fix, where it labelled step 4's weights as step 2."""
    from hgmt import workdirs

    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=4)
    loop.train(config, str(tmp_path))
    before = open(os.path.join(tmp_path, workdirs.CONFIG_FILE)).read()
    files = sorted(os.listdir(tmp_path))
    with pytest.raises(loop.resume.CannotResume) as e:
        loop.train(tiny_config(demo_dataset[1], tasks="pose2d", total_steps=2), str(tmp_path),
                   resume_with_changed_config=True)
    assert str(e.value) == (
        f"config.total_steps=2 is below step 4, the workdir's latest checkpoint "
        f"({workdirs.checkpoint_dir(str(tmp_path))}): the run would label step 4's weights as "
        f"step 2. Give --config.total_steps=4 or more, or train into a new --workdir")
    assert open(os.path.join(tmp_path, workdirs.CONFIG_FILE)).read() == before
    assert sorted(os.listdir(tmp_path)) == files  # no summaries file either


@pytest.mark.slow
def test_tensorboard_shows_each_step_once_after_a_rerun_from_an_earlier_checkpoint(
        demo_dataset, tmp_path):
    """A run logged steps 1-4 and saved checkpoints 2 and 4; checkpoint 4 is removed (a run
    stopped after its last checkpoint, whose later lines are not continued) and the rerun
    trains steps 3-4 again: TensorBoard (the EventAccumulator its server reads runs with,
    which purges on a restart record) shows loss/total once per step."""
    import glob
    import shutil

    from tensorboard.backend.event_processing import plugin_event_accumulator

    from hgmt import workdirs

    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=4, log_every=1,
                         checkpoint_every=2)
    loop.train(config, str(tmp_path))
    shutil.rmtree(os.path.join(workdirs.checkpoint_dir(str(tmp_path)), "4"))
    for name in (workdirs.EVALS_FILE, "eval_test.json"):  # the rerun's own evaluation
        if os.path.exists(os.path.join(tmp_path, name)):
            os.remove(os.path.join(tmp_path, name))
    time.sleep(1.1)  # a second event file, named by the second it was opened in
    loop.train(config, str(tmp_path))
    assert len(glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))) == 2
    shown = plugin_event_accumulator.EventAccumulator(str(tmp_path),
                                                      size_guidance={"tensors": 0})
    shown.Reload()
    assert [e.step for e in shown.Tensors("loss/total")] == [1, 2, 3, 4]

    # A fresh start (checkpoints removed) of another task set: the earlier run's event files
    # are moved aside, so neither its steps nor its tags (loss/pose2d) show beside the new.
    shutil.rmtree(workdirs.checkpoint_dir(str(tmp_path)))
    earlier = sorted(os.path.basename(p)
                     for p in glob.glob(os.path.join(tmp_path, "events.out.tfevents.*")))
    time.sleep(1.1)
    loop.train(tiny_config(demo_dataset[1], tasks="segm", total_steps=2, log_every=1,
                           checkpoint_every=2), str(tmp_path))
    [aside] = glob.glob(os.path.join(workdirs.events_superseded_dir(str(tmp_path)), "0-*"))
    assert sorted(os.listdir(aside)) == earlier
    assert len(glob.glob(os.path.join(tmp_path, "events.out.tfevents.*"))) == 1
    shown = plugin_event_accumulator.EventAccumulator(str(tmp_path),
                                                      size_guidance={"tensors": 0})
    shown.Reload()
    tags = shown.Tags()["tensors"]
    assert "loss/segm" in tags and "loss/pose2d" not in tags


def test_the_trainer_takes_a_workdir_under_home_and_a_relative_data_dir(demo_dataset, tmp_path,
                                                                       monkeypatch):
    """`loop.run` (the Python API; hgmt.main goes through it) with `--workdir=~/run`, as a
    shell leaves it, and a data_dir relative to the working directory: the workdir is
    $HOME/run, and its config.json names the data absolutely, for commands run from
    elsewhere. Before, the lock made a folder named `~` in the working directory, then failed
    on $HOME/run; and the relative data_dir was saved as given."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    home.mkdir()
    cwd.mkdir()
    os.symlink(demo_dataset[1], cwd / "data")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    trained = []
    monkeypatch.setattr(loop, "_train", lambda config, workdir, *args: trained.append(
        (workdir, config.data_dir)) or (None, {}))
    loop.run(tiny_config("data", tasks="pose2d", total_steps=1), "~/run")
    assert trained == [(str(home / "run"), str(cwd / "data"))]
    assert os.listdir(cwd) == ["data"] and os.path.isdir(home / "run")


def _toy_apply(variables: dict, images: jax.Array, train: bool = True,
               mutable: list | None = None, axis_name: str | None = None) -> tuple[dict, dict]:
    """A two-stage stand-in for the model (the train step's plumbing, not the network, is
    under test): each example's mean colour x (B,3) scales learned per-channel logits, stage
    s by s + 1; its BatchNorm statistic is the mean x of the batch over `axis_name`."""
    import jax.numpy as jnp

    x = images.astype(jnp.float32).mean(axis=(1, 2)) / 255.0
    r = images.shape[1] // 4
    outputs = {t: jnp.stack([(s + 1) * x[:, :1, None, None] * w + x[:, 1:2, None, None]
                             * jnp.ones((x.shape[0], r, r, w.shape[0])) for s in range(2)])
               for t, w in variables["params"].items()}
    mean = x.mean(0)
    if axis_name is not None:
        mean = jax.lax.pmean(mean, axis_name)
    return outputs, {"batch_stats": {"mean": mean}}


def test_the_train_step_over_two_devices_is_the_global_batchs_weighted_stage_sum():
    """train_step's plumbing on a toy two-stage model (`_toy_apply`), pose2d weighted 3 and a
    foreground-weighted segm weighted 0.5, 4 examples split over 2 devices, SGD of rate 1:
    on each device the logged losses are the whole batch's, each task's the sum of its two stages'
    losses computed directly on the 4 examples (`task.loss`, no device axis) and the total
    their weighted sum; the parameters move by minus the gradient of that total (jax.grad
    of it, again without devices); the BatchNorm statistic is the 4 examples' mean."""
    import flax
    import jax.numpy as jnp
    import optax

    from hgmt.tasks import TASKS
    from tests.test_tasks import make_batch

    weights, options = {"pose2d": 3.0, "segm": 0.5}, {"segm": {"foreground_weight": 4.0}}
    batch = make_batch(seed=3, b=4, r=8)
    batch["image"] = jnp.asarray(np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3)),
                                 jnp.uint8)
    params = {"pose2d": jnp.linspace(-1.0, 1.0, 16), "segm": jnp.linspace(2.0, -1.0, 15)}
    state = steps.TrainState.create(
        apply_fn=functools.partial(_toy_apply, axis_name=devices.AXIS), params=params,
        batch_stats={"mean": jnp.zeros(3)}, tx=optax.sgd(1.0))

    def direct(p):  # the reference: the whole batch, no device axis, the stages by hand
        outputs, _ = _toy_apply({"params": p}, batch["image"])
        per_task = {t: sum(TASKS[t].loss(outputs[t][s], TASKS[t].targets(batch),
                                         **options.get(t, {})) for s in (0, 1))
                    for t in weights}
        return sum(weights[t] * per_task[t] for t in weights), per_task

    (total, per_task), grads = jax.jit(jax.value_and_grad(direct, has_aux=True))(params)
    assert float(per_task["segm"]) > 0.1 and float(per_task["pose2d"]) > 1e-4
    expected_params = jax.tree.map(lambda p, g: np.asarray(p - g), params, grads)
    mean = np.asarray(batch["image"], np.float32).mean(axis=(1, 2)).mean(0) / 255.0
    step = jax.pmap(functools.partial(steps.train_step, weights=weights, options=options),
                    axis_name=devices.AXIS, devices=jax.devices()[:2])
    new, metrics = step(flax.jax_utils.replicate(state, jax.devices()[:2]),
                        jax.tree.map(lambda x: x.reshape((2, 2) + x.shape[1:]), batch))
    for d in (0, 1):
        assert float(metrics["loss/total"][d]) == pytest.approx(float(total), rel=1e-5)
        for t in weights:
            assert float(metrics[f"loss/{t}"][d]) == pytest.approx(float(per_task[t]),
                                                                   rel=1e-5), (d, t)
            np.testing.assert_allclose(np.asarray(new.params[t][d]), expected_params[t],
                                       rtol=1e-5, atol=1e-6, err_msg=f"{d} {t}")
        np.testing.assert_allclose(np.asarray(new.batch_stats["mean"][d]), mean, rtol=1e-6)


def test_the_learning_rate_schedules_and_the_optimizers_follow_them_by_hand():
    """Peak rate 1, warm-up 2 steps, 6 steps in all: linear 0, 0.5, 1, then the cosine
    0.5 (1 + cos(pi k / 4)) of the 4 steps after warm-up, 0 at the last; the constant
    schedule warms up alike and stays at 1. Adam's k-th update (count k) of a constant
    gradient 1 is -lr(k) (its bias-corrected moments are 1), RMSprop's -lr(k) / sqrt(1 -
    0.99^(k+1)) (its mean square from 0): both optimizers step by the configured schedule."""
    kw = {"optimizer.learning_rate": 1.0, "optimizer.warmup_steps": 2, "total_steps": 6}
    cosine = steps.create_lr(tiny_config("unused", **kw, **{"optimizer.schedule": "cosine"}))
    c = np.cos(np.pi * np.arange(1, 5) / 4)
    by_hand = np.concatenate([[0.0, 0.5, 1.0], 0.5 * (1 + c)])  # steps 0..6
    np.testing.assert_allclose([float(cosine(k)) for k in range(7)], by_hand, atol=1e-6)
    constant = steps.create_lr(tiny_config("unused", **kw, **{"optimizer.schedule": "constant"}))
    np.testing.assert_allclose([float(constant(k)) for k in (0, 1, 2, 3, 6, 100)],
                               [0.0, 0.5, 1.0, 1.0, 1.0, 1.0], atol=1e-6)
    for name in ("adam", "rmsprop"):
        opt = steps.create_optimizer(tiny_config("unused", **kw, **{
            "optimizer.schedule": "cosine", "optimizer.name": name}))
        state = opt.init(np.zeros(1, np.float32))
        for k in range(6):
            update, state = opt.update(np.ones(1, np.float32), state)
            scale = 1.0 if name == "adam" else 1.0 / np.sqrt(1 - 0.99 ** (k + 1))
            np.testing.assert_allclose(np.asarray(update), [-by_hand[k] * scale], rtol=1e-5,
                                       atol=1e-7, err_msg=f"{name} {k}")


def test_syncing_the_batch_norm_statistics_gives_every_device_their_mean():
    """Per-device BatchNorm statistics 0..3 (device d holds d, d + 4, d + 8 in a (3,) leaf):
    `sync_batch_stats` leaves every device the mean over the 4, (1.5, 5.5, 9.5), and the
    parameters as they were."""
    import optax

    assert jax.local_device_count() == 4
    own = np.arange(4, dtype=np.float32)[:, None] + [0.0, 4.0, 8.0]
    state = steps.TrainState.create(apply_fn=None, params={"w": np.ones(2, np.float32)},
                                    batch_stats={"mean": np.zeros(3, np.float32)},
                                    tx=optax.sgd(1.0))
    placed = devices.replicate(state).replace(batch_stats={"mean": devices.place(own)})
    synced = steps.sync_batch_stats(placed)
    np.testing.assert_allclose(np.asarray(synced.batch_stats["mean"]),
                               np.broadcast_to([1.5, 5.5, 9.5], (4, 3)))
    np.testing.assert_array_equal(np.asarray(synced.params["w"]), np.ones((4, 2)))


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_step_metrics_find_the_first_non_finite_step_and_average_the_rest(bad):
    """Steps 1-3 of losses (2, 4, 9) then a step 4 whose segm loss is `bad`: the first check
    keeps 1-3 and pop_means gives their means (5, and 2 x 5 for the total), the second names
    step 4 and its non-finite losses, segm and the total, out of the steps 4-5 it checked."""
    from hgmt.training.step_metrics import StepMetrics

    metrics = StepMetrics()
    for step, value in ((1, 2.0), (2, 4.0), (3, 9.0)):
        metrics.append(step, devices.replicate({"loss/segm": np.float32(value),
                                                "loss/total": np.float32(2 * value)}))
    assert metrics.check() is None
    assert metrics.pop_means() == {"loss/segm": 5.0, "loss/total": 10.0}
    assert metrics.pop_means() == {}
    for step, value in ((4, bad), (5, 1.0)):
        metrics.append(step, devices.replicate({"loss/segm": np.float32(value),
                                                "loss/total": np.float32(value)}))
    found = metrics.check()
    assert (found.step, found.tasks, found.first, found.last) == (4, ["segm", "total"], 4, 5)
