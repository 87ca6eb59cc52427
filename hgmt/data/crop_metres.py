"""How many metres a training window spans at the person, measured on a run's training
split: the scale prior of 3D decoding on any image, where the person's distance is read from
their window's size (`hgmt.inference.predictor.Predictor`).

The trainer measures it as training starts (`record_in_workdir`) and keeps it in the workdir
(`workdirs.crop_metres_file`); `read` gives the file back, checked. Prediction and export take
it from there (`hgmt.inference.crop_scale`, which also holds the figure assumed for a workdir
without it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from etils import epath

from hgmt import console, disk_space, paths, workdirs
from hgmt.data import builds, cropping, record_reads, records
from hgmt.sources import body, camera, frame_selection, surreal
from hgmt.tasks import spec

# Training records measured as training starts (evenly spaced over the split; all of a
# smaller one): reading their annotations takes seconds, and the mean's standard error is
# about 1 % of it at the spread of demo and SURREAL clips (~0.2 m).
MEASURED_RECORDS = 400
# What the figure is, as the workdir's file states it.
DEFINITION = ("mean over the split's records of side_px * pelvis_depth_m / focal_px: the "
              "side of training's window ('window': cropping.window_box of the 16 "
              "joints, before augmentation's scale) at the pelvis's camera depth, SURREAL's "
              "focal length")
_FEATURES = ("joints2d", "joints3d", "cam_loc")  # what `record_metres` reads of a record


def record_metres(record: Mapping[str, np.ndarray], window: str = "hgmt") -> float:
    """A SURREAL record (or one frame of a _info.mat: 'joints2d' (24,2) px, 'joints3d' (24,3)
    world metres, 'cam_loc' (3,) metres) -> the metres its training window
    (`cropping.TRAIN_WINDOWS`) spans at the pelvis's depth: the window's side in px
    (`cropping.window_box`, as `crop_with` cuts it) times the pelvis's camera depth
    (`spec.pelvis_depth`, pose3d's and depth's reference) over SURREAL's focal length in px."""
    joints = np.asarray(record["joints2d"])[body.SMPL_TO_JOINT].astype(np.float64)
    _, side = cropping.window_box(
        joints, cropping.check_window(window, cropping.TRAIN_WINDOWS))
    # Only the record's joints are read: no map is warped, so no label frame is needed.
    crop = spec.Crop(dict(record), np.eye(2, 3), 0, False, records.decoded)
    depth = float(spec.pelvis_depth(crop)["pelvis_depth"])
    return side * depth / float(camera.INTRINSICS[0, 0])


def kept_frames(info: surreal.ClipInfo) -> list[int]:
    """A clip's _info.mat -> the indices of the frames the builder keeps (no
    `frame_selection.frame_problem`: those training skips and hgmt's metrics leave out), in
    order."""
    return [t for t in range(info.num_frames)
            if frame_selection.frame_problem(info.joints2d[t], info.joints3d[t]) is None]


def info_records(info: surreal.ClipInfo) -> list[dict]:
    """A clip's _info.mat -> one record of `record_metres`'s fields per frame the builder
    keeps (`kept_frames`), in frame order."""
    return [{"joints2d": info.joints2d[t], "joints3d": info.joints3d[t],
             "cam_loc": info.cam_loc} for t in kept_frames(info)]


def summary(metres: Sequence[float]) -> dict:
    """Per-record metres -> {'crop_metres' the mean, 'standard_deviation' (n - 1),
    'standard_error' of the mean (as if the records were independent: frames of one clip are
    not, so it is a lower bound), 'records'}."""
    m = np.asarray(metres, np.float64)
    sd = float(m.std(ddof=1)) if len(m) > 1 else 0.0
    return {"crop_metres": float(m.mean()), "standard_deviation": sd,
            "standard_error": sd / float(np.sqrt(len(m))), "records": len(m)}


def measure(dataset: str, data_dir: str, split: str = "train",
            records: int = MEASURED_RECORDS, window: str = "hgmt") -> dict:
    """The metres the `window`'s training crops span (`record_metres`) over `records` records
    of a built split, evenly spaced (all of a smaller split; a damaged record is left out) ->
    `summary` with 'split_records' (the split's size), 'dataset', 'data_dir', 'split',
    'window', 'definition'.
    ValueError when no record reads."""
    source = builds.open_split(dataset, data_dir, split, features=_FEATURES)
    total = len(source)
    picked = np.unique(np.linspace(0, total - 1, min(records, total)).round().astype(int))
    metres = []
    for i in picked:
        try:
            metres.append(record_metres(record_reads.read(source, int(i)), window))
        except record_reads.DamagedRecord:
            continue
    if not metres:
        raise ValueError(f"none of the {len(picked)} records of split {split!r} of dataset "
                         f"{dataset!r} under {data_dir} read; rebuild it")
    return {**summary(metres), "split_records": total, "dataset": dataset,
            "data_dir": data_dir, "split": split, "window": window, "definition": DEFINITION}


def save(workdir: str, measured: dict) -> None:
    """Writes `measure`'s result into the workdir's file, atomically."""
    epath.Path(paths.absolute(workdir)).mkdir(parents=True, exist_ok=True)
    disk_space.write_atomically(workdirs.crop_metres_file(workdir),
                                lambda f: f.write(json.dumps(measured, indent=1) + "\n"))


def read(workdir: str) -> dict | None:
    """The workdir's file, None without one; DamagedRunFile when it holds no positive
    'crop_metres'."""
    path = workdirs.crop_metres_file(workdir)
    if not epath.Path(path).exists():
        return None
    fix = (f"Delete it and rerun hgmt.main on {workdir} with the run's --config: it measures "
           f"the figure again on the training data as it starts")
    stored = workdirs.read_json_object(path, fix)
    value = (stored or {}).get("crop_metres")
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not np.isfinite(value) or value <= 0):
        raise workdirs.DamagedRunFile(f"{path} holds no positive number 'crop_metres' (the "
                                      f"file was edited or damaged). {fix}")
    return stored


def record_in_workdir(dataset: str, data_dir: str, workdir: str, window: str = "hgmt") -> None:
    """The trainer's measurement as training starts (process 0, once it holds the workdir
    lock, so that a trainer refused the workdir leaves the running one's file alone):
    `measure` the training split's `window` crops and `save` it into the workdir, unless the
    workdir holds a figure measured on this dataset and window already (a file without a
    'window' is hgmt's; a damaged file is measured again). It never
    stops training: a split that is not built, or a workdir that cannot be written, is left
    to the trainer, whose checks report it (in a multi-host job, to every process); any other
    failure is warned about, and prediction on the workdir then falls back to hgmt's default
    (`hgmt.inference.crop_scale.of_workdir`)."""
    try:
        try:
            stored = read(workdir)
        except workdirs.DamagedRunFile:
            stored = None
        if stored and (stored.get("dataset"), stored.get("data_dir"),
                       stored.get("window", "hgmt")) == (dataset, data_dir, window):
            return
        measured = measure(dataset, data_dir, window=window)
        save(workdir, measured)
    except (FileNotFoundError, NotADirectoryError) as e:
        logging.info("the metres a training window spans are not measured: %s", e,
                     extra=console.VERBOSE)
        return
    except Exception as e:  # noqa: BLE001  (the trainer goes on; prediction falls back)
        logging.warning("the metres a training window spans are not measured (%s: %s): 3D "
                        "prediction on %s will assume hgmt's default "
                        "(hgmt.inference.crop_scale.CROP_METRES)", type(e).__name__, e, workdir)
        return
    logging.info("a training window spans %.3f m at the person (standard error %.3f m; "
                 "%d of the %d training records): %s", measured["crop_metres"],
                 measured["standard_error"], measured["records"], measured["split_records"],
                 workdirs.crop_metres_file(workdir))
