"""How far each joint moves in depth relative to the pelvis: demo clips beside real SURREAL.

    python3 experiments/limb_depth.py --clips=runs/study_data/surreal/cmu/test \\
        --clips=/path/to/SURREAL/cmu/test/run0/01_01

For each `--clips` (a directory searched recursively for `*_info.mat`, or one such file)
prints JSON: per joint of hgmt's 16, the standard deviation in mm of its camera depth minus
the pelvis's, within a clip (the mean over clips) and over all frames. This is what the depth
bins (45 mm) must resolve on the limbs; a demo whose limbs swing further in depth than
SURREAL's asks more of the depth head than SURREAL does.

It also gives the 3D pose error (hgmt's MJD: mean over the 16 joints of the pelvis-aligned
Euclidean error, mm) of predictors that place every joint exactly in the image and guess its
depth: `pelvis_plane` (every joint at the pelvis's depth), `mean_offset` (each joint at its
mean depth relative to the pelvis over the same clips: an average pose, no limb depth) and
`joint_bins` (the true depth rounded to pose3d's 45 mm bins: the representation's floor). What
a 3D head must learn beyond `mean_offset` is the limbs' depth in each frame.
"""

from __future__ import annotations

import glob
import json
import os
import sys
from collections.abc import Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402

from hgmt import cli  # noqa: E402


def camera_joints(path: str) -> np.ndarray:
    """One `_info.mat` -> (T,16,3) hgmt's joints in camera metres."""
    from hgmt.sources import body, camera, surreal

    info = surreal.load_info(path)
    return camera.world_to_camera(info.joints3d[:, body.SMPL_TO_JOINT], info.cam_loc)


def joints_batch(cam: np.ndarray) -> dict:
    """(N,16,3) camera joints -> the entries of a batch that hgmt's pose3d functions read:
    'joints3d', and 'pelvis_depth' the pelvis's camera depth."""
    from hgmt.sources import body

    return {"joints3d": cam, "pelvis_depth": cam[:, body.PELVIS, 2]}


def relative_depth(path: str) -> np.ndarray:
    """One `_info.mat` -> (T,16) camera depth of hgmt's joints minus the pelvis's, metres."""
    from hgmt.tasks import pose3d

    return np.asarray(pose3d.relative_depth(joints_batch(camera_joints(path))))


def mjd_mm(cam: np.ndarray, dz: np.ndarray) -> np.ndarray:
    """(N,16,3) true camera joints, (N,16) guessed depth relative to the pelvis (m) -> (16,)
    hgmt's MJD per joint (mm) of the joints back-projected from their true pixels."""
    from hgmt.sources import body, camera
    from hgmt.tasks import pose3d

    uv = camera.project_camera(cam)
    guess = camera.backproject(uv, cam[:, body.PELVIS:body.PELVIS + 1, 2] + dz)
    stats = pose3d.metric_stats({"joints3d_rel_mm": pose3d.root_relative_mm(guess)},
                                joints_batch(cam))
    return np.array(list(pose3d.summarize(stats)["mjd_mm_per_joint"].values()))


def depth_free_mjd(paths: list[str]) -> dict:
    """{predictor: {'mjd_mm', 'per_joint_mm'}} over every frame of the clips (module
    docstring)."""
    from hgmt.sources import body
    from hgmt.tasks import common, pose3d

    batch = joints_batch(np.concatenate([camera_joints(p) for p in paths]))
    cam, dz = batch["joints3d"], np.asarray(pose3d.relative_depth(batch))
    guesses = {"pelvis_plane": np.zeros_like(dz),
               "mean_offset": np.broadcast_to(dz.mean(0), dz.shape),
               "joint_bins": np.asarray(common.joint_bin_depth(pose3d.joint_bins(batch)))}
    out = {}
    for name, guess in guesses.items():
        per_joint = mjd_mm(cam, guess)
        out[name] = {"mjd_mm": round(float(per_joint.mean()), 1),
                     "per_joint_mm": {n: round(float(v), 1)
                                      for n, v in zip(body.JOINT_NAMES, per_joint,
                                                      strict=True)}}
    return out


def spread(paths: list[str]) -> dict:
    """{'clips', 'frames', 'within_clip_sd_mm': {joint: mm}, 'overall_sd_mm': {joint: mm}}."""
    from hgmt.sources import body

    clips = [relative_depth(p) for p in paths]
    every = np.concatenate(clips)
    within = np.mean([c.std(0) for c in clips], axis=0) * 1000.0
    overall = every.std(0) * 1000.0
    def per_joint(mm: np.ndarray) -> dict:
        return {n: round(float(v), 1) for n, v in zip(body.JOINT_NAMES, mm, strict=True)}

    return {"clips": len(clips), "frames": int(every.shape[0]),
            "within_clip_sd_mm": per_joint(within), "overall_sd_mm": per_joint(overall)}


def info_files(where: str) -> list[str]:
    """A `_info.mat` file, or every one below a directory; a clear error when there is none."""
    if os.path.isfile(where):
        return [where]
    found = sorted(glob.glob(os.path.join(where, "**", "*_info.mat"), recursive=True))
    if not found:
        raise SystemExit(f"error: no *_info.mat under {where}; give a SURREAL split directory "
                         f"(cmu/test), a sequence directory, or one _info.mat file")
    return found


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("clips", None, "a directory of SURREAL clips, or one clip's "
                              "_info.mat (repeatable)", flag_values=fv, required=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__)
    out = {}
    for where in args.clips:
        paths = info_files(where)
        out[where] = {**spread(paths), "depth_free_mjd": depth_free_mjd(paths)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
