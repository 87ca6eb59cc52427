"""The same multi-task stacked-hourglass network, losses and optimizer, written plainly in
PyTorch.

It is the yardstick for hgmt's training speed: `benchmarks/compare.py` runs it back to back with
`benchmarks/train_step.py` on the same configs. Same flags (benchmarks/cli.py), same JSON line:

    python3 benchmarks/torch_reference.py --config.image_size=128 --config.batch_size=16 \\
        --config.model.features=128 [--compile [--compile_mode=max-autotune]]

Needs the `bench` extra (torch; on a CPU machine install a CPU-only build). Runs on the GPU
when PyTorch sees one, with channels-last tensors, cuDNN autotuning and, for
`--config.model.dtype=bfloat16`, bfloat16 autocast. `--compile` runs the forward pass and the
losses through `torch.compile` (its backward is compiled with it) in `--compile_mode`
(`max-autotune`: Triton and template autotuning of the matmuls and convolutions, the slowest to
compile; `default`); the JSON line gives the mode and `compile_s`, the wall time of the first
step (tracing, compilation, autotuning) less one steady step. Inductor's on-disk cache goes to
a fresh folder (`--compile_cache` to reuse one), so `compile_s` is a cold compile.
compare.py runs max-autotune under a time limit and falls back to the default mode.

The work around the network is less than hgmt's step: this step trains on a random float image
batch and float targets made once before timing (`make_batch`), where hgmt's step normalises
uint8 images and builds every target from the joints inside the step (pose2d's heatmaps,
pose3d's 16 x 19-bin volumes); the losses are the same functions (mean squared error, spatial
cross-entropy: hgmt's at its default foreground_weight 1), unweighted here, and the optimizer
is RMSprop whatever config.optimizer names, its learning rate constant here and scheduled in
hgmt's step. `--compile` compiles `forward_loss` only: RMSprop's update and `zero_grad` stay
eager.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Sequence

# The config comes through hgmt's packages, which import JAX: keep it off the accelerator,
# which is PyTorch's here.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import cli  # noqa: E402

cli.require_torch(__file__)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from absl import flags  # noqa: E402
from cli import print_line  # noqa: E402
from torch import nn  # noqa: E402

from hgmt.tasks import parse_tasks  # noqa: E402

TASK_CHANNELS = {"pose2d": 16, "pose3d": 16 * 19, "depth": 20, "segm": 15}


class Residual(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-1x1 C/2, BN-ReLU-3x3 C/2, BN-ReLU-1x1 C (+1x1 skip);
    as in hgmt, a convolution that feeds a BatchNorm has no bias."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        mid = cout // 2
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2, self.conv2 = (nn.BatchNorm2d(mid),
                                nn.Conv2d(mid, mid, 3, padding=1, bias=False))
        self.bn3, self.conv3 = nn.BatchNorm2d(mid), nn.Conv2d(mid, cout, 1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else None

    def forward(self, x):
        y = self.conv1(F.relu(self.bn1(x)))
        y = self.conv2(F.relu(self.bn2(y)))
        y = self.conv3(F.relu(self.bn3(y)))
        return y + (self.skip(x) if self.skip is not None else x)


class Hourglass(nn.Module):
    def __init__(self, depth: int, c: int):
        super().__init__()
        self.up1, self.low1, self.low3 = Residual(c, c), Residual(c, c), Residual(c, c)
        self.low2 = Hourglass(depth - 1, c) if depth > 1 else Residual(c, c)

    def forward(self, x):
        up1 = self.up1(x)
        low = self.low3(self.low2(self.low1(F.max_pool2d(x, 2))))
        return up1 + F.interpolate(low, scale_factor=2, mode="nearest")


class Stream(nn.Module):
    """One task's hourglass stage: features and a prediction."""

    def __init__(self, c: int, depth: int, out: int):
        super().__init__()
        self.hg, self.res = Hourglass(depth, c), Residual(c, c)
        self.lin = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.head = nn.Conv2d(c, out, 1)

    def forward(self, x):
        f = self.lin(self.res(self.hg(x)))
        return f, self.head(f)


class MultiTaskHourglass(nn.Module):
    """Shared stem; per stage one stream and head per task; hgmt's `sum` interaction between
    stages: next input of task t = x_t + 1x1(f_t) + 1x1(p_t) + sum over the other tasks s of
    1x1([f_s, p_s]) (hgmt/models/multitask.py)."""

    def __init__(self, tasks, stacks: int, c: int, depth: int = 4):
        super().__init__()
        self.tasks, self.stacks = tasks, stacks
        self.stem = nn.Sequential(
            nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            Residual(64, 128), nn.MaxPool2d(2), Residual(128, 128), Residual(128, c))
        self.streams = nn.ModuleList(
            nn.ModuleDict({t: Stream(c, depth, TASK_CHANNELS[t]) for t in tasks})
            for _ in range(stacks))
        self.back_f = nn.ModuleList(
            nn.ModuleDict({t: nn.Conv2d(c, c, 1) for t in tasks}) for _ in range(stacks - 1))
        self.back_o = nn.ModuleList(
            nn.ModuleDict({t: nn.Conv2d(TASK_CHANNELS[t], c, 1) for t in tasks})
            for _ in range(stacks - 1))
        self.cross = nn.ModuleList(
            nn.ModuleDict({f"{t}_from_{s}": nn.Conv2d(c + TASK_CHANNELS[s], c, 1)
                           for t in tasks for s in tasks if s != t})
            for _ in range(stacks - 1))

    def forward(self, images):
        x0 = self.stem(images)
        xs = {t: x0 for t in self.tasks}
        outputs = {t: [] for t in self.tasks}
        for stage in range(self.stacks):
            feats = {}
            for t in self.tasks:
                f, o = self.streams[stage][t](xs[t])
                outputs[t].append(o)
                feats[t] = (f, o)
            if stage + 1 < self.stacks:
                nxt = {}
                for t in self.tasks:
                    f, o = feats[t]
                    y = xs[t] + self.back_f[stage][t](f) + self.back_o[stage][t](o)
                    for s in self.tasks:
                        if s != t:
                            y = y + self.cross[stage][f"{t}_from_{s}"](torch.cat(feats[s], 1))
                    nxt[t] = y
                xs = nxt
        return outputs


def task_loss(task: str, pred, target):
    if task in ("pose2d", "pose3d"):
        return F.mse_loss(pred, target)
    return F.cross_entropy(pred, target)


def make_batch(tasks, batch: int, res: int):
    r = res // 4
    images = torch.randn(batch, 3, res, res)
    targets = {}
    for t in tasks:
        if t in ("pose2d", "pose3d"):
            targets[t] = torch.rand(batch, TASK_CHANNELS[t], r, r)
        else:
            targets[t] = torch.randint(0, TASK_CHANNELS[t], (batch, r, r))
    return images, targets


def check_config(config) -> tuple[str, ...]:
    """The tasks of `config`; a model option the reference does not implement is an error."""
    if config.model.interaction != "sum" or config.model.shared_trunk:
        raise ValueError(
            f"the PyTorch reference implements model.interaction='sum' with one stream per "
            f"task only (got interaction={config.model.interaction!r}, "
            f"shared_trunk={config.model.shared_trunk}); drop those overrides")
    if config.model.dtype not in ("float32", "bfloat16"):
        raise ValueError(f"config.model.dtype={config.model.dtype!r}: the reference runs "
                         f"float32 or bfloat16 (autocast)")
    return parse_tasks(config.tasks)


def make_step(config, compile_mode: str | None = None) -> tuple:
    """(step, model) for a training config: step() runs one training step (forward, losses,
    backward, RMSprop update) on a fixed random batch and returns the loss as a tensor (reading
    it would wait for the GPU every step). With `compile_mode` the forward pass and losses run
    through `torch.compile(mode=compile_mode)`; the first call compiles."""
    tasks = check_config(config)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    model = MultiTaskHourglass(tasks, config.model.num_stacks, config.model.features,
                               config.model.depth)
    model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.RMSprop(model.parameters(), lr=config.optimizer.learning_rate)
    images, targets = make_batch(tasks, config.batch_size, config.image_size)
    images = images.to(device, memory_format=torch.channels_last)
    targets = {t: v.to(device) for t, v in targets.items()}
    autocast_dtype = torch.bfloat16 if config.model.dtype == "bfloat16" else None

    def forward_loss(images):
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outs = model(images)
            return sum(task_loss(t, o.float(), targets[t]) for t in tasks for o in outs[t])

    if compile_mode:
        forward_loss = torch.compile(forward_loss, mode=compile_mode)

    def step():
        if compile_mode:  # CUDA graphs (max-autotune): a new iteration starts here
            torch.compiler.cudagraph_mark_step_begin()
        opt.zero_grad(set_to_none=True)
        loss = forward_loss(images)
        loss.backward()
        opt.step()
        return loss.detach()

    return step, model


def _define_flags(fv: flags.FlagValues) -> None:
    cli.define_timing(fv)
    flags.DEFINE_bool("compile", False, "run the forward pass and losses through torch.compile",
                      flag_values=fv)
    flags.DEFINE_enum("compile_mode", "max-autotune", cli.COMPILE_MODES,
                      "torch.compile's mode with --compile", flag_values=fv)
    flags.DEFINE_string("compile_cache", "", "Inductor and Triton cache folder with --compile "
                        "(default: a fresh temporary one, so compile_s is a cold compile)",
                        flag_values=fv)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(_define_flags, argv, __doc__)
    config = fv.config
    mode = fv.compile_mode if fv["compile"].value else None
    if mode:
        cache = fv.compile_cache or tempfile.mkdtemp(prefix="hgmt_inductor_")
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, "triton")
    step, model = make_step(config, mode)
    t0 = time.perf_counter()
    step().item()  # the first step: compilation (with --compile) and cuDNN autotuning
    first_s = time.perf_counter() - t0
    for _ in range(max(fv.warmup - 1, 0)):
        step().item()
    _sync()
    t0 = time.perf_counter()
    for _ in range(fv.steps):
        loss = step()
    loss.item()
    dt = (time.perf_counter() - t0) / fv.steps
    result = {
        "impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        **cli.describe(config), "params": sum(p.numel() for p in model.parameters()),
        "compile_mode": mode or "eager", "step_s": round(dt, 5),
        "img_per_s": round(config.batch_size / dt, 2), "first_step_s": round(first_s, 2),
        "compile_s": round(max(first_s - dt, 0.0), 2) if mode else 0.0,
    }
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
