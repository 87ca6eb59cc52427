"""One benchmark script run in a fresh process, its JSON line back: how the benchmarks that
compare measurements take each one (a fresh process has its own first compilation, and XLA
reads XLA_FLAGS once, at start)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))


class Failed(RuntimeError):
    """The script exited non-zero or printed no JSON line."""

    def __init__(self, cmd: Sequence[str], returncode: int, stderr: str):
        super().__init__(f"{' '.join(cmd)} failed (exit {returncode}):\n{stderr[-3000:]}")
        self.returncode, self.stderr = returncode, stderr


def run(script: str, args: Sequence[str], env: Mapping[str, str] | None = None,
        timeout_s: float | None = None) -> dict:
    """benchmarks/`script` with `args` (and environment `env`, default this one's) -> the last
    line of its stdout that is a JSON object. Raises `Failed`, or subprocess.TimeoutExpired
    once it has run `timeout_s` seconds."""
    cmd = [sys.executable, os.path.join(HERE, script), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env=None if env is None else dict(env))
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        raise Failed(cmd, proc.returncode, proc.stderr)
    return json.loads(lines[-1])
