"""A sweep's runs and their configs: which folders of a sweep are its runs (`run_names`), the
config arguments each run is trained with, whether the config each run kept
(<run>/config.json) still matches the config file it came from, whether the runs were
trained alike (`trained_differences`), and what the report says about the config the runs
used. A run's evaluation files are read here too (`read_summary`), and whether an
evaluation made beside the trainer's is of its weights (`behind_training`).

The sweep's plan (SWEEP/sweep.json, written by launch/sweep.py) names the config file and the
arguments given to every run; a run <tasks>[@seed<k>] is that file with `tasks=<tasks>`, the
arguments, and, after the first seed, `--config.seed=<s + k>`, s the seed the file and the
arguments give (0 in hgmt's configs), so that no two seeds of a subset train alike.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from hgmt import workdirs
from hgmt.tasks import TASKS, parse_tasks
from hgmt.training import resume

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The config fields a sweep's runs differ in by design: the subset (`tasks`), its tasks'
# losses (`loss_weights`, `loss_options`: one entry per task of the subset) and the seed
# (launch/sweep.py's seed index). Any other difference between two runs' config.json outside
# what a rerun may change (`hgmt.training.resume.differences`) makes them other experiments.
PER_RUN = ("tasks", "seed", "loss_weights", "loss_options")
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


def with_tasks(config: str, tasks: str) -> str:
    """'configs/default.py:runlocal' + 'pose2d' -> 'configs/default.py:runlocal,tasks=pose2d'
    (a tasks= the config gives is replaced)."""
    base = without_tasks(config)
    return f"{base}{',' if ':' in base else ':'}tasks={tasks}"


def without_tasks(config: str) -> str:
    """`config` (FILE[:ARG]) without a tasks= item in its argument: 'configs/demo.py:tasks=segm'
    -> 'configs/demo.py'."""
    path, _, argument = config.partition(":")
    items = [a for a in argument.split(",") if a and not a.startswith("tasks=")]
    return f"{path}:{','.join(items)}" if items else path


def config_args(config: str, tasks: str, extra: Sequence[str], seed_index: int) -> list[str]:
    """hgmt.main's config arguments of a sweep's run: `--config=<config>:...,tasks=<tasks>`,
    the sweep's `extra` arguments (an override of one task's loss weight or options, e.g.
    `--config.loss_weights.segm=2`, only where the run trains that task: the config of a run
    without it has no such field), then for seeds after the first `--config.seed=<s + k>`,
    s the seed of the first (the config's own, or the one `extra` gives) and k the index."""
    trained = (None, *parse_tasks(tasks))  # a task's override goes to the runs of that task
    args = [f"--config={with_tasks(config, tasks)}",
            *(a for a in extra if _task_of(a) in trained)]
    if not seed_index:
        return args
    return [*args, f"--config.seed={_load(config, args)['seed'] + seed_index}"]


def _task_of(arg: str) -> str | None:
    """The task whose loss weight or options `arg` overrides (`--config.loss_weights.<task>`,
    `--config.loss_options.<task>.<option>`), or None."""
    parts = arg.lstrip("-").partition("=")[0].split(".")
    if len(parts) >= 3 and parts[0] == "config" and parts[1] in ("loss_weights", "loss_options"):
        return parts[2] if parts[2] in TASKS else None
    return None


def expected_config(config: str, tasks: str, extra: Sequence[str], seed_index: int) -> dict:
    """The config that `hgmt.main` would save (as its config.json) for this run today: the
    config file (a relative path is taken from the repository root, as launch/sweep.py runs
    it) loaded with ml_collections' config_flags and the run's overrides."""
    return _load(config, config_args(config, tasks, extra, seed_index))


def _load(config: str, args: Sequence[str]) -> dict:
    """The config `args` (config_args' list, its first item `--config=<config>...`) make."""
    from absl import flags
    from ml_collections import config_flags

    path, _, arg = config.partition(":")
    if not os.path.isabs(path):
        path = os.path.join(REPO, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} (the sweep's --config={config}) not "
                                f"found: run the check from the repository that made the sweep")
    given = args[0].partition("=")[2].partition(":")[2]
    argv = ["check", f"--config={path}" + (f":{given}" if given else ""), *args[1:]]
    fv = flags.FlagValues()
    # config_flags defines the --config.x=y overrides it finds in sys_argv
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                    sys_argv=argv)
    fv(argv, known_only=True)
    return json.loads(fv.config.to_json_best_effort(sort_keys=True))


def differences(made: dict, expected: dict) -> dict[str, list[str]]:
    """How a run's config differs from the expected one: 'changed', the fields both have with
    other values, one line each ('total_steps: 1200 in the run, 1500 now'); 'added', the
    fields only the expected config has (the config gained them after the run: what the code
    did then is not recorded); 'removed', those only the run's config has."""
    a, b = workdirs.flat_fields(made), workdirs.flat_fields(expected)
    return {"changed": [f"{k}: {json.dumps(a[k])} in the run, {json.dumps(b[k])} now"
                        for k in sorted(set(a) & set(b)) if a[k] != b[k]],
            "added": sorted(set(b) - set(a)), "removed": sorted(set(a) - set(b))}


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
    if not os.path.isdir(sweep_dir):
        raise FileNotFoundError(f"--sweep_dir={sweep_dir} is not a folder (missing, or a "
                                f"file): give the folder launch/sweep.py made")
    path = os.path.join(sweep_dir, workdirs.SWEEP_PLAN)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the sweep's plan, written by launch/sweep.py"
                                f" --sweep_dir={sweep_dir}, names the config its runs used")
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


DEMO_DATA = "demo clips (hgmt.sources.synthetic), not SURREAL"


def data_of(sweep_dir: str, names: Sequence[str]) -> str:
    """What data the runs `names` trained and were evaluated on, by their config.json: demo
    clips where the config has a `demo` section (configs/demo.py, study.py: `DEMO_DATA`),
    else the dataset and data_dir it names; runs without a config.json are not counted, and
    none is 'data not recorded (no config.json)'."""
    seen = []
    for name in names:
        if not os.path.isfile(os.path.join(sweep_dir, name, workdirs.CONFIG_FILE)):
            continue
        config = saved_config(sweep_dir, name)
        line = (DEMO_DATA if "demo" in config else
                f"{config.get('dataset', '?')} in {config.get('data_dir', '?')}")
        if line not in seen:
            seen.append(line)
    return " and ".join(seen) if seen else "data not recorded (no config.json)"


def _json_object(path: str, fix: str) -> dict:
    """The JSON object in `path`; ValueError (workdirs.DamagedRunFile) naming the file and
    `fix` when it holds anything else, an empty file included."""
    value = workdirs.read_json_object(path, fix)
    if value is None:
        raise workdirs.DamagedRunFile(f"{path} is empty: the file was cut short. {fix}")
    return value


def trained_differences(a: Mapping[str, Any], b: Mapping[str, Any]
                        ) -> list[tuple[str, Any, Any]]:
    """(field, its value in `a`, in `b`) of each field, sorted, in which the runs of the
    config.json files `a` and `b` (each read in today's layout, `workdirs.current_layout`)
    trained otherwise, beyond what a sweep's runs differ in by design (PER_RUN): the fields
    `hgmt.training.resume.differences` stops a rerun for, less the evaluators (`evals`), whose
    settings do not change the weights trained (the best checkpoint's settings choose what
    is kept, not what is evaluated after the last step) and whose evaluations the report
    compares from their summaries. A field only one of them has is not compared."""
    skip = (*PER_RUN, "evals")
    return [(field, x, y) for field, x, y in resume.differences(a, workdirs.current_layout(b))
            if not workdirs.is_under(field, skip)]


def check_configs(sweep_dir: str) -> dict[str, dict[str, list[str]]]:
    """{run: its `differences` from the config it would get today} of every finished run, its
    config.json taken in today's layout (`workdirs.current_layout`: an older run's evaluation
    fields as the evaluators they amount to, so that a setting renamed since is compared under
    its new name). An evaluator that runs at no step in either config (`every` 0, not
    `at_end`) computed nothing for the run: its fields are not compared; nor are where the
    data is (`resume.DATA_LOCATION`: hgmt.main records them as absolute paths of the host
    that trained)."""
    p = plan(sweep_dir, needs=("config", "extra"))
    out = {}
    for name in finished(sweep_dir):
        if not os.path.isfile(os.path.join(sweep_dir, name, workdirs.CONFIG_FILE)):
            out[name] = {"changed": [f"no {workdirs.CONFIG_FILE}: the run's config is "
                                     f"unknown"], "added": [], "removed": []}
            continue
        made = workdirs.current_layout(saved_config(sweep_dir, name))
        expected = expected_config(p["config"], workdirs.run_tasks(name), p["extra"],
                                   workdirs.run_seed_index(name))
        out[name] = differences(*_without_idle_evaluators(
            *(_without_data_location(c) for c in (made, expected))))
        before = workdirs.configs_before(os.path.join(sweep_dir, name))
        if before:  # config.json holds only the config of the steps after the last of them
            out[name]["changed"].append(
                f"trained with more than one config: its earlier steps' in {', '.join(before)}")
    return out


def starts(run_dir: str) -> list[dict]:
    """The trainer's starts a run records (<run>/starts.jsonl, `training.loop.record_start`),
    in order; [] for a run trained before hgmt wrote the file. A line that does not read (a
    torn last line) is left out."""
    path = workdirs.starts_file(run_dir)
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                out.append(record)
    return out


def code_line(sweep_dir: str, names: Sequence[str]) -> str:
    """The report's sentence on the code that trained the runs `names` (their `starts`):
    each commit with how many runs it trained (a run resumed under another commit counts
    under each), the runs trained with uncommitted changes, and those that record no
    commit for some of their training."""
    by_commit: dict[str, list[str]] = {}
    modified, unrecorded = [], []
    for name in names:
        records = starts(os.path.join(sweep_dir, name))
        commits = [r.get("commit") for r in records]
        if not records or None in commits:
            unrecorded.append(name)
        for commit in dict.fromkeys(c for c in commits if c):
            by_commit.setdefault(commit, []).append(name)
        if any(r.get("modified") for r in records):
            modified.append(name)
    where = f"`<run>/{workdirs.STARTS_FILE}`"
    if not by_commit:
        return (f"No run records the hgmt commit that trained it (the trainer writes it to "
                f"{where} when it runs from a git checkout; an older hgmt did not).")
    out = "Code (" + where + "): " + "; ".join(
        f"commit `{c[:12]}` trained {len(n)} run{'s' if len(n) > 1 else ''}"
        for c, n in sorted(by_commit.items(), key=lambda kv: (-len(kv[1]), kv[0]))) + "."
    if modified:
        out += (f" With uncommitted changes to tracked files: {_few(modified)}.")
    if unrecorded:
        out += f" No commit recorded for some or all of the training of: {_few(unrecorded)}."
    return out


def _few(names: Sequence[str], shown: int = 5) -> str:
    """'a, b' or the first `shown` names and how many more."""
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _without_data_location(config: dict) -> dict:
    """A copy of a config (as JSON) without the fields of `resume.DATA_LOCATION`."""
    config = copy.deepcopy(config)
    for field in resume.DATA_LOCATION:
        parent, name = workdirs.field_parent(config, field)
        if parent is not None:
            parent.pop(name, None)
    return config


def _without_idle_evaluators(made: dict, expected: dict) -> tuple[dict, dict]:
    """Copies of both configs less the evaluators (`evals.<name>`) that neither runs: with
    `every` 0 and `at_end` false in each config that has them."""
    def idle(config: dict, name: str) -> bool:
        entry = config.get("evals", {}).get(name)
        return entry is None or (isinstance(entry, dict) and not entry.get("every")
                                 and not entry.get("at_end"))

    names = set(made.get("evals", {})) | set(expected.get("evals", {}))
    skip = {n for n in names if idle(made, n) and idle(expected, n)}
    return tuple({**c, "evals": {n: e for n, e in c["evals"].items() if n not in skip}}
                 if isinstance(c.get("evals"), dict) else c for c in (made, expected))


def config_section(sweep_dir: str, done: Sequence[str] | None = None) -> list[str]:
    """The report's section on the config the runs `done` (default: the `finished` ones)
    used: the sweep's config file and arguments, then the fields every run's config.json
    shares (a table), those of PER_RUN that vary with the subset or seed, and any other that
    differs between them (one the runs may differ in: `trained_differences` leaves it out,
    or one that only some runs record)."""
    done = finished(sweep_dir) if done is None else list(done)
    names = [n for n in done if os.path.isfile(os.path.join(sweep_dir, n, workdirs.CONFIG_FILE))]
    if not names:
        return []
    unknown = (f" ({len(done) - len(names)} finished runs have no {workdirs.CONFIG_FILE})"
               if len(names) < len(done) else "")
    p = (plan(sweep_dir, needs=("config", "extra"))
         if os.path.isfile(os.path.join(sweep_dir, workdirs.SWEEP_PLAN)) else None)
    configs = [workdirs.flat_fields(saved_config(sweep_dir, n)) for n in names]
    keys = sorted(set().union(*configs))
    shared = {k: configs[0].get(k) for k in keys
              if all(k in c and c[k] == configs[0][k] for c in configs)}
    differing = [k for k in keys if k not in shared]
    varying = sorted({k.split(".")[0] for k in differing if k.split(".")[0] in PER_RUN})
    others = [k for k in differing if k.split(".")[0] not in PER_RUN]
    made = ("" if p is None else
            f"launch/sweep.py `--config={p['config']}`"
            + (f" with `{' '.join(p['extra'])}`" if p["extra"] else "") + "; ")
    vary = (f" {', '.join(f'`{k}`' for k in varying)} vary with the subset and seed."
            if varying else "")
    if others:
        vary += (f" {', '.join(f'`{k}`' for k in others)} differ between runs in what does "
                 f"not change the weights trained (where the data is and how it is read, when "
                 f"to evaluate, log and save: hgmt.training.resume.FREE_ON_RESUME), or are "
                 f"recorded by some runs only.")
    several = [n for n in names if workdirs.configs_before(os.path.join(sweep_dir, n))]
    if several:
        vary += (f" Trained with more than one config (a rerun with "
                 f"`--resume_with_changed_config`; the earlier steps' configs in "
                 f"`<run>/config_before_step<N>.json`, not in this table): "
                 f"{', '.join(several)}.")
    return ["## The runs' config", "",
            f"{made}each run keeps the config it was trained with (`<run>/config.json`). "
            f"The {len(names)} runs{unknown} share every field below.{vary} "
            f"`python -m hgmt.report --sweep_dir=SWEEP_DIR --check_config` lists the runs "
            f"whose config no longer matches the config file. {code_line(sweep_dir, names)}",
            "",
            "| field | value |", "|---|---|",
            *[f"| {k} | `{json.dumps(v)}` |" for k, v in shared.items()], ""]
