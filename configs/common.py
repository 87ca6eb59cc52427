"""Pieces shared by the configs: the base ConfigDict and the `key=value,flag` argument parser."""

from __future__ import annotations

import ml_collections

from hgmt.choices import not_one_of
from hgmt.data.augment import Augment
from hgmt.tasks import TASKS, default_loss_options, parse_tasks

_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")


def parse_arg(arg: str | None, defaults: dict) -> dict:
    """'tasks=pose2d+segm,runlocal' -> {'tasks': 'pose2d+segm', 'runlocal': True}.

    Keys must be in `defaults`, and each value takes its default's type: a boolean is a bare
    flag or `=true|false` (also 1/0, yes/no); a string whose default is '' may be given empty
    (`key=`: none); an unknown key, a key given twice or an unparsable value is an error
    listing the valid ones."""
    out, given = dict(defaults), set()
    for item in filter(None, (arg or "").split(",")):
        key, has_value, value = item.partition("=")
        if key not in defaults:
            raise not_one_of(f"unknown config argument {key!r}", sorted(defaults))
        if key in given:
            raise ValueError(f"config argument {key!r} given twice; give it once")
        given.add(key)
        if isinstance(defaults[key], bool):
            word = value.lower() if has_value else "true"
            if word not in _TRUE + _FALSE:
                raise ValueError(f"config argument {key}={value!r}: give {key}, "
                                 f"{key}=true or {key}=false")
            out[key] = word in _TRUE
        elif not value and defaults[key] == "":
            out[key] = ""
        elif not value:
            raise ValueError(f"config argument {key!r} needs a value: {key}=...")
        else:
            kind = type(defaults[key])
            try:
                out[key] = kind(value)
            except ValueError:
                raise ValueError(f"config argument {key}={value!r}: give {key}=<{kind.__name__}>"
                                 f", e.g. {key}={defaults[key]}") from None
    return out


def evaluator_config(split: str = "test", *, frames: str = "middle", protocol: str = "hgmt",
                     flip: bool = False, max_examples: int = 0, every: int = 0,
                     at_end: bool = False, best_metric: str = "") -> ml_collections.ConfigDict:
    """One entry of `config.evals` (hgmt/training/eval_settings.py says what each field does),
    every field present so that `--config.evals.<name>.<field>=...` overrides any of them."""
    return ml_collections.ConfigDict(dict(
        split=split, frames=frames, protocol=protocol, flip=flip, max_examples=max_examples,
        every=every, at_end=at_end, best_metric=best_metric))


def base_config(tasks: str) -> ml_collections.ConfigDict:
    """Every field the trainer reads, with the defaults of a full SURREAL run."""
    names = parse_tasks(tasks)
    c = ml_collections.ConfigDict()
    c.tasks = "+".join(names)
    c.dataset = "surreal/every10"
    c.data_dir = "~/tensorflow_datasets"
    c.image_size = 256
    c.batch_size = 32  # global, split over all devices of all hosts
    c.total_steps = 200_000
    c.seed = 0

    c.model = ml_collections.ConfigDict()
    c.model.num_stacks = 2
    c.model.features = 256
    c.model.depth = 4
    c.model.interaction = "sum"
    c.model.shared_trunk = False
    c.model.dtype = "float32"
    # "separate": one compiled stream per task; "vmapped": a stage's task streams as one
    # stream over a stacked task axis (one compiled stream, the same function); "auto": the
    # faster on the backend (hgmt.models.AUTO_STREAM_MODE). Checkpoints are per task in all.
    c.model.stream_mode = "auto"
    # "custom": hgmt's ops (a 1x1 convolution as a 2-D matmul, max-pooling and BatchNorm with
    # hand-written backward passes); "flax": Flax's and lax's own; the same variables and
    # values. "auto": the faster on the backend (hgmt.models.AUTO_OPS).
    c.model.ops = "auto"
    # BatchNorm's training statistics: "global" over the global batch (every device: two
    # all-reduces a layer) or "device" over each device's share (PyTorch DataParallel's); the
    # running averages are averaged over the devices before each evaluation and save.
    c.model.batch_norm_stats = "global"

    c.loss_weights = ml_collections.ConfigDict(
        {name: float(TASKS[name].DEFAULT_LOSS_WEIGHT) for name in names})
    # keyword options of the selected tasks' losses (each task's LOSS_OPTIONS; the defaults are
    # the reference's loss), e.g. loss_options.depth.foreground_weight
    c.loss_options = ml_collections.ConfigDict(default_loss_options(names))

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "rmsprop"  # rmsprop (reference code) | adam
    c.optimizer.learning_rate = 2.5e-4
    c.optimizer.warmup_steps = 1000
    c.optimizer.schedule = "cosine"  # cosine | constant (after warm-up)
    c.optimizer.grad_clip_norm = 0.0  # 0 disables

    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.log_every = 100
    c.eval_batch_size = 32
    # The evaluators of training (hgmt/training/evaluators.py): each runs every `every` steps
    # and/or after the last one on the `frames` of `split` (middle: each clip's middle frame,
    # SURREAL's test protocol; all; everyK), at most `max_examples` of them (0: all); the one
    # with a `best_metric` keeps the checkpoint that scores best in <workdir>/best.
    c.evals = ml_collections.ConfigDict()
    c.evals.validation = evaluator_config("validation", every=2000, best_metric="loss/total")
    c.evals.test = evaluator_config("test", at_end=True)  # -> <workdir>/eval_test.json
    c.worker_count = -1  # grain worker processes; 0: in the main process; -1: usable cores - 2
    # threads reading records ahead, per loader process: 0 reads in the loader's own thread
    # (the most examples per CPU-second from local disk); a few for remote storage (e.g. GCS)
    c.read_threads = 0
    c.prefetch = 2  # batches kept on device ahead of the step
    # where the crop and augmentation run: host (the loader's workers), device (inside the
    # train step, the loader only decodes) or auto (by backend: hgmt.data.device_augment.AUTO)
    c.augment_on = "auto"
    # the training augmentation's distributions (docs/surreal_format.md): scale 2 ** clip(N(0,
    # scale_sigma), ±scale_clip), rotation clip(N(0, rotate_sigma), ±rotate_clip) degrees with
    # probability rotate_p, colour gain U(gain_min, gain_max) per channel, horizontal flip with
    # probability flip_p; the references' settings: docs/training.md
    c.augment = ml_collections.ConfigDict(Augment().config_fields())
    # the box training crops are cut around (hgmt.data.cropping.TRAIN_WINDOWS): hgmt's
    # (the joints' box with margins, docs/surreal_format.md) or reference_box, the reference
    # code's (about 0.84 of hgmt's side: the scale their protocols measure the person at);
    # hgmt's protocol evaluates and prediction searches in the same window
    c.window = "hgmt"
    # damaged records (hgmt/data/damage.py) are skipped and replaced; above this fraction of
    # the training split the run stops: that is a bad copy, not one bad record
    c.max_damaged_fraction = 0.001
    return c


def runlocal(c: ml_collections.ConfigDict) -> None:
    """Shrinks a config to run on a laptop CPU in minutes."""
    c.image_size = 64
    c.batch_size = 8
    c.total_steps = 50
    c.model.num_stacks = 1
    c.model.features = 32
    c.model.depth = 2
    c.optimizer.warmup_steps = 5
    c.checkpoint_every = 25
    c.log_every = 10
    c.eval_batch_size = 8
    c.evals.validation.every = 0  # no validation during so short a run: nor a best checkpoint
    c.evals.validation.best_metric = ""
    c.evals.test.max_examples = 32
    c.worker_count = 0
