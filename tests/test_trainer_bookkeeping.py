"""The training loop's own bookkeeping, worked out by hand on a clock the test moves: which
steps save a checkpoint, evaluate, log and sync the damaged records, when a preemption stops
the run, and what a log line says of the first step's compilation, img/s, the data wait and
the ETA. The steps, batches, saves and evaluations are stand-ins (`_run`): each step takes 10 s
(the first one of a run, which compiles, 1000 s), each batch drawn 1 s, each save or
evaluation 100 s set apart from the training time."""

from __future__ import annotations

import functools
import logging
import re

import jax.numpy as jnp
import numpy as np
import pytest

from hgmt import devices
from hgmt.training import step_metrics, steps, trainer
from tests.conftest import tiny_config


class _Stopped(Exception):
    """`Trainer.stop_preempted`'s stand-in: args (step, saving, after_training), `run` what
    the run did up to there."""


class _Run:
    """What a `Trainer.train` did: saves (step, checkpoint, evaluators), damaged-record syncs,
    TensorBoard scalars and joins of the last checkpoint's write, by step."""

    def __init__(self) -> None:
        self.now = 0.0
        self.saves: list[tuple[int, bool, list[str]]] = []
        self.synced: list[int] = []
        self.scalars: dict[int, dict] = {}
        self.joins = 0
        self.step = 0


def _run(monkeypatch, *, start: int, total: int, log_every: int, checkpoint_every: int,
         due=(), preempted_at=None, loader_fails_at=None, received=None) -> _Run:
    """`Trainer.train` from `start` to `total`; evaluations due at the steps `due`, a
    preemption signal reached at `preempted_at`; the loader fails drawing the batch of
    `loader_fails_at` after a signal (`received`)."""
    run = _Run()

    def clock() -> float:
        return run.now

    class LoopTime:
        perf_counter = staticmethod(clock)

    monkeypatch.setattr(trainer, "time", LoopTime())
    monkeypatch.setattr(step_metrics, "Interval",
                        functools.partial(step_metrics.Interval, clock=clock))
    monkeypatch.setattr(devices, "replicate", lambda tree: tree)

    def save_and_evaluate(self, step, *, checkpoint=True, evaluate=None):
        with self.interval.set_apart():
            run.now += 100.0
        run.saves.append((step, checkpoint, list(evaluate or [])))

    def stop_preempted(self, step, saving, after_training=False):
        stopped = _Stopped(step, saving, after_training)
        stopped.run = run
        raise stopped

    monkeypatch.setattr(trainer.Trainer, "save_and_evaluate", save_and_evaluate)
    monkeypatch.setattr(trainer.Trainer, "stop_preempted", stop_preempted)

    class Data:
        def batches(self):
            for step in range(start + 1, total + 1):
                if step == loader_fails_at:
                    raise OSError("the loader's workers were killed")
                run.now += 1.0
                yield {"x": np.zeros((8, 1), np.float32)}

        def consumed(self):
            pass

    def train_step(state, batch):
        run.step += 1
        run.now += 1000.0 if run.step == 1 else 10.0
        return state, {"loss/total": jnp.array([float(start + run.step)])}

    class Manager:
        def is_saving_in_progress(self):
            return False

        def wait_until_finished(self):
            run.joins += 1

    class Evals:
        def due(self, step):
            return ["val"] if step in due else []

    class Writer:
        def write_scalars(self, step, scalars):
            run.scalars.setdefault(step, {}).update(scalars)

    class Damaged:
        found: dict = {}

        def sync(self):
            run.synced.append(start + run.step)

    class Watch:
        multihost = False

        def __init__(self):
            self.received = received

        def reached(self, step):
            return step == preempted_at

    class State:
        step = start

    config = tiny_config("unused", tasks="pose2d", total_steps=total, log_every=log_every,
                         checkpoint_every=checkpoint_every, prefetch=1)
    t = trainer.Trainer(config, "unused", model=None, state=State(),
                        restored_state=State() if start else None, mngr=Manager(),
                        evals=Evals(), writer=Writer(), data_iter=Data(), damaged=Damaged(),
                        watch=Watch(), peer_watch=None, lock=None, train_step=train_step)
    run.lr = steps.create_lr(config)
    t.train()
    return run


def _lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]


def test_a_fresh_run_saves_logs_and_times_its_steps(monkeypatch, caplog):
    """7 steps, log every 3, checkpoint every 4, evaluations due at 2, 4, 6.

    Step 1 ends at 1 + 1000 = 1001 s: its own line, and the interval and the ETA's clock
    restart there. Steps 2 and 3 take 1 + 10 s each, step 2's evaluation 100 s set apart:
    step 3's line at 1001 + 22 + 100 = 1123 s: 2 steps of 8 images in 22 s of training
    (16/22 img/s), 2 s of it waiting (2/22, all of it idle: the step had run), and the ETA
    4 steps left at (1123 - 1001) / 2 = 61 s a step: 244 s = 0:04:04. Steps 4-6 train 33 s
    (the saves of 4 set apart), step 6's ETA 1 step at (1256 - 1001) / 5 = 51 s. Step 7,
    the last, saves and logs (1 step, 11 s; ETA 0). The damaged records are synced where a
    line or a checkpoint is due: 3, 4, 6, 7; step 4's write is joined as step 5 starts."""
    with caplog.at_level(logging.INFO):
        run = _run(monkeypatch, start=0, total=7, log_every=3, checkpoint_every=4,
                   due={2, 4, 6})
    assert run.saves == [(2, False, ["val"]), (4, True, ["val"]), (6, False, ["val"]),
                         (7, True, [])]
    assert run.synced == [3, 4, 6, 7]
    assert run.joins == 1
    assert sorted(run.scalars) == [3, 6, 7]
    for step, (n, training, waited) in {3: (2, 22, 2), 6: (3, 33, 3), 7: (1, 11, 1)}.items():
        logged = run.scalars[step]
        assert logged["img_per_s"] == pytest.approx(8 * n / training)
        assert logged["data_wait"] == pytest.approx(waited / training)
        assert logged["data_idle"] == pytest.approx(waited / training)
        # the update of step k is the schedule's count k - 1 (optax counts from 0)
        assert logged["learning_rate"] == pytest.approx(float(run.lr(step - 1)))
    # step k's loss is k: each line's is the mean since the last, the compiling step's
    # included: of steps 1..3 (2), 4..6 (5), 7
    assert [run.scalars[s]["loss/total"] for s in (3, 6, 7)] == [2.0, 5.0, 7.0]
    lines = _lines(caplog)
    assert lines[0] == "step 1 (compilation included) took 1001.0 s"
    assert [re.search(r"ETA (\S+)", line)[1] for line in lines[1:]] == [
        "0:04:04", "0:00:51", "0:00:00"]
    assert [line.split("  ")[0] for line in lines[1:]] == ["step 3/7", "step 6/7", "step 7/7"]


def test_a_resumed_run_that_logs_every_step_times_its_first_step_apart(monkeypatch, caplog):
    """Resumed at step 4 of 8, a line every step, checkpoint every 3, evaluations due at 5
    and 7, preempted at 7. Step 5, the first this run trains, compiles: its line gives its
    time (1 + 1000 s), no rates and no ETA (3 steps left), and the rates and the ETA's clock
    start after it, at 1001 s; its evaluation ends at 1101 s. Step 6 ends at 1112 s: 11 s of
    training, 1 s of it waiting (8/11 = 0.7 img/s, 9%), the ETA 2 steps at 111 s a step
    (the evaluation counts): 222 s = 0:03:42; it saves a checkpoint (to 1212 s). Step 7 ends
    at 1223 s, 1 step left at 222 / 2 s: 0:01:51. The signal is reached there: the step is
    saved without its evaluation (the rerun runs it) and the run stops, its checkpoint the
    one orbax may still write; step 6's write was joined as step 7 started."""
    with caplog.at_level(logging.INFO):
        with pytest.raises(_Stopped) as stopped:
            _run(monkeypatch, start=4, total=8, log_every=1, checkpoint_every=3, due={5, 7},
                 preempted_at=7)
    assert stopped.value.args == (7, 7, False)
    run = stopped.value.run
    assert run.saves == [(5, False, ["val"]), (6, True, []), (7, True, [])]
    assert run.synced == [5, 6, 7] and run.joins == 1
    assert "img_per_s" not in run.scalars[5]
    assert run.scalars[6]["img_per_s"] == pytest.approx(8 / 11)
    lines = _lines(caplog)
    assert lines[0] == ("step 5/8  total 5  took 1001.0 s, compilation included: img/s, "
                        "data wait and ETA from the next line")
    assert lines[1] == ("step 6/8  total 6  0.7 img/s  data-wait 9% (device idle 9%)  "
                        "ETA 0:03:42")
    assert lines[2].endswith("ETA 0:01:51") and len(lines) == 3


def test_a_resumed_runs_first_step_is_timed_apart_where_it_does_not_log(monkeypatch,
                                                                         caplog):
    """Resumed at step 4 of 8, a line every 2: step 5, the first this run trains, is not a
    log step; its own line gives its 1 + 1000 s, and the interval and the ETA's clock restart
    after it. Step 6's line: 1 step of 8 images in 11 s (8/11 img/s), the ETA 2 steps at
    11 s: 22 s. Step 8's: 2 steps in 22 s, ETA 0; it saves, the last step."""
    with caplog.at_level(logging.INFO):
        run = _run(monkeypatch, start=4, total=8, log_every=2, checkpoint_every=10)
    lines = _lines(caplog)
    assert lines[0] == "step 5 (compilation included) took 1001.0 s"
    assert [re.search(r"ETA (\S+)", line)[1] for line in lines[1:]] == ["0:00:22", "0:00:00"]
    assert [run.scalars[s]["img_per_s"] for s in (6, 8)] == pytest.approx([8 / 11, 16 / 22])
    assert run.saves == [(8, True, [])]


def test_a_single_last_step_logs_its_compilation_once(monkeypatch, caplog):
    """Resumed at step 2 of 3, a line every 2: step 3 is both the first this run trains and
    the last; its one line gives its time, 1001 s from the start, and the ETA 0 (nothing
    left). A signal reached at the last step with no evaluation due there saves it and lets
    the run end (no stop: nothing is left to do)."""
    with caplog.at_level(logging.INFO):
        run = _run(monkeypatch, start=2, total=3, log_every=2, checkpoint_every=10,
                   preempted_at=3)
    assert run.saves == [(3, True, [])]
    lines = _lines(caplog)
    assert len(lines) == 1 and lines[0].endswith("took 1001.0 s, compilation included"), lines
    assert "img_per_s" not in run.scalars[3]


def test_a_signal_at_the_last_step_where_evaluations_are_due_stops_after_training(
        monkeypatch):
    """Preempted at step 3 of 3 with an evaluation due there: the step is saved without it
    and the run stops as after training (the rerun evaluates it)."""
    with pytest.raises(_Stopped) as stopped:
        _run(monkeypatch, start=0, total=3, log_every=10, checkpoint_every=10, due={3},
             preempted_at=3)
    assert stopped.value.args == (3, 3, True)
    assert stopped.value.run.saves == [(3, True, [])]


def test_a_loader_failing_after_a_signal_saves_the_last_step_trained_unless_restored(
        monkeypatch):
    """A one-process run resumed at step 4 whose loader fails drawing step 6's batch after a
    signal stops as preempted at step 5, saved; failing at step 5's batch, it stops at step 4,
    the checkpoint it resumed from, without saving it again."""
    with pytest.raises(_Stopped) as stopped:
        _run(monkeypatch, start=4, total=8, log_every=10, checkpoint_every=10,
             loader_fails_at=6, received="SIGTERM")
    assert stopped.value.args == (5, 5, False)
    assert stopped.value.run.saves == [(5, True, [])] and stopped.value.run.synced == [5]
    with pytest.raises(_Stopped) as stopped:
        _run(monkeypatch, start=4, total=8, log_every=10, checkpoint_every=10,
             loader_fails_at=5, received="SIGTERM")
    assert stopped.value.args == (4, None, False)
    assert stopped.value.run.saves == []


def test_the_non_finite_step_named_is_the_bad_one_not_the_first_checked():
    """Steps 3, 4 and 5 checked together, step 4's loss NaN: the step named is 4, among the
    steps 3..5 checked (a first step that is the bad one would not tell them apart)."""
    metrics = step_metrics.StepMetrics()
    for step, value in ((3, 1.0), (4, np.nan), (5, 2.0)):
        metrics.append(step, {"loss/total": jnp.array([value], jnp.float32)})
    found = metrics.check()
    assert (found.step, found.tasks, found.first, found.last) == (4, ["total"], 3, 5)
