"""The trainer's evaluators (`config.evals`): metrics at their steps and after the last one, in
TensorBoard and <workdir>/evals.jsonl, the best checkpoint kept and restorable (`--step=best`),
the best-so-far record surviving a resume, and bad evaluator settings stopped before training."""

import contextlib
import functools
import hashlib
import json
import logging
import os
import types

import jax
import numpy as np
import pytest

import hgmt.evaluate
from configs.common import evaluator_config
from hgmt import run_config, workdirs
from hgmt.inference import trained_model
from hgmt.training import (
    best_checkpoint,
    checkpoints,
    eval_reports,
    eval_settings,
    evaluators,
    loop,
)
from tests.conftest import preempted_where_test_is_due, tiny_config


class Recorder:
    """A metric writer that keeps what it is given (the trainer's TensorBoard sink)."""

    def __init__(self):
        self.scalars = {}

    def write_scalars(self, step, scalars):
        self.scalars.setdefault(step, {}).update(scalars)

    def write_images(self, step, images):
        pass

    def flush(self):
        pass


def _validation(writer, metric):
    return {s: v[f"validation/{metric}"] for s, v in writer.scalars.items()
            if f"validation/{metric}" in v}


def test_pictures_draw_the_prediction_the_evaluation_scores(monkeypatch):
    """With the flip test, on a crafted batch whose first frame is flagged unusable: the
    TensorBoard strips draw the prediction eval_step scores (mirror averaged in, the flagged
    frame given the protocol's input), and show that input."""
    import jax.numpy as jnp

    from hgmt.evaluation import evaluator
    from hgmt.models import create_model, predict_last_stage
    from hgmt.tasks import heads
    from hgmt.training import steps

    config = tiny_config("unused", tasks="pose2d")
    model = create_model(config.model, heads(("pose2d",)))
    size = config.image_size
    images = np.random.default_rng(0).integers(0, 256, (2, size, size, 3)).astype(np.uint8)
    variables = steps.init_variables(model, jax.random.key(0), jnp.asarray(images, jnp.float32))
    batch = {"image": images, "unusable": np.array([1.0, 0.0], np.float32),
             "mask": np.ones(2, np.float32), "rejected": np.array([1.0, 0.0], np.float32)}
    given = evaluator.unusable_input("surreal")

    # eval_step's prediction, as the metrics receive it (one device: a vmap axis of 1).
    class Scored:
        def stats(self, pred, batch):
            return {"pred": pred}

    monkeypatch.setattr(evaluator, "_example_loss", lambda *args: jnp.zeros(()))
    step = functools.partial(evaluator.eval_step, model=model, flip=True,
                             metrics={"pose2d": Scored()}, loss_options={"pose2d": {}},
                             unusable_input=given)
    scored = jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name="batch"))(
        variables, jax.tree.map(lambda v: v[None], batch))["pose2d"]["pred"][0]

    drawn = {}

    def strips(images, preds, batch):
        drawn.update(images=images, preds=preds)
        return images

    monkeypatch.setattr(evaluator.pictures, "prediction_strips", strips)
    ev = object.__new__(evaluator.Evaluator)
    ev.model, ev.flip, ev.protocol, ev.first_batch = model, True, "surreal", batch
    ev.pictures(variables, n=2)
    np.testing.assert_allclose(drawn["preds"]["pose2d"], scored, atol=1e-5)
    plain = np.asarray(predict_last_stage(model, variables, jnp.asarray(images, jnp.float32))
                       ["pose2d"])
    assert np.abs(plain - scored).max(axis=(1, 2, 3)).min() > 1e-3  # both frames differ
    np.testing.assert_array_equal(drawn["images"][0], np.broadcast_to(
        np.round(given).astype(np.uint8), (size, size, 3)))
    np.testing.assert_array_equal(drawn["images"][1], images[1])


def _compiled(caplog) -> list[str]:
    """The compilations jax.log_compiles logged into `caplog` since it was last cleared."""
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]


@pytest.mark.slow
def test_pictures_are_the_eager_predictions_drawn_from_one_program_compiled_once(demo_dataset,
                                                                                caplog):
    """All four tasks with the flip test, on the first demo test batch with its first frame
    flagged unusable: Evaluator.pictures draws exactly what `predict` and `model_input` run
    op by op give, in the model's task order, its predictions the eager ones to float
    rounding, compiling one program where the eager run compiles each op, and nothing when
    called again."""
    from hgmt.data import eval_data
    from hgmt.evaluation import evaluator, pictures
    from hgmt.training import steps

    config = tiny_config(demo_dataset[1])
    evaluator._compiled_pictures.cache_clear()  # pictures not compiled yet in this process
    ev = evaluator.Evaluator(config, frames="all", flip=True)
    state = steps.create_train_state(jax.random.key(0), config, ev.model)
    variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    batch = next(eval_data.eval_batches(
        ev.source, ev.indices, batch_size=ev.batch_size, image_size=ev.image_size,
        tasks=ev.tasks, damaged=[], window=ev.window, threads=0))
    batch["unusable"] = np.array(batch["unusable"])
    batch["unusable"][0] = 1.0
    ev.first_batch = batch
    first = {k: np.asarray(v[:4]) for k, v in batch.items()}
    given = evaluator.unusable_input(ev.protocol)
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        preds = evaluator.predict(variables, first, model=ev.model, flip=True,
                                  unusable_input=given)
        images = np.clip(np.round(np.asarray(evaluator.model_input(first, given))), 0, 255)
        eager = pictures.prediction_strips(images.astype(np.uint8),
                                           {t: np.asarray(p) for t, p in preds.items()}, first)
    assert len(_compiled(caplog)) > 50
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        drawn = ev.pictures(variables)
    assert len(_compiled(caplog)) == 1, _compiled(caplog)
    np.testing.assert_array_equal(drawn, eager)
    np.testing.assert_array_equal(drawn[0, :, :ev.image_size], np.broadcast_to(
        np.round(given).astype(np.uint8), (ev.image_size, ev.image_size, 3)))
    compiled, model_input = ev._pictured(variables, {k: first[k] for k in ("image", "unusable")})
    assert compiled.keys() == preds.keys() == set(ev.tasks)
    for task in preds:
        # Bit for bit at XLA:CPU's default optimisation (tiny and paper models measured);
        # the tests' unoptimised build rounds some 1e-8 apart.
        np.testing.assert_allclose(compiled[task], preds[task], rtol=0, atol=1e-6, err_msg=task)
    np.testing.assert_array_equal(np.clip(np.round(np.asarray(model_input)), 0, 255), images)
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(ev.pictures(variables), eager)
    assert _compiled(caplog) == []


def _one_batch_at_a_time(ev, variables: dict) -> tuple[dict, list[int]]:
    """The reference sums of an evaluation: its batches made in this thread, each batch's
    statistics fetched to the host as soon as it is evaluated and added there (numpy), one
    batch after the other; and the damaged records met."""
    from hgmt import devices
    from hgmt.data import eval_data

    replicated = devices.replicate(variables)
    total, damaged = None, []
    for batch in eval_data.eval_batches(ev.source, ev.indices, batch_size=ev.batch_size,
                                        image_size=ev.image_size, tasks=ev.tasks,
                                        damaged=damaged, window=ev.window, threads=0):
        stats = devices.to_host(ev.p_step(replicated, devices.place_batch(batch)))
        total = stats if total is None else jax.tree.map(np.add, total, stats)
    return total, damaged


@pytest.mark.parametrize("protocol", ["hgmt", "bodynet"])
def test_the_evaluation_fetches_its_sums_once_and_they_are_the_host_sums_exactly(
        demo_dataset, monkeypatch, protocol):
    """All four tasks at 256 px (the reference protocols' 64 x 64 label maps) on the 12 demo
    test frames, 3 batches of 4 on 4 devices, the examples made by two threads: the summary
    is, to the last bit of its JSON, the one of the reference sums (`_one_batch_at_a_time`),
    and the statistics come to the host once, not once a batch."""
    from hgmt.evaluation import evaluator
    from hgmt.training import steps

    config = tiny_config(demo_dataset[1], image_size=256, eval_batch_size=4)
    ev = evaluator.Evaluator(config, frames="all", protocol=protocol)
    ev.threads = 2
    state = steps.create_train_state(jax.random.key(0), config, ev.model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    fetches = []
    get = jax.device_get
    monkeypatch.setattr(evaluator.jax, "device_get", lambda x: fetches.append(1) or get(x))
    summary = ev(variables)
    assert len(fetches) == 1
    monkeypatch.setattr(evaluator.jax, "device_get", get)
    assert summary["num_examples"] == 12 and summary["protocol"] == protocol
    assert json.dumps(summary) == json.dumps(ev.summary(*_one_batch_at_a_time(ev, variables)))


def test_evaluators_of_one_setting_share_their_step_and_the_addition_of_their_sums(demo_dataset,
                                                                              caplog):
    """The 12 demo test frames, 2 batches of 8 on 4 devices: their statistics are added on the
    devices by one addition compiled once, for eval_step's sums and its own alike. A second
    Evaluator of the same setting shares the first's compiled step and pictures, traces
    nothing when called, and its summary is the first's. Under hgmt's protocol, whose
    statistics are sums, fewer frames share it too; the flip test, another protocol, a
    bfloat16 model or other loss options get a step of their own."""
    from hgmt import devices
    from hgmt.data import eval_data
    from hgmt.evaluation import evaluator, markdown
    from hgmt.training import steps

    config = tiny_config(demo_dataset[1], tasks="pose2d")
    evaluator._add_on_devices.cache_clear()  # an addition not compiled yet in this process
    first = evaluator.Evaluator(config, frames="all")
    state = steps.create_train_state(jax.random.key(0), config, first.model)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    batch = next(eval_data.eval_batches(
        first.source, first.indices, batch_size=first.batch_size, image_size=first.image_size,
        tasks=first.tasks, damaged=[], window=first.window, threads=0))
    stats = first.p_step(devices.replicate(variables), devices.place_batch(batch))
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        total = first.p_add(stats, stats)
        total = first.p_add(total, stats)
        total = first.p_add(total, stats)
    compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert len(compiled) == 1, compiled
    np.testing.assert_array_equal(devices.to_host(total)["count"],
                                  4 * devices.to_host(stats)["count"])
    summary = first(variables)
    assert summary["num_examples"] == 12 and len(first.indices) > first.batch_size
    first.pictures(variables)
    second = evaluator.Evaluator(config, frames="all")
    assert second.p_step is first.p_step and second._pictured is first._pictured
    caplog.clear()
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        again = second(variables)
        second.pictures(variables)
    traced = [r.getMessage() for r in caplog.records if "tracing" in r.getMessage()]
    assert traced == []
    assert json.dumps(again) == json.dumps(summary)
    limited = evaluator.Evaluator(config, frames="all", max_examples=4)
    assert limited.p_step is first.p_step
    assert (limited.frames_selected, len(limited.indices)) == (summary["frames_selected"], 4)
    assert summary["frames_selected"] == 12 and not summary["max_examples"]
    note = "**The first 4 of the 12 frames selected** (max_examples=4): a subset"
    assert note not in markdown.to_markdown(summary)
    assert note in markdown.to_markdown({**summary, "max_examples": 4, "num_examples": 4})
    half = tiny_config(demo_dataset[1], tasks="pose2d", **{"model.dtype": "bfloat16"})
    for other in (evaluator.Evaluator(config, frames="all", flip=True),
                  evaluator.Evaluator(config, frames="all", protocol="surreal"),
                  evaluator.Evaluator(half, frames="all")):
        assert other.p_step is not first.p_step
    segm = tiny_config(demo_dataset[1], tasks="segm")
    plain = evaluator.Evaluator(segm, frames="all")
    segm.loss_options = {"segm": {"foreground_weight": 2.0}}
    assert evaluator.Evaluator(segm, frames="all").p_step is not plain.p_step


@pytest.mark.parametrize("size, used", [(4, 4), (6, 4), (1, 4), (9, 8)])
def test_an_eval_batch_size_the_devices_do_not_divide_is_rounded_saying_so(demo_dataset, caplog,
                                                                          size, used):
    """4 devices: a size not a multiple of 4 is rounded down (at least 4), with a warning that
    names both sizes; a multiple is used as it is, silently."""
    from hgmt.evaluation import evaluator

    config = tiny_config(demo_dataset[1], tasks="pose2d", eval_batch_size=size)
    with caplog.at_level(logging.WARNING):
        ev = evaluator.Evaluator(config, frames="all")
    assert ev.batch_size == used
    warned = [r.getMessage() for r in caplog.records if "rounded" in r.getMessage()]
    assert warned == ([] if size == used else [
        f"evaluating in batches of {used}, config.eval_batch_size={size} rounded to a "
        f"multiple of the 4 devices"])


def test_best_checkpoint_is_the_best_validation_score_and_survives_resume(demo_dataset,
                                                                          tmp_path, caplog):
    workdir = str(tmp_path / "run")
    metric = "loss/total"  # lower is better; it moves every step (a tiny model's IoU is 0)
    kw = {"tasks": "pose2d+segm", "checkpoint_every": 2, "keep_checkpoints": 5,
          "evals.validation.every": 2, "evals.validation.best_metric": metric,
          "evals.validation.max_examples": 8, "optimizer.learning_rate": 3e-3}
    first = Recorder()
    with caplog.at_level(logging.INFO):
        loop.train(tiny_config(demo_dataset[1], total_steps=6, **kw), workdir, first)
    scores = _validation(first, metric)
    # The validation at step 2 is the best so far: its line gives the score it was kept for.
    kept = f"  ({metric} {scores[2]:.4g}: best so far, kept in {workdirs.best_dir(workdir)})"
    assert any(r.getMessage().endswith(kept) for r in caplog.records), kept
    assert len(set(scores.values())) == 3  # distinct, so the choice of the best is tested
    assert sorted(scores) == [2, 4, 6]
    for step, values in first.scalars.items():  # every headline metric and the losses
        if step in scores:
            assert {"validation/loss/total", "validation/pose2d/pckh@0.5"} <= set(values)
    best_step = min(scores, key=scores.get)
    manager = best_checkpoint.best_manager(workdir, metric)
    assert manager.all_steps() == [best_step]
    assert manager.metrics(best_step)[metric] == pytest.approx(scores[best_step])

    # What --step=best restores is the model of that step (the periodic checkpoints hold
    # every validated step) and not that of another step.
    _, best_vars, step = trained_model.restore_for_inference(workdir, "best")
    assert step == best_step
    for other in scores:
        _, same, _ = trained_model.restore_for_inference(workdir, other)
        equal = all(np.array_equal(a, b) for a, b in zip(
            jax.tree.leaves(best_vars), jax.tree.leaves(same), strict=True))
        assert equal == (other == best_step), other
    lines = [json.loads(x) for x in open(workdirs.evals_file(workdir))]
    assert [(x["step"], x["evaluator"]) for x in lines] == [(2, "validation"),
                                                            (4, "validation"),
                                                            (6, "validation")]
    assert [x["metrics"][metric] for x in lines] == pytest.approx(
        [scores[2], scores[4], scores[6]])

    # Resume to step 10: the best so far is known, so a later checkpoint replaces it only
    # when it scores better.
    second = Recorder()
    loop.train(tiny_config(demo_dataset[1], total_steps=10, **kw), workdir, second,
               resume_with_changed_config=True)
    later = _validation(second, metric)
    assert sorted(later) == [8, 10]
    every = {**scores, **later}
    overall = min(every, key=every.get)
    assert best_checkpoint.best_manager(workdir, metric).all_steps() == [overall]

    out = str(tmp_path / "best.json")
    hgmt.evaluate.main([f"--workdir={workdir}", "--step=best", "--split=validation",
                        f"--out_file={out}"])
    with open(out) as f:
        summary = json.load(f)
    assert summary["checkpoint"] == "best" and summary["step"] == overall
    weights = {"pose2d": 1000.0, "segm": 1.0}  # the tasks' default loss weights
    total = sum(weights[t] * v for t, v in summary["loss"].items())
    assert total == pytest.approx(every[overall], rel=1e-5)

    # A damaged best checkpoint is named in <workdir>/best, with a fix that exists.
    from tests.test_faults import _damage

    _damage(f"{workdirs.best_dir(workdir)}/{overall}")
    with pytest.raises(trained_model.UnusableCheckpoint, match=(
            f"checkpoint {workdirs.best_dir(workdir)}/{overall} cannot be read .*; evaluate a "
            f"checkpoint of {workdirs.checkpoint_dir(workdir)} instead \\(--step=N\\)")):
        trained_model.restore_for_inference(workdir, "best")


def _superseded_lines(workdir: str) -> list[dict]:
    """The evals.jsonl lines moved to <workdir>/evals_superseded/*/, oldest move first."""
    folder = workdirs.evals_superseded_dir(workdir)
    return [x for aside in sorted(os.listdir(folder))
            for x in workdirs.read_evals(os.path.join(folder, aside))]


@pytest.mark.slow
def test_best_checkpoint_after_the_resumed_step_is_chosen_again(demo_dataset, tmp_path):
    """A run validated (and kept the best) at step 4 but lost its step-4 checkpoint: resumed
    from step 2 with another learning rate, its step 4 scores otherwise; the best checkpoint
    is then the resumed run's step 4, with its score, as evals.jsonl's line says, not the
    lost run's (whose line is moved to evals_superseded/)."""
    import shutil

    workdir = str(tmp_path / "run")
    metric = "loss/total"
    kw = {"tasks": "pose2d", "checkpoint_every": 2, "keep_checkpoints": 5,
          "evals.validation.every": 4, "evals.validation.best_metric": metric,
          "evals.validation.max_examples": 8}
    loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw,
                           **{"optimizer.learning_rate": 3e-3}), workdir)
    assert best_checkpoint.best_manager(workdir, metric).all_steps() == [4]
    shutil.rmtree(f"{workdirs.checkpoint_dir(workdir)}/4")
    loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw,
                           **{"optimizer.learning_rate": 1e-4}), workdir,
               resume_with_changed_config=True)
    lines = [json.loads(x) for x in open(workdirs.evals_file(workdir))]
    lost = _superseded_lines(workdir)  # the lost run's, of the steps after 2
    assert [x["step"] for x in lines] == [4] and [x["step"] for x in lost] == [4]
    assert lost[0]["metrics"][metric] != pytest.approx(lines[0]["metrics"][metric])
    manager = best_checkpoint.best_manager(workdir, metric)
    assert manager.all_steps() == [4]
    assert manager.metrics(4)[metric] == pytest.approx(lines[0]["metrics"][metric])
    _, best_vars, _ = trained_model.restore_for_inference(workdir, "best")
    _, last_vars, _ = trained_model.restore_for_inference(workdir, 4)
    assert all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(best_vars), jax.tree.leaves(last_vars), strict=True))


def test_a_best_checkpoint_that_fails_to_save_leaves_its_step_to_evaluate_again(
        demo_dataset, tmp_path, monkeypatch):
    """The best checkpoint of step 2 fails to save (a full disk, a kill): the step's
    evals.jsonl line is not written, so the rerun, resumed at step 2, evaluates it again and
    keeps it as the best, its score that of the one line."""
    workdir = str(tmp_path / "run")
    metric = "loss/total"
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=2, **{
        "evals.validation.every": 2, "evals.validation.best_metric": metric,
        "evals.validation.max_examples": 4})

    def fails(*args, **kwargs):
        raise OSError("the best checkpoint's write failed")

    with monkeypatch.context() as patched:
        patched.setattr(best_checkpoint.BestCheckpoint, "save", fails)
        with pytest.raises(OSError, match="the best checkpoint's write failed"):
            loop.train(config, workdir)
    assert checkpoints.manager(workdir).all_steps() == [2]
    assert workdirs.read_evals(workdir) == []
    assert best_checkpoint.best_manager(workdir, metric).all_steps() == []

    loop.train(config, workdir)
    lines = workdirs.read_evals(workdir)
    assert [(x["step"], x["evaluator"]) for x in lines] == [(2, "validation")]
    manager = best_checkpoint.best_manager(workdir, metric)
    assert manager.all_steps() == [2]
    assert manager.metrics(2)[metric] == pytest.approx(lines[0]["metrics"][metric])


def test_the_best_recorded_score_is_of_each_steps_last_line_up_to_the_step():
    """A step's last line of the evaluator counts (a resumed run evaluated it again), lines of
    other evaluators and after the step do not, a line without the metric scores nothing,
    and of equal scores the earliest step is the best (a later one must beat it); with
    settings, only the lines measured under them."""
    def line(step, value, name="validation"):
        return {"step": step, "evaluator": name,
                "metrics": {} if value is None else {"loss/total": value}}

    evals = [line(2, 3.0), line(4, 1.0), line(6, 2.0), line(4, 2.5), line(2, 0.1, "test"),
             line(8, 2.0), line(10, None), line(12, 0.2)]
    best = functools.partial(best_checkpoint.best_recorded, name="validation", metric="loss/total")
    assert best(evals, step=10, lower=True) == (6, 2.0)
    assert best(evals, step=12, lower=True) == (12, 0.2)
    assert best(evals, step=10, lower=False) == (2, 3.0)
    assert best(evals, step=1, lower=True) is None
    assert best([line(2, None)], step=2, lower=True) is None
    # Under given settings: lines of other frames or splits do not count; lines that do not
    # record them (written before they were) do.
    settings = {"split": "validation", "frames": "middle", "flip": False, "protocol": "hgmt",
                "max_examples": 0}
    other = {**line(2, 0.1), **settings, "frames": "every10"}
    fewer = {**line(3, 0.2), **settings, "max_examples": 4}
    same = {**line(4, 0.5), **settings}
    assert best([other, fewer, same, line(6, 0.7)], step=6, lower=True) == (2, 0.1)
    assert best([other, fewer, same, line(6, 0.7)], step=6, lower=True,
                settings=settings) == (4, 0.5)
    assert best([other, line(6, 0.7)], step=6, lower=True, settings=settings) == (6, 0.7)


def test_evaluators_are_due_at_their_steps_and_never_at_step_0(tmp_path):
    """Every `every` steps, at the last step too (here no evaluator runs after it), and never
    at step 0: a run resumed from a checkpoint of step 0 (untrained weights) evaluates
    nothing before its first step."""
    config = tiny_config(str(tmp_path), tasks="pose2d", total_steps=4, **{
        "evals.validation.every": 2, "evals.test.every": 3})
    with contextlib.closing(evaluators.Evaluators(config, str(tmp_path / "run"),
                                                  {"pose2d": 1.0})) as evals:
        assert [evals.due(step) for step in range(5)] == [
            [], [], ["validation"], ["test"], ["validation"]]


def test_a_non_finite_score_is_never_kept_as_the_best(tmp_path, monkeypatch):
    """A NaN or infinite validation score (a diverged model) is no best checkpoint, which no
    later score could beat: the first finite score after it is kept, and a later -inf, lower
    than any loss, does not replace it."""
    monkeypatch.setattr(best_checkpoint, "to_checkpoint_layout", lambda model, state: state)
    config = tiny_config(str(tmp_path), tasks="pose2d", **{
        "evals.validation.every": 2, "evals.validation.best_metric": "loss/total"})
    state = {"w": np.arange(3.0)}  # what the best checkpoint holds, in any layout
    with contextlib.closing(evaluators.Evaluators(config, str(tmp_path / "run"),
                                                  {"pose2d": 1.0})) as evals:
        best = evals.best_checkpoint
        notes = [best.keep_if_better(step, state, {"loss/total": value})
                 for step, value in ((2, float("nan")), (4, 5.0), (6, float("-inf")))]
        assert best.best() == (4, 5.0)
        assert best.manager.all_steps() == [4]
    assert notes[0] == "  (loss/total: nan, not finite, not kept)"
    assert notes[2] == "  (loss/total: best 5 at step 4)"


def test_saving_the_best_checkpoint_gives_the_preemption_sync_protocol_no_step(tmp_path,
                                                                            monkeypatch):
    """JAX's preemption sync protocol agrees on the step after the last one each process gave
    it; the trainer gives it each step. A best checkpoint saved at an older step (on resuming,
    the best of evals.jsonl) must not give it that step, or a notice then is agreed on a step
    training has passed. The periodic checkpoints' manager gives the step it saves, the one
    the trainer has just given (which also shows the recorder sees orbax's calls)."""
    import orbax.checkpoint as ocp
    from jax.experimental import multihost_utils

    given = []
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point",
                        lambda step: given.append(step) or False)
    config = tiny_config(str(tmp_path), tasks="pose2d", **{
        "evals.validation.every": 2, "evals.validation.best_metric": "loss/total"})
    workdir, state = str(tmp_path / "run"), {"w": np.arange(3.0)}
    with contextlib.closing(evaluators.Evaluators(config, workdir, {"pose2d": 1.0})) as evals:
        evals.best_checkpoint.save(2, state, 1.0)
        assert evals.best_checkpoint.manager.all_steps() == [2]
    assert given == []
    with contextlib.closing(checkpoints.manager(workdir, async_save=False,
                                                with_data=False)) as periodic:
        periodic.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
    assert given and set(given) == {4}  # orbax asks more than once a save


def test_a_best_checkpoint_training_passes_over_is_moved_aside_not_deleted(tmp_path):
    """A run starting before the best checkpoint's step (here a fresh start in a workdir
    whose checkpoints/ was removed to save space: the best may be the only trained weights
    left) moves it to <workdir>/best_superseded/<step>-<time>, file for file, and then keeps
    no best."""
    import pathlib
    import re

    config = tiny_config(str(tmp_path), tasks="pose2d", **{
        "evals.validation.every": 2, "evals.validation.best_metric": "loss/total"})
    workdir = str(tmp_path / "run")
    with contextlib.closing(evaluators.Evaluators(config, workdir, {"pose2d": 1.0})) as evals:
        evals.best_checkpoint.save(4, {"w": np.arange(3.0)}, 1.0)

    def files(folder: pathlib.Path) -> dict[str, bytes]:
        return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*")
                if p.is_file()}

    kept = files(pathlib.Path(workdirs.best_dir(workdir)) / "4")
    assert len(kept) > 2
    with contextlib.closing(evaluators.Evaluators(config, workdir, {"pose2d": 1.0})) as evals:
        assert evals.forget_after(0, lambda: None) == [4]
        assert evals.best_checkpoint.manager.all_steps() == []
        assert evals.best_checkpoint.best() is None
    [moved] = pathlib.Path(workdirs.superseded_dir(workdir)).iterdir()
    assert re.fullmatch(r"4-\d{8}-\d{6}", moved.name)
    assert files(moved) == kept


def test_a_best_checkpoint_another_metric_or_evaluator_chose_is_moved_aside(tmp_path, caplog):
    """A rerun whose keeper cannot compare with the kept best (an accepted change of its
    best_metric or of its max_examples; another evaluator keeping the best) moves it aside
    with a warning instead of
    failing on the stored metric it lacks or comparing scores of other frames, and takes
    the bar from its own evals.jsonl lines under its own settings; the same keeper keeps
    it."""
    import pathlib

    def config(**evals):
        return tiny_config(str(tmp_path), tasks="pose2d", **{
            "evals.validation.every": 2, "evals.validation.best_metric": "loss/total",
            **{f"evals.{k}": v for k, v in evals.items()}})

    def run_over(workdir: str, c) -> tuple[list[int], tuple | None]:
        with contextlib.closing(evaluators.Evaluators(c, workdir, {"pose2d": 1.0})) as evals:
            return (evals.forget_after(4, lambda: {"w": np.zeros(3)}),
                    evals.best_checkpoint.best())

    line = {"step": 4, "evaluator": "validation", "split": "validation", "frames": "middle",
            "flip": False, "protocol": "hgmt", "max_examples": 0, "num_examples": 8,
            "metrics": {"loss/total": 1.0, "pose2d/pckh@0.5": 0.5}}
    assert config().evals.validation.max_examples == 0
    for name, changed, bar in (
            ("metric", config(**{"validation.best_metric": "pose2d/pckh@0.5"}), (4, 0.5)),
            ("keeper", config(**{"validation.best_metric": "", "test.every": 2,
                                 "test.best_metric": "loss/total"}), None),
            ("examples", config(**{"validation.max_examples": 4}), None)):
        workdir = str(tmp_path / name)
        with contextlib.closing(evaluators.Evaluators(config(), workdir,
                                                      {"pose2d": 1.0})) as evals:
            evals.best_checkpoint.save(4, {"w": np.arange(3.0)}, 1.0)
        pathlib.Path(workdirs.evals_file(workdir)).write_text(json.dumps(line) + "\n")
        assert run_over(workdir, config()) == ([], (4, 1.0))  # its own keeper keeps it
        with caplog.at_level(logging.WARNING):
            assert run_over(workdir, changed) == ([], bar)
        assert best_checkpoint.best_manager(workdir, "loss/total").all_steps() == []
        [moved] = pathlib.Path(workdirs.superseded_dir(workdir)).iterdir()
        assert moved.name.startswith("4-")
        assert "moved the best checkpoint of step 4" in caplog.text
        assert ("chosen by loss/total" if name == "metric"
                else "chosen by evaluator 'validation' on middle frames of 'validation' "
                     "(protocol 'hgmt', flip False, max_examples 0)") in caplog.text
        caplog.clear()


@pytest.mark.parametrize("checkpoint_every", [2, 3])
def test_a_resume_before_the_best_step_keeps_the_best_before_it(demo_dataset, tmp_path, caplog,
                                                                checkpoint_every):
    """Validated at steps 2 and 4, step 4 better (it replaced step 2 as the best), then the
    checkpoint of step 4 lost: the run resumes from the one before with a learning rate that
    makes step 4 worse than step 2. Step 2 is the best again, with its score: its checkpoint
    of <workdir>/checkpoints where there is one (checkpoint_every 2), else its score alone,
    which step 4 does not beat (checkpoint_every 3: no checkpoint of step 2)."""
    import logging
    import shutil

    workdir = str(tmp_path / "run")
    metric = "loss/total"
    kw = {"tasks": "pose2d", "checkpoint_every": checkpoint_every, "keep_checkpoints": 5,
          "evals.validation.every": 2, "evals.validation.best_metric": metric,
          "evals.validation.max_examples": 8}
    loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw,
                           **{"optimizer.learning_rate": 1e-4}), workdir)
    assert best_checkpoint.best_manager(workdir, metric).all_steps() == [4]
    shutil.rmtree(f"{workdirs.checkpoint_dir(workdir)}/4")
    with caplog.at_level(logging.INFO):
        loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw,
                               **{"optimizer.learning_rate": 3e-3}), workdir,
                   resume_with_changed_config=True)
    lines = [(x["step"], x["metrics"][metric]) for x in workdirs.read_evals(workdir)]
    lost = [(x["step"], x["metrics"][metric]) for x in _superseded_lines(workdir)]
    assert [s for s, _ in lines] == [2, 4] and [s for s, _ in lost] == [4]
    (_, score2), (_, score4) = lines
    [(_, lost4)] = lost
    assert lost4 < score2 < score4  # the setting: step 4 better at first, worse resumed
    manager = best_checkpoint.best_manager(workdir, metric)
    if checkpoint_every == 3:
        assert manager.all_steps() == []
        assert (f"the best {metric} so far, {score2:.6g} at step 2 "
                f"({workdirs.evals_file(workdir)}), is the score to beat") in caplog.text
        assert f"({metric}: best {score2:.4g} at step 2, its weights not kept)" in caplog.text
        return
    assert manager.all_steps() == [2]
    assert manager.metrics(2)[metric] == pytest.approx(score2)
    _, best_vars, step = trained_model.restore_for_inference(workdir, "best")
    _, vars2, _ = trained_model.restore_for_inference(workdir, 2)
    assert step == 2 and all(np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(best_vars), jax.tree.leaves(vars2), strict=True))


def test_final_evaluators_write_their_report_and_curves(demo_dataset, tmp_path):
    """An evaluator due at the last step and also run at the end runs once; each final one
    writes eval_<name>.json; the training-frames curve is an evaluator like the others."""
    workdir = str(tmp_path / "run")
    config = tiny_config(demo_dataset[1], tasks="pose2d", total_steps=4, **{
        "evals.test.at_end": True, "evals.test.every": 2, "evals.test.max_examples": 4})
    with config.unlocked():
        config.evals.train = evaluator_config("train", frames="every8", every=2,
                                              max_examples=4)
    writer = Recorder()
    _, summaries = loop.run(config, workdir, writer)
    assert sorted(summaries) == ["test"]
    # The learning rate logged at step s is that of step s's update, optax's count s - 1:
    # warm-up over 5 steps from 0 to 2.5e-4 (runlocal), so 1/5 and 3/5 of it.
    lr = config.optimizer.learning_rate
    assert writer.scalars[2]["learning_rate"] == pytest.approx(lr / 5)
    assert writer.scalars[4]["learning_rate"] == pytest.approx(3 * lr / 5)
    lines = [json.loads(x) for x in open(workdirs.evals_file(workdir))]
    assert [(x["step"], x["evaluator"], x["split"]) for x in lines] == [
        (2, "test", "test"), (2, "train", "train"), (4, "train", "train"), (4, "test", "test")]
    with open(tmp_path / "run" / "eval_test.json") as f:
        report = json.load(f)
    assert report["evaluator"] == "test" and report["step"] == 4
    assert report["num_examples"] == lines[-1]["num_examples"] == 2  # the 2 test clips' middles
    assert report["pose2d"]["pckh@0.5"] == pytest.approx(lines[-1]["metrics"]["pose2d/pckh@0.5"])

    # hgmt.evaluate takes the test evaluator's settings by default and names the file after
    # the settings, so evaluations of other settings sit side by side; an example limit
    # (the evaluator's 4) only where it cut frames (of the 2 test clips' middles: none).
    for argv, name, settings in (
            ([], "eval_test_4.json", ("middle", False, 2)),
            (["--flip"], "eval_test_4_flip.json", ("middle", True, 2)),
            (["--frames=every8", "--max_examples=0"], "eval_test_4_every8.json",
             ("every8", False, 2)),
            (["--max_examples=1"], "eval_test_4_first1.json", ("middle", False, 1))):
        assert hgmt.evaluate.main([f"--workdir={workdir}", *argv]) == 0
        with open(tmp_path / "run" / name) as f:
            again = json.load(f)
        assert (again["frames"], again["flip"], again["num_examples"]) == settings, name
    assert sorted(p.name for p in (tmp_path / "run").glob("eval_test_4*.json")) == [
        "eval_test_4.json", "eval_test_4_every8.json", "eval_test_4_first1.json",
        "eval_test_4_flip.json"]
    with open(tmp_path / "run" / "eval_test_4.json") as f:
        assert json.load(f)["pose2d"]["pckh@0.5"] == pytest.approx(report["pose2d"]["pckh@0.5"])


@pytest.mark.parametrize("field, value, message", [
    ("best_metric", "pose2d/accuracy", "best_metric='pose2d/accuracy'.*pose2d/pckh@0.5"),
    ("split", "dev", "split='dev'.*validation"),
    ("frames", "every0", "frames.*everyK"),
    ("frames", "every\u00b2", "frames.*everyK"),  # a digit int() does not read
    ("protocol", "coco", "coco.*bodynet"),
    ("every", -1, r"config\.evals\.validation\.every=-1 must be >= 0"),
    ("protocol", "bodynet", r"config\.evals\.validation\.protocol='bodynet': "
                            r"measures 64x64 .*image_size=64 "
                            r"gives 16x16; set config.evals.validation.protocol='hgmt', or "
                            r"train at config.image_size=256$"),
])
def test_bad_evaluator_settings_name_the_field_and_choices(demo_dataset, tmp_path, field,
                                                          value, message):
    config = tiny_config(demo_dataset[1], tasks="pose2d")
    with config.unlocked():
        config.evals.validation[field] = value
    with pytest.raises(ValueError, match=message):
        loop.train(config, str(tmp_path / "run"))
    config = tiny_config(demo_dataset[1], tasks="pose2d",
                         **{"evals.validation.best_metric": "loss/total",
                            "evals.test.best_metric": "loss/total"})
    with pytest.raises(ValueError, match="at most one evaluator"):
        loop.train(config, str(tmp_path / "run"))


def test_frames_the_build_does_not_hold_stop_the_run_before_training(every10_dataset,
                                                                     tmp_path):
    """An evaluator asking for every 4th frame of a build of every 10th stops the run at its
    start, naming the evaluator, not when it first runs, and before the workdir changes: a
    resume with it leaves the run's config.json and checkpoints as they were; every20 of the
    same build trains."""
    run = tmp_path / "run"
    config = tiny_config(every10_dataset, tasks="pose2d", dataset="surreal/every10",
                         total_steps=1, **{"evals.test.frames": "every20"})
    loop.train(config, str(run))
    saved = (run / "config.json").read_text()
    with config.unlocked():
        config.evals.test.frames = "every4"
        config.total_steps = 2
    with pytest.raises(ValueError, match=r"config.evals.test: frames='every4' .* every 10th"):
        loop.train(config, str(run), resume_with_changed_config=True)
    assert (run / "config.json").read_text() == saved
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["1"]
    with pytest.raises(ValueError, match=r"config.evals.test: frames='every4'"):
        loop.train(config, str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh" / "checkpoints").exists() or not [
        p.name for p in (tmp_path / "fresh" / "checkpoints").iterdir()]


def test_step_best_without_validation_is_a_clear_error(demo_dataset, tmp_path):
    """No validation ran during training (its `every` beyond total_steps): --step=best says
    when one is kept, whether or not the training made the best checkpoints' folder."""
    workdir = str(tmp_path / "run")
    loop.train(tiny_config(demo_dataset[1], tasks="pose2d", total_steps=2), workdir)
    message = (f"no best checkpoint in {workdirs.best_dir(workdir)}: one is kept when an "
               f"evaluator of config.evals with a best_metric runs during training (every > 0, "
               f"and every <= total_steps), at its first evaluation")
    for _ in range(2):
        with pytest.raises(FileNotFoundError) as e:
            trained_model.restore_for_inference(workdir, "best")
        assert str(e.value) == message
        os.makedirs(workdirs.best_dir(workdir), exist_ok=True)  # as a trainer may leave it


def test_best_metric_direction_comes_from_the_task():
    """Losses and the errors a task's Headline declares are better lower; the rest higher. A
    Headline naming a direction for a metric it lacks is an error."""
    from hgmt.tasks.spec import Headline

    lower = {m: eval_settings.lower_is_better(m) for m in (
        "loss/total", "loss/segm", "pose3d/mjd_mm", "depth/rmse_mm", "depth/bin_accuracy",
        "pose2d/pckh@0.5", "segm/mean_iou")}
    assert lower == {"loss/total": True, "loss/segm": True, "pose3d/mjd_mm": True,
                     "depth/rmse_mm": True, "depth/bin_accuracy": False,
                     "pose2d/pckh@0.5": False, "segm/mean_iou": False}
    with pytest.raises(ValueError, match="Headline .*: err not in its metrics"):
        Headline(("acc",), "acc", ("err",), "accuracy")


def test_an_evaluation_a_preemption_skipped_runs_on_resuming(demo_dataset, tmp_path):
    """Preempted at step 2, where `test` is due, the run saves without evaluating (no time);
    the rerun evaluates step 2 before training on, so every due step has its result."""
    import os

    workdir = str(tmp_path / "run")
    config = preempted_where_test_is_due(demo_dataset[1], workdir, Recorder)
    assert checkpoints.manager(workdir).all_steps() == [2]
    assert not os.path.exists(workdirs.evals_file(workdir))
    writer = Recorder()
    loop.train(config, workdir, writer)
    lines = [json.loads(x) for x in open(workdirs.evals_file(workdir))]
    assert [(x["step"], x["evaluator"]) for x in lines] == [(2, "test"), (4, "test")]
    assert "test/pose2d/pckh@0.5" in writer.scalars[2]


def test_an_evaluation_after_training_counts_as_finished_only_of_the_same_run(tmp_path,
                                                                             caplog,
                                                                             monkeypatch):
    """`Evaluators.finished_at_end`: an eval_<name>.json counts as the finished evaluation
    of a step only when it is of that step, of that evaluator, of today's metric definitions
    of its protocol (a change of another protocol's keeps it) and of the same variables and
    config, less the fields no evaluation reads (`eval_reports.fingerprint`); a file that does
    not read is evaluated again, with a warning."""
    from hgmt.evaluation import metrics_versions

    def state(w: float) -> types.SimpleNamespace:  # a host train state's variables
        return types.SimpleNamespace(params={"w": np.full(3, w, np.float32)},
                                     batch_stats={"m": np.zeros(2, np.float32)})

    config = tiny_config(str(tmp_path), tasks="pose2d", **{
        "evals.test.at_end": True, "evals.validation.at_end": True})
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    evals = evaluators.Evaluators(config, workdir, {"pose2d": 1.0})
    summary = {"pose2d": {"pckh@0.5": 0.5}, "num_examples": 8,
               "metrics_version": metrics_versions.metrics_version("hgmt")}
    run = {"step": 4, "evaluator": "test",
           "evaluated": eval_reports.fingerprint(config, state(1.0))}

    def write(report) -> None:
        with open(workdirs.eval_file(workdir, "test"), "w") as f:
            f.write(report if isinstance(report, str) else json.dumps(report))

    write({**summary, **run})
    assert evals.finished_at_end(4, state(1.0)) == {"test": summary}
    assert evals.finished_at_end(6, state(1.0)) == {}
    assert evals.finished_at_end(4, state(1.5)) == {}  # other weights
    other_config = config.copy_and_resolve_references()
    other_config.data_dir = str(tmp_path / "rebuilt")
    for other in ({"evaluator": "validation"},
                  {"metrics_version": metrics_versions.metrics_version("hgmt") - 1},
                  {"evaluated": eval_reports.fingerprint(other_config, state(1.0))}):
        write({**summary, **run, **other})
        assert evals.finished_at_end(4, state(1.0)) == {}, other
    # Fields no evaluation reads may change (`eval_reports.NOT_EVALUATED`); any other counts.
    free = config.copy_and_resolve_references()
    free.log_every, free.keep_checkpoints, free.evals.test.every = 1, 9, 5
    assert eval_reports.fingerprint(free, state(1.0)) == run["evaluated"]
    for field, value in (("evals.test.flip", True), ("evals.test.protocol", "surreal"),
                         ("eval_batch_size", 4), ("optimizer.learning_rate", 1.0)):
        changed = config.copy_and_resolve_references()
        parent, name = run_config.field_parent(changed, field)
        parent[name] = value
        assert eval_reports.fingerprint(changed, state(1.0)) != run["evaluated"], field
    # A report whose config digest is of every field (sorted JSON) is evaluated again.
    whole = hashlib.sha256(config.to_json_best_effort(sort_keys=True).encode()).hexdigest()
    write({**summary, **run, "evaluated": {**run["evaluated"], "config_sha256": whole}})
    assert evals.finished_at_end(4, state(1.0)) == {}
    write({**summary, **run})
    changes = metrics_versions.METRICS_CHANGES
    monkeypatch.setattr(metrics_versions, "METRICS_CHANGES", {**changes, 99: (("surreal",), "x")})
    assert evals.finished_at_end(4, state(1.0)) == {"test": summary}
    monkeypatch.setattr(metrics_versions, "METRICS_CHANGES", {**changes, 99: (("hgmt",), "x")})
    assert evals.finished_at_end(4, state(1.0)) == {}
    monkeypatch.setattr(metrics_versions, "METRICS_CHANGES", changes)
    write('{"step": 4, "evalu')
    with caplog.at_level(logging.WARNING):
        assert evals.finished_at_end(4, state(1.0)) == {}
    assert f"{workdirs.eval_file(workdir, 'test')} does not read" in caplog.text


def test_the_evaluations_of_steps_a_rerun_trains_again_are_moved_aside(tmp_path):
    """`Evaluators.supersede_after(s)`: the evals.jsonl lines of steps after s and the
    evaluations after training of a later step (eval_<name>.json and .md) move to
    <workdir>/evals_superseded/<s>-<time>/, evals.jsonl keeping the other lines in order;
    those of step s and before stay; with nothing later nothing moves."""
    import pathlib

    config = tiny_config(str(tmp_path), tasks="pose2d", **{
        "evals.validation.every": 2, "evals.test.at_end": True})
    workdir = pathlib.Path(tmp_path / "run")
    workdir.mkdir()
    lines = [{"step": s, "evaluator": "validation", "metrics": {"loss/total": s / 10}}
             for s in (2, 4, 6)] + [{"step": 6, "evaluator": "test", "metrics": {}}]
    (workdir / "evals.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    for name, step in (("test", 6), ("validation", 4)):
        (workdir / f"eval_{name}.json").write_text(json.dumps({"step": step,
                                                               "evaluator": name}))
        (workdir / f"eval_{name}.md").write_text(name)
    evals = evaluators.Evaluators(config, str(workdir), {"pose2d": 1.0})
    assert evals.supersede_after(4) == ["evals.jsonl", "eval_test.json", "eval_test.md"]
    assert workdirs.read_evals(str(workdir)) == lines[:2]
    [aside] = (workdir / "evals_superseded").iterdir()
    assert aside.name.startswith("4-")
    assert [json.loads(x) for x in (aside / "evals.jsonl").read_text().splitlines()] == \
        lines[2:]
    assert sorted(p.name for p in aside.iterdir()) == ["eval_test.json", "eval_test.md",
                                                      "evals.jsonl"]
    assert not (workdir / "eval_test.json").exists()
    assert (workdir / "eval_validation.json").exists()
    assert (workdir / "eval_validation.md").exists()
    assert evals.supersede_after(4) == []
    assert len(list((workdir / "evals_superseded").iterdir())) == 1


def _pose2d_eval_step(model, monkeypatch):
    """`evaluator.eval_step` of a pose2d-only model, jitted and vmapped over a 'batch' axis
    standing for the devices, with no metric statistics and each example's loss its batch's
    'loss_value': what is under test is how the step sums over examples and devices."""
    from hgmt.evaluation import evaluator

    class NoStats:
        def stats(self, pred, batch):
            return {}

    monkeypatch.setattr(evaluator, "_example_loss", lambda task, options, pred, b:
                        b["loss_value"])
    step = functools.partial(evaluator.eval_step, model=model, flip=False,
                             metrics={"pose2d": NoStats()}, loss_options={"pose2d": {}},
                             unusable_input=evaluator.unusable_input("hgmt"))
    return jax.jit(jax.vmap(step, in_axes=(None, 0), axis_name="batch"))


def test_the_evaluation_loss_sums_the_usable_examples_only(monkeypatch):
    """eval_step's loss is the sum of each example's loss over the real examples hgmt's check
    keeps: of losses 1, 10, 100, 1000 for a kept frame, a rejected one, a kept one and padding,
    1 + 100 = 101; `count` is the 3 real examples, `rejected` the 1."""
    import jax.numpy as jnp

    from hgmt.models import create_model
    from hgmt.tasks import heads
    from hgmt.training import steps

    config = tiny_config("unused", tasks="pose2d")
    model = create_model(config.model, heads(("pose2d",)))
    size = config.image_size
    images = np.zeros((4, size, size, 3), np.uint8)
    variables = steps.init_variables(model, jax.random.key(0), jnp.asarray(images, jnp.float32))
    batch = {"image": images, "unusable": np.zeros(4, np.float32),
             "mask": np.array([1.0, 1.0, 1.0, 0.0], np.float32),
             "rejected": np.array([0.0, 1.0, 0.0, 0.0], np.float32),
             "loss_value": np.array([1.0, 10.0, 100.0, 1000.0], np.float32)}

    stats = _pose2d_eval_step(model, monkeypatch)(
        variables, jax.tree.map(lambda v: v[None], batch))
    assert float(stats["pose2d"]["loss"][0]) == 101.0
    assert float(stats["count"][0]) == 3.0 and float(stats["rejected"][0]) == 1.0


def _summarizing_evaluator(metrics: dict, image_size: int = 256):
    """An `evaluator.Evaluator` holding only what its `summary` reads: hgmt's protocol over
    every frame of a test split, of the tasks `metrics` ({task: protocols.Metric}) measures."""
    from hgmt.evaluation import evaluator

    ev = object.__new__(evaluator.Evaluator)
    ev.tasks, ev.protocol, ev.window, ev.image_size = tuple(metrics), "hgmt", "hgmt", image_size
    ev.dataset, ev.data_dir, ev.split = "surreal", "unused", "test"
    ev.flip, ev.frames = False, "all"
    ev.max_examples, ev.frames_selected, ev.unreadable, ev.combine = 0, 4, [], None
    ev.shards = types.SimpleNamespace(name=str)
    ev.metrics = metrics
    return ev


def test_the_summary_loss_is_the_mean_over_the_usable_examples():
    """The summary's loss divides eval_step's sum (over the examples hgmt's check keeps) by
    their number: a loss sum of 101 over 4 real examples, 1 rejected, is 101 / 3."""
    from hgmt.evaluation import protocols

    ev = _summarizing_evaluator(
        {"pose2d": protocols.Metric("hgmt", None, lambda sums, num_damaged=0: {})})
    total = {"count": 4.0, "rejected": 1.0, "unusable": 0.0, "pose2d": {"loss": 101.0}}
    summary = ev.summary(total, [])
    assert summary["loss"]["pose2d"] == pytest.approx(101 / 3)
    assert summary["num_examples"] == 4
    assert summary["unusable_frames"]["rejected_by_hgmt"] == 1


def test_the_step_depends_on_the_splits_size_where_a_reference_protocol_measures_a_task():
    """`step_examples`: the split's size where a task is measured by a reference protocol's
    definition (their full test batches depend on it: surreal's segm and depth, every bodynet
    task), 0 where hgmt's measures every task (pose under surreal keeps hgmt's)."""
    from hgmt.evaluation import evaluator

    assert evaluator.step_examples("surreal", ("segm",), 10) == 10
    assert evaluator.step_examples("surreal", ("depth",), 10) == 10
    assert evaluator.step_examples("surreal", ("pose2d", "pose3d"), 10) == 0
    assert evaluator.step_examples("bodynet", ("pose2d",), 10) == 10
    assert evaluator.step_examples("hgmt", ("pose2d", "segm", "depth"), 10) == 0


def test_the_step_sums_its_counts_over_the_devices_leaving_the_padding_out(monkeypatch):
    """eval_step on 2 devices of 2 examples each: a kept frame, one flagged unusable (and so
    rejected), a kept one, and padding that copies the flagged frame (`mask` 0, as
    eval_data pads with a batch's last good example). The sums are over both devices and
    the 3 real examples only: count 3, unusable 1, rejected 1, the loss 1 + 100 of the two
    kept frames (losses 1, 10, 100, 1000 as given)."""
    import jax.numpy as jnp


    # A stand-in for the model: one stage of zero heatmaps (only the sums are under test).
    model = types.SimpleNamespace(apply=lambda variables, images, train: {
        "pose2d": jnp.zeros((1, images.shape[0], 2, 2, 16))})
    batch = {"image": np.zeros((4, 8, 8, 3), np.uint8),
             "unusable": np.array([0.0, 1.0, 0.0, 1.0], np.float32),
             "rejected": np.array([0.0, 1.0, 0.0, 1.0], np.float32),
             "mask": np.array([1.0, 1.0, 1.0, 0.0], np.float32),
             "loss_value": np.array([1.0, 10.0, 100.0, 1000.0], np.float32)}

    stats = _pose2d_eval_step(model, monkeypatch)(
        {}, jax.tree.map(lambda v: v.reshape((2, 2) + v.shape[1:]), batch))
    for device in (0, 1):
        assert {k: float(stats[k][device]) for k in ("count", "unusable", "rejected")} == {
            "count": 3.0, "unusable": 1.0, "rejected": 1.0}
        assert float(stats["pose2d"]["loss"][device]) == 101.0


def test_the_split_metric_is_of_the_sums_over_the_devices_not_a_mean_of_their_means():
    """hgmt's segmentation metric through the compiled eval_step on this process's 4 devices
    (the step's psum spans every process's devices alike, so they stand for hosts) and the
    summary. 2 x 2 label px, a stand-in model predicting the image's value at each: device 0
    holds 1 example all right (A) and padding, device 1 two all wrong (B, C), device 2 one
    hgmt's check rejects (D) and padding, device 3 one half right (E) and padding, the
    padding all wrong. Pixel accuracy (4 + 2) / 16 = 0.375, and every number equals the
    metric of A, B, C, E in one batch; the mean of the devices' accuracies (1, 0, 0.5) would
    be 0.5, and a mean of the devices' sums would count 5/4 examples."""
    import jax.numpy as jnp

    from hgmt import devices
    from hgmt.evaluation import evaluator, protocols

    assert jax.device_count() == 4, "the crafted batch spreads over conftest's 4 CPU devices"
    model = types.SimpleNamespace(apply=lambda variables, images, train: {
        "segm": jax.nn.one_hot(images[:, ::4, ::4, 0].astype(jnp.int32), 15)[None]})
    labels = np.array([[[1, 2], [3, 4]], [[0, 0], [0, 0]],  # A, padding
                       [[1, 1], [1, 1]], [[0, 0], [5, 5]],  # B, C
                       [[2, 2], [2, 2]], [[0, 0], [0, 0]],  # D (rejected), padding
                       [[3, 3], [0, 0]], [[0, 0], [0, 0]]], np.uint8)  # E, padding
    predicted = labels.copy()
    predicted[[1, 5, 7]] = 9  # the padding
    predicted[2], predicted[3], predicted[4] = 2, 6, 7  # B, C, D
    predicted[6, 1] = 1  # E's lower row
    images = np.repeat(np.repeat(predicted, 4, 1), 4, 2)[..., None].repeat(3, -1)
    batch = {"image": images, "segm": labels, "unusable": np.zeros(8, np.float32),
             "mask": np.array([1, 0, 1, 1, 1, 0, 1, 0], np.float32),
             "rejected": np.array([0, 0, 0, 0, 1, 0, 0, 0], np.float32)}
    metric = protocols.metric("hgmt", "segm", 0)
    step = devices.spmd(functools.partial(
        evaluator.eval_step, model=model, flip=False, metrics={"segm": metric},
        loss_options={"segm": {}}, unusable_input=evaluator.unusable_input("hgmt")))
    total = devices.to_host(step(devices.replicate({}), devices.place_batch(batch)))
    summary = _summarizing_evaluator({"segm": metric}, image_size=8).summary(total, [])

    counted = [0, 2, 3, 6]
    one_batch = {k: v[counted] for k, v in batch.items()}
    directly = metric.summarize(metric.stats(model.apply({}, one_batch["image"], False)[
        "segm"][0], one_batch))
    assert summary["segm"]["pixel_accuracy"] == 0.375
    assert {k: v for k, v in summary["segm"].items() if k != "protocol"} == directly
    assert summary["num_examples"] == 5
    assert summary["unusable_frames"]["rejected_by_hgmt"] == 1
