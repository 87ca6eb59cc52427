"""The command line shared by train_step.py, torch_reference.py and profile_step.py (standard
library only, so the PyTorch reference runs without JAX installed)."""

from __future__ import annotations

import argparse

DTYPES = ("float32", "bfloat16")


def parser(description: str) -> argparse.ArgumentParser:
    """--stacks --features --res --batch --tasks --dtype --steps --warmup."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--stacks", type=int, default=2)
    p.add_argument("--features", type=int, default=128)
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--tasks", default="pose2d", help="e.g. pose2d+segm or all")
    p.add_argument("--dtype", default="float32", choices=DTYPES)
    p.add_argument("--steps", type=int, default=5, help="timed steps after warm-up")
    p.add_argument("--warmup", type=int, default=2)
    return p
