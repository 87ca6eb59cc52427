"""A full disk or quota while a run writes its files: one error naming the path and the space left.

A full filesystem (ENOSPC) or an exhausted quota (EDQUOT) surfaces in many forms: an OSError
from Python's own writes, tensorstore's "RESOURCE_EXHAUSTED: ... No space left on device
[os_error_code='28']" (a ValueError) from orbax's checkpoint threads, or TensorFlow's and
TensorBoard's writer errors, often raised in a background thread and re-raised at the next
call. `is_disk_full` recognises all of them (the whole exception chain), and `reported` turns
them into `DiskFull` naming what was being written, where, and how much space is left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Callable, Iterator
from typing import Any

from etils import epath

from hgmt.paths import absolute, is_url

_CODES = (errno.ENOSPC, errno.EDQUOT)
_WORDS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'",
          "os_error_code='122'")


class DiskFull(OSError):
    """A run's file could not be written: its disk or quota is full. The message names the
    file or folder, the space left, and what to do."""


def is_disk_full(error: BaseException | None) -> bool:
    """Whether `error`, or an exception it was raised from, is a full disk or quota."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _CODES:
            return True
        if any(word in str(error) for word in _WORDS):
            return True
        error = error.__cause__ or error.__context__
    return False


def space_left(path: str) -> str:
    """The free space of the filesystem holding `path` (or its nearest existing parent), for
    messages: e.g. '1.2 MiB free'."""
    if is_url(path):
        return "an object store: free space not known"
    path = absolute(path)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        free = shutil.disk_usage(path).free
    except OSError:
        return "free space unknown"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if free >= size:
            return f"{free / size:.1f} {unit} free"
    return f"{free} bytes free"


@contextlib.contextmanager
def reported(path: str, what: str, then: str = "Free space (or raise the quota) and rerun",
             cleanup: Callable[[], str] | None = None) -> Iterator[None]:
    """Turns a full disk or quota raised inside into `DiskFull`: 'cannot write `what` to
    `path`: ...'. `cleanup()` runs first (e.g. removes a partial file) and returns a sentence
    for the message; `then` says what to do."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        done = cleanup() if cleanup else ""
        raise DiskFull(errno.ENOSPC, f"cannot write {what} to {path}: the disk or quota is "
                       f"full ({space_left(path)} on it). {done}{' ' if done else ''}{then} "
                       f"({type(e).__name__}: {str(e)[:300]})") from e


def write_atomically(path: str, write: Callable[[Any], None], mode: str = "w") -> None:
    """Writes a file through `write(f)` into `path`.tmp, then renames it: a full disk leaves
    no partial file (the temporary one is removed) and raises `DiskFull` naming `path`. In an
    object store (`hgmt.paths.is_url`) the object is written directly: it appears whole when
    the write ends, or not at all."""
    if is_url(path):
        with reported(path, "the file"), epath.Path(path).open(mode) as f:
            write(f)
        return
    tmp = f"{path}.tmp"

    def remove() -> str:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        return "Nothing partial was left behind."

    with reported(path, "the file", cleanup=remove):
        try:
            with open(tmp, mode) as f:
                write(f)
        except BaseException:
            remove()
            raise
        os.replace(tmp, path)


def append_line(path: str, line: str, what: str) -> None:
    """Appends `line` and a newline to the text file `path` (`what` it holds, for a full-disk
    error). An object store cannot append: the object is written again, old lines first."""
    with reported(path, what):
        if not is_url(path):
            with open(path, "a") as f:
                f.write(line + "\n")
            return
        file = epath.Path(path)
        old = file.read_text() if file.exists() else ""
        file.write_text(old + line + "\n")


class CheckedWriter:
    """A summary writer (`hgmt.training.summary_writer`' interface) whose full-disk errors, raised
    in its call or re-raised there from its background thread, become `DiskFull` naming the
    workdir."""

    def __init__(self, writer: Any, workdir: str):
        self._writer, self._workdir = writer, workdir

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            with reported(self._workdir, "the TensorBoard summaries",
                          "Free space (or raise the quota) and rerun the same command: it "
                          "resumes from the last checkpoint"):
                return attr(*args, **kwargs)
        return call
