"""The references' crop of a label map: how BodyNet and SURREAL cut their 64 x 64 segmentation
and depth ground truth from a 240 x 320 frame, for the reference protocols' evaluation.

Both make their label maps with `crop(map, center, scale, rot, 64, 'simple')` (surreal
training/donkey.lua:153,166; bodynet training/donkey.lua:357,374); the two repositories' `crop`
(surreal training/img.lua:87-144, bodynet training/util/img.lua:85-142) and the `transform` and
`getTransform` it calls are the same lines. `label_crop` follows them at rotation 0 (the test
crop), with torch/image's `image.scale(..., 'simple')` (init.lua `scale`, generic/image.c
`scaleSimple`, commit 5aa1881). Lines below are surreal's img.lua (bodynet's numbers are 2
less).

What they do, which hgmt's own crop (a nearest warp of the window, `hgmt.data.input_pipeline`)
does not: with a window of 128 px or more, the whole map is first shrunk (a pixel of the
shrunk map is the source pixel at its top-left corner, not at its centre) and a 64 x 64 block
is copied from it at an integer corner; with a smaller window, an integer-cornered block of
the source is copied and then resized the same way. Each label pixel thus takes a source pixel
about a label pixel up and left of the one at its centre, by an amount that changes with the
frame (docs/metrics.md, "Labels").
"""

from __future__ import annotations

import math

import numpy as np

# img.lua:96-97: below this many source pixels per label pixel, the window is copied first and
# resized after; from it up, the whole map is shrunk first.
SHRINK_FIRST_FROM = 2.0


def scale_simple(source: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch/image's `image.scale(source, width, height, 'simple')` of a 2-D map: output pixel
    (j, i) is source pixel (trunc(j * sy), trunc(i * sx)), clamped to the last row and column,
    sx = W / width and sy = H / height in float32, the products in float32 too
    (generic/image.c:388-398): each output pixel takes the source pixel at its top-left corner.
    """
    h, w = source.shape
    sx = np.float32(w) / np.float32(width)
    sy = np.float32(h) / np.float32(height)
    cols = np.minimum((np.arange(width, dtype=np.float32) * sx).astype(np.int64), w - 1)
    rows = np.minimum((np.arange(height, dtype=np.float32) * sy).astype(np.int64), h - 1)
    return source[rows[:, None], cols[None, :]]


def _corner(x: float) -> int:
    """`transform` of an inverse-mapped point (img.lua:54-64): x + 1e-4 cast to an integer
    (toward zero), plus 1: a 1-based pixel index."""
    return int(x + 1e-4) + 1


def label_crop(label_map: np.ndarray, centre, scale: float, res: int = 64) -> np.ndarray:
    """The references' `crop(label_map, centre, scale, 0, res, 'simple')` (img.lua:87-144)
    of an (H, W) label map (any dtype; 0 fills what lies outside the map). `centre` (x, y) and
    `scale` are the references' own: `getCenter`'s point in their pixel units and `getScale`'s
    value (`hgmt.sources.surreal.reference_centre_scale`), the window being 200 x scale pixels.
    Returns (res, res) of the map's dtype.

    Steps (s = 200 scale / res, the source pixels per label pixel, img.lua:96):
    - s >= 2 (img.lua:97-108): n = floor(max(H, W) / s); below 2 the result is all 0. The
      map is shrunk by `image.scale(map, n, 'simple')` to width trunc(W n / max(H, W)) and
      height trunc(H n / max(H, W)) (torch/image init.lua `scale`: the longest side becomes n,
      the tensor's size casts the other to an integer) with `scale_simple`. The window's
      corner is `transform({1,1}, centre / s, scale / s, 0, res, true)` (img.lua:112-113): the
      1-based pixel trunc(c / s - h / 2 + 1e-4) + 1 of the shrunk map, h = 200 scale / s =
      res, per axis; the block is res pixels wide (img.lua:115).
    - s < 2 (img.lua:97, 139): the corners are those of the window itself in the source map,
      ul = trunc(c - h / 2 + 1e-4) + 1 and br = trunc(c + h / 2 + 1e-4) + 1, h = 200 scale
      (img.lua:113-114), a block of br - ul pixels per axis; it is then resized to res x res
      by `scale_simple`.
    - The block is copied from the (shrunk) map at that 1-based corner, 0 where it lies outside
      (img.lua:121-132: a block that misses the map in either axis makes the copy raise, which
      `pcall` leaves as all 0, the same).
    """
    source = np.asarray(label_map)
    if source.ndim != 2:
        raise ValueError(f"label_crop takes a 2-D label map, got shape {source.shape}")
    if not scale > 0:
        raise ValueError(f"label_crop: scale {scale} is not positive; pass getScale's value")
    height, width = source.shape
    factor = 200.0 * scale / res
    shrink = factor >= SHRINK_FIRST_FROM
    if shrink:
        longest = max(height, width)
        size = math.floor(longest / factor)
        if size < 2:
            return np.zeros((res, res), source.dtype)
        source = scale_simple(source, int(height * size / longest), int(width * size / longest))
        height, width = source.shape
    else:
        factor = 1.0
    centre = np.asarray(centre, np.float64) / factor
    h = 200.0 * (scale / factor)
    ul = [_corner(c - h / 2) for c in centre]  # (x, y), 1-based
    br = [u + res for u in ul] if shrink else [_corner(c + h / 2) for c in centre]
    block_w, block_h = br[0] - ul[0], br[1] - ul[1]
    if block_w < 1 or block_h < 1:
        raise ValueError(f"label_crop: the window of {h} px around {tuple(centre)} holds no "
                         f"whole pixel; pass a larger scale")
    block = np.zeros((block_h, block_w), source.dtype)
    # 0-based source rows and columns of the block's pixels, and those inside the map.
    rows = np.arange(block_h) + ul[1] - 1
    cols = np.arange(block_w) + ul[0] - 1
    r_in = (rows >= 0) & (rows < height)
    c_in = (cols >= 0) & (cols < width)
    block[np.ix_(r_in, c_in)] = source[np.ix_(rows[r_in], cols[c_in])]
    return block if shrink else scale_simple(block, res, res)
