"""The CPU speed-ups of the hourglass's ops (hgmt/models/hourglass.py uses them): a 1x1
convolution as one 2-D matmul and 2x2 max-pooling with a one-pass backward. Each gives the
reference op's values and gradients (tests/test_models.py checks the whole model against
`lax.conv` and `nn.max_pool`); docs/performance.md, "What made the CPU step faster", gives
the measurements."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def matmul_1x1(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """(..., Cin) x (Cin, Cout) -> (..., Cout) as one 2-D matmul. Against the 4-D dot_general
    (what `x @ kernel` and an `nn.Dense` 1x1 give) it was measured on XLA:CPU only together
    with `max_pool2` (docs/performance.md, "What made the CPU step faster", a dated row whose
    command was not recorded); its gain alone against `lax.conv` (`ops="flax"`) is
    unmeasured."""
    y = x.reshape(-1, x.shape[-1]) @ kernel
    return y.reshape(x.shape[:-1] + (kernel.shape[-1],))


@jax.custom_vjp
def max_pool2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pooling with stride 2 of (B,H,W,C), H and W even, as a reshape and max. Its
    gradient goes to the first maximum of each window in row-major order, as `nn.max_pool`'s
    (select-and-scatter) does, computed as one elementwise pass."""
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _max_pool2_forward(x: jnp.ndarray) -> tuple[jnp.ndarray, tuple[jnp.ndarray, jnp.ndarray]]:
    y = max_pool2(x)
    return y, (x, y)


def _max_pool2_backward(residuals: tuple[jnp.ndarray, jnp.ndarray],
                        g: jnp.ndarray) -> tuple[jnp.ndarray]:
    x, y = residuals
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
    hit = windows == y[:, :, None, :, None]
    taken = jnp.zeros_like(hit[:, :, 0, :, 0])
    masks = {}
    for i, j in ((0, 0), (0, 1), (1, 0), (1, 1)):  # the first maximum takes the gradient
        masks[i, j] = hit[:, :, i, :, j] & ~taken
        taken = taken | masks[i, j]
    mask = jnp.stack([jnp.stack([masks[i, 0], masks[i, 1]], axis=3) for i in (0, 1)], axis=2)
    dx = jnp.where(mask, g[:, :, None, :, None], jnp.zeros((), g.dtype))
    return (dx.reshape(x.shape),)


max_pool2.defvjp(_max_pool2_forward, _max_pool2_backward)
