"""Stops of `tfds build --num-processes=N`, which builds the configs in a `multiprocessing.Pool`
of TFDS's own (one config a worker), ended as a build in the command's own process ends: one
line, nothing partial kept, status 130 for a Ctrl-C and 1 for a full disk.

TFDS's command waits for the pool (`pool.map`, where the builder has no say) and raises the
first error a worker returned; a KeyboardInterrupt in a worker is no Exception, so the pool
does not return it: it ends the worker, and the command waits for that config for ever. So:

- in a worker, a build that a Ctrl-C stopped (its partial output removed) raises
  `BuildInterrupted`, an ordinary exception the pool returns (`worker_build`);
- as TFDS's command (`as_tfds_command`, called as the command imports the builder), a Ctrl-C
  that reaches the command is sent on to the pool's workers, whose builds stop, in place of
  the KeyboardInterrupt that would stop the command's wait: TFDS's `with Pool` would then end
  the workers by SIGTERM in the middle of their cleanup. A worker's build stops at its next
  example (a terminal's Ctrl-C reaches it twice: from the terminal and from the command), and
  a config it has not started yet is not started (`_on_ctrl_c`);
- the command ends on a worker's `BuildInterrupted` or `disk_space.DiskFull` in one line, from
  Python's `sys.excepthook`, which the error reaches once TFDS's code has let it go (the pool
  closed, its workers ended).
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing
import os
import signal
import sys
import threading
import types
from collections.abc import Callable, Iterator

from hgmt import disk_space, stops


class BuildInterrupted(Exception):
    """A Ctrl-C stopped a build in a pool worker, and nothing of it was kept (or it was not
    started): what the pool returns to its caller in place of the KeyboardInterrupt."""


def in_a_worker() -> bool:
    """Whether this process is a worker of a process pool (`tfds build --num-processes`'s)."""
    return multiprocessing.parent_process() is not None


_interrupted = False  # a Ctrl-C reached this worker
_building = False  # this worker runs a build (`worker_build`)


@contextlib.contextmanager
def worker_build(stopped: str, not_started: str) -> Iterator[None]:
    """A build in a pool worker: an error that leaves the block (the build's partial output
    removed by then) once a Ctrl-C reached this worker is `BuildInterrupted(stopped)`, as is
    the KeyboardInterrupt itself: C code that the KeyboardInterrupt stopped may raise its own
    error in its place (a C extension's import, TFDS's array_record writer's, turns it into
    an ImportError); a build a Ctrl-C came before is not run, `BuildInterrupted(not_started)`."""
    global _building
    if _interrupted:
        raise BuildInterrupted(not_started)
    try:
        try:
            _building = True
            yield
        finally:
            _building = False
    except BaseException as e:  # the stop, whatever error it became
        if isinstance(e, KeyboardInterrupt) or _interrupted:
            raise BuildInterrupted(stopped) from None
        raise


_INTERRUPTED_LINE = ("interrupted (Ctrl-C); nothing of the builds that had not finished was "
                    "kept; run the same command again to build them (it reuses those that "
                    "finished)")


def as_tfds_command() -> None:
    """Sets up this process, TFDS's command, for `--num-processes=N`: a Ctrl-C is sent on to
    the pool's workers while there are some (`_on_ctrl_c`; where Ctrl-C is at Python's
    default: a command started in the background ignores it), and a worker's
    `BuildInterrupted` or `DiskFull` that TFDS's code lets go ends the command in one line
    (`_end_in_one_line`). A build in the command's own process is unchanged."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
        signal.signal(signal.SIGINT, _on_ctrl_c)
    sys.excepthook = functools.partial(_end_in_one_line, sys.excepthook)


def _on_ctrl_c(signum: int, frame: types.FrameType | None) -> None:
    """Ctrl-C in TFDS's command, and in its pool's workers, which inherit the handler: the
    command sends it on to its workers, or, without any, raises KeyboardInterrupt as Python's
    default does; a worker notes it, and its build stops at its next example
    (`stop_if_interrupted`) and starts no other. Not raised where the signal lands: a
    KeyboardInterrupt inside tqdm's lock, which the pool's forked workers share, left it held
    and the other workers' progress bars waiting for it for ever."""
    global _interrupted
    if in_a_worker():
        _interrupted = True
        return
    workers = multiprocessing.active_children()
    if not workers:
        raise KeyboardInterrupt
    for worker in workers:
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGINT)


def stop_if_interrupted() -> None:
    """KeyboardInterrupt if a Ctrl-C reached this pool worker during its build: called
    between the build's examples, where nothing is held."""
    if _interrupted and _building:
        raise KeyboardInterrupt


def _end_in_one_line(previous: Callable, kind: type[BaseException], error: BaseException,
                     traceback: types.TracebackType | None) -> None:
    """`sys.excepthook` of TFDS's command: a worker's `BuildInterrupted` or `DiskFull` (the
    first the pool returned) ends it in one line, the builds' partial output removed by their
    workers; any other error is `previous`'s."""
    if isinstance(error, BuildInterrupted):
        stops.end_interrupted(_INTERRUPTED_LINE)
    if isinstance(error, disk_space.DiskFull):
        stops.end_at_once(f"error: {error}", 1)
    previous(kind, error, traceback)
