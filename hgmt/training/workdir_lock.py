"""A workdir lock: one trainer per workdir, held by process 0 of a job for the whole run.

`<workdir>/hgmt.lock` is created with O_CREAT|O_EXCL (atomic on local filesystems and on
NFSv3+ and Lustre, the shared filesystems clusters use) and holds the holder's host, pid, Slurm
job id and restart count, and where Linux shows them the boot id and PID namespace; a trainer
that cannot write that into the file it created removes the file again (on a full disk, where
creating an empty file still succeeds, with `disk_space.DiskFull` naming it). While
training, a daemon thread refreshes its mtime every `REFRESH_S` seconds. A trainer that finds
the lock stops at once, naming the holder, unless the lock is stale:

- the holder ran on this host, in this boot and PID namespace, and its pid is gone (a
  `kill -9`, a crash). The hostname alone does not tell: containers with `--network=host`
  share the node's hostname but not its PIDs, so a live holder's pid may be absent here. A
  holder whose boot id or PID namespace differs or is unknown (unreadable, or a lock of an
  hgmt that did not record them, which may still be running) is judged by the timeout: the
  trainer is refused until then, or
- the holder is an earlier run of this same Slurm job (same SLURM_JOB_ID, lower
  SLURM_RESTART_COUNT: a requeued job whose previous run was killed), or
- its mtime has not been refreshed for `STALE_S` seconds (a holder on another host that died;
  this assumes the hosts' clocks agree to well under `STALE_S`).

A stale lock is moved aside by an atomic rename (of several racing reruns, one wins) and
replaced. The rename moves whatever lock is at the path then: when it is not the file judged
stale (same inode, mtime and content; another rerun took over in between), it is put back
(a hard link, which never replaces a lock created meanwhile) and the trainer finds that live
holder. The lock names its holder with a random token, so every holder's lock differs.

Each refresh first checks the lock is still this trainer's. The lock is lost, and `check()`
(called by the trainer every step) raises `WorkdirLockLost`, when another holder's lock is in
its place, or when the refresh fails `MAX_FAILED_REFRESHES` times in a row (the file removed,
an I/O error of the filesystem): another trainer could then take the workdir `STALE_S`
seconds after the last refresh, so the trainer stops well before that. The lock is removed
on `release()`, and also when `hgmt.training.peers` ends a multi-host process with os._exit,
which skips `finally` blocks (its watchdog, when the main thread is stuck in a hung
collective): the held lock registers its release with `peers.before_exit`. Object-store workdirs
(gs://, s3://) have no atomic create: no lock is taken there.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from hgmt import disk_space, paths, workdirs
from hgmt.training import peers

REFRESH_S = 20.0
STALE_S = 90.0
MAX_FAILED_REFRESHES = 2  # in a row: the lock is lost (40 s without refresh, stale at 90 s)


class WorkdirLocked(RuntimeError):
    """Another live trainer holds the workdir."""


class WorkdirUnusable(OSError):
    """The workdir cannot be made a folder: a file of that name, no permission."""


class WorkdirLockLost(WorkdirLocked):
    """The trainer's own lock was taken over, removed or could not be refreshed while it ran."""


BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"
PID_NAMESPACE_LINK = "/proc/self/ns/pid"


def _boot_id() -> str | None:
    """This host's boot id (Linux), None where it cannot be read."""
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _pid_namespace() -> str | None:
    """This process's PID namespace, e.g. 'pid:[4026531836]' (Linux), None where unreadable."""
    try:
        return os.readlink(PID_NAMESPACE_LINK)
    except OSError:
        return None


def _identity() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "boot_id": _boot_id(), "pid_ns": _pid_namespace(),
            "job": os.environ.get("SLURM_JOB_ID"),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "token": os.urandom(8).hex()}  # this holder's, whatever its host and pid


def _snapshot(path: str) -> tuple[int, int, int, bytes]:
    """(device, inode, mtime in ns, content) of the file `path`: what tells one lock file from
    another (a new file may get a freed inode number, but not also its mtime and content)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        return st.st_dev, st.st_ino, st.st_mtime_ns, f.read()


def _holder(content: bytes) -> dict:
    """The holder a lock file's `content` names; {} for none (a holder between creating and
    writing it, or bytes that are no holder's)."""
    try:
        holder = json.loads(content)
    except ValueError:  # not JSON, not UTF-8
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    """'host H pid P (Slurm job J)' of a lock's holder."""
    job = f" (Slurm job {holder['job']})" if holder.get("job") else ""
    return f"host {holder.get('host')} pid {holder.get('pid')}{job}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(workdir):` or `acquire()` / `release()`."""

    def __init__(self, workdir: str, refresh_s: float | None = None,
                 stale_s: float | None = None):
        self.workdir = workdir
        self.path = workdirs.lock_file(workdir)
        self.refresh_s = REFRESH_S if refresh_s is None else refresh_s
        self.stale_s = STALE_S if stale_s is None else stale_s
        self.me = _identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False
        self.lost: str | None = None  # why the lock was lost while held, once it was

    def _pid_visible(self, holder: dict) -> bool:
        """Whether the lock's pid names a process this trainer can see, so that its absence
        here means the holder is gone: host, boot id and PID namespace all known and equal to
        this trainer's."""
        return holder.get("host") == self.me["host"] and all(
            self.me[k] is not None and holder.get(k) == self.me[k] for k in ("boot_id", "pid_ns"))

    def _stale_reason(self, holder: dict, age_s: float) -> str | None:
        """Why the lock `holder` wrote (mtime `age_s` seconds ago) no longer holds, if so."""
        if self._pid_visible(holder) and not _pid_alive(int(holder.get("pid", -1))):
            return f"its process {holder.get('pid')} on this host is gone"
        if holder.get("job") and holder.get("job") == self.me["job"] and \
                int(holder.get("restart", 0)) < self.me["restart"]:
            return f"it is an earlier run (restart {holder.get('restart')}) of this Slurm job"
        if age_s > self.stale_s:
            return f"it was last refreshed {age_s:.0f} s ago (stale after {self.stale_s:.0f} s)"
        return None

    def acquire(self) -> None:
        """Takes the lock, replacing a stale one; raises WorkdirLocked naming a live holder."""
        if paths.is_url(self.workdir):
            logging.warning("no workdir lock on %s (object stores have no atomic create); "
                            "make sure no other trainer uses it", self.workdir)
            return
        with disk_space.reported(self.workdir, "the workdir"):
            try:
                os.makedirs(self.workdir, exist_ok=True)
            except OSError as e:
                if disk_space.is_disk_full(e):
                    raise
                what = ("is a file" if os.path.isfile(self.workdir) else
                        f"cannot be made a folder ({e.strerror or e})")
                raise WorkdirUnusable(f"the workdir {self.workdir} {what}; give a folder this "
                                      f"user can write (made if missing)") from None
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._replace_if_stale()
                continue
            self._write(fd)
            self.held = True
            peers.before_exit(self.release)  # an exit that skips `finally` still releases it
            self._thread = threading.Thread(target=self._refresh, daemon=True,
                                            name="hgmt-workdir-lock")
            self._thread.start()
            return
        raise WorkdirLocked(f"could not take {self.path}: other trainers keep taking it")

    def _write(self, fd: int) -> None:
        """Writes this holder into the lock file it just created (open as `fd`). When that
        fails the file is removed: an empty or partial lock names no holder, and a rerun would
        wait for its timeout. Creating an empty file needs no data block, so on a full disk
        it is this write that fails: `DiskFull`, naming the lock file."""
        def remove() -> str:
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            return "Nothing partial was left behind."

        with disk_space.reported(self.path, "the workdir lock", cleanup=remove):
            try:
                with os.fdopen(fd, "w") as f:
                    json.dump(self.me, f)
            except BaseException:
                remove()
                raise

    def _replace_if_stale(self) -> None:
        """Moves a stale lock aside and removes it; raises WorkdirLocked naming a live holder."""
        try:
            seen = _snapshot(self.path)
        except FileNotFoundError:
            return  # released meanwhile: try again
        age_s = time.time() - seen[2] / 1e9
        holder = _holder(seen[3])
        if not holder and age_s < 5.0:  # a holder between create and write: let it write
            time.sleep(5.0)
            return
        reason = self._stale_reason(holder, age_s)
        if reason is None and not holder:
            what = "is empty" if not seen[3] else f"holds {len(seen[3])} bytes that are not " \
                "a holder's JSON"
            raise WorkdirLocked(
                f"{self.workdir} is locked by {self.path}, which {what} (a trainer stopped "
                f"between creating and writing it, or the file was damaged), last modified "
                f"{age_s:.0f} s ago. It frees itself {self.stale_s:.0f} s after that; rerun "
                f"then, or remove it once you made sure no trainer uses the workdir")
        if reason is None:
            unseen = (" (its pid cannot be checked from here: another container's PID "
                      "namespace or another boot, or one of them unknown)"
                      if holder.get("host") == self.me["host"] and not self._pid_visible(holder)
                      else "")
            raise WorkdirLocked(
                f"{self.workdir} is in use by another trainer: {_describe(holder)}{unseen}, "
                f"started {holder.get('started')}, lock refreshed {age_s:.0f} s ago "
                f"({self.path}). Stop that run or pass another --workdir; a lock whose "
                f"holder died frees itself {self.stale_s:.0f} s after its last refresh")
        aside = f"{self.path}.stale-{self.me['token']}"
        try:
            os.rename(self.path, aside)  # atomic: of several racing reruns, one moves it
        except FileNotFoundError:
            return
        if _snapshot(aside) != seen:  # another rerun took over first: its lock, not the stale
            self._put_back(aside)
            return
        os.remove(aside)
        logging.warning("took over the stale workdir lock of %s: %s", _describe(holder),
                        reason)

    def _put_back(self, aside: str) -> None:
        """Returns a lock moved aside by mistake to its place, unless a third trainer created
        one there meanwhile: then the displaced holder finds its lock gone at its refresh."""
        try:
            os.link(aside, self.path)  # unlike a rename, never replaces a lock
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links
            os.replace(aside, self.path)
            return
        os.remove(aside)

    def _refresh(self) -> None:
        """Refreshes the lock's mtime every `refresh_s` until released; on losing it (see the
        module's docstring) sets `lost` and stops."""
        failures = 0
        while not self._stop.wait(self.refresh_s):
            try:
                holder = self._touch()
            except OSError as e:
                failures += 1
                error = f"{type(e).__name__}: {e}"
                logging.warning("the workdir lock %s could not be refreshed (%s); after %d "
                                "failures in a row this trainer stops", self.path, error,
                                MAX_FAILED_REFRESHES)
                if failures >= MAX_FAILED_REFRESHES:
                    return self._lose(f"could not be refreshed {failures} times in a row "
                                      f"({error}): another trainer could take the workdir "
                                      f"over {self.stale_s:.0f} s after its last refresh")
                continue
            if holder == {}:
                return self._lose("was replaced by a file that names no holder (empty, as "
                                  "another trainer's before it writes its own, or not a lock "
                                  "hgmt wrote): something else took the workdir over while "
                                  "this trainer ran")
            if holder is not None:
                return self._lose(f"is now held by {_describe(holder)}, started "
                                  f"{holder.get('started')}: another trainer took the workdir "
                                  f"over while this one ran")
            failures = 0

    def _touch(self) -> dict | None:
        """Refreshes the lock's mtime if it is still this trainer's; else -> its holder."""
        with open(self.path, "rb") as f:
            holder = _holder(f.read())
        if holder.get("token") != self.me["token"]:
            return holder
        os.utime(self.path)
        return None

    def _lose(self, what: str) -> None:
        self.lost = (f"the workdir lock {self.path} {what}. This trainer stops so that two "
                     f"never write {self.workdir}; its checkpoints so far are intact. Make "
                     f"sure no other trainer uses the workdir (and its filesystem works), then "
                     f"rerun to resume")
        logging.error("%s", self.lost)

    def check(self) -> None:
        """Raises WorkdirLockLost once the lock was lost while held (the trainer calls this
        every step, to stop before another trainer may write the workdir)."""
        if self.lost is not None:
            raise WorkdirLockLost(self.lost)

    def release(self) -> None:
        """Stops refreshing and removes the lock if it is still this process's."""
        peers.not_before_exit(self.release)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.held:
            return
        self.held = False
        try:
            with open(self.path, "rb") as f:
                holder = _holder(f.read())
            if holder.get("token") == self.me["token"]:
                os.remove(self.path)
        except FileNotFoundError:
            pass

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def hold_for_job(workdir: str, first: tuple[str, Callable[[], None]] | None = None
                 ) -> WorkdirLock:
    """Process 0 takes the lock; every process of the job learns whether it did (a collective
    at startup), so that all stop together when it could not. Process 0 raises its own error:
    `WorkdirLocked` naming the holder, `disk_space.DiskFull`, or any other (an OSError of a
    read-only filesystem, a workdir path under a file, ...). The others raise `WorkdirLocked`
    for a workdir another trainer holds, else `peers.PeerFailed` (hgmt.main's exit status 1)
    saying that process 0 could not take the lock and that its log names why. `first`,
    (what it checks, the check), runs on process 0 before the lock creates the workdir, so
    that a run it stops leaves no workdir; its error stops every process likewise."""
    import jax

    lock = WorkdirLock(workdir)
    error: BaseException | None = None
    checked = first is None
    if jax.process_index() == 0:
        try:
            if first is not None:
                first[1]()
                checked = True
            lock.acquire()
        except BaseException as e:  # noqa: BLE001  (told to the others, then raised here)
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        # 0: process 0 holds the lock; 1: another trainer holds it; 2: another error; 3: the
        # check before the lock failed.
        code = 0 if error is None else 3 if not checked else 1 if isinstance(
            error, WorkdirLocked) else 2
        code = int(multihost_utils.broadcast_one_to_all(np.int32(code)))
        if code == 3 and error is None:
            raise peers.PeerFailed(
                f"process 0 failed before the first step: its check {first[0]} failed "
                f"(process 0's log names the error): this is process {jax.process_index()}, "
                f"stopping. Fix that error, then rerun the job")
        if code == 1 and error is None:
            raise WorkdirLocked(f"process 0 could not lock {workdir}: another trainer holds "
                                f"it (process 0's log names it)")
        if code == 2 and error is None:
            raise peers.PeerFailed(
                f"process 0 failed before the first step: it could not take the workdir lock "
                f"{lock.path} (process 0's log names the error): this is process "
                f"{jax.process_index()}, stopping. Fix that error, then rerun the job")
    if error is not None:
        raise error
    return lock
