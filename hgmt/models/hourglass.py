"""Newell et al.'s stacked-hourglass building blocks, NHWC, Flax Linen.

Convolutions are created in one place (`conv`): 1x1 convolutions are `nn.Dense` over the
channel axis (the same linear map as a 1x1 `nn.Conv`, and markedly faster on XLA:CPU); wider
kernels are `nn.Conv`. Parameters are float32; `dtype` sets the compute precision.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


def conv(features: int, kernel: int = 1, strides: int = 1, dtype: Dtype = jnp.float32,
         name: str | None = None, init_scale: float = 1.0) -> nn.Module:
    """A kxk 'SAME' convolution with bias; 1x1 ones as Dense over channels. `init_scale`
    multiplies the LeCun-normal initial kernel's standard deviation."""
    kernel_init = nn.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal")
    if kernel == 1 and strides == 1:
        return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                        kernel_init=kernel_init)
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding="SAME",
                   dtype=dtype, param_dtype=jnp.float32, name=name, kernel_init=kernel_init)


def batch_norm(train: bool, axis_name: str | None, dtype: Dtype,
               name: str | None = None) -> nn.BatchNorm:
    """BatchNorm with cross-device statistics over `axis_name` when training under pmap."""
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=axis_name if train else None, dtype=dtype,
                        param_dtype=jnp.float32, name=name)


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 C/2, BN-ReLU-3x3 C/2, BN-ReLU-1x1 C; 1x1 skip
    when the width changes. (B,H,W,Cin) -> (B,H,W,C)."""

    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        mid = self.features // 2
        y = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
        y = conv(mid, 1, dtype=self.dtype)(y)
        y = nn.relu(batch_norm(train, self.axis_name, self.dtype)(y))
        y = conv(mid, 3, dtype=self.dtype)(y)
        y = nn.relu(batch_norm(train, self.axis_name, self.dtype)(y))
        y = conv(self.features, 1, dtype=self.dtype)(y)
        skip = x if x.shape[-1] == self.features else conv(self.features, 1,
                                                           dtype=self.dtype)(x)
        return y + skip


def _upsample2(x: jnp.ndarray) -> jnp.ndarray:
    """Nearest-neighbour x2 upsampling of (B,H,W,C)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


class Hourglass(nn.Module):
    """Recursive hourglass of `depth` levels: max-pool down, nearest up, residual skips."""

    depth: int
    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        res = lambda: Residual(self.features, self.dtype, self.axis_name)  # noqa: E731
        up1 = res()(x, train)
        low = nn.max_pool(x, (2, 2), strides=(2, 2))
        low = res()(low, train)
        if self.depth > 1:
            low = Hourglass(self.depth - 1, self.features, self.dtype, self.axis_name)(low, train)
        else:
            low = res()(low, train)
        low = res()(low, train)
        return up1 + _upsample2(low)


class Stem(nn.Module):
    """conv7x7/2 64 -> BN-ReLU -> Res 128 -> max-pool -> Res 128 -> Res C: (B,R,R,3) ->
    (B,R/4,R/4,C)."""

    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = conv(64, 7, strides=2, dtype=self.dtype)(x)
        x = nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
        x = Residual(128, self.dtype, self.axis_name)(x, train)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = Residual(128, self.dtype, self.axis_name)(x, train)
        return Residual(self.features, self.dtype, self.axis_name)(x, train)


class Stream(nn.Module):
    """One hourglass stage of a stream: hourglass -> Res -> 1x1+BN+ReLU -> features (B,r,r,C)."""

    depth: int
    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        x = Hourglass(self.depth, self.features, self.dtype, self.axis_name)(x, train)
        x = Residual(self.features, self.dtype, self.axis_name)(x, train)
        x = conv(self.features, 1, dtype=self.dtype)(x)
        return nn.relu(batch_norm(train, self.axis_name, self.dtype)(x))
