"""The trainer's evaluators, declared in the config (`config.evals`, `eval_settings`), which it
runs at their steps and after the last one.

Every result goes to TensorBoard as `<name>/<metric>` and, one JSON object a line, to
<workdir>/evals.jsonl (step, evaluator, settings, metrics): the learning curves of a run. The
evaluator with a `best_metric` that runs during training keeps the best checkpoint
(`best_checkpoint`); those that run after the last step write <workdir>/eval_<name>.json
(`eval_reports`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import ml_collections
from etils import epath

from hgmt import devices, disk_space, workdirs
from hgmt.data import builds, eval_data
from hgmt.evaluation import evaluator, metrics_versions, protocols, report_files
from hgmt.models import create_model
from hgmt.tasks import heads, parse_tasks
from hgmt.training import eval_reports, eval_settings
from hgmt.training.best_checkpoint import BestCheckpoint

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

    from hgmt.training.steps import TrainState


class Evaluators:
    """The evaluators of `config.evals`, each compiled once, run by the trainer at their steps
    and after the last one. Every process calls them (the evaluation is a collective); process
    0 writes the files."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str,
                 weights: Mapping[str, float], is_writer: bool = True):
        self.config, self.workdir, self.weights = config, workdir, dict(weights)
        self.settings = eval_settings.check_evals(config, weights)
        self.is_writer = is_writer
        self._built: dict[str, evaluator.Evaluator] = {}
        self.keeper = eval_settings.keeper(self.settings)
        self.best_checkpoint: BestCheckpoint | None = None
        if self.keeper:
            # The model only for the layout of the best checkpoint: the streams per task.
            model = create_model(config.model, heads(parse_tasks(config.tasks)))
            self.best_checkpoint = BestCheckpoint(workdir, self.keeper,
                                                  self.settings[self.keeper], model)

    def check_frames(self, info: tfds.core.DatasetInfo) -> None:
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
            report = eval_reports.read_report(workdirs.eval_file(self.workdir, name))
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
        """`BestCheckpoint.forget_after` of the best checkpoint, if one is kept: the steps of
        the best checkpoints kept after `step`, moved aside."""
        if self.best_checkpoint is None:
            return []
        return self.best_checkpoint.forget_after(step, host_state)

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

    def finished_at_end(self, step: int, host_state: TrainState) -> dict[str, dict]:
        """The evaluations after training at `step` that an earlier run of this workdir
        finished (one stopped between two of them, or one that ended): {name: its summary as
        `run` returned it}, read from its eval_<name>.json, which `run` writes last, after the
        evals.jsonl line. A file counts only where it is of `step`, of this evaluator, of
        today's metric definitions of its protocol (`metrics_versions.metrics_version`) and of what
        this run would evaluate (`evaluated`: the same variables of `host_state`, the same
        config but for the fields of `eval_reports.NOT_EVALUATED`, `eval_reports.fingerprint`),
        and where every process reads it so."""
        finished, evaluated = {}, None
        for name in self.at_end():
            report = eval_reports.read_report(workdirs.eval_file(self.workdir, name))
            ok = (report is not None and report.get("step") == step
                  and report.get("evaluator") == name
                  and report.get("metrics_version")
                  == metrics_versions.metrics_version(self.settings[name]["protocol"]))
            if ok:
                evaluated = evaluated or eval_reports.fingerprint(self.config, host_state)
                ok = report.get("evaluated") == evaluated
            if devices.on_every_process(ok):
                finished[name] = {k: v for k, v in report.items()
                                  if k not in eval_reports.RUN_KEYS}
        return finished

    def run(self, names: list[str], step: int, host_state: TrainState,
            writer: disk_space.CheckedWriter | None = None, final: bool = False,
            stop: Callable[[], None] | None = None) -> dict[str, dict]:
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
            values = eval_settings.metric_values(summary, self.weights)
            if writer is not None:
                writer.write_scalars(step, {f"{name}/{k}": v for k, v in values.items()})
                if final:
                    writer.write_images(step, {f"{name}/predictions": ev.pictures(variables)})
            # The best checkpoint before the evals.jsonl line: a save that fails (a full disk,
            # a kill) leaves the step unrecorded, so the rerun evaluates it again and keeps it.
            note = (self.best_checkpoint.keep_if_better(step, host_state, values)
                    if name == self.keeper else "")
            if self.is_writer:
                self._append(step, name, summary, values)
                if final:
                    evaluated = evaluated or eval_reports.fingerprint(self.config, host_state)
                    summary = {**summary, "step": step, "evaluator": name,
                               "evaluated": evaluated}
                    report_files.write_report(summary, workdirs.eval_file(self.workdir, name))
            logging.info("%s at step %d: %s%s", name, step, "  ".join(
                f"{k} {v:.4g}" for k, v in protocols.headline(summary).items()
                if v is not None), note)
        return summaries

    def _append(self, step: int, name: str, summary: dict, values: dict) -> None:
        """Appends evaluator `name`'s line for `step` to evals.jsonl: its settings, number of
        examples and `values` (`eval_settings.metric_values` of its `summary`)."""
        line = {"step": step, "evaluator": name,
                **{k: summary[k] for k in (*eval_settings.RECORDED_SETTINGS, "num_examples")},
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


    def close(self) -> None:
        """Closes the best checkpoint's manager, if any."""
        if self.best_checkpoint is not None:
            self.best_checkpoint.close()
