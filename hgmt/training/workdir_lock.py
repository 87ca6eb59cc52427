"""A workdir lock: one trainer per workdir, held by process 0 of a job for the whole run.

`<workdir>/hgmt.lock` is created with O_CREAT|O_EXCL (atomic on local filesystems and on
NFSv3+ and Lustre, the shared filesystems clusters use) and holds the holder's host, pid, Slurm
job id and restart count. While training, a daemon thread refreshes its mtime every
`REFRESH_S` seconds. A trainer that finds the lock stops at once, naming the holder, unless the
lock is stale:

- the holder ran on this host and its pid is gone (a `kill -9`, a crash), or
- the holder is an earlier run of this same Slurm job (same SLURM_JOB_ID, lower
  SLURM_RESTART_COUNT: a requeued job whose previous run was killed), or
- its mtime has not been refreshed for `STALE_S` seconds (a holder on another host that died;
  this assumes the hosts' clocks agree to well under `STALE_S`).

A stale lock is moved aside by an atomic rename (of several racing reruns, one wins) and
replaced. Object-store workdirs (gs://, s3://) have no atomic create: no lock is taken there.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from hgmt import paths, workdirs

REFRESH_S = 20.0
STALE_S = 90.0


class WorkdirLocked(RuntimeError):
    """Another live trainer holds the workdir."""


def _identity() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "job": os.environ.get("SLURM_JOB_ID"),
            "restart": int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


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

    def __init__(self, workdir: str, refresh_s: float = REFRESH_S, stale_s: float = STALE_S):
        self.workdir = workdir
        self.path = workdirs.lock_file(workdir)
        self.refresh_s, self.stale_s = refresh_s, stale_s
        self.me = _identity()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.held = False

    def _stale_reason(self, holder: dict, age_s: float) -> str | None:
        """Why the lock `holder` wrote (mtime `age_s` seconds ago) no longer holds, if so."""
        if holder.get("host") == self.me["host"] and not _pid_alive(int(holder.get("pid", -1))):
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
            logging.warning("no workdir lock on %s (object stores have no atomic create): "
                            "make sure no other trainer uses it", self.workdir)
            return
        os.makedirs(self.workdir, exist_ok=True)
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._replace_if_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.me, f)
            self.held = True
            self._thread = threading.Thread(target=self._refresh, daemon=True,
                                            name="hgmt-workdir-lock")
            self._thread.start()
            return
        raise WorkdirLocked(f"could not take {self.path}: other trainers keep taking it")

    def _replace_if_stale(self) -> None:
        try:
            with open(self.path) as f:
                text = f.read()
            age_s = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return  # released meanwhile: try again
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:  # a holder killed between create and write
            holder = {}
            if age_s < 5.0:
                time.sleep(5.0)
                return
        reason = self._stale_reason(holder, age_s)
        if reason is None:
            raise WorkdirLocked(
                f"{self.workdir} is in use by another trainer: host {holder.get('host')} pid "
                f"{holder.get('pid')}" + (f" (Slurm job {holder['job']})" if holder.get("job")
                                          else "") +
                f", started {holder.get('started')}, lock refreshed {age_s:.0f} s ago "
                f"({self.path}). Stop that run or pass another --workdir; a lock whose "
                f"holder died frees itself {self.stale_s:.0f} s after its last refresh")
        aside = f"{self.path}.stale-{self.me['host']}-{self.me['pid']}"
        try:
            os.rename(self.path, aside)  # atomic: of several racing reruns, one moves it
        except FileNotFoundError:
            return
        os.remove(aside)
        logging.warning("took over the stale workdir lock of host %s pid %s: %s",
                        holder.get("host"), holder.get("pid"), reason)

    def _refresh(self) -> None:
        while not self._stop.wait(self.refresh_s):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                logging.error("the workdir lock %s was removed while this trainer runs",
                              self.path)
                return

    def release(self) -> None:
        """Stops refreshing and removes the lock if it is still this process's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.held:
            return
        self.held = False
        try:
            with open(self.path) as f:
                holder = json.load(f)
            if (holder.get("host"), holder.get("pid")) == (self.me["host"], self.me["pid"]):
                os.remove(self.path)
        except (FileNotFoundError, json.JSONDecodeError):
            pass

    def __enter__(self) -> WorkdirLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_for_job(workdir: str) -> WorkdirLock:
    """Process 0 takes the lock; every process of the job learns whether it did (a collective
    at startup), so all stop together when another trainer holds the workdir."""
    import jax

    lock = WorkdirLock(workdir)
    error: WorkdirLocked | None = None
    if jax.process_index() == 0:
        try:
            lock.acquire()
        except WorkdirLocked as e:
            error = e
    if jax.process_count() > 1:
        import numpy as np
        from jax.experimental import multihost_utils

        failed = multihost_utils.broadcast_one_to_all(np.int32(error is not None))
        if int(failed) and error is None:
            raise WorkdirLocked(f"process 0 could not lock {workdir}: another trainer holds "
                                f"it (process 0's log names it)")
    if error is not None:
        raise error
    return lock
