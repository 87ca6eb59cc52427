"""How Ctrl-C and SIGTERM end a command that writes partial files, once its cleanups have
run: in one line and the status a shell expects (`stops_in_one_line`,
`interrupted_in_one_line`, `sigterm_cleans_up`, `ctrl_c_is_the_stop`, `end_interrupted`), the
stop a library's wrapped error hides (`stop_behind`), a stop that reached another thread sent
on to the main one (`stops_reach_the_main_thread`), and a cleanup that holds them off
(`stop_signals_held`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from typing import NoReturn


@contextlib.contextmanager
def stops_in_one_line(command: bool) -> Iterator[None]:
    """SIGTERM and Ctrl-C end the block's command once its cleanups have run, in one line
    (`sigterm_cleans_up`, `interrupted_in_one_line`, `ctrl_c_is_the_stop`): with the console,
    `hgmt.console.stoppable_console`; alone, for a command whose console is set up otherwise
    (hgmt.report prints its own lines)."""
    with sigterm_cleans_up(), interrupted_in_one_line(command), ctrl_c_is_the_stop():
        yield


@contextlib.contextmanager
def interrupted_in_one_line(command: bool) -> Iterator[None]:
    """Ctrl-C while the block runs, as the process's own command (`command`): once the
    cleanups of partial files have run, one line and the shell's status 130, not Python's
    traceback; a caller in the same process (a notebook's interrupt) gets its
    KeyboardInterrupt."""
    try:
        yield
    except KeyboardInterrupt:
        if not command:
            raise
        ignore_further_interrupts()
        end_interrupted("interrupted (Ctrl-C); nothing partial was left behind")


EXIT_INTERRUPTED = 130  # a shell's status of a command SIGINT ended


def ignore_further_interrupts() -> None:
    """Ignores Ctrl-C from here on (in the main thread; elsewhere there is no handler to
    change): the first thing a command does once a Ctrl-C stopped it, so that a second one
    cannot cut its line short."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def end_interrupted(line: str) -> NoReturn:
    """Ends a command that Ctrl-C stopped, its cleanups done: `line` on stderr, then the
    process at once with status 130, a second Ctrl-C ignored from here. The logs and streams
    are flushed and the interpreter's exit is skipped (os._exit): JAX's atexit teardown of
    its backends, after a compilation Ctrl-C stopped, could crash the process (SIGSEGV) after
    the line, and a second Ctrl-C during it printed its traceback and ended the process by
    SIGINT instead of 130."""
    ignore_further_interrupts()
    end_at_once(line, EXIT_INTERRUPTED)


def end_at_once(line: str, status: int) -> NoReturn:
    """Ends the process with `line` on stderr and `status`, the logs and streams flushed,
    skipping the interpreter's exit (os._exit): no atexit teardown or progress bar's close
    runs after the line."""
    print(line, file=sys.stderr)
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(status)


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """While the block runs (in the main thread), Ctrl-C and SIGTERM are held, each sent
    again to this process once the block ends, where its handler then acts on it (a
    KeyboardInterrupt, `sigterm_cleans_up`'s unwinding, the default's end): for a cleanup
    that a second Ctrl-C must not cut short (a wait for workers, a partial folder's removal).
    Outside the main thread, where no handler can be set, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}

    def hold(signum: int, frame: types.FrameType | None) -> None:
        _handled(signum)
        held.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is not None:  # None: a handler not set from Python, kept
            previous[signum] = signal.signal(signum, hold)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)


# Runs of this module's stop handlers by signal (`_handled`), which `stops_reach_the_main_thread`
# compares with the signals delivered.
_HANDLED: dict[int, int] = {}
FORWARD_AFTER_S = 0.1  # a main thread that is awake runs a handler well within this


def _handled(signum: int) -> None:
    _HANDLED[signum] = _HANDLED.get(signum, 0) + 1


@contextlib.contextmanager
def stops_reach_the_main_thread() -> Iterator[None]:
    """While the block runs in the main thread, a Ctrl-C or SIGTERM that the system delivered
    to another thread (a library's: Beam's, gRPC's) is sent on to the main thread where its
    handler has not run there within `FORWARD_AFTER_S`: Python runs a signal's handler in the
    main thread only, once that thread wakes, and a main thread that waits without a time
    limit for workers the same signal ended (Beam's DirectRunner, its results' futures)
    never wakes. A thread reads the signals delivered from the signal module's wakeup fd
    (`signal.set_wakeup_fd`) and compares them with the runs of this module's handlers
    (`ctrl_c_is_the_stop`, `sigterm_cleans_up`, `stop_signals_held`); each signal is sent on
    at most once. Where the wakeup fd is another's (an asyncio loop's), or outside the main
    thread, the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except (ValueError, OSError):
        previous = None
    if previous != -1:  # another's, kept; or none could be set
        if previous is not None:
            signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        yield
        return
    stops = {int(signal.SIGINT), int(signal.SIGTERM)}
    main = threading.main_thread().ident
    echoes: dict[int, int] = {}  # sent on by the watcher, read back from the wakeup fd

    def watch() -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)  # never this thread's to handle
        delivered = dict(_HANDLED)  # as handled so far: only the signals from here count
        while data := os.read(read_end, 64):
            for signum in (b for b in data if b in stops):
                if echoes.get(signum):
                    echoes[signum] -= 1
                    continue
                delivered[signum] = delivered.get(signum, 0) + 1
                threading.Event().wait(FORWARD_AFTER_S)
                if _HANDLED.get(signum, 0) < delivered[signum] and callable(
                        signal.getsignal(signum)):
                    echoes[signum] = echoes.get(signum, 0) + 1
                    delivered[signum] = _HANDLED.get(signum, 0) + 1  # the run it asks for
                    signal.pthread_kill(main, signum)

    watcher = threading.Thread(target=watch, name="stops_reach_the_main_thread", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        current = signal.set_wakeup_fd(-1)
        if current != write_end:  # set since by the block's code: kept
            signal.set_wakeup_fd(current)
        os.close(write_end)  # the watcher reads the end of the pipe and ends
        watcher.join(timeout=1)
        if not watcher.is_alive():
            os.close(read_end)


def stop_behind(error: BaseException) -> BaseException | None:
    """The stop that `error` is, or that a RuntimeError wraps (through its `__cause__`, or
    its `__context__` where not suppressed, followed down RuntimeErrors only): a Ctrl-C's
    KeyboardInterrupt or SIGTERM's unwinding (`sigterm_cleans_up`); None for another error.
    Apache Beam's DirectRunner raises a RuntimeError naming the step in place of what
    stopped the step's code; the stop itself is what its handlers must see. Another error
    raised while a stop was handled (a cleanup's) is that error, not the stop."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, (KeyboardInterrupt, _Terminated)):
            return error
        if not isinstance(error, RuntimeError):
            return None
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


class _SentAgain:
    """A stop signal whose exception Python dropped, raised inside a callback it cannot raise
    from (JAX's garbage-collection callback; Python prints it as `Exception ignored in`):
    sent again to the main thread from another thread (`send`), so that its handler runs
    again in the main thread's code outside the callback. `pending` until a handler takes it
    (`taken`)."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.timers: list[threading.Timer] = []

    def send(self) -> None:
        self.timers.append(threading.Timer(0.01, signal.pthread_kill, (
            threading.main_thread().ident, self.signum)))
        self.timers[-1].start()

    @property
    def pending(self) -> bool:
        return bool(self.timers)

    def taken(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()


@contextlib.contextmanager
def ctrl_c_is_the_stop() -> Iterator[None]:
    """While the block runs, once a Ctrl-C has raised its KeyboardInterrupt (Python's default
    handler, or another that raises it), any error that leaves the block is that
    KeyboardInterrupt, as `sigterm_cleans_up` has it for SIGTERM: C code it was raised in may
    raise its own error in its place (a C extension's import, array_record's, raises
    ImportError), which would end a command in a traceback in place of its Ctrl-C line. A
    KeyboardInterrupt raised inside a garbage-collection callback (JAX's), which Python drops,
    is raised again outside it (`_SentAgain`), or at the block's end where the block ended
    first: the command would otherwise run on to its end as if no Ctrl-C had come. Where
    Ctrl-C has no handler in Python (ignored: a command started in the background) or outside
    the main thread, the block runs as it is."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or not callable(previous):
        yield
        return
    received: list[int] = []
    again = _SentAgain(signal.SIGINT)

    def recorded(signum: int, frame: types.FrameType | None) -> None:
        _handled(signum)
        again.taken()
        try:
            previous(signum, frame)
        except KeyboardInterrupt:
            received.append(signum)
            raise

    def swallowed(unraisable: sys.UnraisableHookArgs) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt) and received:
            again.send()
        else:
            hook(unraisable)

    signal.signal(signal.SIGINT, recorded)
    hook, sys.unraisablehook = sys.unraisablehook, swallowed
    try:
        yield
        if again.pending:  # the block ended before the Ctrl-C sent again reached it
            again.taken()
            raise KeyboardInterrupt
    except BaseException as e:
        if not received or isinstance(e, KeyboardInterrupt):
            raise
        raise KeyboardInterrupt from None  # not the error the stop became
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGINT, previous)


class _Terminated(BaseException):
    """SIGTERM arrived while `sigterm_cleans_up` held: unwinds the stack like Ctrl-C."""


@contextlib.contextmanager
def sigterm_cleans_up() -> Iterator[None]:
    """While the block runs, SIGTERM (`kill`, a scheduler's cancel) unwinds the stack as Ctrl-C
    does, so that the cleanups of partial files (`except BaseException`, `finally`) run; the
    process then dies of SIGTERM as it would have (status -15 to its parent), whatever error
    the unwinding became on its way out. Python's default leaves SIGTERM to kill the process
    where it stands. Where SIGTERM is not at that default
    (a caller's handler, a notebook's, an ignore) or outside the main thread, where Python
    sets no handler, the block runs as it is."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL):
        yield
        return

    again = _SentAgain(signal.SIGTERM)  # a SIGTERM whose unwinding Python dropped
    received: list[int] = []  # SIGTERM's handler ran

    def unwind(signum: int, frame: types.FrameType | None) -> NoReturn:
        _handled(signum)
        again.taken()
        received.append(signum)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a repeated one waits for the cleanup
        raise _Terminated()

    def swallowed(unraisable: sys.UnraisableHookArgs) -> None:
        # Dropped, the command would run on with SIGTERM ignored.
        if isinstance(unraisable.exc_value, _Terminated):
            signal.signal(signal.SIGTERM, unwind)
            again.send()
        else:
            hook(unraisable)

    previous, hook = signal.signal(signal.SIGTERM, unwind), sys.unraisablehook
    sys.unraisablehook = swallowed
    try:
        yield
        if again.pending:  # the block ended before the SIGTERM sent again reached it
            again.taken()
            raise _Terminated()
    except BaseException as e:
        # Once SIGTERM was handled, what leaves the block is its unwinding, whatever it became
        # on the way: C code it was raised in may replace it (TensorFlow's tracing raises a
        # TypeError), a handler may turn it into an error's exit.
        if not (isinstance(e, _Terminated) or received):
            raise
        print("stopped by SIGTERM; nothing partial was left behind", file=sys.stderr,
              flush=True)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        sys.unraisablehook = hook
        signal.signal(signal.SIGTERM, previous)
