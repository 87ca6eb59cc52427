"""A trained model on any image: 2D/3D pose, part segmentation and depth (the command is
`hgmt.predict`, which says what it writes).

    from hgmt.inference.predictor import Predictor
    predictor = Predictor("runs/demo")
    result = predictor(rgb_uint8_image, bbox=(x, y, w, h))  # dict of arrays (`predict`)

The person crop is the square window around `bbox` (x, y, w, h in pixels: training's window,
the joints' box with its margins, not a tight box: docs/predict.md says how to make one from
a tight box); without one the person is found (hgmt/inference/person.py).
How 3D is decoded from one image (the camera and the person's distance it assumes; the
distance from the window's size and `crop_metres`, `crop_scale.of_workdir`):
docs/predict.md#how-3d-is-decoded.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hgmt.data import cropping
from hgmt.inference import crop_scale, person, trained_model
from hgmt.models import create_model, predict_last_stage
from hgmt.sources import camera
from hgmt.tasks import (
    TASKS,
    channel_flips,
    common,
    heads,
    parse_tasks,
    reads_distance,
)
from hgmt.tasks.spec import Frame
from hgmt.training import device_memory

# Training's windows lie in SURREAL's 320 x 240 frames and are sampled bilinearly. A window
# larger than this (a high-resolution photo) is first averaged down to the crop's scale
# (cv2.INTER_AREA): a bilinear sampling of it would alias.
MAX_WINDOW_PX = camera.IMAGE_WIDTH


MAX_FINDING_PASSES = 4  # model passes spent finding the person (the first on the whole image)

# The model pass compiled for a batch shape, shared by the Predictors of one model in this
# process (a command or notebook predicting with several checkpoints of one configuration
# compiles once): (model, flip, batch, image size) -> executable, the oldest dropped first.
_EXECUTABLES: dict[tuple, Any] = {}
_MAX_EXECUTABLES = 32


class Predictor:
    """A restored checkpoint as a function: RGB uint8 (H,W,3) image -> per-task results.

    `variables` are the checkpoint's, placed on JAX's default device. Crops are run
    `batch_size` at a time there (a smaller last batch is padded to a power of two, so few
    shapes are compiled: `batch_shapes`). With `flip`, each crop's outputs are averaged with
    its mirror image's, left and right channels swapped back (the flip test of
    `hgmt.evaluate --flip`, `predict_last_stage`). Making one raises ValueError for a
    `batch_size` below 1 or a `focal_px` not above 0, what `trained_model.restore_for_inference`
    raises, and OutOfDeviceMemory when the variables do not fit on the device."""

    def __init__(self, workdir: str, step: int | str | None = None,
                 config: ml_collections.ConfigDict | None = None, batch_size: int = 8,
                 focal_px: float | None = None, flip: bool = False):
        if int(batch_size) < 1:  # before the checkpoint is read
            raise ValueError(f"batch_size={batch_size}: give the number of crops the model "
                             f"runs at once, at least 1")
        self.config, variables, self.step = trained_model.restore_for_inference(
            workdir, step, config)
        # On JAX's default device once: host arrays would be copied there on every model pass
        # (106 MB in 1945 arrays for configs/default.py's model).
        nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(variables))
        with device_memory.variables_explained(nbytes):
            self.variables = jax.device_put(variables)
        self.tasks = parse_tasks(self.config.tasks)
        self.image_size = int(self.config.image_size)
        self.batch_size = int(batch_size)
        if focal_px is not None and not focal_px > 0:
            raise ValueError(f"focal_px={focal_px}: give the camera's focal length in pixels "
                             f"(> 0), or None to assume SURREAL's field of view")
        self.focal_px = focal_px
        # Metres a training window spans at the person: 3D decoding's scale.
        self.window = cropping.config_window(self.config)
        self.crop_metres = crop_scale.of_workdir(workdir, self.window,
                                                 warn=reads_distance(self.tasks))
        self.flip = bool(flip)
        self._model = create_model(self.config.model, heads(self.tasks))
        self._apply = jax.jit(functools.partial(
            predict_last_stage, self._model,
            flip=channel_flips(self.tasks) if self.flip else None))
        self._compiled: dict[int, object] = {}  # batch shape -> `_apply` compiled for it

    def batch_shapes(self) -> list[int]:
        """The batch sizes the model runs at (`_forward`): the powers of two below batch_size,
        and batch_size."""
        return sorted({min(1 << k, self.batch_size)
                       for k in range(self.batch_size.bit_length() + 1)})

    def warm_up(self) -> dict:
        """Compiles everything a prediction runs, so that timing one measures no compilation:
        the model for each of `batch_shapes` (compiled, not run) and the decoding (by
        predicting one black image: what is compiled does not depend on the image's size) ->
        that black image's result (`predict`'s, image_maps=False), for a caller to compile
        what it does with results (a video's drawing)."""
        for n in self.batch_shapes():
            self._executable(n)
        return self.predict([np.zeros((self.image_size, self.image_size, 3), np.uint8)],
                            image_maps=False)[0]

    def compiled(self) -> bool:
        """Whether the model pass is compiled in this process for every one of `batch_shapes`
        (by this Predictor or an earlier one of the same model): `warm_up` compiles none."""
        return all(n in self._compiled or self._key(n) in _EXECUTABLES
                   for n in self.batch_shapes())

    def _key(self, n: int) -> tuple:
        """The `_EXECUTABLES` key of the model pass on batches of n crops."""
        return (self._model, self.flip, n, self.image_size)

    def _executable(self, n: int):
        """`_apply` compiled for batches of n crops (on first use, or by an earlier Predictor
        of the same model: `_EXECUTABLES`), each crop's outputs returned as arrays of their
        own: {task: n (r,r,C)}, which need no slicing after."""
        if n not in self._compiled:
            key = self._key(n)
            if key not in _EXECUTABLES:
                apply = self._apply  # not self: the executable outlives this Predictor

                def per_crop(variables: dict, crops: jax.Array) -> dict[str, list[jax.Array]]:
                    return {t: list(o) for t, o in apply(variables, crops).items()}

                size = self.image_size
                _EXECUTABLES[key] = jax.jit(per_crop).lower(
                    self.variables, jax.ShapeDtypeStruct((n, size, size, 3), np.uint8)).compile()
                while len(_EXECUTABLES) > _MAX_EXECUTABLES:
                    del _EXECUTABLES[next(iter(_EXECUTABLES))]
            self._compiled[n] = _EXECUTABLES[key]
        return self._compiled[n]

    def __call__(self, image: np.ndarray, bbox: Sequence[float] | None = None) -> dict:
        """One image, (H,W,3) RGB uint8 -> its result dict (`predict` lists the keys: joints
        in image px, 3D joints in mm relative to the pelvis, class maps); the person's window
        is `bbox` (x, y, w, h in image px, training's window around the person), else found."""
        return self.predict([image], None if bbox is None else [bbox])[0]

    def predict(self, images: Sequence[np.ndarray],
                bboxes: Sequence[Sequence[float] | None] | None = None, *,
                image_maps: bool = True) -> list[dict]:
        """Images (each (H,W,3) RGB uint8, any sizes) -> one result each.

        Each image is predicted on the square window around its bbox (x, y, w, h) when one is
        given, else on the window `find` returns. A result: {'window' (`person.Window`),
        'passes' (model passes run on the image), 'crop_image' (R,R,3) uint8, 'crop' (2,3)
        image px -> label px, 'raw' {task: (r,r,C)} the model's outputs (JAX arrays on its
        device; np.asarray copies one to the host), 'frame' (the decoding `Frame`), and each
        task's `predict` entries: 'joints2d' (16,2) image px, 'joint_scores' (16,) heatmap
        maxima, 'joints3d_rel_mm' (16,3) with the 'focal_px' and 'pelvis_depth_m' decoding them
        (the latter from 'crop_metres', the metres a training window spans at the person),
        'segm' (r,r) and 'segm_image' (H,W) part classes 0..14, 'depth' (r,r) and
        'depth_image' (H,W) classes 0..19, 'depth_rel_mm' (r,r) depth relative to the pelvis
        (nan on background)}. Without `image_maps` the (H,W) maps are None, not made (a video's
        frames do not need them)."""
        if isinstance(images, np.ndarray) and images.ndim != 4:  # a batch is its images
            raise ValueError(f"Predictor.predict takes a list of images (or an (N,H,W,3) "
                             f"array), got a {images.dtype} array {images.shape}; give "
                             f"[image] (or call the Predictor on the image)")
        images = [_checked(image) for image in images]
        bboxes = [None] * len(images) if bboxes is None else list(bboxes)
        if len(bboxes) != len(images):
            raise ValueError(f"{len(bboxes)} bboxes for {len(images)} images; give one each "
                             f"(None to find the person)")
        windows = [None if b is None else person.Window.given_in(b, image.shape)
                   for b, image in zip(bboxes, images, strict=True)]
        passes = [0] * len(images)
        done: dict[int, tuple] = {}  # image -> (crop, m_label, raw) on its final window
        search = [i for i, w in enumerate(windows) if w is None]
        if search:
            found, runs, last = self.find([images[i] for i in search])
            for k, i in enumerate(search):
                windows[i], passes[i] = found[k], runs[k]
                if last[k] is not None:
                    done[i] = last[k]
        rest = [i for i in range(len(images)) if i not in done]
        if rest:
            crops, m_labels = self._crops([images[i] for i in rest], [windows[i] for i in rest])
            raw = self._forward(crops)
            for k, i in enumerate(rest):
                preds = {t: raw[t][k] for t in self.tasks}
                done[i] = (crops[k], m_labels[k], preds)
                passes[i] += 1
                # A search that did not settle runs once more on its last window: where the
                # model sees nothing there, the window says so, as a settled search's does.
                if i in search and person.find_window(
                        {t: TASKS[t].locate(p) for t, p in preds.items()}, m_labels[k],
                        images[i].shape, self.window) is None:
                    windows[i], _ = person.after_pass(windows[i], None, first_pass=False)
        return [self._result(images[i], windows[i], passes[i], *done[i], image_maps=image_maps)
                for i in range(len(images))]

    def find(self, images: Sequence[np.ndarray]) -> tuple[list[person.Window], list[int],
                                                           list[tuple | None]]:
        """Finds the person in each image: the model runs on the whole image, each task's
        `locate` says where it sees the person, `person.find_window` turns that into a
        training-like window, and the model runs again on that window, until the window
        found is within `person.CONVERGED` of the one run on, or MAX_FINDING_PASSES passes.
        -> (window per image, passes run, (crop, m_label, raw) of the last pass when it was
        run on the window returned, else None). An image where nothing is seen on the first
        pass keeps the whole image (`person.NOT_FOUND`); where a later pass sees nothing, the
        window it ran on is kept and says so (`person.after_pass`)."""
        windows = [person.Window.whole(image.shape) for image in images]
        passes, last = [0] * len(images), [None] * len(images)
        todo = list(range(len(images)))
        for _ in range(MAX_FINDING_PASSES):
            if not todo:
                break
            crops, m_labels = self._crops([images[i] for i in todo], [windows[i] for i in todo])
            raw = self._forward(crops)
            still = []
            for k, i in enumerate(todo):
                preds = {t: raw[t][k] for t in self.tasks}
                passes[i] += 1
                seen = person.find_window({t: TASKS[t].locate(p) for t, p in preds.items()},
                                          m_labels[k], images[i].shape, self.window)
                windows[i], done = person.after_pass(windows[i], seen, passes[i] == 1)
                if done:
                    last[i] = (crops[k], m_labels[k], preds)
                else:
                    still.append(i)
            todo = still
        return windows, passes, last

    def _crops(self, images: Sequence[np.ndarray], windows: Sequence[person.Window]
               ) -> tuple[np.ndarray, list[np.ndarray]]:
        """-> (B,R,R,3) uint8 crops of the windows (bilinear, black outside the image; a
        window over MAX_WINDOW_PX source px averaged down to the crop's scale first), and each
        crop's (2,3) affine from image px to label px."""
        size, r = self.image_size, self.image_size // common.LABEL_STRIDE
        crops, m_labels = [], []
        for image, window in zip(images, windows, strict=True):
            m_image = cropping.crop_affine(window.centre, window.side, size)
            if window.side > max(MAX_WINDOW_PX, size):
                image, to_small = _averaged_down(image, size / window.side)
                m_image = _after_inverse(m_image, to_small)
            crops.append(cv2.warpAffine(image, m_image, (size, size), flags=cv2.INTER_LINEAR))
            m_labels.append(cropping.crop_affine(window.centre, window.side, r))
        return np.stack(crops), m_labels

    def _forward(self, crops: np.ndarray) -> dict[str, list]:
        """(B,R,R,3) crops -> {task: B (r,r,C) arrays} the last stage's outputs on each crop,
        left on JAX's device (the decoding runs there), batch_size crops at a time."""
        out = {t: [] for t in self.tasks}
        for start in range(0, len(crops), self.batch_size):
            chunk = crops[start:start + self.batch_size]
            n = len(chunk)
            padded = min(1 << (n - 1).bit_length(), self.batch_size)
            if padded > n:
                chunk = np.concatenate([chunk, np.zeros((padded - n, *chunk.shape[1:]),
                                                        chunk.dtype)])
            outputs = self._executable(padded)(self.variables, chunk)
            for t in self.tasks:
                out[t] += outputs[t][:n]
        return out

    def _result(self, image: np.ndarray, window: person.Window, passes: int,
                crop: np.ndarray, m_label: np.ndarray, raw: dict, image_maps: bool = True
                ) -> dict:
        """One image's result (`predict`) from the model's outputs on its window's crop; the
        image-sized maps only with `image_maps` (the `Frame` maps label px to the image)."""
        out = {"window": window, "passes": passes, "crop_image": crop, "crop": m_label,
               "raw": raw, "crop_metres": self.crop_metres}
        virtual = decoding_frame(image.shape[:2], self.focal_px)
        scale = virtual[0, 0]  # decoding frame px per image px
        m_virtual = _after_inverse(m_label, virtual)
        batch = {"crop": jnp.asarray(m_virtual[None], jnp.float32),
                 "pelvis_depth": jnp.asarray(
                     [camera.INTRINSICS[0, 0] * self.crop_metres / (window.side * scale)],
                     jnp.float32)}
        out["frame"] = Frame(batch, cv2.invertAffineTransform(m_label) if image_maps else None,
                             image.shape[:2], virtual)
        for t, pred in raw.items():
            out.update(TASKS[t].predict(pred, out["frame"]))
        return out


def decoding_frame(image_shape: tuple[int, int], focal_px: float | None = None) -> np.ndarray:
    """(2,3) image px -> the px of SURREAL's camera (focal 600 px, principal point (160, 120))
    seeing what the image's camera saw, pixel centres at integers in both: the image scaled by
    600 / `focal_px` (None: its longer side spans SURREAL's 320 px) with its centre on the
    centre of SURREAL's 320 x 240 frame, (159.5, 119.5). So the image is placed as a SURREAL
    frame is, whose principal point lies half a pixel right of and below its centre (the
    convention of SURREAL's joints2d, which training reads as they are): a SURREAL frame's
    decoding frame is the identity, and an image resampled from one (at any scale) decodes as
    it does."""
    h, w = image_shape
    scale = camera.INTRINSICS[0, 0] / focal_px if focal_px else camera.IMAGE_WIDTH / max(h, w)
    u0, v0 = (camera.IMAGE_WIDTH - 1) / 2, (camera.IMAGE_HEIGHT - 1) / 2
    return np.array([[scale, 0.0, u0 - scale * (w - 1) / 2],
                     [0.0, scale, v0 - scale * (h - 1) / 2]])


def _after_inverse(m: np.ndarray, a: np.ndarray) -> np.ndarray:
    """(2,3) affines -> m after the inverse of a: the map from a's target frame through m."""
    return m @ np.vstack([cv2.invertAffineTransform(a), [0, 0, 1]])


def _averaged_down(image: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """`image` resized by about `factor` < 1 with pixel-area averaging -> (the resized image,
    its (2,3) map from the image's px: pixel centres at integers in both, as cv2.resize)."""
    h, w = image.shape[:2]
    new_w, new_h = max(1, round(w * factor)), max(1, round(h * factor))
    sx, sy = new_w / w, new_h / h
    small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    return small, np.array([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5]])


def _checked(image: np.ndarray) -> np.ndarray:
    """`image` as an (H,W,3) uint8 array, H and W > 0; else a ValueError saying how to make
    one of what was given."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        if min(image.shape[:2]) > 0:
            return image
        hint = "an image with pixels"
    elif image.ndim == 3 and image.shape[0] == 3 and image.shape[2] != 3:
        hint = "channels last: np.moveaxis(image, 0, -1)"
    elif image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        hint = "RGB of a grey image: cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)"
    elif image.ndim == 3 and image.shape[2] == 4:
        hint = "RGB without the alpha channel: image[..., :3]"
    elif image.ndim == 4:
        hint = "one image (H,W,3): Predictor.predict(images) takes a batch"
    elif image.ndim == 3 and np.issubdtype(image.dtype, np.floating):
        hint = ("uint8 values 0..255: e.g. (image * 255).round().astype(np.uint8) for "
                "values on [0, 1]")
    elif image.ndim == 3:
        hint = "uint8 values 0..255: image.astype(np.uint8) where they are such"
    else:
        hint = "a list of (H,W,3) images for Predictor.predict, one for Predictor(...)()"
    raise ValueError(f"expected an RGB uint8 image (H,W,3), got {image.dtype} {image.shape}: "
                     f"give {hint}")

