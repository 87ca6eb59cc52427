"""The devices a step runs on (hgmt.devices): processes that drive different numbers of
devices are refused in one line naming them (the placement over two processes of two devices
each is checked by tests/test_train.py::test_two_processes_train_the_same_replicated_parameters)."""

import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One process of a 2-process job: argv process id, port, its virtual CPU device count.
_WORKER = """
import sys
pid, port, count = map(int, sys.argv[1:])
sys.path.insert(0, {repo!r})
from tests.conftest import as_worker_process
as_worker_process(count)
import jax
from hgmt.training import cluster
cluster.initialize(f"localhost:{{port}}", num_processes=2, process_id=pid,
                   heartbeat_timeout_s=10, shutdown_timeout_s=10)
from hgmt import devices
try:
    devices.mesh()
except ValueError as e:
    print("refused:", e, flush=True)
"""


def test_processes_with_different_device_counts_are_refused_naming_each():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    script = _WORKER.format(repo=REPO)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(i), str(port), str(count)],
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for i, count in enumerate((1, 2))]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for out in outs:
        refused = [line for line in out.splitlines() if line.startswith("refused:")]
        assert refused == ["refused: the processes drive different numbers of devices "
                           "(process 0: 1, process 1: 2); each takes an equal share of the "
                           "batch, so give every process as many devices (e.g. the same "
                           "--gpus-per-task under Slurm, or JAX_LOCAL_DEVICE_IDS / "
                           "CUDA_VISIBLE_DEVICES listing as many devices on each host)"], out
