"""Configs: task parsing, validation at load, the documented fields."""

import pytest

from configs import default, demo


def test_default_tasks_and_runlocal():
    c = default.get_config("tasks=segm+pose2d,runlocal")
    assert c.tasks == "pose2d+segm"
    assert set(c.loss_weights) == {"pose2d", "segm"}
    assert c.model.num_stacks == 1 and c.image_size == 64
    full = default.get_config()
    assert full.tasks == "pose2d+pose3d+depth+segm" and full.model.features == 256
    for field in ("dataset", "data_dir", "batch_size", "total_steps", "checkpoint_every",
                  "seed"):
        assert field in full
    assert full.model.dtype == "float32" and full.optimizer.name == "rmsprop"


def test_unknown_task_lists_valid_ones():
    with pytest.raises(ValueError, match="pose2d, pose3d, depth, segm"):
        default.get_config("tasks=pose2d+normals")


def test_unknown_argument_and_field_are_errors():
    with pytest.raises(ValueError, match="unknown config argument 'task'.*interaction"):
        default.get_config("task=pose2d")
    with pytest.raises(ValueError, match="config argument 'tasks' given twice; give it once"):
        default.get_config("tasks=pose2d,tasks=segm")  # before: segm, silently
    c = default.get_config()
    with pytest.raises(AttributeError):
        c.batchsize = 3  # locked: typos do not silently add fields
    with pytest.raises(AttributeError):
        c.model.stacks = 3


def test_boolean_arguments_parse_strictly():
    assert default.get_config("tasks=pose2d,runlocal=false").image_size == 256
    assert default.get_config("tasks=pose2d,runlocal=False").image_size == 256
    assert default.get_config("tasks=pose2d,runlocal=true").image_size == 64
    assert default.get_config("tasks=pose2d,runlocal").image_size == 64
    with pytest.raises(ValueError, match="runlocal='maybe': give runlocal, runlocal=true"):
        default.get_config("runlocal=maybe")
    with pytest.raises(ValueError, match="'tasks' needs a value"):
        default.get_config("tasks=")


def test_loss_weights_follow_tasks_overridden_on_the_command_line():
    from hgmt.tasks import check_loss_weights

    c = default.get_config()  # built for all four tasks
    c.tasks = "pose2d+segm"  # what --config.tasks=pose2d+segm does
    assert check_loss_weights(c, ("pose2d", "segm")) == {"pose2d": 1000.0, "segm": 1.0}
    c.loss_weights.segm = 2.0
    assert check_loss_weights(c, ("pose2d", "segm"))["segm"] == 2.0
    c.unlock()
    c.loss_weights.normals = 1.0
    with pytest.raises(ValueError, match="^config.loss_weights has normals, which are no "
                                         "tasks; valid: pose2d, "):
        check_loss_weights(c, ("pose2d",))


def test_a_loss_setting_for_a_task_not_trained_is_warned_about(caplog):
    """`--config.tasks=pose2d` on a config built for all four keeps the others' weights and
    options: at their defaults nothing is said; set away from them (a weight meant for a
    task left out by mistake), training warns that they have no effect."""
    import logging

    from hgmt.tasks import untrained_settings
    from hgmt.training import config_check

    c = default.get_config("tasks=all,runlocal")
    c.tasks = "pose2d"
    assert untrained_settings(c, ("pose2d",)) == []
    c.loss_weights.segm = 5.0
    c.loss_options.depth.foreground_weight = 10.0
    assert untrained_settings(c, ("pose2d",)) == ["loss_weights.segm=5.0",
                                                   "loss_options.depth.foreground_weight=10.0"]
    assert untrained_settings(c, ("pose2d", "segm", "depth")) == []
    with caplog.at_level(logging.WARNING):
        config_check.check_config(c, on_devices=False)
    assert ("config.loss_weights.segm=5.0, config.loss_options.depth.foreground_weight=10.0: "
            "set for a task not trained (config.tasks=pose2d), so without effect") in caplog.text


def test_loss_options_default_to_the_reference_and_reject_unknown_names():
    from hgmt.tasks import check_loss_options

    c = default.get_config()
    assert c.loss_options.to_dict() == {"depth": {"foreground_weight": 1.0},
                                        "segm": {"foreground_weight": 1.0}}
    assert check_loss_options(c, ("pose2d", "depth")) == {
        "pose2d": {}, "depth": {"foreground_weight": 1.0}}
    c.loss_options.depth.foreground_weight = 10.0
    assert check_loss_options(c, ("depth",)) == {"depth": {"foreground_weight": 10.0}}
    assert default.get_config("tasks=pose2d+pose3d").loss_options.to_dict() == {}
    # a config saved before the field existed trains and evaluates with the defaults
    old = c.to_dict()
    del old["loss_options"]
    import ml_collections
    assert check_loss_options(ml_collections.ConfigDict(old), ("depth",)) == {
        "depth": {"foreground_weight": 1.0}}
    c.unlock()
    c.loss_options.depth.fg_weight = 2.0
    with pytest.raises(ValueError, match=r"loss_options.depth has fg_weight, which depth's "
                                         r"loss does not take; valid: foreground_weight$"):
        check_loss_options(c, ("depth",))
    del c.loss_options.depth["fg_weight"]
    c.loss_options.normals = {"x": 1.0}
    with pytest.raises(ValueError, match="^config.loss_options has normals, which are no "
                                         "tasks; valid: pose2d, "):
        check_loss_options(c, ("depth",))


def test_demo_config():
    c = demo.get_config()
    assert c.dataset == "surreal/all" and c.demo.clips_per_split > 0
    assert demo.get_config("tasks=depth").tasks == "depth"
    # the demo weights the depth and segmentation losses' foreground; the paper's setting
    # keeps SURREAL's losses
    assert c.loss_options.to_dict() == {"depth": {"foreground_weight": 10.0},
                                        "segm": {"foreground_weight": 10.0}}
    assert default.get_config().loss_options.to_dict() == {
        "depth": {"foreground_weight": 1.0}, "segm": {"foreground_weight": 1.0}}
    assert demo.get_config("tasks=pose2d").loss_options.to_dict() == {}


def test_study_and_learning_configs():
    """configs/study.py is locked and evaluates 240 test frames; configs/learning.py is the
    study's model and data with curves every eval_every steps."""
    from configs import learning, study

    assert study.get_config().loss_options.to_dict() == {
        "depth": {"foreground_weight": 1.0}, "segm": {"foreground_weight": 1.0}}
    c = study.get_config("tasks=pose2d+segm")
    assert c.tasks == "pose2d+segm" and c.evals.test.frames == "every4" and c.image_size == 128
    with pytest.raises(AttributeError):
        c.typo = 1
    b = learning.get_config("tasks=pose2d+segm,train_frames=every4")
    for key in ("data_dir", "image_size", "batch_size", "model", "optimizer", "demo"):
        assert b[key] == c[key], key
    assert (b.total_steps, b.evals.test.every, b.evals.test.frames) == (1800, 300, "every4")
    assert (b.evals.train.split, b.evals.train.frames, b.evals.train.every) == (
        "train", "every4", 300)
    assert "train" not in learning.get_config()["evals"]
    # A curve needs steps and points along them (before: eval_every=0 built the demo data
    # and trained a run whose test evaluation ran once, at the end).
    for arg in ("steps=0", "eval_every=0", "eval_every=-5"):
        with pytest.raises(ValueError, match=rf"^config argument {arg}: give at least 1$"):
            learning.get_config(arg)


def test_an_empty_string_argument_is_its_documented_none():
    """configs/learning.py documents `train_frames=` '' as none: given empty it evaluates no
    training frames, as when not given; an argument whose default is not '' still needs a
    value, and a number that does not parse names the argument."""
    from configs import learning

    c = learning.get_config("tasks=pose2d,train_frames=")
    assert c.tasks == "pose2d" and "train" not in c.evals and c.total_steps == 1800
    assert learning.get_config("train_frames=,steps=7").total_steps == 7
    with pytest.raises(ValueError, match="'steps' needs a value"):
        learning.get_config("steps=")
    with pytest.raises(ValueError, match=r"^config argument steps='many': give steps=<int>, "
                                         r"e\.g\. steps=1800$"):
        learning.get_config("steps=many")


def test_evaluator_config_has_the_fields_the_trainer_checks():
    from configs.common import evaluator_config
    from hgmt.training import eval_settings

    assert sorted(evaluator_config()) == sorted(eval_settings.FIELDS)


def test_an_evaluator_with_a_field_missing_or_unknown_names_only_what_is_wrong():
    """A field missing or one unknown: the line names those there are, no empty list."""
    from hgmt.training import eval_settings

    config = demo.get_config()
    with config.unlocked():
        del config.evals.test["flip"]
    with pytest.raises(ValueError) as e:
        eval_settings.check_evals(config, {"pose2d": 1.0})
    assert str(e.value).startswith("config.evals.test: missing flip; an evaluator has exactly ")
    with config.unlocked():
        config.evals.test.flip = False
        config.evals.test.flips = True
    with pytest.raises(ValueError) as e:
        eval_settings.check_evals(config, {"pose2d": 1.0})
    assert str(e.value).startswith("config.evals.test: unknown field(s) flips; an evaluator ")


def test_the_default_evaluation_settings_are_the_same_in_the_config_and_the_evaluator():
    """The test protocol's settings, written in configs/common.py's signature (for the reader
    of a config) and in the Evaluator's, are DEFAULT_SETTINGS, which an older config without
    a test evaluator is evaluated with."""
    import inspect

    from configs.common import evaluator_config
    from hgmt.evaluation import evaluator

    assert {k: evaluator_config()[k] for k in evaluator.SETTINGS} == evaluator.DEFAULT_SETTINGS
    signature = inspect.signature(evaluator.Evaluator).parameters
    assert {k: signature[k].default for k in evaluator.SETTINGS} == evaluator.DEFAULT_SETTINGS


@pytest.mark.parametrize("name,arg", [("default", "tasks=all"), ("default", "runlocal"),
                                      ("demo", "tasks=all"), ("study", "tasks=pose2d"),
                                      ("learning", "tasks=all"),
                                      ("reference", "code=surreal,tasks=depth"),
                                      ("reference", "code=bodynet,tasks=pose3d")])
def test_a_shipped_config_trains_without_a_warning(name, arg, caplog):
    """The trainer's config check warns of settings that run but are likely mistakes; the
    configs hgmt ships give none (the README's demo warned on every run that its validation
    evaluator's best_metric kept no checkpoint)."""
    import importlib
    import logging

    from hgmt.training import config_check

    config = importlib.import_module(f"configs.{name}").get_config(arg)
    with caplog.at_level(logging.WARNING):
        config_check.check_config(config, warn=True, on_devices=False)
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("code, tasks", [("surreal", "segm"), ("surreal", "depth"),
                                         ("bodynet", "pose2d"), ("bodynet", "pose3d"),
                                         ("bodynet", "segm"), ("bodynet", "depth")])
def test_reference_configs_hold_the_reference_codes_settings(code, tasks):
    """configs/reference.py: the settings its docstring cites from each reference's code (stacks
    and batch from opts.lua, and from the cmu scripts for BodyNet's segm and 3D pose; steps =
    epochs x 2000 batches; RMSprop at a constant 1e-3, the references' losses, every frame,
    256 px, the augmentation each code uses), tested under the code's protocol on every test
    clip's middle frame, and valid for the trainer."""
    from configs import reference
    from hgmt.data.augment import Augment
    from hgmt.training import config_check

    c = reference.get_config(f"code={code},tasks={tasks}")
    stacks, steps = {"surreal": (8, 60_000), "bodynet": (2, 200_000)}[code]
    batch = 4 if code == "bodynet" and tasks in ("pose2d", "depth") else 6  # scripts: segm, 3D
    assert (c.tasks, c.model.num_stacks, c.batch_size, c.total_steps) == (tasks, stacks, batch,
                                                                         steps)
    assert (c.optimizer.name, c.optimizer.learning_rate, c.optimizer.schedule,
            c.optimizer.warmup_steps) == ("rmsprop", 1e-3, "constant", 0)
    assert (c.dataset, c.image_size, c.model.shared_trunk) == ("surreal/all", 256, False)
    assert c.eval_batch_size % c.batch_size == 0  # splits wherever the training batch does
    assert all(v == 1.0 for o in c.loss_options.values() for v in o.values())
    test = c.evals.test
    assert (test.protocol, test.frames, test.max_examples, test.at_end) == (code, "middle", 0,
                                                                            True)
    augment = Augment.from_config(c.augment)
    expected = {("surreal", "segm"): Augment(flip_p=0.0), ("surreal", "depth"): Augment(
        flip_p=0.0), ("bodynet", "pose3d"): Augment(scale_sigma=0.0, rotate_p=0.0, flip_p=0.0)}
    assert augment == expected.get((code, tasks), Augment())
    config_check.check_config(c, on_devices=False)
    with pytest.raises(AttributeError):
        c.typo = 1


def test_reference_configs_refuse_what_the_code_did_not_train(monkeypatch):
    from configs import reference
    from hgmt.tasks import TASKS
    from tests import silhouette_task

    with pytest.raises(ValueError, match=r"^config argument tasks='pose2d': surreal's code "
                                         r"trains each of segm, depth in a network of its "
                                         r"own; give one of them"):
        reference.get_config("code=surreal,tasks=pose2d")
    with pytest.raises(ValueError, match=r"tasks='pose2d\+segm': bodynet's code trains each "
                                         r"of pose2d, pose3d, segm, depth in a network"):
        reference.get_config("code=bodynet,tasks=pose2d+segm")
    # A task hgmt has and BodyNet's code does not train (a fifth task module).
    monkeypatch.setitem(TASKS, "silhouette", silhouette_task)
    with pytest.raises(ValueError, match=r"^config argument tasks='silhouette': bodynet's code "
                                         r"trains each of pose2d, pose3d, segm, depth in a "
                                         r"network of its own"):
        reference.get_config("code=bodynet,tasks=silhouette")
    with pytest.raises(ValueError, match=r"^config argument code='hg': choose one of "
                                         r"bodynet, surreal$"):
        reference.get_config("code=hg")


def test_an_augment_section_of_other_fields_is_named_with_the_expected_ones():
    from hgmt.data.augment import Augment

    with pytest.raises(ValueError, match=r"^config.augment has the fields flip_p, spin; expected "
                                         r"flip_p, gain_max, gain_min, rotate_clip, rotate_p, "
                                         r"rotate_sigma, scale_clip, scale_sigma$"):
        Augment.from_config({"spin": 1.0, "flip_p": 0.5})
