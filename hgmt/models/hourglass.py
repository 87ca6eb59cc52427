"""Newell et al.'s stacked-hourglass building blocks, NHWC, Flax Linen.

Convolutions are created in one place (`conv`): 1x1 convolutions are `Conv1x1`, one 2-D
matmul over (B*H*W, C) (the same linear map as a 1x1 `nn.Conv`); wider kernels are `Conv`
(`nn.Conv`'s parameters and values). 2x2 max-pooling is `max_pool2`, a reshape and max with a
one-pass backward (the two ops are in hgmt/models/fast_ops.py). BatchNorm, and the ReLU after
it, is `batch_norm` (hgmt/models/batchnorm.py: `nn.BatchNorm`'s variables and values with a
faster backward); a convolution that feeds one has no bias (the batch statistics would
remove it). All give the reference ops' values and gradients (tests/test_models.py checks the
whole model against `lax.conv`, `nn.max_pool` and `nn.BatchNorm`), and all are there because
XLA:CPU runs the reference ops' backward passes (4-D dot_general, select-and-scatter) much
slower (README, Performance, gives the measurements). Parameters are float32; `dtype` sets the
compute precision.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from hgmt.models.batchnorm import BatchNorm
from hgmt.models.fast_ops import matmul_1x1, max_pool2

Dtype = Any


class Conv1x1(nn.Module):
    """A 1x1 convolution, parameters `kernel` (Cin, Cout) and, with `use_bias`, `bias`
    (Cout,)."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = matmul_1x1(x, kernel)
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                               jnp.float32).astype(y.dtype)
        return y


class Conv(nn.Module):
    """A kxk 'SAME' convolution: `nn.Conv`'s parameters (`kernel` (k,k,Cin,Cout), with
    `use_bias` `bias` (Cout,)), names and values."""

    features: int
    kernel_size: int
    strides: int = 1
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        k = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features),
                            jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        y = lax.conv_general_dilated(x, kernel, (self.strides, self.strides), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                               jnp.float32).astype(y.dtype)
        return y


def conv(features: int, kernel: int = 1, strides: int = 1, dtype: Dtype = jnp.float32,
         name: str | None = None, init_scale: float = 1.0, use_bias: bool = True) -> nn.Module:
    """A kxk 'SAME' convolution (1x1 ones as `Conv1x1`), with a bias unless it feeds a
    BatchNorm (`use_bias=False`: the batch statistics would remove it). `init_scale`
    multiplies the LeCun-normal initial kernel's standard deviation."""
    kernel_init = nn.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal")
    if kernel == 1 and strides == 1:
        return Conv1x1(features, use_bias, dtype=dtype, name=name, kernel_init=kernel_init)
    return Conv(features, kernel, strides, use_bias, dtype=dtype, name=name,
                kernel_init=kernel_init)


def batch_norm(train: bool, axis_name: str | None, dtype: Dtype,
               relu: bool = False) -> nn.Module:
    """BatchNorm (then ReLU if `relu`) with cross-device statistics over `axis_name` when
    training under pmap."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                     axis_name=axis_name if train else None, relu=relu, dtype=dtype)


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 C/2, BN-ReLU-3x3 C/2, BN-ReLU-1x1 C; 1x1 skip
    when the width changes. (B,H,W,Cin) -> (B,H,W,C)."""

    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        mid = self.features // 2
        bn_relu = lambda: batch_norm(train, self.axis_name, self.dtype, relu=True)  # noqa: E731
        y = bn_relu()(x)
        y = bn_relu()(conv(mid, 1, dtype=self.dtype, use_bias=False)(y))
        y = bn_relu()(conv(mid, 3, dtype=self.dtype, use_bias=False)(y))
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
        low = max_pool2(x)
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
        x = conv(64, 7, strides=2, dtype=self.dtype, use_bias=False)(x)
        x = batch_norm(train, self.axis_name, self.dtype, relu=True)(x)
        x = Residual(128, self.dtype, self.axis_name)(x, train)
        x = max_pool2(x)
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
        x = conv(self.features, 1, dtype=self.dtype, use_bias=False)(x)
        return batch_norm(train, self.axis_name, self.dtype, relu=True)(x)
