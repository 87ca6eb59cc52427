"""The training loop's own bookkeeping, worked out by hand on a clock the test moves: which
steps save a checkpoint, evaluate, log and sync the damaged records, when a preemption stops
the run, and what a log line says of the first step's compilation, img/s, the data wait and
the ETA. The steps, batches, saves and evaluations are stand-ins (`_run`): each step takes 10 s
(the first one of a run, which compiles, 1000 s), each batch drawn 1 s, each save or
evaluation 100 s set apart from the training time. Around the steps (`_trainer`'s
stand-ins, which record what they are asked): the plan line, what evaluations recorded after
the start set aside, the evaluations a preemption skipped, and the end of the run."""

from __future__ import annotations

import functools
import logging
import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hgmt import devices, workdirs
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


def _trainer(monkeypatch, calls: list, *, start: int, total: int, restored: bool = True,
             due=(), recorded=(), at_end=(), finished=None, superseded=(), forgotten=(),
             damaged=None, received=None, evaluations_after: bool = True):
    """A `Trainer` resumed at `start` of `total` steps (afresh where not `restored`), its
    evaluators, checkpoint manager, lock and watch stand-ins that append what they are asked
    to `calls`, in order, as (what, arguments...): the evaluators `due` at `start` (those
    `recorded` there), those after training `at_end` (those an earlier run `finished`:
    {name: summary}), the evals.jsonl files `superseded` and the best checkpoints
    `forgotten` after the start; `damaged` the damaged records' summary (None: none met); a
    signal `received`. The state on the devices and the one restored are two `State`s;
    `devices.to_host` marks what it fetched."""
    monkeypatch.setattr(devices, "replicate", lambda tree: tree)
    monkeypatch.setattr(devices, "to_host", lambda tree: ("on the host", tree))

    class Evals:
        def due(self, step):
            return list(due) if step == start else []

        def recorded(self, step):
            return set(recorded) if step == start else set()

        def at_end(self):
            return list(at_end)

        def supersede_after(self, step):
            calls.append(("supersede_after", step))
            return list(superseded)

        def forget_after(self, step, host_state):
            calls.append(("forget_after", step, host_state()))
            return list(forgotten)

        def finished_at_end(self, step, host_state):
            calls.append(("finished_at_end", step, host_state))
            return dict(finished or {})

        def run(self, names, step, host_state, writer, *, final, stop):
            calls.append(("run", names, step, host_state, final, stop))
            return {n: {"evaluated": n} for n in names}

    class Manager:
        def wait_until_finished(self):
            calls.append(("wait_until_finished",))

    class Lock:
        def check(self):
            calls.append(("lock_check",))

    class Damaged:
        found = {} if damaged is None else {"a.tfrecord": [3]}

        def summary(self):
            return damaged

    class Watch:
        def __init__(self):
            self.received, self.evaluations_after = received, evaluations_after

    class Data:
        def batches(self):
            yield from ()

    class State:
        step = start

    config = tiny_config("unused", tasks="pose2d", total_steps=total, batch_size=8,
                         prefetch=1)
    return trainer.Trainer(config, "/w", model=None, state=State(),
                           restored_state=State() if restored else None, mngr=Manager(),
                           evals=Evals(), writer="writer", data_iter=Data(),
                           damaged=Damaged(), watch=Watch(), peer_watch=None, lock=Lock(),
                           train_step=None)


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_the_plan_line_names_the_tasks_steps_devices_batch_and_where_augmentation_runs(
        monkeypatch, caplog):
    """Resumed at step 4 of 8 on 2 devices (global batch 8, augmented on the device): the
    line gives the steps 4..8, "2 devices", the batch and "device"; on 1 device "1 device"
    (singular), augmented on the host; resumed at the last step it says training ended there
    and what is left (the evaluations after it) runs now."""
    calls = []
    monkeypatch.setattr(jax, "device_count", lambda: 2)
    with caplog.at_level(logging.INFO):
        _trainer(monkeypatch, calls, start=4, total=8).log_plan(("pose2d", "segm"), "device")
        monkeypatch.setattr(jax, "device_count", lambda: 1)
        _trainer(monkeypatch, calls, start=0, total=8, restored=False).log_plan(
            ("pose2d",), "host")
        _trainer(monkeypatch, calls, start=8, total=8).log_plan(("pose2d",), "host")
    assert _messages(caplog) == [
        "training pose2d+segm for steps 4..8, 2 devices, global batch 8, augmentation on "
        "the device",
        "training pose2d for steps 0..8, 1 device, global batch 8, augmentation on the host",
        "training pose2d ended at step 8: what is left to do after it runs now"]
    assert calls == []


def test_what_evaluations_recorded_after_the_start_is_moved_aside_and_said(monkeypatch,
                                                                          caplog):
    """Resumed at step 4: the evaluations' files of the steps after 4 are moved aside, then
    the best checkpoint chosen after 4 (step 6), which is given the state on the host to
    choose again from; each move is logged with where to. Nothing to move: no line."""
    calls = []
    with caplog.at_level(logging.INFO):
        t = _trainer(monkeypatch, calls, start=4, total=8,
                     superseded=["evals.jsonl", "eval_test.json"], forgotten=[6])
        t.set_aside_what_follows_the_start()
        assert calls == [("supersede_after", 4), ("forget_after", 4, ("on the host", t.state))]
        assert _messages(caplog) == [
            f"moved evals.jsonl, eval_test.json of the steps after 4, where training starts "
            f"again, to {workdirs.evals_superseded_dir('/w')}",
            f"moved the best checkpoint kept at step 6 in {workdirs.best_dir('/w')} to "
            f"{workdirs.superseded_dir('/w')}: chosen by an evaluation after step 4, where "
            f"training starts again"]
        caplog.clear()
        _trainer(monkeypatch, calls, start=0, total=8,
                 restored=False).set_aside_what_follows_the_start()
    assert _messages(caplog) == []


def test_the_evaluations_a_preemption_skipped_run_on_resuming_and_stop_as_at_their_step(
        monkeypatch, caplog):
    """Resumed at step 4 of 8, validation and test due there, test recorded: validation is
    evaluated at step 4 on the restored state, stopped only by a lost lock, and the restored
    state is let go (steps train from here). Resumed at the last step, 8: a signal stops
    them as it stops the evaluations after training, and the restored state is kept (it is
    the final state). A fresh run evaluates nothing before its steps."""
    calls = []
    with caplog.at_level(logging.INFO):
        t = _trainer(monkeypatch, calls, start=4, total=8, due=["validation", "test"],
                     recorded=["test"])
        restored = t.restored_state
        t.evaluate_missed()
    assert calls == [("run", ["validation"], 4, restored, False, t.lock_check)]
    assert t.restored_state is None
    assert _messages(caplog) == ["evaluating step 4, which its run did not: validation"]

    calls.clear()
    t = _trainer(monkeypatch, calls, start=8, total=8, due=["validation"])
    restored = t.restored_state
    t.evaluate_missed()
    assert calls == [("run", ["validation"], 8, restored, False, t.stop_if_preempted)]
    assert t.restored_state is restored

    calls.clear()
    _trainer(monkeypatch, calls, start=0, total=8, restored=False,
             due=["validation"]).evaluate_missed()
    assert calls == []


def test_finishing_waits_for_the_last_write_then_runs_the_evaluations_not_finished(
        monkeypatch, caplog):
    """Resumed at the last step, 8, where an earlier run finished test: the final state is
    the restored one; the last checkpoint's write is waited for, the damaged records'
    summary logged, the lock checked, then only validation evaluated (final, stopped by a
    signal), test's summary kept and said so; a signal received meanwhile with evaluations
    after training is said to have come too late. Resumed at step 4, nothing counts as
    finished (the steps after 4 change the state): both run, and with no signal received no
    line says one came too late."""
    calls = []
    with caplog.at_level(logging.INFO):
        t = _trainer(monkeypatch, calls, start=8, total=8, at_end=["test", "validation"],
                     finished={"test": {"kept": "test"}}, damaged="1 damaged record",
                     received="SIGUSR1")
        final, summaries = t.finish()
    assert final is t.restored_state
    assert summaries == {"test": {"kept": "test"}, "validation": {"evaluated": "validation"}}
    assert calls == [("wait_until_finished",), ("lock_check",),
                     ("finished_at_end", 8, final),
                     ("run", ["validation"], 8, final, True, t.stop_if_preempted)]
    assert _messages(caplog) == [
        "1 damaged record",
        f"step 8's evaluations after training that an earlier run finished, kept: "
        f"{workdirs.eval_file('/w', 'test')}",
        "the evaluations after training finished before the signal could stop them: the run "
        "is complete, nothing to rerun"]

    calls.clear()
    caplog.clear()
    host = types.SimpleNamespace(step=8)
    monkeypatch.setattr(trainer.Trainer, "host_state", lambda self, step: host)
    with caplog.at_level(logging.INFO):
        t = _trainer(monkeypatch, calls, start=4, total=8, at_end=["test", "validation"],
                     finished={"test": {"kept": "test"}}, evaluations_after=True)
        final, summaries = t.finish()
    assert final is host
    assert calls == [("wait_until_finished",), ("lock_check",),
                     ("run", ["test", "validation"], 8, final, True, t.stop_if_preempted)]
    assert summaries == {"test": {"evaluated": "test"}, "validation": {"evaluated": "validation"}}
    assert _messages(caplog) == []
