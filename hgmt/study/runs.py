"""A sweep's runs and their files: which folders of a sweep are its runs (`run_names`,
`finished`), the sweep's plan (`plan`: SWEEP/sweep.json, written by launch/sweep.py), a run's
evaluation files (`read_summary`) and saved config (`saved_config`), the hgmt.evaluate command
that evaluates a run under another protocol (`evaluation_argv`), and whether an evaluation made
beside the trainer's is of its weights (`behind_training`). The configs the runs are trained
with and how they differ: `hgmt.study.run_configs`."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hgmt import workdirs
from hgmt.tasks import parse_tasks

RUN_PATTERN = f"<subset>[{workdirs.SEED_MARK}<k>]"  # how a sweep names its runs' folders


def is_run_name(name: str) -> bool:
    """Whether `name` is a folder name launch/sweep.py gives a run: `workdirs.run_name` of a
    task subset in canonical order ('pose2d+segm', 'pose2d+segm@seed1'); not 'pose2d.old',
    'segm+pose2d', 'all' or 'pose2d@seed0'."""
    try:
        tasks = "+".join(parse_tasks(workdirs.run_tasks(name)))
        return name == workdirs.run_name(tasks, workdirs.run_seed_index(name))
    except ValueError:  # unknown tasks, or a seed index that is no number
        return False


def run_names(sweep_dir: str) -> list[str]:
    """The folders of `sweep_dir` that are its runs (`is_run_name`), sorted; the others
    (`strays`) are left out."""
    return [n for n in _folders(sweep_dir) if is_run_name(n)]


def strays(sweep_dir: str) -> list[str]:
    """The folders of `sweep_dir` that are not runs of it (a backup `pose2d.old`), sorted."""
    return [n for n in _folders(sweep_dir) if not is_run_name(n)]


def warn_strays(sweep_dir: str) -> None:
    """One warning line on stderr for each folder of `sweep_dir` that is not a run of it:
    the commands that read a sweep (hgmt.report, launch/sweep.py) leave it out."""
    for name in strays(sweep_dir) if os.path.isdir(sweep_dir) else []:
        print(f"warning: {os.path.join(sweep_dir, name)}: not a run of this sweep "
              f"({RUN_PATTERN}): left out", file=sys.stderr)


def _folders(sweep_dir: str) -> list[str]:
    return sorted(n for n in os.listdir(sweep_dir) if os.path.isdir(os.path.join(sweep_dir, n)))


# What to do about a damaged sweep.json, where it is read for the report.
PLAN_FIX = "Run launch/sweep.py with the sweep's config and arguments again to write it"


# The fields of a sweep's plan and their types, all written by launch/sweep.py; a plan
# written before --seeds has no 'seeds' (its runs are one seed each: `plan` gives 1).
PLAN_FIELDS = {"config": str, "subsets": list, "seeds": int, "extra": list}


def plan(sweep_dir: str, fix: str = PLAN_FIX,
         needs: Sequence[str] = ("config", "subsets", "extra")) -> dict:
    """The sweep's plan (sweep.json): {'config', 'subsets', 'seeds', 'extra'} (`PLAN_FIELDS`),
    'seeds' 1 where the plan has none. A file that is empty or not a JSON object, lacking a
    field of `needs` (those the caller reads) or holding any field of another type (a list
    but of strings) raises DamagedRunFile naming the file, the field and `fix`, what to do."""
    check_folder(sweep_dir)
    path = os.path.join(sweep_dir, workdirs.SWEEP_PLAN)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the sweep's plan names the config its runs "
                                f"used; write it with launch/sweep.py --sweep_dir={sweep_dir} "
                                f"--print_only and the sweep's config and arguments")
    value = _json_object(path, fix)
    for key, kind in PLAN_FIELDS.items():
        if key not in value and key not in needs:
            continue
        field = value.get(key)
        if (not isinstance(field, kind) or isinstance(field, bool)
                or (kind is list and not all(isinstance(x, str) for x in field))):
            of = " of strings" if isinstance(field, list) else ""
            raise workdirs.DamagedRunFile(f"{path} holds no {key!r} {kind.__name__}{of}: the "
                                          f"file was edited or damaged. {fix}")
    return {"seeds": 1, **value}


def check_folder(sweep_dir: str) -> None:
    """FileNotFoundError, naming the fix, where `sweep_dir` is not a folder (missing, or a
    file)."""
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"--sweep_dir={sweep_dir}: not a folder (missing, or a file); "
                                f"give the folder launch/sweep.py made")


def finished(sweep_dir: str) -> list[str]:
    """The sweep's runs (`run_names`) with a test evaluation (eval_test.json), sorted."""
    return [n for n in run_names(sweep_dir)
            if os.path.isfile(os.path.join(sweep_dir, n, workdirs.result_file()))]


def read_summary(path: str, fix: str) -> dict | None:
    """The evaluation summary in the file `path`, None where there is no such file;
    DamagedRunFile naming the file and `fix`, what to do, where it is empty or holds anything
    but a JSON object."""
    if not os.path.isfile(path):
        return None
    return _json_object(path, fix)


def training_fix(run_dir: str) -> str:
    """What to do about a run's damaged eval_test.json: its training, run again, resumes from
    its last checkpoint and evaluates it into the file (`Evaluators.finished_at_end` takes a
    file that does not read as not made)."""
    return (f"Make it again: rerun launch/sweep.py --sweep_dir={os.path.dirname(run_dir)} with "
            f"the sweep's config and arguments, which trains {os.path.basename(run_dir)} on "
            f"from its last checkpoint and evaluates it")


def evaluation_argv(run_dir: str, protocol: str, out: str, python: str = "python"
                    ) -> list[str]:
    """The hgmt.evaluate command line, run by `python`, that evaluates a sweep's run under
    `protocol` into `out`: what launch/sweep.py --protocols runs."""
    return [python, "-m", "hgmt.evaluate", f"--workdir={run_dir}", f"--protocol={protocol}",
            f"--out_file={out}"]


def evaluation_command(run_dir: str, protocol: str, out: str) -> str:
    """`evaluation_argv` as a line to type."""
    return shlex.join(evaluation_argv(run_dir, protocol, out))


def last_step(run_dir: str, trained: Mapping[str, Any]) -> int | None:
    """The step a run's training ended at, which its evaluations after training are of: the
    `step` of its eval_test.json (`trained`), or for one written before the trainer recorded
    it, the `total_steps` of the run's config.json (the config of its last steps); None when
    neither says."""
    if trained.get("step") is not None:
        return trained["step"]
    path = os.path.join(run_dir, workdirs.CONFIG_FILE)
    if not os.path.isfile(path):
        return None
    return _json_object(path, "Restore it from a copy, or train the run again").get(
        "total_steps")


def behind_training(run_dir: str, summary: Mapping[str, Any],
                    trained: Mapping[str, Any]) -> str | None:
    """Why an evaluation made beside the trainer's (`summary`, from an eval_test_<protocol>
    .json) is not of the weights the run's training ended with (`trained`: its
    eval_test.json): it records no step, or another than the run's `last_step` (made before
    a rerun trained on, or of another checkpoint); None when it is of that step. Such a file
    counts as missing: launch/sweep.py evaluates the run again into it."""
    step, last = summary.get("step"), last_step(run_dir, trained)
    if step is None:
        return "it records no step"
    if last is None:
        return (f"the step the run's training ended at is unknown (its "
                f"{workdirs.result_file()} records none, and it has no "
                f"{workdirs.CONFIG_FILE})")
    if step != last:
        return f"it is of step {step}, and the run's training ended at step {last}"
    return None


def saved_config(sweep_dir: str, name: str) -> dict:
    """The config a run was trained with (its config.json)."""
    return _json_object(os.path.join(sweep_dir, name, workdirs.CONFIG_FILE),
                        "Restore it from a copy, or train the run again")


def _json_object(path: str, fix: str) -> dict:
    """The JSON object in `path`; ValueError (workdirs.DamagedRunFile) naming the file and
    `fix` when it holds anything else, an empty file included."""
    value = workdirs.read_json_object(path, fix)
    if value is None:
        raise workdirs.DamagedRunFile(f"{path} is empty: the file was cut short. {fix}")
    return value
