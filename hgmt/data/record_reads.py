"""Reading a built split's records: a damaged one judged at once, and replaced by a pure
function of its index.

The shard check (`hgmt.data.shards`) reads each file's footer, so a record damaged inside an
intact shard is found only when it is read: `read` raises DamagedRecord for it (array_record's
chunk hash does not match, or whatever else the reader raises; the decoders raise it for an
image that does not decode), after an I/O error is tried again (`storage.with_retries`).
`Shards` says where each record lives and names it. In training a `Guarded` source hands a
damaged record to the transform, which replaces it by the next good record of its shard
(`first_good`, `make_guarded`), and the example's `damaged` field (`damaged_field`) carries
the indices it replaced to the trainer's account (`damage.DamageLog`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from hgmt.data import storage

# How many records of a shard, from a damaged one on, are tried before giving up (each once:
# all of a shorter shard's); also the width of the per-example `damaged` field that carries
# their indices to the trainer.
MAX_TRIES = 8


class DamagedRecord(ValueError):
    """A record of a built split does not read or decode."""


class TooManyDamaged(RuntimeError):
    """More of a split is damaged than `config.max_damaged_fraction` allows."""


class NoUsableRecords(storage.SplitFault):
    """A training split holds no record a training example can be made of: each reads and is a
    flagged placeholder of an unusable frame (or the split is empty), or, for a damaged record
    to be replaced, every other record of its shard is damaged or a placeholder
    (`first_good`). A damaged record is not a placeholder: the loader replaces it
    (`placeholders.has_usable_record`)."""


@dataclasses.dataclass(frozen=True)
class Shards:
    """Where each record of a split lives: its shards' files, first indices and lengths."""

    files: tuple[str, ...]
    starts: tuple[int, ...]
    lengths: tuple[int, ...]

    @staticmethod
    def of(source: Any) -> Shards:
        """The shards of a `tfds` data source (`builds.open_split`); a source without
        shard information (e.g. a list in a test) counts as one shard."""
        info = getattr(source, "dataset_info", None)
        if info is None:
            return Shards(("<memory>",), (0,), (len(source),))
        split = info.splits[source.split]
        lengths = tuple(int(n) for n in split.shard_lengths)
        starts = tuple(int(s) for s in np.cumsum((0,) + lengths[:-1]))
        return Shards(tuple(os.fspath(p) for p in split.filepaths), starts, lengths)

    def shard(self, index: int) -> int:
        """Split index -> the number of the shard that holds it."""
        return int(np.searchsorted(self.starts, index, side="right")) - 1

    def locate(self, index: int) -> tuple[str, int]:
        """Split index -> (shard file, record number inside it)."""
        k = self.shard(index)
        return self.files[k], index - self.starts[k]

    def name(self, index: int) -> str:
        """Split index -> '<shard file> record <n> (index <index> of the split)'."""
        file, record = self.locate(index)
        return f"{file} record {record} (index {index} of the split)"

    def replacement(self, index: int, attempt: int) -> int:
        """The `attempt`-th record after `index` in its own shard, wrapping around in it: the
        candidates that replace a damaged record, a pure function of the index."""
        k = self.shard(index)
        start, length = self.starts[k], self.lengths[k]
        return start + (index - start + attempt) % length


def read(source: Any, index: int) -> dict:
    """Record `index` of `source`; DamagedRecord when it does not read (a checksum mismatch,
    a truncated chunk: whatever else the reader raises). An I/O error is tried again after
    each of `storage.RETRY_DELAYS_S` first (`storage.with_retries`), so that a passing one does
    not replace a good record (a resumed run that reads it would differ from this one); one
    that lasts, or a refused access (`storage.storage_fault`), raises StorageFault naming the
    record's shard file: the storage failed, not the data, so nothing is replaced or counted
    as damaged."""
    try:
        return storage.with_retries(lambda: source[index], f"reading record {index}")
    except storage.GaveUp as e:
        if storage.storage_fault(e.error):
            where = Shards.of(source)
            file = where.locate(index)[0]
            raise storage.StorageFault.of(f"dataset {where.name(index)}", e,
                                          os.path.dirname(file) or file) from e.error
        times = f"; read {e.tries} times" if e.tries > 1 else ""
        raise DamagedRecord(f"does not read ({e}{times})") from e.error


def first_good(index: int, source: Any, shards: Shards, make: Callable[[dict], dict],
               record: dict | None = None, error: str | None = None,
               usable: Callable[[dict], bool] | None = None) -> tuple[dict, list[int]]:
    """`make(record)` of record `index` (given as `record` when already read), or, when that
    record is damaged (DamagedRecord from reading or decoding; `error` when a read of it
    already failed so, as a `Guarded` source reports it: it is not read again), of the first
    good one of its shard after it (`Shards.replacement`, wrapping round). With `usable`, a
    record that reads and is not `usable` (training's placeholders of unusable frames, which
    its filter skips: `placeholders.passes_filter`) is passed over as well, and not counted:
    the walk goes on through the shard until a good usable record. -> (example, the damaged
    indices met on the way, each once). Raises TooManyDamaged once MAX_TRIES damaged records
    are met (every record of a shorter shard), NoUsableRecords when every record of the shard
    is damaged or not `usable`, fewer of them damaged."""
    damaged, problems, passed_over = [], [], 0
    size = shards.lengths[shards.shard(index)]
    for attempt in range(size):
        i = shards.replacement(index, attempt)
        if attempt == 0 and error is not None:
            problem = error
        else:
            try:
                read_record = (record if attempt == 0 and record is not None
                               else read(source, i))
                if usable is not None and not usable(read_record):
                    passed_over += 1
                    continue
                return make(read_record), damaged
            except DamagedRecord as e:
                problem = str(e)
        logging.debug("damaged record %s: %s", shards.name(i), problem)
        damaged.append(i)
        problems.append(problem)
        if len(damaged) == min(MAX_TRIES, size):
            break
    file, number = shards.locate(index)
    if len(damaged) < min(MAX_TRIES, size):
        raise NoUsableRecords(
            f"{file} holds no record that can replace {shards.name(index)}: its {size} "
            f"records are {len(damaged)} damaged and {passed_over} placeholders of "
            f"unusable frames (a build keeps them in its test split, for evaluation), so the "
            f"training loader has nothing to train on there. Train on a split with usable "
            f"frames, such as a build's train split")
    whole = ", every record of the shard" if len(damaged) == size else ""
    among = (f", {passed_over} placeholders of unusable frames between them"
             if passed_over else "")
    row = "" if passed_over else " in a row"
    raise TooManyDamaged(f"{len(damaged)} records{row} are damaged in {file} (from record "
                         f"{number}{whole}{among}; the first: {problems[0]}): the shard is a "
                         f"bad copy. Check the split with `python -m hgmt.data.check` and copy "
                         f"or rebuild it again")


def damaged_field(indices: list[int]) -> np.ndarray:
    """(MAX_TRIES,) int64: the damaged indices an example replaced, -1 padded."""
    return np.asarray(indices + [-1] * (MAX_TRIES - len(indices)), np.int64)


def make_guarded(element: dict, source: Any, shards: Shards, make: Callable[[dict], dict], *,
                 usable: Callable[[dict], bool]) -> dict:
    """`make` of an element of a `Guarded` source, in training: a plain record is made as it is;
    one marked with its index (and `_damaged` when it did not read) goes through `first_good`,
    replaced only by a record `usable` passes (training's filter: no placeholder of an
    unusable frame, `placeholders.passes_filter`), and its example gets the `damaged` field
    (`damaged_field`)."""
    if "_index" not in element:
        return make(element)
    index = element.pop("_index")
    error = element.pop("_damaged", None)
    out, damaged = first_good(index, source, shards, make, None if error else element, error,
                              usable)
    out["damaged"] = damaged_field(damaged)
    return out


class Guarded:
    """A data source whose damaged records do not raise: a record that does not read comes
    back as {'_index': i, '_damaged': the error}, a good one as the record plus '_index', for
    the transform to replace (`first_good`); a storage that does not give it raises
    StorageFault (`read`). Its repr is the source's, as grain checks it when a loader's
    checkpointed position is restored."""

    def __init__(self, source: Any):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        try:
            return {**read(self.source, index), "_index": index}
        except DamagedRecord as e:
            return {"_index": index, "_damaged": str(e)}

    def __repr__(self) -> str:
        return repr(self.source)
