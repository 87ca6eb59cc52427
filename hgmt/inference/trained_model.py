"""A trained workdir's model for the commands that use it (`hgmt.evaluate`, `hgmt.predict`,
`hgmt.export`): its config and the variables of one of its checkpoints, the latest, a given
step or the best (`restore_for_inference`). The variables are read alone where they can be
(not the optimizer's moments), checked against the digests saved with them
(`hgmt.training.checkpoint_digests.verify`) and against the model the config builds
(`check_variables`); what a command reports in one line is `RESTORE_FAULTS`. Training's own
saves and restores, and its handling of damaged checkpoints, are `hgmt.training.checkpoints`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from hgmt import run_config, workdirs
from hgmt.models import (
    check_image_size,
    create_model,
    to_checkpoint_layout,
    to_model_layout,
    variable_differences,
    variable_shapes,
)
from hgmt.tasks import config_tasks, heads, parse_tasks
from hgmt.training import checkpoint_digests, checkpoints, device_memory


class NoCheckpoint(FileNotFoundError):
    """The workdir holds no checkpoint of the step asked for (the message says which exist)."""


class UnusableCheckpoint(ValueError):
    """A checkpoint that cannot be read, or whose variables do not fit its config's model."""


# What a command on a trained workdir reports in one line (`hgmt.cli.faults_in_one_line`): no
# checkpoint, a checkpoint or config value that cannot be used (UnusableCheckpoint is one), or
# a checkpoint too large for the device's memory.
RESTORE_FAULTS = (NoCheckpoint, ValueError, device_memory.OutOfDeviceMemory)


def restore_for_inference(workdir: str, step: int | str | None = None,
                          config: ml_collections.ConfigDict | None = None) -> tuple[
        ml_collections.ConfigDict, dict[str, Any], int]:
    """-> (config, {'params', 'batch_stats'}, step) of the latest (or given) checkpoint, in
    the stream layout of `config.model.stream_mode` (`hgmt.models.stacking`); `step`: None
    (the latest), a step number (an int, or a string of digits such as "5"), or "best": the
    best validation checkpoint kept in <workdir>/best. `config`: the workdir's config with
    the caller's overrides (default: the workdir's as saved). Only the variables are read
    (`_read_variables`), not the optimizer's moments, unless `config`'s tasks or model
    fields differ from config.json as written (another model, or model fields config.json
    predates) or that read fails: then the whole state, for `check_variables` to name what
    differs (a model of fewer tasks would find its variables among the checkpoint's).

    Raises ValueError naming the value for any other `step` string, ValueError naming the
    field for a bad `config.model` value, NoCheckpoint naming the workdir when there is no
    such checkpoint (nothing is written into the workdir then), and UnusableCheckpoint when
    the checkpoint cannot be read (corrupt or from another model), OutOfDeviceMemory
    (`device_memory.explain`) when it does not fit in the device's memory."""
    if isinstance(step, str) and step != "best":  # checkpoints are numbered by int steps
        if not (step.isascii() and step.isdigit()):
            raise ValueError(f"step={step!r}: give a step number (an int, or a string of "
                             f"digits) or 'best'")
        step = int(step)
    given = config is not None
    config = config if given else run_config.load_config(workdir)
    # Built first: a bad model value or image size is named before any checkpoint is looked
    # for (the model would take a crop of 0 pixels, or fail later on a negative size).
    model = create_model(config.model, heads(config_tasks(config)))
    check_image_size(config.image_size, model.depth)
    best = step == "best"
    folder = workdirs.best_dir(workdir) if best else workdirs.checkpoint_dir(workdir)
    none_yet = (f"no best checkpoint in {folder}: one is kept when an evaluator of "
                f"config.evals with a best_metric runs during training (every > 0, and "
                f"every <= total_steps), at its first evaluation" if best else
                f"no checkpoint in {folder}; train first (python -m hgmt.main "
                f"--workdir={workdir} ...)")
    # Looked for before a manager is built: the training manager creates its folder, and a
    # command that only reads must leave the workdir as it found it.
    if not epath.Path(folder).is_dir():
        raise NoCheckpoint(none_yet)
    # Finalized checkpoints (no temporary folder, a commit marker in a bucket) named by
    # their step, as the training manager names them.
    steps = sorted(int(path.name) for path in ocp.utils.checkpoint_steps_paths(folder)
                   if path.name.isdigit())
    if not steps:
        raise NoCheckpoint(none_yet)
    step = steps[-1] if step is None or best else step
    if step not in steps:
        raise NoCheckpoint(f"no checkpoint for step {step} in {folder}; available steps: "
                           f"{', '.join(map(str, steps))}")
    # config.json as written, read once (its upgrade warnings were the caller's to log).
    written = _written_config(workdir) if given else None
    variables = None
    try:
        if not given or _trained_with(written, config):
            # The model the workdir trained: its checkpoints hold exactly its variables.
            variables = _read_variables(folder, step, model, config)
        if variables is None:  # read whole, for check_variables to name what differs
            variables = _read_state(folder, step, config, best, workdir, steps)
    except checkpoint_digests.DamagedCheckpoint as e:
        other = [s for s in steps if s != step]
        raise UnusableCheckpoint(
            f"{e}; copy it again from where it was written, or "
            + (f"evaluate a checkpoint of {workdirs.checkpoint_dir(workdir)} (--step=N)"
               if best else f"pass --step= with another of {', '.join(map(str, other))}" if other
               else "train again")) from None
    variables = to_model_layout(model, variables)  # the checkpoint holds streams per task
    check_variables(model, config.image_size, variables, f"checkpoint {folder}/{step}",
                    overrides=_model_overrides(written, config) if given else ())
    if given and (trained := _image_size(written)) not in (None, config.image_size):
        logging.warning("config.image_size=%s: the model was trained at %s px, so it sees "
                        "people at another scale than it learnt, and 3D decoding reads the "
                        "crop's scale: expect other results", config.image_size, trained)
    return config, variables, step


def _written_config(workdir: str) -> dict | None:
    """The workdir's config.json as written, not upgraded (`run_config.load_config` upgrades
    it and logs why: the caller's config was read so already); None when it does not read."""
    try:
        return workdirs.read_json_object(workdirs.config_file(workdir), "")
    except Exception:  # noqa: BLE001  (nothing to compare with: the callers say less)
        return None


def _image_size(written: dict | None) -> int | None:
    """The image size a config.json as written records, None where it records none."""
    try:
        return int(written["image_size"])
    except Exception:  # noqa: BLE001  (no size to compare: no warning)
        return None


def trained_image_size(workdir: str) -> int | None:
    """The image size the workdir's model was trained at (its config.json's, as written, so
    that an older config.json's upgrade warnings are not logged again); None when it does
    not read."""
    return _image_size(_written_config(workdir))


def _model_overrides(written: dict | None, config: ml_collections.ConfigDict) -> list[str]:
    """The tasks and model fields of `config` that differ from the workdir's config.json as
    `written`, as "model.features=32 where config.json has 64" (a field config.json lacks is
    hgmt's default, not an override); [] when it does not read."""
    try:
        changed = ([] if parse_tasks(written["tasks"]) == parse_tasks(config.tasks) else
                   [f"tasks={config.tasks} where config.json has {written['tasks']}"])
        model = config.model.to_dict()
        return changed + [f"model.{k}={model[k]} where config.json has {v}"
                          for k, v in written["model"].items() if k in model and model[k] != v]
    except Exception:  # noqa: BLE001  (no config.json to compare: the message says less)
        return []


def _trained_with(written: dict | None, config: ml_collections.ConfigDict) -> bool:
    """Whether the workdir's config.json as `written` has `config`'s tasks (in any spelling)
    and model fields (a config.json that does not read, or predates a model field, says
    no)."""
    try:
        return (parse_tasks(written["tasks"]) == parse_tasks(config.tasks)
                and written["model"] == config.model.to_dict())
    except Exception:  # any doubt: the whole checkpoint is read and checked
        return False


def _read_variables(folder: str, step: int, model: Any,
                    config: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """{'params', 'batch_stats'} of checkpoint `step` in `folder` as host arrays, in the
    checkpoint's layout, read alone (orbax's partial restore) by this process alone: not the
    optimizer's moments, two thirds of an Adam checkpoint. For checkpoints of `model` (the
    model the workdir trained); None, with a warning, when the read fails or the checkpoint
    lacks one of them (another hgmt version's names). Host arrays take no device memory: an
    out-of-memory error is the whole read's (`_read_state`) to name."""
    shapes = jax.eval_shape(lambda v: to_checkpoint_layout(model, v),
                            variable_shapes(model, int(config.image_size)))
    item = {name: shapes[name] for name in ("params", "batch_stats")}
    host = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    me = jax.process_index()  # each process reads alone: no barrier to fall out of step at
    alone = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
    try:
        with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(multiprocessing_options=alone),
                              multiprocessing_options=alone) as reader:
            variables = reader.restore(epath.Path(folder) / str(step) / "state",
                                       args=ocp.args.PyTreeRestore(
                                           item=item, restore_args=host, partial_restore=True))
    except Exception as e:  # noqa: BLE001  (orbax/tensorstore raise many types)
        logging.warning("reading the variables of checkpoint %s/%d alone failed (%s: %s); "
                        "reading its whole train state", folder, step, type(e).__name__,
                        str(e)[:300])
        return None
    # A variable the checkpoint lacks is left as the item's shape, not raised.
    missing = [jax.tree_util.keystr(path) for path, leaf in
               jax.tree_util.tree_leaves_with_path(variables) if not isinstance(leaf, np.ndarray)]
    if missing:
        logging.warning("checkpoint %s/%d lacks %d of the model's variables (e.g. %s); reading "
                        "its whole train state", folder, step, len(missing), missing[0])
        return None
    checkpoint_digests.verify(epath.Path(folder) / str(step), variables)
    return variables


def _read_state(folder: str, step: int, config: ml_collections.ConfigDict, best: bool,
                workdir: str, steps: list[int]) -> dict[str, Any]:
    """{'params', 'batch_stats'} of the whole train state of checkpoint `step` in `folder`
    (the checkpoint's layout); raises UnusableCheckpoint when it cannot be read,
    OutOfDeviceMemory on XLA's out-of-memory error."""
    mngr = (ocp.CheckpointManager(folder, item_names=("state",)) if best
            else checkpoints.manager(workdir, async_save=False, with_data=False))
    with contextlib.closing(mngr):
        try:
            restored = mngr.restore(step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore()))
        except Exception as e:
            if device_memory.is_out_of_memory(e):  # not the checkpoint's fault
                raise device_memory.explain(e, config, f"while restoring {folder}/{step}",
                                            "eval_batch_size") from None
            other = (f"evaluate a checkpoint of {workdirs.checkpoint_dir(workdir)} instead "
                     f"(--step=N)" if best else
                     f"pass --step= with another of {', '.join(map(str, steps))}")
            raise UnusableCheckpoint(f"checkpoint {folder}/{step} cannot be read "
                                     f"({type(e).__name__}: {e}); {other}") from e
    state = restored["state"]
    checkpoint_digests.verify(epath.Path(folder) / str(step), state)
    return {"params": state["params"], "batch_stats": state["batch_stats"]}


def check_variables(model: Any, image_size: int, variables: Any, what: str,
                    overrides: Sequence[str] = ()) -> None:
    """Raises UnusableCheckpoint naming the differences when `variables` do not fit `model`
    at `image_size` (a checkpoint of another configuration or of an older hgmt version, or
    `model` built with the caller's `overrides` of the model: `_model_overrides`)."""
    differences = variable_differences(model, image_size, variables)
    if not differences:
        return
    if overrides:
        raise UnusableCheckpoint(
            f"{what} does not fit the model of this command's config, whose "
            f"{', '.join(overrides)}: {differences}. A trained workdir's model is its "
            f"config.json's; drop those --config overrides (should it still not fit, the "
            f"checkpoint was written by another model configuration or an older hgmt)")
    raise UnusableCheckpoint(
        f"{what} does not fit the model its config.json builds: {differences}. It was "
        f"written by another model configuration or an older hgmt (whose 1x1 convolutions "
        f"were named Dense); retrain, or evaluate it with the hgmt version that wrote it")
