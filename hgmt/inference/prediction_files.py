"""The files hgmt.predict reads and writes: each input's outputs in the output folder
(`outputs_of`), inputs given twice predicted once (`distinct`), and, before anything is written,
the checks that no output replaces an input, another input's output or a file that is not an
earlier prediction (`check_outputs`), and an output folder that can be written
(`make_output_folder`).
"""

from __future__ import annotations

import os
import re
import sys

from hgmt import disk_space
from hgmt.inference import video, video_file


def outputs_of(path: str, out_dir: str) -> dict[str, str]:
    """The files the prediction of the image or video at `path` writes into `out_dir`: an
    image's 'panel' and 'json', a video's `video.outputs`."""
    if video_file.is_video(path):
        return video.outputs(path, out_dir)
    name = os.path.join(out_dir, os.path.splitext(os.path.basename(path))[0])
    return {"panel": name + ".png", "json": name + ".json"}


def _identity(path: str) -> tuple[int, int] | None:
    """(device, inode) of an existing file, None for none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _same_file_key(path: str) -> str:
    """The path with links resolved and, on a case-insensitive system, its case folded."""
    return os.path.normcase(os.path.realpath(path))


def distinct(inputs: list[str]) -> list[str]:
    """The inputs without those that name a file given before them (the same path, another
    spelling of it, a link to it), each warned about: predicted once."""
    seen: dict[object, str] = {}
    kept = []
    for path in inputs:
        keys = [_same_file_key(path)] + [i for i in [_identity(path)] if i is not None]
        first = next((seen[k] for k in keys if k in seen), None)
        if first is not None:
            print(f"warning: {path} is {first} given again: predicted once", file=sys.stderr)
            continue
        seen.update(dict.fromkeys(keys, path))
        kept.append(path)
    return kept


# The record among each input's outputs (an image's JSON, a video's summary) and what
# hgmt.predict has written at its head from its first version on (an image's JSON starts with
# its "image", its "tasks" follow): an output path holding a file of another kind is not ours.
_RECORDS = {"json": re.compile(rb'\A\s*\{\s*"image"\s*:.*?"tasks"\s*:', re.DOTALL),
            "summary": re.compile(rb'\A\s*\{.*"annotated_video"\s*:', re.DOTALL)}
_RECORD_HEAD = 1 << 16  # bytes


def _earlier_prediction(outputs: dict[str, str]) -> tuple[bool, str]:
    """-> (whether `outputs` (`outputs_of`) hold an earlier prediction's record, `_RECORDS`;
    the record's path). Only the record's head is read (an image's JSON names its image and
    tasks before its class maps), so a folder of thousands of earlier predictions is checked
    fast."""
    kind, mark = next((k, m) for k, m in _RECORDS.items() if k in outputs)
    try:
        with open(outputs[kind], "rb") as f:
            head = f.read(_RECORD_HEAD)
    except OSError:
        return False, outputs[kind]
    return mark.search(head) is not None, outputs[kind]


def check_outputs(inputs: list[str], out_dir: str) -> None:
    """Stops, before anything is written, when an output would replace an input (by any
    path to it: a symbolic link to the folder, another case of its name), another input's
    output (two inputs of one name, e.g. a/x.jpg and b/x.png) or a file that is not an
    earlier prediction of the same name (`_earlier_prediction`: x.png, a photo beside x.jpg,
    in --out_dir=.)."""
    key = _same_file_key
    inputs_at = {key(p): p for p in inputs}
    files_at = {i: p for p in inputs if (i := _identity(p)) is not None}
    written: dict[str, str] = {}
    for path in inputs:
        outputs = outputs_of(path, out_dir)
        ours, record = _earlier_prediction(outputs)
        for out in map(os.path.abspath, outputs.values()):
            resolved = key(out)
            # The same path once links are resolved, or an existing output that is the same
            # file as an input (a case-insensitive file system's other spelling of its name).
            replaced = inputs_at.get(resolved) or files_at.get(_identity(out))
            if replaced is not None:
                raise SystemExit(f"error: the prediction of {path} would overwrite the input "
                                 f"{replaced}; choose another --out_dir")
            if written.get(resolved, path) != path:
                raise SystemExit(f"error: {written[resolved]} and {path} would both write "
                                 f"{out}; predict them into separate --out_dir folders")
            if not ours and os.path.lexists(out):
                state = ("is missing" if not os.path.lexists(record) else
                         "is not hgmt.predict's")
                raise SystemExit(
                    f"error: the prediction of {path} would overwrite {out}, which is not an "
                    f"earlier prediction of it (hgmt.predict writes "
                    f"{', '.join(os.path.basename(o) for o in outputs.values())}; "
                    f"{os.path.basename(record)}, which marks an earlier one, {state}); move "
                    f"that file or choose another --out_dir")
            written[resolved] = path


def make_output_folder(out_dir: str) -> None:
    """Creates `out_dir` (and its parents); one that cannot be made or written into (a file
    of that name, no permission, a read-only disk) stops the command in one line. A full
    disk propagates, for `disk_space.reported`."""
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:
        if disk_space.is_disk_full(e):
            raise
        raise SystemExit(f"error: --out_dir={out_dir}: cannot be made a folder "
                         f"({e.strerror or e}); give a folder this user can write") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise SystemExit(f"error: --out_dir={out_dir}: not writable by this user; give a "
                         f"folder this user can write")
