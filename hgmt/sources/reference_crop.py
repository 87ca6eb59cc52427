"""The references' crop: how BodyNet and SURREAL cut their 256 x 256 input image and their
64 x 64 segmentation and depth ground truth from a 240 x 320 frame, for the reference protocols'
evaluation, and the window they cut around the person's joints (`reference_box`).

Both cut the input with `crop(rgb, center, scale, rot, 256, 'bilinear')` (surreal
training/donkey.lua:133, bodynet training/donkey.lua:279) and the label maps with
`crop(map, center, scale, rot, 64, 'simple')` (surreal training/donkey.lua:153,166; bodynet
training/donkey.lua:357,374); the two repositories' `crop` (surreal training/img.lua:87-144,
bodynet training/util/img.lua:85-142) and the `transform` and `getTransform` it calls are the
same lines. `image_crop` and `label_crop` follow them at rotation 0 (the test crop), with
torch/image's `image.scale(..., 'bilinear')` and `image.scale(..., 'simple')` (init.lua
`scale`, generic/image.c `scaleBilinear` and `scaleSimple`, commit 5aa1881). Lines below are
surreal's img.lua (bodynet's numbers are 2 less).

What they do, which hgmt's own crop (a bilinear warp of the window for the image, a nearest one
for the label maps, `hgmt.data.cropping`) does not: with a window of 2 x res px or more,
the whole frame is first shrunk and a res x res block is copied from it at an integer corner;
with a smaller window, an integer-cornered block of the frame is copied and then resized to
res x res. For a label map each pixel thus takes a source pixel about a label pixel up and
left of the one at its centre, by an amount that changes with the frame (docs/metrics.md,
"Labels"); the image's resize maps the block's first and last pixels onto the crop's first
and last (docs/metrics.md, "Crop resampling").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

# The references' crop window around a person (`reference_centre_scale`):
# getTightBox widens the joints' box by these fractions of its inclusive width and height
# (surreal training/util.lua:128-147), getScale is the widened box's longer side over
# SCALE_DIVISOR_PX (util.lua:157-160), and getTransform's window is WINDOW_PER_SCALE_PX x
# scale pixels (img.lua:20-30).
BOX_MARGINS = {"left": 0.25, "right": 0.25, "top": 0.35, "bottom": 0.25}
SCALE_DIVISOR_PX = 240.0
WINDOW_PER_SCALE_PX = 200.0


def reference_box(joints2d: np.ndarray) -> tuple[np.ndarray, float]:
    """(16,2) joints in SURREAL's 0-based pixels -> (centre (2,), side) of BodyNet's and
    SURREAL's crop window in the same pixels, about 0.84 of hgmt's
    (`hgmt.data.cropping.person_box`).

    Their loaders add 1 to the joints (surreal training/loader_SURREAL.lua:47, bodynet
    training/util/dataloader/SURREAL.lua:50); `getTightBox` (surreal training/util.lua:128-147,
    bodynet training/util/img.lua:362-381) widens the box of the 1-based joints by 0.25 w left
    and right, 0.35 h top and 0.25 h bottom, w and h counted inclusively (max - min + 1)
    before and after; `getCenter` (util.lua:149-155, img.lua:383-389) is the widened box's
    (x_min + w/2, y_min + h/2) and `getScale` (util.lua:157-160, img.lua:392-396) max(h, w) /
    240, which `getTransform` (surreal training/img.lua:20-30, bodynet img.lua:18-28) makes a
    window of 200 x scale pixels around the centre. `transform` (surreal img.lua:56-58,
    bodynet img.lua:54-56) compares the centre with the joints minus 1, so in 0-based pixels
    the window is centred on the 1-based box's centre."""
    centre, scale = reference_centre_scale(joints2d)
    return centre, WINDOW_PER_SCALE_PX * scale


def reference_centre_scale(joints2d: np.ndarray) -> tuple[np.ndarray, float]:
    """(16,2) joints in SURREAL's 0-based pixels -> the references' own `getCenter` (2,) and
    `getScale` values (`reference_box`: the window is 200 x scale pixels around the centre),
    as their label crop takes them (`label_crop`)."""
    # + 1 in float32 (loader_SURREAL.lua:47: the _info.mat's float32 joints), the box in double
    # (Lua numbers, util.lua:128-160).
    j = (np.asarray(joints2d, np.float32) + np.float32(1)).astype(np.float64)
    margin = BOX_MARGINS
    lo, hi = j.min(0), j.max(0)
    size = hi - lo + 1
    start = lo - np.array([margin["left"], margin["top"]]) * size
    end = hi + np.array([margin["right"], margin["bottom"]]) * size
    full = end - start + 1
    divisor = SCALE_DIVISOR_PX
    return start + full / 2, float(max(full[1] / divisor, full[0] / divisor))


# img.lua:96-97: below this many source pixels per crop pixel, the window is copied first and
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


def _corners(centre: np.ndarray, scale: float, res: int) -> tuple[list[int], list[int]]:
    """`transform({1,1}, c, s, 0, res, true)` and `transform({res+1,res+1}, ...)` (img.lua:56-67)
    of the window around `centre` (2,) float32 (x, y) of scale `scale` -> the 1-based (x, y)
    corners ul and br, in the float32 arithmetic the references run it in (their default
    tensor type is float32, surreal training/dataset.lua:2):
    - getTransform (img.lua:20-30): h = 200 scale in double; `torch.eye(3)` is float32, so
      a = float32(res / h) and b = float32(res (-c / h + 0.5)), per axis, both from doubles;
    - `torch.inverse` (LAPACK getrf, then getri: the matrix is upper triangular, no pivot, L =
      I; trti2 inverts it column by column): 1 / a in float32, then -(that x b) in float32;
    - the product with the point (0, 0, 1) or (res, res, 1) in float32 (the zero terms add
      nothing, with or without fused multiply-adds), plus float32(1e-4), cast to an integer
      (toward zero), plus 1."""
    h = WINDOW_PER_SCALE_PX * scale
    a = np.float32(res / h)
    inv_a = np.float32(1) / a
    tiny = np.float32(1e-4)
    ul, br = [], []
    for c in np.asarray(centre, np.float32):
        inv_b = -(inv_a * np.float32(res * (-float(c) / h + 0.5)))
        ul.append(int(inv_b + tiny) + 1)
        br.append(int(inv_a * np.float32(res) + inv_b + tiny) + 1)
    return ul, br


def _linear_rowcol(source: np.ndarray, length: int) -> np.ndarray:
    """generic/image.c `scaleLinear_rowcol` (image.c:68-136) along axis 0 of a float32 array
    (n, ...), every other axis at once -> (length, ...) float32, each step in float32:
    - length > n: the ends map onto the ends: output di < length - 1 is (1 - f) src[i] +
      f src[i + 1], i = trunc(di t) and f = di t - i, t = float32(n - 1) / float32(length - 1);
      the last output is the last source value (image.c:80-104); n = 1 repeats it.
    - length < n: output di is the mean of the source over [di t, (di + 1) t), t =
      float32(n) / float32(length), the partly covered pixels at each end weighted by the
      part covered: a running float32 sum and weight, divided (image.c:105-131).
    - length = n: a copy (image.c:132-136).
    """
    n = source.shape[0]
    source = source.astype(np.float32, copy=False)
    if length == n:
        return source.copy()
    one = np.float32(1)
    out = np.empty((length,) + source.shape[1:], np.float32)
    if length > n:
        if n == 1:
            out[:] = source[0]
            return out
        step = np.float32(n - 1) / np.float32(length - 1)
        pos = np.arange(length - 1, dtype=np.float32) * step
        index = pos.astype(np.int64)
        frac = (pos - index.astype(np.float32)).reshape((-1,) + (1,) * (source.ndim - 1))
        # index + 1 stays below n at any crop's sizes (pos < n - 1 by (n - 1) / (length - 1),
        # far above float32's rounding); the minimum only guards the read past the end that C
        # would make, with weight 0, where pos rounded to n - 1.
        out[:-1] = (one - frac) * source[index] + frac * source[np.minimum(index + 1, n - 1)]
        out[-1] = source[-1]
        return out
    step = np.float32(n) / np.float32(length)
    start, start_frac = 0, np.float32(0)
    for di in range(length):
        end_pos = np.float32(di + 1) * step
        end = int(end_pos)
        end_frac = end_pos - np.float32(end)
        total = (one - start_frac) * source[start]
        weight = one - start_frac
        for si in range(start + 1, end):
            total = total + source[si]
            weight = weight + one
        if end < n:
            total = total + end_frac * source[end]
            weight = weight + end_frac
        out[di] = total / weight
        start, start_frac = end, end_frac
    return out


def scale_bilinear(source: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch/image's `image.scale(source, width, height, 'bilinear')` of a float32 (H, W) or
    (H, W, C) image -> (height, width[, C]) float32 (generic/image.c `scaleBilinear`,
    image.c:213-275): each row resized to `width` first, then each column of that to `height`,
    both by `_linear_rowcol`, channel by channel. Enlarging, it interpolates linearly with the
    first and last pixels on the first and last; shrinking, it averages the source pixels each
    output pixel covers."""
    rows = _linear_rowcol(np.swapaxes(source, 0, 1), width)
    return _linear_rowcol(np.swapaxes(rows, 0, 1), height)


def _crop(source: np.ndarray, centre: np.ndarray | Sequence[float], scale: float, res: int,
          resize: Callable[[np.ndarray, int, int], np.ndarray], name: str) -> np.ndarray:
    """`crop(source, centre, scale, 0, res, method)` (img.lua:87-144) of an (H, W[, C]) array,
    `resize(array, height, width)` being `image.scale` of `method`; 0 fills what lies outside.

    Steps (s = 200 scale / res, the source pixels per crop pixel, img.lua:96):
    - s >= 2 (img.lua:97-108): n = floor(max(H, W) / s); below 2 the result is all 0. The
      source is shrunk by `image.scale(source, n, method)` to width trunc(W n / max(H, W)) and
      height trunc(H n / max(H, W)) (torch/image init.lua `scale`: the longest side becomes n,
      the tensor's size casts the other to an integer). The window's corner is
      `transform({1,1}, centre / s, scale / s, 0, res, true)` (img.lua:112-113): the 1-based
      pixel trunc(c / s - h / 2 + 1e-4) + 1 of the shrunk source, h = 200 scale / s = res, per
      axis; the block is res pixels wide (img.lua:115).
    - s < 2 (img.lua:97, 139): the corners are those of the window itself in the source,
      ul = trunc(c - h / 2 + 1e-4) + 1 and br = trunc(c + h / 2 + 1e-4) + 1, h = 200 scale
      (img.lua:113-114), a block of br - ul pixels per axis; it is then resized to res x res
      by `resize`.
    - The corners' arithmetic is in float32, as theirs (`_corners`): the centre is a float32
      tensor (img.lua:88), divided by s in float32 (img.lua:112); a corner can differ from
      the exact formula's when c - h / 2 lies within float32 rounding of an integer.
    - The block is copied from the (shrunk) source at that 1-based corner, 0 where it lies
      outside (img.lua:121-132: a block that misses the source in either axis makes the copy
      raise, which `pcall` leaves as all 0, the same).
    """
    if not scale > 0:
        raise ValueError(f"{name}: scale {scale} is not positive; pass getScale's value")
    height, width = source.shape[:2]
    factor = WINDOW_PER_SCALE_PX * scale / res
    shrink = factor >= SHRINK_FIRST_FROM
    if shrink:
        longest = max(height, width)
        size = math.floor(longest / factor)
        if size < 2:
            return np.zeros((res, res) + source.shape[2:], source.dtype)
        source = resize(source, int(height * size / longest), int(width * size / longest))
        height, width = source.shape[:2]
    else:
        factor = 1.0
    # img.lua:88, 112: the centre becomes a float32 tensor, divided by the factor in float32.
    centre = np.asarray(centre, np.float32) / np.float32(factor)
    h = WINDOW_PER_SCALE_PX * (scale / factor)
    ul, br = _corners(centre, scale / factor, res)  # (x, y), 1-based
    if shrink:
        br = [u + res for u in ul]
    block_w, block_h = br[0] - ul[0], br[1] - ul[1]
    if block_w < 1 or block_h < 1:
        raise ValueError(f"{name}: the window of {h} px around {tuple(centre)} holds no "
                         f"whole pixel; pass a larger scale")
    block = np.zeros((block_h, block_w) + source.shape[2:], source.dtype)
    # 0-based source rows and columns of the block's pixels, and those inside the source.
    rows = np.arange(block_h) + ul[1] - 1
    cols = np.arange(block_w) + ul[0] - 1
    r_in = (rows >= 0) & (rows < height)
    c_in = (cols >= 0) & (cols < width)
    block[np.ix_(r_in, c_in)] = source[np.ix_(rows[r_in], cols[c_in])]
    return block if shrink else resize(block, res, res)


def label_crop(label_map: np.ndarray, centre: np.ndarray | Sequence[float], scale: float,
               res: int = 64) -> np.ndarray:
    """The references' `crop(label_map, centre, scale, 0, res, 'simple')` (img.lua:87-144, steps
    in `_crop`) of an (H, W) label map (any dtype; 0 fills what lies outside the map), resized
    by `scale_simple`. `centre` (x, y) and `scale` are the references' own: `getCenter`'s point
    in their pixel units and `getScale`'s value (`reference_centre_scale`), the window being
    200 x scale pixels. Returns (res, res) of the map's dtype."""
    source = np.asarray(label_map)
    if source.ndim != 2:
        raise ValueError(f"label_crop takes a 2-D label map, got shape {source.shape}")
    return _crop(source, centre, scale, res, scale_simple, "label_crop")


def image_crop(image: np.ndarray, centre: np.ndarray | Sequence[float], scale: float,
               res: int = 256) -> np.ndarray:
    """The references' `crop(rgb, centre, scale, 0, res, 'bilinear')` (img.lua:87-144, steps in
    `_crop`) of an (H, W, 3) uint8 RGB frame -> (res, res, 3) uint8 RGB, `centre` and `scale`
    as for `label_crop`.

    Their frame is float32 in [0, 1], the decoded uint8 divided by 255 in float32
    (surreal training/loader_SURREAL.lua:34, bodynet training/util/dataloader/SURREAL.lua:37);
    the block they copy is float32 (zeros outside the frame) and `image.scale` resizes it (or
    shrinks the frame first) in float32, by `scale_bilinear`. All of that is followed here. hgmt's
    model takes uint8 RGB and normalises inside, so the result is then rounded back to uint8:
    round-half-to-even of 255 x value, in [0, 255]. That rounding is the one step that is not
    theirs: it changes a value by at most half a level, and a pixel copied or interpolated
    between equal pixels comes back exactly.
    """
    source = np.asarray(image)
    if source.ndim != 3 or source.shape[2] != 3 or source.dtype != np.uint8:
        raise ValueError(f"image_crop takes an (H, W, 3) uint8 RGB frame, got shape "
                         f"{source.shape} of {source.dtype}; pass the decoded frame")
    unit = source.astype(np.float32) / np.float32(255)
    out = _crop(unit, centre, scale, res, scale_bilinear, "image_crop")
    return np.clip(np.rint(out.astype(np.float64) * 255), 0, 255).astype(np.uint8)
