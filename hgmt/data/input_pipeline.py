"""Input pipeline: built SURREAL records -> cropped, augmented examples for every task.

Reads the TFDS dataset with `tfds.data_source` (array_record, random access) through a grain
`DataLoader`: one shuffled sequence of records shared among the hosts element by element
(`GlobalOrder`), per-record deterministic randomness, and an iterator state that is
checkpointed with the model. Each example is cropped around the person and augmented in the
loader's workers (`TrainCrop`, with hgmt/data/cropping.py's crop: docs/surreal_format.md), or,
with `config.augment_on="device"` (what "auto" picks on a GPU or TPU), only decoded into
fixed-size arrays here and cropped batched in the step (hgmt/data/device_augment.py). The
output is the cropped example of docs/interfaces.md §4; each task's targets are made from it
inside the jitted step. The split it reads is opened, and checked to be built by this
builder's version with its features, by `hgmt.data.builds`.

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
import multiprocessing
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grain.python as grain
import jax
import numpy as np
from absl import flags

from hgmt import cores, devices
from hgmt.data import cropping, damage, shards
from hgmt.data.augment import Augment
from hgmt.data.damage import NoUsableRecords

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

    def get_state(self) -> dict[str, Any]:
        return self._iterator.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
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
    return f"split {split!r} of dataset {info.full_name} under {_data_dir(info)}"


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
    """Whether `SkipUnusable` passes `element`, a record of a `damage.Guarded` source: any but
    a flagged placeholder. A damaged record ({'_index', '_damaged'}: it did not read) passes,
    for the transform to replace with the next good record of its shard that passes too
    (`damage.first_good`, given this as its `usable`)."""
    return not element.get("unusable", b"")


def has_usable_record(source: Any) -> bool:
    """Whether any record of `source` passes `SkipUnusable`'s filter (`passes_filter`): one
    that is not a flagged placeholder, or one that does not read (damaged), which the loader
    replaces (read in order up to the first). False: every record reads and is a
    placeholder."""
    guarded = damage.Guarded(source)
    return any(passes_filter(guarded[index]) for index in range(len(source)))


class SkipUnusable(grain.FilterTransform):
    """Drops the flagged placeholder records (a test split's unusable frames) from training.
    Once a copy of it has skipped PLACEHOLDER_RUN of them in a row, it looks through `source`
    (the split it filters) for a usable record, once: NoUsableRecords when there is none,
    where the loader would otherwise read the split round forever without a batch.
    The training loader's first operation: the copy of it that each grain worker process
    unpickles, before it reads a record, makes that process ignore WORKER_IGNORED_SIGNALS
    (`_unpickled`)."""

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
    """A `SkipUnusable` of `source` as a grain worker process unpickles it: there (a child
    process's main thread), WORKER_IGNORED_SIGNALS are ignored from now on, those that came
    while it started blocked (`WorkersStartShielded`) discarded, and then unblocked; in a main
    process nothing else changes."""
    if (multiprocessing.parent_process() is not None
            and threading.current_thread() is threading.main_thread()):
        for signum in WORKER_IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_IGNORED_SIGNALS)
    return SkipUnusable(source)


class TrainCrop(grain.RandomMapTransform):
    """The training crop of a record of a `damage.Guarded` source, around the `window`'s box
    (cropping.TRAIN_WINDOWS): a damaged record is replaced by the next good one of its shard
    that is not a placeholder (`damage.first_good`, `passes_filter`), and the example's
    `damaged` field, (damage.MAX_TRIES,) int64, lists the damaged indices it replaced (-1
    padded) for the trainer to name and count. Records without '_index' are cropped as
    they are."""

    def __init__(self, image_size: int, augment: Augment, tasks: Sequence[str] | None = None,
                 source: Any = None, unread: frozenset[str] = frozenset(),
                 window: str = "hgmt"):
        self.image_size, self.augment, self.tasks = image_size, augment, tasks
        self.source, self.unread = source, frozenset(unread)
        self.window = cropping.check_window(window, cropping.TRAIN_WINDOWS, "training crop window")
        self.shards = None if source is None else damage.Shards.of(source)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        def crop(record: dict) -> dict:
            return cropping.crop_example(record, self.image_size, self.augment, rng, self.tasks,
                                self.unread, self.window)

        return damage.make_guarded(element, self.source, self.shards, crop, usable=passes_filter)


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


def train_loader(source: Any, *, batch_size: int, image_size: int, seed: int,
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


def endless_loader(source: Any, transform: grain.MapTransform, *, batch_size: int, seed: int,
                   worker_count: int = -1, read_threads: int = 0) -> grain.DataLoader:
    """The training loaders' common part: this process's elements (`GlobalOrder`) of the
    sequence of `source`'s records (damaged records replaced, `damage.Guarded`) shuffled
    with `grain_seed(seed)` over endless epochs, unusable records skipped (NoUsableRecords,
    at once or once a worker has skipped PLACEHOLDER_RUN in a row, when `source` is empty or
    holds nothing else: `SkipUnusable`), `transform`
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
    if not len(source):  # grain's sampler takes no empty split
        raise no_usable_records(source)
    sampler = GlobalOrder(len(source), grain_seed(seed))
    workers = auto_worker_count(worker_count)
    if workers:
        resource_tracker_without_sigusr1()
    return grain.DataLoader(
        data_source=damage.Guarded(source), sampler=sampler,
        shard_options=sampler.shard_options,
        operations=[SkipUnusable(source), transform,
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

    def __init__(self, iterator: grain.PyGrainDatasetIterator,
                 on_consumed: Callable[[np.ndarray], None] | None = None):
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
