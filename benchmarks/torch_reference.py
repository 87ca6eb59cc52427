"""The same multi-task stacked-hourglass network, loss and optimizer, written plainly in PyTorch.

It is the yardstick for hgmt's training speed: `benchmarks/compare.py` runs it back to back with
`benchmarks/train_step.py` on the same configs. Same CLI, same JSON line:

    python3 benchmarks/torch_reference.py --stacks 2 --features 128 --res 128 --batch 16 \
        --tasks pose2d --dtype float32

Needs the `bench` extra (torch; on a CPU machine install a CPU-only build). Runs on the GPU
when PyTorch sees one (channels-last, cuDNN autotuning, bfloat16 autocast with --dtype bfloat16).
"""

from __future__ import annotations

import json
import time

import cli
import torch
import torch.nn.functional as F
from torch import nn

TASK_CHANNELS = {"pose2d": 16, "pose3d": 16 * 19, "depth": 20, "segm": 15}
TASK_NAMES = tuple(TASK_CHANNELS)


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


def make_step(args) -> tuple:
    """(step, model) for parsed `cli.parser` arguments: step() runs one training step (forward,
    losses, backward, RMSprop update) on a fixed random batch and returns the loss as a tensor
    (reading it would wait for the GPU every step)."""
    tasks = TASK_NAMES if args.tasks == "all" else tuple(args.tasks.split("+"))
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.backends.cudnn.benchmark = True
    model = MultiTaskHourglass(tasks, args.stacks, args.features)
    model.to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.RMSprop(model.parameters(), lr=2.5e-4)
    images, targets = make_batch(tasks, args.batch, args.res)
    images = images.to(device, memory_format=torch.channels_last)
    targets = {t: v.to(device) for t, v in targets.items()}
    autocast_dtype = torch.bfloat16 if args.dtype == "bfloat16" else None

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            outs = model(images)
            loss = sum(task_loss(t, o.float(), targets[t]) for t in tasks for o in outs[t])
        loss.backward()
        opt.step()
        return loss.detach()

    return step, model


def main(argv=None) -> dict:
    args = cli.parser(__doc__.splitlines()[0]).parse_args(argv)
    step, model = make_step(args)
    for _ in range(args.warmup):
        step().item()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    loss.item()
    dt = (time.perf_counter() - t0) / args.steps
    result = {
        "impl": "torch", "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "stacks": args.stacks, "features": args.features, "res": args.res,
        "batch": args.batch, "tasks": "+".join(model.tasks), "dtype": args.dtype,
        "params": sum(p.numel() for p in model.parameters()),
        "step_s": dt, "img_per_s": args.batch / dt, "compile_s": 0.0,
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
