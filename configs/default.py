"""Default hgmt training config: the seed paper's network on SURREAL, any task subset.

Run (SURREAL built with `tfds build surreal --imports=data_builders.surreal --config=every10 ...`):

    python -m hgmt.main --config=configs/default.py:tasks=all --workdir=runs/all \\
        --config.data_dir=~/tensorflow_datasets

Arguments after the colon, comma-separated: `tasks=` any of pose2d, pose3d, depth, segm joined
by '+' (or `all`); `interaction=` none|sum|concat|gated; `runlocal` shrinks everything to run
on a laptop CPU. Any field can be overridden with --config.<field>=<value>; unknown fields are
errors.
"""

import ml_collections

from configs.common import base_config, parse_arg, runlocal


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The config for `arg`: the comma-separated items the module docstring lists."""
    args = parse_arg(arg, {"tasks": "all", "interaction": "sum", "runlocal": False})
    config = base_config(args["tasks"])
    config.model.interaction = args["interaction"]
    if args["runlocal"]:
        runlocal(config)
    config.lock()  # --config.typo=... fails instead of being silently added
    return config
