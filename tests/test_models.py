"""The multi-task hourglass: shapes for every task subset and interaction, stream isolation,
each interaction mode's values on crafted variables, bfloat16 agreement (and use), Newell's
size; every module's parameter count by hand, the hourglass's and the stages' wiring on crafted
variables and stand-ins, the model's BatchNorm settings."""


import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hgmt.models import INTERACTIONS, OPS, MultiTaskHourglass, create_model, resolve_ops, summary
from hgmt.tasks import TASKS, all_subsets, compute_losses, heads
from tests.test_tasks import make_batch

TINY = dict(num_stacks=2, features=16, depth=1)
SUBSETS = all_subsets()


@pytest.mark.parametrize("interaction", [  # the default in the default suite, the rest slow
    i if i == "sum" else pytest.param(i, marks=pytest.mark.slow) for i in INTERACTIONS])
def test_every_subset_initialises_with_the_right_shapes(interaction):
    images = jax.ShapeDtypeStruct((2, 64, 64, 3), jnp.float32)
    for tasks in SUBSETS:
        model = create_model(dict(TINY, interaction=interaction), heads(tasks))
        # One trace gives both the forward pass's outputs and the variables it created.
        out, variables = jax.eval_shape(
            lambda x, m=model: m.init_with_output(jax.random.key(0), x), images)
        assert set(out) == set(tasks)
        for t in tasks:
            assert out[t].shape == (2, 2, 16, 16, TASKS[t].NUM_CHANNELS), (tasks, t)
            assert out[t].dtype == jnp.float32
        # Only the selected tasks have streams and heads.
        names = "/".join(jax.tree_util.keystr(p) for p, _ in
                         jax.tree_util.tree_leaves_with_path(variables["params"]))
        for t in set(TASKS) - set(tasks):
            assert f"_{t}" not in names


def test_shared_trunk_has_one_stream():
    model = create_model(dict(TINY, shared_trunk=True), heads(tuple(TASKS)))
    images = jnp.zeros((1, 64, 64, 3))
    variables = model.init(jax.random.key(0), images)
    out = model.apply(variables, images)
    assert {t: o.shape[-1] for t, o in out.items()} == {t: TASKS[t].NUM_CHANNELS
                                                          for t in TASKS}
    params = variables["params"]
    assert "stage0_trunk" in params and "stage1_trunk" in params
    assert not any(f"stage0_{t}" in params for t in TASKS)


def test_bad_model_config_is_rejected():
    with pytest.raises(ValueError, match="^config.model.interaction='attention': choose one of "
                                         "none, sum, concat, gated$"):
        create_model(dict(TINY, interaction="attention"), heads(("pose2d",)))
    with pytest.raises(ValueError, match="unknown config.model field.*stacks"):
        create_model(dict(TINY, stacks=2), heads(("pose2d",)))
    with pytest.raises(ValueError, match="float32"):
        create_model(dict(TINY, dtype="float16"), heads(("pose2d",)))


def _grad_norms(interaction):
    tasks = ("pose2d", "segm")
    model = create_model(dict(TINY, interaction=interaction), heads(tasks))
    batch = make_batch(b=2, r=16)
    images = jax.random.normal(jax.random.key(1), (2, 64, 64, 3))
    variables = model.init(jax.random.key(0), images)

    def pose_loss(params):
        out = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, images)
        _, per_task = compute_losses(out, batch, {"pose2d": 1.0, "segm": 1.0})
        return per_task["pose2d"]

    grads = jax.grad(pose_loss)(variables["params"])
    norm = lambda tree: float(sum(jnp.abs(g).sum() for g in jax.tree.leaves(tree)))  # noqa
    segm_stream = {k: v for k, v in grads.items() if k.endswith("_segm") or
                   k.endswith("segm_head")}
    assert segm_stream, list(grads)
    return norm(segm_stream), norm(grads["stem"])


def test_isolated_streams_have_no_cross_gradient():
    segm_grad, stem_grad = _grad_norms("none")
    assert segm_grad == 0.0
    assert stem_grad > 0.0  # the shared stem still learns from pose2d


@pytest.mark.parametrize("interaction", ["sum", "concat", "gated"])
def test_interacting_streams_share_gradient(interaction):
    segm_grad, _ = _grad_norms(interaction)
    assert segm_grad > 0.0


# The Interaction module on tiny crafted inputs: three streams (each hears two others), 4
# features, 2x3x3 maps, predictions of 2, 3 and 1 channels, small integers (exact in float32).
I_TASKS, I_FEATURES, I_CHANNELS = ("pose2d", "segm", "depth"), 4, {"pose2d": 2, "segm": 3,
                                                                   "depth": 1}


def _interaction_inputs(seed=0):
    rng = np.random.default_rng(seed)
    draw = lambda ch: rng.integers(-3, 4, (2, 3, 3, ch)).astype(np.float32)  # noqa: E731
    return ({t: draw(I_FEATURES) for t in I_TASKS}, {t: draw(I_FEATURES) for t in I_TASKS},
            {t: draw(I_CHANNELS[t]) for t in I_TASKS})


def _interact(mode, params, xs, feats, preds):
    from hgmt.models.multitask import Interaction

    out = Interaction(I_TASKS, I_FEATURES, mode).apply({"params": params}, xs, feats, preds)
    assert set(out) == set(I_TASKS)
    return {t: np.asarray(v) for t, v in out.items()}


def _interaction_params(mode, inputs):
    from hgmt.models.multitask import Interaction

    return jax.tree.map(np.asarray, Interaction(I_TASKS, I_FEATURES, mode).init(
        jax.random.key(0), *inputs)["params"])


@pytest.mark.parametrize("mode", ["none", "sum", "concat"])
def test_interaction_values_by_hand(mode):
    """docs/model.md's definitions on crafted variables, against numpy sums written out by
    hand. Every 1x1 kernel is ones (output = the sum of the input's channels, on every output
    channel) and every bias its own constant, except concat's, whose 4 output channels read:
    all its inputs; the others' predictions only; the first other's block only; input channel
    i with weight i + 1 (which pins the concatenation's order: the others in task order, each
    its features then its prediction)."""
    xs, feats, preds = inputs = _interaction_inputs()
    c = I_FEATURES
    chsum = lambda a: np.repeat(a.sum(-1, keepdims=True), c, -1)  # noqa: E731 ones kernel
    biases = {}

    def craft(name, fan_in):
        biases[name] = 0.25 * (len(biases) + 1)
        return {"kernel": np.ones((fan_in, c), np.float32),
                "bias": np.full(c, biases[name], np.float32)}

    params = {}
    for t in I_TASKS:
        others = [s for s in I_TASKS if s != t]
        params[f"{t}_feat"] = craft(f"{t}_feat", c)
        params[f"{t}_pred"] = craft(f"{t}_pred", I_CHANNELS[t])
        if mode == "sum":
            for s in others:
                params[f"{t}_from_{s}"] = craft(f"{t}_from_{s}", c + I_CHANNELS[s])
        if mode == "concat":
            widths = [w for s in others for w in (c, I_CHANNELS[s])]
            kernel = np.zeros((sum(widths), c), np.float32)
            kernel[:, 0] = 1.0
            kernel[widths[0]:widths[0] + widths[1], 1] = 1.0  # first other's prediction
            kernel[sum(widths[:3]):, 1] = 1.0  # second other's prediction
            kernel[:widths[0] + widths[1], 2] = 1.0  # first other's features and prediction
            kernel[:, 3] = np.arange(1, sum(widths) + 1)
            params[f"{t}_from_others"] = {"kernel": kernel,
                                          "bias": np.full(c, 0.5, np.float32)}
    # The crafted variables are the module's (names and shapes).
    assert jax.tree.map(np.shape, params) == jax.tree.map(np.shape,
                                                          _interaction_params(mode, inputs))
    out = _interact(mode, params, *inputs)
    for t in I_TASKS:
        others = [s for s in I_TASKS if s != t]
        want = (xs[t] + chsum(feats[t]) + biases[f"{t}_feat"] + chsum(preds[t])
                + biases[f"{t}_pred"])
        if mode == "sum":
            for s in others:
                want = want + chsum(feats[s]) + chsum(preds[s]) + biases[f"{t}_from_{s}"]
        if mode == "concat":
            (f0, p0), (f1, p1) = ((feats[s], preds[s]) for s in others)
            cat = np.concatenate([f0, p0, f1, p1], -1)
            want = want + 0.5 + np.stack([
                cat.sum(-1), p0.sum(-1) + p1.sum(-1), f0.sum(-1) + p0.sum(-1),
                sum((i + 1) * cat[..., i] for i in range(cat.shape[-1]))], -1)
        np.testing.assert_allclose(out[t], want, rtol=1e-6, err_msg=t)


def test_gated_interaction_scales_the_sum_messages_by_its_gates():
    """docs/model.md: `gated` is `sum`'s messages scaled by per-channel sigmoid gates computed
    from the receiving stream's pooled features. On the gated module's variables (of which
    those of `sum` and `none` are subsets): gates shut (a Dense bias of -30, zero kernel) give
    `none`'s output, gates open (+30) `sum`'s, gates of one half halfway between; per-other and
    per-channel gates (the Dense's outputs are the others in task order, each `features`
    channels) give `none` plus the messages of the open (other, channel) pairs, which are `sum`
    with the other message's 1x1 zeroed; gates from the pooled receiving features (kernel
    1/features, bias 0: the gate is sigmoid of the mean of the receiving stream's features)
    of mean +-ln 3 and 0 give 3/4, 1/4 and 1/2 of the messages."""
    xs, feats, preds = inputs = _interaction_inputs(1)
    c = I_FEATURES
    params = _interaction_params("gated", inputs)
    sum_params = {k: v for k, v in params.items() if not k.endswith("_gates")}
    none_params = {k: v for k, v in sum_params.items() if "_from_" not in k}
    assert set(params) - set(sum_params) == {f"{t}_gates" for t in I_TASKS}
    assert jax.tree.structure(sum_params) == jax.tree.structure(
        _interaction_params("sum", inputs))
    assert jax.tree.structure(none_params) == jax.tree.structure(
        _interaction_params("none", inputs))

    def gated(bias, kernel=0.0, feats=feats):
        gates = {f"{t}_gates": {"kernel": np.full((c, 2 * c), kernel, np.float32),
                                "bias": np.broadcast_to(bias, (2 * c,)).astype(np.float32)}
                 for t in I_TASKS}
        return _interact("gated", {**params, **gates}, xs, feats, preds)

    none = _interact("none", none_params, *inputs)
    summed = _interact("sum", sum_params, *inputs)
    close = lambda a, b, msg: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5,  # noqa
                                                         err_msg=msg)
    shut, opened, half = gated(-30.0), gated(30.0), gated(0.0)
    for t in I_TASKS:
        assert np.abs(summed[t] - none[t]).mean() > 0.5, t  # the messages are not ~0
        close(shut[t], none[t], f"shut {t}")
        close(opened[t], summed[t], f"open {t}")
        close(half[t], (none[t] + summed[t]) / 2, f"half {t}")

    # Per other and per channel: other 0 heard on channels 0 and 2, other 1 on 1 and 2.
    heard = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], bool)
    split = gated(np.where(heard.ravel(), 30.0, -30.0))
    for t in I_TASKS:
        want = none[t].copy()
        for i, s in enumerate(s for s in I_TASKS if s != t):
            only = dict(sum_params)  # sum, with the message from the other other zeroed
            for r in I_TASKS:
                if r not in (t, s):
                    only[f"{t}_from_{r}"] = jax.tree.map(np.zeros_like, only[f"{t}_from_{r}"])
            want = want + heard[i] * (_interact("sum", only, *inputs)[t] - none[t])
        close(split[t], want, f"per-channel gates {t}")

    # Gates from the receiving stream's pooled features: feats[t] of mean m[t][b] over the
    # map and channels (a zero-mean pattern on top).
    ln3 = np.log(3.0)
    m = {"pose2d": (ln3, -ln3), "segm": (-ln3, 0.0), "depth": (0.0, ln3)}
    fraction = {ln3: 0.75, -ln3: 0.25, 0.0: 0.5}
    pattern = np.random.default_rng(2).normal(size=(2, 3, 3, c)).astype(np.float32)
    pattern -= pattern.mean(axis=(1, 2, 3), keepdims=True)
    pooled_feats = {t: pattern + np.reshape(m[t], (2, 1, 1, 1)).astype(np.float32)
                    for t in I_TASKS}
    inputs = (xs, pooled_feats, preds)
    none = _interact("none", none_params, *inputs)
    summed = _interact("sum", sum_params, *inputs)
    out = gated(0.0, kernel=1.0 / c, feats=pooled_feats)
    for t in I_TASKS:
        for b in range(2):
            close(out[t][b], none[t][b] + fraction[m[t][b]] * (summed[t][b] - none[t][b]),
                  f"pooled gates {t}[{b}]")


@pytest.mark.slow  # an option off by default (config.model.interaction)
def test_gated_model_is_none_or_sum_with_shut_or_open_gates():
    """The whole model (2 stacks, 2 tasks): `gated` with every gate shut gives `none`'s
    outputs from the same stream and head variables, with every gate open `sum`'s; and the
    two differ in the second stage."""
    tasks = ("pose2d", "segm")
    cfg = dict(num_stacks=2, features=8, depth=2)
    images = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)) * 255
    gated = create_model(dict(cfg, interaction="gated"), heads(tasks))
    variables = gated.init(jax.random.key(0), images)
    params = variables["params"]
    gate_names = {f"{t}_gates" for t in tasks}
    assert gate_names <= set(params["interaction0"])
    shared = lambda keep: {**variables, "params": {  # noqa: E731
        **params, "interaction0": {k: v for k, v in params["interaction0"].items() if keep(k)}}}
    run = lambda mode, v: create_model(dict(cfg, interaction=mode), heads(tasks)).apply(  # noqa
        v, images)
    none = run("none", shared(lambda k: k not in gate_names and "_from_" not in k))
    summed = run("sum", shared(lambda k: k not in gate_names))
    for t in tasks:
        assert jnp.abs(none[t][1] - summed[t][1]).max() > 1e-3 * jnp.abs(summed[t][1]).max()
    for bias, want in ((-30.0, none), (30.0, summed)):
        gates = {k: {"kernel": jnp.zeros_like(params["interaction0"][k]["kernel"]),
                     "bias": jnp.full_like(params["interaction0"][k]["bias"], bias)}
                 for k in gate_names}
        out = gated.apply({**variables, "params": {
            **params, "interaction0": {**params["interaction0"], **gates}}}, images)
        for t in tasks:
            np.testing.assert_allclose(out[t], want[t], rtol=1e-5,
                                       atol=1e-6 * float(jnp.abs(want[t]).max()),
                                       err_msg=f"{t}, gate bias {bias}")


def _contraction_input_dtypes(fn, *args) -> dict[str, set[str]]:
    """{primitive: the dtypes of its inputs} of every convolution and dot product in the
    jaxpr of fn(*args), nested jaxprs (jit, custom_vjp, ...) included."""
    from jax.extend import core

    found = {"conv_general_dilated": set(), "dot_general": set()}

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name in found:
                found[eqn.primitive.name].update(str(v.aval.dtype) for v in eqn.invars)
            for p in eqn.params.values():
                for q in p if isinstance(p, tuple | list) else (p,):
                    if isinstance(q, core.ClosedJaxpr):
                        walk(q.jaxpr)
                    elif isinstance(q, core.Jaxpr):
                        walk(q)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


@pytest.mark.slow  # an option off by default (config.model.dtype)
def test_bfloat16_agrees_with_float32():
    images = jax.random.normal(jax.random.key(2), (2, 64, 64, 3))
    f32 = create_model(dict(TINY, interaction="sum"), heads(tuple(TASKS)))
    bf16 = create_model(dict(TINY, interaction="sum", dtype="bfloat16"), heads(tuple(TASKS)))
    variables = f32.init(jax.random.key(0), images)
    a, b = f32.apply(variables, images), bf16.apply(variables, images)
    for t in TASKS:
        scale = float(jnp.abs(a[t]).mean())
        err = float(jnp.abs(a[t] - b[t]).mean())
        assert b[t].dtype == jnp.float32 and err < 0.05 * scale + 1e-3, (t, err, scale)
        # ... but not equal: bfloat16's 8-bit mantissa rounds (a model that ignored the dtype
        # would pass the bound above with err == 0).
        assert err > 1e-4 * scale, (t, err, scale)
    # Every convolution and matmul computes in the model's dtype (in bfloat16 none in float32,
    # the float32 model none in bfloat16), and there are both kinds (the 7x7 and 3x3
    # convolutions, the 1x1 ones as matmuls with the default ops).
    for model, want in ((bf16, "bfloat16"), (f32, "float32")):
        found = _contraction_input_dtypes(lambda v, x, m=model: m.apply(v, x), variables, images)
        assert found == {"conv_general_dilated": {want}, "dot_general": {want}}, (want, found)
    # Parameters stay float32 whatever the compute dtype.
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))


def test_newell_size():
    """1 task x 2 stacks x 256 features matches Newell: 6.6 M parameters, 8.3 GMAC."""
    row = summary.summarize(dict(num_stacks=2, features=256, depth=4), ("pose2d",), 256)
    assert 6.4e6 < row["params"] < 6.8e6
    assert 15.6 < row["gflop"] < 17.6  # 8.3 GMAC = 16.6 GFLOP
    assert len(SUBSETS) == len(set(SUBSETS)) == 15 and SUBSETS[0] == ("pose2d",)


def test_an_image_size_the_hourglass_cannot_take_is_named_with_sizes_that_fit():
    """200 px at depth 4 (multiples of 4 * 2**4 = 64 fit): the model itself refuses it, for
    the summary as for any caller, instead of a reshape's or broadcast's TypeError."""
    cfg = dict(num_stacks=1, features=8, depth=4)
    message = ("config.image_size=200: not a multiple of 64, as an hourglass of "
               "config.model.depth=4 needs; give one, e.g. 192 or 256")
    with pytest.raises(ValueError, match=re.escape(message)):
        summary.summarize(cfg, ("pose2d",), 200)
    model = create_model(cfg, heads(("pose2d",)))
    with pytest.raises(ValueError, match=re.escape(message)):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 200, 200, 3)))
    with pytest.raises(ValueError,
                       match=r"image_size=40: .* of 64, .*; give one, e\.g\. 64(?! or)"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 40, 40, 3)))
    jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))


def test_summary_counts_the_lowered_forward_pass_or_says_unmeasured(monkeypatch):
    """The GFLOP figure is XLA's count of the forward pass as lowered (a GPU's compiled
    convolutions are cuDNN calls the compiled count leaves out); where the analysis gives no
    count (JAX's GPU plugin) the figure is unmeasured, not a number or a crash."""
    cfg, res = dict(num_stacks=1, features=8, depth=1), 32
    model = create_model(cfg, heads(("pose2d",)))
    image = jnp.zeros((1, res, res, 3), jnp.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))
    lowered = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(shapes, image)
    row = summary.summarize(cfg, ("pose2d",), res)
    assert row["gflop"] == lowered.cost_analysis()["flops"] / 1e9 > 0
    assert "| pose2d | 0.12 | 0.0 |" in summary.markdown([row], cfg | {
        "interaction": "sum", "shared_trunk": False}, res)
    monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: {})
    row = summary.summarize(cfg, ("pose2d",), res)
    assert row["gflop"] is None and row["params"] > 0
    assert "| pose2d | 0.12 | unmeasured |" in summary.markdown([row], cfg | {
        "interaction": "sum", "shared_trunk": False}, res)


def _assert_trees_close(fast, ref, rtol):
    """Leafwise |fast - ref| <= rtol * (max|ref leaf| + 1e-3 max|any ref leaf|) (the second
    term for gradients that are ~0)."""
    flat_fast = jax.tree_util.tree_leaves_with_path(fast)
    flat_ref = jax.tree.leaves(ref)
    assert len(flat_fast) == len(flat_ref) > 0
    overall = max(float(jnp.abs(r).max()) for r in flat_ref)
    for (path, g), r in zip(flat_fast, flat_ref, strict=True):
        tol = rtol * (float(jnp.abs(r).max()) + 1e-3 * overall)
        assert float(jnp.abs(g - r).max()) <= tol, jax.tree_util.keystr(path)


@pytest.mark.slow
def test_custom_ops_equal_flax_ops():
    """hgmt's ops (`ops="custom"`: 1x1 convolution as one 2-D matmul, max-pool as reshape+max
    with a one-pass backward, BatchNorm + ReLU with a hand-written backward) and Flax's and
    lax's own (`ops="flax"`: `lax.conv`, `nn.max_pool`, `nn.BatchNorm` + `nn.relu`) give the
    same outputs, loss, gradients and running statistics of a two-stream interacting model in
    training mode (BatchNorm on the batch) from the same variables. In float64, so that
    agreement to 1e-9 shows the same function: in float32 the two differ by rounding, which the
    tiny model's 4x4 innermost BatchNorms (32 values each) amplify up to ~1e-2 in a few
    gradients that are ~0 anyway."""
    with jax.enable_x64(True):
        tasks = ("pose2d", "segm")
        batch = jax.tree.map(lambda v: v.astype(jnp.float64)
                             if v.dtype == jnp.float32 else v, make_batch(b=2, r=16))
        images = jax.random.normal(jax.random.key(3), (2, 64, 64, 3), jnp.float64)
        weights = {t: float(TASKS[t].DEFAULT_LOSS_WEIGHT) for t in tasks}
        models = {ops: MultiTaskHourglass(heads=tuple(heads(tasks).items()),
                                          dtype=jnp.float64, interaction="sum", ops=ops,
                                          **TINY) for ops in OPS}
        variables = jax.tree.map(lambda v: v.astype(jnp.float64),
                                 models["custom"].init(jax.random.key(0), images))
        # The two build the same variables, with other programs.
        assert (jax.tree.structure(jax.eval_shape(models["flax"].init, jax.random.key(0),
                                                  images))
                == jax.tree.structure(variables))

        def loss_and_grads(model):
            def loss(params):
                out, updates = model.apply(
                    {"params": params, "batch_stats": variables["batch_stats"]},
                    images, train=True, mutable=["batch_stats"])
                return compute_losses(out, batch, weights)[0], (out, updates["batch_stats"])
            step = jax.value_and_grad(loss, has_aux=True)
            return jax.jit(step)(variables["params"]), str(jax.make_jaxpr(step)(
                variables["params"]))

        ((fast_loss, (fast_out, fast_stats)), fast_grads), fast_program = loss_and_grads(
            models["custom"])
        ((ref_loss, (ref_out, ref_stats)), ref_grads), ref_program = loss_and_grads(
            models["flax"])
        assert "custom_vjp_call" in fast_program and "reduce_window_max" not in fast_program
        assert "custom_vjp_call" not in ref_program and "reduce_window_max" in ref_program
        assert jax.tree.structure(fast_grads) == jax.tree.structure(ref_grads)
        assert len(jax.tree.leaves(fast_grads)) > 100
        assert abs(float(fast_loss) - float(ref_loss)) <= 1e-9 * abs(float(ref_loss))
        for t in tasks:
            assert jnp.allclose(fast_out[t], ref_out[t], rtol=1e-9, atol=1e-9), t
        _assert_trees_close(fast_grads, ref_grads, rtol=1e-9)
        _assert_trees_close(fast_stats, ref_stats, rtol=1e-9)


def test_ops_choices():
    assert resolve_ops("auto", "cpu") == "custom"
    assert resolve_ops("flax", "cpu") == "flax"
    assert resolve_ops("auto", "an unmeasured backend") == "custom"
    with pytest.raises(ValueError,
                       match=r"^config.model.ops='xla': choose one of auto, custom, flax$"):
        create_model(dict(TINY, ops="xla"), heads(("pose2d",)))
    assert create_model(dict(TINY, ops="flax"), heads(("pose2d",))).ops == "flax"


def test_max_pool2_is_flax_max_pool_even_with_ties():
    """Values and gradients of max_pool2 equal nn.max_pool's exactly, on data full of ties
    (the gradient goes to the first maximum of each window, as select-and-scatter does)."""
    from flax import linen as nn

    from hgmt.models.hourglass import max_pool2

    x = jnp.round(jax.random.normal(jax.random.key(0), (2, 8, 8, 3)) * 1.5)
    g = jax.random.normal(jax.random.key(1), (2, 4, 4, 3))
    ref = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
    windows = x.reshape(2, 4, 2, 4, 2, 3)
    ties = (windows == max_pool2(x)[:, :, None, :, None]).sum(axis=(2, 4))
    assert int((ties > 1).sum()) > 10  # the case this is about
    assert jnp.array_equal(max_pool2(x), ref(x))
    assert jnp.array_equal(jax.vjp(max_pool2, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0])


@pytest.mark.parametrize("relu", [False, True])
def test_batch_norm_matches_flax_across_devices(relu):
    """Under pmap over 4 devices with cross-device statistics, hgmt's BatchNorm gives Flax's
    outputs, running statistics and gradients (input, scale, bias), in training and eval."""
    from flax import linen as nn

    from hgmt.models.batchnorm import BatchNorm

    n = 4
    x = jax.random.normal(jax.random.key(0), (n, 3, 5, 5, 8)) * 2.0 + 1.5
    dy = jax.random.normal(jax.random.key(1), x.shape)
    fast = BatchNorm(momentum=0.9, axis_name="d", relu=relu)
    ref = nn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5, axis_name="d")
    variables = fast.init(jax.random.key(2), x[0])
    variables = {"params": {"scale": jnp.linspace(0.5, 1.5, 8), "bias": jnp.linspace(-1, 1, 8)},
                 "batch_stats": variables["batch_stats"]}

    def run(module, post):
        def f(x, dy):
            def loss(x, params):
                y, upd = module.apply({"params": params,
                                       "batch_stats": variables["batch_stats"]},
                                      x, mutable=["batch_stats"])
                y = post(y)
                return (y * dy).sum(), (y, upd["batch_stats"])
            grads, (y, stats) = jax.grad(loss, argnums=(0, 1), has_aux=True)(
                x, variables["params"])
            return y, stats, grads
        return jax.pmap(f, axis_name="d")(x, dy)

    got = run(fast, lambda y: y)
    want = run(ref, nn.relu if relu else (lambda y: y))
    _assert_trees_close(got, want, rtol=1e-5)
    stats = jax.tree.map(lambda v: v[0], got[1])
    eval_vars = {"params": variables["params"], "batch_stats": stats}
    y_fast = fast.copy(use_running_average=True).apply(eval_vars, x[0])
    y_ref = ref.copy(use_running_average=True).apply(eval_vars, x[0])
    assert jnp.allclose(y_fast, nn.relu(y_ref) if relu else y_ref, rtol=1e-5, atol=1e-5)


def test_model_normalises_its_uint8_input():
    """The model takes RGB uint8 crops (what the loaders send) and normalises them itself: the
    same output as float input on [0, 255], and the stem sees (rgb / 255 - mean) / std."""
    from hgmt.models import IMAGE_MEAN, IMAGE_STD, normalize_images

    rgb = jax.random.randint(jax.random.key(1), (2, 32, 32, 3), 0, 256).astype(jnp.uint8)
    expected = (rgb.astype(jnp.float32) / 255.0 - jnp.array(IMAGE_MEAN)) / jnp.array(IMAGE_STD)
    assert jnp.abs(normalize_images(rgb) - expected).max() < 1e-6
    model = create_model({"num_stacks": 1, "features": 16, "depth": 2}, heads(("pose2d",)))
    variables = model.init(jax.random.key(0), rgb, train=False)
    a = model.apply(variables, rgb, train=False)["pose2d"]
    b = model.apply(variables, rgb.astype(jnp.float32), train=False)["pose2d"]
    assert jnp.abs(a - b).max() == 0.0
    c = model.apply(variables, rgb.astype(jnp.float32) / 255.0, train=False)["pose2d"]
    assert jnp.abs(a - c).max() > 1e-3  # a [0, 1] image is not what the model expects


@pytest.mark.slow  # the ops' equality, checked on one device by default, on 2
def test_ops_agree_under_pmap_with_cross_device_statistics():
    """Over 4 devices with BatchNorm statistics across them (`axis_name`), the two op sets give
    the same outputs and running statistics, which differ from per-device statistics."""
    n = jax.local_device_count()
    assert n == 4
    with jax.enable_x64(True):
        images = jax.random.uniform(jax.random.key(1), (n, 2, 32, 32, 3), jnp.float64) * 255

        def run(ops, axis_name):
            model = MultiTaskHourglass(heads=tuple(heads(("pose2d",)).items()),
                                       dtype=jnp.float64, ops=ops, axis_name=axis_name,
                                       num_stacks=1, features=16, depth=2)
            variables = jax.tree.map(lambda v: v.astype(jnp.float64),
                                     model.init(jax.random.key(0), images[0]))
            apply = lambda x: model.apply(variables, x, train=True,  # noqa: E731
                                          mutable=["batch_stats"])
            return jax.pmap(apply, axis_name="batch")(images)

        (custom, custom_stats), (flax_out, flax_stats) = (run(ops, "batch") for ops in OPS)
        assert jnp.allclose(custom["pose2d"], flax_out["pose2d"], rtol=1e-9, atol=1e-9)
        _assert_trees_close(custom_stats, flax_stats, rtol=1e-9)
        local, _ = run("flax", None)
        assert not jnp.allclose(local["pose2d"], flax_out["pose2d"], rtol=1e-3, atol=1e-3)


def test_batchnorm_with_running_statistics_adds_epsilon_to_the_variance():
    """Eval mode: y = (x - mean) scale / sqrt(var + eps) + bias (flax's).
    eps 1e-5; channel 0: var 4e-5, x 1 -> 1 / sqrt(5e-5) = 141.42136; channel 1: var 0 (a
    channel that never varied), x 0.5 -> 0.5 / sqrt(1e-5) = 158.11388 (inf without eps)."""
    from hgmt.models.batchnorm import BatchNorm

    variables = {"params": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
                 "batch_stats": {"mean": jnp.zeros(2), "var": jnp.array([4e-5, 0.0])}}
    y = BatchNorm(use_running_average=True).apply(variables, jnp.array([[1.0, 0.5]]))
    np.testing.assert_allclose(np.asarray(y[0]), [141.42136, 158.11388], rtol=1e-5)


def test_the_flip_test_averages_the_last_stage_with_its_mirror_mirrored_back_sides_swapped():
    """predict_last_stage's flip test on a stand-in model that outputs its input's first 2
    colours, times s + 1 at stage s (two stages: the last is 2x). On a 2 x 2 image whose
    colours are (x0, x1) = (a, 10a) with a = 1..4 the mirrored run, mirrored back, gives 2x
    again, its channels then swapped (permutation (1, 0)) 2 (x1, x0): the mean is x0 + x1 =
    11a in both channels, where the run alone is 2 (a, 10a)."""
    import types

    from hgmt.models import predict_last_stage

    a = np.arange(1.0, 5.0, dtype=np.float32).reshape(1, 2, 2, 1)
    images = jnp.asarray(np.concatenate([a, 10 * a, 100 * a], -1))
    model = types.SimpleNamespace(apply=lambda variables, x, train: {
        "t": jnp.stack([(s + 1) * x[..., :2] for s in range(2)])})
    plain = predict_last_stage(model, {}, images)
    np.testing.assert_array_equal(plain["t"], 2 * np.concatenate([a, 10 * a], -1))
    flipped = predict_last_stage(model, {}, images, flip={"t": (1, 0)})
    np.testing.assert_array_equal(flipped["t"], np.concatenate([11 * a, 11 * a], -1))


def test_batch_norm_stats_picks_the_device_axis_the_models_statistics_span():
    """config.model.batch_norm_stats: "global" (the default) gives the model the device axis
    its BatchNorm statistics are taken over (the global batch's), "device" none (each
    device's share); a model made without an axis has none either way."""
    from configs import default

    config = default.get_config("tasks=pose2d,runlocal")
    assert config.model.get("batch_norm_stats", "global") == "global"
    assert create_model(config.model, heads("pose2d"), axis_name="batch").axis_name == "batch"
    config.model.batch_norm_stats = "device"
    assert create_model(config.model, heads("pose2d"), axis_name="batch").axis_name is None
    for stats in ("global", "device"):
        config.model.batch_norm_stats = stats
        assert create_model(config.model, heads("pose2d")).axis_name is None


def _size(tree) -> int:
    """The number of values in a tree of arrays or shapes."""
    return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


def test_parameter_count_of_every_module_by_hand():
    """2 stacks, 8 features, hourglass depth 2, pose2d (16 channels) and segm (15), `sum`,
    traced once (jax.eval_shape). Residual(cin, c), bottleneck mid = c/2: BN(cin) 2cin + 1x1
    cin*mid + BN 2mid + 3x3 9mid^2 + BN 2mid + 1x1 mid*c + bias c, + a 1x1 skip cin*c + c when
    cin != c; no bias before a BN. Stem: 7x7/2 3->64 9408 + BN 128 + Res(64,128) 57984 (128 +
    4096 + 128 + 36864 + 128 + 8320 + skip 8320) + Res(128,128) 53888 (256 + 8192 + 128 + 36864
    + 128 + 8320) + Res(128,8) 2000 (256 + 512 + 8 + 144 + 8 + 40 + skip 1032) = 123408.
    Res(8,8) 248 (16 + 32 + 8 + 144 + 8 + 40). A depth-2 hourglass: 3 residuals + a depth-1
    hourglass (4: up, down, the innermost, after) = 7 = 1736; a stream adds Res 248, a 1x1 64
    and a BN 16: 2064. Heads 8*16 + 16 = 144, 8*15 + 15 = 135. The interaction (after stage 0
    only): each task's own 1x1s of its features 72 and prediction 136 | 128, and the other's
    [f, p] 8 + 15 -> 8 192 | 8 + 16 -> 8 200: 800. BatchNorms: stem 1 + 3 x 3, stream 8 x 3
    + 1, every one followed by a ReLU. Heads start with kernels of std 0.01 / sqrt(fan-in)."""
    from flax import linen as nn

    from hgmt.models.batchnorm import BatchNorm
    from hgmt.models.multitask import HEAD_INIT_SCALE

    relu_after, head_inits = [], []

    def record(call, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, BatchNorm):
            relu_after.append(context.module.relu)
        if context.method_name == "__call__" and str(context.module.name).endswith("_head"):
            head_inits.append(context.module.kernel_init)
        return call(*args, **kwargs)

    tasks = ("pose2d", "segm")
    model = create_model(dict(num_stacks=2, features=8, depth=2), heads(tasks))
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    with nn.intercept_methods(record):
        variables = jax.eval_shape(model.init, jax.random.key(0), images)
    stream = 2064
    assert {k: _size(v) for k, v in variables["params"].items()} == {
        "stem": 123408, "interaction0": 800,
        **{f"stage{k}_{t}": stream for k in (0, 1) for t in tasks},
        **{f"stage{k}_pose2d_head": 144 for k in (0, 1)},
        **{f"stage{k}_segm_head": 135 for k in (0, 1)}}
    assert {k: len(jax.tree.leaves(v)) // 2 for k, v in variables["batch_stats"].items()} == {
        "stem": 10, **{f"stage{k}_{t}": 25 for k in (0, 1) for t in tasks}}
    assert relu_after == [True] * (10 + 4 * 25)
    assert HEAD_INIT_SCALE == 0.01 and len(head_inits) == 4
    # A truncated normal, its std corrected for the truncation (one head's: one init for all).
    kernel = np.asarray(head_inits[0](jax.random.key(1), (256, 256)))
    assert abs(kernel.std() * np.sqrt(256) / 0.01 - 1) < 0.02


def test_hourglass_values_on_crafted_residuals():
    """A depth-2 hourglass of 2 features on an 8x8 map whose every kernel is zero but for the
    biases of each Residual's last 1x1, so that Residual k gives its input + its bias b_k (the
    identity skip). Outer level: Residual_0 up (b = 1), max-pool, Residual_1 (2), the inner
    hourglass, Residual_2 (4); inner level: Residual_0 up (8), max-pool, Residual_1 (16),
    Residual_2 the innermost (32), Residual_3 (64), then nearest x2 upsampling and the sum
    with the up branch at each level:
        inner(z) = z + 8 + up(pool(z) + 112),  out = x + 1 + up(inner(pool(x) + 2) + 4)."""
    from hgmt.models.hourglass import Hourglass

    x = np.random.default_rng(0).permutation(128).astype(np.float32).reshape(1, 8, 8, 2)
    module = Hourglass(depth=2, features=2)
    shapes = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
    variables = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    variables["batch_stats"] = jax.tree.map(np.ones_like, variables["batch_stats"])
    outer = variables["params"]
    for level, biases in ((outer, (1.0, 2.0, 4.0)),
                          (outer["Hourglass_0"], (8.0, 16.0, 32.0, 64.0))):
        for k, b in enumerate(biases):
            level[f"Residual_{k}"]["Conv1x1_1"]["bias"][:] = b
    out = np.asarray(jax.jit(lambda v, x: module.apply(v, x, train=False))(variables, x))

    def pool(a):
        n, h, w, c = a.shape
        return a.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))

    def up(a):
        return np.repeat(np.repeat(a, 2, axis=1), 2, axis=2)

    def inner(z):
        return z + 8.0 + up(pool(z) + 112.0)

    np.testing.assert_array_equal(out, x + 1.0 + up(inner(pool(x) + 2.0) + 4.0))


@pytest.mark.parametrize("ops", ["custom", "flax"])
def test_the_models_batch_norm_momentum_epsilon_and_a_constant_channel(ops):
    """The model's BatchNorms (`batch_norm`, either ops) in training, one step from the initial
    statistics (mean 0, var 1, which initialising leaves as they are): running = 0.9 running +
    0.1 batch. Channel 0: 0, 2e-3, 0, 2e-3, 0: mean 8e-4, var 9.6e-7, y = (x - mean) /
    sqrt(var + 1e-5). Channel 1: 1000.1 five times, a constant channel whose float32
    E[x^2] - E[x]^2 is negative: var is taken as 0 (not NaN), y = bias 0 but for the float32
    mean's rounding error (6e-5, scaled by 1 / sqrt(1e-5))."""
    from hgmt.models.hourglass import batch_norm

    x = np.zeros((5, 1, 1, 2), np.float32)
    x[[1, 3], ..., 0] = 2e-3
    x[..., 1] = 1000.1
    flat = jnp.asarray(x).reshape(-1, 2)  # as the statistics are taken
    naive = float((flat * flat).mean(0)[1] - flat.mean(0)[1] ** 2)
    assert naive < -1e-5  # the case: without the clamp, rsqrt(var + eps) is NaN
    module = batch_norm(True, None, jnp.float32, ops=ops)
    variables = module.init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], [0.0, 0.0])
    np.testing.assert_array_equal(variables["batch_stats"]["var"], [1.0, 1.0])
    y, updated = jax.jit(lambda v, x: module.apply(v, x, mutable=["batch_stats"]))(variables,
                                                                                      x)
    mean, var = 8e-4, 9.6e-7
    np.testing.assert_allclose(y[..., 0], (x[..., 0] - mean) / np.sqrt(var + 1e-5), rtol=1e-4)
    assert np.abs(y[..., 1]).max() < 0.05
    np.testing.assert_allclose(updated["batch_stats"]["mean"], [0.1 * mean, 100.01], rtol=1e-5)
    np.testing.assert_allclose(updated["batch_stats"]["var"], [0.9 + 0.1 * var, 0.9],
                               rtol=1e-6)


@pytest.mark.parametrize("shared_trunk, stream_mode", [
    (False, "separate"), (False, "vmapped"), (True, "separate")])
def test_stages_wiring_with_stand_in_stem_and_streams(shared_trunk, stream_mode):
    """The model's wiring of its stages, on stand-ins (flax's method interception) for the
    stem, which gives X0 (a 2x2 map of 2 features, 0..7), and each stream, which gives 10 x its
    input; two one-channel heads `a`, `b` (kernel ones: the sum of the features, bias 1 + s +
    10 [b] at stage s); every 1x1 back to the stream width an identity (features) or ones
    (predictions) without bias; `none` interaction. Stage s: f = 10 x, p_t = sum(f) + bias,
    and the next input x + f + p_t for each task's stream (Newell's residual path), for the
    shared trunk x + f + p_a + p_b; the outputs stacked in stage order, 3 stages; the same
    with a stage's streams vmapped. The stem reads the normalised image."""
    from flax import linen as nn

    from hgmt.models import normalize_images
    from hgmt.models.hourglass import Stem, Stream
    from hgmt.models.multitask import MultiTaskHourglass

    x0 = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    stem_inputs = []

    def stand_in(call, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, Stem):
            stem_inputs.append(args[0])
            return jnp.asarray(x0)
        if context.method_name == "__call__" and isinstance(context.module, Stream):
            return 10.0 * args[0]
        return call(*args, **kwargs)

    model = MultiTaskHourglass(heads=(("a", 1), ("b", 1)), num_stacks=3, features=2, depth=1,
                               interaction="none", shared_trunk=shared_trunk,
                               stream_mode=stream_mode)
    images = np.random.default_rng(0).integers(0, 256, (1, 8, 8, 3)).astype(np.uint8)
    with nn.intercept_methods(stand_in):  # every variable is crafted: only their shapes
        params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(
            model.init, jax.random.key(0), images)["params"])
    head_bias = {(s, t): 1.0 + s + 10.0 * (t == "b") for s in range(3) for t in "ab"}
    convs = [(n, c) for k, v in params.items()  # the interactions' 1x1s, the model's own
             for n, c in (v.items() if "kernel" not in v else [(k, v)])]
    for name, conv in convs:
        conv["kernel"] = np.eye(2, dtype=np.float32) if name.endswith("_feat") else (
            np.ones_like(conv["kernel"]))
        conv["bias"] = np.zeros_like(conv["bias"])
    for (s, t), b in head_bias.items():
        params[f"stage{s}_{t}_head"]["bias"][:] = b
    with nn.intercept_methods(stand_in):  # the same stand-ins in the forward pass
        out = model.apply({"params": params}, images)
    np.testing.assert_allclose(stem_inputs[-1], normalize_images(images), rtol=1e-6)
    streams = ("trunk",) if shared_trunk else ("a", "b")
    xs, want = {s: x0 for s in streams}, {t: [] for t in "ab"}
    for s in range(3):
        f = {r: 10.0 * xs[r] for r in streams}
        p = {t: f["trunk" if shared_trunk else t].sum(-1, keepdims=True) + head_bias[s, t]
             for t in "ab"}
        for t in "ab":
            want[t].append(p[t])
        xs = ({"trunk": xs["trunk"] + f["trunk"] + p["a"] + p["b"]} if shared_trunk
              else {t: xs[t] + f[t] + p[t] for t in "ab"})
    for t in "ab":
        np.testing.assert_array_equal(out[t], np.stack(want[t]), err_msg=t)


def test_image_sizes_the_model_refuses():
    """0 px (a multiple of anything) and a width that does not fit beside a height that does."""
    from hgmt.models import check_image_size

    with pytest.raises(ValueError, match=r"image_size=0: .* e\.g\. 16$"):
        check_image_size(0, 2)
    model = create_model(dict(num_stacks=1, features=8, depth=2), heads(("pose2d",)))
    with pytest.raises(ValueError, match=r"image_size=40: not a multiple of 16"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 40, 3)))


def test_vmapped_streams_draw_each_tasks_initial_weights():
    """`stream_mode="vmapped"` initialises its stacked streams with one key per task
    (`split_rngs`), as separate streams have: the tasks' streams start from other kernels. The
    stem, hourglass and residuals stood in for (zeros, the identity) so that only the stream's
    own 1x1 (2 -> 2) and BatchNorm are drawn."""
    from flax import linen as nn

    from hgmt.models.hourglass import Hourglass, Residual, Stem

    def stand_in(call, args, kwargs, context):
        if context.method_name == "__call__" and isinstance(context.module, Stem):
            return jnp.zeros((1, 2, 2, 2))
        if context.method_name == "__call__" and isinstance(context.module, Hourglass | Residual):
            return args[0]
        return call(*args, **kwargs)

    model = create_model(dict(num_stacks=1, features=2, depth=1, stream_mode="vmapped"),
                         heads(("pose2d", "segm", "depth")))
    with nn.intercept_methods(stand_in):
        streams = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))["params"][
            "stage0_streams"]
    assert jax.tree.map(np.shape, streams) == {"Conv1x1_0": {"kernel": (3, 2, 2)},
                                               "BatchNorm_0": {"scale": (3, 2), "bias": (3, 2)}}
    kernels = np.asarray(streams["Conv1x1_0"]["kernel"])
    for i, j in ((0, 1), (0, 2), (1, 2)):
        assert not np.array_equal(kernels[i], kernels[j]), (i, j)
