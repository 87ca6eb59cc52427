"""A full disk or quota while a run writes its files: one error naming the path and the space left.

A full filesystem (ENOSPC) or an exhausted quota (EDQUOT) surfaces in many forms: an OSError
from Python's own writes, tensorstore's "RESOURCE_EXHAUSTED: ... No space left on device
[os_error_code='28']" (a ValueError) from orbax's checkpoint threads, re-raised at the next
call, or the errors of TensorFlow's file systems (an object store reached through them).
`is_disk_full` recognises all of them (the whole exception chain), and `reported` turns them
into `DiskFull` naming what was being written, where, and how much space is left.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from etils import epath

from hgmt.paths import absolute, is_url

_CODES = (errno.ENOSPC, errno.EDQUOT)
_WORDS = ("No space left on device", "Disk quota exceeded", "os_error_code='28'",
          "os_error_code='122'")
_THEN = "Free space (or raise the quota) and rerun"
# The errors of a folder that cannot be written there, whatever the space: a read-only file
# system, no permission, a file in the way of a folder.
UNWRITABLE_CODES = frozenset({errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR})


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
def reported(path: str, what: str, then: str = _THEN,
             cleanup: Callable[[], str] | None = None, measured: str = "") -> Iterator[None]:
    """Turns a full disk or quota raised inside into `DiskFull`: 'cannot write `what` to
    `path`: ...'. `cleanup()` runs first (e.g. removes a partial file) and returns a sentence
    for the message; `then` says what to do. The space left is measured after `cleanup()`;
    `measured` says when it was where an earlier cleanup freed space the write had taken (e.g.
    'once the build had stopped')."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if not is_disk_full(e):
            raise
        done = cleanup() if cleanup else ""
        space = " ".join(filter(None, (space_left(path), "on it", measured)))
        raise DiskFull(errno.ENOSPC, f"cannot write {what} to {path}: the disk or quota is "
                       f"full ({space}). {done}{' ' if done else ''}{then} "
                       f"({type(e).__name__}: {str(e)[:300]})") from e


def write_atomically(path: str, write: Callable[[Any], None], mode: str = "w", *,
                     then: str = _THEN) -> None:
    """Writes a file through `write(f)` into `path`.tmp, synced, then renames it (see
    `write_together`, which a power loss cannot leave empty either): a full disk leaves
    no partial file (the temporary one is removed) and raises `DiskFull` naming `path`, with
    `then` saying what to do. In an object store (`hgmt.paths.is_url`) the object is written
    directly: it appears whole when the write ends, or not at all."""
    write_together([(path, write, mode)], then=then)


def write_together(files: Sequence[tuple[str, Callable[[Any], None], str]], *,
                   then: str = _THEN) -> None:
    """Writes the files (path, write, mode) as one output: each through its `write(f)` into
    `<path>.tmp`, and only once all are written are they renamed into place. A full disk
    leaves none of them changed (every temporary is removed) and raises `DiskFull` naming the
    file it stopped at, with `then` saying what to do. A file in an object store
    (`hgmt.paths.is_url`) is written directly: whole when its write ends, or not at all.

    Each local file's data is synced before its rename and its folder after it, so that a
    power loss leaves the old file or the new one whole: without the first sync a filesystem
    may keep the rename but not yet the data, and the file comes back empty."""
    staged = [(path, write, mode, path if is_url(path) else f"{path}.tmp")
              for path, write, mode in files]

    def remove() -> str:
        for path, _, _, tmp in staged:
            if tmp != path:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(tmp)
        return "Nothing partial was left behind."

    for path, write, mode, tmp in staged:
        with reported(path, "the file", then, cleanup=remove):
            try:
                with (epath.Path(tmp).open(mode) if tmp == path else open(tmp, mode)) as f:
                    write(f)
                    if tmp != path:
                        f.flush()
                        os.fsync(f.fileno())
            except BaseException:
                remove()
                raise
    for path, _, _, tmp in staged:
        if tmp != path:
            with reported(path, "the file", then, cleanup=remove):
                try:
                    os.replace(tmp, path)
                except BaseException:  # a folder there, a permission: no temporary left
                    remove()
                    raise
    _sync_folders([path for path, _, _, tmp in staged if tmp != path])


def rename_together(staged: Sequence[tuple[str, str]]) -> None:
    """Renames each local file (staged, path) into place as one output: every staged file's
    data synced first and the folders after, so that a power loss leaves the old files or the
    new ones whole (`write_together`, for files written elsewhere, e.g. streamed)."""
    for tmp, _ in staged:
        _sync_file(tmp)
    for tmp, path in staged:
        os.replace(tmp, path)
    _sync_folders([path for _, path in staged])


def rename_folder(staged: str, path: str) -> None:
    """Renames the local folder `staged`, written whole elsewhere (an export's), to `path`,
    which must be missing or an empty folder (else OSError EEXIST or ENOTEMPTY): its files'
    data and its folders are synced first and `path`'s parent after, so that a power loss
    leaves the whole folder at `path` or none."""
    _sync_tree(staged)
    os.rename(staged, path)
    _sync_folders([path])


def move_into(staged: str, path: str, last: str) -> None:
    """Moves the entries of the local folder `staged`, written whole elsewhere (an export's),
    into the existing empty folder `path`, which keeps its own mode, owner and access lists
    (and may be the current folder), the entry named `last` moved last, so that `path` without
    it is incomplete; then removes `staged`. Synced as `rename_folder` syncs. OSError ENOTEMPTY
    where `path` holds anything, or where a move fails (the entries moved are moved back)."""
    if os.listdir(path):
        raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), path)
    _sync_tree(staged)
    names = sorted(os.listdir(staged), key=lambda name: name == last)
    moved: list[str] = []
    try:
        for name in names:
            if name == last:
                _sync_folder(path)  # the others durable before the entry that completes it
            os.rename(os.path.join(staged, name), os.path.join(path, name))
            moved.append(name)
    except BaseException:
        for name in reversed(moved):
            os.rename(os.path.join(path, name), os.path.join(staged, name))
        raise
    _sync_folder(path)
    os.rmdir(staged)


def _sync_tree(folder: str) -> None:
    """Makes the files of the local `folder`, written and closed elsewhere, and its folders
    durable, the folders after their entries."""
    for root, _, files in os.walk(folder):
        for name in files:
            _sync_file(os.path.join(root, name))
    for root, _, _ in os.walk(folder, topdown=False):
        _sync_folder(root)


def _sync_file(path: str) -> None:
    """Makes the data of the local file `path`, written and closed elsewhere, durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_folders(paths: Sequence[str]) -> None:
    """`_sync_folder` of each local folder the files `paths` were renamed into, once each."""
    for folder in sorted({os.path.dirname(os.path.abspath(path)) for path in paths}):
        _sync_folder(folder)


def _sync_folder(folder: str) -> None:
    """Makes the renames and new files in the local `folder` durable (fsync of the folder);
    a filesystem that cannot sync a folder (EINVAL, e.g. some network and FUSE ones) keeps its
    own order."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def append_line(path: str, line: str, what: str) -> None:
    """Appends `line` and a newline to the text file `path` (`what` it holds, for a full-disk
    error). A line counts once its newline is written: a last line without one (an append cut
    short by a kill or a power loss) is removed first, so the new line starts on its own. On a
    full disk the file is cut back to its size before the append: no partial line stays. An
    object store cannot append: the object is written again, old lines first, and appears
    whole or not at all."""
    if not is_url(path):
        _append_local(path, (line + "\n").encode(), what)
        return
    with reported(path, what):
        file = epath.Path(path)
        old = file.read_text() if file.exists() else ""
        file.write_text(complete_lines(old, path) + line + "\n")


def complete_lines(text: str, path: str) -> str:
    """`text` up to its last newline: without a torn last line (logged, naming `path`)."""
    end = text.rfind("\n") + 1
    if end < len(text):
        logging.warning("%s ends in a partial line (%d characters without a newline: an append "
                        "cut short); it is left out", path, len(text) - end)
    return text[:end]


def _append_local(path: str, data: bytes, what: str) -> None:
    """`append_line` on a local file: written and synced (a network filesystem may report a
    full disk only then), or cut back to where it started."""
    cut = []  # whether the file was cut back, for the message

    def cut_back() -> str:
        return "Nothing partial was left behind." if cut else ""

    with reported(path, what, cleanup=cut_back):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            start = _without_torn_tail(fd, path)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            except BaseException:
                os.ftruncate(fd, start)
                cut.append(True)
                raise
        finally:
            os.close(fd)


def _without_torn_tail(fd: int, path: str) -> int:
    """Cuts the open file `fd` after its last newline when its last line has none (torn by an
    append cut short) -> its size then: where the next line starts."""
    size = end = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    while end > 0:  # backwards, a block at a time, to the last newline
        begin = max(0, end - 65536)
        newline = os.pread(fd, end - begin, begin).rfind(b"\n")
        if newline >= 0:
            end = begin + newline + 1
            break
        end = begin
    logging.warning("%s ends in a partial line (%d bytes without a newline: an append cut "
                    "short); it is removed before appending", path, size - end)
    os.ftruncate(fd, end)
    return end


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a write may write part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class CheckedWriter:
    """A summary writer (`hgmt.training.summary_writer`' interface) whose full-disk errors,
    raised in its calls, become `DiskFull` naming the workdir."""

    def __init__(self, writer: Any, workdir: str):
        self._writer, self._workdir = writer, workdir

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._writer, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            with reported(self._workdir, "the TensorBoard summaries",
                          "Free space (or raise the quota) and rerun the same command: it "
                          "resumes from the last checkpoint"):
                return attr(*args, **kwargs)
        return call
