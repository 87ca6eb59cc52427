"""Damaged records: skipped, named once, counted, and replaced by a pure function of the index.

The shard check (`hgmt.data.shards`) reads each file's footer, so a record damaged inside an
intact shard (a bad sector, a partial copy, a flipped byte in its encoded frame or label maps)
is found only when it is read: array_record's chunk hash does not match ("Corrupted
Riegeli/records file: chunk data hash mismatch"), or the image inside does not decode. The
policy, as TFDS and production loaders do it:

- training: the damaged record is skipped and replaced by the next record of the same shard that
  reads and is not a placeholder of an unusable frame, which training's filter skips too
  (`Shards.replacement`, `record_reads.first_good`: a pure function of the index, so the data
  stream, and an interrupted and resumed run, stay exactly those of an uninterrupted one); the
  trainer names it once (shard file, record number in the shard, index in the split), counts it
  (TensorBoard `data/damaged_records`, `<workdir>/damaged_records.json`, the run's closing log
  line), and stops naming the files when more than `config.max_damaged_fraction` of the split is
  damaged (the default, 0.1 %, passes a few stray bad records of a large split, not a bad copy;
  a split of under 1000 records, none). With several processes the account is of all their
  shares, the same on every process (`DamageLog`);
- evaluation: a damaged frame is left out and counted into the evaluation's JSON
  (`num_damaged`, `damaged_records`); a record that does not read even to select the frames,
  whose frame is unknown, is reported apart (`num_unreadable`, `unreadable_records`); none is
  skipped silently;
- `python -m hgmt.data.check` reads and decodes every record of a split and names the bad ones.

A record is read, judged damaged and replaced in `hgmt.data.record_reads`; a read that fails
with an I/O error or a refused access is not damage but the storage's, tried again and then
named as such (`hgmt.data.storage`). This module keeps training's account of the damaged
records over a run (`DamageLog`) and its limit (`check_max_fraction`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable

import numpy as np
from etils import epath

from hgmt.data.record_reads import Shards, TooManyDamaged


def check_max_fraction(fraction: float) -> None:
    """ValueError naming `config.max_damaged_fraction` unless it is in [0, 1]."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"config.max_damaged_fraction={fraction} must be in [0, 1]")


def union_over_processes(indices: list[int]) -> list[int]:
    """The sorted union of every process's `indices` (a collective: every process calls it;
    int32, as JAX gathers them)."""
    from jax.experimental import multihost_utils

    width = int(np.max(multihost_utils.process_allgather(np.int32(len(indices)))))
    if width == 0:
        return []
    padded = np.full(width, -1, np.int32)
    padded[:len(indices)] = indices
    gathered = np.asarray(multihost_utils.process_allgather(padded))
    return sorted({int(i) for i in gathered.ravel() if i >= 0})


def _read_records(path: str) -> dict[int, str]:
    """{index: name} of the records a `DamageLog` file holds. An empty file (a power loss
    before its data reached the disk) is an account that starts again, with a warning: it
    holds no training state, and the records it named are named and counted again when the
    loader meets them. A file that holds something else than such an account raises
    `workdirs.DamagedRunFile` naming it and the fix."""
    from hgmt import workdirs

    fix = ("Delete it and rerun: the damaged records are then named and counted again as the "
           "loader meets them (python -m hgmt.data.check lists every damaged record of a split)")
    account = workdirs.read_json_object(path, fix)
    if account is None:
        logging.warning("%s is empty: its write was cut short (a power loss or crash before its "
                        "data reached the disk). The count of damaged training records starts "
                        "again; the records it named are named and counted again when met "
                        "(python -m hgmt.data.check lists every damaged record of a split)", path)
        return {}
    try:
        return {int(r["index"]): str(r["name"]) for r in account["records"]}
    except (KeyError, TypeError, ValueError) as e:
        raise workdirs.DamagedRunFile(
            f"{path} is not an account of damaged records ({type(e).__name__}: {e}: a "
            f"'records' list of {{'index', 'name'}} expected): the file was edited or "
            f"damaged. {fix}") from None


class DamageLog:
    """The trainer's account of the damaged records its loader skipped: named once each,
    counted, kept in `path` (JSON, so a resumed run continues the count) and held under
    `max_fraction` of the split's `size` records.

    In a multi-process run each process's loader reads its share of the split; `combine` (the
    union of every process's list of indices, a collective) makes one account of them: the
    records `path` holds (process 0's; None elsewhere) are shared when the log is made, and
    each process's new ones at every `sync`, which every process calls at the same steps. So
    every process names, counts and judges the same records, and all stop together. Without
    `combine` (one process) a record is accounted for as soon as it is met."""

    def __init__(self, shards: Shards, size: int, max_fraction: float, path: str | None,
                 combine: Callable[[list[int]], list[int]] | None = None):
        self.shards, self.size, self.max_fraction, self.path = shards, size, max_fraction, path
        self.combine = combine
        self.found: dict[int, str] = {}
        self.pending: set[int] = set()  # met here since the last `sync` (with `combine`)
        if path and epath.Path(path).exists():
            self.found = _read_records(path)
        if combine is not None:  # the records of earlier runs, for every process
            self.found = {i: self.found.get(i) or shards.name(i)
                          for i in combine(sorted(self.found))}

    def met(self, damaged: np.ndarray) -> None:
        """Notes the damaged indices a batch the trainer consumed replaced: its `damaged`
        field ((B, MAX_TRIES), -1 padded; `prefetch.ConsumedPosition` gives it when the
        batch is consumed, not when it is prefetched)."""
        met = [int(i) for i in np.unique(damaged) if i >= 0]
        if self.combine is None:
            self.note(met)
        else:
            self.pending.update(i for i in met if i not in self.found)

    def sync(self) -> None:
        """Notes the records every process met since the last sync (a collective: every
        process calls it at the same steps); raises TooManyDamaged on every process alike.
        Nothing to do without `combine`."""
        if self.combine is None:
            return
        met, self.pending = sorted(self.pending), set()
        self.note(self.combine(met))

    def note(self, indices: Iterable[int]) -> None:
        """Records the damaged record indices not seen before: logs each, rewrites
        `path` (when set), and raises TooManyDamaged past `max_fraction` of the split."""
        new = [i for i in indices if i not in self.found]
        for i in new:
            self.found[i] = self.shards.name(i)
            logging.warning("damaged record skipped: %s does not read or decode; it is "
                            "replaced by the next good record of its shard (`python -m "
                            "hgmt.data.check` lists every damaged record of a split)",
                            self.found[i])
        if not new:
            return
        if self.path:
            from hgmt import disk_space

            records = [{"index": i, "name": n} for i, n in sorted(self.found.items())]
            disk_space.write_atomically(self.path, lambda f: json.dump(
                {"count": len(records), "records": records}, f, indent=1))
        if len(self.found) > self.max_fraction * self.size:
            files = sorted({self.shards.locate(i)[0] for i in self.found})
            allowed = int(self.max_fraction * self.size)
            share = 100 * len(self.found) / self.size
            raise TooManyDamaged(
                f"{len(self.found)} of the split's {self.size} records are damaged "
                f"({share:.3g}%), more than config.max_damaged_fraction="
                f"{self.max_fraction} allows ({allowed} of {self.size}), in "
                f"{', '.join(files)}. Check the split with `python -m hgmt.data.check` and "
                f"copy or rebuild {'that shard' if len(files) == 1 else 'those shards'} again, "
                f"or raise config.max_damaged_fraction to train past the damaged records")

    def summary(self) -> str:
        """One line: how many damaged training records were skipped, and their names."""
        return (f"{len(self.found)} damaged training record(s) were skipped and replaced: "
                + "; ".join(v for _, v in sorted(self.found.items())))
