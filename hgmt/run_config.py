"""A run's config.json, read and written in today's layout: `save_config` writes it;
`load_config` reads it, filling in the fields an older workdir's predates
(`ADDED_CONFIG_FIELDS`); `current_layout` gives a config.json's fields as `load_config` reads
them, and an older one's evaluation fields (`OLDER_EVAL_FIELDS`) as the evaluators they amount
to (`older_evals`, `evals_of`); `flat_fields`, `field_parent` and `is_under` take a config's
fields by dotted name. Where the file lies, like the rest of a workdir's layout, is
`hgmt.workdirs`'s to say."""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from hgmt import disk_space, workdirs
from hgmt.paths import absolute

# Config fields newer than some workdirs, by dotted name, with their default: filled in when an
# older workdir's config is read, so that they can be overridden (`--config.model.ops=flax` on
# an evaluation). Each default is what the code before the field did, so the old run's
# function stays. (`loss_options`, whose defaults are the tasks', is filled by
# `hgmt.tasks.check_loss_options` and `hgmt.training.resume.differences`.)
ADDED_CONFIG_FIELDS = {"model.stream_mode": "auto", "model.ops": "auto",
                       "model.batch_norm_stats": "global", "augment_on": "auto",
                       "max_damaged_fraction": 0.001,
                       # the augmentation training used before `config.augment`
                       "augment.scale_sigma": 0.25, "augment.scale_clip": 0.5,
                       "augment.rotate_sigma": 30.0, "augment.rotate_clip": 60.0,
                       "augment.rotate_p": 0.4, "augment.gain_min": 0.6, "augment.gain_max": 1.4,
                       "augment.flip_p": 0.5, "window": "hgmt"}
# The evaluation fields of a config written before `config.evals`, with the value the code of
# then took for a missing one: validation during training and the test evaluation after it
# shared the frame settings (`older_evals` gives the evaluators they were).
OLDER_EVAL_FIELDS = {"eval_frames": "middle", "eval_max_examples": 0,
                     "eval_split": "validation", "eval_every": 0, "best_metric": "loss/total"}


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `config` to <workdir>/config.json, whole or not at all, making the workdir."""
    epath.Path(absolute(workdir)).mkdir(parents=True, exist_ok=True)
    disk_space.write_atomically(workdirs.config_file(workdir), lambda f: f.write(
        config.to_json_best_effort(indent=1, sort_keys=True)))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (with `ADDED_CONFIG_FIELDS` where it predates
    them); a clear error if it is not a training workdir."""
    path = epath.Path(workdirs.config_file(workdir))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by "
                                f"`python -m hgmt.main --workdir=...`")
    fix = (f"Write it again by rerunning the training command of {workdir} (python -m "
           f"hgmt.main --workdir=... with the run's --config: it saves config.json as it "
           f"starts), or put back a copy")
    config = workdirs.read_json_object(str(path), fix)
    if config is None:
        raise workdirs.DamagedRunFile(f"{path} is empty: its write was cut short (a power loss "
                                      f"or crash before its data reached the disk). {fix}")
    _fill_added_fields(config, str(path))
    return ml_collections.ConfigDict(config)


def _fill_added_fields(config: dict, path: str | None = None) -> None:
    """Sets the ADDED_CONFIG_FIELDS a config.json predates to their defaults, and reads an
    older one's model.interaction under shared_trunk=True as 'sum', in place (`path`: the
    file, named in that warning)."""
    for name, value in ADDED_CONFIG_FIELDS.items():
        section = name.split(".")[0]
        if "." in name and section not in config:  # a section added whole (`augment`)
            config[section] = {}
        where, field = field_parent(config, name)
        if isinstance(where, dict):
            where.setdefault(field, value)
    model = config.get("model")
    if isinstance(model, dict) and model.get("shared_trunk") and model.get(
            "interaction", "sum") != "sum":
        # Recorded by an hgmt that accepted it; one shared stream never used it (the same
        # variables), and hgmt.models.create_model refuses it.
        if path is not None:
            logging.warning("%s: model.interaction=%r has no effect with shared_trunk=True; "
                            "read as 'sum'", path, model["interaction"])
        model["interaction"] = "sum"


def evals_of(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """A config's `evals`, or for one written before it (an older workdir's config.json read
    as written) the evaluators its evaluation fields amount to (`older_evals`)."""
    evals = config.get("evals")
    return older_evals(config) if evals is None else evals


def older_evals(config: Mapping[str, Any]) -> dict[str, dict]:
    """The `config.evals` (hgmt/training/eval_settings.py) that the evaluation fields of a config
    written before it (OLDER_EVAL_FIELDS) amount to: `validation` every `eval_every` steps on
    `eval_split` keeping the best checkpoint by `best_metric`, and `test` after the last step,
    both on the `eval_frames` of their split, at most `eval_max_examples` of them, under
    hgmt's protocol without the flip test."""
    old = {k: config.get(k, default) for k, default in OLDER_EVAL_FIELDS.items()}
    shared = {"frames": old["eval_frames"], "protocol": "hgmt", "flip": False,
              "max_examples": old["eval_max_examples"]}
    return {"validation": {"split": old["eval_split"], **shared, "every": old["eval_every"],
                           "at_end": False, "best_metric": old["best_metric"]},
            "test": {"split": "test", **shared, "every": 0, "at_end": True, "best_metric": ""}}


def current_layout(config: dict) -> dict:
    """A config.json's fields in today's layout (a copy), as `load_config` reads them: those
    added since it was written at their defaults (ADDED_CONFIG_FIELDS), an interaction under
    shared_trunk as 'sum', and for one written before `evals`, its evaluation fields
    (OLDER_EVAL_FIELDS) replaced by the evaluators they amount to (`older_evals`)."""
    config = copy.deepcopy(config)
    _fill_added_fields(config)
    if "evals" not in config:
        config["evals"] = older_evals(config)
        for field in OLDER_EVAL_FIELDS:
            config.pop(field, None)
    return config


def flat_fields(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config's fields by dotted name: {'model': {'depth': 4}} -> {'model.depth': 4} (an
    empty section is a field whose value is {})."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping) and v:
            out |= flat_fields(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


def field_parent(tree: Any, name: str) -> tuple[Any, str]:
    """(the section of `tree`, a config as JSON or a ConfigDict, that holds the field of
    dotted `name`, the field's own name): 'model.depth' -> (tree['model'], 'depth'); the
    section is None where `tree` lacks one on the way."""
    *sections, field = name.split(".")
    for section in sections:
        tree = tree.get(section) if hasattr(tree, "get") else None
    return (tree if hasattr(tree, "get") else None), field


def is_under(field: str, names: Sequence[str]) -> bool:
    """Whether the dotted `field` is one of `names` or a field of a section among them
    ('model.depth' is under 'model')."""
    return any(field == n or field.startswith(f"{n}.") for n in names)
