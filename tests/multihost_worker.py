"""One process of the 2-process training test (tests/test_train.py::test_two_processes_...).

    python tests/multihost_worker.py WORKDIR DATA_DIR PROCESS_ID PORT

Each process has 2 CPU devices; together they train one replicated model with
`jax.distributed.initialize` on localhost, then evaluate it. Writes WORKDIR/topology_<id>.json,
WORKDIR/params_<id>.npz and WORKDIR/eval_<id>.json.
"""

import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402


def main(workdir: str, data_dir: str, process_id: int, port: int) -> None:
    jax.distributed.initialize(f"localhost:{port}", num_processes=2, process_id=process_id)
    from hgmt import evaluate, train
    from tests.conftest import tiny_config

    with open(os.path.join(workdir, f"topology_{process_id}.json"), "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "local_devices": jax.local_device_count(), "devices": jax.device_count()}, f)
    config = tiny_config(data_dir, tasks="pose2d+segm", total_steps=3, checkpoint_every=3)
    state = train.train(config, workdir)
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    np.savez(os.path.join(workdir, f"params_{process_id}.npz"),
             **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    summary = evaluate.evaluate(config, {"params": state.params,
                                         "batch_stats": state.batch_stats})
    with open(os.path.join(workdir, f"eval_{process_id}.json"), "w") as f:
        json.dump(summary, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
