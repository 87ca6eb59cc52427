"""What a training run keeps in its workdir besides checkpoints and evaluations: the records of
what trains (`record_what_trains`: config.json, starts.jsonl, crop_metres.json), its TensorBoard
summaries marked as restarting at the step it trains from (`restart_summaries`), and no empty
workdir left behind by a run that stops before it wrote a file (`removed_if_nothing_written`)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator

import jax
import ml_collections

from hgmt import code_version, disk_space, paths, workdirs
from hgmt.data import crop_metres
from hgmt.training import resume, summary_writer


@contextlib.contextmanager
def removed_if_nothing_written(workdir: str) -> Iterator[None]:
    """On process 0, where the `with` block stops on an error, removes the folders it made
    for `workdir` (local; the workdir and the parents that were missing) when no file was
    written in them: only empty folders are removed, so nothing anyone wrote is lost."""
    made = [] if jax.process_index() or paths.is_url(workdir) else _missing_folders(workdir)
    try:
        yield
    except BaseException:
        if made and not _holds_anything_but_folders(made[0]):
            # Left as they are where this fails: the run's own error is the one to report.
            with contextlib.suppress(OSError):
                for root, _, _ in os.walk(made[0], topdown=False):
                    os.rmdir(root)
                for folder in made[1:]:
                    os.rmdir(folder)
        raise


def _missing_folders(workdir: str) -> list[str]:
    """`workdir` and its parents that do not exist, deepest first."""
    missing, folder = [], os.path.abspath(workdir)
    while not os.path.lexists(folder) and folder != os.path.dirname(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _holds_anything_but_folders(folder: str) -> bool:
    """Whether `folder` holds a file, a link or anything but folders, at any depth."""
    for root, folders, files in os.walk(folder):
        if files or any(os.path.islink(os.path.join(root, f)) for f in folders):
            return True
    return False


def record_what_trains(config: ml_collections.ConfigDict, workdir: str,
                       changed: list | None, start_step: int, built: bool) -> None:
    """Process 0's records of the run in the workdir: its config.json
    (`resume.save_config`), this start (`record_start`) and, on a `built` split, the metres a
    training window spans (3D decoding's scale for prediction on any image,
    `crop_metres.record_in_workdir`). Written once the workdir's checkpoints are known to be
    this config's: a config that does not fit them (another task set, say) or a trainer
    refused the workdir (held by another) leaves the files of the run that wrote them."""
    resume.save_config(config, workdir, changed, start_step)
    record_start(workdir, start_step)
    if built:
        crop_metres.record_in_workdir(config.dataset, config.data_dir, workdir, config.window)


def record_start(workdir: str, step: int) -> None:
    """Appends this start of the trainer to <workdir>/starts.jsonl: the step it trains from,
    the time (UTC), the code (`code_version.describe`: hgmt's version, commit, modified) and
    what it runs on (JAX's version and backend, devices, processes), so that a run's numbers
    can be traced to the code of each of its parts."""
    record = {"step": step, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              **code_version.describe(), "jax": jax.__version__,
              "backend": jax.default_backend(), "devices": jax.device_count(),
              "processes": jax.process_count()}
    disk_space.append_line(workdirs.starts_file(workdir), json.dumps(record),
                           "the record of the trainer's starts")


def restart_summaries(writer: disk_space.CheckedWriter, workdir: str, start_step: int) -> None:
    """Marks the TensorBoard summaries as restarting at `start_step` + 1 (what an earlier run
    logged after it is not this run's); a start at step 0 moves an earlier run's event files
    aside."""
    writer.restart(start_step + 1)
    if start_step == 0 and jax.process_index() == 0:
        aside = f"{workdirs.events_superseded_dir(workdir)}/{workdirs.set_aside_name(0)}"
        moved = summary_writer.set_aside_earlier(workdir, writer.path, aside)
        if moved:
            logging.info("a start at step 0 over an earlier run's TensorBoard summaries: "
                         "moved %s to %s", ", ".join(moved), aside)
