"""Test setup: 4 virtual CPU devices for pmap tests and a persistent XLA compilation cache.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""

import importlib.util
import os
import pathlib
import shutil
import subprocess

# XLA:CPU compiles the tests' programs without LLVM's optimisations: the same programs, the
# suite with an empty compilation cache (mostly compiling) about a third shorter; the tests'
# models are tiny, so running them unoptimised costs little (docs/performance.md).
TEST_XLA_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int) -> str:
    """XLA_FLAGS of a test process with `devices` virtual CPU devices."""
    return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def as_worker_process(devices: int) -> None:
    """Makes this process a multi-process test worker (tests/*_worker.py) of `devices` virtual
    CPU devices: its XLA_FLAGS and JAX's platform, set before JAX is imported."""
    os.environ["XLA_FLAGS"] = xla_flags(devices)
    os.environ["JAX_PLATFORMS"] = "cpu"


os.environ.setdefault("XLA_FLAGS", xla_flags(4))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402

# PyTorch is the bench extra's (benchmarks/torch_reference.py, profile_torch.py), not the test
# extra's: the tests that run those scripts need it installed, and are skipped where it is not.
HAS_TORCH = importlib.util.find_spec("torch") is not None
needs_torch = pytest.mark.skipif(not HAS_TORCH, reason="PyTorch is not installed: pip install "
                                                       "-e '.[bench]'")
TORCH_SCRIPTS = ("torch_reference", "profile_torch")


def uses_torch(name: str) -> bool:
    """Whether `name` (an entry point or a benchmark's name) is one of TORCH_SCRIPTS."""
    return any(script in name for script in TORCH_SCRIPTS)


def torch_marked(names: list[str]) -> list:
    """`names` (entry points or benchmark names) as pytest parameters, those of
    TORCH_SCRIPTS marked `needs_torch`."""
    return [pytest.param(n, marks=needs_torch) if uses_torch(n) else n for n in names]

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared"
# A real SURREAL annotation file; HGMT_REAL_INFO points elsewhere (e.g. from a git worktree).
REAL_INFO = pathlib.Path(os.environ.get(
    "HGMT_REAL_INFO", SHARED / "surreal_samples" / "01_01_c0001_info.mat"))


def enable_compilation_cache() -> None:
    """The persistent compilation cache of the tests and their worker processes: HGMT_JAX_CACHE
    or hgmt's default."""
    from hgmt import compilation_cache

    compilation_cache.enable(os.environ.get("HGMT_JAX_CACHE", compilation_cache.DEFAULT_PATH))


def pytest_configure(config):
    enable_compilation_cache()


_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


def _signal_state() -> tuple[dict, frozenset]:
    import signal

    handlers = {name: signal.getsignal(getattr(signal, name)) for name in _SIGNALS}
    return handlers, frozenset(signal.pthread_sigmask(signal.SIG_BLOCK, []))


@pytest.fixture(autouse=True)
def signal_state_kept():
    """Each test leaves this process's handlers of Ctrl-C, SIGTERM and SIGUSR1 and its blocked
    signals as it found them: a child process inherits an ignored or blocked signal, so a
    leak makes a later test's subprocess deaf to the signal it is sent. The state is put
    back and the test fails naming what changed."""
    import signal

    before = _signal_state()
    yield
    after = _signal_state()
    if after != before:
        for name, handler in before[0].items():
            if handler is not None:
                signal.signal(getattr(signal, name), handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, before[1])
        pytest.fail(f"the test changed this process's signal state: handlers {before[0]} -> "
                    f"{after[0]}, blocked {sorted(before[1])} -> {sorted(after[1])}")


@pytest.fixture(scope="session")
def real_info_path():
    if not REAL_INFO.exists():
        pytest.skip(f"real SURREAL sample not found at {REAL_INFO} (set HGMT_REAL_INFO)")
    return str(REAL_INFO)


def requirements_of(text: str) -> list:
    """The requirements (packaging's `Requirement`) of pip-style lines, one a line, comments
    and blank lines left out."""
    from packaging.requirements import Requirement

    lines = (line.split("#")[0].strip() for line in text.splitlines())
    return [Requirement(line) for line in lines if line]


def setup_requirements(*extras: str) -> list:
    """setup.cfg's install_requires, then the requirements of its `extras`, in that order."""
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(pathlib.Path(__file__).resolve().parents[1] / "setup.cfg")
    blocks = [cfg["options"]["install_requires"],
              *(cfg["options.extras_require"][extra] for extra in extras)]
    return [r for block in blocks for r in requirements_of(block)]


def build_demo(root, clips_per_split=2, frames=6, seed=0, config="all"):
    """Generates demo SURREAL clips under root/surreal and builds them under root/tfds."""
    from hgmt.data import demo

    surreal_root = os.path.join(root, "surreal")
    data_dir = demo.build(surreal_root, os.path.join(root, "tfds"), clips_per_split, frames,
                          seed, dataset=f"surreal/{config}")
    return surreal_root, data_dir


# x264 through PyAV writes the bottom-right macroblock of some clips otherwise in some
# processes (by every sign memory the encoder reads uninitialised: hgmt.sources.synthetic's
# write_video), 62-65 dB PSNR from the usual frames; a change to what the generator draws
# measured 24-31 dB. Frames above this are one clip's, as written by one encoder.
SAME_VIDEO_PSNR_DB = 50.0


def assert_same_video(a, b, what="") -> None:
    """Decoded videos `a` and `b` ((T,H,W,3) uint8) hold one clip's frames as the encoder
    writes them: the same shape, every frame above SAME_VIDEO_PSNR_DB PSNR of the other's
    (their bytes may differ in that one macroblock)."""
    import numpy as np

    a, b = (np.asarray(x, np.float64) for x in (a, b))
    assert a.shape == b.shape, (what, a.shape, b.shape)
    mse = np.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    psnr = 10 * np.log10(255.0**2 / np.maximum(mse, 1e-12))
    assert np.all(psnr > SAME_VIDEO_PSNR_DB), (what, psnr)


# The demo settings of the `demo_dataset` fixture: a config that builds the demo data (e.g.
# configs/demo.py) pointed at it must give these, or it builds another dataset in its place.
DEMO_DATASET_SETTINGS = {"clips_per_split": 2, "frames": 6, "seed": 0}


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory):
    """(surreal_root, data_dir) of a small built demo dataset, config `all`: 2 clips of 6
    frames per split (DEMO_DATASET_SETTINGS)."""
    return build_demo(str(tmp_path_factory.mktemp("demo_dataset")), **DEMO_DATASET_SETTINGS)


@pytest.fixture(scope="session")
def every10_dataset(tmp_path_factory):
    """data_dir of one demo clip of 25 frames per split built with config every10: frames
    0, 10, 20 and the middle frame 12 (ceil(25/2), 0-based) of each clip."""
    return build_demo(str(tmp_path_factory.mktemp("every10")), clips_per_split=1, frames=25,
                      config="every10")[1]


# The tests' hourglasses are one level deep. Most of the suite's time is tracing the tests'
# models, and one level has a third fewer ops to trace than runlocal's two.
TINY_DEPTH = 1


def main_command(workdir, data_dir, total_steps, checkpoint_every):
    """(argv, env) of `python -m hgmt.main` training the tiny pose2d model on the demo dataset
    on 2 virtual devices (the subprocess tests of the command line)."""
    import sys

    cmd = [sys.executable, "-m", "hgmt.main", "--config=configs/default.py:tasks=pose2d,runlocal",
           f"--workdir={workdir}", "--config.dataset=surreal/all",
           f"--config.data_dir={data_dir}", f"--config.total_steps={total_steps}",
           f"--config.checkpoint_every={checkpoint_every}", "--config.evals.test.max_examples=4",
           "--config.model.features=16", f"--config.model.depth={TINY_DEPTH}"]
    env = {**os.environ, "XLA_FLAGS": xla_flags(2)}
    return cmd, env


def interrupted_command(module: str, stage: str, argv: list) -> subprocess.CompletedProcess:
    """`python -m <module>` as its own command (`sys.argv` = `argv`, from the checkout), its
    function `stage` replaced by one that raises KeyboardInterrupt, as a Ctrl-C there does
    -> the finished process (text output)."""
    import sys

    code = ("import importlib, sys\n"
            f"module = importlib.import_module({module!r})\n"
            "def interrupted(*args):\n"
            "    raise KeyboardInterrupt\n"
            f"setattr(module, {stage!r}, interrupted)\n"
            f"sys.argv = {[module, *argv]!r}\n"
            "sys.exit(module.main())\n")
    return subprocess.run([sys.executable, "-c", code], cwd=pathlib.Path(__file__).parents[1],
                          capture_output=True, text=True, timeout=120)


def ctrl_c_in_a_gc_callback() -> bool:
    """A garbage collection whose callback receives a Ctrl-C (SIGINT raised, its handler run
    inside the callback, as JAX's callback may receive one), where Python drops the
    KeyboardInterrupt the handler raises -> whether the signal was raised."""
    import gc
    import signal

    raised = []

    def inside(phase, info):
        if phase == "start" and not raised:
            raised.append(True)
            signal.raise_signal(signal.SIGINT)
            sum(range(1000))

    gc.callbacks.append(inside)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(inside)
    return bool(raised)


def tiny_config(data_dir, tasks="all", **overrides):
    """A runlocal config on the demo dataset, small enough for tests."""
    from configs import default

    config = default.get_config(f"tasks={tasks},runlocal")
    config.dataset = "surreal/all"
    config.data_dir = data_dir
    config.model.features = 16
    config.model.depth = TINY_DEPTH
    config.batch_size = 8
    config.total_steps = 4
    config.log_every = 2
    config.checkpoint_every = 2
    config.eval_batch_size = 8
    config.evals.test.max_examples = 8
    config.evals.test.at_end = False  # tests that evaluate after training say so
    # The best checkpoint's tests set validation.every (runlocal clears its best_metric).
    config.evals.validation.best_metric = "loss/total"
    for key, value in overrides.items():
        target = config
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return config


class SmallDisk:
    """A size-limited tmpfs mounted for a test (needs root); `resize` remounts it."""

    def __init__(self, path, size: int):
        self.path = str(path)
        os.makedirs(self.path, exist_ok=True)
        self._mount(size)

    def _mount(self, size: int, *options: str) -> None:
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(
            (*options, f"size={size}")), "tmpfs", self.path], capture_output=True, text=True)
        if run.returncode:
            pytest.skip(f"cannot mount a size-limited tmpfs here: {run.stderr.strip()}")

    def resize(self, size: int) -> None:
        self._mount(size, "remount")

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", self.path], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """-> make(size): mounts a `SmallDisk` of `size` bytes under tmp_path; each is unmounted
    after the test."""
    disks = []

    def make(size: int) -> SmallDisk:
        disks.append(SmallDisk(tmp_path / f"disk{len(disks)}", size))
        return disks[-1]

    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    yield make
    for disk in disks:
        disk.unmount()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session):
    """The suite's garbage collected once and the survivors frozen (`gc.freeze`) before
    pytest's own end-of-session collections (five full ones, looking for unraisable
    exceptions), so that those pass over no object. A pytest-xdist worker whose heap the
    suite has grown took seconds a collection there, past the 5 s within which it must end
    once the controller asks, and execnet then interrupted it with a SIGINT (printed after
    the last test as a KeyboardInterrupt in JAX's garbage-collection callback). Runs first,
    before the worker reports that it has finished."""
    import gc

    gc.collect()
    gc.freeze()


class NanJointsFrom:
    """A training loader whose batches' 2D joints are all NaN from its `first`-th batch on
    (1-based): the loss of that step and the later ones is NaN."""

    def __init__(self, loader, first: int):
        self.it, self.first, self.drawn = iter(loader), first, 0

    def __iter__(self):
        return self

    def __next__(self):
        import numpy as np

        batch = dict(next(self.it))
        self.drawn += 1
        if self.drawn >= self.first:
            batch["joints2d"] = np.full_like(batch["joints2d"], np.nan)
        return batch

    def get_state(self):
        return self.it.get_state()

    def set_state(self, state):
        self.it.set_state(state)


def preempted_where_test_is_due(data_dir, workdir: str, writer_class: type):
    """Trains the tiny pose2d model into `workdir` (4 steps, logged each, `test` due every 2
    steps on 2 examples) with a metric writer of `writer_class` that sends SIGTERM once step 1
    is logged: the preemption arrives during step 2, which is saved, `test` not run there.
    Returns the config, for the rerun."""
    import signal

    import pytest

    from hgmt.training import loop, preemption

    class SigtermAfterStep1(writer_class):
        def write_scalars(self, step, scalars):
            super().write_scalars(step, scalars)
            if step == 1:
                os.kill(os.getpid(), signal.SIGTERM)

    config = tiny_config(data_dir, tasks="pose2d", total_steps=4, checkpoint_every=100,
                         log_every=1, **{"evals.test.every": 2, "evals.test.max_examples": 2})
    with pytest.raises(preemption.Preempted):
        loop.train(config, workdir, SigtermAfterStep1())
    return config
