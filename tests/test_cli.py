"""The command-line convention of every entry point (hgmt.cli): `--help` lists the command's
flags and exits 0, an unknown flag exits non-zero naming it, `main` is run as
`sys.exit(main())`, and a flag name means one thing in every command (`--out_dir` a directory,
`--out_file` a file, `--sweep_dir` the sweep, `--frames` the frame selector)."""

import glob
import importlib
import logging
import os
import re
import sys

import pytest

from tests.conftest import HAS_TORCH, torch_marked, uses_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Each entry point (a module name, or a script's path) with flags its --help must list,
# written out by hand: a renamed or dropped flag fails here.
ENTRY_POINTS = {
    "hgmt.main": ["config", "workdir", "distributed", "compilation_cache", "verbosity",
                  "resume_with_changed_config"],
    "hgmt.evaluate": ["workdir", "step", "split", "frames", "max_examples", "flip",
                      "protocol", "out_file", "verbosity", "config", "compilation_cache"],
    "hgmt.predict": ["workdir", "step", "out_dir", "bbox", "verbosity", "config",
                     "compilation_cache"],
    "hgmt.export": ["workdir", "step", "format", "out_dir", "verbosity", "config"],
    "hgmt.report": ["sweep_dir", "out_dir", "note", "note_file", "protocol", "check_config"],
    "hgmt.models.summary": ["config", "all_subsets", "json"],
    "hgmt.data.check": ["config", "splits"],
    "hgmt.sources.synthetic": ["out_dir", "clips_per_split", "frames_per_clip", "seed",
                               "zrot_max_deg"],
    "launch/sweep.py": ["sweep_dir", "config", "tasks", "protocols", "seeds", "print_only",
                        "sbatch", "resume_with_changed_config"],
    "benchmarks/train_step.py": ["config", "steps", "warmup", "devices", "feed"],
    "benchmarks/compile_and_load.py": ["config", "cache", "steps"],
    "benchmarks/train_loop.py": ["config", "steps", "warmup", "repeats"],
    "benchmarks/trainer_speed.py": ["config", "workdir", "bare", "compilation_cache"],
    "benchmarks/profile_step.py": ["config", "steps", "warmup", "trace_dir", "feed"],
    "benchmarks/torch_reference.py": ["config", "steps", "warmup", "compile"],
    "benchmarks/profile_torch.py": ["config", "steps", "warmup"],
    "benchmarks/compare.py": ["config", "variants", "repeats", "jax_devices", "from_lines"],
    "benchmarks/host_check.py": ["require_accelerator"],
    "benchmarks/device_tests.py": [],
    "benchmarks/input_pipeline.py": ["config", "batches", "train_img_per_s", "placements",
                                     "repeats"],
    "benchmarks/input_stages.py": ["config", "examples"],
    "benchmarks/eval_speed.py": ["config", "split", "frames", "max_examples", "rounds"],
    "benchmarks/build_throughput.py": ["clips_per_split", "frames_per_clip", "beam_workers"],
    "benchmarks/synthetic_throughput.py": ["clips_per_split", "frames_per_clip"],
    "benchmarks/stream_modes.py": ["modes", "task_sets", "rounds"],
    "benchmarks/step_levers.py": ["levers", "timeout_s"],
    "benchmarks/stream_convs.py": ["shape", "im2col", "rounds"],
    "benchmarks/pool_backward.py": ["config", "steps", "warmup", "rounds"],
    "benchmarks/device_warp.py": ["config", "steps", "warmup", "rounds"],
    "benchmarks/step_dispatch.py": ["config", "processes", "calls", "repeats", "warmup"],
    "experiments/depth_errors.py": ["workdir", "step", "frames", "config"],
    "experiments/depth_baselines.py": ["clips", "frames"],
    "experiments/limb_depth.py": ["clips"],
    "experiments/window_scale.py": ["config", "clips", "demo"],
    "experiments/learning_curves.py": ["workdir", "out_dir"],
}
# Commands on a trained workdir read its config.json before they parse their flags.
ON_A_WORKDIR = ("hgmt.evaluate", "hgmt.predict", "hgmt.export", "experiments/depth_errors.py")
# What a shared flag name means, as its help text must say it.
MEANINGS = {"out_dir": "director", "out_file": "path", "sweep_dir": "sweep director",
            "frames": "everyK", "workdir": "workdir"}


def load(entry: str):
    """The module of an entry point: `hgmt.x` by name, a script by path (its folder first on
    sys.path, as when it runs)."""
    if not entry.endswith(".py"):
        return importlib.import_module(entry)
    folder, name = os.path.split(entry[:-3])
    if os.path.isfile(os.path.join(REPO, folder, "__init__.py")):
        return importlib.import_module(f"{folder}.{name}")
    path = os.path.join(REPO, folder)
    if path not in sys.path:
        sys.path.insert(0, path)
    return importlib.import_module(name)


def help_flags(text: str) -> dict[str, str]:
    """absl's --help text -> {flag: kind} of the command's own flags (absl's --flagfile and
    --undefok left out); kind: bool, integer, number, enum, list or string."""
    found: dict[str, str] = {}
    name = None
    for line in text.splitlines():
        m = re.match(r"  --(\[no\])?([\w.]+): ?(.*)", line)
        if m:
            name = m.group(2)
            rest = m.group(3)
            found[name] = ("bool" if m.group(1) else "enum" if rest.startswith("<") else
                           "string")
        elif name and line.startswith("    "):
            for phrase, kind in (("integer", "integer"), ("(a number", "number"),
                                 ("repeat this option", "list"),
                                 ("comma separated list", "list")):
                if phrase in line:
                    found[name] = kind
        if line and not line.startswith(" "):
            name = None
    for absl_own in ("flagfile", "undefok"):
        found.pop(absl_own, None)
    return found


def help_text(entry: str, capsys) -> str:
    with pytest.raises(SystemExit) as e:
        load(entry).main(["--help"])
    assert e.value.code in (0, None), f"{entry} --help exited {e.value.code}"
    return capsys.readouterr().out


@pytest.mark.parametrize("entry", torch_marked(sorted(ENTRY_POINTS)))
def test_help_lists_the_flags_and_exits_0(entry, capsys):
    """--help lists the flags, keeping the docstring's usage lines apart (a shell `\\` ending
    one is written `\\\\` in the docstring: a lone one joins the next line onto it); absl's
    --helpfull prints the same."""
    text = help_text(entry, capsys)
    listed = help_flags(text)
    missing = [f for f in ENTRY_POINTS[entry] if f not in listed]
    assert not missing, f"{entry} --help lacks {missing}; it lists {sorted(listed)}"
    joined = [line for line in text.splitlines() if re.search(r"\S {5,}(\[|--)", line)]
    assert joined == [], f"{entry} --help joins usage lines"
    with pytest.raises(SystemExit) as e:
        load(entry).main(["--helpfull"])
    assert e.value.code in (0, None) and capsys.readouterr().out == text


# The usage line each command on a workdir starts its --help with: its positional inputs and
# the overrides of its workdir's config.
USAGE = {
    "hgmt.evaluate": "usage: python -m hgmt.evaluate --workdir=DIR [--step=N|best]",
    "hgmt.predict": "usage: python -m hgmt.predict --workdir=DIR --out_dir=OUTDIR",
    "hgmt.export": "usage: python -m hgmt.export --workdir=DIR --format=stablehlo",
    "experiments/depth_errors.py": "usage: python3 experiments/depth_errors.py --workdir=",
}


def test_the_trainers_help_starts_with_its_usage_and_exit_statuses(capsys):
    """hgmt.main --help: the usage line first, then the docstring whole (the exit statuses a
    job script branches on), then the flags."""
    text = help_text("hgmt.main", capsys)
    assert text.startswith("usage: python -m hgmt.main --config=configs/default.py:"
                           "tasks=pose2d+segm --workdir=DIR \\\n"), text[:200]
    assert "Exit status 75" in text and "Exit status 69" in text and "--workdir" in text


def test_the_trainers_help_with_a_config_lists_its_fields_with_their_values(
        capsys, tmp_path, monkeypatch):
    """hgmt.main --config=FILE --help lists the file's fields with their values, its
    overrides applied, before the flags, asking for no --workdir, and names the file read
    (hgmt's own configs/demo.py from a folder without one); a config that does not read says
    why, in the line the run would stop with, and the help goes on (exit 0)."""
    import hgmt.main

    monkeypatch.chdir(tmp_path)

    def help_of(*args):
        with pytest.raises(SystemExit) as e:
            hgmt.main.main([*args, "--help"])
        assert e.value.code in (0, None)
        return capsys.readouterr().out

    text = help_of("--config=configs/demo.py", "--config.batch_size=8")
    head = f"The fields of --config={REPO}/configs/demo.py, with their values:\n"
    fields = text[text.index(head):]
    assert "  --config.batch_size: 8\n" in fields
    assert "  --config.tasks: 'pose2d+pose3d+depth+segm'\n" in fields
    assert fields.index("--config.batch_size:") < fields.index("--workdir")
    text = help_of("--config=configs/demo.py", "--config.batch_sze=8")
    assert ("(the config's fields are not listed: --config.batch_sze: the config has no field "
            "'batch_sze' (its fields: augment, ") in text
    assert "--workdir" in text and "The fields of" not in text
    text = help_of()  # hgmt.main has no default config: how to list one's fields
    assert "The fields of" not in text
    assert ("(--config=FILE --help lists the fields of a config file with their values, e.g. "
            "--config=configs/default.py --help)\n") in text
    # The forms absl takes: `--config FILE`, `--config.x VALUE`, `--noconfig.x`; and --help
    # goes on where a run would stop (an override without --config, a config.json).
    text = help_of("--config", "configs/default.py:tasks=pose2d", "--config.total_steps", "5",
                   "--config.model.shared_trunk", "--noconfig.model.shared_trunk")
    assert "  --config.total_steps: 5\n" in text
    assert "  --config.model.shared_trunk: False\n" in text
    assert "--workdir" in help_of("--config.total_steps=3")
    assert ("(the config's fields are not listed: --config=W/config.json: a config file is "
            "Python") in help_of("--config=W/config.json")


def test_a_commands_help_without_config_lists_its_default_configs_fields(capsys):
    """A command with a default config (hgmt.data.check: configs/default.py) lists that
    config's fields with their values, its overrides applied, where --help without --config
    listed none."""
    with pytest.raises(SystemExit) as e:
        load("hgmt.data.check").main(["--help", "--config.batch_size=8"])
    assert e.value.code in (0, None)
    text = capsys.readouterr().out
    head = f"The fields of the default --config={REPO}/configs/default.py, with their values:\n"
    fields = text[text.index(head):]
    assert "  --config.batch_size: 8\n" in fields
    assert "  --config.dataset: 'surreal/every10'\n" in fields
    assert fields.index("--config.batch_size:") < fields.index("--splits")


@pytest.mark.parametrize("override, message", [
    ("--config.model.features=-3", "config.model.features=-3: must be an integer >= 2"),
    ("--config.tasks=foo", "config.tasks='foo': unknown task(s) foo; choose a non-empty "
                          "subset of"),
    ("--config.model.dtype=fp8", "config.model.dtype='fp8': choose one of"),
])
def test_the_model_summary_refuses_a_bad_config_value_in_one_line(override, message):
    """hgmt.models.summary ends a config value the model cannot take in hgmt.main's one
    line, not a traceback."""
    import hgmt.models.summary

    with pytest.raises(SystemExit) as e:
        hgmt.models.summary.main([f"--config={REPO}/configs/default.py", override])
    assert str(e.value.code).startswith(f"error: ValueError: {message}")


def test_ctrl_c_ends_the_model_summary_in_one_line():
    """Ctrl-C while `python -m hgmt.models.summary` builds and counts the model: one line and
    the shell's status 130 (`stops.stops_in_one_line`), not Python's traceback."""
    from tests.conftest import interrupted_command

    proc = interrupted_command("hgmt.models.summary", "_run",
                               ["--config=configs/default.py:tasks=pose2d"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130, "", "interrupted (Ctrl-C); nothing partial was left behind\n")


@pytest.mark.parametrize("entry, args, message", [
    # A training command line's --config copied onto a workdir command.
    ("hgmt.evaluate", ["--workdir=W", "--config=configs/default.py:tasks=pose2d"],
     "error: --config=configs/default.py:tasks=pose2d: this command reads the config the "
     "workdir was trained with (<workdir>/config.json); drop --config, and override its "
     "fields with --config.<field>=<value>"),
    # An override with its --config forgotten (absl: "Unknown command line flag").
    ("hgmt.main", ["--workdir=W", "--config.batch_size=4"],
     "error: --config.batch_size=4 overrides a field of --config, which is not given; add "
     "--config=FILE[:ARG] (e.g. configs/default.py:tasks=all)"),
    # A workdir's config.json given as the config file (the file raised NameError: 'false').
    ("hgmt.main", ["--workdir=W", "--config=W/config.json"],
     "error: --config=W/config.json: a config file is Python with get_config() "
     "(configs/*.py); a workdir's config.json is what hgmt.evaluate, hgmt.predict and "
     "hgmt.export read from --workdir; to train on in a workdir, give the config file it was "
     "trained with"),
    # absl's own wordings, as hgmt words its errors.
    ("hgmt.main", ["--config=configs/demo.py"],
     "error: --workdir is required: The training workdir: checkpoints, summaries and results "
     "go there. (--help lists the flags)"),
    ("hgmt.main", ["--config=configs/demo.py", "--wrkdir=W"],
     "error: --wrkdir: no such flag; did you mean --workdir? (--help lists the flags)"),
    ("hgmt.main", ["--config=configs/demo.py", "--workdir=W", "--config.model.shared_trunk=maybe"],
     "error: --config.model.shared_trunk=maybe: give true or false (--help lists the flags)"),
    # absl's unworded ValueError, a traceback before.
    ("hgmt.main", ["--config=configs/demo.py", "--workdir=W", "--noconfig.model.shared_trunk=yes"],
     "error: --noconfig.model.shared_trunk=yes: takes no value; "
     "give --noconfig.model.shared_trunk for false, or --config.model.shared_trunk=true or "
     "false (--help lists the flags)"),
])
def test_common_command_line_mistakes_are_one_line_naming_the_fix(entry, args, message,
                                                                   tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # configs/demo.py: hgmt's own; W: nothing is made there
    with pytest.raises(SystemExit) as e:
        load(entry).main(args)
    assert e.value.code == message
    assert os.listdir(tmp_path) == []


def test_the_reports_help_starts_with_its_usage(capsys):
    text = help_text("hgmt.report", capsys)
    assert text.startswith("usage: python -m hgmt.report --sweep_dir=runs/sweep "
                           "--out_dir=docs/study \\\n"), text[:200]
    assert "--check_config" in text.split("\n\n")[0]  # both command lines


@pytest.mark.parametrize("entry", ON_A_WORKDIR)
def test_a_workdir_commands_help_starts_with_its_usage_and_names_the_config_fields(
        entry, saved_workdir, capsys):
    """Its usage first, naming the positional inputs (hgmt.predict's image and video files)
    and the `--config.<field>=<value>` overrides; with --workdir, the fields of its config.json
    with their values, exit 0, before any checkpoint is looked for."""
    text = help_text(entry, capsys)
    usage = text.split("\n\n", 1)[0]
    assert usage.startswith(USAGE[entry]), usage
    assert "[--config.<field>=<value> ...]" in usage, usage
    assert usage.endswith("IMAGE_OR_VIDEO [IMAGE_OR_VIDEO ...]") == (entry == "hgmt.predict")
    assert ("  --config: the workdir's training config (<workdir>/config.json), read from\n"
            "    --workdir; --config.<field>=<value> overrides a field of it") in text
    with pytest.raises(SystemExit) as e:
        load(entry).main([f"--workdir={saved_workdir}", "--help"])
    assert e.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"The fields of {saved_workdir}'s config:" in lines
    for line in ("  --config.data_dir: '~/tensorflow_datasets'", "  --config.tasks: 'pose2d'",
                 "  --config.model.features: 32", "  --config.loss_weights.pose2d: 1000.0",
                 "  --config.evals.test.frames: 'middle'"):
        assert line in lines, line


@pytest.mark.parametrize("entry", ON_A_WORKDIR)
def test_a_workdir_commands_help_reads_no_bucket_and_says_why_a_config_does_not_read(
        entry, tmp_path, capsys):
    """--help with a workdir in an object store lists no fields and touches no network; with
    a config.json that does not read (not JSON here), it says why; both exit 0."""
    with pytest.raises(SystemExit) as e:
        load(entry).main(["--workdir=gs://no-such-bucket-hgmt/run", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert ("(--workdir=gs://no-such-bucket-hgmt/run: the fields of a workdir in an object "
            "store are not listed; its config.json has them)") in out
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SystemExit) as e:
        load(entry).main([f"--workdir={tmp_path}", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert f"    (--workdir={tmp_path}: " in out and "The fields of" not in out


def test_the_compilation_cache_help_says_who_writes_it_and_to_keep_jobs_apart(capsys):
    """As docs/training.md says: process 0 alone writes, concurrent jobs use their own
    node-local folders (a shared one is written without a lock)."""
    text = help_text("hgmt.main", capsys)
    block = " ".join(text.split("--compilation_cache:", 1)[1].split("\n  --", 1)[0].split())
    assert "In a multi-process run only process 0 writes to it and the others compile every " \
           "program on every run." in block, block
    assert "should each give their own node-local folder" in block, block
    assert "A shared path serves every host" not in block


def test_evaluates_help_says_its_frames_are_the_test_evaluators(capsys):
    text = help_text("hgmt.evaluate", capsys)
    assert "middle frame of each clip" not in text
    assert ("Evaluate a checkpoint of a training workdir on a split of its dataset: by default "
            "on the\nframes, number of examples, flip setting and metric protocol of its training "
            "config's test\nevaluator.") in text


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory):
    """A workdir holding only config.json: enough for a command to parse its flags."""
    from configs import default
    from hgmt import run_config

    workdir = str(tmp_path_factory.mktemp("workdir"))
    run_config.save_config(default.get_config("tasks=pose2d,runlocal"), workdir)
    return workdir


@pytest.mark.parametrize("entry", torch_marked(sorted(ENTRY_POINTS)))
def test_an_unknown_flag_exits_non_zero_naming_it(entry, saved_workdir):
    argv = ["--no_such_flag=1"]
    if entry in ON_A_WORKDIR:
        argv.insert(0, f"--workdir={saved_workdir}")
    with pytest.raises(SystemExit) as e:
        load(entry).main(argv)
    assert e.value.code not in (0, None)
    assert "no_such_flag" in str(e.value.code)


def test_every_entry_point_is_checked_and_exits_with_mains_status():
    """Every script of benchmarks/, experiments/ and launch/ and every `python -m` module of
    hgmt is in ENTRY_POINTS, and ends in `sys.exit(main())`."""
    scripts = {os.path.relpath(p, REPO) for d in ("benchmarks", "experiments", "launch")
               for p in glob.glob(os.path.join(REPO, d, "*.py"))}
    modules = {os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "hgmt", "**",
                                                                         "*.py"),
                                                             recursive=True)}
    found = set()
    for path in sorted(scripts | modules):
        with open(os.path.join(REPO, path)) as f:
            source = f.read()
        if '__name__ == "__main__"' not in source:
            continue
        assert 'if __name__ == "__main__":\n    sys.exit(main())\n' in source, path
        assert "argparse" not in source, f"{path}: use hgmt.cli (absl flags), not argparse"
        found.add(path if path in scripts else path[:-3].replace(os.sep, "."))
    assert found == set(ENTRY_POINTS), (f"not checked here: {sorted(found - set(ENTRY_POINTS))}"
                                        f"; gone: {sorted(set(ENTRY_POINTS) - found)}")


def test_a_flag_name_means_one_thing_in_every_command(capsys):
    """The same name has the same kind of value everywhere, and the shared names say what
    they are; no command keeps the names that meant a file here and a directory there."""
    kinds: dict[str, dict[str, str]] = {}
    texts = {}
    for entry in ENTRY_POINTS:
        if not HAS_TORCH and uses_torch(entry):
            continue  # the bench extra's
        texts[entry] = help_text(entry, capsys)
        for name, kind in help_flags(texts[entry]).items():
            kinds.setdefault(name, {})[entry] = kind
    for name, by_entry in kinds.items():
        assert len(set(by_entry.values())) == 1, f"--{name} differs: {by_entry}"
    assert "out" not in kinds and "sweep" not in kinds, "--out / --sweep are ambiguous"
    for name, word in MEANINGS.items():
        for entry in kinds[name]:
            block = texts[entry].split(f"--{name}:", 1)[1].split("\n  --", 1)[0]
            assert word in " ".join(block.split()), f"{entry} --{name}: {block!r}"


def test_an_older_workdirs_config_takes_the_fields_added_since(tmp_path):
    """A config.json written before `model.stream_mode`, `model.ops` and
    `model.batch_norm_stats` existed (as the study's committed runs) reads with their
    defaults, so an evaluation can override them."""
    import json

    from hgmt import cli, workdirs

    old = {"model": {"depth": 4, "dtype": "float32", "features": 64, "interaction": "sum",
                     "num_stacks": 2, "shared_trunk": False}, "tasks": "pose2d"}
    (tmp_path / workdirs.CONFIG_FILE).write_text(json.dumps(old))
    argv = [f"--workdir={tmp_path}", "--config.model.ops=flax"]
    config = cli.workdir_config(argv)
    assert config.model.stream_mode == "auto" and config.model.ops == "auto"
    assert config.model.batch_norm_stats == "global"  # what the code of then did
    fv, _ = cli.parse(cli.define_workdir, argv, "doc", config)
    assert fv.config.model.ops == "flax" and fv.config.model.features == 64


def test_an_older_workdirs_evaluation_fields_are_the_evaluators_they_amount_to(tmp_path):
    """A config.json written before `evals` (the study's committed runs): its `eval_*` fields
    and `best_metric` served validation during training and the test evaluation after it;
    hgmt.evaluate's defaults and `run_config.current_layout` (hgmt.report --check_config) read
    them as those two evaluators."""
    import json

    from hgmt import run_config, workdirs
    from hgmt.evaluation import evaluator

    old = {"model": {"depth": 4}, "tasks": "pose2d", "eval_frames": "every4",
           "eval_max_examples": 24, "eval_split": "validation", "eval_every": 300,
           "best_metric": "pose2d/pckh@0.5"}
    (tmp_path / workdirs.CONFIG_FILE).write_text(json.dumps(old))
    config = run_config.load_config(str(tmp_path))
    shared = {"frames": "every4", "protocol": "hgmt", "flip": False, "max_examples": 24}
    assert evaluator.settings_of(config) == {"split": "test", **shared}
    assert evaluator.settings_of(config, "validation") == {"split": "validation", **shared}
    assert run_config.current_layout(old) == {
        "model": {"depth": 4, "stream_mode": "auto", "ops": "auto",
                  "batch_norm_stats": "global"}, "tasks": "pose2d", "augment_on": "auto",
        "max_damaged_fraction": 0.001, "window": "hgmt",
        "augment": {"scale_sigma": 0.25, "scale_clip": 0.5, "rotate_sigma": 30.0,
                    "rotate_clip": 60.0, "rotate_p": 0.4, "gain_min": 0.6, "gain_max": 1.4,
                    "flip_p": 0.5},
        "evals": {"validation": {"split": "validation", **shared, "every": 300,
                                 "at_end": False, "best_metric": "pose2d/pckh@0.5"},
                  "test": {"split": "test", **shared, "every": 0, "at_end": True,
                           "best_metric": ""}}}
    assert "evals" not in old and old["model"] == {"depth": 4}  # a copy


_CUT_SHORT = ("is empty: its write was cut short (a power loss or crash before its data "
              "reached the disk).")


@pytest.mark.parametrize("text, problem", [
    ("", _CUT_SHORT), ("\x00" * 300, _CUT_SHORT),
    ('{"model": {"dep', "is not a JSON object (not JSON: Unterminated string starting at: "
                      "line 1 column 12): the file was edited or damaged."),
    ("[1, 2]", "is not a JSON object (a JSON list): the file was edited or damaged."),
    ('{"a": "\udcff"}', "is not a JSON object (not UTF-8 text: byte 7): the file was edited or "
                        "damaged.")])
def test_an_empty_or_damaged_config_json_is_one_line_naming_the_file_and_fix(text, problem,
                                                                           tmp_path):
    """A config.json a power loss left empty (or NUL bytes: the file's size kept, its data
    not), cut short or replaced: the commands on a workdir stop in one line naming the file
    and how to write it again."""
    (tmp_path / "config.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    for entry, extra in (("hgmt.evaluate", []), ("hgmt.predict", ["--out_dir=unused", "x.jpg"])):
        with pytest.raises(SystemExit) as e:
            load(entry).main([f"--workdir={tmp_path}", *extra])
        assert str(e.value.code) == (
            f"error: DamagedRunFile: {tmp_path}/config.json {problem} Write it again by "
            f"rerunning the training command of {tmp_path} (python -m hgmt.main --workdir=... "
            f"with the run's --config: it saves config.json as it starts), or put back a "
            f"copy")


@pytest.mark.parametrize("entry, extra", [
    ("hgmt.evaluate", []), ("hgmt.predict", ["--out_dir=unused", "photo.jpg"]),
    ("hgmt.export", ["--format=stablehlo", "--out_dir=unused"])])
def test_a_workdir_without_checkpoints_is_one_line_naming_the_fix(entry, extra,
                                                                  saved_workdir):
    """The commands only read the workdir: the refusal leaves it as it was (no empty
    checkpoints/ folder made while looking)."""
    before = sorted(os.listdir(saved_workdir))
    with pytest.raises(SystemExit) as e:
        load(entry).main([f"--workdir={saved_workdir}", *extra])
    assert str(e.value.code).startswith("error: NoCheckpoint: no checkpoint in ")
    assert "train first (python -m hgmt.main" in str(e.value.code)
    assert sorted(os.listdir(saved_workdir)) == before == ["config.json"]
    # A bad model value is named first, in one line too, and so is an image size of no
    # pixels (before: a traceback in hgmt.predict, an exported model of 0 x 0 outputs).
    with pytest.raises(SystemExit) as e:
        load(entry).main([f"--workdir={saved_workdir}", "--config.model.ops=xla", *extra])
    assert str(e.value.code).startswith("error: ValueError: config.model.ops='xla': choose")
    for size in (0, -16):
        with pytest.raises(SystemExit) as e:
            load(entry).main([f"--workdir={saved_workdir}", f"--config.image_size={size}",
                              *extra])
        assert str(e.value.code).startswith(
            f"error: ValueError: config.image_size={size}: not a multiple of 16, as an "
            f"hourglass of config.model.depth=2 needs; give one, e.g. 16"  # runlocal's model
        ), e.value.code
    assert sorted(os.listdir(saved_workdir)) == before


@pytest.mark.parametrize("override, message", [
    ("--config.model.ops=xla", "config.model.ops='xla': choose one of auto, custom"),
    ("--config.augment_on=gpu", "config.augment_on='gpu': choose host"),
    ("--config.model.dtype=float16", "config.model.dtype='float16': choose one of"),
    ("--config.model.batch_norm_stats=local",
     "config.model.batch_norm_stats='local': choose one of global, device"),
    ("--config.worker_count=-3", "config.worker_count=-3: give a count >= 0, or -1"),
    ("--config.keep_checkpoints=0", "config.keep_checkpoints=0 must be at least 1"),
    ("--config.batch_size=0", "config.batch_size=0 must be at least 1"),
    ("--config.image_size=0", "config.image_size=0 must be at least 1"),
    ("--config.optimizer.learning_rate=-1",
     "config.optimizer.learning_rate=-1.0 must be finite and > 0"),
    ("--config.optimizer.learning_rate=inf",
     "config.optimizer.learning_rate=inf must be finite and > 0"),
    ("--config.optimizer.warmup_steps=-10", "config.optimizer.warmup_steps=-10 must be >= 0"),
    ("--config.loss_weights.pose2d=-1", "config.loss_weights.pose2d=-1.0 must be finite and "
                                        ">= 0"),
    ("--config.loss_weights.pose2d=nan", "config.loss_weights.pose2d=nan must be finite and "
                                         ">= 0"),
    ("--config.loss_options.segm.foreground_weight=-1",
     "config.loss_options.segm.foreground_weight=-1.0 must be finite and >= 0"),
    ("--config.eval_batch_size=0", "config.eval_batch_size=0 must be at least 1"),
    ("--config.seed=-1", "config.seed=-1 must be in [0, 2**32)"),
    ("--config.seed=4294967296", "config.seed=4294967296 must be in [0, 2**32)"),
    ("--config.max_damaged_fraction=5", "config.max_damaged_fraction=5.0 must be in [0, 1]"),
    ("--config.augment.flip_p=2", "config.augment.flip_p=2.0: a probability above 1; give "
                                  "one in [0, 1]"),
    ("--config.augment.rotate_sigma=-30", "config.augment.rotate_sigma=-30.0 must be a finite "
                                          "number >= 0"),
    ("--config.augment.gain_max=0.5", "config.augment.gain_min=0.6 and gain_max=0.5 must "
                                      "satisfy 0 < gain_min <= gain_max")])
def test_a_bad_config_value_stops_training_in_one_line_before_touching_the_workdir(
        override, message, saved_workdir):
    """The workdir of an earlier run keeps its config.json: the value is checked before the
    demo data is made or anything is written."""
    path = os.path.join(saved_workdir, "config.json")
    before, files = open(path).read(), sorted(os.listdir(saved_workdir))
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={REPO}/configs/demo.py", override,
                                f"--workdir={saved_workdir}"])
    assert str(e.value.code).startswith(f"error: ValueError: {message}"), e.value.code
    assert open(path).read() == before and sorted(os.listdir(saved_workdir)) == files


@pytest.mark.parametrize("text, problem", [
    ("def get_config(:\n", "does not parse: invalid syntax at line 1"),
    ("raise RuntimeError('no cluster here')\n", "raised RuntimeError: no cluster here (line 1)"),
    ("x = 1\n", "defines no get_config(): a config file returns its ml_collections.ConfigDict "
                "from get_config(arg=None), as configs/default.py does")])
def test_a_config_file_that_does_not_run_is_one_line_naming_it(text, problem, tmp_path,
                                                               monkeypatch):
    """A config file with a syntax error, one that raises as it runs, and one without
    get_config: one line naming the file and what went wrong (before: Python's traceback, or
    for the last "--config has no field module ... has no attribute 'get_config'"), before
    any workdir is made."""
    path = tmp_path / "my_config.py"
    path.write_text(text)
    # ml_collections loads every config file as the module "config_config", into the module
    # object an earlier load in this process left (its get_config too): a fresh one here.
    monkeypatch.delitem(sys.modules, "config_config", raising=False)
    for entry, extra in (("hgmt.main", [f"--workdir={tmp_path / 'w'}"]),
                         ("hgmt.data.check", [])):
        with pytest.raises(SystemExit) as e:
            load(entry).main([f"--config={path}", *extra])
        assert str(e.value.code) == f"error: --config={path}: the config file {problem}"
    assert not (tmp_path / "w").exists()


def test_a_config_file_given_twice_is_one_line(tmp_path):
    """Before: absl's "The flag 'config.total_steps' is defined twice. First from
    absl.flags._flag, ..." (the file's fields defined once per --config)."""
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={DEFAULT}", f"--config={DEFAULT}",
                                "--config.total_steps=3", f"--workdir={tmp_path / 'w'}"])
    assert str(e.value.code) == ("error: --config is given 2 times; give one config file, "
                                 "and override its fields with --config.<field>=<value>")
    assert not (tmp_path / "w").exists()


def test_an_evaluation_batch_below_1_is_refused_and_the_protocol_is_the_configs(
        saved_workdir, monkeypatch):
    """hgmt.evaluate takes the training config's checks: eval_batch_size=-5 is one line
    (before: rounded to 1 and run), and `--protocol` defaults to the config's test
    evaluator's like the other settings (before: a --config.evals.test.protocol override was
    checked, then dropped for hgmt's)."""
    import hgmt.evaluate

    with pytest.raises(SystemExit) as e:
        hgmt.evaluate.main([f"--workdir={saved_workdir}", "--config.eval_batch_size=-5"])
    assert str(e.value.code) == ("error: ValueError: config.eval_batch_size=-5 must be at "
                                 "least 1")
    run = []  # the protocol each evaluation runs under
    monkeypatch.setattr(hgmt.evaluate, "_run", lambda args, step: run.append(args.protocol))
    for given in ([], ["--config.evals.test.protocol=surreal", "--config.image_size=256"],
                  ["--protocol=bodynet", "--config.image_size=256"]):
        hgmt.evaluate.main([f"--workdir={saved_workdir}", *given])
    assert run == ["hgmt", "surreal", "bodynet"]


def test_a_resume_with_another_config_is_one_line_naming_the_field(tmp_path):
    """hgmt.main on a workdir whose checkpoints were trained with another learning rate: one
    line, exit status 1, naming the field, its two values and the flag that accepts the
    change (ENTRY_POINTS checks that hgmt.main takes it; tests/test_train.py tests the
    check)."""
    from configs import default
    from hgmt import run_config

    run_config.save_config(default.get_config("tasks=pose2d,runlocal"), str(tmp_path))
    (tmp_path / "checkpoints" / "50").mkdir(parents=True)
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={REPO}/configs/default.py:tasks=pose2d,runlocal",
                                f"--workdir={tmp_path}", "--config.optimizer.learning_rate=0.001"])
    message = str(e.value.code)
    assert message.startswith(
        f"error: CannotResume: the checkpoints of {tmp_path} (the newest of step 50) were "
        f"trained with another config ({tmp_path}/config.json): "
        f"config.optimizer.learning_rate=0.00025 -> 0.001. Rerun"), message
    assert "\n" not in message and "pass --resume_with_changed_config " in message


def test_a_task_set_written_otherwise_is_the_same_config_on_resuming(tmp_path, monkeypatch):
    """A workdir trained on pose2d+segm rerun with --config.tasks=segm+pose2d (or with the
    tasks repeated) is the same task set: no CannotResume; the differences of task sets are
    compared as sets in TASKS' order, 'all' as the four."""
    from configs import default
    from hgmt import run_config
    from hgmt.training import resume

    run_config.save_config(default.get_config("tasks=pose2d+segm,runlocal"), str(tmp_path))
    (tmp_path / "checkpoints" / "50").mkdir(parents=True)
    main = load("hgmt.main")
    trained = []
    from hgmt.training import loop

    monkeypatch.setattr(loop, "train_and_evaluate", lambda *a, **k: trained.append(a) or {})
    for tasks in ("segm+pose2d", "pose2d+segm+pose2d"):
        assert main.main([f"--config={REPO}/configs/default.py:tasks=pose2d+segm,runlocal",
                          f"--workdir={tmp_path}", f"--config.tasks={tasks}",
                          "--compilation_cache="]) == 0
    assert len(trained) == 2
    assert resume.differences({"tasks": "all"}, {"tasks": "depth+pose3d+segm+pose2d"}) == []
    assert resume.differences({"tasks": "pose2d"}, {"tasks": "pose2d+segm"}) == [
        ("tasks", "pose2d", "pose2d+segm")]


def test_an_empty_workdir_is_one_line_and_writes_nothing(tmp_path, monkeypatch):
    """`--workdir=$WORKDIR` with the variable unset: refused, not a run in the current
    folder."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={DEFAULT}:tasks=pose2d,runlocal", "--workdir="])
    assert e.value.code == ("error: --workdir is empty; give the folder the run writes its "
                            "checkpoints and results to (made if missing)")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("field, value, least", [("frames", 0, 1), ("clips_per_split", 0, 1),
                                                 ("seed", -1, 0)])
def test_a_bad_demo_setting_is_one_line_and_leaves_the_demo_data(field, value, least,
                                                                  tmp_path):
    """A demo.* value the generator cannot make clips of is refused with the config's other
    fields, before hgmt.main replaces a demo build of other settings with it (the build and
    clips of the earlier settings were deleted, then the generation failed)."""
    data, root = tmp_path / "tfds", tmp_path / "surreal"
    for folder in (data, root):
        folder.mkdir()
        (folder / "kept").write_text("the earlier demo data")
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={REPO}/configs/demo.py", f"--workdir={tmp_path / 'w'}",
                                f"--config.data_dir={data}", f"--config.demo.surreal_root={root}",
                                f"--config.demo.{field}={value}"])
    assert e.value.code == (f"error: ValueError: config.demo.{field}={value} must be an "
                            f"integer of at least {least}")
    assert os.listdir(data) == os.listdir(root) == ["kept"]
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flag, message", [
    ("--config.window=x", "config.window='x': choose one of hgmt, reference_box"),
    ("--config.worker_count=-7", "config.worker_count=-7: give a count >= 0, or -1 for one "
                                 "worker per usable core beyond two (hgmt.cores)"),
    ("--config.read_threads=-1", "config.read_threads=-1: give 0 (reads in the loader's "
                                 "thread, for local disks) or a count of read-ahead threads"),
    ("--config.max_damaged_fraction=5", "config.max_damaged_fraction=5.0 must be in [0, 1]")])
def test_evaluate_refuses_a_bad_data_setting_before_reading_a_checkpoint(flag, message,
                                                                         saved_workdir):
    """The data settings the evaluation reads, checked as training checks them, before a
    checkpoint is looked for (the workdir holds none: NoCheckpoint otherwise)."""
    with pytest.raises(SystemExit) as e:
        load("hgmt.evaluate").main([f"--workdir={saved_workdir}", flag])
    assert e.value.code == f"error: ValueError: {message}"


def test_a_resume_with_another_demo_config_stops_before_the_demo_data(tmp_path, monkeypatch):
    """A demo workdir with checkpoints rerun with other demo.* settings: refused before
    hgmt.main prepares the demo data, which those settings would delete and make again."""
    from configs import demo
    from hgmt import run_config

    run_config.save_config(demo.get_config(), str(tmp_path))
    (tmp_path / "checkpoints" / "50").mkdir(parents=True)
    main = load("hgmt.main")
    prepared = []
    monkeypatch.setattr(main, "_demo_dataset_on_process_0", prepared.append)
    with pytest.raises(SystemExit) as e:
        main.main([f"--config={REPO}/configs/demo.py", f"--workdir={tmp_path}",
                   "--config.demo.clips_per_split=8"])
    assert str(e.value.code).startswith("error: CannotResume: "), e.value.code
    assert "config.demo.clips_per_split=24 -> 8" in str(e.value.code) and prepared == []


@pytest.mark.parametrize("error, message", [
    (OSError(28, "No space left on device"),
     "error: DiskFull: [Errno 28] cannot write the demo clips ({root}/surreal) and their build "
     "to {root}/tfds: the disk or quota is full ("),
    (ValueError("demo.frames=0 must be at least 1"),
     "error: ValueError: demo.frames=0 must be at least 1")])
def test_a_failure_preparing_the_demo_data_is_one_line(error, message, tmp_path, monkeypatch):
    """The demo data's preparation fails (a full disk while its clips are written, a bad
    value): hgmt.main ends in one line naming it, as for a fault in training, not with a
    traceback, and makes no workdir."""
    main = load("hgmt.main")

    def prepare(config):
        raise error

    monkeypatch.setattr(main, "prepare_demo_dataset", prepare)
    with pytest.raises(SystemExit) as e:
        main.main([f"--config={REPO}/configs/demo.py", f"--workdir={tmp_path / 'w'}",
                   f"--config.data_dir={tmp_path}/tfds",
                   f"--config.demo.surreal_root={tmp_path}/surreal", "--compilation_cache="])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code, e.value.code
    assert e.value.code.startswith(message.format(root=tmp_path)), e.value.code
    assert not (tmp_path / "w").exists()


def test_demo_data_that_cannot_be_written_is_one_line_naming_its_folders(tmp_path):
    """The demo clips' folder under a file (as a read-only file system would refuse it):
    hgmt.main ends in one line naming both demo folders to move, not the OSError's
    traceback, and makes no workdir."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={REPO}/configs/demo.py", f"--workdir={tmp_path / 'w'}",
                                f"--config.data_dir={tmp_path}/tfds",
                                f"--config.demo.surreal_root={afile}/surreal",
                                "--compilation_cache="])
    assert e.value.code == (
        f"error: ValueError: cannot write the demo data: Not a directory ({afile}/surreal); "
        f"give config.demo.surreal_root={afile}/surreal and config.data_dir={tmp_path}/tfds "
        f"folders on a writable file system")
    assert afile.read_text() == "mine" and not (tmp_path / "w").exists()


def test_a_dataset_that_is_not_built_is_one_line_and_makes_no_workdir(tmp_path):
    """The commonest first mistake, a --config.data_dir without the build: one line naming
    the build command, and the new workdir not made (nor its parent folder), checked before
    the workdir lock would create it."""
    workdir = tmp_path / "new" / "run"
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={REPO}/configs/default.py:tasks=pose2d,runlocal",
                                f"--workdir={workdir}", f"--config.data_dir={tmp_path}"])
    message = str(e.value.code)
    assert message.startswith("error: FileNotFoundError: dataset 'surreal/every10' split "
                              "'train' is not built under data_dir="), message
    assert "Build it with: tfds build surreal --imports=data_builders.surreal" in message
    assert "\n" not in message
    assert not (tmp_path / "new").exists()


def test_ctrl_c_reaches_a_caller_of_the_trainer_in_process(saved_workdir, monkeypatch):
    """A notebook's interrupt during hgmt.main.main([...]) is its KeyboardInterrupt, which
    stops the cell; before, main printed the command's line (naming the kernel's pid to kill)
    and returned 130, and a loop of trainings went on to the next."""
    from hgmt.training import loop

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "train_and_evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load("hgmt.main").main([f"--config={REPO}/configs/default.py:runlocal,tasks=pose2d",
                                f"--workdir={saved_workdir}", "--compilation_cache="])


def test_a_ctrl_c_dropped_in_a_garbage_collection_callback_stops_the_training(
        saved_workdir, monkeypatch):
    """A Ctrl-C whose KeyboardInterrupt is raised inside a gc callback (JAX registers one),
    where Python drops it: hgmt.main stops all the same (in process, the caller gets the
    KeyboardInterrupt); before, the training ran on to its end as if no Ctrl-C had come."""
    import signal

    from hgmt.training import loop
    from tests.conftest import ctrl_c_in_a_gc_callback

    raised = []

    def trained(*args, **kwargs):
        raised.append(ctrl_c_in_a_gc_callback())
        return {}

    monkeypatch.setattr(loop, "train_and_evaluate", trained)
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a shell's has it
    try:
        with pytest.raises(KeyboardInterrupt):
            load("hgmt.main").main([
                f"--config={REPO}/configs/default.py:runlocal,tasks=pose2d",
                f"--workdir={saved_workdir}", "--compilation_cache="])
    finally:
        signal.signal(signal.SIGINT, handler)
    assert raised == [True]


# The flags each command needs before it looks at anything else; `{never}` a path that must
# not appear (nothing is written), `{workdir}` a workdir holding a config.
REQUIRED = {
    "hgmt.main": [f"--config={REPO}/configs/demo.py", "--workdir={never}",
                  "--config.model.ops=xla"],  # the old parse trained; this stops it at once
    "hgmt.export": ["--format=stablehlo", "--out_dir={never}"],
    "hgmt.report": ["--sweep_dir={never}"],
    "hgmt.data.check": ["--config.data_dir={never}"],
    "hgmt.sources.synthetic": ["--out_dir={never}"],
    "launch/sweep.py": ["--sweep_dir={never}", "--config=configs/demo.py"],
    "benchmarks/compile_and_load.py": ["--cache={never}"],
    "experiments/depth_baselines.py": ["--clips={never}"],
    "experiments/limb_depth.py": ["--clips={never}"],
    "experiments/learning_curves.py": ["--workdir={workdir}", "--out_dir={never}"],
}
TAKES_AFTER_DASHES = ("launch/sweep.py", "benchmarks/step_levers.py",
                      "benchmarks/stream_modes.py", "benchmarks/device_tests.py")


@pytest.mark.parametrize("entry", torch_marked(sorted(set(ENTRY_POINTS) - {"hgmt.predict"})))
def test_a_stray_argument_exits_naming_it_before_any_work(entry, saved_workdir, tmp_path):
    """A positional argument a command does not take (a mistyped flag, a config override
    after `--`) is refused in one line, not dropped while the command runs with its
    defaults; commands that pass what follows `--` on refuse one before it."""
    never = tmp_path / "never"
    argv = [a.format(never=never, workdir=saved_workdir) for a in REQUIRED.get(entry, [])]
    if entry in ON_A_WORKDIR:
        argv.insert(0, f"--workdir={saved_workdir}")
    with pytest.raises(SystemExit) as e:
        load(entry).main([*argv, "total_steps=5"])
    if entry in TAKES_AFTER_DASHES:
        assert e.value.code == ("error: unexpected arguments total_steps=5; give the "
                                "arguments to pass on after `--` (--help lists the flags)")
    else:
        assert str(e.value.code).startswith(
            "error: unexpected arguments total_steps=5: this command takes flags only"), (
            e.value.code)
        assert str(e.value.code).endswith(" (--help lists the flags)")
    assert not never.exists()


def test_a_tasks_unknown_loss_option_is_not_taken_for_a_task(tmp_path):
    """A typo among a task's loss options names that task's options, and no task to add."""
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={DEFAULT}:runlocal,tasks=depth",
                                "--config.loss_options.depth.typo=2",
                                f"--workdir={tmp_path / 'w'}"])
    assert e.value.code == ("error: --config.loss_options.depth.typo: loss_options.depth has "
                            "no field 'typo' (its fields: foreground_weight)")


def test_an_unknown_task_in_a_tasks_override_names_the_field(saved_workdir, tmp_path):
    """`--config.tasks=` with a task hgmt lacks: training, evaluation and prediction end in
    one line naming config.tasks, before any work."""
    unknown = ("config.tasks='pose2d+hands': unknown task(s) hands; choose a non-empty "
               "subset of pose2d, pose3d, depth, segm joined by '+', or 'all'")
    runs = {"hgmt.main": [f"--config={DEFAULT}:runlocal", f"--workdir={tmp_path / 'w'}"],
            "hgmt.evaluate": [f"--workdir={saved_workdir}"],
            "hgmt.predict": [f"--workdir={saved_workdir}", f"--out_dir={tmp_path / 'p'}",
                             str(tmp_path / "x.jpg")]}
    for entry, argv in runs.items():
        with pytest.raises(SystemExit) as e:
            load(entry).main([*argv, "--config.tasks=pose2d+hands"])
        assert e.value.code == f"error: ValueError: {unknown}", (entry, e.value.code)
    assert not (tmp_path / "w").exists() and not (tmp_path / "p").exists()


def test_the_trainers_config_warnings_show_once(tmp_path, caplog):
    """A warm-up as long as the run, an evaluator that never runs and a best_metric on one
    that runs only after training (it keeps no best checkpoint; before, nothing said so until
    `--step=best` found none) are warned about once each, though `hgmt.main` checks the
    config before the trainer does (here the run stops after both checks: its dataset is not
    built)."""
    with pytest.raises(SystemExit):
        load("hgmt.main").main([f"--config={DEFAULT}:runlocal,tasks=pose2d",
                                f"--workdir={tmp_path / 'w'}", "--config.total_steps=10",
                                "--config.optimizer.warmup_steps=10",
                                "--config.evals.validation.every=20",
                                "--config.evals.validation.at_end=false",
                                "--config.evals.validation.best_metric=",
                                "--config.evals.test.best_metric=loss/total",
                                f"--config.data_dir={tmp_path / 'none'}"])
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum(m.startswith("config.optimizer.warmup_steps=10 is not below") for m in warnings
               ) == 1, warnings
    assert sum(m.startswith("config.evals.validation.every=20 is beyond") for m in warnings
               ) == 1, warnings
    assert sum(m == ("config.evals.test.best_metric='loss/total' keeps no best checkpoint: "
                     "the evaluator runs only after training (every=0), and a best one is "
                     "chosen among evaluations during it (set every > 0, or best_metric='')")
               for m in warnings) == 1, warnings


def test_a_config_override_after_dashes_is_refused_not_lost(tmp_path):
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").main([f"--config={REPO}/configs/demo.py", f"--workdir={workdir}",
                                "--config.model.ops=xla", "--", "--config.total_steps=5"])
    assert e.value.code == (
        "error: unexpected arguments --config.total_steps=5: this command takes flags "
        "only; set a config field with --config.<field>=<value>, before any `--` (--help "
        "lists the flags)")
    assert not workdir.exists()
    from hgmt import cli

    fv, passed = cli.parse(lambda fv: None, ["--", "--config.x=1", "a"], "doc", positional="--")
    assert passed == ["--config.x=1", "a"]
    fv, files = cli.parse(lambda fv: None, ["a.jpg", "--", "-b.jpg"], "doc", positional="any")
    assert files == ["a.jpg", "-b.jpg"]


DEFAULT = f"{REPO}/configs/default.py"


@pytest.mark.parametrize("args, message", [
    ([f"--config={DEFAULT}:tasks=bogus"],
     f"error: --config={DEFAULT}:tasks=bogus: unknown task(s) bogus; choose a non-empty "
     f"subset of pose2d, pose3d, depth, segm joined by '+', or 'all' (--help lists the flags)"),
    ([f"--config={DEFAULT}:runlocal=maybe"],
     f"error: --config={DEFAULT}:runlocal=maybe: config argument runlocal='maybe': give "
     f"runlocal, runlocal=true or runlocal=false (--help lists the flags)"),
    ([f"--config={DEFAULT}:foo=1"],
     f"error: --config={DEFAULT}:foo=1: unknown config argument 'foo': choose one of interaction, "
     f"runlocal, tasks (--help lists the flags)"),
    ([f"--config={DEFAULT}", "--config.typo=3"],
     "error: --config.typo: the config has no field 'typo' (its fields: augment, augment_on, "
     "batch_size, "),
    ([f"--config={DEFAULT}", "--config.model.typo=3"],
     "error: --config.model.typo: model has no field 'typo' (its fields: batch_norm_stats, "
     "depth, dtype, features, interaction, num_stacks, ops, shared_trunk, stream_mode)"),
    ([f"--config={DEFAULT}:runlocal,tasks=pose2d", "--config.tasks=pose2d+segm",
      "--config.loss_weights.segm=2"],
     f"error: --config.loss_weights.segm: loss_weights has no field 'segm' (its fields: "
     f"pose2d); loss_weights holds the tasks named after the colon of --config: if segm is "
     f"a task, name it there (--config={DEFAULT}:runlocal,tasks=pose2d+segm) to set its "
     f"loss_weights"),
    ([f"--config={DEFAULT}", "--config.evals.test.split=val"],
     "error: ValueError: config.evals.test.split='val': choose one of train, validation, "
     "test"),
    ([f"--config={DEFAULT}:tasks=segm", "--config.evals.validation.best_metric=pckh"],
     "error: ValueError: config.evals.validation.best_metric='pckh' is not a metric of these "
     "tasks: choose one of loss/segm, loss/total, segm/"),
    ([f"--config={DEFAULT}", "--config.evals.test.best_metric=loss/total"],
     "error: ValueError: config.evals: test, validation all set best_metric; <workdir>/best "
     "keeps one checkpoint, so at most one evaluator may"),
    ([f"--config={DEFAULT}", "--config.dataset=surreal/every4"],
     "error: ValueError: config.dataset='surreal/every4': the SURREAL builder's configs are "
     "middle, every10, all"),
    ([f"--config={REPO}/configs/nonexist.py", "--config.total_steps=3"],
     f"error: --config={REPO}/configs/nonexist.py: cannot read the config file ([Errno 2] No "
     f"such file or directory: '{REPO}/configs/nonexist.py'); give a config file such as "
     f"configs/default.py:tasks=all (a relative path is taken from the working directory; "
     f"configs/<file> there or else hgmt's own)"),
    ([f"--config={DEFAULT}", "--num_processes=2", "--process_id=1"],
     "error: --num_processes and --process_id need --coordinator_address=host:port of "
     "process 0 as well (a multi-host run gives all three), or --distributed, which reads "
     "them from the cluster (Slurm, Open MPI's mpirun, a Cloud TPU VM, TPUs on GKE, "
     "Kubernetes); without either each process would train alone as process 0 of 1"),
    ([f"--config={DEFAULT}", "--process_id=0"],
     "error: --process_id needs --coordinator_address=host:port of process 0 as well"),
    # Before: JAX's IndexError, or its C++ 'Failed to start RPC server', as tracebacks.
    ([f"--config={DEFAULT}", "--coordinator_address=localhost", "--num_processes=2",
      "--process_id=0"],
     "error: --coordinator_address=localhost: give host:port of process 0, the port a number "
     "from 1 to 65535 that is free on process 0's host (e.g. "
     "--coordinator_address=localhost:23455)"),
    ([f"--config={DEFAULT}", "--coordinator_address=node1:abc", "--num_processes=2",
      "--process_id=0"],
     "error: --coordinator_address=node1:abc: give host:port of process 0, the port a number "
     "from 1 to 65535 that is free on process 0's host (e.g. --coordinator_address=node1:23455)"),
    # A digit int() does not read (str.isdigit's superscripts): was a ValueError traceback.
    ([f"--config={DEFAULT}", "--coordinator_address=node1:\u00b2", "--num_processes=2",
      "--process_id=0"],
     "error: --coordinator_address=node1:\u00b2: give host:port of process 0"),
    ([f"--config={DEFAULT}", "--coordinator_address=::1:23455", "--num_processes=2",
      "--process_id=0"],
     "error: --coordinator_address=::1:23455: an IPv6 address goes in brackets before the "
     "port, [address]:port (e.g. --coordinator_address=[::1]:23455)"),
    ([f"--config={DEFAULT}", "--coordinator_address=:80", "--num_processes=2",
      "--process_id=0"],
     "error: --coordinator_address=:80: give host:port of process 0"),
    ([f"--config={DEFAULT}", "--coordinator_address=localhost:23455", "--num_processes=0",
      "--process_id=0"],
     "error: --num_processes=0: give the number of processes of the job, at least 1"),
    ([f"--config={DEFAULT}", "--coordinator_address=localhost:23455", "--num_processes=2",
      "--process_id=2"],
     "error: --process_id=2: give this process's index, 0 to 1 (--num_processes=2), each "
     "process its own"),
    ([f"--config={DEFAULT}", "--distributed", "--process_id=-1"],
     "error: --process_id=-1: give this process's index, 0 or more, each process its own"),
    ([f"--config={DEFAULT}", "--distributed", "--heartbeat_timeout=0"],
     "error: --heartbeat_timeout=0: give at least 5 seconds (the watchdog beats every 0.5 s; "
     "a shorter timeout reads a late beat as a dead process)"),
    ([f"--config={DEFAULT}", "--distributed", "--heartbeat_timeout=-60"],
     "error: --heartbeat_timeout=-60: give at least 5 seconds"),
])
def test_a_bad_config_or_launch_flag_is_one_line_before_any_work(args, message, tmp_path):
    """Errors in the config argument, an override of a field the config lacks, a config file
    that is not there, multi-host flags without a coordinator and a heartbeat timeout under
    the minimum end hgmt.main in one line
    naming the flag and the fix, before JAX starts or the workdir is made."""
    workdir = tmp_path / "w"
    with pytest.raises(SystemExit) as e:  # the bad value stops the old parse's training
        load("hgmt.main").main([*args, f"--workdir={workdir}", "--config.model.ops=xla"])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code, e.value.code
    assert e.value.code.startswith(message), e.value.code
    assert not workdir.exists()


def test_an_override_of_a_field_a_workdirs_config_lacks_is_one_line(saved_workdir):
    with pytest.raises(SystemExit) as e:
        load("hgmt.evaluate").main([f"--workdir={saved_workdir}", "--config.loss_weights.segm=1"])
    assert e.value.code == ("error: --config.loss_weights.segm: loss_weights has no field "
                            "'segm' (its fields: pose2d)")


@pytest.mark.parametrize("flag, message", [
    ("--max_examples=-2", "error: --max_examples=-2: -2 is not a non-negative integer "
                          "(--help lists the flags)"),
    ("--config.evals.test.max_examples=-2",
     "error: ValueError: config.evals.test.max_examples=-2 must be >= 0")])
def test_evaluate_refuses_a_negative_example_limit_in_one_line(flag, message, saved_workdir):
    """A negative limit would evaluate all but the last frames (indices[:-N]): refused, as
    training refuses it, before any checkpoint is looked for."""
    with pytest.raises(SystemExit) as e:
        load("hgmt.evaluate").main([f"--workdir={saved_workdir}", flag])
    assert e.value.code == message


def test_evaluate_names_its_file_after_the_checkpoint_and_the_settings_off_protocol():
    from hgmt import workdirs

    assert workdirs.evaluation_file("test", 4) == "eval_test_4.json"
    assert workdirs.evaluation_file("validation", 8, best=True, protocol="bodynet") == (
        "eval_validation_best_8_bodynet.json")
    assert workdirs.evaluation_file("test", 4, frames="every8", flip=True, max_examples=16,
                                    protocol="surreal") == (
        "eval_test_4_every8_flip_first16_surreal.json")
    assert workdirs.evaluation_file("test", 4, max_examples=8, image_size=64) == (
        "eval_test_4_first8_64px.json")


def test_distributed_outside_a_cluster_is_one_line_naming_the_flags(tmp_path):
    """`--distributed` where JAX finds no cluster: the command's whole output is one line
    naming the settings not given and what to give instead (the flags, or the address in
    JAX_COORDINATOR_ADDRESS), with exit status 1 (JAX's own ValueError was a traceback, then
    a line in JAX's words: `coordinator_address should be defined`)."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(
        ("SLURM_", "OMPI_", "TPU_", "MEGASCALE_", "KUBERNETES_", "JAX_COORDINATOR_"))}
    run = subprocess.run(
        [sys.executable, "-m", "hgmt.main", f"--config={REPO}/configs/demo.py",
         f"--workdir={tmp_path / 'w'}", "--distributed", "--compilation_cache="],
        env={**env, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}, cwd=tmp_path,
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        "error: ValueError: the coordinator's address, --num_processes and --process_id not "
        "given, and no cluster that JAX reads (Slurm, Open MPI's mpirun, a Cloud TPU VM, TPUs "
        "on GKE, Kubernetes) runs this process to give them; give every process of the job "
        "the same --coordinator_address=host:port of process 0 (or JAX_COORDINATOR_ADDRESS), "
        "the same --num_processes=N and each its own --process_id (0 to N-1)"]
    assert not (tmp_path / "w").exists()


def _held_port():
    """A socket listening on a free port of every address (another job's coordinator)."""
    import socket

    held = socket.socket(socket.AF_INET6)
    held.bind(("::", 0))
    held.listen()
    return held


def test_a_coordinator_port_in_use_is_one_line_naming_it(tmp_path):
    """Process 0 of a job whose coordinator port another socket holds (another job's
    coordinator, an earlier run still running, two processes given --process_id=0): one line
    naming the port and the fix, status 1, before the workdir is made. JAX's own attempt
    logged a C++ error, then raised 'Failed to start RPC server' as a traceback or crashed
    the process (SIGSEGV, status -11)."""
    import subprocess

    with _held_port() as held:
        port = held.getsockname()[1]
        run = subprocess.run(
            [sys.executable, "-m", "hgmt.main", f"--config={REPO}/configs/demo.py",
             f"--workdir={tmp_path / 'w'}", f"--coordinator_address=localhost:{port}",
             "--num_processes=2", "--process_id=0", "--connect_timeout=5",
             "--compilation_cache="],
            env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}, cwd=tmp_path,
            capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr[-2000:]
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"error: ValueError: process 0 cannot start the job's coordination service on port "
        f"{port} ([::]:{port}: Address already in use): another job's coordinator, or a "
        f"process of an earlier run still running, holds it. End that process, or give every "
        f"process of the job another free port (--coordinator_address=localhost:PORT)"]
    assert not (tmp_path / "w").exists()


def test_a_coordinator_port_the_system_refuses_is_not_called_held(monkeypatch):
    """A port below 1024 for a process not run by root: bind's EACCES is no other job's
    socket, and the line says which ports to use instead."""
    import errno
    import socket

    from hgmt.training import coordinator

    class Refused(socket.socket):
        def bind(self, address):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))

    monkeypatch.setattr(coordinator.socket, "socket", Refused)
    with pytest.raises(ValueError) as e:
        coordinator.check_coordinator_port("localhost:80", 0)
    assert str(e.value) == (
        f"process 0 may not start the job's coordination service on port 80 ([::]:80: "
        f"{os.strerror(errno.EACCES)}): a port below 1024 is for root only. Use one from 1024 "
        f"to 65535: give every process of the job another free port "
        f"(--coordinator_address=localhost:PORT)")


@pytest.mark.slow  # a rare signal: Ctrl-C before a multi-process job connects
def test_ctrl_c_while_waiting_for_the_job_to_connect_ends_at_once(tmp_path):
    """Process 0 of 2 started alone waits in C++ for the other (up to --connect_timeout),
    where Python runs no signal handler: Ctrl-C did nothing until the timeout's NotConnected
    (status 1). Now it ends the process at once in one line, status 130, nothing written."""
    import signal
    import socket
    import subprocess
    import time

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hgmt.main", f"--config={REPO}/configs/demo.py",
         f"--workdir={tmp_path / 'w'}", f"--coordinator_address=localhost:{port}",
         "--num_processes=2", "--process_id=0", "--connect_timeout=12", "--compilation_cache="],
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO}, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    waiting = proc.stderr.readline()  # at half the connect timeout: it waits in C++ now
    assert "waiting for the job's processes to connect" in waiting, waiting
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert time.monotonic() - sent < 4, "it waited for the connect timeout"
    assert out == ""
    assert err.splitlines() == [
        "interrupted (Ctrl-C): process 0 of 2 stopped waiting for the job's processes to "
        "connect; nothing was started or written. Start every process of the job again "
        "together"]
    assert not (tmp_path / "w").exists()


def test_a_coordinator_host_that_does_not_resolve_is_warned_about_at_once(caplog):
    """A typo in --coordinator_address's host: JAX's client keeps trying it until the connect
    timeout (300 s) says only that the processes did not connect; a warning names it at
    once. A host that resolves is not warned about."""
    from hgmt.training import coordinator

    with caplog.at_level(logging.WARNING):
        coordinator.check_coordinator_host("nosuchhost.invalid:23455", coordinator.LOOKUP_WAIT_S)
        coordinator.check_coordinator_host("localhost:23455", coordinator.LOOKUP_WAIT_S)
        coordinator.check_coordinator_host("[::1]:23455", coordinator.LOOKUP_WAIT_S)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "--coordinator_address=nosuchhost.invalid:23455: its host nosuchhost.invalid does not "
        "resolve on this host"]
    assert caplog.records[0].getMessage().endswith(
        "so this process cannot reach the coordinator; give process 0's host name or address")


def test_a_resolver_that_does_not_answer_is_not_called_a_wrong_host(monkeypatch, caplog):
    """EAI_AGAIN ('Temporary failure in name resolution': the DNS server did not answer) says
    nothing of the name: it is worded apart from EAI_NONAME's name that does not resolve."""
    import socket

    from hgmt.training import coordinator

    for code, why in ((socket.EAI_AGAIN, "Temporary failure in name resolution"),
                      (socket.EAI_NONAME, "Name or service not known")):
        def getaddrinfo(*args, code=code, why=why, **kwargs):
            raise socket.gaierror(code, why)

        monkeypatch.setattr(coordinator.socket, "getaddrinfo", getaddrinfo)
        with caplog.at_level(logging.WARNING):
            coordinator.check_coordinator_host("node1:23455", 5)
    assert [r.getMessage() for r in caplog.records] == [
        "--coordinator_address=node1:23455: this host's name lookup of node1 did not answer "
        "(Temporary failure in name resolution; the name may be right), so this process may "
        "not reach the coordinator; check this host's DNS resolver (/etc/resolv.conf), or give "
        "process 0's IP address",
        "--coordinator_address=node1:23455: its host node1 does not resolve on this host (Name "
        "or service not known), so this process cannot reach the coordinator; give process "
        "0's host name or address"]


def test_a_coordinator_host_lookup_that_hangs_is_bounded(monkeypatch, caplog):
    """A name lookup that does not answer (a DNS server down: glibc waits 5 s a try) must not
    hold the process past --connect_timeout: `initialize` waits for it at most LOOKUP_WAIT_S,
    warns in one line and goes on to JAX's connect, which bounds its own wait."""
    import threading
    import time

    from hgmt.training import cluster, coordinator

    answer = threading.Event()
    monkeypatch.setattr(coordinator.socket, "getaddrinfo", lambda *a, **k: answer.wait(20))
    monkeypatch.setattr(coordinator, "LOOKUP_WAIT_S", 1)
    monkeypatch.setattr(cluster, "_heartbeat_timeout_s", cluster._heartbeat_timeout_s)
    connected = []
    monkeypatch.setattr(cluster.jax.distributed, "initialize",
                        lambda **kwargs: connected.append(kwargs["coordinator_address"]))
    start = time.monotonic()
    try:
        with caplog.at_level(logging.WARNING):
            cluster.initialize("node1:23455", 2, 1, connect_timeout_s=60)
    finally:
        answer.set()
    assert time.monotonic() - start < 4, "the lookup's wait was not bounded"
    assert connected == ["node1:23455"]
    assert [r.getMessage() for r in caplog.records] == [
        "--coordinator_address=node1:23455: this host's name lookup of node1 did not answer "
        "(within 1 s; the name may be right), so this process may not reach the coordinator; "
        "check this host's DNS resolver (/etc/resolv.conf), or give process 0's IP address"]


# Process 1 of 2 whose coordinator host's lookup hangs (a DNS server down), Ctrl-C'd as the
# main thread waits for it; the watch of the wakeup socket reads the signal late (as under
# load), so that the main thread's KeyboardInterrupt comes first.
_CTRL_C_IN_THE_LOOKUP = """\
import os, signal, socket, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as a shell's command has it
from hgmt.training import cluster, coordinator
asked = threading.Event()
def getaddrinfo(*args, **kwargs):
    asked.set()
    time.sleep(60)
class LateReader:
    def __init__(self, sock):
        self.sock = sock
    def recv(self, n):
        time.sleep(2)
        return self.sock.recv(n)
    def close(self):
        self.sock.close()
pair = socket.socketpair
def late_pair():
    read, write = pair()
    return LateReader(read), write
cluster.socket.socketpair = late_pair
coordinator.socket.getaddrinfo = getaddrinfo
coordinator.LOOKUP_WAIT_S = 30
cluster.jax.distributed.initialize = lambda **kwargs: None
def ctrl_c():
    asked.wait()
    time.sleep(0.2)
    os.kill(os.getpid(), signal.SIGINT)
threading.Thread(target=ctrl_c, daemon=True).start()
cluster.initialize("node1:23455", 2, 1, connect_timeout_s=60)
print("went on")
"""


@pytest.mark.slow  # a rare signal: Ctrl-C in the first seconds of a multi-process start
def test_ctrl_c_during_the_coordinator_host_lookup_ends_in_one_line(tmp_path):
    """Ctrl-C while `initialize` waits for the coordinator host's name lookup (in Python,
    where the main thread's KeyboardInterrupt may come before the watch of the connect wait
    reads the signal) ends the process as during JAX's connect: the one line, status 130,
    no traceback."""
    import subprocess

    script = tmp_path / "ctrl_c.py"
    script.write_text(_CTRL_C_IN_THE_LOOKUP)
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": os.pathsep.join(
        [REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}
    run = subprocess.run([sys.executable, str(script)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 130, run.stderr[-3000:]
    assert "Traceback" not in run.stderr and run.stdout == "", run.stderr[-3000:]
    assert run.stderr.strip().splitlines() == [
        "interrupted (Ctrl-C): process 1 of 2 stopped waiting for the job's processes to "
        "connect; nothing was started or written. Start every process of the job again "
        "together"]


def _slurm_process_0(monkeypatch: pytest.MonkeyPatch, port: str) -> None:
    """The environment of process 0 of a two-task Slurm job whose coordinator port is `port`
    (JAX_COORDINATOR_PORT)."""
    for name, value in {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[001-002]",
                        "SLURM_NTASKS": "2", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "JAX_COORDINATOR_PORT": port}.items():
        monkeypatch.setenv(name, value)


def test_a_slurm_jobs_coordinator_port_in_use_names_jax_coordinator_port(monkeypatch):
    """With --distributed under Slurm the port is JAX's choice for the job (from its id, or
    JAX_COORDINATOR_PORT): process 0 finds it held and says which variable moves it; the
    other processes, which listen on nothing, are not refused."""
    from hgmt.training import coordinator

    with _held_port() as held:
        port = held.getsockname()[1]
        _slurm_process_0(monkeypatch, str(port))
        with pytest.raises(ValueError) as e:
            coordinator.check_coordinator_port(None, None)
        assert str(e.value).startswith(f"process 0 cannot start the job's coordination "
                                       f"service on port {port} ([::]:{port}: ")
        assert str(e.value).endswith("End that process, or set JAX_COORDINATOR_PORT to a free "
                                     "port for every process of the job (the port JAX chose "
                                     "for this cluster's job is taken)")
        monkeypatch.setenv("SLURM_PROCID", "1")
        coordinator.check_coordinator_port(None, None)
    coordinator.check_coordinator_port(f"localhost:{port}", 0)  # free again
    # A port that is no number: JAX's C++ crashed (SIGSEGV) on it.
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("JAX_COORDINATOR_PORT", "abc")
    with pytest.raises(ValueError) as e:
        coordinator.check_coordinator_port(None, None)
    assert str(e.value) == ("JAX_COORDINATOR_PORT=abc: the coordinator's port 'abc' is no port "
                            "number; give one from 1 to 65535 that is free on process 0's host")
    monkeypatch.setenv("SLURM_PROCID", "1")  # the others waited for the connect timeout
    with pytest.raises(ValueError) as e:
        coordinator.check_coordinator_port(None, None)
    assert str(e.value).startswith("JAX_COORDINATOR_PORT=abc: the coordinator's port 'abc'")


def test_a_slurm_jobs_port_taken_before_jax_binds_it_is_named(monkeypatch):
    """A port free at hgmt's check and taken before JAX's coordination service binds it
    ('Failed to start RPC server') under Slurm without --coordinator_address: the line names
    Slurm's port as JAX computes it, not 'port ?'; where JAX takes the port from a cluster
    hgmt does not read (Open MPI's mpirun), it says 'the coordinator's port'."""
    from hgmt.training import cluster

    def taken(**kwargs):
        raise cluster.jax.errors.JaxRuntimeError("UNKNOWN: Failed to start RPC server")

    monkeypatch.setattr(cluster.jax.distributed, "initialize", taken)
    monkeypatch.setattr(cluster, "_heartbeat_timeout_s", cluster._heartbeat_timeout_s)
    with _held_port() as held:
        port = held.getsockname()[1]
    _slurm_process_0(monkeypatch, str(port))
    with pytest.raises(ValueError) as e:
        cluster.initialize(connect_timeout_s=60)
    assert str(e.value) == (
        f"process 0 cannot start the job's coordination service on port {port} ([::]:{port}: "
        f"UNKNOWN: Failed to start RPC server): another job's coordinator, or a process of an "
        f"earlier run still running, holds it. End that process, or set JAX_COORDINATOR_PORT "
        f"to a free port for every process of the job (the port JAX chose for this cluster's "
        f"job is taken)")
    monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://10.0.0.1:5678")
    with pytest.raises(ValueError) as e:
        cluster.initialize(connect_timeout_s=60)
    assert str(e.value).startswith(
        "process 0 cannot start the job's coordination service on the coordinator's port "
        "(UNKNOWN: Failed to start RPC server): another job's coordinator")
    assert "?" not in str(e.value)


def test_mpirun_inside_a_slurm_allocation_is_not_judged_by_slurms_port(monkeypatch):
    """Open MPI's mpirun inside a Slurm allocation: JAX reads Open MPI's settings, which it
    tries before Slurm's, so the port Slurm's job id would give is not this job's, and a
    socket holding it does not stop a process that Slurm numbers 0."""
    from hgmt.training import coordinator

    with _held_port() as held:
        port = held.getsockname()[1]
        _slurm_process_0(monkeypatch, str(port))
        with pytest.raises(ValueError):  # Slurm's job alone: its port is JAX's
            coordinator.check_coordinator_port(None, None)
        monkeypatch.setenv("OMPI_MCA_orte_hnp_uri", "1234.0;tcp://10.0.0.1:5678")
        coordinator.check_coordinator_port(None, None)


def test_the_slurm_port_check_stands_aside_on_a_jax_whose_cluster_classes_differ(monkeypatch):
    """The check reads Slurm's settings through JAX's private cluster classes: a JAX release
    that renamed them must not stop a job JAX itself starts (an AttributeError was a traceback
    before any work)."""
    from jax._src import clusters

    from hgmt.training import coordinator

    with _held_port() as held:
        _slurm_process_0(monkeypatch, str(held.getsockname()[1]))
        monkeypatch.delattr(clusters.ClusterEnv, "_cluster_types")
        coordinator.check_coordinator_port(None, None)


def _no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """An environment in which JAX finds no cluster (no Slurm, no Open MPI) and no
    coordinator address of its own."""
    for name in os.environ:
        if name.startswith(("SLURM_", "OMPI_", "JAX_COORDINATOR_")):
            monkeypatch.delenv(name)


def test_a_coordinator_port_in_use_given_by_jax_coordinator_address_names_it(monkeypatch):
    """JAX takes the coordinator from JAX_COORDINATOR_ADDRESS when --coordinator_address is
    not given, before it asks a cluster: process 0 given a held port by the variable stops
    naming the variable, alone and under Slurm, whose own port JAX does not use then (held,
    it does not stop the job). hgmt's check read Slurm's address instead, or outside a cluster
    checked nothing."""
    from hgmt.training import coordinator

    _no_cluster(monkeypatch)
    with _held_port() as free:
        free_port = free.getsockname()[1]
    with _held_port() as held, _held_port() as slurms:
        port = held.getsockname()[1]
        monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"localhost:{port}")
        fix = ("End that process, or give every process of the job another free port "
               "(JAX_COORDINATOR_ADDRESS=localhost:PORT)")
        with pytest.raises(ValueError) as e:  # --distributed --num_processes=2 --process_id=0
            coordinator.check_coordinator_port(None, 0)
        assert str(e.value).startswith(f"process 0 cannot start the job's coordination "
                                       f"service on port {port} ([::]:{port}: ")
        assert str(e.value).endswith(fix), str(e.value)
        _slurm_process_0(monkeypatch, str(slurms.getsockname()[1]))
        with pytest.raises(ValueError) as e:
            coordinator.check_coordinator_port(None, None)
        assert f"on port {port} " in str(e.value) and str(e.value).endswith(fix)
        monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"localhost:{free_port}")
        coordinator.check_coordinator_port(None, None)
        monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:abc")
        with pytest.raises(ValueError) as e:
            coordinator.check_coordinator_port(None, None)
        assert str(e.value) == ("JAX_COORDINATOR_ADDRESS=localhost:abc: the coordinator's port "
                                "'abc' is no port number; give one from 1 to 65535 that is "
                                "free on process 0's host")


def test_the_coordinator_address_flag_comes_before_jax_coordinator_address(monkeypatch,
                                                                            caplog):
    """As in JAX, --coordinator_address wins over JAX_COORDINATOR_ADDRESS: the flag's port
    and host are checked and named, and the variable's held port does not stop the job."""
    from hgmt.training import coordinator

    _no_cluster(monkeypatch)
    with _held_port() as free:
        free_port = free.getsockname()[1]
    with _held_port() as held:
        monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", f"localhost:{held.getsockname()[1]}")
        coordinator.check_coordinator_port(f"localhost:{free_port}", 0)
        with pytest.raises(ValueError) as e:
            coordinator.check_coordinator_port(f"localhost:{held.getsockname()[1]}", 0)
        assert str(e.value).endswith("(--coordinator_address=localhost:PORT)")
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "nosuchhost.invalid:23455")
    with caplog.at_level(logging.WARNING):
        coordinator.check_coordinator_host("nosuchhost2.invalid:23455", coordinator.LOOKUP_WAIT_S)
        coordinator.check_coordinator_host(None, coordinator.LOOKUP_WAIT_S)
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        "--coordinator_address=nosuchhost2.invalid:23455: its host nosuchhost2.invalid does "
        "not resolve on this host",
        "JAX_COORDINATOR_ADDRESS=nosuchhost.invalid:23455: its host nosuchhost.invalid does "
        "not resolve on this host"]


@pytest.mark.parametrize("value, message", [
    ("node1:abc", "error: JAX_COORDINATOR_ADDRESS=node1:abc: give host:port of process 0, the "
                  "port a number from 1 to 65535 that is free on process 0's host (e.g. "
                  "JAX_COORDINATOR_ADDRESS=node1:23455)"),
    ("localhost", "error: JAX_COORDINATOR_ADDRESS=localhost: give host:port of process 0"),
    ("::1:23455", "error: JAX_COORDINATOR_ADDRESS=::1:23455: an IPv6 address goes in brackets "
                  "before the port, [address]:port (e.g. JAX_COORDINATOR_ADDRESS=[::1]:23455)"),
])
def test_a_malformed_jax_coordinator_address_is_one_line_naming_it(value, message,
                                                                    monkeypatch, tmp_path):
    """With --distributed JAX takes the coordinator from JAX_COORDINATOR_ADDRESS: a value
    that is not host:port stops in one line naming the variable, as the flag's does, before
    JAX starts (JAX's IndexError, or a crash on a port that is no number). The flag, given,
    is what JAX takes and what is checked; without either the variable is not read."""
    _no_cluster(monkeypatch)
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", value)
    args = [f"--config={DEFAULT}", f"--workdir={tmp_path / 'w'}"]
    with pytest.raises(SystemExit) as e:
        load("hgmt.main").parse([*args, "--distributed", "--num_processes=2", "--process_id=0"])
    assert isinstance(e.value.code, str) and "\n" not in e.value.code, e.value.code
    assert e.value.code.startswith(message), e.value.code
    fv = load("hgmt.main").parse([*args, "--distributed",
                                  "--coordinator_address=localhost:23455"])
    assert fv.coordinator_address == "localhost:23455"
    load("hgmt.main").parse(args)
    assert not (tmp_path / "w").exists()


def test_a_shared_trunk_config_json_with_an_interaction_reads_as_sum(tmp_path, caplog):
    """A workdir an older hgmt trained with shared_trunk=True and another interaction (which
    one shared stream never used) still evaluates: its config reads as 'sum', with a warning."""
    import logging

    from configs import default
    from hgmt import run_config
    from hgmt.models import create_model
    from hgmt.tasks import heads

    config = default.get_config("tasks=pose2d,runlocal")
    config.model.shared_trunk, config.model.interaction = True, "none"
    run_config.save_config(config, str(tmp_path))
    with caplog.at_level(logging.WARNING):
        loaded = run_config.load_config(str(tmp_path))
    assert loaded.model.interaction == "sum" and loaded.model.shared_trunk
    assert "model.interaction='none' has no effect with shared_trunk=True" in caplog.text
    create_model(loaded.model, heads(("pose2d",)))  # refused with 'none'


def test_an_older_config_jsons_warning_is_in_the_commands_console_format(tmp_path,
                                                                         monkeypatch, capsys):
    """The warning of reading an older config.json, logged as the workdir command parses its
    flags, before its console is set up: on the command's console as its other warnings are
    ("warning: ..."), once, where Python's default handler an import had set up printed it as
    "WARNING:root:..."; a caller of main whose root logger has no handler gets it on stderr
    likewise and no handler left behind."""
    import subprocess

    from configs import default
    from hgmt import cli, run_config

    config = default.get_config("tasks=pose2d,runlocal")
    config.model.shared_trunk, config.model.interaction = True, "none"
    run_config.save_config(config, str(tmp_path))
    warning = (f"warning: {tmp_path}/config.json: model.interaction='none' has no effect with "
               f"shared_trunk=True; read as 'sum'")
    proc = subprocess.run([sys.executable, "-m", "hgmt.export", f"--workdir={tmp_path}",
                           "--format=stablehlo", f"--out_dir={tmp_path / 'x'}"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and proc.stderr.splitlines() == [
        warning, f"error: NoCheckpoint: no checkpoint in {tmp_path}/checkpoints; train first "
        f"(python -m hgmt.main --workdir={tmp_path} ...)"], proc.stderr
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    capsys.readouterr()
    assert cli.workdir_config([f"--workdir={tmp_path}"]).model.interaction == "sum"
    assert capsys.readouterr().err == warning + "\n" and root.handlers == []


def test_a_config_of_hgmts_is_found_from_any_directory(tmp_path, monkeypatch):
    """`--config=configs/<file>` names hgmt's config from a directory without configs/ (an
    installed hgmt's, beside the package: the README's commands failed outside the
    checkout); a configs/<file> in the working directory is taken first, and one that
    neither has is the one-line error."""
    from hgmt import cli

    monkeypatch.chdir(tmp_path)
    for argv in (["--config=configs/default.py:tasks=pose2d,runlocal"],
                 ["--config", "configs/default.py:tasks=pose2d,runlocal"]):
        fv, _ = cli.parse(lambda fv: None, argv, "doc", config_file=True)
        assert (fv.config.tasks, fv.config.image_size) == ("pose2d", 64)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "default.py").write_text(
        "import ml_collections\n\n\ndef get_config(arg=None):\n"
        "    return ml_collections.ConfigDict({'tasks': 'mine'})\n")
    fv, _ = cli.parse(lambda fv: None, ["--config=configs/default.py"], "doc", config_file=True)
    assert fv.config.tasks == "mine"
    with pytest.raises(SystemExit) as e:
        cli.parse(lambda fv: None, ["--config=configs/nothing.py"], "doc", config_file=True)
    assert str(e.value.code).startswith("error: --config=configs/nothing.py: cannot read the "
                                        "config file")


@pytest.mark.parametrize("value", ["x", "-1", "\u00b2", "4.0"])
def test_a_step_that_is_no_step_number_is_one_line(value):
    """`--step` of hgmt.evaluate, hgmt.predict and hgmt.export: a number of decimal digits or
    'best'; anything else, a superscript digit that str.isdigit passes but int() does not
    read included, exits in one line naming the flag."""
    from hgmt import cli

    assert cli.checkpoint_step("12") == 12 and cli.checkpoint_step("best") == "best"
    with pytest.raises(SystemExit, match=rf"^error: --step={value}: give a step number or "
                                         r"'best'$"):
        cli.checkpoint_step(value)


def test_tensorflow_imported_after_a_commands_parse_prints_no_start_up_line(tmp_path):
    """A command's work that imports TensorFlow (a SavedModel export, a dataset build) prints
    none of its C++ start-up lines (absl's InitializeLog warning, oneDNN's line, which the log
    level does not hide): the parse sets TF_CPP_MIN_LOG_LEVEL and TF_ENABLE_ONEDNN_OPTS where
    the environment does not (`console.quiet_tensorflow`)."""
    import subprocess

    env = {k: v for k, v in os.environ.items()
           if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    code = ("import os; from hgmt import cli; cli.parse(lambda fv: None, [], 'doc'); "
            "import tensorflow; print(os.environ['TF_CPP_MIN_LOG_LEVEL'], "
            "os.environ['TF_ENABLE_ONEDNN_OPTS'])")
    run = subprocess.run([sys.executable, "-c", code], env={**env, "PYTHONPATH": REPO},
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert (run.returncode, run.stdout, run.stderr) == (0, "1 0\n", "")


def test_the_environments_own_tensorflow_settings_are_kept(monkeypatch):
    """`console.quiet_tensorflow` sets only what the environment leaves unset: a user's
    TF_ENABLE_ONEDNN_OPTS=1 (or log level 0) stays."""
    from hgmt import console

    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    console.quiet_tensorflow()
    assert (os.environ["TF_CPP_MIN_LOG_LEVEL"], os.environ["TF_ENABLE_ONEDNN_OPTS"]) == ("0", "1")
