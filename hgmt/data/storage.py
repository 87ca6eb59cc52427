"""A built split's storage failing for a moment or for good: reads tried again, faults named.

A read that fails with an I/O error (an NFS timeout, an object store's 503) or a refused access
is not damage: `with_retries` makes it again after each of `RETRY_DELAYS_S`, so that a passing
error does not replace a good record (`record_reads.read`), and one that lasts, or a refused
access (`storage_fault`), stops the run as the storage's (`StorageFault`, naming the file:
nothing to rebuild), never counted as damaged. Opening a shard or a split's metadata is tried
again alike (`hgmt.data.shards`, `builds.open_split`). The split's faults of storage
(`SplitFault`, `StorageFault`) are defined here, below the modules that raise them, and
`hgmt.data.shards` gives them with its own.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from typing import TypeVar

# The waits before reading a record again after an I/O error that may pass (an NFS server
# timing out, an object store's 503): a record is judged damaged only when every one of these
# len + 1 reads fails. A checksum or decode error is judged at once.
RETRY_DELAYS_S = (0.5, 2.0)
# array_record reports an I/O error as a RuntimeError naming the failed call and the errno's
# text ("pread() failed: Input/output error; reading <shard>"); other readers raise OSError.
_IO_ERRNOS = (errno.EIO, errno.ESTALE, errno.ETIMEDOUT, errno.EAGAIN, errno.EINTR,
              errno.ECONNRESET, errno.ECONNABORTED, errno.ENETUNREACH, errno.EHOSTUNREACH)
_IO_FAILED = tuple(f"failed: {os.strerror(code)}" for code in _IO_ERRNOS)
# array_record's report of a refused access: the storage's permissions, not the file's content.
_ACCESS_FAILED = tuple(f"failed: {os.strerror(code)}" for code in (errno.EACCES, errno.EPERM))
T = TypeVar("T")


class SplitFault(RuntimeError):
    """A built split cannot be read as it is; the message names the file, why and the fix."""


class StorageFault(SplitFault):
    """The storage that holds a built split does not give its files (an I/O error that lasted
    past the retries, a refused access): not damage, nothing to rebuild."""

    @classmethod
    def of(cls, what: str, gave_up: GaveUp, data_dir: str) -> StorageFault:
        """The error for `what` (e.g. 'dataset shard <path>') that the storage under
        `data_dir` did not give: `gave_up`'s last error (`storage_fault`), after its
        retries."""
        tries = f"; tried {gave_up.tries} times" if gave_up.tries > 1 else ""
        return cls(
            f"{what} cannot be read from its storage ({gave_up}{tries}): an I/O error or a "
            f"refused access (a network file system or object store not answering, a stale "
            f"mount, permissions), not damage: nothing needs rebuilding. Check that "
            f"{data_dir} is reachable and readable from this host and run the command again")


def transient(error: Exception) -> bool:
    """Whether a failed read may succeed when tried again: an I/O error (an OSError, or
    array_record's report of one), not damage such as a checksum mismatch."""
    return isinstance(error, OSError) or any(words in str(error) for words in _IO_FAILED)


def storage_fault(error: Exception) -> bool:
    """Whether a failed open or read is the storage's, not the file's: an I/O error
    (`transient`) or a refused access, as opposed to a missing file or damage (a checksum
    mismatch, a file too short to be array_record)."""
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return False
    return transient(error) or any(words in str(error) for words in _ACCESS_FAILED)


class GaveUp(Exception):
    """What `with_retries` raises when its call still fails: the last `error` and how many
    times the call was made (`tries`)."""

    def __init__(self, error: Exception, tries: int):
        super().__init__(f"{type(error).__name__}: {str(error)[:200]}")
        self.error, self.tries = error, tries


def with_retries(call: Callable[[], T], what: str) -> T:
    """`call()`, made again after each of `RETRY_DELAYS_S` while it fails with an I/O error
    that may pass (`transient`), each failure logged naming `what`; GaveUp with the last
    error when it still fails, at once for any other error (damage is judged at once)."""
    delays = list(RETRY_DELAYS_S)
    tries = 0
    while True:
        tries += 1
        try:
            return call()
        except Exception as e:  # noqa: BLE001  (riegeli raises RuntimeError, OSError, ...)
            if not (delays and transient(e)):
                raise GaveUp(e, tries) from e
            delay = delays.pop(0)
            logging.warning("%s failed (%s: %s); trying again in %.1f s", what,
                            type(e).__name__, str(e)[:200], delay)
            time.sleep(delay)
