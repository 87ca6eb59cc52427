"""Where the PyTorch reference's train step spends its time, by kind of op, for reading next to
benchmarks/profile_step.py (hgmt's XLA ops by kind).

    python3 benchmarks/profile_torch.py --config.image_size=128 --config.batch_size=16 \\
        --config.model.features=128

torch.profiler over --steps steps of torch_reference's step; prints one JSON line: ms per step
for convolutions by kernel size (forward; backward = input and kernel gradients together, as
PyTorch runs them in one op), BatchNorm, ReLU, max-pooling, and everything else. Needs the
`bench` extra.

CPU only: the profiler records CPU activity, the ops' own CPU time is the figure, and the
convolutions are known by oneDNN's op (aten::mkldnn_convolution; float32 and bfloat16 on this
CPU run every convolution through it). On a host where PyTorch sees CUDA,
torch_reference.make_step would put the step on the GPU, whose kernels run asynchronously
with other op names, so the script stops and says to hide the GPU (CUDA_VISIBLE_DEVICES=)
rather than print CPU launch times as the GPU's.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Sequence

import cli

cli.require_torch(__file__)

import torch  # noqa: E402
import torch_reference  # noqa: E402
from cli import print_line  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

CONV_OPS = {"aten::mkldnn_convolution": "forward", "aten::convolution_backward": "backward"}
OTHER_KINDS = {
    "aten::native_batch_norm": "BatchNorm forward",
    "aten::native_batch_norm_backward": "BatchNorm backward",
    "aten::clamp_min": "ReLU forward", "aten::relu": "ReLU forward",
    "aten::threshold_backward": "ReLU backward",
    "aten::max_pool2d_with_indices": "max-pool forward",
    "aten::max_pool2d_with_indices_backward": "max-pool backward",
}


def kind(name: str, input_shapes: list) -> str:
    """The kind of one aten op; convolutions by kernel size from the weight's shape."""
    if name in CONV_OPS:
        weight = input_shapes[2 if name == "aten::convolution_backward" else 1]
        return f"conv {weight[2]}x{weight[3]} {CONV_OPS[name]}"
    return OTHER_KINDS.get(name, "other")


def benchmark(argv: Sequence[str] | None = None) -> dict:
    """Runs the benchmark with the command line `argv` and prints its JSON; -> the figures."""
    fv = cli.parse(cli.define_timing, argv, __doc__)
    if torch.cuda.is_available():
        raise SystemExit("error: profile_torch.py profiles PyTorch's step on the CPU, and on "
                         "this host the step would run on its GPU (torch_reference.make_step "
                         "takes CUDA where PyTorch sees it); run it with CUDA_VISIBLE_DEVICES= "
                         "to profile the CPU step")
    step, _ = torch_reference.make_step(fv.config)
    for _ in range(fv.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(fv.steps):
            step()
    per_kind: collections.Counter = collections.Counter()
    for event in prof.key_averages(group_by_input_shape=True):
        per_kind[kind(event.key, event.input_shapes)] += (
            event.self_cpu_time_total / 1000 / fv.steps)
    result = {"benchmark": "profile_torch", **cli.describe(fv.config),
              "ms_per_step": round(sum(per_kind.values()), 1),
              "ms_per_kind": {k: round(v, 1) for k, v in per_kind.most_common()}}
    print_line(result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status."""
    benchmark(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
