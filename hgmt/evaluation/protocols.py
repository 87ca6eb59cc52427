"""Metric protocols: which definition computes each task's numbers.

- `hgmt`: hgmt's own definitions (each task module's `metric_stats` / `summarize`).
- `bodynet`: what gulvarol/bodynet's training code computes (training/util/eval.lua,
  training/test.lua): PCK on 10 joints between integer heatmap argmaxes averaged per test batch,
  MJD from the global argmax of each joint's volume; its segmentation and depth functions are
  SURREAL's, so segm and depth follow `surreal`.
- `surreal`: what gulvarol/surreal's training code computes (training/eval.lua, test.lua) for
  segmentation and depth; it has no pose metric, so pose2d and pose3d keep hgmt's definitions
  and are labelled `hgmt`.

docs/metrics.md states every definition with file and line. Each task module says which
protocols it implements (its `HEADLINES`, how their numbers are shown) and gives their
functions (`protocol_metric`); a task without a protocol's definition keeps hgmt's. A `Metric`
is a pair of functions: `stats(pred, batch)` giving split-additive statistics of a batch of
last-stage predictions, and `summarize(sums, num_damaged)` giving the numbers. The statistics
weight the examples in one of two ways: hgmt's definitions by `common.example_weights` (1 for a
real, usable example; 0 for padding, for flagged unusable frames and for the frames hgmt's own
check rejects), the reference protocols' by `common.full_batch_weights` (1 for a real example,
flagged unusable ones included, of one of the reference's full test batches; 0 for padding and
for the last partial batch, which the reference never evaluates). A damaged record is padding
to both; `num_damaged` says how many were left out, so that a reference number that divides by
N is not given over fewer records than N.

The reference protocols are defined on 64 x 64 label maps (`common.REFERENCE_LABEL_SIZE`):
`check_label_size` refuses them at another size.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import TYPE_CHECKING

from hgmt.choices import not_one_of
from hgmt.tasks import TASKS, common
from hgmt.tasks.spec import Headline

if TYPE_CHECKING:
    import jax

PROTOCOLS = ("hgmt", "bodynet", "surreal")


@dataclasses.dataclass(frozen=True)
class Metric:
    """A task's metric definition under one protocol: per-batch sums, then the split's
    numbers from their totals."""

    protocol: str  # the protocol whose definition this is (what the JSON records)
    stats: Callable[[object, dict], dict]  # (pred (B,r,r,C), cropped batch) -> additive sums
    # (split sums, num_damaged=0: the damaged records left out of them) -> {metric: value}
    summarize: Callable[..., dict]


def check(protocol: str, given: str | None = None) -> str:
    """The protocol name, or ValueError naming the valid ones (`not_one_of`'s), after `given`:
    where the protocol was given, with its value (default "protocol='<protocol>'", a Python
    argument; a config field or a flag names itself)."""
    if protocol not in PROTOCOLS:
        raise not_one_of(given or f"protocol={protocol!r}", PROTOCOLS)
    return protocol


def task_protocol(protocol: str, task: str) -> str:
    """The protocol whose definition computes `task` under `protocol`."""
    return protocol if check(protocol) in TASKS[task].HEADLINES else "hgmt"


def _hgmt_stats(task: ModuleType, pred: jax.Array, batch: dict) -> dict:
    return task.metric_stats(task.decode(pred, batch), batch)


def _hgmt_summarize(task: ModuleType, sums: dict, num_damaged: int = 0) -> dict:
    """hgmt's numbers: means over the examples that count, so a damaged record left out
    (`num_damaged`) changes nothing but which frames they are over."""
    return task.summarize(sums)


def metric(protocol: str, task: str, num_examples: int) -> Metric:
    """The `Metric` of `task` under `protocol` for a split of `num_examples` test examples
    (BodyNet's per-batch PCK groups them by batch['position'])."""
    used = task_protocol(protocol, task)
    module = TASKS[task]
    if used == "hgmt":
        return Metric("hgmt", functools.partial(_hgmt_stats, module),
                      functools.partial(_hgmt_summarize, module))
    return Metric(used, *module.protocol_metric(used, num_examples))


def reference_image_size() -> int:
    """The image size (px) whose label maps are the references' 64 x 64."""
    return common.REFERENCE_LABEL_SIZE * common.LABEL_STRIDE


def check_label_size(protocol: str, tasks: Iterable[str], image_size: int,
                     fix: str | None = None, given: str | None = None) -> None:
    """ValueError, in one line ending in `fix`, where a task of `tasks` would be measured by a
    reference protocol's definition (`task_protocol`) on label maps other than the references'
    64 x 64 (image_size / `common.LABEL_STRIDE`): their pixel thresholds, integer steps and
    depth grids are those of 64 x 64 maps, and a number at another size would carry their
    name. `fix` defaults to evaluating under hgmt's protocol or training at the references'
    size; `given` is where the protocol was given, with its value (default
    `--protocol=<protocol>`, the flag; a config field, or another flag)."""
    fix = fix or (f"evaluate this model with --protocol=hgmt, or train one with "
                  f"--config.image_size={reference_image_size()} for the reference protocols")
    used = sorted({task_protocol(protocol, t) for t in tasks} - {"hgmt"})
    r = image_size // common.LABEL_STRIDE
    if used and r != common.REFERENCE_LABEL_SIZE:
        size = common.REFERENCE_LABEL_SIZE
        raise ValueError(
            f"{given or f'--protocol={protocol}'}: measures {size}x{size} label maps, as its "
            f"reference code does (config.image_size={reference_image_size()}), but "
            f"config.image_size={image_size} gives {r}x{r}; {fix}")


def window(protocol: str, trained: str = "hgmt") -> str:
    """The crop window (`cropping.WINDOWS`) of an evaluation under `protocol` of a model
    trained on `trained`'s windows (config.window): the reference protocols' own test crop
    (BodyNet's and SURREAL's, the same function), so their numbers are measured with the
    person at the scale of the published ones; the training window under hgmt's. A task that
    falls back to hgmt's definition (pose under `surreal`) is measured in the evaluation's
    window."""
    return trained if check(protocol) == "hgmt" else "reference"


def headline_of(task: str, protocol: str = "hgmt") -> Headline:
    """How `task`'s numbers made by `protocol` (the one its summary records) are shown."""
    return TASKS[task].HEADLINES[task_protocol(protocol, task)]


def headline(summary: dict) -> dict:
    """{'<task>/<metric>': value} of the one-number metrics of an evaluation summary, each
    under the protocol its task records (summaries without one are hgmt's)."""
    out = {}
    for task in TASKS:
        if task in summary:
            keys = headline_of(task, summary[task].get("protocol", "hgmt")).metrics
            out.update({f"{task}/{k}": summary[task][k] for k in keys})
    return out
