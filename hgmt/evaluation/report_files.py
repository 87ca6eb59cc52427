"""The files of an evaluation summary (`hgmt.evaluation.evaluator`): its JSON, its Markdown
beside it (made by hgmt/evaluation/markdown.py) and each task's pictures of its numbers,
written together (`write_report`), the check of the JSON's name before an evaluation
(`check_out_file`), and the JSON line a command prints of it (`result_line`)."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os

from etils import epath

from hgmt import disk_space, paths
from hgmt.evaluation import markdown, protocols
from hgmt.tasks import TASKS


def result_line(summary: dict, workdir: str, out: str, step: int) -> str:
    """The JSON line hgmt.main and hgmt.evaluate print last on stdout, for scripts: the
    workdir, the evaluation's JSON (`out`), the checkpoint's step and the headline numbers
    (`protocols.headline`), as absolute paths."""
    return json.dumps({"workdir": paths.text(paths.absolute(workdir)),
                       "eval": paths.text(paths.absolute(out)), "step": step,
                       **protocols.headline(summary)})


def check_out_file(out: str) -> None:
    """ValueError naming `out` and the fix when `write_report` cannot write it: a folder, or
    a Markdown name (the Markdown goes beside the JSON as <stem>.md, the JSON would replace
    it)."""
    if out.lower().endswith(".md"):
        raise ValueError(f"--out_file={out}: give the JSON's file name (e.g. eval.json); the "
                         f"Markdown is written beside it as <stem>.md")
    if epath.Path(paths.absolute(out)).is_dir():
        raise ValueError(f"--out_file={out}: is a folder; give a file name in it, e.g. "
                         f"{os.path.join(out, 'eval_test.json')}")


def write_report(summary: dict, out: str) -> list[str]:
    """JSON at `out`, Markdown beside it, and each task's pictures of its numbers (its
    `summary_pictures`, e.g. a PCK curve), which the JSON lists ('pictures', file names
    beside it). -> the paths written. The pictures are drawn under a temporary stem, then all
    the files are written as one output (`disk_space.write_together`), the JSON last, so that
    its presence (what a rerun of the trainer takes as the evaluation done) means the rest is
    there too, and a report that does not fit (`disk_space.DiskFull`, naming the file) or is
    interrupted changes none of the files of an earlier report of the same name; an `out`
    that `check_out_file` refuses raises its ValueError before anything is written."""
    check_out_file(out)
    out = paths.absolute(out)
    epath.Path(out).parent.mkdir(parents=True, exist_ok=True)
    stem = os.path.splitext(out)[0]
    drafts_stem = f"{stem}.partial"
    drafts = []
    try:
        for task in TASKS:
            if task in summary:
                try:
                    with disk_space.reported(stem, f"{task}'s pictures"):
                        drafts += TASKS[task].summary_pictures(summary[task], drafts_stem)
                except disk_space.DiskFull as e:  # named as the picture it stages
                    raise disk_space.DiskFull(errno.ENOSPC, e.strerror.replace(
                        drafts_stem, stem)) from e
        pictures = [stem + draft[len(drafts_stem):] for draft in drafts]
        listed = {**summary, "pictures": [os.path.basename(p) for p in pictures]}
        disk_space.write_together([
            *((picture, lambda f, d=draft: f.write(epath.Path(d).read_bytes()), "wb")
              for picture, draft in zip(pictures, drafts, strict=True)),
            (stem + ".md", lambda f: f.write(markdown.to_markdown(summary)), "w"),
            (out, lambda f: json.dump(listed, f, indent=1), "w")])
    finally:  # the drafts, in an object store too, and locally one a failed drawing left
        for draft in {*drafts, *([] if paths.is_url(stem) else
                                 glob.glob(glob.escape(drafts_stem) + "*"))}:
            with contextlib.suppress(FileNotFoundError):
                epath.Path(draft).unlink()
    return [out, stem + ".md", *pictures]

