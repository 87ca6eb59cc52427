"""The embedded demo: SURREAL-format demo clips, a small 4-task model, a few hundred steps.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 \\
        python -m hgmt.main --config=configs/demo.py --workdir=runs/demo

When `data_dir` holds no dataset built from these `demo` settings, hgmt.main generates
`demo.clips_per_split` clips of `demo.frames` frames with hgmt.sources.synthetic into
`demo.surreal_root` and builds them with the TFDS builder (config `all`) into `data_dir`.
Argument: `tasks=` as in configs/default.py.
"""

import ml_collections

from configs.common import base_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: the comma-separated items the module docstring lists."""
    args = parse_arg(arg, {"tasks": "all"})
    c = base_config(args["tasks"])
    c.dataset = "surreal/all"
    c.data_dir = "runs/demo_data/tfds"
    c.demo = ml_collections.ConfigDict()
    c.demo.surreal_root = "runs/demo_data/surreal"
    c.demo.clips_per_split = 24
    c.demo.frames = 40
    c.demo.seed = 0
    # 128 px (32x32 label maps): at 64 px most limb parts are one label pixel wide. One
    # hourglass stream shared by the four tasks: on 2 CPU cores it takes less time per step
    # than one stream per task, which learns no limbs within the demo's budget (both measured
    # in docs/learning.md, "The demo").
    c.image_size = 128
    c.batch_size = 16
    c.total_steps = 600
    c.model.num_stacks = 2
    c.model.features = 64
    c.model.depth = 4
    c.model.shared_trunk = True
    # Foreground depth and body-part pixels count 10 times a background one (about 1 label
    # pixel in 10 is foreground): with SURREAL's plain cross-entropies this model predicts
    # around the most common depth bin and no forearms, hands or feet after 600 steps;
    # weighted, its bins follow the body and every part is found (docs/learning.md).
    for name in ("depth", "segm"):
        if name in c.loss_options:
            c.loss_options[name].foreground_weight = 10.0
    c.optimizer.name = "adam"
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 50
    c.checkpoint_every = 200
    c.log_every = 50
    c.eval_batch_size = 16
    c.evals.validation.every = 0  # no validation during training: nor a best checkpoint
    c.evals.validation.best_metric = ""
    c.worker_count = 0
    c.lock()
    return c
