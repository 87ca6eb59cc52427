"""Validation during training and the best checkpoint.

Every `config.eval_every` steps the trainer evaluates the current model on the frames of
`config.eval_split` that `config.eval_frames` selects (at most `config.eval_max_examples`),
writes the headline metrics to TensorBoard under `validation/`, and keeps the checkpoint that
scored best on `config.best_metric` in `<workdir>/best/<step>` (orbax, the metric stored with
it, so a resumed run knows the best so far). `hgmt.evaluate --step=best` evaluates it.

`best_metric` is any key of `metric_values`: `loss/total` (the loss-weighted sum of the task
losses, the default: it exists for every task subset), `loss/<task>`, or a headline metric
such as `pose2d/pckh@0.5` or `pose3d/mjd_mm`. Losses are better lower, and so are the metrics a
task's `Headline` lists in `lower_is_better`; everything else higher.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import ml_collections
import orbax.checkpoint as ocp

from hgmt import workdirs
from hgmt.evaluation import evaluator, protocols


def metric_values(summary: dict, weights: Mapping[str, float]) -> dict[str, float]:
    """{'loss/total', 'loss/<task>', '<task>/<metric>'} of an evaluation summary."""
    values = {f"loss/{t}": float(v) for t, v in summary["loss"].items()}
    values["loss/total"] = sum(weights[t] * v for t, v in summary["loss"].items())
    values.update({k: float(v) for k, v in evaluator.headline(summary).items() if v is not None})
    return values


def lower_is_better(metric: str) -> bool:
    """'loss/...' and the headline metrics their task declares better lower (errors)."""
    task, _, name = metric.partition("/")
    return task == "loss" or name in protocols.headline_of(task, "hgmt").lower_is_better


def best_manager(workdir: str, metric: str) -> ocp.CheckpointManager:
    """The manager of `<workdir>/best`: one checkpoint, the best by `metric` (state only)."""
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, best_fn=lambda m: m[metric],
        best_mode="min" if lower_is_better(metric) else "max",
        keep_checkpoints_without_metrics=False, enable_async_checkpointing=False)
    return ocp.CheckpointManager(workdirs.best_dir(workdir), options=options,
                                 item_names=("state",))


class Validator:
    """Runs validation at the configured steps and keeps the best checkpoint."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str,
                 weights: Mapping[str, float]):
        self.every = int(config.get("eval_every", 0))
        self.metric = config.get("best_metric", "loss/total")
        self.weights = dict(weights)
        if not self.every:
            return
        known = {"loss/total"} | {f"loss/{t}" for t in self.weights}
        known |= {f"{t}/{k}" for t in self.weights for k in evaluator.headline_keys(t)}
        if self.metric not in known:
            raise ValueError(f"config.best_metric={self.metric!r} is not a validation metric "
                             f"of these tasks; choose one of {sorted(known)}")
        self.evaluator = evaluator.Evaluator(config, split=config.get("eval_split", "validation"))
        self.manager = best_manager(workdir, self.metric)

    def due(self, step: int) -> bool:
        return bool(self.every) and step % self.every == 0

    def best(self) -> tuple[int, float] | None:
        """(step, value) of the best checkpoint so far, or None."""
        step = self.manager.best_step()
        return None if step is None else (step, self.manager.metrics(step)[self.metric])

    def __call__(self, step: int, host_state, writer=None) -> dict[str, float]:
        """Evaluates `host_state` (params, batch_stats on the host), logs, and saves it to
        `<workdir>/best` when it beats the best so far. Every process calls it."""
        summary = self.evaluator({"params": host_state.params,
                                  "batch_stats": host_state.batch_stats})
        values = metric_values(summary, self.weights)
        if writer is not None:
            writer.write_scalars(step, {f"validation/{k}": v for k, v in values.items()})
        value = values.get(self.metric)
        best = self.best()
        better = value is not None and (best is None or (
            value < best[1] if lower_is_better(self.metric) else value > best[1]))
        if better:
            self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(host_state)), metrics={self.metric: value})
            note = "best so far, saved"
        elif best is not None:
            note = f"best {best[1]:.4g} at step {best[0]}"
        else:
            note = "undefined on this split, not saved"
        logging.info("validation at step %d: %s %s (%s)", step, self.metric,
                     "undefined" if value is None else f"{value:.4g}", note)
        return values

    def close(self) -> None:
        if self.every:
            self.manager.close()
