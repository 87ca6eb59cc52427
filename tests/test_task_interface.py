"""A task is one module plus one entry in `hgmt.tasks.TASKS`: a fifth task (the silhouette of
tests/silhouette_task.py) trains, evaluates, reports and predicts with no other change."""

import json
import os

import cv2
import numpy as np
import pytest

import hgmt.predict
import hgmt.report
from hgmt.data import input_pipeline
from hgmt.evaluation import evaluator
from hgmt.tasks import TASKS, all_subsets, parse_tasks
from hgmt.training import loop
from tests import silhouette_task
from tests.conftest import tiny_config


@pytest.fixture
def with_silhouette(monkeypatch):
    monkeypatch.setitem(TASKS, "silhouette", silhouette_task)


def test_a_fifth_task_trains_evaluates_reports_and_predicts(with_silhouette, demo_dataset,
                                                            tmp_path, capsys):
    assert parse_tasks("all")[-1] == "silhouette" and len(all_subsets()) == 31
    # Its labels come from its own module; a pose2d-only crop does not carry them.
    source = input_pipeline.open_split("surreal/all", demo_dataset[1], "test")
    example = input_pipeline.crop_example(source[0], 64, input_pipeline.Augment.none(),
                                          tasks=("silhouette",))
    assert set(example) == {"image", "crop", "silhouette"}
    assert example["silhouette"].shape == (16, 16) and 0 < example["silhouette"].sum() < 256
    assert "silhouette" not in input_pipeline.crop_example(
        source[0], 64, input_pipeline.Augment.none(), tasks=("pose2d",))

    # Train two subsets as a sweep would (the isolated task and one with pose2d), evaluate.
    sweep = tmp_path / "sweep"
    for tasks in ("silhouette", "pose2d+silhouette"):
        workdir = str(sweep / tasks)
        config = tiny_config(demo_dataset[1], tasks=tasks, total_steps=2)
        summary = loop.train_and_evaluate(config, workdir)
        assert 0.0 <= summary["silhouette"]["iou"] <= 1.0
        assert summary["silhouette"]["protocol"] == "hgmt"
        assert "silhouette/iou" in evaluator.headline(summary)
        assert "| silhouette/iou |" in evaluator.to_markdown(summary)
        evaluator.write_report(summary, os.path.join(workdir, "eval_test.json"))

    # The study compares it like any task.
    assert hgmt.report.main([f"--sweep={sweep}", f"--out={tmp_path / 'report'}"]) == 0
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
                              f"--out={out}"]) == 0
    with open(out / "grey.json") as f:
        result = json.load(f)
    assert result["tasks"] == ["pose2d", "silhouette"]
    assert np.asarray(result["silhouette"]).shape == (16, 16)
    panel = cv2.imread(str(out / "grey.png"))
    assert panel.shape[1] == 3 * panel.shape[0]  # the input, pose2d's picture, the silhouette's
