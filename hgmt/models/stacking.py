"""The two layouts of the task streams' variables, and the conversion between them.

With `stream_mode="separate"` each stage has one hourglass stream per task, its variables
under `stage{k}_{task}`; with `stream_mode="vmapped"` a stage's streams are one module,
`stage{k}_streams`, whose every variable has a leading task axis in the model's task order
(`MultiTaskHourglass.tasks`). The heads, stem and interaction modules are the same in both.
Checkpoints are written in the separate layout (`unstack_streams`), so they are read by task
name whatever mode trained them, and `stack_streams` turns them into the vmapped one.

Both functions take any pytree that holds variable collections or trees shaped like them (a
`{'params', 'batch_stats'}` dict, a train state with its optimizer's per-parameter moments):
every dict with stream entries is converted, everything else is left as it is. Each is the
identity on a tree already in its target layout.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

STACKED = "streams"  # the vmapped stream module of stage k is "stage{k}_streams"
_STACKED_KEY = re.compile(rf"stage(\d+)_{STACKED}")


# Rank of a stream variable for one task, by its name and, for a kernel, its module's:
# BatchNorm's `scale`, `bias`, `mean` and `var` and a convolution's `bias` (C,), a 1x1 kernel
# (Cin, Cout) (`Conv1x1_<k>`), a kxk one (k, k, Cin, Cout) (`Conv_<k>`); stacked, one axis
# more. A tree replicated over devices has one axis more again, which the task axis's length
# alone cannot tell apart when there are as many devices as tasks.
_TASK_RANK = {"scale": 1, "bias": 1, "mean": 1, "var": 1}
_KERNEL_RANK = {"Conv1x1": 2, "Conv": 4}


def _task_rank(path: tuple) -> int | None:
    """The rank for one task of the stream variable at `path` (keys within a stream), or None
    for a name not in the tables above."""
    keys = [str(getattr(k, "key", k)) for k in path]
    if keys and keys[-1] == "kernel" and len(keys) > 1:
        return _KERNEL_RANK.get(keys[-2].rsplit("_", 1)[0])
    return _TASK_RANK.get(keys[-1]) if keys else None


def _check_rank(where: str, path: tuple, leaf: Any, stacked: bool) -> None:
    """Raises ValueError unless `leaf`, a variable of a stream (`stacked`: of the stacked
    streams), has its layout's rank."""
    rank = _task_rank(path)
    if rank is None or len(leaf.shape) == rank + stacked:
        return
    layout = f"(tasks, then {rank}-D per task)" if stacked else "(one task's)"
    raise ValueError(f"{where}{jax.tree_util.keystr(path)} has shape {tuple(leaf.shape)}: in "
                     f"this layout it is {rank + stacked}-D {layout}. A tree replicated over "
                     f"devices (a leading device axis, as the trainer's train state) must be "
                     f"brought to the host first (hgmt.devices.to_host)")


def _has_separate(tree: Any, tasks: Sequence[str]) -> bool:
    return isinstance(tree, Mapping) and any(
        re.fullmatch(rf"stage\d+_{re.escape(t)}", str(k)) for k in tree for t in tasks)


def _has_stacked(tree: Any) -> bool:
    return isinstance(tree, Mapping) and any(_STACKED_KEY.fullmatch(str(k)) for k in tree)


def _stack(*leaves: np.ndarray | jax.Array) -> np.ndarray | jax.Array:
    return np.stack(leaves) if all(isinstance(x, np.ndarray) for x in leaves) else (
        jax.numpy.stack(leaves))


def stack_streams(tree: Any, tasks: Sequence[str]) -> Any:
    """Separate -> vmapped layout: in each dict holding `stage{k}_{task}` entries, those of
    stage k (one per task of `tasks`, in that order) become `stage{k}_streams`, every leaf
    (...) -> (T, ...). Raises ValueError naming the stage when a task's stream is missing, and
    naming the variable when one has not its per-task rank (a tree replicated over devices)."""
    tasks = tuple(tasks)

    def convert(d: Mapping) -> dict:
        out = {k: v for k, v in d.items()
               if not any(re.fullmatch(rf"stage\d+_{re.escape(t)}", str(k)) for t in tasks)}
        stages = sorted({int(m[1]) for k in d for t in tasks
                         if (m := re.fullmatch(rf"stage(\d+)_{re.escape(t)}", str(k)))})
        for k in stages:
            missing = [t for t in tasks if f"stage{k}_{t}" not in d]
            if missing:
                raise ValueError(f"stage {k} has no stream for task(s) {', '.join(missing)} "
                                 f"(has {', '.join(sorted(map(str, d)))}): the variables are "
                                 f"of another task selection than {', '.join(tasks)}")
            for t in tasks:
                jax.tree_util.tree_map_with_path(
                    lambda path, x, w=f"stage{k}_{t}": _check_rank(w, path, x, False),
                    d[f"stage{k}_{t}"])
            out[f"stage{k}_{STACKED}"] = jax.tree.map(
                _stack, *[d[f"stage{k}_{t}"] for t in tasks])
        return out

    return jax.tree.map(lambda x: convert(x) if _has_separate(x, tasks) else x, tree,
                        is_leaf=lambda x: _has_separate(x, tasks))


def unstack_streams(tree: Any, tasks: Sequence[str]) -> Any:
    """Vmapped -> separate layout: each `stage{k}_streams` entry, leaves (T, ...), becomes
    one `stage{k}_{task}` entry per task of `tasks` (in the stacked order), leaves (...).
    Raises ValueError when the task axis is not len(tasks) long, and naming the variable when
    one has not its stacked rank: a tree replicated over devices, whose device axis would
    otherwise be taken for the task axis when there are as many devices as tasks."""
    tasks = tuple(tasks)

    def split(path: tuple, leaf: np.ndarray | jax.Array, k: str) -> np.ndarray | jax.Array:
        _check_rank(f"stage{k}_{STACKED}", path, leaf, True)
        if leaf.shape[:1] != (len(tasks),):
            raise ValueError(f"stage{k}_{STACKED} has a leaf of shape {leaf.shape}: its "
                             f"leading task axis should be {len(tasks)} long for "
                             f"{', '.join(tasks)}")
        return leaf

    def convert(d: Mapping) -> dict:
        out = {}
        for key, v in d.items():
            m = _STACKED_KEY.fullmatch(str(key))
            if m is None:
                out[key] = v
                continue
            v = jax.tree_util.tree_map_with_path(lambda p, x, k=m[1]: split(p, x, k), v)
            for i, t in enumerate(tasks):
                out[f"stage{m[1]}_{t}"] = jax.tree.map(lambda x, i=i: x[i], v)
        return out

    return jax.tree.map(lambda x: convert(x) if _has_stacked(x) else x, tree,
                        is_leaf=_has_stacked)
