"""Whether a rerun fits the run its workdir holds: the config it was trained with
(<workdir>/config.json) and the training split its checkpoints' loader positions index.

A rerun in a workdir with checkpoints continues their run, and config.json says what trained
it: hgmt.evaluate, hgmt.predict and hgmt.export rebuild the model from it, and
`hgmt.report --check_config` compares it with its sweep's config. A field that changes what
the steps mean (the tasks, data, model, batch, optimizer and schedule, whose cosine spans
`total_steps`, the losses, the seed) stops the rerun before it writes anything
(`CannotResume`, naming each field and the fix), unless the change is asked for
(`python -m hgmt.main --resume_with_changed_config`, `loop.run(...,
resume_with_changed_config=True)`): config.json then records the new values, and the previous
one is kept as config_before_step<N>.json, N the step the rerun starts from. The fields of
`FREE_ON_RESUME` may change freely (but for the `BEST_SETTINGS` of the evaluator that keeps
the best checkpoint, in the saved config or the rerun's). A loader position resumes only
with the seed and split size it was saved with (`check_sampler`); one an hgmt before
`input_pipeline.grain_seed` saved does not resume (a new workdir, or that hgmt version). A
`config.total_steps` below the step of the workdir's newest checkpoint stops the rerun
(`check_total_steps`), whatever `--resume_with_changed_config` lets through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import ml_collections
from etils import epath

from hgmt import cli, disk_space, run_config, workdirs
from hgmt.paths import absolute
from hgmt.tasks import default_loss_options, parse_tasks
from hgmt.training import checkpoints, eval_settings

# Where the data is (the same data may lie elsewhere on another host or machine): the trainer
# makes these paths absolute (`absolute_data_location`), so that a workdir's config.json
# names its data from any directory; a rerun and the processes of a job may differ in them.
DATA_LOCATION = ("data_dir", "demo.surreal_root")
# The fields a rerun may change without asking (a name covers the fields under it). They say
# when to evaluate, log and save, where the data is and how it is read, not what a training
# step computes: `evals` (each evaluation's settings are in its evals.jsonl line),
# `eval_batch_size`, `log_every`, `checkpoint_every`, `keep_checkpoints`, `data_dir` and
# `demo.surreal_root` (where the same data is), `worker_count` (it decides which records make
# each batch, `input_pipeline.endless_loader`, but a checkpoint's loader position resumes only
# with the count that saved it, which -1 takes and another count is refused for:
# `checkpoints.resume_worker_count`),
# `read_threads`, `prefetch`, `max_damaged_fraction` (when to stop on damage),
# `model.stream_mode` and `model.ops` (how the same function is compiled), `augment_on`
# (where the same augmentation runs; its random draws differ, as with `auto` on another
# backend).
FREE_ON_RESUME = ("evals", "eval_batch_size", "log_every", "checkpoint_every",
                  "keep_checkpoints", *DATA_LOCATION, "worker_count",
                  "read_threads", "prefetch", "max_damaged_fraction", "model.stream_mode",
                  "model.ops", "augment_on")
# Except, in the evaluator that keeps the best checkpoint (`eval_settings.keeper`: a
# `best_metric`, run during training) in the saved config or the rerun's, what its scores are
# of: a new score is compared with the kept best's, or, for an evaluator that starts keeping
# it on the rerun, with its earlier evals.jsonl lines, which the old settings measured (and a
# best checkpoint stores only its own metric).
BEST_SETTINGS = ("best_metric", "split", "frames", "max_examples", "flip", "protocol")
# The fields no rerun may change: grain restores the loader's saved position only with the
# sampler it was saved with, whose seed is made from config.seed (`input_pipeline.grain_seed`).
FIXED_ON_RESUME = ("seed",)
FLAG = cli.RESUME_FLAG


# A rerun whose config, training split or processes do not fit the run its workdir holds
# (defined beside the checkpoints, whose own checks raise it too).
CannotResume = checkpoints.CannotResume


Change = tuple[str, Any, Any]  # (field, the workdir's value, the rerun's)


def absolute_data_location(config: ml_collections.ConfigDict) -> None:
    """Makes the config's DATA_LOCATION paths absolute (of the working directory; `~`
    expanded; an object-store URL kept), in place: `hgmt.training.loop.run` does on its copy,
    for hgmt.main and Python callers alike, so that the workdir's config.json names the data
    for hgmt.evaluate and hgmt.predict run from any directory."""
    for field in DATA_LOCATION:
        parent, name = run_config.field_parent(config, field)
        if parent is not None and isinstance(parent.get(name), str):
            parent[name] = absolute(parent[name])


def differences(saved: Mapping[str, Any], config: Mapping[str, Any]) -> list[Change]:
    """The fields outside FREE_ON_RESUME whose value in `config` (a config as JSON) differs
    from `saved` (a config.json), by dotted name, sorted. `saved` is read in today's layout
    (`run_config.current_layout`: an older one's evaluation fields as the evaluators they amount
    to, the fields added since at their defaults, a task's loss options it lacks (a config
    saved before the task had them, or before loss_options) at the task's defaults); a
    field only one of them has is not compared, as the code of the other has no such
    setting."""
    layout = run_config.current_layout(dict(saved))
    config = dict(config)
    for side in (layout, config):  # a task set however written ('segm+pose2d', 'all')
        if "tasks" in side:
            with contextlib.suppress(ValueError):  # not one: compared as written
                side["tasks"] = "+".join(parse_tasks(side["tasks"]))
    if "tasks" in layout:  # each task's options as it trained: the defaults, where not saved
        given = layout.get("loss_options", {})
        layout["loss_options"] = given | {t: options | given.get(t, {}) for t, options in
                                          default_loss_options(layout["tasks"]).items()}
    old = run_config.flat_fields(layout)
    new = run_config.flat_fields(config)
    keeping = {eval_settings.keeper(layout.get("evals", {})),
               eval_settings.keeper(config.get("evals", {}))} - {None}

    def free(field: str) -> bool:
        parts = field.split(".")
        if len(parts) == 3 and parts[0] == "evals" and parts[1] in keeping and \
                parts[2] in BEST_SETTINGS:
            return False  # what the best's scores, kept or recorded, are of
        return run_config.is_under(field, FREE_ON_RESUME)

    return [(field, old[field], new[field]) for field in sorted(old.keys() & new.keys())
            if old[field] != new[field] and not free(field)]


def check_config(config: ml_collections.ConfigDict, workdir: str,
                 accept: bool = False) -> list[Change]:
    """Compares `config` with the config.json of `workdir` when it holds checkpoints (every
    process alike: the workdir is one folder every host reads) -> the differences `accept`ed
    (`save_config` keeps the previous file then); [] without checkpoints or without a
    readable config.json (logged: the rerun writes it again). Raises CannotResume naming each
    difference and the fixes, before the trainer writes anything, when there are differences
    and `accept` is False or one is of a field of FIXED_ON_RESUME."""
    newest = checkpoints.newest_step_on_disk(workdir)
    saved = _saved_config(workdir) if newest else None
    if saved is None:
        return []
    found = differences(saved, json.loads(config.to_json_best_effort()))
    fixed = [field for field, _, _ in found if field in FIXED_ON_RESUME]
    if not found or (accept and not fixed):
        return found
    path = workdirs.config_file(workdir)
    changed = "; ".join(f"config.{field}={old!r} -> {new!r}" for field, old, new in found)
    rerun = " ".join(f"--config.{field}={_flag_value(old)}" for field, old, _ in found)
    ask = (f" ({', '.join(fixed)} cannot change: the loader's position saved in the "
           f"checkpoints resumes only with its own seed)" if fixed else
           f", or pass {FLAG} to train on with the new values (config.json then records them; "
           f"the previous one is kept as {workdirs.CONFIG_BEFORE.format(step='<N>')}, N the "
           f"step resumed from)")
    raise CannotResume(
        f"the checkpoints of {workdir} (the newest of step {newest}) were trained with "
        f"another config ({path}): {changed}. Rerun with the workdir's values ({rerun}), "
        f"or train in a new --workdir{ask}")


def _flag_value(value: Any) -> str:
    """`value` as a `--config.<field>=` override gives it."""
    return value if isinstance(value, str) else json.dumps(value)


def _saved_config(workdir: str, quiet: bool = False) -> dict | None:
    """The config.json of `workdir`, or None (logged unless `quiet`) where it is missing, empty
    or damaged: the rerun cannot compare, and writes it again."""
    path = workdirs.config_file(workdir)
    try:
        saved = workdirs.read_json_object(path, "The trainer writes it again.")
    except FileNotFoundError:
        saved, why = None, "is missing"
    except workdirs.DamagedRunFile as e:
        saved, why = None, f"does not read ({e})"
    else:
        why = "is empty"
    if saved is None and not quiet:
        logging.warning("%s %s: this config is not compared with the one the checkpoints were "
                        "trained with; it is written there as this run's", path, why)
    return saved


def save_config(config: ml_collections.ConfigDict, workdir: str, changed: list[Change],
                step: int) -> None:
    """Writes `config` as the workdir's config.json (process 0). After `changed`, the
    differences `check_config` accepted for a rerun from `step`, the previous file is first
    kept as config_before_step<step>.json (the config of the steps up to `step`; one already
    there is the older record of them and stays), and the changes are logged. A fresh start
    (`step` 0) over the config.json of another config (an earlier run whose checkpoints were
    removed, whose best checkpoint and evaluations training moves aside) keeps that file as
    config_superseded/0-<time>.json: the config of the weights and evaluations that run
    left, not of this run's steps."""
    path = workdirs.config_file(workdir)
    before = workdirs.config_before_file(workdir, step)
    if step == 0 and not changed and _saved_config(workdir, quiet=True) not in (
            None, json.loads(config.to_json_best_effort())):
        aside = os.path.join(workdirs.config_superseded_dir(workdir),
                             workdirs.set_aside_name(step) + ".json")
        epath.Path(aside).parent.mkdir(parents=True, exist_ok=True)
        _keep(path, aside)
        logging.info("a fresh start over the config.json of another config: it is kept as %s",
                     aside)
    if changed:
        _keep(path, before)
        logging.warning("resuming at step %d with a changed config (%s): %s; the config of "
                        "the steps up to %d is kept in %s", step, FLAG, "; ".join(
                            f"config.{field}={old!r} -> {new!r}"
                            for field, old, new in changed), step, before)
    run_config.save_config(config, workdir)


def _keep(path: str, before: str) -> None:
    """Copies the config.json `path` to `before` unless that exists (the older record, or
    one kept in the same second)."""
    if not epath.Path(before).exists():
        data = epath.Path(path).read_bytes()
        disk_space.write_atomically(before, lambda f: f.write(data), "wb")


def check_sampler(config: ml_collections.ConfigDict, workdir: str, num_records: int) -> None:
    """Raises CannotResume when this process's loader position in the workdir's newest
    checkpoint that has one (`checkpoints.saved_position`) was saved with another grain seed
    than config.seed's (`input_pipeline.grain_seed`) or over a training split of another size
    than `num_records`: grain restores a position only into the sampler it was saved with (it
    compares their reprs, `IndexSampler(num_records=K, ..., seed=S)`), and its refusal would
    read as checkpoints of another model. A grain seed equal to config.seed itself is that of
    an hgmt that gave grain config.seed as it is: named so, with its fixes. Another grain seed
    is named with both config seeds it can be: the one this hgmt hashes to it
    (`input_pipeline.config_seed`) and itself, an older hgmt's. A position whose sampler says
    neither seed nor size is left to grain."""
    from hgmt.data import input_pipeline

    position = checkpoints.saved_position(workdir)
    if position is None:
        return
    file, state = position
    saved = {name: int(found[1]) for name in ("seed", "num_records")
             if (found := re.search(rf"\b{name}=(\d+)", str(state.get("sampler", ""))))}
    where = f"the checkpoint {file.parent.parent} saved the loader's position"
    expected = input_pipeline.grain_seed(config.seed)
    if saved.get("seed", expected) == config.seed != expected:
        raise CannotResume(
            f"config.seed={config.seed}: {where} with the seed itself as grain's seed, as an "
            f"older hgmt did; this one gives grain a hash of it ({expected}, "
            f"`hgmt.data.input_pipeline.grain_seed`: consecutive seeds given as they are share "
            f"their data order, one epoch apart), so it cannot continue that data stream "
            f"({FLAG} does not change that); train in a new --workdir, or resume with the "
            f"hgmt version that wrote the checkpoint")
    if saved.get("seed", expected) != expected:
        # The saved grain seed reads two ways: this hgmt's hash of one config.seed, or an
        # older hgmt's config.seed as it was. Which one wrote it the position does not say.
        grain, other = saved["seed"], input_pipeline.config_seed(saved["seed"])
        raise CannotResume(
            f"config.seed={config.seed}: {where} with grain seed {grain}, which is "
            f"config.seed={other} if this hgmt saved it (it gives grain a hash of the seed, "
            f"`hgmt.data.input_pipeline.grain_seed`), or config.seed={grain} if an older hgmt "
            f"did (it gave grain the seed itself), and only that seed resumes it; rerun with "
            f"--config.seed={other}, or resume config.seed={grain} with the hgmt version that "
            f"wrote the checkpoint, or train in a new --workdir")
    if saved.get("num_records", num_records) != num_records:
        raise CannotResume(
            f"the training split of {config.dataset!r} under data_dir={config.data_dir} now has "
            f"{num_records} records; {where} over {saved['num_records']}, and it resumes only "
            f"over as many; rebuild the split as it was (or give the data_dir of that build), "
            f"or train in a new --workdir")


def check_total_steps(config: ml_collections.ConfigDict, workdir: str, newest: int) -> None:
    """CannotResume where `config.total_steps` is below `newest`, the step of the workdir's
    newest checkpoint (--resume_with_changed_config lets such a config through
    `check_config`)."""
    if newest > config.total_steps:
        raise CannotResume(
            f"config.total_steps={config.total_steps} is below step {newest}, the "
            f"workdir's latest checkpoint ({workdirs.checkpoint_dir(workdir)}): the run would "
            f"label step {newest}'s weights as step {config.total_steps}. Give "
            f"--config.total_steps={newest} or more, or train into a new --workdir")
