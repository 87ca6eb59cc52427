"""The built TFDS splits hgmt reads: finding and opening one (`open_split`; `built_split` and
`source_of` for a caller that checks the shards itself), with errors that name the fix where
the split is not built, the `data_dir` is not the folder TFDS takes, or a copy was cut short
(`broken_build`, `built_configs`), and the checks of what a build holds against the builder
version that added it (`check_features`, `check_reference_flags`, `NotInBuild`). The split
is read from its metadata files (`dataset_info.json`, `features.json`), so neither the
builder's code nor TensorFlow is needed. Its shards' checks are `hgmt.data.shards`; the
loader that reads the records is `hgmt.data.input_pipeline`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Sequence
from typing import TYPE_CHECKING

from hgmt import paths
from hgmt.data import records, shards, storage
from hgmt.sources import surreal

if TYPE_CHECKING:  # TensorFlow Datasets is imported where a split is opened
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.data_sources.array_record import ArrayRecordDataSource

    from hgmt.data.tf_example import ParsedSource


class NotInBuild(ValueError):
    """A built dataset does not hold what is asked of it: frames it does not store, features
    an older build lacks, frames of a builder config hgmt does not know. The message names
    the build and the fix (another build, or other frames)."""


# The features a build must hold (`check_features`): those the crop and the task labels are
# made from (the image, its three label maps, the joints and the camera), those that select
# the frames (frame, num_frames) and the flag of a test split's unusable frames (unusable),
# which the training loader skips and the crop marks.
REQUIRED_FEATURES = ("image", "segm", "depth", "joints2d", "joints3d", "cam_loc", "frame",
                     "num_frames", "depth_class", "unusable")
# The builder version that added each feature a build may lack.
_ADDED_IN = {"depth_class": "1.2.0", "unusable": "1.3.0"}
# The builder version whose test split flags the frames the reference loaders cannot use
# (`frame_selection.reference_frame_problem`); older builds flagged hgmt's
# (`frame_selection.frame_problem`).
REFERENCE_FLAGS_SINCE = "1.4.0"
# The builder version whose test split stores the middle frames as PNG, the decoded video frame
# the reference loaders read; older builds stored them as JPEG (quality 90).
LOSSLESS_TEST_FRAMES_SINCE = "1.7.0"


def check_reference_flags(source: ArrayRecordDataSource | ParsedSource, dataset: str,
                          data_dir: str) -> None:
    """Warns, with the command that rebuilds it, that a test split built before
    REFERENCE_FLAGS_SINCE flags hgmt's unusable frames, not the reference loaders' (a few
    frames of the reference test set evaluated differently), and that one built before
    LOSSLESS_TEST_FRAMES_SINCE holds its middle frames as JPEG, not the decoded video frame
    the reference code reads (nearly every pixel a few grey levels off)."""
    import tensorflow_datasets as tfds

    version = tfds.core.Version(str(source.dataset_info.version))
    differences = []
    if version < tfds.core.Version(REFERENCE_FLAGS_SINCE):
        differences.append(f"before {REFERENCE_FLAGS_SINCE}, its test split flags the frames "
                           f"hgmt cannot use, not those the reference loaders cannot use, so a "
                           f"reference protocol may treat a few frames otherwise than the "
                           f"reference code")
    if version < tfds.core.Version(LOSSLESS_TEST_FRAMES_SINCE):
        differences.append(f"before {LOSSLESS_TEST_FRAMES_SINCE}, its test frames are JPEG "
                           f"(quality 90), not the decoded video frames the reference code "
                           f"reads, so nearly every input pixel differs from the reference's, "
                           f"by a few grey levels on average")
    if differences:
        logging.warning("dataset %r under %s was built by SURREAL builder version %s: %s. "
                        "Rebuild it: %s", dataset, data_dir, version, "; ".join(differences),
                        shards.build_command(dataset, data_dir))


def check_features(info: tfds.core.DatasetInfo, dataset: str, data_dir: str) -> None:
    """NotInBuild naming what is missing when a built dataset (its tfds DatasetInfo `info`)
    lacks a feature the crop and the task labels are made from; a SURREAL build older than
    the builder version that added it (`_ADDED_IN`) is told to rebuild."""
    missing = [f for f in REQUIRED_FEATURES if f not in info.features]
    if missing and set(missing) <= set(_ADDED_IN):
        since = max(_ADDED_IN[f] for f in missing)
        raise NotInBuild(
            f"dataset {dataset!r} under {data_dir} was built by SURREAL builder version "
            f"{info.version}, before {since}, and lacks {', '.join(missing)} (SURREAL's exact "
            f"depth labels, the flagged test frames). Rebuild it: "
            f"{shards.build_command(dataset, data_dir)}")
    if missing:
        raise NotInBuild(
            f"dataset {dataset!r} under {data_dir} lacks the features {', '.join(missing)} that "
            f"the crop and the task labels are made from; use a SURREAL build (config.dataset="
            f"'surreal/all', 'surreal/every10' or 'surreal/middle')")


def _list_folders(folder: str | os.PathLike, names: Sequence[str]) -> None:
    """Lists `folder` (a path or its name), the folders `names` below it, and the folders in
    the last one (a built dataset's versions), down to the first that is missing: raises the
    error a listing meets, an I/O error or a refused access."""
    from etils import epath

    try:
        entries = list(epath.Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return
    if names:
        _list_folders(epath.Path(folder) / names[0], names[1:])
        return
    for entry in entries:
        if entry.is_dir():
            list(entry.iterdir())


def _expanded(data_dir: str) -> str:
    """`data_dir` with a leading `~` as the home folder (TFDS takes it for a folder of that
    name); an object store's URL as it is."""
    return data_dir if paths.is_url(data_dir) else os.path.expanduser(data_dir)


def _not_built(dataset: str, data_dir: str, split: str, e: Exception) -> FileNotFoundError:
    """The error for `split` of `dataset` missing under `data_dir`: the build command, and
    where other configs of the dataset are built there, the `--config.dataset` that selects
    each (the configs' default is `surreal/every10`; a full build is often another). Of
    TFDS's own error only the first sentence is kept (the rest is its advice on `tfds.load`,
    some of which does not apply)."""
    others = built_configs(dataset, data_dir)
    choose = (f"; or use a build there: {' or '.join(f'--config.dataset={o}' for o in others)}"
              if others else "")
    said = " ".join(str(e).split())
    said = said[:said.find(". ") + 1 or None][:300].rstrip(".")
    return FileNotFoundError(
        f"dataset {dataset!r} split {split!r} is not built under data_dir={data_dir} "
        f"({type(e).__name__}: {said}). Build it with: "
        f"{shards.build_command(dataset, data_dir)}{choose}")


_METADATA = ("dataset_info.json", "features.json")  # a TFDS build's files besides its shards


def broken_build(dataset: str, data_dir: str) -> str | None:
    """Why `dataset` cannot be opened under the local folder `data_dir` when TFDS's own error
    would mislead (None otherwise, and for an object store's URL): `data_dir` does not exist or
    is a file; it is the dataset's own folder (<D>/surreal, <D>/surreal/all or a version
    folder) rather than D; or the config's build lacks a metadata file or holds one that does
    not parse, as a copy cut short leaves it (TFDS reports a missing `dataset_info.json` as an
    I/O error and a missing `features.json` as no dataset, and `tfds build` then reuses the
    broken folder or fails on it). The version judged is the one TFDS opens: the one asked
    for, else the highest. A folder that cannot be read is left to TFDS's error (a refused
    access, an I/O error: `storage.storage_fault`)."""
    if paths.is_url(data_dir):
        return None
    try:
        return _broken_local_build(dataset, data_dir)
    except OSError:
        return None


def _broken_local_build(dataset: str, data_dir: str) -> str | None:
    """`broken_build` of a local `data_dir`; OSError where a folder or file does not read."""
    name, _, rest = dataset.partition("/")
    config, _, version = rest.partition(":")
    try:
        is_folder = stat.S_ISDIR(os.stat(data_dir).st_mode)
    except FileNotFoundError:
        return (f"data_dir={data_dir}: does not exist; give --config.data_dir=<the folder the "
                f"dataset was built or copied into, the one that holds {name}/>, or build it "
                f"there with: "
                f"{shards.build_command(dataset, data_dir)}")
    except NotADirectoryError:  # a file on the way
        is_folder = False
    if not is_folder:
        return (f"data_dir={data_dir}: is a file or lies under one; give "
                f"--config.data_dir=<the folder the dataset was built or copied into, the one "
                f"that holds {name}/>")
    if os.path.isdir(os.path.join(data_dir, name)):
        return _broken_version(dataset, data_dir, os.path.join(data_dir, name, config), version)
    # <D>/surreal, <D>/surreal/all or <D>/surreal/all/<version> given for D.
    inside = os.path.abspath(data_dir).split(os.sep)
    for up in range(1, min(4, len(inside))):  # no further up than the root
        above = os.sep.join(inside[:-up]) or os.sep
        if inside[-up] == name and os.path.isdir(os.path.join(above, name, config)):
            return (f"data_dir={data_dir}: a folder of the dataset itself, not the one "
                    f"TFDS takes, which holds {name}/; give --config.data_dir={above}")
    return None


def _broken_version(dataset: str, data_dir: str, folder: str, version: str) -> str | None:
    """Why the version folder of `dataset`'s config `folder` that TFDS opens (`version`, else
    the highest) cannot be read for its metadata; None where it can or there is none."""
    versions = [v for v in (os.listdir(folder) if os.path.isdir(folder) else ())
                if _VERSION.fullmatch(v) and os.path.isdir(os.path.join(folder, v))]
    if version:
        versions = [v for v in versions if v == version]
    if not versions:
        return None
    v = max(versions, key=lambda v: tuple(map(int, v.split("."))))
    build = os.path.join(folder, v)
    missing = [f for f in _METADATA if not _is_file(os.path.join(build, f))]
    if missing:
        broken = f"lacks its {' and '.join(missing)} (a copy cut short or made without it)"
    else:
        try:
            for f in _METADATA:
                with open(os.path.join(build, f), encoding="utf-8") as file:
                    json.load(file)
            return None
        except ValueError as e:
            broken = f"holds a {f} that does not parse as JSON ({e}: a copy cut short)"
    return (f"the build of {dataset!r} under data_dir={data_dir}, {build}, {broken}. Copy the "
            f"folder again from where the dataset was built, or remove {build} and rebuild it: "
            f"{shards.build_command(dataset, data_dir)}")


def _is_file(path: str) -> bool:
    """Whether `path` is a file (False: nothing or a folder there); OSError where it cannot be
    told (a refused access, an I/O error), which `os.path.isfile` would take for no file."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except (FileNotFoundError, NotADirectoryError):
        return False


def built_configs(dataset: str, data_dir: str) -> list[str]:
    """The builds under `data_dir` of `dataset`'s builder ('surreal/<config>[:version]') other
    than the one asked for, as datasets, sorted: the other configs built ('surreal/all'), and
    where a version is asked for, the config's other built versions ('surreal/every10:1.5.0').
    A build is a version folder (TFDS's layout: <data_dir>/<name>/<config>/<x.y.z>/) holding
    its `dataset_info.json`; TFDS's unfinished `incomplete.*` folders are not. None for a
    dataset without configs, or where the folders cannot be listed (a suggestion only: any
    error of the file system, a bucket's included, gives none)."""
    from etils import epath

    name, _, rest = dataset.partition("/")
    config, _, version = rest.partition(":")
    if not config:
        return []
    found = []
    try:
        for folder in sorted(epath.Path(data_dir, name).iterdir()):
            if not folder.is_dir():
                continue
            versions = sorted(v.name for v in folder.iterdir()
                              if _VERSION.fullmatch(v.name) and (v / "dataset_info.json").exists())
            if folder.name != config and versions:
                found.append(f"{name}/{folder.name}")
            elif folder.name == config and version:
                found += [f"{name}/{config}:{v}" for v in versions if v != version]
    except Exception:  # noqa: BLE001  (tf.io.gfile's errors on a bucket are no OSError)
        return []
    return found


_VERSION = re.compile(r"\d+\.\d+\.\d+")  # a TFDS version folder's name


def built_split(dataset: str, data_dir: str, split: str) -> tfds.core.DatasetBuilder:
    """The tfds read-only builder of a built split, read from its metadata files
    (`dataset_info.json`, `features.json`) only, its shards unread: FileNotFoundError naming
    the build command when the split is not built, `shards.WrongFileFormat` when it was not
    built as array_record, `shards.StorageFault` when its storage does not give those files
    after `storage.RETRY_DELAYS_S`."""
    from tensorflow_datasets.core import read_only_builder, registered

    if dataset.split("/")[0] == "surreal" and split not in surreal.SPLIT_DIRS:
        # No build has it: not a build command's matter ('val' is SURREAL's folder name).
        raise ValueError(f"dataset {dataset!r} has no split {split!r}: its splits are "
                         f"{', '.join(surreal.SPLIT_DIRS)}")
    data_dir = _expanded(data_dir)
    if broken := broken_build(dataset, data_dir):
        raise FileNotFoundError(broken)

    def built() -> tfds.core.DatasetBuilder:
        try:
            builder = read_only_builder.builder_from_files(dataset, data_dir=data_dir)
        except registered.DatasetNotFoundError:
            # TFDS reports a folder it cannot list or read (an I/O error, permissions) as no
            # dataset: listing the dataset's folders here raises that error.
            _list_folders(data_dir, dataset.split(":")[0].split("/"))
            raise
        if split not in builder.info.splits:
            raise KeyError(f"no split {split!r} (built: {', '.join(sorted(builder.info.splits))})")
        return builder

    try:
        builder = storage.with_retries(built, f"opening dataset {dataset!r} under {data_dir}")
    except storage.GaveUp as e:
        if storage.storage_fault(e.error):
            raise shards.StorageFault.of(f"dataset {dataset!r} split {split!r} under "
                                         f"data_dir={data_dir}", e, data_dir) from e.error
        raise _not_built(dataset, data_dir, split, e.error) from e.error
    shards.check_file_format(builder, split, dataset, data_dir)
    return builder


def open_split(dataset: str, data_dir: str, split: str, decode_images: bool = False,
               features: Sequence[str] | None = None,
               ) -> ArrayRecordDataSource | ParsedSource:
    """`tfds` data source of a built split (`built_split`), with a clear error when it is
    missing, when one of its shard files is missing or truncated, when it was built in
    another file format than array_record, or when its storage does not give its files after
    `storage.RETRY_DELAYS_S` (`hgmt.data.shards`). The split is read from its
    files (`dataset_info.json`, `features.json`), so neither the builder's code nor TensorFlow
    is needed: an accelerator host needs tensorflow-datasets, array_record and grain only. The
    image features stay encoded bytes (`cropping.crop_example` decodes them with OpenCV, faster than
    TFDS) unless `decode_images`; the records are then parsed by `tf_example.parsed`, with
    only the `features` named (default all)."""
    data_dir = _expanded(data_dir)
    builder = built_split(dataset, data_dir, split)
    shards.check_split(builder, split, dataset, data_dir)
    return source_of(builder, split, dataset, data_dir, decode_images, features)


def source_of(builder: tfds.core.DatasetBuilder, split: str, dataset: str, data_dir: str,
              decode_images: bool = False, features: Sequence[str] | None = None,
              ) -> ArrayRecordDataSource | ParsedSource:
    """`open_split`'s data source of `split` of `builder` (`built_split`), its shards not
    checked: for a caller that checks them itself (`hgmt.data.check` reads the intact shards
    of a split whose other shards are damaged). Its shards are opened when first read."""
    import tensorflow_datasets as tfds

    from hgmt.data import tf_example

    decoders = None if decode_images else {k: tfds.decode.SkipDecoding()
                                           for k in records.IMAGE_FEATURES}
    try:
        source = builder.as_data_source(split, decoders=decoders)
    except Exception as e:
        raise _not_built(dataset, data_dir, split, e) from e
    check_features(source.dataset_info, dataset, data_dir)
    return source if decode_images else tf_example.parsed(source, features)
