"""One process of the 2-process training test (tests/test_train.py::test_two_processes_...).

    python tests/multihost_worker.py WORKDIR DATA_DIR PROCESS_ID PORT [TOTAL_STEPS [KEY=VALUE...]]

Each process has 2 CPU devices; together they train one replicated model with
`jax.distributed.initialize` on localhost, then evaluate it. Writes WORKDIR/topology_<id>.json,
WORKDIR/params_<id>.npz and WORKDIR/eval_<id>.json.

With TOTAL_STEPS (the fault tests in tests/test_faults.py): pose2d, a checkpoint every 2 steps,
no evaluation, config fields overridden by KEY=VALUE (a Python literal); a 10 s heartbeat
timeout; on a preemption signal it writes WORKDIR/preempted_<id>.json and exits 75, and on any
other error it ends as hgmt.main does (a fault of loop.FAULTS in one line, status 1). With
HGMT_TEST_SIGTERM_IN_EVALUATION=<id>, process <id> sends itself SIGTERM when an evaluation
reads its second batch; with HGMT_TEST_SIGTERM_AT_START=<id>, when training starts to
restore its checkpoint (before its first step).
"""

import ast
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.conftest import as_worker_process  # noqa: E402

as_worker_process(2)

import jax  # noqa: E402
import numpy as np  # noqa: E402


def _placement(process_id: int) -> dict:
    """Where this process's rows land on the devices (`hgmt.devices`): its devices' mesh
    positions (axis_index) and every device's row as one step gathers them, each process's
    local rows numbered 10 * process + k."""
    from hgmt import devices

    local = np.array([[10 * process_id + k] for k in range(jax.local_device_count())])
    step = devices.spmd(lambda row: (jax.lax.axis_index(devices.AXIS),
                                     jax.lax.all_gather(row, devices.AXIS)))
    positions, gathered = step(devices.place(local))
    return {"positions": [int(np.asarray(s.data)[0]) for s in positions.addressable_shards],
            "gathered": np.asarray(gathered.addressable_shards[0].data)[0].ravel().tolist()}


def main(workdir: str, data_dir: str, process_id: int, port: int,
         total_steps: int | None = None, overrides: dict | None = None) -> None:
    from hgmt import cli
    from hgmt.training import cluster, peers
    from tests.conftest import enable_compilation_cache

    enable_compilation_cache()
    cluster.initialize(f"localhost:{port}", num_processes=2, process_id=process_id,
                       heartbeat_timeout_s=10, shutdown_timeout_s=10)
    from hgmt.evaluation import evaluator
    from hgmt.training import loop, preemption
    from tests.conftest import tiny_config

    with open(os.path.join(workdir, f"topology_{process_id}.json"), "w") as f:
        json.dump({"process_index": jax.process_index(), "process_count": jax.process_count(),
                   "local_devices": jax.local_device_count(), "devices": jax.device_count(),
                   **_placement(process_id)}, f)
    if total_steps is None:
        config = tiny_config(data_dir, tasks="pose2d+segm", total_steps=3, checkpoint_every=3)
    else:
        config = tiny_config(data_dir, tasks="pose2d", total_steps=total_steps,
                             checkpoint_every=2, **{"optimizer.schedule": "constant",
                                                    **(overrides or {})})
    if os.environ.get("HGMT_TEST_SIGTERM_IN_EVALUATION") == str(process_id):
        _sigterm_at_second_evaluation_batch()
    if os.environ.get("HGMT_TEST_SIGTERM_AT_START") == str(process_id):
        _sigterm_at_start()
    try:
        with cli.faults_in_one_line(*loop.FAULTS):
            # The tests resume a run with more steps (total_steps) than it was started with.
            state = loop.train(config, workdir, resume_with_changed_config=True)
    except peers.PeerLost as e:
        print(f"(test) {type(e).__name__} raised by the main thread after a "
              f"{type(e.__cause__).__name__}", flush=True)
        peers.exit_lost(e)  # as hgmt.main does
    except preemption.Preempted as e:
        with open(os.path.join(workdir, f"preempted_{process_id}.json"), "w") as f:
            json.dump({"step": e.step}, f)
        sys.exit(preemption.EXIT_PREEMPTED)
    except BaseException as e:
        peers.exit_failed(e)  # as hgmt.main ends a multi-process run
    leaves = jax.tree_util.tree_leaves_with_path(state.params)
    np.savez(os.path.join(workdir, f"params_{process_id}.npz"),
             **{jax.tree_util.keystr(k): np.asarray(v) for k, v in leaves})
    if total_steps is not None:
        return
    summary = evaluator.evaluate(config, {"params": state.params,
                                         "batch_stats": state.batch_stats})
    with open(os.path.join(workdir, f"eval_{process_id}.json"), "w") as f:
        json.dump(summary, f)


def _sigterm_at_second_evaluation_batch() -> None:
    import signal
    import time

    from hgmt.data import eval_data

    batches = eval_data.eval_batches

    def signalling(*args, **kwargs):
        for i, batch in enumerate(batches(*args, **kwargs)):
            if i == 1:
                # A real SIGTERM, caught by JAX's notifier as a scheduler's would be.
                os.kill(os.getpid(), signal.SIGTERM)
                # JAX's sync protocol agrees on the check after every process's last one:
                # time for it to finish before this process's next check, so that the agreed
                # check comes before the evaluation's last batch.
                time.sleep(2.0)
            yield batch

    eval_data.eval_batches = signalling


def _sigterm_at_start() -> None:
    import signal

    from hgmt.training import checkpoints

    restore = checkpoints.restore_newest_readable

    def signalling(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)  # a real SIGTERM, caught by JAX's notifier
        return restore(*args, **kwargs)

    checkpoints.restore_newest_readable = signalling


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]),
         int(sys.argv[5]) if len(sys.argv) > 5 else None,
         {k: ast.literal_eval(v) for k, v in (a.split("=", 1) for a in sys.argv[6:])})
