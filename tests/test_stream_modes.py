"""The two stream modes of the multi-task model: `vmapped` (a stage's task streams as one
stream over a stacked task axis) computes what `separate` computes from the same parameters,
and checkpoints, always written per task, load into either mode."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs.common import base_config
from hgmt import run_config, workdirs
from hgmt.inference import trained_model
from hgmt.models import (
    create_model,
    resolve_stream_mode,
    stacking,
    to_checkpoint_layout,
    to_model_layout,
)
from hgmt.tasks import TASKS, compute_losses, heads
from hgmt.training import checkpoints, steps
from tests.test_tasks import make_batch

TINY = dict(num_stacks=2, features=16, depth=1, interaction="gated")
TOL = 1e-5  # float32; relative to each compared array's largest magnitude
# The two stream modes compared in float64: a float32 gradient of these tiny, badly conditioned
# models (BatchNorm after convolutions of 0-255 images) moves by up to 3e-4 of its scale with
# the summation order alone (XLA:CPU's optimisation level), more than any tolerance that
# would still catch a wrong stream; in float64 the modes agree to 1e-14.
TOL64 = 1e-9


def _models(tasks, **cfg):
    return tuple(create_model(dict(TINY, stream_mode=m, **cfg), heads(tasks))
                 for m in ("separate", "vmapped"))


def _images(b=2, r=64, seed=1):
    return jax.random.uniform(jax.random.key(seed), (b, r, r, 3), maxval=255.0)


def _assert_close(a, b, what, tol=TOL):
    """Every leaf of `a` within `tol` x (its largest magnitude, at least 1e-2 x the largest
    of any leaf: sums in another order differ by a rounding error of the tree's scale, which
    can exceed `tol` of a gradient leaf 1000x smaller than the largest) of `b`'s; same tree."""
    fa = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_leaves_with_path(a)}
    fb = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_leaves_with_path(b)}
    assert fa.keys() == fb.keys() and fa, (what, sorted(set(fa) ^ set(fb))[:4])
    overall = max(float(np.abs(v).max()) for v in fa.values())
    for k in fa:
        scale = max(float(np.abs(fa[k]).max()), 1e-2 * overall, 1e-12)
        err = float(np.abs(fa[k] - fb[k]).max())
        assert err <= tol * scale, (what, k, err, scale)


def test_vmapped_has_one_stacked_stream_per_stage_and_per_task_heads():
    separate, vmapped = _models(tuple(TASKS))
    shapes = jax.eval_shape(vmapped.init, jax.random.key(0), _images())["params"]
    assert {"stage0_streams", "stage1_streams"} <= set(shapes)
    assert not any(f"stage0_{t}" in shapes for t in TASKS)
    assert all(f"stage{k}_{t}_head" in shapes for k in (0, 1) for t in TASKS)
    # Every stream variable gains a leading axis of one entry per task.
    sep = jax.eval_shape(separate.init, jax.random.key(0), _images())["params"]
    stacked = jax.tree.leaves(shapes["stage1_streams"])
    per_task = jax.tree.leaves(sep["stage1_pose2d"])
    assert [s.shape for s in stacked] == [(4, *p.shape) for p in per_task]


@pytest.mark.slow  # an option off by default (config.model.stream_mode) on every backend
@jax.enable_x64(True)
@pytest.mark.parametrize("tasks", [("pose2d", "segm"), ("pose2d",), tuple(TASKS)])
def test_vmapped_computes_the_separate_function(tasks):
    """Same parameters (converted): the same predictions in inference and training mode, the
    same updated BatchNorm statistics and the same gradient of the summed task losses, all in
    float64 (TOL64). Jitted: op by op, each float64 op dispatched alone, it takes twice the
    CPU time with a warm compilation cache."""
    separate, vmapped = (m.clone(dtype=jnp.float64) for m in _models(tasks))
    images = _images().astype(jnp.float64)
    variables = jax.tree.map(lambda x: x.astype(jnp.float64),
                             separate.init(jax.random.key(0), images))
    stacked = to_model_layout(vmapped, variables)
    assert "stage0_streams" in stacked["params"] and "stage0_pose2d" not in stacked["params"]

    _assert_close(jax.jit(vmapped.apply)(stacked, images),
                  jax.jit(separate.apply)(variables, images), "eval", TOL64)

    batch = make_batch(b=2, r=16)

    def loss(model, params, batch_stats):
        out, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                   train=True, mutable=["batch_stats"])
        total, _ = compute_losses(out, batch, {t: 1.0 for t in tasks})
        return total, (out, updates["batch_stats"])

    (l_sep, (out_sep, bs_sep)), g_sep = jax.jit(jax.value_and_grad(
        lambda p: loss(separate, p, variables["batch_stats"]), has_aux=True))(
        variables["params"])
    (l_vm, (out_vm, bs_vm)), g_vm = jax.jit(jax.value_and_grad(
        lambda p: loss(vmapped, p, stacked["batch_stats"]), has_aux=True))(stacked["params"])
    assert abs(float(l_vm) - float(l_sep)) <= TOL64 * abs(float(l_sep))
    assert jax.tree.leaves(g_vm)[0].dtype == jnp.float64
    _assert_close(out_vm, out_sep, "train outputs", TOL64)
    _assert_close(to_checkpoint_layout(vmapped, bs_vm), bs_sep, "batch statistics", TOL64)
    _assert_close(to_checkpoint_layout(vmapped, g_vm), g_sep, "gradients", TOL64)


@pytest.mark.slow  # 10 s of CPU with a warm compilation cache, most of it tracing
@jax.enable_x64(True)
def test_vmapped_computes_the_separate_function_under_pmap_with_cross_device_statistics():
    """Training under pmap over 2 devices, BatchNorm statistics across them (`axis_name`),
    gated interaction, 2 stages: the same outputs, loss, updated running statistics (the same
    on both devices) and device-averaged gradient in the two modes, in float64 (TOL64)."""
    tasks, n, b, r = ("pose2d", "segm"), 2, 2, 16
    devices = jax.local_devices()[:n]
    separate, vmapped = (m.clone(dtype=jnp.float64, axis_name="batch")
                         for m in _models(tasks, features=8, depth=1))
    images = _images(b=n * b, r=r).astype(jnp.float64)
    # On the host (numpy): the layout conversions then run no op by op on the device.
    variables = jax.device_get(jax.jit(lambda x: jax.tree.map(
        lambda v: v.astype(jnp.float64), separate.init(jax.random.key(0), x)))(images[:b]))
    stacked = to_model_layout(vmapped, variables)
    batch = jax.tree.map(lambda x: x.reshape((n, b) + x.shape[1:]),
                         make_batch(b=n * b, r=r // 4))
    images = images.reshape((n, b) + images.shape[1:])

    def train(model, v):
        def step(images, batch):
            def loss(params):
                out, updates = model.apply({"params": params, "batch_stats": v["batch_stats"]},
                                           images, train=True, mutable=["batch_stats"])
                total, _ = compute_losses(out, batch, {t: 1.0 for t in tasks},
                                          axis_name="batch")
                return total, (out, updates["batch_stats"])

            (total, (out, stats)), grads = jax.value_and_grad(loss, has_aux=True)(v["params"])
            return jax.lax.pmean((total, grads), "batch"), out, stats

        return jax.device_get(jax.pmap(step, axis_name="batch", devices=devices)(images, batch))

    (l_sep, g_sep), out_sep, bs_sep = train(separate, variables)
    (l_vm, g_vm), out_vm, bs_vm = train(vmapped, stacked)
    assert jax.tree.leaves(g_vm)[0].dtype == jnp.float64
    assert abs(float(l_vm[0]) - float(l_sep[0])) <= TOL64 * abs(float(l_sep[0]))
    _assert_close(out_vm, out_sep, "train outputs", TOL64)
    # Every device holds the same statistics and gradient; the first's, per task.
    first = lambda tree: jax.tree.map(lambda x: x[0], tree)  # noqa: E731
    _assert_close(to_checkpoint_layout(vmapped, first(bs_vm)), first(bs_sep),
                  "batch statistics", TOL64)
    _assert_close(to_checkpoint_layout(vmapped, first(g_vm)), first(g_sep), "gradients",
                  TOL64)
    # The statistics are the global batch's: the same on both devices, whose images differ.
    second = lambda tree: jax.tree.map(lambda x: x[1], tree)  # noqa: E731
    _assert_close(second(bs_vm), first(bs_vm), "statistics across devices", TOL64)
    assert not np.allclose(images[0], images[1])


def test_layout_conversion_round_trips_a_train_state():
    """The optimizer's per-parameter moments convert with the parameters; each conversion is
    the identity on a tree already in its layout; a missing task's stream is named."""
    config = base_config("pose2d+segm")
    config.model.update(TINY)
    config.image_size = 64
    separate, vmapped = _models(("pose2d", "segm"))
    state = steps.create_train_state(jax.random.key(0), config, separate)
    stacked = to_model_layout(vmapped, state)
    moments = {jax.tree_util.keystr(k): v.shape
               for k, v in jax.tree_util.tree_leaves_with_path(stacked.opt_state)}
    assert [s for k, s in moments.items() if "'stage1_streams']['Conv1x1_0']['kernel'" in k
            ] == [(2, 16, 16)], moments
    assert not any("stage1_pose2d'" in k for k in moments)
    _assert_close(to_checkpoint_layout(vmapped, stacked), state, "round trip")
    _assert_close(to_model_layout(vmapped, stacked), stacked, "stacked twice")
    _assert_close(to_model_layout(separate, state), state, "separate twice")
    with pytest.raises(ValueError, match=r"stage 0 has no stream for task\(s\) depth "):
        stacking.stack_streams(state.params, ("pose2d", "depth", "segm"))
    with pytest.raises(ValueError, match="leading task axis should be 3 long"):
        stacking.unstack_streams(stacked.params, ("pose2d", "depth", "segm"))


def test_a_tree_replicated_over_as_many_devices_as_tasks_is_refused():
    """The trainer's train state has a leading device axis: with 2 devices and 2 tasks it is as
    long as the task axis, which the conversion would take it for (one device's statistics as
    each task's, no error). Each conversion refuses a variable whose rank is not its layout's."""
    tasks = ("pose2d", "segm")
    separate, vmapped = _models(tasks)
    shapes = jax.eval_shape(vmapped.init, jax.random.key(0), _images(b=1, r=32))
    stacked = jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes)
    replicated = jax.tree.map(lambda x: np.stack([x, 2 * x]), stacked)  # on 2 devices
    refused = r"stage0_streams\[.*\] has shape \(2, 2, .*brought to the host first"
    with pytest.raises(ValueError, match=refused):
        to_checkpoint_layout(vmapped, replicated)
    with pytest.raises(ValueError, match=refused):
        to_model_layout(separate, replicated["batch_stats"])
    per_task = to_checkpoint_layout(vmapped, stacked)
    assert per_task["batch_stats"]["stage0_segm"]["BatchNorm_0"]["var"].shape == (16,)
    with pytest.raises(ValueError, match=r"stage0_pose2d\[.*\] has shape \(2, .*to the host"):
        to_model_layout(vmapped, jax.tree.map(lambda x: np.stack([x, x]), per_task))


def _write_checkpoint(workdir, config, model, state):
    """A workdir as the trainer leaves it: config.json and a checkpoint of `state`."""
    run_config.save_config(config, str(workdir))
    mngr = checkpoints.manager(str(workdir), async_save=False, with_data=False)
    mngr.save(3, args=ocp.args.Composite(
        state=ocp.args.StandardSave(to_checkpoint_layout(model, state))))
    mngr.wait_until_finished()
    mngr.close()


@pytest.mark.slow
@pytest.mark.parametrize("written, read", [("separate", "vmapped"), ("vmapped", "separate")])
def test_checkpoint_of_one_mode_loads_into_the_other(tmp_path, written, read):
    """A checkpoint names every stream by its task whichever mode wrote it, and read in the
    other mode it predicts what the writing model predicts."""
    tasks = ("pose2d", "depth", "segm")
    config = base_config("+".join(tasks))
    config.model.update(dict(TINY, stream_mode=written))
    config.image_size = 64
    writer = create_model(config.model, heads(tasks))
    state = steps.create_train_state(jax.random.key(0), config, writer)
    # Moved off the initial values so that a mix-up of tasks or stages would show.
    state = state.replace(params=jax.tree.map(
        lambda p: p + 0.05 * jax.random.normal(jax.random.key(p.size), p.shape), state.params))
    _assert_close(state.params, to_model_layout(writer, state.params), "writer layout")
    _write_checkpoint(tmp_path, config, writer, state)

    on_disk = ocp.CheckpointManager(workdirs.checkpoint_dir(str(tmp_path)),
                                    item_names=("state",)).restore(
        3, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]["params"]
    assert {f"stage{k}_{t}" for k in (0, 1) for t in tasks} <= set(on_disk)
    assert not any(k.endswith("_streams") for k in on_disk)

    override = base_config("+".join(tasks))
    override.model.update(dict(TINY, stream_mode=read))
    override.image_size = 64
    _, variables, step = trained_model.restore_for_inference(str(tmp_path), config=override)
    reader = create_model(override.model, heads(tasks))
    assert step == 3 and reader.stream_mode == read
    images = _images(seed=4)
    expected = writer.apply({"params": state.params, "batch_stats": state.batch_stats}, images)
    _assert_close(reader.apply(variables, images), expected, f"{written} -> {read}")


def test_stream_mode_choices():
    assert resolve_stream_mode("auto", "cpu") == "separate"
    assert resolve_stream_mode("vmapped", "cpu") == "vmapped"
    assert resolve_stream_mode("auto", "an unmeasured backend") == "separate"
    with pytest.raises(ValueError, match=r"^config.model.stream_mode='stacked': choose one of "
                                         r"auto, separate, vmapped$"):
        create_model(dict(TINY, stream_mode="stacked"), heads(("pose2d",)))
    # One shared stream has nothing to stack: the shared trunk ignores the mode.
    shared = create_model(dict(TINY, shared_trunk=True, interaction="sum", stream_mode="vmapped"),
                          heads(tuple(TASKS)))
    params = jax.eval_shape(shared.init, jax.random.key(0), _images())["params"]
    assert "stage0_trunk" in params and "stage0_streams" not in params


def test_benchmark_summary_gives_each_rounds_ratios():
    """benchmarks/stream_modes.py: per task set vmapped/separate, per mode 4-task/1-task,
    each round's ratio and their median (figures made up)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "stream_modes.py"
    spec = importlib.util.spec_from_file_location("stream_modes_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    lines = [{"round": i, "tasks": t, "stream_mode": m, "compile_s": c, "step_s": s}
             for i, t, m, c, s in [
                 (0, "pose2d", "separate", 10.0, 1.0), (0, "pose2d", "vmapped", 12.0, 1.5),
                 (0, "all", "separate", 40.0, 4.0), (0, "all", "vmapped", 16.0, 6.0),
                 (1, "pose2d", "vmapped", 11.0, 1.2), (1, "pose2d", "separate", 10.0, 1.0),
                 (1, "all", "vmapped", 14.0, 5.0), (1, "all", "separate", 35.0, 4.0)]]
    summary = bench.summarize(lines, ("separate", "vmapped"))
    assert summary["over"] == "vmapped/separate"
    assert summary["modes"]["all"]["compile_s"] == {"rounds": [0.4, 0.4], "median": 0.4}
    assert summary["modes"]["pose2d"]["step_s"] == {"rounds": [1.5, 1.2], "median": 1.35}
    assert summary["tasks_compile"]["vmapped: all/pose2d"] == {
        "rounds": [1.333, 1.273], "median": 1.303}
    assert summary["tasks_compile"]["separate: all/pose2d"]["rounds"] == [4.0, 3.5]
