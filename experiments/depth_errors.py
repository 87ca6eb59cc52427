"""Where a trained depth head errs: on the silhouette or in the bins, and on which body parts.

    python3 experiments/depth_errors.py --workdir=runs/depth [--frames=every4] \\
        [--step=N|best] [--config.<field>=<value> ...]

The workdir is one you trained (`python3 -m hgmt.main --config=configs/study.py:tasks=depth
--workdir=runs/depth`): it needs a checkpoint (the study's committed runs keep none).
Restores the workdir's latest (or given) checkpoint, predicts the depth classes of the test
frames that `--frames` selects (middle, all or everyK, as `hgmt.evaluate --frames`) and prints
JSON: over the ground-truth foreground pixels that hgmt's depth metric counts (those of the
frames it scores: not flagged unusable frames nor those its own check rejects), the fraction in
the right bin (hgmt's bin accuracy), predicted as background, and within one bin; then the bin
accuracy per body part (the ground-truth part of each pixel).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import ml_collections

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402

from hgmt import cli  # noqa: E402


def tally(classes, batch: dict) -> tuple:
    """(B,r,r) predicted depth classes of an evaluation batch (`eval_data.eval_batches`,
    with its depth and segm labels) -> ((3,) pixels in the right bin, predicted as background,
    within one bin; (NUM_PARTS, 2) per ground-truth part: pixels in the right bin, pixels),
    over the ground-truth foreground pixels of the examples hgmt's depth metric counts. The
    right bin and the pixels are `depth.metric_stats`' own 'correct' and 'foreground', per part
    on the labels of that part's pixels alone."""
    import jax.numpy as jnp
    import numpy as np

    from hgmt.sources import body
    from hgmt.tasks import common, depth

    labels = {k: jnp.asarray(v) for k, v in batch.items()}
    decoded = {"depth_classes": jnp.asarray(classes)}
    gt = np.asarray(depth.targets(labels))
    scored = np.asarray(common.example_weights(labels, gt.shape[0])) > 0
    fg = (gt > 0) & scored[:, None, None]
    per_part = np.zeros((body.NUM_PARTS, 2))
    for part in range(body.NUM_PARTS):
        own = jnp.where(labels["segm"] == part, labels["depth_class"], 0)
        stats = depth.metric_stats(decoded, {**labels, "depth_class": own})
        per_part[part] = float(stats["correct"]), float(stats["foreground"])
    counts = np.array([float(depth.metric_stats(decoded, labels)["correct"]),
                       (fg & (classes == 0)).sum(),
                       (fg & (classes > 0) & (np.abs(classes - gt) <= 1)).sum()], np.float64)
    return counts, per_part


def restore(workdir: str, step: int | str | None = None,
            config: ml_collections.ConfigDict | None = None) -> tuple:
    """`trained_model.restore_for_inference` of a workdir that trained depth -> (config,
    variables, step); its errors (`trained_model.RESTORE_FAULTS`), and a ValueError for a run
    without depth, name the workdir."""
    from hgmt.inference import trained_model
    from hgmt.tasks import parse_tasks

    config, variables, step = trained_model.restore_for_inference(workdir, step, config)
    if "depth" not in parse_tasks(config.tasks):
        raise ValueError(f"{workdir} trained {config.tasks}, without depth")
    return config, variables, step


def depth_errors(workdir: str, frames: str, step: int | str | None = None,
                 config: ml_collections.ConfigDict | None = None) -> dict:
    """The depth head's errors on the test frames `frames` selects (see the module
    docstring); `step` and `config` as `trained_model.restore_for_inference` takes them."""
    return errors_of(workdir, frames, *restore(workdir, step, config))


def errors_of(workdir: str, frames: str, config: ml_collections.ConfigDict, variables: dict,
              step: int) -> dict:
    """`depth_errors` of a restored checkpoint (`restore`)."""
    import jax.numpy as jnp
    import numpy as np

    from hgmt.data import builds, eval_data
    from hgmt.models import create_model, predict_last_stage
    from hgmt.sources import body
    from hgmt.tasks import heads, parse_tasks

    model = create_model(config.model, heads(parse_tasks(config.tasks)))
    source = builds.open_split(config.dataset, config.data_dir, "test")
    indices = eval_data.eval_indices(config.dataset, config.data_dir, "test", frames)
    counts = np.zeros(3)  # right bin, predicted background, within one bin
    per_part = np.zeros((body.NUM_PARTS, 2))  # right bin, pixels
    for batch in eval_data.eval_batches(source, indices, batch_size=config.eval_batch_size,
                                        image_size=config.image_size,
                                        tasks=("depth", "segm"), window=config.window):
        pred = predict_last_stage(model, variables, jnp.asarray(batch["image"]))["depth"]
        c, p = tally(np.asarray(pred).argmax(-1), batch)
        counts += c
        per_part += p
    return {"workdir": workdir, "step": step, "frames": frames, "test_frames": len(indices),
            **summarize(counts, per_part)}


def summarize(counts, per_part) -> dict:
    """`tally`'s sums over the frames -> the module docstring's fractions. Every ground-truth
    foreground pixel counts, whatever its ground-truth part (background included), as in hgmt's
    bin accuracy; the per-part accuracies name the body parts."""
    from hgmt.sources import body

    pixels = per_part[:, 1].sum()
    return {"foreground_pixels": int(pixels),
            "bin_accuracy": counts[0] / pixels, "predicted_background": counts[1] / pixels,
            "within_one_bin": counts[2] / pixels,
            "bin_accuracy_per_part": {
                name: (per_part[p, 0] / per_part[p, 1] if per_part[p, 1] else None)
                for p, name in enumerate(body.PART_NAMES, 1)}}


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_workdir(fv)
    flags.DEFINE_string("frames", "every4", "test frames of each clip: middle (SURREAL's test "
                        "protocol), all, or everyK", flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """Prints the JSON; -> exit status."""
    from hgmt.data import eval_data
    from hgmt.inference import trained_model

    args, _ = cli.parse_on_workdir(_define_flags, argv, __doc__)
    eval_data.frames_flag(args.frames)
    step = cli.checkpoint_step(args.step)
    with cli.faults_in_one_line(*trained_model.RESTORE_FAULTS):  # no checkpoint: one line
        restored = restore(args.workdir, step, args.config)
    print(json.dumps(errors_of(args.workdir, args.frames, *restored), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
