"""One process of the 2-process test of a fault on one host (tests/test_faults.py), without
training: the watch and the exit are hgmt's, the work a collective.

    python tests/peer_fault_worker.py PROCESS_ID PORT FAULTY_ID

Both processes enter `peers.watched()` and meet at step 7; process FAULTY_ID then raises
`DiskFull` (a fault of its host only), the other waits for it in a collective. Both end as
hgmt.main ends a run: the fault in one line (`hgmt.cli.faults_in_one_line`), `PeerLost` /
`PeerFailed` through `peers.exit_lost`, any other end of a multi-process run through
`peers.exit_failed`. 30 s heartbeat timeout: process 0 waits at most that long for the other
to stop before its exit takes the coordination service away, and the other's watchdog (every
0.5 s, then 3 s grace) may run late on a loaded machine.
"""

import errno
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import as_worker_process  # noqa: E402

as_worker_process(1)

import numpy as np  # noqa: E402


def main(process_id: int, port: int, faulty: int) -> None:
    from hgmt import cli, disk_space
    from hgmt.training import cluster, peers

    cluster.initialize(f"localhost:{port}", num_processes=2, process_id=process_id,
                       heartbeat_timeout_s=30, shutdown_timeout_s=10)
    from jax.experimental import multihost_utils

    try:
        with cli.faults_in_one_line(disk_space.DiskFull), peers.watched() as watch:
            multihost_utils.sync_global_devices("both processes are watched")
            watch.step = 7
            if faulty == 1:
                # Process 0's collective fails as process 1 exits: its main thread takes the
                # verdict. Its watchdog must not also end it (a second line), however late
                # the main thread runs on a loaded machine.
                watch.grace_s = 60.0
            if process_id == faulty:
                raise disk_space.DiskFull(errno.ENOSPC, "cannot write the file to /w/x.json: "
                                                        "the disk or quota is full (test)")
            multihost_utils.process_allgather(np.int32(1))  # waits for the faulty process
            print("(test) the collective passed without the faulty process", flush=True)
    except peers.PeerLost as e:
        print(f"(test) {type(e).__name__} raised by the main thread", flush=True)
        peers.exit_lost(e)
    except BaseException as e:  # as hgmt.main ends a multi-process run
        peers.exit_failed(e)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
