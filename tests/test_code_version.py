"""hgmt.code_version: the commit of the checkout hgmt runs from, and whether it is modified,
read with git itself on real repositories."""

import importlib.metadata
import os
import subprocess

from hgmt import code_version


def _git(root, *args):
    return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_commit_and_modification_of_a_checkout(tmp_path, monkeypatch):
    """A checkout's HEAD and whether a tracked file differs from it (an untracked file does
    not count: a run's outputs, a data folder); no commit outside a git checkout (an
    installed wheel)."""
    root = tmp_path / "repo"
    root.mkdir()
    _git(root, "init", "-q")
    (root / "a.py").write_text("x = 1\n")
    _git(root, "add", "a.py")
    _git(root, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    monkeypatch.setattr(code_version, "ROOT", str(root))
    head = _git(root, "rev-parse", "HEAD")
    version = importlib.metadata.version("hgmt")  # setup.cfg's, as installed
    assert code_version.describe() == {"hgmt": version, "commit": head, "modified": False}
    (root / "untracked.txt").write_text("a run's output")
    assert code_version.describe()["modified"] is False
    (root / "a.py").write_text("x = 2\n")
    assert code_version.describe()["modified"] is True
    monkeypatch.setattr(code_version, "ROOT", str(tmp_path / "site-packages"))
    assert code_version.describe()["commit"] is None
    assert code_version.describe()["modified"] is None


def test_hgmt_is_described_from_its_own_checkout():
    """Run from this repository (the tests always are), the commit is its HEAD."""
    assert os.path.exists(os.path.join(code_version.ROOT, ".git"))
    assert code_version.describe()["commit"] == _git(code_version.ROOT, "rev-parse", "HEAD")
