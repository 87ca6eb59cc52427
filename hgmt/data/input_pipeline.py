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
builder's version with its features, by `hgmt.data.builds`. Around the loader: its placeholders
of unusable frames skipped (`hgmt.data.placeholders`), its worker processes shielded from the
job's signals (`hgmt.data.worker_signals`), its batches put on the devices ahead of the step
and its position checkpointed as of the batches consumed (`hgmt.data.prefetch`).

Why grain over array_record rather than tf.data over tfrecord: `tfds.data_source` gives random
access, so shuffling needs no buffer, each host reads its own elements of the one shuffled
sequence (every P-th: together the hosts read the sequence a one-process run reads), and the
iterator's position is a few integers that orbax saves with the checkpoint (resuming continues
the same data stream).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grain.python as grain
import jax
import numpy as np
from absl import flags

from hgmt import cores
from hgmt.data import cropping, placeholders, record_reads, worker_signals
from hgmt.data.augment import Augment


class TrainCrop(grain.RandomMapTransform):
    """The training crop of a record of a `record_reads.Guarded` source, around the `window`'s
    box (cropping.TRAIN_WINDOWS): a damaged record is replaced by the next good one of its
    shard that is not a placeholder (`record_reads.first_good`, `placeholders.passes_filter`),
    and the example's `damaged` field, (record_reads.MAX_TRIES,) int64, lists the damaged
    indices it replaced (-1 padded) for the trainer to name and count. Records without
    '_index' are cropped as they are."""

    def __init__(self, image_size: int, augment: Augment, tasks: Sequence[str] | None = None,
                 source: Any = None, unread: frozenset[str] = frozenset(),
                 window: str = "hgmt"):
        self.image_size, self.augment, self.tasks = image_size, augment, tasks
        self.source, self.unread = source, frozenset(unread)
        self.window = cropping.check_window(window, cropping.TRAIN_WINDOWS, "training crop window")
        self.shards = None if source is None else record_reads.Shards.of(source)

    def random_map(self, element: dict, rng: np.random.Generator) -> dict:
        def crop(record: dict) -> dict:
            return cropping.crop_example(record, self.image_size, self.augment, rng, self.tasks,
                                self.unread, self.window)

        return record_reads.make_guarded(element, self.source, self.shards, crop,
                                         usable=placeholders.passes_filter)


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
    sequence of `source`'s records (damaged records replaced, `record_reads.Guarded`) shuffled
    with `grain_seed(seed)` over endless epochs, unusable records skipped
    (`record_reads.NoUsableRecords`, at once or once a worker has skipped
    `placeholders.PLACEHOLDER_RUN` in a row, when `source` is empty or holds nothing else:
    `placeholders.SkipUnusable`), `transform` applied, batches of batch_size //
    process_count. Its order and state (resume) depend on the source, seed, batch size and
    the number of loader workers
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
        raise placeholders.no_usable_records(source)
    sampler = GlobalOrder(len(source), grain_seed(seed))
    workers = auto_worker_count(worker_count)
    if workers:
        worker_signals.resource_tracker_without_sigusr1()
    return grain.DataLoader(
        data_source=record_reads.Guarded(source), sampler=sampler,
        shard_options=sampler.shard_options,
        operations=[placeholders.SkipUnusable(source), transform,
                    grain.Batch(batch_size // jax.process_count(), drop_remainder=True)],
        worker_count=workers, read_options=read_options(read_threads))


def absl_flags_at_defaults() -> None:
    """Marks absl's global flags parsed (each at its default) unless a program parsed them.
    grain reads its own absl flags when a loader starts its worker processes (with jaxlib
    0.11 and later), and reading an unparsed flag raises; hgmt's commands parse their flags
    into their own `FlagValues` (hgmt.cli) and leave the global ones unparsed."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
