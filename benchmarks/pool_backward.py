"""The 2x2 max-pooling's backward pass, alone, in the ways it can be written: at the pooling
shapes of a config's model (all its pools, forward and backward, one program per way).

    python3 benchmarks/pool_backward.py --config=configs/default.py:tasks=pose2d \\
        --config.batch_size=128 --config.model.dtype=bfloat16

Ways: `stacked` (hgmt's `max_pool2`: the first maximum's mask built per window place and
stacked back into the input's shape), `first_index` (the index of each window's first
maximum, compared with each place's index: broadcasts, no stacking) and `flax`
(`nn.max_pool`'s autodiff, XLA's select-and-scatter). All three give the same gradient
(tests/test_benchmarks.py); the summary says whether each way's outputs and gradients equal
`stacked`'s on this backend (`equal`, `max_abs_difference`), and a way that differs is timed all
the same. Rounds alternate the ways; one JSON line per way and round (milliseconds per call of
the whole set of pools), then a summary with each way's median over `stacked`'s.
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence

import cli
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from cli import print_line
from flax import linen as nn
from jax.extend import core

from hgmt.models import create_model, fast_ops
from hgmt.models.fast_ops import max_pool2
from hgmt.tasks import heads, parse_tasks


@jax.custom_vjp
def max_pool2_first_index(x: jnp.ndarray) -> jnp.ndarray:
    """`max_pool2`, its backward built from each window's first-maximum index."""
    return max_pool2(x)


def _first_index_backward(residuals, g):
    x, y = residuals
    b, h, w, c = x.shape
    hit = x.reshape(b, h // 2, 2, w // 2, 2, c) == y[:, :, None, :, None]
    first = jnp.where(hit[:, :, 0, :, 0], 0, jnp.where(  # row-major: the first maximum
        hit[:, :, 0, :, 1], 1, jnp.where(hit[:, :, 1, :, 0], 2, 3)))
    place = jnp.array([[0, 1], [2, 3]]).reshape(1, 1, 2, 1, 2, 1)  # each place's index
    mask = first[:, :, None, :, None] == place
    dx = jnp.where(mask, g[:, :, None, :, None], jnp.zeros((), g.dtype))
    return (dx.reshape(x.shape),)


# the forward pass and its residuals (x, y) are max_pool2's own
max_pool2_first_index.defvjp(fast_ops._max_pool2_forward, _first_index_backward)

WAYS = {"stacked": max_pool2, "first_index": max_pool2_first_index,
        "flax": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2))}


def _sub_jaxprs(params) -> list[core.Jaxpr]:
    """The jaxprs among an equation's parameters (closed or not, alone or in a tuple)."""
    out = []
    for p in params:
        for q in p if isinstance(p, tuple | list) else (p,):
            if isinstance(q, core.ClosedJaxpr):
                out.append(q.jaxpr)
            elif isinstance(q, core.Jaxpr):
                out.append(q)
    return out


def pool_shapes(config: ml_collections.ConfigDict) -> list[jax.ShapeDtypeStruct]:
    """The inputs of every 2x2 max-pooling of `config`'s model at `config.batch_size` and
    `config.image_size`, in the model's dtype, found in its traced forward pass."""
    model = create_model(config.model, heads(parse_tasks(config.tasks)))
    images = jax.ShapeDtypeStruct((config.batch_size, config.image_size, config.image_size, 3),
                                  jnp.float32)
    variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
    jaxpr = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
    shapes = []

    def walk(jaxpr: core.Jaxpr) -> None:
        for eqn in jaxpr.eqns:
            inner = _sub_jaxprs(eqn.params.values())
            if eqn.primitive.name.startswith("custom_vjp") and any(
                    e.primitive.name == "reduce_max" for j in inner for e in j.eqns):
                aval = eqn.invars[0].aval  # a pool: a custom gradient around a max
                shapes.append(jax.ShapeDtypeStruct(aval.shape, aval.dtype))
                continue
            for j in inner:
                walk(j)

    walk(jaxpr.jaxpr)
    if not shapes:
        raise ValueError("no 2x2 max-pooling found in the model (config.model.ops='flax' "
                         "pools with nn.max_pool); use the default ops")
    return shapes


def pools_forward_backward(pool):
    """All pools' forward and backward, one program: (inputs, output gradients) -> (outputs,
    input gradients). The outputs are returned so that every way computes its forward: a way
    whose backward does not read the forward's result would otherwise have it pruned."""
    def run(xs, gs):
        pairs = [jax.vjp(pool, x) for x in xs]
        return ([out for out, _ in pairs],
                [back(g)[0] for (_, back), g in zip(pairs, gs, strict=True)])
    return jax.jit(run)


def max_abs_difference(outputs, reference) -> float:
    """The largest |a - b| over every element of two ways' outputs and gradients (0.0: the same
    values; NaN where either has a NaN)."""
    return float(np.max([jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32)))
                         for a, b in zip(jax.tree.leaves(outputs), jax.tree.leaves(reference),
                                         strict=True)]))  # NumPy's max keeps a NaN


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_timing(fv, steps=20, warmup=3)
    flags.DEFINE_integer("rounds", 3, "alternating rounds", flag_values=fv, lower_bound=1)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv`, prints its JSON lines; -> summary."""
    fv = cli.parse(_define_flags, argv, __doc__)
    shapes = pool_shapes(fv.config)
    keys = jax.random.split(jax.random.key(0), (2, len(shapes)))
    xs = [jax.random.normal(k, s.shape, s.dtype) for k, s in zip(keys[0], shapes, strict=True)]
    gs = [jax.random.normal(k, (s.shape[0], s.shape[1] // 2, s.shape[2] // 2, s.shape[3]),
                            s.dtype) for k, s in zip(keys[1], shapes, strict=True)]
    fns, compile_s = {}, {}
    for name, pool in WAYS.items():
        t0 = time.perf_counter()
        fns[name] = pools_forward_backward(pool).lower(xs, gs).compile()
        compile_s[name] = round(time.perf_counter() - t0, 2)
    reference = fns["stacked"](xs, gs)
    differences = {name: max_abs_difference(fn(xs, gs), reference) for name, fn in fns.items()}
    median = cli.alternate_rounds(
        {name: functools.partial(fn, xs, gs) for name, fn in fns.items()}, rounds=fv.rounds,
        steps=fv.steps, warmup=fv.warmup, benchmark="pool_backward")
    summary = {"benchmark": "pool_backward_summary", "backend": jax.default_backend(),
               "device": jax.local_devices()[0].device_kind, **cli.describe(fv.config),
               "pools": [list(s.shape) for s in shapes], "dtype": str(shapes[0].dtype),
               "compile_s": compile_s,
               "equal": {k: v == 0 for k, v in differences.items()},
               "max_abs_difference": differences,
               "median_ms": {k: round(v, 3) for k, v in median.items()},
               "over_stacked": {k: round(v / median["stacked"], 3) for k, v in median.items()}}
    print_line(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
