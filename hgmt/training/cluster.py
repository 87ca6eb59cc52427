"""Joining a multi-process job: `jax.distributed` set up with timeouts that bound every wait
(`initialize`), the GPUs a Slurm task drives (`slurm_local_device_ids`), and the check that
every process was started with the same settings (`check_same_settings`). What happens when a
process of the joined job dies or fails is `hgmt.training.peers`; the checks of the
coordinator's address before JAX starts are `hgmt.training.coordinator`.

Under Slurm JAX gives each process the one GPU numbered by its local task id, for one task
per GPU; hgmt runs one process per node that drives all the node's GPUs (launch/slurm.sbatch),
so `initialize` hands such a process every GPU it sees (`slurm_local_device_ids`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator, Mapping
from typing import Any, NoReturn

import jax

from hgmt import run_config, stops
from hgmt.training import coordinator

# The job's heartbeat timeout by default (--heartbeat_timeout; at least
# `peers.MIN_HEARTBEAT_TIMEOUT_S`, ten beats of the watchdog, which judges it).
HEARTBEAT_TIMEOUT_S = 60
SHUTDOWN_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 300  # how long a process waits for the job's others to connect
NOTE_WAIT_S = 10  # after which a process waiting for the others to connect says so
# hgmt.main's status for an error that needs you: a job that never connected, or another
# process's error (`peers.PeerFailed`).
EXIT_FAILED = 1

_SETTINGS = "hgmt/settings/"  # + process index: its settings (`check_same_settings`)

_heartbeat_timeout_s = HEARTBEAT_TIMEOUT_S


def job_heartbeat_timeout_s() -> int:
    """Seconds after which hgmt counts a silent process of this job as dead: what `initialize`
    was given (HEARTBEAT_TIMEOUT_S before it runs)."""
    return _heartbeat_timeout_s


def coordination_client() -> Any:
    """JAX's client of the job's coordination service (its key-value store), or None outside
    a multi-process job."""
    from jax._src import distributed

    return distributed.global_state.client


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_s: int = HEARTBEAT_TIMEOUT_S,
               shutdown_timeout_s: int = SHUTDOWN_TIMEOUT_S,
               connect_timeout_s: int = CONNECT_TIMEOUT_S) -> None:
    """`jax.distributed.initialize` (arguments that are None found from
    JAX_COORDINATOR_ADDRESS and the cluster JAX reads, `coordinator.jax_cluster`) with
    timeouts that bound how long the others wait for a dead process: hgmt's watchdog counts
    a process silent for `heartbeat_timeout_s` as dead; JAX's coordination service, whose
    verdict ends the process without a word from hgmt, gets three times that. An argument
    that is None and that no cluster gives is a ValueError naming the flags to give
    (`_no_cluster_line`). Says what it waits for once that takes longer than NOTE_WAIT_S;
    when the job's processes have not all connected within `connect_timeout_s` (one not
    started, a wrong coordinator address, a process index given twice), ends this process
    with one line saying what to check, status EXIT_FAILED (JAX's own verdict, a minute
    later, is a C++ abort that blames a dead task)."""
    global _heartbeat_timeout_s
    _heartbeat_timeout_s = heartbeat_timeout_s
    who = _who(num_processes, process_id)
    address, source = coordinator.coordinator_given(coordinator_address)
    # A word once the wait is longer than a connection takes, and the verdict at the timeout.
    timers = [threading.Timer(min(NOTE_WAIT_S, connect_timeout_s / 2), logging.warning, (
                  "%s: waiting for the job's processes to connect to the coordinator %s (up "
                  "to %d s, --connect_timeout)", who, address or "the cluster names",
                  connect_timeout_s)),
              threading.Timer(connect_timeout_s, _not_connected,
                              (who, address, connect_timeout_s, source,
                               num_processes is not None, process_id is not None))]
    coordinator.check_coordinator_port(coordinator_address, process_id)
    for timer in timers:
        timer.daemon = True
        timer.start()
    try:
        with _ctrl_c_while_waiting(who):
            # Under the timers and the Ctrl-C watch: --connect_timeout bounds the lookup's
            # wait as well, and Ctrl-C ends it.
            coordinator.check_coordinator_host(coordinator_address, coordinator.LOOKUP_WAIT_S)
            jax.distributed.initialize(
                coordinator_address=coordinator_address, num_processes=num_processes,
                process_id=process_id, local_device_ids=slurm_local_device_ids(os.environ),
                initialization_timeout=connect_timeout_s + 60,
                heartbeat_timeout_seconds=3 * heartbeat_timeout_s,
                shutdown_timeout_seconds=shutdown_timeout_s)
    except jax.errors.JaxRuntimeError as e:
        if "Failed to start RPC server" not in str(e):
            raise
        # Another socket took the port after `coordinator.check_coordinator_port` found it
        # free.
        found = coordinator.jax_coordinator(coordinator_address, process_id)
        bind = (coordinator.bind_address(found[0]) if found else
                os.environ.get("JAX_COORDINATOR_BIND_ADDRESS"))
        raise ValueError(coordinator.port_taken(bind, str(e), coordinator_address)) from None
    except ValueError as e:
        address_given = address is not None
        if not (address_given and num_processes is not None and process_id is not None) and (
                coordinator.jax_cluster() is None):
            raise ValueError(_no_cluster_line(address_given, num_processes is not None,
                                              process_id is not None)) from e
        raise ValueError(f"jax.distributed.initialize: {e}") from e
    finally:
        for timer in timers:
            timer.cancel()


def _who(num_processes: int | None, process_id: int | None) -> str:
    """How `initialize`'s lines name this process: by its index and the job's number of
    processes, as given, else as Slurm gives them where JAX reads Slurm (whose tasks write to
    one log: the line says which task waited); 'this process' where neither tells."""
    if process_id is not None and num_processes is not None:
        return f"process {process_id} of {num_processes}"
    if not coordinator.jax_reads_slurm():
        return "this process"
    index = os.environ["SLURM_PROCID"] if process_id is None else str(process_id)
    count = os.environ["SLURM_NTASKS"] if num_processes is None else str(num_processes)
    task = "Slurm's task" if process_id is None and num_processes is None else "process"
    return f"{task} {index} of {count}"


def _no_cluster_line(address_given: bool, count_given: bool, index_given: bool) -> str:
    """The message of a job setting that was not given (`*_given` False: the coordinator's
    address, by --coordinator_address or JAX_COORDINATOR_ADDRESS; --num_processes;
    --process_id) where no cluster JAX reads runs this process to give it."""
    settings = [("the coordinator's address", "the same --coordinator_address=host:port of "
                 f"process 0 (or {coordinator.ADDRESS_VARIABLE})", address_given),
                ("--num_processes", "the same --num_processes=N", count_given),
                ("--process_id", "each its own --process_id (0 to N-1)", index_given)]
    missing = [(name, fix) for name, fix, given in settings if not given]
    return (f"{_listed([name for name, _ in missing])} not given, and no cluster that JAX "
            f"reads ({coordinator.CLUSTERS_READ}) runs this process to give "
            f"{'it' if len(missing) == 1 else 'them'}; give every process of the job "
            f"{_listed([fix for _, fix in missing])}")


def _listed(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return " and ".join(filter(None, (", ".join(items[:-1]), items[-1])))


@contextlib.contextmanager
def _ctrl_c_while_waiting(who: str) -> Iterator[None]:
    """Ctrl-C while the block runs (the main thread waiting in C++ for the job's processes
    to connect, up to --connect_timeout, where Python runs no signal handler) ends the process
    at once in one line, status `stops.EXIT_INTERRUPTED`: nothing has started. Python's C
    handler writes the signal to a wakeup socket, which a thread reads; where the main thread
    waits in Python (the coordinator host's lookup), its KeyboardInterrupt, which may come
    first, ends it the same way."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read, write = socket.socketpair()
    write.setblocking(False)
    previous = signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
    done, stopping = threading.Event(), threading.Lock()

    def stop() -> NoReturn:
        stopping.acquire()  # the line once: the other of the watch and the main thread waits
        stops.end_at_once(f"interrupted (Ctrl-C): {who} stopped waiting for the job's "
                          f"processes to connect; nothing was started or written. Start "
                          f"every process of the job again together",
                          stops.EXIT_INTERRUPTED)

    def watch() -> None:
        while not done.is_set():
            try:
                signals = read.recv(64)
            except OSError:
                return
            if not signals or done.is_set():
                return
            if signal.SIGINT in signals:
                stop()

    thread = threading.Thread(target=watch, name="hgmt-connect-interrupt", daemon=True)
    thread.start()
    try:
        yield
    except KeyboardInterrupt:
        stop()
    finally:
        done.set()
        signal.set_wakeup_fd(previous)
        write.close()  # ends the thread's recv
        thread.join()
        read.close()


def _not_connected(who: str, where: str | None, timeout_s: int,
                   source: str = "--coordinator_address", count_given: bool = True,
                   index_given: bool = True) -> NoReturn:
    """Ends a process whose job's processes did not all connect within `timeout_s` (run by
    `initialize`'s timer while JAX waits in C++): `_not_connected_line`, with the cluster JAX
    reads (`coordinator.jax_cluster`) where it gave a setting, status EXIT_FAILED."""
    from_cluster = where is None or not (count_given and index_given)
    stops.end_at_once(_not_connected_line(
        who, where, timeout_s, source, count_given, index_given,
        coordinator.jax_cluster(wait_s=coordinator.DETECTION_WAIT_S) if from_cluster else None),
        EXIT_FAILED)


# What to check in each cluster JAX reads settings from (`coordinator.jax_cluster`; None:
# one not found here, or one hgmt has no name for): that its processes all started; its
# process 0; and that the coordinator's host, which the cluster names, is reachable.
_CLUSTER_CHECKS: dict[str | None, tuple[str, str, str]] = {
    "slurm": ("every task of the job started (SLURM_NTASKS of them, one per node as "
              "launch/slurm.sbatch runs them)", "Slurm's task 0, SLURM_PROCID=0",
              "the host of Slurm's task 0 (the first node of SLURM_STEP_NODELIST) is "
              "reachable from the others"),
    "tpu_vm": ("every worker of the TPU VM started (`launch/tpu_vm.sh train` starts one on "
               "each)", "TPU worker 0", "worker 0's host is reachable from the others"),
    "gke_tpu": ("every TPU worker of the GKE job started (one per host of "
                "TPU_WORKER_HOSTNAMES)", "TPU worker 0, TPU_WORKER_ID=0",
                "worker 0's host (the first of TPU_WORKER_HOSTNAMES, or "
                "MEGASCALE_COORDINATOR_ADDRESS) is reachable from the others"),
    "open_mpi": ("every rank of mpirun's job started (OMPI_COMM_WORLD_SIZE of them)",
                 "rank 0, OMPI_COMM_WORLD_RANK=0",
                 "mpirun ran on rank 0's host (JAX takes the coordinator's host from "
                 "mpirun's, OMPI_MCA_orte_hnp_uri), reachable from the others"),
    "kubernetes": ("every pod of the indexed Job started (its parallelism)",
                   "pod 0, JOB_COMPLETION_INDEX=0",
                   "pod 0's host is reachable from the others"),
    None: ("every process of the job started (as many as the cluster runs)",
           "the cluster's process 0", "process 0's host is reachable from the others"),
}


def _not_connected_line(who: str, where: str | None, timeout_s: int,
                        source: str = "--coordinator_address", count_given: bool = True,
                        index_given: bool = True, cluster: str | None = None) -> str:
    """The one line of a process whose job's processes did not all connect within
    `timeout_s` to the coordinator `where` (None: the one the cluster names), given by
    `source`. What to check follows what gave each setting: the number of processes and this
    process's index their flags where given (`count_given`, `index_given`), else the cluster
    JAX read them from (`cluster`, `coordinator.jax_cluster`'s name; None or a name without
    an entry in `_CLUSTER_CHECKS`: worded for any cluster)."""
    started, zero, reachable = _CLUSTER_CHECKS.get(cluster, _CLUSTER_CHECKS[None])
    if where is None:
        check = f"Check that {started} and that {reachable}"
    else:
        first = "process 0's host:port" if index_given else f"the host:port of {zero}"
        address = f"the same {source} ({first}, reachable from every host)"
        if count_given:
            check = f"Check that every process was started, with {address} and --num_processes"
        else:
            check = f"Check that {started}, with {address}"
        if index_given:
            check += ", and each with its own --process_id (0 to N-1, once each)"
    return (f"error: NotConnected: {who} waited {timeout_s} s (--connect_timeout) for the "
            f"job's processes to connect to the coordinator {where or 'the cluster names'}. "
            f"{check}; then start them again together")


def check_same_settings(settings: Mapping[str, Any], free: tuple[str, ...] = ()) -> None:
    """Compares this process's `settings` (a JSON-able tree: the config and the flags every
    process must share) with every other process's through the coordination service. A
    ValueError, the same on every process, naming each field (by dotted name) in which a
    process differs from process 0, and its values, when any does: processes given other
    settings trained weights that drifted apart (another learning rate) or stopped in a
    collective's mismatch (another step count). Fields under `free` (where each host finds
    the data) may differ."""
    client = coordination_client()
    me, count = jax.process_index(), jax.process_count()
    if client is None or count == 1:
        return
    client.key_value_set(_SETTINGS + str(me), json.dumps(settings, sort_keys=True))
    wait_ms = 3 * _heartbeat_timeout_s * 1000
    flat = [run_config.flat_fields(json.loads(client.blocking_key_value_get(
        _SETTINGS + str(i), wait_ms))) for i in range(count)]
    found = []
    for i, other in enumerate(flat[1:], start=1):
        for field in sorted(flat[0].keys() | other.keys()):
            if run_config.is_under(field, free):
                continue
            if flat[0].get(field, _MISSING) != other.get(field, _MISSING):
                found.append(f"process {i}: {field} {_shown(other.get(field, _MISSING))} "
                             f"(process 0: {_shown(flat[0].get(field, _MISSING))})")
    if found:
        raise ValueError(
            f"the processes of this job were started with other settings: {'; '.join(found)}. "
            f"Start every process with the same --config, config overrides, --workdir and "
            f"flags (only {', '.join(free) or 'nothing'} may differ between hosts)")


_MISSING = object()


def _shown(value: Any) -> str:
    return "(not set)" if value is _MISSING else json.dumps(value)


def _per_node(compressed: str) -> list[int]:
    """Slurm's per-node counts, '2(x3),1' -> [2, 2, 2, 1]."""
    counts = []
    for part in compressed.split(","):
        count, _, times = part.partition("(x")
        counts += [int(count)] * int(times.rstrip(")") or 1)
    return counts


def slurm_local_device_ids(environ: Mapping[str, str]) -> list[int] | None:
    """The GPUs a process of a Slurm job step drives: all those it sees (0..n-1 of
    CUDA_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES, which Slurm sets, or SLURM_GPUS_ON_NODE of
    them) when it is its node's only task, or when it shares the node but Slurm bound it GPUs
    of its own (--gpus-per-task: it sees one, or fewer than the node's SLURM_GPUS_ON_NODE);
    None (JAX's own choice, the GPU numbered by its local task id) outside Slurm, with several
    tasks on the node that each see every GPU, or when JAX_LOCAL_DEVICE_IDS chooses."""
    tasks, node = environ.get("SLURM_STEP_TASKS_PER_NODE"), environ.get("SLURM_NODEID")
    if "SLURM_LOCALID" not in environ or "JAX_LOCAL_DEVICE_IDS" in environ or not (
            tasks and node):
        return None
    counts = _per_node(tasks)
    if int(node) >= len(counts):
        return None
    gpus = environ.get("SLURM_GPUS_ON_NODE", "")
    on_node = int(gpus) if gpus.isdecimal() and int(gpus) > 0 else None
    visible = next((len(environ[n].split(",")) for n in
                    ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES") if environ.get(n)), None)
    if counts[int(node)] != 1:  # several tasks on the node: GPUs of its own, if bound
        bound = visible is not None and (visible == 1 or (on_node or 0) > visible)
        return list(range(visible)) if bound else None
    n = visible or on_node
    return list(range(n)) if n else None
