"""Input pipeline: built SURREAL records -> cropped, augmented examples for every task.

Reads the TFDS dataset with `tfds.data_source` (array_record, random access) through a grain
`DataLoader`: one shuffled sequence of records shared among the hosts element by element
(`GlobalOrder`), per-record deterministic randomness, and an iterator state that is
checkpointed with the model. Each example is cropped around the person and augmented in the
loader's workers (`TrainCrop`, with hgmt/data/cropping.py's crop: docs/surreal_format.md), or,
with `config.augment_on="device"` (what "auto" picks on a GPU or TPU), only decoded into
fixed-size arrays here and cropped batched in the step (hgmt/data/device_augment.py). The
output is the cropped example of docs/interfaces.md §4; each task's targets are made from it
inside the jitted step. Also here: the checks that a split is built, of this builder's
version and features, before anything reads it; the evaluation's frame selection and batches.

Why grain over array_record rather than tf.data over tfrecord: `tfds.data_source` gives random
access, so shuffling needs no buffer, each host reads its own elements of the one shuffled
sequence (every P-th: together the hosts read the sequence a one-process run reads), and the
iterator's position is a few integers that orbax saves with the checkpoint (resuming continues
the same data stream).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import logging
import multiprocessing
import os
import re
import signal
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence

import cv2
import grain.python as grain
import jax
import numpy as np
from absl import flags

from hgmt import cores, devices, paths
from hgmt.data import cropping, damage, records, shards
from hgmt.data.augment import Augment
from hgmt.sources import surreal

# The loader's parallelism is grain's worker processes; OpenCV's own thread pool in each of
# them would oversubscribe the host's cores and spin (measured on a 2-core and a 16-core host:
# docs/performance.md, "Input pipeline, CPU").
cv2.setNumThreads(1)


class NotInBuild(ValueError):
    """A built dataset does not hold what is asked of it: frames it does not store, features
    an older build lacks, frames of a builder config hgmt does not know. The message names
    the build and the fix (another build, or other frames)."""


# What a grain worker process ignores (`SkipUnusable`): the preemption signals the trainer
# handles (hgmt.training.preemption.SIGNALS) and Ctrl-C's. Slurm and `timeout` signal every
# process of the job; the trainer saves and exits on them, and stops its workers as it closes
# the loader, but a worker killed by one first would fail the trainer's next batch. A worker
# starts with them blocked (`WorkersStartShielded`), so one that lands while it starts waits,
# pending, until it ignores them.
WORKER_IGNORED_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


@contextlib.contextmanager
def signals_blocked(signums: Iterable[int]) -> Iterator[None]:
    """Blocks `signums` in the calling thread for the block. The threads it starts meanwhile,
    and the processes those threads or it start (fork and exec keep the mask), begin with
    them blocked; a signal sent to this process meanwhile goes to a thread that does not
    block it, or waits until the block ends."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, set(signums))
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class WorkersStartShielded:
    """The training loader's iterator (`iter(loader)`), whose calls that can start grain's
    worker threads and processes run with WORKER_IGNORED_SIGNALS blocked
    (`signals_blocked`): its making, `set_state` (a restore makes new workers),
    `start_prefetch` (starts every worker) and the first batch. Each worker process thus
    starts with them blocked and ignores them (`_unpickled`) before it unblocks them: a
    signal to the whole job while a worker starts can no longer kill it. Call
    `start_prefetch` once the iterator's position is set (made or restored): grain starts a
    worker otherwise at its first batch, from a thread made then."""

    def __init__(self, loader: Iterable):
        with signals_blocked(WORKER_IGNORED_SIGNALS):
            self._iterator = iter(loader)
        self._started = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._started:
            return next(self._iterator)
        with signals_blocked(WORKER_IGNORED_SIGNALS):
            batch = next(self._iterator)
        self._started = True
        return batch

    def get_state(self):
        return self._iterator.get_state()

    def set_state(self, state) -> None:
        with signals_blocked(WORKER_IGNORED_SIGNALS):
            self._iterator.set_state(state)

    def start_prefetch(self) -> None:
        with signals_blocked(WORKER_IGNORED_SIGNALS):
            getattr(self._iterator, "start_prefetch", lambda: None)()
        # Every worker is started from a thread made above, which keeps the mask: the batches
        # are waited for with the signals unblocked, so that Python runs their handlers at
        # once (it runs them in the main thread, which a blocked wait does not wake).
        self._started = True

    def close(self) -> None:
        """Stops the loader's worker processes and threads and frees their shared memory
        now, however the run ends, not when the garbage collector reaches the iterator
        (which, at the interpreter's exit, comes after Python's resource tracker has
        counted their shared memory as leaked). grain's `DataLoaderIterator` holds the
        dataset iterator whose `close` does it, recursively; an iterator without one (batches
        from memory) has nothing to stop."""
        inner = getattr(self._iterator, "_iterator", self._iterator)
        getattr(inner, "close", lambda: None)()


class SkipUnusable(grain.FilterTransform):
    """Drops the flagged placeholder records (a test split's unusable frames) from training.
    The training loader's first operation: the copy of it that each grain worker process
    unpickles, before it reads a record, makes that process ignore WORKER_IGNORED_SIGNALS
    (`_unpickled`)."""

    def filter(self, element: dict) -> bool:
        return not element.get("unusable", b"")

    def __reduce__(self):
        return _unpickled, ()


def _unpickled() -> SkipUnusable:
    """A `SkipUnusable` as a grain worker process unpickles it: there (a child process's main
    thread), WORKER_IGNORED_SIGNALS are ignored from now on, those that came while it started
    blocked (`WorkersStartShielded`) discarded, and then unblocked; in a main process nothing
    else changes."""
    if (multiprocessing.parent_process() is not None
            and threading.current_thread() is threading.main_thread()):
        for signum in WORKER_IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_IGNORED_SIGNALS)
    return SkipUnusable()


class TrainCrop(grain.RandomMapTransform):
    """The training crop of a record of a `damage.Guarded` source, around the `window`'s box
    (cropping.TRAIN_WINDOWS): a damaged record is
    replaced by the next good one of its shard (`damage.first_good`), and the example's
    `damaged` field, (damage.MAX_TRIES,) int64, lists the damaged indices it replaced (-1
    padded) for the trainer to name and count. Records without '_index' are cropped as
    they are."""

    def __init__(self, image_size: int, augment: Augment, tasks: Sequence[str] | None = None,
                 source=None, unread: frozenset[str] = frozenset(), window: str = "hgmt"):
        self.image_size, self.augment, self.tasks = image_size, augment, tasks
        self.source, self.unread = source, frozenset(unread)
        self.window = cropping.check_window(window, cropping.TRAIN_WINDOWS, "training crop window")
        self.shards = None if source is None else damage.Shards.of(source)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        def crop(record: dict) -> dict:
            return cropping.crop_example(record, self.image_size, self.augment, rng, self.tasks,
                                self.unread, self.window)

        return damage.make_guarded(element, self.source, self.shards, crop)


# The features a build must hold (`check_features`): those the crop and the task labels are
# made from (the image, its three label maps, the joints and the camera), those that select
# the frames (frame, num_frames) and the flag of a test split's unusable frames (unusable),
# which the training loader skips and the crop marks.
REQUIRED_FEATURES = ("image", "segm", "depth", "joints2d", "joints3d", "cam_loc", "frame",
                     "num_frames", "depth_class", "unusable")
# The builder version that added each feature a build may lack.
_ADDED_IN = {"depth_class": "1.2.0", "unusable": "1.3.0"}
# The builder version whose test split flags the frames the reference loaders cannot use
# (`surreal.reference_frame_problem`); older builds flagged hgmt's (`surreal.frame_problem`).
REFERENCE_FLAGS_SINCE = "1.4.0"
# The builder version whose test split stores the middle frames as PNG, the decoded video frame
# the reference loaders read; older builds stored them as JPEG (quality 90).
LOSSLESS_TEST_FRAMES_SINCE = "1.7.0"


def check_reference_flags(source, dataset: str, data_dir: str) -> None:
    """Warns, with the command that rebuilds it, that a test split built before
    REFERENCE_FLAGS_SINCE flags hgmt's unusable frames, not the reference loaders' (a few
    frames of the reference test set evaluated differently), and that one built before
    LOSSLESS_TEST_FRAMES_SINCE holds its middle frames as JPEG, not the decoded video frame
    the reference code reads (nearly every pixel a few grey levels off)."""
    import tensorflow_datasets as tfds

    version = tfds.core.Version(str(source.dataset_info.version))
    differences = []
    if version < tfds.core.Version(REFERENCE_FLAGS_SINCE):
        differences.append(f"before {REFERENCE_FLAGS_SINCE}, its test split flags the frames "
                           f"hgmt cannot use, not those the reference loaders cannot use, so a "
                           f"reference protocol may treat a few frames otherwise than the "
                           f"reference code")
    if version < tfds.core.Version(LOSSLESS_TEST_FRAMES_SINCE):
        differences.append(f"before {LOSSLESS_TEST_FRAMES_SINCE}, its test frames are JPEG "
                           f"(quality 90), not the decoded video frames the reference code "
                           f"reads, so nearly every input pixel differs from the reference's, "
                           f"by a few grey levels on average")
    if differences:
        logging.warning("dataset %r under %r was built by SURREAL builder version %s: %s. "
                        "Rebuild it: %s", dataset, data_dir, version, "; ".join(differences),
                        shards.build_command(dataset, data_dir))


def check_features(info, dataset: str, data_dir: str) -> None:
    """NotInBuild naming what is missing when a built dataset (its tfds DatasetInfo `info`)
    lacks a feature the crop and the task labels are made from; a SURREAL build older than
    the builder version that added it (`_ADDED_IN`) is told to rebuild."""
    missing = [f for f in REQUIRED_FEATURES if f not in info.features]
    if missing and set(missing) <= set(_ADDED_IN):
        since = max(_ADDED_IN[f] for f in missing)
        raise NotInBuild(
            f"dataset {dataset!r} under {data_dir!r} was built by SURREAL builder version "
            f"{info.version}, before {since}, and lacks {missing} (SURREAL's exact depth "
            f"labels, the flagged test frames). Rebuild it: "
            f"{shards.build_command(dataset, data_dir)}")
    if missing:
        raise NotInBuild(
            f"dataset {dataset!r} under {data_dir!r} lacks the features {missing} that the crop "
            f"and the task labels are made from; use a SURREAL build (config.dataset="
            f"'surreal/all', 'surreal/every10' or 'surreal/middle')")


def _list_folders(folder, names: Sequence[str]) -> None:
    """Lists `folder` (a path or its name), the folders `names` below it, and the folders in
    the last one (a built dataset's versions), down to the first that is missing: raises the
    error a listing meets, an I/O error or a refused access."""
    from etils import epath

    try:
        entries = list(epath.Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    if names:
        _list_folders(epath.Path(folder) / names[0], names[1:])
        return
    for entry in entries:
        if entry.is_dir():
            list(entry.iterdir())


def _expanded(data_dir: str) -> str:
    """`data_dir` with a leading `~` as the home folder (TFDS takes it for a folder of that
    name); an object store's URL as it is."""
    return data_dir if paths.is_url(data_dir) else os.path.expanduser(data_dir)


def _not_built(dataset: str, data_dir: str, split: str, e: Exception) -> FileNotFoundError:
    """The error for `split` of `dataset` missing under `data_dir`: the build command, and
    where other configs of the dataset are built there, the `--config.dataset` that selects
    each (the configs' default is `surreal/every10`; a full build is often another). Of
    TFDS's own error only the first sentence is kept (the rest is its advice on `tfds.load`,
    some of which does not apply)."""
    others = built_configs(dataset, data_dir)
    choose = (f"; or use a build there: {' or '.join(f'--config.dataset={o}' for o in others)}"
              if others else "")
    said = " ".join(str(e).split())
    said = said[:said.find(". ") + 1 or None][:300].rstrip(".")
    return FileNotFoundError(
        f"dataset {dataset!r} split {split!r} is not built under data_dir={data_dir!r} "
        f"({type(e).__name__}: {said}). Build it with: "
        f"{shards.build_command(dataset, data_dir)}{choose}")


_METADATA = ("dataset_info.json", "features.json")  # a TFDS build's files besides its shards


def broken_build(dataset: str, data_dir: str) -> str | None:
    """Why `dataset` cannot be opened under the local folder `data_dir` when TFDS's own error
    would mislead (None otherwise, and for an object store's URL): `data_dir` does not exist or
    is a file; it is the dataset's own folder (<D>/surreal, <D>/surreal/all or a version
    folder) rather than D; or the config's build lacks a metadata file or holds one that does
    not parse, as a copy cut short leaves it (TFDS reports a missing `dataset_info.json` as an
    I/O error and a missing `features.json` as no dataset, and `tfds build` then reuses the
    broken folder or fails on it). The version judged is the one TFDS opens: the one asked
    for, else the highest. A folder that cannot be read is left to TFDS's error (a refused
    access, an I/O error: `damage.storage_fault`)."""
    if paths.is_url(data_dir):
        return None
    try:
        return _broken_local_build(dataset, data_dir)
    except OSError:
        return None


def _broken_local_build(dataset: str, data_dir: str) -> str | None:
    """`broken_build` of a local `data_dir`; OSError where a folder or file does not read."""
    name, _, rest = dataset.partition("/")
    config, _, version = rest.partition(":")
    try:
        is_folder = stat.S_ISDIR(os.stat(data_dir).st_mode)
    except FileNotFoundError:
        return (f"data_dir={data_dir!r} does not exist: give --config.data_dir=<the folder the "
                f"dataset was built or copied into, the one that holds {name}/>, or build it "
                f"there with: "
                f"{shards.build_command(dataset, data_dir)}")
    except NotADirectoryError:  # a file on the way
        is_folder = False
    if not is_folder:
        return (f"data_dir={data_dir!r} is a file or lies under one: give "
                f"--config.data_dir=<the folder the dataset was built or copied into, the one "
                f"that holds {name}/>")
    if os.path.isdir(os.path.join(data_dir, name)):
        return _broken_version(dataset, data_dir, os.path.join(data_dir, name, config), version)
    # <D>/surreal, <D>/surreal/all or <D>/surreal/all/<version> given for D.
    inside = os.path.abspath(data_dir).split(os.sep)
    for up in range(1, 4):
        above = os.sep.join(inside[:-up]) or os.sep
        if inside[-up] == name and os.path.isdir(os.path.join(above, name, config)):
            return (f"data_dir={data_dir!r} is a folder of the dataset itself, not the one "
                    f"TFDS takes, which holds {name}/: give --config.data_dir={above}")
    return None


def _broken_version(dataset: str, data_dir: str, folder: str, version: str) -> str | None:
    """Why the version folder of `dataset`'s config `folder` that TFDS opens (`version`, else
    the highest) cannot be read for its metadata; None where it can or there is none."""
    versions = [v for v in (os.listdir(folder) if os.path.isdir(folder) else ())
                if _VERSION.fullmatch(v) and os.path.isdir(os.path.join(folder, v))]
    if version:
        versions = [v for v in versions if v == version]
    if not versions:
        return None
    v = max(versions, key=lambda v: tuple(map(int, v.split("."))))
    build = os.path.join(folder, v)
    missing = [f for f in _METADATA if not _is_file(os.path.join(build, f))]
    if missing:
        broken = f"lacks its {' and '.join(missing)} (a copy cut short or made without it)"
    else:
        try:
            for f in _METADATA:
                with open(os.path.join(build, f), encoding="utf-8") as file:
                    json.load(file)
            return None
        except ValueError as e:
            broken = f"holds a {f} that does not parse as JSON ({e}: a copy cut short)"
    return (f"the build of {dataset!r} under data_dir={data_dir!r}, {build}, {broken}. Copy the "
            f"folder again from where the dataset was built, or remove {build} and rebuild it: "
            f"{shards.build_command(dataset, data_dir)}")


def _is_file(path: str) -> bool:
    """Whether `path` is a file (False: nothing or a folder there); OSError where it cannot be
    told (a refused access, an I/O error), which `os.path.isfile` would take for no file."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def built_configs(dataset: str, data_dir: str) -> list[str]:
    """The builds under `data_dir` of `dataset`'s builder ('surreal/<config>[:version]') other
    than the one asked for, as datasets, sorted: the other configs built ('surreal/all'), and
    where a version is asked for, the config's other built versions ('surreal/every10:1.5.0').
    A build is a version folder (TFDS's layout: <data_dir>/<name>/<config>/<x.y.z>/) holding
    its `dataset_info.json`; TFDS's unfinished `incomplete.*` folders are not. None for a
    dataset without configs, or where the folders cannot be listed (a suggestion only: any
    error of the file system, a bucket's included, gives none)."""
    from etils import epath

    name, _, rest = dataset.partition("/")
    config, _, version = rest.partition(":")
    if not config:
        return []
    found = []
    try:
        for folder in sorted(epath.Path(data_dir, name).iterdir()):
            if not folder.is_dir():
                continue
            versions = sorted(v.name for v in folder.iterdir()
                              if _VERSION.fullmatch(v.name) and (v / "dataset_info.json").exists())
            if folder.name != config and versions:
                found.append(f"{name}/{folder.name}")
            elif folder.name == config and version:
                found += [f"{name}/{config}:{v}" for v in versions if v != version]
    except Exception:  # noqa: BLE001  (tf.io.gfile's errors on a bucket are no OSError)
        return []
    return found


_VERSION = re.compile(r"\d+\.\d+\.\d+")  # a TFDS version folder's name


def built_split(dataset: str, data_dir: str, split: str):
    """The tfds read-only builder of a built split, read from its metadata files
    (`dataset_info.json`, `features.json`) only, its shards unread: FileNotFoundError naming
    the build command when the split is not built, `shards.WrongFileFormat` when it was not
    built as array_record, `shards.StorageFault` when its storage does not give those files
    after `damage.RETRY_DELAYS_S`."""
    from tensorflow_datasets.core import read_only_builder, registered

    if dataset.split("/")[0] == "surreal" and split not in surreal.SPLIT_DIRS:
        # No build has it: not a build command's matter ('val' is SURREAL's folder name).
        raise ValueError(f"dataset {dataset!r} has no split {split!r}: its splits are "
                         f"{', '.join(surreal.SPLIT_DIRS)}")
    data_dir = _expanded(data_dir)
    if broken := broken_build(dataset, data_dir):
        raise FileNotFoundError(broken)

    def built():
        try:
            builder = read_only_builder.builder_from_files(dataset, data_dir=data_dir)
        except registered.DatasetNotFoundError:
            # TFDS reports a folder it cannot list or read (an I/O error, permissions) as no
            # dataset: listing the dataset's folders here raises that error.
            _list_folders(data_dir, dataset.split(":")[0].split("/"))
            raise
        if split not in builder.info.splits:
            raise KeyError(f"no split {split!r} (built: {sorted(builder.info.splits)})")
        return builder

    try:
        builder = damage.with_retries(built, f"opening dataset {dataset!r} under {data_dir!r}")
    except damage.GaveUp as e:
        if damage.storage_fault(e.error):
            raise shards.StorageFault.of(f"dataset {dataset!r} split {split!r} under "
                                         f"data_dir={data_dir!r}", e, data_dir) from e.error
        raise _not_built(dataset, data_dir, split, e.error) from e.error
    shards.check_file_format(builder, split, dataset, data_dir)
    return builder


def open_split(dataset: str, data_dir: str, split: str, decode_images: bool = False,
               features: Sequence[str] | None = None):
    """`tfds` data source of a built split (`built_split`), with a clear error when it is
    missing, when one of its shard files is missing or truncated, when it was built in
    another file format than array_record, or when its storage does not give its files after
    `damage.RETRY_DELAYS_S` (`hgmt.data.shards`). The split is read from its
    files (`dataset_info.json`, `features.json`), so neither the builder's code nor TensorFlow
    is needed: an accelerator host needs tensorflow-datasets, array_record and grain only. The
    image features stay encoded bytes (`cropping.crop_example` decodes them with OpenCV, faster than
    TFDS) unless `decode_images`; the records are then parsed by `tf_example.parsed`, with
    only the `features` named (default all)."""
    data_dir = _expanded(data_dir)
    builder = built_split(dataset, data_dir, split)
    shards.check_split(builder, split, dataset, data_dir)
    return source_of(builder, split, dataset, data_dir, decode_images, features)


def source_of(builder, split: str, dataset: str, data_dir: str, decode_images: bool = False,
              features: Sequence[str] | None = None):
    """`open_split`'s data source of `split` of `builder` (`built_split`), its shards not
    checked: for a caller that checks them itself (`hgmt.data.check` reads the intact shards
    of a split whose other shards are damaged). Its shards are opened when first read."""
    import tensorflow_datasets as tfds

    from hgmt.data import tf_example

    decoders = None if decode_images else {k: tfds.decode.SkipDecoding()
                                           for k in records.IMAGE_FEATURES}
    try:
        source = builder.as_data_source(split, decoders=decoders)
    except Exception as e:
        raise _not_built(dataset, data_dir, split, e) from e
    check_features(source.dataset_info, dataset, data_dir)
    return source if decode_images else tf_example.parsed(source, features)


def auto_worker_count(worker_count: int) -> int:
    """`worker_count` as given, or for -1 one grain worker per usable core (`hgmt.cores`)
    beyond the two that run the training loop and the transfers to the devices (0 with 2
    cores)."""
    if worker_count >= 0:
        return worker_count
    if worker_count != -1:
        raise ValueError(f"config.worker_count={worker_count}: give a count >= 0, or -1 for "
                         f"one worker per usable core beyond two (hgmt.cores)")
    return max(0, cores.usable_cores() - 2)


def read_options(read_threads: int) -> grain.ReadOptions:
    """config.read_threads -> grain's read-ahead: 0 reads each record in the loader's own
    thread (the most examples per CPU-second from local disk: a read-ahead thread polls its
    pending reads, docs/performance.md); N > 0 threads keep 16 records per thread ahead, for
    storage whose reads wait (e.g. GCS). grain's default, 16 threads and 500 records, checks
    all 500 pending reads for every record it returns."""
    if read_threads < 0:
        raise ValueError(f"config.read_threads={read_threads}: give 0 (reads in the loader's "
                         f"thread, for local disks) or a count of read-ahead threads")
    return grain.ReadOptions(num_threads=read_threads,
                             prefetch_buffer_size=16 * max(read_threads, 1))


def train_loader(source, *, batch_size: int, image_size: int, seed: int,
                 augment: Augment = Augment(), worker_count: int = -1,
                 tasks: Sequence[str] | None = None,
                 unread: frozenset[str] = frozenset(), read_threads: int = 0,
                 window: str = "hgmt") -> grain.DataLoader:
    """Endless shuffled loader of this host's share: batches of batch_size // process_count,
    cropped around the `window`'s box (cropping.TRAIN_WINDOWS), with the labels of `tasks` (default
    all; the label maps in `unread` not decoded, as
    `cropping.crop_with` says: the trainer passes the maps no training target is made from,
    `device_augment.unread_maps`), and `damaged` (per example, the damaged records it
    replaced: `TrainCrop`). `worker_count` as in `auto_worker_count`, `read_threads` as in
    `read_options`."""
    return endless_loader(source, TrainCrop(image_size, augment, tasks, source, unread, window),
                          batch_size=batch_size, seed=seed, worker_count=worker_count,
                          read_threads=read_threads)


# The config seeds: grain's seed range (32-bit), which `grain_seed` maps onto itself one to one.
SEED_BITS = 32
SEED_RANGE = (0, 2**SEED_BITS)
# A fixed tag mixed into every seed ("hgmt" in ASCII), so that config.seed 0 is not grain's 0.
_SEED_TAG = 0x68676D74
_MASK32 = 2**SEED_BITS - 1
# MurmurHash3's 32-bit finalizer: odd multipliers (invertible mod 2**32) between xor-shifts.
_MIX = (0x85EBCA6B, 0xC2B2AE35)


def check_seed(seed: int) -> None:
    """ValueError naming config.seed and its range unless `seed` is in SEED_RANGE: the
    loader's shuffle (grain) and the model's initialisation (a JAX key, which would wrap a
    larger seed round to a smaller one's) take 32-bit seeds."""
    if not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ValueError(f"config.seed={seed} must be in [0, 2**{SEED_BITS}) (0 to "
                         f"{_MASK32}): the loader's shuffle and the model's initialisation "
                         f"take {SEED_BITS}-bit seeds")


def grain_seed(seed: int) -> int:
    """The seed the training loader gives grain for config.seed `seed` (in SEED_RANGE): a hash
    of it, one to one on SEED_RANGE (`config_seed` inverts it). grain shuffles epoch e with
    its seed + e and draws example k's randomness from Philox(key=its seed + k), so consecutive
    config seeds given as they are would share their data order, one epoch apart; hashed,
    they do not."""
    check_seed(seed)
    x = seed ^ _SEED_TAG
    for multiplier, shift in zip(_MIX, (16, 13), strict=True):
        x = ((x ^ (x >> shift)) * multiplier) & _MASK32
    return x ^ (x >> 16)


def config_seed(mixed: int) -> int:
    """The config.seed whose `grain_seed` is `mixed` (in SEED_RANGE): its inverse."""

    def unshift(x: int, shift: int) -> int:  # the inverse of x ^ (x >> shift)
        y = x
        for _ in range(SEED_BITS // shift):
            y = x ^ (y >> shift)
        return y

    x = unshift(mixed, 16)
    for multiplier, shift in zip(reversed(_MIX), (13, 16), strict=True):
        x = unshift((x * pow(multiplier, -1, 2**SEED_BITS)) & _MASK32, shift)
    return x ^ _SEED_TAG


class GlobalOrder:
    """The training loader's sampler (grain's `Sampler` protocol: `__getitem__(index) ->
    RecordMetadata`, as `grain.IndexSampler`): the one-process run's sequence of records,
    shared among the P processes element by element.

    Element g of the sequence is that of an unsharded `grain.IndexSampler` of `num_records`
    records shuffled with `seed` over endless epochs (each epoch every record once), with its
    per-element randomness, Philox(seed + g). grain's DataLoader, given its `shard_options`
    (process p of P: `grain.ShardByJaxProcess`), asks its sampler for elements i * P + p, so
    process p's i-th record is the sequence's element i * P + p: together the processes read
    the one-process sequence, each element with the same randomness, and no record of the
    split is left out. (grain's own sharding of the IndexSampler gives each process a
    contiguous block of the split, every block shuffled alike, so the same records would share
    a global batch every epoch.)

    Its repr is that of the sharded `grain.IndexSampler` every checkpoint's loader position
    was saved with (`IndexSampler(num_records=N, shard_options=ShardByJaxProcess(...),
    shuffle=True, num_epochs=None, seed=S)`): grain restores a position only into a sampler
    of the same repr. With P = 1 the two are the same sequence; a position saved by several
    processes is a count of each worker's elements, which resumes in this order."""

    def __init__(self, num_records: int, seed: int):
        self.shard_options = grain.ShardByJaxProcess(drop_remainder=True)
        self._sequence = grain.IndexSampler(num_records=num_records,
                                            shard_options=grain.NoSharding(), shuffle=True,
                                            num_epochs=None, seed=seed)
        self._repr = repr(grain.IndexSampler(num_records=num_records,
                                             shard_options=self.shard_options, shuffle=True,
                                             num_epochs=None, seed=seed))

    def __len__(self) -> int:
        return len(self._sequence)

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        return self._sequence[index]

    def __repr__(self) -> str:
        return self._repr


def endless_loader(source, transform: grain.MapTransform, *, batch_size: int, seed: int,
                   worker_count: int = -1, read_threads: int = 0) -> grain.DataLoader:
    """The training loaders' common part: this process's elements (`GlobalOrder`) of the
    sequence of `source`'s records (damaged records replaced, `damage.Guarded`) shuffled
    with `grain_seed(seed)` over endless epochs, unusable records skipped, `transform`
    applied, batches of batch_size // process_count. Its order and state (resume) depend on
    the source, seed, batch size and the number of loader workers
    (`auto_worker_count(worker_count)`: each worker makes whole batches of its own slice of
    the process's records, worker w of W of its elements w, w + W, ..., and the process
    takes the workers' batches in turn, so another count groups other records into a
    batch), whatever `transform` makes.

    With no record skipped, the processes' batches k together hold the one-process run's
    batch k when the loaders run no workers (W = 0); with W workers in every process and in
    the one-process run, the processes' batches mW..mW+W-1 together hold the one-process
    run's batches mW..mW+W-1, in other groupings."""
    absl_flags_at_defaults()
    sampler = GlobalOrder(len(source), grain_seed(seed))
    workers = auto_worker_count(worker_count)
    if workers:
        resource_tracker_without_sigusr1()
    return grain.DataLoader(
        data_source=damage.Guarded(source), sampler=sampler,
        shard_options=sampler.shard_options,
        operations=[SkipUnusable(), transform,
                    grain.Batch(batch_size // jax.process_count(), drop_remainder=True)],
        worker_count=workers, read_options=read_options(read_threads))


def resource_tracker_without_sigusr1() -> None:
    """Starts multiprocessing's resource tracker (the process that frees grain's shared memory
    should the trainer die) unless it runs, with SIGUSR1 blocked: it ignores SIGTERM and
    SIGINT itself, and a SIGUSR1 to the whole job (Slurm's warning) would kill it, its
    successor then warning of every segment it was not told of."""
    from multiprocessing import resource_tracker

    with signals_blocked({signal.SIGUSR1}):  # the child keeps this thread's blocked signals
        resource_tracker.ensure_running()


def absl_flags_at_defaults() -> None:
    """Marks absl's global flags parsed (each at its default) unless a program parsed them.
    grain reads its own absl flags when a loader starts its worker processes (with jaxlib
    0.11 and later), and reading an unparsed flag raises; hgmt's commands parse their flags
    into their own `FlagValues` (hgmt.cli) and leave the global ones unparsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


class ConsumedPosition:
    """A loader iterator whose checkpointed state is that after the last batch the trainer
    *consumed*, not after the last one prefetched to devices (which runs ahead by `prefetch`
    batches). Give it to grain's checkpoint handler in place of the iterator; draw batches
    from `batches()` and call `consumed()` once per training step. With `on_consumed`, each
    batch's `damaged` field ((B, damage.MAX_TRIES) int64, `TrainCrop`) is taken out of it as
    it is drawn and given to `on_consumed` when the batch is consumed (`damage.DamageLog.met`):
    the account then holds the records of the batches trained on, none prefetched beyond."""

    def __init__(self, iterator, on_consumed: Callable[[np.ndarray], None] | None = None):
        self._iterator = iterator
        self._on_consumed = on_consumed
        self._pending: collections.deque = collections.deque()  # (state, damaged or None)
        self._consumed = iterator.get_state()

    def batches(self) -> Iterator[dict]:
        for batch in self._iterator:
            damaged = None if self._on_consumed is None else batch.pop("damaged", None)
            self._pending.append((self._iterator.get_state(), damaged))
            yield batch

    def consumed(self) -> None:
        self._consumed, damaged = self._pending.popleft()
        if damaged is not None:
            self._on_consumed(damaged)

    def get_state(self) -> bytes:
        return self._consumed

    def set_state(self, state: bytes) -> None:
        self._iterator.set_state(state)
        self._consumed = state
        self._pending.clear()

    def start_prefetch(self) -> None:
        getattr(self._iterator, "start_prefetch", lambda: None)()

    def close(self) -> None:
        """Lets go of the batches drawn and not consumed (their `damaged` fields lie in the
        workers' shared memory) and closes the iterator it follows
        (`WorkersStartShielded.close`)."""
        self._pending.clear()
        getattr(self._iterator, "close", lambda: None)()


def prefetch_to_device(iterator: Iterator[dict], size: int = 2) -> Iterator[dict]:
    """Places host batches on the devices and keeps `size` of them in flight: `size` are put
    on the devices before the first is yielded, and one more each time the next is asked for.
    Each array (B, ...), this process's share of the global batch, becomes its rows of the
    global array (devices, B / local devices, ...) that a `hgmt.devices.spmd` step takes
    (`devices.place_batch`), put from a view of the batch without a copy. On
    a CPU the batch is copied still: there `device_put` may alias the host buffer, and a batch
    of the loader's workers lives in their shared memory, which must be released once it is
    used (aliased, its blocks outlive the process: the resource tracker's "leaked
    shared_memory" warning at exit)."""
    copy = jax.local_devices()[0].platform == "cpu"
    queue: collections.deque = collections.deque()

    def enqueue(n: int) -> None:
        for batch in itertools.islice(iterator, n):
            queue.append(devices.place_batch(batch, copy=copy))

    enqueue(size)
    while queue:
        yield queue.popleft()
        enqueue(1)
