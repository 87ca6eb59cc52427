"""One process of a 2-process evaluation (tests/test_damaged_records.py).

    python tests/multihost_eval_worker.py OUT_JSON DATA_DIR PROCESS_ID PORT INDEX...
    python tests/multihost_eval_worker.py OUT_JSON DATA_DIR PROCESS_ID PORT flaky=K

Each process has 2 CPU devices; together they evaluate a freshly initialised pose2d model on
the test records INDEX... (each process reading its share of the batches), or with `flaky=K`
on every frame of the test split, which each process selects, process 1 finding record K
damaged (its own copy) each time it reads it while it selects them. Each writes its summary's
damaged-record fields and metrics to OUT_JSON with `_<process id>` before the suffix.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import as_worker_process  # noqa: E402

as_worker_process(2)

import jax  # noqa: E402


class Flaky:
    """A data source whose record `bad` does not read each time it is read, as from a
    damaged copy of its shard on this host (riegeli's checksum error: damage, not the
    storage's fault)."""

    def __init__(self, source, bad: int):
        self.source, self.bad = source, bad

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        if index == self.bad:
            raise RuntimeError("Corrupted chunk: hash mismatch")
        return self.source[index]

    def __getattr__(self, name: str):
        return getattr(self.source, name)


def main(out: str, data_dir: str, process_id: int, port: int, indices: list[str]) -> None:
    from hgmt.training import cluster
    from tests.conftest import enable_compilation_cache, tiny_config

    enable_compilation_cache()
    cluster.initialize(f"localhost:{port}", num_processes=2, process_id=process_id,
                       heartbeat_timeout_s=10, shutdown_timeout_s=10)
    from hgmt.evaluation import evaluator
    from hgmt.models import create_model
    from hgmt.tasks import heads
    from hgmt.training import steps

    config = tiny_config(data_dir, tasks="pose2d")
    state = steps.create_train_state(jax.random.key(0), config,
                                     create_model(config.model, heads(("pose2d",))))
    if indices[0].startswith("flaky="):
        from hgmt.data import eval_data

        bad = int(indices[0].removeprefix("flaky="))
        if process_id == 1:
            open_light = eval_data.open_light
            eval_data.open_light = lambda *args: Flaky(open_light(*args), bad)
        selected = None
    else:
        selected = [int(i) for i in indices]
    summary = evaluator.Evaluator(config, frames="all", indices=selected)(
        {"params": state.params, "batch_stats": state.batch_stats})
    stem, suffix = os.path.splitext(out)
    with open(f"{stem}_{process_id}{suffix}", "w") as f:
        json.dump({k: summary.get(k) for k in ("num_examples", "num_damaged", "damaged_records",
                                               "num_unreadable", "unreadable_records",
                                               "pose2d")}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5:])
