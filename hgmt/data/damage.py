"""Damaged records: skipped, named once, counted, and replaced by a pure function of the index.

The shard check (`hgmt.data.shards`) reads each file's footer, so a record damaged inside an
intact shard (a bad sector, a partial copy, a flipped byte in its encoded frame or label maps)
is found only when it is read: array_record's chunk hash does not match ("Corrupted
Riegeli/records file: chunk data hash mismatch"), or the image inside does not decode. The
policy, as TFDS and production loaders do it:

- training: the damaged record is skipped and replaced by the next record of the same shard
  that reads and is not a placeholder of an unusable frame, which training's filter skips too
  (`replacement`, `first_good`: a pure function of the index, so the data stream, and an
  interrupted and resumed run, stay exactly those of an uninterrupted one); the trainer names
  it once (shard file, record number in the shard, index in the split), counts it (TensorBoard
  `data/damaged_records`, `<workdir>/damaged_records.json`, the run's closing log line), and
  stops naming the files when more than `config.max_damaged_fraction` of the split is damaged
  (the default, 0.1 %, passes a few stray bad records of a large split, not a bad copy; a
  split of under 1000 records, none). With several processes the account is of all their
  shares, the same on every process (`DamageLog`);
- evaluation: a damaged frame is left out and counted into the evaluation's JSON
  (`num_damaged`, `damaged_records`); a record that does not read even to select the frames,
  whose frame is unknown, is reported apart (`num_unreadable`, `unreadable_records`); none is
  skipped silently;
- `python -m hgmt.data.check` reads and decodes every record of a split and names the bad ones.

A read that fails with an I/O error (an NFS timeout, an object store's 503) or a refused access
is not damage: it is read again after each of `RETRY_DELAYS_S`, so that a passing error does
not replace a good record, and one that lasts stops the run as the storage's (`StorageFault`,
naming the file: nothing to rebuild), never counted as damaged. A checksum mismatch or an
image that does not decode is damage, judged at once. Opening a shard or a split's metadata is
tried again alike (`with_retries`; `hgmt.data.shards`, `builds.open_split`), and an
I/O error that lasts is named as the storage's there too, not as damage or a missing build.
The split's faults (`SplitFault`, `StorageFault`, `NoUsableRecords`) are defined here, below
the modules that raise them, and `hgmt.data.shards` gives them with its own.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import numpy as np
from etils import epath

# How many records of a shard, from a damaged one on, are tried before giving up (each once:
# all of a shorter shard's); also the width of the per-example `damaged` field that carries
# their indices to the trainer.
MAX_TRIES = 8
# The waits before reading a record again after an I/O error that may pass (an NFS server
# timing out, an object store's 503): a record is judged damaged only when every one of these
# len + 1 reads fails. A checksum or decode error is judged at once.
RETRY_DELAYS_S = (0.5, 2.0)
# array_record reports an I/O error as a RuntimeError naming the failed call and the errno's
# text ("pread() failed: Input/output error; reading <shard>"); other readers raise OSError.
_IO_ERRNOS = (errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR,
              errno.ECONNRESET, errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH)
_IO_FAILED = tuple(f"failed: {os.strerror(code)}" for code in _IO_ERRNOS)
# array_record's report of a refused access: the storage's permissions, not the file's content.
_ACCESS_FAILED = tuple(f"failed: {os.strerror(code)}" for code in (errno.EACCES, errno.EPERM))
T = TypeVar("T")


def check_max_fraction(fraction: float) -> None:
    """ValueError naming `config.max_damaged_fraction` unless it is in [0, 1]."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"config.max_damaged_fraction={fraction} must be in [0, 1]")


class DamagedRecord(ValueError):
    """A record of a built split does not read or decode."""


class TooManyDamaged(RuntimeError):
    """More of a split is damaged than `config.max_damaged_fraction` allows."""


class SplitFault(RuntimeError):
    """A built split cannot be read as it is; the message names the file, why and the fix."""


class NoUsableRecords(SplitFault):
    """A training split holds no record a training example can be made of: each reads and is a
    flagged placeholder of an unusable frame (or the split is empty), or, for a damaged record
    to be replaced, every other record of its shard is damaged or a placeholder
    (`first_good`). A damaged record is not a placeholder: the loader replaces it
    (`placeholders.has_usable_record`)."""


class StorageFault(SplitFault):
    """The storage that holds a built split does not give its files (an I/O error that lasted
    past the retries, a refused access): not damage, nothing to rebuild."""

    @classmethod
    def of(cls, what: str, gave_up: GaveUp, data_dir: str) -> StorageFault:
        """The error for `what` (e.g. 'dataset shard <path>') that the storage under
        `data_dir` did not give: `gave_up`'s last error (`storage_fault`), after its
        retries."""
        tries = f"; tried {gave_up.tries} times" if gave_up.tries > 1 else ""
        return cls(
            f"{what} cannot be read from its storage ({gave_up}{tries}): an I/O error or a "
            f"refused access (a network file system or object store not answering, a stale "
            f"mount, permissions), not damage: nothing needs rebuilding. Check that "
            f"{data_dir} is reachable and readable from this host and run the command again")


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

    def candidates(self, index: int) -> list[int]:
        """`index`, then its `replacement`s, each record once: MAX_TRIES of them, or every
        record of its shard when the shard holds fewer."""
        tries = min(MAX_TRIES, self.lengths[self.shard(index)])
        return [self.replacement(index, a) for a in range(tries)]


def transient(error: Exception) -> bool:
    """Whether a failed read may succeed when tried again: an I/O error (an OSError, or
    array_record's report of one), not damage such as a checksum mismatch."""
    return isinstance(error, OSError) or any(words in str(error) for words in _IO_FAILED)


def storage_fault(error: Exception) -> bool:
    """Whether a failed open or read is the storage's, not the file's: an I/O error
    (`transient`) or a refused access, as opposed to a missing file or damage (a checksum
    mismatch, a file too short to be array_record)."""
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return False
    return transient(error) or any(words in str(error) for words in _ACCESS_FAILED)


class GaveUp(Exception):
    """What `with_retries` raises when its call still fails: the last `error` and how many
    times the call was made (`tries`)."""

    def __init__(self, error: Exception, tries: int):
        super().__init__(f"{type(error).__name__}: {str(error)[:200]}")
        self.error, self.tries = error, tries


def with_retries(call: Callable[[], T], what: str) -> T:
    """`call()`, made again after each of `RETRY_DELAYS_S` while it fails with an I/O error
    that may pass (`transient`), each failure logged naming `what`; GaveUp with the last
    error when it still fails, at once for any other error (damage is judged at once)."""
    delays = list(RETRY_DELAYS_S)
    tries = 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as e:  # noqa: BLE001  (riegeli raises RuntimeError, OSError, ...)
            if not (delays and transient(e)):
                raise GaveUp(e, tries) from e
            delay = delays.pop(0)
            logging.warning("%s failed (%s: %s); trying again in %.1f s", what,
                            type(e).__name__, str(e)[:200], delay)
            time.sleep(delay)


def read(source: Any, index: int) -> dict:
    """Record `index` of `source`; DamagedRecord when it does not read (a checksum mismatch,
    a truncated chunk: whatever else the reader raises). An I/O error is tried again after
    each of `RETRY_DELAYS_S` first (`with_retries`), so that a passing one does not replace a
    good record (a resumed run that reads it would differ from this one); one that lasts, or a
    refused access (`storage_fault`), raises StorageFault naming the record's shard file:
    the storage failed, not the data, so nothing is replaced or counted as damaged."""
    try:
        return with_retries(lambda: source[index], f"reading record {index}")
    except GaveUp as e:
        if storage_fault(e.error):
            where = Shards.of(source)
            file = where.locate(index)[0]
            raise StorageFault.of(f"dataset {where.name(index)}", e,
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
