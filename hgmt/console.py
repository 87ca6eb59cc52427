"""A command's console: which log lines it shows and how (`console`: hgmt's own progress and
results, everyone's warnings, the rest with --verbosity=1, `UserLines`; the `extra=` marks
`VERBOSE` and `EVERY_PROCESS`; `show_progress` for the processes of a multi-host job other than
0); `stoppable_console`, the console of a command that Ctrl-C and SIGTERM end in one line
(`hgmt.stops`); TensorFlow's start-up lines kept off it (`quiet_tensorflow`). The flags that
set it up are `hgmt.cli`'s.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator

from hgmt import disk_space, stops


def hms(seconds: float) -> str:
    """A duration as H:MM:SS for a progress line (whole seconds, rounded down)."""
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# `extra=` of a log line that only --verbosity=1 shows (`UserLines` drops it otherwise).
VERBOSE = {"hgmt_verbose": True}
# The `extra` of an INFO line about this process itself, shown on every process of a
# multi-host job (`show_progress`), where the others repeat process 0's.
EVERY_PROCESS = {"hgmt_every_process": True}
_HGMT_DIR = os.path.dirname(os.path.abspath(__file__))


# Whether the console shows hgmt's INFO lines (`show_progress`): not on the processes other
# than 0 of a multi-host job, whose progress is process 0's.
_progress_shown = True


def show_progress(shown: bool) -> None:
    """Shows or hides hgmt's INFO lines (progress, ETA, results) on the console from now until
    the command's `console` block ends; its warnings and errors show either way."""
    global _progress_shown
    _progress_shown = shown


class UserLines(logging.Filter):
    """Keeps hgmt's own INFO lines (progress, ETA, results; unless `show_progress(False)`,
    but for those logged with `extra=EVERY_PROCESS`) and everyone's warnings; the INFO
    chatter of orbax, TFDS and JAX, hgmt's verbose lines (logged with `extra=VERBOSE`, e.g.
    XLA's out-of-memory dump), and the errors (with tracebacks) orbax logs from its threads
    when a write fails on a full disk, which the command's own DiskFull line reports, or
    that a library logs of a Ctrl-C that interrupted it (orbax's wait for a checkpoint
    write, cut short by a second Ctrl-C during the first one's cleanup), which the command's
    own line reports, and the warnings of `_CHATTER`, show only with --verbosity=1."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Whether `record` shows on the console."""
        if getattr(record, "hgmt_verbose", False):
            return False
        if record.pathname.startswith(_HGMT_DIR):
            return (_progress_shown or record.levelno >= logging.WARNING
                    or getattr(record, "hgmt_every_process", False))
        if _is_chatter(record):
            return False
        error = record.exc_info[1] if record.exc_info else None
        if record.levelno >= logging.ERROR and (
                disk_space.is_disk_full(error) or isinstance(error, KeyboardInterrupt)
                or disk_space.is_disk_full(Exception(record.getMessage()))):
            return False
        return record.levelno >= logging.WARNING


# Warnings of libraries that tell the user nothing the command's own lines do not: (a part of
# the logging file's path, the start of the message's format). Orbax's "Reached preemption
# sync point, step=S", logged up to three times on each process of a multi-host run that a
# signal stops, where hgmt's `preempted: saved a checkpoint at step S ...` follows.
_CHATTER = (("orbax/checkpoint/", "[process=%s][thread=%s] Reached preemption sync point"),)


def quiet_tensorflow() -> None:
    """TensorFlow's C++ start-up lines kept off the console of a command that imports it (an
    export to SavedModel, a dataset build, an object store's files; hgmt only reads and writes
    files and SavedModels with it): no C++ INFO lines, and no oneDNN CPU kernels, whose
    start-up line is logged whatever the level. Only where the environment does not set them
    already, and only for a TensorFlow imported after the call."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def _is_chatter(record: logging.LogRecord) -> bool:
    """Whether `record` is one of the `_CHATTER` warnings (shown with --verbosity=1 only)."""
    path, message = record.pathname.replace(os.sep, "/"), str(record.msg)
    return any(part in path and message.startswith(start) for part, start in _CHATTER)


class LevelNamed(logging.Formatter):
    """A console line as the message alone, a warning's and an error's led by "warning: " and
    "error: " as the commands' own printed ones are."""

    def format(self, record: logging.LogRecord) -> str:
        """`record`'s console line."""
        line = super().format(record)
        if record.levelno >= logging.ERROR:
            return "error: " + line
        return "warning: " + line if record.levelno >= logging.WARNING else line


@contextlib.contextmanager
def console(verbosity: int, *, command: bool, line_format: str | None = None,
            date_format: str | None = None) -> Iterator[None]:
    """A command's console while the block runs: the root logger at INFO, its lines in
    `line_format` on stderr (default: `LevelNamed`'s), showing `user_lines`. As the
    process's own command (`command`: its `main` called without argv) the handlers are set
    up anew, since an import may have given the root logger Python's default one
    ("WARNING:root:..."; absl does when it logs before anything is set up, as orbax's import
    makes it), and the filter stays (`user_lines`' keep); a caller of `main` in the same
    process (a test, a notebook) keeps its handlers, and gets its root logger's level and
    handlers back as they were when the block ends.
    The command's stdout and stderr then write a file name that is not UTF-8 (Python's
    surrogate escapes of a Latin-1 name) as its bytes, where a strict UTF-8 stream would
    raise after the work was done."""
    if command:
        for stream in (sys.stdout, sys.stderr):
            if hasattr(stream, "reconfigure"):
                stream.reconfigure(errors="surrogateescape")
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    fresh = command or not handlers
    logging.basicConfig(format=line_format or "%(message)s", datefmt=date_format, force=command)
    if fresh and line_format is None:
        for handler in root.handlers:
            handler.setFormatter(LevelNamed())
    root.setLevel(logging.INFO)
    try:
        with user_lines(verbosity, keep=command):
            yield
    finally:
        show_progress(True)
        if not command:  # a caller's logging as it was: its level, its handlers alone
            root.setLevel(level)
            for handler in [h for h in root.handlers if h not in handlers]:
                root.removeHandler(handler)


@contextlib.contextmanager
def early_lines(*, command: bool) -> Iterator[None]:
    """The lines logged while the block runs, before the command's `console` is set up (the
    warnings of reading a workdir's config.json as its flags are parsed), in the console's
    format (`LevelNamed`, `UserLines`) on stderr: as the process's own command (`command`)
    in place of the handler an import may have given the root logger (Python's default,
    "WARNING:root:..."), and for a caller of `main` in the same process whose root logger has
    no handler (where logging would otherwise set up that default one and leave it); a
    caller's own handlers (a test's, a notebook's) take them as they are. The root logger's
    handlers are as they were after the block."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    if handlers and not command:
        yield
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LevelNamed())
    handler.addFilter(UserLines())
    root.handlers = [handler]
    try:
        yield
    finally:
        root.handlers = handlers


@contextlib.contextmanager
def user_lines(verbosity: int, *, keep: bool = False) -> Iterator[None]:
    """The console's handlers (the root logger's) show `UserLines` only, unless `verbosity`
    >= 1, while the block runs; with `keep` the filter stays after it (a command's process,
    which may log the failed writes of a full disk while it exits), else the handlers are
    given back as they were (a caller of `main` in the same process: a test, a notebook)."""
    quiet = UserLines()
    handlers = list(logging.getLogger().handlers) if verbosity < 1 else []
    for handler in handlers:
        handler.addFilter(quiet)
    try:
        yield
    finally:
        for handler in handlers if not keep else ():
            handler.removeFilter(quiet)


@contextlib.contextmanager
def stoppable_console(verbosity: int, *, command: bool) -> Iterator[None]:
    """`console` for a command that writes partial files (hgmt.evaluate, predict, export) or
    reads for long (hgmt.data.check): SIGTERM and Ctrl-C end it once their cleanups have run,
    in one line (`hgmt.stops.stops_in_one_line`)."""
    with console(verbosity, command=command), stops.stops_in_one_line(command):
        yield
