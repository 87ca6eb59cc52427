"""The best checkpoint of a run, <workdir>/best/<step>: the one that scores best on the
`best_metric` of the evaluator that keeps it (`eval_settings.keeper`).

It is an orbax checkpoint with its score stored beside it, so a resumed run knows the best so
far; a run resumed from before it moves it aside and takes the best up to its start step
again from evals.jsonl, and so does a rerun whose keeper did not choose it
(`BestCheckpoint.forget_after`). A full disk while writing it is `disk_space.DiskFull`, its
partial folder removed (`checkpoint_write_faults.stop_on_full_disk`), as it is when the write
stops on another error or a Ctrl-C (`checkpoint_write_faults.unfinished_best_removed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import orbax.checkpoint as ocp

from hgmt import devices, workdirs
from hgmt.models import to_checkpoint_layout
from hgmt.training import checkpoint_digests, checkpoint_write_faults, checkpoints
from hgmt.training.eval_settings import RECORDED_SETTINGS, lower_is_better

if TYPE_CHECKING:
    from hgmt.models import MultiTaskHourglass
    from hgmt.training.steps import TrainState


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


class BestCheckpoint:
    """<workdir>/best of the evaluator `keeper`, under its `settings` (its `best_metric` and
    the evaluation settings its scores are of): the best checkpoint so far, kept as better
    scores come (`keep_if_better`), and set right on resuming (`forget_after`). `model` gives
    the checkpoint's layout (the streams per task)."""

    def __init__(self, workdir: str, keeper: str, settings: Mapping,
                 model: MultiTaskHourglass):
        self.workdir, self.keeper, self.settings, self.model = workdir, keeper, settings, model
        self.metric = settings["best_metric"]
        self.manager = best_manager(workdir, self.metric, settings["protocol"])
        self._bar: tuple[int, float] | None = None  # a best score without its checkpoint

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
        later = [s for s in self.manager.all_steps() if s > step]
        lines = workdirs.read_evals(self.workdir)
        stale = self._stale(lines)
        if later or stale:
            checkpoints.move_aside(self.manager, sorted(set(later) | set(stale)),
                                   workdirs.superseded_dir(self.workdir))
        for best_step, why in stale.items():
            logging.warning("moved the best checkpoint of step %d in %s to %s: %s, not by "
                            "config.evals.%s.best_metric=%s under its settings, which keeps "
                            "its own best from now on", best_step,
                            workdirs.best_dir(self.workdir),
                            workdirs.superseded_dir(self.workdir), why, self.keeper,
                            self.metric)
        if self.manager.best_step() is None:
            self._keep_recorded(step, host_state, lines)
        return later

    def _stale(self, lines: list[dict]) -> dict[int, str]:
        """{step: why} of the kept best checkpoints this run's keeper cannot compare its scores
        with (a rerun that changed which evaluator keeps the best, or, accepted, its metric or
        settings): one stored without the keeper's metric, or whose score evals.jsonl
        records (a line of its step with that value) only by another evaluator or under
        other settings (`measured_as`). One whose line is missing (a stop between the save
        and the line) stays. `lines`: evals.jsonl's."""
        metric = self.metric
        stale = {}
        for step in self.manager.all_steps():
            stored = self.manager.metrics(step) or {}
            if metric not in stored:
                stale[step] = f"it was chosen by {', '.join(sorted(stored)) or 'no metric'}"
                continue
            chose = [x for x in lines if x.get("step") == step
                     and x.get("metrics", {}).get(metric) == stored[metric]]
            if chose and not any(measured_as(x, self.keeper, self.settings) for x in chose):
                x = chose[-1]
                stale[step] = (f"it was chosen by evaluator {x.get('evaluator')!r} on "
                               f"{x.get('frames')} frames of {x.get('split')!r} (protocol "
                               f"{x.get('protocol')!r}, flip {x.get('flip')}, max_examples "
                               f"{x.get('max_examples')})")
        return stale

    def _keep_recorded(self, step: int, host_state: Callable[[], Any],
                       lines: list[dict]) -> None:
        """Keeps the best of evals.jsonl (its `lines`) at or before `step` as the best
        (`forget_after`)."""
        metric = self.metric
        recorded = best_recorded(lines, self.keeper, metric, step,
                                 lower_is_better(metric, self.settings["protocol"]),
                                 self.settings)
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
        self.save(best_step, state, value)
        logging.info("kept the checkpoint of step %d as the best (%s %.6g, %s) in %s",
                     best_step, metric, value, workdirs.evals_file(self.workdir),
                     workdirs.best_dir(self.workdir))

    def save(self, step: int, state: Any, value: float) -> None:
        """Keeps `state` (checkpoint layout) as the best checkpoint of `step`, scored `value`
        of the keeper's metric. A full disk is DiskFull wherever the trainer evaluates (at its
        steps, on resuming, after the last step), the partial folder removed, as it is on any
        other error and on Ctrl-C (`checkpoint_write_faults.unfinished_best_removed`)."""
        with checkpoint_write_faults.unfinished_best_removed(self.workdir, step), \
                checkpoint_write_faults.stop_on_full_disk(self.workdir, step, best=True):
            self.manager.save(step, metrics={self.metric: value}, args=ocp.args.Composite(
                **checkpoint_digests.saved(state)))

    def _periodic_state(self, step: int, host_state: Callable[[], Any]) -> Any | None:
        """The train state (checkpoint layout) of <workdir>/checkpoints/<step>, or None where
        it is missing or does not read on some process (on every one alike)."""
        state = checkpoints.read_state(self.workdir, step,
                                       to_checkpoint_layout(self.model, host_state()))
        return state if devices.on_every_process(state is not None) else None

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the best checkpoint so far, or of the best score whose weights
        were not kept (`forget_after`), or None."""
        if self.manager.best_step() is None:
            return self._bar
        step = self.manager.best_step()
        return step, self.manager.metrics(step)[self.metric]

    def keep_if_better(self, step: int, host_state: TrainState, values: dict) -> str:
        """Where the keeper's score in `values` (its `metric_values` at `step`) beats the best
        so far (finite), keeps `host_state` as the best checkpoint of `step`. -> what the
        keeper's log line adds about the best."""
        metric = self.metric
        value, best = values.get(metric), self.best()
        # A non-finite score (a diverged model's NaN loss) is never kept: no later one beats it.
        better = value is not None and bool(np.isfinite(value)) and (best is None or (
            value < best[1] if lower_is_better(metric, self.settings["protocol"])
            else value > best[1]))
        if better and best is not None and best[0] == step and best != self._bar:
            return f"  ({metric}: kept at this step already)"
        if better:
            self.save(step, to_checkpoint_layout(self.model, host_state), value)
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
        """Closes the manager of <workdir>/best."""
        self.manager.close()
