"""Where the train step's time goes: a jax.profiler trace of the compiled step, its XLA ops
grouped by kind (3x3/7x7 convolutions, kernel-gradient convolutions, 1x1 matmuls, transposes,
reductions, elementwise fusions).

    python3 benchmarks/profile_step.py --stacks 2 --features 128 --res 128 --batch 16 \
        --tasks pose2d [--trace_dir DIR]

Prints one JSON line: ms per step for each kind and the 10 slowest ops. Open the trace in
Perfetto (ui.perfetto.dev, the perfetto_trace.json.gz under --trace_dir) for the timeline.
"""

from __future__ import annotations

import collections
import glob
import gzip
import json
import os
import re
import sys
import tempfile

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import cli  # noqa: E402
import train_step  # noqa: E402

from hgmt.tasks import parse_tasks  # noqa: E402


def op_kinds(hlo: str) -> dict[str, str]:
    """Top-level instruction name -> kind, from the compiled HLO text."""
    # Without metadata: its op names say "transpose(jvp(...))" for every backward-pass op.
    hlo = re.sub(r", metadata=\{[^}]*\}", "", hlo)
    bodies, current = {}, None
    for line in hlo.splitlines():
        head = re.match(r"%?([\w.\-]+) .*\{$", line)
        if head and not line.startswith(" "):
            current = head.group(1)
            bodies[current] = []
        elif current:
            bodies[current].append(line)
    kinds = {}
    for line in hlo.splitlines():
        m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = \S+ [\w-]+\(", line)
        if not m:
            continue
        callee = re.search(r"calls=%?([\w.\-]+)", line)
        body = "\n".join(bodies.get(callee.group(1), [])) if callee else line
        conv = re.search(r"convolution\(.*?window=\{size=(\d+)x(\d+)", body)
        if conv:
            k = int(conv.group(1))
            # The model's kernels are 3x3 and 7x7 (forward and input gradient); a kernel
            # gradient is a convolution whose window is the feature map.
            kinds[m.group(1)] = (f"conv {k}x{k} (forward, input gradient)" if k in (3, 7)
                                 else "conv kernel-gradient (window = feature map)")
        elif "dot(" in body:
            kinds[m.group(1)] = "matmul (1x1 convs, dense)"
        elif "transpose(" in body:
            kinds[m.group(1)] = "transpose"
        elif "reduce(" in body:
            kinds[m.group(1)] = "reduce (BatchNorm statistics, bias grads)"
        else:
            kinds[m.group(1)] = "elementwise (BatchNorm, ReLU, adds, pooling)"
    return kinds


def main(argv: list[str] | None = None) -> dict:
    p = cli.parser(__doc__.splitlines()[0])
    p.add_argument("--trace_dir", default=None)
    a = p.parse_args(argv)
    names = parse_tasks(a.tasks)
    step, state, data, *_ = train_step.compiled_step(a.stacks, a.features, a.res, a.batch,
                                                       a.tasks, a.dtype)
    for _ in range(a.warmup):
        state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    trace_dir = a.trace_dir or tempfile.mkdtemp(prefix="hgmt_trace_")
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(a.steps):
        state, metrics = step(state, data)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))[-1]
    events = json.load(gzip.open(path))
    events = events["traceEvents"] if isinstance(events, dict) else events
    kinds = op_kinds(step.as_text())
    per_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e.get("name") in kinds:
            per_op[e["name"]] += e["dur"] / 1000 / a.steps
    per_kind: collections.Counter = collections.Counter()
    for name, ms in per_op.items():
        per_kind[kinds[name]] += ms
    result = {"benchmark": "profile_step", "stacks": a.stacks, "features": a.features,
              "res": a.res, "batch": a.batch, "tasks": "+".join(names),
              "ops_ms_per_step": round(sum(per_kind.values()), 1),
              "ms_per_kind": {k: round(v, 1) for k, v in per_kind.most_common()},
              "slowest_ops": {f"{n} [{kinds[n]}]": round(v, 2)
                              for n, v in per_op.most_common(10)},
              "trace": path}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
