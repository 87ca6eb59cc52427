"""launch/sweep.py (the 15 subsets, resumable) and hgmt.report (the task-combination study)."""

import collections
import json
import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest

import hgmt.report
from hgmt import workdirs
from hgmt.evaluation import metrics_versions
from hgmt.sources import body
from hgmt.study import (
    charts,
    comparable,
    evaluations,
    provenance,
    report,
    run_configs,
    runs,
    stats,
)
from hgmt.tasks import common
from tests.conftest import interrupted_command, xla_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_prints_one_command_per_subset_and_records_the_plan(tmp_path):
    """Started from another directory with a relative --sweep_dir: the commands name the
    folder the caller meant, where the plan is recorded for the report; the config file,
    found in the repository, by its absolute path (the runs start in the caller's
    directory), the plan by its path in the repository."""
    (tmp_path / "elsewhere").mkdir()
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch/sweep.py"),
                          "--sweep_dir=../s", "--config=configs/default.py:runlocal",
                          "--print_only", "--", "--config.total_steps=7"],
                         cwd=tmp_path / "elsewhere", capture_output=True, text=True,
                         check=True).stdout.splitlines()
    s = tmp_path / "s"
    assert len(out) == 15 and len(set(out)) == 15
    assert out[0].endswith(f"--config={REPO}/configs/default.py:runlocal,tasks=pose2d "
                           f"--workdir={s}/pose2d --config.total_steps=7")
    assert out[-1].split()[-2] == f"--workdir={s}/pose2d+pose3d+depth+segm"
    plan = json.loads((s / workdirs.SWEEP_PLAN).read_text())
    assert plan["subsets"][-1] == "pose2d+pose3d+depth+segm"
    assert plan["config"] == "configs/default.py:runlocal"
    assert run_configs.with_tasks("configs/demo.py", "depth") == "configs/demo.py:tasks=depth"
    # --resume_with_changed_config reaches every training run and stays out of the plan.
    out = subprocess.run([sys.executable, os.path.join(REPO, "launch/sweep.py"),
                          "--sweep_dir=../s", "--config=configs/default.py:runlocal",
                          "--print_only", "--resume_with_changed_config", "--",
                          "--config.total_steps=7"], cwd=tmp_path / "elsewhere",
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert all(line.endswith("--config.total_steps=7 --resume_with_changed_config")
               for line in out) and len(out) == 15
    assert json.loads((s / workdirs.SWEEP_PLAN).read_text()) == plan


def test_a_config_outside_the_repository_is_planned_by_its_absolute_path(tmp_path,
                                                                        monkeypatch, capsys):
    """A config file in the caller's directory (not the repository's): the plan names it by
    its absolute path, from which `hgmt.report --check_config` rebuilds the runs' config
    wherever it runs; a relative name would be looked for in the repository. (The script's
    `main` in this process, in the caller's working directory.)"""
    (tmp_path / "mine.py").write_text(open(os.path.join(REPO, "configs/default.py")).read())

    def sweep(cwd, *args):
        monkeypatch.chdir(cwd)
        run = _sweep_in_process(capsys, *args)
        assert run.returncode == 0, run.stderr

    sweep(tmp_path, "--sweep_dir=s", "--config=mine.py", "--tasks=pose2d", "--print_only")
    plan = runs.plan(str(tmp_path / "s"))
    assert plan["config"] == str(tmp_path / "mine.py")
    assert run_configs.expected_config(plan["config"], "pose2d", [], 0)["tasks"] == "pose2d"

    # A plan that names the config as it was given (as older versions wrote it), or the same
    # file by another path: the same command, or the same file, adds its subsets to it.
    (tmp_path / "s" / "sweep.json").write_text(json.dumps({**plan, "config": "mine.py"}))
    for config in ("mine.py", str(tmp_path / "mine.py"), "./mine.py"):
        sweep(tmp_path, "--sweep_dir=s", f"--config={config}", "--tasks=segm", "--print_only")
    assert runs.plan(str(tmp_path / "s"))["subsets"] == ["pose2d", "segm"]
    s2 = tmp_path / "s2"
    for config in (os.path.join(REPO, "configs/default.py"), "configs/default.py"):
        sweep(REPO, f"--sweep_dir={s2}", f"--config={config}", "--tasks=segm", "--print_only")
    assert runs.plan(str(s2))["config"] == "configs/default.py"


def test_sweep_rejects_unknown_task(tmp_path):
    run = subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={tmp_path}/s",
                          "--config=configs/demo.py", "--tasks=pose2d,hands", "--print_only"],
                         cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 1 and run.stderr.splitlines() == [
        "error: --tasks=pose2d,hands: unknown task(s) hands; choose a non-empty subset of "
        "pose2d, pose3d, depth, segm joined by '+', or 'all', in each comma-separated subset "
        "(leave --tasks out for all 15 subsets)"]
    assert not (tmp_path / "s").exists()


def _sweep_in_process(capsys, *args: str) -> subprocess.CompletedProcess:
    """`python launch/sweep.py *args` run in this process (its `main`, as the script runs
    it): (exit status, stdout, stderr) as the command would give them, a SystemExit's message
    printed to stderr with status 1 as Python's exit prints it."""
    from launch import sweep

    capsys.readouterr()
    try:
        code = sweep.main(list(args))
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    if isinstance(code, str):
        code, err = 1, err + code + "\n"
    return subprocess.CompletedProcess(["launch/sweep.py", *args], code or 0, _here(out), err)


def _here(printed: str) -> str:
    """`--print_only`'s output without the checkout's PYTHONPATH that leads each command it
    runs here (checked to be there)."""
    from launch import sweep_commands

    lines = []
    for line in printed.splitlines(keepends=True):
        if line.startswith(("sbatch ", "HGMT_REPO=")):  # Slurm's: their own environment
            lines.append(line)
            continue
        commands = line.split(" && ")
        assert all(c.startswith(sweep_commands.HERE_PYTHONPATH + " ") for c in commands), line
        lines.append(" && ".join(c.removeprefix(sweep_commands.HERE_PYTHONPATH + " ")
                                 for c in commands))
    return "".join(lines)


def test_a_bad_config_records_no_plan_and_the_right_one_then_runs(tmp_path, monkeypatch,
                                                                  capsys):
    """The first run's arguments are parsed as hgmt.main parses them before the plan is
    written: a misspelt override after `--`, a config file that is not there or a stray word
    stop the sweep in one line and leave no sweep.json, which would hold the directory to the
    bad config; the corrected command then records its plan. The refusals run the script's
    `main` in this process; the corrected command runs as the script."""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)

    def sweep(*args):
        return _sweep_in_process(capsys, f"--sweep_dir={s}", "--tasks=pose2d", "--print_only",
                                 *args)

    for args, message in (
            (["--config=configs/demo.py", "--", "--config.total_stps=5"],
             "error: the pose2d runs' hgmt.main (--config=configs/demo.py and the arguments "
             "after `--`): --config.total_stps: the config has no field 'total_stps' (its "
             "fields: "),
            (["--config=configs/dmeo.py", "--", "--config.total_steps=5"],
             f"error: --config=configs/dmeo.py: no config file configs/dmeo.py in the working "
             f"directory or in {REPO}; give a config file such as configs/default.py"),
            (["--config=configs/demo.py:runlocal", "--", "--config.total_steps=5"],
             f"error: the pose2d runs' hgmt.main (--config=configs/demo.py:runlocal and the "
             f"arguments after `--`): --config={REPO}/configs/demo.py:runlocal,tasks=pose2d: "
             f"unknown config argument 'runlocal': choose one of tasks"),
            (["--config=configs/demo.py", "--config.total_steps=5"],
             "error: --config.total_steps: no such flag"),
            (["--config=configs/demo.py", "total_steps=5"],
             "error: unexpected arguments total_steps=5; give the arguments to pass on "
             "after `--`"),
            # No eval_test.json after training: no run would ever be done.
            (["--config=configs/demo.py", "--", "--config.total_steps=5",
              "--config.evals.test.at_end=False"],
             "error: the runs' config.evals.test does not run after training "
             "(config.evals.test.at_end=False): launch/sweep.py counts a run as done by the "
             "eval_test.json that test evaluation writes after training, so every call would "
             "train every run again; drop --config.evals.test.at_end=False\n")):
        run = sweep(*args)
        assert run.returncode == 1, (args, run.stdout)
        assert len(run.stderr.splitlines()) == 1 and run.stderr.startswith(message), (
            args, run.stderr)
        assert not (s / workdirs.SWEEP_PLAN).exists()
    run = subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={s}",
                          "--tasks=pose2d", "--print_only", "--config=configs/default.py", "--",
                          "--config.total_steps=5"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[-3:] == [f"--config={REPO}/configs/default.py:tasks=pose2d",
                                       f"--workdir={s}/pose2d", "--config.total_steps=5"]
    assert json.loads((s / workdirs.SWEEP_PLAN).read_text()) == {
        "config": "configs/default.py", "subsets": ["pose2d"], "seeds": 1,
        "extra": ["--config.total_steps=5"]}


def test_sweep_print_only_builds_the_demo_data_before_printing(tmp_path):
    """A config with a demo section: the printed runs, started together by a scheduler, find
    the demo data built (once, by the sweep) instead of all building it into one folder."""
    data_dir, surreal_root = tmp_path / "demo" / "tfds", tmp_path / "demo" / "surreal"
    run = subprocess.run(
        [sys.executable, os.path.join(REPO, "launch/sweep.py"), "--sweep_dir=s",
         "--config=configs/demo.py", "--tasks=pose2d,segm", "--print_only", "--",
         f"--config.data_dir={data_dir}", f"--config.demo.surreal_root={surreal_root}",
         "--config.demo.clips_per_split=1", "--config.demo.frames=2"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert [line.split()[4] for line in _here(run.stdout).splitlines()] == [
        f"--workdir={tmp_path}/s/pose2d", f"--workdir={tmp_path}/s/segm"]
    from hgmt.data import demo

    built = json.loads(next(data_dir.glob(f"surreal/all/*/{demo.GENERATED_FILE}")).read_text())
    assert {k: built[k] for k in ("clips_per_split", "frames")} == {
        "clips_per_split": 1, "frames": 2}


STEP = 1200  # the step the crafted runs' training ended at


def _finished(run_dir, *files, step=STEP):
    """A run directory holding the result files `files`, each an evaluation of `step` under
    the protocol its name gives (eval_test.json: hgmt's)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in files:
        protocol = name.removeprefix("eval_test").removesuffix(".json").lstrip("_") or "hgmt"
        (run_dir / name).write_text(json.dumps({"protocol": protocol, "step": step}))


def test_sweep_print_only_leaves_out_what_is_done(tmp_path, monkeypatch, capsys):
    """pose2d trained (its eval_test.json there), segm not: --print_only prints segm's
    training only, as the sweep run here would skip pose2d, then with --protocols pose2d's
    missing evaluation alone, and nothing of pose2d once that file is there too. (The script's
    `main` run in this process.)"""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    _finished(s / "pose2d", "eval_test.json")
    python, config = sys.executable, f"{REPO}/configs/default.py"
    train_segm = f"{python} -m hgmt.main --config={config}:tasks=segm --workdir={s}/segm"

    def evaluate(run):
        return (f"{python} -m hgmt.evaluate --workdir={s}/{run} --protocol=bodynet "
                f"--out_file={s}/{run}/eval_test_bodynet.json")

    def sweep(*args):
        run = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                                "--tasks=pose2d,segm", "--print_only", *args)
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines(), run.stderr

    assert sweep() == ([train_segm],
                       "launch/sweep.py: 1 of 2 runs done already, not printed\n")
    assert sweep("--protocols=bodynet") == (
        [evaluate("pose2d"), f"{train_segm} && {evaluate('segm')}"], "")
    _finished(s / "pose2d", "eval_test_bodynet.json")
    assert sweep("--protocols=bodynet")[0] == [f"{train_segm} && {evaluate('segm')}"]


def test_sweep_print_only_builds_no_demo_data_when_every_run_has_trained(
        tmp_path, monkeypatch, capsys):
    """Nothing to print, nothing to build: the demo data is for the printed runs."""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    _finished(s / "pose2d", "eval_test.json")
    run = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/demo.py",
                            "--tasks=pose2d", "--print_only", "--",
                            f"--config.data_dir={tmp_path / 'tfds'}",
                            f"--config.demo.surreal_root={tmp_path / 'surreal'}")
    assert (run.returncode, run.stdout) == (0, ""), run.stderr
    assert run.stderr == "launch/sweep.py: 1 of 1 runs done already, not printed\n"
    assert not (tmp_path / "tfds").exists() and not (tmp_path / "surreal").exists()


def test_a_sweep_planned_with_tasks_in_its_config_goes_on_without_it(tmp_path, monkeypatch,
                                                                    capsys):
    """An older launch/sweep.py took --config=...:tasks=segm (each run's tasks replaced it) and
    recorded it in the plan: the same sweep, now given its config without tasks=, goes on."""
    s = tmp_path / "s"
    s.mkdir()
    (s / workdirs.SWEEP_PLAN).write_text(json.dumps({
        "config": "configs/default.py:runlocal,tasks=segm", "subsets": ["pose2d"], "seeds": 1,
        "extra": []}))
    monkeypatch.chdir(REPO)
    run = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py:runlocal",
                            "--tasks=pose2d", "--print_only")
    assert run.returncode == 0, run.stderr
    assert run.stdout.split()[3] == f"--config={REPO}/configs/default.py:runlocal,tasks=pose2d"


@pytest.mark.parametrize("args, message", [
    (["--config=configs/demo.py:tasks=segm"],
     "error: --config=configs/demo.py:tasks=segm: the sweep names each run's tasks "
     "(--tasks=A,B; default all 15 subsets); give the config without tasks="),
    (["--config=configs/demo.py", "--", "--config.tasks=segm"],
     "error: --config.tasks=segm after `--`: each run trains the tasks of its subset "
     "(--tasks=A,B); drop it"),
])
def test_sweep_refuses_tasks_other_than_its_subsets(args, message, tmp_path, monkeypatch,
                                                     capsys):
    """Either would train other tasks in a run folder named after a subset (the override
    after `--` wins in hgmt.main), or be dropped unsaid."""
    monkeypatch.chdir(REPO)
    run = _sweep_in_process(capsys, f"--sweep_dir={tmp_path / 's'}", "--tasks=pose2d,depth",
                            *args)
    assert (run.returncode, run.stderr) == (1, message + "\n")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("tasks", ["", ","])
def test_sweep_refuses_a_tasks_flag_that_names_no_subset(tasks, tmp_path, monkeypatch, capsys):
    """`--tasks=$SUBSETS` with the variable unset is not a request for all 15 subsets (hours of
    runs): it stops in one line, the sweep directory not made; without --tasks, all 15."""
    monkeypatch.chdir(REPO)
    run = _sweep_in_process(capsys, f"--sweep_dir={tmp_path / 's'}", "--config=configs/demo.py",
                            f"--tasks={tasks}", "--print_only")
    assert (run.returncode, run.stderr) == (1, (
        f"error: --tasks={tasks}: names no subset; give them (e.g. --tasks=pose2d,pose2d+segm), "
        f"or leave --tasks out for all 15\n"))
    assert not (tmp_path / "s").exists()


def test_sweep_evaluates_again_what_is_not_of_the_trained_weights_or_does_not_read(
        tmp_path, monkeypatch, capsys):
    """A protocol's file is done only beside the run's eval_test.json and of the step the
    training ended at: pose2d's bodynet file of step 300 (made before a rerun trained on to
    1200) is planned again, and so is segm's, whose run has no eval_test.json; the reason goes
    to stderr, the commands alone to stdout. An eval_test.json that does not read (empty, a
    JSON list) is not done: the run is trained again, which evaluates it anew, then the
    protocol; a sweep run here says why before the command. (The script's `main` run in this
    process.)"""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    python, config = sys.executable, f"{REPO}/configs/default.py"

    def train(run):
        return f"{python} -m hgmt.main --config={config}:tasks={run} --workdir={s}/{run}"

    def evaluate(run):
        return (f"{python} -m hgmt.evaluate --workdir={s}/{run} --protocol=bodynet "
                f"--out_file={s}/{run}/eval_test_bodynet.json")

    def sweep():
        run = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                                "--tasks=pose2d,segm,depth", "--protocols=bodynet",
                                "--print_only")
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines(), run.stderr.splitlines()

    _finished(s / "pose2d", "eval_test.json")
    _finished(s / "pose2d", "eval_test_bodynet.json", step=300)
    _finished(s / "segm", "eval_test_bodynet.json")
    (s / "depth").mkdir()
    (s / "depth" / "eval_test.json").write_text("")
    assert sweep() == (
        [evaluate("pose2d"), f"{train('segm')} && {evaluate('segm')}",
         f"{train('depth')} && {evaluate('depth')}"],
        [f"launch/sweep.py: pose2d: {s}/pose2d/eval_test_bodynet.json is not of the run's "
         f"trained weights (it is of step 300, and the run's training ended at step 1200): it "
         f"is evaluated again",
         f"launch/sweep.py: depth: {s}/depth/eval_test.json is empty: the file was cut short. "
         f"It is trained again, which evaluates it anew"])
    _finished(s / "pose2d", "eval_test_bodynet.json")
    (s / "depth" / "eval_test.json").write_text("[1]")
    assert sweep() == (
        [f"{train('segm')} && {evaluate('segm')}", f"{train('depth')} && {evaluate('depth')}"],
        [f"launch/sweep.py: depth: {s}/depth/eval_test.json is not a JSON object (a JSON "
         f"list): the file was edited or damaged. It is trained again, which evaluates it "
         f"anew", "launch/sweep.py: 1 of 3 runs done already, not printed"])
    from launch import sweep as launcher
    from launch import sweep_runner

    ran = []
    monkeypatch.setattr(sweep_runner, "run_logged",
                        lambda cmd, log, stop: ran.append(cmd[2]) or (0, None))
    assert launcher.main([f"--sweep_dir={s}", "--config=configs/default.py",
                          "--tasks=depth"]) == 0
    assert ran == ["hgmt.main"]
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == (f"[1/1] depth: {s}/depth/eval_test.json is not a JSON object (a JSON "
                        f"list): the file was edited or damaged. It is trained again, which "
                        f"evaluates it anew"), lines
    assert lines[1].startswith(f"[1/1] depth: {python} -m hgmt.main "), lines


def test_sweep_runs_a_subset_given_twice_once(tmp_path):
    """`--tasks=pose2d+segm,segm+pose2d` names one subset twice: one command, one entry in
    the plan, not two runs into one workdir."""
    s = tmp_path / "s"
    run = subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={s}",
                          "--config=configs/default.py", "--tasks=pose2d+segm,segm+pose2d,segm",
                          "--print_only"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    assert [line.split()[-1] for line in run.stdout.splitlines()] == [
        f"--workdir={s}/pose2d+segm", f"--workdir={s}/segm"]
    assert json.loads((s / workdirs.SWEEP_PLAN).read_text())["subsets"] == ["pose2d+segm",
                                                                           "segm"]


def test_a_later_call_may_move_the_data_not_change_what_the_runs_train(
        tmp_path, monkeypatch, capsys):
    """The plan holds the sweep directory to what its runs train and how they are evaluated:
    a later call may move the data (`--config.data_dir`) and spell the same arguments
    otherwise (another order, `--config.x 5` for `--config.x=5`), and the plan then records
    its arguments; another `total_steps`, test evaluation or `worker_count` is refused, naming
    the fields. Before, any difference was refused, so a mistyped data path held the
    directory for good."""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)

    def sweep(*extra):
        return _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                                 "--tasks=pose2d", "--print_only", "--", *extra)

    assert sweep("--config.data_dir=/scrach/tfds", "--config.total_steps=5").returncode == 0
    moved = ["--config.total_steps", "5", "--config.data_dir=/scratch/tfds",
             "--config.read_threads=4"]
    assert sweep(*moved).returncode == 0
    assert json.loads((s / workdirs.SWEEP_PLAN).read_text())["extra"] == moved
    # Each run's config is parsed once (`check_run`), the recorded arguments' once more for
    # the comparison: the first subset's own is not parsed again.
    from hgmt import main as trainer

    parsed, real = [], trainer.parse

    def parse(argv):  # (the run's tasks, its last argument after `--`)
        parsed.append((argv[0].rpartition("tasks=")[2], argv[-2]))
        return real(argv)

    monkeypatch.setattr(trainer, "parse", parse)
    reordered = ["--config.read_threads=4", "--config.data_dir=/scratch/tfds",
                 "--config.total_steps", "5"]
    assert _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                             "--tasks=pose2d,segm", "--print_only", "--",
                             *reordered).returncode == 0
    assert parsed == [("pose2d", "5"), ("segm", "5"), ("pose2d", "--config.read_threads=4")]
    monkeypatch.setattr(trainer, "parse", real)
    moved = reordered
    for other, fields in ((["--config.total_steps=6"], "total_steps"),
                          (["--config.total_steps=5", "--config.evals.test.max_examples=8"],
                           "evals.test.max_examples"),
                          (["--config.total_steps=5", "--config.worker_count=4"],
                           "worker_count")):
        run = sweep(*other)
        assert run.returncode == 1 and run.stderr == (
            f"error: {s} holds a sweep of --config=configs/default.py with arguments "
            f"{shlex.join(moved)}, not --config=configs/default.py with arguments "
            f"{shlex.join(other)} ({fields} differ); give another "
            f"--sweep_dir, or the same config and arguments (where the data is and how it is "
            f"read may differ: data_dir, demo.surreal_root, read_threads, prefetch, "
            f"max_damaged_fraction, log_every, checkpoint_every, keep_checkpoints, "
            f"eval_batch_size, model.stream_mode, model.ops)\n"), run.stderr
    assert json.loads((s / workdirs.SWEEP_PLAN).read_text())["extra"] == moved


def test_every_run_of_the_sweep_is_checked_before_its_plan(tmp_path, monkeypatch, capsys):
    """An override of segm's field reaches segm's runs only, and configs/reference.py trains
    one task a run: each run's command line is checked, not the first's alone, so the sweep
    stops before its plan naming the subset, where segm's runs failed after pose2d's."""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    run = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                            "--tasks=pose2d,segm", "--print_only", "--",
                            "--config.loss_options.segm.foregound_weight=2")
    assert run.returncode == 1 and run.stderr.startswith(
        "error: the segm runs' hgmt.main (--config=configs/default.py and the arguments after "
        "`--`): --config.loss_options.segm.foregound_weight: "), run.stderr
    run = _sweep_in_process(capsys, f"--sweep_dir={s}",
                            "--config=configs/reference.py:code=bodynet",
                            "--tasks=pose2d,pose2d+segm", "--print_only")
    assert run.returncode == 1 and run.stderr.startswith(
        "error: the pose2d+segm runs' "), run.stderr
    assert not s.exists()


def test_a_damaged_plan_is_written_anew_and_a_url_sweep_dir_refused(tmp_path, monkeypatch,
                                                                    capsys):
    """A sweep.json cut short, edited into another JSON value or lacking a field is written
    anew from the call's plan, with a warning naming the file and what is wrong (read as every
    run file is read, `runs.plan`), where the sweep stopped in a traceback; a gs:// sweep
    directory is refused in one line, where a local folder named gs: was made."""
    s = tmp_path / "s"
    s.mkdir()
    monkeypatch.chdir(tmp_path)
    anew = "It is written anew from this call's config, subsets and seeds.\n"
    for text, why in (
            ("", "is empty: the file was cut short. "),
            ('{"config": ', "is not a JSON object (not JSON: Expecting value: line 1 column 12): "
                            "the file was edited or damaged. "),
            ("[]", "is not a JSON object (a JSON list): the file was edited or damaged. "),
            ('{"config": "configs/default.py"}', "holds no 'subsets' list: the file was edited "
                                                 "or damaged. ")):
        (s / workdirs.SWEEP_PLAN).write_text(text)
        run = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                                "--tasks=pose2d", "--print_only")
        assert run.returncode == 0, run.stderr
        assert run.stderr.startswith(f"launch/sweep.py: warning: {s}/sweep.json {why}{anew}"), \
            run.stderr
        assert json.loads((s / workdirs.SWEEP_PLAN).read_text()) == {
            "config": "configs/default.py", "subsets": ["pose2d"], "seeds": 1, "extra": []}
    run = _sweep_in_process(capsys, "--sweep_dir=gs://bucket/sweep", "--config=configs/default.py",
                            "--print_only")
    assert run.returncode == 1 and run.stderr == (
        "error: --sweep_dir=gs://bucket/sweep: a sweep directory is a local folder (the sweep "
        "and hgmt.report read it with the local file system); give one on a local or mounted "
        "disk (a bucket mounted with gcsfuse, for one)\n")
    assert os.listdir(tmp_path) == ["s"]
    with pytest.raises(SystemExit) as e:
        hgmt.report.main(["--sweep_dir=gs://bucket/sweep", "--out_dir=report"])
    assert e.value.code == ("error: --sweep_dir=gs://bucket/sweep: a sweep directory is a local "
                            "folder, as launch/sweep.py makes it; copy it to a local disk, or "
                            "mount the bucket (gcsfuse, for one)")
    assert os.listdir(tmp_path) == ["s"]


def test_a_run_that_saved_and_stopped_stops_the_sweep(tmp_path, monkeypatch, capsys):
    """A run that exits 75 (hgmt.main saved a checkpoint on a signal) stops the sweep with
    that status, telling to rerun it: before, it counted as failed and the next subset
    started."""
    from launch import sweep, sweep_runner

    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    ran = []
    monkeypatch.setattr(sweep_runner, "run_logged",
                        lambda cmd, log, stop: ran.append(cmd) or (75, None))
    assert sweep.main([f"--sweep_dir={s}", "--config=configs/default.py",
                       "--tasks=pose2d,segm"]) == 75
    assert len(ran) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1].startswith("[1/2] pose2d train: stopped: it saved a checkpoint "
                                           "and exited 75 in "), out
    assert err == ("launch/sweep.py: the sweep stopped at pose2d; rerun the same command to "
                   "go on (a training resumes from its last checkpoint)\n")
    assert (s / "pose2d.log").read_text().splitlines()[-1].startswith(
        "launch/sweep.py: pose2d train: stopped: it saved a checkpoint and exited 75 in ")


def test_a_sigterm_between_runs_stops_the_sweep_before_the_next(tmp_path, monkeypatch, capsys):
    """SIGTERM to the sweep after a run ended and before the next started (its outcome line
    being written, the next one's plan read): the sweep starts no other run and exits 75
    saying so; before, the default action killed it there (status 143, no line)."""
    import signal

    from launch import sweep, sweep_runner

    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    ran = []

    def run(cmd, log, stop):
        ran.append(cmd)
        os.kill(os.getpid(), signal.SIGTERM)  # as the run ends, with no run to pass it to
        return 0, None

    monkeypatch.setattr(sweep_runner, "run_logged", run)
    assert sweep.main([f"--sweep_dir={s}", "--config=configs/default.py",
                       "--tasks=pose2d,segm"]) == 75
    assert len(ran) == 1 and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    assert capsys.readouterr().err == ("launch/sweep.py: SIGTERM received: the sweep stopped "
                                       "before segm train; rerun the same command to go on\n")


def test_sweep_sbatch_submits_through_the_slurm_script_what_the_sweep_trains(tmp_path):
    """--sbatch: a run to train is submitted through launch/slurm.sbatch with the checkout in
    HGMT_REPO, its own compilation cache in its workdir, and the run's seed and arguments; a
    trained run's missing protocol evaluation is an `sbatch --wrap` with hgmt on PYTHONPATH.
    Piped to a shell elsewhere, with stand-ins for sbatch (runs the script as Slurm would) and
    srun (writes down its command), the training line runs the hgmt.main command the sweep
    runs here, plus the script's --distributed and the cache."""
    s = tmp_path / "s"
    _finished(s / "pose2d", "eval_test.json")
    options = "--nodes=1 --time=1:00:00"

    def sweep(*args):
        run = subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={s}",
                              "--config=configs/default.py", "--tasks=pose2d,segm", "--seeds=2",
                              "--protocols=bodynet", "--print_only", *args, "--",
                              "--config.total_steps=5"], cwd=REPO, capture_output=True,
                             text=True, timeout=120)
        assert run.returncode == 0, run.stderr
        return run.stdout.splitlines()

    lines = sweep(f"--sbatch={options}")
    script, config = f"{REPO}/launch/slurm.sbatch", f"{REPO}/configs/default.py"

    def train(run, tasks, *seed):
        return (f"HGMT_REPO={REPO} HGMT_PYTHON={sys.executable} sbatch --job-name=hgmt-{run} "
                f"--output={s}/%x-%j.out {options} {script} {s}/{run} "
                f"{config}:tasks={tasks} --config.total_steps=5 {' '.join(seed)}"
                f"{' ' if seed else ''}--compilation_cache={s}/{run}/compilation_cache")

    assert lines == [
        f"sbatch --job-name=hgmt-pose2d-bodynet --output={s}/%x-%j.out --gpus-per-node=8 "
        f"--cpus-per-task=32 {options} --nodes=1 --ntasks=1 "
        f"'--wrap=PYTHONPATH={REPO}${{PYTHONPATH:+:$PYTHONPATH}} {sys.executable} -m "
        f"hgmt.evaluate --workdir={s}/pose2d --protocol=bodynet "
        f"--out_file={s}/pose2d/eval_test_bodynet.json'",
        train("segm", "segm"), train("pose2d@seed1", "pose2d", "--config.seed=1"),
        train("segm@seed1", "segm", "--config.seed=1")]

    bin_dir, submit, calls = tmp_path / "bin", tmp_path / "submit", tmp_path / "calls"
    bin_dir.mkdir()
    submit.mkdir()
    for name, script in (
            ("sbatch", 'while [[ $1 == -* ]]; do shift; done\n'
                       'SLURM_SUBMIT_DIR=$PWD SLURM_JOB_ID=7 SLURM_JOB_NODELIST=n1 '
                       'exec bash "$@"\n'),
            ("srun", f'echo "$PWD|${{PYTHONPATH%%:*}}|$*" >> {calls}\n')):
        (bin_dir / name).write_text(f"#!/usr/bin/env bash\n{script}")
        (bin_dir / name).chmod(0o755)
    # Without HGMT_REPO the script, run from `submit`, would stop: no checkout there.
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONPATH": "/site"}
    env.pop("HGMT_REPO", None)
    for line in lines[1:]:
        subprocess.run(["sh", "-c", line], cwd=submit, env=env, check=True, timeout=60)
    here = [line.partition(" && ")[0].split()[1:] for line in _here("\n".join(sweep()[1:]))
            .splitlines()]
    assert here[1] == ["-m", "hgmt.main", f"--config={config}:tasks=pose2d",
                       f"--workdir={s}/pose2d@seed1", "--config.total_steps=5",
                       "--config.seed=1"]
    srun = [line.split("|") for line in calls.read_text().splitlines()]
    assert [(cwd, path) for cwd, path, _ in srun] == [(str(submit), REPO)] * 3
    for (_, _, args), cmd, run in zip(srun, here, ("segm", "pose2d@seed1", "segm@seed1"),
                                      strict=True):
        assert args.split() == ["--kill-on-bad-exit=0", sys.executable, *cmd[:2],
                                "--distributed",
                                *cmd[2:], f"--compilation_cache={s}/{run}/compilation_cache"]


def test_sweep_refuses_sbatch_without_print_only(tmp_path):
    run = subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={tmp_path}/s",
                          "--config=configs/demo.py", "--sbatch=--nodes=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        "error: --sbatch=--nodes=1: prints Slurm submissions, so it needs --print_only; add "
        "--print_only, or drop --sbatch to run the sweep here"]
    assert not (tmp_path / "s").exists()


def test_sweep_appends_each_attempt_to_the_runs_log(tmp_path, monkeypatch, capsys):
    """A run that failed, then failed again, then succeeded: its log keeps all three
    attempts, each between a line with its start (UTC) and command and one with its outcome
    and wall time."""
    from launch import sweep, sweep_commands

    outcomes = iter([3, 4, 0])

    def attempt(config, tasks, sweep_dir, extra, seed_index=0, resume=False):
        code = next(outcomes)
        return [sys.executable, "-c", f"print('attempt exits {code}'); raise SystemExit({code})"]

    monkeypatch.setattr(sweep_commands, "command", attempt)
    argv = [f"--sweep_dir={tmp_path}", "--config=configs/default.py:runlocal", "--tasks=pose2d"]
    assert [sweep.main(argv) for _ in range(3)] == [1, 1, 0]
    lines = (tmp_path / "pose2d.log").read_text().splitlines()
    log = str(tmp_path / "pose2d.log")
    cmd = r"\S+ -c 'print\(\S+ exits \d\S*; raise SystemExit\(\d\)'"
    assert len(lines) == 9, lines
    for i, code in enumerate((3, 4, 0)):
        start, output, end = lines[3 * i: 3 * i + 3]
        assert re.fullmatch(r"launch/sweep.py: pose2d train: started "
                            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: " + cmd, start), start
        assert f"SystemExit({code})" in start and output == f"attempt exits {code}"
        status = "ok" if code == 0 else re.escape(f"FAILED (exit {code}; see {log})")
        assert re.fullmatch(rf"launch/sweep.py: pose2d train: {status} in \d+ s", end), end


def _summary(pck=None, mjd=None, iou=None, rmse=None):
    s = {}
    if pck is not None:
        s["pose2d"] = {"pckh@0.5": pck, "pckh@0.5_per_joint": {j: pck for j in
                                                               body.JOINT_NAMES}}
    if mjd is not None:
        s["pose3d"] = {"mjd_mm": mjd, "mjd_mm_per_joint": {j: mjd for j in body.JOINT_NAMES}}
    if iou is not None:
        parts = {p: iou for p in body.PART_NAMES}
        parts["l_hand"] = None  # absent in this split
        s["segm"] = {"mean_iou": iou, "iou_per_part": parts}
    if rmse is not None:
        s["depth"] = {"rmse_mm": rmse, "bin_accuracy": 0.5}
    return s


def _finished_runs(sweep_dir, runs_of: dict[str, list[dict]]) -> None:
    """Writes <tasks>[@seed<k>]/eval_test.json of each subset's summaries, seed by seed."""
    for tasks, summaries in runs_of.items():
        for k, summary in enumerate(summaries):
            run = sweep_dir / workdirs.run_name(tasks, k)
            run.mkdir(parents=True)
            (run / "eval_test.json").write_text(json.dumps(summary))


def test_report_tests_each_change_over_the_seeds(tmp_path):
    """Three seeds per subset: pose2d+segm's mean pose2d PCKh is 0.05 above the isolated
    run's, both with seed standard deviation 0.01. Welch by hand: standard error
    0.01 * sqrt(2/3) = 0.008165, t = 6.124 with 4 degrees of freedom; Student's t with 4 has
    two-sided p = 1 - sin(a) (1 + cos(a)^2 / 2), tan(a) = t / 2, = 0.0036, and the 0.975
    quantile 2.7764, so the interval is 0.05 +- 0.0227. Holm over the table's two tested rows
    doubles the smaller p: 0.0072, better. pose2d+pose3d's 0.01 with 0.02 is no detectable
    change; a subset with one seed is not tested."""
    sweep_dir = tmp_path / "sweep"
    runs_of = {"pose2d": [0.80, 0.81, 0.79], "pose2d+segm": [0.85, 0.86, 0.84],
               "pose2d+pose3d": [0.81, 0.83, 0.79], "pose2d+depth": [0.90]}
    _finished_runs(sweep_dir, {t: [_summary(pck=v) for v in values]
                               for t, values in runs_of.items()})
    assert workdirs.run_name("pose2d", 0) == "pose2d"
    assert workdirs.run_name("pose2d", 2) == "pose2d@seed2"
    assert workdirs.run_seed_index("pose2d@seed2") == 2 and workdirs.run_seed_index("segm") == 0
    study = report.compare(evaluations.load_sweep(str(sweep_dir)))["pose2d"]
    assert study["seeds"] == {"pose2d": 3, "pose2d+segm": 3, "pose2d+pose3d": 3,
                              "pose2d+depth": 1}
    assert study["isolated"] == pytest.approx(0.80)
    assert study["spread"]["pose2d"] == pytest.approx(0.01)
    assert study["spread"]["pose2d+pose3d"] == pytest.approx(0.02)
    assert study["spread"]["pose2d+depth"] is None
    assert study["gain"]["pose2d+segm"] == pytest.approx(0.05)
    t = study["tests"]["pose2d+segm"]
    assert t["df"] == pytest.approx(4.0)
    assert (t["low"], t["high"]) == (pytest.approx(0.05 - 0.022670, abs=1e-5),
                                     pytest.approx(0.05 + 0.022670, abs=1e-5))
    assert t["p"] == pytest.approx(0.003604, abs=1e-5)
    assert t["p_holm"] == pytest.approx(2 * t["p"]) and t["verdict"] == stats.BETTER
    # Welch-Satterthwaite by hand: (0.02^2/3 + 0.01^2/3)^2 / ((0.02^2/3)^2/2 + (0.01^2/3)^2/2)
    # = 50/17 degrees of freedom
    assert study["tests"]["pose2d+pose3d"]["df"] == pytest.approx(50 / 17)
    assert study["tests"]["pose2d+pose3d"]["verdict"] == stats.UNDETECTED
    assert set(study["tests"]) == {"pose2d+segm", "pose2d+pose3d"}
    assert study["per_item_gain"]["l_wrist"] == pytest.approx(0.10)  # best: pose2d+depth
    assert study["per_item_tests"] == {}  # one seed of pose2d+depth: nothing to test
    (sweep_dir / "sweep.json").write_text(json.dumps({"subsets": list(runs_of), "seeds": 3}))
    out = tmp_path / "report"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    text = (out / "README.md").read_text()
    assert ("Runs finished: 10 of 12 (4 subsets x 3 seeds); missing: pose2d+depth@seed1, "
            "pose2d+depth@seed2 (launch/sweep.py with the same arguments resumes them).") in text
    assert ("| pose2d+segm | 0.85 ± 0.01 (3) | +0.05 | [+0.027, +0.073] | 0.0036 | 0.0072 | "
            "**better** |") in text
    assert ("| pose2d+pose3d | 0.81 ± 0.02 (3) | +0.01 | [-0.032, +0.052] | 0.5 | 0.5 | "
            "no detectable change |") in text
    assert "| pose2d+depth **best mean** | 0.9 ± — (1) | +0.1 | | | | untested: one seed |" in text
    assert "| l_wrist | +0.1 | | | | untested: one seed |" in text


def test_report_labels_its_intervals_as_per_comparison(tmp_path):
    """Three subsets each 0.03 above the isolated pose2d's 0.80, all with seed sd 0.01: each
    change alone has t = 0.03 / (0.01 * sqrt(2/3)) = 3.674 with 4 degrees of freedom,
    p = 1 - sin(a) (1 + cos(a)^2 / 2), tan(a) = t / 2, = 0.0213, and the interval
    0.03 +- 2.7764 * 0.008165 = [+0.0073, +0.053], which excludes zero; Holm over the three
    equal p-values triples them: 0.064, no detectable change. The report labels the interval
    as per comparison and says, once, that it can exclude zero under such a verdict."""
    sweep_dir = tmp_path / "sweep"
    runs_of = {"pose2d": [0.80, 0.81, 0.79]} | {
        s: [0.83, 0.84, 0.82] for s in ("pose2d+segm", "pose2d+depth", "pose2d+pose3d")}
    _finished_runs(sweep_dir, {t: [_summary(pck=v) for v in values]
                               for t, values in runs_of.items()})
    t = report.compare(evaluations.load_sweep(str(sweep_dir)))["pose2d"]["tests"]["pose2d+segm"]
    assert (t["low"], t["high"]) == (pytest.approx(0.03 - 0.022670, abs=1e-5),
                                     pytest.approx(0.03 + 0.022670, abs=1e-5))
    assert t["p"] == pytest.approx(0.021312, abs=1e-5)
    assert t["p_holm"] == pytest.approx(3 * t["p"]) and t["verdict"] == stats.UNDETECTED
    out = tmp_path / "report"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    text = (out / "README.md").read_text()
    assert ("| subset | PCKh@0.5: mean ± sd (seeds) | change vs isolated (+ = better) | "
            "95% CI (per comparison) | p | p (Holm) | verdict |") in text
    assert ("| pose2d+segm | 0.83 ± 0.01 (3) | +0.03 | [+0.0073, +0.053] | 0.021 | 0.064 | "
            "no detectable change |") in text
    assert "| joint | change | 95% CI (per comparison) | p | p (Holm) | verdict |" in text
    # The account of the tests: once, above the first table; the tables and the conclusions
    # link to it.
    said = ("The 95% CI (per comparison) is the unadjusted 95% confidence interval of that "
            "change alone, not adjusted for the other tests of its family: it can exclude zero "
            "while the Holm-adjusted test detects no change.")
    assert text.count(said) == 1 and text.count("Welch's t-test over the seeds") == 1
    assert text.index(said) < text.index("| subset |") and text.index(said) < text.index(
        "| the paper concludes |")
    assert text.count("## How changes are tested\n") == 1
    link = "[how changes are tested](#how-changes-are-tested)"
    assert text.count(f"p (Holm): within this table ({link}).") == 1  # one seeded table
    assert f"checked on this study's tests ({link}; hgmt/study/claims.py)" in text
    assert "cannot be told from none" not in text


def test_report_says_why_a_change_without_spread_is_untested(tmp_path):
    """segm's mean IoU 0.5 in each of three seeds, 0.6 in each with pose2d: a difference with
    no spread over the seeds to test it against, so no verdict, and the report says why
    rather than calling it better with p = 0."""
    sweep_dir = tmp_path / "sweep"
    _finished_runs(sweep_dir, {t: [_summary(iou=value)] * 3
                               for t, value in {"segm": 0.5, "pose2d+segm": 0.6}.items()})
    study = report.compare(evaluations.load_sweep(str(sweep_dir)))["segm"]
    assert study["tests"] == {} and study["per_item_tests"] == {}
    out = tmp_path / "report"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    text = (out / "README.md").read_text()
    why = "untested: no spread over the seeds to test against (0.6 vs 0.5 in every run)"
    assert f"| pose2d+segm **best mean** | 0.6 ± 0 (3) | +0.1 | | | | {why} |" in text
    assert f"| l_foot | +0.1 | | | | {why} |" in text
    assert (f"| Body-part segmentation benefits from 2D pose but not from 3D pose | "
            f"**unresolved** | segm in pose2d+segm: +0.1 (n=3 vs 3), {why}; no pose3d+segm "
            f"run |") in text


def test_sweep_runs_each_subset_once_per_seed(tmp_path):
    s = tmp_path / "s"
    cmd = [sys.executable, "launch/sweep.py", f"--sweep_dir={s}", "--config=configs/default.py",
           "--tasks=pose2d,segm", "--seeds=3", "--protocols=bodynet", "--print_only"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 6  # seed by seed: every subset's first seed first
    assert f"--workdir={s}/pose2d " in lines[0] and "--config.seed" not in lines[0]
    assert f"--workdir={s}/segm@seed2 " in lines[5] and lines[5].count("--config.seed=2") == 1
    assert (f"--workdir={s}/segm@seed2 --protocol=bodynet "
            f"--out_file={s}/segm@seed2/eval_test_bodynet.json") in lines[5]


@pytest.mark.parametrize("args, message", [
    (["--", "--config.batch_size=0"], "config.batch_size=0 must be at least 1"),
    (["--", "--config.optimizer.learning_rate=inf"],
     "config.optimizer.learning_rate=inf must be finite and > 0"),
    (["--seeds=3", "--", "--config.seed=4294967294"],
     "--seeds=3: the last run's seed, config.seed=4294967294 plus 2, is 4294967296, beyond "
     "2**32 - 1; give a lower config.seed or fewer seeds")])
def test_sweep_refuses_a_value_hgmt_main_refuses_before_recording_its_plan(
        args, message, tmp_path, capsys):
    """A value each run's hgmt.main would refuse (or a seed the last run's number makes one)
    is refused before the sweep records its plan: before, the plan was recorded with it, and
    the rerun with the value mended was refused as another sweep in that directory."""
    s = tmp_path / "s"
    out = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                            "--tasks=pose2d", "--print_only", *args)
    assert out.returncode == 1 and out.stdout == "", out
    assert out.stderr.startswith(f"error: {message}" if message.startswith("--seeds") else
                                 "error: the pose2d runs' config (--config=configs/default.py "
                                 f"and the arguments after `--`): {message}"), out.stderr
    assert not s.exists()


def test_sweep_passes_a_tasks_loss_weight_to_the_runs_of_that_task(tmp_path, capsys):
    """`-- --config.loss_weights.segm=2` goes to the runs that train segm: a run without it
    has no such field (before: the sweep stopped at its first run, pose2d, with a hint to
    name segm after the config's colon, which the sweep refuses)."""
    s = tmp_path / "s"
    out = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                            "--tasks=pose2d,segm,pose2d+segm", "--print_only", "--",
                            "--config.loss_weights.segm=2",
                            "--config.loss_options.segm.foreground_weight=3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [("loss_weights.segm=2" in line, "foreground_weight=3" in line) for line in lines
            ] == [(False, False), (True, True), (True, True)], lines
    assert lines[0].endswith(f"--workdir={s}/pose2d")


def test_sweep_refuses_a_reference_protocol_at_another_label_size(tmp_path):
    """configs/demo.py trains at 128 px (32 x 32 label maps): `--protocols=bodynet` is refused
    before the plan is recorded, not run by run after training."""
    s = tmp_path / "s"
    cmd = [sys.executable, "launch/sweep.py", f"--sweep_dir={s}", "--config=configs/demo.py",
           "--tasks=pose2d", "--protocols=bodynet", "--print_only"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("error: --protocols=bodynet: measures 64x64 label maps"), (
        out.stderr)
    assert ("config.image_size=128 gives 32x32; drop --protocols, or train at "
            "--config.image_size=256") in out.stderr and not s.exists()


def test_the_sweeps_label_size_line_names_which_of_several_protocols_measures_64x64(
        tmp_path, monkeypatch, capsys):
    """With several extra protocols the refusal names the one that would measure these tasks
    on 64 x 64 maps: SURREAL's code has no pose2d metric (hgmt's is used), so for pose2d it
    is bodynet, listed second; one protocol alone is the flag's value. (In this process.)"""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)
    out = _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/demo.py",
                            "--tasks=pose2d", "--protocols=surreal,bodynet", "--print_only")
    assert out.returncode == 1 and out.stdout == "", out.stderr
    assert out.stderr.startswith(
        "error: --protocols=surreal,bodynet (bodynet): measures 64x64 label maps"), out.stderr
    assert not s.exists()


def test_sweep_refuses_the_trainers_protocol_among_the_extra_protocols(tmp_path, monkeypatch,
                                                                      capsys):
    """`--protocols` lists the extra protocols: the one each run's training evaluates into
    its eval_test.json (config.evals.test.protocol, hgmt by default) is refused in one line
    before the plan is recorded, not dropped without a word. With the test evaluator under
    bodynet, hgmt is an extra protocol: planned into eval_test_hgmt.json, the file hgmt.report
    reads hgmt's numbers from (and names in its command) for such a run, not into the
    trainer's eval_test.json. (The script's `main` run in this process.)"""
    s = tmp_path / "s"
    monkeypatch.chdir(REPO)

    def sweep(protocols, *extra):
        return _sweep_in_process(capsys, f"--sweep_dir={s}", "--config=configs/default.py",
                                 "--tasks=pose2d", f"--protocols={protocols}", "--print_only",
                                 *(["--", *extra] if extra else []))

    bodynet = "--config.evals.test.protocol=bodynet"
    out = sweep("bodynet,h36m")  # not a protocol: the flag, the one it lacks and the choices
    assert out.returncode == 1 and out.stderr == (
        "error: --protocols=bodynet,h36m: no protocol 'h36m'; give some of hgmt, bodynet, "
        "surreal, comma-separated\n"), out.stderr
    assert not s.exists()
    for given, extra, trained, others in (("hgmt", (), "hgmt", "bodynet, surreal"),
                                          ("bodynet,hgmt", (), "hgmt", "bodynet, surreal"),
                                          ("bodynet", (bodynet,), "bodynet", "hgmt, surreal")):
        out = sweep(given, *extra)
        assert out.returncode == 1 and out.stdout == "", out.stderr
        assert out.stderr == (
            f"error: --protocols={given}: each run's training evaluates {trained!r} into "
            f"eval_test.json already (config.evals.test.protocol={trained!r}); list only the "
            f"extra protocols ({others})\n")
        assert not s.exists()
    _finished(s / "pose2d", "eval_test.json")
    trained = {**_summary(pck=0.8), "protocol": "bodynet", "step": STEP}
    (s / "pose2d" / "eval_test.json").write_text(json.dumps(trained))
    out = sweep("hgmt", bodynet)
    assert out.returncode == 0, out.stderr
    run = s / "pose2d"
    assert out.stdout.splitlines() == [
        f"{sys.executable} -m hgmt.evaluate --workdir={run} --protocol=hgmt "
        f"--out_file={run}/eval_test_hgmt.json"]
    with pytest.raises(ValueError, match=re.escape(
            f"--protocol=hgmt --out_file={run}/eval_test_hgmt.json")):
        evaluations.load_sweep(str(s))
    (run / "eval_test_hgmt.json").write_text(json.dumps(
        {**_summary(pck=0.7), "protocol": "hgmt", "step": STEP}))
    assert sweep("hgmt", bodynet).stdout == ""
    assert evaluations.load_sweep(str(s))["pose2d"][0]["pose2d"]["pckh@0.5"] == 0.7


def test_sweep_seeds_count_from_the_seed_it_is_given(tmp_path):
    """`--seeds=3 -- --config.seed=1`: seeds 1, 2, 3 (seed index k gives the first seed + k),
    not 1, 1, 2, which would train two runs alike; the config the report rebuilds says the
    same."""
    s = tmp_path / "s"
    cmd = [sys.executable, "launch/sweep.py", f"--sweep_dir={s}", "--config=configs/default.py",
           "--tasks=pose2d", "--seeds=3", "--print_only", "--", "--config.seed=1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert [re.findall(r"--config\.seed=(\d+)", line) for line in lines] == [
        ["1"], ["1", "2"], ["1", "3"]]
    assert [run_configs.expected_config("configs/default.py", "pose2d", ["--config.seed=1"],
                                        k)["seed"] for k in range(3)] == [1, 2, 3]


def test_report_refuses_two_runs_of_a_subset_with_one_seed(tmp_path):
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 2})
    assert len(evaluations.load_sweep(sweep_dir)["pose2d"]) == 2
    path = os.path.join(sweep_dir, "pose2d@seed1", "config.json")
    json.dump(json.load(open(path)) | {"seed": 0}, open(path, "w"))
    with pytest.raises(ValueError, match="runs pose2d and pose2d@seed1 were both trained with "
                                         "config.seed=0, so they are one seed, not two"):
        evaluations.load_sweep(sweep_dir)


def test_report_refuses_runs_trained_unlike_the_others(tmp_path, capsys):
    """A run trained with other settings (a test run into the sweep's folder after an edit of
    the config, a rerun with --resume_with_changed_config) is another experiment: the report
    refuses it in one line (exit status 1, nothing written) naming the run, the field, its
    value and the others', and the fix, rather than count it in the means and verdicts. The
    fields the runs differ in by design (tasks, seed, the losses' weights and options) and
    those a rerun may change (hgmt.training.resume.FREE_ON_RESUME: where the data is, how it
    is read, the evaluators) are not refused, and the config section says which vary with
    the subset and seed and which differ otherwise."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 2, "pose2d+segm": 2})
    out = tmp_path / "report"

    def edit(name, **fields):
        path = os.path.join(sweep_dir, name, "config.json")
        config = json.load(open(path))
        for field, value in fields.items():
            *parents, last = field.split(".")
            node = config
            for key in parents:
                node = node[key]
            node[last] = value
        json.dump(config, open(path, "w"))

    edit("pose2d+segm@seed1", total_steps=300)
    edit("pose2d@seed1", **{"optimizer.learning_rate": 0.5})
    with pytest.raises(SystemExit) as e:
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"])
    assert e.value.code == (
        f"error: ValueError: {sweep_dir}: the runs were not all trained alike, so their "
        f"numbers do not compare: 2 runs trained alike (pose2d, pose2d+segm); pose2d+segm@seed1 "
        f"not: config.total_steps=300 (theirs: 1200); pose2d@seed1 not: "
        f"config.optimizer.learning_rate=0.5 (theirs: 0.002). Move each of pose2d+segm@seed1, "
        f"pose2d@seed1 out of {sweep_dir}: the report then leaves it out, and launch/sweep.py "
        f"with the sweep's arguments trains it again")
    assert not out.exists()
    edit("pose2d+segm@seed1", total_steps=1200)
    with pytest.raises(ValueError, match=re.escape(
            "3 runs trained alike (pose2d, pose2d+segm, pose2d+segm@seed1); pose2d@seed1 not: "
            "config.optimizer.learning_rate=0.5 (theirs: 0.002). Move pose2d@seed1 out of")):
        evaluations.load_sweep(sweep_dir)
    # On a tie the first run's settings are the sweep's.
    edit("pose2d+segm", total_steps=300)
    edit("pose2d+segm@seed1", total_steps=300)
    with pytest.raises(ValueError, match=re.escape(
            "2 runs trained alike (pose2d+segm, pose2d+segm@seed1); pose2d not: "
            "config.total_steps=1200 (theirs: 300); pose2d@seed1 not: "
            "config.optimizer.learning_rate=0.5 (theirs: 0.002), config.total_steps=1200 "
            "(theirs: 300).")):
        evaluations.load_sweep(sweep_dir)
    edit("pose2d@seed1", **{"optimizer.learning_rate": 0.002})
    edit("pose2d+segm", total_steps=1200)
    edit("pose2d+segm@seed1", total_steps=1200)
    # What a rerun may change, and the per-run fields, are not refused.
    edit("pose2d@seed1", worker_count=3, data_dir="/elsewhere", **{
        "evals.validation.best_metric": "pose2d/pckh@0.5"})
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    text = (out / "README.md").read_text()
    assert ("The 4 runs share every field below. `loss_options`, `loss_weights`, `seed`, "
            "`tasks` vary with the subset and seed. `data_dir`, "
            "`evals.validation.best_metric`, `worker_count` differ between runs in what does "
            "not change the weights trained (where the data is and how it is read, when to "
            "evaluate, log and save: hgmt.training.resume.FREE_ON_RESUME), or are recorded by "
            "some runs only.") in text, text
    assert "| total_steps | `1200` |" in text


def test_report_counts_a_protocols_file_only_of_the_step_the_training_ended_at(tmp_path):
    """eval_test_<protocol>.json counts only beside the trainer's eval_test.json and of the
    step it records (or, for an eval_test.json older than that record, the total_steps of the
    run's config.json): a file without eval_test.json (a run not finished) or of an earlier
    step (made before a rerun trained on) is as missing, and under hgmt the error names why
    and the command that makes it."""
    sweep_dir = tmp_path / "sweep"
    run = sweep_dir / "pose2d"
    run.mkdir(parents=True)
    bodynet = {**_summary(pck=0.6), "protocol": "bodynet"}
    (run / "eval_test_bodynet.json").write_text(json.dumps({**bodynet, "step": 300}))
    assert evaluations.evaluated_runs(str(sweep_dir), "bodynet") == {}
    assert runs.finished(str(sweep_dir)) == []
    (run / "eval_test.json").write_text(json.dumps({**_summary(pck=0.8), "step": STEP}))
    assert evaluations.evaluated_runs(str(sweep_dir), "bodynet") == {}
    with pytest.raises(FileNotFoundError, match="only for the step its training ended at"):
        evaluations.load_sweep(str(sweep_dir), "bodynet")
    (run / "eval_test_bodynet.json").write_text(json.dumps({**bodynet, "step": STEP}))
    assert evaluations.load_sweep(str(sweep_dir), "bodynet") == {"pose2d": [{**bodynet,
                                                                         "step": STEP}]}
    # An eval_test.json without its step: the config's total_steps, where training ended.
    (run / "eval_test.json").write_text(json.dumps(_summary(pck=0.8)))
    assert evaluations.evaluated_runs(str(sweep_dir), "bodynet") == {}
    (run / "config.json").write_text(json.dumps({"total_steps": STEP}))
    assert list(evaluations.evaluated_runs(str(sweep_dir), "bodynet")) == ["pose2d"]
    # A trainer's bodynet numbers are reported under bodynet beside a stale file of them;
    # under hgmt, an eval_test_hgmt.json of another step is not read as the run's numbers.
    trained = {**bodynet, "step": STEP, "pose2d": {**bodynet["pose2d"], "pck": 0.65}}
    (run / "eval_test.json").write_text(json.dumps(trained))
    (run / "eval_test_bodynet.json").write_text(json.dumps({**bodynet, "step": 300}))
    assert evaluations.load_sweep(str(sweep_dir), "bodynet") == {"pose2d": [trained]}
    (run / "eval_test_hgmt.json").write_text(json.dumps(
        {**_summary(pck=0.7), "protocol": "hgmt", "step": 300}))
    with pytest.raises(ValueError) as e:
        evaluations.load_sweep(str(sweep_dir))
    assert str(e.value) == (
        f"{run}/eval_test.json holds protocol 'bodynet' numbers, not 'hgmt' (the run's test "
        f"evaluator ran under 'bodynet'); report them with --protocol=bodynet, or evaluate the "
        f"run under 'hgmt' into {run}/eval_test_hgmt.json, which the report reads then (it is "
        f"there but not of the trained weights: it is of step 300, and the run's training "
        f"ended at step 1200): python -m hgmt.evaluate --workdir={run} --protocol=hgmt "
        f"--out_file={run}/eval_test_hgmt.json")


def test_report_names_a_run_file_that_does_not_read_and_the_fix(tmp_path):
    """An eval_test.json cut short (empty) or edited into another JSON value, a protocol's
    file, a config.json or the sweep's sweep.json that does not read: one error line naming
    the file and what to do, not a JSONDecodeError that names no file or a traceback."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 1, "segm": 1})
    run = os.path.join(sweep_dir, "pose2d")
    remake = (f"Make it again: rerun launch/sweep.py --sweep_dir={sweep_dir} with the sweep's "
              f"config and arguments, which trains pose2d on from its last checkpoint and "
              f"evaluates it")

    def refused(protocol="hgmt"):
        with pytest.raises(SystemExit) as e:
            hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={tmp_path / 'out'}",
                              f"--protocol={protocol}"])
        return e.value.code

    open(os.path.join(run, "eval_test.json"), "w").close()
    assert refused() == (f"error: DamagedRunFile: {run}/eval_test.json is empty: the file "
                         f"was cut short. {remake}")
    open(os.path.join(run, "eval_test.json"), "w").write("[1]")
    assert refused() == (f"error: DamagedRunFile: {run}/eval_test.json is not a JSON object "
                         f"(a JSON list): the file was edited or damaged. {remake}")
    open(os.path.join(run, "eval_test.json"), "w").write(json.dumps(
        {**_summary(pck=0.8), "step": STEP}))
    open(os.path.join(run, "eval_test_bodynet.json"), "w").write('{"protocol": ')
    assert refused("bodynet") == (
        f"error: DamagedRunFile: {run}/eval_test_bodynet.json is not a JSON object (not JSON: "
        f"Expecting value: line 1 column 14): the file was edited or damaged. Evaluate the run "
        f"into it again: python -m hgmt.evaluate --workdir={run} --protocol=bodynet "
        f"--out_file={run}/eval_test_bodynet.json")
    open(os.path.join(run, "config.json"), "w").write("[]")
    assert refused() == (f"error: DamagedRunFile: {run}/config.json is not a JSON object (a "
                         f"JSON list): the file was edited or damaged. Restore it from a copy, "
                         f"or train the run again")
    os.remove(os.path.join(run, "config.json"))
    open(os.path.join(sweep_dir, "sweep.json"), "w").write("[]")
    assert refused() == (f"error: DamagedRunFile: {sweep_dir}/sweep.json is not a JSON object "
                         f"(a JSON list): the file was edited or damaged. Run launch/sweep.py "
                         f"with the sweep's config and arguments again to write it")
    assert not (tmp_path / "out").exists()


def test_report_names_a_plan_field_missing_or_of_another_type_and_the_fix(tmp_path, capsys):
    """A sweep.json lacking `subsets` or holding it as a string (or `seeds` not a number), or
    lacking `config` for --check_config: one error line naming the file, the field and what to
    do (`runs.plan` checks the fields), not a KeyError or TypeError traceback. A plan without
    `seeds` (written before --seeds) counts one seed."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 1, "segm": 1})
    path = os.path.join(sweep_dir, "sweep.json")
    whole = json.loads(open(path).read())
    fix = "Run launch/sweep.py with the sweep's config and arguments again to write it"

    def refused(plan: dict, *flags: str):
        open(path, "w").write(json.dumps(plan))
        with pytest.raises(SystemExit) as e:
            hgmt.report.main([f"--sweep_dir={sweep_dir}", *flags])
        return e.value.code

    out = f"--out_dir={tmp_path / 'out'}"
    without = {k: v for k, v in whole.items() if k != "subsets"}
    assert refused(without, out) == (f"error: DamagedRunFile: {path} holds no 'subsets' list: "
                                     f"the file was edited or damaged. {fix}")
    assert refused({**whole, "subsets": "pose2d"}, out) == (
        f"error: DamagedRunFile: {path} holds no 'subsets' list: the file was edited or "
        f"damaged. {fix}")
    assert refused({**whole, "subsets": ["pose2d", 2]}, out) == (
        f"error: DamagedRunFile: {path} holds no 'subsets' list of strings: the file was "
        f"edited or damaged. {fix}")
    assert refused({**whole, "seeds": "2"}, out) == (
        f"error: DamagedRunFile: {path} holds no 'seeds' int: the file was edited or "
        f"damaged. {fix}")
    assert not (tmp_path / "out").exists()
    capsys.readouterr()
    assert refused({k: v for k, v in whole.items() if k != "config"}, "--check_config") == 2
    assert capsys.readouterr().err == (
        f"error: DamagedRunFile: {path} holds no 'config' str: the file was edited or "
        f"damaged. {fix}\n")
    open(path, "w").write(json.dumps({k: v for k, v in whole.items() if k != "seeds"}))
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", out]) == 0
    assert "Runs finished: 2 of 2 (2 subsets x 1 seed)." in (
        tmp_path / "out" / "README.md").read_text()


def test_a_full_disk_leaves_the_earlier_report_as_it_was(tmp_path, monkeypatch):
    """The disk fills while the report's files are written (the third file's sync fails,
    ENOSPC): one line naming DiskFull and that file, and every file of the earlier report in
    OUT_DIR unchanged, no temporary left; before, the files were written in place, one by one,
    so the first ones were the new report's beside the old one's and the third was cut off."""
    import errno

    sweep_dir = _study_sweep(tmp_path, {"pose2d": 1, "segm": 1})
    out = tmp_path / "out"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}",
                             "--note=first"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    synced = []

    def full_at_the_third(fd):
        synced.append(fd)
        if len(synced) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_at_the_third)
    with pytest.raises(SystemExit) as e:
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}", "--note=second"])
    named = re.match(rf"error: DiskFull: \[Errno 28\] cannot write the file to "
                     rf"{re.escape(str(out))}/(\S+): the disk or quota is full \(.*\)\. "
                     rf"Nothing partial was left behind\. ", str(e.value.code))
    assert named and named[1] in before, e.value.code
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_ctrl_c_ends_the_report_in_one_line(tmp_path):
    """Ctrl-C while `python -m hgmt.report` reads the sweep or writes: one line and the
    shell's status 130 (`stops.stops_in_one_line`), not Python's traceback."""
    proc = interrupted_command("hgmt.report", "_run", [
        f"--sweep_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130, "", "interrupted (Ctrl-C); nothing partial was left behind\n")


def test_a_folder_not_named_as_a_run_is_left_out_with_a_warning(tmp_path, capsys):
    """A backup `pose2d.old` (or `segm+pose2d`, `pose2d@seed0`: names launch/sweep.py never
    gives) in the sweep's folder is not a run: the report, --check_config and the sweep leave
    it out, each with one warning line naming it, instead of stopping at an unknown task."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 1, "segm": 1})
    for name in ("pose2d.old", "segm+pose2d", "pose2d@seed0"):
        shutil.copytree(os.path.join(sweep_dir, "pose2d"), os.path.join(sweep_dir, name))
    warnings = [f"warning: {sweep_dir}/{name}: not a run of this sweep "
                f"(<subset>[@seed<k>]): left out"
                for name in ("pose2d.old", "pose2d@seed0", "segm+pose2d")]
    assert runs.finished(sweep_dir) == ["pose2d", "segm"]
    assert list(evaluations.evaluated_runs(sweep_dir)) == ["pose2d", "segm"]
    assert [runs.is_run_name(n) for n in ("pose2d+segm", "pose2d+segm@seed2", "all",
                                          "pose2d@seed01", "pose2d@seedx", "")] == [
        True, True, False, False, False, False]
    out = tmp_path / "out"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    assert capsys.readouterr().err.splitlines()[:3] == warnings
    assert "The 2 runs share every field below" in (out / "README.md").read_text()
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", "--check_config"]) == 0
    printed = capsys.readouterr()
    assert printed.err.splitlines() == warnings and "2 of 2 finished runs" in printed.out
    os.remove(os.path.join(sweep_dir, "sweep.json"))  # configs/study.py's would build data
    sweep = subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={sweep_dir}",
                            "--config=configs/default.py", "--tasks=pose2d,segm",
                            "--print_only"], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
    assert sweep.returncode == 0 and sweep.stdout == "", sweep.stderr
    assert sweep.stderr.splitlines() == [
        *warnings, "launch/sweep.py: 2 of 2 runs done already, not printed"]


@pytest.mark.slow  # a second sweep call over finished runs
def test_sweep_plan_keeps_every_subset_asked_for_and_refuses_another_config(tmp_path):
    """Finished runs only (nothing trains): a second call for fewer subsets and seeds keeps
    the first call's plan, which the report counts against; another config is refused."""
    sweep_dir = tmp_path / "sweep"
    for name in ("pose2d", "segm", "pose2d@seed1"):
        (sweep_dir / name).mkdir(parents=True)
        (sweep_dir / name / "eval_test.json").write_text(json.dumps(_summary(pck=0.8)))

    def run(*args):
        return subprocess.run([sys.executable, "launch/sweep.py", f"--sweep_dir={sweep_dir}",
                               *args], cwd=REPO, capture_output=True, text=True, timeout=120)

    assert run("--config=configs/demo.py", "--tasks=pose2d,segm").returncode == 0
    again = run("--config=configs/demo.py", "--tasks=pose2d", "--seeds=2")
    assert again.returncode == 0 and again.stdout.count("done already") == 2, again.stdout
    plan = json.loads((sweep_dir / "sweep.json").read_text())
    assert (plan["subsets"], plan["seeds"]) == (["pose2d", "segm"], 2)
    other = run("--config=configs/study.py", "--tasks=pose2d")
    assert other.returncode != 0 and "give another --sweep_dir" in other.stderr
    assert json.loads((sweep_dir / "sweep.json").read_text()) == plan


def test_report_names_runs_outside_the_plan(tmp_path):
    """A finished run the plan does not hold is counted in the tables: the progress line names
    it, and the frames every run was evaluated on."""
    sweep_dir = tmp_path / "sweep"
    for name in ("pose2d", "pose2d+segm", "pose2d@seed3"):
        (sweep_dir / name).mkdir(parents=True)
        (sweep_dir / name / "eval_test.json").write_text(json.dumps(
            {**_summary(pck=0.8), "num_examples": 240, "split": "test",
             "frames": "every4", "flip": False,
             "metrics_version": metrics_versions.metrics_version("hgmt")}))
    (sweep_dir / "sweep.json").write_text(json.dumps({"subsets": ["pose2d", "pose2d+segm"],
                                                      "seeds": 1}))
    line = evaluations.progress(str(sweep_dir), evaluations.load_sweep(str(sweep_dir)))
    assert line == ("Runs finished: 2 of 2 (2 subsets x 1 seed); finished but not in the plan, "
                    "counted in the tables: pose2d@seed3. Each is evaluated on 240 frames of "
                    "split `test` (frames: every4; no flip test; metric definitions version "
                    f"{metrics_versions.metrics_version('hgmt')})."), line


def test_report_says_its_runs_metric_definitions_are_older_than_todays(tmp_path, monkeypatch):
    """Runs evaluated with the flip test under metric definitions version 1 (summaries without
    `metrics_version`) while today's of their protocol, hgmt, are version 3 (two changes
    since; version 4 changed other protocols only): the progress line says so, what each of
    its protocol's changes was, how many runs kept the checkpoints to evaluate again (a
    step in `<run>/checkpoints`: a folder left empty keeps none) and the command; report.json
    records the evaluation of each task's numbers."""
    monkeypatch.setattr(metrics_versions, "METRICS_CHANGES", {
        2: (("hgmt", "surreal"), "change two"), 3: (("hgmt",), "change three"),
        4: (("bodynet", "surreal"), "change four")})
    sweep_dir = tmp_path / "sweep"
    flipped = {"num_examples": 24, "split": "test", "frames": "middle", "flip": True,
               "max_examples": 0}
    _finished_runs(sweep_dir, {"pose2d": [{**_summary(pck=0.8), **flipped}] * 2,
                               "pose2d+segm": [{**_summary(pck=0.8), **flipped}]})
    results = evaluations.load_sweep(str(sweep_dir))
    command = (f"`python -m hgmt.evaluate --workdir={sweep_dir}/<run> --split=test "
               f"--frames=middle --flip --max_examples=0 --protocol=hgmt "
               f"--out_file={sweep_dir}/<run>/eval_test.json`")
    said = ("Runs finished: 3. Each is evaluated on 24 frames of split `test` (frames: middle; "
            "with flip test; metric definitions version 1). Version 1 is older than today's 3 "
            "(hgmt.evaluation.metrics_versions.METRICS_CHANGES), so today's hgmt.evaluate can give "
            "these models other numbers; what changed: version 2: change two; version 3: change "
            "three. {have}. A run with its checkpoints is evaluated under today's definitions "
            "by, for each <run>: " + command + ".")
    assert evaluations.progress(str(sweep_dir), results) == said.format(have=(
        "None of these 3 runs kept its checkpoints (`<run>/checkpoints`), so their numbers "
        "stay under version 1 unless they are trained again"))
    # Checkpoint folders holding no step (left empty; an unfinished write) keep nothing.
    (sweep_dir / "pose2d" / "checkpoints").mkdir()
    (sweep_dir / "pose2d+segm" / "checkpoints" / "7.orbax-checkpoint-tmp-1").mkdir(parents=True)
    assert evaluations.progress(str(sweep_dir), results) == said.format(have=(
        "None of these 3 runs kept its checkpoints (`<run>/checkpoints`), so their numbers "
        "stay under version 1 unless they are trained again"))
    (sweep_dir / "pose2d@seed1" / "checkpoints" / "100").mkdir(parents=True)
    assert evaluations.progress(str(sweep_dir), results) == said.format(have=(
        "1 of these 3 runs kept their checkpoints (`<run>/checkpoints`: pose2d@seed1); the "
        "others would have to be trained again"))
    for name in ("pose2d", "pose2d+segm"):
        (sweep_dir / name / "checkpoints" / "100").mkdir(parents=True)
    assert evaluations.progress(str(sweep_dir), results) == said.format(have=(
        "Every one of these 3 runs kept its checkpoints (`<run>/checkpoints`)"))
    assert report.compare(results)["pose2d"]["evaluation"] == {
        "num_examples": 24, "split": "test", "frames": "middle", "flip": True,
        "metrics_version": 1, "window": "hgmt", "metrics_version_today": 3}


def test_report_refuses_runs_evaluated_on_other_frames(tmp_path):
    """Seven runs on 240 every4 frames, one on the 24 middle frames: the numbers do not
    compare, so hgmt.report writes no table and no verdict; its one error line names both
    groups and the command that evaluates the odd run as the others were, with the example
    limit they asked for (none: 0), not the frames they evaluated."""
    sweep_dir = tmp_path / "sweep"
    every4 = {"num_examples": 240, "split": "test", "frames": "every4", "flip": False,
              "metrics_version": metrics_versions.metrics_version("hgmt"), "max_examples": 0}
    runs_of = {"pose2d": 3, "pose2d+segm": 3, "segm": 2}
    for tasks, seeds in runs_of.items():
        for k in range(seeds):
            evaluation = ({"num_examples": 24, "frames": "middle"}
                          if (tasks, k) == ("pose2d+segm", 1) else {})
            run = sweep_dir / workdirs.run_name(tasks, k)
            run.mkdir(parents=True)
            (run / "eval_test.json").write_text(json.dumps(
                {**_summary(pck=0.8 + 0.01 * k, iou=0.5), **every4, **evaluation}))
    out = tmp_path / "report"
    with pytest.raises(SystemExit) as e:
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"])
    assert str(e.value.code) == (
        f"error: ValueError: {sweep_dir}: the runs were not all evaluated alike, so their "
        f"numbers do not compare: 7 runs with num_examples=240, split='test', "
        f"frames='every4', flip=False, metrics_version=2, window='hgmt' (pose2d, pose2d+segm, "
        f"pose2d+segm@seed2, pose2d@seed1, pose2d@seed2 and 2 other runs); 1 run with "
        f"num_examples=24, split='test', frames='middle', flip=False, metrics_version=2, "
        f"window='hgmt' (pose2d+segm@seed1). "
        f"Evaluate pose2d+segm@seed1 "
        f"again as the others, for each <run>: python -m hgmt.evaluate "
        f"--workdir={sweep_dir}/<run> --split=test --frames=every4 --noflip "
        f"--max_examples=0 --protocol=hgmt --out_file={sweep_dir}/<run>/eval_test.json")
    assert not out.exists()
    path = sweep_dir / "pose2d+segm@seed1" / "eval_test.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **every4}))
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    assert json.loads((out / "claims.json").read_text())
    # A summary made under the first metric definitions (no metrics_version): every run is to
    # be evaluated again only if none has today's; here the one run.
    path.write_text(json.dumps({k: v for k, v in json.loads(path.read_text()).items()
                                if k != "metrics_version"}))
    with pytest.raises(SystemExit) as e:
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={tmp_path / 'again'}"])
    assert ("flip=False, metrics_version=1, window='hgmt' (pose2d+segm@seed1). Evaluate "
            "pose2d+segm@seed1 again as the others") in str(e.value.code), e.value.code


def test_the_report_evaluates_a_run_again_into_the_file_it_reads_its_numbers_from(tmp_path,
                                                                                   monkeypatch):
    """Under hgmt the report reads a run's numbers from eval_test.json, or from
    eval_test_hgmt.json where the trainer evaluated another protocol into eval_test.json.
    The command that evaluates runs again writes each run's numbers into the file read for
    it: segm's trainer's bodynet numbers are not overwritten (launch/sweep.py takes a run
    with eval_test.json as finished, so they would be lost), and following the command makes
    the runs compare. The same holds for the command of runs under older metric
    definitions."""
    sweep_dir = tmp_path / "sweep"
    every4 = {"num_examples": 240, "split": "test", "frames": "every4", "flip": False,
              "metrics_version": metrics_versions.metrics_version("hgmt"), "max_examples": 0,
              "step": STEP}
    middle = {**every4, "num_examples": 24, "frames": "middle"}
    _finished_runs(sweep_dir, {"pose2d": [{**_summary(pck=0.8), **every4}] * 3,
                               "segm": [{**_summary(iou=0.5), **middle}] * 2})
    trained = {**_summary(iou=0.4), **every4, "protocol": "bodynet"}
    (sweep_dir / "segm" / "eval_test.json").write_text(json.dumps(trained))
    (sweep_dir / "segm" / "eval_test_hgmt.json").write_text(json.dumps(
        {**_summary(iou=0.5), **middle}))
    with pytest.raises(ValueError) as e:
        evaluations.load_sweep(str(sweep_dir))
    assert str(e.value).endswith(
        f"Evaluate segm, segm@seed1 again as the others, for each <run>: python -m "
        f"hgmt.evaluate --workdir={sweep_dir}/<run> --split=test --frames=every4 --noflip "
        f"--max_examples=0 --protocol=hgmt --out_file={sweep_dir}/<run>/eval_test.json (for "
        f"segm, whose eval_test.json holds another protocol's numbers: "
        f"--out_file={sweep_dir}/<run>/eval_test_hgmt.json)"), e.value
    for name, out in (("segm", "eval_test_hgmt.json"), ("segm@seed1", "eval_test.json")):
        (sweep_dir / name / out).write_text(json.dumps({**_summary(iou=0.5), **every4}))
    assert json.loads((sweep_dir / "segm" / "eval_test.json").read_text()) == trained
    results = evaluations.load_sweep(str(sweep_dir))
    assert [r["num_examples"] for r in results["segm"]] == [240, 240]
    # Only runs under eval_test_hgmt.json to evaluate: the command names that file alone.
    segm = {"segm": evaluations._result(str(sweep_dir / "segm"), "hgmt")[0]}
    settings = comparable.evaluation_settings(middle)
    assert comparable.evaluate_command(str(sweep_dir), "hgmt", settings, [0], segm) == (
        f"python -m hgmt.evaluate --workdir={sweep_dir}/<run> --split=test --frames=middle "
        f"--noflip --max_examples=0 --protocol=hgmt "
        f"--out_file={sweep_dir}/<run>/eval_test_hgmt.json", "")
    today = max(metrics_versions.METRICS_CHANGES) + 1
    monkeypatch.setattr(metrics_versions, "METRICS_CHANGES",
                        {**metrics_versions.METRICS_CHANGES, today: (("hgmt",), "a change")})
    assert evaluations.progress(str(sweep_dir), results).endswith(
        f"--protocol=hgmt --out_file={sweep_dir}/<run>/eval_test.json` (for segm, whose "
        f"eval_test.json holds another protocol's numbers: "
        f"--out_file={sweep_dir}/<run>/eval_test_hgmt.json)."), evaluations.progress(
            str(sweep_dir), results)


def test_report_refuses_runs_evaluated_in_other_crop_windows(tmp_path):
    """Two bodynet summaries of the same frames, one in the references' crop window and one
    made before the reference protocols had it (no `window`: hgmt's): they do not compare,
    and the one to evaluate again is the one outside the window hgmt.evaluate uses today.
    With no run in that window, every run is to be evaluated again. All in the reference
    window: the progress line says that window."""
    sweep_dir = tmp_path / "sweep"

    def write(name, window):
        (sweep_dir / name).mkdir(parents=True, exist_ok=True)
        summary = {**_summary(pck=0.8), "protocol": "bodynet", "num_examples": 240,
                   "split": "test", "frames": "middle", "flip": False,
                   "metrics_version": metrics_versions.metrics_version("bodynet"), "step": STEP}
        summary["pose2d"] = {**summary["pose2d"], "protocol": "bodynet", "pck": 0.8}
        if window:
            summary["window"] = window
        (sweep_dir / name / "eval_test_bodynet.json").write_text(json.dumps(summary))
        (sweep_dir / name / "eval_test.json").write_text(json.dumps({"step": STEP}))

    write("pose2d", "reference")
    write("pose2d+segm", None)
    with pytest.raises(ValueError) as e:
        evaluations.load_sweep(str(sweep_dir), "bodynet")
    version = metrics_versions.metrics_version("bodynet")
    assert ("1 run with num_examples=240, split='test', frames='middle', flip=False, "
            f"metrics_version={version}, window='hgmt' (pose2d+segm); 1 run with "
            f"num_examples=240, split='test', frames='middle', flip=False, "
            f"metrics_version={version}, window='reference' (pose2d). Evaluate pose2d+segm "
            "again as the others, for each <run>: python -m hgmt.evaluate") in str(e.value), e.value
    assert str(e.value).endswith(f"--protocol=bodynet --out_file={sweep_dir}/<run>/"
                                 f"eval_test_bodynet.json"), e.value
    write("pose2d", None)
    write("pose2d@seed1", "hgmt")
    (sweep_dir / "pose2d+segm" / "eval_test_bodynet.json").write_text(
        (sweep_dir / "pose2d" / "eval_test_bodynet.json").read_text().replace(
            '"num_examples": 240', '"num_examples": 120'))
    with pytest.raises(ValueError, match=re.escape(
            "Evaluate every run again (hgmt.evaluate evaluates protocol 'bodynet' in crop "
            f"window 'reference', metrics_version={version}), for each <run>: python -m "
            "hgmt.evaluate "
            "--workdir=")) as e:
        evaluations.load_sweep(str(sweep_dir), "bodynet")
    assert "--max_examples=240 --protocol=bodynet" in str(e.value), e.value
    for name in ("pose2d", "pose2d@seed1", "pose2d+segm"):
        write(name, "reference")
    line = evaluations.progress(str(sweep_dir), evaluations.load_sweep(str(sweep_dir), "bodynet"))
    assert line.endswith("Each is evaluated on 240 frames of split `test` (frames: middle; "
                         "no flip test; crop window: reference; metric definitions version "
                         f"{metrics_versions.metrics_version('bodynet')})."), line


def test_report_of_runs_trained_on_the_references_box_keeps_their_window(tmp_path):
    """Runs trained with config.window=reference_box: hgmt.evaluate evaluates them under
    hgmt's protocol in that window, so a run evaluated in hgmt's window is the one to evaluate
    again."""
    sweep_dir = tmp_path / "sweep"
    for name, window in (("pose2d", "reference_box"), ("pose2d@seed1", "reference_box"),
                         ("pose2d+segm", "hgmt")):
        run = sweep_dir / name
        run.mkdir(parents=True)
        summary = {**_summary(pck=0.8), "protocol": "hgmt", "num_examples": 240,
                   "split": "test", "frames": "middle", "flip": False, "window": window,
                   "metrics_version": metrics_versions.metrics_version("hgmt"), "step": STEP}
        (run / "eval_test.json").write_text(json.dumps(summary))
        (run / "config.json").write_text(json.dumps(
            {"total_steps": STEP, "window": "reference_box", "seed": int(name.endswith("1"))}))
    with pytest.raises(ValueError, match=re.escape(
            "Evaluate pose2d+segm again as the others, for each <run>:")):
        evaluations.load_sweep(str(sweep_dir), "hgmt")
    summary = json.loads((sweep_dir / "pose2d" / "eval_test.json").read_text())
    (sweep_dir / "pose2d+segm" / "eval_test.json").write_text(json.dumps(summary))
    assert len(evaluations.load_sweep(str(sweep_dir), "hgmt")) == 2


def test_report_refuses_runs_evaluated_at_other_label_sizes(tmp_path):
    """A run evaluated at another label size (hgmt.evaluate with another --config.image_size)
    does not compare: refused, naming each size's runs and the fix. A summary made before the
    label size was recorded is compared with none; nor are the data a summary records
    (dataset, data_dir: where the same build lies differs by host)."""
    sweep_dir = tmp_path / "sweep"

    def write(name, label_size=16, data_dir="/data/a"):
        run = sweep_dir / name
        run.mkdir(parents=True, exist_ok=True)
        summary = {**_summary(pck=0.8), "protocol": "hgmt", "num_examples": 240,
                   "split": "test", "frames": "middle", "flip": False, "window": "hgmt",
                   "metrics_version": metrics_versions.metrics_version("hgmt"), "step": STEP,
                   "dataset": "surreal/all", "data_dir": data_dir}
        if label_size is not None:
            summary["label_size"] = label_size
        (run / "eval_test.json").write_text(json.dumps(summary))

    write("pose2d")
    write("pose2d@seed1", label_size=None, data_dir="/mnt/nodeB/data")
    write("pose2d+segm", label_size=32)
    with pytest.raises(ValueError) as e:
        evaluations.load_sweep(str(sweep_dir), "hgmt")
    assert str(e.value) == (
        f"{sweep_dir}: the runs were evaluated at other label sizes, so their numbers do not "
        f"compare: 16 x 16 (pose2d); 32 x 32 (pose2d+segm). Evaluate them again at the image "
        f"size they were trained at (hgmt.evaluate without --config.image_size)")
    write("pose2d+segm")
    assert len(evaluations.load_sweep(str(sweep_dir), "hgmt")) == 2


def _count_reads(monkeypatch, sweep_dir) -> collections.Counter:
    """{file under `sweep_dir`: times read}, of the JSON files hgmt reads from now on (every
    one through `workdirs.read_json_object`)."""
    opened = collections.Counter()
    read = workdirs.read_json_object

    def counting(path, *args, **kwargs):
        opened[os.path.relpath(path, sweep_dir)] += 1
        return read(path, *args, **kwargs)

    monkeypatch.setattr(workdirs, "read_json_object", counting)
    return opened


def test_report_reads_each_evaluation_file_of_a_run_once(tmp_path, monkeypatch):
    """`load_sweep`, then `progress`, each read a run's evaluation files once apiece, and only
    those they need: the summary whose protocol decides which file holds the run's numbers is
    the one reported. Under hgmt: pose2d's eval_test.json holds hgmt's numbers; segm's holds
    bodynet's, so its eval_test_hgmt.json is read too. Under bodynet: segm's
    eval_test_bodynet.json holds them, read with its eval_test.json, whose step says the
    training ended where that evaluation was made; pose2d has no such file, and its
    eval_test.json does not hold bodynet's numbers."""
    sweep_dir = tmp_path / "sweep"
    hgmt_numbers = {**_summary(pck=0.8, iou=0.5), "protocol": "hgmt", "step": STEP}
    bodynet = {**_summary(pck=0.6, iou=0.4), "protocol": "bodynet", "step": STEP}
    _finished_runs(sweep_dir, {"pose2d": [hgmt_numbers], "segm": [bodynet]})
    (sweep_dir / "segm" / "eval_test_hgmt.json").write_text(json.dumps(hgmt_numbers))
    (sweep_dir / "segm" / "eval_test_bodynet.json").write_text(json.dumps(bodynet))
    opened = _count_reads(monkeypatch, sweep_dir)
    results = evaluations.load_sweep(str(sweep_dir))
    assert results == {"pose2d": [hgmt_numbers], "segm": [hgmt_numbers]}
    every = {"pose2d/eval_test.json": 1, "segm/eval_test.json": 1,
             "segm/eval_test_hgmt.json": 1}
    assert opened == every
    opened.clear()
    assert evaluations.progress(str(sweep_dir), results) == "Runs finished: 2."
    assert opened == every
    opened.clear()
    assert evaluations.load_sweep(str(sweep_dir), "bodynet") == {"segm": [bodynet]}
    assert opened == {"pose2d/eval_test.json": 1, "segm/eval_test.json": 1,
                      "segm/eval_test_bodynet.json": 1}


def test_the_report_command_reads_each_evaluation_file_of_a_run_once(tmp_path, monkeypatch):
    """`hgmt.report` finds the sweep's evaluated runs once for both `load_sweep` and
    `progress` (`evaluated_runs`): each evaluation file is read once in the whole command,
    and the README's progress line is the one `progress` gives on its own."""
    sweep_dir = tmp_path / "sweep"
    hgmt_numbers = {**_summary(pck=0.8, iou=0.5), "protocol": "hgmt", "step": STEP}
    bodynet = {**_summary(pck=0.6, iou=0.4), "protocol": "bodynet", "step": STEP}
    _finished_runs(sweep_dir, {"pose2d": [hgmt_numbers], "segm": [bodynet]})
    (sweep_dir / "segm" / "eval_test_hgmt.json").write_text(json.dumps(hgmt_numbers))
    (sweep_dir / "sweep.json").write_text(json.dumps({"subsets": ["pose2d", "segm"],
                                                      "seeds": 1}))
    alone = evaluations.progress(str(sweep_dir), evaluations.load_sweep(str(sweep_dir)))
    assert alone == "Runs finished: 2 of 2 (2 subsets x 1 seed).", alone
    assert evaluations.evaluated_runs(str(sweep_dir)) == {
        "pose2d": ("eval_test.json", hgmt_numbers), "segm": ("eval_test_hgmt.json", hgmt_numbers)}
    opened = _count_reads(monkeypatch, sweep_dir)
    out = tmp_path / "out"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    assert {f: n for f, n in opened.items() if "eval_test" in f} == {
        "pose2d/eval_test.json": 1, "segm/eval_test.json": 1, "segm/eval_test_hgmt.json": 1}
    assert f"Metric protocol: `hgmt` (docs/metrics.md). {alone}" in (out / "README.md").read_text()


def test_report_reads_a_sweep_trained_with_a_reference_test_protocol(tmp_path):
    """A run trained with config.evals.test.protocol=bodynet wrote bodynet numbers to
    eval_test.json: reported under --protocol=bodynet; under hgmt, one error line naming the
    fix. A workdir command on a folder that is no workdir: one error line too."""
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "pose2d").mkdir(parents=True)
    summary = {**_summary(pck=0.8), "protocol": "bodynet", "step": STEP}
    (sweep_dir / "pose2d" / "eval_test.json").write_text(json.dumps(summary))
    assert evaluations.load_sweep(str(sweep_dir), "bodynet") == {"pose2d": [summary]}
    (sweep_dir / "sweep.json").write_text(json.dumps({"subsets": ["pose2d"], "seeds": 1}))
    line = evaluations.progress(str(sweep_dir), evaluations.load_sweep(str(sweep_dir), "bodynet"))
    assert line.startswith("Runs finished: 1 of 1 (1 subsets x 1 seed)."), line
    with pytest.raises(SystemExit) as e:
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={tmp_path / 'out'}"])
    run = sweep_dir / "pose2d"
    assert e.value.code == (
        f"error: ValueError: {run}/eval_test.json holds protocol 'bodynet' numbers, not "
        f"'hgmt' (the run's test evaluator ran under 'bodynet'); report them with "
        f"--protocol=bodynet, or evaluate the run under 'hgmt' into {run}/eval_test_hgmt.json, "
        f"which the report reads then: python -m hgmt.evaluate --workdir={run} "
        f"--protocol=hgmt --out_file={run}/eval_test_hgmt.json")
    # The fix works: hgmt's numbers where the command writes them are what the report reads.
    hgmt_numbers = {**_summary(pck=0.7), "protocol": "hgmt", "step": STEP}
    out_file = str(e.value.code).rpartition("--out_file=")[2]
    with open(out_file, "w") as f:
        json.dump(hgmt_numbers, f)
    assert evaluations.load_sweep(str(sweep_dir)) == {"pose2d": [hgmt_numbers]}
    assert evaluations.load_sweep(str(sweep_dir), "bodynet") == {"pose2d": [summary]}
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={tmp_path / 'out'}"]) == 0
    (run / "eval_test_hgmt.json").write_text(json.dumps(summary))
    with pytest.raises(ValueError) as e:
        evaluations.load_sweep(str(sweep_dir))
    assert str(e.value) == (
        f"{run}/eval_test_hgmt.json holds protocol 'bodynet' numbers, not 'hgmt'; evaluate "
        f"the run under 'hgmt' into it again: python -m hgmt.evaluate --workdir={run} "
        f"--protocol=hgmt --out_file={run}/eval_test_hgmt.json")
    from hgmt import evaluate

    with pytest.raises(SystemExit) as e:
        evaluate.main([f"--workdir={tmp_path / 'nowhere'}"])
    assert str(e.value.code).startswith(f"error: FileNotFoundError: {tmp_path / 'nowhere'}/"
                                        f"config.json not found"), e.value.code


def test_report_compares_each_task_with_its_isolated_run(tmp_path):
    sweep_dir = tmp_path / "sweep"
    runs = {"pose2d": _summary(pck=0.80), "pose3d": _summary(mjd=60.0),
            "segm": _summary(iou=0.50), "pose2d+segm": _summary(pck=0.85, iou=0.48),
            "pose2d+pose3d": _summary(pck=0.78, mjd=55.0), "depth+segm": _summary(iou=0.52,
                                                                                  rmse=90.0)}
    for name, s in runs.items():
        (sweep_dir / name).mkdir(parents=True)
        (sweep_dir / name / "eval_test.json").write_text(json.dumps(s))
    (sweep_dir / "pose3d+depth").mkdir()  # unfinished: ignored
    study = report.compare(evaluations.load_sweep(str(sweep_dir)))
    assert study["pose2d"]["best"] == "pose2d+segm"
    assert study["pose2d"]["gain"]["pose2d+segm"] == pytest.approx(0.05)
    assert study["pose2d"]["gain"]["pose2d+pose3d"] == pytest.approx(-0.02)
    assert study["pose3d"]["best"] == "pose2d+pose3d"  # lower MJD is better
    assert study["pose3d"]["gain"]["pose2d+pose3d"] == pytest.approx(5.0)
    assert study["pose3d"]["per_item_gain"]["l_wrist"] == pytest.approx(5.0)
    assert study["segm"]["best"] == study["segm"]["best_multi_task"] == "depth+segm"
    assert "l_hand" not in study["segm"]["per_item_gain"]
    assert study["depth"]["isolated"] is None and "gain" not in study["depth"]

    out = tmp_path / "report"
    assert hgmt.report.main(["--sweep_dir", str(sweep_dir), "--out_dir", str(out), "--note",
                             "demo"]) == 0
    text = (out / "README.md").read_text()
    assert "| pose2d+segm **best mean** | 0.85 | +0.05 |" in text
    assert "No isolated `depth` run" in text
    # One seed a run: the per-joint table has no test to adjust over, and says why.
    assert ("Per joint: pose2d+segm over isolated pose2d (+ = better; untested: each row says "
            "why).") in text
    for name in ("pose2d_subsets.png", "pose2d_per_item.png", "segm_per_item.png",
                 "depth_subsets.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    assert json.loads((out / "report.json").read_text())["pose2d"]["best"] == "pose2d+segm"


def test_charts_leave_the_matplotlib_backend_alone(tmp_path):
    """The study's charts and the PCKh curve draw on their own Agg canvas: a notebook's
    backend (here svg) is still the one it chose afterwards."""
    import matplotlib

    from hgmt.tasks import drawing

    study = report.compare({"pose2d": [_summary(pck=0.80)],
                            "pose2d+segm": [_summary(pck=0.85, iou=0.5)]})
    chosen = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        assert len(charts.draw(study, provenance.DEMO_DATA)) == 3
        drawing.plot_pck_curve({"thresholds": [0.1, 0.5], "mean": [0.2, 0.8]},
                               str(tmp_path / "pckh.png"))
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use(chosen)
    assert (tmp_path / "pckh.png").read_bytes()[:4] == b"\x89PNG"


def test_per_item_charts_name_the_items_value_and_its_direction():
    """Each bar of a per-item chart is one item's change, signed + = better: the axis names
    the item's value and whether + is its gain or its decrease (the metric's direction),
    not the headline metric (a mean over the items) nor a plain change."""
    study = report.compare({
        "pose2d": [_summary(pck=0.80)], "pose3d": [_summary(mjd=60.0)],
        "segm": [_summary(iou=0.50)],
        "pose2d+pose3d+segm": [_summary(pck=0.85, mjd=55.0, iou=0.52)]})
    labels = {t: charts.per_item_figure(study[t], t).axes[0].get_ylabel()
              for t in ("pose2d", "pose3d", "segm")}
    assert labels == {"pose2d": "gain in the joint's PCKh@0.5",
                      "pose3d": "decrease in the joint's error (mm)",
                      "segm": "gain in the part's IoU"}
    from hgmt.tasks.spec import Headline

    with pytest.raises(ValueError, match="needs `item`.*`item_label`.*and `item_names`"):
        Headline(("iou",), "iou", (), "mean IoU", "iou_per_part", "part")
    with pytest.raises(ValueError, match="`item_names` \\(the items in the dataset's order"):
        Headline(("iou",), "iou", (), "mean IoU", "iou_per_part", "part", item_label="IoU")


def _pose2d_seeds(values, pelvis=None):
    """pose2d summaries, one per seed: each joint's PCKh that seed's value, the pelvis's
    `pelvis` (the same every seed: its change has no test) if given."""
    return [{"pose2d": {"pckh@0.5": v, "pckh@0.5_per_joint": {
        j: pelvis if j == "pelvis" and pelvis is not None else v for j in body.JOINT_NAMES}}}
            for v in values]


def _whiskers(ax) -> dict[float, float]:
    """{x: length} of every error bar drawn on ax."""
    from matplotlib.container import ErrorbarContainer

    return {round(float(seg[0][0]), 6): float(abs(seg[1][1] - seg[0][1]))
            for c in ax.containers if isinstance(c, ErrorbarContainer)
            for lines in c.lines[2] for seg in lines.get_segments()}


def test_study_charts_show_small_changes_and_say_what_they_draw():
    """The subsets chart's y axis spans the values (changes of 0.01 on values near 0.86
    show), its title is the key of what is drawn, and a subset of one seed has no whisker;
    the per-item chart draws no whisker for an untested item and marks it."""
    study = report.compare({"pose2d": _pose2d_seeds([0.855, 0.86, 0.865], pelvis=0.9),
                            "pose2d+segm": _pose2d_seeds([0.868, 0.87, 0.874], pelvis=0.95),
                            "pose2d+depth": _pose2d_seeds([0.862]),
                            "pose2d+pose3d": _pose2d_seeds([0.858, 0.861, 0.866])})
    e = study["pose2d"]
    ax = charts.subsets_figure(e, "pose2d").axes[0]
    low, high = ax.get_ylim()
    ends = [v + k * (e["spread"][s] or 0) for s, v in e["subsets"].items() for k in (-1, 1)]
    assert 0.8 < low < min(ends) and max(ends) < high < 0.9, (low, high, ends)
    assert ax.get_title() == ("pose2d: isolated (grey, dashed line), best mean (green), others "
                              "(blue)\nwhiskers: seed sd; one seed: no whisker")
    # x: subsets by size then name: pose2d, pose2d+depth (one seed), +pose3d, +segm.
    assert _whiskers(ax) == pytest.approx({0.0: 2 * e["spread"]["pose2d"],
                                           2.0: 2 * e["spread"]["pose2d+pose3d"],
                                           3.0: 2 * e["spread"]["pose2d+segm"]})

    ax = charts.per_item_figure(e, "pose2d").axes[0]
    pelvis = body.JOINT_NAMES.index("pelvis")
    assert "pelvis" not in e["per_item_tests"] and len(e["per_item_tests"]) == 15
    assert sorted(_whiskers(ax)) == [k for k in range(16) if k != pelvis]
    assert ax.get_xticklabels()[pelvis].get_text() == "pelvis (untested)"
    assert ax.patches[pelvis].get_hatch() and not ax.patches[0].get_hatch()
    assert ax.get_title() == (
        "pose2d: pose2d+segm vs isolated, per joint (+ = better)\npose2d+segm: best mean of "
        "the 3 multi-task subsets, picked on these runs\nwhiskers: 95% CI (per comparison), "
        "not Holm-adjusted; (untested) items: hatched, no whisker")

    # The isolated run best, every subset of one seed: no green, no whiskers.
    e = report.compare({"pose2d": _pose2d_seeds([0.87]),
                        "pose2d+segm": _pose2d_seeds([0.86])})["pose2d"]
    ax = charts.subsets_figure(e, "pose2d").axes[0]
    assert ax.get_title() == ("pose2d: isolated and best mean (grey, dashed line), others (blue)"
                              "\none seed: no whisker")
    assert _whiskers(ax) == {} and 0.8 < ax.get_ylim()[0]
    ax = charts.per_item_figure(e, "pose2d").axes[0]
    assert _whiskers(ax) == {} and ax.get_title() == (  # the only multi-task subset
        "pose2d: pose2d+segm vs isolated, per joint (+ = better)\n(untested) items: hatched, "
        "no whisker")
    # No isolated run: the best of two subsets is marked; one subset alone is no best.
    e = report.compare({"pose2d+segm": _pose2d_seeds([0.86]),
                        "pose2d+depth": _pose2d_seeds([0.85])})["pose2d"]
    assert charts.subsets_figure(e, "pose2d").axes[0].get_title() == (
        "pose2d: no isolated run, best mean (green), others (blue)\none seed: no whisker")
    study = report.compare({"pose2d+segm": _pose2d_seeds([0.86])})
    assert report.best_marked(study["pose2d"]) is None
    assert charts.subsets_figure(study["pose2d"], "pose2d").axes[0].get_title() == (
        "pose2d: no isolated run, others (blue)\none seed: no whisker")
    assert "| pose2d+segm | 0.86 |" in report.to_markdown(study, "")
    e = report.compare({"pose2d": _pose2d_seeds([0.86])})["pose2d"]
    assert charts.subsets_figure(e, "pose2d").axes[0].get_title() == (
        "pose2d: isolated (grey, dashed line)\none seed: no whisker")


def test_report_gives_the_runs_own_reasons_for_null_values_and_the_seeds_left_out(tmp_path):
    """A reference protocol's number is null for reasons its run records (null_reasons):
    damaged records, fewer examples than one reference batch, a part absent from the split.
    The report gives each distinct reason once with the subsets and seeds it left out of the
    means and tests, and a row whose subset lost seeds says how many; a task without parts
    is never said to lack one."""
    sweep_dir = tmp_path / "sweep"
    joints = body.JOINT_NAMES
    damaged = common.reference_null(240, 4, num_damaged=1)
    no_batch = common.reference_null(3, 4)

    def pose3d(mjd, why=None):
        entry = {"protocol": "bodynet", "mjd_mm": mjd,
                 "mjd_mm_per_joint": dict.fromkeys(joints, mjd)}
        return entry | ({"null_reasons": {"mjd_mm": why, "mjd_mm_per_joint": why}}
                        if why else {})

    def depth(rmse, why=None):
        return {"protocol": "bodynet", "rmse_mm": rmse} | (
            {"null_reasons": {"rmse_mm": why}} if why else {})

    runs_of = {"pose3d": [{"pose3d": pose3d(60.0)}, {"pose3d": pose3d(62.0)},
                          {"pose3d": pose3d(None, damaged)}],
               "pose3d+depth": [{"pose3d": pose3d(55.0), "depth": depth(None, no_batch)},
                                {"pose3d": pose3d(57.0), "depth": depth(None, no_batch)}],
               "depth": [{"depth": depth(None, no_batch)}, {"depth": depth(None)}]}
    for tasks, summaries in runs_of.items():
        for k, summary in enumerate(summaries):
            run = sweep_dir / workdirs.run_name(tasks, k)
            run.mkdir(parents=True)
            (run / "eval_test_bodynet.json").write_text(json.dumps(
                {**summary, "protocol": "bodynet", "step": STEP}))
            (run / "eval_test.json").write_text(json.dumps({"step": STEP}))
    study = report.compare(evaluations.load_sweep(str(sweep_dir), "bodynet"))
    assert study["pose3d"]["seeds"] == {"pose3d": 2, "pose3d+depth": 2}
    assert study["pose3d"]["null"] == {"pose3d": {"seeds": 1, "of": 3, "reasons": [damaged]}}
    assert study["depth"]["undefined"] == ["depth", "pose3d+depth"]
    assert study["depth"]["null"] == {
        "depth": {"seeds": 2, "of": 2, "reasons": [no_batch, report.NO_REASON]},
        "pose3d+depth": {"seeds": 2, "of": 2, "reasons": [no_batch]}}
    text = report.to_markdown(study, "")
    assert "absent from the split" not in text and "Undefined" not in text
    assert "| pose3d (isolated) | 61 ± 1.4 (2; 1 null, left out) |" in text, text
    assert "| pose3d+depth **best mean** | 56 ± 1.4 (2) |" in text, text
    assert ("Null mjd_mm values, left out of the means and tests, with the runs' reasons:\n"
            f"- pose3d (1 of 3 seeds): {damaged}.\n") in text, text
    assert ("Null rmse_mm values, left out of the means and tests, with the runs' reasons:\n"
            f"- depth (all 2 seeds), pose3d+depth (all 2 seeds): {no_batch}.\n"
            f"- depth (all 2 seeds): {report.NO_REASON}.\n\n"
            "No subset has a value: every run's rmse_mm is null.") in text, text
    # One seed per subset: the row says the seed it shows is one of more.
    one = report.compare({"pose3d": [{"pose3d": pose3d(60.0)}, {"pose3d": pose3d(None, damaged)}],
                          "pose3d+depth": [{"pose3d": pose3d(55.0)}]})
    assert "| pose3d (isolated) | 60 (1 seed; 1 null, left out) |" in report.to_markdown(one, "")


def test_report_leaves_a_metric_that_is_not_finite_out_as_null(tmp_path):
    """A diverged run's NaN (the evaluator writes it as JSON's NaN) is left out of the means
    and tests with its reason, as a null value is: it passed as the best subset (max over a
    NaN), made every change of its task untested, wrote report.json with NaN, and then
    failed drawing the charts with a traceback, leaving new JSON files beside an old
    README. The other seeds of its subset still count."""
    sweep_dir = tmp_path / "sweep"
    _finished_runs(sweep_dir, {"depth": [_summary(rmse=v) for v in (float("nan"), 90.0, 92.0)],
                               "pose2d+depth": [_summary(pck=0.8, rmse=v)
                                                for v in (80.0, 81.0, float("inf"))]})
    out = tmp_path / "report"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    study = json.loads((out / "report.json").read_text())  # allow_nan=False wrote it
    depth = study["depth"]
    assert depth["isolated"] == 91.0 and depth["best"] == "pose2d+depth"
    assert depth["subsets"]["pose2d+depth"] == 80.5
    assert depth["seeds"] == {"depth": 2, "pose2d+depth": 2}
    assert depth["tests"]["pose2d+depth"]["change"] == 10.5
    assert depth["null"] == {s: {"seeds": 1, "of": 3, "reasons": [evaluations.NOT_FINITE]}
                             for s in ("depth", "pose2d+depth")}
    text = (out / "README.md").read_text()
    assert (f"- depth (1 of 3 seeds), pose2d+depth (1 of 3 seeds): {evaluations.NOT_FINITE}."
            in text), text
    assert (out / "depth_subsets.png").is_file()


@pytest.mark.parametrize("module, part", [(report, "to_markdown"),
                                          (charts, "per_item_figure")], ids=["markdown", "chart"])
def test_report_writes_nothing_when_making_it_fails(module, part, tmp_path, monkeypatch):
    """Every part of the report is made before the first file is written: a fault while
    making the Markdown (it came after report.json, claims.json and the charts) or a chart
    (the charts were saved one by one) leaves the report directory as it was, not new
    numbers beside an old README."""
    sweep_dir = tmp_path / "sweep"
    _finished_runs(sweep_dir, {"depth": [_summary(rmse=90.0)] * 2,
                               "pose2d+depth": [_summary(pck=0.8, rmse=80.0)] * 2})
    out = tmp_path / "report"
    out.mkdir()
    (out / "README.md").write_text("the last report")

    def fails(*args, **kwargs):
        raise ValueError("a fault")

    monkeypatch.setattr(module, part, fails)
    with pytest.raises(ValueError, match="a fault"):
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"])
    assert [p.name for p in out.iterdir()] == ["README.md"]
    assert (out / "README.md").read_text() == "the last report"


def test_report_refuses_runs_that_train_a_task_with_another_loss(tmp_path):
    """A sweep's runs differ in their tasks' losses only in which tasks they have: a run that
    trains a task with another weight or options than that task's other runs (a seed
    retrained with a loss override) was averaged with them, and a change between subsets
    would be of the loss too. Refused before any file is written, naming the run, the
    field, its value and the others', on runs of other subsets as on other seeds."""
    sweep_dir = _study_sweep(tmp_path, {"segm": 3, "pose2d+segm": 1, "pose2d": 1})
    out = tmp_path / "report"
    for name, field, value in (("segm@seed2", "loss_weights", 5.0),
                               ("pose2d+segm", "loss_options", {"foreground_weight": 10.0})):
        path = os.path.join(sweep_dir, name, "config.json")
        config = json.load(open(path))
        config[field]["segm"] = value
        json.dump(config, open(path, "w"))
    with pytest.raises(SystemExit) as e:
        hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"])
    assert e.value.code == (
        f"error: ValueError: {sweep_dir}: the runs of a task do not all train it with the "
        f"same loss, so its changes between subsets would be of the loss too: pose2d+segm "
        f"trains segm with config.loss_options.segm={{'foreground_weight': 10.0}} (theirs: "
        f"{{'foreground_weight': 1.0}}); segm@seed2 trains segm with "
        f"config.loss_weights.segm=5.0 (theirs: 1.0). Move each such run out of {sweep_dir}: "
        f"the report then leaves it out, and launch/sweep.py with the sweep's arguments trains "
        f"it again")
    assert not out.exists()
    # An older config.json without loss_options trained with its tasks' defaults: alike.
    for name in ("segm@seed2", "pose2d+segm"):
        path = os.path.join(sweep_dir, name, "config.json")
        config = json.load(open(path))
        config["loss_weights"]["segm"] = 1.0
        del config["loss_options"]
        json.dump(config, open(path, "w"))
    assert len(evaluations.load_sweep(sweep_dir)["segm"]) == 3


def test_report_compares_another_protocols_numbers(tmp_path):
    sweep_dir = tmp_path / "sweep"
    bodynet = {"pose2d": lambda v: {"protocol": "bodynet", "pck": v, "pck_per_joint": {
        "r_wrist": v, "pelvis": None}},
               "segm": lambda v: {"protocol": "bodynet", "mean_iou": v, "iou_per_part": {}}}
    for name, pck, iou in (("pose2d", 0.9, None), ("pose2d+segm", 0.95, None),
                           ("segm", None, 0.6)):
        s = {"protocol": "bodynet", "step": STEP}
        s.update({"pose2d": bodynet["pose2d"](pck)} if pck else {})
        s.update({"segm": bodynet["segm"](iou)} if iou else {})
        if name == "pose2d+segm":
            s["segm"] = bodynet["segm"](None)  # undefined: a part absent from the split
        (sweep_dir / name).mkdir(parents=True)
        (sweep_dir / name / "eval_test_bodynet.json").write_text(json.dumps(s))
        (sweep_dir / name / "eval_test.json").write_text(json.dumps(
            {**_summary(pck=0.5), "step": STEP}))
    study = report.compare(evaluations.load_sweep(str(sweep_dir), "bodynet"))
    assert study["pose2d"]["metric"] == "pck" and study["pose2d"]["protocol"] == "bodynet"
    assert study["pose2d"]["gain"]["pose2d+segm"] == pytest.approx(0.05)
    assert study["pose2d"]["per_item_gain"] == {"r_wrist": pytest.approx(0.05)}
    assert study["segm"]["subsets"] == {"segm": 0.6}
    assert study["segm"]["undefined"] == ["pose2d+segm"]
    out = tmp_path / "report"
    assert hgmt.report.main(["--sweep_dir", str(sweep_dir), "--out_dir", str(out), "--protocol",
                        "bodynet"]) == 0
    text = (out / "README.md").read_text()
    assert "## pose2d: PCK (BodyNet) (higher is better; protocol `bodynet`)" in text
    assert "Metric protocol: `bodynet`" in text
    # A file of another protocol under the expected name is refused; a missing one named.
    (sweep_dir / "pose2d" / "eval_test_surreal.json").write_text(json.dumps(
        {"protocol": "bodynet"}))
    run = sweep_dir / "pose2d"
    with pytest.raises(ValueError) as e:
        evaluations.load_sweep(str(sweep_dir), "surreal")
    assert str(e.value) == (
        f"{run}/eval_test_surreal.json holds protocol 'bodynet' numbers, not 'surreal'; "
        f"evaluate the run under 'surreal' into it again: python -m hgmt.evaluate "
        f"--workdir={run} --protocol=surreal --out_file={run}/eval_test_surreal.json")
    (sweep_dir / "pose2d" / "eval_test_surreal.json").unlink()
    with pytest.raises(FileNotFoundError, match="--protocols=surreal"):
        evaluations.load_sweep(str(sweep_dir), "surreal")


def test_report_on_a_missing_sweep_names_the_fix(tmp_path):
    """A missing --sweep_dir and one that is a file get one message (it said "not found" for
    a file, with another fix under --check_config)."""
    (tmp_path / "afile").write_text("x")
    for given in ("nothing", "afile"):
        with pytest.raises(FileNotFoundError, match=rf"^--sweep_dir={tmp_path / given}: not "
                                                    rf"a folder \(missing, or a file\); give "
                                                    rf"the folder launch/sweep.py made$"):
            evaluations.load_sweep(str(tmp_path / given))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"no <tasks>/eval_test.json in {tmp_path / 'empty'}: no subset has finished; run "
            f"launch/sweep.py --sweep_dir={tmp_path / 'empty'} with the sweep's config and "
            f"arguments to train them")):
        evaluations.load_sweep(str(tmp_path / "empty"))


@pytest.mark.slow
def test_tiny_real_sweep_then_report(demo_dataset, tmp_path):
    """Two subsets trained for real (2 steps each), evaluated on the 2 test clips, reported; a
    rerun skips both. At 256 px: the reference protocols measure 64 x 64 label maps."""
    sweep_dir = str(tmp_path / "sweep")
    cmd = [sys.executable, "launch/sweep.py", f"--sweep_dir={sweep_dir}",
           "--config=configs/default.py:runlocal", "--tasks=pose2d,pose2d+segm",
           "--protocols=bodynet,surreal", "--",
           "--config.dataset=surreal/all", f"--config.data_dir={demo_dataset[1]}",
           "--config.total_steps=2", "--config.image_size=256"]
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    first = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout + first.stderr
    for name in ("pose2d", "pose2d+segm"):
        result = json.loads(open(os.path.join(sweep_dir, name, "eval_test.json")).read())
        assert result["num_examples"] == 2 and 0.0 <= result["pose2d"]["pckh@0.5"] <= 1.0
        assert result["protocol"] == result["pose2d"]["protocol"] == "hgmt"
        other = json.loads(open(os.path.join(sweep_dir, name, "eval_test_bodynet.json")).read())
        assert other["protocol"] == other["pose2d"]["protocol"] == "bodynet"
        assert other["pose2d"]["pck"] is None or 0.0 <= other["pose2d"]["pck"] <= 1.0
        assert os.path.exists(os.path.join(sweep_dir, name, "eval_test_bodynet.md"))
        last = open(os.path.join(sweep_dir, f"{name}.log")).read().splitlines()[-1]
        assert re.fullmatch(rf"launch/sweep.py: {re.escape(name)} train: ok in \d+ s", last)
        seg = json.loads(open(os.path.join(sweep_dir, name, "eval_test_surreal.json")).read())
        assert seg["protocol"] == "surreal" and seg["pose2d"]["protocol"] == "hgmt"
        assert seg.get("segm", {"protocol": "surreal"})["protocol"] == "surreal"
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and again.stdout.count("done already") == 2
    out = str(tmp_path / "report")
    assert hgmt.report.main(["--sweep_dir", sweep_dir, "--out_dir", out]) == 0
    study = json.loads(open(os.path.join(out, "report.json")).read())
    assert set(study) == {"pose2d", "segm"} and study["pose2d"]["isolated"] is not None
    assert ("Runs finished: 2 of 2 (2 subsets x 1 seed). Each is evaluated on 2 frames of "
            "split `test` (frames: middle; no flip test; metric definitions version "
            f"{metrics_versions.metrics_version('hgmt')}).") in open(
                os.path.join(out, "README.md")).read()
    for protocol in ("bodynet", "surreal"):
        assert hgmt.report.main(["--sweep_dir", sweep_dir, "--out_dir", f"{out}_{protocol}",
                            f"--protocol={protocol}"]) == 0


def _study_sweep(tmp_path, runs_of: dict[str, int]) -> str:
    """A sweep of configs/study.py with finished runs {subset: seeds} whose config.json is
    the config as `configs.study.get_config` gives it (the seed set after the first)."""
    from configs import study

    sweep_dir = tmp_path / "sweep"
    for tasks, seeds in runs_of.items():
        for k in range(seeds):
            run = sweep_dir / workdirs.run_name(tasks, k)
            run.mkdir(parents=True)
            config = study.get_config(f"tasks={tasks}").to_dict() | ({"seed": k} if k else {})
            (run / "config.json").write_text(json.dumps(config))
            (run / "eval_test.json").write_text(json.dumps(_summary(pck=0.8)))
    (sweep_dir / "sweep.json").write_text(json.dumps(
        {"config": "configs/study.py", "subsets": list(runs_of), "seeds": 2, "extra": []}))
    return str(sweep_dir)


def test_report_names_the_commits_that_trained_the_runs(tmp_path):
    """The config section says which hgmt commits trained the runs (each run's starts.jsonl,
    a run resumed under another commit counting under each), which runs ran with modified
    tracked files, and which record no commit for some of their training."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 3, "segm": 1})
    a, b = "a" * 40, "b" * 40

    def started(name, *records):
        lines = [json.dumps({"step": step, "commit": commit, "modified": modified})
                 for step, commit, modified in records]
        (tmp_path / "sweep" / name / "starts.jsonl").write_text("\n".join(lines) + "\n")

    started("pose2d", (0, a, False))
    started("pose2d@seed1", (0, a, False), (600, b, True))
    started("pose2d@seed2", (0, None, None))
    section = " ".join(provenance.config_section(sweep_dir))
    assert ("Code (`<run>/starts.jsonl`): commit `aaaaaaaaaaaa` trained 2 runs; commit "
            "`bbbbbbbbbbbb` trained 1 run. With uncommitted changes to tracked files: "
            "pose2d@seed1. No commit recorded for some or all of the training of: "
            "pose2d@seed2, segm.") in section, section
    for name in ("pose2d", "pose2d@seed1", "pose2d@seed2"):
        os.remove(tmp_path / "sweep" / name / "starts.jsonl")
    assert ("No run records the hgmt commit that trained it (the trainer writes it to "
            "`<run>/starts.jsonl` when it runs from a git checkout; an older hgmt did not).") \
        in " ".join(provenance.config_section(sweep_dir))


def test_check_config_lists_the_runs_that_no_longer_match(tmp_path, capsys):
    """`hgmt.report --check_config` rebuilds each run's config from sweep.json's config file
    (tasks and seed as launch/sweep.py gives them): the crafted runs match until one run's
    config.json says another step count; a field one side lacks (an option added or renamed
    since the run) is listed, not counted as a mismatch."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 2, "pose2d+segm": 1})
    path = os.path.join(sweep_dir, "pose2d@seed1", "config.json")

    def check(config=None):
        """Writes `config` as pose2d@seed1's (when given); -> (exit status, printed)."""
        if config is not None:
            json.dump(config, open(path, "w"))
        status = hgmt.report.main([f"--sweep_dir={sweep_dir}", "--check_config"])
        return status, capsys.readouterr().out

    status, out = check()
    assert status == 0 and "3 of 3 finished runs" in out and "runs:" not in out
    config = json.load(open(path))
    del config["model"]["depth"]
    config["old_option"] = 1
    status, out = check(config)
    assert status == 0
    assert ("1 of 3 runs: fields configs/study.py has that the run's config.json lacks (added "
            "since the run): model.depth") in out
    assert ("1 of 3 runs: fields the run's config.json has that configs/study.py lacks "
            "(removed or renamed since the run): old_option") in out
    assert "3 of 3 finished runs" in out
    config["total_steps"] = 999
    status, out = check(config)
    assert status == 1
    assert ("pose2d@seed1: differs from configs/study.py: total_steps: 999 in the run, 1200 "
            "now\n") in out
    assert "2 of 3 finished runs" in out and "1 do not" in out
    assert run_configs.check_configs(sweep_dir)["pose2d"] == {"changed": [], "added": [],
                                                              "removed": []}
    # Where the data is (hgmt.main records it as an absolute path) is not a difference.
    config["total_steps"] = 1200
    config["data_dir"] = "/elsewhere/tfds"
    config["demo"]["surreal_root"] = "/elsewhere/surreal"
    assert check(config)[0] == 0
    json.dump(config, open(path, "w"))
    open(os.path.join(sweep_dir, "pose2d@seed1", "config_before_step300.json"), "w").close()
    assert run_configs.check_configs(sweep_dir)["pose2d@seed1"]["changed"] == [
        "trained with more than one config: its earlier steps' in config_before_step300.json"]
    assert "Trained with more than one config" in "\n".join(provenance.config_section(sweep_dir))
    os.remove(os.path.join(sweep_dir, "sweep.json"))
    with pytest.raises(FileNotFoundError, match="sweep.json not found"):
        run_configs.check_configs(sweep_dir)


def test_check_config_on_a_sweep_it_cannot_read_exits_2_with_one_line(tmp_path, capsys):
    """--check_config exits 1 when runs differ; a sweep it cannot check (no directory, no
    sweep.json, a run's config.json damaged) is one line naming the fix and exit status 2,
    not a traceback with status 1."""
    missing = tmp_path / "nonexist"
    run = subprocess.run([sys.executable, "-m", "hgmt.report", f"--sweep_dir={missing}",
                          "--check_config"], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": REPO}, timeout=120)
    assert run.returncode == 2 and hgmt.report.CHECK_UNUSABLE == 2
    assert run.stdout == ""
    assert run.stderr.splitlines() == [
        f"error: FileNotFoundError: --sweep_dir={missing}: not a folder (missing, or a "
        f"file); give the folder launch/sweep.py made"]
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 1})

    def check() -> tuple[int, str]:
        with pytest.raises(SystemExit) as e:
            hgmt.report.main([f"--sweep_dir={sweep_dir}", "--check_config"])
        printed = capsys.readouterr()
        assert printed.out == ""
        return e.value.code, printed.err

    config = os.path.join(sweep_dir, "pose2d", "config.json")
    open(config, "w").write('{"seed": ')
    assert check() == (2, f"error: DamagedRunFile: {config} is not a JSON object (not JSON: "
                           f"Expecting value: line 1 column 10): the file was edited or "
                           f"damaged. Restore it from a copy, or train the run again\n")
    os.remove(os.path.join(sweep_dir, "sweep.json"))
    assert check() == (2, f"error: FileNotFoundError: {sweep_dir}/sweep.json not found: the "
                          f"sweep's plan names the config its runs used; write it with "
                          f"launch/sweep.py --sweep_dir={sweep_dir} --print_only and the "
                          f"sweep's config and arguments\n")


def test_check_config_compares_an_older_runs_evaluation_fields_under_their_new_names(
        tmp_path, capsys):
    """A run whose config.json predates `evals` (as the committed study's: `eval_frames`,
    `eval_max_examples`, `eval_split`, `eval_every`, `best_metric`) is compared in today's
    layout: at configs/study.py's values it matches, the old names neither listed as removed
    nor `evals.*` as added; its `eval_frames` other than the config's `evals.test.frames` is a
    changed field and exit 1. Its validation, which ran at no step, is not compared until the
    run or the config runs it."""
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 1, "pose2d+segm": 1})
    path = os.path.join(sweep_dir, "pose2d+segm", "config.json")
    config = json.load(open(path))
    assert config["evals"]["test"]["frames"] == "every4"
    del config["evals"]
    older = {"eval_frames": "every4", "eval_max_examples": 0, "eval_split": "validation",
             "eval_every": 0, "best_metric": "loss/total"}

    def check(**fields):
        json.dump(config | older | fields, open(path, "w"))
        status = hgmt.report.main([f"--sweep_dir={sweep_dir}", "--check_config"])
        return status, capsys.readouterr().out

    status, out = check()
    assert status == 0 and "runs:" not in out and "2 of 2 finished runs" in out, out
    assert run_configs.check_configs(sweep_dir)["pose2d+segm"] == {"changed": [], "added": [],
                                                                   "removed": []}
    status, out = check(eval_frames="middle", eval_max_examples=24)
    assert status == 1
    assert ('pose2d+segm: differs from configs/study.py: evals.test.frames: "middle" in the '
            'run, "every4" now; evals.test.max_examples: 24 in the run, 0 now\n') in out, out
    status, out = check(eval_every=300)
    assert status == 1
    assert ('pose2d+segm: differs from configs/study.py: evals.validation.best_metric: '
            '"loss/total" in the run, "" now; evals.validation.every: 300 in the run, 0 now; '
            'evals.validation.frames: "every4" in the run, "middle" now\n') in out


def test_report_says_which_config_its_runs_used(tmp_path):
    sweep_dir = _study_sweep(tmp_path, {"pose2d": 2, "pose2d+segm": 2})
    out = tmp_path / "report"
    assert hgmt.report.main([f"--sweep_dir={sweep_dir}", f"--out_dir={out}"]) == 0
    text = (out / "README.md").read_text()
    assert ("launch/sweep.py `--config=configs/study.py`; each run keeps the config it was "
            "trained with (`<run>/config.json`). The 4 runs share every field below. "
            "`loss_options`, `loss_weights`, `seed`, `tasks` vary") in text
    assert "| total_steps | `1200` |" in text and "| model.features | `64` |" in text
    with pytest.raises(SystemExit, match="--out_dir is required"):
        hgmt.report.main([f"--sweep_dir={sweep_dir}"])


def _note_report_command(study: str) -> list[str]:
    """The `python3 -m hgmt.report ...` command docs/study/note.md says made the committed
    report, its continuation lines joined, as arguments after the module name."""
    with open(os.path.join(study, "note.md")) as f:
        text = f.read().replace("\\\n", " ")
    lines = [line.split() for line in text.splitlines()
             if line.strip().startswith("python3 -m hgmt.report ")]
    assert len(lines) == 1, lines
    return lines[0][3:]


def test_committed_study_report_is_what_the_code_makes_of_the_committed_runs(
        tmp_path, monkeypatch):
    """docs/study/runs holds the finished runs of `launch/sweep.py --config=configs/study.py`
    (their config and evaluations), each evaluated on its 240 test frames; the command that
    docs/study/note.md gives, run from the repository root into another directory, makes
    README.md, report.json and claims.json byte for byte as committed (the charts are not
    compared: their bytes depend on matplotlib's version). Whether the runs still match
    configs/study.py is `python -m hgmt.report --sweep_dir=docs/study/runs --check_config`'s
    question, not a test's: the config may change after the runs."""
    study = os.path.join(REPO, "docs", "study")
    sweep_dir = os.path.join(study, "runs")
    finished = runs.finished(sweep_dir)
    if not finished:
        pytest.skip("no finished study run committed yet")
    for name in finished:
        with open(os.path.join(sweep_dir, name, "eval_test.json")) as f:
            result = json.load(f)
        assert (result["num_examples"], result["frames"]) == (240, "every4"), name
        assert os.path.isfile(os.path.join(sweep_dir, name, "config.json")), name
    argv = _note_report_command(study)
    assert "--out_dir=docs/study" in argv and "--sweep_dir=docs/study/runs" in argv, argv
    monkeypatch.chdir(REPO)
    out = tmp_path / "study"
    argv = [f"--out_dir={out}" if a.startswith("--out_dir=") else a for a in argv]
    assert hgmt.report.main(argv) == 0
    for name in ("README.md", "report.json", "claims.json"):
        with open(os.path.join(study, name), "rb") as f:
            assert (out / name).read_bytes() == f.read(), (
                f"docs/study/{name} is not what the code makes: rerun the command in "
                f"docs/study/note.md and commit the result")
    assert f"Runs finished: {len(finished)} of 45" in (out / "README.md").read_text()


def test_committed_study_note_names_the_data_build_and_loss_of_the_runs():
    """The note the committed report includes names the dataset build the runs' logs show
    (every log that names a version names surreal/all 1.1.0), the code's commit range, and
    the loss options added to the runs' config.json after training: each at
    foreground_weight 1.0, SURREAL's plain cross-entropy, the loss they trained with."""
    study = os.path.join(REPO, "docs", "study")
    sweep_dir = os.path.join(study, "runs")
    logs = [n for n in os.listdir(sweep_dir) if n.endswith(".log")]
    if not logs:
        pytest.skip("no study run committed yet")
    versions = set()
    for name in logs:
        with open(os.path.join(sweep_dir, name), errors="replace") as f:
            versions |= set(re.findall(r"surreal/all/(\d+\.\d+\.\d+)", f.read()))
    assert versions == {"1.1.0"}
    options = set()
    for name in runs.finished(sweep_dir):
        with open(os.path.join(sweep_dir, name, "config.json")) as f:
            options |= {(task, json.dumps(o)) for task, o in
                        json.load(f)["loss_options"].items()}
    assert options == {("depth", '{"foreground_weight": 1.0}'),
                       ("segm", '{"foreground_weight": 1.0}')}
    with open(os.path.join(study, "note.md")) as f:
        note = f.read()
    assert "| data build | TFDS `surreal/all` version 1.1.0 of `data_builders/surreal`" in note
    assert ("when its tip was 88285ab, runs 44 and 45 (2026-11-27 01:17, 01:58) when it was "
            "253aca4") in note
    assert ("except `loss_options`, added after training at the values the runs trained "
            "with") in note
    # The runs' logs by start (the first line's time, e.g. 'I1126 05:30:18.88'): the six
    # first lack launch/sweep.py's wall-time line, as the note says of the versions used.
    started = {}
    for name in logs:
        with open(os.path.join(sweep_dir, name), errors="replace") as f:
            lines = f.read().splitlines()
        started[name] = (lines[0][1:21], lines[-1].startswith("launch/sweep.py: "))
    order = sorted(started, key=lambda n: started[n][0])
    assert [started[n][1] for n in order] == [False] * 6 + [True] * (len(order) - 6)
    assert order[6] == "pose2d+segm.log"  # run 7 of the note's table
    assert ("runs 1 to 6 by one without the wall-time line at the end of each log (e799b5e's, "
            "as committed when run 1 started), runs 7 to 45 by one with it") in " ".join(
                note.split())


def test_learning_doc_quotes_the_committed_four_task_seed_spread():
    """docs/learning.md gives the study's three seeds of the 4-task model as its scale of seed
    noise: each metric's range over the committed runs and its span, to the digits it
    quotes (depth RMSE 209.43-214.57 mm spans 5.1 mm)."""
    sweep_dir = os.path.join(REPO, "docs", "study", "runs")
    names = [workdirs.run_name("pose2d+pose3d+depth+segm", k) for k in range(3)]
    if not all(os.path.isfile(os.path.join(sweep_dir, n, "eval_test.json")) for n in names):
        pytest.skip("the 4-task study runs are not committed")
    summaries = [json.load(open(os.path.join(sweep_dir, n, "eval_test.json"))) for n in names]

    def quoted(task: str, metric: str, digits: int, span_digits: int, unit: str) -> str:
        values = [r[task][metric] for r in summaries]
        lo, hi = min(values), max(values)
        return f"{hi - lo:.{span_digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"

    expected = (f"span {quoted('pose2d', 'pckh@0.5', 4, 3, ' PCKh')}, "
                f"{quoted('pose3d', 'mjd_mm', 1, 1, ' mm MJD')}, "
                f"{quoted('depth', 'bin_accuracy', 3, 3, ' depth bin accuracy')}, "
                f"{quoted('depth', 'rmse_mm', 1, 1, ' mm depth RMSE')} and "
                f"{quoted('segm', 'mean_iou', 3, 3, ' mean IoU')}")
    assert "5.1 mm depth RMSE (209.4–214.6)" in expected
    with open(os.path.join(REPO, "docs", "learning.md")) as f:
        text = " ".join(f.read().split())
    assert expected in text


@pytest.mark.slow
def test_sigterm_to_the_sweep_saves_its_run_and_stops(demo_dataset, tmp_path):
    """SIGTERM to the sweep while its first run trains: passed on to the run, which saves a
    checkpoint and exits 75; the sweep writes the outcome into the run's log, starts no other
    run and exits 75. Before, the run trained on unwatched (its parent gone) and held its
    workdir's lock against the rerun, which then started the next subset beside it."""
    import signal
    import time

    sweep_dir = tmp_path / "sweep"
    cmd = [sys.executable, "launch/sweep.py", f"--sweep_dir={sweep_dir}",
           "--config=configs/default.py:runlocal", "--tasks=pose2d,segm", "--",
           "--config.dataset=surreal/all", f"--config.data_dir={demo_dataset[1]}",
           "--config.total_steps=100000", "--config.log_every=1",
           "--config.model.features=16", "--config.model.depth=2"]
    proc = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "XLA_FLAGS": xla_flags(1)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = sweep_dir / "pose2d.log"
    deadline = time.monotonic() + 300
    while not (log.exists() and "step 2/" in log.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, out + err
    assert "the sweep stopped at pose2d; rerun the same command to go on" in err
    assert re.fullmatch(r"launch/sweep.py: pose2d train: stopped by SIGTERM \(exit 75\) in \d+ s",
                        log.read_text().splitlines()[-1])
    assert os.listdir(sweep_dir / "pose2d" / "checkpoints") and not (sweep_dir / "segm").exists()


def test_each_chart_says_its_data_seeds_and_frames(tmp_path, monkeypatch):
    """A chart shown apart from the report still says what its numbers are of: the runs'
    data by their config.json (a `demo` section: demo clips, not SURREAL; else the dataset
    and its folder), the seeds a subset and the test frames every run was evaluated on."""
    summaries = [{**_pose2d_seeds([v])[0], "num_examples": 240, "split": "test",
                  "frames": "every4", "flip": False} for v in (0.80, 0.81)]
    study = report.compare({"pose2d": summaries, "pose2d+segm": [
        {**s, "segm": {"mean_iou": 0.5, "iou_per_part": {p: 0.5 for p in body.PART_NAMES}}}
        for s in summaries]})
    assert charts.caption(study["pose2d"], provenance.DEMO_DATA) == (
        "demo clips (hgmt.sources.synthetic), not SURREAL; 2 seeds a subset; test split, "
        "240 frames (every4)")
    figures = {}
    real = charts.subsets_figure
    monkeypatch.setattr(charts, "subsets_figure",
                        lambda e, task: figures.setdefault(task, real(e, task)))
    charts.draw(study, "surreal/all in /data/tfds")
    texts = [t.get_text() for t in figures["pose2d"].texts]
    assert texts == ["surreal/all in /data/tfds; 2 seeds a subset; test split, 240 frames "
                     "(every4)"]
    # The runs' data, by their config.json.
    for name, config in (("pose2d", {"demo": {"frames": 40}, "dataset": "surreal/all"}),
                         ("segm", {"demo": {"frames": 40}, "dataset": "surreal/all"}),
                         ("depth", None)):
        (tmp_path / name).mkdir()
        if config is not None:
            (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert provenance.data_of(str(tmp_path), ["pose2d", "segm", "depth"]) == provenance.DEMO_DATA
    (tmp_path / "segm" / "config.json").write_text(json.dumps(
        {"dataset": "surreal/all", "data_dir": "/data/tfds"}))
    assert provenance.data_of(str(tmp_path), ["pose2d", "segm"]) == (
        f"{provenance.DEMO_DATA} and surreal/all in /data/tfds")
    assert provenance.data_of(str(tmp_path), ["depth"]) == "data not recorded (no config.json)"
