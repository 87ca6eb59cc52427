"""Workdir layout and orbax checkpoints.

    <workdir>/config.json          the run's config (what evaluate/predict/export rebuild from)
    <workdir>/checkpoints/<step>/  orbax: `state` (params, batch_stats, opt_state, step) and
                                   `data` (the grain iterator position)
    <workdir>/events.*             TensorBoard summaries

Orbax writes each checkpoint to a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoints intact and the partial one is ignored.
"""

from __future__ import annotations

import json
import os
from typing import Any

import ml_collections
import orbax.checkpoint as ocp

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(os.path.expanduser(workdir)), CHECKPOINT_DIR)


def manager(workdir: str, keep: int = 3, async_save: bool = True,
            with_data: bool = True) -> ocp.CheckpointManager:
    """The CheckpointManager of a workdir; keeps the last `keep` checkpoints."""
    names = ("state", "data") if with_data else ("state",)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options, item_names=names)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
        f.write(config.to_json_best_effort(indent=1, sort_keys=True))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with; a clear error if it is not a training workdir."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by "
                                f"`python -m hgmt.main --workdir=...`")
    with open(path) as f:
        return ml_collections.ConfigDict(json.load(f))


def restore_for_inference(workdir: str, step: int | None = None) -> tuple[
        ml_collections.ConfigDict, dict[str, Any], int]:
    """-> (config, {'params', 'batch_stats'}, step) of the latest (or given) checkpoint.

    Raises FileNotFoundError naming the workdir when there is no such checkpoint, and
    ValueError when the checkpoint cannot be read (corrupt or from another model)."""
    config = load_config(workdir)
    mngr = manager(workdir, async_save=False, with_data=False)
    steps = mngr.all_steps()
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {checkpoint_dir(workdir)}: train first "
                                f"(python -m hgmt.main --workdir={workdir} ...)")
    step = steps[-1] if step is None else step
    if step not in steps:
        raise FileNotFoundError(f"no checkpoint for step {step} in {checkpoint_dir(workdir)}; "
                                f"available steps: {steps}")
    try:
        restored = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as e:
        raise ValueError(f"checkpoint {checkpoint_dir(workdir)}/{step} cannot be read "
                         f"({type(e).__name__}: {e}); pass --step= with another of {steps}"
                         ) from e
    state = restored["state"]
    return config, {"params": state["params"], "batch_stats": state["batch_stats"]}, step
