"""Where a trained depth head errs: on the silhouette or in the bins, and on which body parts.

    python3 benchmarks/depth_errors.py --workdir docs/study/runs/depth [--frames every4]

Restores the workdir's latest checkpoint, predicts the depth classes of the test frames that
`--frames` selects (as config.eval_frames) and prints JSON: over the ground-truth foreground
pixels, the fraction in the right bin (hgmt's bin accuracy), predicted as background, and within
one bin; then the bin accuracy per body part (the ground-truth part of each pixel).
"""

from __future__ import annotations

import argparse
import json


def depth_errors(workdir: str, frames: str) -> dict:
    import jax.numpy as jnp
    import numpy as np

    from hgmt.data import input_pipeline
    from hgmt.models import create_model, predict_last_stage
    from hgmt.sources import surreal
    from hgmt.tasks import depth, heads, parse_tasks
    from hgmt.training import checkpoints

    config, variables, step = checkpoints.restore_for_inference(workdir)
    tasks = parse_tasks(config.tasks)
    if "depth" not in tasks:
        raise ValueError(f"{workdir} trained {config.tasks}, without depth")
    model = create_model(config.model, heads(tasks))
    source = input_pipeline.open_split(config.dataset, config.data_dir, "test")
    indices = input_pipeline.eval_indices(config.dataset, config.data_dir, "test", frames)
    counts = np.zeros(3)  # right bin, predicted background, within one bin
    per_part = np.zeros((surreal.NUM_PARTS, 2))  # right bin, pixels
    for batch in input_pipeline.eval_batches(source, indices, batch_size=config.eval_batch_size,
                                             image_size=config.image_size,
                                             tasks=("depth", "segm")):
        pred = predict_last_stage(model, variables, jnp.asarray(batch["image"]))["depth"]
        classes = np.asarray(pred).argmax(-1)
        gt = np.asarray(depth.targets({k: jnp.asarray(v) for k, v in batch.items()}))
        fg = (gt > 0) & (batch["mask"][:, None, None] > 0)
        right = fg & (classes == gt)
        counts += [right.sum(), (fg & (classes == 0)).sum(),
                   (fg & (classes > 0) & (np.abs(classes - gt) <= 1)).sum()]
        parts = np.where(fg, batch["segm"], 0).reshape(-1)
        np.add.at(per_part, (parts, 0), right.reshape(-1))
        np.add.at(per_part, (parts, 1), 1)
    pixels = per_part[1:, 1].sum()
    return {"workdir": workdir, "step": step, "frames": frames, "test_frames": len(indices),
            "foreground_pixels": int(pixels),
            "bin_accuracy": counts[0] / pixels, "predicted_background": counts[1] / pixels,
            "within_one_bin": counts[2] / pixels,
            "bin_accuracy_per_part": {
                name: (per_part[p, 0] / per_part[p, 1] if per_part[p, 1] else None)
                for p, name in enumerate(surreal.PART_NAMES, 1)}}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="a training workdir with depth")
    p.add_argument("--frames", default="every4", help="test frames: all | middle | everyK")
    a = p.parse_args(argv)
    r = depth_errors(a.workdir, a.frames)
    print(json.dumps(r, indent=1))
    return r


if __name__ == "__main__":
    main()
