"""Learning benchmark: trains the four tasks on demo data and writes per-task learning curves.

    python3 benchmarks/learning.py --out benchmarks/results/learning \
        [--data_dir DIR] [--res 128] [--steps 2400] [--eval_every 300] [--frames every4]

Generates and builds the demo dataset (hgmt.sources.synthetic -> TFDS `surreal/all`) when --data_dir
holds none, trains the multi-task model (hgmt.training.steps.train_step under pmap, the
training input
pipeline with its augmentation) for a fixed number of steps, and evaluates the model every
--eval_every steps on test frames (`--frames`: `all` frames of every test clip, `middle` the
test-protocol frame of each clip, `everyK` every K-th frame of each clip). Writes
``<out>.json`` (settings, machine, curves, targets met) and ``<out>.png`` (one panel per task).
Data, model and optimiser default to configs/study.py's, the scale of docs/study. Demo data
only: the numbers say the model learns, not how it would do on SURREAL.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import time

# The targets of issue 13 on demo data, for 128 px within 45 minutes on 2 CPU cores:
# (summary key, comparison, threshold).
TARGETS = {
    "pose2d/pckh@0.5": (">=", 0.90),
    "segm/mean_iou": (">=", 0.65),
    "segm/min_part_iou": (">=", 0.30),
    "depth/bin_accuracy": (">=", 0.50),
    "pose3d/mjd_mm": ("<=", 70.0),
}


def ensure_data(data_dir: str, surreal_root: str, clips: int, frames: int, seed: int) -> None:
    """Generates `clips` demo clips of `frames` frames per split and builds `surreal/all`,
    unless `data_dir` already holds it."""
    from hgmt.data import demo

    demo.build(surreal_root, data_dir, clips, frames, seed)


def make_config(a: argparse.Namespace):
    """configs/study.py with the command line's sizes."""
    from configs import study

    c = study.get_config(f"tasks={a.tasks}")
    c.unlock()
    c.data_dir = a.data_dir
    c.image_size, c.batch_size, c.total_steps = a.res, a.batch, a.steps
    c.model.num_stacks, c.model.features, c.model.depth = a.stacks, a.features, a.depth
    c.model.shared_trunk, c.model.interaction = a.shared_trunk, a.interaction
    c.optimizer.learning_rate = a.lr
    if "depth" in c.loss_options:
        c.loss_options.depth.foreground_weight = a.depth_foreground_weight
    if "segm" in c.loss_options:
        c.loss_options.segm.foreground_weight = a.segm_foreground_weight
    c.optimizer.warmup_steps = min(c.optimizer.warmup_steps, a.steps // 10)
    c.seed = a.seed
    c.eval_batch_size = a.batch
    c.eval_frames = a.frames
    c.lock()
    return c


def flat_metrics(summary: dict) -> dict:
    """An evaluation summary -> the curve's scalars, keyed task/metric."""
    out = {}
    if "pose2d" in summary:
        out["pose2d/pckh@0.5"] = summary["pose2d"]["pckh@0.5"]
    if "pose3d" in summary:
        out["pose3d/mjd_mm"] = summary["pose3d"]["mjd_mm"]
    if "depth" in summary:
        out["depth/bin_accuracy"] = summary["depth"]["bin_accuracy"]
        out["depth/rmse_mm"] = summary["depth"]["rmse_mm"]
    if "segm" in summary:
        ious = [v for v in summary["segm"]["iou_per_part"].values() if v is not None]
        out["segm/mean_iou"] = summary["segm"]["mean_iou"]
        out["segm/min_part_iou"] = min(ious) if ious else 0.0
    return out


def targets_met(metrics: dict) -> dict:
    """{target key: bool} for the targets whose metric was measured."""
    ops = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t}
    return {k: bool(ops[op](metrics[k], t)) for k, (op, t) in TARGETS.items() if k in metrics}


def run(a: argparse.Namespace, on_point=None) -> dict:
    """Trains and evaluates as the command line says; returns the JSON result. `on_point`
    gets the result so far after each evaluation (so an interrupted run leaves its curves)."""
    import flax
    import jax
    import numpy as np

    from hgmt import tasks as task_lib
    from hgmt.data import input_pipeline
    from hgmt.evaluation import evaluator
    from hgmt.models import create_model
    from hgmt.tasks import heads, parse_tasks
    from hgmt.training import steps

    start = time.perf_counter()
    ensure_data(a.data_dir, a.surreal_root, a.clips, a.clip_frames, a.data_seed)
    config = make_config(a)
    tasks = parse_tasks(config.tasks)
    weights = task_lib.check_loss_weights(config, tasks)
    options = task_lib.check_loss_options(config, tasks)
    source = input_pipeline.open_split(config.dataset, config.data_dir, "train")
    loader = input_pipeline.train_loader(source, batch_size=config.batch_size,
                                         image_size=config.image_size, seed=config.seed)
    batches = input_pipeline.prefetch_to_device(iter(loader), 2)
    model = create_model(config.model, heads(tasks), axis_name="batch")
    state = flax.jax_utils.replicate(
        steps.create_train_state(jax.random.key(config.seed), config, model))
    p_train = jax.pmap(functools.partial(steps.train_step, weights=weights, options=options),
                       axis_name="batch", donate_argnums=(0,))
    test_evaluator = evaluator.Evaluator(config, tasks, split="test", flip=a.flip)
    # The same metrics on training frames (unaugmented crops) tell fitting from generalising.
    train_evaluator = None
    if a.train_frames:
        train_config = config.copy_and_resolve_references()
        with train_config.unlocked():
            train_config.eval_frames = a.train_frames
        train_evaluator = evaluator.Evaluator(train_config, tasks, split="train", flip=a.flip)
    curve, train_loss = [], []
    t_train, losses = 0.0, []
    setup_s = time.perf_counter() - start
    for step in range(1, config.total_steps + 1):
        t0 = time.perf_counter()
        state, metrics = p_train(state, next(batches))
        losses.append(float(metrics["loss/total"][0]))
        t_train += time.perf_counter() - t0
        if step % 50 == 0:
            print(json.dumps({"step": step, "train_s": round(t_train, 1),
                              "loss": round(float(np.mean(losses)), 4)}), flush=True)
        if step % a.eval_every and step != config.total_steps:
            continue
        t0 = time.perf_counter()
        variables = flax.jax_utils.unreplicate(
            {"params": state.params, "batch_stats": state.batch_stats})
        summary = test_evaluator(variables)
        point = {"step": step, "train_s": round(t_train, 1),
                 "wall_s": round(time.perf_counter() - start, 1),
                 "eval_s": round(time.perf_counter() - t0, 1), "flip": summary["flip"],
                 **flat_metrics(summary),
                 "eval_loss": summary["loss"]}
        if "segm" in summary:
            point["segm/iou_per_part"] = summary["segm"]["iou_per_part"]
        if train_evaluator is not None:
            point["train_split"] = flat_metrics(train_evaluator(variables))
        curve.append(point)
        train_loss.append({"step": step, "loss": float(np.mean(losses))})
        losses = []
        print(json.dumps({k: v for k, v in point.items() if k != "segm/iou_per_part"}),
              flush=True)
        if on_point is not None:
            on_point(result(a, test_evaluator.indices, setup_s, start, curve, train_loss,
                            complete=False))
        if a.minutes and time.perf_counter() - start > 60 * a.minutes:
            print(f"stopping at step {step}: --minutes={a.minutes} reached", flush=True)
            return result(a, test_evaluator.indices, setup_s, start, curve, train_loss,
                          complete=False)
    return result(a, test_evaluator.indices, setup_s, start, curve, train_loss, complete=True)


def result(a: argparse.Namespace, indices: list[int], setup_s: float, start: float,
           curve: list[dict], train_loss: list[dict], complete: bool) -> dict:
    """The JSON result of a run: settings, machine, curves, final metrics, targets met."""
    import jax

    final = {k: v for k, v in curve[-1].items() if "/" in k and k != "segm/iou_per_part"}
    return {
        "benchmark": "learning", "complete": complete,  # False: stopped before --steps
        "command": " ".join(["python3", *sys.argv]),
        "settings": {k: v for k, v in vars(a).items() if k not in ("out",)},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(),
                    "jax": jax.__version__, "devices": [str(d) for d in jax.devices()]},
        "test_frames": len(indices), "setup_s": round(setup_s, 1),
        "wall_s": round(time.perf_counter() - start, 1), "curve": curve,
        "train_loss": train_loss, "final": final,
        "targets": {k: f"{op} {t}" for k, (op, t) in TARGETS.items()},
        "targets_met": targets_met(final),
    }


def plot(result: dict, path: str) -> None:
    """One panel per task: its metrics against the training step, with the target lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("pose2d", ["pose2d/pckh@0.5"]), ("segm", ["segm/mean_iou", "segm/min_part_iou"]),
              ("depth", ["depth/bin_accuracy"]), ("pose3d", ["pose3d/mjd_mm"])]
    curve = result["curve"]
    panels = [(t, ks) for t, ks in panels if ks[0] in curve[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False)
    steps = [p["step"] for p in curve]
    for ax, (task, keys) in zip(axes[0], panels, strict=True):
        for k in keys:
            line, = ax.plot(steps, [p[k] for p in curve], "o-", ms=3, label=k.split("/")[1])
            if "train_split" in curve[0]:
                ax.plot(steps, [p["train_split"][k] for p in curve], "--", lw=1,
                        color=line.get_color(), label=f"{k.split('/')[1]} (train frames)")
            if k in TARGETS:
                ax.axhline(TARGETS[k][1], color=line.get_color(), ls=":", lw=1)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    flip = " (flip test)" if result["settings"].get("flip") else ""
    fig.suptitle(f"demo data, {result['settings']['res']} px, {result['test_frames']} test "
                 f"frames{flip}; dotted: targets", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The flags; data, model and optimiser default to configs/study.py's (one home for the
    study's scale)."""
    from configs import study
    from hgmt.models.multitask import INTERACTIONS

    c = study.get_config()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output stem: writes <out>.json, <out>.png")
    p.add_argument("--data_dir", default=c.data_dir)
    p.add_argument("--surreal_root", default=c.demo.surreal_root)
    p.add_argument("--clips", type=int, default=c.demo.clips_per_split,
                   help="demo clips per split to generate")
    p.add_argument("--clip_frames", type=int, default=c.demo.frames,
                   help="frames per generated clip")
    p.add_argument("--data_seed", type=int, default=c.demo.seed)
    p.add_argument("--tasks", default="all")
    p.add_argument("--res", type=int, default=c.image_size)
    p.add_argument("--stacks", type=int, default=c.model.num_stacks)
    p.add_argument("--features", type=int, default=c.model.features)
    p.add_argument("--depth", type=int, default=c.model.depth,
                   help="hourglass depth (downsamplings)")
    p.add_argument("--shared_trunk", action=argparse.BooleanOptionalAction,
                   default=c.model.shared_trunk,
                   help="one hourglass stream for all tasks instead of one per task")
    p.add_argument("--interaction", default=c.model.interaction, choices=INTERACTIONS,
                   help="what the task streams exchange between stages")
    p.add_argument("--depth_foreground_weight", type=float,
                   default=c.loss_options.depth.foreground_weight,
                   help="weight of a foreground pixel in the depth loss, background 1 "
                        "(config loss_options.depth.foreground_weight; 1: SURREAL's loss)")
    p.add_argument("--segm_foreground_weight", type=float,
                   default=c.loss_options.segm.foreground_weight,
                   help="weight of a body-part pixel in the segmentation loss, background 1 "
                        "(config loss_options.segm.foreground_weight; 1: SURREAL's loss)")
    p.add_argument("--batch", type=int, default=c.batch_size)
    p.add_argument("--lr", type=float, default=c.optimizer.learning_rate,
                   help="Adam, warm-up then cosine decay")
    p.add_argument("--steps", type=int, default=2400)
    p.add_argument("--eval_every", type=int, default=300)
    p.add_argument("--frames", default=c.eval_frames, help="test frames: all | middle | everyK")
    p.add_argument("--flip", action="store_true",
                   help="evaluate with the flip test (each test prediction averaged with the "
                        "mirrored image's, as `hgmt.evaluate --flip`)")
    p.add_argument("--train_frames", default="",
                   help="also evaluate these frames of the training split (as --frames; "
                        "'' : none), to tell fitting from generalising")
    p.add_argument("--minutes", type=float, default=0.0,
                   help="stop after the first evaluation past this wall time (0: never)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    from hgmt.data import input_pipeline

    for frames in filter(None, (a.frames, a.train_frames)):  # bad ones fail before any work
        input_pipeline.parse_eval_frames(frames)
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    r = run(a, on_point=functools.partial(write, a.out))
    write(a.out, r)
    print(json.dumps({"final": r["final"], "targets_met": r["targets_met"],
                      "wall_s": r["wall_s"], "out": a.out}))
    return r


def write(out: str, r: dict) -> None:
    """<out>.json and <out>.png of a result."""
    with open(out + ".json", "w") as f:
        json.dump(r, f, indent=1)
    plot(r, out + ".png")


if __name__ == "__main__":
    main()
