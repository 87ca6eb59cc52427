"""BatchNorm (+ ReLU) with a hand-written backward pass, a drop-in for `nn.BatchNorm`.

Same parameters (`scale`, `bias`), statistics (`batch_stats` `mean`, `var`), names and values
as `flax.linen.BatchNorm` with `use_fast_variance` (var = E[x^2] - E[x]^2) and cross-device
statistics over `axis_name`. Training-mode normalisation is a `jax.custom_vjp` whose backward
is the chain rule of that same computation written out: one reduction over the input (the
two per-channel sums) and one elementwise pass. Against autodiff of the Flax module the train
step ran faster on XLA:CPU in a dated row of docs/performance.md, "What made the CPU step
faster" (its command not recorded). tests/test_models.py checks the whole model's outputs,
loss, gradients and statistics against `nn.BatchNorm` + `nn.relu` (in float64), and one
layer under pmap (in float32).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any


def _pmean(stats: jnp.ndarray, axis_name: str | None) -> jnp.ndarray:
    return stats if axis_name is None else lax.pmean(stats, axis_name)


def _compute_dtype(x: jnp.ndarray) -> Any:
    """At least float32 (float64 stays float64), as Flax's BatchNorm."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _stats(x: jnp.ndarray, axis_name: str | None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Per-channel (mean, var) of (..., C) over every other axis and device, in at least
    float32."""
    x = x.astype(_compute_dtype(x)).reshape(-1, x.shape[-1])
    mean, mean2 = _pmean(jnp.stack([x.mean(0), (x * x).mean(0)]), axis_name)
    return mean, jnp.maximum(0.0, mean2 - mean * mean)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def normalize_batch(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
                    epsilon: float, relu: bool, axis_name: str | None
                    ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Training-mode BatchNorm of (..., C) `x` with the batch's statistics (over `axis_name`
    too), followed by ReLU if `relu`: returns (y like x, batch mean (C,), batch var (C,)).
    The statistics are outputs for the running averages, not differentiated through (their
    cotangents are ignored; `BatchNorm` stops their gradient)."""
    return _forward(x, scale, bias, epsilon, relu, axis_name)[0]


def _forward(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, epsilon: float, relu: bool,
             axis_name: str | None,
             ) -> tuple[tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray], tuple[jnp.ndarray, ...]]:
    mean, var = _stats(x, axis_name)
    inv = lax.rsqrt(var + epsilon)
    mul = scale * inv
    # x * mul + shift, not (x - mean) * mul + bias: XLA would otherwise share `x - mean` with
    # the backward pass and write it out as one more activation-sized buffer.
    y = x.astype(mean.dtype) * mul + (bias - mean * mul)
    if relu:
        y = jnp.maximum(y, 0.0)
    # Not y but x is kept for the backward pass (the ReLU mask is recomputed from it), so y is
    # written once, in the layout its consumer wants.
    return (y.astype(x.dtype), mean, var), (x, scale, bias, mean, var, inv)


def _backward(epsilon: float, relu: bool, axis_name: str | None,
              residuals: tuple[jnp.ndarray, ...],
              cotangents: tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray],
              ) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The chain rule of `_forward` (the statistics' own cotangents are ignored)."""
    del epsilon
    x, scale, bias, mean, var, inv = residuals
    xf = x.astype(mean.dtype)
    xhat = xf * inv - mean * inv
    dy = cotangents[0].astype(mean.dtype)
    if relu:  # the forward's expression, so that the mask is the forward's to the bit
        mul = scale * inv
        dy = jnp.where(xf * mul + (bias - mean * mul) > 0, dy, 0.0)
    channels = x.shape[-1]
    dyf = dy.reshape(-1, channels)
    dbias = dyf.sum(0)
    dscale = (dyf * xhat.reshape(-1, channels)).sum(0)
    # y = (x - mean) * inv * scale + bias with inv = rsqrt(mean2 - mean^2 + eps):
    d_inv = scale * dscale / inv
    d_var = jnp.where(var > 0, -0.5 * inv**3 * d_inv, 0.0)  # var = max(0, mean2 - mean^2)
    d_mean = -inv * scale * dbias - 2.0 * mean * d_var
    d_mean2 = d_var
    # The statistics are pmean(local means): pass their cotangent back through the same
    # collective as autodiff would.
    local = jnp.zeros((2, channels), mean.dtype)
    _, pmean_vjp = jax.vjp(lambda s: _pmean(s, axis_name), local)
    d_local_mean, d_local_mean2 = pmean_vjp(jnp.stack([d_mean, d_mean2]))[0]
    n = dyf.shape[0]
    dx = dy * (scale * inv) + (d_local_mean + 2.0 * xf * d_local_mean2) / n
    return dx.astype(x.dtype), dscale, dbias


normalize_batch.defvjp(_forward, _backward)


class BatchNorm(nn.Module):
    """`nn.BatchNorm` over the last axis, optionally followed by ReLU, with the fast
    training-mode backward of `normalize_batch`. (B,...,C) -> (B,...,C) in `dtype`."""

    use_running_average: bool = False
    axis_name: str | None = None
    momentum: float = 0.99
    epsilon: float = 1e-5
    relu: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """(B,...,C) `x` normalised per channel, then ReLU'd if `relu`: (B,...,C) in `dtype`."""
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        x = x.astype(self.dtype)
        ct = _compute_dtype(x)
        if self.use_running_average:
            mul = scale * lax.rsqrt(ra_var.value + self.epsilon)
            y = x.astype(ct) * mul + (bias - ra_mean.value * mul)
            y = jnp.maximum(y, 0.0) if self.relu else y
            return y.astype(self.dtype)
        # As Flax: no cross-device statistics while initialising (no axis is bound then).
        axis_name = None if self.is_initializing() else self.axis_name
        y, mean, var = normalize_batch(x, scale.astype(ct), bias.astype(ct), self.epsilon,
                                       self.relu, axis_name)
        if not self.is_initializing():
            mean, var = lax.stop_gradient(mean), lax.stop_gradient(var)
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
