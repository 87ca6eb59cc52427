"""The two figures that size prediction's window and its 3D scale, on SURREAL-format clips.

    python3 experiments/window_scale.py [--config=configs/demo.py] [--demo] \\
        [--clips=DIR_OR_INFO_MAT ...] [--config.window=hgmt|reference_box]

Training's window is `--config`'s (config.window, `hgmt.data.cropping.TRAIN_WINDOWS`).

- `crop_metres`: the metres a training window spans at the person, per frame
  (`hgmt.data.crop_metres.record_metres`: the window's side in px times the pelvis's camera
  depth over SURREAL's 600 px focal length), over the frames the builder keeps: mean, standard
  deviation, the mean's standard error (as if frames were independent), frames. The trainer
  measures the same on a run's training records (its workdir's crop_metres.json); the
  fallback `hgmt.inference.crop_scale.CROP_METRES` (per window) is for workdirs without it.
- `foreground_to_side`: training's window side over the longer side of the silhouette's box
  (`hgmt.inference.person.silhouette_box` of the pixels whose segment is not background, as
  `person.find_window` measures it), per kept frame: mean, median, standard deviation,
  frames; `person.FOREGROUND_TO_SIDE` (per window) is what the search grows a silhouette's
  box by. Only where a clip has its _segm.mat (null otherwise: a real annotation file alone has no
  silhouettes).

Each `--clips` is a directory searched recursively for `*_info.mat`, or one such file. With
`--demo`, or without `--clips`, it also measures the training clips of `--config`'s `demo`
settings (default configs/demo.py's), generated into a temporary folder, under the name
"demo training clips" with those settings. Prints JSON, one entry per set of clips. The config
is checked first, as training checks it: a field it would refuse exits in one line.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402
from limb_depth import info_files  # noqa: E402  (this folder: the scripts' shared lookup)

from hgmt import cli  # noqa: E402


def foreground_to_side(info, segm: np.ndarray, window: str = "hgmt") -> list[float]:
    """One clip's annotations and (T,H,W) segments -> per kept frame with a silhouette,
    the `window`'s side / the longer side of the silhouette's box in px."""
    from hgmt.data import crop_metres, cropping
    from hgmt.inference import person
    from hgmt.sources import body

    out = []
    for t in (t for t in crop_metres.kept_frames(info) if t < len(segm)):
        box = person.silhouette_box(segm[t] > 0)
        if box is None:
            continue
        _, side = cropping.window_box(
            info.joints2d[t][body.SMPL_TO_JOINT].astype(np.float64), window)
        out.append(side / float((box[1] - box[0]).max()))
    return out


def measure(paths: list[str], window: str = "hgmt") -> dict:
    """The `_info.mat` files of one set of clips -> {'clips', 'crop_metres': {...},
    'foreground_to_side': {...} or None} of the training `window`."""
    from hgmt.data import crop_metres
    from hgmt.sources import surreal

    metres, ratios, with_segm = [], [], 0
    for path in paths:
        info = surreal.load_info(path)
        metres += [crop_metres.record_metres(r, window) for r in crop_metres.info_records(info)]
        segm_path = surreal.clip_paths(path.removesuffix(surreal.CLIP_SUFFIXES["info"]))["segm"]
        if os.path.isfile(segm_path):
            with_segm += 1
            ratios += foreground_to_side(info, surreal.load_segm(segm_path), window)
    summary = crop_metres.summary(metres)
    out = {"clips": len(paths),
           "crop_metres": {"mean": round(summary["crop_metres"], 4),
                           "standard_deviation": round(summary["standard_deviation"], 4),
                           "standard_error": round(summary["standard_error"], 4),
                           "frames": summary["records"]},
           "foreground_to_side": None}
    if ratios:
        r = np.asarray(ratios)
        out["foreground_to_side"] = {"mean": round(float(r.mean()), 4),
                                     "median": round(float(np.median(r)), 4),
                                     "standard_deviation": round(float(r.std(ddof=1)), 4),
                                     "frames": len(r), "clips": with_segm}
    return out


def demo_training_clips(settings, out_dir: str) -> str:
    """Generates the training clips of a config's `demo` settings into `out_dir` -> their
    split directory."""
    from hgmt import cores
    from hgmt.sources import synthetic

    synthetic.generate(out_dir, settings.clips_per_split, settings.frames, settings.seed,
                       splits=("train",), workers=cores.usable_cores())
    return os.path.join(out_dir, "cmu", "train")


DEFAULT_CONFIG = os.path.join(REPO, "configs", "demo.py")
DEMO = "demo training clips"  # the output's name of the --config's demo clips


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_multi_string("clips", None, "a directory of SURREAL clips, or one clip's "
                              "_info.mat (repeatable)", flag_values=fv)
    flags.DEFINE_bool("demo", False, "also measure the training clips of --config's demo "
                      "settings, generated into a temporary folder (measured without --clips "
                      "too)", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON; -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    from hgmt.training import config_check

    config_check.exit_if_refused(args.config)
    out = {}
    if args.demo or not args.clips:
        settings = args.config.demo
        with tempfile.TemporaryDirectory() as tmp:
            out[DEMO] = {"demo": {k: settings[k] for k in ("clips_per_split", "frames", "seed")},
                         **measure(info_files(demo_training_clips(settings, tmp)),
                                   args.config.window)}
    for where in args.clips or []:
        out[where] = measure(info_files(where), args.config.window)
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
