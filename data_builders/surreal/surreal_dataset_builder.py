"""SURREAL (Varol et al., CVPR 2017) as TFDS records: one example per kept frame of each clip.

    tfds build surreal --imports=data_builders.surreal --manual_dir=<SURREAL root> \\
        --data_dir=<out> --config=every10 --file_format=array_record [--beam_pipeline_options=...]

The builder decodes the four files of every clip with `hgmt.sources.surreal`, makes the per-frame
records with `hgmt.data.records` (importable by Beam workers) and stores the raw frame, segments,
metric depth and annotations; crops, label maps and augmentation happen later in the
input pipeline, so one build serves every task subset. The config says which frames of a clip
are kept (all, every 10th and the middle one, or the middle one). Clips and frames that cannot
be used are skipped in the train and validation splits and kept as flagged placeholders in the
test split, as the reference test sets keep them; both are logged and counted (Beam counters on
the Beam path), and the counts written next to the dataset as `skipped.json`. The dataset's
description and citation are this folder's README.md and CITATIONS.bib, which TFDS reads;
docs/building.md is the build guide. `--manual_dir` must be on a local or mounted file system
(`split_clips`).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import logging
import multiprocessing
import os
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data_builders.surreal import process_pool
from hgmt import disk_space, stops
from hgmt.data import records
from hgmt.sources import camera, surreal

_HOMEPAGE = "https://www.di.ens.fr/willow/research/surreal/"


@dataclasses.dataclass
class SurrealConfig(tfds.core.BuilderConfig):
    """Which frames of each clip become examples: every `every`-th frame (0, k, 2k, ...) and
    always the middle frame ceil(T/2) of the test protocol; `middle_only` keeps just that."""

    every: int = 1
    middle_only: bool = False

    @property
    def frames(self) -> records.FrameSelection:
        """This config's selection, as `hgmt.data.records` takes it."""
        return records.FrameSelection(self.every, self.middle_only)


class Builder(tfds.core.GeneratorBasedBuilder):
    """DatasetBuilder for SURREAL (cmu part): splits train, validation, test from cmu/train,
    cmu/val, cmu/test (SURREAL's val clips are all test clips: docs/surreal_format.md)."""

    VERSION = tfds.core.Version("1.7.0")
    RELEASE_NOTES = {"1.0.0": "Initial release.",
                     "1.1.0": "Frames stored as JPEG (quality 90) instead of PNG: about a "
                              "quarter of the bytes, faster to decode; labels unchanged.",
                     "1.2.0": "depth_class: SURREAL's depth classes computed in float32 from "
                              "the float depth, as its loader does; classes made from the "
                              "millimetre depth differed on 0.5 % of foreground pixels.",
                     "1.3.0": "unusable: the test split keeps the frames and clips the "
                              "reference test sets keep but cannot use, as flagged "
                              "placeholders; other splits still skip them.",
                     "1.4.0": "unusable: the test split flags the frames the reference test "
                              "loaders cannot use (joints unset, 3D joints zero, getCenter "
                              "outside the image) and keeps the others whole; all splits "
                              "skip or flag unset and zero 3D joints.",
                     "1.5.0": "info_frames: the frames of the clip's _info.mat, whose "
                              "ceil(T/2) is the middle frame, as the reference loaders "
                              "count it (it was ceil(T/2) of the frames the four files "
                              "share); a middle frame beyond those is a flagged placeholder "
                              "(frame_missing) in the test split.",
                     "1.6.0": "A clip whose _info.mat holds no frames, which has no middle "
                              "frame, is a clip with an unreadable file: a flagged "
                              "placeholder (clip_unreadable_file) in the test split, skipped "
                              "and counted in the others; it was left out of every split "
                              "without a count.",
                     "1.7.0": "The test split's middle frames, which the reference protocols "
                              "evaluate, are stored as PNG: the decoded video frame, as the "
                              "reference code reads it; other frames stay JPEG (quality 90)."}
    BUILDER_CONFIGS = [
        SurrealConfig(name=name, every=records.BUILD_FRAMES[name].every,
                      middle_only=records.BUILD_FRAMES[name].middle_only, description=about)
        for name, about in (
            ("middle", "The middle frame ceil(T/2) of each clip (test protocol)."),
            ("every10", "Every 10th frame of each clip, plus its middle frame."),
            ("all", "Every frame of each clip."))
    ]
    DEFAULT_BUILDER_CONFIG_NAME = "every10"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    SURREAL needs a licence agreement and cannot be downloaded automatically. Request access at
    https://www.di.ens.fr/willow/research/surreal/data/ , download SURREAL_v1.tar.gz (86 GB),
    extract it on a local or mounted file system, and pass the folder that contains `cmu/`
    (with cmu/train, cmu/val, cmu/test) as --manual_dir. For demo data in the same layout:
    python -m hgmt.sources.synthetic --out_dir=DIR. The build guide: docs/building.md.
    """

    def __init__(self, *, file_format: str | tfds.core.FileFormat | None = None,
                 **kwargs: Any) -> None:
        super().__init__(file_format=file_format, **kwargs)
        # A builder is pickled as the arguments DatasetBuilder keeps (data_dir, config,
        # version): without file_format, the builders `tfds build --num-processes` sends to
        # its workers write tfrecord shards whatever --file_format says.
        self._original_state["file_format"] = file_format

    def _info(self) -> tfds.core.DatasetInfo:
        h, w = camera.IMAGE_HEIGHT, camera.IMAGE_WIDTH
        f32 = np.float32
        # The description and the citation: README.md and CITATIONS.bib beside this file.
        return self.dataset_info_from_configs(
            homepage=_HOMEPAGE,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(h, w, 3),
                                             doc="RGB frame decoded from the clip's H.264 mp4, "
                                                 "stored as JPEG (quality 90), but for the "
                                                 "test split's middle frames, stored as PNG "
                                                 "(lossless)"),
                "segm": tfds.features.Image(shape=(h, w, 1), encoding_format="png",
                                            doc="raw SMPL segment 0..24, 0 background"),
                "depth": tfds.features.Image(shape=(h, w, 1), dtype=np.uint16,
                                             encoding_format="png",
                                             doc="distance from the camera centre in millimetres, "
                                                 "0 background"),
                "depth_class": tfds.features.Image(
                    shape=(h, w, 1), encoding_format="png",
                    doc="SURREAL's depth class: 0 background, 1..19 = clamp(ceil((depth - "
                        "pelvis depth) / 45 mm), -9, 9) + 10, in float32 as "
                        "training/loader_SURREAL.lua computes it"),
                "joints2d": tfds.features.Tensor(shape=(24, 2), dtype=f32,
                                                 doc="24 SMPL joints, image pixels (u, v)"),
                "joints3d": tfds.features.Tensor(shape=(24, 3), dtype=f32,
                                                 doc="24 SMPL joints, world metres"),
                "cam_loc": tfds.features.Tensor(shape=(3,), dtype=f32,
                                                doc="camera location, world metres"),
                "zrot": tfds.features.Scalar(
                    dtype=f32, doc="the body's rotation about the vertical axis, radians"),
                "gender": tfds.features.Scalar(dtype=np.int32, doc="0 female, 1 male"),
                "pose": tfds.features.Tensor(
                    shape=(72,), dtype=f32,
                    doc="SMPL pose: 24 joints' axis-angle rotations, radians"),
                "shape": tfds.features.Tensor(shape=(10,), dtype=f32, doc="SMPL shape"),
                "sequence": tfds.features.Text(doc="CMU sequence, e.g. 01_01"),
                "clip": tfds.features.Text(doc="clip name, e.g. c0001"),
                "run": tfds.features.Text(doc="SURREAL run, e.g. run0"),
                "frame": tfds.features.Scalar(dtype=np.int32, doc="0-based frame index"),
                "unusable": tfds.features.Text(
                    doc="empty for a usable frame; else why the reference test loaders "
                        "cannot use it (frame_joints_unset, frame_joints3d_zero, "
                        "frame_centre_outside, frame_missing, "
                        "clip_missing_file, clip_unreadable_file): a placeholder of the test "
                        "split, black frame and background labels"),
                "num_frames": tfds.features.Scalar(
                    dtype=np.int32, doc="frames the clip's four files share (T)"),
                "info_frames": tfds.features.Scalar(
                    dtype=np.int32,
                    doc="frames of the clip's _info.mat (its zrot values), whose ceil(T/2) "
                        "is the middle frame, as the reference loaders count it"),
            }),
            supervised_keys=None,
        )

    def download_and_prepare(self, *args: Any, **kwargs: Any) -> None:
        """TFDS's build, stoppable without leaving partial output: TFDS writes into
        `<config>/incomplete.*` and removes it when an exception (Ctrl-C's included) leaves
        the build, but SIGTERM (`kill`, a scheduler's cancel) would kill the process where
        it stands and leave it, so here SIGTERM unwinds as Ctrl-C does
        (`stops.sigterm_cleans_up`), also where Beam's DirectRunner wrapped the stop in its
        RuntimeError (`stops.stop_behind`); a second Ctrl-C that cuts TFDS's removal short
        is held while this one finishes it. A full disk or quota is `disk_space.DiskFull` naming
        the build's folder, the space left and the fix. Once a Ctrl-C stopped the build, any
        error that leaves it is that KeyboardInterrupt (`stops.ctrl_c_is_the_stop`: C code
        it stopped may raise its own). As TFDS's own command (`tfds build`:
        `_is_tfds_command`) a Ctrl-C and a full disk end in one line, not a traceback (status
        130 and 1); in a worker of its `--num-processes` pool a Ctrl-C is
        `process_pool.BuildInterrupted`, which the pool returns to the command, where it and a
        full disk end in one line (`process_pool`)."""
        name = f"{self.name}/{self.builder_config.name}"
        stopped = (f"interrupted (Ctrl-C); nothing of the build of {name!r} was kept; run the "
                   f"same command again to build it")
        if process_pool.in_a_worker():
            with process_pool.worker_build(stopped, f"interrupted (Ctrl-C) before the build "
                                                    f"of {name!r} started; run the same "
                                                    f"command again to build it"):
                self._prepare_stoppably(*args, **kwargs)
            return
        try:
            with stops.ctrl_c_is_the_stop():
                self._prepare_stoppably(*args, **kwargs)
        except KeyboardInterrupt:
            if not _is_tfds_command():
                raise
            stops.end_interrupted(stopped)
        except disk_space.DiskFull as e:
            if not _is_tfds_command():
                raise
            # At once: TFDS's progress bars, closed as the interpreter exits, would clear
            # the line.
            stops.end_at_once(f"error: {e}", 1)

    def _prepare_stoppably(self, *args: Any, **kwargs: Any) -> None:
        """TFDS's build, its partial output removed however it stops
        (`download_and_prepare`): a Ctrl-C's KeyboardInterrupt, SIGTERM's unwinding, a full
        disk's `DiskFull` or another error leaves it."""
        self._partial = None
        # The space left once the build stopped: a write TFDS makes outside
        # `_download_and_prepare` (the build's metadata), which that one does not report.
        with stops.sigterm_cleans_up(), stops.stops_reach_the_main_thread(), \
                self._full_disk_reported(measured="once the build had stopped"):
            try:
                super().download_and_prepare(*args, **kwargs)
            except BaseException as e:
                with stops.stop_signals_held():
                    self._remove_partial_build()
                stop = stops.stop_behind(e)
                if stop is None or stop is e:
                    raise
                raise stop from None  # not Beam's RuntimeError in its place

    def _full_disk_reported(self, measured: str = "") -> contextlib.AbstractContextManager:
        """`disk_space.reported` of this build: a full disk or quota is `DiskFull` naming
        the build's folder (`<data_dir>/surreal/<config>/<version>`, beside the
        `incomplete.*` one TFDS writes) and the fix; `measured`: as there."""
        name = f"{self.name}/{self.builder_config.name}"
        return disk_space.reported(
            os.fspath(self.data_path.parent / str(self.version)), f"dataset {name!r}",
            then="Nothing of this build was kept: free space (or raise the quota) and run "
                 "the same command again", measured=measured)

    def _remove_partial_build(self) -> None:
        """Removes this build's `incomplete.*` folder where TFDS's own removal was cut short
        (a second Ctrl-C during it)."""
        if self._partial is None:
            return
        try:
            if self._partial.exists():
                self._partial.rmtree()
        except OSError as e:  # the error that stopped the build stays the one raised
            logging.warning("%s: could not remove this build's partial output (%s); remove "
                            "it before building again", self._partial, e)

    def _download_and_prepare(self, dl_manager: tfds.download.DownloadManager,
                              download_config: tfds.download.DownloadConfig) -> None:
        # Here TFDS has pointed the builder at its `incomplete.*` folder.
        self._partial = self.data_path
        # The space left as the write failed, before TFDS removes the partial build.
        with self._full_disk_reported():
            self._build(dl_manager, download_config)

    def _build(self, dl_manager: tfds.download.DownloadManager,
               download_config: tfds.download.DownloadConfig) -> None:
        """The build, in TFDS's `incomplete.*` folder: each split's records and the counts
        of what was skipped (`skipped.json`)."""
        if download_config.manual_dir:  # before TFDS looks into it
            check_file_system(download_config.manual_dir)
            if os.path.isfile(os.path.expanduser(os.fspath(download_config.manual_dir))):
                raise NotADirectoryError(
                    f"--manual_dir={download_config.manual_dir}: a file (the downloaded "
                    f"archive?); extract it (tar xzf SURREAL_v1.tar.gz) and give the folder "
                    f"that contains cmu/")
        _warn_of_partial_builds(self.data_path)
        self._use_beam = bool(download_config.beam_options or download_config.beam_runner)
        self._skipped = {}
        super()._download_and_prepare(dl_manager, download_config)
        if self._use_beam:  # each split's pipeline branch wrote its counts to a part file
            for split in SPLITS:
                part = self.data_path / f"skipped-{split}.json"
                self._skipped[split] = json.loads(part.read_text())
                part.unlink()
        summary = {split: dict(sorted(c.items())) for split, c in self._skipped.items()}
        logging.info("SURREAL build summary (skipped / counted): %s", summary)
        (self.data_path / "skipped.json").write_text(json.dumps(summary, indent=1))

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = dl_manager.manual_dir
        if not (root / "cmu").exists():
            given = _where_cmu_is(root)
            raise FileNotFoundError(
                f"{root}/cmu not found: --manual_dir must be the folder that contains cmu/ "
                f"(cmu/train, cmu/val, cmu/test){given}.\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        stems = split_clips(root)
        return {split: self._generate_examples(stems[split], split) for split in SPLITS}

    def _generate_examples(self, stems: list[str], split: str):
        test = split == "test"
        frames = dataclasses.replace(self.builder_config.frames, keep_unusable=test,
                                     lossless_middle=test)
        if getattr(self, "_use_beam", False):
            return records.beam_examples(stems, frames,
                                         str(self.data_path / f"skipped-{split}.json"))
        counts = self._skipped.setdefault(split, collections.Counter())
        examples = records.python_examples(stems, frames, counts, f"split {split!r}")
        return _stoppable_in_a_pool_worker(examples) if process_pool.in_a_worker() else examples


SPLITS = tuple(surreal.SPLIT_DIRS)  # train, validation, test


def _stoppable_in_a_pool_worker(examples: Iterator[Any]) -> Iterator[Any]:
    """`examples`, the build stopped between two of them once a Ctrl-C reached this worker
    of `tfds build --num-processes`' pool (`process_pool.stop_if_interrupted`)."""
    for example in examples:
        process_pool.stop_if_interrupted()
        yield example


def _warn_of_partial_builds(building: epath.Path) -> None:
    """Warns of each `incomplete.*` folder beside `building` (this build's own, in its
    config's folder) but it: the partial output of a build that was killed outright (SIGKILL:
    out of memory, a scheduler's limit), which TFDS never reads nor removes, or of one still
    running. A folder that cannot be listed (a bucket's error) gives no warning: the build
    goes on."""
    try:
        others = sorted(p for p in building.parent.glob("incomplete.*") if p != building)
    except Exception:  # noqa: BLE001  (a warning only)
        return
    for other in others:
        logging.warning("%s: the partial output of an earlier build that was killed (or of "
                        "one still running), never read as a build; delete it once no build "
                        "is writing there", other)


def _is_tfds_command() -> bool:
    """Whether this process is TFDS's command line (`tfds build`, whose script calls
    `launch_cli`, or `python -m tensorflow_datasets.scripts.cli.main`), not a caller of the
    builder in Python (hgmt's demo, a test, a notebook) that handles the error itself, nor a
    worker of the command's process pool (`tfds build --num-processes=N`, one config each),
    whose error the pool returns to the command."""
    if multiprocessing.parent_process() is not None:
        return False
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    launch = getattr(main, "launch_cli", None)
    return (getattr(spec, "name", "") or "").startswith("tensorflow_datasets.scripts.cli") or (
        getattr(launch, "__module__", "") or "").startswith("tensorflow_datasets.scripts.cli")


def _where_cmu_is(root: epath.Path) -> str:
    """The hint for a --manual_dir without cmu/ in it, where the folder that holds cmu/ is
    near: `root` is cmu/ itself, one of its split folders, or a folder one level above."""
    if root.name == "cmu" and (root / "train").exists():
        return f"; --manual_dir names cmu/ itself: give its parent, --manual_dir={root.parent}"
    if root.name in surreal.SPLIT_DIRS.values() and root.parent.name == "cmu":
        return (f"; --manual_dir names the split folder cmu/{root.name}: give the folder two "
                f"levels up, --manual_dir={root.parent.parent}")
    below = sorted(p.parent for p in root.glob("*/cmu") if p.is_dir())
    if below:
        return f"; cmu/ is one level down: --manual_dir={below[0]}"
    return ""


def check_file_system(manual_dir: epath.PathLike) -> None:
    """ValueError naming `manual_dir` and the fix when it is a URL (gs://, s3://, ...): the
    clips are listed (`surreal.find_clips`) and read (`hgmt.sources.surreal`) with Python's
    own file functions, which see a local or mounted file system only, so on an object store
    the build would find no clip and blame the extraction."""
    path = os.fspath(manual_dir)
    if "://" in path:
        raise ValueError(
            f"--manual_dir={path} is not on a local or mounted file system: the builder lists "
            f"and reads SURREAL's clips with Python's file functions, which do not read "
            f"object stores. Mount it (e.g. with gcsfuse, at the same path on every machine "
            f"that builds) and pass the mount point, or copy SURREAL to local disk")


def split_clips(root: epath.Path) -> dict[str, list[str]]:
    """{split: its clip stems} under `root` (`surreal.find_clips`), which must be on a local
    or mounted file system (`check_file_system`). Every split is built, and TFDS fails a split
    without examples only after writing the splits before it (hours on SURREAL), so a split
    folder that is missing or holds no clip (no _info.mat: a partial extraction) stops the
    build here, before anything is written, with one FileNotFoundError naming every such
    folder and the fix."""
    check_file_system(root)
    stems, problems, misnamed = {}, [], []
    for split in SPLITS:
        folder = root / "cmu" / surreal.SPLIT_DIRS[split]
        stems[split] = surreal.find_clips(str(root), split)
        for stem in stems[split]:
            try:
                surreal.parse_stem(stem)
            except ValueError as e:
                misnamed.append(str(e))
        if not folder.is_dir():
            problems.append(f"{folder} is missing")
        elif not any(epath.Path(surreal.clip_paths(stem)["info"]).exists()
                     for stem in stems[split]):
            problems.append(f"{folder} holds no clip (no run*/<seq>/<seq>_c<NNNN>_info.mat)")
        elif split != "test" and not any(
                all(epath.Path(p).exists() for p in surreal.clip_paths(stem).values())
                for stem in stems[split]):
            # Every clip lacks a file: all would be skipped, and TFDS fails the empty split.
            problems.append(f"{folder} holds no clip with all four files (.mp4, _info.mat, "
                            f"_depth.mat, _segm.mat)")
    if misnamed:
        raise ValueError(
            f"SURREAL under --manual_dir={root} holds clips named unlike their sequence "
            f"folder, which SURREAL's never are: {'; '.join(misnamed[:5])}"
            f"{f' and {len(misnamed) - 5} more' if len(misnamed) > 5 else ''}. Nothing was "
            f"built. Rename or remove them (<seq>/<seq>_c<NNNN>: docs/surreal_format.md)")
    if problems:
        raise FileNotFoundError(
            f"SURREAL under --manual_dir={root} is incomplete: {'; '.join(problems)}. Nothing "
            f"was built. The build needs all three split folders, laid out as "
            f"cmu/{{train,val,test}}/run{{0,1,2}}/<seq>/<seq>_c<NNNN>{{.mp4,_info.mat,"
            f"_depth.mat,_segm.mat}} (docs/surreal_format.md); a partial extraction lacks "
            f"some. Extract SURREAL_v1.tar.gz again, completely, and pass the folder that "
            f"contains cmu/ as --manual_dir")
    return stems


# As TFDS's command, which imports this module (`--imports`) before it starts the pool of
# `--num-processes=N`: the pool's stops end the command in one line, as the builds in the
# command's own process do.
if _is_tfds_command():
    process_pool.as_tfds_command()
