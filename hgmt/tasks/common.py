"""Numeric pieces shared by the task modules: Gaussian rendering, sub-pixel argmax, crops,
depth bins. Pure jax.numpy functions, jit-able, batched over leading dims."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

LABEL_STRIDE = 4  # image px per label px: an R x R crop has R/4 x R/4 label maps (Newell)
BIN_SIZE = 0.045  # metres of camera depth per bin (BodyNet)
MAX_BIN = 9  # bins are clamped to [-9, 9]
BINS = tuple(range(-MAX_BIN, MAX_BIN + 1))  # the depth bins, nearest first
NUM_BINS = len(BINS)  # 19
BIN_MM = BIN_SIZE * 1000.0  # millimetres of camera depth per bin


# The test batch sizes of the reference evaluations (`-batchSize`): BodyNet's PCK is a mean
# over test batches, and both references run floor(N / batchSize) full batches but divide by
# N / batchSize (bodynet training/test.lua:62, :80-89; surreal training/test.lua:35, :53-58).
# SURREAL's final evaluation is training/exp/eval.sh (its README.md: "To obtain the final
# results, you can run ./training/exp/eval.sh 1 30 cmu test"), at -batchSize 1 (eval.sh:10):
# every example is evaluated and the sums are divided by N (opts.lua:48's 6 is the batch of
# training and of its validation). BodyNet documents no evaluation command: 4 is its
# opts.lua:69 default and the batch of its end-to-end training/exp/run.sh (docs/metrics.md).
REFERENCE_TEST_BATCH = {"bodynet": 4, "surreal": 1}
# The label maps' side of both references: BodyNet's heatmapSize 64 and outSize {64, 64}
# (bodynet opts.lua:34, :37; eval.lua:464-465 transform(..., 64, true) maps its 3D joints
# with 64 whatever the output), SURREAL's outSize {64, 64} (surreal opts.lua:33), each from a
# 256 x 256 input (bodynet opts.lua:36, surreal :32): REFERENCE_LABEL_SIZE * LABEL_STRIDE.
REFERENCE_LABEL_SIZE = 64
# What a reference summary's `examples_not_evaluated` counts (every task's: one home).
NOT_EVALUATED = ("examples of the last partial test batch (N mod the reference's batch "
                 "size), which the reference's test loop never evaluates")


def reference_null(num_examples: int, batch_size: int, num_damaged: int = 0) -> str | None:
    """Why a reference protocol's number has no value, or None where it has one: no full test
    batch (floor(N / batch_size) = 0, the reference evaluates nothing and would print 0), or,
    for the numbers that divide a sum over the evaluated examples by N (`num_damaged` given
    there), damaged records left out of the sum but counted in N."""
    if num_examples // batch_size == 0:
        return (f"fewer than one reference test batch (N = {num_examples} < "
                f"{batch_size}): the reference evaluates no example")
    if num_damaged:
        return f"{num_damaged} {DAMAGED}"
    return None


# Why a reference number that divides by N is null after damaged records were left out (the
# end of `reference_null`'s reason, which the evaluation's warning looks for).
DAMAGED = ("damaged record(s): the reference's figure cannot be reproduced; evaluate with "
           "--protocol=hgmt or rebuild the shard")


def label_to_crop_px(points: ArrayLike, crop_size: int, label_size: int) -> ArrayLike:
    """(...,2) label-map px -> px of the (crop_size x crop_size) picture of the crop (pixel
    centres at integers in both: a label px spans crop_size / label_size picture px)."""
    scale = crop_size / label_size
    return (points + 0.5) * scale - 0.5


def label_size(batch: dict) -> int:
    """r, the side of a batch's label maps, from its (B,R,R,3) images."""
    return batch["image"].shape[-3] // LABEL_STRIDE


def _real(batch: dict, n: int) -> jnp.ndarray:
    """(n,) the evaluation batches' `mask` (1 real, 0 padding), or 1 for every example."""
    if "mask" in batch:
        return batch["mask"].astype(jnp.float32)
    return jnp.ones(n, jnp.float32)


def unusable(batch: dict, n: int) -> jnp.ndarray:
    """(n,) 1 for a flagged placeholder of an unusable test frame (batch['unusable']), else 0."""
    if "unusable" in batch:
        return batch["unusable"].astype(jnp.float32)
    return jnp.zeros(n, jnp.float32)


def example_weights(batch: dict, n: int) -> jnp.ndarray:
    """(n,) weight of each of a batch's n examples in hgmt's metric statistics: 1 for a real,
    usable example; 0 for padding, for flagged unusable frames and for the frames hgmt's own
    check rejects (batch['rejected'] where the batch has it), which hgmt's definitions leave
    out."""
    left_out = unusable(batch, n)
    if "rejected" in batch:
        left_out = jnp.maximum(left_out, batch["rejected"].astype(jnp.float32))
    return _real(batch, n) * (1.0 - left_out)


def full_batch_weights(batch: dict, n: int, num_examples: int, batch_size: int
                       ) -> jnp.ndarray:
    """(n,) 1 for a real example (flagged unusable ones included: the references evaluate
    them) in one of the reference's floor(num_examples / batch_size) full test batches (by
    batch['position'], its index in the test order), 0 for padding and in the last partial
    batch, which the reference never evaluates."""
    full = (num_examples // batch_size) * batch_size
    return _real(batch, n) * (batch["position"] < full).astype(jnp.float32)


# BodyNet's label frame against hgmt's: `getTransform` (bodynet training/util/img.lua:18-28)
# maps the crop window onto [0, r], so label pixel k spans [k, k+1) and `transform`'s cast
# gives the pixel holding the point; hgmt's crop maps it onto [-0.5, r-0.5], pixel k centred
# on k. A point at hgmt label x is at BodyNet label x + BODYNET_LABEL_SHIFT.
BODYNET_LABEL_SHIFT = 0.5


def torch_int(v: jnp.ndarray) -> jnp.ndarray:
    """Torch's `:int()` of the reference's `transform(..., true)`: the C cast, which truncates
    toward zero (-0.7 -> 0), as int32."""
    return jnp.trunc(v).astype(jnp.int32)


def _null(value: object) -> bool:
    """None, or a non-empty breakdown ({item: value}) whose every value is None."""
    return value is None or (isinstance(value, dict) and bool(value)
                             and all(v is None for v in value.values()))


def with_null_reasons(values: dict, reasons: dict[str, str]) -> dict:
    """`values` plus "null_reasons": {metric: why it is null} for each metric of `reasons`
    whose value is None, or a breakdown all None (the key is absent when none is): an empty
    case is written as null with its reason, never as 0 or NaN."""
    why = {k: r for k, r in reasons.items() if _null(values.get(k))}
    return {**values, "null_reasons": why} if why else values


def joint_bin(dz: jnp.ndarray) -> jnp.ndarray:
    """Pelvis-relative joint depth (metres) -> BodyNet's bin clamp(round(dz / 45 mm), -9, 9),
    int32 (gulvarol/bodynet training/donkey.lua: `torch.round(z/opt.stp)`)."""
    q = dz / BIN_SIZE
    rounded = jnp.sign(q) * jnp.floor(jnp.abs(q) + 0.5)  # torch.round: halves away from zero
    return jnp.clip(rounded, -MAX_BIN, MAX_BIN).astype(jnp.int32)


def joint_bin_depth(b: jnp.ndarray) -> jnp.ndarray:
    """BodyNet's bins b (any shape, int) -> their depths b * 45 mm relative to the pelvis, in
    metres (float32, same shape)."""
    return b.astype(jnp.float32) * BIN_SIZE


def crop_mirror(crop: jnp.ndarray) -> jnp.ndarray:
    """(B,2,3) crop affines -> (B,) -1.0 where the crop mirrors the image (a flipped crop),
    else 1.0: the sign of the linear part's determinant."""
    return jnp.sign(jnp.linalg.det(crop[..., :2])).astype(jnp.float32)


def bin_centre(b: jnp.ndarray) -> jnp.ndarray:
    """Bins b (any shape, int) -> the centres of their depth intervals ((b-1)*45, b*45] mm, in
    metres (float32, same shape)."""
    return (b.astype(jnp.float32) - 0.5) * BIN_SIZE


def gaussian(points: jnp.ndarray, size: int, sigma: float = 1.0) -> jnp.ndarray:
    """(...,2) (x,y) label-map pixels -> (...,size,size) unnormalised Gaussians (peak 1)."""
    grid = jnp.arange(size, dtype=jnp.float32)
    gx = jnp.exp(-((grid - points[..., 0:1]) ** 2) / (2 * sigma**2))
    gy = jnp.exp(-((grid - points[..., 1:2]) ** 2) / (2 * sigma**2))
    return gy[..., :, None] * gx[..., None, :]


def subpixel_argmax(maps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(...,H,W) score maps -> ((...,2) (x,y) location, (...) peak value).

    The integer argmax is refined per axis by a parabola through the log-scores of the peak and
    its two neighbours, which is exact for a Gaussian; the offset is clipped to half a pixel.
    """
    h, w = maps.shape[-2:]
    flat = maps.reshape(*maps.shape[:-2], h * w)
    idx = jnp.argmax(flat, axis=-1)
    peak = jnp.take_along_axis(flat, idx[..., None], -1)[..., 0]
    y, x = idx // w, idx % w

    def at(dy: int, dx: int) -> jnp.ndarray:
        yy, xx = jnp.clip(y + dy, 0, h - 1), jnp.clip(x + dx, 0, w - 1)
        return jnp.take_along_axis(flat, (yy * w + xx)[..., None], -1)[..., 0]

    def offset(lo: jnp.ndarray, mid: jnp.ndarray, hi: jnp.ndarray) -> jnp.ndarray:
        lo, mid, hi = (jnp.log(jnp.maximum(v, 1e-8)) for v in (lo, mid, hi))
        denom = lo - 2 * mid + hi
        off = jnp.where(denom < -1e-6, 0.5 * (lo - hi) / jnp.minimum(denom, -1e-6), 0.0)
        return jnp.clip(off, -0.5, 0.5)

    ox = jnp.where((x > 0) & (x < w - 1), offset(at(0, -1), peak, at(0, 1)), 0.0)
    oy = jnp.where((y > 0) & (y < h - 1), offset(at(-1, 0), peak, at(1, 0)), 0.0)
    return jnp.stack([x + ox, y + oy], axis=-1).astype(jnp.float32), peak


# The precision of every float32 product of coordinates (crops, joints, decoding) and of every
# metric sum: full float32 on every backend. At JAX's default precision a GPU may round a
# product's inputs to TF32 and a TPU to bfloat16, which moves decoded joints and rounds error
# sums (tests/test_protocols.py::test_every_metric_product_is_full_float32_on_any_backend
# checks every metric product's precision); the model's own products keep the default.
EXACT = jax.lax.Precision.HIGHEST


def weighted_sum(weights: jnp.ndarray, values: jnp.ndarray) -> jnp.ndarray:
    """(B,) weights, (B,...) values -> (...) their weighted sum over the batch, exact in float32
    on any backend (`EXACT`)."""
    return jnp.tensordot(weights, values, axes=1, precision=EXACT)


def apply_affine(m: jnp.ndarray, points: jnp.ndarray) -> jnp.ndarray:
    """(B,2,3) affines applied to (B,N,2) points."""
    return (jnp.einsum("bij,bnj->bni", m[..., :2], points, precision=EXACT)
            + m[:, None, :, 2])


def invert_affine(m: jnp.ndarray) -> jnp.ndarray:
    """(B,2,3) -> the inverse (B,2,3) affine."""
    a_inv = jnp.linalg.inv(m[..., :2])
    shift = jnp.einsum("bij,bj->bi", a_inv, m[..., 2], precision=EXACT)
    return jnp.concatenate([a_inv, -shift[..., None]], -1)


def spatial_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Mean softmax cross-entropy of (B,r,r,C) logits against (B,r,r) int labels."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), labels))


def batch_mean(value: jnp.ndarray, axis_name: str | None) -> jnp.ndarray:
    """`value` (any shape, a loss or a statistic) averaged over the devices of the axis
    `axis_name` the batch is split over, or `value` itself (None: one device's batch is
    all)."""
    return value if axis_name is None else jax.lax.pmean(value, axis_name)


def weighted_spatial_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                                   weights: jnp.ndarray,
                                   axis_name: str | None = None) -> jnp.ndarray:
    """Softmax cross-entropy of (B,r,r,C) logits against (B,r,r) int labels, averaged with
    (B,r,r) pixel weights over the whole batch: sum(weights * ce) / sum(weights). With the
    batch split over the devices of the axis `axis_name`, this device's share: its sum over the
    devices' mean weight sum, so the devices' mean of it (the train step's) is the global
    batch's ratio on any number of devices."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return jnp.sum(weights * ce) / batch_mean(jnp.sum(weights), axis_name)


def foreground_weighted_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray,
                                      foreground_weight: float,
                                      axis_name: str | None = None) -> jnp.ndarray:
    """Spatial cross-entropy of (B,r,r,C) logits against (B,r,r) int labels (0 = background)
    where each foreground pixel weighs `foreground_weight` times a background one; the sum is
    divided by the weights' sum over the batch (the global batch, split over the devices of
    `axis_name`: `weighted_spatial_cross_entropy`), so the loss keeps cross-entropy's scale.
    1.0 is `spatial_cross_entropy` itself (the same code path): a mean over equal per-device
    batches, whose devices' mean is the global batch's already."""
    if foreground_weight == 1.0:
        return spatial_cross_entropy(logits, labels)
    return weighted_spatial_cross_entropy(logits, labels,
                                          jnp.where(labels > 0, foreground_weight, 1.0),
                                          axis_name)


def mse(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
    """() float32: the mean over every element of the squared difference of (B,r,r,C)
    predictions (any float dtype, cast to float32) and targets of the same shape, in the
    maps' units squared."""
    return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))


def argmax_classes(logits: jnp.ndarray) -> jnp.ndarray:
    """(B,r,r,C) -> (B,r,r) int32 class map."""
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)


def confusion_counts(pred: jnp.ndarray, label: jnp.ndarray, num_classes: int,
                     mask: jnp.ndarray | None = None) -> jnp.ndarray:
    """(num_classes, num_classes) counts [label, pred] over the masked pixels."""
    w = jnp.ones_like(label, jnp.float32) if mask is None else mask.astype(jnp.float32)
    idx = label.reshape(-1) * num_classes + pred.reshape(-1)
    return jax.ops.segment_sum(w.reshape(-1), idx, num_classes * num_classes).reshape(
        num_classes, num_classes)
