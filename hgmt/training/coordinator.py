"""The coordinator's address, checked before JAX starts (`cluster.initialize` joins the job):
where JAX takes it from (`coordinator_given`: --coordinator_address, else
JAX_COORDINATOR_ADDRESS, else a cluster's), its host:port form (`address_format_error`, for
hgmt.main's command line), process 0's port free and a port number (`check_coordinator_port`,
with Slurm's settings read as JAX reads them: `jax_coordinator`, `jax_reads_slurm`) and its
host's name lookup (`check_coordinator_host`); the cluster JAX reads the rest from
(`jax_cluster`, for what a job that never connects is to check). The checks each say in one
line, an error or for the host's lookup a warning, what JAX would answer with a crash, a
traceback or a silent wait until the connect timeout.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# How long `cluster.initialize` waits for the coordinator host's name lookup, whose answer
# only decides a warning: a resolver that works answers in far less; glibc's waits 5 s for each
# try of a name server that does not answer (resolv.conf's timeout), two tries per server by
# default. JAX's connect looks the name up again itself, bounded by --connect_timeout.
LOOKUP_WAIT_S = 5
# How long the line of a job that never connected waits to name the cluster JAX reads
# (`jax_cluster`), which on a Cloud TPU VM asks its metadata server again; past it the line
# is worded for any cluster. There it is hgmt's only detection: the checks before the connect
# read Slurm's alone, and JAX's own, in `jax.distributed.initialize`, keeps no answer.
DETECTION_WAIT_S = 5
# The coordinator address (host:port) JAX takes when `jax.distributed.initialize` is given
# none (--coordinator_address), before it asks a cluster for the rest.
ADDRESS_VARIABLE = "JAX_COORDINATOR_ADDRESS"


def coordinator_given(coordinator_address: str | None) -> tuple[str | None, str]:
    """The coordinator address JAX takes before it asks a cluster, and the name it was given
    by: `coordinator_address` (--coordinator_address), which comes first as in JAX, else
    JAX_COORDINATOR_ADDRESS; the address None where neither is set."""
    if coordinator_address:
        return coordinator_address, "--coordinator_address"
    return os.environ.get(ADDRESS_VARIABLE) or None, ADDRESS_VARIABLE


def address_format_error(coordinator_address: str | None, distributed: bool) -> str | None:
    """What is wrong, naming it as it was given and the fix, with the coordinator address JAX
    takes (`coordinator_given`: --coordinator_address, or with `distributed`
    JAX_COORDINATOR_ADDRESS) when it is not host:port of process 0 (JAX's IndexError or C++
    'Failed to start RPC server', as tracebacks): no host, an IPv6 address out of brackets, a
    port that is no number from 1 to 65535. None where it is host:port or none is taken."""
    address, source = coordinator_given(coordinator_address)
    if address and (coordinator_address or distributed):
        host, _, port = address.rpartition(":")
        if ":" in host and not (host.startswith("[") and host.endswith("]")):
            return (f"{source}={address}: an IPv6 address goes in brackets "
                    f"before the port, [address]:port (e.g. {source}=[::1]:23455)")
        if not host or not _is_port(port):
            example = host or (address if ":" not in address else "localhost")
            return (f"{source}={address}: give host:port of process 0, the "
                    f"port a number from 1 to 65535 that is free on process 0's host "
                    f"(e.g. {source}={example}:23455)")
    return None


def check_coordinator_port(coordinator_address: str | None, process_id: int | None) -> None:
    """On process 0, a ValueError (`port_taken`) when the port its coordination service is
    to listen on is held by another socket: JAX's own attempt logs a C++ error and raises
    'Failed to start RPC server', or crashes the process (SIGSEGV); on every process, a
    ValueError when the coordinator's port is no number (`_check_port_number`). The address is
    `coordinator_given`'s; under Slurm with --distributed the rest is the cluster's
    (`jax_coordinator`); where JAX takes them from no cluster hgmt reads, nothing is
    checked."""
    given = coordinator_address
    found = jax_coordinator(coordinator_address, process_id)
    if found is None:
        return
    coordinator_address, process_id = found
    # A port that is no number: JAX's C++ crashed process 0 (SIGSEGV), and the others
    # waited for the connect timeout. Named as given: the flag, the variable, or under Slurm
    # the port's variable.
    _check_port_number(coordinator_address, None if given else ADDRESS_VARIABLE if
                       os.environ.get(ADDRESS_VARIABLE) else "JAX_COORDINATOR_PORT")
    if process_id != 0:
        return
    bind = bind_address(coordinator_address)
    _check_port_number(bind, "JAX_COORDINATOR_BIND_ADDRESS")
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    for family in (socket.AF_INET6, socket.AF_INET) if ":" in host else (socket.AF_INET,):
        try:
            probe = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            continue  # no IPv6 on this host: IPv4
        with probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC does
            try:
                probe.bind((host if family == socket.AF_INET6 or ":" not in host
                            else "0.0.0.0", int(port)))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise ValueError(port_taken(bind, e.strerror or str(e), given)) from None
                if e.errno == errno.EACCES:  # a port below 1024 as another user than root
                    raise ValueError(_port_refused(bind, e.strerror or str(e), given)) from None
                continue
            return


def _check_port_number(address: str, variable: str | None) -> None:
    """A ValueError naming `variable` (where it is set, else --coordinator_address) when the
    port of `address` (host:port) is no number from 1 to 65535."""
    port = address.rpartition(":")[2]
    if _is_port(port):
        return
    source = (f"{variable}={os.environ[variable]}" if variable and os.environ.get(variable)
              else f"--coordinator_address={address}")
    raise ValueError(f"{source}: the coordinator's port {port!r} is no port number; give one "
                     f"from 1 to 65535 that is free on process 0's host")


def _is_port(port: str) -> bool:
    """Whether `port` (the text after host:) is a port number, 1 to 65535, in digits int()
    reads."""
    return port.isdecimal() and 0 < int(port) < 65536


def bind_address(coordinator_address: str) -> str:
    """The host:port process 0's coordination service listens on: JAX's choice,
    JAX_COORDINATOR_BIND_ADDRESS or every address at `coordinator_address`'s port."""
    port = coordinator_address.rpartition(":")[2]
    return os.environ.get("JAX_COORDINATOR_BIND_ADDRESS") or f"[::]:{port}"


def port_taken(bind: str | None, why: str, coordinator_address: str | None) -> str:
    """The message of a coordination service that cannot listen on `bind` (`why`); `bind`
    None: a port JAX chose from settings hgmt does not read (`jax_coordinator`), unnamed."""
    where = (f"port {bind.rpartition(':')[2]} ({bind}: {why})" if bind else
             f"the coordinator's port ({why})")
    chosen = ("" if coordinator_given(coordinator_address)[0] else
              " (the port JAX chose for this cluster's job is taken)")
    return (f"process 0 cannot start the job's coordination service on {where}: another "
            f"job's coordinator, or a process of an earlier run still "
            f"running, holds it. End that process, or {_another_port(coordinator_address)}"
            f"{chosen}")


def _port_refused(bind: str, why: str, coordinator_address: str | None) -> str:
    """The message of a coordination service that may not listen on `bind` (`why`): no
    socket holds the port, but the system keeps it from this process (below 1024, root's)."""
    port = bind.rpartition(":")[2]
    return (f"process 0 may not start the job's coordination service on port {port} ({bind}: "
            f"{why}): a port below 1024 is for root only. Use one from 1024 to 65535: "
            f"{_another_port(coordinator_address)}")


def _another_port(coordinator_address: str | None) -> str:
    """How to give the job another coordinator port: where the address was given
    (`coordinator_given`), else JAX_COORDINATOR_PORT (the port JAX chose for a cluster's
    job)."""
    address, source = coordinator_given(coordinator_address)
    return (f"give every process of the job another free port ({source}="
            f"{address.rpartition(':')[0]}:PORT)" if address else
            "set JAX_COORDINATOR_PORT to a free port for every process of the job")


def jax_coordinator(coordinator_address: str | None,
                     process_id: int | None) -> tuple[str, int] | None:
    """The coordinator address (host:port) and this process's index JAX takes for the job:
    those given (the address by `coordinator_given`), the rest read from Slurm as JAX reads
    them. None where they are not both given and JAX does not take them from Slurm
    (`jax_reads_slurm`: outside Slurm, or where JAX reads another cluster first), or in a
    Slurm environment JAX cannot read."""
    coordinator_address = coordinator_given(coordinator_address)[0]
    if coordinator_address is not None and process_id is not None:
        return coordinator_address, process_id
    if not jax_reads_slurm():
        return None
    try:  # JAX's own reading of the cluster, from its private modules
        from jax._src.clusters import slurm_cluster

        cluster = slurm_cluster.SlurmCluster
        if process_id is None:
            process_id = cluster.get_process_id()
        if coordinator_address is None:
            coordinator_address = cluster.get_coordinator_address(
                None, os.environ.get("JAX_COORDINATOR_PORT"))
    # A Slurm environment JAX cannot read (its error follows), or a JAX whose private
    # cluster classes differ: None, so that no check stops a job JAX starts.
    except (KeyError, ValueError, ImportError, AttributeError, TypeError):
        return None
    return coordinator_address, process_id


def jax_reads_slurm() -> bool:
    """Whether JAX takes the settings it is not given from Slurm: a Slurm environment, and no
    cluster JAX reads first (`jax_cluster`; Open MPI's mpirun inside a Slurm allocation, whose
    coordinator port and process index are not Slurm's). False where JAX's private cluster
    classes differ."""
    try:
        from jax._src.clusters import slurm_cluster

        present = slurm_cluster.SlurmCluster.is_env_present()
    except (KeyError, ValueError, ImportError, AttributeError, TypeError):
        return False
    return bool(present) and jax_cluster() == "slurm"


# hgmt's names of the clusters JAX reads a job's settings from, by JAX's class.
_CLUSTERS = {"SlurmCluster": "slurm", "OmpiCluster": "open_mpi", "GceTpuCluster": "tpu_vm",
             "GkeTpuCluster": "gke_tpu", "K8sCluster": "kubernetes"}
# The clusters JAX reads a job's settings from, as the messages and --distributed's help
# list them.
CLUSTERS_READ = "Slurm, Open MPI's mpirun, a Cloud TPU VM, TPUs on GKE, Kubernetes"


def jax_cluster(wait_s: float | None = None) -> str | None:
    """The cluster JAX takes the settings it is not given from, as JAX picks it (the first
    of its cluster classes, in their order, whose environment is present; opt-in ones left
    out): 'slurm', 'open_mpi', 'tpu_vm' (a Cloud TPU VM), 'gke_tpu' (TPUs on GKE),
    'kubernetes', or JAX's class name for a cluster hgmt has no name for. None where none is
    present, or where JAX's private cluster classes differ or fail here. With `wait_s`, the
    detection (which on a Cloud TPU VM asks its metadata server, with retries) runs in a
    daemon thread, left waiting, and None is the answer where it gives none within `wait_s`."""
    if wait_s is None:
        return _jax_cluster()
    answers = _answers_within(_jax_cluster, wait_s, "hgmt-cluster-detection")
    return answers[0] if answers else None


def _answers_within(call: Callable[[], T], wait_s: float, name: str) -> list[T]:
    """[call()] where it returns within `wait_s`, else [] (it runs on in a daemon thread
    named `name`, left waiting): for a call the process must not wait on for ever."""
    answers: list[T] = []
    thread = threading.Thread(target=lambda: answers.append(call()), name=name, daemon=True)
    thread.start()
    thread.join(wait_s)
    return answers[:1]


def _jax_cluster() -> str | None:
    """`jax_cluster`, in the caller's thread."""
    try:
        from jax._src import clusters

        for env in clusters.ClusterEnv._cluster_types:
            if not env.opt_in_only_method and env.is_env_present():
                return _CLUSTERS.get(env.__name__, env.__name__)
    # A metadata server or Kubernetes API that does not answer here failed JAX's own
    # detection as well; the caller words what to check without the cluster's name.
    except Exception:  # noqa: BLE001
        return None
    return None


def check_coordinator_host(coordinator_address: str | None, wait_s: float) -> None:
    """Warns at once when the host of the coordinator address (`coordinator_given`) does not
    resolve here (a typo in --coordinator_address or JAX_COORDINATOR_ADDRESS), which JAX's
    client keeps trying until the connect timeout; and when this host's resolver does not
    answer the lookup (EAI_AGAIN, or no answer within `wait_s`: the lookup runs in a daemon
    thread, left waiting), where the name may be right.
    A name this host's resolver may yet learn is not refused."""
    address, source = coordinator_given(coordinator_address)
    if not address:
        return
    host, _, port = address.rpartition(":")

    def look_up() -> Exception | None:
        try:
            socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM)
            return None
        except Exception as e:  # noqa: BLE001  (worded below, in the caller's thread)
            return e

    answers = _answers_within(look_up, wait_s, "hgmt-coordinator-lookup")
    error = answers[0] if answers else None
    if not answers or (isinstance(error, socket.gaierror) and error.errno == socket.EAI_AGAIN):
        # The resolver, not the name: a DNS server down, slow or unreachable.
        silent = (f"within {wait_s:g} s" if not answers else
                  getattr(error, "strerror", None) or str(error))
        logging.warning("%s=%s: this host's name lookup of %s did not answer (%s; the name "
                        "may be right), so this process may not reach the coordinator; check "
                        "this host's DNS resolver (/etc/resolv.conf), or give process 0's IP "
                        "address", source, address, host, silent)
    elif isinstance(error, (socket.gaierror, UnicodeError)):
        logging.warning("%s=%s: its host %s does not resolve on this host (%s), so this "
                        "process cannot reach the coordinator; give process 0's host name or "
                        "address", source, address, host,
                        getattr(error, "strerror", None) or error)
    elif error is not None:
        raise error
