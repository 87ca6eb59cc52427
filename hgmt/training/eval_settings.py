"""The evaluators a config declares, `config.evals`: their fields, their check, the metrics
they score and which of them keeps the best checkpoint.

`config.evals` is a dict of named evaluators; each has the evaluation settings of
`hgmt.evaluation.evaluator.SETTINGS` (split, frames, protocol, flip, max_examples) and says
when it runs and what it keeps:

    every        run every `every` steps (0: not during training)
    at_end       run after the last step; its summary is written to <workdir>/eval_<name>.json
                 (+ .md), the file `hgmt.report` and `launch/sweep.py` read for `test`
    best_metric  '' or a metric of `metric_values` (`loss/total`, `loss/<task>`, a headline
                 metric such as `pose2d/pckh@0.5`): the checkpoint that scores best on it is
                 kept in <workdir>/best/<step> (`hgmt.training.best_checkpoint`); at most one
                 evaluator keeps one

Losses are better lower, and so are the metrics a task's `Headline` lists in
`lower_is_better`; everything else higher.
"""

from __future__ import annotations

from collections.abc import Mapping

import ml_collections

from hgmt.choices import not_one_of
from hgmt.data import eval_data
from hgmt.evaluation import evaluator, protocols
from hgmt.sources import surreal
from hgmt.tasks import weighted_total

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


def check_evals(config: ml_collections.ConfigDict, weights: Mapping[str, float], *,
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
            wrong = "; ".join([*([f"unknown field(s) {', '.join(unknown)}"] if unknown else []),
                               *([f"missing {', '.join(missing)}"] if missing else [])])
            raise ValueError(f"{where}: {wrong}; an evaluator has exactly "
                             f"{', '.join(FIELDS)} (configs/common.py evaluator_config)")
        for field, kind in FIELDS.items():
            if not isinstance(entry[field], kind):
                raise ValueError(f"{where}.{field}={entry[field]!r}: give a {kind.__name__}")
        if entry["split"] not in SPLITS:
            raise not_one_of(f"{where}.split={entry['split']!r}", SPLITS)
        try:
            eval_data.parse_eval_frames(entry["frames"])
        except ValueError as e:  # it starts "frames='...'"
            raise ValueError(f"{where}.{e}") from None
        given = f"{where}.protocol={entry['protocol']!r}"
        protocols.check(entry["protocol"], given)
        if label_size:
            protocols.check_label_size(
                entry["protocol"], weights, config.image_size,
                f"set {where}.protocol='hgmt', or train at config.image_size="
                f"{protocols.reference_image_size()}", given)
        for field in ("every", "max_examples"):
            if entry[field] < 0:
                raise ValueError(f"{where}.{field}={entry[field]} must be >= 0")
        metric = entry["best_metric"]
        if metric and metric not in metric_names(weights, entry["protocol"]):
            raise not_one_of(
                f"{where}.best_metric={metric!r} is not a metric of these tasks",
                sorted(metric_names(weights, entry["protocol"])))
        out[name] = entry
    keeping = [n for n, e in out.items() if e["best_metric"]]
    if len(keeping) > 1:
        raise ValueError(f"config.evals: {', '.join(keeping)} all set best_metric; <workdir>/best "
                         f"keeps one checkpoint, so at most one evaluator may")
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
