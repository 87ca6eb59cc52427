"""Multi-host runs, once joined (`hgmt.training.cluster`): bounded failure detection, and one
message, `PeerLost: lost process(es) N of M at step S`, whichever way the death of a peer other
than process 0 is noticed (process 0's takes the others down at once: see below).

A process of the job that dies is noticed in one of three ways, which left to JAX end in
different words (a Python traceback, or a fatal C++ log line and stack trace), whichever wins:
- a collective fails at once (CPU: gloo reports "connection closed by peer");
- a collective hangs (GPU/TPU collectives wait for the peer);
- JAX's coordination service misses the dead process's heartbeats for its heartbeat timeout and
  terminates every other process ("Terminating process because the JAX distributed service
  detected fatal errors ... tasks are unhealthy"), with no Python code run.

`watched()` runs a watchdog thread (`PeerWatch`) that beats a counter in the coordination
service's key-value store every `INTERVAL_S` and reads everyone's: a peer whose counter has not
moved for `heartbeat_timeout_s` is lost. `cluster.initialize` gives JAX's service three times
that, as a backstop for a watchdog that cannot run, so hgmt's verdict comes first:
- when a collective failed, the trainer waits for the watchdog's verdict and raises `PeerLost`;
  `exit_lost` (hgmt.main, the test worker) logs the one line and exits with EXIT_PEER_LOST at
  once, without the exit barrier that would wait for the dead peer;
- when the main thread is stuck in a hung collective, the watchdog itself logs the same line
  and exits with EXIT_PEER_LOST. That exit (os._exit) skips the main thread's `finally`
  blocks: what must not be left behind, the workdir lock, is cleaned up through `before_exit`.
`cluster.initialize`'s `shutdown_timeout_s` bounds the exit barrier of a normal exit the
same way. A peer is judged once its counter was seen: one that dies before its first beat
(within `INTERVAL_S` of entering the watch) is left to JAX's service.

Process 0 is the exception: it hosts JAX's coordination service. When it dies (or its host
does), every other process's JAX client aborts at once, in C++, before any of hgmt's Python
runs: "Terminating process because the JAX distributed service detected fatal errors", a
stack trace and SIGABRT (exit status 134 in a shell), not the `PeerLost` line and status 69.
When process 0 hangs (alive but not answering; a SIGSTOP), the others' key-value calls block,
and their clients abort the same way at JAX's heartbeat timeout. JAX 0.10.2 has no way to
keep the clients alive: `jax.distributed.initialize` takes no callback for a lost service
(jaxlib's private client takes one, but calling a Python function there aborts with
std::bad_cast), and its recoverability option concerns the service, which is gone with
process 0. So the watchdog gives no verdict on a dead or hung process 0 (only on one whose
counter stops while its service answers); the scheduler sees the job fail, and a rerun
resumes from the last checkpoint.

A process that stops on an error of its own (a fault on that host only: a full disk, out of
device memory, a shard of its share damaged, a bug) publishes `failed: at step S: <Kind>:
<message>` (S its own step; `before the first step` outside training) in place of its counter
as it leaves the watched block. The others' watchdogs read it and stop them the same two ways,
with `PeerFailed: process N failed at step S: <Kind>: <message>`, S the failed process's step
(theirs may be one ahead), and exit status 1 (the failed process's own error says what to
fix). `exit_failed` ends the failed process itself (`error: <Kind>: <message>`, status 1)
without JAX's exit barrier, which would wait for the peers that stopped until the
coordination service aborted every process; process 0, which hosts that service, first waits
(at most the heartbeat timeout) until the others have read the verdict and stopped.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import re
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import jax

from hgmt.training import cluster

INTERVAL_S = 0.5  # how often the watchdog beats and looks
# The shortest heartbeat timeout hgmt.main takes: ten intervals, so that a beat delayed by a
# busy host (a save, a compilation) is not read as a dead process.
MIN_HEARTBEAT_TIMEOUT_S = 5
EXIT_PEER_LOST = 69  # sysexits' EX_UNAVAILABLE: a process of the job is gone; rerun to resume
# A process's value in place of its counter once it left training: not judged any more.
_DONE = "done"  # training ended, or stopped at a step every process agreed on
_FAILED = "failed: "  # + "<when>: <Kind>: <message>": stopped on an error of its own
_STOPPED = "stopped: "  # + why: stopped because another process died or failed

_EXITED = "hgmt/exited/"  # + process index: set by a process as it ends through `_end`

_runs = itertools.count()  # one key prefix per watch: every process makes them in one order
_prefix = "hgmt/alive/0/"  # the key prefix of this process's latest watch (or its first, to be)
_left_prefix: str | None = None  # the prefix under which this process published how it left
_before_exit: list[Callable[[], None]] = []  # run by `_end`, whose os._exit skips `finally`


class PeerLost(RuntimeError):
    """A process of this multi-host run died; `status` is hgmt.main's exit status for it."""

    status = EXIT_PEER_LOST


class PeerFailed(PeerLost):
    """A process of this multi-host run stopped on an error of its own (named in the
    message); this one stops too, with exit status 1: that error needs fixing first."""

    status = cluster.EXIT_FAILED


def exit_lost(error: PeerLost | str) -> NoReturn:
    """Logs `<Kind>: <what>` (PeerLost or PeerFailed; a str is PeerLost's message) and ends
    this process at once with the error's exit status, EXIT_PEER_LOST or `cluster.EXIT_FAILED`
    (no exit barrier: it would wait for the lost peer until the coordination service kills
    us)."""
    error = PeerLost(error) if isinstance(error, str) else error
    logging.error("%s: %s", type(error).__name__, error)
    _end(error.status)


def exit_failed(error: BaseException) -> NoReturn:
    """Ends a process of a multi-host run that stopped on `error`, its own, at once: a
    SystemExit as Python would (its message on stderr, status 1, e.g. hgmt.cli's one line),
    another error with its traceback and status `cluster.EXIT_FAILED`; without the exit
    barrier, since the peers stop on their own once they read the failure that `PeerWatch`
    published."""
    # Unless its watch published it already (a watch always does as it ends): so this
    # process failed before entering one, before the first step.
    _leave(_failed(_BEFORE_FIRST_STEP, error))
    if isinstance(error, SystemExit) and (error.code is None or isinstance(error.code, int)):
        status = error.code or 0
    elif isinstance(error, SystemExit):
        print(error.code, file=sys.stderr)
        status = cluster.EXIT_FAILED
    else:
        traceback.print_exception(error)
        status = cluster.EXIT_FAILED
    _end(status)


def _leave(value: str) -> None:
    """Publishes `value` in place of this process's counter in its latest watch (or in its
    first, when it failed before entering one, where the peers' watchdogs look), once."""
    global _left_prefix
    client = cluster.coordination_client()
    if client is None or _left_prefix == _prefix:
        return
    _left_prefix = _prefix
    with contextlib.suppress(Exception):  # the coordinator is gone: nobody to tell
        client.key_value_set(_prefix + str(jax.process_index()), value, allow_overwrite=True)


def before_exit(callback: Callable[[], None]) -> None:
    """Runs `callback` when this process ends through `exit_lost` or `exit_failed`, whichever
    thread calls them: their os._exit skips the `finally` blocks of every thread, including
    the main thread's when the watchdog ends the process while it is stuck in a hung
    collective. What must not be left behind registers here while it exists (the workdir
    lock, `workdir_lock.WorkdirLock`) and unregisters (`not_before_exit`) once cleaned up."""
    _before_exit.append(callback)


def not_before_exit(callback: Callable[[], None]) -> None:
    """Unregisters a `before_exit` callback (no error when it is not registered)."""
    with contextlib.suppress(ValueError):
        _before_exit.remove(callback)


def _end(status: int) -> NoReturn:
    """Runs the `before_exit` callbacks, flushes the logs and ends the process with `status`,
    skipping JAX's exit barrier. Process 0 ends last (`_wait_for_peers`): its exit takes the
    coordination service away, which the JAX client of every process still running aborts on
    at once."""
    for callback in list(_before_exit):
        try:
            callback()
        except Exception:  # noqa: BLE001  (the others still run, and the process still ends)
            logging.exception("before exiting, %r failed", callback)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    client = cluster.coordination_client()
    if jax.process_count() > 1 and client is not None:
        if jax.process_index() == 0:
            _wait_for_peers(client, cluster.job_heartbeat_timeout_s())
        else:
            with contextlib.suppress(Exception):
                client.key_value_set(_EXITED + str(jax.process_index()), "1",
                                     allow_overwrite=True)
    os._exit(status)


def _wait_for_peers(client: Any, timeout_s: float) -> None:
    """Waits, at most `timeout_s`, until every other process has ended through `_end`, is
    done with the latest watch, or is gone (its counter still for 3 intervals); then one
    interval more for the last to exit."""
    seen: dict[str, tuple[str, float]] = {}  # peer -> (counter, when it last moved)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            ended = {k.rsplit("/", 1)[-1] for k, _ in client.key_value_dir_get(_EXITED)}
            values = {k.rsplit("/", 1)[-1]: v for k, v in client.key_value_dir_get(_prefix)}
        except Exception:  # noqa: BLE001  (the service is going away: nothing to wait for)
            return
        now, waiting = time.monotonic(), False
        for peer in map(str, range(1, jax.process_count())):
            value = values.get(peer)
            if peer in ended or value == _DONE:
                continue
            if value is not None and value.isdigit():
                if seen.get(peer, (None,))[0] != value:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] >= 3 * INTERVAL_S:
                    continue  # gone: its watchdog beats no more
            waiting = True  # running, leaving (failed, stopped) or not watched yet
        if not waiting:
            break
        time.sleep(INTERVAL_S)
    time.sleep(INTERVAL_S)


_BEFORE_FIRST_STEP = "before the first step"


def _when(step: int | None) -> str:
    """How a message places `step`, the step a process was at (None: before the first)."""
    return _BEFORE_FIRST_STEP if step is None else f"at step {step}"


def _failed(when: str, error: BaseException) -> str:
    """The value a process that failed on `error` publishes: its own step (`_when`) with it,
    which the others quote (theirs may be a step ahead)."""
    return f"{_FAILED}{when}: {_short(error)}"


def _read_failed(value: str, observer_when: str) -> tuple[str, str]:
    """A `_failed` value -> (when, `<Kind>: <message>`); `observer_when` for a value that
    names no step."""
    rest = value[len(_FAILED):]
    when, sep, what = rest.partition(": ")
    if sep and (when == _BEFORE_FIRST_STEP or re.fullmatch(r"at step \d+", when)):
        return when, what
    return observer_when, rest


def _short(error: BaseException) -> str:
    """`<Kind>: <first line of the message, at most 300 characters, "..." where cut>`; a
    SystemExit's message is hgmt.cli's line, `error: <Kind>: <message>`, whose kind is the
    one to name."""
    def cut(line: str) -> str:
        return line if len(line) <= 300 else line[:297] + "..."

    if isinstance(error, SystemExit) and isinstance(error.code, str):
        return cut((error.code.strip().removeprefix("error: ").splitlines() or [""])[0])
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {cut(lines[0])}" if lines else type(error).__name__


class PeerWatch:
    """The watchdog thread (multi-process runs only; inert otherwise). The trainer sets `step`
    as it goes; `lost` is the verdict once a peer is lost or failed (`error` its exception).
    `agreed`: the exceptions every process raises at the same step (a preemption), which end
    the watch as done, not as this process's failure."""

    grace_s = 3.0  # how long `_verdict` waits for the main thread to take the verdict

    def __init__(self, interval_s: float = INTERVAL_S,
                 agreed: tuple[type[BaseException], ...] = ()):
        global _prefix
        run = next(_runs)
        self.active = jax.process_count() > 1 and cluster.coordination_client() is not None
        self.timeout_s = cluster.job_heartbeat_timeout_s()
        self.interval_s, self.agreed = interval_s, agreed
        self.step: int | None = None
        self.lost: str | None = None
        self.error: PeerLost | None = None
        self.found = threading.Event()  # a verdict is in `lost`
        self.taken = threading.Event()  # the main thread raises it, or an error of its own
        self._stop = threading.Event()
        self._prefix = f"hgmt/alive/{run}/"
        if self.active:
            _prefix = self._prefix
        self._thread = threading.Thread(target=self._run, name="hgmt-peer-watch", daemon=True)

    def __enter__(self) -> PeerWatch:
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: types.TracebackType | None) -> None:
        if not self.active:
            return
        if exc is not None and not isinstance(exc, self.agreed):
            self.taken.set()  # the main thread ends on its own error: the watchdog must not
        self._stop.set()
        self._thread.join()
        value = self._final(exc)
        if value is not None:
            _leave(value)

    def _final(self, exc: BaseException | None) -> str | None:
        """What this process leaves in place of its counter: done (a normal end or an agreed
        stop), stopped (a lost or failed peer), failed (an error of its own); None when the
        watchdog found a lost peer and will end the process itself."""
        if exc is None or isinstance(exc, self.agreed):
            return None if self.found.is_set() else _DONE
        if isinstance(exc, PeerLost):
            return _STOPPED + _short(exc)
        return _failed(self._when(), exc)

    def _run(self) -> None:
        client, me, count = cluster.coordination_client(), jax.process_index(), jax.process_count()
        seen: dict[int, tuple[str, float]] = {}  # peer -> (counter, when it last moved)
        for beat in itertools.count(1):
            if self._stop.wait(self.interval_s):
                return
            now = time.monotonic()
            try:
                client.key_value_set(self._prefix + str(me), str(beat), allow_overwrite=True)
                values = {k.rsplit("/", 1)[-1]: v for k, v in
                          client.key_value_dir_get(self._prefix)}
            except Exception:  # noqa: BLE001  (the service is gone: JAX's client aborts the process)
                continue
            dead, failed = [], []
            for peer in range(count):
                value = values.get(str(peer))
                if peer == me or value is None or not value.isdigit():
                    if value is not None and value.startswith(_FAILED):
                        when, what = _read_failed(value, self._when())
                        failed.append(f"process {peer} failed {when}: {what}")
                    continue  # not started training yet, done with it, failed or stopped
                if peer not in seen or seen[peer][0] != value:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > self.timeout_s:
                    dead.append(peer)
            if failed:
                return self._verdict(PeerFailed(
                    f"{'; '.join(failed)}: this is process {me}, stopping. That process's "
                    f"error says what to fix; then rerun the job to resume from the last "
                    f"checkpoint"))
            if dead:
                return self._verdict(f"lost process(es) {', '.join(map(str, dead))} of {count}")

    def _when(self) -> str:
        return _when(self.step)

    def _verdict(self, found: str | PeerLost) -> None:
        """Records the verdict (a lost process, or a `PeerFailed`); when the main thread does
        not take it within `grace_s` (stuck in a hung collective) ends the process with it."""
        self.error = found if isinstance(found, PeerLost) else PeerLost(
            f"{found} {self._when()}: this is process {jax.process_index()}, stopping. Check "
            f"the lost process's log and the scheduler's events (preemption, OOM kill); rerun "
            f"the job to resume from the last checkpoint")
        self.lost = str(self.error)
        _leave(_STOPPED + _short(self.error))  # no more beats: process 0 must not count it gone
        self.found.set()
        if not self.taken.wait(self.grace_s):  # the main thread is stuck (a hung collective)
            exit_lost(self.error)


@contextlib.contextmanager
def watched(agreed: tuple[type[BaseException], ...] = ()) -> Iterator[PeerWatch]:
    """Runs a `PeerWatch` around training and turns a collective that failed because a peer
    died or failed into `PeerLost` or `PeerFailed` with the watchdog's verdict (waiting for
    it: at most the heartbeat timeout). Other errors, and every error of a single-process run,
    pass as they are; `agreed` as `PeerWatch`'s."""
    with PeerWatch(agreed=agreed) as watch:
        try:
            yield watch
        except jax.errors.JaxRuntimeError as e:
            if not watch.active:
                raise
            logging.info("a collective failed (%s); asking the watchdog which process is "
                         "lost", str(e)[:200])
            if not watch.found.wait(watch.timeout_s + 4 * watch.interval_s + 1):
                raise
            watch.taken.set()
            raise watch.error from e
