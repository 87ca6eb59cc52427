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
config.json is read and written (an older workdir's in today's layout) by `hgmt.run_config`.
"""

from __future__ import annotations

import json
import os
import re
import time

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
