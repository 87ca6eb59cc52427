"""`python -m hgmt.evaluate --step=best` on the test split says when the best checkpoint was
chosen on test clips (SURREAL's val clips are all test clips, docs/surreal_format.md)."""

import logging
import os
import types

import pytest

import hgmt.evaluate
from configs import default

HELD_OUT = ("so this test figure is not fully held out. For a held-out figure, evaluate the "
            "last step (no --step), or train with the best checkpoint chosen on a held-out "
            "part of train")


def _config(keeper_split="validation", every=2000):
    config = default.get_config("tasks=pose2d")
    config.evals.validation.split = keeper_split
    config.evals.validation.every = every
    return config


def test_the_warning_names_the_choice_and_the_held_out_alternatives():
    warning = hgmt.evaluate.best_choice_warning
    assert warning(_config(), "test", 6000) == (
        "--step=best: checkpoint 6000 was chosen by config.evals.validation (loss/total) on "
        "split validation, whose clips are all in test (SURREAL's val is a subset of its test "
        f"split), {HELD_OUT}")
    assert warning(_config("test"), "test", 4) == (
        "--step=best: checkpoint 4 was chosen by config.evals.validation (loss/total) on the "
        f"test split itself, {HELD_OUT}")
    assert warning(_config(), "validation", 6000) is None  # not a test figure
    assert warning(_config("train"), "test", 6000) is None  # chosen on clips test lacks
    assert warning(_config(every=0), "test", 6000) is None  # nothing keeps a best checkpoint
    older = {"tasks": "pose2d", "eval_split": "validation", "eval_every": 300,
             "best_metric": "pose2d/pckh@0.5"}  # a config written before config.evals
    assert warning(types.SimpleNamespace(get=older.get), "test", 9).startswith(
        "--step=best: checkpoint 9 was chosen by config.evals.validation (pose2d/pckh@0.5) on "
        "split validation")


@pytest.mark.parametrize("step_arg, split, warned", [("best", "test", True),
                                                     (600, "test", False),
                                                     ("best", "validation", False)])
def test_the_command_warns_once_on_the_test_split_at_the_best_checkpoint(
        step_arg, split, warned, monkeypatch, tmp_path, caplog):
    """The command's run, its checkpoint and evaluation stubbed: one warning line, before the
    evaluation, exactly when it evaluates test at the best checkpoint chosen on validation."""
    config = _config()
    calls = []
    monkeypatch.setattr(hgmt.evaluate.trained_model, "restore_for_inference",
                        lambda workdir, step, config_arg: (config, {}, 600))

    def evaluate(*args, **kwargs):
        calls.append([r.getMessage() for r in caplog.records])
        return {}
    monkeypatch.setattr(hgmt.evaluate.evaluator, "evaluate", evaluate)
    monkeypatch.setattr(hgmt.evaluate.report_files, "write_report", lambda summary, out: [])
    monkeypatch.setattr(hgmt.evaluate.markdown, "to_markdown", lambda summary: "")
    (tmp_path / "config.json").write_text(config.to_json())  # the workdir's trained size
    args = types.SimpleNamespace(workdir=str(tmp_path), config=config, split=split,
                                 frames=None, flip=None, max_examples=None, protocol="hgmt",
                                 out_file=None, verbosity=0, compilation_cache="")
    with caplog.at_level(logging.WARNING):
        assert hgmt.evaluate._run(args, step_arg) == 0
    expected = [hgmt.evaluate.best_choice_warning(config, "test", 600)] if warned else []
    assert calls == [expected]
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == expected


def test_a_reference_protocol_is_checked_as_asked_at_the_models_label_size(tmp_path):
    """A 128 px run whose config names evals.test.protocol='bodynet': hgmt.evaluate with
    --protocol=hgmt does not refuse its config (it goes on to look for a checkpoint), and with
    --protocol=bodynet it stops in one line naming config.image_size and --protocol=hgmt,
    before any checkpoint is read (the workdir has none); without --protocol, the config's
    protocol is named as where it came from."""
    from hgmt import run_config

    config = default.get_config("tasks=pose2d")
    config.image_size = 128
    config.evals.test.protocol = "bodynet"
    run_config.save_config(config, str(tmp_path))
    with pytest.raises(SystemExit) as stop:
        hgmt.evaluate.main([f"--workdir={tmp_path}", "--protocol=bodynet"])
    assert stop.value.code == (  # printed as the one line, exit status 1
        "error: ValueError: --protocol=bodynet: measures 64x64 label maps, as its reference "
        "code does (config.image_size=256), but config.image_size=128 gives 32x32; evaluate "
        "this model with --protocol=hgmt, or train one with --config.image_size=256 for the "
        "reference protocols")
    with pytest.raises(SystemExit) as stop:  # the protocol taken from the config: named so
        hgmt.evaluate.main([f"--workdir={tmp_path}"])
    assert str(stop.value.code).startswith(
        "error: ValueError: config.evals.test.protocol='bodynet' (--protocol's default): "
        "measures 64x64 label maps"), stop.value.code
    assert str(stop.value.code).endswith("evaluate this model with --protocol=hgmt, or train "
                                         "one with --config.image_size=256 for the reference "
                                         "protocols")
    with pytest.raises(SystemExit) as stop:
        hgmt.evaluate.main([f"--workdir={tmp_path}", "--protocol=hgmt"])
    assert "measures 64x64" not in str(stop.value.code)
    assert "checkpoint" in str(stop.value.code), stop.value.code


def test_an_out_file_that_is_a_folder_or_markdown_is_refused_before_any_work(tmp_path):
    """--out_file naming a folder (the JSON's rename would fail after the whole evaluation)
    or a .md name (the JSON would replace the Markdown written beside it as <stem>.md): one
    line naming the file and the fix, before a checkpoint is read (the workdir has none),
    nothing written."""
    from hgmt import disk_space, run_config
    from hgmt.evaluation import report_files

    run_config.save_config(default.get_config("tasks=pose2d"), str(tmp_path))
    folder = tmp_path / "results"
    folder.mkdir()
    before = sorted(os.listdir(tmp_path))
    for out, message in [
            (folder, f"error: ValueError: --out_file={folder}: is a folder; give a file name in "
                     f"it, e.g. {folder}/eval_test.json"),
            (tmp_path / "eval.md", f"error: ValueError: --out_file={tmp_path}/eval.md: give the "
                                   f"JSON's file name (e.g. eval.json); the Markdown is written "
                                   f"beside it as <stem>.md")]:
        with pytest.raises(SystemExit) as stop:
            hgmt.evaluate.main([f"--workdir={tmp_path}", f"--out_file={out}"])
        assert stop.value.code == message
    assert sorted(os.listdir(tmp_path)) == before and not os.listdir(folder)
    # A file written atomically onto a folder fails without leaving its temporary behind.
    with pytest.raises(IsADirectoryError):
        disk_space.write_atomically(str(folder), lambda f: f.write("{}"))
    assert sorted(os.listdir(tmp_path)) == before
    with pytest.raises(ValueError, match="is a folder"):
        report_files.write_report({}, str(folder))
