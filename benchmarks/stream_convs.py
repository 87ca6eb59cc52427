"""Why a vmapped stream is slow on XLA:CPU: one convolution layer of T task streams, forward
and both gradients, in the ways a stacked task axis can run it.

    python3 benchmarks/stream_convs.py --shape=4,8,32,32,32            # T B H Cin Cout
    python3 benchmarks/stream_convs.py --im2col --shape=4,8,32,32,32

Default: a 3x3 convolution as T separate `lax` convolutions, as `vmap` of one (XLA gets a
grouped convolution, feature_group_count=T, plus transposes) and as one grouped convolution
over the tasks' concatenated channels. `--im2col`: T separate `lax` 3x3 convolutions, the same
as 9 shifted slices and a matmul (T separate, and vmapped: a batched matmul), and a 1x1
convolution as a 2-D matmul, T separate and vmapped. Best of 5 rounds, the variants
alternating; one JSON line with milliseconds per variant.
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import flags  # noqa: E402
from cli import print_line  # noqa: E402

from hgmt import cli  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")


def conv(x, k, groups: int = 1):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=DN,
                                    feature_group_count=groups)


def im2col_conv(x, k):
    """A 3x3 'SAME' convolution as 9 shifted slices concatenated and one 2-D matmul."""
    b, h, w, c = x.shape
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([p[:, i:i + h, j:j + w] for i in range(3) for j in range(3)], -1)
    return (cols.reshape(-1, 9 * c) @ k.reshape(9 * c, -1)).reshape(b, h, w, -1)


def matmul(x, k):
    return (x.reshape(-1, x.shape[-1]) @ k).reshape(x.shape[:-1] + (k.shape[-1],))


def variants(t: int, im2col: bool) -> dict:
    """{name: (loss(xs, ks), which kernel)}; xs (T,B,H,W,C), kernels (T,3,3,C,O) or (T,C,O)."""
    sep = lambda f: lambda xs, ks: sum((f(xs[i], ks[i]) ** 2).sum() for i in range(t))  # noqa: E731
    vm = lambda f: lambda xs, ks: (jax.vmap(f)(xs, ks) ** 2).sum()  # noqa: E731

    def grouped(xs, ks):  # the tasks side by side on the channel axis
        b, h, w = xs.shape[1:4]
        xcat = jnp.moveaxis(xs, 0, 3).reshape(b, h, w, -1)
        kcat = jnp.moveaxis(ks, 0, 3).reshape(3, 3, ks.shape[3], -1)
        return (conv(xcat, kcat, t) ** 2).sum()

    if not im2col:
        return {"conv3 separate": (sep(conv), 3), "conv3 vmapped": (vm(conv), 3),
                "conv3 grouped": (grouped, 3)}
    return {"conv3 separate": (sep(conv), 3), "conv3 im2col separate": (sep(im2col_conv), 3),
            "conv3 im2col vmapped": (vm(im2col_conv), 3), "1x1 separate": (sep(matmul), 1),
            "1x1 vmapped": (vm(matmul), 1)}


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("shape", ["4", "8", "32", "32", "32"], "T,B,H,Cin,Cout: task streams, "
                      "batch, height = width, input and output channels", flag_values=fv)
    flags.DEFINE_bool("im2col", False, "the shifted-slices + matmul variants", flag_values=fv)
    flags.DEFINE_integer("rounds", 5, "rounds, best of them", flag_values=fv, lower_bound=1)


def benchmark(argv: list[str] | None = None) -> dict:
    a, _ = cli.parse(_define_flags, argv, __doc__)
    if len(a.shape) != 5 or not all(v.isdigit() for v in a.shape):
        raise SystemExit(f"error: --shape={','.join(a.shape)}: give five integers T,B,H,Cin,Cout")
    t, b, h, c, o = (int(v) for v in a.shape)
    kx, kk = jax.random.split(jax.random.key(0))
    xs = jax.random.normal(kx, (t, b, h, h, c))
    kernels = {3: jax.random.normal(kk, (t, 3, 3, c, o)) * 0.1}
    kernels[1] = kernels[3][:, 1, 1]
    cases = {n: (jax.jit(jax.grad(f, argnums=(0, 1))), kernels[k])
             for n, (f, k) in variants(t, a.im2col).items()}
    for g, k in cases.values():
        jax.block_until_ready(g(xs, k))
    times = {n: [] for n in cases}
    for _ in range(a.rounds):
        for n, (g, k) in cases.items():
            t0 = time.perf_counter()
            for _ in range(3):
                out = g(xs, k)
            jax.block_until_ready(out)
            times[n].append((time.perf_counter() - t0) / 3)
    result = {"tasks": t, "batch": b, "size": h, "cin": c, "cout": o,
              "backend": jax.default_backend(),
              "ms": {n: round(min(v) * 1e3, 2) for n, v in times.items()}}
    print_line(result)
    return result


def main(argv: list[str] | None = None) -> int:
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
