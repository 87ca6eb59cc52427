"""Training: `train_and_evaluate(config, workdir)`, readable top to bottom.

pmap over all local devices (the global batch split across devices and hosts), BatchNorm
statistics synchronised across devices (`axis_name="batch"`) and averaged before evaluation and
checkpointing, gradients averaged with `pmean`. Orbax checkpoints every `checkpoint_every`
steps and at the end; a rerun resumes from the workdir's latest checkpoint, data position
included. A non-finite loss stops the run naming the step and task, before anything is saved.
"""

from __future__ import annotations

import functools
import logging
import time

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from clu import metric_writers

from hgmt import checkpoints, evaluate, input_pipeline, steps, validation
from hgmt.models import create_model
from hgmt.tasks import parse_tasks


# --- The loop --------------------------------------------------------------------------------
def train(config: ml_collections.ConfigDict, workdir: str, writer=None) -> steps.TrainState:
    """Trains `config` in `workdir` up to `config.total_steps`, resuming from the workdir's
    latest checkpoint. Returns the final state on the host, BatchNorm statistics averaged."""
    tasks = parse_tasks(config.tasks)
    weights = steps.check_loss_weights(config, tasks)
    if config.batch_size % jax.device_count():
        raise ValueError(f"config.batch_size={config.batch_size} must be divisible by the "
                         f"{jax.device_count()} devices")
    if jax.process_index() == 0:
        checkpoints.save_config(config, workdir)
    writer = writer or metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    lr_fn = steps.create_lr(config)

    source = input_pipeline.open_split(config.dataset, config.data_dir, "train")
    loader = input_pipeline.train_loader(source, batch_size=config.batch_size,
                                         image_size=config.image_size, seed=config.seed,
                                         worker_count=config.worker_count)
    data_iter = input_pipeline.ConsumedPosition(iter(loader))

    model = create_model(config.model, tasks, axis_name="batch")
    state = steps.create_train_state(jax.random.key(config.seed), config, model)
    mngr = checkpoints.manager(workdir, keep=config.keep_checkpoints)
    if mngr.latest_step() is not None:
        try:
            restored = mngr.restore(mngr.latest_step(), args=ocp.args.Composite(
                state=ocp.args.StandardRestore(state),
                data=input_pipeline.grain.PyGrainCheckpointRestore(data_iter)))
        except Exception as e:
            raise ValueError(
                f"cannot resume from {checkpoints.checkpoint_dir(workdir)}/"
                f"{mngr.latest_step()} ({type(e).__name__}: {str(e)[:300]}): it does not read "
                f"as this config's train state (another model configuration, an older hgmt, "
                f"or a damaged checkpoint). Use a new --workdir, or the config and hgmt "
                f"version that wrote it") from e
        state = restored["state"]
        logging.info("resumed from %s at step %d", checkpoints.checkpoint_dir(workdir),
                     int(state.step))
    start_step = int(state.step)

    state = flax.jax_utils.replicate(state)
    p_train_step = jax.pmap(functools.partial(steps.train_step, weights=weights),
                            axis_name="batch", donate_argnums=(0,))
    device_iter = input_pipeline.prefetch_to_device(data_iter.batches(),
                                                     config.prefetch)

    validator = validation.Validator(config, workdir, weights)

    def host_state(state) -> steps.TrainState:
        return jax.device_get(flax.jax_utils.unreplicate(steps.sync_batch_stats(state)))

    def save(step: int, host: steps.TrainState) -> None:
        mngr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(host),
            data=input_pipeline.grain.PyGrainCheckpointSave(data_iter)))

    logging.info("training %s for steps %d..%d, %d devices, global batch %d", "+".join(tasks),
                 start_step, config.total_steps, jax.device_count(), config.batch_size)
    wait_time, t_last, step_last = 0.0, time.perf_counter(), start_step
    for step in range(start_step + 1, config.total_steps + 1):
        t0 = time.perf_counter()
        batch = next(device_iter)
        data_iter.consumed()
        wait_time += time.perf_counter() - t0
        state, metrics = p_train_step(state, batch)
        metrics = jax.device_get(flax.jax_utils.unreplicate(metrics))
        bad = [k.split("/")[1] for k, v in metrics.items() if not np.isfinite(v)]
        if bad:
            mngr.wait_until_finished()
            raise FloatingPointError(
                f"non-finite loss at step {step} in task(s) {', '.join(bad)}: {metrics}. "
                f"Nothing was saved for this step; the last good checkpoint "
                f"(step {mngr.latest_step()}) in {checkpoints.checkpoint_dir(workdir)} is "
                f"intact. Lower optimizer.learning_rate or set optimizer.grad_clip_norm.")
        if step % config.log_every == 0 or step == config.total_steps:
            elapsed = time.perf_counter() - t_last
            steps_done = step - step_last
            img_s = steps_done * config.batch_size / elapsed
            scalars = {**metrics, "img_per_s": img_s, "data_wait": wait_time / elapsed,
                       "learning_rate": float(lr_fn(step))}
            writer.write_scalars(step, scalars)
            eta = (config.total_steps - step) * elapsed / steps_done
            logging.info("step %d/%d  %s  %.1f img/s  data-wait %.0f%%  ETA %s", step,
                         config.total_steps, "  ".join(
                             f"{k.split('/')[1]} {v:.4g}" for k, v in metrics.items()),
                         img_s, 100 * wait_time / elapsed, _hms(eta))
            wait_time, t_last, step_last = 0.0, time.perf_counter(), step
        checkpoint_due = step % config.checkpoint_every == 0 or step == config.total_steps
        if checkpoint_due or validator.due(step):
            host = host_state(state)
            if checkpoint_due:
                save(step, host)
            if validator.due(step):
                validator(step, host, writer)
    mngr.wait_until_finished()
    mngr.close()
    validator.close()
    return jax.device_get(flax.jax_utils.unreplicate(steps.sync_batch_stats(state)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (see `train`), then evaluates the final model on the test protocol. Returns the
    evaluation summary."""
    writer = metric_writers.create_default_writer(workdir,
                                                  just_logging=jax.process_index() > 0)
    state = train(config, workdir, writer)
    summary = evaluate.evaluate(config, {"params": state.params,
                                         "batch_stats": state.batch_stats},
                                writer=writer, step=int(state.step))
    writer.flush()
    return summary


def _hms(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
