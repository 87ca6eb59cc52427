"""How far each joint moves in depth relative to the pelvis: demo clips beside real SURREAL.

    python3 benchmarks/limb_depth.py --clips runs/study_data/surreal/cmu/test \
        --clips /path/to/SURREAL/cmu/test/run0/01_01

For each `--clips` (a directory searched recursively for `*_info.mat`, or one such file)
prints JSON: per joint of hgmt's 16, the standard deviation in mm of its camera depth minus
the pelvis's, within a clip (the mean over clips) and over all frames. This is what the depth
bins (45 mm) must resolve on the limbs; a demo whose limbs swing further in depth than
SURREAL's asks more of the depth head than SURREAL does.
"""

from __future__ import annotations

import argparse
import glob
import json
import os

import numpy as np


def relative_depth(path: str) -> np.ndarray:
    """One `_info.mat` -> (T,16) camera depth of hgmt's joints minus the pelvis's, metres."""
    from hgmt import surreal

    info = surreal.load_info(path)
    z = surreal.camera_depth(info.joints3d[:, surreal.SMPL_TO_JOINT], info.cam_loc)
    return z - z[:, surreal.PELVIS:surreal.PELVIS + 1]


def spread(paths: list[str]) -> dict:
    """{'clips', 'frames', 'within_clip_sd_mm': {joint: mm}, 'overall_sd_mm': {joint: mm}}."""
    from hgmt import surreal

    clips = [relative_depth(p) for p in paths]
    every = np.concatenate(clips)
    within = np.mean([c.std(0) for c in clips], axis=0) * 1000.0
    overall = every.std(0) * 1000.0
    def per_joint(mm: np.ndarray) -> dict:
        return {n: round(float(v), 1) for n, v in zip(surreal.JOINT_NAMES, mm, strict=True)}

    return {"clips": len(clips), "frames": int(every.shape[0]),
            "within_clip_sd_mm": per_joint(within), "overall_sd_mm": per_joint(overall)}


def info_files(where: str) -> list[str]:
    """A `_info.mat` file, or every one below a directory; a clear error when there is none."""
    if os.path.isfile(where):
        return [where]
    found = sorted(glob.glob(os.path.join(where, "**", "*_info.mat"), recursive=True))
    if not found:
        raise SystemExit(f"error: no *_info.mat under {where}: give a SURREAL split directory "
                         f"(cmu/test), a sequence directory, or one _info.mat file")
    return found


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clips", action="append", required=True,
                   help="a directory of SURREAL clips or one _info.mat (repeatable)")
    a = p.parse_args(argv)
    out = {where: spread(info_files(where)) for where in a.clips}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
