"""hgmt as `pip install .` (not editable) installs it: the wheel built from this checkout's
tracked files, and the commands run from it in a directory without a checkout."""

import importlib.metadata
import json
import os
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What an install puts on sys.path: the package, the configs --config=configs/<file> names, and
# the TFDS builder `tfds build --imports=data_builders.surreal` registers.
INSTALLED = ("hgmt/", "configs/", "data_builders/")


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True,
                         check=True).stdout.decode()
    return [name for name in out.split("\0") if name]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    """The wheel of this checkout's tracked files as they are (a copy: a build leaves build/
    and *.egg-info beside the sources), built with the installed setuptools."""
    source = tmp_path_factory.mktemp("source")
    for name in _tracked_files():
        os.makedirs(source / os.path.dirname(name), exist_ok=True)
        with open(os.path.join(REPO, name), "rb") as f:
            (source / name).write_bytes(f.read())
    out = tmp_path_factory.mktemp("wheel")
    # Offline (--no-index): the build requirements are the test extra's, installed.
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-index",
                            "--no-build-isolation", "--disable-pip-version-check", "-w",
                            str(out), str(source)], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    (path,) = out.iterdir()
    return str(path)


def test_the_wheel_holds_every_tracked_file_of_the_package_configs_and_builder(wheel):
    """Each tracked file under hgmt/, configs/ and data_builders/ is in the wheel (a folder
    without __init__.py, or a data file setup.cfg's package_data misses, would be left out
    of an install), and nothing else of the checkout is (tests, benchmarks, launch scripts,
    experiments, docs)."""
    with zipfile.ZipFile(wheel) as z:
        names = {n for n in z.namelist() if ".dist-info/" not in n}
    tracked = {n for n in _tracked_files() if n.startswith(INSTALLED)}
    assert len(tracked) > 100  # the package, its configs and the builder with its dummy data
    assert names == tracked


@pytest.mark.slow
def test_an_installed_wheel_runs_the_demo_the_builders_test_and_a_summary_anywhere(
        wheel, tmp_path):
    """In a virtual environment with the wheel installed (its dependencies the ones installed
    here), from a directory without a checkout: the README's demo command, shortened, trains
    and evaluates; TFDS's test of the builder passes on the dummy data installed beside it;
    `hgmt.models.summary` reads configs/demo.py; the run's start records hgmt's version and
    no commit (no checkout)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                   check=True, env=env)
    python = str(venv / "bin" / "python")
    # --force-reinstall: pip takes an hgmt of the same version outside the environment (the
    # checkout's editable install) for this one
    installed = subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--force-reinstall", "--disable-pip-version-check", wheel],
                               capture_output=True, text=True, env=env)
    assert installed.returncode == 0, installed.stderr[-3000:]
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()

    def run(*args):
        return subprocess.run([python, *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=600)

    where = run("-c", "import configs, data_builders, hgmt; print(hgmt.__file__, "
                "configs.__file__, data_builders.__file__)")
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(str(venv)) for p in where.stdout.split()), where.stdout

    demo = run("-m", "hgmt.main", "--config=configs/demo.py", "--workdir=runs/demo",
               "--config.demo.clips_per_split=3", "--config.demo.frames=8",
               "--config.total_steps=2", "--config.checkpoint_every=2",
               "--config.log_every=2", "--config.batch_size=2", "--config.eval_batch_size=2",
               "--config.optimizer.warmup_steps=1")
    assert demo.returncode == 0, demo.stderr[-3000:]
    headline = json.loads(demo.stdout.strip().splitlines()[-1])
    assert headline["workdir"] == str(cwd / "runs" / "demo") and headline["step"] == 2
    assert 0 <= headline["segm/pixel_accuracy"] <= 1
    with open(cwd / "runs" / "demo" / "starts.jsonl") as f:
        (start,) = [json.loads(line) for line in f]
    version = importlib.metadata.version("hgmt")  # setup.cfg's
    assert (start["hgmt"], start["commit"], start["modified"]) == (version, None, None)

    builder_test = run("-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                       "--pyargs", "data_builders.surreal.surreal_dataset_builder_test")
    assert builder_test.returncode == 0, builder_test.stdout[-3000:]
    assert " passed" in builder_test.stdout and "failed" not in builder_test.stdout

    summary = run("-m", "hgmt.models.summary", "--config=configs/demo.py")
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert "| pose2d+pose3d+depth+segm | 0.61 |" in summary.stdout
