"""Networks: Newell hourglass blocks (`hourglass`) and the multi-task model (`multitask`)."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hgmt.choices import not_one_of
from hgmt.models import stacking
from hgmt.models.hourglass import OPS
from hgmt.models.multitask import (
    IMAGE_MEAN,
    IMAGE_STD,
    INTERACTIONS,
    STREAM_MODES,
    MultiTaskHourglass,
    check_image_size,
    normalize_images,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_FIELDS = ("num_stacks", "features", "depth", "interaction", "shared_trunk", "dtype",
                "stream_mode", "ops", "batch_norm_stats")
# Over what BatchNorm takes its batch statistics in training: "global", the global batch (two
# all-reduces a layer across the devices); "device", each device's share of it (no
# collective: PyTorch DataParallel's BatchNorm). The same with one device.
BATCH_NORM_STATS = ("global", "device")


# What "auto" picks on each backend for `config.model.stream_mode` and `config.model.ops`: the
# faster as measured with benchmarks/train_step.py (docs/performance.md, "One stream over the
# tasks", "What made the CPU step faster" and "On a GPU"). Backends not measured keep the
# first choice.
AUTO_STREAM_MODE = {"cpu": "separate"}
AUTO_OPS = {"cpu": "custom", "gpu": "custom"}


def _resolve(field: str, value: str, choices: Sequence[str], auto: Mapping[str, str],
             backend: str | None) -> str:
    if value == "auto":
        import jax

        return auto.get(backend or jax.default_backend(), choices[0])
    if value not in choices:
        raise not_one_of(f"config.model.{field}={value!r}", ['auto', *choices])
    return value


def resolve_stream_mode(mode: str, backend: str | None = None) -> str:
    """`config.model.stream_mode` ("auto", "separate" or "vmapped") -> the mode the model
    runs, "auto" resolved for `backend` (default: JAX's default backend)."""
    return _resolve("stream_mode", mode, STREAM_MODES, AUTO_STREAM_MODE, backend)


def resolve_ops(ops: str, backend: str | None = None) -> str:
    """`config.model.ops` ("auto", "custom" or "flax") -> the ops the model is built from,
    "auto" resolved for `backend` (default: JAX's default backend)."""
    return _resolve("ops", ops, OPS, AUTO_OPS, backend)


def create_model(model_config: Mapping[str, Any], heads: Mapping[str, int],
                 axis_name: str | None = None) -> MultiTaskHourglass:
    """Builds the model from `config.model` (num_stacks, features, depth, interaction,
    shared_trunk, dtype "float32"|"bfloat16", stream_mode "auto"|"separate"|"vmapped", ops
    "auto"|"custom"|"flax", batch_norm_stats BATCH_NORM_STATS) with one head per task,
    `heads` {task: output channels} (`hgmt.tasks.heads(names)`); unknown fields or values
    are errors. `axis_name`: the device axis a training step runs over, which BatchNorm's
    statistics span under batch_norm_stats "global"."""
    cfg = dict(model_config)
    unknown = sorted(set(cfg) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"unknown config.model field(s) {', '.join(unknown)}; valid: "
                         f"{', '.join(MODEL_FIELDS)}")
    stats = cfg.pop("batch_norm_stats", "global")
    if stats not in BATCH_NORM_STATS:
        raise not_one_of(f"config.model.batch_norm_stats={stats!r}", BATCH_NORM_STATS)
    cfg["stream_mode"] = resolve_stream_mode(cfg.get("stream_mode", "auto"))
    cfg["ops"] = resolve_ops(cfg.get("ops", "auto"))
    dtype = cfg.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise not_one_of(f"config.model.dtype={dtype!r}", DTYPES)
    if cfg.get("interaction", "sum") not in INTERACTIONS:
        raise not_one_of(f"config.model.interaction={cfg['interaction']!r}",
                         INTERACTIONS)
    for field, least in (("num_stacks", 1), ("features", 2), ("depth", 1)):
        if field in cfg and not (isinstance(cfg[field], int) and cfg[field] >= least):
            raise ValueError(f"config.model.{field}={cfg[field]!r}: must be an integer >= "
                             f"{least}")
    if cfg.get("shared_trunk") and cfg.get("interaction", "sum") != "sum":
        # One stream has nothing to share with: the field would be recorded, not used.
        raise ValueError(f"config.model.interaction={cfg['interaction']!r} with "
                         f"shared_trunk=True: the streams' interaction applies to one stream "
                         f"per task; leave interaction at 'sum' or set shared_trunk=False")
    return MultiTaskHourglass(heads=tuple(dict(heads).items()), dtype=DTYPES[dtype],
                              axis_name=axis_name if stats == "global" else None, **cfg)


@functools.lru_cache(maxsize=8)
def variable_shapes(model: MultiTaskHourglass, image_size: int) -> dict:
    """{'params', 'batch_stats'}: the jax.ShapeDtypeStruct tree of `model`'s variables for
    image_size² inputs (nothing allocated). Traced once per model and size in a process: a
    command restoring several checkpoints of one model checks each against it."""
    images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
    return jax.eval_shape(model.init, jax.random.key(0), images)


def variable_differences(model: MultiTaskHourglass, image_size: int, variables: Any) -> str:
    """How `variables` do not fit `model` at `image_size` ('' when they do): the counts of
    variables missing, unexpected and of other shapes, each with two examples."""
    def shapes(tree: Any) -> dict[str, tuple]:
        return {jax.tree_util.keystr(k): tuple(v.shape)
                for k, v in jax.tree_util.tree_leaves_with_path(tree)}

    expected, got = shapes(variable_shapes(model, int(image_size))), shapes(variables)
    if expected == got:
        return ""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(got) if expected[k] != got[k])
    return ", ".join(f"{len(keys)} {kind} (e.g. {keys[:2]})" for kind, keys in (
        ("variables missing", missing), ("unexpected", unexpected),
        ("with other shapes", reshaped)) if keys)


def to_model_layout(model: MultiTaskHourglass, tree: Any) -> Any:
    """`tree` (variables, or a train state) in either stream layout -> in `model`'s
    (`hgmt.models.stacking`): how a checkpoint, always written per task, is loaded."""
    if model.stream_mode == "vmapped" and not model.shared_trunk:
        return stacking.stack_streams(tree, model.tasks)
    return stacking.unstack_streams(tree, model.tasks)


def to_checkpoint_layout(model: MultiTaskHourglass, tree: Any) -> Any:
    """`tree` in `model`'s layout -> the per-task layout checkpoints are written in."""
    return stacking.unstack_streams(tree, model.tasks)


def _last(stages: jnp.ndarray) -> jnp.ndarray:
    """(S,B,r,r,C) -> (B,r,r,C) the last stage's, as a static slice: `stages[-1]` becomes a
    gather once the batch size is symbolic (an export), which TF Lite cannot convert."""
    return lax.index_in_dim(stages, stages.shape[0] - 1, 0, keepdims=False)


def predict_last_stage(model: MultiTaskHourglass, variables: dict, images: jnp.ndarray,
                       flip: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Inference: images (B,R,R,3) RGB uint8 (or float on [0, 255]) -> {task: (B,r,r,C)}
    float32, r = R/4, the last stage's outputs (heatmaps, or logits; what
    evaluation, prediction and export use), averaged with the mirrored image's when `flip`
    gives each task's channel permutation under a mirror (`hgmt.tasks.channel_flips`)."""
    out = {t: _last(o) for t, o in model.apply(variables, images, train=False).items()}
    if flip:
        mirrored = model.apply(variables, images[:, :, ::-1], train=False)
        for t, o in mirrored.items():
            back = _last(o)[:, :, ::-1][..., np.asarray(flip[t])]
            out[t] = 0.5 * (out[t] + back)
    return out


__all__ = ["IMAGE_MEAN", "IMAGE_STD", "INTERACTIONS", "OPS", "STREAM_MODES",
           "MultiTaskHourglass", "check_image_size", "create_model", "normalize_images",
           "predict_last_stage", "resolve_ops", "resolve_stream_mode",
           "to_checkpoint_layout", "to_model_layout", "variable_shapes"]
