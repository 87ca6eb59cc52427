"""One process of the 2-process test of the workdir lock when a peer dies
(tests/test_faults.py), without training.

    python tests/peer_lock_worker.py PROCESS_ID PORT WORKDIR

Both processes take the lock as `loop.run` does (`workdir_lock.hold_for_job`: process 0 holds
it, released in a `finally`), enter `peers.watched()`, print "(test) watched" and sleep: process
0's main thread as one stuck in a hung collective (GPU/TPU), process 1 until the test kills it.
`PeerLost` ends a process through `peers.exit_lost`, as hgmt.main does. 5 s heartbeat timeout.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import as_worker_process  # noqa: E402

as_worker_process(1)


def main(process_id: int, port: int, workdir: str) -> None:
    from hgmt.training import cluster, peers, workdir_lock

    cluster.initialize(f"localhost:{port}", num_processes=2, process_id=process_id,
                       heartbeat_timeout_s=5, shutdown_timeout_s=10)
    from jax.experimental import multihost_utils

    lock = workdir_lock.hold_for_job(workdir)
    try:
        with peers.watched():
            multihost_utils.sync_global_devices("both processes are watched")
            print("(test) watched", flush=True)
            time.sleep(600)
    except peers.PeerLost as e:
        peers.exit_lost(e)
    finally:
        lock.release()


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
