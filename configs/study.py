"""The task-combination study on demo data (docs/study) and the learning curves' model.

    python3 launch/sweep.py --sweep_dir=docs/study/runs --config=configs/study.py --seeds=3

The demo data at 128 px (24 clips of 40 frames per split, generated and built on first use),
2 stacks of 64 features with hourglass depth 4, batch 16, Adam 2e-3 with warm-up and cosine
decay, evaluated on every 4th frame of the 24 test clips (240 frames). At this size 2D and 3D
pose and most parts learn on 2 CPU cores within the run, depth barely (docs/learning.md);
configs/learning.py trains the same model and data longer to draw learning curves. Argument:
`tasks=` as in configs/default.py.
"""

import ml_collections

from configs import demo
from configs.common import parse_arg
from hgmt.tasks import default_loss_options


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: the comma-separated items the module docstring lists."""
    args = parse_arg(arg, {"tasks": "all"})
    c = demo.get_config(f"tasks={args['tasks']}")
    c.unlock()
    c.data_dir = "runs/study_data/tfds"
    c.demo.surreal_root = "runs/study_data/surreal"
    c.demo.clips_per_split = 24
    c.image_size = 128
    c.total_steps = 1200
    # Every model field set here: the study's runs must not follow the demo's model choices.
    c.model.num_stacks = 2
    c.model.features = 64
    c.model.depth = 4
    c.model.interaction = "sum"
    c.model.shared_trunk = False
    c.model.dtype = "float32"
    # The reference's losses (each task's LOSS_OPTIONS defaults), not the demo's weighting.
    c.loss_options = default_loss_options(c.tasks)
    c.optimizer.warmup_steps = 100
    c.checkpoint_every = 300
    c.log_every = 100
    c.evals.test.frames = "every4"
    c.lock()
    return c
