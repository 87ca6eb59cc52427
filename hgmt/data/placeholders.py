"""Placeholders skipped in training: the flagged records of unusable frames a build keeps.

A build keeps the test frames the reference protocols evaluate but cannot use (unset joints, a
clip with a missing file) as flagged placeholders (`records.unusable_example`), for
evaluation. Training trains on none: the training loader's first operation, `SkipUnusable`,
drops them (`passes_filter`), and a damaged record is replaced only by a record it passes
(`record_reads.first_good`). A training split with nothing else to give raises NoUsableRecords
(`no_usable_records`, naming the split and the fix) rather than being read round forever.
"""

from __future__ import annotations

from typing import Any

import grain.python as grain

from hgmt.data import record_reads, shards, worker_signals
from hgmt.data.record_reads import NoUsableRecords

# How many placeholders in a row one copy of `SkipUnusable` skips before it looks through the
# split for a usable record: a split with usable records seldom gives that many in a row, and
# one without any would otherwise be read round forever, its loader never giving a batch.
PLACEHOLDER_RUN = 100


def split_name(source: Any) -> str:
    """How an error names `source`'s split: 'split S of dataset D under DATA_DIR' for a split
    of `builds.open_split` (the data source's `split` and `dataset_info`), else its repr."""
    info, split = getattr(source, "dataset_info", None), getattr(source, "split", None)
    if info is None or split is None:
        return f"the training records {source!r}"[:200]
    return f"split {split!r} of dataset {info.full_name!r} under {_data_dir(info)}"


def _data_dir(info: Any) -> str:
    """The data_dir a split's `dataset_info` was built under (its folder less the dataset's
    name, config and version)."""
    folder = str(info.data_dir).rstrip("/")
    tail = "/" + info.full_name
    return folder[:-len(tail)] if folder.endswith(tail) else folder


def no_usable_records(source: Any) -> NoUsableRecords:
    """The error for a training `source` of which no example can be made, naming its split and
    the fix."""
    size = len(source)
    what = (f"all {size} of its records are placeholders of unusable frames (a build keeps "
            f"them in its test split, for evaluation)" if size else "it holds no record")
    info = getattr(source, "dataset_info", None)
    rebuild = "" if info is None else (
        f" (build it again from clips with usable frames: "
        f"{shards.build_command(info.full_name.rpartition('/')[0], _data_dir(info))})")
    return NoUsableRecords(
        f"{split_name(source)} has nothing to train on: {what}, so the training loader would "
        f"never give a batch. Train on a split with usable frames, such as a build's train "
        f"split{rebuild}")


def passes_filter(element: dict) -> bool:
    """Whether `SkipUnusable` passes `element`, a record of a `record_reads.Guarded` source: any but
    a flagged placeholder. A damaged record ({'_index', '_damaged'}: it did not read) passes,
    for the transform to replace with the next good record of its shard that passes too
    (`record_reads.first_good`, given this as its `usable`)."""
    return not element.get("unusable", b"")


def has_usable_record(source: Any) -> bool:
    """Whether any record of `source` passes `SkipUnusable`'s filter (`passes_filter`): one
    that is not a flagged placeholder, or one that does not read (damaged), which the loader
    replaces (read in order up to the first). False: every record reads and is a
    placeholder."""
    guarded = record_reads.Guarded(source)
    return any(passes_filter(guarded[index]) for index in range(len(source)))


class SkipUnusable(grain.FilterTransform):
    """Drops the flagged placeholder records (a test split's unusable frames) from training.
    Once a copy of it has skipped PLACEHOLDER_RUN of them in a row, it looks through `source`
    (the split it filters) for a usable record, once: NoUsableRecords when there is none,
    where the loader would otherwise read the split round forever without a batch.
    The training loader's first operation: the copy of it that each grain worker process
    unpickles, before it reads a record, makes that process ignore
    `worker_signals.WORKER_IGNORED_SIGNALS` (`_unpickled`)."""

    def __init__(self, source: Any = None):
        self.source = source
        self._run = 0  # placeholders skipped in a row, until the split is known to be usable
        self._usable = source is None

    def filter(self, element: dict) -> bool:
        if passes_filter(element):
            self._run = 0
            return True
        if not self._usable:
            self._run += 1
            if self._run >= PLACEHOLDER_RUN:
                if not has_usable_record(self.source):
                    raise no_usable_records(self.source)
                self._usable = True
        return False

    def __reduce__(self):
        return _unpickled, (self.source,)


def _unpickled(source: Any = None) -> SkipUnusable:
    """A `SkipUnusable` of `source` as a grain worker process unpickles it: there, before it
    reads a record, WORKER_IGNORED_SIGNALS are ignored from now on
    (`worker_signals.ignore_in_worker`); in a main process nothing else changes."""
    worker_signals.ignore_in_worker()
    return SkipUnusable(source)
