"""The file layout of a training workdir and of a sweep: the one place that names its files.

    <workdir>/config.json                 the run's config (evaluate/predict/export rebuild it)
    <workdir>/config_before_step<N>.json  the config of the steps up to N, kept when a rerun
                                          from step N changed it (--resume_with_changed_config)
    <workdir>/config_superseded/<step>-<time>.json
                                          the config.json of an earlier run that a fresh start
                                          with another config replaced (its checkpoints removed)
    <workdir>/checkpoints/<step>/         orbax: `state`, its arrays' CRC-32s (`digests`) and
                                          `data` (the loader's position)
    <workdir>/best/<step>/                orbax: `state` of the best validation score so far,
                                          `digests` (and orbax's `metrics`: the score)
    <workdir>/checkpoints_unreadable/     damaged checkpoints moved out of orbax's way
    <workdir>/best_superseded/            best checkpoints of steps a rerun trains again, moved
                                          out of orbax's way (<step>-<time>, never deleted)
    <workdir>/evals_superseded/<step>-<time>/
                                          evals.jsonl lines and eval_<name>.json (+ .md and
                                          pictures) of steps after <step>, where a rerun
                                          trained again
    <workdir>/hgmt.lock                   the lock of the trainer that holds the workdir
    <workdir>/evals.jsonl                 every evaluator's results, one JSON object a line
    <workdir>/eval_test[_<protocol>].json the test evaluation after training (+ .md and the
                                          pictures its JSON lists, e.g. eval_test_pckh.png;
                                          other protocols' added by launch/sweep.py):
                                          `result_file`
    <workdir>/eval_test_hgmt.json         hgmt's numbers of a run whose trainer evaluated
                                          another protocol (`protocol_file`)
    <workdir>/eval_<split>_<ckpt>[_<frames>][_flip][_first<N>][_<size>px][_<protocol>].json
                                          hgmt.evaluate's (+ .md): `evaluation_file`
    <workdir>/events.*                    TensorBoard summaries
    <workdir>/events_superseded/0-<time>/ the TensorBoard summaries of an earlier run that a
                                          run starting at step 0 found there
    <workdir>/damaged_records.json        the damaged training records skipped (if any)
    <workdir>/crop_metres.json            the metres a training window spans at the person,
                                          measured as hgmt.main starts (3D decoding's scale)
    <workdir>/starts.jsonl                each start of the trainer, one JSON object a line:
                                          the step, the code (hgmt.code_version) and devices
    <workdir>/compilation_cache/          JAX's compilation cache of a sweep's run submitted
                                          to Slurm (launch/sweep.py --sbatch)

    <sweep>/<tasks>[@seed<k>]/            one run of a sweep: a workdir as above
    <sweep>/sweep.json                    the sweep's plan

A workdir is a local folder or an object-store URL (gs://bucket/runs/x: `hgmt.paths`) that
every host of a multi-host run reads.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections
from etils import epath

from hgmt import disk_space
from hgmt.paths import absolute

CONFIG_FILE = "config.json"
CONFIG_BEFORE = "config_before_step{step}.json"
CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"
UNREADABLE_DIR = "checkpoints_unreadable"
SUPERSEDED_DIR = "best_superseded"
EVALS_SUPERSEDED_DIR = "evals_superseded"
CONFIG_SUPERSEDED_DIR = "config_superseded"
EVENTS_SUPERSEDED_DIR = "events_superseded"
LOCK_FILE = "hgmt.lock"
EVALS_FILE = "evals.jsonl"
DAMAGED_FILE = "damaged_records.json"
CROP_METRES_FILE = "crop_metres.json"
STARTS_FILE = "starts.jsonl"
COMPILATION_CACHE_DIR = "compilation_cache"
SWEEP_PLAN = "sweep.json"
SEED_MARK = "@seed"  # a sweep's run directory: <tasks> (its first seed) or <tasks>@seed<k>
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


def checkpoint_dir(workdir: str) -> str:
    """The path <workdir>/checkpoints, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), CHECKPOINT_DIR)


def best_dir(workdir: str) -> str:
    """The path <workdir>/best, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), BEST_DIR)


def unreadable_dir(workdir: str) -> str:
    """The path <workdir>/checkpoints_unreadable, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), UNREADABLE_DIR)


def superseded_dir(workdir: str) -> str:
    """The path <workdir>/best_superseded, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), SUPERSEDED_DIR)


def evals_superseded_dir(workdir: str) -> str:
    """The path <workdir>/evals_superseded, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), EVALS_SUPERSEDED_DIR)


def config_superseded_dir(workdir: str) -> str:
    """The path <workdir>/config_superseded, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), CONFIG_SUPERSEDED_DIR)


def events_superseded_dir(workdir: str) -> str:
    """The path <workdir>/events_superseded, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), EVENTS_SUPERSEDED_DIR)


def set_aside_name(step: int) -> str:
    """The name `<step>-<time>` (local time, to the second) under which what a rerun moves out
    of its way (a checkpoint, a best one, the evaluations of the steps it trains again) is
    kept."""
    return f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"


def config_before_file(workdir: str, step: int | str) -> str:
    """The config of a run's steps up to `step`, kept when a rerun from `step` changed it."""
    return os.path.join(absolute(workdir), CONFIG_BEFORE.format(step=step))


def configs_before(workdir: str) -> list[str]:
    """The names of the config_before_step<N>.json files of `workdir`, by N > 0: the configs
    of its earlier steps when it was trained with more than one. Step 0 has no steps before
    it: a config_before_step0.json (an older hgmt kept an earlier run's config so on a fresh
    start) is not of this run's training."""
    pattern = re.compile(re.escape(CONFIG_BEFORE).replace(re.escape("{step}"), r"(\d+)") + "$")
    found = [(int(m.group(1)), n) for n in (os.listdir(absolute(workdir))
                                             if os.path.isdir(absolute(workdir)) else [])
             if (m := pattern.match(n)) and int(m.group(1)) > 0]
    return [n for _, n in sorted(found)]


def compilation_cache_dir(workdir: str) -> str:
    """The path <workdir>/compilation_cache, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), COMPILATION_CACHE_DIR)


def lock_file(workdir: str) -> str:
    """The path <workdir>/hgmt.lock, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), LOCK_FILE)


def evals_file(workdir: str) -> str:
    """The path <workdir>/evals.jsonl, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), EVALS_FILE)


class DamagedRunFile(ValueError):
    """A file of a workdir does not read; the message names the file (and the line) and what
    to do."""


def read_json_object(path: str, fix: str) -> dict | None:
    """The JSON object in the workdir file `path`; None when the file holds nothing (empty, or
    only whitespace and NUL bytes: what a power loss can leave of a file renamed into place
    before its data reached the disk). Anything else that is not a JSON object raises
    DamagedRunFile naming the file and `fix`, what to do."""
    data = epath.Path(path).read_bytes()
    if not data.strip(b" \t\r\n\x00"):
        return None
    try:
        value = json.loads(data.decode("utf-8"))
        problem = "" if isinstance(value, dict) else f"a JSON {type(value).__name__}"
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text: byte {e.start}"
    except json.JSONDecodeError as e:
        problem = f"not JSON: {e.msg}: line {e.lineno} column {e.colno}"
    if problem:
        raise DamagedRunFile(f"{path} is not a JSON object ({problem}): the file was edited or "
                             f"damaged. {fix}")
    return value


def read_evals(workdir: str) -> list[dict]:
    """The evaluations in <workdir>/evals.jsonl, in file order ([] without the file). A torn
    last line (no newline: its append was cut short, so that evaluation counts as not done) is
    left out with a warning; any other line that is not a JSON object raises DamagedRunFile
    naming the file and the line: hgmt never writes one, so it is damage to look at, not to
    skip."""
    path = evals_file(workdir)
    if not epath.Path(path).exists():
        return []
    # Bytes that are not UTF-8 kept as surrogates, to be named with their line.
    text = disk_space.complete_lines(
        epath.Path(path).read_bytes().decode("utf-8", "surrogateescape"), path)
    return [_json_object(line, path, number)
            for number, line in enumerate(text.splitlines(), 1) if line.strip()]


def _json_object(line: str, path: str, number: int) -> dict:
    """Line `number` of the file `path`, a JSON object; DamagedRunFile when it is not."""
    try:
        line.encode("utf-8")
        value = json.loads(line)
        problem = "" if isinstance(value, dict) else f"a JSON {type(value).__name__}"
    except UnicodeEncodeError as e:
        problem = f"not UTF-8 text at column {e.start + 1}"
    except json.JSONDecodeError as e:
        problem = f"not JSON: {e.msg} at column {e.colno}"
    if problem:
        raise DamagedRunFile(
            f"{path} line {number} is not a JSON object ({problem}): the file was edited or "
            f"damaged. Repair or delete that line and rerun; the file holds only the "
            f"evaluation results (the checkpoints are not affected)")
    return value


def damaged_file(workdir: str) -> str:
    """The path <workdir>/damaged_records.json, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), DAMAGED_FILE)


def starts_file(workdir: str) -> str:
    """The path <workdir>/starts.jsonl, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), STARTS_FILE)


def crop_metres_file(workdir: str) -> str:
    """The path <workdir>/crop_metres.json, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), CROP_METRES_FILE)


def config_file(workdir: str) -> str:
    """The path <workdir>/config.json, `workdir` made absolute (`paths.absolute`)."""
    return os.path.join(absolute(workdir), CONFIG_FILE)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes `config` to <workdir>/config.json, whole or not at all, making the workdir."""
    epath.Path(absolute(workdir)).mkdir(parents=True, exist_ok=True)
    disk_space.write_atomically(config_file(workdir), lambda f: f.write(
        config.to_json_best_effort(indent=1, sort_keys=True)))


def load_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a workdir was trained with (with `ADDED_CONFIG_FIELDS` where it predates
    them); a clear error if it is not a training workdir."""
    path = epath.Path(config_file(workdir))
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: --workdir must be a directory written by "
                                f"`python -m hgmt.main --workdir=...`")
    fix = (f"Write it again by rerunning the training command of {workdir} (python -m "
           f"hgmt.main --workdir=... with the run's --config: it saves config.json as it "
           f"starts), or put back a copy")
    config = read_json_object(str(path), fix)
    if config is None:
        raise DamagedRunFile(f"{path} is empty: its write was cut short (a power loss or "
                             f"crash before its data reached the disk). {fix}")
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


def eval_file(workdir: str, evaluator: str) -> str:
    """The summary of the trainer's evaluator `evaluator` after the last step: eval_<name>.json
    (the evaluator `test` writes `result_file()`, which hgmt.report and launch/sweep.py read)."""
    return os.path.join(absolute(workdir), f"eval_{evaluator}.json")


def result_file(protocol: str = "hgmt", split: str = "test", checkpoint: str = "", *,
                named: bool = False) -> str:
    """The file name, in a workdir, of its evaluation under `protocol`:
    eval_<split>[_<checkpoint>][_<protocol>].json, the protocol named unless it is hgmt (or
    always, `named`: `protocol_file`). hgmt.main writes `eval_test.json` after training;
    launch/sweep.py adds the other protocols' files, and hgmt.report reads them.
    `checkpoint`: what `evaluation_file` puts between the split and the protocol."""
    suffix = "" if protocol == "hgmt" and not named else f"_{protocol}"
    checkpoint = f"_{checkpoint}" if checkpoint else ""
    return f"eval_{split}{checkpoint}{suffix}.json"


def protocol_file(protocol: str, split: str = "test") -> str:
    """The file name, in a workdir, of an evaluation under `protocol` made beside the
    trainer's: `eval_<split>_<protocol>.json`, which is `result_file(protocol)` for a protocol
    other than hgmt; for hgmt, `eval_test_hgmt.json` holds hgmt's numbers of a run whose
    trainer evaluated another protocol into `eval_test.json` (hgmt.report reads it then)."""
    return result_file(protocol, split, named=True)


def evaluation_file(split: str, step: int, *, best: bool = False, frames: str = "middle",
                    flip: bool = False, max_examples: int = 0, protocol: str = "hgmt",
                    image_size: int | None = None) -> str:
    """hgmt.evaluate's default file name in the workdir, which names the checkpoint and the
    settings that differ from SURREAL's test protocol, so that evaluations of other settings
    do not replace each other:
    eval_<split>_<ckpt>[_<frames>][_flip][_first<N>][_<size>px][_<protocol>].json, <ckpt> the
    step (best_<step>: the best checkpoint), <frames> when not `middle`, first<N> with an
    example limit N > 0 (the caller gives it only where it left frames out), <size>px for an
    `image_size` other than the one trained at (the caller gives it only then), <protocol>
    when not hgmt's."""
    name = [f"best_{step}" if best else str(step)]
    name += [frames] if frames != "middle" else []
    name += ["flip"] if flip else []
    name += [f"first{max_examples}"] if max_examples else []
    name += [f"{image_size}px"] if image_size else []
    return result_file(protocol, split, "_".join(name))


def run_name(tasks: str, seed_index: int) -> str:
    """The directory of a sweep's run: 'pose2d+segm' for the first seed, then
    'pose2d+segm@seed1', ..."""
    return tasks if seed_index == 0 else f"{tasks}{SEED_MARK}{seed_index}"


def run_tasks(name: str) -> str:
    """The task subset of a sweep run's directory name ('pose2d+segm@seed1' -> 'pose2d+segm')."""
    return name.partition(SEED_MARK)[0]


def run_seed_index(name: str) -> int:
    """The seed index of a sweep run's directory name ('pose2d+segm@seed1' -> 1,
    'pose2d+segm' -> 0)."""
    return int(name.partition(SEED_MARK)[2] or 0)
