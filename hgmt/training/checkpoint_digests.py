"""The CRC-32 of each array that a checkpoint holds beside its train state (`saved`), and
their check on every read (`verify`).

Orbax and tensorstore do not check an array's bytes when they read them, so a checkpoint also
holds a CRC-32 of each array as saved (`DIGESTS`, `saved`), and every read compares the arrays
it restored with them (`verify`; the replicated state training saves): bytes changed since
the save make the checkpoint `DamagedCheckpoint`, unreadable like one orbax cannot read
(`hgmt.training.checkpoints.restore_newest_readable` passes over it). A checkpoint of an older
hgmt, without them, is read unchecked.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

# The checkpoint item holding the CRC-32 of each array of its `state` (`saved`).
DIGESTS = "digests"


class DamagedCheckpoint(ValueError):
    """A checkpoint whose arrays read, but not with the bytes saved (`verify`)."""


def _leaf_name(path: tuple) -> str:
    """A pytree path as '/'-joined keys, the same for a TrainState's attributes and for the
    dict orbax restores it as without a template."""
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def _digest(leaf: Any) -> str:
    """'<dtype><shape>:<CRC-32 of its bytes>' of an array (numpy, or a JAX array: one
    addressable copy, every copy of a checkpoint's state being the same)."""
    import zlib

    if hasattr(leaf, "addressable_data"):
        leaf = leaf.addressable_data(0)
    a = np.ascontiguousarray(np.asarray(leaf))
    return f"{a.dtype}{list(a.shape)}:{zlib.crc32(a.reshape(-1).view(np.uint8)):08x}"


def digests(state: Any) -> dict[str, str]:
    """{leaf name: `_digest`} of every array of `state` (a pytree)."""
    import jax

    return {_leaf_name(path): _digest(leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


def saved(state: Any) -> dict[str, Any]:
    """The Composite items that save `state` (a train state in the checkpoint layout, on the
    host) with its digests: `{'state': ..., DIGESTS: ...}`."""
    return {"state": ocp.args.StandardSave(state), DIGESTS: ocp.args.JsonSave(digests(state))}


def verify(step_dir: Any, restored: Any) -> None:
    """Raises DamagedCheckpoint when an array of `restored` (the `state` read from the
    checkpoint folder `step_dir`, whole or a subtree of it such as {'params', 'batch_stats'})
    differs from its digest saved there, or when the digests do not read; nothing to compare
    without digests (an older hgmt's checkpoint). Arrays are matched by name (a subtree's
    leaves by their place in it) and compared where restored in the dtype and shape saved:
    a replicated state's, as training saves it (a sharded array's one local shard would not
    be compared)."""
    import jax

    path = epath.Path(step_dir) / DIGESTS
    if not path.exists():
        return
    # Read by this process alone, as its callers read: orbax's default waits for every
    # process, whose other reads would meet this barrier out of step.
    me = jax.process_index()
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    try:
        with ocp.Checkpointer(ocp.JsonCheckpointHandler(multiprocessing_options=alone),
                              multiprocessing_options=alone) as reader:
            recorded = reader.restore(path)
        if not isinstance(recorded, dict):
            raise ValueError(f"a {type(recorded).__name__}, not an object")
    except Exception as e:  # noqa: BLE001  (orbax and json raise many types)
        raise DamagedCheckpoint(f"checkpoint {step_dir} is damaged: its {DIGESTS} do not "
                                f"read ({type(e).__name__}: {str(e)[:200]})") from e
    # A leaf restored in another dtype than saved (a template's, e.g. the step's int64) was
    # converted by the restore: its bytes are not the saved ones to compare.
    differ = [name for name, value in digests(restored).items()
              if name in recorded and recorded[name] != value
              and recorded[name].split(":")[0] == value.split(":")[0]]
    if differ:
        raise DamagedCheckpoint(
            f"checkpoint {step_dir} is damaged: {len(differ)} of its "
            f"{len(jax.tree_util.tree_leaves(restored))} arrays read differ from what was "
            f"saved (e.g. {differ[0]}: CRC-32 {digests(restored)[differ[0]]}, saved "
            f"{recorded[differ[0]]}), a disk or copy fault after the save")
