"""What trained a sweep's runs, as the report says it: the data (`data_of`), the code (their
`starts`, `code_line`) and the config (`config_section`, the report's section on it)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from hgmt import run_config, workdirs
from hgmt.study import run_configs, runs

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
        config = runs.saved_config(sweep_dir, name)
        line = (DEMO_DATA if "demo" in config else
                f"{config.get('dataset', '?')} in {config.get('data_dir', '?')}")
        if line not in seen:
            seen.append(line)
    return " and ".join(seen) if seen else "data not recorded (no config.json)"


def starts(run_dir: str) -> list[dict]:
    """The trainer's starts a run records (<run>/starts.jsonl,
    `training.workdir_records.record_start`), in order; [] for a run trained before hgmt
    wrote the file. A line that does not read (a torn last line) is left out."""
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


def config_section(sweep_dir: str, done: Sequence[str] | None = None) -> list[str]:
    """The report's section on the config the runs `done` (default: the `runs.finished`
    ones) used: the sweep's config file and arguments, then the fields every run's
    config.json shares (a table), those of `run_configs.PER_RUN` that vary with the subset or
    seed, and any other that differs between them (one the runs may differ in:
    `run_configs.trained_differences` leaves it out, or one that only some runs record)."""
    done = runs.finished(sweep_dir) if done is None else list(done)
    names = [n for n in done if os.path.isfile(os.path.join(sweep_dir, n, workdirs.CONFIG_FILE))]
    if not names:
        return []
    unknown = (f" ({len(done) - len(names)} finished runs have no {workdirs.CONFIG_FILE})"
               if len(names) < len(done) else "")
    p = (runs.plan(sweep_dir, needs=("config", "extra"))
         if os.path.isfile(os.path.join(sweep_dir, workdirs.SWEEP_PLAN)) else None)
    configs = [run_config.flat_fields(runs.saved_config(sweep_dir, n)) for n in names]
    keys = sorted(set().union(*configs))
    shared = {k: configs[0].get(k) for k in keys
              if all(k in c and c[k] == configs[0][k] for c in configs)}
    differing = [k for k in keys if k not in shared]
    varying = sorted({k.split(".")[0] for k in differing if k.split(".")[0] in run_configs.PER_RUN})
    others = [k for k in differing if k.split(".")[0] not in run_configs.PER_RUN]
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
