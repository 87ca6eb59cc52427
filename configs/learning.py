"""Learning curves on demo data: the study's model and data (configs/study.py), trained longer,
with the test frames evaluated every `eval_every` steps (and, with `train_frames=`, the same
metrics on training frames, to tell fitting from generalising).

    python -m hgmt.main --config=configs/learning.py --workdir=runs/learning
    python experiments/learning_curves.py --workdir=runs/learning

Arguments after the colon: `tasks=` as in configs/default.py; `steps=` (default 1800);
`eval_every=` (default 300); `train_frames=` '' (none) or the frames of each training clip to
evaluate (e.g. every4). The model, losses and optimiser are the study's; change them with
--config.<field>=<value> (e.g. --config.model.shared_trunk=true,
--config.loss_options.depth.foreground_weight=10).
"""

import ml_collections

from configs import study
from configs.common import evaluator_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: the comma-separated items the module docstring lists."""
    args = parse_arg(arg, {"tasks": "all", "steps": 1800, "eval_every": 300,
                           "train_frames": ""})
    for key in ("steps", "eval_every"):  # a curve needs steps, and points along them
        if args[key] < 1:
            raise ValueError(f"config argument {key}={args[key]}: give at least 1")
    c = study.get_config(f"tasks={args['tasks']}")
    c.unlock()
    c.total_steps = args["steps"]
    c.evals.test.every = args["eval_every"]
    if args["train_frames"]:  # the frames of the training clips, unaugmented crops
        c.evals.train = evaluator_config("train", frames=args["train_frames"],
                                         every=args["eval_every"], at_end=True)
    c.lock()
    return c
