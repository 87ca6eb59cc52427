"""Parameters and forward GFLOP per image of a model configuration, as a Markdown table.

    python -m hgmt.models.summary --config=configs/default.py:tasks=pose2d
    python -m hgmt.models.summary --config=configs/default.py --all_subsets [--json]

GFLOP come from XLA's cost analysis of the jitted forward pass (batch 1, inference mode,
`config.image_size` pixels) as lowered, before any backend compiles it: after compilation a
GPU's convolutions are cuDNN calls that the analysis does not count. One multiply-add counts as
2 FLOP, so GMAC = GFLOP / 2. Where the analysis gives no count (JAX's GPU plugin), the figure
is "unmeasured" (null in JSON).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from hgmt import cli, stops
from hgmt.models import create_model
from hgmt.tasks import all_subsets, config_tasks, heads


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_bool("all_subsets", False, "Summarise all 15 task subsets of the config's "
                      "model.", flag_values=fv)
    flags.DEFINE_bool("json", False, "Print one JSON line per configuration instead of "
                      "Markdown.", flag_values=fv)


def first_flop_count(sources: Iterable[tuple[str, Callable[[], Any]]]) -> tuple[float, str]:
    """(FLOPs, name) of the first of `sources`, (name, analysis) pairs, whose analysis gives a
    count: a dict with "flops", or a list of them (one per program; the first counts); its
    "flops_runs_unknown" (FLOPs in loops or branches run an unknown number of times, counted
    once) goes into the name. One that raises (a parse of a backend's HLO not seen before) is
    logged to stderr and skipped. -> (nan, "none") when none gives a count."""
    for name, analysis in sources:
        try:
            cost = analysis()
        except Exception as e:  # noqa: BLE001  (any failure of one analysis: try the next)
            print(f"the {name} FLOP count failed ({type(e).__name__}: {e}); skipped",
                  file=sys.stderr, flush=True)
            continue
        cost = cost[0] if isinstance(cost, list | tuple) and cost else cost
        if cost and "flops" in cost:
            if cost.get("flops_runs_unknown"):
                name += (f" ({cost['flops_runs_unknown'] / 1e9:.3f} GFLOP of it in loops or "
                         f"branches run an unknown number of times, counted once)")
            return float(cost["flops"]), name
    return float("nan"), "none"


def summarize(model_config: Mapping[str, Any], tasks: Sequence[str],
              image_size: int = 256) -> dict:
    """-> {'tasks', 'params', 'gflop'} for one image of `image_size`² pixels; 'gflop' is None
    (unmeasured) where XLA's cost analysis of the lowered forward pass gives no count."""
    model = create_model(model_config, heads(tasks))
    image = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))
    params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(shapes["params"])))
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(shapes, image)
    flops, _ = first_flop_count((("lowered", lowered.cost_analysis),))
    return {"tasks": "+".join(tasks), "params": params,
            "gflop": None if math.isnan(flops) else flops / 1e9}


def markdown(rows: list[dict], model_config: Mapping[str, Any], image_size: int) -> str:
    """A Markdown table of `rows` (`summarize`'s dicts: tasks, params, gflop per image) under a
    line naming the model configuration and the input size."""
    m = dict(model_config)
    head = (f"{m['num_stacks']} stacks x {m['features']} features, depth {m['depth']}, "
            f"interaction `{m['interaction']}`, shared_trunk={m['shared_trunk']}, "
            f"{image_size}x{image_size} input")
    lines = [head, "", "| tasks | parameters (M) | forward GFLOP / image |", "|---|---|---|"]
    lines += [f"| {r['tasks']} | {r['params'] / 1e6:.2f} | "
              f"{'unmeasured' if r['gflop'] is None else format(r['gflop'], '.1f')} |"
              for r in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m hgmt.models.summary --config=FILE[:ARG] [--all_subsets] [--json]
    [--config.x=y ...]` -> exit status."""
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=True)
    with stops.stops_in_one_line(command=argv is None):  # Ctrl-C: one line
        return _run(args)


def _run(args: flags.FlagValues) -> int:
    """The summary of `main`, its flags parsed; -> exit status."""
    config = args.config
    if config is None:
        raise SystemExit("error: --config is required: a config file such as "
                         "configs/default.py:tasks=pose2d")
    with cli.faults_in_one_line(ValueError):  # a bad config value: one line, as hgmt.main's
        subsets = all_subsets() if args.all_subsets else [config_tasks(config)]
        rows = [summarize(config.model, tasks, config.image_size) for tasks in subsets]
    if args.json:
        for r in rows:
            print(json.dumps(r))
    else:
        print(markdown(rows, config.model, config.image_size))
    return 0


if __name__ == "__main__":
    sys.exit(main())
