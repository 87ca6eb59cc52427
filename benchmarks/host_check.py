"""What the accelerator host runs the benchmarks with, in about ten seconds, before any of them:
one JSON line {"benchmark": "host", ...} with Python's, JAX's and jaxlib's versions, JAX's
backend, the kind and count of its devices, PyTorch's version and whether it sees CUDA, Triton's
version and the C compiler (`cc --version`'s first line; torch.compile needs both), and the
GPU driver (`nvidia-smi`); null for what is missing.

    python3 benchmarks/host_check.py [--require_accelerator]

`--require_accelerator`: exit 4 with a message when JAX's backend is the CPU (the CUDA plugin
did not load: JAX falls back to the CPU without an error, and a step of the paper's size there
would take a device call's whole time). benchmarks/accelerator.sh runs it first, with that flag
at `--size=paper`.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Sequence

EXIT_NO_ACCELERATOR = 4

# JAX's first use of a GPU would reserve most of its memory for this short process
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

from absl import flags  # noqa: E402

from hgmt import cli  # noqa: E402


def first_line(cmd: Sequence[str]) -> str | None:
    """The first line of `cmd`'s output, or None where it is missing or fails."""
    if not shutil.which(cmd[0]):
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = proc.stdout.strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else None


def version(module: str) -> str | None:
    """`module.__version__`, or None where it does not import."""
    try:
        return getattr(importlib.import_module(module), "__version__", "unknown")
    except Exception:  # noqa: BLE001  (a broken install reads as missing)
        return None


def jax_facts() -> dict:
    """JAX's and jaxlib's versions, backend and devices (None each where JAX fails)."""
    try:
        import jax
        import jaxlib

        devices = jax.devices()
        return {"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                "backend": jax.default_backend(), "device_kind": devices[0].device_kind,
                "device_count": len(devices)}
    except Exception as e:  # noqa: BLE001  (reported in the line)
        return {"jax": None, "jaxlib": None, "backend": None, "device_kind": None,
                "device_count": 0, "jax_error": f"{type(e).__name__}: {e}"}


def torch_facts() -> dict:
    """PyTorch's version and whether it sees a CUDA device (None each where it is missing)."""
    try:
        import torch

        return {"torch": torch.__version__, "torch_cuda": torch.cuda.is_available()}
    except Exception:  # noqa: BLE001  (a broken install reads as missing)
        return {"torch": None, "torch_cuda": None}


def facts() -> dict:
    """The JSON line's fields."""
    return {"benchmark": "host", "python": platform.python_version(), **jax_facts(),
            "jax_platforms": os.environ.get("JAX_PLATFORMS"), **torch_facts(),
            "triton": version("triton"), "cc": first_line(["cc", "--version"]),
            "driver": first_line(["nvidia-smi", "--query-gpu=driver_version",
                                  "--format=csv,noheader"])}


def refusal(line: dict) -> str | None:
    """Why a run that needs an accelerator must not start on this host, or None."""
    if line["backend"] in ("gpu", "cuda", "rocm", "tpu"):
        return None
    found = line.get("jax_error") or f"JAX's backend is {line['backend']}"
    return (f"host_check: {found}, not an accelerator: JAX's CUDA plugin did not load "
            f"(jaxlib {line['jaxlib']}, driver {line['driver']}, JAX_PLATFORMS="
            f"{line['jax_platforms']}); a paper-size step on the CPU would take the whole "
            f"call. Install the jax-cuda plugin matching jaxlib, or give --size=tiny to check "
            f"the scripts on a CPU")


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_bool("require_accelerator", False, "exit 4 when JAX's backend is the CPU",
                      flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the line; -> exit status (EXIT_NO_ACCELERATOR: see the module's doc)."""
    fv, _ = cli.parse(_define_flags, argv, __doc__)  # stray arguments: cli.parse's error
    line = facts()
    print(json.dumps(line), flush=True)
    why = refusal(line) if fv.require_accelerator else None
    if why:
        print(why, file=sys.stderr, flush=True)
        return EXIT_NO_ACCELERATOR
    return 0


if __name__ == "__main__":
    sys.exit(main())
