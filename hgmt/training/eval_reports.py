"""The report of an evaluation after training, <workdir>/eval_<name>.json: what the trainer adds
to the evaluation's summary (RUN_KEYS), among it what the evaluation was of (`fingerprint`: the
config less NOT_EVALUATED, and the variables), and reading one back (`read_report`)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
from typing import TYPE_CHECKING, Any

import jax
import ml_collections
import numpy as np
from etils import epath

from hgmt import run_config, workdirs

if TYPE_CHECKING:
    from hgmt.training.steps import TrainState

# What the trainer adds to an evaluation's summary in <workdir>/eval_<name>.json: the step,
# the evaluator's name, and what it evaluated (`fingerprint`); and the pictures written beside
# it (`report_files.write_report`).
RUN_KEYS = ("step", "evaluator", "evaluated", "pictures")

# The config fields (dotted names; `*` stands for any evaluator's name) that cannot change what
# an evaluation computes from given variables, which `fingerprint` leaves out: when to log,
# save and evaluate during training, how many checkpoints to keep, and how the training loader
# reads and when it stops on damage (no evaluation reads them; what they do to training is in
# the variables). A rerun that changes only these keeps the evaluations after training that
# its run finished. Every other field counts, even one (the optimizer's, say) that changes an
# evaluation only through the variables.
NOT_EVALUATED = ("log_every", "checkpoint_every", "keep_checkpoints", "evals.*.every",
                 "worker_count", "read_threads", "prefetch", "max_damaged_fraction")


def evaluated_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`config`'s fields by dotted name (`run_config.flat_fields`) less those of
    NOT_EVALUATED: what of it an evaluation after training may depend on."""
    fields = run_config.flat_fields(json.loads(config.to_json_best_effort()))
    return {name: value for name, value in fields.items()
            if not any(fnmatch.fnmatchcase(name, free) for free in NOT_EVALUATED)}


def fingerprint(config: ml_collections.ConfigDict, host_state: TrainState) -> dict[str, str]:
    """What an evaluation after training is of: {"config_sha256": of `config`'s
    `evaluated_fields` as JSON (sorted), "variables_sha256": of the params and batch_stats of
    `host_state` (each leaf's path, dtype, shape and bytes, in path order)}. A report whose
    fingerprint differs from this run's is evaluated again
    (`evaluators.Evaluators.finished_at_end`)."""
    config_json = json.dumps(evaluated_fields(config), sort_keys=True).encode()
    variables = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(
        {"params": host_state.params, "batch_stats": host_state.batch_stats})[0]
    for path, leaf in sorted(leaves, key=lambda kv: jax.tree_util.keystr(kv[0])):
        array = np.ascontiguousarray(leaf)
        variables.update(f"{jax.tree_util.keystr(path)} {array.dtype} {array.shape}".encode())
        variables.update(array.tobytes())
    return {"config_sha256": hashlib.sha256(config_json).hexdigest(),
            "variables_sha256": variables.hexdigest()}


def read_report(path: str) -> dict | None:
    """The JSON object of the evaluation report at `path` (a local path or an object-store
    URL), or None where there is none or it does not read as one (the rerun evaluates again
    and writes it anew)."""
    if not epath.Path(path).exists():
        return None
    try:
        return workdirs.read_json_object(path, "none needed: it is evaluated again")
    except (OSError, workdirs.DamagedRunFile) as e:
        logging.warning("%s does not read (%s): evaluating again", path, e)
        return None
