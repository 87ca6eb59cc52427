"""What simple depth predictors score: the bin accuracy a depth head must beat, per dataset.

    python3 experiments/depth_baselines.py --clips=runs/study_data/surreal/cmu/test \\
        [--frames=every4]

For each `--clips` (a directory searched recursively for SURREAL clips: `_info.mat`,
`_depth.mat`, `_segm.mat`) prints JSON: over the pixels hgmt's depth bin accuracy counts
(`hgmt.tasks.depth.metric_stats`: every pixel with a depth label, of the frames it scores:
those `--frames` selects in each clip, middle, all or everyK, as `hgmt.evaluate --frames`,
less those the builder's check rejects), at the frames' full resolution, the fraction in the
right depth bin (the bin -9..9 of hgmt's depth labels, `hgmt.tasks.depth.classes` minus 10)
for three predictors that know no depth:
- `most_common_bin`: one bin everywhere, the split's most common;
- `part_mode`: each body part's most common bin over the split (perfect segmentation; a
  labelled pixel the segmentation calls background is a group of its own);
- `part_frame_mode`: each part's most common bin in that frame (each part's depth right,
  flat within the part: the ceiling of a head that only places parts).
Also the standard deviation of the bins. Demo data and real SURREAL clips run the same way.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402

from hgmt import cli  # noqa: E402


def modal_count(*keys: np.ndarray) -> int:
    """Pixels whose bin is their group's most common bin, summed over groups: `keys` are (N,)
    int arrays, the last one the bin and the others naming the group (none: one group)."""
    if keys[0].size == 0:
        return 0
    pairs, counts = np.unique(np.stack(keys), axis=1, return_counts=True)  # (K,M), (M,)
    if len(keys) == 1:
        return int(counts.max())
    _, group = np.unique(pairs[:-1], axis=1, return_inverse=True)
    best = np.zeros(int(group.max()) + 1, np.int64)
    np.maximum.at(best, group.reshape(-1), counts)
    return int(best.sum())


def baselines(bins: np.ndarray, parts: np.ndarray, frames: np.ndarray) -> dict:
    """(N,) foreground pixels' depth bins, part ids and frame ids -> each predictor's bin
    accuracy (see the module docstring)."""
    n = max(bins.size, 1)
    return {"pixels": int(bins.size),
            "most_common_bin": modal_count(bins) / n,
            "part_mode": modal_count(parts, bins) / n,
            "part_frame_mode": modal_count(frames, parts, bins) / n,
            "bin_sd": float(bins.std()) if bins.size else 0.0}


def clip_pixels(stem: str, frames: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One clip -> (bins, parts, frame indices) of the depth-labelled pixels of the frames
    that `frames` selects (middle, all or everyK) by `hgmt.evaluate`'s rule
    (`eval_data.eval_frame_keep`), among the frames its three files share: the middle
    frame is ceil(T/2) of the _info.mat's T frames, and none when the others lack it; a frame
    `frame_selection.frame_problem` rejects is left out (`crop_metres.kept_frames`), as hgmt's
    metrics leave it out. A pixel counts where its depth label is not background, as in
    `depth.metric_stats`; its part is the segmentation's (0 where that is background)."""
    from hgmt.data import crop_metres, eval_data
    from hgmt.sources import body, camera, frame_selection, surreal
    from hgmt.tasks import common, depth

    files = surreal.clip_paths(stem)
    info = surreal.load_info(files["info"])
    maps, segm = surreal.load_depth(files["depth"]), surreal.load_segm(files["segm"])
    pelvis = camera.camera_depth(info.joints3d[:, body.SMPL_TO_JOINT[body.PELVIS]],
                                  info.cam_loc)
    shared = min(info.num_frames, len(maps), len(segm))
    keep = eval_data.eval_frame_keep(frames)
    middle = frame_selection.middle_frame(info.num_frames)
    scored = [t for t in crop_metres.kept_frames(info) if t < shared and keep(t, shared, middle)]
    # Empty arrays first: a clip may have no frame selected (a middle frame only its _info.mat
    # holds).
    out = [(np.zeros(0, np.int32), np.zeros(0, body.SEGM_TO_PART.dtype), np.zeros(0, int))]
    for t in scored:
        classes = depth.classes(maps[t], pelvis[t])  # (H,W) 0 background, else bin + 10
        fg = classes > 0  # the pixels depth.metric_stats counts: a depth label, any segment
        out.append((classes[fg].astype(np.int32) - (common.MAX_BIN + 1),
                    body.SEGM_TO_PART[segm[t][fg]], np.full(int(fg.sum()), t)))
    return tuple(np.concatenate(a) for a in zip(*out, strict=True))


def measure(where: str, frames: str) -> dict:
    """Every clip under `where` -> `baselines` over all of them, with the clip count."""
    from limb_depth import info_files

    from hgmt.sources import surreal

    stems = [p.removesuffix(surreal.CLIP_SUFFIXES["info"]) for p in info_files(where)]
    bins, parts, frame_ids = [], [], []
    for k, stem in enumerate(stems):
        b, p, t = clip_pixels(stem, frames)
        bins.append(b)
        parts.append(p)
        frame_ids.append(t + 10_000 * k)  # frame ids unique across clips
    r = baselines(np.concatenate(bins), np.concatenate(parts), np.concatenate(frame_ids))
    return {"clips": len(stems), "frames": frames,
            **{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()}}


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("clips", None, "a directory of SURREAL clips, or one clip's "
                              "_info.mat (repeatable)", flag_values=fv, required=True)
    flags.DEFINE_string("frames", "every4", "frames of each clip: middle (SURREAL's test "
                        "protocol), all, or everyK", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON; -> exit status."""
    from hgmt.data import eval_data

    args, _ = cli.parse(_define_flags, argv, __doc__)
    frames = eval_data.frames_flag(args.frames)
    print(json.dumps({where: measure(where, frames) for where in args.clips}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
