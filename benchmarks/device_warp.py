"""The device augmentation's crop sampling, alone, hgmt's gathers against JAX's library: a
batch of SURREAL-sized frames (240 x 320 x 3, uint8) cut to `config.image_size` bilinearly and
as many segmentation-sized maps (240 x 320, uint8) cut to the label size at the nearest pixel,
one program per way, at the crops of random person boxes, rotations and mirrors.

    python3 benchmarks/device_warp.py --config=configs/default.py --config.batch_size=32 \\
        --config.image_size=256

Ways: `hand` (`device_augment.warp_bilinear` and `warp_nearest`: four gathers of a flattened
frame, or one of a map) and `map_coordinates` (`jax.scipy.ndimage.map_coordinates`, order 1 per
channel and order 0, constant 0 outside, at the same source pixels). The summary gives each
way's outputs' largest difference from `hand`'s (the bilinear frames, in uint8 steps) and the
nearest maps' count of differing pixels. Rounds alternate the ways; one JSON line per way and
round (milliseconds per call), then a summary with each way's median over `hand`'s. The config
is checked as training checks it (benchmarks/cli.py), so the size is one its model trains at:
a multiple of 4 * 2**model.depth (32 px with --config.model.depth=2 or 3).
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Sequence

import cli
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from cli import print_line
from jax.scipy import ndimage

from hgmt.data import device_augment
from hgmt.tasks import common

FRAME_SHAPE = (240, 320)  # SURREAL's frames and label maps


def _library_bilinear(image: jax.Array, m: jax.Array, size: int) -> jax.Array:
    """`warp_bilinear` by `map_coordinates` (order 1, per channel)."""
    x, y = device_augment._source_coords(m, size)
    return jnp.stack([ndimage.map_coordinates(image[..., c].astype(jnp.float32), [y, x],
                                              order=1, mode="constant", cval=0.0)
                      for c in range(image.shape[-1])], -1)


def _library_nearest(label_map: jax.Array, m: jax.Array, size: int) -> jax.Array:
    """`warp_nearest` by `map_coordinates` (order 0)."""
    x, y = device_augment._source_coords(m, size)
    return ndimage.map_coordinates(label_map, [y, x], order=0, mode="constant", cval=0)


WAYS = {"hand": (device_augment.warp_bilinear, device_augment.warp_nearest),
        "map_coordinates": (_library_bilinear, _library_nearest)}


def crops(batch: int, image_size: int, seed: int = 0) -> dict[str, jax.Array]:
    """Random frames, label maps and crops: {'images' (B,240,320,3) uint8, 'maps' (B,240,320)
    uint8, 'm_image' (B,2,3), 'm_label' (B,2,3)}, the crops around boxes of 120-220 px side
    centred in the frame, rotated by up to 30 degrees, half of them mirrored."""
    rng = np.random.default_rng(seed)
    h, w = FRAME_SHAPE
    centre = jnp.asarray(rng.uniform((100, 80), (220, 160), (batch, 2)), jnp.float32)
    side = jnp.asarray(rng.uniform(120, 220, batch), jnp.float32)
    rotation = jnp.asarray(rng.uniform(-30, 30, batch), jnp.float32)
    flip = jnp.asarray(rng.uniform(size=batch) < 0.5)
    return {"images": jnp.asarray(rng.integers(0, 256, (batch, h, w, 3), dtype=np.uint8)),
            "maps": jnp.asarray(rng.integers(0, 25, (batch, h, w), dtype=np.uint8)),
            "m_image": device_augment.crop_affine(centre, side, image_size, rotation, flip),
            "m_label": device_augment.crop_affine(
                centre, side, image_size // common.LABEL_STRIDE, rotation, flip)}


def warp_batch(way: str, image_size: int):
    """The jitted batch of one way: (images, maps, m_image, m_label) -> (frames, label maps)."""
    bilinear, nearest = WAYS[way]
    label_size = image_size // common.LABEL_STRIDE

    def run(images, maps, m_image, m_label):
        return (jax.vmap(lambda a, m: bilinear(a, m, image_size))(images, m_image),
                jax.vmap(lambda a, m: nearest(a, m, label_size))(maps, m_label))
    return jax.jit(run)


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_timing(fv, steps=10, warmup=2)
    flags.DEFINE_integer("rounds", 3, "alternating rounds", flag_values=fv, lower_bound=1)


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv`, prints its JSON lines; -> summary."""
    fv = cli.parse(_define_flags, argv, __doc__)
    size = fv.config.image_size
    data = crops(fv.config.batch_size, size)
    args = (data["images"], data["maps"], data["m_image"], data["m_label"])
    fns, compile_s = {}, {}
    for name in WAYS:
        t0 = time.perf_counter()
        fns[name] = warp_batch(name, size).lower(*args).compile()
        compile_s[name] = round(time.perf_counter() - t0, 2)
    outs = {name: fn(*args) for name, fn in fns.items()}
    frames, maps = outs["hand"]
    difference = {name: float(jnp.max(jnp.abs(out[0] - frames))) for name, out in outs.items()}
    mismatch = {name: int(jnp.sum(out[1] != maps)) for name, out in outs.items()}
    median = cli.alternate_rounds(
        {name: functools.partial(fn, *args) for name, fn in fns.items()}, rounds=fv.rounds,
        steps=fv.steps, warmup=fv.warmup, benchmark="device_warp")
    summary = {"benchmark": "device_warp_summary", "backend": jax.default_backend(),
               "device": jax.local_devices()[0].device_kind,
               "batch": fv.config.batch_size, "image_size": size,
               "label_size": size // common.LABEL_STRIDE, "compile_s": compile_s,
               "max_abs_difference_frames": difference, "differing_label_pixels": mismatch,
               "median_ms": {k: round(v, 3) for k, v in median.items()},
               "over_hand": {k: round(v / median["hand"], 3) for k, v in median.items()}}
    print_line(summary)
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
