"""A SURREAL build stopped midway (Ctrl-C, SIGTERM) or by a full disk: nothing partial is left
that a later run could take for a build, `tfds build` says so in one line, and the same command
run again builds the dataset."""

import errno
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tensorflow_datasets as tfds

import data_builders.surreal  # noqa: F401  (registers `surreal`)
from data_builders.surreal import process_pool
from hgmt import disk_space
from hgmt.data import records
from hgmt.sources import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLIT_SIZES = {"train": 6, "validation": 6, "test": 6}  # 2 clips of 3 frames, config 'all'

# `tfds build` as TFDS's own script runs it (`launch_cli` in __main__), the signal sent as the
# build reads its AFTER-th clip (0: none; midway, once a split was written) TO the process that
# reads it (_ITSELF: the command, or each worker of its `--num-processes` pool), its process
# group (_GROUP: a terminal's Ctrl-C) or its parent (_PARENT: a worker's command); and AGAIN
# (0: none) sent as each removal of a partial `incomplete.*` folder starts, once one of its
# files (if any) is gone. Ctrl-C handled as a shell's command has it (a process started in the
# background, as this test may be, inherits SIGINT ignored, and would build on).
_ITSELF, _GROUP, _PARENT = 0, 1, 2
_TFDS_BUILD = textwrap.dedent("""\
    import os, shutil, signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from tensorflow_datasets.scripts.cli.main import launch_cli
    from hgmt.data import records
    signum, after, again, to = (int(sys.argv.pop(1)) for _ in range(4))
    real, seen = records.clip_examples, []
    def clip_examples(*args):
        seen.append(args[0])
        if len(seen) == after:
            if to == 1:
                os.killpg(os.getpgid(0), signum)
            else:
                os.kill(os.getppid() if to == 2 else os.getpid(), signum)
        yield from real(*args)
    records.clip_examples = clip_examples
    rmtree = shutil.rmtree
    def rmtree_signalled(path, *args, **kwargs):
        if again and os.path.basename(os.path.normpath(path)).startswith("incomplete."):
            for first in [os.path.join(r, f[0]) for r, _, f in os.walk(path) if f][:1]:
                os.remove(first)
            os.kill(os.getpid(), again)
        rmtree(path, *args, **kwargs)
    shutil.rmtree = rmtree_signalled
    sys.argv[0] = "tfds"
    sys.exit(launch_cli())
    """)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("stops") / "surreal")
    synthetic.generate(root, 2, 3, seed=0)
    return root


def _start_tfds_build(tmp_path, root, data_dir, signum=0, after=0, configs=("--config=all",),
                      again=0, to=_ITSELF):
    """`_TFDS_BUILD` started, its output into files (a pipe not read while the test waits
    would fill and stop it)."""
    script = tmp_path / "tfds_build.py"
    script.write_text(_TFDS_BUILD)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}
    # In a session of its own, so that a build that does not end is ended with its workers.
    with open(tmp_path / "out.txt", "w") as out, open(tmp_path / "err.txt", "w") as err:
        return subprocess.Popen(
            [sys.executable, str(script), str(int(signum)), str(after), str(int(again)),
             str(to), "build", "surreal", "--imports=data_builders.surreal", f"--manual_dir={root}",
             f"--data_dir={data_dir}", *configs, "--file_format=array_record"],
            cwd=tmp_path, env=env, stdout=out, stderr=err, start_new_session=True)


def _ended(process, tmp_path, timeout=600):
    """The started build's end: its status and output."""
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        pytest.fail(f"the build did not end within {timeout} s: "
                    f"{(tmp_path / 'err.txt').read_text()[-3000:]}")
    return subprocess.CompletedProcess(process.args, process.returncode,
                                       (tmp_path / "out.txt").read_text(),
                                       (tmp_path / "err.txt").read_text())


def _tfds_build(tmp_path, root, data_dir, signum=0, after=0, configs=("--config=all",),
                timeout=600, again=0, to=_ITSELF):
    return _ended(_start_tfds_build(tmp_path, root, data_dir, signum, after, configs, again,
                                    to), tmp_path, timeout)


def _session(pid):
    """The processes of the session `pid` leads (a build and the workers it started)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except (OSError, ValueError):  # not a process, or one that just ended
            continue
        if entry.isdigit() and int(fields[3]) == pid and fields[0] != "Z":
            found.append(int(entry))
    return found


def _left(data_dir):
    """What the build left under <data_dir>/surreal/all."""
    folder = os.path.join(data_dir, "surreal", "all")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def _built_again(root, data_dir):
    """The same build run again (in this process): the split sizes it gives."""
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=root))
    return {s: builder.info.splits[s].num_examples for s in SPLIT_SIZES}


@pytest.mark.parametrize("signum, status, line", [
    # TFDS removes its partial output on Ctrl-C itself; hgmt adds the one line.
    pytest.param(signal.SIGINT, 130, "interrupted (Ctrl-C); nothing of the build of "
                 "'surreal/all' was kept; run the same command again to build it",
                 marks=pytest.mark.slow),
    (signal.SIGTERM, -signal.SIGTERM, "stopped by SIGTERM; nothing partial was left behind")])
def test_a_build_stopped_midway_leaves_nothing_says_so_in_one_line_and_builds_again(
        signum, status, line, clips, tmp_path):
    """Ctrl-C or SIGTERM (a scheduler's cancel) as `tfds build` reads the 3rd of 6 clips, the
    train split written: TFDS's partial output (`incomplete.*`) is removed (SIGTERM's default
    would kill the process where it stands and leave it), the command ends with that one line
    (not a traceback) and the shell's status of the signal, and the same command run again
    builds every split."""
    data_dir = str(tmp_path / "tfds")
    done = _tfds_build(tmp_path, clips, data_dir, signum, after=3)
    assert done.returncode == status, done.stderr[-3000:]
    assert done.stderr.rstrip().splitlines()[-1].endswith(line), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _left(data_dir) == []
    assert _built_again(clips, data_dir) == SPLIT_SIZES


def test_ctrl_c_in_a_python_caller_is_its_keyboard_interrupt_with_nothing_left(
        clips, tmp_path, monkeypatch):
    """A caller of the builder in Python (hgmt's demo, a notebook) gets the KeyboardInterrupt
    to handle, not the command's exit, and no partial output."""
    real = records.clip_examples

    def interrupted(*args):
        yield from real(*args)
        raise KeyboardInterrupt

    monkeypatch.setattr(records, "clip_examples", interrupted)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(KeyboardInterrupt):
        _built_again(clips, data_dir)
    assert _left(data_dir) == []


def test_a_full_disk_is_one_line_naming_the_folder_and_the_fix_and_a_rerun_builds(
        clips, small_disk, tmp_path):
    """The disk fills as `tfds build` writes its shards (a 256 KiB tmpfs): one line naming the
    build's folder, the space left as the write failed (under a KiB, not the space TFDS's
    removal of the partial build freed after it) and the fix, status 1, nothing partial
    left; with space, the same command run again builds every split. A Python caller gets
    `disk_space.DiskFull`."""
    disk = small_disk(256 * 1024)
    data_dir = os.path.join(disk.path, "tfds")
    folder = os.path.join(data_dir, "surreal", "all", "1.7.0")
    done = _tfds_build(tmp_path, clips, data_dir)
    assert done.returncode == 1, done.stderr[-3000:]
    last = done.stderr.rstrip().splitlines()[-1]
    assert re.search(rf"error: \[Errno 28\] cannot write dataset 'surreal/all' to {folder}: "
                     rf"the disk or quota is full \(\d+ bytes free on it\)\. Nothing of this "
                     rf"build was kept: free space \(or raise the quota\) and run the same "
                     rf"command again \(RuntimeError: ", last), done.stderr[-3000:]
    assert "No space left on device" in last
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _left(data_dir) == []
    with pytest.raises(disk_space.DiskFull, match=rf"cannot write dataset 'surreal/all' to "
                                                  rf"{folder}: the disk or quota is full "
                                                  rf"\(\d+ bytes free on it\)"):
        _built_again(clips, data_dir)
    assert _left(data_dir) == []
    disk.resize(64 * 1024 * 1024)
    assert _built_again(clips, data_dir) == SPLIT_SIZES


def test_a_full_disk_as_tfds_writes_the_metadata_says_when_the_space_was_measured(
        clips, tmp_path, monkeypatch):
    """A full disk as TFDS writes the build's metadata, after the builder's own code has
    returned, is seen only once TFDS has removed the partial build: the space left is named
    as measured then, not taken for the space left as the write failed."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tfds.core.DatasetInfo, "write_to_directory", full)
    data_dir = str(tmp_path / "tfds")
    with pytest.raises(disk_space.DiskFull, match=r"the disk or quota is full \([^)]* free on "
                                                  r"it once the build had stopped\)"):
        _built_again(clips, data_dir)
    assert _left(data_dir) == []


@pytest.mark.slow  # a rare stop: a second Ctrl-C within the removal of the partial output
def test_a_second_ctrl_c_while_the_partial_output_is_removed_still_removes_it(clips, tmp_path):
    """Ctrl-C midway, then Ctrl-C again as TFDS removes its `incomplete.*` folder (its one
    file, the train split's shard, gone): TFDS's removal stops there, and the builder
    finishes it with Ctrl-C held (a third, sent as that removal starts, is held too):
    nothing is left, and the command ends in its one line with status 130."""
    data_dir = str(tmp_path / "tfds")
    done = _tfds_build(tmp_path, clips, data_dir, signal.SIGINT, after=3, again=signal.SIGINT)
    assert done.returncode == 130, done.stderr[-3000:]
    assert done.stderr.rstrip().splitlines()[-1].endswith(
        "interrupted (Ctrl-C); nothing of the build of 'surreal/all' was kept; run the same "
        "command again to build it"), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _left(data_dir) == []


@pytest.mark.slow  # the Beam path
@pytest.mark.parametrize("signum, status, line", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C); nothing of the build of 'surreal/all' was "
                         "kept; run the same command again to build it"),
    (signal.SIGTERM, -signal.SIGTERM, "stopped by SIGTERM; nothing partial was left behind")])
def test_a_beam_build_in_one_process_stopped_midway_ends_as_the_python_path_does(
        signum, status, line, clips, tmp_path):
    """Beam's DirectRunner in this process (`direct_num_workers=1`, its default) raises a
    RuntimeError naming the step in place of the Ctrl-C or SIGTERM that stopped its code: the
    build still ends as the Python path's does, in the signal's one line and status, with
    nothing partial left."""
    data_dir = str(tmp_path / "tfds")
    done = _tfds_build(tmp_path, clips, data_dir, signum, after=3, configs=(
        "--config=all", "--beam_pipeline_options=direct_num_workers=1"), timeout=300)
    assert done.returncode == status, done.stderr[-3000:]
    assert done.stderr.rstrip().splitlines()[-1].endswith(line), done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert _left(data_dir) == []


@pytest.mark.slow  # the Beam path, on worker processes
def test_sigterm_to_a_beam_build_on_worker_processes_ends_it_and_its_workers(clips, tmp_path):
    """SIGTERM to `tfds build` and its process group, as a scheduler's cancel sends it, once
    Beam's DirectRunner has started its 2 worker processes (`direct_running_mode=
    multi_processing`, the Beam path of docs/building.md): the workers end, the command ends
    in its line and SIGTERM's status with nothing partial left. (Beam's threads that waited
    for the workers print their `RuntimeError: Worker subprocess exited` before it. A stop of
    the command alone, its workers left running, is not tested: Beam then waits for them
    for ever, docs/building.md.)"""
    data_dir = str(tmp_path / "tfds")
    process = _start_tfds_build(tmp_path, clips, data_dir, configs=(
        "--config=all", "--beam_pipeline_options=direct_num_workers=2,"
                        "direct_running_mode=multi_processing"))
    deadline = time.monotonic() + 120
    while len(_session(process.pid)) < 5 and process.poll() is None:  # the command, 2 x 2
        assert time.monotonic() < deadline, "no Beam workers within 120 s"
        time.sleep(0.05)
    assert process.poll() is None, "the build ended before its Beam workers started"
    os.killpg(process.pid, signal.SIGTERM)
    done = _ended(process, tmp_path, timeout=120)
    assert done.returncode == -signal.SIGTERM, done.stderr[-3000:]
    assert done.stderr.rstrip().splitlines()[-1].endswith(
        "stopped by SIGTERM; nothing partial was left behind"), done.stderr[-3000:]
    assert _left(data_dir) == []
    deadline = time.monotonic() + 30
    while (left := _session(process.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left == [], "Beam's workers outlived the build"


def _partial_builds(data_dir):
    """The `incomplete.*` folders left under <data_dir>/surreal/<config>, of every config."""
    surreal_dir = os.path.join(data_dir, "surreal")
    return sorted(os.path.join(config, p) for config in os.listdir(surreal_dir)
                  for p in os.listdir(os.path.join(surreal_dir, config))
                  if p.startswith("incomplete."))


def _one_line_end(done, status):
    """The last line of a build of configs in parallel that ended with `status`, checked to be
    its one line: no traceback, no line of its pool's workers (a worker process's traceback,
    a worker's own end in one line)."""
    assert done.returncode == status, done.stderr[-3000:]
    for other in ("Traceback", "ForkPoolWorker", "stopped by SIGTERM"):
        assert other not in done.stderr, done.stderr[-3000:]
    for ending in ("interrupted (Ctrl-C)", "error: "):
        assert done.stderr.count(ending) <= 1, done.stderr[-3000:]
    return done.stderr.rstrip().splitlines()[-1]


@pytest.mark.slow  # an option off by default: tfds build --num-processes
def test_a_full_disk_in_a_build_of_configs_in_parallel_ends_the_command_in_one_line(
        clips, small_disk, tmp_path):
    """`tfds build surreal --num-processes=3` builds the three configs in a process pool's
    workers: a full disk in one is its `disk_space.DiskFull`, returned to the command, which
    ends in its one line (status 1, no traceback) with nothing partial left; a worker that
    ended itself there instead left the pool waiting for its result for ever."""
    disk = small_disk(256 * 1024)
    data_dir = os.path.join(disk.path, "tfds")
    done = _tfds_build(tmp_path, clips, data_dir, configs=("--num-processes=3",), timeout=180)
    assert re.search(r"error: \[Errno 28\] cannot write dataset 'surreal/\w+' to \S+: the disk "
                     r"or quota is full \(\d+ bytes free on it\)\. Nothing of this build was "
                     r"kept", _one_line_end(done, 1)), done.stderr[-3000:]
    assert _partial_builds(data_dir) == []


@pytest.mark.slow  # an option off by default: tfds build --num-processes
@pytest.mark.parametrize("to", [
    pytest.param(_GROUP, id="a terminal's Ctrl-C: the command and its workers"),
    pytest.param(_PARENT, id="the command alone"),
    pytest.param(_ITSELF, id="the workers alone")])
def test_ctrl_c_to_a_build_of_configs_in_parallel_ends_it_in_one_line_with_nothing_left(
        to, clips, tmp_path):
    """Ctrl-C as the pool's workers of `tfds build surreal --num-processes=3` read their 3rd
    clip: the workers' builds stop, their partial output removed, and the command ends in its
    one line, status 130, with no line of its workers'. Sent to the workers alone, a
    KeyboardInterrupt ended each worker without a result and the command waited for it for
    ever; sent to the command, it stopped the command's wait, whose pool then ended the
    workers by SIGTERM amid their cleanup, each saying so."""
    data_dir = str(tmp_path / "tfds")
    done = _tfds_build(tmp_path, clips, data_dir, signal.SIGINT, after=3,
                       configs=("--num-processes=3",), timeout=180, to=to)
    assert _one_line_end(done, 130).endswith(
        "interrupted (Ctrl-C); nothing of the builds that had not finished was kept; run the "
        "same command again to build them (it reuses those that finished)"), done.stderr[-3000:]
    assert _partial_builds(data_dir) == []


@pytest.mark.slow  # a rare signal: SIGKILL
def test_the_partial_output_of_a_build_killed_outright_is_named_by_the_next_build(
        clips, tmp_path, caplog):
    """SIGKILL (out of memory, a scheduler's limit past its grace period) cannot be caught:
    TFDS's `incomplete.*` folder stays, never read as a build. The same command run again
    builds every split and warns of that folder, naming it, to delete; it does not remove
    it, which may be another build's, still running."""
    data_dir = str(tmp_path / "tfds")
    done = _tfds_build(tmp_path, clips, data_dir, signal.SIGKILL, after=3)
    assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
    [left] = _left(data_dir)
    assert left.startswith("incomplete.")
    with caplog.at_level("WARNING"):
        assert _built_again(clips, data_dir) == SPLIT_SIZES
    partial = os.path.join(data_dir, "surreal", "all", left)
    assert [r.getMessage() for r in caplog.records if left in r.getMessage()] == [
        f"{partial}: the partial output of an earlier build that was killed (or of one still "
        f"running), never read as a build; delete it once no build is writing there"]
    assert _left(data_dir) == ["1.7.0", left]


def test_a_partial_build_that_cannot_be_removed_is_warned_and_the_stop_kept(tmp_path, caplog):
    """Where the builder's own removal of TFDS's `incomplete.*` folder fails, the path is
    warned with what to do, and the error that stopped the build stays the one raised."""
    builder = tfds.builder("surreal/all", data_dir=str(tmp_path))

    class Undeletable:
        def exists(self):
            return True

        def rmtree(self):
            raise PermissionError(errno.EACCES, "Permission denied")

        def __str__(self):
            return "/data/surreal/all/incomplete.X"

    builder._partial = Undeletable()
    with caplog.at_level("WARNING"):
        builder._remove_partial_build()
    assert ("/data/surreal/all/incomplete.X: could not remove this build's partial output "
            "([Errno 13] Permission denied); remove it before building again") in caplog.text


@pytest.mark.parametrize("error, interrupted, raised", [
    (KeyboardInterrupt(), True, process_pool.BuildInterrupted),
    # C code that the Ctrl-C stopped raised its own error in its place (array_record's import).
    (ImportError("initialization failed"), True, process_pool.BuildInterrupted),
    (ImportError("initialization failed"), False, ImportError)])
def test_a_pool_workers_build_that_a_ctrl_c_stopped_is_build_interrupted_whatever_it_raised(
        error, interrupted, raised, monkeypatch):
    """In a worker of `tfds build --num-processes`' pool, an error that ends a build once a
    Ctrl-C reached the worker is the stop, `BuildInterrupted` (an Exception the pool returns
    to the command, which ends in its one line), not a traceback; without a Ctrl-C it is
    itself."""
    with pytest.raises(raised) as stop:
        with process_pool.worker_build("stopped", "not started"):
            monkeypatch.setattr(process_pool, "_interrupted", interrupted)  # a Ctrl-C came
            raise error
    assert raised is not process_pool.BuildInterrupted or str(stop.value) == "stopped"


def test_an_error_that_ends_a_build_after_a_ctrl_c_is_the_ctrl_c(clips, tmp_path, monkeypatch):
    """Once a Ctrl-C stopped a build in this process, whatever error leaves it is the
    KeyboardInterrupt (a Python caller's; `tfds build`'s one line and status 130): C code
    that the KeyboardInterrupt stopped may raise its own error in its place (array_record's
    import, as the build's first write starts, an ImportError), which ended `tfds build` in
    a traceback and status 1. Nothing partial is left."""
    real = records.clip_examples

    def interrupted(*args):
        yield from real(*args)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ImportError("initialization failed") from None

    monkeypatch.setattr(records, "clip_examples", interrupted)
    data_dir = str(tmp_path / "tfds")
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a shell's has it
    try:
        with pytest.raises(KeyboardInterrupt):
            _built_again(clips, data_dir)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert _left(data_dir) == []
