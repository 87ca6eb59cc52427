"""Faults of long runs: preemption, a damaged checkpoint, two trainers in one
workdir, a damaged dataset shard, a dead peer. Real signals, processes and orbax checkpoints.

The multi-process and command-line tests take minutes and are marked slow."""

import asyncio
import contextlib
import errno
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

import cv2
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

import hgmt.evaluate
from hgmt import disk_space, run_config, workdirs
from hgmt.data import builds, eval_data, input_pipeline, shards
from hgmt.evaluation import markdown, report_files
from hgmt.inference import trained_model
from hgmt.models import create_model, to_checkpoint_layout
from hgmt.tasks import heads
from hgmt.training import (
    best_checkpoint,
    checkpoint_digests,
    checkpoint_write_faults,
    checkpoints,
    cluster,
    coordinator,
    device_memory,
    eval_reports,
    eval_settings,
    evaluators,
    loop,
    peers,
    preemption,
    resume,
    steps,
    workdir_lock,
)
from tests.conftest import NanJointsFrom, main_command, tiny_config, xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KW = {"tasks": "pose2d", "optimizer.schedule": "constant", "checkpoint_every": 100}


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


class SignalAt:
    """A metric writer that sends this process `signum` (a real signal) when step `at` is
    logged, i.e. in the middle of training."""

    def __init__(self, signum: int, at: int):
        self.signum, self.at = signum, at

    def write_scalars(self, step, scalars):
        if step == self.at:
            os.kill(os.getpid(), self.signum)

    def write_images(self, step, images):
        pass


@pytest.fixture(scope="module")
def straight(demo_dataset, tmp_path_factory):
    """The final state of an uninterrupted 5-step run, for the resumed runs to equal."""
    return loop.train(tiny_config(demo_dataset[1], total_steps=5, **KW),
                       str(tmp_path_factory.mktemp("straight")))


def _assert_same_state(straight, resumed) -> None:
    """Parameters bit for bit; BatchNorm running statistics to rounding (each save averages
    them over the devices, and the two runs saved at different steps)."""
    assert int(resumed.step) == int(straight.step)
    a, b = _flat(straight.params), _flat(resumed.params)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k, v in _flat(straight.batch_stats).items():
        np.testing.assert_allclose(v, _flat(resumed.batch_stats)[k], rtol=1e-6, err_msg=k)


def test_sigterm_saves_that_step_and_the_rerun_ends_bit_for_bit_equal(demo_dataset, tmp_path,
                                                                      straight, caplog):
    """Logged step 2 sends SIGTERM; step 3 ends, is saved, the run stops; a rerun ends with
    the parameters of an uninterrupted run, bit for bit. The rerun removes, with a warning
    naming them, the partial folders of checkpoint writes an earlier run did not finish (here
    planted: a run killed during them), in checkpoints/ and best/, which it left."""
    workdir = str(tmp_path)
    config = tiny_config(demo_dataset[1], total_steps=5, **KW)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(preemption.Preempted, match="saved a checkpoint at step 3") as err:
        loop.train(config, workdir, writer=SignalAt(signal.SIGTERM, 2))
    assert err.value.step == 3 and signal.getsignal(signal.SIGTERM) is before
    assert checkpoints.manager(workdir).all_steps() == [3]
    assert not os.path.exists(os.path.join(tmp_path, workdirs.LOCK_FILE))
    left = [os.path.join(workdirs.checkpoint_dir(workdir), "4.orbax-checkpoint-tmp-1700000000"),
            os.path.join(workdirs.best_dir(workdir), "2.orbax-checkpoint-tmp")]
    for folder in left:
        os.makedirs(os.path.join(folder, "state"))
        with open(os.path.join(folder, "state", "chunk"), "wb") as f:
            f.write(b"x" * 1000)
    with caplog.at_level(logging.WARNING):
        _assert_same_state(straight, loop.train(config, workdir))
    assert _partial(workdir) == []
    assert (f"removed {left[0]}, {left[1]}: the partial folders of a checkpoint write an "
            f"earlier run of this workdir did not finish" in caplog.text), caplog.text


class FailingLoader:
    """The training loader, whose `fail_at`-th batch drawn sends this process SIGTERM and
    raises as grain does when a worker process died (of a signal to the whole job)."""

    def __init__(self, loader, fail_at: int):
        self.it, self.fail_at, self.drawn = iter(loader), fail_at, 0

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        if self.drawn == self.fail_at:
            os.kill(os.getpid(), signal.SIGTERM)
            raise RuntimeError("Worker process was terminated unexpectedly with exit code -15")
        return next(self.it)

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


@pytest.mark.parametrize("fail_at,saved", [(5, [2, 3]), (4, [2])])
def test_a_loader_failing_after_the_signal_stops_as_preempted_at_the_last_step(
        demo_dataset, tmp_path, caplog, fail_at, saved):
    """A loader that fails after a SIGTERM (its workers killed by the signal too): the run
    stops as preempted at the last step trained, saved with the loader's position after its
    batch (config.prefetch = 2 batches drawn ahead: the 5th batch is drawn during step 4,
    so step 3 is the last trained; the 4th during step 3, and step 2 was saved already)."""
    config = tiny_config(demo_dataset[1], total_steps=8, **{**KW, "checkpoint_every": 2})
    assert config.prefetch == 2
    source = builds.open_split(config.dataset, config.data_dir, "train")

    def loader():
        return input_pipeline.train_loader(
            source, batch_size=config.batch_size, image_size=config.image_size,
            seed=config.seed, worker_count=0, tasks=("pose2d",))

    with caplog.at_level(logging.INFO), pytest.raises(
            preemption.Preempted, match=f"saved a checkpoint at step {saved[-1]} ") as err:
        loop.train(config, str(tmp_path), loader=FailingLoader(loader(), fail_at))
    assert err.value.step == saved[-1]
    assert checkpoints.manager(str(tmp_path)).all_steps() == saved
    assert (f"the loader failed after the preemption signal: saving step {saved[-1]}"
            in caplog.text)
    # The saved position is after the last trained step's batch: the next batch drawn on
    # resuming is the one that step's successor would have had.
    resumed = iter(loader())
    data = ocp.args.Composite(data=input_pipeline.grain.PyGrainCheckpointRestore(resumed))
    ocp.CheckpointManager(workdirs.checkpoint_dir(str(tmp_path))).restore(saved[-1], args=data)
    straight = iter(loader())
    for _ in range(saved[-1]):
        next(straight)
    np.testing.assert_array_equal(next(resumed)["image"], next(straight)["image"])


def test_a_loader_failing_after_the_signal_at_the_first_step_saves_nothing(demo_dataset,
                                                                          tmp_path, caplog):
    """The loader fails after a SIGTERM at the first batch of a fresh run: no step was
    trained, so no checkpoint is saved (one of the initial weights would be resumed from and
    validated, as step 0), and the run stops as preempted saying so."""
    config = tiny_config(demo_dataset[1], total_steps=8, **{
        **KW, "checkpoint_every": 2, "evals.validation.every": 2})
    source = builds.open_split(config.dataset, config.data_dir, "train")
    loader = input_pipeline.train_loader(
        source, batch_size=config.batch_size, image_size=config.image_size,
        seed=config.seed, worker_count=0, tasks=("pose2d",))
    with caplog.at_level(logging.INFO), pytest.raises(
            preemption.Preempted, match="stopped before its first step was trained: nothing "
                                        "saved") as err:
        loop.train(config, str(tmp_path), loader=FailingLoader(loader, 1))
    assert err.value.step == 0
    assert ("the loader failed after the preemption signal: no step trained, nothing to save"
            in caplog.text)
    assert checkpoints.manager(str(tmp_path)).all_steps() == []


def test_a_loader_failing_without_a_signal_stops_the_run_with_its_error(demo_dataset,
                                                                          tmp_path):
    """The same failure without a preemption signal is the run's error, nothing saved."""

    class Failing(FailingLoader):
        def __next__(self):
            self.drawn += 1
            if self.drawn == self.fail_at:
                raise RuntimeError("the loader broke")
            return next(self.it)

    config = tiny_config(demo_dataset[1], total_steps=8, **{**KW, "checkpoint_every": 100})
    source = builds.open_split(config.dataset, config.data_dir, "train")
    with pytest.raises(RuntimeError, match="the loader broke"):
        loop.train(config, str(tmp_path), loader=Failing(input_pipeline.train_loader(
            source, batch_size=config.batch_size, image_size=config.image_size,
            seed=config.seed, worker_count=0, tasks=("pose2d",)), 5))
    assert checkpoints.manager(str(tmp_path)).all_steps() == []


def _damage(step_dir: str) -> None:
    """Overwrites every file of a checkpoint's train state with garbage of the same size."""
    for root, _, files in os.walk(os.path.join(step_dir, "state")):
        for name in files:
            path = os.path.join(root, name)
            size = max(os.path.getsize(path), 16)
            with open(path, "wb") as f:
                f.write(np.random.default_rng(0).bytes(size))


def test_sigusr1_save_then_a_damaged_latest_checkpoint_is_reported_skipped_and_kept(
        demo_dataset, tmp_path, straight, caplog):
    """SIGUSR1 (Slurm's early warning) saves step 3 after the periodic step 2; step 3 is then
    damaged: the rerun reports it, resumes from 2 and still ends equal to `straight`."""
    workdir = str(tmp_path / "w")
    config = tiny_config(demo_dataset[1], total_steps=5, **{**KW, "checkpoint_every": 2})
    with pytest.raises(preemption.Preempted, match="saved a checkpoint at step 3"):
        loop.train(config, workdir, writer=SignalAt(signal.SIGUSR1, 2))
    ckpt = workdirs.checkpoint_dir(workdir)
    assert checkpoints.manager(workdir).all_steps() == [2, 3]
    _damage(os.path.join(ckpt, "3"))
    with caplog.at_level(logging.INFO):
        resumed = loop.train(config, workdir)
    assert f"checkpoint {ckpt}/3 does not read" in caplog.text
    assert f"resumed from {ckpt} at step 2" in caplog.text
    _assert_same_state(straight, resumed)
    assert checkpoints.manager(workdir).all_steps() == [2, 4, 5]
    kept = os.listdir(os.path.join(workdir, workdirs.UNREADABLE_DIR))
    assert len(kept) == 1 and kept[0].startswith("3-")  # moved aside, not deleted

    # Another config on this workdir (another task set): refused naming the fields, and with
    # the change accepted, refused as its checkpoints do not read; the workdir's config.json
    # still describes its checkpoints.
    saved = open(os.path.join(workdir, workdirs.CONFIG_FILE)).read()
    other = tiny_config(demo_dataset[1], total_steps=6,
                        **{**KW, "checkpoint_every": 2, "tasks": "pose2d+segm"})
    with pytest.raises(resume.CannotResume, match=r": config\.tasks='pose2d' -> "
                                                  r"'pose2d\+segm'; config\.total_steps=5 -> 6\."):
        loop.train(other, workdir)
    with pytest.raises(resume.CannotResume, match=r"none of its checkpoints \(steps "
                                                  r"5, 4, 2\) "):
        loop.train(other, workdir, resume_with_changed_config=True)
    assert open(os.path.join(workdir, workdirs.CONFIG_FILE)).read() == saved
    assert checkpoints.manager(workdir).all_steps() == [2, 4, 5]

    # When no checkpoint reads, it is not damage: the clear config-mismatch error.
    for step in (2, 4, 5):
        _damage(os.path.join(ckpt, str(step)))
    with pytest.raises(ValueError, match=r"none of its checkpoints \(steps 5, 4, 2\) "
                                         r"reads as this config's train state"):
        loop.train(config, workdir)
    assert checkpoints.manager(workdir).all_steps() == [2, 4, 5]


def test_a_checkpoint_whose_bytes_changed_silently_is_found_damaged_and_passed_over(
        demo_dataset, tmp_path, caplog):
    """One byte of a checkpoint's array data flipped after the save (a bit rot, a bad copy):
    orbax reads it without a word, one array's values changed. Its CRC-32s saved with it find
    it: the trainer resumes from the checkpoint before, moving it aside, as for a checkpoint
    that does not read. An evaluation refuses a checkpoint whose variables differ from their
    digests (here: those of another step), or whose digests do not read, in one line naming
    the array and the other checkpoints."""
    workdir = str(tmp_path / "w")
    config = tiny_config(demo_dataset[1], total_steps=2, **{**KW, "checkpoint_every": 1})
    loop.train(config, workdir)
    ckpt = workdirs.checkpoint_dir(workdir)

    def orbax_alone():
        with ocp.CheckpointManager(ckpt, item_names=("state",)) as reader:
            return _flat(reader.restore(2, args=ocp.args.Composite(
                state=ocp.args.StandardRestore()))["state"])

    before = orbax_alone()
    data = os.path.join(ckpt, "2", "state", "ocdbt.process_0", "d")
    largest = max((os.path.join(data, n) for n in os.listdir(data)), key=os.path.getsize)
    flipped = bytearray(open(largest, "rb").read())
    flipped[len(flipped) // 2] ^= 0x40
    open(largest, "wb").write(bytes(flipped))
    after = orbax_alone()  # read without an error, one array's values changed
    assert len([k for k in before if not np.array_equal(before[k], after[k])]) == 1

    with caplog.at_level(logging.INFO):
        loop.train(tiny_config(demo_dataset[1], total_steps=3,
                               **{**KW, "checkpoint_every": 1}), workdir,
                   resume_with_changed_config=True)
    assert re.search(rf"checkpoint {re.escape(ckpt)}/2 does not read, trying the previous "
                     rf"one: DamagedCheckpoint: checkpoint {re.escape(ckpt)}/2 is damaged: 1 "
                     rf"of its \d+ arrays read differ from what was saved \(e\.g\. \S+: "
                     rf"CRC-32 \w+\[.*\]:\w+, saved \w+\[.*\]:\w+\), a disk or copy fault "
                     rf"after the save", caplog.text), caplog.text
    assert f"resumed from {ckpt} at step 1" in caplog.text
    aside = os.listdir(os.path.join(workdir, workdirs.UNREADABLE_DIR))
    assert len(aside) == 1 and aside[0].startswith("2-")
    assert trained_model.restore_for_inference(workdir)[2] == 3

    digests = os.path.join(ckpt, "3", checkpoint_digests.DIGESTS)
    shutil.rmtree(digests)
    shutil.copytree(os.path.join(ckpt, "1", checkpoint_digests.DIGESTS), digests)
    with pytest.raises(trained_model.UnusableCheckpoint) as e:
        trained_model.restore_for_inference(workdir)
    assert re.match(rf"checkpoint {re.escape(ckpt)}/3 is damaged: \d+ of its \d+ arrays read "
                    rf"differ from what was saved \(e\.g\. \S+: CRC-32 float32"
                    rf"\[.*\), a disk or copy fault after the save; copy it again from where "
                    rf"it was written, or pass --step= with another of 1, 2$", str(e.value))
    metadata = os.path.join(digests, "metadata")
    with open(metadata, "r+b") as f:
        f.truncate(os.path.getsize(metadata) // 2)
    with pytest.raises(trained_model.UnusableCheckpoint,
                       match=rf"^checkpoint {re.escape(ckpt)}/3 is damaged: its digests do not "
                             rf"read \(\w+Error: .*\); copy it again from where it "
                             rf"was written, or pass --step= with another of 1, 2$"):
        trained_model.restore_for_inference(workdir)


def _at_end_config(data_dir: str):
    """3 steps, the only checkpoint at the last; then the test evaluator on all 12 test frames
    in 3 batches of 4."""
    return tiny_config(data_dir, total_steps=3, eval_batch_size=4, **{
        **KW, "evals.test.at_end": True, "evals.test.frames": "all",
        "evals.test.max_examples": 0})


def _assert_the_rerun_evaluates_step_3(config, workdir: str, caplog) -> None:
    """The rerun resumes at the last step, trains no further and writes eval_test.json."""
    caplog.clear()
    with caplog.at_level(logging.INFO):
        final, summaries = loop.run(config, workdir)
    assert f"resumed from {workdirs.checkpoint_dir(workdir)} at step 3" in caplog.text
    assert int(final.step) == 3 and summaries["test"]["num_examples"] == 12
    with open(workdirs.eval_file(workdir, "test")) as f:
        report = json.load(f)
    assert (report["evaluator"], report["step"], report["num_examples"]) == ("test", 3, 12)
    lines = [json.loads(x) for x in open(workdirs.evals_file(workdir))]
    assert [(x["step"], x["evaluator"]) for x in lines] == [(3, "test")]
    assert checkpoints.manager(workdir).all_steps() == [3]


def test_a_signal_during_the_evaluation_after_training_stops_it_and_the_rerun_evaluates(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """SIGUSR1 (Slurm's warning ahead of the time limit) while the test evaluation after the
    last step reads its second batch of 3: the evaluation stops before evaluating it, the
    last step saved, with Preempted (exit 75, requeued) and nothing of the evaluation
    recorded; the rerun resumes at the last step and writes eval_test.json."""
    workdir = str(tmp_path / "w")
    config = _at_end_config(demo_dataset[1])
    batches, fetched = eval_data.eval_batches, []

    def signalling(*args, **kwargs):
        for i, batch in enumerate(batches(*args, **kwargs)):
            fetched.append(i)
            if i == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            yield batch

    monkeypatch.setattr(eval_data, "eval_batches", signalling)
    with caplog.at_level(logging.WARNING), pytest.raises(
            preemption.Preempted, match=re.escape(
                f"preempted: stopped the evaluations after training; the last step's checkpoint "
                f"(step 3) is saved in {workdirs.checkpoint_dir(workdir)} on a preemption "
                f"signal")) as err:
        loop.train(config, workdir)
    assert (err.value.step, err.value.after_training) == (3, True)
    assert fetched == [0, 1]
    assert ("SIGUSR1 received: training is done: stopping the evaluations after training at "
            "their next batch") in caplog.text
    assert checkpoints.manager(workdir).all_steps() == [3]
    assert not os.path.exists(workdirs.eval_file(workdir, "test"))
    assert not os.path.exists(workdirs.evals_file(workdir))
    assert not os.path.exists(workdirs.lock_file(workdir))
    monkeypatch.setattr(eval_data, "eval_batches", batches)
    _assert_the_rerun_evaluates_step_3(config, workdir, caplog)


@pytest.mark.slow
def test_a_signal_after_the_last_check_after_training_is_said_to_have_come_too_late(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """SIGUSR1 after the last check of the evaluation after training (here: as its report is
    written): its line says the evaluations stop at their next batch, but there is none, so
    the run completes, and says so (it read as if the evaluations were left for a rerun)."""
    workdir = str(tmp_path / "w")
    config = _at_end_config(demo_dataset[1])
    write_report = report_files.write_report

    def signalling(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR1)
        return write_report(*args, **kwargs)

    monkeypatch.setattr(report_files, "write_report", signalling)
    _train_told_the_signal_came_too_late(config, workdir, caplog)
    assert os.path.exists(workdirs.eval_file(workdir, "test"))


def _train_told_the_signal_came_too_late(config, workdir: str, caplog) -> None:
    """Trains `config` in `workdir` to its last step, during whose evaluations a SIGUSR1
    arrives too late to stop them: the signal's line, then the one saying they finished."""
    with caplog.at_level(logging.WARNING):
        assert int(loop.train(config, workdir).step) == config.total_steps
    assert "SIGUSR1 received: training is done: stopping the evaluations" in caplog.text
    assert ("the evaluations after training finished before the signal could stop them: the "
            "run is complete, nothing to rerun") in caplog.text


def test_a_signal_during_the_last_steps_periodic_evaluation_is_said_to_have_come_too_late(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """A run with no evaluation after training but validation due at its last step: a signal
    during that validation, which a signal does not stop, is said to have come too late for
    it, as for the evaluations after training (its line said to rerun to run them)."""
    workdir = str(tmp_path / "w")
    config = tiny_config(demo_dataset[1], total_steps=4, **{
        **KW, "evals.validation.every": 2, "evals.validation.max_examples": 4})
    assert not config.evals.test.at_end
    batches, calls = eval_data.eval_batches, []

    def signalling(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # step 4's validation
            os.kill(os.getpid(), signal.SIGUSR1)
        yield from batches(*args, **kwargs)

    monkeypatch.setattr(eval_data, "eval_batches", signalling)
    _train_told_the_signal_came_too_late(config, workdir, caplog)
    assert [(x["step"], x["evaluator"]) for x in workdirs.read_evals(workdir)] == [
        (2, "validation"), (4, "validation")]


def test_a_rerun_after_a_stop_between_the_evaluations_after_training_runs_the_rest(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """Two evaluators after training, test then validation (12 frames each, 3 batches);
    SIGUSR1 while validation reads its second batch, test finished. The rerun keeps test's
    result (its eval_test.json, its one evals.jsonl line) and evaluates only validation; a
    rerun of the finished run that changes only fields no evaluation reads (logging, saving
    and evaluation cadence, checkpoints kept, the training loader's reading) evaluates
    nothing and returns the same summaries; one that changes any other field of the config
    (here one free to change on a rerun) runs both again, recording validation's new line
    (test's is the line it has)."""
    workdir = str(tmp_path / "w")
    config = _at_end_config(demo_dataset[1])
    config.evals.validation.at_end = True
    config.evals.validation.frames = "all"
    batches, calls = eval_data.eval_batches, []

    def signalling(*args, **kwargs):
        calls.append(len(calls))
        for i, batch in enumerate(batches(*args, **kwargs)):
            if len(calls) == 2 and i == 1:
                os.kill(os.getpid(), signal.SIGUSR1)
            yield batch

    def counting(*args, **kwargs):
        calls.append(len(calls))
        return batches(*args, **kwargs)

    def evaluated() -> list[tuple[int, str]]:
        return [(x["step"], x["evaluator"]) for x in workdirs.read_evals(workdir)]

    monkeypatch.setattr(eval_data, "eval_batches", signalling)
    with pytest.raises(preemption.Preempted, match="stopped the evaluations after training"):
        loop.train(config, workdir)
    assert evaluated() == [(3, "test")] and len(calls) == 2
    assert not os.path.exists(workdirs.eval_file(workdir, "validation"))
    with open(workdirs.eval_file(workdir, "test")) as f:
        test = {k: v for k, v in json.load(f).items() if k not in eval_reports.RUN_KEYS}

    monkeypatch.setattr(eval_data, "eval_batches", counting)
    calls.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        final, summaries = loop.run(config, workdir)
    assert int(final.step) == 3 and len(calls) == 1  # validation's batches only
    assert ("step 3's evaluations after training that an earlier run finished, kept: "
            f"{workdirs.eval_file(workdir, 'test')}") in caplog.text
    assert evaluated() == [(3, "test"), (3, "validation")]
    assert list(summaries) == ["test", "validation"]
    assert summaries["test"] == test and summaries["validation"]["num_examples"] == 12

    # Fields no evaluation reads (`eval_reports.NOT_EVALUATED`) changed: nothing is evaluated.
    for field, value in (("log_every", 1), ("checkpoint_every", 50), ("keep_checkpoints", 1),
                         ("prefetch", 1), ("read_threads", 2), ("max_damaged_fraction", 0.5)):
        config[field] = value
    config.evals.test.every = 5
    calls.clear()
    assert loop.run(config, workdir)[1] == summaries and calls == []
    assert evaluated() == [(3, "test"), (3, "validation")]

    config.evals.validation.max_examples = 4  # free to change on a rerun
    summaries = loop.run(config, workdir)[1]
    assert len(calls) == 2 and summaries["validation"]["num_examples"] == 4
    # test's evaluation is the one recorded already, line for line: not recorded twice.
    assert evaluated() == [(3, "test"), (3, "validation"), (3, "validation")]


@pytest.mark.slow
def test_on_8_devices_a_rerun_of_a_finished_run_keeps_its_evaluation_after_training(
        demo_dataset, tmp_path):
    """`hgmt.main` on 8 virtual devices, 2 steps and the test evaluation after them, run
    twice: the rerun resumes at the last step and keeps eval_test.json (one evals.jsonl
    line), its state being the checkpoint's as restored. Averaging the 8 devices' identical
    copies of the restored BatchNorm statistics again rounds some of them, and the rerun then
    took its weights for others and evaluated again."""
    workdir = str(tmp_path / "w")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=2, checkpoint_every=2)
    env["XLA_FLAGS"] = xla_flags(8)
    for _ in range(2):
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "evaluations after training that an earlier run finished, kept" in proc.stderr
    assert [(x["step"], x["evaluator"]) for x in workdirs.read_evals(workdir)] == [(2, "test")]


@pytest.mark.slow
def test_a_fresh_start_over_an_earlier_runs_evaluations_moves_them_aside(demo_dataset,
                                                                          tmp_path, caplog):
    """A workdir holding an earlier run's evaluations (evals.jsonl lines of steps 2 and 3,
    its test evaluation after step 3: eval_test.json and .md) but no checkpoint (removed): a
    run started afresh there and stopped by SIGTERM before its last step has moved them to
    evals_superseded/0-<time>/, none left where its own would be, and the earlier run's
    config.json (another config) to config_superseded/0-<time>.json. Before, the workdir showed
    the earlier run's test result (which hgmt.report and launch/sweep.py read as the run's)
    and its lines (which the best so far and the evaluations a rerun skips are taken
    from)."""
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    earlier = [{"step": 2, "evaluator": "validation", "metrics": {"loss/total": 0.5}},
               {"step": 3, "evaluator": "test", "metrics": {"loss/total": 0.4}}]
    with open(workdirs.evals_file(workdir), "w") as f:
        f.write("".join(json.dumps(x) + "\n" for x in earlier))
    result = json.dumps({"step": 3, "evaluator": "test", "num_examples": 4,
                         "pictures": ["eval_test_pckh.png"]})
    with open(workdirs.eval_file(workdir, "test"), "w") as f:
        f.write(result)
    with open(os.path.join(workdir, "eval_test.md"), "w") as f:
        f.write("the earlier run's table")
    with open(os.path.join(workdir, "eval_test_pckh.png"), "w") as f:
        f.write("the earlier run's curve")

    config = tiny_config(demo_dataset[1], total_steps=3, **{
        **KW, "checkpoint_every": 2, "log_every": 1, "evals.test.at_end": True,
        "evals.test.max_examples": 4})
    run_config.save_config(tiny_config(demo_dataset[1], total_steps=4, **{
        **KW, "checkpoint_every": 2, "log_every": 1, "evals.test.at_end": True,
        "evals.test.max_examples": 4}), workdir)
    with open(os.path.join(workdir, workdirs.CONFIG_FILE)) as f:
        earlier_config = f.read()
    with caplog.at_level(logging.INFO), pytest.raises(preemption.Preempted):
        loop.train(config, workdir, writer=SignalAt(signal.SIGTERM, 1))
    assert (f"moved evals.jsonl, eval_test.json, eval_test.md, eval_test_pckh.png of the steps "
            f"after 0, where training starts "
            f"again, to {workdirs.evals_superseded_dir(workdir)}") in caplog.text
    assert workdirs.read_evals(workdir) == []
    assert not os.path.exists(workdirs.eval_file(workdir, "test"))
    [aside] = os.listdir(workdirs.evals_superseded_dir(workdir))
    aside = os.path.join(workdirs.evals_superseded_dir(workdir), aside)
    assert os.path.basename(aside).startswith("0-")
    assert workdirs.read_evals(aside) == earlier
    with open(os.path.join(aside, "eval_test.json")) as f:
        assert f.read() == result
    with open(os.path.join(aside, "eval_test.md")) as f:
        assert f.read() == "the earlier run's table"
    with open(os.path.join(aside, "eval_test_pckh.png")) as f:  # the pictures its JSON lists
        assert f.read() == "the earlier run's curve"
    assert not os.path.exists(os.path.join(workdir, "eval_test_pckh.png"))
    # The earlier run's config is kept beside them, not as a config of this run's steps.
    [kept] = os.listdir(workdirs.config_superseded_dir(workdir))
    assert kept.startswith("0-")
    with open(os.path.join(workdirs.config_superseded_dir(workdir), kept)) as f:
        assert f.read() == earlier_config
    assert workdirs.configs_before(workdir) == [] and not os.path.exists(
        workdirs.config_before_file(workdir, 0))
    assert run_config.load_config(workdir).total_steps == 3


def _signal_during_the_last_step(config, workdir: str, caplog) -> None:
    """Trains `config` (3 steps) with SIGTERM once step 2 is logged, so during the last step:
    the run stops with Preempted after training, saying so when the signal arrives, with
    step 3 saved and no other checkpoint."""
    with caplog.at_level(logging.WARNING), pytest.raises(
            preemption.Preempted, match="stopped the evaluations after training") as err:
        loop.train(config, workdir, writer=SignalAt(signal.SIGTERM, 2))
    assert (err.value.step, err.value.after_training) == (3, True)
    assert ("SIGTERM received: finishing the last step, saving its checkpoint, then stopping "
            "before the evaluations after training") in caplog.text
    assert checkpoints.manager(workdir).all_steps() == [3]


def test_a_signal_during_the_last_step_saves_it_and_stops_before_the_evaluation_after_training(
        demo_dataset, tmp_path, caplog):
    """SIGTERM once step 2 is logged, so during the last step 3: step 3 ends and is saved, and
    the run stops with Preempted before the evaluation after training, saying so when the
    signal arrives; the rerun evaluates step 3."""
    workdir = str(tmp_path / "w")
    config = _at_end_config(demo_dataset[1])
    _signal_during_the_last_step(config, workdir, caplog)
    assert not os.path.exists(workdirs.eval_file(workdir, "test"))
    _assert_the_rerun_evaluates_step_3(config, workdir, caplog)


def test_a_signal_during_the_last_step_skips_its_validation_and_the_rerun_runs_it_once(
        demo_dataset, tmp_path, caplog):
    """SIGTERM once step 2 is logged, so during the last step 3, at which validation is due
    and after which no evaluator runs: step 3 ends and is saved, its validation is skipped
    (no time), and the run stops with Preempted, saying so when the signal arrives; the rerun
    resumes at step 3, validates it once and keeps it as the best."""
    workdir = str(tmp_path / "w")
    config = tiny_config(demo_dataset[1], total_steps=3, **{
        **KW, "evals.validation.every": 3, "evals.validation.max_examples": 4})
    assert config.evals.validation.best_metric and not config.evals.test.at_end
    _signal_during_the_last_step(config, workdir, caplog)
    assert workdirs.read_evals(workdir) == []
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert int(loop.train(config, workdir).step) == 3
    assert "evaluating step 3, which its run did not: validation" in caplog.text
    lines = workdirs.read_evals(workdir)
    assert [(x["step"], x["evaluator"]) for x in lines] == [(3, "validation")]
    assert best_checkpoint.best_manager(workdir, "loss/total").all_steps() == [3]


def test_a_signal_during_the_validation_of_the_last_step_on_resuming_stops_it(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """The last step's validation, skipped by a SIGTERM during that step, runs on resuming
    as the evaluations after training do: SIGUSR1 while it reads the first of its 2 batches
    stops it before the second, with Preempted after training and nothing recorded (it
    ran to its end before: a signal's time went by unheeded); the next rerun validates
    step 3 once."""
    workdir = str(tmp_path / "w")
    config = tiny_config(demo_dataset[1], total_steps=3, eval_batch_size=4, **{
        **KW, "evals.validation.every": 3, "evals.validation.frames": "all",
        "evals.validation.max_examples": 8})
    _signal_during_the_last_step(config, workdir, caplog)
    batches = eval_data.eval_batches

    def signalling(*args, **kwargs):
        for i, batch in enumerate(batches(*args, **kwargs)):
            if i == 0:
                os.kill(os.getpid(), signal.SIGUSR1)
            yield batch

    monkeypatch.setattr(eval_data, "eval_batches", signalling)
    with pytest.raises(preemption.Preempted, match="stopped the evaluations after training") \
            as err:
        loop.train(config, workdir)
    assert (err.value.step, err.value.after_training) == (3, True)
    assert workdirs.read_evals(workdir) == []
    monkeypatch.setattr(eval_data, "eval_batches", batches)
    assert int(loop.train(config, workdir).step) == 3
    lines = workdirs.read_evals(workdir)
    assert [(x["step"], x["evaluator"], x["num_examples"]) for x in lines] == [
        (3, "validation", 8)]


class SyncProtocol:
    """JAX's preemption sync protocol as one process sees it (xla's PreemptionSyncManager): a
    notice sets the sync point to the last step given + 1 (the max over processes, all alike
    here); `reached_preemption_sync_point(step)` is True at that step."""

    def __init__(self):
        self.steps, self.point = [], None

    def notice(self):
        self.point = (self.steps[-1] if self.steps else 0) + 1

    def __call__(self, step):
        self.steps.append(step)
        return step == self.point


@pytest.mark.parametrize("notice_after, at_step_5, checks, steps", [
    (5, False, [True] * 3, [0, 1, 2, 3, 4, 5, 6]),
    (4, True, [True] * 3, [0, 1, 2, 3, 4, 5]),
    (None, False, [False] * 3, [0, 1, 2, 3, 4, 5, 6, 7, 8]),
])
def test_with_several_processes_the_checks_after_training_number_on_from_the_last_step(
        monkeypatch, notice_after, at_step_5, checks, steps):
    """The start step (0) given first, 5 steps, then 3 checks of the evaluations after
    training: they are the sync protocol's steps 6, 7, 8 on every process. A notice after
    step 5 stops at the first check (sync point 6); one during step 5 (sync point 5) stops at
    step 5, and the checks after it keep stopping; without one none stops."""
    from jax.experimental import multihost_utils

    protocol = SyncProtocol()
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", protocol)
    monkeypatch.setattr(preemption, "_sync_manager_available", lambda: True)
    watch = preemption.PreemptionWatch(last_step=5)
    watch.multihost = True
    watch.start(0)
    reached = []
    for step in range(1, 6):
        reached.append(watch.reached(step))
        if step == notice_after:
            protocol.notice()
    assert reached == [False] * 4 + [at_step_5]
    assert [watch.stop_after_training() for _ in range(3)] == checks
    assert protocol.steps == steps


def test_a_brief_read_error_is_retried_before_a_checkpoint_counts_as_unreadable(
        tmp_path, monkeypatch, caplog):
    """An OSError while restoring the newest checkpoint is tried again after each of
    RETRY_DELAYS_S (tiny here): one that passes within them restores that checkpoint, nothing
    moved; one that lasts makes it unreadable: the previous one is restored, it moved aside."""
    import orbax.checkpoint as ocp

    workdir = str(tmp_path)
    mngr = checkpoints.manager(workdir, async_save=False, with_data=False)
    for step in (2, 4):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"x": np.full(3, step, np.int32)})))
    monkeypatch.setattr(checkpoints, "RETRY_DELAYS_S", (0.01, 0.01), raising=False)
    restore, failing = mngr.restore, [2]  # the next restores of step 4 that fail

    def flaky(step, args):
        if step == 4 and failing[0]:
            failing[0] -= 1
            raise OSError(errno.EIO, "Input/output error (test)")
        return restore(step, args=args)

    monkeypatch.setattr(mngr, "restore", flaky)

    def args():
        return ocp.args.Composite(state=ocp.args.StandardRestore({"x": np.zeros(3, np.int32)}))

    step, restored = checkpoints.restore_newest_readable(mngr, args, workdir)
    assert step == 4 and np.asarray(restored["state"]["x"]).tolist() == [4, 4, 4]
    assert caplog.text.count(f"checkpoint {workdirs.checkpoint_dir(workdir)}/4: OSError: "
                             f"[Errno 5] Input/output error (test); trying it again") == 2
    assert not os.path.exists(workdirs.unreadable_dir(workdir))

    failing[0] = 3  # more than the retries
    step, restored = checkpoints.restore_newest_readable(mngr, args, workdir)
    assert step == 2 and np.asarray(restored["state"]["x"]).tolist() == [2, 2, 2]
    assert [n.split("-")[0] for n in os.listdir(workdirs.unreadable_dir(workdir))] == ["4"]
    assert mngr.all_steps() == [2]


# XLA's out-of-memory error of a restore onto the device, as orbax may hand it on: bare, as
# the cause of its own error (its reads' wrapper), or its text re-raised as a ValueError.
_RESTORE_OOM = "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes."


def _restore_oom(form: str) -> Exception:
    error = jax.errors.JaxRuntimeError(_RESTORE_OOM)
    if form == "bare":
        return error
    if form == "cause":
        wrapper = Exception("Encountered error while reading array index: (). See full "
                            "TensorStore details: {'driver': 'zarr'}.")
        wrapper.__cause__ = error
        return wrapper
    return ValueError(_RESTORE_OOM)


@pytest.mark.parametrize("form", ["bare", "cause", "text"])
def test_out_of_device_memory_while_restoring_is_raised_not_taken_for_damage(
        tmp_path, monkeypatch, caplog, form):
    """A restore places a second train state on the device: XLA's out-of-memory error there
    (in today's layout, in an older one, or reading a checkpoint to keep as the best) is
    raised, OutOfDeviceMemory under `device_memory.explained`; no checkpoint is logged as not
    reading, moved aside or skipped for an older one."""
    import orbax.checkpoint as ocp

    workdir = str(tmp_path)
    mngr = checkpoints.manager(workdir, async_save=False, with_data=False)
    for step in (2, 4):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"x": np.full(3, step, np.int32)})))
    restore, errors = ocp.CheckpointManager.restore, []  # what the next restores of 4 raise

    def restore_or_fail(self, step, args=None):
        if step == 4:
            raise errors.pop(0)
        return restore(self, step, args=args)

    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore_or_fail)

    def args():
        return ocp.args.Composite(state=ocp.args.StandardRestore({"x": np.zeros(3, np.int32)}))

    older = checkpoints.OlderLayout("an older layout (test)", args, lambda r: r)
    config = ml_collections.ConfigDict({"batch_size": 8, "image_size": 64, "tasks": "pose2d",
                                        "model": {"features": 16, "num_stacks": 1}})
    oom = _restore_oom(form)
    with caplog.at_level(logging.INFO):
        errors[:] = [oom]
        with pytest.raises(device_memory.OutOfDeviceMemory, match=re.escape(
                "out of device memory while restoring (test): XLA asked for 123 B, the device "
                "has unknown")):
            with device_memory.explained(config, "while restoring (test)"):
                checkpoints.restore_newest_readable(mngr, args, workdir, [older])
        assert errors == []
        errors[:] = [ValueError("not today's layout (test)"), oom]
        with pytest.raises(type(oom)) as raised:
            checkpoints.restore_newest_readable(mngr, args, workdir, [older])
        assert raised.value is oom and errors == []
        errors[:] = [oom]
        with pytest.raises(type(oom)) as raised:
            checkpoints.read_state(workdir, 4, {"x": np.zeros(3, np.int32)})
        assert raised.value is oom and errors == []
    assert "does not read" not in caplog.text and "older layout" not in caplog.text
    assert not os.path.exists(workdirs.unreadable_dir(workdir))
    assert mngr.all_steps() == [2, 4]
    assert sorted(os.listdir(workdirs.checkpoint_dir(workdir))) == ["2", "4"]
    assert device_memory.is_out_of_memory(oom)


def test_a_process_that_sees_no_checkpoint_where_another_does_is_an_error(tmp_path,
                                                                           monkeypatch):
    """The processes agree on the steps all of them read (`_agree`, an all-gather; here this
    process's row and a second process's that lists no checkpoint at all, as a host whose
    workdir is not the shared one): not a fresh start with this process's loader already
    restored, but an error naming both."""
    import orbax.checkpoint as ocp

    workdir = str(tmp_path)
    mngr = checkpoints.manager(workdir, async_save=False, with_data=False)
    mngr.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave({"x": np.zeros(3)})))
    agree = checkpoints._agree
    monkeypatch.setattr(checkpoints, "_agree", lambda *row: np.concatenate(
        [agree(*row), np.array([[-1, 0, -1]], np.int32)]))

    def args():
        return ocp.args.Composite(state=ocp.args.StandardRestore({"x": np.zeros(3)}))

    with pytest.raises(ValueError, match=re.escape(
            f"process(es) 1 see no checkpoint in {workdirs.checkpoint_dir(workdir)} where "
            f"process(es) 0 see some; every process must see the same workdir")):
        checkpoints.restore_newest_readable(mngr, args, workdir)


class _LockTime:
    """`time` for `workdir_lock`, its sleeps recorded in `waits` (and slept): the lock sleeps
    only in `_replace_if_stale`, to let a holder that just created its lock file write it,
    which a trainer that meets a written lock, a dead holder's, or none never has to."""

    def __init__(self):
        self.waits: list[float] = []

    def __getattr__(self, name):
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        time.sleep(seconds)


def _lock_sleeps(monkeypatch) -> list[float]:
    """The waits `workdir_lock` sleeps from now on, as they happen (see `_LockTime`)."""
    spy = _LockTime()
    monkeypatch.setattr(workdir_lock, "time", spy)
    return spy.waits


_HOLDER = ("import sys, time; sys.path.insert(0, {repo!r}); "
           "from hgmt.training.workdir_lock import WorkdirLock; "
           "WorkdirLock({workdir!r}).acquire(); "
           "print('held', flush=True); time.sleep(600)")


def test_a_second_trainer_stops_naming_the_holder_and_a_dead_holder_does_not_block(
        demo_dataset, tmp_path, monkeypatch):
    workdir = str(tmp_path / "w")
    slept = _lock_sleeps(monkeypatch)
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER.format(repo=REPO,
                                                                    workdir=workdir)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(workdir_lock.WorkdirLocked,
                           match=f"host {socket.gethostname()} pid {holder.pid}, started"):
            loop.train(tiny_config(demo_dataset[1], **KW), workdir)
        assert slept == []  # refused at once: a written lock is not waited for
        assert not os.path.exists(os.path.join(workdir, workdirs.CHECKPOINT_DIR))
    finally:
        holder.kill()  # SIGKILL: the lock stays behind, stale
        holder.wait()
    assert os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))
    with workdir_lock.WorkdirLock(workdir) as lock:  # what train() takes first
        assert lock.held
    assert not os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))
    assert slept == []  # nor is a dead holder's


def test_a_workdir_that_cannot_be_a_folder_is_one_line_naming_it(demo_dataset, tmp_path):
    """A --workdir that is a file, or that cannot be made (no such parent, no permission), is
    hgmt.main's one line naming it and the fix (it was a FileExistsError traceback), the file
    left as it was."""
    import hgmt.main

    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(workdir_lock.WorkdirUnusable, match=rf"^the workdir {afile} is a file; "
                                                           r"give a folder this user can "
                                                           r"write \(made if missing\)$"):
        workdir_lock.WorkdirLock(str(afile)).acquire()
    assert afile.read_text() == "mine"
    inside = afile / "run"
    with pytest.raises(workdir_lock.WorkdirUnusable, match=rf"^the workdir {inside} cannot be "
                                                           r"made a folder \(Not a directory\)"):
        workdir_lock.WorkdirLock(str(inside)).acquire()
    with pytest.raises(SystemExit) as e:
        hgmt.main.main([f"--config={REPO}/configs/default.py:tasks=pose2d,runlocal",
                        f"--workdir={afile}", f"--config.data_dir={demo_dataset[1]}",
                        "--config.dataset=surreal/all"])
    assert e.value.code == (f"error: WorkdirUnusable: the workdir {afile} is a file; give a "
                            f"folder this user can write (made if missing)")
    assert afile.read_text() == "mine"


def test_lock_of_another_host_is_stale_only_when_no_longer_refreshed(tmp_path):
    path = tmp_path / workdirs.LOCK_FILE
    path.write_text(json.dumps({"host": "node-7", "pid": 1234, "job": "99", "restart": 0,
                                "started": "then"}))
    with pytest.raises(workdir_lock.WorkdirLocked, match="host node-7 pid 1234 .Slurm job 99."):
        workdir_lock.WorkdirLock(str(tmp_path), stale_s=30).acquire()
    old = time.time() - 31
    os.utime(path, (old, old))
    lock = workdir_lock.WorkdirLock(str(tmp_path), stale_s=30)
    lock.acquire()
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def _dead_pid() -> int:
    """The pid of a process of this host that has ended (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.mark.parametrize("changed, taken_at_once", [
    ({}, True),  # this host, boot and PID namespace: the pid's absence says the holder is gone
    ({"pid_ns": "pid:[1]"}, False),  # a container sharing the hostname (--network=host)
    ({"boot_id": "00000000-0000-0000-0000-000000000000"}, False),
    ({"pid_ns": None, "boot_id": None}, False),  # not readable where the holder ran
    ({"pid_ns": "absent", "boot_id": "absent"}, False),  # a lock of an older hgmt
    ({"pid_ns": None, "unreadable_here": True}, False),  # readable neither there nor here
], ids=["same", "other-pid-ns", "other-boot", "unreadable-there", "older-hgmt",
        "unreadable-both"])
def test_a_dead_pid_on_this_host_frees_the_lock_only_in_this_boot_and_pid_namespace(
        tmp_path, monkeypatch, changed, taken_at_once):
    """A lock of this hostname whose pid is gone here: taken at once when its boot id and PID
    namespace are this trainer's; else (another, unknown or not recorded) the holder may be
    alive where its pid is not visible from here, and the lock is taken only once it is not
    refreshed for stale_s."""
    changed = dict(changed)
    if changed.pop("unreadable_here", False):
        monkeypatch.setattr(workdir_lock, "PID_NAMESPACE_LINK", str(tmp_path / "no-such-link"))
    with open("/proc/sys/kernel/random/boot_id") as f:  # this host's, as Linux shows them
        here = {"boot_id": f.read().strip(), "pid_ns": os.readlink("/proc/self/ns/pid")}
    holder = {"host": socket.gethostname(), "pid": _dead_pid(), **here, "job": None,
              "restart": 0, "started": "then", "token": "other", **changed}
    holder = {k: v for k, v in holder.items() if v != "absent"}
    path = tmp_path / workdirs.LOCK_FILE
    path.write_text(json.dumps(holder))
    lock = workdir_lock.WorkdirLock(str(tmp_path), stale_s=30)
    if not taken_at_once:
        with pytest.raises(workdir_lock.WorkdirLocked, match=re.escape(
                f"host {socket.gethostname()} pid {holder['pid']} (its pid cannot be checked "
                f"from here: another container's PID namespace or another boot, or one of "
                f"them unknown), started then, lock refreshed ") + r"\d+ s ago \("):
            lock.acquire()
        old = time.time() - 31
        os.utime(path, (old, old))
    lock.acquire()
    try:
        assert json.loads(path.read_text())["token"] == lock.me["token"]
    finally:
        lock.release()


def test_two_trainers_taking_over_one_stale_lock_leave_one_holder(tmp_path, monkeypatch):
    """B judges the lock stale; before B moves it aside, A takes it over (moves it aside and
    creates its own). B's rename then moves A's fresh lock: B puts it back and stops naming A,
    which holds the workdir alone."""
    path = tmp_path / workdirs.LOCK_FILE
    path.write_text(json.dumps({"host": "node-7", "pid": 1234, "job": None, "restart": 0,
                                "started": "then"}))
    old = time.time() - 100
    os.utime(path, (old, old))
    a, b = (workdir_lock.WorkdirLock(str(tmp_path), stale_s=30) for _ in range(2))
    rename = os.rename

    def a_first(src, dst):  # B's rename: A's whole takeover runs first
        monkeypatch.setattr(workdir_lock.os, "rename", rename)
        a.acquire()
        rename(src, dst)

    monkeypatch.setattr(workdir_lock.os, "rename", a_first)
    try:
        with pytest.raises(workdir_lock.WorkdirLocked, match=f"in use by another trainer: "
                                                             f"host {socket.gethostname()} pid "
                                                             f"{os.getpid()}, started"):
            b.acquire()
        assert a.held and not b.held
        assert json.loads(path.read_text()) == a.me
        assert os.listdir(tmp_path) == [workdirs.LOCK_FILE]
    finally:
        a.release()
        b.release()


def _wait_lost(lock: workdir_lock.WorkdirLock, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while lock.lost is None and time.monotonic() < deadline:
        time.sleep(0.01)


def test_a_lock_taken_over_or_removed_while_held_is_lost(tmp_path):
    """Another holder's lock in place of this trainer's: lost at the next refresh, naming it
    (and left in place at release); a file that names no holder, said so. The lock removed:
    lost after two refreshes in a row."""
    path = tmp_path / workdirs.LOCK_FILE
    lock = workdir_lock.WorkdirLock(str(tmp_path), refresh_s=0.01)
    other = {"host": "node-7", "pid": 1234, "job": "99", "restart": 0, "started": "then",
             "token": "other"}
    with lock:
        lock.check()  # held: nothing to say
        # Renamed into place whole: the refresh thread, every 0.01 s, would otherwise catch
        # the file empty between its truncation and the write (a lock naming no holder).
        aside = tmp_path / "other"
        aside.write_text(json.dumps(other))
        os.replace(aside, path)
        _wait_lost(lock)
        with pytest.raises(workdir_lock.WorkdirLockLost, match=r"is now held by host node-7 "
                                                               r"pid 1234 \(Slurm job 99\), "
                                                               r"started then: another trainer"):
            lock.check()
    assert json.loads(path.read_text()) == other
    path.unlink()
    with workdir_lock.WorkdirLock(str(tmp_path), refresh_s=0.01) as lock:
        path.write_bytes(b"\xff\xfe not json")  # bytes of no holder: not this trainer's
        _wait_lost(lock)
        with pytest.raises(workdir_lock.WorkdirLockLost, match="was replaced by a file that "
                                                               "names no holder"):
            lock.check()
    path.unlink()
    with workdir_lock.WorkdirLock(str(tmp_path), refresh_s=0.01) as lock:
        path.unlink()
        _wait_lost(lock)
        with pytest.raises(workdir_lock.WorkdirLockLost, match=r"could not be refreshed 2 times "
                                                               r"in a row \(FileNotFoundError"):
            lock.check()


def test_a_lock_that_cannot_be_refreshed_stops_the_trainer(demo_dataset, tmp_path,
                                                           monkeypatch, caplog):
    """An I/O error on every refresh of the lock (say ESTALE or EIO on NFS): logged, and on
    the second in a row the trainer stops, before another trainer could judge the lock
    stale, saying what happened; the lock is released."""
    workdir = str(tmp_path / "w")
    lock_path = workdirs.lock_file(workdir)
    utime = os.utime

    def failing(path, *args, **kwargs):
        if os.fspath(path) == lock_path:
            raise OSError(errno.EIO, "Input/output error")
        return utime(path, *args, **kwargs)

    monkeypatch.setattr(workdir_lock.os, "utime", failing)
    monkeypatch.setattr(workdir_lock, "REFRESH_S", 0.01)
    with caplog.at_level(logging.WARNING), pytest.raises(
            workdir_lock.WorkdirLocked, match=rf"^the workdir lock {re.escape(lock_path)} could "
                                              rf"not be refreshed 2 times in a row \(OSError: "
                                              rf"\[Errno 5\] Input/output error\).*This "
                                              rf"trainer stops"):
        loop.train(tiny_config(demo_dataset[1], **KW), workdir)
    assert "could not be refreshed (OSError: [Errno 5] Input/output error); after 2" in \
        caplog.text
    assert not os.path.exists(os.path.join(workdirs.checkpoint_dir(workdir), "4"))
    assert not os.path.exists(lock_path)


def test_a_lock_lost_during_an_evaluation_stops_it_before_its_next_batch(demo_dataset,
                                                                         tmp_path, monkeypatch):
    """Another trainer's lock in place of this one's while the validation at step 2 reads its
    first batch: the run stops there (WorkdirLockLost naming the holder), the evaluation
    recording nothing, instead of finishing it and stopping at the next step."""
    workdir = str(tmp_path / "w")
    monkeypatch.setattr(workdir_lock, "REFRESH_S", 0.01)
    other = {"host": "node-7", "pid": 1234, "job": "99", "restart": 0, "started": "then",
             "token": "other"}
    batches = eval_data.eval_batches
    lose, lost = workdir_lock.WorkdirLock._lose, threading.Event()

    def losing(self, what):  # the refresh thread found the lock lost: says so to `taken`
        lose(self, what)
        lost.set()

    def taken(*args, **kwargs):
        # Renamed into place whole: the refresh thread, every 0.01 s, would otherwise catch
        # the file empty between its truncation and the write (a lock naming no holder).
        with open(workdirs.lock_file(workdir) + ".other", "w") as f:
            json.dump(other, f)
        os.replace(workdirs.lock_file(workdir) + ".other", workdirs.lock_file(workdir))
        # The first batch comes only once the refresh thread found the lock lost (however
        # loaded the machine): what is checked is that the evaluation stops at that batch.
        assert lost.wait(60), "the refresh thread did not find the lock taken over"
        yield from batches(*args, **kwargs)

    monkeypatch.setattr(workdir_lock.WorkdirLock, "_lose", losing)

    monkeypatch.setattr(eval_data, "eval_batches", taken)
    config = tiny_config(demo_dataset[1], total_steps=4,
                         **{**KW, "evals.validation.every": 2})
    with pytest.raises(workdir_lock.WorkdirLockLost, match="is now held by host node-7"):
        loop.train(config, workdir)
    assert workdirs.read_evals(workdir) == []


@pytest.mark.parametrize("content, named", [
    (b"", "which is empty"),
    (b'{"host": "node-7", "pi', "which holds 22 bytes that are not a holder's JSON"),
], ids=["empty", "torn"])
def test_a_lock_file_that_names_no_holder_is_refused_as_such(tmp_path, content, named):
    """A lock file with no holder's JSON in it (a trainer killed between creating and writing
    it, damage): the refusal says what the file holds, not 'host None pid None', and the file
    is taken only once not modified for stale_s."""
    path = tmp_path / workdirs.LOCK_FILE
    path.write_bytes(content)
    old = time.time() - 10  # past the 5 s a trainer gets between creating and writing it
    os.utime(path, (old, old))
    with pytest.raises(workdir_lock.WorkdirLocked) as refused:
        workdir_lock.WorkdirLock(str(tmp_path), stale_s=30).acquire()
    assert re.match(re.escape(
        f"{tmp_path} is locked by {path}, {named} (a trainer stopped between creating and "
        f"writing it, or the file was damaged), last modified ") + r"1\d s ago\. It frees "
        r"itself 30 s after that", str(refused.value)), str(refused.value)
    old = time.time() - 31
    os.utime(path, (old, old))
    with workdir_lock.WorkdirLock(str(tmp_path), stale_s=30) as lock:
        assert json.loads(path.read_text())["token"] == lock.me["token"]


def test_a_full_disk_while_the_demo_clips_are_written_removes_them_and_the_rerun_makes_them(
        small_disk, tmp_path):
    """The demo clips' disk fills while they are written (a 64 KiB tmpfs): `DiskFull` names
    their folder and the space on its disk (not data_dir's), and the clips written so far are
    removed, so the rerun after space is freed generates them again and builds (before: the
    rerun stopped on clips without a record of their generation, naming the folder to remove
    by hand)."""
    from hgmt.data import demo

    disk = small_disk(64 * 1024)
    root, data_dir = os.path.join(disk.path, "surreal"), str(tmp_path / "tfds")
    with pytest.raises(disk_space.DiskFull) as e:
        demo.build(root, data_dir, clips_per_split=1, frames=4)
    message = str(e.value)
    assert message.startswith(f"[Errno 28] cannot write the demo clips to {root}: the disk or "
                              f"quota is full ("), message
    assert f"Removed the clips written so far ({root}/cmu). Free space" in message
    assert not os.path.exists(os.path.join(root, "cmu")) and not os.path.exists(data_dir)
    disk.resize(64 * 1024 * 1024)
    assert demo.build(root, data_dir, clips_per_split=1, frames=4) == data_dir
    assert json.loads(open(os.path.join(root, demo.GENERATED_FILE)).read())["frames"] == 4


def test_a_full_disk_when_taking_the_lock_is_disk_full_and_leaves_no_lock_file(small_disk,
                                                                             monkeypatch):
    """On a full disk the lock file is created (an empty file needs no data block) but its
    holder cannot be written: DiskFull naming the lock file and the fix, the empty file
    removed, so that once space is freed the rerun takes the workdir at once."""
    disk = small_disk(64 * 1024)
    path = workdirs.lock_file(disk.path)
    filler = _fill(disk.path, 0)
    with pytest.raises(disk_space.DiskFull) as full:
        workdir_lock.WorkdirLock(disk.path).acquire()
    assert re.match(rf"\[Errno 28\] cannot write the workdir lock to {re.escape(path)}: the disk "
                    rf"or quota is full \(.* free on it\)\. Nothing partial was left "
                    rf"behind\. Free space \(or raise the quota\) and rerun", str(full.value))
    assert os.listdir(disk.path) == ["filler"]
    os.remove(filler)
    slept = _lock_sleeps(monkeypatch)
    with workdir_lock.WorkdirLock(disk.path) as lock, open(path) as f:
        assert lock.held and json.load(f)["token"] == lock.me["token"]
    assert slept == []  # taken at once: no empty lock file left to wait for


def test_a_process_that_peers_end_releases_its_workdir_lock_first(tmp_path, monkeypatch):
    """A multi-host process ends through peers' os._exit (exit_lost, exit_failed, and the
    watchdog when the main thread is stuck in a hung collective), which skips loop.run's
    `finally: lock.release()`: a held lock is released just before that exit, so the rerun
    job is not refused for STALE_S. A released lock is no longer called at the exit."""
    ended = []
    path = workdirs.lock_file(str(tmp_path))
    monkeypatch.setattr(peers.os, "_exit",
                        lambda status: ended.append((status, os.path.exists(path))))
    released = workdir_lock.WorkdirLock(str(tmp_path))
    with released:
        pass
    lock = workdir_lock.WorkdirLock(str(tmp_path))
    lock.acquire()
    assert os.path.exists(path)
    peers.exit_lost("lost process(es) 1 of 2 (test)")
    assert ended == [(peers.EXIT_PEER_LOST, False)]
    assert not lock.held
    assert lock.release not in peers._before_exit and released.release not in \
        peers._before_exit


def _truncated_shard(demo_dataset, tmp_path, split: str) -> tuple[str, str]:
    """(data_dir, shard): a copy of the demo build whose `split` shard is cut to half."""
    data_dir = str(tmp_path / "tfds")
    shutil.copytree(demo_dataset[1], data_dir)
    [shard] = [os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs
               if f.startswith(f"surreal-{split}.array_record")]
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[:len(data) // 2])
    return data_dir, shard


def test_truncated_or_missing_shard_stops_before_training_naming_file_and_fix(demo_dataset,
                                                                             tmp_path):
    data_dir, shard = _truncated_shard(demo_dataset, tmp_path, "train")
    config = tiny_config(data_dir, **KW)
    with pytest.raises(shards.DamagedShard, match=rf"{shard} (holds \d+ records where "
                                                  rf"dataset_info.json says 12|cannot be "
                                                  rf"opened).*tfds build"):
        loop.train(config, str(tmp_path / "w"))
    assert not os.path.exists(tmp_path / "w")  # made for the run, nothing written: removed
    os.remove(shard)
    with pytest.raises(shards.DamagedShard, match=f"{shard} is missing.*tfds build"):
        loop.train(config, str(tmp_path / "w"))


def test_a_truncated_or_missing_shard_of_an_evaluated_split_stops_before_training(
        demo_dataset, tmp_path):
    """The shard of the test split, which an evaluator reads after the last step, truncated
    and then missing: the run stops before its first step, naming the file, not after all
    of training. The workdir it made for the run (and its missing parent) is removed, empty;
    a workdir that was there stays, with what it holds."""
    data_dir, shard = _truncated_shard(demo_dataset, tmp_path, "test")
    workdir = str(tmp_path / "runs" / "w")
    config = tiny_config(data_dir, total_steps=1, **{**KW, "evals.test.at_end": True})
    with pytest.raises(shards.DamagedShard, match=rf"{shard} (holds \d+ records where "
                                                  rf"dataset_info.json says 12|cannot be "
                                                  rf"opened).*tfds build"):
        loop.train(config, workdir)
    assert not os.path.exists(tmp_path / "runs")
    os.remove(shard)
    os.makedirs(os.path.join(workdir, "notes"))
    with pytest.raises(shards.DamagedShard, match=f"{shard} is missing.*tfds build"):
        loop.train(config, workdir)
    assert os.listdir(workdir) == ["notes"]


def test_a_shard_its_storage_does_not_give_is_opened_again_and_named_not_damaged(
        demo_dataset, monkeypatch):
    """Opening a shard that fails with an I/O error (array_record's report of EIO, an
    OSError, a refused access) is tried again after each of storage.RETRY_DELAYS_S: an error
    that passes opens the split, one that lasts is the storage's (StorageFault), named
    without the advice to remove and rebuild the dataset; a file that is no array_record
    (damage) is judged at once, with that advice."""
    from array_record.python import array_record_module

    from hgmt.data import storage

    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.0, 0.0))
    data_dir = demo_dataset[1]
    [shard] = [os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs
               if f.startswith("surreal-train.array_record")]
    real, opened = array_record_module.ArrayRecordReader, []

    def failing(error, times):
        def reader(path, *args, **kwargs):
            if path == shard:
                opened.append(path)
                if len(opened) <= times:
                    raise error
            return real(path, *args, **kwargs)
        return reader

    eio = RuntimeError(f"open() failed: Input/output error; opening {shard}")
    monkeypatch.setattr(array_record_module, "ArrayRecordReader", failing(eio, 2))
    assert len(builds.open_split("surreal/all", data_dir, "train")) == 12
    assert len(opened) >= 3  # two failed opens, then the check's own; the loader's after
    for error in (eio, OSError(errno.EIO, "Input/output error"),
                  PermissionError(errno.EACCES, "Permission denied")):
        opened.clear()
        monkeypatch.setattr(array_record_module, "ArrayRecordReader", failing(error, 10**6))
        with pytest.raises(shards.StorageFault) as raised:
            builds.open_split("surreal/all", data_dir, "train")
        message = str(raised.value)
        assert message.startswith(f"dataset shard {shard} cannot be read from its storage "
                                  f"({type(error).__name__}: "), message
        assert "; tried 3 times): " in message and "not damage: nothing needs rebuilding" in \
            message and f"Check that {data_dir} is reachable" in message, message
        assert "emove" not in message and "tfds build" not in message, message
        assert len(opened) == 3
    opened.clear()
    corrupt = RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")
    monkeypatch.setattr(array_record_module, "ArrayRecordReader", failing(corrupt, 10**6))
    with pytest.raises(shards.DamagedShard, match=f"{shard} cannot be opened \\(RuntimeError: "
                                                  f"Corrupted.*Rebuild the dataset: remove"):
        builds.open_split("surreal/all", data_dir, "train")
    assert len(opened) == 1


def test_a_tfrecord_build_is_named_with_the_format_to_build_it_again_in(tmp_path, capsys):
    """A build in tfrecord, valid but readable only from start to end, is named so, with
    the flag to build it again with, not taken for a damaged shard (array_record's reader
    calls a tfrecord file corrupt); the check command says the split was not checked."""
    import types

    import tensorflow_datasets as tfds

    import data_builders.surreal  # noqa: F401  (registers `surreal`)
    from hgmt.data import check
    from hgmt.sources import synthetic

    root, data_dir = str(tmp_path / "surreal"), str(tmp_path / "tfds")
    synthetic.generate(root, 1, 2, seed=0)
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format="tfrecord")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    with pytest.raises(shards.WrongFileFormat) as raised:
        builds.open_split("surreal/all", data_dir, "test")
    assert str(raised.value) == (
        f"dataset 'surreal/all' under {data_dir} was built as tfrecord (shards such as "
        f"surreal-test.tfrecord-00000-of-00001 in {builder.data_dir}), and hgmt reads "
        f"array_record, whose records it can read in any order (tfrecord is read from start "
        f"to end). Build it again with --file_format=array_record: `tfds build "
        f"surreal --imports=data_builders.surreal --manual_dir=<SURREAL root> "
        f"--data_dir={data_dir} "
        f"--config=all --file_format=array_record`, after moving {builder.data_dir} aside "
        f"(TFDS does not build a version that is there), or into another --data_dir")
    assert check.main([f"--config.data_dir={data_dir}", "--config.dataset=surreal/all",
                       "--splits=validation"]) == check.EXIT_NOT_CHECKED
    assert "surreal/all validation: not checked: WrongFileFormat: dataset 'surreal/all' " \
        "under" in capsys.readouterr().out
    # Training on it stops with the same error before the workdir is made, as on no build.
    workdir = tmp_path / "run"
    with pytest.raises(shards.WrongFileFormat, match="was built as tfrecord"):
        loop.train(tiny_config(data_dir, tasks="pose2d"), str(workdir))
    assert not workdir.exists()
    # A build whose dataset_info.json records no format: its shards' names say it.
    unrecorded = types.SimpleNamespace(info=types.SimpleNamespace(
        file_format=None, splits={"test": types.SimpleNamespace(
            filepaths=[f"{builder.data_dir}/surreal-test.tfrecord-00000-of-00001"])}))
    assert shards.file_format(unrecorded, "test") == "tfrecord"
    unrecorded.info.splits["test"].filepaths = ["/d/surreal-test.array_record-00000-of-00002"]
    assert shards.file_format(unrecorded, "test") == "array_record"


def _partial(workdir: str) -> list[str]:
    return [name for folder in (workdirs.checkpoint_dir(workdir),
                                workdirs.best_dir(workdir)) if os.path.isdir(folder)
            for name in os.listdir(folder) if "tmp" in name]


def test_full_disk_during_the_second_checkpoint_stops_cleans_up_and_the_rerun_resumes(
        demo_dataset, small_disk, caplog):
    """A filesystem with room for one checkpoint and a half: the second checkpoint (step 4)
    fails. `hgmt.main` exits 1 with one error line naming the workdir, step and space left
    (no traceback: neither its own nor the hundreds orbax's failed write leaves), orbax's
    temporary folder is removed, and checkpoint 2 still reads; with more space, the rerun
    resumes from step 2. `hgmt.evaluate` on the full disk: one error line naming its file."""
    config = tiny_config(demo_dataset[1], tasks="pose2d")  # the model main_command trains
    state = steps.create_train_state(jax.random.key(0), config,
                                     create_model(config.model, heads(("pose2d",))))
    state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    disk = small_disk(int(1.6 * state_bytes))  # a checkpoint takes ~1.2x the state
    workdir = os.path.join(disk.path, "w")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=6, checkpoint_every=2)
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and "Event loop is closed" not in run.stderr, \
        run.stderr[-3000:]
    errors = [line for line in run.stderr.splitlines() if re.match(r"E\d{4} |error: ", line)]
    assert len(errors) == 1, run.stderr[-3000:]
    message = errors[0]
    assert message.startswith(f"error: DiskFull: [Errno 28] cannot write the checkpoint of "
                              f"step 4 to {workdir}: the disk or quota is full"), message
    assert re.search(r"\((\d+\.\d [KM]iB|\d+ bytes) free on it\)", message), message
    assert "the training checkpoints (steps 2) are intact" in message
    assert _partial(workdir) == []
    assert sorted(os.listdir(workdirs.checkpoint_dir(workdir))) == ["2"]
    assert trained_model.restore_for_inference(workdir, 2)[2] == 2
    assert not os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))

    disk.resize(8 * state_bytes)
    with caplog.at_level(logging.INFO):
        resumed = loop.train(run_config.load_config(workdir), workdir)
    assert f"resumed from {workdirs.checkpoint_dir(workdir)} at step 2" in caplog.text
    assert int(resumed.step) == 6
    assert checkpoints.manager(workdir).all_steps() == [2, 4, 6] and _partial(workdir) == []

    # The evaluation command on a full disk: one line naming its file, exit status 1.
    with open(os.path.join(disk.path, "filler"), "wb") as f:
        with pytest.raises(OSError):
            f.write(b"x" * (8 * state_bytes))
    out = os.path.join(workdir, "eval.json")
    picture = out.replace(".json", "_pckh.png")  # the first file of its report
    with pytest.raises(SystemExit, match=rf"^error: DiskFull: \[Errno 28\] cannot write the "
                                         rf"file to {re.escape(picture)}: the disk or quota is "
                                         rf"full"):
        hgmt.evaluate.main([f"--workdir={workdir}", "--max_examples=4", f"--out_file={out}"])
    assert not [n for n in os.listdir(workdir) if n.startswith(("eval.", "eval_pckh"))]


class LoggedSteps:
    """A metric writer recording the steps logged; at step `hold_at` it waits until orbax no
    longer writes a checkpoint in the background (`manager()`, the run's manager)."""

    def __init__(self, hold_at: int, manager):
        self.hold_at, self.manager, self.steps = hold_at, manager, []

    def write_scalars(self, step, scalars):
        self.steps.append(step)
        if step == self.hold_at:
            deadline = time.monotonic() + 120
            while self.manager().is_saving_in_progress():
                assert time.monotonic() < deadline, "orbax still writes after 120 s"
                time.sleep(0.05)

    def write_images(self, step, images):
        pass


def test_a_failed_background_checkpoint_write_stops_the_run_and_keeps_the_one_kept_before(
        demo_dataset, small_disk, monkeypatch, caplog):
    """keep_checkpoints=1 on a disk with room for one checkpoint and a half: the write of step
    8 fails in orbax's background thread. The run stops with DiskFull once orbax is done with
    that write (held here until it is, during step 9): at the start of step 9 or 10, not at
    the next checkpoint (12). Checkpoint 4, the only one kept, is intact (orbax deletes old
    checkpoints only after a complete write) and the rerun with space resumes from it."""
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=12, checkpoint_every=4,
                         log_every=1, keep_checkpoints=1)
    state = steps.create_train_state(jax.random.key(0), config,
                                     create_model(config.model, heads(("pose2d",))))
    state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    disk = small_disk(int(1.6 * state_bytes))  # a checkpoint takes ~1.2x the state
    workdir = os.path.join(disk.path, "w")
    made = []
    manager = checkpoints.manager
    monkeypatch.setattr(checkpoints, "manager",
                        lambda *a, **kw: made.append(manager(*a, **kw)) or made[-1])
    writer = LoggedSteps(9, lambda: made[0])
    with pytest.raises(disk_space.DiskFull, match=rf"cannot write the checkpoint of step 8 to "
                                                  rf"{re.escape(workdir)}: the disk or quota "
                                                  rf"is full.*the training checkpoints \(steps "
                                                  rf"4\) are intact"):
        loop.train(config, workdir, writer)
    assert writer.steps[-1] in (8, 9), writer.steps
    assert _partial(workdir) == []
    assert sorted(os.listdir(workdirs.checkpoint_dir(workdir))) == ["4"]
    assert trained_model.restore_for_inference(workdir, 4)[2] == 4

    disk.resize(8 * state_bytes)
    with caplog.at_level(logging.INFO):
        resumed = loop.train(config, workdir, LoggedSteps(0, None))
    assert f"resumed from {workdirs.checkpoint_dir(workdir)} at step 4" in caplog.text
    assert int(resumed.step) == 12
    assert manager(workdir).all_steps() == [12] and _partial(workdir) == []


def test_partial_checkpoints_are_removed_also_while_late_chunks_recreate_them(tmp_path,
                                                                             monkeypatch):
    """After a failed write tensorstore may still write other chunks of it, recreating the
    temporary folder after a first removal (or during one, which then fails): the folder is
    removed until it stays away.

    On a clock of its own (`checkpoint_write_faults.time`: its sleeps advance it, sleeping nothing),
    the late chunks come at set times: two while the folder is removed again and again, one
    after it has stayed away for 0.15 s (less than the settle time). One still to come when
    `remove_partial` returns would recreate the folder after it: it returned too early."""
    workdir = str(tmp_path)
    partial = os.path.join(workdirs.checkpoint_dir(workdir), "4.orbax-checkpoint-tmp-17")
    os.makedirs(os.path.join(workdirs.checkpoint_dir(workdir), "2"))
    late = [0.03, 0.08, 0.28]  # when (on that clock) a late chunk recreates the folder

    def write_chunk() -> None:
        chunk = os.path.join(partial, "state", f"d{len(late)}")
        os.makedirs(chunk, exist_ok=True)
        with open(os.path.join(chunk, "0"), "wb") as f:
            f.write(b"x" * 1024)

    class Clock:
        now = 0.0

        def __getattr__(self, name):
            return getattr(time, name)

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.now += seconds
            while late and late[0] <= self.now + 1e-9:
                late.pop(0)
                write_chunk()

    rmtree, failed = type(epath.Path(partial)).rmtree, []

    def rmtree_racing(self, *args, **kwargs):
        if not failed:  # a chunk lands in a folder the first removal emptied
            failed.append(self)
            raise OSError(errno.ENOTEMPTY, "Directory not empty", os.fspath(self))
        rmtree(self, *args, **kwargs)

    monkeypatch.setattr(checkpoint_write_faults, "time", Clock())
    monkeypatch.setattr(type(epath.Path(partial)), "rmtree", rmtree_racing)
    write_chunk()  # the failed write's
    assert checkpoint_write_faults.remove_partial(workdir) == [partial]
    assert failed, "the removal that fails was not tried"
    assert late == [], f"returned before the late chunks at {late} (on its clock)"
    assert sorted(os.listdir(workdirs.checkpoint_dir(workdir))) == ["2"]


def test_the_warning_of_a_failed_writes_chunk_never_begun_is_dropped_by_the_commands(
        tmp_path, monkeypatch):
    """After a failed checkpoint write orbax may leave chunks of it never begun, each warned
    about when garbage collected (`checkpoint_write_faults.ABANDONED_WRITE`: a race in orbax's event
    loop after the failure, the save raising the error). Here deterministically: orbax's writer
    of an array's chunks fails before they begin (a full disk's error at their gather), so its
    very coroutines are dropped unstarted. The commands' filter drops exactly that warning: an
    orbax that renames the coroutine makes it come through here."""
    import asyncio
    import gc
    import types
    import warnings

    import jax.numpy as jnp
    from orbax.checkpoint._src.serialization import replica_slices, serialization

    def gather(*coroutines, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(serialization, "asyncio", types.SimpleNamespace(
        **{**vars(asyncio), "gather": gather}))
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)
    host = replica_slices.transfer_arrays_to_host([jnp.ones(3)], 0, False)[0]
    for dropped in (False, True):
        spec = {"driver": "zarr", "dtype": "float32",
                "kvstore": {"driver": "file", "path": str(tmp_path / str(dropped))},
                "metadata": {"shape": [3], "chunks": [3], "dtype": "<f4"}}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if dropped:
                checkpoint_write_faults.ignore_callbacks_into_closed_loops()
            with pytest.raises(OSError) as failed:
                asyncio.run(serialization.async_serialize_from_host(host, spec))
            assert disk_space.is_disk_full(failed.value)
            del failed  # its traceback holds the coroutines
            gc.collect()
        never_begun = [str(w.message) for w in caught if "never awaited" in str(w.message)]
        assert never_begun == ([] if dropped else [
            "coroutine 'async_serialize_from_host.<locals>.write_fragment' was never "
            "awaited"]), never_begun


def test_full_disk_for_the_evaluation_json_and_tensorboard_is_reported(small_disk):
    """The evaluation report and the TensorBoard writer on a full disk: DiskFull naming the
    file or workdir, no partial report left."""
    from hgmt.training import summary_writer

    disk = small_disk(256 * 1024)
    writer = disk_space.CheckedWriter(summary_writer.create(disk.path), disk.path)
    with open(os.path.join(disk.path, "filler"), "wb") as f:
        with pytest.raises(OSError):
            f.write(b"x" * (512 * 1024))
    out = os.path.join(disk.path, "eval_test.json")
    summary = {"split": "test", "num_examples": 1, "flip": False, "loss": {},
               "notes": "x" * 100_000}
    with pytest.raises(disk_space.DiskFull, match=f"cannot write the file to "
                                                  f"{out[:-len('json')]}md: the disk or quota "
                                                  f"is full"):
        report_files.write_report(summary, out)
    assert not [n for n in os.listdir(disk.path) if n.startswith("eval_test")]

    with pytest.raises(disk_space.DiskFull, match=f"the TensorBoard summaries to "
                                                  f"{disk.path}: the disk or quota is full"):
        for step in range(1000):
            writer.write_scalars(step, {"loss": 1.0, "x" * 2000: 2.0})
            writer.flush()


def test_a_full_disk_as_the_runs_own_tensorboard_writer_closes_is_reported(tmp_path,
                                                                          monkeypatch):
    """The trainer's own TensorBoard writer failing as the run ends closes it, on a full
    disk or quota: DiskFull naming the workdir, not the OSError. A local event file is
    flushed at every write, so its close cannot fail here: the close of an object store's
    file, which uploads it then, is stood in for by a writer whose close raises ENOSPC."""
    from hgmt.training import summary_writer

    class UploadsAtClose(summary_writer.SummaryWriter):
        def close(self):
            super().close()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(summary_writer, "create", lambda logdir, process: UploadsAtClose(logdir))
    with pytest.raises(disk_space.DiskFull, match=f"the TensorBoard summaries to "
                                                  f"{tmp_path}: the disk or quota is full"):
        with contextlib.ExitStack() as opened:
            loop._checked_writer(str(tmp_path), None, opened).write_scalars(0, {"loss": 1.0})


@pytest.mark.parametrize("fails", ["markdown", "picture", "json"])
def test_a_full_disk_in_the_evaluation_report_leaves_it_undone_and_the_rerun_records_it_once(
        demo_dataset, tmp_path, monkeypatch, caplog, fails):
    """A full disk while the evaluation after training writes its Markdown table, its PCKh
    picture (half written) or its JSON: DiskFull, and no file of the report left, neither
    eval_test.json (which a rerun takes as the evaluation done) nor its table or picture;
    the rerun evaluates again, writes all three, and evals.jsonl holds the evaluation once
    (before: a rerun that never wrote the table, a truncated picture kept, or a second line
    for the same evaluation; a table and picture left beside no JSON)."""
    from matplotlib.figure import Figure

    workdir = str(tmp_path / "w")
    config = _at_end_config(demo_dataset[1])
    calls = []

    def full(real, *, half=False):
        def write(*args, **kwargs):
            if not calls and (fails != "json" or str(getattr(args[1], "name", "")).endswith(
                    "eval_test.json.tmp")):
                calls.append(fails)
                if half:  # the first bytes reach the file
                    args[1].write(b"\x89PNG" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(*args, **kwargs)
        return write

    if fails == "markdown":
        monkeypatch.setattr(markdown, "to_markdown", full(markdown.to_markdown))
    elif fails == "picture":
        monkeypatch.setattr(Figure, "savefig", full(Figure.savefig, half=True))
    else:
        monkeypatch.setattr(report_files.json, "dump", full(report_files.json.dump))
    with pytest.raises(disk_space.DiskFull, match="the disk or quota is full"):
        loop.train(config, workdir)
    assert calls == [fails]
    assert sorted(n for n in os.listdir(workdir) if n.startswith("eval_test")) == []
    _assert_the_rerun_evaluates_step_3(config, workdir, caplog)
    assert sorted(n for n in os.listdir(workdir) if n.startswith("eval_test")) == [
        "eval_test.json", "eval_test.md", "eval_test_pckh.png"]
    assert cv2.imread(workdirs.eval_file(workdir, "test").replace(".json", "_pckh.png")
                      ).shape == (360, 480, 3)
    with open(workdirs.eval_file(workdir, "test")) as f:  # what a rerun moves aside with it
        summary = json.load(f)
    assert summary["pictures"] == ["eval_test_pckh.png"]

    # The same report written again over it, failing at its JSON: the earlier report's three
    # files are left as they were, its picture included (before: the new picture had replaced
    # it, then was removed, and the JSON listed a picture that was gone).
    files = {n: (tmp_path / "w" / n).read_bytes()
             for n in ("eval_test.json", "eval_test.md", "eval_test_pckh.png")}
    calls.clear()
    monkeypatch.undo()  # the first failure's
    monkeypatch.setattr(report_files.json, "dump", full(json.dump))
    fails = "json"
    with pytest.raises(disk_space.DiskFull, match="the disk or quota is full"):
        report_files.write_report(summary, workdirs.eval_file(workdir, "test"))
    assert calls == ["json"]
    assert {n: (tmp_path / "w" / n).read_bytes() for n in files} == files
    assert sorted(n for n in os.listdir(workdir) if n.startswith("eval_test")) == sorted(files)


def test_a_file_written_atomically_is_synced_before_its_rename_and_its_folder_after(
        tmp_path, monkeypatch):
    """config.json, damaged_records.json, an evaluation's JSON: after a power loss the file
    must be the old one or the new one whole, never empty. Its data is synced before the
    rename (a filesystem may otherwise keep the rename and not the data) and its folder after
    it (the rename itself then lasts)."""
    events = []
    fsync, replace = os.fsync, os.replace

    def syncing(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def renaming(src, dst):
        events.append(("replace", src, dst))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", syncing)
    monkeypatch.setattr(os, "replace", renaming)
    folder = os.path.realpath(tmp_path)
    path = os.path.join(folder, "config.json")
    disk_space.write_atomically(path, lambda f: f.write('{"tasks": "pose2d"}'))
    assert events == [("fsync", f"{path}.tmp"), ("replace", f"{path}.tmp", path),
                      ("fsync", folder)]
    with open(path) as f:
        assert json.load(f) == {"tasks": "pose2d"}


def test_full_disk_while_appending_an_evaluation_leaves_no_partial_line(small_disk):
    """evals.jsonl on a full disk: DiskFull naming it, the file cut back to its complete
    lines (so the rerun reads it), and with space again the next line is appended."""
    disk = small_disk(64 * 1024)
    path = workdirs.evals_file(disk.path)
    lines = []
    with pytest.raises(disk_space.DiskFull) as full:
        for step in range(1000):
            line = json.dumps({"step": step, "evaluator": "test", "notes": "x" * 1000})
            disk_space.append_line(path, line, "the evaluation curves")
            lines.append(line)
    assert 0 < len(lines) < 1000
    with open(path) as f:
        assert f.read() == "".join(line + "\n" for line in lines)
    assert re.search(rf"cannot write the evaluation curves to {re.escape(path)}: the disk or "
                     rf"quota is full .*Nothing partial was left behind", str(full.value))
    disk.resize(256 * 1024)
    disk_space.append_line(path, json.dumps({"step": 1000, "evaluator": "test"}), "curves")
    assert [e["step"] for e in workdirs.read_evals(disk.path)] == [*range(len(lines)), 1000]


def _fill(disk: str, room: int) -> str:
    """Fills the filesystem of `disk` up to `room` bytes left, with one file: -> its path."""
    path = os.path.join(disk, "filler")
    with open(path, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"x" * 65536)
        f.truncate(max(0, f.tell() - room))
    return path


class FillsDiskAt:
    """A metric writer that fills the disk `disk` up to `room` bytes left when evaluator
    `name` first logs (its curve line, report and checkpoint are written after); and makes
    the folder `beside` then, if given (a write under way elsewhere)."""

    def __init__(self, disk: str, name: str, room: int, beside: str | None = None):
        self.disk, self.name, self.room, self.filler = disk, name, room, None
        self.beside = beside

    def write_scalars(self, step, scalars):
        if self.filler is None and any(k.startswith(f"{self.name}/") for k in scalars):
            if self.beside:
                os.makedirs(self.beside)
            self.filler = _fill(self.disk, self.room)

    def write_images(self, step, images):
        pass


def test_full_disk_for_the_best_checkpoint_after_training_is_reported_and_the_rerun_keeps_it(
        demo_dataset, small_disk):
    """The evaluator keeping the best checkpoint also runs after the last step (at_end); the
    disk fills during that evaluation, with room for its curve line and report but not its
    checkpoint, which is written first: DiskFull naming the step and the partial folder,
    which is removed, the periodic checkpoint intact (and a training checkpoint's write under
    way meanwhile, here a stand-in folder, left to its writer), the step's line and report
    not written; with space the rerun evaluates again, keeps the best and writes them
    once."""
    metric = "loss/total"
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=2, checkpoint_every=2,
                         **{"evals.validation.every": 100, "evals.validation.at_end": True,
                            "evals.validation.best_metric": metric,
                            "evals.validation.max_examples": 8})
    disk = small_disk(16 * 2**20)
    workdir = os.path.join(disk.path, "w")
    under_way = os.path.join(workdirs.checkpoint_dir(workdir), "3.orbax-checkpoint-tmp-1")
    writer = FillsDiskAt(disk.path, "validation", 256 * 1024, beside=under_way)
    best = re.escape(workdirs.best_dir(workdir))
    with pytest.raises(disk_space.DiskFull, match=rf"cannot write the best checkpoint of step 2 "
                                                  rf"to {re.escape(workdir)}: the disk or quota "
                                                  rf"is full .*Removed the partial {best}/2\."
                                                  rf"orbax-checkpoint-tmp[^,]*; the training"):
        loop.run(config, workdir, writer)
    assert writer.filler is not None
    assert _partial(workdir) == ["3.orbax-checkpoint-tmp-1"]
    os.rmdir(under_way)
    assert not os.path.exists(workdirs.eval_file(workdir, "validation"))
    assert workdirs.read_evals(workdir) == []
    assert checkpoints.manager(workdir).all_steps() == [2]

    os.remove(writer.filler)
    _, summaries = loop.run(config, workdir, FillsDiskAt(disk.path, "none", 0))
    assert sorted(summaries) == ["validation"]
    manager = best_checkpoint.best_manager(workdir, metric)
    assert manager.all_steps() == [2]
    lines = workdirs.read_evals(workdir)
    assert [(x["step"], x["evaluator"]) for x in lines] == [(2, "validation")]
    assert os.path.exists(workdirs.eval_file(workdir, "validation"))
    assert manager.metrics(2)[metric] == pytest.approx(lines[-1]["metrics"][metric])


def test_a_full_disk_for_the_best_and_then_the_training_checkpoint_leaves_no_partial_folder(
        demo_dataset, small_disk, monkeypatch, caplog):
    """Step 4's training checkpoint is still being written in orbax's background thread (held
    here until the disk is full) when its validation fills the disk: the best checkpoint's
    write fails, and then the training checkpoint's. The run stops with the best checkpoint's
    DiskFull; the training checkpoint's failure comes as its manager closes, after: its partial
    folder is removed too, so neither <workdir>/checkpoints nor <workdir>/best holds one, and
    checkpoint 2 still restores."""
    from orbax.checkpoint._src.serialization import type_handlers

    metric = "loss/total"
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=6, checkpoint_every=2,
                         **{"evals.validation.every": 4, "evals.validation.best_metric": metric,
                            "evals.validation.max_examples": 8})
    disk = small_disk(16 * 2**20)
    workdir = os.path.join(disk.path, "w")
    writer = FillsDiskAt(disk.path, "validation", 0)
    write = type_handlers.NumpyHandler._open_and_write
    held = f"{workdirs.checkpoint_dir(workdir)}/4.orbax-checkpoint-tmp"

    async def held_write(self, value, tspec, ts_context):
        # Step 4's arrays, written in orbax's background thread, wait until the validation
        # has filled the disk.
        if held in json.dumps(tspec):
            deadline = time.monotonic() + 60
            while writer.filler is None and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return await write(self, value, tspec, ts_context)

    monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", held_write)
    with pytest.raises(disk_space.DiskFull, match=rf"cannot write the best checkpoint of step 4 "
                                                  rf"to {re.escape(workdir)}: the disk or quota "
                                                  rf"is full"):
        loop.run(config, workdir, writer)
    assert writer.filler is not None
    assert re.search(r"the write of the checkpoint of step 4 under way when the run stopped "
                     r"failed too: the disk or quota is full .*Removed the partial "
                     rf"{re.escape(held)}[^,]*; the training checkpoints \(steps 2\) are "
                     r"intact", caplog.text), caplog.text[-3000:]
    assert _partial(workdir) == []
    assert checkpoints.manager(workdir).all_steps() == [2]
    assert trained_model.restore_for_inference(workdir, 2)[2] == 2


def test_closing_a_stopped_runs_manager_never_raises_over_the_runs_own_error(
        tmp_path, monkeypatch, caplog):
    """`close_after_stop` logs a failed write's error, never raises it over the run's own:
    nor when looking for its partial folder fails too (the workdir unreadable by then, an
    object store's error). Before, that second error came out of the exit callback and
    replaced the run's own."""
    class FailingManager:
        def close(self):
            raise ValueError("[OS error 28: No space left on device]")

    def unreadable(workdir, best_only=False):
        raise PermissionError(errno.EACCES, "Permission denied", workdir)

    monkeypatch.setattr(checkpoint_write_faults, "remove_partial", unreadable)
    with caplog.at_level(logging.WARNING):
        checkpoint_write_faults.close_after_stop(FailingManager(), str(tmp_path))
    assert re.search(r"the write of the checkpoint under way when the run stopped failed "
                     r"too \(ValueError: \[OS error 28: No space left on device\]\), and its "
                     r"partial folder could not be looked for in .*/checkpoints "
                     r"\(PermissionError: ", caplog.text), caplog.text




@pytest.mark.parametrize("process", [0, 1])
def test_a_write_failing_after_the_stop_is_a_line_true_on_each_process_its_traceback_verbose(
        tmp_path, monkeypatch, caplog, process):
    """`close_after_stop` of a write that failed on an I/O error, its partial folder
    checkpoints/4.orbax-checkpoint-tmp left: process 0 removes it and says so; another
    process, which removes nothing (the folder is process 0's to remove), says so, where it
    said "Nothing partial left" with the folder there. Each logs the error's traceback as a
    verbose line (shown with --verbosity=1) after its one line, which points to it: none was
    logged."""
    class FailingManager:
        def close(self):
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(jax, "process_index", lambda: process)
    partial = os.path.join(workdirs.checkpoint_dir(str(tmp_path)), "4.orbax-checkpoint-tmp")
    os.makedirs(partial)
    with caplog.at_level(logging.INFO):
        checkpoint_write_faults.close_after_stop(FailingManager(), str(tmp_path))
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1, caplog.text
    line = lines[0].getMessage()
    assert line.startswith("the write of the checkpoint")
    assert ("failed too: OSError: [Errno 5] Input/output error (its traceback with "
            "--verbosity=1). ") in line
    if process == 0:
        assert f"Removed the partial {partial};" in line and not os.path.exists(partial)
    else:
        assert ("Its partial folder, if any, is process 0's to remove, or the rerun's as it "
                "starts;") in line and os.path.isdir(partial)
    verbose = [r for r in caplog.records if getattr(r, "hgmt_verbose", False)]
    assert len(verbose) == 1 and caplog.records.index(verbose[0]) > caplog.records.index(lines[0])
    assert isinstance(verbose[0].exc_info[1], OSError)
    assert "in close\n    raise OSError(errno.EIO" in logging.Formatter().format(verbose[0])


@pytest.mark.parametrize("stop", [OSError, KeyboardInterrupt])
def test_a_best_checkpoint_write_stopped_by_an_error_or_ctrl_c_leaves_no_partial_folder(
        tmp_path, monkeypatch, caplog, stop):
    """The best checkpoint's write of step 3 stops while its arrays are written, on an I/O
    error that is no full disk or on a real Ctrl-C (SIGINT): that error is raised as it is,
    and its partial folder <workdir>/best/3.orbax-checkpoint-tmp is removed, where it was left
    (no run reads it, and it can hold a whole checkpoint); the best checkpoint of step 2
    stays."""
    from orbax.checkpoint._src.serialization import type_handlers

    workdir = str(tmp_path)
    best = best_checkpoint.BestCheckpoint(
        workdir, "validation", {"best_metric": "loss/total", "protocol": "hgmt"}, model=None)
    state = {"w": np.arange(6.0, dtype=np.float32)}
    best.save(2, state, 1.0)
    write = type_handlers.NumpyHandler._open_and_write

    async def stopped(self, value, tspec, ts_context):
        if "/3.orbax-checkpoint-tmp" in json.dumps(tspec):
            if stop is OSError:
                raise OSError(errno.EIO, "Input/output error")
            os.kill(os.getpid(), signal.SIGINT)
            await asyncio.sleep(0.5)
        return await write(self, value, tspec, ts_context)

    monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", stopped)
    # Python's own Ctrl-C handler, which a process started in the background by a
    # non-interactive shell lacks (SIGINT ignored from its start).
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with caplog.at_level(logging.WARNING), pytest.raises(stop):
            best.save(3, state, 0.5)
    finally:
        signal.signal(signal.SIGINT, handler)
        best.close()
    assert _partial(workdir) == []
    assert re.search(rf"the best checkpoint's write of step 3 stopped \({stop.__name__}\): "
                     rf"removed its partial {re.escape(workdirs.best_dir(workdir))}/3\.orbax-"
                     rf"checkpoint-tmp", caplog.text), caplog.text
    assert best_checkpoint.best_manager(workdir, "loss/total").all_steps() == [2]


class FillsDiskAtStep:
    """A metric writer that fills the disk `disk` when training logs `step`."""

    def __init__(self, disk: str, step: int):
        self.disk, self.step, self.filler = disk, step, None

    def write_scalars(self, step, scalars):
        if self.filler is None and step == self.step:
            self.filler = _fill(self.disk, 0)

    def write_images(self, step, images):
        pass


@pytest.mark.slow
def test_a_non_finite_loss_while_a_checkpoint_write_fails_on_a_full_disk_names_both(
        demo_dataset, small_disk, monkeypatch, caplog):
    """Step 4's checkpoint is written in orbax's background thread (held here until the NaN
    is found), the disk fills as step 5 logs, and step 6's loss is NaN (NaN joints in its
    batch). The NaN found at step 6's log waits for that write, which fails on the full disk:
    before, the run stopped with tensorstore's ValueError, naming neither the step nor the
    NaN, and left step 4's partial folder. Now one DiskFull names step 4's checkpoint (the
    first fault, by step), checkpoint 2 as intact, the NaN at step 6 and its fix; step 4's
    partial folder is removed and checkpoint 2 restores."""
    from orbax.checkpoint._src.serialization import type_handlers

    from hgmt.training import step_metrics

    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=8, checkpoint_every=2,
                         log_every=1)
    source = builds.open_split(config.dataset, config.data_dir, "train")
    loader = input_pipeline.train_loader(
        source, batch_size=config.batch_size, image_size=config.image_size, seed=config.seed,
        worker_count=0, tasks=("pose2d",))
    disk = small_disk(16 * 2**20)
    workdir = os.path.join(disk.path, "w")
    writer = FillsDiskAtStep(disk.path, 5)
    found = threading.Event()
    check = step_metrics.StepMetrics.check

    def noting_check(self):
        bad = check(self)
        if bad is not None:
            found.set()
        return bad

    write = type_handlers.NumpyHandler._open_and_write
    held = f"{workdirs.checkpoint_dir(workdir)}/4.orbax-checkpoint-tmp"

    async def held_write(self, value, tspec, ts_context):
        if held in json.dumps(tspec):
            deadline = time.monotonic() + 60
            while not found.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
        return await write(self, value, tspec, ts_context)

    monkeypatch.setattr(step_metrics.StepMetrics, "check", noting_check)
    monkeypatch.setattr(type_handlers.NumpyHandler, "_open_and_write", held_write)
    with pytest.raises(Exception) as err:
        loop.train(config, workdir, writer, loader=NanJointsFrom(loader, 6))
    assert found.is_set() and writer.filler is not None
    message = str(err.value)
    assert isinstance(err.value, disk_space.DiskFull), f"{type(err.value).__name__}: {message}"
    assert message.startswith(f"[Errno 28] cannot write the checkpoint of step 4 to {workdir}: "
                              f"the disk or quota is full"), message
    assert "the training checkpoints (steps 2) are intact" in message, message
    assert re.search(r"Besides, the loss is non-finite at step 6 in task\(s\) pose2d, total "
                     r"\(.*: lower optimizer\.learning_rate or set optimizer\.grad_clip_norm "
                     r"before that rerun, with --resume_with_changed_config$", message), message
    assert _partial(workdir) == []
    assert checkpoints.steps_on_disk(workdir) == [2]
    assert trained_model.restore_for_inference(workdir, 2)[2] == 2


def test_full_disk_for_the_best_checkpoint_taken_again_on_resuming_is_reported(tmp_path,
                                                                              small_disk):
    """A resumed run keeps the best score of evals.jsonl (step 2) as its best checkpoint, from
    the periodic checkpoint of that step, on a disk without room for it: DiskFull naming the
    step and the partial folder, which is removed; with space it is kept."""
    metric = "loss/total"
    config = tiny_config(str(tmp_path), tasks="pose2d",
                         **{"evals.validation.every": 2, "evals.validation.best_metric": metric})
    model = create_model(config.model, heads(("pose2d",)))
    state = steps.create_train_state(jax.random.key(0), config, model)
    state_bytes = sum(np.asarray(x).nbytes for x in jax.tree.leaves(state))
    disk = small_disk(4 * state_bytes)  # a checkpoint takes ~1.2x the state
    workdir = os.path.join(disk.path, "w")
    with contextlib.closing(checkpoints.manager(workdir, async_save=False,
                                                with_data=False)) as periodic:
        periodic.save(2, args=ocp.args.Composite(
            state=ocp.args.StandardSave(to_checkpoint_layout(model, state))))
    disk_space.append_line(workdirs.evals_file(workdir), json.dumps(
        {"step": 2, "evaluator": "validation", "metrics": {metric: 1.5}}), "curves")
    filler = _fill(disk.path, 64 * 1024)  # no room for a second checkpoint, whatever its size
    best = re.escape(workdirs.best_dir(workdir))
    with contextlib.closing(evaluators.Evaluators(config, workdir, {"pose2d": 1.0})) as evals:
        with pytest.raises(disk_space.DiskFull, match=rf"cannot write the best checkpoint of "
                                                      rf"step 2 to {re.escape(workdir)}: the "
                                                      rf"disk or "
                                                      rf"quota is full .*Removed the partial "
                                                      rf"{best}/2\.orbax-checkpoint-tmp"):
            evals.forget_after(4, lambda: state)
    assert _partial(workdir) == []

    os.remove(filler)
    with contextlib.closing(evaluators.Evaluators(config, workdir, {"pose2d": 1.0})) as evals:
        assert evals.forget_after(4, lambda: state) == []
        assert evals.best_checkpoint.best() == (2, 1.5)


def test_a_torn_last_evaluation_line_is_left_out_and_a_damaged_one_named(tmp_path, caplog):
    """An append cut short (a kill) leaves a last line without its newline: the trainer's
    reader leaves it out with a warning (that evaluation runs again) and the next append
    replaces it; a line that is not JSON before the last, or not UTF-8 text (before: a
    UnicodeDecodeError's traceback), stops naming the file and line."""
    workdir = str(tmp_path)
    path = workdirs.evals_file(workdir)
    with open(path, "w") as f:
        f.write('{"step": 2, "evaluator": "train"}\n{"step": 4, "evaluator": "train"}\n'
                '{"step": 4, "evalua')
    evals = evaluators.Evaluators(tiny_config(str(tmp_path), tasks="pose2d"), workdir,
                                  {"pose2d": 1.0})
    with caplog.at_level(logging.WARNING):
        assert evals.recorded(4) == {"train"}
    assert f"{path} ends in a partial line (19 characters" in caplog.text
    with caplog.at_level(logging.WARNING):
        disk_space.append_line(path, json.dumps({"step": 4, "evaluator": "test"}), "curves")
    assert "(19 bytes without a newline: an append cut short); it is removed" in caplog.text
    assert evals.recorded(4) == {"train", "test"}
    with open(path, "a") as f:
        f.write("{not json\n")
        f.write('{"step": 6, "evaluator": "test"}\n')
    with pytest.raises(workdirs.DamagedRunFile, match=rf"^{re.escape(path)} line 4 is not a "
                                                      rf"JSON object .*Repair or delete that "
                                                      rf"line and rerun"):
        evals.recorded(6)
    # A line equal to the last of its step and evaluator is not appended again (a rerun of an
    # evaluation a full disk stopped after its line); one equal to an earlier line only is.
    os.remove(path)
    summary = {**{k: None for k in eval_settings.RECORDED_SETTINGS}, "num_examples": 3}
    for values in ({"loss/total": 1.0}, {"loss/total": 1.0}, {"loss/total": 2.0},
                   {"loss/total": 1.0}):
        evals._append(8, "test", summary, values)
    assert [x["metrics"]["loss/total"] for x in workdirs.read_evals(workdir)] == [1.0, 2.0, 1.0]
    with open(path, "wb") as f:  # a byte that is not UTF-8 (a bad copy)
        f.write(b'{"step": 2, "evaluator": "train"}\n{"step": 4, "ev\xffaluator": "test"}\n')
    with pytest.raises(workdirs.DamagedRunFile, match=rf"^{re.escape(path)} line 2 is not a "
                                                      rf"JSON object \(not UTF-8 text at "
                                                      rf"column 16\).*Repair or delete"):
        evals.recorded(4)


# XLA's out-of-memory error on a GPU (its allocation dump shortened) and on a TPU.
_GPU_OOM = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes.\n"
            "BufferAssignment OOM Debugging.\nBufferAssignment stats:\n"
            + "".join(f"  allocation {i}: size 1073741824, parameter {i}\n" for i in range(40)))
_TPU_OOM = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
            "space hbm. Used 18.27G of 15.48G hbm. Exceeded hbm capacity by 2.79G.")


def test_out_of_device_memory_names_batch_image_model_memory_and_settings(
        demo_dataset, tmp_path, monkeypatch, caplog):
    """XLA's RESOURCE_EXHAUSTED raised by the training step (a crafted GPU error, with its
    allocation dump, through the same handler) becomes one error naming the per-device
    batch, image size, model size, memory asked, and the settings; the dump is a verbose line."""
    config = tiny_config(demo_dataset[1], tasks="pose2d", **{"optimizer.schedule": "constant"})

    def step(state, batch):
        raise jax.errors.JaxRuntimeError(_GPU_OOM)

    monkeypatch.setattr(steps, "_jitted_train_step", lambda *args: step)
    with caplog.at_level(logging.INFO), pytest.raises(device_memory.OutOfDeviceMemory) as err:
        loop.train(config, str(tmp_path))
    message = str(err.value)
    params = steps.create_train_state(jax.random.key(0), config,
                                      create_model(config.model, heads(("pose2d",)))).params
    count = sum(x.size for x in jax.tree.leaves(params))
    assert "while compiling or running the training step: XLA asked for 32.0 GiB" in message
    assert "the device has unknown" in message  # the CPU reports no limit
    assert ("per-device batch of 2 (config.batch_size=8 over 4 devices), 64 x 64 images"
            in message)
    assert f"a model of {count / 1e6:.2f} M parameters" in message and count > 1000
    for setting in ("config.batch_size", "config.image_size", "config.model.features=16",
                    "config.model.num_stacks=1", "config.model.dtype=bfloat16",
                    "--resume_with_changed_config", "--verbosity=1"):
        assert setting in message
    assert "allocation 0" not in message and err.value.__cause__ is None
    [dump] = [r for r in caplog.records if "allocation 39" in r.getMessage()]
    from hgmt.console import UserLines

    assert dump.hgmt_verbose and not UserLines().filter(dump)  # shown with --verbosity=1

    # Other runtime errors pass unchanged, and a full disk (tensorstore's RESOURCE_EXHAUSTED
    # as ValueError) is not device memory.
    def failing(state, batch):
        raise jax.errors.JaxRuntimeError("INTERNAL: something else")

    monkeypatch.setattr(steps, "_jitted_train_step", lambda *args: failing)
    with pytest.raises(jax.errors.JaxRuntimeError, match="INTERNAL: something else"):
        loop.train(config, str(tmp_path))
    assert not device_memory.is_out_of_memory(ValueError("RESOURCE_EXHAUSTED: Error writing"))
    disk = ValueError("RESOURCE_EXHAUSTED: Error writing local file: No space left on device")
    wrapper = Exception("Encountered error while reading array index: ().")
    wrapper.__cause__ = disk
    assert not device_memory.is_out_of_memory(wrapper)
    # Another exhausted resource of the runtime (a multi-host run's gRPC message size) is not
    # memory; the TPU runtime's buffer allocation is; an error raised while handling an
    # out-of-memory one (its __context__, not its __cause__) is not it.
    assert not device_memory.is_out_of_memory(jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Received message larger than max (5000000 vs. 4194304)"))
    assert device_memory.is_out_of_memory(jax.errors.JaxRuntimeError(
        "RESOURCE_EXHAUSTED: Error allocating device buffer: Attempting to allocate 1.00G. "
        "That was not possible. There are 500.00M free."))
    try:
        try:
            raise jax.errors.JaxRuntimeError(
                "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 bytes.")
        except jax.errors.JaxRuntimeError:
            raise RuntimeError("cleanup failed")  # noqa: B904 (the implicit context is the case)
    except RuntimeError as unrelated:
        assert unrelated.__context__ is not None
        assert not device_memory.is_out_of_memory(unrelated)


def test_out_of_device_memory_while_evaluating_names_the_evaluation_batch_and_dtype_only(
        demo_dataset):
    """An evaluation of trained weights has no optimizer state, and its model and image size
    are the checkpoint's: the message names config.eval_batch_size, free on any run, and the
    compute dtype (before: training's text, the optimizer, the model's size fields and a
    resume flag for the batch size)."""
    config = tiny_config(demo_dataset[1], tasks="pose2d", eval_batch_size=8)
    with pytest.raises(device_memory.OutOfDeviceMemory) as err, device_memory.explained(
            config, "while evaluating", "eval_batch_size"):
        raise jax.errors.JaxRuntimeError(_GPU_OOM)
    message = str(err.value)
    assert message.startswith(
        "out of device memory while evaluating: XLA asked for 32.0 GiB, the device has "
        "unknown. The program holds a per-device batch of 2 (config.eval_batch_size=8 over 4 "
        "devices), 64 x 64 images (config.image_size) and a model of ")
    assert message.endswith(
        " in float32), in float32. Lower config.eval_batch_size (or use more devices; any run "
        "takes a new one), or compute in bfloat16 (config.model.dtype=bfloat16, which a "
        "resumed training run takes only with --resume_with_changed_config). XLA's full "
        "message (the allocation dump) is logged with --verbosity=1")
    assert "optimizer" not in message and "config.model.features" not in message
    # The trainer's evaluations run beside the train state, optimizer state included.
    with pytest.raises(device_memory.OutOfDeviceMemory) as err, device_memory.explained(
            config, "while evaluating", "eval_batch_size", beside_train_state=True):
        raise jax.errors.JaxRuntimeError(_GPU_OOM)
    assert (" in float32, times about 3 with the optimizer state training holds beside it), "
            "in float32. Lower config.eval_batch_size") in str(err.value)


def test_out_of_device_memory_while_resuming_names_the_restore(demo_dataset, tmp_path,
                                                                monkeypatch):
    """XLA's out-of-memory error while the trainer restores its checkpoint (raised as orbax
    would, from its own error) is named as the restore, once, not as the training step."""
    config = tiny_config(demo_dataset[1], tasks="pose2d", **{"optimizer.schedule": "constant"})

    def restore(*args, **kwargs):
        raise _restore_oom("cause")

    monkeypatch.setattr(checkpoints, "restore_newest_readable", restore)
    with pytest.raises(device_memory.OutOfDeviceMemory) as err:
        loop.train(config, str(tmp_path))
    assert str(err.value).startswith(
        "out of device memory while restoring the newest checkpoint beside the initial train "
        "state: XLA asked for 123 B, the device has unknown. The program holds a per-device "
        "batch of 2 (config.batch_size=8 over 4 devices)")
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_out_of_memory_amounts_from_the_gpu_tpu_and_cpu_messages():
    assert device_memory.amounts(_GPU_OOM) == (32 * 2**30, None)
    assert device_memory.amounts(_TPU_OOM) == (int(18.27 * 2**30), int(15.48 * 2**30))
    assert device_memory.amounts("RESOURCE_EXHAUSTED: Failed to allocate request for 2.00GiB "
                                 "(2147483648B) on device ordinal 0") == (2**31, None)
    assert device_memory.amounts("RESOURCE_EXHAUSTED: Out of memory allocating 68719476736 "
                                 "bytes.") == (2**36, None)  # the CPU's
    assert device_memory.amounts("RESOURCE_EXHAUSTED: no numbers") == (None, None)


# Limits its address space to 8 GB (before JAX starts), allocates 64 GiB and prints what XLA
# raised. The limit is set in the child: a preexec_fn would run Python in a fork of this
# multithreaded process.
_CPU_OOM = ("import json, resource, sys; sys.path.insert(0, {repo!r})\n"
            "resource.setrlimit(resource.RLIMIT_AS,\n"
            "                   (8 * 10**9, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
            "import jax.numpy as jnp\n"
            "from hgmt.training import device_memory\n"
            "try:\n"
            "    jnp.ones((2**36,), jnp.uint8).block_until_ready()\n"
            "except Exception as e:\n"
            "    print(json.dumps([type(e).__name__, str(e), device_memory.is_out_of_memory(e),\n"
            "                      device_memory.amounts(str(e))]))\n")


def test_the_cpu_runs_out_of_memory_past_an_address_space_limit_and_its_amount_is_read():
    """XLA's CPU client fails an allocation past the process's address-space limit (`ulimit
    -v`, here RLIMIT_AS of 8 GB) with its own out-of-memory message (the real error, in a
    subprocess): recognised, and the bytes it asked for read from it."""
    out = subprocess.run([sys.executable, "-c", _CPU_OOM.format(repo=REPO)],
                         env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    kind, message, oom, amounts = json.loads(out.stdout.splitlines()[-1])
    assert kind == "JaxRuntimeError"
    assert message.startswith("RESOURCE_EXHAUSTED: Out of memory allocating 68719476736 bytes")
    assert oom and amounts == [2**36, None]


# --- Slow: whole processes -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _wait_for_checkpoint(workdir: str, step: int, procs, timeout: float = 300) -> None:
    ckpt = workdirs.checkpoint_dir(workdir)
    deadline = time.time() + timeout
    while time.time() < deadline and all(p.poll() is None for p in procs):
        if os.path.isdir(ckpt) and any(d.isdigit() and int(d) >= step for d in os.listdir(ckpt)):
            return
        time.sleep(0.2)
    ended = [p.communicate()[0] for p in procs if p.poll() is not None]
    ended = [out if len(out) < 4000 else f"{out[:3000]} ... {out[-1000:]}" for out in ended]
    raise AssertionError(f"no checkpoint >= {step} in {ckpt} in time; output of a process that "
                         f"ended: {ended[:1]}")


def _workers(workdir, data_dir, total_steps, port=None, overrides=(), env=None):
    """The two processes of tests/multihost_worker.py; `overrides`: its KEY=VALUE arguments."""
    port = port or _free_port()
    return [subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "multihost_worker.py"),
                              workdir, data_dir, str(i), str(port), str(total_steps),
                              *overrides],
                             cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for i in range(2)]


@pytest.mark.slow
def test_two_processes_sigterm_to_one_saves_both_at_one_step_and_resume_exactly(demo_dataset,
                                                                                tmp_path):
    total = 30
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    os.makedirs(straight)
    os.makedirs(split)
    for p in _workers(straight, demo_dataset[1], total):
        out = p.communicate(timeout=400)[0]
        assert p.returncode == 0, out[-3000:]

    procs = _workers(split, demo_dataset[1], total)
    _wait_for_checkpoint(split, 2, procs)
    procs[1].send_signal(signal.SIGTERM)  # one host only
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [preemption.EXIT_PREEMPTED] * 2, "\n".join(
        f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outs))
    stopped = [json.loads((tmp_path / "split" / f"preempted_{i}.json").read_text())["step"]
               for i in range(2)]
    assert stopped[0] == stopped[1] < total
    assert checkpoints.manager(split).latest_step() == stopped[0]

    for p in _workers(split, demo_dataset[1], total):
        out = p.communicate(timeout=400)[0]
        assert p.returncode == 0, out[-3000:]
    a, b = (np.load(os.path.join(d, "params_0.npz")) for d in (straight, split))
    assert a.files == b.files and len(a.files) > 10
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_two_processes_sigterm_before_the_first_step_of_a_resumed_run_stops_both(
        demo_dataset, tmp_path):
    """A run resumed from step 2 whose process 1 gets SIGTERM before its first step (as it
    starts to restore the checkpoint): both processes agree to stop at step 3 and save it.
    JAX's sync protocol agrees on the step after the last one the processes gave it, which
    the resumed run gives before it opens the split and restores."""
    workdir = str(tmp_path / "w")
    os.makedirs(workdir)
    for p in _workers(workdir, demo_dataset[1], 2):
        out = p.communicate(timeout=400)[0]
        assert p.returncode == 0, out[-3000:]
    procs = _workers(workdir, demo_dataset[1], 12,
                     env={**os.environ, "HGMT_TEST_SIGTERM_AT_START": "1"})
    outs = [p.communicate(timeout=400)[0] for p in procs]
    assert [p.returncode for p in procs] == [preemption.EXIT_PREEMPTED] * 2, "\n".join(
        f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outs))
    stopped = [json.loads((tmp_path / "w" / f"preempted_{i}.json").read_text())["step"]
               for i in range(2)]
    assert stopped == [3, 3]
    assert checkpoints.manager(workdir).latest_step() == 3


@pytest.mark.slow
def test_two_processes_sigterm_to_one_during_the_evaluation_after_training_stops_both(
        demo_dataset, tmp_path):
    """Process 1 gets SIGTERM while the test evaluation after the last step (3) reads its
    second batch of 3: both processes stop at one check before its last batch, exit 75 with
    step 3 saved and no eval_test.json; the rerun resumes at step 3 and writes it."""
    workdir = str(tmp_path)
    overrides = ("evals.test.at_end=True", "evals.test.frames='all'",
                 "evals.test.max_examples=0", "eval_batch_size=4")
    env = {**os.environ, "HGMT_TEST_SIGTERM_IN_EVALUATION": "1"}
    procs = _workers(workdir, demo_dataset[1], 3, overrides=overrides, env=env)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    report = "\n".join(f"--- process {i} ({p.returncode}):\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
    assert [p.returncode for p in procs] == [preemption.EXIT_PREEMPTED] * 2, report
    assert [json.loads((tmp_path / f"preempted_{i}.json").read_text())["step"]
            for i in range(2)] == [3, 3], report
    assert checkpoints.manager(workdir).latest_step() == 3
    assert not os.path.exists(workdirs.eval_file(workdir, "test")), report

    procs = _workers(workdir, demo_dataset[1], 3, overrides=overrides)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    report = "\n".join(f"--- process {i} ({p.returncode}):\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
    assert [p.returncode for p in procs] == [0, 0], report
    with open(workdirs.eval_file(workdir, "test")) as f:
        report = json.load(f)
    assert (report["step"], report["num_examples"]) == (3, 12)


@pytest.mark.slow
def test_a_checkpoint_one_process_cannot_read_is_skipped_by_both(demo_dataset, tmp_path):
    """Two processes save steps 2 and 4; process 1's data position file of step 4 is then
    damaged. The rerun: process 1 cannot read step 4, process 0 can; both resume from step 2,
    step 4 is moved aside (once, by process 0), and they end with the parameters of an
    uninterrupted run, bit for bit."""
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    for workdir, total in ((straight, 6), (split, 4)):
        os.makedirs(workdir)
        for p in _workers(workdir, demo_dataset[1], total):
            out = p.communicate(timeout=400)[0]
            assert p.returncode == 0, out[-3000:]
    ckpt = workdirs.checkpoint_dir(split)
    with open(os.path.join(ckpt, "4", "data", "process_1-of-2.json"), "w") as f:
        f.write('{"damaged": ')

    procs = _workers(split, demo_dataset[1], 6)
    outs = [p.communicate(timeout=400)[0] for p in procs]
    report = "\n".join(f"--- process {i} ({p.returncode}):\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
    assert [p.returncode for p in procs] == [0, 0], report
    assert f"checkpoint {ckpt}/4 does not read, trying the previous one: " in outs[1], report
    assert f"checkpoint {ckpt}/4 reads here but not on process(es) 1" in outs[0], report
    for out in outs:
        assert (f"resuming from step 2; the unreadable checkpoint(s) [4] were moved to "
                f"{workdirs.unreadable_dir(split)}") in out, report
    assert [n.split("-")[0] for n in os.listdir(workdirs.unreadable_dir(split))] == ["4"]
    assert checkpoints.manager(split).all_steps() == [2, 4, 6]
    a, b = (np.load(os.path.join(d, "params_0.npz")) for d in (straight, split))
    assert a.files == b.files and len(a.files) > 10
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.slow
def test_kill_9_of_one_process_stops_the_other_naming_it(demo_dataset, tmp_path):
    """The survivor ends with hgmt's one line naming the lost process and the step, and exit
    status 69, whichever notices first (the failed collective or the watchdog); never with the
    coordination service's fatal heartbeat abort (10 s heartbeat timeout here: the watchdog's;
    the service's is 30 s)."""
    procs = _workers(str(tmp_path), demo_dataset[1], total_steps=100_000)
    _wait_for_checkpoint(str(tmp_path), 2, procs, timeout=600)  # compiling on a loaded host
    procs[1].kill()
    t0 = time.time()
    out = procs[0].communicate(timeout=150)[0]
    elapsed = time.time() - t0
    print(f"the survivor exited {elapsed:.1f} s after the kill (heartbeat timeout 10 s); "
          f"{'main thread' if '(test) PeerLost raised by the main thread' in out else 'watchdog'}")
    assert procs[0].returncode == peers.EXIT_PEER_LOST and elapsed < 60, (elapsed,
                                                                          out[-3000:])
    lines = re.findall(r"PeerLost: lost process\(es\) 1 of 2 at step (\d+): this is "
                       r"process 0, stopping", out)
    assert len(lines) == 1 and int(lines[0]) >= 2, out[-3000:]
    assert "Terminating process because" not in out and "unhealthy" not in out, out[-3000:]
    procs[1].wait()


@pytest.mark.parametrize("faulty", [1, 0])
def test_a_fault_on_one_host_stops_every_process_naming_it(faulty):
    """One process raises DiskFull inside the watched block while the other waits for it in a
    collective: the faulty process exits 1 with its one error line, the other exits 1 with one
    line naming the faulty process, the step and its fault, neither by the coordination
    service's abort (30 s heartbeat timeout): the other's line names the fault, which only
    the faulty process's report carries. Process 1 faulty: the other's
    collective fails and its main thread raises PeerFailed; process 0 (the coordinator) faulty:
    it waits until the other's watchdog has read the fault and stopped it."""
    port, other = _free_port(), 1 - faulty
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "peer_fault_worker.py"),
                               str(i), str(port), str(faulty)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    report = "\n".join(f"--- process {i} ({p.returncode}):\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
    assert [p.returncode for p in procs] == [1, 1], report  # a fault that needs you
    fault = ("DiskFull: [Errno 28] cannot write the file to /w/x.json: the disk or quota is "
             "full (test)")
    assert outs[faulty].count(f"error: {fault}") == 1, report
    assert re.findall(r"PeerFailed: process (\d) failed at step 7: (.*): this is process (\d), "
                      r"stopping", outs[other]) == [(str(faulty), fault, str(other))], report
    assert "PeerFailed" not in outs[faulty], report
    if faulty == 1:  # its collective failed: the main thread, not the watchdog, stopped it
        assert "(test) PeerFailed raised by the main thread" in outs[other], report
    for out in outs:
        assert "Terminating process because" not in out and "Check failure" not in out, report


class KeyValueStore:
    """In place of JAX's coordination service client: its key-value store, in memory."""

    def __init__(self):
        self.values: dict[str, str] = {}

    def key_value_set(self, key: str, value: str, allow_overwrite: bool = False) -> None:
        self.values[key] = value

    def key_value_dir_get(self, prefix: str) -> list[tuple[str, str]]:
        return [(k, v) for k, v in self.values.items() if k.startswith(prefix)]


def test_a_failed_peer_is_named_with_its_own_step(monkeypatch):
    """Process 1 fails at its step 7 while process 0 has gone on to step 9 (its steps are
    dispatched ahead): process 1 publishes its step with its fault, and process 0's
    PeerFailed names step 7, not its own 9; a value that names no step gives the observer's.
    Two PeerWatch threads of one process, as processes 1 and 0 of 2, on a stand-in key-value
    store."""
    store = KeyValueStore()
    monkeypatch.setattr(cluster, "coordination_client", lambda: store)
    monkeypatch.setattr(peers, "_prefix", peers._prefix)
    monkeypatch.setattr(peers, "_left_prefix", None)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    fault = "DiskFull: [Errno 28] cannot write the file to /w/x.json: the disk or quota is full"
    with pytest.raises(disk_space.DiskFull):
        with peers.PeerWatch(interval_s=0.05) as failing:
            failing.step = 7
            raise disk_space.DiskFull(errno.ENOSPC, fault.split("] ", 1)[1])
    published = store.values[failing._prefix + "1"]
    assert published == f"failed: at step 7: {fault}"

    monkeypatch.setattr(jax, "process_index", lambda: 0)
    observer = peers.PeerWatch(interval_s=0.05)
    observer.step = 9
    observer.taken.set()  # the main thread takes the verdict: the watchdog must not exit
    store.values[observer._prefix + "1"] = published
    with observer:
        assert observer.found.wait(10)
    assert isinstance(observer.error, peers.PeerFailed)
    assert str(observer.error).startswith(f"process 1 failed at step 7: {fault}: this is "
                                          f"process 0, stopping"), observer.error
    assert peers._read_failed(f"failed: {fault}", "at step 9") == ("at step 9", fault)
    assert peers._read_failed(f"failed: before the first step: {fault}", "at step 9") == (
        "before the first step", fault)


@pytest.mark.slow
def test_sigterm_to_the_command_line_exits_75_and_rerun_finishes(demo_dataset, tmp_path):
    workdir = str(tmp_path / "w")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=100000, checkpoint_every=2)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_for_checkpoint(workdir, 2, [proc])
    proc.send_signal(signal.SIGTERM)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
    step = checkpoints.manager(workdir).latest_step()
    assert f"saved a checkpoint at step {step}" in out
    assert not os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))
    cmd[cmd.index("--config.total_steps=100000")] = f"--config.total_steps={step + 2}"
    cmd.append("--resume_with_changed_config")
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"at step {step}" in rerun.stderr


def _trainer_in_a_terminal(workdir: str, data_dir: str) -> subprocess.Popen:
    """`python -m hgmt.main` training the tiny model without end into `workdir`, its output
    piped, SIGINT handled as an interactive shell leaves it (a test runner's worker may
    ignore it), once its checkpoint of step 2 is saved."""
    cmd, env = main_command(workdir, data_dir, total_steps=100000, checkpoint_every=2)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for_checkpoint(workdir, 2, [proc])
    return proc


@pytest.mark.slow
def test_ctrl_c_stops_the_command_in_one_line_with_status_130(demo_dataset, tmp_path):
    """SIGINT (Ctrl-C) during training: the trainer stops at once, its last line saying what
    was not saved and how to stop with a save (SIGTERM), status 130 as a shell reports it
    (a checkpoint write it interrupts may log its own error before); the lock is released
    and the newest checkpoint stays readable."""
    workdir = str(tmp_path / "w")
    proc = _trainer_in_a_terminal(workdir, demo_dataset[1])
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert out.rstrip().splitlines()[-1] == (
        f"interrupted (Ctrl-C): stopped at once, without saving; rerun the same command to "
        f"resume from the workdir's newest checkpoint. To stop with a checkpoint of the step "
        f"being trained, send SIGTERM instead (kill {proc.pid}): it saves and exits 75")
    assert not os.path.exists(os.path.join(workdir, workdirs.LOCK_FILE))
    assert checkpoints.manager(workdir).latest_step() >= 2


@pytest.mark.slow
def test_a_second_ctrl_c_during_the_first_ones_cleanup_still_ends_in_one_line(demo_dataset,
                                                                             tmp_path):
    """SIGINT during training, then again 0.05 s later, while the first one's cleanup (closing
    the checkpoint manager, the loader, releasing the lock) runs: still the one line, status
    130, no traceback. Before, of 3 tries at 0.2 s one printed JAX's atexit traceback
    ('Exception ignored in atexit callback', a KeyboardInterrupt in its clean_up) after the
    line and one ended by SIGINT (status -2); at 0.05 s orbax logged its interrupted wait's
    traceback before it."""
    workdir = str(tmp_path / "w")
    proc = _trainer_in_a_terminal(workdir, demo_dataset[1])
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    assert proc.poll() is None, "the trainer ended before the second Ctrl-C: nothing tested"
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out and "Exception ignored" not in out, out[-3000:]
    assert out.rstrip().splitlines()[-1].startswith("interrupted (Ctrl-C): stopped at once, "
                                                    "without saving"), out[-3000:]
    assert checkpoints.manager(workdir).latest_step() >= 2


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_a_signal_to_the_process_group_with_loader_workers_exits_75(demo_dataset, tmp_path,
                                                                    signum):
    """A scheduler's signal to every process of the job (`timeout`, Slurm's step signal)
    during training with 2 grain worker processes: the trainer saves the step after it and
    exits 75, and the loader's processes ignore it: no loader failure (a batch asked of a
    dead worker), no shared memory a killed worker leaked, no resource tracker killed by
    SIGUSR1 (its successor then complains of every segment it was not told of)."""
    workdir = str(tmp_path / "w")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=100000, checkpoint_every=2)
    cmd.append("--config.worker_count=2")
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        _wait_for_checkpoint(workdir, 2, [proc])
        os.killpg(proc.pid, signum)
        out = proc.communicate(timeout=120)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == preemption.EXIT_PREEMPTED, out[-3000:]
    step = checkpoints.manager(workdir).latest_step()
    assert step > 2 and f"saved a checkpoint at step {step} " in out, out[-3000:]
    assert f"{signal.Signals(signum).name} received" in out
    for broken in ("the loader failed", "Worker process was terminated", "resource_tracker"):
        assert broken not in out, out[-3000:]


def test_a_demo_dataset_process_0_cannot_prepare_stops_both_processes(tmp_path):
    """Two `hgmt.main` processes on configs/demo.py whose demo folder holds stray clips (no
    completion record: process 0's demo build refuses them): process 0 stops with that
    error, process 1 with one naming process 0 (which it learns only from process 0's word,
    not from JAX's barrier timeout), both with status 1."""
    root = tmp_path / "demo"
    os.makedirs(root / "surreal" / "cmu" / "test")  # clips hgmt did not generate
    (root / "surreal" / "cmu" / "test" / "stray.txt").write_text("x")
    port = _free_port()
    env = {**os.environ, "XLA_FLAGS": xla_flags(1)}
    procs = [subprocess.Popen(
        [sys.executable, "-m", "hgmt.main", "--config=configs/demo.py",
         f"--workdir={tmp_path / 'run'}", f"--config.data_dir={root / 'tfds'}",
         f"--config.demo.surreal_root={root / 'surreal'}",
         f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}",
         "--heartbeat_timeout=10"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [1, 1], "\n".join(o[-2000:] for o in outs)
    assert "holds clips but" in outs[0] and "no demo_generated.json" in outs[0]
    assert ("process 0 failed before the first step: it could not prepare the demo dataset"
            in outs[1])


def test_a_workdir_lock_process_0_cannot_take_stops_both_processes(demo_dataset, tmp_path):
    """Two `hgmt.main` processes whose workdir lies under a regular file: process 0's attempt
    to take the lock fails (`WorkdirUnusable`, an OSError, as on a read-only or full
    filesystem), which it tells the other before raising it. Process 0 stops with that error
    in one line, process 1 with one
    line naming process 0 and the lock, both with status 1, neither by the coordination
    service's abort. Process 1 shows no progress line (its INFO lines repeated process 0's,
    twice in a job's one log)."""
    (tmp_path / "file").write_text("x")
    workdir = str(tmp_path / "file" / "w")
    outs, report = _two_mains_that_stop(workdir, demo_dataset[1])
    assert (f"error: WorkdirUnusable: the workdir {workdir} cannot be made a folder (Not a "
            f"directory); give a folder this user can write (made if missing)") in outs[0], report
    # The job's progress lines are process 0's; the others show warnings and errors only.
    assert "process 0/2, devices" in outs[0] and "devices" not in outs[1], report
    assert (f"PeerFailed: process 0 failed before the first step: it could not take the "
            f"workdir lock {workdirs.lock_file(workdir)} (process 0's log names the error): "
            f"this is process 1, stopping") in outs[1], report


def _two_mains_that_stop(workdir: str, data_dir: str, extra: tuple[list[str], list[str]] = (
        [], [])) -> tuple[list[str], str]:
    """Runs two `hgmt.main` processes of one job on `workdir` and `data_dir` (and each its
    `extra` arguments), which must both stop with status 1 (within communicate's 2 minutes),
    neither by the coordination service's abort ->
    (their outputs, a report of both for assertions)."""
    port = _free_port()
    cmd, env = main_command(workdir, data_dir, total_steps=2, checkpoint_every=2)
    env["XLA_FLAGS"] = xla_flags(1)
    procs = [subprocess.Popen(
        [*cmd, f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}", "--heartbeat_timeout=10", *extra[i]],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    report = "\n".join(f"--- process {i} ({p.returncode}):\n{out[-3000:]}"
                       for i, (p, out) in enumerate(zip(procs, outs, strict=True)))
    assert [p.returncode for p in procs] == [1, 1], report
    for out in outs:
        assert "Terminating process because" not in out and "Check failure" not in out, report
    return outs, report


def test_processes_started_with_other_settings_stop_together_naming_them(tmp_path):
    """Two `hgmt.main` processes of one job given another learning rate, step count and
    process count (a typo in one host's command): they trained weights that drifted apart,
    the checkpoint not the model evaluated, or, with another step count, ended in gloo's
    collective mismatch and JAX's abort (status 134); another --num_processes went unseen
    (JAX ran a job of process 0's count). Both stop before anything is read or written,
    with the same line naming each field and both values; where each host finds the data
    may differ."""
    workdir = tmp_path / "run"
    outs, report = _two_mains_that_stop(str(workdir), str(tmp_path / "data"), (
        [], ["--config.optimizer.learning_rate=0.02", "--config.total_steps=3",
             f"--config.data_dir={tmp_path / 'elsewhere'}", "--num_processes=3"]))
    for out in outs:
        line = next(x for x in out.splitlines() if x.startswith("error: "))
        assert re.fullmatch(
            r"error: ValueError: the processes of this job were started with other settings: "
            r"process 1: config\.optimizer\.learning_rate 0\.02 \(process 0: [0-9.e-]+\); "
            r"process 1: config\.total_steps 3 \(process 0: 2\); "
            r"process 1: num_processes 3 \(process 0: 2\)\. Start every process with "
            r"the same --config, config overrides, --workdir and flags \(only "
            r"config\.data_dir, config\.demo\.surreal_root may differ between hosts\)",
            line), report
    assert not workdir.exists()


def test_a_process_whose_job_never_connects_stops_in_one_line(tmp_path):
    """A multi-host job whose processes cannot all connect: process 0 started alone, or a
    process given a coordinator address nobody listens on. Each waited JAX's 300 s in
    silence and aborted in C++ blaming a dead task (status 134); now each says what it waits
    for (at half the timeout here, 10 s by default), and after --connect_timeout stops with
    one line saying what to check."""
    cmd, env = main_command(str(tmp_path / "run"), str(tmp_path / "data"), total_steps=2,
                            checkpoint_every=2)
    env["XLA_FLAGS"] = xla_flags(1)
    alone, nobody = _free_port(), _free_port()
    procs = [subprocess.Popen(
        [*cmd, f"--coordinator_address=localhost:{port}", "--num_processes=2",
         f"--process_id={i}", "--connect_timeout=5"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i, port in ((0, alone), (1, nobody))]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    report = "\n".join(f"--- {p.returncode}:\n{out[-3000:]}"
                       for p, out in zip(procs, outs, strict=True))
    assert [p.returncode for p in procs] == [1, 1], report
    for i, (port, out) in enumerate(((alone, outs[0]), (nobody, outs[1]))):
        assert (f"process {i} of 2: waiting for the job's processes to connect to the "
                f"coordinator localhost:{port} (up to 5 s, --connect_timeout)") in out, report
        assert (f"error: NotConnected: process {i} of 2 waited 5 s (--connect_timeout) for the "
                f"job's processes to connect to the coordinator localhost:{port}. Check that "
                f"every process was started") in out, report
        assert "Terminating process because" not in out, report
    assert not (tmp_path / "run").exists()
    # Where the cluster names the coordinator (--distributed), the line names what to check
    # there (`test_the_not_connected_line_names_the_cluster_jax_reads_alone`), not flags the
    # user never gave; here, where no cluster is, in words for any.
    done = subprocess.run([sys.executable, "-c", "from hgmt.training import cluster; "
                           "cluster._not_connected('this process', None, 5)"],
                          cwd=REPO, env=_no_cluster(os.environ), capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr == (
        "error: NotConnected: this process waited 5 s (--connect_timeout) for the job's "
        "processes to connect to the coordinator the cluster names. Check that every process "
        "of the job started (as many as the cluster runs) and that process 0's host is "
        "reachable from the others; then start them again together\n"), done.stderr


def _no_cluster(environ):
    """`environ` without the variables by which JAX finds a cluster (Slurm, Open MPI, TPUs,
    Kubernetes) or a coordinator."""
    return {k: v for k, v in environ.items() if not k.startswith(
        ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "KUBERNETES_", "JAX_COORDINATOR_"))}


def test_a_job_that_never_connects_names_what_gave_each_setting():
    """The NotConnected line's check follows what gave the number of processes and this
    process's index: the flags where given; else the cluster JAX read them from (under Slurm,
    the address given by JAX_COORDINATOR_ADDRESS or --coordinator_address, neither flag:
    Slurm's task count and task 0), not the flags the user never gave."""
    from hgmt.training import cluster

    def check(**settings: object) -> str:
        line = cluster._not_connected_line("this process", "h:1", 5, **settings)
        head = ("error: NotConnected: this process waited 5 s (--connect_timeout) for the "
                "job's processes to connect to the coordinator h:1. ")
        assert line.startswith(head) and line.endswith("; then start them again together")
        assert "\n" not in line
        return line[len(head):-len("; then start them again together")]

    assert check() == check(cluster="slurm") == (
        "Check that every process was started, with the same --coordinator_address (process "
        "0's host:port, reachable from every host) and --num_processes, and each with its own "
        "--process_id (0 to N-1, once each)")
    assert check(source="JAX_COORDINATOR_ADDRESS", count_given=False, index_given=False,
                 cluster="slurm") == (
        "Check that every task of the job started (SLURM_NTASKS of them, one per node as "
        "launch/slurm.sbatch runs them), with the same JAX_COORDINATOR_ADDRESS (the "
        "host:port of Slurm's task 0, SLURM_PROCID=0, reachable from every host)")
    assert check(count_given=False, index_given=False, cluster="slurm") == (
        "Check that every task of the job started (SLURM_NTASKS of them, one per node as "
        "launch/slurm.sbatch runs them), with the same --coordinator_address (the host:port "
        "of Slurm's task 0, SLURM_PROCID=0, reachable from every host)")
    # One flag given, the other Slurm's: each named by what gave it.
    assert check(index_given=False, cluster="slurm") == (
        "Check that every process was started, with the same --coordinator_address (the "
        "host:port of Slurm's task 0, SLURM_PROCID=0, reachable from every host) and "
        "--num_processes")
    assert check(count_given=False, cluster="slurm") == (
        "Check that every task of the job started (SLURM_NTASKS of them, one per node as "
        "launch/slurm.sbatch runs them), with the same --coordinator_address (process 0's "
        "host:port, reachable from every host), and each with its own --process_id (0 to "
        "N-1, once each)")
    # Another cluster JAX reads: named as that cluster; one hgmt has no name for, as a cluster.
    assert check(source="JAX_COORDINATOR_ADDRESS", count_given=False, index_given=False,
                 cluster="open_mpi") == (
        "Check that every rank of mpirun's job started (OMPI_COMM_WORLD_SIZE of them), with "
        "the same JAX_COORDINATOR_ADDRESS (the host:port of rank 0, OMPI_COMM_WORLD_RANK=0, "
        "reachable from every host)")
    assert check(source="JAX_COORDINATOR_ADDRESS", count_given=False, index_given=False) == (
        "Check that every process of the job started (as many as the cluster runs), with the "
        "same JAX_COORDINATOR_ADDRESS (the host:port of the cluster's process 0, reachable "
        "from every host)")


def _jax_refuses_a_missing_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """`jax.distributed.initialize` stood in for by JAX's check of its arguments, which JAX
    makes only before its backend starts (the suite's earlier tests start it, and JAX then
    raises a RuntimeError first)."""
    def initialize(**settings: object) -> None:
        raise ValueError("Number of processes must be defined.")

    monkeypatch.setattr(cluster.jax.distributed, "initialize", initialize)


def test_a_job_setting_no_cluster_gives_is_named_by_its_flag(monkeypatch):
    """Outside any cluster JAX reads, the settings not given are named by their flags, with
    what to give every process; JAX's own ValueError named its argument
    (`Number of processes must be defined.`) and hgmt's line listed all three flags,
    whichever were given."""
    _jax_refuses_a_missing_setting(monkeypatch)
    for name in set(os.environ) - set(_no_cluster(os.environ)):
        monkeypatch.delenv(name)
    tail = (" not given, and no cluster that JAX reads (Slurm, Open MPI's mpirun, a Cloud TPU "
            "VM, TPUs on GKE, Kubernetes) runs this process to give ")
    with pytest.raises(ValueError) as raised:
        cluster.initialize("localhost:1", None, None)
    assert str(raised.value) == (
        f"--num_processes and --process_id{tail}them; give every process of the job the same "
        f"--num_processes=N and each its own --process_id (0 to N-1)")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1")
    with pytest.raises(ValueError) as raised:
        cluster.initialize(None, None, 1)
    assert str(raised.value) == (
        f"--num_processes{tail}it; give every process of the job the same --num_processes=N")
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS")
    with pytest.raises(ValueError) as raised:
        cluster.initialize(None, 2, 1)
    assert str(raised.value) == (
        f"the coordinator's address{tail}it; give every process of the job the same "
        f"--coordinator_address=host:port of process 0 (or JAX_COORDINATOR_ADDRESS)")
    assert cluster.coordination_client() is None


# Each cluster JAX reads (`coordinator.jax_cluster`), as JAX finds it here, and what the
# NotConnected line checks there when the cluster names the coordinator.
_CLUSTERS = {
    "slurm": ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[001-002]",
               "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0"},
              "every task of the job started (SLURM_NTASKS of them, one per node as "
              "launch/slurm.sbatch runs them) and that the host of Slurm's task 0 (the first "
              "node of SLURM_STEP_NODELIST) is reachable from the others"),
    "open_mpi": ({"OMPI_MCA_orte_hnp_uri": "1531576320.0;tcp://10.96.0.1:34911"},
                 "every rank of mpirun's job started (OMPI_COMM_WORLD_SIZE of them) and that "
                 "mpirun ran on rank 0's host (JAX takes the coordinator's host from "
                 "mpirun's, OMPI_MCA_orte_hnp_uri), reachable from the others"),
    "tpu_vm": ({}, "every worker of the TPU VM started (`launch/tpu_vm.sh train` starts one "
                   "on each) and that worker 0's host is reachable from the others"),
    "gke_tpu": ({"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "w-0,w-1",
                 "TPU_WORKER_ID": "1"},
                "every TPU worker of the GKE job started (one per host of "
                "TPU_WORKER_HOSTNAMES) and that worker 0's host (the first of "
                "TPU_WORKER_HOSTNAMES, or MEGASCALE_COORDINATOR_ADDRESS) is reachable from "
                "the others"),
    "kubernetes": ({"KUBERNETES_SERVICE_HOST": "10.0.0.1"},
                   "every pod of the indexed Job started (its parallelism) and that pod 0's "
                   "host is reachable from the others"),
}


@pytest.mark.parametrize("kind", sorted(_CLUSTERS))
def test_the_not_connected_line_names_the_cluster_jax_reads_alone(monkeypatch, kind):
    """A job whose cluster names the coordinator (--distributed, no address given) and
    never connects: the line says what to check in the cluster JAX reads, and names no other
    (it named Slurm and TPU VMs together, whichever ran the job). The TPU VM's metadata
    server and Kubernetes' API, which JAX asks, are stood in for."""
    from jax._src.clusters import cloud_tpu_cluster, k8s_cluster

    for name in set(os.environ) - set(_no_cluster(os.environ)):
        monkeypatch.delenv(name)
    environ, check = _CLUSTERS[kind]
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    if kind in ("tpu_vm", "gke_tpu"):
        monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
        monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", lambda key: ("1", 200))
    if kind == "kubernetes":
        monkeypatch.setattr(k8s_cluster.K8sCluster, "is_env_present", classmethod(
            lambda cls: "KUBERNETES_SERVICE_HOST" in os.environ))
    ended = []

    def end_at_once(line: str, status: int) -> None:
        ended.append((line, status))
        raise SystemExit(status)

    monkeypatch.setattr(cluster.stops, "end_at_once", end_at_once)
    with pytest.raises(SystemExit):
        cluster._not_connected("this process", None, 5, "JAX_COORDINATOR_ADDRESS", False,
                               False)
    assert ended == [(
        "error: NotConnected: this process waited 5 s (--connect_timeout) for the job's "
        "processes to connect to the coordinator the cluster names. Check that "
        f"{check}; then start them again together", 1)]
    assert coordinator.jax_cluster() == kind
    assert coordinator.jax_reads_slurm() == (kind == "slurm")
    # Slurm's tasks write to one log: the lines say which task waited, as Slurm numbers it.
    assert cluster._who(None, None) == ("Slurm's task 1 of 2" if kind == "slurm" else
                                        "this process")
    assert cluster._who(2, 0) == "process 0 of 2"


def test_a_cluster_hgmt_has_no_name_for_is_not_called_absent(monkeypatch):
    """A cluster JAX reads that hgmt has no name for (a class a newer JAX adds): JAX's own
    error of a setting it could not read stays JAX's, not 'no cluster that JAX reads runs
    this process', and the NotConnected line is worded for any cluster."""
    from jax._src import clusters

    class NewCluster:
        opt_in_only_method = False

        @classmethod
        def is_env_present(cls) -> bool:
            return True

    for name in set(os.environ) - set(_no_cluster(os.environ)):
        monkeypatch.delenv(name)
    monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", [NewCluster])
    assert coordinator.jax_cluster() == "NewCluster" and not coordinator.jax_reads_slurm()

    _jax_refuses_a_missing_setting(monkeypatch)
    with pytest.raises(ValueError) as raised:
        cluster.initialize("localhost:1", None, None)
    assert str(raised.value) == (
        "jax.distributed.initialize: Number of processes must be defined.")
    ended = []

    def end_at_once(line: str, status: int) -> None:
        ended.append(line)
        raise SystemExit(status)

    monkeypatch.setattr(cluster.stops, "end_at_once", end_at_once)
    with pytest.raises(SystemExit):
        cluster._not_connected("this process", None, 5, "JAX_COORDINATOR_ADDRESS", False,
                               False)
    assert ended == [
        "error: NotConnected: this process waited 5 s (--connect_timeout) for the job's "
        "processes to connect to the coordinator the cluster names. Check that every process "
        "of the job started (as many as the cluster runs) and that process 0's host is "
        "reachable from the others; then start them again together"]


@pytest.mark.slow  # the not-connected line's Slurm wording, tested as a pure function by default
def test_a_slurm_task_given_the_coordinator_that_never_connects_names_slurms_tasks(tmp_path):
    """Task 1 of a two-task Slurm job run with --distributed and JAX_COORDINATOR_ADDRESS,
    task 0 never started: its lines name it as Slurm's task 1 of 2 (the tasks share one log),
    and its NotConnected line Slurm's tasks and task 0, not the --num_processes and
    --process_id it was not given."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR_"))}
    env.update({"JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "SLURM_JOB_ID": "7",
                "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_NTASKS": "2",
                "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
                "JAX_COORDINATOR_ADDRESS": f"localhost:{_free_port()}"})
    run = subprocess.run(
        [sys.executable, "-m", "hgmt.main", f"--config={REPO}/configs/demo.py",
         f"--workdir={tmp_path / 'w'}", "--distributed", "--connect_timeout=5",
         "--compilation_cache="],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-3000:]
    assert (f"Slurm's task 1 of 2: waiting for the job's processes to connect to the "
            f"coordinator {env['JAX_COORDINATOR_ADDRESS']}") in run.stderr, run.stderr[-3000:]
    line = run.stderr.splitlines()[-1]
    assert line == (
        f"error: NotConnected: Slurm's task 1 of 2 waited 5 s (--connect_timeout) for the job's "
        f"processes to connect to the coordinator {env['JAX_COORDINATOR_ADDRESS']}. Check "
        f"that every task of the job started (SLURM_NTASKS of them, one per node as "
        f"launch/slurm.sbatch runs them), with the same JAX_COORDINATOR_ADDRESS (the host:port "
        f"of Slurm's task 0, SLURM_PROCID=0, reachable from every host); then start them "
        f"again together"), run.stderr[-3000:]
    assert not (tmp_path / "w").exists()


def test_the_not_connected_line_reads_slurm_as_jax_does(monkeypatch):
    """`_not_connected` words the line for Slurm where JAX reads Slurm: a Slurm job's
    environment, and not under Open MPI's mpirun (which JAX reads first)."""
    for name in set(os.environ) - set(_no_cluster(os.environ)):
        monkeypatch.delenv(name)
    assert not coordinator.jax_reads_slurm() and coordinator.jax_cluster() is None
    for name, value in _CLUSTERS["slurm"][0].items():
        monkeypatch.setenv(name, value)
    assert coordinator.jax_reads_slurm() and coordinator.jax_cluster() == "slurm"
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "x")
    assert not coordinator.jax_reads_slurm() and coordinator.jax_cluster() == "open_mpi"


@pytest.mark.slow
def test_a_dataset_process_0_finds_not_built_stops_both_processes_before_the_workdir(tmp_path):
    """Two `hgmt.main` processes of a job whose training split is not built: process 0 finds
    it before the workdir lock would create the workdir and tells the other. Process 0 stops
    with the one line naming the build command, process 1 with one naming process 0's check,
    both with status 1, and no workdir is made."""
    workdir = tmp_path / "new" / "run"
    (tmp_path / "empty").mkdir()  # a data_dir with nothing built in it (a missing one is
    # named as such: test_check.py)
    outs, report = _two_mains_that_stop(str(workdir), str(tmp_path / "empty"))
    assert "error: FileNotFoundError: dataset 'surreal/all' split 'train' is not built under " \
           "data_dir=" in outs[0], report
    assert ("PeerFailed: process 0 failed before the first step: its check that the training "
            "split is built failed (process 0's log names the error): this is process 1, "
            "stopping") in outs[1], report
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_the_watchdog_ending_process_0_releases_the_workdir_lock(tmp_path):
    """kill -9 of process 1 while process 0 holds the workdir lock and its main thread is
    stuck (a hung collective; a sleep here): process 0's watchdog ends it with status 69
    through os._exit, which skips the `finally` that releases the lock; the lock is released
    all the same, so the rerun job takes the workdir at once (not STALE_S later)."""
    workdir, port = str(tmp_path / "w"), _free_port()
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    procs = []
    for i, log in enumerate(logs):
        with open(log, "w") as out:
            procs.append(subprocess.Popen(
                [sys.executable, os.path.join(REPO, "tests", "peer_lock_worker.py"), str(i),
                 str(port), workdir], cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 120
    while not all("(test) watched" in log.read_text() for log in logs):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            "\n".join(log.read_text()[-2000:] for log in logs)
        time.sleep(0.2)
    time.sleep(2)  # each watchdog has beaten (every 0.5 s): a peer never seen is not judged
    path = workdirs.lock_file(workdir)
    with open(path) as f:
        assert json.load(f)["pid"] == procs[0].pid
    procs[1].kill()
    procs[1].wait()
    assert procs[0].wait(timeout=60) == peers.EXIT_PEER_LOST, logs[0].read_text()[-3000:]
    out = logs[0].read_text()
    assert "PeerLost: lost process(es) 1 of 2 before the first step: this is process 0" in out
    assert not os.path.exists(path), out[-3000:]
    t0 = time.monotonic()
    with workdir_lock.WorkdirLock(workdir) as lock:  # the rerun job's process 0
        assert lock.held
    assert time.monotonic() - t0 < 2


TRACKER_CHECK = """
import sys
from multiprocessing import resource_tracker

from configs import demo as demo_config
from hgmt import main

if __name__ == "__main__":
    config = demo_config.get_config()
    config.demo.surreal_root, config.data_dir = sys.argv[1] + "/surreal", sys.argv[1] + "/tfds"
    config.demo.clips_per_split, config.demo.frames = 2, 3
    main.prepare_demo_dataset(config)
    with open(f"/proc/{resource_tracker._resource_tracker._pid}/status") as f:
        print(next(line for line in f if line.startswith("SigBlk:")).split()[1])
"""


@pytest.mark.slow
def test_the_demo_generations_resource_tracker_survives_a_sigusr1_to_the_job(tmp_path):
    """Writing the demo clips in spawned processes starts multiprocessing's resource tracker
    (in a fresh process, here a subprocess): it is started with SIGUSR1 blocked, as the
    loader's would be, so Slurm's SIGUSR1 to every process of the job does not kill it (its
    successor would warn of every shared-memory segment it was not told of). Before, the
    demo generation started it first, with SIGUSR1 not blocked."""
    script = tmp_path / "tracker_check.py"
    script.write_text(TRACKER_CHECK)
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "data")], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": REPO})
    assert out.returncode == 0, out.stderr[-2000:]
    blocked = int(out.stdout.split()[-1], 16)
    assert blocked & (1 << (signal.SIGUSR1 - 1)), out.stdout


def test_a_peers_failure_cut_for_the_others_line_says_it_was_cut():
    """The first line of a failure another process names (`peers._short`) is kept whole up
    to 300 characters and ends in "..." where cut; before, a build command in it was cut
    mid-word with nothing to say so."""
    from hgmt.training import peers

    long = "the build lacks its features.json: " + "x" * 400
    said = peers._short(FileNotFoundError(long + "\nsecond line"))
    assert said == f"FileNotFoundError: {long[:297]}..." and len(said) == 319
    assert peers._short(SystemExit(f"error: ValueError: {long}")) == (
        f"ValueError: {long}"[:297] + "...")
    assert peers._short(ValueError("short")) == "ValueError: short"


def test_a_cluster_detection_that_does_not_answer_is_not_waited_for(monkeypatch):
    """The NotConnected line names the cluster JAX reads (`coordinator.jax_cluster`), whose
    detection on a Cloud TPU VM asks the metadata server, with retries: bounded by
    `wait_s`, a detection that does not answer gives None (the line worded for any cluster)
    at once, where the line waited for it."""
    import threading
    import time

    from jax._src import clusters

    release = threading.Event()

    class SilentMetadataCluster:
        opt_in_only_method = False

        @classmethod
        def is_env_present(cls) -> bool:
            release.wait(30)
            return True

    def end_at_once(line: str, status: int) -> None:
        raise SystemExit(line)

    monkeypatch.setattr(clusters.ClusterEnv, "_cluster_types", [SilentMetadataCluster])
    monkeypatch.setattr(coordinator, "DETECTION_WAIT_S", 0.3)
    monkeypatch.setattr(cluster.stops, "end_at_once", end_at_once)
    start = time.monotonic()
    try:
        assert coordinator.jax_cluster(wait_s=0.3) is None
        with pytest.raises(SystemExit) as ended:
            cluster._not_connected("process 1 of 2", None, 60)
        assert time.monotonic() - start < 5
    finally:
        release.set()
    assert str(ended.value) == cluster._not_connected_line("process 1 of 2", None, 60)
    assert coordinator.jax_cluster(wait_s=5) == "SilentMetadataCluster"


def test_on_a_tpu_vm_only_the_not_connected_line_asks_the_metadata_server(monkeypatch):
    """On a Cloud TPU VM hgmt detects the cluster once a process, for the NotConnected line at
    the connect timeout (`coordinator.jax_cluster`, which asks the metadata server): its
    checks before the connect ask nothing (Slurm's, which they read, is no TPU VM's), and
    JAX's own detection, inside `jax.distributed.initialize`, keeps no answer to reuse."""
    from jax._src.clusters import cloud_tpu_cluster

    for name in set(os.environ) - set(_no_cluster(os.environ)):
        monkeypatch.delenv(name)
    asked: list[str] = []

    def get_metadata(key: str) -> tuple[str, int]:
        asked.append(key)
        return "1", 200

    monkeypatch.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    monkeypatch.setattr(cloud_tpu_cluster, "get_metadata", get_metadata)
    at_connect: list[list[str]] = []
    monkeypatch.setattr(cluster.jax.distributed, "initialize",
                        lambda **settings: at_connect.append(list(asked)))
    cluster.initialize(None, None, None, connect_timeout_s=60)
    assert at_connect == [[]]

    def end_at_once(line: str, status: int) -> None:
        raise SystemExit(line)

    monkeypatch.setattr(cluster.stops, "end_at_once", end_at_once)
    with pytest.raises(SystemExit) as ended:
        cluster._not_connected(cluster._who(None, None), None, 60, "JAX_COORDINATOR_ADDRESS",
                               False, False)
    assert "every worker of the TPU VM started" in str(ended.value)
    assert asked == ["agent-worker-number"]
