"""The numeric core of training: the train state, the optimizer and its schedule, and the
train step run on every device over its share of the batch (`hgmt.devices.spmd`, axis
"batch"). Pure functions of JAX values, no I/O, so the speed
benchmarks and any launcher can use them without the input pipeline or the metric writers.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax.training import train_state

from hgmt import devices
from hgmt.choices import not_one_of
from hgmt.tasks import compute_losses

if TYPE_CHECKING:
    from hgmt.data import device_augment
    from hgmt.models import MultiTaskHourglass


class TrainState(train_state.TrainState):
    """flax's TrainState with the model's BatchNorm statistics."""

    batch_stats: Any


# --- Setup ----------------------------------------------------------------------------------
def create_lr(config: ml_collections.ConfigDict) -> optax.Schedule:
    """Linear warm-up from 0, then cosine decay to 0 at total_steps, or constant."""
    opt = config.optimizer
    return _lr(opt.schedule, opt.learning_rate, opt.warmup_steps, config.total_steps)


def _lr(schedule: str, learning_rate: float, warmup_steps: int,
        total_steps: int) -> optax.Schedule:
    if schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps,
                                                  max(total_steps, warmup_steps + 1))
    if schedule == "constant":
        return optax.join_schedules([optax.linear_schedule(0.0, learning_rate, warmup_steps),
                                     optax.constant_schedule(learning_rate)],
                                    [warmup_steps])
    raise not_one_of(f"config.optimizer.schedule={schedule!r}", ("cosine", "constant"))


def clipped(inner: optax.GradientTransformation,
            max_norm: float) -> optax.GradientTransformation:
    """`inner` applied to the gradients clipped to global norm `max_norm`
    (`optax.clip_by_global_norm`), with `inner`'s own state: the optimizer state's tree is
    the same with and without clipping, so a run can turn clipping on or off and still
    resume its checkpoints. The updates equal `optax.chain(clip_by_global_norm(max_norm),
    inner)`'s, whose state has one more node."""
    if not max_norm > 0:
        raise ValueError(f"config.optimizer.grad_clip_norm={max_norm!r}: give a positive global "
                         f"norm, or 0 for no clipping")
    clip = optax.clip_by_global_norm(max_norm)

    def update(updates: optax.Updates, state: optax.OptState, params: optax.Params | None = None,
               ) -> tuple[optax.Updates, optax.OptState]:
        updates, _ = clip.update(updates, clip.init(params))
        return inner.update(updates, state, params)

    return optax.GradientTransformation(inner.init, update)


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
    """RMSprop (the reference code's optimizer) or Adam, with linear warm-up then cosine decay
    or a constant rate, its gradients clipped to global norm `optimizer.grad_clip_norm` where
    that is not 0. A one-element chain whatever the clipping (`clipped`): the checkpoints'
    `opt_state` has that layout. One object per setting in a process (`_optimizer`)."""
    opt = config.optimizer
    # A constant rate does not depend on total_steps: a resume that only extends the run
    # keeps the optimizer, and so the compiled step.
    total_steps = int(config.total_steps) if opt.schedule != "constant" else 0
    return _optimizer(opt.name, float(opt.learning_rate), opt.schedule, int(opt.warmup_steps),
                      total_steps, float(opt.grad_clip_norm or 0.0))


@functools.lru_cache(maxsize=16)
def _optimizer(name: str, learning_rate: float, schedule: str, warmup_steps: int,
               total_steps: int, grad_clip_norm: float) -> optax.GradientTransformation:
    """`create_optimizer`'s, cached: the optimizer is a static part of the train state, which
    jit compares by `==`, and optax's functions equal only themselves. One object per setting
    lets a second run of a setting in one process (a script or notebook that trains again,
    the tests) reuse the first's compiled train step instead of tracing the model again."""
    lr = _lr(schedule, learning_rate, warmup_steps, total_steps)
    # Torch's optim.rmsprop, which the reference code trains with (alpha 0.99, epsilon 1e-8,
    # the mean square from 0): the step is lr * g / (sqrt(mean square) + epsilon).
    makers = {"rmsprop": lambda: optax.rmsprop(lr, decay=0.99, eps=1e-8, eps_in_sqrt=False),
              "adam": lambda: optax.adam(lr)}
    if name not in makers:
        raise not_one_of(f"config.optimizer.name={name!r}", sorted(makers))
    tx = makers[name]()
    return optax.chain(clipped(tx, grad_clip_norm) if grad_clip_norm else tx)


def with_clip_state_before(state: TrainState) -> TrainState:
    """`state` with the optimizer state's layout of checkpoints hgmt wrote with clipping on
    before `clipped` kept the optimizer's own state: `optax.chain(clip_by_global_norm,
    optimizer)`'s, (EmptyState(), the optimizer's state)."""
    return state.replace(opt_state=(optax.EmptyState(), state.opt_state[0]))


def without_clip_state(state: TrainState) -> TrainState:
    """A state in `with_clip_state_before`'s layout -> today's, the same values."""
    return state.replace(opt_state=(state.opt_state[1],))


def init_variables(model: MultiTaskHourglass, rng: jax.Array, images: jax.Array,
                   compiled: bool | None = None) -> dict:
    """`model.init(rng, images, train=False)` of (B,R,R,3) `images` (only their shape
    matters): {"params", "batch_stats"}. Compiled as one program (`compiled`, flax's
    convention) or op by op, the default on a CPU, where XLA takes longer to compile the
    whole initialisation (mostly its random-number code) than the ops take one at a time
    (measured: docs/performance.md, "Initialisation op by op").
    Both give the same values, bit for bit (tests/test_train.py)."""
    if compiled is None:
        compiled = jax.default_backend() != "cpu"
    init = functools.partial(model.init, train=False)
    return (jax.jit(init) if compiled else init)(rng, images)


def create_train_state(rng: jax.Array, config: ml_collections.ConfigDict,
                       model: MultiTaskHourglass) -> TrainState:
    """`model`'s initial variables (`init_variables`) and `create_optimizer(config)`'s state.
    Its `apply_fn` is the apply of the first model equal to `model` in the process
    (`_first_equal`), a static part of the state like the optimizer."""
    images = jnp.zeros((1, config.image_size, config.image_size, 3), jnp.float32)
    variables = init_variables(model, rng, images)
    return TrainState.create(apply_fn=_first_equal(model).apply, params=variables["params"],
                             batch_stats=variables["batch_stats"],
                             tx=create_optimizer(config))


@functools.lru_cache(maxsize=16)
def _first_equal(model: MultiTaskHourglass) -> MultiTaskHourglass:
    """The first model equal to `model` (flax modules compare by their fields) this process
    has asked for: bound methods compare their instance by identity, so two runs' states
    share a compiled train step only where their `apply_fn`s are one instance's."""
    return model


# --- Steps (run by hgmt.devices.spmd: each device its share, axis "batch") -----------------
def train_step(state: TrainState, batch: dict, weights: dict,
               options: dict | None = None,
               prepare: Callable | None = None) -> tuple[TrainState, dict]:
    """One optimiser step on the global batch's loss, the same on any number of devices (each
    device's loss is its share: `compute_losses` with axis "batch") where BatchNorm takes its
    statistics over the global batch (config.model.batch_norm_stats "global"); weights
    {task: loss weight}, options {task: loss options}.
    `prepare(batch, step, first_index)` (hgmt.data.device_augment.Prepare), when given, makes
    the cropped batch from the decoded records first, on the device: `first_index` is this
    device's first example's position in the global batch."""
    if prepare is not None:
        n = batch["image"].shape[0]
        batch = prepare(batch, state.step, jax.lax.axis_index(devices.AXIS) * n)

    def loss_fn(params: optax.Params) -> tuple[jax.Array, tuple[dict, Any]]:
        outputs, updates = state.apply_fn(
            {"params": params, "batch_stats": state.batch_stats}, batch["image"], train=True,
            mutable=["batch_stats"])
        total, per_task = compute_losses(outputs, batch, weights, options, axis_name=devices.AXIS)
        return total, (per_task, updates["batch_stats"])

    (total, (per_task, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    grads = jax.lax.pmean(grads, devices.AXIS)
    state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    metrics = {f"loss/{name}": value for name, value in per_task.items()}
    metrics["loss/total"] = total
    return state, jax.lax.pmean(metrics, devices.AXIS)


def jitted_train_step(weights: dict, options: dict,
                      prepare: device_augment.Prepare | None = None
                      ) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
    """The train step the loop runs on every device over its share of the batch
    (`hgmt.devices.spmd`, axis "batch", the state donated): `train_step` with the loss
    `weights` and `options` of `config_check.check_config`, and the crop inside where `prepare`
    (`train_data.augmentation`) is given. It takes and returns the state as
    `devices.replicate` places it and the batch as `prefetch.prefetch_to_device` does."""
    return _jitted_train_step(
        tuple(sorted(weights.items())),
        tuple((t, tuple(sorted(o.items()))) for t, o in sorted(options.items())), prepare)


@functools.cache
def _jitted_train_step(weights: tuple[tuple[str, float], ...],
                       options: tuple[tuple[str, tuple[tuple[str, float], ...]], ...],
                       prepare: device_augment.Prepare | None = None):
    """One jitted step per loss weighting, options (hashable tuples of `weights` and
    `options` items) and device-side crop (`prepare`, or None when the loader crops), so that
    a second `train()` in a process (a resume, the tests) reuses its trace instead of tracing
    the model again."""
    return devices.spmd(functools.partial(train_step, weights=dict(weights),
                                          options={t: dict(o) for t, o in options},
                                          prepare=prepare),
                        donate_argnums=(0,))


@functools.cache
def _sync_batch_stats() -> Callable:
    # Made at the first call: the mesh needs the devices, which a multi-host run has only
    # after jax.distributed.initialize.
    return devices.spmd(lambda x: jax.lax.pmean(x, devices.AXIS))


def sync_batch_stats(state: TrainState) -> TrainState:
    """Averages every device's BatchNorm running statistics: with config.model.batch_norm_stats
    "global" they drift apart only through float rounding; with "device" each device's
    statistics follow its own shares of the batches (the mean of their means is the global
    batch's mean; of their variances, the mean within-device variance). The state's leaves
    are (devices, ...), as `hgmt.devices.replicate` places them."""
    return state.replace(batch_stats=_sync_batch_stats()(state.batch_stats))
