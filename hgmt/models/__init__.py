"""Networks: Newell hourglass blocks (`hourglass`) and the multi-task model (`multitask`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax.numpy as jnp
import numpy as np

from hgmt.models.multitask import (
    IMAGE_MEAN,
    IMAGE_STD,
    INTERACTIONS,
    MultiTaskHourglass,
    normalize_images,
)

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
MODEL_FIELDS = ("num_stacks", "features", "depth", "interaction", "shared_trunk", "dtype")


def create_model(model_config: Mapping[str, Any], heads: Mapping[str, int],
                 axis_name: str | None = None) -> MultiTaskHourglass:
    """Builds the model from `config.model` (num_stacks, features, depth, interaction,
    shared_trunk, dtype "float32"|"bfloat16") with one head per task, `heads` {task: output
    channels} (`hgmt.tasks.heads(names)`); unknown fields or values are errors."""
    cfg = dict(model_config)
    unknown = sorted(set(cfg) - set(MODEL_FIELDS))
    if unknown:
        raise ValueError(f"unknown config.model field(s) {unknown}; valid: {list(MODEL_FIELDS)}")
    dtype = cfg.pop("dtype", "float32")
    if dtype not in DTYPES:
        raise ValueError(f"config.model.dtype={dtype!r}: choose one of {list(DTYPES)}")
    if cfg.get("interaction", "sum") not in INTERACTIONS:
        raise ValueError(f"config.model.interaction={cfg['interaction']!r}: choose one of "
                         f"{list(INTERACTIONS)}")
    return MultiTaskHourglass(heads=tuple(dict(heads).items()), dtype=DTYPES[dtype],
                              axis_name=axis_name,
                              **cfg)


def predict_last_stage(model: MultiTaskHourglass, variables: dict, images: jnp.ndarray,
                       flip: Mapping[str, Sequence[int]] | None = None) -> dict:
    """Inference: images (B,R,R,3) -> {task: (B,r,r,C)} the last stage's outputs (what
    evaluation, prediction and export use), averaged with the mirrored image's when `flip`
    gives each task's channel permutation under a mirror (`hgmt.tasks.channel_flips`)."""
    out = {t: o[-1] for t, o in model.apply(variables, images, train=False).items()}
    if flip:
        mirrored = model.apply(variables, images[:, :, ::-1], train=False)
        for t, o in mirrored.items():
            back = o[-1][:, :, ::-1][..., np.asarray(flip[t])]
            out[t] = 0.5 * (out[t] + back)
    return out


__all__ = ["IMAGE_MEAN", "IMAGE_STD", "INTERACTIONS", "MultiTaskHourglass", "create_model",
           "normalize_images", "predict_last_stage"]
