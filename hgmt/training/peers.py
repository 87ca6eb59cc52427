"""Multi-host runs: `jax.distributed` set up with bounded failure detection, and one message,
`PeerLost: lost process(es) N of M at step S`, whichever way the death of a peer is noticed.

Under Slurm JAX gives each process the one GPU numbered by its local task id, for one task
per GPU; hgmt runs one process per node that drives all the node's GPUs (launch/slurm.sbatch),
so `initialize` hands such a process every GPU it sees (`slurm_local_device_ids`).

A process of the job that dies is noticed in one of three ways, which left to JAX end in
different words (a Python traceback, or a fatal C++ log line and stack trace), whichever wins:
- a collective fails at once (CPU: gloo reports "connection closed by peer");
- a collective hangs (GPU/TPU collectives wait for the peer);
- JAX's coordination service misses the dead process's heartbeats for its heartbeat timeout and
  terminates every other process ("Terminating process because the JAX distributed service
  detected fatal errors ... tasks are unhealthy"), with no Python code run.

`watched()` runs a watchdog thread (`PeerWatch`) that beats a counter in the coordination
service's key-value store every `INTERVAL_S` and reads everyone's: a peer whose counter has not
moved for `heartbeat_timeout_s` is lost. `initialize` gives JAX's service three times that,
as a backstop for a watchdog that cannot run, so hgmt's verdict always comes first:
- when a collective failed, the trainer waits for the watchdog's verdict and raises `PeerLost`;
  `exit_lost` (hgmt.main, the test worker) logs the one line and exits with EXIT_PEER_LOST at
  once, without the exit barrier that would wait for the dead peer;
- when the main thread is stuck in a hung collective, the watchdog itself logs the same line
  and exits with EXIT_PEER_LOST.
`shutdown_timeout_s` bounds the exit barrier of a normal exit the same way.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping

import jax

HEARTBEAT_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 60
INTERVAL_S = 0.5  # how often the watchdog beats and looks
EXIT_PEER_LOST = 69  # sysexits' EX_UNAVAILABLE: a process of the job is gone; rerun to resume
_DONE = "done"  # a process's counter once it left training: not judged any more

_heartbeat_timeout_s = HEARTBEAT_TIMEOUT_S
_runs = itertools.count()  # one key prefix per watch: every process makes them in one order


class PeerLost(RuntimeError):
    """A process of this multi-host run died."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S) -> None:
    """`jax.distributed.initialize` (arguments found from Slurm / TPU VMs when None) with
    timeouts that bound how long the others wait for a dead process: hgmt's watchdog counts a
    process silent for `heartbeat_timeout_s` as dead; JAX's coordination service, whose
    verdict ends the process without a word from hgmt, gets three times that."""
    global _heartbeat_timeout_s
    _heartbeat_timeout_s = heartbeat_timeout_s
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               local_device_ids=slurm_local_device_ids(os.environ),
                               heartbeat_timeout_seconds=3 * heartbeat_timeout_s,
                               shutdown_timeout_seconds=shutdown_timeout_s)


def _per_node(compressed: str) -> list[int]:
    """Slurm's per-node counts, '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for part in compressed.split(","):
        count, _, times = part.partition("(x")
        counts += [int(count)] * int(times.rstrip(")") or 1)
    return counts


def slurm_local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
    """The GPUs a process of a Slurm job step drives when it is its node's only task: all
    those it sees (0..n-1 of CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES, which Slurm sets, or
    SLURM_GPUS_ON_NODE of them); None (JAX's own choice) outside Slurm, with several tasks on
    the node (one GPU each), or when JAX_LOCAL_DEVICE_IDS chooses."""
    tasks, node = environ.get("SLURM_STEP_TASKS_PER_NODE"), environ.get("SLURM_NODEID")
    if "SLURM_LOCALID" not in environ or "JAX_LOCAL_DEVICE_IDS" in environ or not (
            tasks and node):
        return None
    counts = _per_node(tasks)
    if int(node) >= len(counts) or counts[int(node)] != 1:
        return None
    for name in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        if environ.get(name):
            return list(range(len(environ[name].split(","))))
    gpus = environ.get("SLURM_GPUS_ON_NODE", "")
    return list(range(int(gpus))) if gpus.isdigit() and int(gpus) > 0 else None


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def exit_lost(error: PeerLost | str) -> None:
    """Logs `PeerLost: <what>` and ends this process with EXIT_PEER_LOST at once (no exit
    barrier: it would wait for the dead peer until the coordination service kills us)."""
    logging.error("PeerLost: %s", error)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(EXIT_PEER_LOST)


class PeerWatch:
    """The watchdog thread (multi-process runs only; inert otherwise). The trainer sets `step`
    as it goes; `lost` is the verdict once a peer is lost."""

    def __init__(self, timeout_s: float | None = None, interval_s: float = INTERVAL_S,
                 grace_s: float = 3.0):
        self.active = jax.process_count() > 1 and _client() is not None
        self.timeout_s = timeout_s or _heartbeat_timeout_s
        self.interval_s, self.grace_s = interval_s, grace_s
        self.step: int | None = None
        self.lost: str | None = None
        self.found = threading.Event()  # a verdict is in `lost`
        self.taken = threading.Event()  # the main thread raises it itself
        self._stop = threading.Event()
        self._prefix = f"hgmt/alive/{next(_runs)}/"
        self._thread = threading.Thread(target=self._run, name="hgmt-peer-watch", daemon=True)

    def __enter__(self) -> PeerWatch:
        if self.active:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        self._stop.set()
        self._thread.join()
        if not self.found.is_set():
            with contextlib.suppress(Exception):  # peers stop judging this process
                _client().key_value_set(self._prefix + str(jax.process_index()), _DONE,
                                        allow_overwrite=True)

    def _run(self) -> None:
        client, me, count = _client(), jax.process_index(), jax.process_count()
        seen: dict[int, tuple[str, float]] = {}  # peer -> (counter, when it last moved)
        reachable = time.monotonic()
        for beat in itertools.count(1):
            if self._stop.wait(self.interval_s):
                return
            now = time.monotonic()
            try:
                client.key_value_set(self._prefix + str(me), str(beat), allow_overwrite=True)
                values = {k.rsplit("/", 1)[-1]: v for k, v in
                          client.key_value_dir_get(self._prefix)}
                reachable = now
            except Exception:  # noqa: BLE001  (the coordinator is gone)
                if now - reachable > self.timeout_s:
                    return self._verdict("process 0 (the coordinator) is unreachable")
                continue
            dead = []
            for peer in range(count):
                value = values.get(str(peer))
                if peer == me or value is None or value == _DONE:
                    continue  # not started training yet, or done with it
                if peer not in seen or seen[peer][0] != value:
                    seen[peer] = (value, now)
                elif now - seen[peer][1] > self.timeout_s:
                    dead.append(peer)
            if dead:
                return self._verdict(f"lost process(es) {', '.join(map(str, dead))} of {count}")

    def _verdict(self, who: str) -> None:
        when = "before the first step" if self.step is None else f"at step {self.step}"
        self.lost = (f"{who} {when}: this is process {jax.process_index()}, "
                     f"stopping. Check the lost process's log and the scheduler's events "
                     f"(preemption, OOM kill); rerun the job to resume from the last "
                     f"checkpoint")
        self.found.set()
        if not self.taken.wait(self.grace_s):  # the main thread is stuck (a hung collective)
            exit_lost(self.lost)


@contextlib.contextmanager
def watched() -> Iterator[PeerWatch]:
    """Runs a `PeerWatch` around training and turns a collective that failed because a peer
    died into `PeerLost` with the watchdog's verdict (waiting for it: at most the heartbeat
    timeout). Other errors, and every error of a single-process run, pass as they
    are."""
    with PeerWatch() as watch:
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
            raise PeerLost(watch.lost) from e
