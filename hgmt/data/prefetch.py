"""The training loader's batches on their way to the step: put on the devices ahead of it
(`prefetch_to_device`), and the loader position checkpointed as that of the batches the step
consumed, not of those prefetched (`ConsumedPosition`).
"""

from __future__ import annotations

import collections
import itertools
from collections.abc import Callable, Iterator

import grain.python as grain
import jax
import numpy as np

from hgmt import devices


class ConsumedPosition:
    """A loader iterator whose checkpointed state is that after the last batch the trainer
    *consumed*, not after the last one prefetched to devices (which runs ahead by `prefetch`
    batches). Give it to grain's checkpoint handler in place of the iterator; draw batches
    from `batches()` and call `consumed()` once per training step. With `on_consumed`, each
    batch's `damaged` field ((B, record_reads.MAX_TRIES) int64, `TrainCrop`) is taken out of it as
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
