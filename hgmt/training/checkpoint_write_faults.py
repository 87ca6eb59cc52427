"""A checkpoint write that fails: its partial folder removed (`remove_partial`; a best
checkpoint's on any error, `unfinished_best_removed`; those an earlier run left, as a run
starts, `remove_leftovers`), a full disk or quota turned into an error naming the fix
(`stop_on_full_disk`), and the noise orbax's failed writes leave on stderr dropped
(`ignore_callbacks_into_closed_loops`).

A full disk or quota while a checkpoint is written (`stop_on_full_disk`) stops the run at once
with `disk_space.DiskFull` naming the workdir, the step and the space left; the temporary
folder of the failed checkpoint is removed and the earlier checkpoints stay readable, so the
rerun with space resumes from the newest of them.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import sys
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING

from etils import epath

from hgmt import console, disk_space, paths, workdirs
from hgmt.training import checkpoints

if TYPE_CHECKING:
    import orbax.checkpoint as ocp

_SETTLE_S = 1.0  # `remove_partial` is done once no partial folder has appeared for this long
_REMOVE_TIMEOUT_S = 10.0  # and gives up after this long


def _partial_folders(workdir: str, best_only: bool = False) -> list[str]:
    """The temporary folders of unfinished checkpoint writes (orbax's
    `<step>.orbax-checkpoint-tmp*`) in <workdir>/checkpoints and <workdir>/best, or in best
    alone (`best_only`)."""
    folders = [workdirs.best_dir(workdir)] if best_only else [
        workdirs.checkpoint_dir(workdir), workdirs.best_dir(workdir)]
    return [os.fspath(path)
            for folder in map(epath.Path, folders)
            if folder.is_dir()
            for path in sorted(folder.iterdir()) if ".orbax-checkpoint-tmp" in path.name]


def remove_partial(workdir: str, best_only: bool = False) -> list[str]:
    """Removes the temporary folders of unfinished checkpoint writes (`_partial_folders`) in
    <workdir>/checkpoints and <workdir>/best, or in best alone (`best_only`: a training
    checkpoint's write may be under way beside a best checkpoint's), on process 0 (the
    workdir lock makes them this run's). -> the removed paths.

    After a failed write, tensorstore may still be finishing other chunks of it, which
    recreate the folder: the removal is repeated until no such folder has appeared for
    `_SETTLE_S` seconds (at most `_REMOVE_TIMEOUT_S`). A second: on a loaded machine
    tensorstore's threads can wait a good part of one before writing their next chunk, and
    this runs only after a failed write, when the run stops anyway."""
    import jax

    if jax.process_index() != 0:
        return []
    removed: list[str] = []
    deadline = time.monotonic() + _REMOVE_TIMEOUT_S
    quiet_since = None
    while time.monotonic() < deadline:
        found = _partial_folders(workdir, best_only)
        for path in found:
            with contextlib.suppress(OSError):
                epath.Path(path).rmtree()
            if path not in removed:
                removed.append(path)
        if found:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= _SETTLE_S:
            break
        time.sleep(0.05)
    return removed


def remove_leftovers(workdir: str) -> list[str]:
    """Removes, on process 0, the partial folders of checkpoint writes that an earlier run of
    `workdir` left (killed or crashed during a write, a second Ctrl-C during the first one's
    cleanup), with a warning naming them. -> the removed paths. For a run that holds the
    workdir's lock and writes no checkpoint yet: no write of its own is under way, and no
    run reads such a folder (orbax skips it, and writes that step again in a folder of its
    own), which can hold as much as a whole checkpoint. Not in an object store (a URL
    workdir), which has no lock (`workdir_lock`): there the folder may be another trainer's
    write under way, so it is left."""
    import jax

    if jax.process_index() != 0 or paths.is_url(workdir):
        return []
    removed = []
    for path in _partial_folders(workdir):
        try:
            epath.Path(path).rmtree()
        except OSError as e:  # left as it is: a rerun ignores it
            logging.warning("could not remove %s, the partial folder of an earlier run's "
                            "checkpoint write (%s: %s); it is ignored", path,
                            type(e).__name__, e)
            continue
        removed.append(path)
    if removed:
        logging.warning("removed %s: the partial folder%s of a checkpoint write an earlier run "
                        "of this workdir did not finish (stopped during it); no run reads one",
                        ", ".join(removed), "s" if len(removed) > 1 else "")
    return removed


@contextlib.contextmanager
def unfinished_best_removed(workdir: str, step: int) -> Iterator[None]:
    """Removes the partial folder of a best checkpoint's write of `step` (synchronous) that
    stops on any error but DiskFull (`stop_on_full_disk` removes it then), Ctrl-C included:
    orbax renames that folder into a checkpoint in the saving thread once every process has
    written, so after such an error nothing would, and no run reads it. An error while
    removing it is logged, the write's own raised."""
    try:
        yield
    except disk_space.DiskFull:
        raise
    except BaseException as e:
        try:
            removed = remove_partial(workdir, best_only=True)
        except Exception as cleanup:  # noqa: BLE001  (the write's error is the one to raise)
            logging.warning("the best checkpoint's write of step %d stopped (%s), and its "
                            "partial folder could not be looked for in %s (%s: %s)", step,
                            type(e).__name__, workdirs.best_dir(workdir),
                            type(cleanup).__name__, str(cleanup)[:300])
        else:
            if removed:
                logging.warning("the best checkpoint's write of step %d stopped (%s): removed "
                                "its partial %s", step, type(e).__name__, ", ".join(removed))
        raise


@contextlib.contextmanager
def stop_on_full_disk(workdir: str, step: int | None, best: bool = False) -> Iterator[None]:
    """Turns a full disk or quota while writing a checkpoint (orbax raises it at the save of
    `step`, or from its background thread at a later call, for an earlier step) into
    `disk_space.DiskFull`, after removing the partial checkpoint (`best`: of a best
    checkpoint, whose cleanup leaves the training checkpoints' folder alone: the write of
    this step's training checkpoint may still be under way); the message names what was
    written (the checkpoint, or the best checkpoint), the workdir, the step that failed (from
    the partial folder's name), the space left and the intact training checkpoints to resume
    from."""
    what = "best checkpoint" if best else "checkpoint"
    try:
        yield
    except disk_space.DiskFull:
        raise
    except Exception as e:
        if not disk_space.is_disk_full(e):
            raise
        removed = remove_partial(workdir, best_only=best)
        failed = failed_steps(removed) or [step]
        rerun = ("resumes from the newest of them" if checkpoints.steps_on_disk(workdir)
                 else "starts again")
        raise disk_space.DiskFull(
            errno.ENOSPC,
            f"cannot write the {what} of step {failed[-1]} to {workdir}: the disk or quota "
            f"is full ({disk_space.space_left(workdir)} on it). Removed the partial "
            f"{', '.join(removed) or what}; {_intact(workdir)}. Free space (or raise the "
            f"quota) and rerun the same command: it {rerun} "
            f"({type(e).__name__}: {str(e)[:300]})") from e


def _intact(workdir: str) -> str:
    """What a full disk's error says of the training checkpoints left to resume from."""
    steps = checkpoints.steps_on_disk(workdir)
    if not steps:
        return f"no training checkpoint is complete in {workdirs.checkpoint_dir(workdir)}"
    return f"the training checkpoints (steps {', '.join(map(str, steps))}) are intact"


def failed_steps(removed: list[str]) -> list[int]:
    """The steps of the partial checkpoint folders `removed` (`remove_partial`), in order."""
    return sorted(int(m[1]) for m in (re.match(r"(\d+)\.orbax-checkpoint-tmp",
                                               os.path.basename(p)) for p in removed) if m)


def close_after_stop(mngr: ocp.CheckpointManager, workdir: str) -> None:
    """Closes the training checkpoints' manager `mngr` of a run that stopped on an error: a
    write still under way is waited for, and where it fails (the disk full since: the run
    stopped on the best checkpoint's write, say) orbax leaves its temporary folder, which is
    removed here on process 0 (nothing writes in the workdir any more); another process
    removes nothing, and its line says the folder is process 0's to remove or the rerun's
    (`remove_leftovers`), process 0 not having to meet that failure. Its error is logged in
    one line, naming the step, never raised over the run's own; the error's traceback follows
    as a verbose line (`console.VERBOSE`, shown with --verbosity=1): the run's own error is
    the one to read, and a full disk's line says all."""
    try:
        mngr.close()
    except Exception as e:
        full = disk_space.is_disk_full(e)
        cause = (f"the disk or quota is full ({disk_space.space_left(workdir)} on it)" if full
                 else f"{type(e).__name__}: {str(e)[:300]} (its traceback with --verbosity=1)")
        try:
            removed = remove_partial(workdir)
            steps = failed_steps(removed)
            if removed:
                left = f"Removed the partial {', '.join(removed)}"
            elif _process_index() == 0:
                left = "Nothing partial left"
            else:
                left = ("Its partial folder, if any, is process 0's to remove, or the "
                        "rerun's as it starts")
            logging.warning(
                "the write of the checkpoint%s under way when the run stopped failed too: "
                "%s. %s; %s", f" of step {steps[-1]}" if steps else "", cause, left,
                _intact(workdir))
        except Exception as cleanup:  # noqa: BLE001  (the workdir unreadable now, say)
            logging.warning(
                "the write of the checkpoint under way when the run stopped failed too (%s: "
                "%s), and its partial folder could not be looked for in %s (%s: %s)",
                type(e).__name__, str(e)[:300], workdirs.checkpoint_dir(workdir),
                type(cleanup).__name__, str(cleanup)[:300])
        logging.info("the failed checkpoint write's error:", exc_info=e, extra=console.VERBOSE)


def _process_index() -> int:
    """This process's index in the job (`jax.process_index`)."""
    import jax

    return jax.process_index()


# The RuntimeWarning of a chunk of a failed checkpoint write that orbax never began to write.
# Orbax (0.12: orbax/checkpoint/_src/serialization/serialization.py,
# async_serialize_from_host) writes each array's chunks as coroutines gathered as tasks, in an
# event loop of the save's own that `asyncio_utils._run_sync_via_new_loop` closes once the
# save's coroutine has ended, without cancelling the tasks still pending. When a write fails
# (a full disk), the error ends the save while other arrays are still being opened; an array
# whose open completes in that last turn of the loop creates its chunks' tasks, which never
# run. They are garbage collected later, at any point of the process (in the test suite,
# during another test), each with this warning. It comes only after a failed save, whose error
# orbax raises (hgmt: `stop_on_full_disk`), and whose temporary folder is never renamed into
# a checkpoint: nothing written is missing from a checkpoint said complete. A save that
# succeeds has awaited all its chunks, so never leaves one unstarted.
ABANDONED_WRITE = (r"coroutine 'async_serialize_from_host\.<locals>\.write_fragment' was "
                   r"never awaited")


def ignore_callbacks_into_closed_loops() -> None:
    """Drops the 'Event loop is closed' errors of a failed checkpoint write from stderr, and
    the warnings about the chunks it never began (`ABANDONED_WRITE`).

    When one chunk of an orbax write fails (e.g. a full disk), orbax's event loop ends while
    tensorstore still finishes the other chunks; each then calls back into the closed loop and
    Python prints one unraisable RuntimeError traceback per chunk (hundreds), which say nothing
    the run's own error does not. Installs a `sys.unraisablehook` that drops exactly those and
    passes everything else to the previous hook, and a warnings filter for exactly
    `ABANDONED_WRITE` (for command lines, not for library code); a second call changes
    nothing."""
    warnings.filterwarnings("ignore", message=ABANDONED_WRITE, category=RuntimeWarning)
    previous = sys.unraisablehook
    if getattr(previous, "hgmt_drops_closed_loop_callbacks", False):
        return

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        error = unraisable.exc_value
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        previous(unraisable)

    hook.hgmt_drops_closed_loop_callbacks = True
    sys.unraisablehook = hook
