"""The trainer's evaluators, declared in the config, and the best checkpoint.

`config.evals` is a dict of named evaluators; each has the evaluation settings of
`hgmt.evaluation.evaluator.SETTINGS` (split, frames, protocol, flip, max_examples) and says
when it runs and what it keeps:

    every        run every `every` steps (0: not during training)
    at_end       run after the last step; its summary is written to <workdir>/eval_<name>.json
                 (+ .md), the file `hgmt.report` and `launch/sweep.py` read for `test`
    best_metric  '' or a metric of `metric_values` (`loss/total`, `loss/<task>`, a headline
                 metric such as `pose2d/pckh@0.5`): the checkpoint that scores best on it is
                 kept in <workdir>/best/<step> (orbax, the score stored with it, so a resumed
                 run knows the best so far; a run resumed from before it moves it aside and
                 takes the best up to its start step again, and so does a rerun whose keeper
                 did not choose it, `Evaluators.forget_after`); at most one evaluator keeps
                 one. A full disk while writing it is
                 `disk_space.DiskFull`, its partial folder removed
                 (`checkpoint_write_faults.stop_on_full_disk`)

Every result goes to TensorBoard as `<name>/<metric>` and, one JSON object a line, to
<workdir>/evals.jsonl (step, evaluator, settings, metrics): the learning curves of a run.
Losses are better lower, and so are the metrics a task's `Headline` lists in
`lower_is_better`; everything else higher.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from hgmt import devices, disk_space, workdirs
from hgmt.data import builds, eval_data
from hgmt.evaluation import evaluator, metrics_versions, protocols, report_files
from hgmt.models import create_model, to_checkpoint_layout
from hgmt.sources import surreal
from hgmt.tasks import heads, parse_tasks, weighted_total
from hgmt.training import checkpoint_digests, checkpoint_write_faults, checkpoints

SPLITS = tuple(surreal.SPLIT_DIRS)  # train, validation, test
FIELDS = {"split": str, "frames": str, "protocol": str, "flip": bool, "max_examples": int,
          "every": int, "at_end": bool, "best_metric": str}


def metric_values(summary: dict, weights: Mapping[str, float]) -> dict[str, float]:
    """{'loss/total', 'loss/<task>', '<task>/<metric>'} of an evaluation summary."""
    values = {f"loss/{t}": float(v) for t, v in summary["loss"].items()}
    values["loss/total"] = weighted_total(weights, summary["loss"])
    values.update({k: float(v) for k, v in protocols.headline(summary).items() if v is not None})
    return values


def metric_names(weights: Mapping[str, float], protocol: str = "hgmt") -> set[str]:
    """The keys `metric_values` can give for these tasks under `protocol`."""
    names = {"loss/total"} | {f"loss/{t}" for t in weights}
    return names | {f"{t}/{k}" for t in weights
                    for k in protocols.headline_of(t, protocol).metrics}


def lower_is_better(metric: str, protocol: str = "hgmt") -> bool:
    """'loss/...' and the headline metrics their task declares better lower (errors)."""
    task, _, name = metric.partition("/")
    return task == "loss" or name in protocols.headline_of(task, protocol).lower_is_better


def check(config: ml_collections.ConfigDict, weights: Mapping[str, float], *,
          label_size: bool = True) -> dict[str, dict]:
    """{name: settings} of `config.evals`, checked: every field known and of its type, the
    split, frames and protocol valid (a reference protocol at the references' label size,
    unless not `label_size`: hgmt.evaluate runs the protocol it is given, not these),
    `best_metric` a metric of these tasks, at most one evaluator keeping a best checkpoint;
    and `config.eval_batch_size` at least 1. Errors name the evaluator, the field and the
    choices."""
    evaluator.check_batch_size(config)
    out = {}
    for name, entry in dict(config.get("evals", {})).items():
        entry = dict(entry)
        where = f"config.evals.{name}"
        unknown = sorted(set(entry) - set(FIELDS))
        missing = sorted(set(FIELDS) - set(entry))
        if unknown or missing:
            raise ValueError(f"{where}: unknown field(s) {unknown}, missing {missing}; an "
                             f"evaluator has exactly {list(FIELDS)} (configs/common.py "
                             f"evaluator_config)")
        for field, kind in FIELDS.items():
            if not isinstance(entry[field], kind):
                raise ValueError(f"{where}.{field}={entry[field]!r}: give a {kind.__name__}")
        if entry["split"] not in SPLITS:
            raise ValueError(f"{where}.split={entry['split']!r}: choose one of {SPLITS}")
        try:
            eval_data.parse_eval_frames(entry["frames"])
            protocols.check(entry["protocol"])
            if label_size:
                protocols.check_label_size(
                    entry["protocol"], weights, config.image_size,
                    f"set {where}.protocol='hgmt', or train at config.image_size="
                    f"{protocols.reference_image_size()}", name="protocol")
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        for field in ("every", "max_examples"):
            if entry[field] < 0:
                raise ValueError(f"{where}.{field}={entry[field]} must be >= 0")
        metric = entry["best_metric"]
        if metric and metric not in metric_names(weights, entry["protocol"]):
            raise ValueError(f"{where}.best_metric={metric!r} is not a metric of these tasks; "
                             f"choose one of {sorted(metric_names(weights, entry['protocol']))}")
        out[name] = entry
    keeping = [n for n, e in out.items() if e["best_metric"]]
    if len(keeping) > 1:
        raise ValueError(f"config.evals: {keeping} all set best_metric; <workdir>/best keeps "
                         f"one checkpoint, so at most one evaluator may")
    return out


def keeper(settings: Mapping[str, Mapping]) -> str | None:
    """The name of the evaluator of `settings` ({name: evaluator settings}) that keeps the
    best checkpoint: the first with a `best_metric` that runs during training (`every` > 0:
    after the last step there is nothing left to choose from); None without one."""
    return next((n for n, e in settings.items() if e.get("best_metric") and e.get("every")),
                None)


# What an evals.jsonl line records of its evaluator's settings, all of them: lines that differ
# in them measured different things, and their scores are not compared.
RECORDED_SETTINGS = evaluator.SETTINGS


def measured_as(line: Mapping, name: str, settings: Mapping | None = None) -> bool:
    """Whether evals.jsonl `line` is evaluator `name`'s under `settings` (its
    RECORDED_SETTINGS; None: any). A setting the line does not record (a line written before
    they were) is taken as the same."""
    return line.get("evaluator") == name and (settings is None or all(
        line.get(k, settings[k]) == settings[k] for k in RECORDED_SETTINGS))


def best_recorded(evals: list[dict], name: str, metric: str, step: int,
                  lower: bool, settings: Mapping | None = None) -> tuple[int, float] | None:
    """(step, value) of the best `metric` that evaluator `name` recorded at or before `step`
    in `evals` (evals.jsonl's lines in file order; a step's last line is the one that
    counts, and a step whose last line lacks the metric has none), under `settings` where
    given (`measured_as`), the earliest of equal ones, or None."""
    last = {x["step"]: x.get("metrics", {}).get(metric)
            for x in evals if measured_as(x, name, settings) and x["step"] <= step}
    scored = sorted((s, float(v)) for s, v in last.items()
                    if v is not None and np.isfinite(v))
    if not scored:
        return None
    pick = min if lower else max
    return pick(scored, key=lambda sv: sv[1])


# What the trainer adds to an evaluation's summary in <workdir>/eval_<name>.json: the step,
# the evaluator's name, and what it evaluated (`fingerprint`); and the pictures written beside
# it (`report_files.write_report`).
RUN_KEYS = ("step", "evaluator", "evaluated", "pictures")

# The config fields (dotted names; `*` stands for any evaluator's name) that cannot change what
# an evaluation computes from given variables, which `fingerprint` leaves out: when to log,
# save and evaluate during training, how many checkpoints to keep, and how the training loader
# reads and when it stops on damage (no evaluation reads them; what they do to training is in
# the variables). A rerun that changes only these keeps the evaluations after training that
# its run finished. Every other field counts, even one (the optimizer's, say) that changes an
# evaluation only through the variables.
NOT_EVALUATED = ("log_every", "checkpoint_every", "keep_checkpoints", "evals.*.every",
                 "worker_count", "read_threads", "prefetch", "max_damaged_fraction")


def evaluated_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config`'s fields by dotted name (`workdirs.flat_fields`) less those of
    NOT_EVALUATED: what of it an evaluation after training may depend on."""
    fields = workdirs.flat_fields(json.loads(config.to_json_best_effort()))
    return {name: value for name, value in fields.items()
            if not any(fnmatch.fnmatchcase(name, free) for free in NOT_EVALUATED)}


def fingerprint(config: ml_collections.ConfigDict, host_state) -> dict[str, str]:
    """What an evaluation after training is of: {"config_sha256": of `config`'s
    `evaluated_fields` as JSON (sorted), "variables_sha256": of the params and batch_stats of
    `host_state` (each leaf's path, dtype, shape and bytes, in path order)}. A report whose
    fingerprint differs from this run's is evaluated again (`Evaluators.finished_at_end`)."""
    config_json = json.dumps(evaluated_fields(config), sort_keys=True).encode()
    variables = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(
        {"params": host_state.params, "batch_stats": host_state.batch_stats})[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.ascontiguousarray(leaf)
        variables.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}".encode())
        variables.update(array.tobytes())
    return {"config_sha256": hashlib.sha256(config_json).hexdigest(),
            "variables_sha256": variables.hexdigest()}


def _read_report(path: str) -> dict | None:
    """The JSON object of the evaluation report at `path` (a local path or an object-store
    URL), or None where there is none or it does not read as one (the rerun evaluates again
    and writes it anew)."""
    if not epath.Path(path).exists():
        return None
    try:
        return workdirs.read_json_object(path, "none needed: it is evaluated again")
    except (OSError, workdirs.DamagedRunFile) as e:
        logging.warning("%s does not read (%s): evaluating again", path, e)
        return None


def _on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective with several processes)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).min())


class _OutsidePreemptionSync(ocp.CheckpointManager):
    """A CheckpointManager that does not ask JAX's preemption sync protocol whether `step` is
    the agreed one. Orbax asks at every save (`should_save`, and again in `save`, also with
    force=True), and asking sets the counter the protocol agrees from: the step after the last
    one each process gave. The best checkpoint may be saved at a step before training's (on
    resuming, the best of evals.jsonl); a notice then would be agreed on a step training has
    passed, and a multi-host job killed without saving. The trainer's own counter
    (hgmt.training.preemption) is the only one the protocol sees."""

    def reached_preemption(self, step: int) -> bool:
        del step
        return False


def best_manager(workdir: str, metric: str, protocol: str = "hgmt") -> ocp.CheckpointManager:
    """The manager of `<workdir>/best`: one checkpoint, the best by `metric` (state only),
    outside the preemption sync protocol (`_OutsidePreemptionSync`)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m[metric],
        best_mode="min" if lower_is_better(metric, protocol) else "max",
        keep_checkpoints_without_metrics=False, enable_async_checkpointing=False)
    return _OutsidePreemptionSync(workdirs.best_dir(workdir), options=options,
                                  item_names=("state", checkpoint_digests.DIGESTS))


class Evaluators:
    """The evaluators of `config.evals`, each compiled once, run by the trainer at their steps
    and after the last one. Every process calls them (the evaluation is a collective); process
    0 writes the files."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str,
                 weights: Mapping[str, float], is_writer: bool = True):
        self.config, self.workdir, self.weights = config, workdir, dict(weights)
        self.settings = check(config, weights)
        self.is_writer = is_writer
        # Only for the layout of the best checkpoint: the streams per task.
        self.model = create_model(config.model, heads(parse_tasks(config.tasks)))
        self._built: dict[str, evaluator.Evaluator] = {}
        self.keeper = keeper(self.settings)
        self.manager = None
        self._bar: tuple[int, float] | None = None  # a best score without its checkpoint
        if self.keeper:
            e = self.settings[self.keeper]
            self.manager = best_manager(workdir, e["best_metric"], e["protocol"])

    def check_frames(self, info) -> None:
        """NotInBuild naming the evaluator whose frames the build of config.dataset (its tfds
        DatasetInfo `info`) does not hold (`eval_data.check_eval_frames`); then opens the
        split of each evaluator that runs (`builds.open_split`, which checks every
        shard against dataset_info.json), so that a missing or truncated shard stops the run
        with its `shards.SplitFault`. The trainer checks before its first step, not when the
        evaluator first runs (after all of training for one that runs at the end); the
        frames an evaluator takes are still selected then."""
        dataset, data_dir = self.config.dataset, self.config.data_dir
        stored = eval_data.stored_frames(info, dataset)
        for name, s in self.settings.items():
            try:
                eval_data.check_eval_frames(s["frames"], stored, dataset, data_dir)
            except builds.NotInBuild as e:
                raise builds.NotInBuild(f"config.evals.{name}: {e}") from None
        for split in sorted({s["split"] for s in self.settings.values()
                             if s["every"] or s["at_end"]}):
            builds.open_split(dataset, data_dir, split)

    def supersede_after(self, step: int) -> list[str]:
        """Moves what evaluations recorded of the steps after `step`, the step training
        starts from, to <workdir>/evals_superseded/<step>-<time>/: the evals.jsonl lines of
        later steps (evals.jsonl keeps the others, in order) and the evaluations after
        training of a later step (this config's evaluators' eval_<name>.json, its .md and the
        pictures its JSON lists, `report_files.write_report`). They
        are of a run that is not continued (its checkpoints removed, a damaged newest one, a
        rerun from an older step), and this run evaluates those steps again: nothing may take
        theirs for its own (the best so far, an evaluation the rerun skips as made,
        hgmt.report, launch/sweep.py). Process 0 moves them; every process calls it alike
        (all wait before and after). -> the names moved, for the log."""
        lines = workdirs.read_evals(self.workdir)
        later = [x for x in lines if x.get("step", 0) > step]
        reports = {}  # each report's path -> the pictures beside it that it lists
        for name in self.settings:
            report = _read_report(workdirs.eval_file(self.workdir, name))
            if report is not None and isinstance(report.get("step"), int) \
                    and report["step"] > step:
                path = workdirs.eval_file(self.workdir, name)
                stem = os.path.splitext(os.path.basename(path))[0]
                pictures = report.get("pictures")
                # Only names `write_report` gives (<stem>_<what>.png), whatever the file says.
                reports[path] = [p for p in pictures if isinstance(p, str)
                                 and os.path.basename(p) == p and p.startswith(stem + "_")
                                 and p.endswith(".png")] if isinstance(pictures, list) else []
        devices.barrier("evaluations read before those of later steps are moved")
        files = [path for report, pictures in reports.items()
                 for path in (report, os.path.splitext(report)[0] + ".md",
                              *(os.path.join(os.path.dirname(report), p) for p in pictures))
                 if path == report or epath.Path(path).exists()]
        moved = ([workdirs.EVALS_FILE] if later else []) + [os.path.basename(f) for f in files]
        if moved and self.is_writer:
            aside = (epath.Path(workdirs.evals_superseded_dir(self.workdir))
                     / workdirs.set_aside_name(step))
            aside.mkdir(parents=True, exist_ok=True)
            if later:
                disk_space.write_together([
                    (str(aside / workdirs.EVALS_FILE),
                     lambda f: f.write("".join(json.dumps(x) + "\n" for x in later)), "w"),
                    (workdirs.evals_file(self.workdir),
                     lambda f: f.write("".join(json.dumps(x) + "\n" for x in lines
                                               if x.get("step", 0) <= step)), "w")])
            for path in files:
                if epath.Path(path).exists():
                    epath.Path(path).rename(aside / os.path.basename(path))
        devices.barrier("evaluations of later steps moved")
        return moved

    def forget_after(self, step: int, host_state: Callable[[], Any]) -> list[int]:
        """Moves the best checkpoints kept after `step`, the step training starts from, to
        <workdir>/best_superseded/<step>-<time> (`checkpoints.move_aside`: nothing deleted, it
        may be the only trained weights left, e.g. after checkpoints/ was removed): the
        evaluations that chose them belong to a run that is not continued, and this run
        evaluates those steps again (evals.jsonl's last line of a step is the one that
        counts). -> the steps moved.

        With no best checkpoint left (one replaced the earlier best), the best so far is
        taken again from evals.jsonl (`best_recorded`): the periodic checkpoint of its step
        in <workdir>/checkpoints, where it still is, is kept as the best with its score
        (`host_state()`: a train state on the host, the structure it restores into);
        without it the score alone is the bar later evaluations must beat, with a warning.
        Every process calls it alike (orbax's restore and save are collectives)."""
        if self.manager is None:
            return []
        later = [s for s in self.manager.all_steps() if s > step]
        lines = workdirs.read_evals(self.workdir)
        stale = self._stale_best(lines)
        if later or stale:
            checkpoints.move_aside(self.manager, sorted(set(later) | set(stale)),
                                   workdirs.superseded_dir(self.workdir))
        for best_step, why in stale.items():
            logging.warning("moved the best checkpoint of step %d in %s to %s: %s, not by "
                            "config.evals.%s.best_metric=%s under its settings, which keeps "
                            "its own best from now on", best_step,
                            workdirs.best_dir(self.workdir),
                            workdirs.superseded_dir(self.workdir), why, self.keeper,
                            self.settings[self.keeper]["best_metric"])
        if self.manager.best_step() is None:
            self._keep_recorded_best(step, host_state, lines)
        return later

    def _stale_best(self, lines: list[dict]) -> dict[int, str]:
        """{step: why} of the kept best checkpoints this run's keeper cannot compare its scores
        with (a rerun that changed which evaluator keeps the best, or, accepted, its metric or
        settings): one stored without the keeper's metric, or whose score evals.jsonl
        records (a line of its step with that value) only by another evaluator or under
        other settings (`measured_as`). One whose line is missing (a stop between the save
        and the line) stays. `lines`: evals.jsonl's."""
        settings = self.settings[self.keeper]
        metric = settings["best_metric"]
        stale = {}
        for step in self.manager.all_steps():
            stored = self.manager.metrics(step) or {}
            if metric not in stored:
                stale[step] = f"it was chosen by {', '.join(sorted(stored)) or 'no metric'}"
                continue
            chose = [x for x in lines if x.get("step") == step
                     and x.get("metrics", {}).get(metric) == stored[metric]]
            if chose and not any(measured_as(x, self.keeper, settings) for x in chose):
                x = chose[-1]
                stale[step] = (f"it was chosen by evaluator {x.get('evaluator')!r} on "
                               f"{x.get('frames')} frames of {x.get('split')} (protocol "
                               f"{x.get('protocol')}, flip {x.get('flip')}, max_examples "
                               f"{x.get('max_examples')})")
        return stale

    def _keep_recorded_best(self, step: int, host_state: Callable[[], Any],
                            lines: list[dict]) -> None:
        """Keeps the best of evals.jsonl (its `lines`) at or before `step` as the best
        (`forget_after`)."""
        settings = self.settings[self.keeper]
        metric = settings["best_metric"]
        recorded = best_recorded(lines, self.keeper, metric,
                                 step, lower_is_better(metric, settings["protocol"]), settings)
        if recorded is None:
            return
        best_step, value = recorded
        state = self._periodic_state(best_step, host_state)
        if state is None:
            self._bar = recorded
            logging.warning("the best %s so far, %.6g at step %d (%s), is the score to beat; "
                            "its weights are not kept in %s: no readable checkpoint of step "
                            "%d in %s", metric, value, best_step,
                            workdirs.evals_file(self.workdir), workdirs.best_dir(self.workdir),
                            best_step, workdirs.checkpoint_dir(self.workdir))
            return
        self._save_best(best_step, state, metric, value)
        logging.info("kept the checkpoint of step %d as the best (%s %.6g, %s) in %s",
                     best_step, metric, value, workdirs.evals_file(self.workdir),
                     workdirs.best_dir(self.workdir))

    def _save_best(self, step: int, state: Any, metric: str, value: float) -> None:
        """Keeps `state` (checkpoint layout) as the best checkpoint of `step`, scored `value`
        of `metric`. A full disk is DiskFull wherever the trainer evaluates (at its steps, on
        resuming, after the last step), the partial folder removed."""
        with checkpoint_write_faults.stop_on_full_disk(self.workdir, step, best=True):
            self.manager.save(step, metrics={metric: value}, args=ocp.args.Composite(
                **checkpoint_digests.saved(state)))

    def _periodic_state(self, step: int, host_state: Callable[[], Any]) -> Any | None:
        """The train state (checkpoint layout) of <workdir>/checkpoints/<step>, or None where
        it is missing or does not read on some process (on every one alike)."""
        state = checkpoints.read_state(self.workdir, step,
                                       to_checkpoint_layout(self.model, host_state()))
        return state if _on_every_process(state is not None) else None

    def _evaluator(self, name: str) -> evaluator.Evaluator:
        """The `evaluator.Evaluator` of evaluator `name`, built (and its split opened) on first
        use, then reused."""
        if name not in self._built:  # built on first use: the split is opened then
            s = self.settings[name]
            self._built[name] = evaluator.Evaluator(
                self.config, **{k: s[k] for k in evaluator.SETTINGS})
        return self._built[name]

    def due(self, step: int) -> list[str]:
        """The evaluators that run at `step` of training: those due every so many steps, less,
        at the last step, those that run after it (`at_end`), which run once, then; none at
        step 0, the untrained weights."""
        last = step == self.config.total_steps
        return [n for n, e in self.settings.items() if step > 0 and e["every"]
                and step % e["every"] == 0 and not (last and e["at_end"])]

    def recorded(self, step: int) -> set[str]:
        """The evaluators whose results at `step` are in <workdir>/evals.jsonl."""
        return {x["evaluator"] for x in workdirs.read_evals(self.workdir)
                if x.get("step") == step}

    def at_end(self) -> list[str]:
        """The evaluators that run once, after the last step."""
        return [n for n, e in self.settings.items() if e["at_end"]]

    def finished_at_end(self, step: int, host_state) -> dict[str, dict]:
        """The evaluations after training at `step` that an earlier run of this workdir
        finished (one stopped between two of them, or one that ended): {name: its summary as
        `run` returned it}, read from its eval_<name>.json, which `run` writes last, after the
        evals.jsonl line. A file counts only where it is of `step`, of this evaluator, of
        today's metric definitions of its protocol (`metrics_versions.metrics_version`) and of what
        this run would evaluate (`evaluated`: the same variables of `host_state`, the same
        config but for the fields of NOT_EVALUATED, `fingerprint`), and where every process
        reads it so."""
        finished, evaluated = {}, None
        for name in self.at_end():
            report = _read_report(workdirs.eval_file(self.workdir, name))
            ok = (report is not None and report.get("step") == step
                  and report.get("evaluator") == name
                  and report.get("metrics_version")
                  == metrics_versions.metrics_version(self.settings[name]["protocol"]))
            if ok:
                evaluated = evaluated or fingerprint(self.config, host_state)
                ok = report.get("evaluated") == evaluated
            if _on_every_process(ok):
                finished[name] = {k: v for k, v in report.items() if k not in RUN_KEYS}
        return finished

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the best checkpoint so far, or of the best score whose weights
        were not kept (`forget_after`), or None."""
        if self.manager is None or self.manager.best_step() is None:
            return self._bar
        step = self.manager.best_step()
        return step, self.manager.metrics(step)[self.settings[self.keeper]["best_metric"]]

    def run(self, names: list[str], step: int, host_state, writer=None,
            final: bool = False, stop: Callable[[], None] | None = None) -> dict[str, dict]:
        """Runs the evaluators `names` on `host_state` (params and batch_stats on the host):
        TensorBoard, the best checkpoint, then evals.jsonl and after training (`final`) each
        one's eval_<name>.json, with pictures of its first examples. -> {name: summary}.
        `stop` is called before each evaluator and each of its batches; it raises to stop
        them (an evaluator stopped so records nothing)."""
        variables = {"params": host_state.params, "batch_stats": host_state.batch_stats}
        summaries, evaluated = {}, None
        for name in names:
            if stop is not None:
                stop()
            ev = self._evaluator(name)
            summary = ev(variables, stop)
            summaries[name] = summary
            values = metric_values(summary, self.weights)
            if writer is not None:
                writer.write_scalars(step, {f"{name}/{k}": v for k, v in values.items()})
                if final:
                    writer.write_images(step, {f"{name}/predictions": ev.pictures(variables)})
            # The best checkpoint before the evals.jsonl line: a save that fails (a full disk,
            # a kill) leaves the step unrecorded, so the rerun evaluates it again and keeps it.
            note = self._keep_best(name, step, host_state, values)
            if self.is_writer:
                self._append(step, name, summary, values)
                if final:
                    evaluated = evaluated or fingerprint(self.config, host_state)
                    summary = {**summary, "step": step, "evaluator": name,
                               "evaluated": evaluated}
                    report_files.write_report(summary, workdirs.eval_file(self.workdir, name))
            logging.info("%s at step %d: %s%s", name, step, "  ".join(
                f"{k} {v:.4g}" for k, v in protocols.headline(summary).items()
                if v is not None), note)
        return summaries

    def _append(self, step: int, name: str, summary: dict, values: dict) -> None:
        """Appends evaluator `name`'s line for `step` to evals.jsonl: its settings, number of
        examples and `values` (`metric_values` of its `summary`)."""
        line = {"step": step, "evaluator": name,
                **{k: summary[k] for k in (*RECORDED_SETTINGS, "num_examples")},
                "metrics": values}
        text = json.dumps(line)
        # The same evaluation recorded already: by a run whose report a full disk stopped
        # after this line (the rerun evaluates again and must not count it twice). Only the
        # last line of this step and evaluator counts: it is the one readers take.
        same = [x for x in workdirs.read_evals(self.workdir)
                if (x.get("step"), x.get("evaluator")) == (step, name)]
        if same and json.dumps(same[-1]) == text:
            return
        disk_space.append_line(workdirs.evals_file(self.workdir), text, "the evaluation curves")

    def _keep_best(self, name: str, step: int, host_state, values: dict) -> str:
        """Where `name` is the keeper and its score in `values` beats the best so far (finite),
        keeps `host_state` as the best checkpoint of `step`. -> what its log line adds about
        the best ('' for an evaluator that keeps none)."""
        if name != self.keeper:
            return ""
        metric = self.settings[name]["best_metric"]
        value, best = values.get(metric), self.best()
        # A non-finite score (a diverged model's NaN loss) is never kept: no later one beats it.
        better = value is not None and bool(np.isfinite(value)) and (best is None or (
            value < best[1] if lower_is_better(metric, self.settings[name]["protocol"])
            else value > best[1]))
        if better and best is not None and best[0] == step and best != self._bar:
            return f"  ({metric}: kept at this step already)"
        if better:
            self._save_best(step, to_checkpoint_layout(self.model, host_state), metric, value)
            self._bar = None
            return (f"  ({metric} {value:.4g}: best so far, kept in "
                    f"{workdirs.best_dir(self.workdir)})")
        if best is not None:
            lost = ", its weights not kept" if best == self._bar else ""
            return f"  ({metric}: best {best[1]:.4g} at step {best[0]}{lost})"
        if value is not None and not np.isfinite(value):
            return f"  ({metric}: {value}, not finite, not kept)"
        return f"  ({metric}: undefined on this split, not kept)"

    def close(self) -> None:
        """Closes the best checkpoint's manager, if any."""
        if self.manager is not None:
            self.manager.close()
