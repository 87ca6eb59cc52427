"""The multi-task stacked hourglass: a shared stem, then `num_stacks` stages in which every
selected task has its own hourglass stream and head, with interaction modules between stages.

    image ─ stem ─┬─ stream[pose2d] ─ head ─> pred ─┐      ┌─ stream[pose2d] ─ head ─> ...
                  ├─ stream[segm]   ─ head ─> pred ─┼─ interaction ─┤
                  └─ ...                            ┘      └─ ...
    next input of task t = x_t + 1x1(f_t) + 1x1(p_t)              (Newell's residual path)
                         + message from the other tasks' (f_s, p_s)  (per `interaction`)

Interaction modes: `none` (streams that exchange nothing after the stem, which every task
still trains: not the single-task baseline, which is the task trained alone), `sum` (a 1x1
projection of each other task's features and prediction, summed), `concat` (the others'
features and predictions concatenated, one 1x1 to width) and `gated` (the `sum` projections,
each scaled by per-channel sigmoid gates computed from the receiving stream's pooled
features). `shared_trunk=True` is the classic alternative: one stream shared by all tasks with
one head per task.

Stream modes (the same function, two programs): `separate` builds one stream module per task
and stage, so XLA compiles every task's stream; `vmapped` runs a stage's task streams as one
stream over a stacked task axis (`nn.vmap`, every variable with a leading task axis, layout
and conversion in hgmt/models/stacking.py), so XLA compiles one stream however many tasks
there are. The first stage's streams all read the stem's output, which is not stacked, so what
they compute from it before any task's variables enter runs once for all tasks: the outermost
hourglass level's max-pooling and the statistics of two BatchNorms, the first of its skip
branch's Residual (`up1`, on the stem's output) and the first of its low branch's Residual
(on the pooled output); each task's scale and bias then make the stacked activations.

Ops (`ops`): the blocks are built from hgmt's `custom` ops or Flax's and lax's own (`flax`), the
same variables and values (hgmt/models/hourglass.py).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from hgmt.choices import not_one_of
from hgmt.models.hourglass import OPS, Dtype, Stem, Stream, conv
from hgmt.models.stacking import STACKED

INTERACTIONS = ("none", "sum", "concat", "gated")
STREAM_MODES = ("separate", "vmapped")
# Heads start near zero output (kernel std 1 % of LeCun's): the sparse heatmap and volume
# targets are then learned from the first step instead of after unlearning random outputs
# (with the default init the pose3d overfit test stayed above the all-zero prediction's loss).
HEAD_INIT_SCALE = 0.01


class Interaction(nn.Module):
    """Next stage's input for each task from this stage's inputs, features and predictions:
    xs, feats {task: (B,r,r,C)} (r = R/4 pixels for an R-pixel image, C = `features`) and
    preds {task: (B,r,r,C_task)} (the heads' outputs) -> {task: (B,r,r,C)} in `dtype`."""

    tasks: Sequence[str]
    features: int
    mode: str
    dtype: Dtype = jnp.float32
    ops: str = "custom"

    @nn.compact
    def __call__(self, xs: dict, feats: dict, preds: dict) -> dict:
        c, dt = self.features, self.dtype
        conv1 = functools.partial(conv, kernel=1, dtype=dt, ops=self.ops)
        own = {t: xs[t] + conv1(c, name=f"{t}_feat")(feats[t])
               + conv1(c, name=f"{t}_pred")(preds[t].astype(dt)) for t in self.tasks}
        if self.mode == "none" or len(self.tasks) == 1:
            return own
        out = {}
        for t in self.tasks:
            others = [s for s in self.tasks if s != t]
            if self.mode == "concat":
                cat = jnp.concatenate([a for s in others
                                       for a in (feats[s], preds[s].astype(dt))], -1)
                out[t] = own[t] + conv1(c, name=f"{t}_from_others")(cat)
                continue
            messages = [conv1(c, name=f"{t}_from_{s}")(
                jnp.concatenate([feats[s], preds[s].astype(dt)], -1)) for s in others]
            if self.mode == "gated":
                pooled = feats[t].mean(axis=(1, 2))
                gates = nn.sigmoid(nn.Dense(c * len(others), dtype=dt,
                                            name=f"{t}_gates")(pooled))
                gates = gates.reshape(-1, 1, 1, len(others), c)
                messages = [m * gates[..., i, :] for i, m in enumerate(messages)]
            out[t] = own[t] + sum(messages)
        return out


# Per-channel RGB mean and standard deviation of SURREAL frames on [0, 1] (the model's input
# normalisation): BodyNet's (bodynet training/opts.lua `-mean`, `-std`) but for the red
# channel's std, 0.231 where BodyNet has 0.230; kept, as every checkpoint is trained with it.
IMAGE_MEAN = (0.510, 0.467, 0.411)
IMAGE_STD = (0.231, 0.235, 0.232)


def normalize_images(images: jnp.ndarray) -> jnp.ndarray:
    """RGB (..., 3) uint8 or float on [0, 255] -> float32 with IMAGE_MEAN/IMAGE_STD removed."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(IMAGE_MEAN, jnp.float32)) / jnp.asarray(IMAGE_STD, jnp.float32)


def check_image_size(image_size: int, depth: int) -> None:
    """Raises ValueError naming config.image_size, with the nearest sizes that fit, unless an
    `image_size`-pixel crop fits an hourglass of `depth` levels: a multiple of 4 * 2**depth
    pixels (the stem halves the crop twice, each hourglass level once more), 0 excluded."""
    multiple = 4 * 2 ** depth
    if image_size < multiple or image_size % multiple:
        below = image_size // multiple * multiple
        nearest = " or ".join(str(s) for s in (below, below + multiple) if s > 0)
        raise ValueError(f"config.image_size={image_size}: not a multiple of {multiple}, as "
                         f"an hourglass of config.model.depth={depth} needs; give one, e.g. "
                         f"{nearest or multiple}")


class MultiTaskHourglass(nn.Module):
    """images (B,R,R,3) RGB uint8 (or float on [0, 255]) -> {task: (S,B,R/4,R/4,C_task)}
    float32 predictions of every stage. The model normalises its input itself, so loaders
    send uint8 to the device (4x fewer bytes than float32) and callers need no statistics."""

    heads: Sequence[tuple[str, int]]  # (task, output channels) of each head, in order
    num_stacks: int = 2
    features: int = 256
    depth: int = 4
    interaction: str = "sum"
    shared_trunk: bool = False
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    stream_mode: str = "separate"
    ops: str = "custom"

    @property
    def tasks(self) -> tuple[str, ...]:
        """The task names of the heads, in the heads' order."""
        return tuple(name for name, _ in self.heads)

    @nn.compact
    def __call__(self, images: jnp.ndarray, train: bool = False) -> dict:
        if self.interaction not in INTERACTIONS:
            raise not_one_of(f"model.interaction={self.interaction!r}", INTERACTIONS)
        if self.stream_mode not in STREAM_MODES:
            raise not_one_of(f"model.stream_mode={self.stream_mode!r}", STREAM_MODES)
        if self.ops not in OPS:
            raise not_one_of(f"model.ops={self.ops!r}", OPS)
        for side in images.shape[-3:-1]:
            check_image_size(side, self.depth)
        c, dt, ax, ops = self.features, self.dtype, self.axis_name, self.ops
        conv1 = functools.partial(conv, kernel=1, dtype=dt, ops=ops)
        x = Stem(c, dt, ax, ops, name="stem")(normalize_images(images).astype(dt), train)
        streams = ("trunk",) if self.shared_trunk else tuple(self.tasks)
        xs = {s: x for s in streams}
        outputs = {t: [] for t in self.tasks}
        for stage in range(self.num_stacks):
            if self.stream_mode == "vmapped" and not self.shared_trunk:
                feats = self._stacked_streams(stage, streams, x if stage == 0 else xs, train)
            else:
                feats = {s: Stream(self.depth, c, dt, ax, ops, name=f"stage{stage}_{s}")(
                    xs[s], train)
                         for s in streams}
            preds = {t: conv1(channels, name=f"stage{stage}_{t}_head",
                              init_scale=HEAD_INIT_SCALE)(
                feats["trunk" if self.shared_trunk else t]) for t, channels in self.heads}
            for t in self.tasks:
                outputs[t].append(preds[t].astype(jnp.float32))
            if stage + 1 == self.num_stacks:
                break
            if self.shared_trunk:
                back = xs["trunk"] + conv1(c, name=f"stage{stage}_trunk_feat")(
                    feats["trunk"])
                for t in self.tasks:
                    back = back + conv1(c, name=f"stage{stage}_{t}_pred")(
                        preds[t].astype(dt))
                xs = {"trunk": back}
            else:
                xs = Interaction(tuple(self.tasks), c, self.interaction, dt, ops,
                                 name=f"interaction{stage}")(xs, feats, preds)
        return {t: jnp.stack(v) for t, v in outputs.items()}

    def _stacked_streams(self, stage: int, streams: Sequence[str],
                         xs: dict[str, jnp.ndarray] | jnp.ndarray, train: bool) -> dict:
        """The streams of one stage as one vmapped stream: xs {task: (B,r,r,C)}, or the one
        (B,r,r,C) input all of them read -> {task: (B,r,r,C)}."""
        shared = not isinstance(xs, dict)
        stacked = nn.vmap(Stream, in_axes=(None if shared else 0, None), out_axes=0,
                          variable_axes={"params": 0, "batch_stats": 0},
                          split_rngs={"params": True}, axis_size=len(streams))(
            self.depth, self.features, self.dtype, self.axis_name, self.ops,
            name=f"stage{stage}_{STACKED}")
        f = stacked(xs if shared else jnp.stack([xs[s] for s in streams]), train)
        return {s: f[i] for i, s in enumerate(streams)}
