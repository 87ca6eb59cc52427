"""Training, evaluation, prediction and a stablehlo export need no TensorFlow: the commands run
in processes where `import tensorflow` fails (a stand-in package first on PYTHONPATH raises
ImportError, as on an accelerator host that has JAX but no TensorFlow), and the TensorBoard
summaries are written all the same (scalars and images, read back here); where TensorFlow is
installed, a training run on CPUs does not import it."""

import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from tests.conftest import main_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_tensorflow_env(tmp_path):
    """The environment of a process in which `import tensorflow` raises ImportError."""
    stand_in = tmp_path / "no_tensorflow" / "tensorflow"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(
        'raise ImportError("TensorFlow is not installed (hidden by a test)")\n')
    path = [str(stand_in.parent), REPO, os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in path if p)}
    probe = subprocess.run([sys.executable, "-c", "import tensorflow"], env=env,
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "hidden by a test" in probe.stderr
    return env


def _events(workdir: str) -> dict:
    """{tag: {step: summary value proto}} of the workdir's event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    out: dict = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                out.setdefault(value.tag, {})[event.step] = value
    return out


def _run(cmd: list[str], env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stderr[-4000:]}"
    return proc


def test_commands_read_data_and_write_summaries_without_tensorflow(demo_dataset, tmp_path,
                                                                  no_tensorflow_env):
    """The fast check: the four commands' modules and the loop's benchmarks import, a split
    opens and gives a batch, and the summary writer writes it, where TensorFlow cannot be
    imported."""
    _, data_dir = demo_dataset
    logdir, saved = str(tmp_path / "logs"), str(tmp_path / "images.npy")
    code = f"""
import sys
import numpy as np
import hgmt.evaluate, hgmt.export, hgmt.main, hgmt.predict
sys.path.insert(0, {os.path.join(REPO, "benchmarks")!r})
import train_loop, trainer_speed  # the loop's benchmarks, for an accelerator host
from hgmt.data import builds, input_pipeline
from hgmt.training import loop, summary_writer
source = builds.open_split("surreal/all", {data_dir!r}, "train")
batch = next(iter(input_pipeline.train_loader(source, batch_size=2, image_size=32, seed=0,
                                              worker_count=0)))
np.save({saved!r}, batch["image"])
writer = summary_writer.create({logdir!r})
writer.write_scalars(7, {{"loss/total": 1.5, "img_per_s": np.float32(30.25)}})
writer.write_images(7, {{"train/crops": batch["image"]}})
writer.close()
print(sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "clu")))
"""
    proc = _run([sys.executable, "-c", code], no_tensorflow_env)
    assert proc.stdout.strip().splitlines()[-1] == "[]"
    events = _events(logdir)
    assert events["loss/total"][7].tensor.float_val[0] == 1.5
    assert events["img_per_s"][7].tensor.float_val[0] == 30.25
    images = np.load(saved)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    pngs = events["train/crops"][7].tensor.string_val
    assert (int(pngs[0]), int(pngs[1])) == (32, 32) and len(pngs) == 4
    for png, image in zip(pngs[2:], images, strict=True):  # lossless
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), image)


@pytest.mark.slow  # off the training path: training without TensorFlow is a default test
def test_a_stablehlo_export_runs_without_tensorflow(tmp_path, no_tensorflow_env):
    """`python -m hgmt.export --format=stablehlo` of a checkpoint (the tiny pose2d model as
    initialised, saved as training saves it) where TensorFlow cannot be imported: written,
    run and reloaded; `--format=savedmodel` is refused in one line before the checkpoint is
    read."""
    workdir, out = str(tmp_path / "run"), str(tmp_path / "export")
    make = f"""
import jax, jax.numpy as jnp
import orbax.checkpoint as ocp
from hgmt import run_config, workdirs
from hgmt.models import create_model, to_checkpoint_layout
from hgmt.tasks import heads, parse_tasks
from hgmt.training import checkpoints
from tests.conftest import tiny_config
config = tiny_config("unused", tasks="pose2d")
run_config.save_config(config, {workdir!r})
model = create_model(config.model, heads(parse_tasks(config.tasks)))
images = jnp.zeros((1, config.image_size, config.image_size, 3))
variables = model.init(jax.random.key(0), images, train=False)
with checkpoints.manager({workdir!r}, async_save=False, with_data=False) as mngr:
    mngr.save(0, args=ocp.args.Composite(state=ocp.args.StandardSave(
        to_checkpoint_layout(model, dict(variables)))))
import hgmt.export
try:
    hgmt.export.main(["--workdir={workdir}", "--format=savedmodel", "--out_dir={out}"])
except SystemExit as e:
    print(e.code)
"""
    refused = _run([sys.executable, "-c", make], no_tensorflow_env)
    assert refused.stdout.strip().splitlines()[-1] == (
        "error: ValueError: --format=savedmodel: TensorFlow, which writes a SavedModel, cannot "
        "be imported here; install it (pip install tensorflow-cpu), or give "
        "--format=stablehlo")
    proc = _run([sys.executable, "-m", "hgmt.export", f"--workdir={workdir}",
                 "--format=stablehlo", f"--out_dir={out}"], no_tensorflow_env)
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["output_shapes_for_batch_2"] == {"pose2d": [2, 16, 16, 16]}
    assert sorted(os.listdir(tmp_path)) == ["export", "no_tensorflow", "run"]
    with open(os.path.join(out, "hgmt.json")) as f:
        assert json.load(f)["step"] == 0


def test_a_training_run_on_a_cpu_leaves_an_installed_tensorflow_unimported(demo_dataset,
                                                                            tmp_path):
    """With TensorFlow installed (as it is with hgmt, for `tfds build`), `python -m hgmt.main`
    on a local workdir and on CPUs trains, evaluates and writes its summaries without
    importing it: an import takes seconds of every run's start (TensorBoard's own event
    writer imports it wherever it is installed). The summaries read back."""
    import importlib.util

    assert importlib.util.find_spec("tensorflow") is not None
    workdir = str(tmp_path / "run")
    cmd, env = main_command(workdir, demo_dataset[1], total_steps=2, checkpoint_every=2)
    proc = _run([cmd[0], "-X", "importtime", *cmd[1:], "--config.log_every=1"], env)
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"jax", "orbax.checkpoint", "tensorboard"} <= imported
    assert not [m for m in imported if m.split(".")[0] == "tensorflow"]
    events = _events(workdir)
    assert sorted(events["loss/total"]) == [1, 2]
    assert all(np.isfinite(v.tensor.float_val[0]) for v in events["loss/total"].values())


@pytest.mark.slow  # a GPU backend's path, stood in for
def test_tensorflow_is_imported_to_hide_the_gpus_only_where_jax_runs_on_gpus():
    """`hgmt.main` imports an installed TensorFlow before training only on a GPU backend (JAX's
    backend reported as "gpu" here), to hide the GPUs from it; on other backends not at all."""
    code = """
import sys, jax
from hgmt import main
main._hide_accelerators_from_tensorflow()
print("tensorflow" in sys.modules)
jax.default_backend = lambda: "gpu"
main._hide_accelerators_from_tensorflow()
import tensorflow as tf
print("tensorflow" in sys.modules, tf.config.get_visible_devices("GPU"))
"""
    proc = _run([sys.executable, "-c", code], {**os.environ, "JAX_PLATFORMS": "cpu"})
    assert proc.stdout.split("\n")[:2] == ["False", "True []"]


@pytest.mark.slow
def test_train_evaluate_and_predict_run_without_tensorflow(demo_dataset, tmp_path,
                                                           no_tensorflow_env):
    """`python -m hgmt.main` (a short pose2d run, its evaluation at the end), then
    `hgmt.evaluate` and `hgmt.predict` on its workdir."""
    surreal_root, data_dir = demo_dataset
    workdir = str(tmp_path / "run")
    cmd, env = main_command(workdir, data_dir, total_steps=4, checkpoint_every=4)
    env = {**env, "PYTHONPATH": no_tensorflow_env["PYTHONPATH"]}
    proc = _run(cmd + ["--config.log_every=2"], env)
    headline = json.loads(proc.stdout.strip().splitlines()[-1])
    with open(os.path.join(workdir, "config.json")) as f:
        size = json.load(f)["image_size"]

    events = _events(workdir)
    # The loop's scalars at each log step, the test evaluator's headline at the last step: the
    # same numbers the command printed.
    for tag in ("img_per_s", "data_wait", "data_idle", "learning_rate", "loss/total"):
        assert sorted(events[tag]) == [2, 4], tag
        assert all(np.isfinite(v.tensor.float_val[0]) for v in events[tag].values())
    assert events["img_per_s"][4].tensor.float_val[0] > 0
    assert headline["step"] == 4
    metrics = [k for k in headline if k not in ("workdir", "eval", "step")]
    assert metrics
    for k in metrics:
        assert events[f"test/{k}"][4].tensor.float_val[0] == pytest.approx(headline[k],
                                                                          rel=1e-5)
    # The prediction panels: PNGs of the input crop beside the one task's picture.
    image = events["test/predictions"][4].tensor.string_val
    assert (int(image[0]), int(image[1])) == (2 * size, size)  # width, height
    panel = np.asarray(Image.open(io.BytesIO(image[2])))
    assert panel.shape == (size, 2 * size, 3) and panel.dtype == np.uint8 and panel.std() > 0

    out = str(tmp_path / "eval.json")
    _run([sys.executable, "-m", "hgmt.evaluate", f"--workdir={workdir}", f"--out_file={out}",
          f"--config.data_dir={data_dir}"], env)
    with open(out) as f:
        evaluated = json.load(f)
    assert evaluated["step"] == 4
    with open(headline["eval"]) as f:
        assert evaluated["pose2d"] == json.load(f)["pose2d"]

    frame = np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)
    photo = str(tmp_path / "photo.png")
    Image.fromarray(frame).save(photo)
    predictions = str(tmp_path / "predictions")
    _run([sys.executable, "-m", "hgmt.predict", f"--workdir={workdir}", photo,
          f"--out_dir={predictions}"], env)
    with open(os.path.join(predictions, "photo.json")) as f:
        result = json.load(f)
    assert result["step"] == 4 and result["image"] == photo
    panel = np.asarray(Image.open(os.path.join(predictions, "photo.png")))
    assert panel.ndim == 3 and panel.std() > 0
