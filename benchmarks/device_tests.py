"""The suite's tests that compare what runs on the accelerator with the host's reference, run
on this host's accelerator (JAX's default backend, where the suite itself runs on the CPU),
with one JSON line of their outcomes:

    python3 benchmarks/device_tests.py [-- pytest arguments]

    {"benchmark": "device_tests", "backend": "gpu", "devices": ["NVIDIA H100 80GB HBM3"],
     "xla_flags": "", "passed": 4, "failed": [], "skipped": 0, "exit": 0, "wall_s": 61.2}

Default: tests/test_device_augment.py's agreement of the device augmentation's labels with the
host path's (`DEFAULT_TESTS`). Arguments after `--` replace them (pytest's own: test files, -k,
-x). pytest's report goes to stderr. Exit status: pytest's (0 all passed, 1 a test failed, 5
none collected).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Sequence

from absl import flags
from cli import print_line

from hgmt import cli

DEFAULT_TESTS = ["tests/test_device_augment.py", "-k",
                 "host_paths_labels or flip_swaps or full_float32"]


class _Outcomes:
    """A pytest plugin that keeps each test's outcome (its call phase's, or the phase that
    failed or skipped it)."""

    def __init__(self) -> None:
        self.passed, self.failed, self.skipped = [], [], []

    def pytest_runtest_logreport(self, report) -> None:
        if report.failed:
            self.failed.append(report.nodeid)
        elif report.skipped:
            self.skipped.append(report.nodeid)
        elif report.when == "call":
            self.passed.append(report.nodeid)


def _define_flags(fv: flags.FlagValues) -> None:
    del fv  # no flags of its own: pytest's arguments follow `--`


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the tests; prints the line; -> pytest's exit status."""
    _, passed = cli.parse(_define_flags, argv, __doc__, positional="--")
    import pytest

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.chdir(repo)
    # The suite's conftest puts JAX on the CPU unless JAX_PLATFORMS is set: empty is JAX's
    # own choice, the accelerator where there is one. Its XLA_FLAGS (virtual CPU devices, no
    # backend optimisation) are for the CPU suite: the caller's flags, or none, instead, so
    # that the accelerator compiles as the trainer's programs do.
    os.environ["JAX_PLATFORMS"] = ""
    os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "")
    outcomes = _Outcomes()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        rc = int(pytest.main(["-q", "-n", "0", "-p", "no:cacheprovider",
                              *(passed or DEFAULT_TESTS)], plugins=[outcomes]))
    import jax

    print_line({"benchmark": "device_tests", "backend": jax.default_backend(),
                "devices": sorted({d.device_kind for d in jax.local_devices()}),
                "xla_flags": os.environ["XLA_FLAGS"],
                "passed": len(outcomes.passed), "failed": outcomes.failed,
                "skipped": len(outcomes.skipped), "exit": rc,
                "wall_s": round(time.perf_counter() - t0, 1)})
    return rc


if __name__ == "__main__":
    sys.exit(main())
