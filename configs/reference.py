"""The reference code's training settings on hgmt's network, one task a run, for numbers to set
beside the published ones (docs/metrics.md, "Published numbers").

    python -m hgmt.main --config=configs/reference.py:code=surreal,tasks=segm \\
        --workdir=runs/surreal_segm --config.data_dir=~/tensorflow_datasets

`code=surreal`: SURREAL's segmentation or depth network (gulvarol/surreal training/opts.lua:
8 stacks, batch 6, 30 epochs of 2000 batches; training/donkey.lua: no flip); `tasks=` segm or
depth. `code=bodynet`: BodyNet's subnetworks (gulvarol/bodynet training/opts.lua: 2 stacks,
batch 4, 100 epochs of 2000 batches; its cmu training scripts for segm and 3D pose,
training/exp/backup/cmu/train_segm_rgb_gt.sh and train_joints3D_rgbsegm15joints2D_pred.sh:
batch 6; training/main.lua:197-212: no scale, rotation or flip for 3D supervision); `tasks=`
one of pose2d, pose3d, segm, depth (BodyNet's code can train depth, but BodyNet publishes no
depth number). BodyNet's own 3D pose network also takes its 2D pose and segmentation
networks' predictions as input; hgmt's pose3d sees the image alone. Both: RMSprop
at a constant 1e-3 (opts.lua `-LR`, `-alpha`, `-epsilon`), the references' losses, every frame
of each training clip (`surreal/all`), the 256 px input of their 64 x 64 label maps, and the
test evaluator under the code's protocol on the middle frame of every test clip, and training
crops cut around the references' box (`window=reference_box`, about 0.84 of hgmt's side: the
person at the scale their protocols measure). Without
arguments: `code=surreal,tasks=segm`. What stays hgmt's: docs/training.md, "Where the default
training setup differs from the reference code". A batch of 6 splits over 1, 2, 3 or 6
devices, one of 4 over 1, 2 or 4, and the evaluation batch of 12 over any of these; on others
set --config.batch_size and --config.eval_batch_size (docs/training.md says what the batch
changes).
"""

import ml_collections

from configs.common import base_config, parse_arg
from hgmt.choices import not_one_of

# What each reference code trains: its stacks, its tasks with the batch of each, and its steps
# (epochs x epochSize).
CODES = {
    "surreal": {"num_stacks": 8, "batch_size": {"segm": 6, "depth": 6},
                "total_steps": 30 * 2000},
    "bodynet": {"num_stacks": 2, "batch_size": {"pose2d": 4, "pose3d": 6, "segm": 6, "depth": 4},
                "total_steps": 100 * 2000},
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: the comma-separated items the module docstring lists."""
    args = parse_arg(arg, {"code": "surreal", "tasks": "segm"})
    code = CODES.get(args["code"])
    if code is None:
        raise not_one_of(f"config argument code={args['code']!r}", sorted(CODES))
    if args["tasks"] not in code["batch_size"]:
        raise ValueError(f"config argument tasks={args['tasks']!r}: {args['code']}'s code "
                         f"trains each of {', '.join(code['batch_size'])} in a network of its "
                         f"own; give one of them (a task subset: configs/default.py)")
    c = base_config(args["tasks"])
    c.dataset = "surreal/all"
    c.image_size = 256
    c.batch_size = code["batch_size"][args["tasks"]]
    c.eval_batch_size = 12  # splits over the devices either training batch does
    c.total_steps = code["total_steps"]
    c.model.num_stacks = code["num_stacks"]
    c.model.shared_trunk = False
    c.optimizer.name = "rmsprop"
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = "constant"
    c.optimizer.warmup_steps = 0
    c.window = "reference_box"
    if args["code"] == "surreal":
        c.augment.flip_p = 0.0
    elif args["tasks"] == "pose3d":
        c.augment.scale_sigma = 0.0
        c.augment.rotate_p = 0.0
        c.augment.flip_p = 0.0
    c.evals.test.protocol = args["code"]
    c.evals.test.frames = "middle"
    c.evals.test.max_examples = 0
    c.lock()
    return c
