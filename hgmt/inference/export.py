"""The inference function of a checkpoint, exported for serving (the command is `hgmt.export`,
which says what each format writes): images (B, R, R, 3) float32 on [0, 255], B >= 1 -> the
last stage's {task: (B, R/4, R/4, C)} float32, parameters baked in; `export_stablehlo` /
`load_stablehlo` (jax.export, symbolic batch) and `export_savedmodel` (jax2tf; refused where
this host's TensorFlow cannot run what its JAX converts, `savedmodel_runs_here`). The metadata
(`META_FILE`, written from `export_meta`) says how the inputs are cut from an image, the camera
3D decoding assumes and how to decode each output."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from types import ModuleType

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath

from hgmt import disk_space, paths, workdirs
from hgmt.choices import not_one_of
from hgmt.data import cropping
from hgmt.inference import crop_scale, export_meta, trained_model
from hgmt.models import (
    IMAGE_MEAN,
    IMAGE_STD,
    create_model,
    predict_last_stage,
    to_model_layout,
)
from hgmt.tasks import heads, parse_tasks, reads_distance

FORMATS = ("stablehlo", "savedmodel")
# Where an artefact runs, whichever machine exported it: each is lowered for all of them.
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
STABLEHLO_FILE = "model.jaxexport"  # the stablehlo artefact in the export directory
META_FILE = "hgmt.json"  # the metadata in the export directory


def inference_fn(workdir: str, step: int | str | None = None,
                 config: ml_collections.ConfigDict | None = None) -> tuple[Callable, dict]:
    """-> (f, metadata): f(images (B,R,R,3) RGB, uint8 or float on [0, 255]; the exported
    artefacts take float32) -> {task: (B,r,r,C) float32}, the last stage's outputs (r = R/4),
    with the parameters closed over.

    The metadata's "step" is the restored checkpoint's step, "checkpoint" the workdir's folder
    it was restored from: `workdirs.BEST_DIR` for step "best" (the best validation
    checkpoint), else `workdirs.CHECKPOINT_DIR` (training's)."""
    folder = workdirs.BEST_DIR if step == "best" else workdirs.CHECKPOINT_DIR
    config, variables, step = trained_model.restore_for_inference(workdir, step, config)
    tasks = parse_tasks(config.tasks)
    window = cropping.config_window(config)
    # Separate streams whatever config.model.stream_mode: the same function, and the one TF
    # Lite converts (vmapped streams pick a task's features with a gather, which becomes a
    # dynamic gather over a symbolic batch).
    model = create_model({**config.model.to_dict(), "stream_mode": "separate"}, heads(tasks))
    variables = jax.tree.map(jnp.asarray, to_model_layout(model, variables))  # from either

    def f(images: jax.Array) -> dict[str, jax.Array]:
        return {t: o.astype(jnp.float32)
                for t, o in predict_last_stage(model, variables, images).items()}

    meta = {"tasks": list(tasks), "image_size": int(config.image_size), "step": int(step),
            "dtype": config.model.dtype,
            "checkpoint": folder,
            "input": "float32 (B, R, R, 3) RGB on [0, 255], B >= 1, R = image_size: crops of "
                     "images as `crop` says; the model computes (rgb / 255 - mean) / std",
            "mean": list(IMAGE_MEAN), "std": list(IMAGE_STD),
            "crop": export_meta.crop_meta(*crop_scale.with_source(
                workdir, window, warn=reads_distance(tasks)), window),
            "camera": export_meta.camera_meta(),
            # One pass on the input as given: no mirrored pass is averaged in (hgmt.evaluate
            # --flip's); each output's channel_flip is what a consumer needs to do so.
            "flip_test": False,
            **export_meta.output_meta(tasks, int(config.image_size))}
    return f, meta


def export_stablehlo(f: Callable, image_size: int, path: str) -> None:
    """Writes `f` serialised by `jax.export` into the file `path` (a local path or a URL,
    through `etils.epath`; an export directory's is <dir>/`STABLEHLO_FILE`): `f` maps images
    (B, R, R, 3) float32 RGB on [0, 255], R = `image_size` px, to {task: (B, R/4, R/4, C)}
    float32 (`inference_fn`'s), the batch size B symbolic (any B >= 1), lowered for each of
    `PLATFORMS`. `load_stablehlo` reloads it."""
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, image_size, image_size, 3), jnp.float32)
    exported = jax.export.export(jax.jit(f), platforms=PLATFORMS)(spec)
    epath.Path(path).write_bytes(exported.serialize())


def load_stablehlo(path: str) -> Callable:
    """The exported function, callable on a (B,R,R,3) float32 array; `path` is an export
    directory or its model.jaxexport file (a local path, `~` expanded, or a gs:// URL,
    `check_out_dir`). FileNotFoundError names a folder without that file (a SavedModel's is
    loaded by `tf.saved_model.load`)."""
    path = epath.Path(paths.absolute(path))
    if path.is_dir():
        if not (path / STABLEHLO_FILE).exists():
            raise FileNotFoundError(f"{path}: holds no {STABLEHLO_FILE}; give the folder of a "
                                    f"--format=stablehlo export (a SavedModel's folder loads "
                                    f"with tf.saved_model.load)")
        path = path / STABLEHLO_FILE
    return jax.export.deserialize(bytearray(path.read_bytes())).call


def export_savedmodel(f: Callable, image_size: int, path: str) -> None:
    """Writes `f` (as `export_stablehlo` takes it: images (B, R, R, 3) float32 RGB on
    [0, 255], R = `image_size` px -> {task: (B, R/4, R/4, C)} float32) as a TensorFlow
    SavedModel into the folder `path` (a local path or a URL TensorFlow's file systems write):
    converted by jax2tf, natively serialised for each of `PLATFORMS`, without gradients, with
    the signature `serving_default(images)` over any batch size B >= 1. `tf.saved_model.load`
    reloads it. Needs TensorFlow, imported here."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(f, polymorphic_shapes=["(b, _, _, _)"], with_gradient=False,
                               native_serialization_platforms=PLATFORMS)
    module = tf.Module()
    # A signature's shape is not checked when a loaded SavedModel is called: a wrong one would
    # fail deep in the converted module's shape refinement, a screen of StableHLO.
    module.serve = tf.function(
        lambda images: converted(tf.ensure_shape(images, (None, image_size, image_size, 3))),
        autograph=False,
        input_signature=[tf.TensorSpec((None, image_size, image_size, 3), tf.float32,
                                       name="images")])
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve})


class TensorFlowTooOld(RuntimeError):
    """This host's TensorFlow cannot run what its JAX converts: a SavedModel export would not
    run (`savedmodel_runs_here`)."""


def savedmodel_runs_here() -> str | None:
    """None where this host's TensorFlow runs a function JAX converts as `export_savedmodel`
    does (natively serialised StableHLO, a symbolic batch size); else why not, with the fix.
    A JAX writes StableHLO of four weeks before its release, which a TensorFlow released
    earlier may not read (TensorFlow 2.21 reads none that JAX 0.12 writes)."""
    import tensorflow as tf
    from jax.experimental import jax2tf

    converted = jax2tf.convert(lambda x: x * 2, polymorphic_shapes=["(b, _)"],
                               with_gradient=False, native_serialization_platforms=("cpu",))
    try:
        with _native_stderr_dropped():  # TensorFlow's C++ logs its failure in 20 lines
            converted(tf.zeros((2, 3), tf.float32))
    except tf.errors.InvalidArgumentError as e:
        if "deserialize" not in str(e):
            raise
        return stablehlo_too_new(str(e), tf.__version__, jax.__version__)
    return None


@contextlib.contextmanager
def _native_stderr_dropped() -> Iterator[None]:
    """The process's file descriptor 2 (where C++ code logs) goes to /dev/null while the block
    runs; Python's sys.stderr is flushed on either side."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def stablehlo_too_new(error: str, tf_version: str, jax_version: str) -> str:
    """The line of `TensorFlowTooOld` from TensorFlow's error `error` (it names the StableHLO
    version written and the one it reads, where it says them)."""
    written = re.search(r"produced by: StableHLO_v([\d.]+)", error)
    read = re.search(r"deserialize portable artifact using StableHLO_v([\d.]+)", error)
    versions = (f" (JAX writes StableHLO {written[1]}, TensorFlow reads up to {read[1]})"
                if written and read else "")
    return (f"--format=savedmodel: TensorFlow {tf_version} cannot run what JAX {jax_version} "
            f"converts{versions}; install the versions hgmt was tested with (pip install -e . "
            f"-c constraints.txt) or a TensorFlow released after this JAX, or export "
            f"--format=stablehlo")


class UnusableOutDir(ValueError):
    """A local --out_dir that a finished export cannot be renamed onto (a symbolic link, a
    mount point, a folder in a place that cannot be written), or a URL whose folder cannot be
    made (a store not reached, no permission): the message names it and what to give or
    check instead."""


def check_out_dir(out_dir: str, fmt: str) -> None:
    """Refuses, before any work: `savedmodel` where TensorFlow cannot be imported, a URL of a
    scheme with no file system to write it (`_check_url_scheme`; these are ValueError), a
    local `out_dir` (`~` expanded, `paths.absolute`) that is a file or lies under one
    (NotADirectoryError), one the finished export could not be renamed onto
    (UnusableOutDir: a symbolic link, a mount point, or a parent folder that cannot be
    written, where the export is staged), and an `out_dir` that holds anything
    (FileExistsError): an export is written whole into a new or empty folder, never mixed
    with another's files."""
    # TensorFlow is imported only where it is used: a stablehlo export to a folder needs none.
    tf = _tensorflow() if fmt == "savedmodel" or paths.is_url(out_dir) else None
    if fmt == "savedmodel" and tf is None:
        raise ValueError("--format=savedmodel: TensorFlow, which writes a SavedModel, cannot "
                         "be imported here; install it (pip install tensorflow-cpu), or give "
                         "--format=stablehlo")
    target = paths.absolute(out_dir)  # `~` expanded: a shell leaves it in --out_dir=~/x
    if paths.is_url(out_dir):
        _check_url_scheme(out_dir, fmt, tf)
    else:
        _check_local_target(out_dir, target)
    folder = epath.Path(target)
    if folder.is_dir() and any(folder.iterdir()):
        raise FileExistsError(_not_empty(out_dir))


def _check_local_target(out_dir: str, target: str) -> None:
    """Raises unless the staged export can be renamed onto `target` (`out_dir` made
    absolute): a rename replaces neither a symbolic link by a folder (ENOTDIR) nor a mount
    point (EBUSY), and needs the staging folder's parent, `target`'s, writable."""
    if os.path.islink(target):
        raise UnusableOutDir(f"--out_dir={out_dir}: a symbolic link (to "
                             f"{os.readlink(target)}), which an export, renamed into place "
                             f"whole, cannot replace; pass the folder it points to, or a new "
                             f"path")
    path = target  # the nearest folder that exists: the check of writes starts there
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise NotADirectoryError(f"--out_dir={out_dir}: {path} is a file; give a folder "
                                 f"(made if missing)")
    if path == target and os.path.ismount(target):
        raise UnusableOutDir(f"--out_dir={out_dir}: a mount point, which an export, renamed "
                             f"into place whole, cannot replace; export into a new folder "
                             f"inside it (e.g. --out_dir={os.path.join(out_dir, 'export')})")
    parent = os.path.dirname(target) if path == target else path
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UnusableOutDir(f"--out_dir={out_dir}: {parent} cannot be written here, and the "
                             f"export is staged in it and renamed into place; give a folder "
                             f"in a place you can write")


def _not_empty(out_dir: str) -> str:
    return (f"--out_dir={out_dir}: exists and is not empty; choose a new folder, or remove it "
            f"(an export is written whole into a new or empty folder)")


def _tensorflow() -> ModuleType | None:
    """The tensorflow module, or None where it cannot be imported."""
    try:
        import tensorflow
    except ImportError:
        return None
    return tensorflow


def _check_url_scheme(out_dir: str, fmt: str, tf: ModuleType | None) -> None:
    """Raises ValueError unless the URL `out_dir` has a file system that writes it. A
    SavedModel is written by TensorFlow's own file systems (`tf`: gs://; s3:// is gone since
    TF 2.6); a stablehlo artefact by `etils.epath`, which hands every URL to TensorFlow's file
    systems too where TensorFlow is installed (it is with hgmt), and to fsspec's where it is
    not (`tf` None: gcsfs for gs://, s3fs for s3://)."""
    scheme = out_dir.split("://", 1)[0]
    if tf is not None:
        known = tf.io.gfile.get_registered_schemes()
        if scheme not in known:
            writer = ("it writes a SavedModel" if fmt == "savedmodel" else
                      "etils.epath writes a URL through it where it is installed")
            has = ", ".join(sorted(k for k in known if k))
            raise ValueError(f"--out_dir={out_dir}: TensorFlow has no file system for "
                             f"{scheme}:// (it has {has}), and {writer}; export to a local "
                             f"folder and copy it there")
        return
    try:
        import fsspec

        fsspec.get_filesystem_class(scheme)
    except (ImportError, ValueError) as e:
        raise ValueError(f"--out_dir={out_dir}: etils.epath writes {scheme}:// through fsspec "
                         f"where TensorFlow is not installed, and fsspec cannot ({e}); install "
                         f"the package it names, or export to a local folder and copy it "
                         f"there") from None


def export(workdir: str, fmt: str, out_dir: str, step: int | str | None = None,
           config: ml_collections.ConfigDict | None = None) -> tuple[dict, dict]:
    """Writes the artefact and its metadata (`META_FILE`) into `out_dir`, a new or empty local
    folder (`~` expanded) or gs:// URL (`check_out_dir`), and runs the artefact once on a
    batch of 2 black images -> (the metadata, {task: output shape} of that run).

    A local export is written into a sibling folder `<out_dir>.partial-<random>`, checked, and
    renamed to `out_dir` only then (`disk_space.rename_folder`): `out_dir` appears whole or
    not at all, and any failure removes the partial folder and the missing parent folders the
    export made for it (never one that was there before), leaving the file system as it
    was. An `out_dir` that is an empty folder stays (its mode, owner and access lists; it may
    be the current folder): the checked files are moved into it, `META_FILE` last
    (`disk_space.move_into`). An object store has no rename:
    the files are written into `out_dir` itself, `META_FILE` last, once the artefact is
    checked, so an export folder without it is incomplete (it is removed on a failure, where
    the store still answers). A full disk raises `disk_space.DiskFull`; a local `out_dir` the
    file system refuses to stage the export beside or to rename it onto, `UnusableOutDir`."""
    if fmt not in FORMATS:
        raise not_one_of(f"--format={fmt}", FORMATS)
    check_out_dir(out_dir, fmt)
    if fmt == "savedmodel" and (why := savedmodel_runs_here()):  # before any work
        raise TensorFlowTooOld(why)
    target = paths.absolute(out_dir)  # `~` expanded, as check_out_dir checked it
    if paths.is_url(target):  # made before any work: a store that cannot be reached says so
        try:
            epath.Path(target).mkdir(parents=True, exist_ok=True)
        except Exception as e:  # noqa: BLE001  (TensorFlow's file systems raise their own)
            raise UnusableOutDir(f"--out_dir={out_dir}: could not be made ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:300]}); check the URL, and this "
                                 f"host's network and credentials for it") from e
    try:
        f, meta = inference_fn(workdir, step, config)
    except BaseException:
        if paths.is_url(target):
            with contextlib.suppress(Exception):
                epath.Path(target).rmdir()  # made above, still empty
        raise
    meta["format"], meta["platforms"] = fmt, list(PLATFORMS)
    with disk_space.reported(target, "the export", _THEN,
                             cleanup=lambda: "Nothing partial was left behind."):
        if paths.is_url(target):
            try:
                return meta, _write(f, meta, target)
            except BaseException:
                with contextlib.suppress(Exception):
                    epath.Path(target).rmtree()
                raise
        made: list[str] = []  # the parent folders this export made, innermost first
        try:
            made = _make_folders(os.path.dirname(target))
            partial = _new_folder(target + ".partial-")
        except OSError as e:  # checked writable, but changed since or refused otherwise
            _remove_empty(made)
            if disk_space.is_disk_full(e):
                raise
            raise _unusable(out_dir, f"no folder could be made beside {target} to stage the "
                                     f"export in", e) from e
        except BaseException:
            _remove_empty(made)
            raise
        try:
            shapes = _write(f, meta, partial)
            try:
                if os.path.isdir(target):  # an empty folder: kept, the export moved into it
                    disk_space.move_into(partial, target, last=META_FILE)
                else:
                    disk_space.rename_folder(partial, target)
            except OSError as e:
                if e.errno in (errno.EEXIST, errno.ENOTEMPTY):  # filled since it was checked
                    raise FileExistsError(_not_empty(out_dir)) from None
                if disk_space.is_disk_full(e) or not os.path.isdir(partial):
                    raise  # a full disk is DiskFull's; without `partial` the rename was made
                raise _unusable(out_dir, f"the finished export could not be renamed onto "
                                         f"{target}", e) from e
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            _remove_empty(made)
            raise
    return meta, shapes


def _make_folders(folder: str) -> list[str]:
    """Makes the absolute path `folder` and its missing parent folders (the user's
    permissions) -> the folders this call made, innermost first: `_remove_empty(made)` undoes
    it. One it fails to make (OSError) leaves none of them made."""
    missing = []
    path = folder
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        missing.append(path)
        path = os.path.dirname(path)
    made: list[str] = []
    try:
        for path in reversed(missing):  # outermost first
            try:
                os.mkdir(path)
            except FileExistsError:
                if not os.path.isdir(path):
                    raise
                continue  # made by another process meanwhile: not this export's to remove
            made.insert(0, path)
    except BaseException:
        _remove_empty(made)
        raise
    return made


def _remove_empty(folders: list[str]) -> None:
    """Removes `folders` (innermost first, `_make_folders`'), stopping at the first one that
    is no longer empty (something else was put there since) or cannot be removed."""
    for path in folders:
        try:
            os.rmdir(path)
        except OSError:
            return


def _unusable(out_dir: str, what: str, error: OSError) -> UnusableOutDir:
    """The one-line error of a local export that could not be staged or put in place, after
    the checks of `check_out_dir` passed; nothing partial is left by then."""
    return UnusableOutDir(f"--out_dir={out_dir}: {what} ({error.strerror or error}), and "
                          f"nothing partial was left behind; give a new folder in a place you "
                          f"can write, and rerun")


# What a full disk's error line says to do.
_THEN = "Free space (or raise the quota), or give another --out_dir, and rerun"


def _new_folder(prefix: str) -> str:
    """Creates the folder `prefix` + 8 random hex digits (the user's permissions) -> its
    path."""
    while True:
        path = prefix + secrets.token_hex(4)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path


def _write(f: Callable, meta: dict, folder: str) -> dict:
    """Writes the artefact of `meta['format']` into `folder`, runs it (`smoke_check`), then
    writes `META_FILE` -> the run's {task: output shape}, in `meta['tasks']`' order."""
    size = meta["image_size"]
    if meta["format"] == "stablehlo":
        export_stablehlo(f, size, os.path.join(folder, STABLEHLO_FILE))
    else:
        export_savedmodel(f, size, folder)
    shapes = smoke_check(folder, meta["format"], size)
    (epath.Path(folder) / META_FILE).write_text(json.dumps(meta, indent=1))
    return {t: shapes[t] for t in meta["tasks"]}  # the artefacts give them sorted by name


def smoke_check(folder: str, fmt: str, image_size: int) -> dict:
    """Reloads the artefact in `folder` and runs it on a batch of 2 black images -> {task:
    output shape}: an artefact that does not load or run is found before it is reported."""
    x = np.zeros((2, image_size, image_size, 3), np.float32)
    if fmt == "stablehlo":
        return {t: tuple(v.shape) for t, v in load_stablehlo(folder)(x).items()}
    import tensorflow as tf

    serve = tf.saved_model.load(folder).signatures["serving_default"]
    return {t: tuple(v.shape) for t, v in serve(images=tf.constant(x)).items()}
