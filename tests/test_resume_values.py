"""The numbers a resumed run relies on, from small cases worked out by hand: where the loader's
stream resumes, which checkpoint step counts as the newest and which is restored, which
evaluators run at a step and which keeps the best checkpoint, when an equal score replaces
the best, and when a rerun's total_steps or config stops it."""

from __future__ import annotations

import contextlib
import json
import os

import ml_collections
import numpy as np
import pytest

from hgmt import workdirs
from hgmt.data.prefetch import ConsumedPosition
from hgmt.training import best_checkpoint, checkpoints, eval_settings, evaluators, resume
from tests.conftest import tiny_config


class _Counting:
    """A loader iterator over the records 0, 1, 2, ...: the batch drawn at position k is
    record k (with its `damaged` field [[k]]), its state the position after it."""

    def __init__(self) -> None:
        self.position = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        k, self.position = self.position, self.position + 1
        return {"x": k, "damaged": np.array([[k]])}

    def get_state(self) -> bytes:
        return str(self.position).encode()

    def set_state(self, state: bytes) -> None:
        self.position = int(state)


def test_the_position_saved_is_after_the_batches_consumed_and_resumes_at_the_next_one():
    """Three batches (records 0, 1, 2) drawn ahead of the step, one consumed: the position
    saved is 1, after record 0, not 3, after the prefetched ones; record 0's damaged field
    goes to the account as the step consumes it, and the batch given out lacks it. A rerun set
    to that position reads record 1 first, as an uninterrupted run would after step 1; the
    same iterator set back to position 1 with a batch still pending forgets that batch: the
    next consumed position is 2 (record 1 drawn again, then consumed)."""
    met = []
    data = ConsumedPosition(_Counting(), met.append)
    assert data.get_state() == b"0"  # nothing consumed: the start
    batches = data.batches()
    drawn = [next(batches) for _ in range(3)]  # the prefetch runs 3 ahead
    assert [b["x"] for b in drawn] == [0, 1, 2] and "damaged" not in drawn[0]
    data.consumed()  # step 1 trained on record 0
    assert data.get_state() == b"1"
    assert [m.tolist() for m in met] == [[[0]]]
    data.consumed()  # step 2 on record 1
    assert data.get_state() == b"2"
    assert [m.tolist() for m in met] == [[[0]], [[1]]]

    rerun = ConsumedPosition(_Counting())
    rerun.set_state(b"1")
    assert rerun.get_state() == b"1"  # saved again before a step: the same position
    assert next(rerun.batches())["x"] == 1

    data.set_state(b"1")  # record 2 was drawn and not consumed: it is not pending any more
    assert data.get_state() == b"1"
    assert next(batches)["x"] == 1
    data.consumed()
    assert data.get_state() == b"2"


def test_a_total_steps_equal_to_the_newest_checkpoint_resumes_and_one_below_is_refused(tmp_path):
    """The newest checkpoint of step 4: total_steps 4 finishes the run (nothing left to train,
    what follows the last step runs), 3 would label step 4's weights as step 3."""
    config = ml_collections.ConfigDict({"total_steps": 4})
    resume.check_total_steps(config, str(tmp_path), 4)
    resume.check_total_steps(config, str(tmp_path), 0)
    config.total_steps = 3
    with pytest.raises(resume.CannotResume, match="config.total_steps=3 is below step 4"):
        resume.check_total_steps(config, str(tmp_path), 4)


def test_the_newest_checkpoint_is_the_highest_step_by_number(tmp_path):
    """Folders 2, 10 and 9 (and an unfinished write's temporary folder): the steps are
    [2, 9, 10] by number, not '10' < '2' < '9' by name, and the newest is 10; none is 0."""
    folder = tmp_path / "checkpoints"
    assert checkpoints.newest_step_on_disk(str(tmp_path)) == 0
    for name in ("2", "10", "9", "11.orbax-checkpoint-tmp-1"):
        (folder / name).mkdir(parents=True)
    assert checkpoints.steps_on_disk(str(tmp_path)) == [2, 9, 10]
    assert checkpoints.newest_step_on_disk(str(tmp_path)) == 10


def test_the_keeper_is_the_first_evaluator_with_a_best_metric_that_runs_during_training():
    """An evaluator that runs only after training (every 0) keeps nothing, even with a
    best_metric: nothing is left to choose from then; the next one with both keeps it."""
    after = {"best_metric": "loss/total", "every": 0}
    during = {"best_metric": "loss/total", "every": 2}
    assert eval_settings.keeper({"a": after, "b": {"best_metric": "", "every": 2}}) is None
    assert eval_settings.keeper({"a": after, "b": during, "c": dict(during)}) == "b"


def test_the_evaluators_due_at_the_last_step_leave_out_those_that_run_after_it(tmp_path):
    """total_steps 6; validation every 2, test every 3 and also after training: test runs at
    step 3, not at 6, where it runs once after the last step; validation at 2, 4 and 6. Every
    5 steps, test runs at step 5, the step before the last."""
    config = tiny_config(str(tmp_path), tasks="pose2d", total_steps=6, **{
        "evals.validation.every": 2, "evals.test.every": 3, "evals.test.at_end": True})
    with contextlib.closing(evaluators.Evaluators(config, str(tmp_path / "run"),
                                                  {"pose2d": 1.0})) as evals:
        assert [evals.due(step) for step in range(7)] == [
            [], [], ["validation"], ["test"], ["validation"], [], ["validation"]]
    config.evals.test.every = 5  # due at step 5, the step before the last: it runs there
    with contextlib.closing(evaluators.Evaluators(config, str(tmp_path / "run"),
                                                  {"pose2d": 1.0})) as evals:
        assert [evals.due(step) for step in (5, 6)] == [["test"], ["validation"]]


@pytest.mark.parametrize("metric, scores, best", [
    # lower is better: 2.0 at step 2, the same 2.0 at step 4 does not replace it, 1.5 does
    ("loss/total", (2.0, 2.0, 1.5), (6, 1.5)),
    ("loss/total", (2.0, 2.0, 3.0), (2, 2.0)),
    # higher is better: the same 0.5 at step 4 does not replace step 2's, 0.75 does
    ("pose2d/pckh@0.5", (0.5, 0.5, 0.75), (6, 0.75)),
    ("pose2d/pckh@0.5", (0.5, 0.5, 0.25), (2, 0.5)),
])
def test_an_equal_score_later_does_not_replace_the_best(tmp_path, monkeypatch, metric, scores,
                                                        best):
    """Scores at steps 2, 4, 6: the earliest of equal scores stays the best (as
    `best_recorded` takes it on resuming), a strictly better one replaces it."""
    monkeypatch.setattr(best_checkpoint, "to_checkpoint_layout", lambda model, state: state)
    config = tiny_config(str(tmp_path), tasks="pose2d", **{
        "evals.validation.every": 2, "evals.validation.best_metric": metric})
    state = {"w": np.arange(3.0)}
    with contextlib.closing(evaluators.Evaluators(config, str(tmp_path / "run"),
                                                  {"pose2d": 1.0})) as evals:
        keeper = evals.best_checkpoint
        for step, value in zip((2, 4, 6), scores, strict=True):
            keeper.keep_if_better(step, state, {metric: value})
        assert keeper.best() == best
        assert keeper.manager.all_steps() == [best[0]]


def test_a_fresh_start_is_not_compared_with_a_config_json_left_without_checkpoints(tmp_path):
    """A workdir whose checkpoints were removed, its config.json of total_steps 4: a run of
    total_steps 8 starts afresh (no step to continue, nothing to compare), while with a
    checkpoint of step 2 it is the rerun of another config."""
    workdir = str(tmp_path)
    config = tiny_config(str(tmp_path / "data"), tasks="pose2d", total_steps=4)
    with open(workdirs.config_file(workdir), "w") as f:
        f.write(config.to_json_best_effort())
    config.total_steps = 8
    assert resume.check_config(config, workdir) == []
    (tmp_path / "checkpoints" / "2").mkdir(parents=True)
    with pytest.raises(resume.CannotResume, match="config.total_steps=4 -> 8"):
        resume.check_config(config, workdir)
    assert resume.check_config(config, workdir, accept=True) == [("total_steps", 4, 8)]


def test_a_rerun_from_step_1_with_a_free_change_sets_no_config_aside(tmp_path):
    """Resumed from step 1 with only log_every changed (a field free on resuming, so no
    accepted change): config.json is written with the new value, and no earlier config is
    kept, neither as superseded (that is a fresh start's, step 0) nor as before step 1."""
    workdir = str(tmp_path)
    config = tiny_config(str(tmp_path / "data"), tasks="pose2d", log_every=2)
    resume.save_config(config, workdir, [], 0)
    config.log_every = 1
    resume.save_config(config, workdir, [], 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [workdirs.CONFIG_FILE]
    with open(workdirs.config_file(workdir)) as f:
        assert json.load(f)["log_every"] == 1


def test_the_loader_position_checked_is_the_newest_checkpoints(tmp_path):
    """Checkpoints 2 and 10 saved positions over 10 and 12 records with 3 and 5 workers: a
    rerun reads step 10's, the newest by number ('10' sorts before '2' by name), so a split
    of 12 records resumes with 5 workers (-1 takes it; 5 given is the same), and one of 10
    records is refused, naming the 12 the position was saved over."""
    from hgmt.data import input_pipeline

    workdir = str(tmp_path / "run")
    seed = input_pipeline.grain_seed(0)
    for step, records, workers in ((2, 10, 3), (10, 12, 5)):
        data = tmp_path / "run" / "checkpoints" / str(step) / "data"
        data.mkdir(parents=True)
        (data / "process_0-of-1.json").write_text(json.dumps(
            {"worker_count": workers,
             "sampler": f"IndexSampler(num_records={records}, seed={seed})"}))
    config = ml_collections.ConfigDict({"seed": 0, "dataset": "surreal/all", "data_dir": "d"})
    resume.check_sampler(config, workdir, 12)
    assert checkpoints.resume_worker_count(workdir, -1, 1) == 5
    assert checkpoints.resume_worker_count(workdir, 5, 1) == 5
    with pytest.raises(resume.CannotResume, match=r"now has 10 records; the checkpoint "
                                                  r".*/10 saved the loader's position over 12"):
        resume.check_sampler(config, workdir, 10)


def test_the_processes_resume_from_the_newest_step_every_one_of_them_reads(tmp_path,
                                                                          monkeypatch):
    """Checkpoints 2, 4 and 6; a second process reads 2 and 4 only (its row in `_agree`: the
    step it read, at most this process's, a failure, its newest 6). This process reads 6
    first, then the bound drops to 4 and it reads 4: both resume from step 4, the step both
    read, and 6 alone is moved to checkpoints_unreadable/ (2 and 4 stay)."""
    import orbax.checkpoint as ocp

    workdir = str(tmp_path)
    mngr = checkpoints.manager(workdir, async_save=False, with_data=False)
    for step in (2, 4, 6):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"x": np.full(3, step, np.int32)})))
    rounds = []

    def agree(step, failed, newest):
        rounds.append(step)
        assert len(rounds) <= 4, rounds  # the processes would not agree
        return np.array([[step, failed, newest], [min(step, 4), 1, 6]], np.int32)

    monkeypatch.setattr(checkpoints, "_agree", agree)

    def args():
        return ocp.args.Composite(state=ocp.args.StandardRestore({"x": np.zeros(3, np.int32)}))

    step, restored = checkpoints.restore_newest_readable(mngr, args, workdir)
    assert (step, rounds) == (4, [6, 4])
    assert np.asarray(restored["state"]["x"]).tolist() == [4, 4, 4]
    assert [n.split("-")[0] for n in os.listdir(workdirs.unreadable_dir(workdir))] == ["6"]
    assert mngr.all_steps() == [2, 4]


def test_a_cosine_run_no_longer_than_its_warm_up_is_the_warm_up():
    """Warm-up 2 steps, total_steps 2 (or 1): optax's cosine needs decay steps past the
    warm-up, so it decays over 1 step after it: the rates of counts 0..4 are 0, 0.5 (the
    linear warm-up), 1 at its end, then 0, where the run has already stopped."""
    from hgmt.training import steps

    for total in (1, 2):
        lr = steps._lr("cosine", 1.0, 2, total)
        np.testing.assert_allclose([float(lr(k)) for k in range(5)], [0, 0.5, 1, 0, 0],
                                   atol=1e-7)


def test_the_manager_keeps_the_last_keep_checkpoints(tmp_path):
    """keep_checkpoints 2, checkpoints saved at steps 2, 4 and 6: 4 and 6 are kept, 2 is
    deleted as 6 is saved."""
    import orbax.checkpoint as ocp

    mngr = checkpoints.manager(str(tmp_path), keep=2, async_save=False, with_data=False)
    for step in (2, 4, 6):
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave({"x": np.full(3, step, np.int32)})))
    assert mngr.all_steps() == [4, 6]
    assert checkpoints.steps_on_disk(str(tmp_path)) == [4, 6]
    mngr.close()


def test_without_warm_up_the_first_step_trains_at_the_full_rate():
    """Warm-up 0, peak rate 1, 4 steps: the constant schedule is 1 from count 0 (the first
    step's update), not the warm-up's 0; the cosine is 0.5 (1 + cos(pi k / 4)) from count 0:
    1, 0.8536, 0.5, 0.1464, then 0 at count 4."""
    from hgmt.training import steps

    constant = steps._lr("constant", 1.0, 0, 4)
    np.testing.assert_allclose([float(constant(k)) for k in range(3)], [1, 1, 1], atol=1e-7)
    cosine = steps._lr("cosine", 1.0, 0, 4)
    np.testing.assert_allclose([float(cosine(k)) for k in range(5)],
                               0.5 * (1 + np.cos(np.pi * np.arange(5) / 4)), atol=1e-6)


def test_the_total_loss_the_best_is_chosen_by_is_the_weighted_sum_of_the_tasks():
    """Losses pose2d 2 and segm 1 under weights 0.25 and 2: loss/total is 0.25 * 2 + 2 * 1 =
    2.5 (not their plain sum, 3), beside each task's own loss."""
    summary = {"loss": {"pose2d": 2.0, "segm": 1.0}}
    assert eval_settings.metric_values(summary, {"pose2d": 0.25, "segm": 2.0}) == {
        "loss/pose2d": 2.0, "loss/segm": 1.0, "loss/total": 2.5}


def _sampler_and_workers(loader) -> tuple[str, int]:
    """The repr of a grain loader's sampler (its num_records and seed) and its worker count."""
    return repr(loader._sampler), loader._multiprocessing_options.num_workers


@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_the_training_loader_samples_the_split_with_the_configs_seed_and_given_workers(
        demo_dataset, augment_on):
    """The demo's train split, 2 clips of 6 frames: 12 records. config.seed 5 gives grain
    `grain_seed(5)` (seed 6's differs), on either placement of the crop; worker_count 0 given
    replaces config.worker_count 3, and none given leaves it."""
    from hgmt.data import builds, input_pipeline
    from hgmt.training import train_data

    config = tiny_config(demo_dataset[1], tasks="pose2d", augment_on=augment_on, seed=5,
                         worker_count=3)
    source = builds.open_split(config.dataset, config.data_dir, "train")
    prepare = train_data.augmentation(config, ("pose2d",))
    assert (prepare is None) == (augment_on == "host")
    seed = input_pipeline.grain_seed(5)
    assert seed != input_pipeline.grain_seed(6)
    sampler, workers = _sampler_and_workers(
        train_data.train_loader(config, source, ("pose2d",), prepare, 0))
    assert "num_records=12," in sampler and sampler.endswith(f"seed={seed})")
    assert workers == 0
    assert _sampler_and_workers(
        train_data.train_loader(config, source, ("pose2d",), prepare))[1] == 3


def test_a_resumed_training_loader_takes_its_checkpoints_workers_over_the_auto_count(
        demo_dataset, tmp_path, monkeypatch):
    """The newest checkpoint (step 4) saved the loader's position over the 12 records of the
    demo's train split at grain_seed(5) with 2 workers. config.worker_count -1 (auto) on 7
    usable cores would run 7 - 2 = 5; the resumed loader runs the checkpoint's 2, over the
    same 12 records and seed, so the position check passes."""
    from hgmt import cores
    from hgmt.data import builds, input_pipeline
    from hgmt.training import train_data

    seed = input_pipeline.grain_seed(5)
    data = tmp_path / "checkpoints" / "4" / "data"
    data.mkdir(parents=True)
    (data / "process_0-of-1.json").write_text(json.dumps(
        {"worker_count": 2, "sampler": f"IndexSampler(num_records=12, seed={seed})"}))
    monkeypatch.setattr(cores, "usable_cores", lambda *a, **k: 7)
    assert input_pipeline.auto_worker_count(-1) == 5
    config = tiny_config(demo_dataset[1], tasks="pose2d", augment_on="host", seed=5,
                         worker_count=-1)
    source = builds.open_split(config.dataset, config.data_dir, "train")

    class Evals:
        def check_frames(self, info):
            pass

    loader, damaged = train_data.open_training_data(config, str(tmp_path), ("pose2d",), None,
                                                    Evals(), source)
    sampler, workers = _sampler_and_workers(loader)
    assert workers == 2
    assert "num_records=12," in sampler and sampler.endswith(f"seed={seed})")
    assert damaged.size == 12 and damaged.found == {}
