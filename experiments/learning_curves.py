"""Learning curves of a training run: its evaluators' metrics against the step.

    python experiments/learning_curves.py --workdir=runs/learning [--out_dir=DIR]

reads <workdir>/evals.jsonl (every evaluation the trainer ran, hgmt/training/evaluators.py) and
writes <out_dir>/curves.json ({evaluator: [{step, metrics}]}) and <out_dir>/curves.png: one
panel per task with the metric the study compares, a line per evaluator (test frames solid,
others dashed). <out_dir> defaults to the workdir.
"""

from __future__ import annotations

import json
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from absl import flags  # noqa: E402
from etils import epath  # noqa: E402

from hgmt import cli, run_config, workdirs  # noqa: E402
from hgmt.evaluation import protocols  # noqa: E402
from hgmt.tasks import TASKS  # noqa: E402


def load_curves(workdir: str) -> dict[str, list[dict]]:
    """{evaluator: [{'step', 'metrics'}] in step order} of a workdir's evals.jsonl."""
    path = workdirs.evals_file(workdir)
    if not epath.Path(path).exists():
        raise FileNotFoundError(f"{path} not found; train with evaluators that run during "
                                f"training (config.evals.<name>.every > 0)")
    curves: dict[str, dict[int, dict]] = {}
    for entry in workdirs.read_evals(workdir):
        # a resumed run may evaluate a step again: the last evaluation counts
        curves.setdefault(entry["evaluator"], {})[entry["step"]] = entry["metrics"]
    return {name: [{"step": s, "metrics": m} for s, m in sorted(points.items())]
            for name, points in curves.items()}


def plot(curves: dict[str, list[dict]], path: str, title: str = "") -> None:
    """One panel per task present: its compared metric (hgmt protocol) per evaluator, as a PNG
    at `path` (a local path or an object-store URL)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = {t: f"{t}/{protocols.headline_of(t, 'hgmt').compare}" for t in TASKS}
    present = [t for t in TASKS if any(keys[t] in p["metrics"] for c in curves.values()
                                       for p in c)]
    fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.4), squeeze=False)
    for ax, task in zip(axes[0], present, strict=True):
        for name, points in curves.items():
            pts = [(p["step"], p["metrics"][keys[task]]) for p in points
                   if keys[task] in p["metrics"]]
            ax.plot(*zip(*pts, strict=True), "o-" if name == "test" else "o--", ms=3,
                    label=name)
        ax.set_title(task)
        ax.set_xlabel("step")
        ax.set_ylabel(protocols.headline_of(task, "hgmt").label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, format="png", dpi=90)
    plt.close(fig)


def title(config, curves: dict[str, list[dict]]) -> str:
    """The plot's title: the run's tasks and image size, and the frames of the evaluators
    whose curves it draws (a configured evaluator that never ran draws none)."""
    evals = dict(config.get("evals", {}))
    frames = sorted({evals[name].frames for name in curves if name in evals})
    return f"{config.tasks}, {config.image_size} px, frames {', '.join(frames)}"


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "training workdir", flag_values=fv, required=True)
    flags.DEFINE_string("out_dir", None, "directory for curves.json and curves.png "
                        "(default: the workdir)", flag_values=fv)


def main(argv: list[str] | None = None) -> int:
    args, _ = cli.parse(_define_flags, argv, __doc__.splitlines()[0])
    try:
        run_config.load_config(args.workdir)  # a training workdir, before what its runs wrote
        curves = load_curves(args.workdir)
    except FileNotFoundError as e:
        raise SystemExit(f"error: {e}") from None
    out_dir = epath.Path(args.out_dir or args.workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "curves.json").write_text(json.dumps(curves, indent=1))
    plot(curves, str(out_dir / "curves.png"), title(run_config.load_config(args.workdir), curves))
    print(json.dumps({name: points[-1] for name, points in curves.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
