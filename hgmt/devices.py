"""The devices a step runs on, and moving trees onto them and back.

Every device of every process lies on one mesh axis, "batch", process by process (the order
`jax.pmap` uses): device i holds the i-th share of the global batch. A step runs as one
jitted program over that mesh (`spmd`), on global arrays whose leading axis is the device
axis, so that each device sees what `jax.pmap` would give it and the step's collectives name
the axis "batch". Unlike `jax.pmap`, the call converts nothing in Python: `pmap` flattens its
arguments and, with several processes, turns every leaf between host-local and global arrays
on every call, which for the train state's thousands of leaves makes each call cost the host
several times the jit's (docs/performance.md, "Step dispatch").
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

AXIS = "batch"


@functools.cache
def mesh() -> jax.sharding.Mesh:
    """All devices on the axis AXIS, those of process 0 first, then process 1's, ...; within
    a process in `jax.local_devices()` order. Every process must drive as many devices as the
    others (`check_even`). Made once a process (after `jax.distributed.initialize`, which
    comes before any use of the devices), not for every batch placed."""
    check_even()
    devices = [d for p in range(jax.process_count()) for d in jax.local_devices(p)]
    return jax.sharding.Mesh(np.array(devices), (AXIS,))


def check_even() -> None:
    """Raises ValueError unless every process drives the same number of devices: each feeds
    its own devices an equal share of the global batch."""
    counts = [len(jax.local_devices(p)) for p in range(jax.process_count())]
    if len(set(counts)) > 1:
        each = ", ".join(f"process {p}: {n}" for p, n in enumerate(counts))
        raise ValueError(
            f"the processes drive different numbers of devices ({each}); each takes an equal "
            f"share of the batch, so give every process as many devices (e.g. the same "
            f"--gpus-per-task under Slurm, or JAX_LOCAL_DEVICE_IDS / CUDA_VISIBLE_DEVICES "
            f"listing as many devices on each host)")


def sharding() -> jax.sharding.NamedSharding:
    """Arrays (devices, ...) split over the mesh's devices along their first axis."""
    return jax.NamedSharding(mesh(), jax.P(AXIS))


def place(tree: Any, copy: bool = False) -> Any:
    """This process's share of a tree of global arrays: each host leaf (local devices, ...)
    becomes a global array (devices, ...), its rows on this process's devices in order.
    `copy`: copy each leaf first (on a CPU `device_put` may alias the host buffer, which must
    then outlive the array)."""
    target = sharding()
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(
        target, np.array(x) if copy else x), tree)


def place_batch(batch: dict, copy: bool = False) -> dict:
    """This process's share of the global batch, (B, ...) host arrays, -> its rows of the
    global arrays (devices, B / local devices, ...) an `spmd` step takes: its examples split
    over its devices in order (views, reshaped), then placed (`place`, `copy` as there)."""
    n = jax.local_device_count()
    return place(jax.tree.map(lambda x: x.reshape((n, -1) + x.shape[1:]), batch), copy)


def barrier(name: str) -> None:
    """Every process waits here until all have come (JAX's `sync_global_devices`, `name`
    naming the point); nothing with one process."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def on_every_process(ok: bool) -> bool:
    """Whether `ok` holds on every process (a collective with several processes)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.int32(ok))).min())


def replicate(tree: Any) -> Any:
    """A copy of `tree` (host or device values) on every device: each leaf (devices, ...),
    the arrays `spmd` steps take and return."""
    n = jax.local_device_count()
    return place(jax.tree.map(
        lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree))


def to_host(tree: Any) -> Any:
    """One device's copy of `tree` (each leaf (devices, ...), as `replicate` or an `spmd`
    step gives), on the host as numpy: each leaf's first addressable shard, all fetched by one
    `jax.device_get`. The devices must hold the same values (a step's `pmean`'d gradients
    make them so)."""
    leaves, treedef = jax.tree.flatten(tree)
    shards = jax.device_get([leaf.addressable_shards[0].data for leaf in leaves])
    return treedef.unflatten([np.asarray(shard)[0, ...] for shard in shards])


def spmd(fn: Callable, donate_argnums: int | tuple[int, ...] = ()) -> Callable:
    """`fn` run on every device over its share: each argument and output leaf a global array
    (devices, ...) as `place`/`replicate` make, `fn` seeing one device's row (...) with its
    collectives over AXIS, as `jax.pmap(fn, axis_name=AXIS)` would run it, compiled once for
    a tree of shapes. `donate_argnums` as `jax.jit`'s."""

    def per_device(*args: Any) -> Any:
        out = fn(*jax.tree.map(lambda x: jax.lax.squeeze(x, [0]), args))
        return jax.tree.map(lambda x: jax.lax.expand_dims(x, [0]), out)

    # The program's name in profiles and the compilation cache: jit_<fn's name>.
    per_device.__name__ = getattr(fn, "__name__", None) or getattr(
        getattr(fn, "func", None), "__name__", "step")

    target = sharding()
    mapped = jax.shard_map(per_device, mesh=target.mesh, in_specs=target.spec,
                           out_specs=target.spec, check_vma=False)
    return jax.jit(mapped, in_shardings=target, out_shardings=target,
                   donate_argnums=donate_argnums)
