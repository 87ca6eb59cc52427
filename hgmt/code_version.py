"""Which code a run was trained with: hgmt's version and, for a git checkout, its commit and
whether tracked files differ from it. The trainer records it at each start in
<workdir>/starts.jsonl (`hgmt.workdirs`), and `hgmt.report` says which commits trained a
sweep's runs."""

from __future__ import annotations

import importlib.metadata
import os
import subprocess

# The folder holding the hgmt package: the repository root of a checkout (an editable install
# or PYTHONPATH), site-packages of an installed wheel (no commit then).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*args: str) -> str | None:
    """`git -C ROOT <args>`'s output, or None where git or the checkout is not there."""
    try:
        done = subprocess.run(["git", "-C", ROOT, *args], capture_output=True, text=True,
                              timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def describe() -> dict:
    """{'hgmt': the installed package's version (None when not installed), 'commit': the
    checkout's HEAD (40 hex digits) or None, 'modified': whether a tracked file differs from
    it (None without a commit)}; an installed package (no git checkout around it) has no
    commit."""
    commit = (_git("rev-parse", "HEAD")
              if os.path.exists(os.path.join(ROOT, ".git")) else None)
    modified = None
    if commit:
        status = _git("status", "--porcelain", "--untracked-files=no")
        modified = None if status is None else bool(status)
    try:
        version = importlib.metadata.version("hgmt")
    except importlib.metadata.PackageNotFoundError:
        version = None
    return {"hgmt": version, "commit": commit, "modified": modified}
