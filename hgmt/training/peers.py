"""Multi-host runs: `jax.distributed` set up with bounded failure detection, and an error that
names the lost process when a peer dies.

When a process of the job dies, the others notice in one of two ways:
- a collective fails at once (CPU: gloo reports "connection closed by peer"): `lost_peers()`
  logs that and asks the coordination service which processes it still sees, which takes up
  to the heartbeat timeout; the answer becomes a `PeerLost` naming them, unless the service's
  own termination (next point) comes first, as it did in the tests: it names the process too;
- a collective hangs (GPU/TPU collectives wait for the peer): the coordination service misses
  the dead process's heartbeats for `heartbeat_timeout_s` and terminates every other process
  ("Terminating process because the JAX distributed service detected fatal errors ... Task N
  heartbeat timeout", N the lost process). Without a timeout the job would hang until the
  scheduler's time limit.
`shutdown_timeout_s` bounds the exit barrier the same way.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import jax

HEARTBEAT_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 60


class PeerLost(RuntimeError):
    """A process of this multi-host run died."""


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S) -> None:
    """`jax.distributed.initialize` (arguments found from Slurm / TPU VMs when None) with
    timeouts that bound how long the others wait for a dead process."""
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               heartbeat_timeout_seconds=heartbeat_timeout_s,
                               shutdown_timeout_seconds=shutdown_timeout_s)


def _dead_processes() -> list[int] | None:
    """Processes the coordination service no longer sees (waits up to the heartbeat timeout
    for it to decide); None when the service itself is unreachable (process 0 died)."""
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        return []
    everyone = list(range(jax.process_count()))
    try:
        alive = client.get_live_nodes(everyone)
    except Exception:  # noqa: BLE001  (the coordinator is gone)
        return None
    return [i for i in everyone if i not in alive]


@contextlib.contextmanager
def lost_peers() -> Iterator[None]:
    """Turns a failed collective caused by a dead peer into `PeerLost` naming it."""
    try:
        yield
    except jax.errors.JaxRuntimeError as e:
        if jax.process_count() == 1:
            raise
        logging.error("a collective failed (%s): another process of this run has probably "
                      "died. Asking the coordination service which one; it decides within "
                      "the heartbeat timeout, and may terminate this process itself with "
                      "'The following tasks are unhealthy (stopped sending heartbeats): N', "
                      "N the lost process", str(e)[:200])
        dead = _dead_processes()
        if dead == []:
            raise
        who = ("process 0 (the coordinator) is unreachable" if dead is None else
               f"lost process(es) {', '.join(map(str, dead))} of {jax.process_count()}")
        raise PeerLost(
            f"{who}: this is process {jax.process_index()}, stopping. Check the lost "
            f"process's log and the scheduler's events (preemption, OOM kill); rerun the job "
            f"to resume from the last checkpoint ({type(e).__name__}: {str(e)[:200]})") from e
