"""Newell et al.'s stacked-hourglass building blocks, NHWC, Flax Linen.

Convolutions are created in one place (`conv`): 1x1 convolutions are `Conv1x1` (`nn.Conv`'s
parameters and values), wider kernels `nn.Conv`. Each block is built from one of two sets of ops
(`ops`, `config.model.ops`), the same variables and values:

- `custom`: a 1x1 convolution as one 2-D matmul over (B*H*W, C), 2x2 max-pooling as a reshape
  and max with a one-pass backward (hgmt/models/fast_ops.py), BatchNorm and the ReLU after it
  with a hand-written backward (hgmt/models/batchnorm.py). Their measurements on XLA:CPU are
  in docs/performance.md, "What made the CPU step faster": the train step with each change
  against without it (dated rows, most without their command recorded) and these ops against
  `flax` side by side. The 1x1 matmul's gain alone against `flax`'s 1x1 `lax.conv` is
  unmeasured: its row changed the pooling too, and its baseline was an `nn.Dense` 1x1;
- `flax`: Flax's and lax's own ops: a 1x1 convolution as `lax.conv_general_dilated` (what
  `nn.Conv` computes), `nn.max_pool`, `nn.BatchNorm` then `nn.relu`.

tests/test_models.py checks that the two give the same outputs, loss, gradients and running
statistics. A convolution that feeds a BatchNorm has no bias (the batch statistics would
remove it). Parameters are float32; `dtype` sets the compute precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

from hgmt.models.batchnorm import BatchNorm
from hgmt.models.fast_ops import matmul_1x1, max_pool2

Dtype = Any
OPS = ("custom", "flax")


class Conv1x1(nn.Module):
    """A 1x1 convolution, parameters `kernel` (Cin, Cout) and, with `use_bias`, `bias`
    (Cout,); computed as `ops` says (a 2-D matmul or a convolution)."""

    features: int
    use_bias: bool = True
    dtype: Dtype = jnp.float32
    kernel_init: Any = nn.initializers.lecun_normal()
    ops: str = "custom"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = self.param("kernel", self.kernel_init, (x.shape[-1], self.features),
                            jnp.float32)
        x, kernel = nn.dtypes.promote_dtype(x, kernel, dtype=self.dtype)
        if self.ops == "custom":
            y = matmul_1x1(x, kernel)
        else:
            y = lax.conv_general_dilated(x, kernel[None, None], (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        if self.use_bias:
            y = y + self.param("bias", nn.initializers.zeros, (self.features,),
                               jnp.float32).astype(y.dtype)
        return y


def conv(features: int, kernel: int = 1, strides: int = 1, dtype: Dtype = jnp.float32,
         name: str | None = None, init_scale: float = 1.0, use_bias: bool = True,
         ops: str = "custom") -> nn.Module:
    """A kxk 'SAME' convolution (1x1 ones as `Conv1x1`, computed as `ops` says), with a bias
    unless it feeds a BatchNorm (`use_bias=False`: the batch statistics would remove it).
    `init_scale` multiplies the LeCun-normal initial kernel's standard deviation."""
    kernel_init = nn.initializers.variance_scaling(init_scale**2, "fan_in", "truncated_normal")
    if kernel == 1 and strides == 1:
        return Conv1x1(features, use_bias, dtype=dtype, name=name, kernel_init=kernel_init,
                       ops=ops)
    return nn.Conv(features, (kernel, kernel), strides=(strides, strides), padding="SAME",
                   use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32, name=name,
                   kernel_init=kernel_init)


def batch_norm(train: bool, axis_name: str | None, dtype: Dtype, relu: bool = False,
               ops: str = "custom") -> Callable[[jnp.ndarray], jnp.ndarray]:
    """BatchNorm (then ReLU if `relu`) with cross-device statistics over `axis_name` when
    training over several devices: hgmt's `BatchNorm` or, for `ops="flax"`, `nn.BatchNorm` and
    `nn.relu` (the same variables, `BatchNorm_<k>` in the calling module)."""
    kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                  axis_name=axis_name if train else None, dtype=dtype)
    if ops == "custom":
        return BatchNorm(relu=relu, **kwargs)
    norm = nn.BatchNorm(param_dtype=jnp.float32, **kwargs)
    return (lambda x: nn.relu(norm(x))) if relu else norm


def max_pool(x: jnp.ndarray, ops: str = "custom") -> jnp.ndarray:
    """2x2 max-pooling with stride 2 of (B,H,W,C): `max_pool2` or, for `ops="flax"`,
    `nn.max_pool`."""
    return max_pool2(x) if ops == "custom" else nn.max_pool(x, (2, 2), strides=(2, 2))


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 C/2, BN-ReLU-3x3 C/2, BN-ReLU-1x1 C; 1x1 skip
    when the width changes. (B,H,W,Cin) -> (B,H,W,C)."""

    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    ops: str = "custom"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        mid = self.features // 2
        dt, ops = self.dtype, self.ops
        bn_relu = lambda: batch_norm(train, self.axis_name, dt, relu=True, ops=ops)  # noqa: E731
        y = bn_relu()(x)
        y = bn_relu()(conv(mid, 1, dtype=dt, use_bias=False, ops=ops)(y))
        y = bn_relu()(conv(mid, 3, dtype=dt, use_bias=False, ops=ops)(y))
        y = conv(self.features, 1, dtype=dt, ops=ops)(y)
        skip = x if x.shape[-1] == self.features else conv(self.features, 1, dtype=dt,
                                                           ops=ops)(x)
        return y + skip


def _upsample2(x: jnp.ndarray) -> jnp.ndarray:
    """Nearest-neighbour x2 upsampling of (B,H,W,C)."""
    b, h, w, c = x.shape
    x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
    return x.reshape(b, 2 * h, 2 * w, c)


class Hourglass(nn.Module):
    """Recursive hourglass of `depth` levels: max-pool down, nearest up, residual skips.
    (B,r,r,Cin) -> (B,r,r,C), C = `features`; r, in feature-map pixels (R/4 for an R-pixel
    image), a multiple of 2**depth (each level halves it once)."""

    depth: int
    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    ops: str = "custom"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        res = lambda: Residual(self.features, self.dtype, self.axis_name, self.ops)  # noqa: E731
        up1 = res()(x, train)
        low = max_pool(x, self.ops)
        low = res()(low, train)
        if self.depth > 1:
            low = Hourglass(self.depth - 1, self.features, self.dtype, self.axis_name,
                            self.ops)(low, train)
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
    ops: str = "custom"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        dt, ax, ops = self.dtype, self.axis_name, self.ops
        x = conv(64, 7, strides=2, dtype=dt, use_bias=False, ops=ops)(x)
        x = batch_norm(train, ax, dt, relu=True, ops=ops)(x)
        x = Residual(128, dt, ax, ops)(x, train)
        x = max_pool(x, ops)
        x = Residual(128, dt, ax, ops)(x, train)
        return Residual(self.features, dt, ax, ops)(x, train)


class Stream(nn.Module):
    """One hourglass stage of a stream: hourglass -> Res -> 1x1+BN+ReLU -> features (B,r,r,C)."""

    depth: int
    features: int
    dtype: Dtype = jnp.float32
    axis_name: str | None = None
    ops: str = "custom"

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        dt, ax, ops = self.dtype, self.axis_name, self.ops
        x = Hourglass(self.depth, self.features, dt, ax, ops)(x, train)
        x = Residual(self.features, dt, ax, ops)(x, train)
        x = conv(self.features, 1, dtype=dt, use_bias=False, ops=ops)(x)
        return batch_norm(train, ax, dt, relu=True, ops=ops)(x)
