"""A task is one module plus one entry in `hgmt.tasks.TASKS`: a fifth task (the silhouette of
tests/silhouette_task.py) trains, evaluates, reports and predicts with no other change."""

import json
import os

import cv2
import numpy as np
import pytest

import hgmt.predict
import hgmt.report
from hgmt.data import builds, cropping
from hgmt.data.augment import Augment
from hgmt.evaluation import markdown, protocols
from hgmt.tasks import TASKS, all_subsets, drawing, parse_tasks
from hgmt.training import loop
from tests import silhouette_task
from tests.conftest import tiny_config


@pytest.fixture
def with_silhouette(monkeypatch):
    monkeypatch.setitem(TASKS, "silhouette", silhouette_task)


@pytest.mark.slow
def test_a_fifth_task_trains_evaluates_reports_and_predicts(with_silhouette, demo_dataset,
                                                            tmp_path, capsys):
    assert parse_tasks("all")[-1] == "silhouette" and len(all_subsets()) == 31
    # Its labels come from its own module; a pose2d-only crop does not carry them.
    source = builds.open_split("surreal/all", demo_dataset[1], "test")
    example = cropping.crop_example(source[0], 64, Augment.none(),
                                    tasks=("silhouette",))
    assert set(example) == {"image", "crop", "unusable", "silhouette"}
    assert example["silhouette"].shape == (16, 16) and 0 < example["silhouette"].sum() < 256
    assert "silhouette" not in cropping.crop_example(
        source[0], 64, Augment.none(), tasks=("pose2d",))

    # Train two subsets as a sweep would (the isolated task and one with pose2d), evaluate.
    sweep = tmp_path / "sweep"
    for tasks in ("silhouette", "pose2d+silhouette"):
        workdir = str(sweep / tasks)
        config = tiny_config(demo_dataset[1], tasks=tasks, total_steps=2,
                             **{"evals.test.at_end": True})
        summary = loop.train_and_evaluate(config, workdir)["test"]  # -> eval_test.json
        assert 0.0 <= summary["silhouette"]["iou"] <= 1.0
        assert summary["silhouette"]["protocol"] == "hgmt"
        assert "silhouette/iou" in protocols.headline(summary)
        assert "| silhouette/iou |" in markdown.to_markdown(summary)
        assert os.path.isfile(os.path.join(workdir, "eval_test.json"))

    # The study compares it like any task.
    assert hgmt.report.main([f"--sweep_dir={sweep}", f"--out_dir={tmp_path / 'report'}"]) == 0
    with open(tmp_path / "report" / "report.json") as f:
        study = json.load(f)
    assert study["silhouette"]["metric"] == "iou" and study["silhouette"]["isolated"] is not None
    assert set(study["silhouette"]["subsets"]) == {"silhouette", "pose2d+silhouette"}

    # Prediction on an image: result, JSON and a panel picture of its own.
    image = np.full((120, 90, 3), 127, np.uint8)
    cv2.imwrite(str(tmp_path / "grey.png"), image)
    out = tmp_path / "pred"
    workdir = str(sweep / "pose2d+silhouette")
    assert hgmt.predict.main([str(tmp_path / "grey.png"), f"--workdir={workdir}",
                              f"--out_dir={out}"]) == 0
    with open(out / "grey.json") as f:
        result = json.load(f)
    assert result["tasks"] == ["pose2d", "silhouette"]
    assert np.asarray(result["silhouette"]).shape == (16, 16)
    panel = cv2.imread(str(out / "grey.png"))
    h = drawing.PLOT_HEIGHT  # the input, pose2d's figure, the silhouette's (with its legend)
    assert panel.shape == (h, 2 * h + int(1.45 * h), 3)


def test_every_task_module_implements_the_interface(with_silhouette):
    """Each entry of TASKS, the fifth task included, is a `spec.TaskModule`; a module that
    lacks a function, takes other parameters or has a bad CHANNEL_FLIP is named."""
    import types

    from hgmt.tasks import spec

    for name, module in TASKS.items():
        spec.check_task(module)
        assert isinstance(module, spec.TaskModule) and module.NAME == name
    broken = types.ModuleType("broken")
    vars(broken).update({k: v for k, v in vars(silhouette_task).items()
                         if k != "draw" and not k.startswith("__")})
    with pytest.raises(TypeError, match="broken: function draw missing"):
        spec.check_task(broken)
    broken.draw = lambda pred, image: image
    with pytest.raises(TypeError, match=r"draw\(pred, image\) should take \(pred, rgb, frame"):
        spec.check_task(broken)
    broken.draw, broken.CHANNEL_FLIP = silhouette_task.draw, [0, 0]
    with pytest.raises(TypeError, match="CHANNEL_FLIP is not a permutation"):
        spec.check_task(broken)
    broken.CHANNEL_FLIP, broken.OUTPUT_LAYOUT = [1, 0], {"channels": 3, "channel": "class"}
    with pytest.raises(TypeError, match=r"OUTPUT_LAYOUT needs 'channels' \(= NUM_CHANNELS 2\)"):
        spec.check_task(broken)
    broken.OUTPUT_LAYOUT = silhouette_task.OUTPUT_LAYOUT
    broken.loss = lambda pred, target, gamma=2.0: 0.0
    with pytest.raises(TypeError, match=r"loss has parameters \['gamma'\].*LOSS_OPTIONS"):
        spec.check_task(broken)
    broken.loss = lambda pred, target: 0.0  # compute_losses passes axis_name to every loss
    with pytest.raises(TypeError, match=r"loss\(pred, target\) lacks the keyword "
                                        r"parameter\(s\) \['axis_name'\]"):
        spec.check_task(broken)


def test_a_task_reading_a_field_trainings_crops_lack_is_named(monkeypatch):
    """A task module whose labels read a record field training's crops do not carry (the
    camera's rotation, here) is a one-line error naming the task, the field and what they
    carry, not a KeyError from the trace that finds the label maps training decodes."""
    import types

    from hgmt.data import device_augment

    zrot = types.ModuleType("zrot_task")
    vars(zrot).update({k: v for k, v in vars(silhouette_task).items()
                       if not k.startswith("__")})
    zrot.labels = lambda crop: {"zrot": crop.record["zrot"]}
    monkeypatch.setitem(TASKS, "zrot_task", zrot)
    with pytest.raises(ValueError, match=r"^task zrot_task's labels read the record's 'zrot', "
                                         r"which training's crops do not carry \(they carry "
                                         r"cam_loc, depth, depth_class, image, joints2d, "
                                         r"joints3d, segm\)"):
        device_augment.target_maps(("zrot_task",))


def test_the_pytorch_reference_has_the_tasks_channels():
    """benchmarks/torch_reference.py builds the same heads as the task modules."""
    import ast
    import pathlib

    from hgmt.tasks import TASKS, heads

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "torch_reference.py"
    tree = ast.parse(path.read_text())
    found = [n.value for n in ast.walk(tree) if isinstance(n, ast.Assign)
             and any(getattr(t, "id", "") == "TASK_CHANNELS" for t in n.targets)]
    assert len(found) == 1
    assert eval(compile(ast.Expression(found[0]), str(path), "eval")) == heads(tuple(TASKS))
