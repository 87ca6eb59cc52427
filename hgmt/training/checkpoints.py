"""Orbax checkpoints of a workdir as training saves and resumes them (its file layout:
`hgmt.workdirs`); the commands on a trained workdir read one with
`hgmt.inference.trained_model`.

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact and the partial one is ignored. A
checkpoint damaged after that (a disk or copy fault) is reported and skipped on resume
(`restore_newest_readable`): the newest one that reads (on every process) is used, and the
damaged ones are moved to `<workdir>/checkpoints_unreadable/` (kept for inspection, out of
orbax's way so that the resumed run can write those steps again); an OSError while reading is
tried again first (`RETRY_DELAYS_S`). When none reads, the error says so: that is a checkpoint
of another configuration or hgmt version, not damage. XLA's out-of-memory error while a
checkpoint is placed on the device is not damage either: it is raised as it came, for
`device_memory.explained` to name the settings, and no checkpoint is skipped or moved.

Every read checks the arrays against the CRC-32s saved with them
(`hgmt.training.checkpoint_digests`); a write that fails (a full disk) is handled by
`hgmt.training.checkpoint_write_faults`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from hgmt import console, devices, workdirs
from hgmt.training import checkpoint_digests, device_memory


def manager(workdir: str, keep: int = 3, async_save: bool = True,
            with_data: bool = True) -> ocp.CheckpointManager:
    """The CheckpointManager of a workdir; keeps the last `keep` checkpoints."""
    names = ("state", checkpoint_digests.DIGESTS) + (("data",) if with_data else ())
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(workdirs.checkpoint_dir(workdir), options=options,
                                 item_names=names)


# Seconds between the tries of a checkpoint whose restore raised an OSError (a brief storage
# or network fault), before it counts as unreadable.
RETRY_DELAYS_S = (1.0, 4.0)


def restore_newest_readable(mngr: ocp.CheckpointManager, args: Callable[[], Any],
                            workdir: str, older_layouts: Sequence[OlderLayout] = ()
                            ) -> tuple[int, Any] | None:
    """Restores the newest checkpoint of `mngr` that reads: -> (step, restored), or None when
    there is none. `args()` makes the restore arguments (afresh for each try); a checkpoint
    they do not read is tried in each of `older_layouts` (written by an older hgmt) before it
    counts as unreadable.

    A restore that raises an OSError is tried again after each of RETRY_DELAYS_S; one that
    raises XLA's out-of-memory error (`device_memory.is_out_of_memory`: the restored state
    does not fit on the device beside the one there) raises it. A checkpoint
    that does not read is logged (path, error) and the previous one is tried; the unreadable
    ones are then moved to <workdir>/checkpoints_unreadable/ (by process 0; nothing is
    deleted) and `mngr` reloaded. When no checkpoint reads, raises ValueError: every
    checkpoint failing means another config or hgmt version, not damage.

    With several processes each reads with a reader of its own (orbax's restore waits for
    every process at a barrier, which processes trying different steps would pass out of
    step), and they agree (`_agree`): all resume from the newest step that every process
    read, and every newer one (one that some process could not read, e.g. its own data
    position file) is moved aside."""
    import jax

    own = jax.process_count() > 1
    reader = _own_reader(mngr.directory, tuple(args().keys())) if own else mngr
    try:
        return _restore_agreed(mngr, reader, args, workdir, older_layouts)
    finally:
        if own:
            reader.close()


def _restore_agreed(mngr: ocp.CheckpointManager, reader: ocp.CheckpointManager,
                    args: Callable[[], Any], workdir: str,
                    older_layouts: Sequence[OlderLayout]) -> tuple[int, Any] | None:
    """`restore_newest_readable`'s rounds: each process reads its newest readable step at or
    below the bound, and the bound drops to the oldest of those until all read the same."""
    steps = sorted(mngr.all_steps(), reverse=True)
    failures: list[tuple[int, Exception]] = []  # this process's, newest first
    found, bound = None, None
    while True:
        if found is None or (bound is not None and found[0] > bound):
            found = _newest_readable(reader, steps, args, bound, workdir, failures,
                                     older_layouts)
        rows = _agree(found[0] if found else -1, bool(failures), steps[0] if steps else -1)
        bound = int(rows[:, 0].min())
        if bound == rows[:, 0].max():
            break
        if found is not None and found[0] > bound:
            logging.error("checkpoint %s/%d reads here but not on process(es) %s; trying the "
                          "previous one", workdirs.checkpoint_dir(workdir), found[0],
                          ", ".join(str(i) for i in np.flatnonzero(rows[:, 0] < found[0])))
    if bound < 0:
        blind = [int(i) for i in np.flatnonzero(rows[:, 2] < 0)]
        if blind and rows[:, 2].max() >= 0:  # some processes see checkpoints, others none
            seeing = ", ".join(str(i) for i in np.flatnonzero(rows[:, 2] >= 0))
            raise ValueError(
                f"process(es) {', '.join(map(str, blind))} see no checkpoint in "
                f"{workdirs.checkpoint_dir(workdir)} where process(es) {seeing} see some; "
                f"every process must see the same workdir (a folder shared by all the hosts, "
                f"or the same object-store path)")
        if not rows[:, 1].any():
            return None
        _raise_none_reads(workdir, failures or [(s, None) for s in steps] or [(-1, None)])
    unread = [s for s in steps if s > bound]
    if rows[:, 2].max() > bound:  # some process lists a newer one: moved aside by process 0
        move_aside(mngr, unread, workdirs.unreadable_dir(workdir))
        logging.warning("resuming from step %d; the unreadable checkpoint(s) %s were moved to "
                        "%s", bound, unread, workdirs.unreadable_dir(workdir))
    return found


def _newest_readable(reader: ocp.CheckpointManager, steps: list[int], args: Callable[[], Any],
                     bound: int | None, workdir: str, failures: list[tuple[int, Exception]],
                     older_layouts: Sequence[OlderLayout] = ()) -> tuple[int, Any] | None:
    """(step, restored) of the newest of `steps` (newest first) at or below `bound` that this
    process reads, in today's layout (`args`) or one of `older_layouts`, or None; a step that
    fails is logged and added to `failures`, one that runs out of device memory raises."""
    tried = {s for s, _ in failures}
    for step in steps:
        if (bound is not None and step > bound) or step in tried:
            continue
        try:
            return step, _restore(reader, step, args, workdir)
        except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
            if device_memory.is_out_of_memory(e):
                raise  # the state does not fit beside the one on the device: not damage
            older = _restore_older(reader, step, older_layouts, workdir)
            if older is not None:
                return step, older
            logging.error("checkpoint %s/%d does not read, trying the previous one: %s: %s",
                          workdirs.checkpoint_dir(workdir), step, type(e).__name__, str(e)[:500])
            failures.append((step, e))
    return None


@dataclasses.dataclass(frozen=True)
class OlderLayout:
    """A layout an older hgmt wrote checkpoints in: `args()` restores one, `convert` turns
    what it restored into today's layout; `name` says which, in the log."""

    name: str
    args: Callable[[], Any]
    convert: Callable[[Any], Any]


def _restore_older(reader: ocp.CheckpointManager, step: int,
                   older_layouts: Sequence[OlderLayout], workdir: str) -> Any | None:
    """`step` restored in the first of `older_layouts` that reads it, converted, or None;
    XLA's out-of-memory error is raised."""
    for layout in older_layouts:
        try:
            restored = layout.convert(_restore(reader, step, layout.args, workdir))
        except Exception as e:  # noqa: BLE001  (not this layout: try the next)
            if device_memory.is_out_of_memory(e):
                raise
            continue
        logging.info("checkpoint %s/%d is in an older layout (%s): read and converted",
                     workdirs.checkpoint_dir(workdir), step, layout.name)
        return restored
    return None


def _restore(reader: ocp.CheckpointManager, step: int, args: Callable[[], Any],
             workdir: str) -> Any:
    """`reader.restore` of `step`, tried again after each of RETRY_DELAYS_S on an OSError;
    its state's arrays checked against their digests (`checkpoint_digests.verify`)."""
    for delay in RETRY_DELAYS_S:
        try:
            restored = reader.restore(step, args=args())
            break
        except OSError as e:
            logging.warning("checkpoint %s/%d: %s: %s; trying it again in %g s",
                            workdirs.checkpoint_dir(workdir), step, type(e).__name__,
                            str(e)[:300], delay)
            time.sleep(delay)
    else:
        restored = reader.restore(step, args=args())
    if "state" in restored:
        checkpoint_digests.verify(epath.Path(reader.directory) / str(step), restored["state"])
    return restored


def _agree(step: int, failed: bool, newest: int) -> np.ndarray:
    """(processes, 3) int32: every process's (the step it read or -1, whether a checkpoint
    failed to read there, its newest step or -1); a collective with several processes."""
    import jax

    row = np.array([step, failed, newest], np.int32)
    if jax.process_count() == 1:
        return row[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(row)).reshape(-1, 3)


def _own_reader(directory: Any, item_names: tuple[str, ...]) -> ocp.CheckpointManager:
    """A manager of the checkpoints in `directory` that restores for this process alone: no
    barrier with the other processes, which may be reading other steps."""
    import jax

    me = jax.process_index()
    options = ocp.CheckpointManagerOptions(
        create=False, enable_async_checkpointing=False,
        multiprocessing_options=ocp.options.MultiprocessingOptions(primary_host=me,
                                                                   active_processes={me}))
    return ocp.CheckpointManager(directory, options=options, item_names=item_names)


def read_state(workdir: str, step: int, template: Any) -> Any | None:
    """The train state of <workdir>/checkpoints/<step> restored into `template` (a state in
    the checkpoint layout) by this process alone, without a barrier, or None where there is
    no such checkpoint or it does not read (logged): callers agree across processes on what
    to do with it. XLA's out-of-memory error is raised."""
    folder = workdirs.checkpoint_dir(workdir)
    if step not in _steps_on_disk(folder):
        return None
    with contextlib.closing(_own_reader(folder, ("state",))) as reader:
        try:
            return _restore(reader, step, lambda: ocp.args.Composite(
                state=ocp.args.StandardRestore(template)), workdir)["state"]
        except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
            if device_memory.is_out_of_memory(e):
                raise
            logging.error("checkpoint %s/%d does not read: %s: %s", folder, step,
                          type(e).__name__, str(e)[:500])
            return None


def _raise_none_reads(workdir: str, failures: list[tuple[int, Exception | None]]) -> None:
    """The CannotResume of a workdir none of whose checkpoints reads on every process
    (`failures`: this process's, newest first; without an error, those another process could
    not read)."""
    step, e = failures[0]
    newest = f"{type(e).__name__}: {str(e)[:300]}" if e else "it reads on no process"
    raise CannotResume(
        f"cannot resume from {workdirs.checkpoint_dir(workdir)}: none of its checkpoints "
        f"(steps {', '.join(str(s) for s, _ in failures)}) reads as this config's train "
        f"state (the newest: {newest}). They were written by another model "
        f"configuration or an older hgmt. Use a new --workdir, or the config and hgmt "
        f"version that wrote them") from e


def resume_worker_count(workdir: str, worker_count: int, process_count: int) -> int:
    """The loader workers this process (`jax.process_index()`) of a run resuming in `workdir`
    must use: grain's saved data position holds each process's own worker count (one file
    per process: under -1 hosts with other usable cores run other counts) and restores only
    into the same. For `worker_count` -1 (auto) this
    process's count in the newest checkpoint whose position reads; a fixed count or a process
    count that differs from it raises CannotResume naming the fix. Without such a checkpoint,
    `worker_count` as given (a damaged one is `restore_newest_readable`'s)."""
    position = saved_position(workdir)
    if position is None:
        return worker_count
    file, state = position
    data, saved = file.parent, int(state["worker_count"])
    saved_processes = int(re.fullmatch(r"process_\d+-of-(\d+)\.json", file.name)[1])
    if saved_processes != process_count:
        raise CannotResume(
            f"cannot resume from {data.parent}: its data position was saved by "
            f"{saved_processes} process(es), one file each, and this run has {process_count}; "
            f"rerun with {saved_processes} process(es), or train in a new --workdir")
    if worker_count not in (-1, saved):
        raise CannotResume(
            f"config.worker_count={worker_count}: the checkpoint {data.parent} saved the "
            f"loader's position with {saved} worker(s), and only that many can resume it; "
            f"rerun with --config.worker_count={saved} (or -1, which takes the checkpoint's)")
    return saved


def saved_position(workdir: str) -> tuple[epath.Path, dict] | None:
    """(file, its JSON object) of grain's saved loader position in the newest checkpoint of
    `workdir` whose position reads: this process's own file (`jax.process_index()` i),
    `process_<i>-of-<n>.json` (it holds that process's `worker_count` and `sampler`, the repr
    grain compares on restoring), or, in a checkpoint saved by fewer processes (n <= i),
    which has no such file, the first process's (its name says how many saved it). A
    checkpoint saved by enough processes to have this process's file but lacking it is
    skipped, as one whose file is damaged: its restore fails on this process too
    (`restore_newest_readable` moves past it). None when no checkpoint has one."""
    import jax

    process_index = jax.process_index()
    for step in reversed(_steps_on_disk(workdirs.checkpoint_dir(workdir))):
        data = epath.Path(workdirs.checkpoint_dir(workdir)) / str(step) / "data"
        files = {int(m[1]): (f, int(m[2])) for f in (data.glob("process_*-of-*.json")
                                                      if data.is_dir() else ())
                 if (m := re.fullmatch(r"process_(\d+)-of-(\d+)\.json", f.name))}
        saved_by = max((n for _, n in files.values()), default=0)
        if not files or (process_index not in files and saved_by > process_index):
            continue  # no position, or not this process's own: passed over as a damaged one
        file = files[process_index if process_index in files else min(files)][0]
        try:
            state = json.loads(file.read_text())
            int(state["worker_count"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        return file, state
    return None


def newest_step_on_disk(workdir: str) -> int:
    """The step of the newest checkpoint folder in `workdir` (read or not), 0 when none."""
    return max(steps_on_disk(workdir), default=0)


def steps_on_disk(workdir: str) -> list[int]:
    """The steps of the checkpoint folders in `workdir` (read or not), oldest first; [] when
    it has none (no checkpoint folder, or one holding only unfinished writes)."""
    return _steps_on_disk(workdirs.checkpoint_dir(workdir))


def _steps_on_disk(folder: str) -> list[int]:
    folder = epath.Path(folder)
    return sorted(int(d.name) for d in folder.iterdir() if d.name.isdecimal()) if folder.is_dir(
        ) else []


def move_aside(mngr: ocp.CheckpointManager, steps: list[int], aside: str) -> None:
    """Moves the checkpoints `steps` of `mngr` to the folder `aside` as <step>-<time> (out of
    orbax's way, nothing deleted; process 0 moves them, each logged), then reloads `mngr`.
    Every process calls it alike."""
    import jax

    if jax.process_index() == 0:
        epath.Path(aside).mkdir(parents=True, exist_ok=True)
        for step in steps:
            moved = epath.Path(aside) / workdirs.set_aside_name(step)
            (epath.Path(mngr.directory) / str(step)).rename(moved)
            # Each caller logs the move for the user, with its reason.
            logging.info("moved the checkpoint %s/%d to %s", mngr.directory, step, moved,
                         extra=console.VERBOSE)
    devices.barrier("checkpoints moved aside")
    mngr.reload()


class CannotResume(ValueError):
    """A rerun whose config, training split, processes or loader workers do not fit the run
    its workdir holds (`hgmt.training.resume`'s checks, `resume_worker_count`), or none of
    whose checkpoints reads as its train state; the message names each difference and the
    fix."""
