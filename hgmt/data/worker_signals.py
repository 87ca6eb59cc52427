"""The training loader's worker processes shielded from the job's signals.

Slurm and `timeout` signal every process of a job, the loader's grain workers and
multiprocessing's resource tracker included. The trainer handles the preemption signals
(hgmt.training.preemption); a worker killed by one would fail the trainer's next batch, a
killed tracker's successor warn of grain's shared memory as leaked. So the workers start
with WORKER_IGNORED_SIGNALS blocked (`WorkersStartShielded`, `signals_blocked`) and ignore
them before they unblock them (`ignore_in_worker`), and the resource tracker starts with
SIGUSR1 blocked (`resource_tracker_without_sigusr1`).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any

# What a grain worker process ignores (`ignore_in_worker`): the preemption signals the trainer
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
    starts with them blocked and ignores them (`ignore_in_worker`) before it unblocks them: a
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


def ignore_in_worker() -> None:
    """In a grain worker process (a child process's main thread): WORKER_IGNORED_SIGNALS are
    ignored from now on, those that came while it started blocked (`WorkersStartShielded`)
    discarded, and then unblocked; in a main process nothing changes. Called as the worker
    unpickles its copy of the training loader's first operation, before it reads a record
    (`placeholders.SkipUnusable`)."""
    if (multiprocessing.parent_process() is not None
            and threading.current_thread() is threading.main_thread()):
        for signum in WORKER_IGNORED_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_IGNORED_SIGNALS)


def resource_tracker_without_sigusr1() -> None:
    """Starts multiprocessing's resource tracker (the process that frees grain's shared memory
    should the trainer die) unless it runs, with SIGUSR1 blocked: it ignores SIGTERM and
    SIGINT itself, and a SIGUSR1 to the whole job (Slurm's warning) would kill it, its
    successor then warning of every segment it was not told of."""
    from multiprocessing import resource_tracker

    with signals_blocked({signal.SIGUSR1}):  # the child keeps this thread's blocked signals
        resource_tracker.ensure_running()
