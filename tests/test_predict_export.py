"""Inference on any image (hgmt.predict) and exported artefacts (hgmt.export)."""

import errno
import functools
import json
import os
import pathlib
import re
import shutil
import sys

import av
import cv2
import jax
import numpy as np
import pytest

import hgmt.evaluate
import hgmt.export
import hgmt.predict
from configs import demo as demo_config
from hgmt import disk_space, run_config, workdirs
from hgmt.data import builds, cropping, eval_data
from hgmt.data.augment import Augment
from hgmt.evaluation import evaluator, protocols
from hgmt.inference import (
    annotated_video,
    export_meta,
    host_memory,
    image_file,
    person,
    prediction_files,
    result_outputs,
    trained_model,
    video,
    video_file,
)
from hgmt.inference import export as exporting
from hgmt.inference import predictor as prediction
from hgmt.models import create_model
from hgmt.sources import (
    body,
    camera,
    frame_selection,
    reference_crop,
    surreal,
    synthetic,
    synthetic_person,
)
from hgmt.tasks import TASKS, common, drawing, heads, parse_tasks
from hgmt.training import device_memory, loop
from tests.conftest import tiny_config


def _trained(demo_dataset, tmp_path_factory, name: str, **overrides) -> str:
    """A workdir `name` trained with the tiny config and `overrides`."""
    path = str(tmp_path_factory.mktemp(name))
    loop.train(tiny_config(demo_dataset[1], **overrides), path)
    return path


@pytest.fixture(scope="module")
def workdir(demo_dataset, tmp_path_factory):
    """A workdir with a 2-step checkpoint of the 4-task tiny model."""
    return _trained(demo_dataset, tmp_path_factory, "predict_workdir", total_steps=2)


@pytest.fixture(scope="module")
def predictor(workdir):
    return prediction.Predictor(workdir)


@pytest.fixture(scope="module")
def test_example(demo_dataset):
    source = builds.open_split("surreal/all", demo_dataset[1], "test",
                                       decode_images=True)
    return source[0]


def _read_frames(path: str, batch_size: int):
    """The (times, frames) batches of the video at `path` (`video_file.Clip.batches`)."""
    with video_file.Clip(path) as clip:
        yield from clip.batches(batch_size)


def _bbox_of_training_crop(example):
    """The (x, y, w, h) box whose square window is the training crop of the example."""
    centre, side = cropping.person_box(
        example["joints2d"][body.SMPL_TO_JOINT].astype(np.float64))
    return (centre[0] - side / 2 + 0.5, centre[1] - side / 2 + 0.5, side, side)


def test_predict_on_a_dataset_frame_equals_the_evaluation_path(predictor, test_example):
    """With the box of the training crop, the Predictor sees exactly the evaluation input and
    maps the decoded joints back to the same image pixels."""
    result = predictor(test_example["image"], _bbox_of_training_crop(test_example))
    cropped = cropping.crop_example(test_example, predictor.image_size,
                                    Augment.none())
    np.testing.assert_array_equal(result["crop_image"], cropped["image"])
    np.testing.assert_allclose(result["crop"], cropped["crop"], atol=1e-4)

    model = create_model(predictor.config.model, heads(predictor.tasks))
    outputs = model.apply(predictor.variables, cropped["image"][None], train=False)
    for t in predictor.tasks:
        np.testing.assert_allclose(result["raw"][t], np.asarray(outputs[t][-1][0]),
                                   rtol=1e-4, atol=1e-4, err_msg=t)
    batch = {"crop": cropped["crop"][None], "pelvis_depth": cropped["pelvis_depth"][None]}
    expected = TASKS["pose2d"].decode(outputs["pose2d"][-1], batch)["joints2d_image"][0]
    np.testing.assert_allclose(result["joints2d"], np.asarray(expected), atol=1e-2)

    h, w = test_example["image"].shape[:2]
    assert result["joints2d"].shape == (16, 2) and np.isfinite(result["joints2d"]).all()
    assert result["joints3d_rel_mm"].shape == (16, 3)
    np.testing.assert_array_equal(result["joints3d_rel_mm"][body.PELVIS], 0.0)
    r = predictor.image_size // 4
    assert result["segm"].shape == (r, r) and result["segm"].max() <= 14
    assert result["segm_image"].shape == (h, w) and result["depth_image"].shape == (h, w)
    assert result["depth"].max() <= 19
    fg = result["depth"] > 0
    assert np.isnan(result["depth_rel_mm"][~fg]).all() and np.isfinite(
        result["depth_rel_mm"][fg]).all()


def _doc_block(doc: str, opening: str, closing: str = "```") -> str:
    """The lines of docs/`doc` between the line `opening` and the next line `closing`."""
    lines = (pathlib.Path(__file__).resolve().parents[1] / "docs" / doc).read_text().splitlines()
    start = lines.index(opening) + 1
    return "\n".join(lines[start:lines.index(closing, start)]) + "\n"


def test_the_evaluation_docs_python_block_runs_as_written(workdir, tmp_path, monkeypatch):
    """docs/evaluation.md's "From Python" block, run as written on a trained workdir (for its
    `runs/all`): it restores the newest checkpoint, evaluates the test split's middle frames
    with the settings it names, and writes the report files its comment names."""
    code = _doc_block("evaluation.md", "```python")
    assert code.count('"runs/all"') == 1
    monkeypatch.chdir(tmp_path)
    names: dict = {}
    exec(compile(code.replace('"runs/all"', repr(workdir)), "docs/evaluation.md", "exec"), names)
    assert names["step"] == 2 and set(names["variables"]) == {"params", "batch_stats"}
    summary = names["summary"]
    assert (summary["split"], summary["frames"], summary["flip"], summary["protocol"]) == (
        "test", "middle", False, "hgmt")
    assert summary["num_examples"] == 2  # the middle frames of the demo dataset's 2 test clips
    assert sorted(os.listdir(tmp_path)) == ["eval.json", "eval.md", "eval_pckh.png"]
    with open(tmp_path / "eval.json") as f:
        assert json.load(f)["num_examples"] == 2


def test_the_predict_docs_script_prints_the_bbox_its_example_was_predicted_with(
        tmp_path, monkeypatch, capsys):
    """docs/predict.md's script behind its example picture, run as written on the demo's test
    clip 03_01_c0001 (configs/demo.py's frames and seed; a clip does not depend on the count
    per split): it writes the middle frame and prints the --bbox that the docs' next command
    gives hgmt.predict."""
    settings = demo_config.get_config().demo
    synthetic.generate(str(tmp_path / "surreal"), clips_per_split=1, frames=settings.frames,
                       seed=settings.seed)
    code = _doc_block("predict.md", "python - <<'EOF'", "EOF")
    assert settings.surreal_root in code
    monkeypatch.chdir(tmp_path)
    os.mkdir("runs")
    exec(compile(code.replace(settings.surreal_root, str(tmp_path / "surreal")),
                 "docs/predict.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    command = _doc_block("predict.md", "EOF", "cp runs/predictions/03_01_c0001_middle.png "
                                              "docs/predict_example.png")
    assert printed.startswith("--bbox=") and f" {printed} " in f" {command.strip()} "
    assert cv2.imread("runs/03_01_c0001_middle.png").shape == (240, 320, 3)


def test_the_predictors_variables_are_placed_on_the_device_once(workdir, predictor):
    """The restored variables (NumPy arrays on the host) are put on JAX's default device when
    the Predictor is made, not copied there on every model pass; they are the checkpoint's
    (test_predict_on_a_dataset_frame_equals_the_evaluation_path checks the predictions)."""
    _, restored, _ = trained_model.restore_for_inference(workdir)
    leaves = jax.tree.leaves(predictor.variables)
    assert len(leaves) == len(jax.tree.leaves(restored)) > 0
    for leaf, host in zip(leaves, jax.tree.leaves(restored), strict=True):
        assert isinstance(leaf, jax.Array) and not isinstance(leaf, np.ndarray)
        assert leaf.devices() == {jax.devices()[0]}
        np.testing.assert_array_equal(np.asarray(leaf), host)


def test_predictors_of_one_model_share_its_compiled_passes_not_their_variables(workdir,
                                                                                 predictor):
    """A second Predictor of the same model (here of the same workdir, its variables then
    changed, as another checkpoint's would be) runs the executables the first compiled, the
    model's variable shapes traced once; what it computes is its own variables' outputs. A
    Predictor with the flip test, another program, compiles its own."""
    from hgmt.models import variable_shapes

    crops = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    first = jax.device_get(predictor._executable(2)(predictor.variables, crops))
    other = prediction.Predictor(workdir)
    assert other._executable(2) is predictor._executable(2)
    assert variable_shapes(other._model, 64) is variable_shapes(predictor._model, 64)
    other.variables = jax.tree.map(lambda v: v * 1.5, other.variables)
    got = jax.device_get(other._executable(2)(other.variables, crops))
    want = jax.device_get(other._apply(other.variables, crops))
    for t in other.tasks:
        np.testing.assert_allclose(np.stack(got[t]), want[t], rtol=1e-5, atol=1e-5)
        assert not np.allclose(np.stack(got[t]), np.stack(first[t]), atol=1e-3), t
    assert prediction.Predictor(workdir, flip=True)._executable(2) is not other._executable(2)


def test_predictions_follow_the_person_across_images(predictor, test_example):
    """Padding the image evenly and moving the box with it moves the 2D joints by the padding
    and, for one camera (`focal_px` given: the padding does not change it), leaves 3D (the
    principal point stays at the person's same offset from the image centre), parts and depth
    unchanged: image coordinates are handled end to end."""
    import copy

    image = test_example["image"]
    bbox = _bbox_of_training_crop(test_example)
    left, top = 37, 11
    padded = cv2.copyMakeBorder(image, top, top, left, left, cv2.BORDER_CONSTANT, value=0)
    one_camera = copy.copy(predictor)
    one_camera.focal_px = float(camera.INTRINSICS[0, 0])
    a = one_camera(image, bbox)
    b = one_camera(padded, (bbox[0] + left, bbox[1] + top, bbox[2], bbox[3]))
    # The default camera of a SURREAL-sized image is SURREAL's.
    np.testing.assert_array_equal(predictor(image, bbox)["joints3d_rel_mm"],
                                  a["joints3d_rel_mm"])
    # cv2's fixed-point warp may round one shifted sample position differently (one grey
    # level at a pixel), which moves a nearly flat heatmap's sub-pixel peak by up to ~0.02 px.
    assert np.abs(a["crop_image"].astype(int) - b["crop_image"]).max() <= 1
    np.testing.assert_allclose(b["joints2d"], a["joints2d"] + [left, top], atol=0.05)
    np.testing.assert_allclose(b["joints3d_rel_mm"], a["joints3d_rel_mm"], atol=0.5)
    np.testing.assert_array_equal(b["segm"], a["segm"])
    np.testing.assert_array_equal(b["depth"], a["depth"])


def test_3d_decoding_is_the_same_at_any_resolution_and_follows_focal_px(predictor):
    """The same model outputs on the same view of a 320x240 image and of its 4x version: the
    2D joints scale with the image (pixel centres at integers), the root-relative 3D joints do
    not (the default camera's field of view is fixed). With a given focal length, the 3D pose
    is what SURREAL's camera decodes from the image scaled to it."""
    rng = np.random.default_rng(3)
    r = predictor.image_size // 4
    raw = {t: rng.normal(size=(r, r, TASKS[t].NUM_CHANNELS)).astype(np.float32)
           for t in predictor.tasks}
    crop = np.zeros((predictor.image_size,) * 2 + (3,), np.uint8)

    def result(model, shape, window):
        m_label = cropping.crop_affine(window.centre, window.side, r)
        return model._result(np.zeros((*shape, 3), np.uint8), window, 1, crop, m_label, raw)

    small = person.Window(np.array([200.3, 131.7]), 150.0, "given")
    big = person.Window((small.centre + 0.5) * 4 - 0.5, small.side * 4, "given")
    a, b = result(predictor, (240, 320), small), result(predictor, (960, 1280), big)
    np.testing.assert_allclose(b["joints2d"], (a["joints2d"] + 0.5) * 4 - 0.5, atol=1e-3)
    np.testing.assert_allclose(b["joints3d_rel_mm"], a["joints3d_rel_mm"], atol=0.05)
    assert np.abs(a["joints3d_rel_mm"]).max() > 50  # a pose, not all zeros

    import copy

    given = copy.copy(predictor)
    given.focal_px = 2400.0  # the 4x image's camera is SURREAL's with 4x the focal length
    np.testing.assert_allclose(result(given, (960, 1280), big)["joints3d_rel_mm"],
                               a["joints3d_rel_mm"], atol=0.05)
    given.focal_px = 1200.0  # another camera: another pose off the image centre
    assert np.abs(result(given, (960, 1280), big)["joints3d_rel_mm"] -
                  a["joints3d_rel_mm"]).max() > 1.0


def test_a_surreal_frames_decoding_frame_is_the_identity():
    """Training decodes a SURREAL frame's pixels as they are (principal point (160, 120),
    pixel centres at integers): the decoding frame of a 320 x 240 image is exactly the
    identity, whatever focal length SURREAL's is given as; an image resampled from one at 4x
    (pixel x of the 4x image at (x + 0.5) / 4 - 0.5 of the frame) decodes as the frame."""
    np.testing.assert_array_equal(prediction.decoding_frame((240, 320)), np.eye(2, 3))
    np.testing.assert_array_equal(prediction.decoding_frame((240, 320), 600.0), np.eye(2, 3))
    points = np.array([[0.0, 0.0], [1279.0, 959.0], [641.5, 481.5]])
    big = prediction.decoding_frame((960, 1280))
    np.testing.assert_allclose(points @ big[:, :2].T + big[:, 2], (points + 0.5) / 4 - 0.5,
                               atol=1e-12)
    np.testing.assert_allclose(prediction.decoding_frame((960, 1280), 2400.0), big, atol=1e-12)


def test_a_large_window_is_averaged_down_not_aliased_and_stays_in_place(predictor):
    """A window over MAX_WINDOW_PX source px (a high-resolution photo) is averaged down before
    the crop: a 1 px checkerboard becomes flat grey, not moire; a smooth picture gives the crop
    a plain bilinear sampling gives (the geometry is unchanged)."""
    size = predictor.image_size
    board = (np.indices((1600, 1600)).sum(0) % 2 * 255).astype(np.uint8)
    board = np.repeat(board[..., None], 3, -1)
    whole = person.Window.whole(board.shape)
    (crop,), _ = predictor._crops([board], [whole])
    assert abs(crop.mean() - 127.5) < 3 and crop.std() < 3, (crop.mean(), crop.std())

    yy, xx = np.indices((960, 1280))
    blob = 255 * np.exp(-((xx - 301.3) ** 2 + (yy - 702.7) ** 2) / (2 * 60.0 ** 2))
    smooth = np.repeat(blob.astype(np.uint8)[..., None], 3, -1)
    window = person.Window.whole(smooth.shape)
    assert window.side > prediction.MAX_WINDOW_PX
    (crop,), _ = predictor._crops([smooth], [window])
    direct = cv2.warpAffine(smooth, cropping.crop_affine(window.centre, window.side, size),
                            (size, size), flags=cv2.INTER_LINEAR)
    assert np.abs(crop.astype(int) - direct).max() <= 4


def _stick_figure(path):
    """A 480x360 JPEG unlike SURREAL: a stick figure on a grey-green background."""
    img = np.full((360, 480, 3), (90, 120, 80), np.uint8)
    pts = {"head": (240, 60), "neck": (240, 100), "pelvis": (240, 210), "lh": (200, 290),
           "rh": (280, 290), "la": (180, 170), "ra": (300, 170)}
    cv2.circle(img, pts["head"], 25, (200, 170, 150), -1)
    for a, b in [("neck", "pelvis"), ("pelvis", "lh"), ("pelvis", "rh"), ("neck", "la"),
                 ("neck", "ra")]:
        cv2.line(img, pts[a], pts[b], (60, 60, 200), 12)
    cv2.imwrite(path, img, [cv2.IMWRITE_JPEG_QUALITY, 90])


@pytest.mark.parametrize("command", [hgmt.evaluate, hgmt.predict, hgmt.export])
def test_a_checkpoint_too_large_for_the_device_is_named_so_not_unreadable(workdir, tmp_path,
                                                                         monkeypatch, command):
    """XLA's out-of-memory error while a command restores the checkpoint: one line naming
    the device's memory and the settings, not 'cannot be read ... pass --step= with another'."""
    import orbax.checkpoint as ocp

    def restore(self, *args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 123 bytes.")

    # The variables' read (a Checkpointer's), and the whole state's (a CheckpointManager's).
    monkeypatch.setattr(ocp.Checkpointer, "restore", restore)
    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    args = {hgmt.evaluate: [], hgmt.predict: [str(tmp_path / "x.jpg"), f"--out_dir={tmp_path}"],
            hgmt.export: ["--format=stablehlo", f"--out_dir={tmp_path / 'e'}"]}[command]
    with pytest.raises(SystemExit) as e:
        command.main([f"--workdir={workdir}", *args])
    assert str(e.value.code).startswith(
        f"error: OutOfDeviceMemory: out of device memory while restoring "
        f"{workdirs.checkpoint_dir(workdir)}/2: XLA asked for 123 B"), e.value.code
    assert "cannot be read" not in str(e.value.code)
    # The whole state's read (of a config whose model is not config.json's) likewise.
    monkeypatch.undo()
    monkeypatch.setattr(ocp.CheckpointManager, "restore", restore)
    other = run_config.load_config(workdir)
    other.tasks = "pose2d"
    with pytest.raises(device_memory.OutOfDeviceMemory, match="XLA asked for 123 B"):
        trained_model.restore_for_inference(workdir, config=other)


def test_variables_too_large_for_the_device_are_named_so(workdir, tmp_path, monkeypatch):
    """XLA's out-of-memory error while the Predictor places the restored variables on the
    device: hgmt.predict's one line names their size and the device's memory, and no batch
    flag (no batch is on the device yet)."""
    def device_put(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(
            "RESOURCE_EXHAUSTED: Out of memory while trying to allocate 321 bytes.")

    monkeypatch.setattr(prediction.jax, "device_put", device_put)
    with pytest.raises(SystemExit) as e:
        hgmt.predict.main([f"--workdir={workdir}", str(tmp_path / "x.jpg"),
                           f"--out_dir={tmp_path}"])
    _, variables, _ = trained_model.restore_for_inference(workdir)
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(variables))
    assert str(e.value.code).startswith(
        f"error: OutOfDeviceMemory: out of device memory while placing the checkpoint's "
        f"variables ({device_memory._size(nbytes)}) on the device: XLA asked for 321 B"
    ), e.value.code
    assert "batch" not in str(e.value.code)


def test_cli_writes_panel_and_json_and_reports_unreadable_images(workdir, predictor,
                                                                 tmp_path, capsys):
    """Each input that cannot be read is skipped with a line naming it and why: a PNG and a
    JPEG that are damaged or cut short (their format named), an empty file, a file of sound
    only, one missing, a folder, and a video whose name says image (told to rename it, which
    only a file PyAV plays as a video is)."""
    import shutil

    photo = str(tmp_path / "photo.jpg")
    _stick_figure(photo)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(open(photo, "rb").read()[:300])
    renamed = tmp_path / "clip.dat"
    shutil.copy(DEMO_CLIP, renamed)
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    sound = tmp_path / "sound.m4a"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 8000), np.float32)
        frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    folder = tmp_path / "pictures"
    folder.mkdir()
    out = tmp_path / "out"
    rc = hgmt.predict.main([photo, str(broken), str(tmp_path / "missing.jpg"), str(cut),
                            str(renamed), str(folder), str(empty), str(sound),
                            f"--workdir={workdir}", f"--out_dir={out}"])
    assert rc == 1  # seven inputs could not be read; the good one is still written
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == (f"error: 7 of 8 inputs skipped (each named above); the others are "
                       f"predicted in {out}")
    lines = dict(line.split(": ", 1) for line in err if line.startswith("skipped "))
    hint = ("; it was read as an image: a video is read as one when its name ends in .mp4, "
            ".m4v, ")
    assert lines[f"skipped {broken}"] == (f"image {broken} is a PNG file that does not decode: "
                                          f"it is damaged or cut short (copy or export it "
                                          f"again)")
    assert lines[f"skipped {cut}"] == (f"image {cut} is a JPEG file that does not decode: it "
                                       f"is damaged or cut short (copy or export it again)")
    assert lines[f"skipped {empty}"] == f"image {empty} is empty (0 bytes)"
    assert lines[f"skipped {sound}"] == (f"image {sound} cannot be decoded (not an image "
                                         f"OpenCV reads); it holds sound only, no picture")
    assert lines[f"skipped {renamed}"].startswith(
        f"image {renamed} cannot be decoded (not an image OpenCV reads){hint}")
    assert lines[f"skipped {renamed}"].endswith(" (rename it)")
    assert lines[f"skipped {tmp_path / 'missing.jpg'}"] == (f"image {tmp_path / 'missing.jpg'} "
                                                            f"not found")
    assert lines[f"skipped {folder}"] == (f"{folder}: a folder; give the image files in it "
                                          f"(e.g. {folder}/*, which a shell expands)")
    capsys.readouterr()
    assert hgmt.predict.main([str(folder), str(empty), f"--workdir={workdir}",
                              f"--out_dir={out}"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: 2 of 2 inputs skipped (each named above); nothing was predicted")
    assert video_file.is_video("clip.TS") and video_file.is_video("a.mpg")
    assert not video_file.is_video("a.png")
    assert sorted(os.listdir(out)) == ["photo.json", "photo.png"]
    with pytest.raises(IsADirectoryError, match="folder; give the video files in it"):
        video_file.Clip(str(folder))

    with open(out / "photo.json") as f:
        saved = json.load(f)
    assert saved["tasks"] == list(predictor.tasks) and saved["step"] == 2
    assert saved["flip"] is False
    joints = np.asarray(saved["joints2d_image_px"])
    assert joints.shape == (16, 2)
    # No box: the window was searched for, and the JSON says which one was used and how;
    # the joints decoded from the label map lie within it.
    found = predictor(image_file.read_image(photo))
    assert saved["bbox"] == pytest.approx(found["window"].bbox, abs=0.01)
    assert saved["bbox_found_by"] == found["window"].found_by
    assert saved["model_passes"] == found["passes"] >= 1
    x, y, w, _ = saved["bbox"]
    assert (joints >= [x - 0.5, y - 0.5]).all() and (joints <= [x + w - 0.5, y + w - 0.5]).all()
    assert np.asarray(saved["joints3d_rel_mm"]).shape == (16, 3)
    r = predictor.image_size // 4
    assert np.asarray(saved["segm_classes"]).shape == (r, r)
    panel = cv2.imread(str(out / "photo.png"))[..., ::-1]
    # Two rows: the input crop, the 2D skeleton and the 3D views; then depth and parts.
    h = drawing.PLOT_HEIGHT
    assert panel.shape == (2 * h, h + h + int(1.5 * h), 3)
    np.testing.assert_array_equal(
        panel, result_outputs.panel(predictor(image_file.read_image(photo))))


def test_a_photo_is_predicted_upright_by_its_exif_orientation(workdir, tmp_path, capsys):
    """A JPEG stored 64 wide and 48 tall with EXIF orientation 6 (turn 90 degrees clockwise
    to view, as phones store portrait photos) is predicted upright, 48 wide and 64 tall: the
    JSON's image_size_px says so, and --bbox is in the upright image's pixels (a box at
    x = 50, inside the stored image but right of the upright one, is refused)."""
    from PIL import Image

    stored = np.zeros((48, 64, 3), np.uint8)
    stored[:12, :16] = 255  # the stored image's top left: the upright one's top right
    image = Image.fromarray(stored)
    exif = image.getexif()
    exif[0x0112] = 6  # Orientation
    photo = tmp_path / "portrait.jpg"
    image.save(photo, exif=exif)
    upright = image_file.read_image(str(photo))
    assert upright.shape == (64, 48, 3) and upright[:12, -12:].min() > 200

    out = tmp_path / "out"
    assert hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=4,8,40,40"]) == 0
    with open(out / "portrait.json") as f:
        assert json.load(f)["image_size_px"] == [48, 64]
    assert hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=50,0,10,10"]) == 1
    assert "lies wholly outside the 48 x 64 image" in capsys.readouterr().err


def test_an_animation_is_a_video_and_an_unknown_image_format_gets_a_fix(workdir, tmp_path,
                                                                        capsys):
    """A GIF of 3 frames, which OpenCV would read as its first frame, is predicted as a video
    (3 JSON lines at the frames' times, an annotated mp4, a summary); a GIF of one frame is an
    image; a HEIC photo (a format OpenCV has no codec for) is skipped with the fix; an animated
    WebP is a video where PyAV decodes it (PyAV 19), and where it cannot (18) is predicted as
    its first frame with a warning saying so and how to predict every frame."""
    from PIL import Image

    frames = [Image.fromarray(np.full((40, 50, 3), 60 * k, np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    frames[0].save(tmp_path / "still.gif")
    frames[0].save(tmp_path / "moving.webp", save_all=True, append_images=frames[1:],
                   duration=100, loop=0)
    heic = tmp_path / "photo.heic"
    heic.write_bytes(b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic")
    assert video_file.is_video(str(tmp_path / "anim.gif"))
    assert not video_file.is_video(str(tmp_path / "still.gif"))
    out = tmp_path / "out"
    assert hgmt.predict.main([str(tmp_path / name) for name in
                              ("anim.gif", "still.gif", "photo.heic", "moving.webp")]
                             + [f"--workdir={workdir}", f"--out_dir={out}",
                                "--bbox=0,0,30,30"]) == 1
    # The animated WebP: a video where PyAV decodes it (19), else its first frame (PyAV 18).
    webp = tmp_path / "moving.webp"
    webp_plays = video_file.plays_as_video(str(webp))
    moving = (["moving.annotated.mp4", "moving.jsonl", "moving.summary.json"] if webp_plays
              else ["moving.json", "moving.png"])
    assert sorted(os.listdir(out)) == sorted(["anim.annotated.mp4", "anim.jsonl",
                                              "anim.summary.json", *moving, "still.json",
                                              "still.png"])
    if webp_plays:
        with open(out / "moving.summary.json") as f:
            assert json.load(f)["frames"] == 3
    with open(out / "anim.jsonl") as f:
        lines = [json.loads(line) for line in f]
    np.testing.assert_allclose([line["time_s"] for line in lines], [0, 0.1, 0.2], atol=1e-3)
    with open(out / "anim.summary.json") as f:
        assert json.load(f)["frames"] == 3
    assert len(_decoded(out / "anim.annotated.mp4")[1]) == 3
    printed = capsys.readouterr()
    # Each input's line names the files written for it.
    lines = printed.out.splitlines()
    assert f"{tmp_path / 'still.gif'} -> {out / 'still.png'}, {out / 'still.json'}" in lines
    assert any(line.startswith(f"{tmp_path / 'anim.gif'} -> {out / 'anim.jsonl'}, "
                               f"{out / 'anim.annotated.mp4'}, {out / 'anim.summary.json'}: ")
               for line in lines), lines
    err = printed.err.splitlines()
    assert f"skipped {heic}: image {heic} cannot be decoded (not an image OpenCV reads); " \
           f"OpenCV reads no .heic files: convert it to JPEG or PNG" in err
    warned = (f"warning: {webp}: an animation PyAV cannot decode (an animated WebP under PyAV "
              f"18): only its first frame is predicted; convert it to a GIF or a video to "
              f"predict every frame")
    assert (warned in err) == (not webp_plays)
    assert not any("still.gif" in line for line in err)


def test_cli_refuses_outputs_that_would_replace_an_input_or_each_other(workdir, tmp_path):
    """Checked before the model loads: nothing is written, every input is kept."""
    photo = tmp_path / "photo.png"
    _stick_figure(str(photo))
    before = photo.read_bytes()
    with pytest.raises(SystemExit, match=f"the prediction of {photo} would overwrite the "
                                         f"input {photo}; choose another --out_dir"):
        hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={tmp_path}"])
    (tmp_path / "b").mkdir()
    other = tmp_path / "b" / "photo.jpg"
    _stick_figure(str(other))
    out = tmp_path / "out"
    with pytest.raises(SystemExit, match=f"{photo} and {other} would both write "
                                         f"{out}/photo.png; predict them into separate"):
        hgmt.predict.main([str(photo), str(other), f"--workdir={workdir}", f"--out_dir={out}"])
    assert photo.read_bytes() == before and not out.exists()
    # The input's folder by a symbolic link: the same file by another path.
    (tmp_path / "link").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(SystemExit, match=f"the prediction of {photo} would overwrite the "
                                         f"input {photo}; choose another --out_dir"):
        hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={tmp_path}/link"])
    assert photo.read_bytes() == before
    # An --out_dir that cannot be a folder: one line.
    with pytest.raises(SystemExit) as stop:
        hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={photo}/out"])
    assert str(stop.value.code) == (f"error: --out_dir={photo}/out: cannot be made a folder "
                                    f"(Not a directory); give a folder this user can write")
    assert photo.read_bytes() == before
    # An --out_dir that is a file: named before the model loads.
    with pytest.raises(SystemExit) as stop:
        hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={photo}"])
    assert str(stop.value.code) == (f"error: --out_dir={photo}: a file; give a folder (made "
                                    f"if missing)")
    assert photo.read_bytes() == before


def test_cli_refuses_to_overwrite_a_file_that_is_no_earlier_prediction(workdir, tmp_path):
    """A folder holding holiday.jpg and holiday.png, another picture (a camera's pair, a
    conversion), predicted into itself: the panel would replace holiday.png, so the command
    stops before the model loads and keeps it; so does a holiday.json of the user's. An
    earlier prediction's outputs are replaced: a rerun into the same folder works."""
    folder = tmp_path / "photos"
    folder.mkdir()
    photo, pair = folder / "holiday.jpg", folder / "holiday.png"
    _stick_figure(str(photo))
    _stick_figure(str(pair))
    before = pair.read_bytes()
    message = (f"error: the prediction of {photo} would overwrite {pair}, which is not an "
               f"earlier prediction of it (hgmt.predict writes holiday.png, holiday.json; "
               f"holiday.json, which marks an earlier one, is missing); move that file or "
               f"choose another --out_dir")
    with pytest.raises(SystemExit) as stop:
        hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={folder}"])
    assert str(stop.value.code) == message and pair.read_bytes() == before
    pair.rename(folder / "kept.png")
    # A JSON of the user's, with "image" and "tasks" too, but not first as hgmt.predict
    # writes them.
    for theirs in ('{"album": "summer"}', '{"album": "summer", "image": 1, "tasks": [2]}'):
        (folder / "holiday.json").write_text(theirs)
        with pytest.raises(SystemExit, match="would overwrite .*holiday.json, which is not an "
                                             ".* marks an earlier one, is not hgmt.predict's"):
            hgmt.predict.main([str(photo), f"--workdir={workdir}", f"--out_dir={folder}"])
        assert (folder / "holiday.json").read_text() == theirs
    # An earlier hgmt's JSON (every one began with its image and tasks), of a model without
    # pose too.
    (folder / "holiday.json").write_text(json.dumps({"image": str(photo), "step": 2,
                                                     "tasks": ["segm"]}))
    for _ in range(2):  # the second run replaces the first's outputs
        assert hgmt.predict.main([str(photo), f"--workdir={workdir}",
                                  f"--out_dir={folder}"]) == 0
    written = json.loads((folder / "holiday.json").read_text())
    assert "bbox_found_by" in written and list(written)[:4] == ["image", "step", "flip", "tasks"]
    # An earlier hgmt's video summary (without the fields added since) marks its files too.
    summary = {"video": "clip.mp4", "frames": 3, "jsonl": "clip.jsonl",
               "annotated_video": "clip.annotated.mp4"}
    (folder / "clip.summary.json").write_text(json.dumps(summary))
    (folder / "clip.jsonl").write_text("{}\n")
    prediction_files.check_outputs([str(folder / "clip.mp4")], str(folder))


def test_the_output_check_resolves_each_path_a_bounded_number_of_times(tmp_path, monkeypatch):
    """A folder of frames (here 300) is checked in time linear in its size: each input's and
    output's path is resolved a few times, not once per other input (quadratic: hours for
    tens of thousands of frames)."""
    inputs = []
    for i in range(300):
        inputs.append(str(tmp_path / f"f{i}.jpg"))
        open(inputs[-1], "w").close()
    calls = []
    realpath = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p: (calls.append(p), realpath(p))[1])
    prediction_files.check_outputs(inputs, str(tmp_path / "out"))
    assert len(calls) <= 10 * len(inputs), len(calls)


PAGE = 4096  # tmpfs counts its space in pages


def _pages(size: int) -> int:
    return -(-size // PAGE)


def test_a_full_disk_stops_the_command_in_one_line_leaving_nothing_partial(
        workdir, tmp_path, small_disk, capsys):
    """The output folder on a real size-limited tmpfs with room for an image's panel but not
    its JSON: the command stops (exit 1) with one line naming DiskFull and the JSON, neither
    the panel nor the JSON nor a temporary file is left, and the next input is not tried. On
    the disk filled up, a video stops it the same way, naming its .jsonl, .annotated.mp4 and
    .summary.json, nothing partial left, and it is not reported as a skipped input."""
    photo, other = str(tmp_path / "photo.jpg"), str(tmp_path / "other.jpg")
    _stick_figure(photo)
    _stick_figure(other)
    roomy = tmp_path / "roomy"
    assert hgmt.predict.main([photo, f"--workdir={workdir}", f"--out_dir={roomy}"]) == 0
    png = (roomy / "photo.png").stat().st_size
    assert (roomy / "photo.json").stat().st_size > 0
    disk = small_disk((_pages(png) + 16) * PAGE)
    out = os.path.join(disk.path, "out")
    os.makedirs(out)
    with open(os.path.join(disk.path, "filler"), "wb") as f:
        f.write(b"x" * 16 * PAGE)  # leaves exactly the panel's pages free
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        hgmt.predict.main([photo, other, f"--workdir={workdir}", f"--out_dir={out}"])
    message = str(stop.value.code)
    # The space the panel's temporary file took is free again once it is removed.
    assert re.match(rf"error: DiskFull: \[Errno 28\] cannot write the file to {out}/photo.json: "
                    rf"the disk or quota is full \({(_pages(png) * PAGE) / 1024:.1f} KiB free "
                    rf"on it\)\. Nothing partial was left behind\. Free space \(or raise the "
                    rf"quota\), or give another --out_dir, and rerun \(OSError: ", message), \
        message
    assert "\n" not in message
    assert os.listdir(out) == []
    printed = capsys.readouterr()
    assert "other.jpg" not in printed.out + printed.err and "skipped" not in printed.err

    with pytest.raises(OSError), open(os.path.join(disk.path, "filler"), "ab") as f:
        f.write(b"x" * (_pages(png) + 1) * PAGE)  # fills the disk
    with pytest.raises(SystemExit) as stop:
        hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", f"--out_dir={out}",
                           "--batch_size=2"])
    message = str(stop.value.code)
    assert message.startswith(f"error: DiskFull: [Errno 28] cannot write 03_01_c0001.jsonl, "
                              f"03_01_c0001.annotated.mp4 and 03_01_c0001.summary.json (the "
                              f"prediction of {DEMO_CLIP}) "
                              f"to {out}: the disk or quota is full (0 bytes free on it). "
                              f"Nothing partial was left behind. Free space"), message
    assert "\n" not in message
    assert os.listdir(out) == [] and "skipped" not in capsys.readouterr().err


def test_a_videos_three_files_are_one_runs_synced_before_their_rename(workdir, tmp_path,
                                                                      monkeypatch):
    """A video's .jsonl, .annotated.mp4 and .summary.json are renamed into place together,
    each file's data synced before the renames: a failure while writing the summary (here a
    full disk) leaves the previous run's three files as they were, not new frames beside an
    old summary."""
    out = tmp_path / "out"
    small = "--batch_size=2"  # fewer batch shapes to compile: the files are what is tested
    assert hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", f"--out_dir={out}", small]) == 0
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    assert len(before) == 3
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(
        ("sync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(
        ("rename", os.path.basename(b))), replace(a, b))[1])
    bbox = "--bbox=10,10,40,40"  # other lines than the first run's
    assert hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", f"--out_dir={out}", bbox,
                              small]) == 0
    files = ["03_01_c0001.jsonl", "03_01_c0001.annotated.mp4", "03_01_c0001.summary.json"]
    assert events == [("sync", f"{name}.partial") for name in files] + [
        ("rename", name) for name in files] + [("sync", "out")]
    assert (out / files[0]).read_bytes() != before[files[0]]
    for name in files:
        (out / name).write_bytes(before[name])

    real_dump = json.dump

    def dump(obj, f, **kwargs):
        if "annotated_video" in obj:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_dump(obj, f, **kwargs)

    monkeypatch.setattr(json, "dump", dump)
    with pytest.raises(SystemExit, match="DiskFull"):
        hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", f"--out_dir={out}", bbox, small])
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before


# XLA's out-of-memory error on a GPU, its allocation dump shortened.
_GPU_OOM = ("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 34359738368 bytes.\n"
            "BufferAssignment OOM Debugging.\n"
            + "".join(f"  allocation {i}: size 1073741824, parameter {i}\n" for i in range(40)))


def test_out_of_device_memory_stops_the_command_naming_the_batch_flag(
        workdir, predictor, tmp_path, monkeypatch, capsys):
    """XLA's out-of-memory error while predicting (a crafted one: the CPU has no memory limit
    to exceed) stops the command, for an image and for a video alike, with one line naming the
    memory asked, --batch_size, the crop size and the model, without XLA's allocation dump and
    with nothing written; the bfloat16 it suggests is a setting the command takes."""
    photo = str(tmp_path / "photo.jpg")
    _stick_figure(photo)
    out = tmp_path / "out"

    def out_of_memory(self, crops):
        raise jax.errors.JaxRuntimeError(_GPU_OOM)

    monkeypatch.setattr(prediction.Predictor, "_forward", out_of_memory)
    params = sum(x.size for x in jax.tree.leaves(predictor.variables["params"]))
    for path in (photo, DEMO_CLIP):
        with pytest.raises(SystemExit) as stop:
            hgmt.predict.main([path, f"--workdir={workdir}", f"--out_dir={out}",
                               "--batch_size=3"])
        assert str(stop.value.code) == (
            f"error: OutOfDeviceMemory: out of device memory while predicting: XLA asked for "
            f"32.0 GiB, the device has unknown. The program holds batches of 3 crops "
            f"(--batch_size=3, on one device) of 64 x 64 pixels and a model of "
            f"{params / 1e6:.2f} M parameters ({4 * params / 2**10:.1f} KiB in float32), in "
            f"float32, as the checkpoint's config sets them. Lower --batch_size, or compute "
            f"in bfloat16 (--config.model.dtype=bfloat16)")
        assert os.listdir(out) == [] and "allocation 0" not in capsys.readouterr().err
    monkeypatch.undo()
    assert hgmt.predict.main([photo, f"--workdir={workdir}", f"--out_dir={out}",
                              "--config.model.dtype=bfloat16"]) == 0
    assert sorted(os.listdir(out)) == ["photo.json", "photo.png"]


@pytest.mark.parametrize("command", [hgmt.evaluate, hgmt.predict])
def test_xla_allocation_dump_is_shown_with_verbosity_only(workdir, tmp_path, monkeypatch,
                                                          caplog, command):
    """XLA's out-of-memory message in full (its allocation dump) reaches the console's
    handlers only with --verbosity=1, which also raises the error with its traceback instead
    of the one line; the handlers are given back as they were after each call."""
    import logging

    def out_of_memory(*args, **kwargs):
        raise jax.errors.JaxRuntimeError(_GPU_OOM)

    monkeypatch.setattr(evaluator, "evaluate", out_of_memory)
    monkeypatch.setattr(prediction.Predictor, "_forward", out_of_memory)
    photo = str(tmp_path / "photo.jpg")
    _stick_figure(photo)
    args = {hgmt.evaluate: [], hgmt.predict: [photo, f"--out_dir={tmp_path / 'out'}"]}[command]
    root = logging.getLogger()
    before = {h: list(h.filters) for h in root.handlers}

    def dumps() -> int:
        return sum("allocation 39" in r.getMessage() for r in caplog.records)

    with caplog.at_level(logging.INFO):
        with pytest.raises(SystemExit) as stop:
            command.main([f"--workdir={workdir}", *args])
        assert str(stop.value.code).startswith("error: OutOfDeviceMemory: out of device "
                                               "memory while ")
        assert dumps() == 0 and {h: list(h.filters) for h in root.handlers} == before
        with pytest.raises(device_memory.OutOfDeviceMemory):
            command.main([f"--workdir={workdir}", *args, "--verbosity=1"])
        assert dumps() == 1 and {h: list(h.filters) for h in root.handlers} == before


def test_tile_wraps_pictures_into_rows():
    pics = [np.full((4, w, 3), k, np.uint8) for k, w in enumerate((3, 4, 5, 4), start=1)]
    out = drawing.tile(pics, max_width=8)
    assert out.shape == (12, 7, 3)  # rows of widths 3+4, 5, 4
    np.testing.assert_array_equal(out[:4, :3], 1)
    np.testing.assert_array_equal(out[:4, 3:], 2)
    np.testing.assert_array_equal(out[4:8, :5], 3)
    np.testing.assert_array_equal(out[4:8, 5:], 255)  # padded white
    np.testing.assert_array_equal(out[8:, :4], 4)
    np.testing.assert_array_equal(out[8:, 4:], 255)


def _panel_result(r=16, size=64):
    """A prediction result as the Predictor returns it, made up: a crop, a skeleton 1.8 m
    tall, depth bins on a square, parts 1, 2 and 14 only."""
    rng = np.random.default_rng(0)
    joints3d = rng.uniform(-300, 300, (16, 3)) * [1, 3, 1]
    joints3d -= joints3d[body.PELVIS]
    depth = np.full((r, r), np.nan)
    depth[4:12, 4:12] = (rng.integers(-9, 10, (8, 8)) - 0.5) * 45.0
    segm = np.zeros((r, r), np.uint8)
    segm[2:6, 5:9], segm[6:12, 4:10], segm[12:15, 6:8] = 1, 2, 14
    crop = np.array([[0.25, 0, 3.0], [0, 0.25, 1.0]])  # image px -> label px
    return {"crop_image": rng.integers(0, 255, (size, size, 3), np.uint8), "crop": crop,
            "raw": {t: np.zeros((r, r, 1)) for t in TASKS},
            "joints2d": rng.uniform(0, 60, (16, 2)), "joints3d_rel_mm": joints3d,
            "depth_rel_mm": depth, "segm": segm}


def test_panel_figures_show_units_colour_bar_and_legend():
    """Each task's panel figure is readable: the 2D skeleton is drawn where the joints are in
    the crop; the 3D views share one millimetre scale and draw the joints; the depth colour
    bar is in mm at the bins' edges; the parts' legend names every part in its colour and
    marks those not found."""
    result = _panel_result()
    for t in TASKS:
        assert drawing.render(TASKS[t].plot(result)).shape[0] == drawing.PLOT_HEIGHT, t

    ax = TASKS["pose2d"].plot(result).axes[0]
    crop_px = (result["joints2d"] * 0.25 + [3.0, 1.0] + 0.5) * 4 - 0.5  # label px -> crop px
    a, b = body.SKELETON[0]
    np.testing.assert_allclose(ax.lines[0].get_xydata(), crop_px[[a, b]])

    front, side = TASKS["pose3d"].plot(result).axes
    joints = result["joints3d_rel_mm"]
    for ax, axis in ((front, 0), (side, 2)):
        assert "mm" in ax.get_xlabel()
        span_x, span_y = np.ptp(ax.get_xlim()), np.ptp(ax.get_ylim())
        assert span_x == pytest.approx(span_y) and span_x >= np.ptp(joints, axis=0).max()
        for lim, values in ((ax.get_xlim(), joints[:, axis]), (ax.get_ylim(), joints[:, 1])):
            assert (min(lim) < values).all() and (values < max(lim)).all(), (lim, values)
        assert ax.get_ylim()[0] > ax.get_ylim()[1]  # camera y points down
        a, b = body.SKELETON[0]
        np.testing.assert_allclose(ax.lines[0].get_xydata(), joints[[a, b]][:, [axis, 1]])
    assert front.get_ylabel() == "y (mm, down)" and front.get_ylim() == side.get_ylim()

    fig = TASKS["depth"].plot(result)
    image, bar = fig.axes[0].images[-1], fig.axes[1]
    edges = np.arange(-450.0, 406.0, 45.0)  # bins -9..9: ((b-1)*45, b*45] mm
    np.testing.assert_allclose(image.norm.boundaries, edges)
    assert "mm from the pelvis" in bar.get_ylabel()
    np.testing.assert_allclose(bar.get_yticks(), edges[::2])
    shown = np.ma.masked_invalid(image.get_array())
    np.testing.assert_array_equal(shown.mask, np.isnan(result["depth_rel_mm"]))
    np.testing.assert_array_equal(shown.filled(0), np.nan_to_num(result["depth_rel_mm"]))

    legend = TASKS["segm"].plot(result).legends[0]
    names = [text.get_text() for text in legend.get_texts()]
    assert names[:3] == ["head", "torso", "l upper arm (none)"] and names[-1] == "r foot"
    assert len(names) == 14 and sum("(none)" in n for n in names) == 11
    colours = [patch.get_facecolor()[:3] for patch in legend.get_patches()]
    np.testing.assert_allclose(colours, drawing.PART_COLORS[1:] / 255, atol=1e-6)


def test_part_colours_are_far_apart_right_warm_left_cool():
    """Every two part colours (background black included) are at least 20 apart in CIELAB
    (Delta E 1976, OpenCV's sRGB -> Lab); a part is named by the person's own side, right
    parts warm (R > B) and left parts cool (B > R), as the captions say."""
    rgb = drawing.PART_COLORS.astype(np.float32) / 255
    def to_lab(rgb):  # (N,3) sRGB on [0, 1] -> (N,3) L*a*b*
        return cv2.cvtColor(np.asarray(rgb, np.float32)[None], cv2.COLOR_RGB2LAB)[0]

    # (240, 50, 50) by hand: sRGB decoded, D65 XYZ (0.3764, 0.2103, 0.0509), then CIELAB.
    np.testing.assert_allclose(to_lab([[240 / 255, 50 / 255, 50 / 255], [0, 0, 0]]),
                               [[52.9, 69.7, 46.9], [0, 0, 0]], atol=0.3)
    lab = to_lab(rgb)
    apart = np.linalg.norm(lab[:, None] - lab[None], axis=-1)[np.triu_indices(len(lab), 1)]
    assert apart.min() >= 20, apart.min()
    for k, name in enumerate(body.PART_NAMES, start=1):
        r, _, b = drawing.PART_COLORS[k].astype(int)
        assert (r > b) if name.startswith("r_") else (b > r) if name.startswith("l_") else True
    assert sum(n[:2] in ("r_", "l_") for n in body.PART_NAMES) == 12


def test_pictures_keep_the_colour_meanings_their_captions_state():
    """Right limbs red and left blue (the quick skeleton and the panel's); the panel's depth
    red nearer and blue farther; the quick depth picture brighter nearer."""
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)  # joints on a circle: no edge
    joints = np.stack([128 + 100 * np.cos(angles), 128 + 100 * np.sin(angles)], -1)  # overlaps
    quick = drawing.draw_skeleton(np.zeros((256, 256, 3), np.uint8), joints)
    panel = drawing.figure_image(np.zeros((256, 256, 3), np.uint8), "2D", joints).axes[0]
    sides = {"r_": 0, "l_": 0}
    for k, (a, b) in enumerate(body.SKELETON):
        side = body.JOINT_NAMES[b][:2]
        if side not in sides:
            continue
        sides[side] += 1
        x, y = np.round((joints[a] + joints[b]) / 2).astype(int)
        for r, _, b_ in (quick[y, x].astype(int), panel.lines[k].get_color()):
            assert (r > b_) if side == "r_" else (b_ > r), (body.SKELETON[k], r, b_)
    assert sides == {"r_": 5, "l_": 5}

    edges = np.arange(-450.0, 406.0, 45.0)
    image = drawing.figure_depth(np.zeros((4, 4)), np.zeros((16, 16, 3), np.uint8),
                                 edges).axes[0].images[-1]
    nearest, farthest = (image.cmap(image.norm(v)) for v in (edges[0] + 1, edges[-1] - 1))
    assert nearest[0] > nearest[2] and farthest[2] > farthest[0], (nearest, farthest)

    from hgmt.tasks import depth

    pelvis = 3.0  # metres; pixels 0.3 m nearer, at the pelvis, 0.3 m farther, then background
    classes = depth.classes(np.array([[2.7, 3.0, 3.3, 0.0]]), np.array(pelvis))
    luma = drawing.colour_depth(classes)[0].astype(float) @ [0.299, 0.587, 0.114]
    assert luma[0] > luma[1] > luma[2] > luma[3] == 0, luma


def test_3d_views_hold_every_joint_of_an_off_centre_pose():
    """A crouching pose whose joints lie on one side of the pelvis (x 0..680 mm, y -650..450,
    z -420..60): every joint is inside both views' limits, which keep one mm scale."""
    joints = np.stack([np.linspace(0, 680, 16), np.linspace(-650, 450, 16),
                       np.linspace(-420, 60, 16)], axis=-1)
    joints = joints[np.random.default_rng(1).permutation(16)]
    joints[body.PELVIS] = 0.0
    front, side = drawing.figure_skeleton3d(joints).axes
    spans = set()
    for ax, axis in ((front, 0), (side, 2)):
        (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        assert ((x0 < joints[:, axis]) & (joints[:, axis] < x1)).all(), (ax.get_xlim(), axis)
        assert ((y0 < joints[:, 1]) & (joints[:, 1] < y1)).all(), ax.get_ylim()
        spans |= {round(x1 - x0, 6), round(y1 - y0, 6)}
    assert len(spans) == 1  # one scale for both axes of both views


def _crop_metres(info: surreal.ClipInfo, window: str = "hgmt") -> np.ndarray:
    """(T',) metres each kept frame's training window spans at the person, by hand: the side
    of the joints' box widened by BOX_MARGINS (the references' box: their inclusive sizes w + 1
    and h + 1 widened alike, plus 1, times 200 / 240), times the pelvis's camera depth, over
    600 px; the frames the builder keeps (no `frame_problem`)."""
    kept = [t for t in range(info.num_frames)
            if frame_selection.frame_problem(info.joints2d[t], info.joints3d[t]) is None]
    joints = info.joints2d[kept][:, body.SMPL_TO_JOINT].astype(np.float64)
    w, h = np.moveaxis(joints.max(1) - joints.min(1), -1, 0)
    m = cropping.BOX_MARGINS
    sides = np.maximum((1 + m["left"] + m["right"]) * w, (1 + m["top"] + m["bottom"]) * h)
    if window == "reference_box":  # end - start + 1 = (w + 1) (1 + margins), likewise h
        sides = 200 / 240 * np.maximum((1 + m["left"] + m["right"]) * (w + 1),
                                       (1 + m["top"] + m["bottom"]) * (h + 1))
    pelvis_z = camera.camera_depth(
        info.joints3d[kept][:, body.SMPL_TO_JOINT[body.PELVIS]], info.cam_loc)
    return sides * pelvis_z / 600.0


def test_the_trainer_stores_the_metres_a_training_window_spans(workdir, demo_dataset):
    """As training starts, the trainer measures the metres training windows span on the
    training split (all 12 records of the demo dataset's) and keeps them in the workdir: the
    mean of a hand computation from the clips' _info.mat files. Measured on 6 of the 12
    records, the mean lies within two of its standard errors of it."""
    from hgmt import workdirs as layout
    from hgmt.data import crop_metres
    from hgmt.inference import crop_scale

    surreal_root, data_dir = demo_dataset
    by_hand = np.concatenate([_crop_metres(surreal.load_info(s + "_info.mat"))
                              for s in surreal.find_clips(surreal_root, "train")])
    assert len(by_hand) == 12
    with open(layout.crop_metres_file(workdir)) as f:
        stored = json.load(f)
    assert (stored["records"], stored["split_records"], stored["split"]) == (12, 12, "train")
    assert (stored["dataset"], stored["data_dir"]) == ("surreal/all", data_dir)
    assert stored["crop_metres"] == pytest.approx(by_hand.mean(), rel=1e-6)
    assert stored["standard_error"] == pytest.approx(by_hand.std(ddof=1) / np.sqrt(12),
                                                     rel=1e-5)
    assert crop_scale.of_workdir(workdir) == stored["crop_metres"]
    sample = crop_metres.measure("surreal/all", data_dir, records=6)
    assert sample["records"] == 6
    assert abs(sample["crop_metres"] - by_hand.mean()) < 2 * sample["standard_error"]
    assert sample["crop_metres"] != stored["crop_metres"]


def test_a_run_on_the_references_box_measures_their_window(workdir, demo_dataset, tmp_path):
    """A run of config.window=reference_box measures the metres that window spans (the hand
    computation's, about 0.84 of hgmt's), also over a workdir's file of hgmt's window."""
    import shutil

    from hgmt import workdirs as layout
    from hgmt.data import crop_metres
    from hgmt.inference import crop_scale

    surreal_root, data_dir = demo_dataset
    infos = [surreal.load_info(s + "_info.mat") for s in surreal.find_clips(surreal_root, "train")]
    by_hand = np.concatenate([_crop_metres(info, "reference_box") for info in infos])
    hgmt_mean = np.concatenate([_crop_metres(info) for info in infos]).mean()
    assert 0.8 < by_hand.mean() / hgmt_mean < 0.9
    run = str(tmp_path / "run")
    os.makedirs(run)
    shutil.copy(layout.crop_metres_file(workdir), layout.crop_metres_file(run))
    crop_metres.record_in_workdir("surreal/all", data_dir, run, "reference_box")
    stored = crop_metres.read(run)
    assert stored["window"] == "reference_box" and stored["records"] == 12
    assert stored["crop_metres"] == pytest.approx(by_hand.mean(), rel=1e-6)
    assert crop_scale.of_workdir(run, "reference_box") == stored["crop_metres"]


def test_a_trainer_refused_the_workdir_leaves_its_crop_metres_alone(demo_dataset, tmp_path):
    """hgmt.main on a workdir another live trainer holds, with another data_dir (a resubmitted
    job): it stops with WorkdirLocked and the running trainer's crop_metres.json is left as
    it was (it was measured, and overwritten, before the lock was looked at)."""
    import hgmt.main
    from hgmt import workdirs as layout
    from hgmt.data import crop_metres
    from hgmt.training import workdir_lock

    workdir = str(tmp_path / "run")
    crop_metres.save(workdir, {"crop_metres": 2.6, "dataset": "surreal/all",
                               "data_dir": str(tmp_path / "the running trainer's")})
    before = open(layout.crop_metres_file(workdir)).read()
    holder = workdir_lock.WorkdirLock(workdir)
    holder.acquire()
    try:
        with pytest.raises(SystemExit) as e:
            hgmt.main.main(["--config=configs/default.py:tasks=pose2d,runlocal",
                            f"--workdir={workdir}", "--config.dataset=surreal/all",
                            f"--config.data_dir={demo_dataset[1]}", "--compilation_cache="])
    finally:
        holder.release()
    assert str(e.value.code).startswith("error: WorkdirLocked: "), e.value.code
    assert open(layout.crop_metres_file(workdir)).read() == before


def test_measuring_the_crop_metres_never_stops_training(demo_dataset, tmp_path, caplog):
    """The trainer's measurement leaves a split that is not built, and a workdir that cannot
    be made, to the trainer's checks (which tell every process of a job): nothing is raised or
    made; a damaged file is measured again."""
    import logging

    from hgmt import workdirs as layout
    from hgmt.data import crop_metres
    from hgmt.inference import crop_scale

    new = tmp_path / "new" / "run"
    crop_metres.record_in_workdir("surreal/all", str(tmp_path / "none"), str(new))
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with caplog.at_level(logging.WARNING):
        crop_metres.record_in_workdir("surreal/all", demo_dataset[1],
                                      str(tmp_path / "file" / "w"))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    with open(layout.crop_metres_file(workdir), "w") as f:
        f.write("{")
    crop_metres.record_in_workdir("surreal/all", demo_dataset[1], workdir)
    assert crop_scale.of_workdir(workdir) == pytest.approx(
        crop_metres.measure("surreal/all", demo_dataset[1])["crop_metres"])


def test_the_window_scale_experiment_measures_both_figures(demo_dataset, real_info_path,
                                                          capsys):
    """experiments/window_scale.py on the demo dataset's training clips and the real SURREAL
    annotation file: the metres a training window spans are the hand computation's, and the
    silhouette's ratio is training's window side over the longer side of the segments' box
    (OpenCV's boundingRect); the real file has no segments, so no ratio. Its real-clip mean is
    docs/evaluation.md's ("Metres a training window spans": the file is fixed)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
    import window_scale

    train = os.path.join(demo_dataset[0], "cmu", "train")
    assert window_scale.main([f"--clips={train}", f"--clips={real_info_path}"]) == 0
    out = json.loads(capsys.readouterr().out)
    stems = surreal.find_clips(demo_dataset[0], "train")
    by_hand = np.concatenate([_crop_metres(surreal.load_info(s + "_info.mat")) for s in stems])
    demo = out[train]
    assert demo["crop_metres"]["frames"] == len(by_hand) == 12
    assert demo["crop_metres"]["mean"] == pytest.approx(by_hand.mean(), abs=5e-5)
    assert demo["crop_metres"]["standard_deviation"] == pytest.approx(by_hand.std(ddof=1),
                                                                      abs=5e-5)
    ratios = []
    for stem in stems:
        info, segm = surreal.load_info(stem + "_info.mat"), surreal.load_segm(stem + "_segm.mat")
        for t in range(info.num_frames):
            _, _, w, h = cv2.boundingRect((segm[t] > 0).astype(np.uint8))
            ratios.append(cropping.person_box(
                info.joints2d[t][body.SMPL_TO_JOINT].astype(np.float64))[1] / max(w, h))
    ratio = demo["foreground_to_side"]
    assert (ratio["frames"], ratio["clips"]) == (12, 2)
    assert ratio["mean"] == pytest.approx(np.mean(ratios), abs=5e-5)
    assert ratio["median"] == pytest.approx(np.median(ratios), abs=5e-5)
    real = out[real_info_path]
    assert real["crop_metres"]["frames"] == 100 and real["foreground_to_side"] is None
    assert real["crop_metres"]["mean"] == pytest.approx(2.475, abs=5e-5)


def test_the_predictor_and_export_decode_with_the_workdirs_crop_metres(workdir, tmp_path,
                                                                       caplog):
    """A workdir without crop_metres.json (trained by an hgmt that did not measure it) decodes
    with CROP_METRES and says so in one warning naming the file, and an export's hgmt.json
    says the figure is assumed; with the file, the Predictor's pelvis depth, its JSON and an
    export's hgmt.json use the file's figure, hgmt.json saying it was measured, on how many
    records and with what standard error; a damaged file is a one-line error naming it."""
    import logging
    import shutil

    from hgmt import workdirs as layout
    from hgmt.data import crop_metres
    from hgmt.inference import crop_scale

    older = str(tmp_path / "older")
    shutil.copytree(workdir, older)
    os.remove(layout.crop_metres_file(older))  # as an hgmt that did not measure it left it
    with caplog.at_level(logging.WARNING):
        assert prediction.Predictor(older).crop_metres == crop_scale.CROP_METRES["hgmt"]
    warned = [r.getMessage() for r in caplog.records if "crop_metres.json" in r.getMessage()]
    assert len(warned) == 1 and layout.crop_metres_file(older) in warned[0]
    assert "3D decoding assumes" in warned[0]
    _, meta = exporting.inference_fn(older)
    assert meta["crop"]["window_metres"] == crop_scale.CROP_METRES["hgmt"] == 2.35
    assert meta["crop"]["window_metres_source"] == (
        "assumed: hgmt's default for window hgmt (crop_scale.CROP_METRES), as the workdir has "
        "no crop_metres.json (it was not trained by an hgmt.main that measures it); 3D "
        "decoding is off by the ratio of what the run's training windows span to it")

    crop_metres.save(older, {"crop_metres": 2.6, "records": 12, "standard_error": 0.0123,
                             "dataset": "surreal/all"})
    model = prediction.Predictor(older)
    assert model.crop_metres == 2.6
    r = model.image_size // 4
    raw = {t: np.zeros((r, r, TASKS[t].NUM_CHANNELS), np.float32) for t in model.tasks}
    window = person.Window(np.array([160.0, 120.0]), 150.0, "given")
    result = model._result(np.zeros((240, 320, 3), np.uint8), window, 1,
                           np.zeros((model.image_size,) * 2 + (3,), np.uint8),
                           cropping.crop_affine(window.centre, window.side, r), raw)
    saved = result_outputs.to_json(result, model.tasks)
    assert saved["crop_metres"] == 2.6
    assert saved["pelvis_depth_m"] == pytest.approx(600.0 * 2.6 / 150, abs=1e-4)
    _, meta = exporting.inference_fn(older)
    assert meta["crop"]["window_metres"] == 2.6
    assert meta["crop"]["window_metres_source"] == (
        "measured: the mean over 12 training records of dataset surreal/all, standard error "
        "0.0123 m (the workdir's crop_metres.json)")
    crop_metres.save(older, {"crop_metres": 2.6})  # each detail the file lacks is left out
    assert crop_scale.with_source(older) == (
        2.6, "measured: the mean over the training records (the workdir's crop_metres.json)")
    # A file without 'window' measured hgmt's: a run on the references' box assumes theirs.
    assert crop_scale.with_source(older, "reference_box") == (
        1.97, "assumed: hgmt's default for window reference_box (crop_scale.CROP_METRES), as "
        "the workdir's crop_metres.json measures window hgmt, not reference_box; 3D decoding "
        "is off by the ratio of what the run's training windows span to it")
    crop_metres.save(older, {"crop_metres": 2.1, "window": "reference_box"})
    assert crop_scale.with_source(older, "reference_box")[0] == 2.1
    assert crop_scale.with_source(older)[0] == 2.35

    with open(layout.crop_metres_file(older), "w") as f:
        f.write('{"crop_metres": -1}')
    with pytest.raises(layout.DamagedRunFile, match=r"crop_metres.json holds no positive"):
        prediction.Predictor(older)


def test_a_model_that_decodes_nothing_in_metres_is_not_warned_about_crop_metres(
        depth_workdir, tmp_path, caplog):
    """The window's metres scale pose3d's prediction only (its joints' x and y; depth's is
    relative to the pelvis: each task's READS_DISTANCE): a depth model's workdir without
    crop_metres.json predicts and exports without the warning, its hgmt.json still saying the
    figure is assumed."""
    import logging
    import shutil

    from hgmt import workdirs as layout
    from hgmt.inference import crop_scale
    from hgmt.tasks import reads_distance

    assert [t for t in TASKS if reads_distance(t)] == ["pose3d"]
    assert reads_distance("pose2d+pose3d") and not reads_distance("pose2d+segm+depth")
    depth = str(tmp_path / "depth")  # a copy: the fixture's workdir is shared
    shutil.copytree(depth_workdir, depth)
    os.remove(layout.crop_metres_file(depth))
    with caplog.at_level(logging.WARNING):
        assert prediction.Predictor(depth).crop_metres == crop_scale.CROP_METRES["hgmt"]
        _, meta = exporting.inference_fn(depth)
    assert not [r for r in caplog.records if "crop_metres.json" in r.getMessage()]
    assert meta["crop"]["window_metres_source"].startswith("assumed: hgmt's default")


def test_bad_inputs_get_clear_errors(workdir, predictor, tmp_path):
    with pytest.raises(ValueError, match=r"bbox .* width and height must be positive"):
        predictor(np.zeros((50, 60, 3), np.uint8), bbox=(0, 0, 0, 10))
    with pytest.raises(ValueError, match="expected an RGB uint8 image"):
        predictor(np.zeros((50, 60), np.uint8))
    # A bbox must overlap the image (60 x 50): one wholly beside it would be predicted on black.
    for bbox in ((60, 0, 10, 10), (0, 50, 10, 10), (-10, 0, 10, 10), (0, -10, 10, 10)):
        with pytest.raises(ValueError, match=re.escape(
                f"bbox {bbox} lies wholly outside the 60 x 50 image: give x, y, w, h in this "
                f"image's pixels")):
            predictor(np.zeros((50, 60, 3), np.uint8), bbox=bbox)
    assert predictor(np.zeros((50, 60, 3), np.uint8), bbox=(-10, -10, 10.5, 10.5))[
        "window"].found_by == "given"
    empty = tmp_path / "empty"  # a config but no checkpoint yet
    empty.mkdir()
    run_config.save_config(predictor.config, str(empty))
    with pytest.raises(FileNotFoundError, match="train first"):
        prediction.Predictor(str(empty))
    with pytest.raises(FileNotFoundError, match="--workdir must be a directory written by"):
        prediction.Predictor(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=r"no checkpoint for step 7 .*: 2$"):
        prediction.Predictor(workdir, step=7)
    with pytest.raises(SystemExit):
        hgmt.predict.main(["x.png", f"--workdir={workdir}", "--out_dir=o", "--bbox=1,2,3"])


def test_a_step_of_digits_restores_that_checkpoint_and_another_string_is_named(workdir):
    """Through the Python API a step may be a string of digits, as a command line gives it:
    "2" restores the checkpoint of step 2 (an int step); any other string but "best" is a
    ValueError naming it."""
    _, variables, step = trained_model.restore_for_inference(workdir, "2")
    assert step == 2 and type(step) is int
    _, same, _ = trained_model.restore_for_inference(workdir, 2)
    jax.tree.map(np.testing.assert_array_equal, variables, same)
    assert prediction.Predictor(workdir, step="2").step == 2
    for bad in ("last", "2.0", " 2", "-1", "\u00b2"):
        with pytest.raises(ValueError, match=re.escape(
                f"step={bad!r}: give a step number (an int, or a string of digits) or "
                f"'best'")):
            trained_model.restore_for_inference(workdir, bad)


def _rename_in_metadata(state_dir, prefix: str, names: tuple[str, ...]) -> None:
    """Renames the keys `names` of every array whose path starts with `prefix` (e.g.
    "('opt_state'") in the orbax metadata of a checkpoint's state folder, so that they name
    arrays its store does not hold: reading them fails, as for a checkpoint damaged there or
    written with other names."""
    path = state_dir / "_METADATA"
    meta = json.loads(path.read_text())
    renamed = {}
    for key, value in meta["tree_metadata"].items():
        if key.startswith(prefix):
            for name in names:
                key = key.replace(f"'{name}'", f"'{name}_lost'")
            for part in value["key_metadata"]:
                part["key"] += "_lost" if part["key"] in names else ""
        renamed[key] = value
    assert len(renamed) == len(meta["tree_metadata"]) and renamed != meta["tree_metadata"]
    path.write_text(json.dumps({**meta, "tree_metadata": renamed}))


# The failed whole reads leave tensorstore calling back into orbax's closed event loop (the
# commands drop those messages: checkpoint_write_faults.ignore_callbacks_into_closed_loops).
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_inference_reads_a_checkpoints_variables_alone(workdir, tmp_path):
    """A restore for evaluation or prediction reads the checkpoint's parameters and BatchNorm
    statistics, not the optimizer's moments (two thirds of an Adam checkpoint): they are
    the ones the trainer saved (orbax's whole read of the state), and a checkpoint whose
    moments cannot be read still restores and predicts, where reading the whole state
    fails. Given the workdir's config (its tasks in any order), the same; given another
    model's, the whole state is read and what differs is named: a model of fewer tasks,
    whose variables the checkpoint holds and more, is refused too; so is a checkpoint that
    lacks a variable (a kernel of another name), and a folder named `<name>_<N>` is no step."""
    import orbax.checkpoint as ocp

    saved = ocp.StandardCheckpointer().restore(pathlib.Path(workdir, "checkpoints", "2", "state"))
    _, variables, _ = trained_model.restore_for_inference(workdir)
    assert variables.keys() == {"params", "batch_stats"}
    jax.tree.map(np.testing.assert_array_equal, variables,
                 {k: saved[k] for k in ("params", "batch_stats")})
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    _rename_in_metadata(copy / "checkpoints" / "2" / "state", "('opt_state'", ("mu", "nu"))
    with pytest.raises(ValueError, match="opt_state"):
        ocp.StandardCheckpointer().restore(copy / "checkpoints" / "2" / "state")
    config, again, step = trained_model.restore_for_inference(str(copy))
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, again, variables)
    _, given, _ = trained_model.restore_for_inference(str(copy), config=config)
    jax.tree.map(np.testing.assert_array_equal, given, variables)
    config.tasks = "+".join(reversed(parse_tasks(config.tasks)))  # the same tasks
    _, given, _ = trained_model.restore_for_inference(str(copy), config=config)
    jax.tree.map(np.testing.assert_array_equal, given, variables)
    assert prediction.Predictor(str(copy)).step == 2
    (copy / "checkpoints" / "backup_9").mkdir()  # not a step: orbax's _<N> names are not ours
    assert trained_model.restore_for_inference(str(copy))[2] == 2
    config.tasks = "pose2d"  # another model: the whole state is read, which fails here
    with pytest.raises(trained_model.UnusableCheckpoint, match="cannot be read"):
        trained_model.restore_for_inference(str(copy), config=config)
    # The caller's overrides made another model: the message names them, not config.json.
    trained = json.loads((copy / "config.json").read_text())["tasks"]
    with pytest.raises(trained_model.UnusableCheckpoint) as e:
        trained_model.restore_for_inference(workdir, config=config)
    assert re.fullmatch(
        rf"checkpoint \S+ does not fit the model of this command's config, whose tasks=pose2d "
        rf"where config.json has {re.escape(trained)}: \d+ unexpected \(e\.g\. .*\)\. A "
        rf"trained workdir's model is its config.json's; drop those --config overrides "
        rf"\(should it still not fit, the checkpoint was written by another model "
        rf"configuration or an older hgmt\)",
        str(e.value)), str(e.value)
    config.tasks = trained
    config.model.features += 8
    with pytest.raises(trained_model.UnusableCheckpoint,
                       match=rf"whose model.features={config.model.features} where config.json "
                             rf"has {config.model.features - 8}: \d+ with other shapes"):
        trained_model.restore_for_inference(workdir, config=config)
    # A kernel of another name (an older hgmt's): not read alone, the whole read names it.
    renamed = tmp_path / "renamed"
    shutil.copytree(workdir, renamed)
    _rename_in_metadata(renamed / "checkpoints" / "2" / "state",
                        "('params', 'stage0_depth'", ("kernel",))
    with pytest.raises(trained_model.UnusableCheckpoint, match="cannot be read.*kernel_lost"):
        trained_model.restore_for_inference(str(renamed))


@pytest.fixture(scope="module")
def depth_workdir(demo_dataset, tmp_path_factory):
    """A workdir with a 1-step checkpoint of the tiny depth-only model."""
    return _trained(demo_dataset, tmp_path_factory, "depth_workdir", tasks="depth",
                    total_steps=1, checkpoint_every=1)


@pytest.fixture(scope="module")
def depth_predictor(depth_workdir):
    return prediction.Predictor(depth_workdir)


# TensorFlow 2.21's error on a function JAX 0.12.1 converted (a Python 3.12 install's newest
# releases), the lines that name the StableHLO versions.
TF_STABLEHLO_ERROR = (
    "Cannot deserialize computation: UNKNOWN: <unknown>:0: error: loc(\"shape_assertion\"): "
    "unregistered operation 'vhlo.custom_call_v2' found in dialect ('vhlo') that does not "
    "allow unknown operations\n<unknown>:0: note: loc(\"shape_assertion\"): in bytecode "
    "version 6 produced by: StableHLO_v1.22.0\n<unknown>:0: error: failed to deserialize "
    "portable artifact using StableHLO_v1.13.7\n\t [[{{node XlaCallModule}}]]")


def test_a_savedmodel_export_refuses_a_tensorflow_older_than_its_jax(workdir, tmp_path,
                                                                     monkeypatch):
    """Where TensorFlow cannot run what JAX converts (TensorFlow 2.21 reads no StableHLO that
    JAX 0.12 writes), `--format=savedmodel` stops in one line naming both versions and the
    fixes, before the checkpoint is read and with no folder made; before, the export ran,
    failed its own check, and ended in TensorFlow's traceback after 20 lines of its C++
    log. The probe runs on this host's pair (TensorFlow 2.21 and JAX 0.10 run; with JAX 0.12
    it names the versions), the refusal's line is made from that failing pair's error text,
    and the command refuses on the probe's answer."""
    import tensorflow as tf

    why = exporting.savedmodel_runs_here()
    assert why is None or why.startswith(
        f"--format=savedmodel: TensorFlow {tf.__version__} cannot run what JAX "
        f"{jax.__version__} converts (JAX writes StableHLO "), why
    line = exporting.stablehlo_too_new(TF_STABLEHLO_ERROR, "2.21.0", "0.12.1")
    assert line == ("--format=savedmodel: TensorFlow 2.21.0 cannot run what JAX 0.12.1 "
                    "converts (JAX writes StableHLO 1.22.0, TensorFlow reads up to 1.13.7); "
                    "install the versions hgmt was tested with (pip install -e . -c "
                    "constraints.txt) or a TensorFlow released after this JAX, or export "
                    "--format=stablehlo")
    assert exporting.stablehlo_too_new("Cannot deserialize", "2.21.0", "0.12.1") == (
        line.replace(" (JAX writes StableHLO 1.22.0, TensorFlow reads up to 1.13.7)", ""))
    monkeypatch.setattr(exporting, "savedmodel_runs_here", lambda: line)
    out = tmp_path / "x"
    with pytest.raises(SystemExit) as e:
        hgmt.export.main([f"--workdir={workdir}", "--format=savedmodel", f"--out_dir={out}"])
    assert str(e.value.code) == f"error: TensorFlowTooOld: {line}"
    assert os.listdir(tmp_path) == []


@functools.cache
def _savedmodel_runs_here() -> str | None:
    return exporting.savedmodel_runs_here()


def savedmodel_or_skip() -> None:
    """Skips the test where this host's TensorFlow cannot run what its JAX converts (the
    SavedModel export refuses that pair in one line: `test_a_savedmodel_export_refuses_...`)."""
    if why := _savedmodel_runs_here():
        pytest.skip(why)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """exported(workdir, format) -> the folder `hgmt.export` wrote it into, made once. Its
    result line gives the output shapes in the order of its tasks, in both formats (the
    StableHLO export's came sorted by name)."""
    import contextlib
    import io

    made = {}

    def get(workdir: str, fmt: str) -> str:
        if fmt == "savedmodel":
            savedmodel_or_skip()
        if (workdir, fmt) not in made:
            parent = tmp_path_factory.mktemp(fmt)
            path = str(parent / "export")
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                assert hgmt.export.main([f"--workdir={workdir}", f"--format={fmt}",
                                         f"--out_dir={path}"]) == 0
            line = json.loads(printed.getvalue().splitlines()[-1])
            assert list(line["output_shapes_for_batch_2"]) == line["tasks"]
            assert os.listdir(parent) == ["export"]  # the partial folder renamed, none left
            made[workdir, fmt] = path
        return made[workdir, fmt]

    return get


# The workdirs an export is checked on, each with its Predictor's fixture: all four tasks, and
# one task alone (a single output).
EXPORTED_MODELS = {"workdir": "predictor", "depth_workdir": "depth_predictor"}


def _assert_equals_the_predictor(run, predictor, batch_sizes, rtol, atol):
    """`run`, an export called on (B,R,R,3) float32 images, gives the outputs of the
    Predictor's own model call (`_apply`, what predictions run) on the same images as uint8
    crops: a mistake in what was exported (normalisation, BatchNorm mode, dtype) shows."""
    size = predictor.image_size
    for b in batch_sizes:
        crops = np.random.default_rng(b).integers(0, 256, (b, size, size, 3), dtype=np.uint8)
        got = run(crops.astype(np.float32))
        want = jax.device_get(predictor._apply(predictor.variables, crops))
        assert sorted(got) == sorted(predictor.tasks)
        for t in want:
            assert got[t].shape == want[t].shape, t
            np.testing.assert_allclose(np.asarray(got[t]), want[t], rtol=rtol, atol=atol,
                                       err_msg=t)


@pytest.mark.slow  # the StableHLO export: its channel flip (below) keeps it in the default suite
@pytest.mark.parametrize("model", ["workdir", "depth_workdir"])
def test_stablehlo_export_reloads_with_any_batch_and_equals_the_predictor(model, request,
                                                                          exported):
    workdir = request.getfixturevalue(model)
    predictor = request.getfixturevalue(EXPORTED_MODELS[model])
    path = exported(workdir, "stablehlo")
    with open(os.path.join(path, "hgmt.json")) as f:
        meta = json.load(f)
    assert meta["tasks"] == list(predictor.tasks) and meta["step"] == predictor.step
    # Lowered for every platform, so an export made on a CPU runs on a GPU or TPU.
    with open(os.path.join(path, exporting.STABLEHLO_FILE), "rb") as fh:
        platforms = jax.export.deserialize(bytearray(fh.read())).platforms
    assert platforms == tuple(meta["platforms"]) == ("cpu", "cuda", "rocm", "tpu")
    _assert_equals_the_predictor(exporting.load_stablehlo(path), predictor, (1, 3),
                                 rtol=1e-4, atol=1e-5)
    saved = exported(workdir, "savedmodel")
    with pytest.raises(FileNotFoundError) as raised:
        exporting.load_stablehlo(saved)
    assert str(raised.value) == (f"{saved}: holds no model.jaxexport; give the folder of a "
                                 f"--format=stablehlo export (a SavedModel's folder loads with "
                                 f"tf.saved_model.load)")


def test_load_stablehlo_takes_a_path_under_home(workdir, exported, monkeypatch):
    """`~` is the home folder, as the export's --out_dir takes it."""
    path = exported(workdir, "stablehlo")
    monkeypatch.setenv("HOME", os.path.dirname(path))
    images = np.zeros((1, 64, 64, 3), np.float32)
    np.testing.assert_array_equal(
        exporting.load_stablehlo("~/" + os.path.basename(path))(images)["pose2d"],
        exporting.load_stablehlo(path)(images)["pose2d"])


def _serving(path: str):
    """The SavedModel in `path` as a function of numpy images -> {task: numpy}."""
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    return lambda x: {t: v.numpy() for t, v in serve(images=tf.constant(x)).items()}


@pytest.mark.parametrize("model", EXPORTED_MODELS)
def test_savedmodel_export_equals_the_predictor(model, request, exported):
    workdir = request.getfixturevalue(model)
    predictor = request.getfixturevalue(EXPORTED_MODELS[model])
    path = exported(workdir, "savedmodel")
    _assert_equals_the_predictor(_serving(path), predictor, (2,), rtol=1e-3, atol=1e-4)
    with open(os.path.join(path, "hgmt.json")) as fh:
        assert json.load(fh)["format"] == "savedmodel"
    # A wrong shape is one error naming the shapes (before, a screen of StableHLO per call).
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    for shape in ((1, 32, 32, 3), (1, 64, 64, 4)):
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            serve(images=tf.zeros(shape))
        said = str(raised.value)
        assert "is not compatible with expected shape" in said and "stablehlo" not in said
        assert len(said.splitlines()) < 10, said


def test_the_savedmodel_converts_to_tf_lite_with_the_predictors_outputs(workdir, predictor,
                                                                        exported):
    """TF Lite's converter takes the SavedModel (a symbolic batch lowers `o[-1]` to a gather
    it cannot convert; `predict_last_stage` slices instead) and its interpreter gives the
    Predictor's outputs."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(exported(workdir, "savedmodel"))
    interpreter = tf.lite.Interpreter(model_content=converter.convert())
    runner = interpreter.get_signature_runner("serving_default")
    _assert_equals_the_predictor(lambda x: runner(images=x), predictor, (2,), rtol=1e-4,
                                 atol=1e-5)


@pytest.mark.slow
def test_an_export_of_vmapped_streams_converts_to_tf_lite(workdir, predictor, tmp_path):
    """A model run with vmapped streams (`--config.model.stream_mode=vmapped`, the same
    weights) exports the same function with separate streams: the vmapped streams' pick of a
    task's features became a dynamic gather over the symbolic batch, which TF Lite's
    converter refused ('vhlo.dynamic_gather_v1' op is not part of the vhlo support yet)."""
    import tensorflow as tf

    savedmodel_or_skip()
    path = str(tmp_path / "export")
    assert hgmt.export.main([f"--workdir={workdir}", "--format=savedmodel", f"--out_dir={path}",
                             "--config.model.stream_mode=vmapped"]) == 0
    interpreter = tf.lite.Interpreter(
        model_content=tf.lite.TFLiteConverter.from_saved_model(path).convert())
    runner = interpreter.get_signature_runner("serving_default")
    _assert_equals_the_predictor(lambda x: runner(images=x), predictor, (2,), rtol=1e-4,
                                 atol=1e-5)


def test_an_exports_metadata_says_how_to_decode_each_output(workdir, exported):
    with open(os.path.join(exported(workdir, "stablehlo"), "hgmt.json")) as f:
        meta = json.load(f)
    assert meta["image_size"] == 64 and meta["label_size"] == 16
    assert meta["dtype"] == "float32"  # the model's (a bfloat16 one does not convert to TF Lite)
    assert meta["label_stride"] == common.LABEL_STRIDE == 4
    assert meta["label_px_to_input_px"].startswith("input = (label + 0.5) * 4 - 0.5")
    # That is where training's crops of a window at R and at r = R/4 put a label px.
    centre, side = np.array([123.4, 56.7]), 89.1
    to_input = cropping.crop_affine(centre, side, meta["image_size"])
    to_label = cropping.crop_affine(centre, side, meta["label_size"])
    label = np.array([[0.0, 0.0], [15.0, 15.0], [3.25, 11.5]])
    image = (label - to_label[:, 2]) @ np.linalg.inv(to_label[:, :2]).T
    np.testing.assert_allclose(image @ to_input[:, :2].T + to_input[:, 2],
                               (label + 0.5) * meta["label_stride"] - 0.5, atol=1e-9)
    # crop's image_px_to_input_px and image_px_to_label_px are those crops.
    for size, m in ((meta["image_size"], to_input), (meta["label_size"], to_label)):
        np.testing.assert_allclose(image @ m[:, :2].T + m[:, 2],
                                   size / side * (image - centre) + (size - 1) / 2, atol=1e-9)
    # crop's window is training's: the joints' box widened by box_margins, squared.
    margins, least = meta["crop"]["box_margins"], meta["crop"]["min_side_px"]
    stretch = np.array([[[1.0, 0.5]], [[0.5, 1.0]], [[0.005, 0.01]]])  # the last: min_side_px
    for joints in np.random.default_rng(0).uniform(0, 300, (3, 16, 2)) * stretch:
        (x0, y0), (x1, y1) = joints.min(0), joints.max(0)
        w, h = x1 - x0, y1 - y0
        x0, x1 = x0 - margins["left"] * w, x1 + margins["right"] * w
        y0, y1 = y0 - margins["top"] * h, y1 + margins["bottom"] * h
        centre, side = cropping.person_box(joints)
        np.testing.assert_allclose(centre, [(x0 + x1) / 2, (y0 + y1) / 2], atol=1e-9)
        assert side == pytest.approx(max(x1 - x0, y1 - y0, least))
    assert meta["crop"]["training_window"] == "hgmt"
    out = meta["outputs"]
    assert list(out) == ["pose2d", "pose3d", "depth", "segm"]
    bins = list(range(-9, 10))
    assert out["pose2d"]["shape"] == "float32 (B, 16, 16, 16)"
    assert out["pose2d"]["channels"] == 16
    assert out["pose2d"]["joint_names"] == list(body.JOINT_NAMES)
    assert out["pose2d"]["joint_names"][6] == "pelvis"
    assert out["pose3d"]["shape"] == "float32 (B, 16, 16, 304)"
    assert out["pose3d"]["channels"] == 304 and out["pose3d"]["bins"] == bins
    assert out["pose3d"]["channel"].startswith("joint * 19 + k")
    assert out["pose3d"]["bin_mm"] == 45.0
    assert out["pose3d"]["joint_names"] == list(body.JOINT_NAMES)
    assert out["depth"]["shape"] == "float32 (B, 16, 16, 20)"
    assert out["depth"]["channels"] == 20 and out["depth"]["bins"] == bins
    assert out["depth"]["channel"].startswith("class c: 0 background; c = 1..19 is depth bin "
                                              "b = c - 10")
    assert out["depth"]["bin_mm"] == 45.0
    assert out["segm"]["shape"] == "float32 (B, 16, 16, 15)"
    assert out["segm"]["channels"] == 15
    assert out["segm"]["channel"] == "class c is part_names[c] (0 background)"
    assert out["segm"]["part_names"] == ["background", *body.PART_NAMES]
    for task, layout in out.items():
        assert {"channel", "values"} <= set(layout), task
    # The names' l_ and r_ are the person's own sides, which SURREAL's (SMPL's) are not.
    for task in ("pose2d", "pose3d", "segm"):
        assert out[task]["sides"] == body.SIDES, task
    assert out["pose2d"]["sides"].startswith("l_ and r_ are the person's own left and right")
    assert "sides" not in out["depth"]  # it names no joint or part


def test_an_export_records_which_checkpoint_it_restored(workdir, exported, tmp_path, capsys):
    """hgmt.json and the command's result line say which of the workdir's folders the step
    was restored from: its best validation checkpoint (--step=best) or training's."""
    import shutil

    with open(os.path.join(exported(workdir, "stablehlo"), "hgmt.json")) as f:
        meta = json.load(f)
    assert (meta["step"], meta["checkpoint"]) == (2, workdirs.CHECKPOINT_DIR) == (
        2, "checkpoints")
    with_best = tmp_path / "with_best"  # the workdir, its step 2 kept as the best too
    shutil.copytree(workdir, with_best)
    shutil.copytree(os.path.join(workdirs.checkpoint_dir(workdir), "2"),
                    os.path.join(workdirs.best_dir(str(with_best)), "2"))
    out = tmp_path / "export"
    capsys.readouterr()
    assert hgmt.export.main([f"--workdir={with_best}", "--format=stablehlo", "--step=best",
                             f"--out_dir={out}"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    with open(out / "hgmt.json") as f:
        meta = json.load(f)
    assert (line["step"], line["checkpoint"]) == (meta["step"], meta["checkpoint"]) == (
        2, workdirs.BEST_DIR) == (2, "best")


def _peak(m: np.ndarray) -> tuple[np.ndarray, float]:
    """The sub-pixel peak of an (h, w) map as hgmt.json's pose2d "decoding" words it (its
    SUBPIXEL_PEAK text, followed here step by step in float32, as the outputs are), written
    without hgmt's decoding -> ((x, y) label px, score)."""
    h, w = m.shape
    y, x = divmod(int(np.argmax(m)), w)  # the first maximum in row-major order

    def offset(values):
        lo, mid, hi = (np.log(np.maximum(np.float32(v), np.float32(1e-8))) for v in values)
        d = lo - 2 * mid + hi
        return float(np.clip(np.float32(0.5) * (lo - hi) / d, -0.5, 0.5)) if d < -1e-6 else 0.0

    ox = offset(m[y, x - 1:x + 2]) if 0 < x < w - 1 else 0.0
    oy = offset(m[y - 1:y + 2, x]) if 0 < y < h - 1 else 0.0
    return np.array([x + ox, y + oy]), float(m[y, x])


def _decoded_by_the_metadata(meta: dict, raw: dict, centre: np.ndarray, side: float,
                             image_hw: tuple[int, int], focal_px: float | None = None) -> dict:
    """One image's raw outputs {task: (r, r, C)} on the window of `side` image px around
    `centre`, decoded from hgmt.json's words and numbers alone: pose2d's joints (image px)
    and scores, pose3d's joints3d_rel_mm (the image's focal length `focal_px`, if known),
    depth_rel_mm."""
    r, out = meta["label_size"], {}

    def to_image(label):  # crop.image_px_to_label_px inverted
        return centre + side / r * (np.asarray(label) - (r - 1) / 2)

    if "pose2d" in raw:
        peaks = [_peak(raw["pose2d"][..., j])
                 for j in range(meta["outputs"]["pose2d"]["channels"])]
        out["joints2d"] = to_image(np.stack([p for p, _ in peaks]))
        out["joint_scores"] = np.array([score for _, score in peaks])
    if "pose3d" in raw:
        layout, camera = meta["outputs"]["pose3d"], meta["camera"]
        bins = layout["bins"]
        volumes = raw["pose3d"].reshape(r, r, -1, len(bins))  # channel joint * 19 + k
        f, (cx, cy) = camera["focal_px"], camera["principal_point_px"]
        h, w = image_hw
        s = f / focal_px if focal_px else camera["image_width_px"] / max(h, w)
        z_pelvis = f * meta["crop"]["window_metres"] / (s * side)
        pelvis = layout["joint_names"].index("pelvis")
        points = []
        for j in range(volumes.shape[2]):
            (x, y), _ = _peak(volumes[:, :, j].max(-1))
            xi, yi = (int(np.clip(np.round(v), 0, r - 1)) for v in (x, y))  # half to even
            b = 0 if j == pelvis else bins[int(np.argmax(volumes[yi, xi, j]))]
            z = z_pelvis + b * layout["bin_mm"] / 1000
            ix, iy = to_image([x, y])
            u0, v0 = camera["frame_centre_px"]
            u, v = s * (ix - (w - 1) / 2) + u0, s * (iy - (h - 1) / 2) + v0
            points.append([(u - cx) * z / f, (v - cy) * z / f, z])
        points = np.array(points)
        out["joints3d_rel_mm"] = 1000 * (points - points[pelvis])
    if "depth" in raw:
        layout = meta["outputs"]["depth"]
        c = raw["depth"].argmax(-1)  # the first maximum on ties
        b = c - int(re.search(r"b = c - (\d+)", layout["channel"])[1])
        out["depth_rel_mm"] = np.where(c > 0, (b - 0.5) * layout["bin_mm"], np.nan)
    return out


def _crop_by_the_metadata(meta: dict, image: np.ndarray, centre: np.ndarray,
                          side: float) -> np.ndarray:
    """The model input of the window of `side` image px around `centre`, cut as hgmt.json's
    `crop` says (averaged down first where the window is large)."""
    crop, size = meta["crop"], meta["image_size"]
    if side > max(crop["max_window_px"], size):
        h, w = image.shape[:2]
        small = (max(1, round(w * size / side)), max(1, round(h * size / side)))
        scale = np.array(small) / (w, h)
        image = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
        centre, side = (centre + 0.5) * scale - 0.5, side * scale[0]
    a = size / side
    m = np.array([[a, 0.0, (size - 1) / 2 - a * centre[0]],
                  [0.0, a, (size - 1) / 2 - a * centre[1]]])
    return cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR)


def test_decoding_an_export_by_its_metadata_gives_the_predictors_results(
        workdir, predictor, test_example, exported):
    """The Predictor's crops of an image and its raw outputs, made and decoded by a consumer
    that follows hgmt.json word for word (`_crop_by_the_metadata`,
    `_decoded_by_the_metadata`), give the Predictor's own crops and results: the sub-pixel
    refinement, the crop and the camera stated there are hgmt's, to 1e-4 label px and 1e-3 mm.
    The image is a demo frame on a larger canvas, off its centre; the outputs the model's, and
    made-up ones whose maxima lie on the border, beside non-positive values, or are themselves
    non-positive (the log's floor), decoded at SURREAL's field of view and at a given focal
    length. A window larger than max_window_px is averaged down as `crop` says."""
    import copy

    with open(os.path.join(exported(workdir, "stablehlo"), "hgmt.json")) as f:
        meta = json.load(f)
    with open(os.path.join(os.path.dirname(__file__), "..", "docs", "evaluation.md")) as f:
        docs = " ".join(re.sub(r"^> ", "", f.read(), flags=re.M).split())
    quoted = " ".join(TASKS["pose2d"].SUBPIXEL_PEAK.split()) in docs
    assert quoted, "docs/evaluation.md does not quote pose2d.SUBPIXEL_PEAK word for word"
    r = meta["label_size"]
    image = np.zeros((480, 640, 3), np.uint8)
    image[150:390, 20:340] = test_example["image"]  # SURREAL's 320 x 240, off the centre
    x, y, w, h = _bbox_of_training_crop(test_example)
    result = predictor(image, bbox=(x + 20, y + 150, w, h))
    window = result["window"]
    np.testing.assert_array_equal(
        _crop_by_the_metadata(meta, image, window.centre, window.side), result["crop_image"])
    made_up = {t: np.random.default_rng(1).normal(size=v.shape).astype(np.float32)
               for t, v in result["raw"].items()}
    pose = made_up["pose2d"]
    pose[..., 0] = -np.abs(pose[..., 0])  # non-positive everywhere
    pose[4, 0, 1], pose[0, 7, 2] = 5.0, 5.0  # on the left and top borders
    pose[r - 1, r - 1, 3] = 5.0  # in the corner
    pose[6, 6, 4], pose[6, 5, 4] = 5.0, -1.0  # beside a negative value
    volumes = made_up["pose3d"].reshape(r, r, 16, 19)  # a view: joint, then bin
    volumes[:, :, 0] = -np.abs(volumes[:, :, 0])
    volumes[0, 9, 1, 3] = volumes[9, r - 1, 2, 15] = 5.0  # on the top and right borders
    focused = copy.copy(predictor)
    focused.focal_px = 900.0
    cases = [(result, None)] + [
        (model._result(image, window, 1, result["crop_image"], result["crop"], made_up),
         model.focal_px) for model in (predictor, focused)]
    for got, focal_px in cases:
        mine = _decoded_by_the_metadata(meta, got["raw"], window.centre, window.side,
                                        image.shape[:2], focal_px)
        # 1e-4 label px, in image px (a label px spans side / r of them).
        np.testing.assert_allclose(mine["joints2d"], got["joints2d"], rtol=0,
                                   atol=1e-4 * window.side / r)
        np.testing.assert_allclose(mine["joint_scores"], got["joint_scores"], atol=1e-6)
        np.testing.assert_allclose(mine["joints3d_rel_mm"], got["joints3d_rel_mm"], atol=1e-3,
                                   rtol=0)
        np.testing.assert_allclose(mine["depth_rel_mm"], got["depth_rel_mm"], atol=1e-3,
                                   rtol=0)  # NaN where the other is: the background

    # A window of 800 px in a 1000 x 900 image: averaged down before it is sampled.
    large = cv2.resize(image, (1000, 900), interpolation=cv2.INTER_LINEAR)
    big = predictor(large, bbox=(100, 50, 800, 800))
    assert big["window"].side > meta["crop"]["max_window_px"]
    np.testing.assert_array_equal(
        _crop_by_the_metadata(meta, large, big["window"].centre, big["window"].side),
        big["crop_image"])


def test_an_exports_channel_flip_reproduces_the_flip_test(workdir, predictor, exported):
    """The export is one pass (hgmt.json's flip_test: false): its outputs are not the flip
    test's. A consumer that runs it on the input and on the input mirrored, mirrors the second
    outputs back, takes their channels by each output's channel_flip and averages the raw
    outputs, as docs/evaluation.md says, gets `hgmt.evaluate --flip`'s outputs
    (`predict_last_stage` with the tasks' CHANNEL_FLIP)."""
    from hgmt.models import predict_last_stage
    from hgmt.tasks import channel_flips

    path = exported(workdir, "stablehlo")
    with open(os.path.join(path, "hgmt.json")) as f:
        meta = json.load(f)
    assert meta["flip_test"] is False
    run = exporting.load_stablehlo(path)
    size = meta["image_size"]
    images = np.random.default_rng(5).integers(0, 256, (2, size, size, 3)).astype(np.float32)
    once, mirrored = run(images), run(images[:, :, ::-1])
    mine = {t: 0.5 * (np.asarray(once[t]) + np.asarray(mirrored[t])[:, :, ::-1][
        ..., meta["outputs"][t]["channel_flip"]]) for t in meta["tasks"]}
    model = create_model(predictor.config.model, heads(predictor.tasks))
    flip_test = jax.jit(lambda v, x: predict_last_stage(
        model, v, x, flip=channel_flips(predictor.tasks)))(predictor.variables, images)
    for t in meta["tasks"]:
        np.testing.assert_allclose(mine[t], flip_test[t], rtol=1e-4, atol=1e-5, err_msg=t)
        assert not np.allclose(once[t], flip_test[t], rtol=1e-4, atol=1e-5), t


def test_the_predict_json_and_the_export_name_every_segm_class_alike(workdir, predictor,
                                                                     exported):
    """Made-up segm logits whose argmax at label pixel (x=c, y=0) is class c: the name
    `hgmt.predict`'s JSON gives that pixel (`part_names[segm_classes]`) is the one an
    export's hgmt.json gives the argmax of its channels (`part_names[c]`), for every class."""
    with open(os.path.join(exported(workdir, "stablehlo"), "hgmt.json")) as f:
        names = json.load(f)["outputs"]["segm"]["part_names"]
    r, n = predictor.image_size // 4, TASKS["segm"].NUM_CHANNELS
    raw = {t: np.zeros((r, r, TASKS[t].NUM_CHANNELS), np.float32) for t in predictor.tasks}
    raw["segm"][0, np.arange(n), np.arange(n)] = 1.0
    window = person.Window(np.array([32.0, 32.0]), 64.0, "given")
    m_label = cropping.crop_affine(window.centre, window.side, r)
    crop = np.zeros((predictor.image_size,) * 2 + (3,), np.uint8)
    saved = result_outputs.to_json(predictor._result(crop, window, 1, crop, m_label, raw),
                               predictor.tasks)
    classes = np.asarray(saved["segm_classes"])[0, :n]
    assert classes.tolist() == list(range(n))
    from_predict = [saved["part_names"][c] for c in classes]
    from_export = [names[int(c)] for c in raw["segm"][0, :n].argmax(-1)]
    assert from_predict == from_export
    assert from_predict[:3] == ["background", "head", "torso"] and from_predict[-1] == "r_foot"


def test_export_refuses_an_out_dir_it_cannot_write_before_any_work(workdir, tmp_path,
                                                                   monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was restored before --out_dir was checked")

    monkeypatch.setattr(exporting, "inference_fn", no_work)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for fmt in exporting.FORMATS:
        for out_dir in (a_file, a_file / "under"):
            with pytest.raises(SystemExit, match=r"^error: NotADirectoryError: --out_dir="
                                                 r".*a_file is a file; give a folder"):
                hgmt.export.main([f"--workdir={workdir}", f"--format={fmt}",
                                  f"--out_dir={out_dir}"])
    # TensorFlow has no s3:// file system (since TF 2.6): it writes a SavedModel, and etils
    # hands a stablehlo artefact's URL to it too where it is installed.
    for fmt in exporting.FORMATS:
        with pytest.raises(SystemExit) as e:
            hgmt.export.main([f"--workdir={workdir}", f"--format={fmt}",
                              "--out_dir=s3://bucket/m"])
        assert re.fullmatch(r"error: ValueError: --out_dir=s3://bucket/m: TensorFlow has no "
                            r"file system for s3:// \(it has [^)]*\bgs\b[^)]*\), and [^\n]*; "
                            r"export to a local folder and copy it there",
                            str(e.value.code)), e.value.code
    with pytest.raises(ValueError, match="choose one of"):
        exporting.export(workdir, "onnx", str(tmp_path / "x"))
    # A folder holding anything, an earlier export's files or another's, is left as it was:
    # a failed export into it would leave its hgmt.json beside a partial artefact, and one of
    # the other format would mix the two.
    used = tmp_path / "used"
    (used / "variables").mkdir(parents=True)
    (used / "hgmt.json").write_text('{"step": 1}')
    (used / "model.jaxexport").write_bytes(b"old")
    before = sorted((p.relative_to(used), p.read_bytes() if p.is_file() else None)
                    for p in used.rglob("*"))
    for fmt in exporting.FORMATS:
        with pytest.raises(SystemExit) as e:
            hgmt.export.main([f"--workdir={workdir}", f"--format={fmt}", f"--out_dir={used}"])
        assert str(e.value.code) == (
            f"error: FileExistsError: --out_dir={used}: exists and is not empty; choose a new "
            f"folder, or remove it (an export is written whole into a new or empty folder)")
    assert sorted((p.relative_to(used), p.read_bytes() if p.is_file() else None)
                  for p in used.rglob("*")) == before
    assert sorted(os.listdir(tmp_path)) == ["a_file", "used"]


def test_export_refuses_an_out_dir_it_could_not_rename_onto_before_any_work(
        workdir, tmp_path, monkeypatch):
    """A symbolic link (to an empty folder, or dangling), a mount point and a folder whose
    parent cannot be written pass the "new or empty" check, but the finished export could not
    be renamed onto them: each is one line naming --out_dir and what to give instead, before
    the checkpoint is read, and the folder is left as it was."""
    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was restored before --out_dir was checked")

    monkeypatch.setattr(exporting, "inference_fn", no_work)

    def refused(out_dir) -> str:
        with pytest.raises(SystemExit) as e:
            hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo",
                              f"--out_dir={out_dir}"])
        return str(e.value.code)

    (tmp_path / "empty").mkdir()
    for name, to in (("link", tmp_path / "empty"), ("dangling", tmp_path / "nowhere")):
        os.symlink(to, tmp_path / name)
        assert refused(tmp_path / name) == (
            f"error: UnusableOutDir: --out_dir={tmp_path / name}: a symbolic link (to {to}), "
            f"which an export, renamed into place whole, cannot replace; pass the folder it "
            f"points to, or a new path")
    mount = tmp_path / "mnt"
    mount.mkdir()
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda p: p == str(mount) or real_ismount(p))
    assert refused(mount) == (
        f"error: UnusableOutDir: --out_dir={mount}: a mount point, which an export, renamed "
        f"into place whole, cannot replace; export into a new folder inside it (e.g. "
        f"--out_dir={mount / 'export'})")
    locked = tmp_path / "locked"  # its own permissions do not bind root: os.access is faked
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: p != str(locked) and real_access(
        p, mode, **kw))
    for out_dir in (locked / "new", locked / "new" / "deeper"):
        assert refused(out_dir) == (
            f"error: UnusableOutDir: --out_dir={out_dir}: {locked} cannot be written here, and "
            f"the export is staged in it and renamed into place; give a folder in a place you "
            f"can write")
    assert sorted(os.listdir(tmp_path)) == ["dangling", "empty", "link", "locked", "mnt"]
    assert os.listdir(tmp_path / "empty") == os.listdir(mount) == os.listdir(locked) == []


def test_an_export_the_file_system_refuses_to_place_is_one_line_leaving_nothing(
        workdir, tmp_path, monkeypatch):
    """The file system refuses the final rename (EBUSY, as onto a mount point) or the staging
    folder (EACCES) after the checks passed: one line naming --out_dir and what to do, no
    traceback, and neither OUTDIR, nor a partial folder, nor the parent folder made for them
    is left."""
    real_rename = os.rename

    def busy(src, dst, *args, **kwargs):
        if ".partial-" in os.fspath(src):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        return real_rename(src, dst, *args, **kwargs)

    out = tmp_path / "exports" / "new"

    def refused(why: str) -> None:
        """The export to `out` stops in one line saying `why`, and leaves nothing there."""
        with pytest.raises(SystemExit) as e:
            hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo", f"--out_dir={out}"])
        assert str(e.value.code) == (
            f"error: UnusableOutDir: --out_dir={out}: {why}, and nothing partial was left "
            f"behind; give a new folder in a place you can write, and rerun")
        assert not (tmp_path / "exports").exists()

    monkeypatch.setattr(os, "rename", busy)
    refused(f"the finished export could not be renamed onto {out} (Device or resource busy)")

    def denied(prefix):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), prefix)

    monkeypatch.setattr(exporting, "_new_folder", denied)
    refused(f"no folder could be made beside {out} to stage the export in (Permission denied)")


def test_an_out_dir_under_home_is_checked_written_and_reported_there(workdir, tmp_path,
                                                                     monkeypatch, capsys):
    """--out_dir=~/x (a shell leaves `~` unexpanded after `=`): the check, the files and the
    result line all take it as $HOME/x, and no folder named `~` is made in the working
    directory."""
    home, cwd = tmp_path / "home", tmp_path / "cwd"
    (home / "used").mkdir(parents=True)
    (home / "used" / "hgmt.json").write_text('{"step": 1}')
    cwd.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(cwd)
    flags = [f"--workdir={workdir}", "--format=stablehlo"]
    with pytest.raises(SystemExit) as e:
        hgmt.export.main([*flags, "--out_dir=~/used"])
    assert str(e.value.code) == f"error: FileExistsError: {exporting._not_empty('~/used')}"
    capsys.readouterr()
    assert hgmt.export.main([*flags, "--out_dir=~/new"]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["out_dir"] == str(home / "new")
    assert sorted(os.listdir(home / "new")) == ["hgmt.json", "model.jaxexport"]
    assert sorted(os.listdir(home)) == ["new", "used"] and os.listdir(cwd) == []


def test_an_export_into_an_empty_folder_keeps_it_the_current_folder_included(
        workdir, tmp_path, monkeypatch, capsys):
    """--out_dir=. in an empty current folder of mode 700: the files are moved into it (the
    folder, its mode and the shell's current folder stay), hgmt.json last; where the rename
    replaced the folder, the command's result line crashed on the current folder it had
    removed and the export was left readable by all. A move into the folder that fails puts
    back what it had moved: the folder is left empty."""
    here = tmp_path / "here"
    here.mkdir(mode=0o700)
    monkeypatch.chdir(here)
    assert hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo", "--out_dir=."]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["out_dir"] == str(here) == os.getcwd()
    assert sorted(os.listdir(here)) == ["hgmt.json", "model.jaxexport"]
    assert os.stat(here).st_mode & 0o777 == 0o700 and os.listdir(tmp_path) == ["here"]

    staged, into = tmp_path / "staged", tmp_path / "into"
    staged.mkdir()
    into.mkdir()
    for name in ("a", exporting.META_FILE, "z"):
        (staged / name).write_text(name)
    real_rename, moved = os.rename, []

    def refuse_the_last(src, dst, *args, **kwargs):
        moved.append(os.path.basename(dst))
        if os.path.basename(dst) == exporting.META_FILE:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", refuse_the_last)
    with pytest.raises(OSError, match="Input/output error"):
        disk_space.move_into(str(staged), str(into), last=exporting.META_FILE)
    assert sorted(moved[:2]) == ["a", "z"] and moved[2] == exporting.META_FILE  # last
    assert os.listdir(into) == [] and sorted(os.listdir(staged)) == ["a", "hgmt.json", "z"]


@pytest.mark.slow
def test_an_export_stopped_by_sigterm_leaves_nothing(workdir, tmp_path):
    """SIGTERM once the export is staged (`<OUTDIR>.partial-*` there): the partial folder and
    the parent folders made for it are removed and the process dies of SIGTERM; before, both
    were left."""
    import signal
    import subprocess
    import time

    savedmodel_or_skip()
    out = tmp_path / "deep" / "x"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    proc = subprocess.Popen([sys.executable, "-m", "hgmt.export", f"--workdir={workdir}",
                             "--format=savedmodel", f"--out_dir={out}"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (out.parent.exists() and os.listdir(out.parent)) and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGTERM, err[-3000:]
    assert os.listdir(tmp_path) == [], err[-3000:]


@pytest.mark.parametrize("fmt", exporting.FORMATS)
def test_an_export_failing_midway_leaves_no_out_dir_and_no_partial_folder(workdir, tmp_path,
                                                                         monkeypatch, fmt):
    """The artefact's write runs out of space halfway (fault injection: a partial file, then
    ENOSPC): one line naming DiskFull and OUTDIR, and neither OUTDIR, nor the partial folder it
    was written in, nor the parent folders made for it is left. Any other failure, here the
    smoke check's, cleans up the same, and leaves the parent folder that was there before."""
    def half_written(f, image_size, path):
        name = path if fmt == "stablehlo" else os.path.join(path, "saved_model.pb")
        with open(name, "wb") as fh:
            fh.write(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    if fmt == "savedmodel":
        savedmodel_or_skip()
    writer = "export_stablehlo" if fmt == "stablehlo" else "export_savedmodel"
    monkeypatch.setattr(exporting, writer, half_written)
    exports = tmp_path / "exports"
    out = exports / "a" / "b" / "new"
    with pytest.raises(SystemExit) as e:
        hgmt.export.main([f"--workdir={workdir}", f"--format={fmt}", f"--out_dir={out}"])
    message = str(e.value.code)
    assert re.fullmatch(rf"error: DiskFull: \[Errno 28\] cannot write the export to {out}: the "
                        rf"disk or quota is full \([^)]* free on it\)\. Nothing partial was "
                        rf"left behind\. Free space \(or raise the quota\), or give another "
                        rf"--out_dir, and rerun \(OSError: .*No space left on device\)",
                        message), message
    assert not exports.exists()

    def written(f, image_size, path):
        name = path if fmt == "stablehlo" else os.path.join(path, "saved_model.pb")
        with open(name, "wb") as fh:
            fh.write(b"not an artefact")

    def fails(*args):
        raise RuntimeError("the artefact does not run")

    monkeypatch.setattr(exporting, writer, written)
    monkeypatch.setattr(exporting, "smoke_check", fails)
    exports.mkdir()
    with pytest.raises(RuntimeError, match="the artefact does not run"):
        hgmt.export.main([f"--workdir={workdir}", f"--format={fmt}", f"--out_dir={out}"])
    assert os.listdir(exports) == []


def test_checkpoint_of_another_model_is_a_clear_error(workdir, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(workdir, other)
    with open(other / "config.json") as f:
        config = json.load(f)
    config["model"]["features"] = 24  # the checkpoint holds a 16-feature model
    with open(other / "config.json", "w") as f:
        json.dump(config, f)
    with pytest.raises(ValueError, match=r"does not fit the model its config.json builds: "
                                         r"\d+ with other shapes \(e\.g\. .*\)\. It was"):
        prediction.Predictor(str(other))


def test_commands_on_a_workdir_take_its_config_with_overrides(workdir, demo_dataset, tmp_path,
                                                               capsys):
    """evaluate, predict and export read `<workdir>/config.json` as `--config`, overridable
    field by field as `hgmt.main`'s config is; bad flags exit with the flag named. evaluate's
    stdout ends with hgmt.main's JSON line of its evaluation: the workdir, the JSON written,
    the step and the headline numbers."""
    from hgmt.evaluation import protocols

    out = str(tmp_path / "eval.json")
    capsys.readouterr()
    hgmt.evaluate.main([f"--workdir={workdir}", f"--config.data_dir={demo_dataset[1]}",
                   "--config.eval_batch_size=1", f"--out_file={out}"])
    with open(out) as f:
        saved = json.load(f)
    assert saved["num_examples"] == 2
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line == {"workdir": os.path.abspath(workdir), "eval": out, "step": saved["step"],
                    **protocols.headline(saved)}
    assert len(line) > 3 and isinstance(line["step"], int)
    with pytest.raises(SystemExit, match="no_such_field"):
        hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo", f"--out_dir={out}.x",
                     "--config.no_such_field=1"])
    with pytest.raises(SystemExit, match="--step=last:"):
        hgmt.predict.main(["x.png", f"--workdir={workdir}", f"--out_dir={tmp_path}", "--step=last"])
    with pytest.raises(SystemExit, match="--workdir is required"):
        hgmt.predict.main(["x.png", f"--out_dir={tmp_path}"])
    with pytest.raises(SystemExit) as e:
        hgmt.evaluate.main(["--help"])
    assert e.value.code == 0 and "--protocol" in capsys.readouterr().out


def test_evaluate_stops_in_one_line_on_a_dataset_not_built_or_frames_it_lacks(
        workdir, every10_dataset, tmp_path):
    """A --config.data_dir without the build, --frames=all of a build of every 10th frame, and
    a malformed --frames: one error line naming the fix (a string exit code: exit status 1,
    no traceback), nothing written."""
    def one_line(*flags) -> str:
        with pytest.raises(SystemExit) as e:
            hgmt.evaluate.main([f"--workdir={workdir}", f"--out_file={tmp_path / 'e.json'}",
                                *flags])
        assert isinstance(e.value.code, str) and "\n" not in e.value.code, e.value.code
        return e.value.code

    message = one_line(f"--config.data_dir={tmp_path}")  # a folder without the dataset
    assert message.startswith("error: FileNotFoundError: dataset 'surreal/all' split 'test' "
                              "is not built under data_dir="), message
    assert "Build it with: tfds build surreal --imports=data_builders.surreal" in message
    message = one_line("--config.dataset=surreal/every10", f"--config.data_dir={every10_dataset}",
                       "--frames=all")
    assert message.startswith("error: NotInBuild: frames='all' asks for frames that dataset "
                              "'surreal/every10' under"), message
    assert "config.dataset='surreal/all' (build it: tfds build" in message
    message = one_line("--frames=every0")
    assert message.startswith("error: --frames=every0: use middle (the test protocol), all, "
                              "or everyK"), message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("protocol", ["hgmt", pytest.param("bodynet", marks=pytest.mark.slow)])
def test_evaluation_padding_never_counts(workdir, demo_dataset, protocol):
    """Four test frames evaluated in one full batch of 4 and in a batch of 8 (4 padded, masked
    out of every metric statistic and the loss) give the same numbers. hgmt's and BodyNet's
    protocols between them run every task's statistics (BodyNet's segm and depth are
    SURREAL's functions), BodyNet's on its 64 x 64 label maps (the tiny model, trained at
    another size, is convolutional)."""
    config, variables, _ = trained_model.restore_for_inference(workdir)
    config.data_dir = demo_dataset[1]
    if protocol != "hgmt":
        config.image_size = protocols.reference_image_size()
    indices = eval_data.eval_indices("surreal/all", demo_dataset[1], "test", "all")[:4]
    assert len(indices) == 4
    results = []
    for batch_size in (4, 8):
        config.eval_batch_size = batch_size
        summary = evaluator.Evaluator(config, split="test", protocol=protocol,
                                     indices=indices)(variables)
        assert summary["num_examples"] == 4
        results.append(protocols.headline(summary) | {
            f"loss/{t}": v for t, v in summary["loss"].items()})
    assert results[0].keys() == results[1].keys()
    for k, v in results[0].items():
        if v is None:
            assert results[1][k] is None, k
        else:
            np.testing.assert_allclose(results[1][k], v, rtol=1e-5, err_msg=k)


@pytest.mark.slow
def test_depth_error_breakdown_agrees_with_the_evaluation(workdir):
    """experiments/depth_errors.py's bin accuracy over all test frames is hgmt's depth metric
    on the same frames: the same whole number of the 303 foreground label pixels of the 12
    demo test frames."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
    import depth_errors

    r = depth_errors.depth_errors(workdir, "all")
    config, variables, _ = trained_model.restore_for_inference(workdir)
    summary = evaluator.evaluate(config, variables, frames="all", max_examples=0)
    assert r["test_frames"] == summary["num_examples"] == 12
    assert r["foreground_pixels"] == 303
    right = r["bin_accuracy"] * r["foreground_pixels"]
    assert right == pytest.approx(round(right), abs=1e-6)
    assert r["bin_accuracy"] == pytest.approx(summary["depth"]["bin_accuracy"], abs=1e-9)
    assert 0 <= r["predicted_background"] <= 1 and r["bin_accuracy"] <= r["within_one_bin"]


# --- Finding the person ------------------------------------------------------------------------
def pasted_frames(stems: list[str], seed: int = 0, canvas_hw: tuple[int, int] = (480, 640),
                  scales: tuple[float, float] = (0.5, 0.8)) -> list[tuple[np.ndarray, tuple]]:
    """Every frame of the demo clips `stems`, shrunk by a random factor in `scales` and pasted
    at a random place on a canvas (another demo background, enlarged) -> [(canvas (H,W,3)
    uint8, the training crop's (x, y, w, h) on the canvas)]."""
    rng = np.random.default_rng(seed)
    out = []
    for stem in stems:
        video = surreal.read_video(stem + ".mp4")
        joints = surreal.load_info(stem + "_info.mat").joints2d[:, body.SMPL_TO_JOINT]
        for frame, joints2d in zip(video, joints, strict=True):
            s = rng.uniform(*scales)
            small = cv2.resize(frame, None, fx=s, fy=s, interpolation=cv2.INTER_AREA)
            background = synthetic_person.make_look(rng).background  # (240,320,3) on [0, 1]
            canvas = cv2.resize((background * 255).round().astype(np.uint8), canvas_hw[::-1],
                                interpolation=cv2.INTER_LINEAR)
            x0 = int(rng.integers(0, canvas_hw[1] - small.shape[1]))
            y0 = int(rng.integers(0, canvas_hw[0] - small.shape[0]))
            canvas[y0:y0 + small.shape[0], x0:x0 + small.shape[1]] = small
            # Pixel centres at integers: x -> (x + 0.5) * s - 0.5 on the resized frame.
            centre, side = cropping.person_box((joints2d + 0.5) * s - 0.5 + [x0, y0])
            out.append((canvas, (centre[0] - side / 2 + 0.5, centre[1] - side / 2 + 0.5,
                                 side, side)))
    return out


def finding_errors(model: prediction.Predictor, cases: list[tuple[np.ndarray, tuple]]
                   ) -> tuple[np.ndarray, list[dict]]:
    """-> ((N,16) distances in label px of the true box's crop between the 2D joints predicted
    on the window found and on the true box, the results found)."""
    canvases = [c for c, _ in cases]
    found = model.predict(canvases)
    true = model.predict(canvases, [b for _, b in cases])
    r = model.image_size // 4
    errors = [np.linalg.norm(f["joints2d"] - t["joints2d"], axis=-1) * r / box[2]
              for f, t, (_, box) in zip(found, true, cases, strict=True)]
    return np.array(errors), found


class _Oracle(prediction.Predictor):
    """The tiny model's Predictor whose model outputs are made up: each crop's pose2d heatmaps
    are Gaussians at the true joints (image px, `joints`) seen through the crop, or nothing
    when `joints` is None; every other output is zero (no foreground, no 3D peaks)."""

    def __init__(self, workdir: str, joints: np.ndarray | None):
        super().__init__(workdir)
        self.joints, self.runs = joints, []

    def _crops(self, images, windows):
        crops, m_labels = super()._crops(images, windows)
        self._m_labels = m_labels
        return crops, m_labels

    def _forward(self, crops):
        r = self.image_size // 4
        self.runs.append(len(crops))
        out = {t: np.zeros((len(crops), r, r, TASKS[t].NUM_CHANNELS), np.float32)
               for t in self.tasks}
        if self.joints is not None:
            for k, m in enumerate(self._m_labels):
                label = self.joints @ m[:, :2].T + m[:, 2]
                maps = np.asarray(common.gaussian(np.asarray(label, np.float32), r))
                out["pose2d"][k] = np.moveaxis(maps, 0, -1)
        return out


def test_the_person_is_found_from_the_joints_in_two_passes(workdir, test_example):
    """With heatmaps that are exactly the joints, the first pass (whole image) sees all 16
    and gives training's window around them; the second pass, on that window, gives it again,
    and its outputs are the result: the same as predicting with the true box."""
    image = cv2.copyMakeBorder(test_example["image"], 40, 200, 300, 60, cv2.BORDER_CONSTANT)
    joints = test_example["joints2d"][body.SMPL_TO_JOINT].astype(np.float64) + [300, 40]
    centre, side = cropping.person_box(joints)
    true_box = [centre[0] - side / 2 + 0.5, centre[1] - side / 2 + 0.5, side, side]
    oracle = _Oracle(workdir, joints)
    found = oracle(image)
    assert found["window"].found_by == "joints (pose2d)" and found["passes"] == 2
    assert oracle.runs == [1, 1]  # no third pass: the last one was on the window returned
    np.testing.assert_allclose(found["window"].bbox, true_box, atol=0.01)
    given = oracle(image, true_box)
    assert given["window"].found_by == "given" and given["passes"] == 1
    np.testing.assert_allclose(found["joints2d"], given["joints2d"], atol=0.01)
    np.testing.assert_allclose(found["joints2d"], joints, atol=0.05)

    nothing = _Oracle(workdir, None)(image)
    assert nothing["window"].found_by == "whole image: no person found"
    assert nothing["passes"] == 1
    np.testing.assert_allclose(nothing["window"].bbox, [0, -100, 680, 680])  # the whole image


def test_a_search_that_does_not_settle_says_when_its_last_pass_sees_nothing(workdir,
                                                                           test_example):
    """The joints seen move 20 px (more than CONVERGED of the window's side) on each of the
    MAX_FINDING_PASSES passes, so the search does not settle and the model runs once more on
    the last window found; where it sees nothing there, the window says so ('; nothing seen
    in the final window') and is not counted as a person seen; where it sees the person, the
    window is what found it."""
    image = cv2.copyMakeBorder(test_example["image"], 100, 100, 100, 100, cv2.BORDER_CONSTANT)
    joints = test_example["joints2d"][body.SMPL_TO_JOINT].astype(np.float64) + 100

    class Wandering(_Oracle):
        def __init__(self, workdir, last_seen: bool):
            super().__init__(workdir, None)
            self.last_seen = last_seen

        def _forward(self, crops):
            n = len(self.runs)
            seen = n < prediction.MAX_FINDING_PASSES or self.last_seen
            self.joints = joints + [20.0 * n, 0.0] if seen else None
            return super()._forward(crops)

    for last_seen in (False, True):
        result = Wandering(workdir, last_seen)(image)
        assert result["passes"] == prediction.MAX_FINDING_PASSES + 1
        assert result["window"].found_by == "joints (pose2d)" + (
            "" if last_seen else f"; {person.NOTHING_SEEN_LAST}")
        assert result["window"].person_seen == last_seen


def test_a_batch_mixes_given_and_found_windows(workdir, test_example):
    image = test_example["image"]
    joints = test_example["joints2d"][body.SMPL_TO_JOINT].astype(np.float64)
    oracle = _Oracle(workdir, joints)
    results = oracle.predict([image, image, image], [None, (10, 20, 50, 40), None])
    assert [r["window"].found_by for r in results] == ["joints (pose2d)", "given",
                                                       "joints (pose2d)"]
    assert oracle.runs == [2, 2, 1]  # two searches together, then the given window alone
    np.testing.assert_allclose(results[1]["window"].bbox, [10, 15, 50, 50])
    with pytest.raises(ValueError, match="2 bboxes for 3 images"):
        oracle.predict([image] * 3, [None, None])


def test_find_window_from_joints_and_from_the_silhouette():
    """Label px -> image px through the crop; joints off the silhouette or too weak are
    dropped; with fewer than MIN_JOINTS left the silhouette's box, grown, is the window."""
    m_label = np.array([[0.1, 0.0, 2.0], [0.0, 0.1, 1.0]])  # image px -> label px (10 px each)
    rng = np.random.default_rng(0)
    joints = rng.uniform(5, 12, (16, 2))
    silhouette = np.zeros((20, 20), bool)
    silhouette[4:14, 6:11] = True  # rows 4..13, columns 6..10
    silhouette[0, 19] = True  # a speck: not the largest region
    image_joints = (joints - [2.0, 1.0]) / 0.1
    evidence = {"pose2d": {"joints": joints, "joint_scores": np.ones(16)},
                "segm": {"foreground": silhouette}}
    inside = (joints[:, 0] >= 6 - 2.5) & (joints[:, 0] <= 10 + 2.5) & (joints[:, 1] <= 13 + 2.5)
    assert inside.sum() >= person.MIN_JOINTS
    window = person.find_window(evidence, m_label)
    centre, side = cropping.person_box(image_joints[inside])
    assert window.found_by == "joints (pose2d)"
    np.testing.assert_allclose([*window.centre, window.side], [*centre, side])

    evidence["pose2d"]["joint_scores"] = np.where(np.arange(16) < 5, 0.1, 1.0)  # 11 strong
    window = person.find_window(evidence, m_label)
    assert window.found_by == "foreground (segm)"
    # The silhouette's box: label px [5.5, 10.5] x [3.5, 13.5] -> image px [35, 85] x [25, 125].
    np.testing.assert_allclose(window.centre, [60.0, 75.0])
    assert window.side == pytest.approx(person.FOREGROUND_TO_SIDE["hgmt"] * 100.0)
    assert person.find_window({"segm": {"foreground": np.zeros((20, 20), bool)}},
                              m_label) is None

    # A run trained on the references' box finds that box: of the joints, or the silhouette's
    # grown by its own ratio.
    window = person.find_window(evidence, m_label, window="reference_box")
    assert window.side == pytest.approx(person.FOREGROUND_TO_SIDE["reference_box"] * 100.0)
    evidence["pose2d"]["joint_scores"] = np.ones(16)
    window = person.find_window(evidence, m_label, window="reference_box")
    centre, side = reference_crop.reference_box(image_joints[inside])
    assert window.found_by == "joints (pose2d)"
    np.testing.assert_allclose([*window.centre, window.side], [*centre, side])


def test_a_file_named_otherwise_is_not_called_a_damaged_image_of_the_format_it_starts_as(
        tmp_path):
    """A camera's raw file starts as a TIFF does: named .cr2 it is no damaged TIFF (OpenCV
    does not read it); named .tif, a TIFF that does not decode is."""
    for name, message in [("photo.cr2", "cannot be decoded (not an image OpenCV reads)"),
                          ("photo.tif", "is a TIFF file that does not decode: it is damaged "
                                        "or cut short (copy or export it again)")]:
        path = tmp_path / name
        path.write_bytes(b"II*\x00" + bytes(60))
        with pytest.raises(image_file.UndecodableImage) as e:
            image_file.read_image(str(path))
        assert str(e.value) == f"image {path} {message}"


def _png_header(path, width: int, height: int) -> None:
    """Writes a PNG whose header says width x height RGB pixels and whose data is a few
    zero bytes (OpenCV checks the header's size before it decodes any data)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))

    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(bytes(100))) + chunk(b"IEND", b""))


def test_an_image_of_more_pixels_than_opencv_decodes_is_skipped_naming_the_fix(tmp_path,
                                                                                capsys):
    """A PNG of 40000 x 30000 pixels (more than OpenCV's 2^30) makes OpenCV raise cv2.error,
    which ended the command in a traceback: it is an input skipped in one line naming the
    fix, and the image beside it is still read."""
    huge, photo = tmp_path / "huge.png", tmp_path / "photo.png"
    _png_header(huge, 40000, 30000)
    cv2.imwrite(str(photo), np.full((24, 32, 3), 90, np.uint8))
    assert hgmt.predict._read(str(huge), None) is None
    assert capsys.readouterr().err == (
        f"skipped {huge}: image {huge} has more pixels than OpenCV decodes (2^30 by default): "
        f"scale it down, or set the environment variable OPENCV_IO_MAX_IMAGE_PIXELS to its "
        f"pixel count if the host's memory holds it (3 bytes a pixel, and more while it is "
        f"predicted)\n")
    assert hgmt.predict._read(str(photo), None).shape == (24, 32, 3)


def test_a_still_gif_larger_than_pillows_bomb_limit_is_read_without_a_traceback(
        tmp_path, monkeypatch, capsys):
    """Pillow, which counts an animation's frames after OpenCV has read the image, refuses
    an image of more than twice PIL.Image.MAX_IMAGE_PIXELS pixels (179 million by default)
    with DecompressionBombError, which ended the command in a traceback, and warns above
    that limit: the limit is lowered here (Pillow's own setting) so that a small still GIF
    is over it; the GIF is read, with no warning."""
    import warnings

    from PIL import Image

    gif = tmp_path / "still.gif"
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(gif)
    for limit in (1000, 2000):  # 2400 pixels: over twice the limit, then over it
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            image = hgmt.predict._read(str(gif), None)
        assert image.shape == (40, 60, 3) and (image == 128).all()
        assert capsys.readouterr().err == ""


def test_opencv_out_of_memory_decoding_an_image_is_the_hosts_not_the_files(tmp_path,
                                                                          monkeypatch):
    """OpenCV failing to allocate a decoded image (an injected fault: cv2.imdecode raising its
    StsNoMem error, which a test cannot make it do) stops as OutOfHostMemory naming the
    images, not as an input skipped."""
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((24, 32, 3), 90, np.uint8))

    def no_memory(*args):
        error = cv2.error("Failed to allocate 3600000000 bytes")
        error.code, error.err = cv2.Error.StsNoMem, "Failed to allocate 3600000000 bytes"
        raise error

    monkeypatch.setattr(cv2, "imdecode", no_memory)
    with pytest.raises(host_memory.OutOfHostMemory, match=rf"while reading or predicting {photo} "
                                                    r"\(MemoryError: OpenCV could not "):
        hgmt.predict._predict_images(None, [str(photo)], str(tmp_path / "out"), None)


def test_grey_16_bit_and_transparent_images_are_read_as_8_bit_rgb(tmp_path):
    """A grey PNG is read as RGB of its grey, a 16-bit one at 8 bits (its high byte), one
    with an alpha channel without it: a transparent pixel as the colour it stores."""
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (12, 16, 3), np.uint8)
    grey = rgb[..., 0]
    cv2.imwrite(str(tmp_path / "grey.png"), grey)
    np.testing.assert_array_equal(image_file.read_image(str(tmp_path / "grey.png")),
                                  np.repeat(grey[..., None], 3, axis=2))
    cv2.imwrite(str(tmp_path / "deep.png"), rgb[..., ::-1].astype(np.uint16) * 256 + 100)
    np.testing.assert_array_equal(image_file.read_image(str(tmp_path / "deep.png")), rgb)
    alpha = np.full((12, 16, 1), 255, np.uint8)
    alpha[:, :8] = 0
    Image.fromarray(np.concatenate([rgb, alpha], axis=2), "RGBA").save(tmp_path / "cut.png")
    np.testing.assert_array_equal(image_file.read_image(str(tmp_path / "cut.png")), rgb)


def test_a_window_from_clustered_joints_has_trainings_least_side_in_either_window():
    """16 joints within a pixel: hgmt's box is at least MIN_WINDOW_SIDE_PX; the references'
    box has no floor (about 1.7 px here), which the search gives it, so that the crop does
    not enlarge a speck a hundredfold."""
    joints = 5.0 + np.random.default_rng(2).uniform(0, 0.5, (16, 2))
    assert cropping.window_box(joints, "reference_box")[1] < 2
    for window in cropping.TRAIN_WINDOWS:
        found = person.find_window({"pose2d": {"joints": joints, "joint_scores": np.ones(16)}},
                                   np.eye(2, 3), window=window)
        assert found.side == cropping.MIN_WINDOW_SIDE_PX


def test_the_metadata_of_a_run_on_the_references_box_states_their_box():
    """An export's crop window text for config.window=reference_box, followed step by step on
    random joints, gives `reference_crop.reference_box` (what training and the search cut)."""
    meta = export_meta.crop_meta(1.97, "assumed", "reference_box")
    assert meta["training_window"] == "reference_box"
    assert "S = 200 / 240 max(W, H), c = start + (W, H) / 2" in meta["window"]
    margins = meta["box_margins"]
    for joints in np.random.default_rng(1).uniform(0, 300, (3, 16, 2)):
        (x0, y0), (x1, y1) = (joints + 1).min(0), (joints + 1).max(0)
        w, h = x1 - x0 + 1, y1 - y0 + 1
        start = np.array([x0 - margins["left"] * w, y0 - margins["top"] * h])
        end = np.array([x1 + margins["right"] * w, y1 + margins["bottom"] * h])
        full = end - start + 1
        centre, side = cropping.window_box(joints, "reference_box")
        np.testing.assert_allclose(centre, start + full / 2, atol=1e-4)
        assert side == pytest.approx(200 / 240 * full.max(), abs=1e-4)


class _SeenOnce(_Oracle):
    """An `_Oracle` whose model sees the joints on the first pass only: every later pass's
    heatmaps are flat 0.05, below MIN_JOINT_SCORE."""

    def _forward(self, crops):
        out = super()._forward(crops)
        if len(self.runs) > 1:
            out["pose2d"][:] = 0.05
        return out


def test_a_joint_whose_peak_is_exactly_min_joint_score_counts():
    """A joint counts when its peak reaches MIN_JOINT_SCORE, equality included: 4 of 16 joints
    scored exactly 0.2, the rest 1, no silhouette, identity crop -> all 16 kept, the window is
    person_box of all 16 ('joints (pose2d)'); with '>' 12 would be kept ('12 of 16')."""
    joints = np.stack([np.linspace(10, 40, 16), np.linspace(5, 50, 16)], -1)
    scores = np.ones(16)
    scores[[0, 5, 10, 15]] = person.MIN_JOINT_SCORE
    window = person.find_window({"pose2d": {"joints": joints, "joint_scores": scores}},
                                np.eye(2, 3))
    assert window.found_by == "joints (pose2d)"


def test_a_window_the_last_pass_saw_nothing_on_says_so_and_is_drawn_red(workdir,
                                                                       test_example):
    """Pass 1 (the whole image) sees the joints and gives their window; pass 2, on that
    window, sees nothing. The window is kept, its found_by says that nothing was seen on it,
    and the annotated frame draws it red (not seen), as the whole image where nothing is seen;
    a window seen again is drawn green."""
    image = cv2.copyMakeBorder(test_example["image"], 40, 200, 300, 60, cv2.BORDER_CONSTANT)
    joints = test_example["joints2d"][body.SMPL_TO_JOINT].astype(np.float64) + [300, 40]
    result = _SeenOnce(workdir, joints)(image)
    assert result["passes"] == 2 and result["raw"]["pose2d"].max() == pytest.approx(0.05)
    assert result["window"].found_by == "joints (pose2d); nothing seen in the final window"
    assert not result["window"].person_seen
    centre, side = cropping.person_box(joints)
    np.testing.assert_allclose([*result["window"].centre, result["window"].side],
                               [*centre, side], atol=0.01)

    def frame_colour(window):
        black = np.zeros((120, 160, 3), np.uint8)
        frame = annotated_video.annotate(black, {"window": window, "raw": {}, "crop_image": None,
                                       "frame": None})
        return tuple(frame[20, 10])  # on the window's left edge

    window = person.Window(np.array([59.5, 59.5]), 100.0, "joints (pose2d)")
    assert frame_colour(window) == (40, 220, 60)
    lost, done = person.after_pass(window, None, first_pass=False)
    assert done and lost.found_by.endswith("; nothing seen in the final window")
    assert frame_colour(lost) == (230, 40, 40)
    assert person.after_pass(window, None, first_pass=True)[0].found_by == person.NOT_FOUND


def test_the_search_window_never_outgrows_the_whole_image():
    """A silhouette filling the whole label map of a 160x120 image's whole-image crop would
    give a window FOREGROUND_TO_SIDE times the image's side, and so on each pass; it is capped
    at the whole image's window (side 160)."""
    whole = person.Window.whole((120, 160))
    m_label = cropping.crop_affine(whole.centre, whole.side, 32)
    evidence = {"segm": {"foreground": np.ones((32, 32), bool)}}
    grown = person.find_window(evidence, m_label)
    assert grown.side == pytest.approx(person.FOREGROUND_TO_SIDE["hgmt"] * 160)
    capped = person.find_window(evidence, m_label, (120, 160))
    assert capped.side == 160 and capped.found_by == "foreground (segm)"
    np.testing.assert_allclose(capped.centre, whole.centre)


def test_what_is_seen_on_the_crops_black_margins_is_no_person():
    """A 320x240 image's whole-image crop (side 320, 32 label px: rows 0-3 and 28-31 are
    black margins above and below the image). A foreground seen only on the margins, as an
    undertrained model sees on a black photo, is nothing seen, not a window off the image
    (which `--bbox` would refuse); one that spills onto them counts within the image only;
    16 joints seen on the margins with no silhouette are nothing seen either."""
    shape = (240, 320)
    whole = person.Window.whole(shape)
    m_label = cropping.crop_affine(whole.centre, whole.side, 32)
    margin = np.zeros((32, 32), bool)
    margin[0:3, 2:6] = True  # label rows 0-2: image y -55..-25
    assert person.find_window({"segm": {"foreground": margin}}, m_label) is not None
    assert person.find_window({"segm": {"foreground": margin}}, m_label, shape) is None
    spill = margin.copy()
    spill[3:10, 2:6] = True  # rows 0-9, of which 4-9 are on the image (row 4: y 4.5)
    window = person.find_window({"segm": {"foreground": spill}}, m_label, shape)
    inside = person.find_window({"segm": {"foreground": spill & (np.arange(32) >= 4)[:, None]}},
                                m_label)
    np.testing.assert_allclose([*window.centre, window.side], [*inside.centre, inside.side])
    assert window.overlaps(shape)
    joints = np.stack([np.linspace(2, 4, 16), np.linspace(0, 1, 16)], -1)  # rows 0-1
    evidence = {"pose2d": {"joints": joints, "joint_scores": np.ones(16)}}
    assert not person.find_window(evidence, m_label).overlaps(shape)
    assert person.find_window(evidence, m_label, shape) is None
    evidence["segm"] = {"foreground": spill}  # a silhouette on the image: its window
    assert person.find_window(evidence, m_label, shape).found_by == "foreground (segm)"


def test_a_silhouettes_window_is_never_smaller_than_trainings_least_side():
    """A 4 x 2 label px silhouette on a 12x9 image's whole-image crop (32 label px across
    12 px) spans 1.5 image px: its window would be 1.92 px, the crop enlarging it over 100
    times. It is training's least window side, MIN_WINDOW_SIDE_PX (8 px), around the same
    centre; a larger silhouette's window is unchanged."""
    whole = person.Window.whole((9, 12))
    m_label = cropping.crop_affine(whole.centre, whole.side, 32)
    speck = np.zeros((32, 32), bool)
    speck[10:12, 20:24] = True
    window = person.find_window({"segm": {"foreground": speck}}, m_label, (9, 12))
    assert window.side == cropping.MIN_WINDOW_SIDE_PX == 8.0
    # The silhouette box's centre, label px (21.5, 10.5), in image px: (label - 15.5) * 12 / 32
    # plus the image's centre (5.5, 4).
    np.testing.assert_allclose(window.centre, [7.75, 2.125])
    large = person.Window.whole((480, 640))
    m_label = cropping.crop_affine(large.centre, large.side, 32)
    window = person.find_window({"segm": {"foreground": speck}}, m_label, (480, 640))
    assert window.side == pytest.approx(person.FOREGROUND_TO_SIDE["hgmt"] * 4 * 640 / 32)


def test_a_window_found_from_the_joints_is_trainings_even_beyond_the_image():
    """A 300 x 600 photo cropped close to a person whose 16 joints span y 20..580: training's
    window is 560 * 1.6 = 896 px, beyond the photo; the search finds that window, not one cut
    to the whole image's 600 px, so the crop holds the person at training's scale (with black
    margins, as a training crop of a person near the frame's edge does)."""
    whole = person.Window.whole((600, 300))
    m_label = cropping.crop_affine(whole.centre, whole.side, 32)
    joints = np.stack([np.random.default_rng(0).uniform(100, 200, 16),
                       np.linspace(20, 580, 16)], -1)
    centre, side = cropping.person_box(joints)
    assert side == pytest.approx(896.0)
    evidence = {"pose2d": {"joints": joints @ m_label[:, :2].T + m_label[:, 2],
                           "joint_scores": np.ones(16)}}
    window = person.find_window(evidence, m_label, (600, 300))
    assert window.found_by == "joints (pose2d)"
    np.testing.assert_allclose([*window.centre, window.side], [*centre, side], atol=1e-9)


def test_a_person_cut_off_by_the_frame_says_so_and_takes_the_larger_window():
    """Only the 12 upper joints are seen (the legs, below the image, score 0.1): their box
    misses the legs, so the window is the silhouette's when that is larger, and says how many
    joints were seen either way."""
    m_label = np.array([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])  # 10 image px per label px
    legs = [body.JOINT_NAMES.index(n) for n in ("r_ankle", "r_knee", "l_knee", "l_ankle")]
    joints = np.zeros((16, 2))
    joints[np.setdiff1d(np.arange(16), legs)] = np.stack([np.linspace(12, 20, 12),
                                                         np.linspace(4, 14, 12)], -1)
    joints[legs] = [[14, 28], [14, 20], [18, 20], [18, 28]]
    scores = np.ones(16)
    scores[legs] = 0.1
    silhouette = np.zeros((32, 32), bool)
    silhouette[3:17, 10:23] = True  # 14 rows x 13 columns: the body down to the cut
    evidence = {"pose2d": {"joints": joints, "joint_scores": scores},
                "segm": {"foreground": silhouette}}
    upper = np.delete(joints, legs, axis=0) * 10  # image px
    centre, side = cropping.person_box(upper)
    assert side == pytest.approx(160.0)  # 100 px tall joints' box, + 60 % margins
    window = person.find_window(evidence, m_label)
    assert window.found_by == "foreground (segm), larger than joints (pose2d, 12 of 16)"
    assert window.side == pytest.approx(person.FOREGROUND_TO_SIDE["hgmt"] * 140.0)  # > 160
    np.testing.assert_allclose(window.centre, [160.0, 95.0])
    assert window.person_seen
    alone = person.find_window({"pose2d": evidence["pose2d"]}, m_label)
    assert alone.found_by == "joints (pose2d, 12 of 16)"
    np.testing.assert_allclose([*alone.centre, alone.side], [*centre, side])
    silhouette[:] = False
    silhouette[3:15, 11:22] = True  # around the same joints, its window 1.28 * 120 < 160
    small = person.find_window(evidence, m_label)
    assert small.found_by == "joints (pose2d, 12 of 16)" and small.side == pytest.approx(side)


def test_a_bbox_must_be_finite(workdir):
    with pytest.raises(ValueError, match=r"bbox \(nan, .* must be finite numbers"):
        person.Window.given((float("nan"), 0, 10, 10))
    with pytest.raises(ValueError, match="must be finite"):
        person.Window.given((0, 0, float("inf"), 10))
    with pytest.raises(SystemExit, match=r"--bbox=0,0,nan,10: .* must be finite numbers"):
        hgmt.predict.main(["x.png", f"--workdir={workdir}", "--out_dir=o", "--bbox=0,0,nan,10"])


def test_input_a_predictor_cannot_take_is_named_with_how_to_make_what_it_takes(predictor):
    """An image of another kind (a float one on [0, 1], grey, RGBA, channels first, a batch,
    no pixels), a bbox of three numbers and one array given to `predict` (whose rows would
    pass for images) are each a ValueError saying what to give (before: the same message for
    all of them, a ZeroDivisionError, an unpacking error naming no bbox, and an error about
    a (320, 3) image)."""
    rgb = np.zeros((24, 32, 3), np.uint8)
    for image, hint in (
            (rgb.astype(np.float32) / 255, r"give uint8 values 0\.\.255: e\.g\. \(image \* "
                                            r"255\)\.round\(\)\.astype\(np\.uint8\)"),
            (rgb[..., 0], r"give RGB of a grey image: cv2\.cvtColor\(image, "
                          r"cv2\.COLOR_GRAY2RGB\)"),
            (np.zeros((24, 32, 4), np.uint8), r"give RGB without the alpha channel"),
            (np.zeros((3, 24, 32), np.uint8), r"give channels last: np\.moveaxis"),
            (np.zeros((2, 24, 32, 3), np.uint8), r"give one image \(H,W,3\): "
                                                 r"Predictor\.predict\(images\) takes a batch"),
            (np.zeros((0, 0, 3), np.uint8), r"give an image with pixels"),
            (rgb.astype(np.int64), r"give uint8 values 0\.\.255: image\.astype")):
        with pytest.raises(ValueError, match=rf"^expected an RGB uint8 image \(H,W,3\), got "
                                             rf"{image.dtype} {re.escape(str(image.shape))}: "
                                             rf"{hint}"):
            prediction._checked(image)
    assert prediction._checked(rgb) is rgb
    with pytest.raises(ValueError, match=r"^bbox \(10, 10, 50\): give 4 numbers, x, y, w, h"):
        person.Window.given((10, 10, 50))
    with pytest.raises(ValueError, match=r"^Predictor\.predict takes a list of images \(or "
                                         r"an \(N,H,W,3\) array\), got a uint8 array "
                                         r"\(24, 32, 3\); give \[image\]"):
        prediction.Predictor.predict(None, rgb)
    # An (N,H,W,3) array is its N images, as it was before that check.
    batch = np.zeros((2, 24, 32, 3), np.uint8)
    got = predictor.predict(batch, [(0, 0, 24, 24)] * 2, image_maps=False)
    assert len(got) == 2 and got[0]["joints2d"].shape == (16, 2)


def test_an_evaluation_of_another_task_subsets_variables_is_refused(workdir):
    """The variables of the 4-task model evaluated for pose2d alone: a ValueError naming the
    tasks and the differences (before: numbers of another network, flax having taken the
    variables it knew and left the others, without a word)."""
    config, variables, _ = trained_model.restore_for_inference(workdir)
    with pytest.raises(ValueError, match=r"^the variables do not fit the model of tasks "
                                         r"pose2d and this config\.model \(\d+ unexpected "
                                         r"\(e\.g\. .*restore_for_inference"):
        evaluator.evaluate(config, variables, tasks="pose2d", max_examples=2)


def test_the_json_gives_joint_scores_and_the_3d_decoding_camera(predictor):
    """Made-up model outputs on a 640x480 image: pose2d's heatmaps peak at known heights,
    which `joint_scores` gives; `focal_px` is the focal length 3D decoding assumed (a 30
    degree field of view: 600 px at 320 px, so 1200 px here; `--focal_px` when given) and
    `pelvis_depth_m` the depth it put the pelvis at (focal_px * crop_metres / window side)."""
    import copy

    r = predictor.image_size // 4
    heights = np.linspace(0.3, 1.0, 16)
    points = np.stack([np.arange(16) % 8 + 4, np.arange(16) // 8 * 5 + 6], -1)
    heatmaps = np.asarray(common.gaussian(np.asarray(points, np.float32), r))  # (16,r,r)
    raw = {t: np.zeros((r, r, TASKS[t].NUM_CHANNELS), np.float32) for t in predictor.tasks}
    raw["pose2d"] = np.moveaxis(heatmaps * heights[:, None, None], 0, -1).astype(np.float32)
    window = person.Window(np.array([300.0, 200.0]), 150.0, "given")
    m_label = cropping.crop_affine(window.centre, window.side, r)
    crop = np.zeros((predictor.image_size,) * 2 + (3,), np.uint8)
    image = np.zeros((480, 640, 3), np.uint8)
    saved = result_outputs.to_json(predictor._result(image, window, 1, crop, m_label, raw),
                               predictor.tasks)
    np.testing.assert_allclose(saved["joint_scores"], heights, atol=1e-4)
    assert saved["focal_px"] == pytest.approx(1200.0)
    assert saved["crop_metres"] == round(predictor.crop_metres, 4)  # the JSON keeps 0.1 mm
    assert saved["pelvis_depth_m"] == pytest.approx(1200.0 * predictor.crop_metres / 150,
                                                    abs=1e-4)
    given = copy.copy(predictor)
    given.focal_px = 900.0
    saved = result_outputs.to_json(given._result(image, window, 1, crop, m_label, raw),
                               given.tasks)
    assert saved["focal_px"] == pytest.approx(900.0)
    assert saved["pelvis_depth_m"] == pytest.approx(900.0 * given.crop_metres / 150,
                                                    abs=1e-4)


@pytest.fixture(scope="module")
def demo_model(tmp_path_factory):
    """A Predictor of the demo model: $HGMT_DEMO_WORKDIR (a workdir of `python -m hgmt.main
    --config=configs/demo.py`), else one trained here (9 min on 2 idle cores)."""
    import subprocess

    workdir = os.environ.get("HGMT_DEMO_WORKDIR")
    if not workdir:
        root = tmp_path_factory.mktemp("demo_model")
        workdir = str(root / "run")
        # A real 9-minute training: XLA's default optimisation, not the tests' xla_flags.
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
        subprocess.run([sys.executable, "-m", "hgmt.main", "--config=configs/demo.py",
                        f"--workdir={workdir}", f"--config.data_dir={root / 'tfds'}",
                        f"--config.demo.surreal_root={root / 'surreal'}"], check=True, env=env,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return prediction.Predictor(workdir)


@pytest.mark.slow
def test_the_demo_model_finds_a_small_person_anywhere_on_a_larger_canvas(demo_model, tmp_path):
    """40 frames of 8 new demo clips, shrunk to 0.5-0.8 and pasted anywhere on a 640x480
    canvas of another demo background: predicting without a box finds the person, and in
    nearly every frame at least 14 of the 16 joints lie within 2 label px of the prediction
    made with the true box. Measured (docs/predict.md): with the demo model of 72d732f, 39 of
    40 frames with at least 14 joints within, 34 with all 16, 39 windows found from the
    joints; with the README's demo model of d3046c5, 38, 28 and 38; with that of ac3c375 and
    the window that takes the silhouette's where it is larger than that of some of the joints,
    36, 29 and 37 (27 from all 16). Asserted: 36, 24, 30 windows that used the joints."""
    stems = synthetic.generate(str(tmp_path), clips_per_split=8, frames=5, seed=2,
                               splits=("test",))
    errors, found = finding_errors(demo_model, pasted_frames(stems, seed=2))
    assert errors.shape == (40, 16)
    worst = np.round(errors.max(axis=1), 1)
    assert ((errors <= 2).sum(axis=1) >= 14).sum() >= 36, worst
    assert (errors <= 2).all(axis=1).sum() >= 24, worst
    by = [f["window"].found_by for f in found]
    assert sum("joints" in b for b in by) >= 30, by


# --- Video -------------------------------------------------------------------------------------
DEMO_CLIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         "data_builders", "surreal", "dummy_data", "cmu", "test", "run0",
                         "03_01", "03_01_c0001.mp4")


def test_a_video_gives_json_lines_and_an_annotated_mp4(workdir, predictor, tmp_path, capsys):
    """Every frame of a demo clip (8 frames, H.264), predicted 3 at a time (batches of 3, 3,
    2): one JSON line each, as predicting that frame alone on the window the line records;
    an H.264 mp4 of the annotated frames; the frame rates reported."""
    import av

    frames = surreal.read_video(DEMO_CLIP)
    out = tmp_path / "out"
    with pytest.MonkeyPatch.context() as m:  # --out_dir relative to the working folder
        m.chdir(tmp_path)
        assert hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", "--out_dir=out",
                                  "--batch_size=3"]) == 0
    assert sorted(os.listdir(out)) == ["03_01_c0001.annotated.mp4", "03_01_c0001.jsonl",
                                       "03_01_c0001.summary.json"]
    with open(out / "03_01_c0001.summary.json") as f:  # its paths are absolute, as `video`
        paths = json.load(f)
    assert (paths["jsonl"], paths["annotated_video"]) == (
        str(out / "03_01_c0001.jsonl"), str(out / "03_01_c0001.annotated.mp4"))
    with open(out / "03_01_c0001.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert [line["frame"] for line in lines] == list(range(8))
    np.testing.assert_allclose([line["time_s"] for line in lines], np.arange(8) / 30, atol=1e-3)
    assert all(line["image_size_px"] == [320, 240] for line in lines)
    for k in (0, 4, 7):
        alone = predictor(frames[k], lines[k]["bbox"])
        np.testing.assert_allclose(lines[k]["joints2d_image_px"], alone["joints2d"], atol=0.02)
        assert np.mean(np.asarray(lines[k]["segm_classes"]) == alone["segm"]) >= 0.99
        assert lines[k]["bbox_found_by"] in ("whole image: no person found",
                                             "joints (pose2d)", "foreground (depth+segm)")
        assert lines[k]["model_passes"] >= 1 and lines[k]["tasks"] == list(predictor.tasks)

    with open(out / "03_01_c0001.summary.json") as f:
        summary = json.load(f)
    assert summary["frames"] == 8 and summary["warm_up_seconds"] > 0
    assert summary["start_time_s"] == 0.0
    assert summary["frames_per_second"] > 0 and summary["predict_frames_per_second"] > 0
    assert summary["device"] == "cpu" and summary["step"] == 2 and summary["flip"] is False
    assert summary["frames_person_not_seen"] == sum(
        not person.Window(np.zeros(2), 1.0, line["bbox_found_by"]).person_seen for line in lines)
    printed = capsys.readouterr().out
    assert "8 frames" in printed and "frames/s end to end" in printed

    with av.open(str(out / "03_01_c0001.annotated.mp4")) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and float(stream.average_rate) == 30
        annotated = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    # The frame, then the four tasks' pictures of the crop, each 240 px square.
    assert annotated.shape == (8, 240, 320 + 4 * 240, 3)
    assert np.median(np.abs(annotated[:, :, :320].astype(int) - frames)) <= 3


def test_video_lines_and_pictures_are_the_image_paths(workdir, predictor, tmp_path):
    """A video's frames are decoded without their image-sized maps and each task's picture is
    drawn from the frame's result (pose3d's joints decoded once): predicted one at a time on
    a given window, each JSON line is exactly the image path's JSON of that frame
    (`Predictor.__call__`, every map made), and each picture is the one `draw` makes from the
    model's outputs alone."""
    frames = surreal.read_video(DEMO_CLIP)
    bbox = [60.0, 40.0, 170.0, 170.0]
    out = tmp_path / "out"
    assert hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", f"--out_dir={out}",
                              "--batch_size=1", "--bbox=" + ",".join(map(str, bbox))]) == 0
    with open(out / "03_01_c0001.jsonl") as f:
        lines = [json.loads(line) for line in f]
    for k, frame in enumerate(frames):
        result = predictor(frame, bbox)
        assert result["segm_image"].shape == frame.shape[:2]
        want = json.loads(json.dumps(result_outputs.to_json(result, predictor.tasks)))
        assert {key: v for key, v in lines[k].items() if key not in ("frame", "time_s")} == want
    (video_result,) = predictor.predict([frames[3]], [bbox], image_maps=False)
    assert video_result["segm_image"] is None and video_result["depth_image"] is None
    for t, pred in video_result["raw"].items():
        np.testing.assert_array_equal(
            TASKS[t].draw(pred, video_result["crop_image"], video_result["frame"],
                          result=video_result),
            TASKS[t].draw(pred, video_result["crop_image"], video_result["frame"]), err_msg=t)


def test_pose3d_decodes_one_crop_as_the_evaluation_does():
    """`predict` and `locate` decode one crop in one jitted program each, on the array where
    it is (the Predictor's on JAX's device, or a numpy one): on random outputs of a 64 x 64
    map they give the joints of the evaluation's batched `decode` and the peaks
    `common.subpixel_argmax` finds."""
    import jax.numpy as jnp

    from hgmt.tasks import pose3d
    from hgmt.tasks.spec import Frame

    rng = np.random.default_rng(7)
    r = 64
    preds = rng.uniform(0, 1, (3, r, r, pose3d.NUM_CHANNELS)).astype(np.float32)
    batch = {"crop": jnp.asarray([[[0.3, 0.0, -12.0], [0.0, 0.3, -5.0]]], jnp.float32),
             "pelvis_depth": jnp.asarray([4.2], jnp.float32)}
    frame = Frame(batch, np.eye(2, 3), (240, 320))
    for pred in (*preds, jnp.asarray(preds[0])):
        want = np.asarray(pose3d.decode(jnp.asarray(pred)[None], batch)["joints3d_rel_mm"][0])
        np.testing.assert_allclose(pose3d.predict(pred, frame)["joints3d_rel_mm"], want,
                                   atol=1e-3)
        assert np.abs(want).max() > 100  # a pose: bins and positions spread
        planes = np.asarray(pred).reshape(r, r, 16, pose3d.NUM_BINS).max(-1).transpose(2, 0, 1)
        joints, scores = common.subpixel_argmax(jnp.asarray(planes))
        located = pose3d.locate(pred)
        np.testing.assert_allclose(located["joints"], joints, atol=1e-5)
        np.testing.assert_allclose(located["joint_scores"], scores, atol=1e-6)


def _spy_predict(monkeypatch) -> list[int]:
    """-> the number of images of each `Predictor.predict` call from now on."""
    calls, real = [], prediction.Predictor.predict

    def spied(self, images, *args, **kwargs):
        calls.append(len(images))
        return real(self, images, *args, **kwargs)

    monkeypatch.setattr(prediction.Predictor, "predict", spied)
    return calls


def test_images_are_predicted_batch_size_at_a_time_as_one_at_a_time(workdir, tmp_path,
                                                                   monkeypatch):
    """Four images at --batch_size=3: predicted in two calls (3, then 1), with the windows,
    passes and outputs of predicting each alone, up to float rounding (XLA compiles each batch
    size apart)."""
    frames = surreal.read_video(DEMO_CLIP)
    paths = [str(tmp_path / f"frame{k}.png") for k in range(4)]
    for path, k in zip(paths, (0, 3, 5, 7), strict=True):
        cv2.imwrite(path, frames[k][..., ::-1])
    calls = _spy_predict(monkeypatch)
    saved = {}
    for size in (3, 1):
        out = tmp_path / f"batch{size}"
        assert hgmt.predict.main([*paths, f"--workdir={workdir}", f"--out_dir={out}",
                                  f"--batch_size={size}"]) == 0
        saved[size] = []
        for k in range(4):
            with open(out / f"frame{k}.json") as f:
                saved[size].append(json.load(f))
    assert calls == [3, 1, 1, 1, 1, 1]
    for together, alone in zip(saved[3], saved[1], strict=True):
        assert together["bbox_found_by"] == alone["bbox_found_by"]
        assert together["model_passes"] == alone["model_passes"]
        np.testing.assert_allclose(together["bbox"], alone["bbox"], atol=0.01)
        for key, atol in (("joints2d_image_px", 0.02), ("joints3d_rel_mm", 0.5),
                          ("joint_scores", 1e-3)):
            np.testing.assert_allclose(together[key], alone[key], atol=atol, err_msg=key)
        for key in ("segm_classes", "depth_classes"):
            assert np.mean(np.equal(together[key], alone[key])) >= 0.99, key


def _seeing_nothing(self, crops):
    """A `Predictor._forward` whose model sees nothing: every output 0 (no heatmap peak, every
    class map background)."""
    r = self.image_size // common.LABEL_STRIDE
    return {t: np.zeros((len(crops), r, r, TASKS[t].NUM_CHANNELS), np.float32)
            for t in self.tasks}


def test_no_person_seen_is_warned_captioned_and_counted(workdir, tmp_path, monkeypatch,
                                                        capsys):
    """Where the model sees no person the prediction is still made, on the whole image, but
    not silently: a warning names the image, the panel's caption says so, and a video's
    summary counts such frames (and the command prints them). A given window is not warned
    about."""
    photo = str(tmp_path / "photo.jpg")
    _stick_figure(photo)
    monkeypatch.setattr(prediction.Predictor, "_forward", _seeing_nothing)
    captions, real = [], drawing.figure_image
    monkeypatch.setattr(drawing, "figure_image", lambda rgb, title, *a, **k: (
        captions.append(title), real(rgb, title, *a, **k))[1])
    out = tmp_path / "out"
    assert hgmt.predict.main([photo, f"--workdir={workdir}", f"--out_dir={out}"]) == 0
    err = capsys.readouterr().err
    assert f"warning: {photo}: no person found; predicted on the whole image" in err.splitlines()
    with open(out / "photo.json") as f:
        assert json.load(f)["bbox_found_by"] == person.NOT_FOUND
    assert captions[0] == "input crop\nwhole image: no person found"  # then "2D pose"
    captions.clear()
    assert hgmt.predict.main([photo, f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=100,20,200,300"]) == 0
    assert "warning" not in capsys.readouterr().err and captions[0] == "input crop"
    captions.clear()
    lost = {**_panel_result(), "window": person.Window(
        np.array([30.0, 30.0]), 60.0, f"joints (pose2d); {person.NOTHING_SEEN_LAST}")}
    result_outputs.panel(lost)
    assert captions[0] == "input crop\njoints (pose2d);\nnothing seen in the final window"

    for flags, not_seen in (([], 8), (["--bbox=60,40,170,170"], 0)):
        assert hgmt.predict.main([DEMO_CLIP, f"--workdir={workdir}", f"--out_dir={out}",
                                  "--batch_size=2", *flags]) == 0
        with open(out / "03_01_c0001.summary.json") as f:
            assert json.load(f)["frames_person_not_seen"] == not_seen
        printed = capsys.readouterr().out
        assert (", no person seen in 8 (drawn red), " in printed) == bool(not_seen), printed


def test_video_frame_rates_leave_out_every_compilation(workdir, tmp_path, monkeypatch):
    """The frame rates are timed after the model is compiled for every batch shape a search
    pass can take and the decoding compiled: while the clip's frames are predicted, drawn and
    written, XLA compiles nothing. The clip's 8 frames at --batch_size=3 take batches of 3, 3
    and 2 frames, and search passes of any 1 to 3 of them."""
    import jax

    event = "/jax/core/compile/backend_compile_duration"
    timed, compiles = [False], []
    real = prediction.Predictor.predict

    def predict(self, images, *args, **kwargs):
        timed[0] = timed[0] or images[0].shape == (240, 320, 3)  # the clip's frames
        return real(self, images, *args, **kwargs)

    def listener(name, seconds, **kwargs):
        if name == event and timed[0]:
            compiles.append(seconds)

    monkeypatch.setattr(prediction.Predictor, "predict", predict)
    model = prediction.Predictor(workdir, batch_size=3)
    assert model.batch_shapes() == [1, 2, 3]
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        summary = video.predict_video(model, DEMO_CLIP, str(tmp_path))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert timed[0] and compiles == [] and summary["frames"] == 8
    assert sorted(model._compiled) == [1, 2, 3] and summary["warm_up_seconds"] > 0
    assert "first_batch_excluded" not in summary


def test_several_videos_say_compiling_the_model_once(workdir, tmp_path, monkeypatch, caplog):
    """The videos of one command share the model passes the first one compiled: the line
    saying the model is being compiled is logged for the first video only. A second command
    in the same process (a second Predictor of the same model: `Predictor.compiled` counts
    the passes an earlier one compiled, `_EXECUTABLES`) logs none."""
    import logging

    monkeypatch.setattr(prediction, "_EXECUTABLES", {})  # none compiled by earlier tests
    clips = [tmp_path / f"clip{k}.mp4" for k in range(3)]
    for clip in clips:
        _write_clip(clip, [np.full((48, 64, 3), 128, np.uint8)] * 2)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert hgmt.predict.main([*map(str, clips), f"--workdir={workdir}",
                                  f"--out_dir={out}", "--batch_size=2"]) == 0
    compiling = [r.getMessage() for r in caplog.records if "compiling" in r.getMessage()]
    assert compiling == [f"{clips[0]}: compiling the model for batches of up to 2 frames"]
    assert len(os.listdir(out)) == 9

    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert hgmt.predict.main([str(clips[0]), f"--workdir={workdir}",
                                  f"--out_dir={tmp_path / 'again'}", "--batch_size=2"]) == 0
    assert not [r for r in caplog.records if "compiling" in r.getMessage()]
    assert len(os.listdir(tmp_path / "again")) == 3


def test_flip_averages_each_crop_with_its_mirror_image(workdir, predictor, test_example,
                                                       tmp_path):
    """--flip runs the flip test of hgmt.evaluate --flip: each output is the mean of the
    crop's and of the mirrored crop's, mirrored back with the task's left/right channels
    swapped (`CHANNEL_FLIP`), made here from the plain model's two runs; the JSON says so and
    its joints differ from those without it."""
    flipped = prediction.Predictor(workdir, flip=True)
    bbox = _bbox_of_training_crop(test_example)
    result = flipped(test_example["image"], bbox)
    crop = result["crop_image"]
    np.testing.assert_array_equal(crop, predictor(test_example["image"], bbox)["crop_image"])
    once = predictor._apply(predictor.variables, crop[None])
    mirrored = predictor._apply(predictor.variables, crop[None, :, ::-1])
    for t in predictor.tasks:
        want = 0.5 * (np.asarray(once[t][0]) + np.asarray(mirrored[t][0])[:, ::-1][
            ..., np.asarray(TASKS[t].CHANNEL_FLIP)])
        np.testing.assert_allclose(result["raw"][t], want, rtol=1e-4, atol=1e-5, err_msg=t)
        assert not np.allclose(result["raw"][t], once[t][0], rtol=1e-4, atol=1e-5), t

    image = str(tmp_path / "frame.png")
    cv2.imwrite(image, test_example["image"][..., ::-1])
    saved = {}
    for flags in ([], ["--flip"]):
        out = tmp_path / f"out{len(flags)}"
        assert hgmt.predict.main([image, f"--workdir={workdir}", f"--out_dir={out}",
                                  "--bbox=" + ",".join(map(str, bbox)), *flags]) == 0
        with open(out / "frame.json") as f:
            saved[bool(flags)] = json.load(f)
    assert saved[True]["flip"] is True and saved[False]["flip"] is False
    again = flipped(test_example["image"], bbox)
    np.testing.assert_allclose(saved[True]["joints2d_image_px"], again["joints2d"], atol=0.01)
    np.testing.assert_allclose(saved[True]["joint_scores"], again["joint_scores"], atol=1e-4)
    assert not np.allclose(saved[True]["joint_scores"], saved[False]["joint_scores"],
                           atol=1e-3)


def test_a_turned_video_is_read_as_it_is_displayed(tmp_path):
    """A clip whose frames are stored landscape and displayed turned (a phone's portrait clip:
    the display matrix's rotation), or turned and mirrored (all eight orientations), is read
    as players show it: the display matrix PyAV writes for a counterclockwise turn followed by
    a horizontal and/or vertical flip is undone into exactly that turn and those flips."""
    import av

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:8, :16] = 255  # a white block at the top left of the stored frame
    stored[24:, :8] = 128  # and a grey one at the bottom left: no turn of one is a mirror
    for rotation in (90, -90, 180, 0):
        for hflip, vflip in ((False, False), (True, False), (False, True)):
            path = str(tmp_path / f"turned{rotation}_{hflip:d}{vflip:d}.mp4")
            with av.open(path, mode="w") as container:
                stream = container.add_stream("libx264", rate=30)
                stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
                stream.set_display_rotation(rotation, hflip=hflip, vflip=vflip)
                for _ in range(2):
                    container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, "rgb24")))
                container.mux(stream.encode())
            (_, frames), = _read_frames(path, 8)
            want = np.rot90(stored, rotation // 90)
            want = want[:, ::-1] if hflip else want
            want = want[::-1] if vflip else want
            case = (rotation, hflip, vflip)
            assert len(frames) == 2 and frames[0].shape == want.shape, case
            assert np.abs(frames[0].astype(int) - want).mean() < 8, case


def test_an_avi_with_b_frames_is_timed_in_display_order(tmp_path):
    """H.264 with B-frames in AVI, which stores decoding times only: FFmpeg's time stamps on
    the decoded frames are out of display order, while the frames themselves come in it. Each
    frame is timed as shown: here the first frame's time plus one frame period (1/25 s) per
    frame; a clip with dropped frames keeps its gap."""
    import av

    path = str(tmp_path / "b_frames.avi")
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.options = {"bf": "2", "g": "12"}
        for k in range(10):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 25 * k, np.uint8), "rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with av.open(path) as container:  # the stamps FFmpeg gives are out of order
        stamps = [f.time for f in container.decode(video=0)]
    assert stamps != sorted(stamps)
    batches = list(_read_frames(path, 4))
    times = [t for batch_times, _ in batches for t in batch_times]
    greys = [int(np.median(f)) for _, frames in batches for f in frames]
    assert greys == sorted(greys) and len(greys) == 10  # the frames come in display order
    np.testing.assert_allclose(times, stamps[0] + np.arange(10) / 25, atol=1e-9)

    # Frames 3 and 4 dropped (stamps 0, 1, 2, 5, 6, 7 frames): the gap stays in the times.
    gap = str(tmp_path / "gap.avi")
    with av.open(gap, mode="w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in (0, 1, 2, 5, 6, 7):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 25 * k, np.uint8), "rgb24")
            frame.pts = k
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    (times, _), = _read_frames(gap, 8)
    np.testing.assert_allclose(times, np.array([0, 1, 2, 5, 6, 7]) / 25, atol=1e-9)


def test_an_anamorphic_video_is_read_with_square_pixels(tmp_path):
    """A clip whose pixels are not square (its sample aspect ratio: 2 stores a 128x32 picture
    as 64x32, 1/2 stores a 32x32 picture as 64x32) is read at its displayed size, a stored
    block stretched with it; stretching comes before the display rotation, as in players."""
    import fractions

    import av

    stored = np.zeros((32, 64, 3), np.uint8)
    stored[:8, :16] = 255  # a white block at the top left of the stored frame
    for ratio, rotation, shape, block in (((2, 1), 0, (32, 128), (8, 32)),
                                          ((1, 2), 0, (32, 32), (8, 8)),
                                          ((2, 1), 90, (128, 32), (32, 8))):
        path = str(tmp_path / f"anamorphic{ratio[0]}_{ratio[1]}_{rotation}.mp4")
        with av.open(path, mode="w") as container:
            stream = container.add_stream("libx264", rate=30)
            stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
            stream.codec_context.sample_aspect_ratio = fractions.Fraction(*ratio)
            stream.set_display_rotation(rotation)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(stored, "rgb24")))
            container.mux(stream.encode())
        (_, (frame,)), = _read_frames(path, 8)
        want = np.zeros((*shape, 3), np.uint8)
        if rotation:  # turned counterclockwise: the stored top left is now the bottom left
            want[-block[0]:, :block[1]] = 255
        else:
            want[:block[0], :block[1]] = 255
        assert frame.shape == want.shape, (ratio, rotation, frame.shape)
        assert np.abs(frame.astype(int) - want).mean() < 10, (ratio, rotation)


def test_a_broken_video_is_reported_and_skipped(workdir, tmp_path, capsys):
    fake = tmp_path / "clip.mp4"
    fake.write_bytes(b"not a video at all")
    out = tmp_path / "out"
    assert hgmt.predict.main([str(fake), str(tmp_path / "gone.mp4"), f"--workdir={workdir}",
                              f"--out_dir={out}"]) == 1
    err = capsys.readouterr().err
    assert "clip.mp4 cannot be opened" in err and "gone.mp4 not found" in err


def _write_clip(path, frames, times=None, fmt=None, options=None):
    """An H.264 clip of the (H,W,3) RGB `frames` at `times` seconds (default 30 frames/s), in
    ticks of 1/90000 s, without B-frames (decoding order is display order); `options` the
    muxer's (e.g. {"movflags": "faststart"})."""
    import fractions

    import av

    base = fractions.Fraction(1, 90000)
    times = np.arange(len(frames)) / 30 if times is None else times
    with av.open(str(path), mode="w", format=fmt, options=options or {}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], \
            "yuv420p"
        stream.options = {"bf": "0"}
        stream.time_base = stream.codec_context.time_base = base
        for rgb, t in zip(frames, times, strict=True):
            frame = av.VideoFrame.from_ndarray(rgb, "rgb24")
            frame.pts, frame.time_base = round(t / base), base
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _write_stampless_clip(path, fmt, codec, rate, count):
    """`count` grey 64x48 frames (shades 0, 40, 80, ...) encoded by `codec` at `rate`
    frames/s into `fmt`, the frames given no time stamps (the muxer times them, if at all)."""
    import av

    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for k in range(count):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 40 * k, np.uint8))
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def _decoded(path):
    """-> (frame times in seconds, (N,H,W,3) RGB frames) of a video file, as PyAV reads it."""
    import av

    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
    return [f.time for f in frames], np.stack([f.to_ndarray(format="rgb24") for f in frames])


def test_annotated_frames_are_scaled_down_to_fit_the_encoder():
    """libx264 refuses a side over 16384 px: a portrait 4K frame (2160x3840) with four task
    pictures beside it would be 2160 + 4*3840 = 17520 px wide. It is drawn at 1795 px tall
    (its frame 1009 px wide), 8189 px in all, the frame's aspect kept; a small frame is kept."""
    assert annotated_video.annotated_sizes(3840, 2160, 4) == (1795, 1009)
    assert 1009 + 4 * 1795 <= annotated_video.MAX_ANNOTATED_SIDE == 8192
    assert abs(1009 / 1795 - 2160 / 3840) < 1 / 1795
    assert annotated_video.annotated_sizes(240, 320, 4) == (240, 320)
    assert annotated_video.annotated_sizes(9000, 16, 0) == (8192, 14)  # no picture: the height caps


def test_a_long_found_by_label_ends_inside_a_narrow_frame():
    """The label of a window near a 160 px frame's right edge is moved left to end inside the
    frame, and one wider than the frame is cut with "...": its drawn pixels keep 2 px from
    either edge, where they ran past the right one."""
    long = ("foreground (depth+segm), larger than joints (pose2d, 9 of 16); nothing seen in "
            "the final window")

    def label_columns(found_by):
        window = person.Window(np.array([139.5, 40.0]), 30.0, found_by)  # x 125 to 154
        frame = annotated_video.annotate(np.zeros((64, 160, 3), np.uint8), {
            "window": window, "raw": {}, "crop_image": None, "frame": None})
        drawn = np.nonzero(frame[:20].any(axis=(0, 2)))[0]  # the rows above the window
        return drawn.min(), drawn.max()

    left, right = label_columns(long)
    assert left >= 2 and right <= 157, (left, right)
    left, right = label_columns("given")  # it fits: it starts at the window's left edge
    assert abs(left - 125) <= 1 and right <= 157, (left, right)
    left, right = label_columns("joints (pose2d)")  # moved left to end inside the frame
    assert left < 125 and right <= 157, (left, right)
    label = annotated_video.fitted_label(long, 156)
    assert label == "foreground (depth+segm..." and annotated_video.label_width(label) <= 156
    assert annotated_video.fitted_label("given", 156) == "given"


def test_a_frame_is_fitted_into_the_writers_size_keeping_its_aspect():
    """`fit` letterboxes: a smaller frame is enlarged, a larger one shrunk, to the largest
    size of its aspect within the target, centred on black; one within a pixel is padded."""
    small = np.full((48, 256, 3), 200, np.uint8)
    out = annotated_video.fit(small, (64, 352))  # x 4/3 -> 64 x 341, 5 + 6 black columns
    assert out.shape == (64, 352, 3)
    np.testing.assert_array_equal(out[:, 5:346], 200)
    np.testing.assert_array_equal(out[:, :5], 0)
    np.testing.assert_array_equal(out[:, 346:], 0)
    large = np.full((64, 352, 3), 90, np.uint8)
    out = annotated_video.fit(large, (48, 256))  # x 8/11 -> 47 x 256, the black row below
    np.testing.assert_array_equal(out[:47], 90)
    np.testing.assert_array_equal(out[47:], 0)
    odd = np.full((47, 255, 3), 7, np.uint8)
    out = annotated_video.fit(odd, (48, 256))  # padded to even sides, not resized
    np.testing.assert_array_equal(out[:47, :255], 7)
    assert out[47:].max() == 0 and out[:, 255:].max() == 0


@pytest.mark.slow
def test_a_clip_the_encoder_refuses_is_skipped_and_the_next_input_goes_on(
        workdir, tmp_path, monkeypatch, capsys):
    """A 16x4200 clip's annotated frame with four tasks is 16816 px wide. With no cap,
    libx264 refuses it (PyAV's ExternalError, neither an OSError nor a ValueError): the clip is
    reported and skipped, its partial outputs deleted, and the next clip is predicted. With
    the cap (MAX_ANNOTATED_SIDE) it is written, 8192 px wide."""
    tall, good = tmp_path / "tall.mp4", tmp_path / "good.mp4"
    _write_clip(tall, [np.full((4200, 16, 3), 128, np.uint8)])
    _write_clip(good, [np.full((48, 64, 3), 128, np.uint8)] * 2)
    out = tmp_path / "out"
    monkeypatch.setattr(annotated_video, "MAX_ANNOTATED_SIDE", 20000)
    assert hgmt.predict.main([str(tall), str(good), f"--workdir={workdir}",
                              f"--out_dir={out}", "--batch_size=1"]) == 1
    assert f"skipped {tall}" in capsys.readouterr().err
    assert sorted(os.listdir(out)) == ["good.annotated.mp4", "good.jsonl", "good.summary.json"]

    monkeypatch.setattr(annotated_video, "MAX_ANNOTATED_SIDE", 8192)
    assert hgmt.predict.main([str(tall), f"--workdir={workdir}", f"--out_dir={out}",
                              "--batch_size=1"]) == 0
    _, annotated = _decoded(out / "tall.annotated.mp4")
    assert annotated.shape == (1, 2046, 8192, 3)  # 7 + 4*2046 = 8191, padded to even


def test_a_damaged_packet_is_skipped_and_counted_not_the_whole_clip(workdir, tmp_path,
                                                                    caplog):
    """24 frames of noise whose 11th packet's payload is overwritten: the decoder rejects that
    packet (InvalidDataError); the other 23 frames are predicted and written, numbered 0-22
    as predicted (`frame`) and each at its source time (`time_s`: the 11th frame's time is
    missing, the frames after it keep theirs), the summary counts the damaged packet, one
    warning says so at the frame's time, and the command succeeds."""
    import logging

    import av

    clip = tmp_path / "damaged.mp4"
    rng = np.random.default_rng(0)
    _write_clip(clip, list(rng.integers(0, 255, (24, 64, 96, 3), np.uint8)))
    with av.open(str(clip)) as container:
        packets = [(p.pos, p.size) for p in container.demux(video=0) if p.size]
    pos, size = packets[10]
    data = bytearray(clip.read_bytes())
    data[pos + 4:pos + size] = b"\xff" * (size - 4)
    clip.write_bytes(bytes(data))

    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        assert hgmt.predict.main([str(clip), f"--workdir={workdir}", f"--out_dir={out}"]) == 0
    with open(out / "damaged.summary.json") as f:
        summary = json.load(f)
    assert summary["frames"] == 23 and summary["damaged_packets"] == 1
    assert summary["listed_frames"] == 24  # 23 decoded and 1 damaged: not cut short
    assert not [r for r in caplog.records if "cut short" in r.getMessage()]
    with open(out / "damaged.jsonl") as f:
        lines = [json.loads(line) for line in f]
    source_times = np.delete(np.arange(24), 10) / 30
    assert [line["frame"] for line in lines] == list(range(23))
    np.testing.assert_allclose([line["time_s"] for line in lines], source_times, atol=1e-4)
    times, annotated = _decoded(out / "damaged.annotated.mp4")
    assert len(annotated) == 23
    np.testing.assert_allclose(times, source_times, atol=1e-4)
    warnings = [r for r in caplog.records if "damaged packet" in r.getMessage()]
    assert len(warnings) == 1 and str(clip) in warnings[0].getMessage()
    assert "at 0.333 s" in warnings[0].getMessage()


def _decoding_out_of_memory(monkeypatch, from_packet: int) -> None:
    """Makes every video `video_file.Clip` opens fail to decode its packets from the
    `from_packet`-th (0-based) on with PyAV's MemoryError (FFmpeg's ENOMEM), as an allocation
    that fails inside the decoder does."""
    real_open = video_file._open

    class Packet:
        def __init__(self, packet, number):
            self._packet, self._number = packet, number

        def __getattr__(self, name):
            return getattr(self._packet, name)

        def decode(self):
            if self._number >= from_packet:
                raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")
            return self._packet.decode()

    class Container:
        def __init__(self, container):
            self._container = container

        def __getattr__(self, name):
            return getattr(self._container, name)

        def demux(self, *args, **kwargs):
            return (Packet(p, i) for i, p in enumerate(self._container.demux(*args, **kwargs)))

    monkeypatch.setattr(video_file, "_open", lambda path: Container(real_open(path)))


def test_a_failed_allocation_decoding_a_video_propagates_not_as_an_unreadable_file(
        tmp_path, monkeypatch):
    """A real clip decodes whole; with its decoder's allocations failing from its third
    packet (crafted: PyAV's MemoryError), reading it raises that MemoryError, not the
    ValueError of a file that cannot be decoded; so does opening it when av.open fails so."""
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, list(np.random.default_rng(0).integers(0, 255, (6, 64, 96, 3), np.uint8)))
    with video_file.Clip(str(clip)) as read:
        assert [len(frames) for _, frames in read.batches(4)] == [4, 2]
    _decoding_out_of_memory(monkeypatch, from_packet=2)
    with video_file.Clip(str(clip)) as read, pytest.raises(MemoryError) as e:
        list(read.batches(4))
    assert type(e.value) is av.error.MemoryError

    def open_out_of_memory(*args, **kwargs):
        raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(av, "open", open_out_of_memory)
    with pytest.raises(MemoryError) as e:
        video_file.Clip(str(clip))
    assert type(e.value) is av.error.MemoryError


def test_an_empty_video_and_one_ending_before_its_first_frame_are_named_so(tmp_path):
    """A video file of 0 bytes is called empty, and a Matroska file holding a video stream
    but no frame (PyAV meets its end probing it) is one that ends before its first frame,
    not just one that "cannot be opened"."""
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(ValueError) as e:
        video_file.Clip(str(empty))
    assert str(e.value) == f"video {empty} is empty (0 bytes)"
    no_frames = tmp_path / "no_frames.mkv"
    with av.open(str(no_frames), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        container.start_encoding()
        container.mux(stream.encode())
    with pytest.raises(ValueError) as e:
        video_file.Clip(str(no_frames))
    assert str(e.value).startswith(f"video {no_frames} ends before its first frame: it holds "
                                   f"no frames or is cut short (EOFError: "), str(e.value)


def test_an_mp4_cut_before_its_index_ends_is_named_cut_short_not_unopenable(workdir, tmp_path,
                                                                             capsys):
    """The demo generator's mp4 holds its index (the moov box) after its frames. Cut before
    the index (in its first box, among the frames), FFmpeg cannot open it; cut within the
    index, it opens with no video stream, no decoder or no frame, or whole where only the
    index's last metadata is cut. Each error says the file looks cut short or damaged and to
    fetch it again; a file that is no mp4 still "cannot be opened"."""
    whole = tmp_path / "whole.mp4"
    rng = np.random.default_rng(0)
    synthetic.write_video(str(whole), rng.integers(0, 255, (4, 240, 320, 3), np.uint8))
    data = whole.read_bytes()
    index = data.rindex(b"moov") - 4  # where its box starts
    assert data[4:8] == b"ftyp" and index > len(data) // 2
    said = (" looks cut short or damaged, the index of its frames (the mp4 moov box) missing "
            "or incomplete")
    for end in (20, index // 2):
        cut = tmp_path / f"cut{end}.mp4"
        cut.write_bytes(data[:end])
        with pytest.raises(ValueError) as e:
            video_file.Clip(str(cut))
        assert str(e.value).startswith(f"video {cut}{said} (InvalidDataError: "), str(e.value)
        assert str(e.value).endswith("): download or export it again"), str(e.value)
    other = tmp_path / "other.mp4"
    other.write_bytes(b"not a video at all" * 100)
    with pytest.raises(ValueError, match=r"other\.mp4 cannot be opened \(InvalidDataError"):
        video_file.Clip(str(other))

    cuts = [tmp_path / "within" / f"cut{end}.mp4" for end in range(index + 8, len(data), 50)]
    cuts[0].parent.mkdir()
    for cut in cuts:
        cut.write_bytes(data[:int(cut.stem[3:])])
    out = tmp_path / "out"
    assert hgmt.predict.main([*map(str, cuts), f"--workdir={workdir}", f"--out_dir={out}"]) == 1
    skipped = dict(line.split(": ", 1) for line in capsys.readouterr().err.splitlines()
                   if line.startswith("skipped "))
    for cut in cuts:
        if f"skipped {cut}" in skipped:
            assert re.fullmatch(rf"video {re.escape(str(cut) + said)}( \(.*\))?: download or "
                                rf"export it again", skipped[f"skipped {cut}"]), skipped
        else:
            summary = json.loads((out / f"{cut.stem}.summary.json").read_text())
            assert summary["frames"] == 4 and int(cut.stem[3:]) > len(data) - 200, cut
    assert len(skipped) >= len(cuts) - 4 and f"skipped {cuts[0]}" in skipped


def test_out_of_host_memory_reading_a_video_stops_naming_it_not_skips_it(workdir, tmp_path,
                                                                          monkeypatch):
    """Out of host memory while a video is decoded (crafted, as above) stops the command in
    one line naming the video and what to do, not "skipped <path>: cannot be decoded" and on
    to the next input; nothing partial is left, and the image before it is predicted."""
    clip = tmp_path / "clip.mp4"
    _write_clip(clip, list(np.random.default_rng(0).integers(0, 255, (6, 64, 96, 3), np.uint8)))
    image = tmp_path / "person.jpg"
    _stick_figure(str(image))
    out = tmp_path / "out"
    _decoding_out_of_memory(monkeypatch, from_packet=2)
    with pytest.raises(SystemExit) as e:
        hgmt.predict.main([str(image), str(clip), f"--workdir={workdir}", f"--out_dir={out}",
                           "--batch_size=2"])
    assert str(e.value.code).startswith(
        f"error: OutOfHostMemory: out of host memory while reading or predicting {clip} "
        f"(MemoryError: [Errno 12] Cannot allocate memory), which is not a fault of the file; "
        f"free the machine's memory"), e.value.code
    assert sorted(os.listdir(out)) == ["person.json", "person.png"]


def test_a_video_pyav_fails_is_skipped_but_out_of_memory_is_not(tmp_path, monkeypatch,
                                                                 capsys):
    """`_predict_video`'s order of cases: an error of PyAV's (the encoder refusing the clip,
    say) skips the video, reported; PyAV's out of memory, also an FFmpegError, stops as
    OutOfHostMemory naming it; so does Python's MemoryError for a group of images, and for the
    probes that tell a video from an image."""
    import errno

    import av

    import hgmt.predict as command

    def failing(error):
        def predict_video(*args, **kwargs):
            raise error
        return predict_video

    monkeypatch.setattr(video, "predict_video", failing(
        av.error.ExternalError(-542398533, "Generic error in an external library")))
    assert command._predict_video(None, str(tmp_path / "a.mp4"), str(tmp_path), None) is False
    assert capsys.readouterr().err.startswith(f"skipped {tmp_path / 'a.mp4'}: ")
    monkeypatch.setattr(video, "predict_video", failing(
        av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")))
    with pytest.raises(host_memory.OutOfHostMemory, match=r"while reading or predicting .*a\.mp4 "):
        command._predict_video(None, str(tmp_path / "a.mp4"), str(tmp_path), None)

    def no_memory(path):
        raise MemoryError()

    monkeypatch.setattr(image_file, "read_image", no_memory)
    with pytest.raises(host_memory.OutOfHostMemory, match=r"while reading or predicting .*x\.jpg, "
                                                    r".*y\.jpg \(MemoryError"):
        command._predict_images(None, [str(tmp_path / "x.jpg"), str(tmp_path / "y.jpg")],
                                str(tmp_path), None)
    monkeypatch.setattr(av, "open", failing(av.error.MemoryError(errno.ENOMEM, "no memory")))
    for probe in (video_file.plays_as_video, video_file.sound_only):
        with pytest.raises(host_memory.OutOfHostMemory,
                           match=r"while PyAV probed whether .*a\.gif "):
            probe(str(tmp_path / "a.gif"))


def test_out_of_host_memory_probing_an_input_stops_in_one_line_naming_it(workdir, tmp_path,
                                                                        monkeypatch, capsys):
    """PyAV running out of memory (an injected fault: av.open raising FFmpeg's ENOMEM, which
    cannot be produced for real here) while hgmt.predict probes whether a GIF is a video,
    before the model loads, stops the command with one line naming the GIF and what to do,
    and writes nothing; the same probe for an image that does not decode (`_undecodable_hint`)
    names that file, not wrapped again as the images' group."""
    import PIL.Image

    frames = [PIL.Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (0, 255)]
    gif = tmp_path / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100)
    image = tmp_path / "person.jpg"
    _stick_figure(str(image))
    out = tmp_path / "out"

    def no_memory(*args, **kwargs):
        raise av.error.MemoryError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(av, "open", no_memory)
    with pytest.raises(SystemExit) as e:
        hgmt.predict.main([str(image), str(gif), f"--workdir={workdir}", f"--out_dir={out}"])
    assert e.value.code == (
        f"error: OutOfHostMemory: out of host memory while PyAV probed whether {gif} is a "
        f"video (MemoryError: [Errno 12] Cannot allocate memory), which is not a fault of the "
        f"file; free the machine's memory (other processes) and run the command again")
    assert not out.exists()
    damaged = tmp_path / "damaged.dat"
    damaged.write_bytes(b"not an image")
    with pytest.raises(host_memory.OutOfHostMemory) as e:
        hgmt.predict._predict_images(None, [str(image), str(damaged)], str(out), None)
    assert str(e.value).startswith(f"out of host memory while PyAV probed whether {damaged} "), \
        str(e.value)


def test_a_clip_cut_short_is_predicted_to_its_end_and_named_with_progress_lines(
        workdir, tmp_path, caplog, monkeypatch):
    """An mp4 whose index comes first (faststart) cut to 70 % of its bytes: the frames that
    are there are predicted and written, the summary gives the 24 frames its header lists,
    and a warning names the clip as cut short; a progress line is logged on the way (every
    batch here) with the frames done of those listed."""
    import logging
    import re

    clip = tmp_path / "cut.mp4"
    rng = np.random.default_rng(1)
    _write_clip(clip, list(rng.integers(0, 255, (24, 64, 96, 3), np.uint8)),
                options={"movflags": "faststart"})
    data = clip.read_bytes()
    clip.write_bytes(data[:len(data) * 7 // 10])
    monkeypatch.setattr(video, "PROGRESS_EVERY_S", 0.0)
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO):
        assert hgmt.predict.main([str(clip), f"--workdir={workdir}", f"--out_dir={out}",
                                  "--batch_size=4"]) == 0
    summary = json.loads((out / "cut.summary.json").read_text())
    assert summary["listed_frames"] == 24
    assert 0 < summary["frames"] + summary["damaged_packets"] < 24, summary
    messages = [r.getMessage() for r in caplog.records]
    cut_short = [m for m in messages if "frames its header lists were there to read" in m]
    assert len(cut_short) == 1 and cut_short[0].startswith(f"{clip}: ")
    assert cut_short[0].endswith(f" of the 24 frames its header lists were there to read "
                                 f"({summary['frames']} decoded): the file is cut short")
    progress = [m for m in messages if re.fullmatch(rf"{clip}: \d+ of 24 frames, .* frames/s.*", m)]
    assert len(progress) >= 2, messages

    # A trimmed clip (its first 10 frames before the edit list's start: decoded, not shown)
    # is whole: 14 frames predicted of the 24 listed, no warning.
    import av

    trimmed = tmp_path / "trimmed.mp4"
    _write_clip(clip, list(rng.integers(0, 255, (24, 64, 96, 3), np.uint8)))
    with av.open(str(clip)) as source, av.open(str(trimmed), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.pts, packet.dts = packet.pts - 30000, packet.dts - 30000  # 10 frames
                packet.stream = stream
                target.mux(packet)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert hgmt.predict.main([str(trimmed), f"--workdir={workdir}", f"--out_dir={out}"]) == 0
    summary = json.loads((out / "trimmed.summary.json").read_text())
    assert (summary["frames"], summary["listed_frames"]) == (14, 24)
    assert not [r for r in caplog.records if "cut short" in r.getMessage()]


def test_a_faststart_mp4_cut_among_its_frames_is_cut_short_not_missing_its_index(tmp_path,
                                                                                  caplog):
    """An mp4 whose index (the moov box) comes before its frames (faststart), cut among the
    frames, keeps its whole index: it is not said to miss it (`index_missing`,
    `index_error`), its frames before the cut decode, and it is warned about as cut short
    (fewer frames' packets there than its header lists). The same clip with its index last,
    cut at the same byte, misses it."""
    import logging

    frames = list(np.random.default_rng(2).integers(0, 255, (24, 64, 96, 3), np.uint8))
    for name, options in (("faststart", {"movflags": "faststart"}), ("index_last", None)):
        _write_clip(tmp_path / f"{name}.mp4", frames, options=options)
    data = (tmp_path / "faststart.mp4").read_bytes()
    moov, mdat = data.find(b"moov") - 4, data.find(b"mdat") - 4
    assert 0 < moov < mdat  # the index first
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:len(data) * 7 // 10])
    assert len(data) * 7 // 10 > mdat + 8  # inside the frame data
    assert not video_file.index_missing(str(cut))
    assert video_file.index_error(str(cut)) is None

    with video_file.Clip(str(cut)) as clip:
        decoded = sum(len(batch) for _, batch in clip.batches(4))
        assert 0 < decoded + clip.damaged_packets < 24
        assert clip.listed_frames == 24 and clip.read_packets < 24
        caplog.clear()  # the cut packet's warning, if its frame is there in part
        with caplog.at_level(logging.WARNING):
            video._warn_if_cut_short(str(cut), clip, decoded)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cut}: {clip.read_packets} of the 24 frames its header lists were there to read "
        f"({decoded} decoded): the file is cut short"]

    last = (tmp_path / "index_last.mp4").read_bytes()
    assert last.find(b"moov") > last.find(b"mdat")
    (tmp_path / "cut_last.mp4").write_bytes(last[:len(data) * 7 // 10])
    assert video_file.index_missing(str(tmp_path / "cut_last.mp4"))


def test_the_index_search_gives_up_past_its_box_limit(tmp_path, monkeypatch):
    """`index_missing` reads at most MAX_TOP_LEVEL_BOXES top-level boxes: an mp4 of an ftyp
    and empty free boxes without a moov misses its index within the limit, and past it cannot
    tell (False), where a damaged file of millions of tiny boxes was walked to its end."""
    monkeypatch.setattr(video_file, "MAX_TOP_LEVEL_BOXES", 50)
    box = lambda kind, body=b"": (8 + len(body)).to_bytes(4, "big") + kind + body  # noqa: E731
    path = tmp_path / "boxes.mp4"
    for free, missing in ((48, True), (49, False)):
        path.write_bytes(box(b"ftyp", b"isom") + box(b"free") * free)
        assert video_file.index_missing(str(path)) is missing, free


def test_a_clip_whose_size_changes_is_predicted_frame_by_frame(workdir, tmp_path):
    """Two clips joined as MPEG-TS (a 64x48 red one, then a 96x64 blue one) and remuxed to
    .mkv: each frame is read and predicted at its own size, and every annotated frame is
    fitted into the first one's size (48 x (64 + 4*48)): the blue frames are shrunk into it,
    not dropped or cut, and the annotated video keeps every frame's time."""
    import av

    red, blue = (200, 30, 30), (30, 30, 200)
    _write_clip(tmp_path / "a.ts", [np.full((48, 64, 3), red, np.uint8)] * 3, fmt="mpegts")
    _write_clip(tmp_path / "b.ts", [np.full((64, 96, 3), blue, np.uint8)] * 3,
                times=np.arange(3, 6) / 30, fmt="mpegts")
    joined = tmp_path / "ab.ts"
    joined.write_bytes((tmp_path / "a.ts").read_bytes() + (tmp_path / "b.ts").read_bytes())
    clip = tmp_path / "ab.mkv"
    with av.open(str(joined)) as source, av.open(str(clip), "w") as target:
        stream = target.add_stream_from_template(source.streams.video[0])
        for packet in source.demux(video=0):
            if packet.dts is not None:
                packet.stream = stream
                target.mux(packet)
    assert {f.shape for f in (frames for _, batch in _read_frames(str(clip), 8)
                              for frames in batch)} == {(48, 64, 3), (64, 96, 3)}

    out = tmp_path / "out"
    assert hgmt.predict.main([str(clip), f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=0,0,20,20"]) == 0
    with open(out / "ab.jsonl") as f:
        lines = [json.loads(line) for line in f]
    assert len(lines) == 6  # .mkv keeps milliseconds
    np.testing.assert_allclose([line["time_s"] for line in lines], np.arange(6) / 30,
                               atol=1e-3)
    assert [line["bbox"][2] for line in lines] == [20] * 6
    assert [line["image_size_px"] for line in lines] == [[64, 48]] * 3 + [[96, 64]] * 3
    times, annotated = _decoded(out / "ab.annotated.mp4")
    assert annotated.shape == (6, 48, 64 + 4 * 48, 3)
    np.testing.assert_allclose(times, [line["time_s"] for line in lines], atol=1e-4)
    # The frame's part, right of the window drawn at the top left: red, then blue shrunk to
    # 47 x 70 (the annotated 64 x (96 + 4*64) scaled by 8/11 into 256 px).
    assert np.abs(np.median(annotated[:3, 20:40, 30:60], axis=(1, 2)) - red).max() <= 12
    assert np.abs(np.median(annotated[3:, 20:40, 30:60], axis=(1, 2)) - blue).max() <= 12


def test_a_variable_frame_rate_clip_keeps_its_frame_times(workdir, tmp_path):
    """Frames at irregular times (gaps of 1, 4 and 11 frames at 30 frames/s): the annotated
    video shows each at its source time, as the JSON lines say, not at an average rate."""
    times = np.array([0, 1, 2, 6, 7, 18]) / 30
    clip = tmp_path / "vfr.mp4"
    _write_clip(clip, [np.full((48, 64, 3), 20 * k, np.uint8) for k in range(6)], times)
    out = tmp_path / "out"
    assert hgmt.predict.main([str(clip), f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=0,0,20,20"]) == 0
    with open(out / "vfr.jsonl") as f:
        np.testing.assert_allclose([json.loads(line)["time_s"] for line in f], times,
                                   atol=1e-4)
    annotated_times, _ = _decoded(out / "vfr.annotated.mp4")
    np.testing.assert_allclose(annotated_times, times, atol=1e-4)


def test_a_clip_starting_late_is_timed_on_its_own_clock(workdir, tmp_path):
    """An MPEG-TS clip whose time stamps start at 1000 s (a broadcast or camcorder capture):
    the JSON lines' time_s count from its first frame, as a player does, at the frames'
    spacing; the summary records the start once; the annotated mp4 starts at 0 (no empty
    edit 1000 s long before its frames)."""
    import av

    times = 1000 + np.arange(10) / 30
    clip = tmp_path / "late.ts"
    _write_clip(clip, [np.full((48, 64, 3), 20 * k, np.uint8) for k in range(10)], times,
                fmt="mpegts")
    out = tmp_path / "out"
    assert hgmt.predict.main([str(clip), f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=0,0,20,20"]) == 0
    with open(out / "late.jsonl") as f:
        lines = [json.loads(line) for line in f]
    np.testing.assert_allclose([line["time_s"] for line in lines], np.arange(10) / 30,
                               atol=1e-4)
    with open(out / "late.summary.json") as f:
        assert json.load(f)["start_time_s"] == 1000.0
    annotated_times, annotated = _decoded(out / "late.annotated.mp4")
    assert len(annotated) == 10
    np.testing.assert_allclose(annotated_times, np.arange(10) / 30, atol=1e-4)
    with av.open(str(out / "late.annotated.mp4")) as container:
        assert container.duration / 1e6 < 1  # microseconds: the frames' third of a second


def test_frames_without_time_stamps_are_a_frame_apart(tmp_path):
    """A raw H.264 stream (named .mp4, as a camera's dump may be) has no time stamps: its
    frames are timed one frame apart at the rate the stream states (10 frames/s), not all at
    0, nor at the 25 frames/s PyAV gives as its average rate (the raw demuxer's default)."""
    raw = tmp_path / "raw.mp4"
    _write_stampless_clip(raw, "h264", "libx264", rate=10, count=5)
    with video_file.Clip(str(raw)) as clip:
        assert clip.frame_rate == 25
        times = [t for batch, _ in clip.batches(2) for t in batch]
    np.testing.assert_allclose(times, np.arange(5) / 10, atol=1e-6)


def test_a_clip_stating_no_frame_rate_is_taken_as_30_frames_a_second(workdir, tmp_path):
    """An IVF file (VP8 at 10 frames/s, as vpxenc writes it) states no average rate to PyAV:
    hgmt takes 30 frames/s. The frames keep their own time stamps in the JSON lines and the
    annotated video; the assumed rate sets only the annotated video's last frame's length,
    1/30 s."""
    import av

    clip = tmp_path / "vp8.ivf"
    _write_stampless_clip(clip, "ivf", "libvpx", rate=10, count=4)
    with av.open(str(clip)) as container:
        assert not container.streams.video[0].average_rate  # PyAV 18: None; 19: AVRational(0, 0)
    with video_file.Clip(str(clip)) as opened:
        assert opened.frame_rate == 30
    out = tmp_path / "out"
    assert hgmt.predict.main([str(clip), f"--workdir={workdir}", f"--out_dir={out}",
                              "--bbox=0,0,20,20"]) == 0
    with open(out / "vp8.jsonl") as f:
        np.testing.assert_allclose([json.loads(line)["time_s"] for line in f],
                                   np.arange(4) / 10, atol=1e-4)
    annotated_times, _ = _decoded(out / "vp8.annotated.mp4")
    np.testing.assert_allclose(annotated_times, np.arange(4) / 10, atol=1e-4)
    with av.open(str(out / "vp8.annotated.mp4")) as container:
        assert abs(container.duration / 1e6 - (0.3 + 1 / 30)) < 1e-3  # microseconds


def test_an_animated_png_named_png_is_a_video_and_a_still_one_an_image(tmp_path):
    """APNG's usual name is .png: its acTL chunk (read from the chunk headers alone) makes it
    a video, predicted frame by frame; a still PNG stays an image."""
    from PIL import Image

    frames = [Image.fromarray(np.full((32, 48, 3), 60 * k, np.uint8)) for k in range(3)]
    frames[0].save(tmp_path / "anim.png", save_all=True, append_images=frames[1:],
                   duration=100)
    frames[0].save(tmp_path / "still.png")
    assert video_file.animated_png(str(tmp_path / "anim.png"))
    assert video_file.is_video(str(tmp_path / "anim.png"))
    assert not video_file.animated_png(str(tmp_path / "still.png"))
    assert not video_file.is_video(str(tmp_path / "still.png"))
    with video_file.Clip(str(tmp_path / "anim.png")) as clip:
        assert sum(len(batch) for batch, _ in clip.batches(8)) == 3


def test_a_name_that_is_not_utf8_is_text_every_json_reader_takes():
    """`paths.text`, which every JSON output names its files with: a Latin-1 name's
    undecodable byte is written as `\\xe9`, text that encodes as UTF-8, where its surrogate
    escape `\\udce9` would be refused by strict JSON readers; a UTF-8 name is itself."""
    import json

    from hgmt import paths

    latin = os.fsdecode(b"/in/caf\xe9.jpg")
    assert "\udce9" in latin
    assert paths.text(latin) == "/in/caf\\xe9.jpg"
    json.loads(json.dumps(paths.text(latin), ensure_ascii=False).encode("utf-8"))
    assert paths.text("/in/café.jpg") == "/in/café.jpg"


def test_an_image_whose_name_is_not_utf8_is_read(tmp_path):
    """A Latin-1 file name (Python's surrogate escapes): read as the same image under another
    name, upright by its EXIF orientation, where cv2.imread crashed the process."""
    from PIL import Image

    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:, :10] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # turned 90 degrees clockwise to be shown
    image.save(tmp_path / "plain.jpg", exif=exif)
    latin = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    shutil.copy(tmp_path / "plain.jpg", latin)
    upright = image_file.read_image(str(tmp_path / "plain.jpg"))
    assert upright.shape == (60, 40, 3)
    np.testing.assert_array_equal(image_file.read_image(os.fsdecode(latin)), upright)


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_recorded_as_text_every_json_reader_takes(workdir,
                                                                             tmp_path):
    """An image and a video of Latin-1 names (Python's surrogate escapes): their JSON records
    name them with the undecodable byte as `\\xe9`, text that encodes as UTF-8, where a lone
    surrogate escape (`\\udce9`) was written that strict JSON readers refuse."""
    import subprocess

    from PIL import Image

    still = Image.fromarray(np.full((32, 48, 3), 90, np.uint8))
    image = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    still.save(os.fsdecode(image))
    clip = os.path.join(os.fsencode(tmp_path), b"f\xeate.gif")
    still.save(os.fsdecode(clip), save_all=True, duration=100,
               append_images=[Image.fromarray(np.full((32, 48, 3), 30, np.uint8))])
    out = tmp_path / "out"
    # The command's own process: the names it prints are not UTF-8 (its console writes them
    # as their bytes), which pytest's capture in an xdist worker refuses.
    proc = subprocess.run(
        [sys.executable, "-m", "hgmt.predict", os.fsdecode(image), os.fsdecode(clip),
         f"--workdir={workdir}", f"--out_dir={out}", "--bbox=0,0,30,30"], capture_output=True,
        timeout=600, env={**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))})
    assert proc.returncode == 0, proc.stderr[-3000:]
    named = {}
    for name in os.listdir(os.fsencode(out)):
        if name.endswith(b".json"):
            text = (out / os.fsdecode(name)).read_bytes().decode("utf-8")
            assert "\\ud" not in text, name
            record = json.loads(text)
            for key in ("image", "video", "jsonl", "annotated_video"):
                if key in record:
                    named[name, key] = record[key]
                    record[key].encode("utf-8")
    assert named == {(b"caf\xe9.json", "image"): f"{tmp_path}/caf\\xe9.jpg",
                     (b"f\xeate.summary.json", "video"): f"{tmp_path}/f\\xeate.gif",
                     (b"f\xeate.summary.json", "jsonl"): f"{out}/f\\xeate.jsonl",
                     (b"f\xeate.summary.json", "annotated_video"):
                         f"{out}/f\\xeate.annotated.mp4"}


def test_a_file_given_again_is_predicted_once(tmp_path, capsys):
    """The same file by the same path, another spelling of it and a link to it: kept once,
    in its first place, with a warning for each repeat."""
    (tmp_path / "a.jpg").write_bytes(b"x")
    (tmp_path / "b.jpg").write_bytes(b"y")
    os.symlink(tmp_path / "a.jpg", tmp_path / "link.jpg")
    a, b = str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")
    again = [a, b, a, f"{tmp_path}/./a.jpg", str(tmp_path / "link.jpg")]
    assert prediction_files.distinct(again) == [a, b]
    assert capsys.readouterr().err.splitlines() == [
        f"warning: {path} is {a} given again: predicted once" for path in again[2:]]


def test_next_pts_keeps_times_and_steps_past_repeated_ones():
    import fractions

    base = fractions.Fraction(1, 90000)
    assert annotated_video.next_pts(0.2, 9000, base, 30.0) == 18000
    # Not after the last: one frame on.
    assert annotated_video.next_pts(0.1, 9000, base, 30.0) == 12000
    assert annotated_video.next_pts(0.0, None, base, 30.0) == 0


@pytest.mark.slow
def test_evaluating_at_another_image_size_says_so_in_one_line_and_in_its_file_name(
        workdir, tmp_path):
    """`python -m hgmt.evaluate --config.image_size=...` other than the size trained at: a
    warning line, in the command's own format ("warning: ", not Python's default
    "WARNING:root:", which an import may have set up), and a file name of its own, so the
    trained size's evaluation is not replaced."""
    import shutil
    import subprocess
    import sys

    copy = tmp_path / "w"
    shutil.copytree(workdir, copy)
    trained = json.loads((copy / "config.json").read_text())["image_size"]
    other = trained * 2
    proc = subprocess.run([sys.executable, "-m", "hgmt.evaluate", "--workdir=w",
                           f"--config.image_size={other}", "--max_examples=2"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    named = copy / f"eval_test_2_{other}px"  # by its absolute path, as others name theirs
    assert proc.stderr.splitlines()[-1] == f"wrote {named}.json and {named}.md"
    assert proc.stderr.splitlines()[0] == (
        f"warning: config.image_size={other}: the model was trained at {trained} px, so it "
        f"sees people "
        f"at another scale than it learnt, and 3D decoding reads the crop's scale: expect "
        f"other results")
    assert (copy / f"eval_test_2_{other}px.json").is_file()
    assert not (copy / "eval_test_2.json").exists()


def test_a_restore_with_the_callers_config_does_not_upgrade_config_json_again(
        workdir, monkeypatch):
    """The caller's config was read from config.json already (its upgrade warnings logged
    then): the restore reads the file as written, for the model fields and the image size it
    compares, and logs none of them again."""
    config = run_config.load_config(workdir)
    upgraded = []
    monkeypatch.setattr(run_config, "_fill_added_fields", lambda *a, **k: upgraded.append(a))
    config.image_size *= 2  # the warning of another size reads config.json's
    trained_model.restore_for_inference(workdir, config=config)
    assert upgraded == []


@pytest.mark.slow
def test_evaluate_and_predict_write_the_compilation_cache_they_are_given(workdir, tmp_path):
    """`--compilation_cache` of hgmt.evaluate and hgmt.predict, each command its own process
    (JAX reads the setting once): the evaluation step and the model's pass are written under
    the folder given, so a later evaluation or prediction of the same model loads them."""
    import subprocess

    cache = tmp_path / "cache"
    photo = str(tmp_path / "photo.jpg")
    _stick_figure(photo)
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}

    def run(command: str, *argv: str) -> set[str]:
        before = set(os.listdir(cache)) if cache.exists() else set()
        proc = subprocess.run([sys.executable, "-m", command, f"--workdir={workdir}",
                               f"--compilation_cache={cache}", *argv], capture_output=True,
                              text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return {name.split("-")[0] for name in set(os.listdir(cache)) - before}

    evaluated = run("hgmt.evaluate", "--max_examples=2", f"--out_file={tmp_path / 'e.json'}")
    predicted = run("hgmt.predict", f"--out_dir={tmp_path / 'p'}", "--bbox=100,20,280,320",
                    photo)
    assert "jit_eval_step" in evaluated, evaluated
    assert "jit_per_crop" in predicted, predicted  # the model pass (Predictor._executable)


def test_a_predictor_refuses_a_batch_below_one_before_reading_the_checkpoint(tmp_path):
    """`Predictor(batch_size=0)` (or -1): one ValueError naming the argument, before the
    checkpoint is read (an empty folder is no workdir either); before, it failed deep inside
    `predict` (range() arg 3 must not be zero)."""
    for batch_size in (0, -1):
        with pytest.raises(ValueError, match=f"^batch_size={batch_size}: give the number of "):
            prediction.Predictor(str(tmp_path), batch_size=batch_size)


def _no_model_predictor(crop_metres: float = 2.35) -> prediction.Predictor:
    """A Predictor with no model or checkpoint, for `_result`, which decodes given outputs:
    the default camera and `crop_metres`."""
    model = object.__new__(prediction.Predictor)
    model.focal_px, model.crop_metres = None, crop_metres
    return model


def test_a_crops_label_pixels_map_back_to_the_original_images_pixels():
    """A 24 x 16 image, the window bbox (4, 0, 16, 16) (centre (11.5, 7.5)) at 4 x 4 label px:
    label px (col j, row i) is the 4 x 4 block of image columns 4 + 4j..7 + 4j and rows
    4i..4i + 3 (label x = (x - 11.5) / 4 + 1.5, so image x 8 -> 0.625 and 11 -> 1.375 round
    to column 1, by hand), whose centre is (5.5 + 4j, 1.5 + 4i). A heatmap peak at label
    (col 2, row 1) is image (13.5, 5.5); a part class there fills image columns 12..15, rows
    4..7, and nothing outside the window (columns 0..3 and 20..23); a depth class 12 at label
    (col 1, row 2), bin 2, is (2 - 0.5) * 45 = 67.5 mm behind the pelvis, at image columns
    8..11, rows 8..11. The pelvis depth is focal * crop metres / the window's side in SURREAL
    px: 600 * 2.35 / (16 * 320 / 24) = 6.609375 m."""
    image = np.zeros((16, 24, 3), np.uint8)
    window = person.Window.given((4, 0, 16, 16))
    np.testing.assert_array_equal(window.centre, [11.5, 7.5])
    m_label = cropping.crop_affine(window.centre, window.side, 4)
    raw = {t: np.zeros((4, 4, TASKS[t].NUM_CHANNELS), np.float32)
           for t in ("pose2d", "segm", "depth")}
    raw["pose2d"][1, 2, 0] = 1.0  # joint 0 at label (col 2, row 1)
    raw["pose2d"][0, 3, 1] = 1.0  # joint 1 at label (col 3, row 0)
    raw["segm"][1, 2, 5] = 1.0
    raw["depth"][2, 1, 12] = 1.0
    result = _no_model_predictor()._result(image, window, 1, np.zeros((16, 16, 3), np.uint8),
                                           m_label, raw)
    np.testing.assert_allclose(result["joints2d"][:2], [[13.5, 5.5], [17.5, 1.5]], atol=1e-4)
    parts = np.zeros((16, 24), np.uint8)
    parts[4:8, 12:16] = 5
    np.testing.assert_array_equal(result["segm_image"], parts)
    depth = np.zeros((16, 24), np.uint8)
    depth[8:12, 8:12] = 12
    np.testing.assert_array_equal(result["depth_image"], depth)
    assert result["depth_rel_mm"][2, 1] == pytest.approx(67.5)
    assert np.isnan(np.delete(result["depth_rel_mm"].ravel(), 2 * 4 + 1)).all()
    assert float(result["frame"].batch["pelvis_depth"][0]) == pytest.approx(6.609375)


def test_a_window_overlaps_an_image_when_it_shares_a_pixel():
    """bbox (x, y, w, h) covers pixel columns x..x + w - 1: in a 20 x 10 image, (-10, 0, 10, 10)
    ends at column -1 and (20, 0, 10, 10) starts at column 20 (both outside); one pixel in
    ((-9, ...) ends at column 0, (19, ...) starts at column 19) overlaps; rows alike."""
    shape = (10, 20, 3)
    for bbox, inside in [((-10, 0, 10, 10), False), ((-9, 0, 10, 10), True),
                         ((20, 0, 10, 10), False), ((19, 0, 10, 10), True),
                         ((0, -10, 10, 10), False), ((0, -9, 10, 10), True),
                         ((0, 10, 10, 10), False), ((0, 9, 10, 10), True)]:
        assert person.Window.given(bbox).overlaps(shape) == inside, bbox
    with pytest.raises(ValueError, match="wholly outside the 20 x 10 image"):
        person.Window.given_in((20, 0, 10, 10), shape)


def test_label_pixels_count_within_the_image_up_to_its_outer_pixel_edges():
    """Label px 0..4 of one row whose centres fall at image x = k - offset: a 3 px wide image
    spans x -0.5..2.5 (pixel centres at integers), so offset 0.55 puts label px 1..3 on it
    (x 0.45..2.45; -0.55 and 3.45 are off) and offset 0.45 label px 0..2 (-0.45..1.45; 2.55 is
    off); rows alike, with y for x."""
    for offset, inside in [(0.55, [0, 1, 1, 1, 0]), (0.45, [1, 1, 1, 0, 0])]:
        along_x = np.array([[1.0, 0.0, -offset], [0.0, 1.0, 0.0]])
        np.testing.assert_array_equal(person._within_image((1, 5), along_x, (1, 3)),
                                      [np.array(inside, bool)])
        along_y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -offset]])
        np.testing.assert_array_equal(person._within_image((5, 1), along_y, (3, 1)),
                                      np.array(inside, bool)[:, None])


def test_a_search_goes_on_when_the_window_moves_along_one_axis_only():
    """A window of side 100 seen again 6 px to the right (more than CONVERGED * 100 = 5 px),
    its y and side unchanged, has not converged: the search goes on; 5 px has."""
    window = person.Window(np.array([50.0, 50.0]), 100.0, "joints (pose2d)")
    moved = person.Window(np.array([56.0, 50.0]), 100.0, "joints (pose2d)")
    assert not window.close_to(moved)
    assert person.after_pass(window, moved, first_pass=True) == (moved, False)
    near = person.Window(np.array([50.0, 55.0]), 105.0, "joints (pose2d)")
    assert window.close_to(near)
    assert person.after_pass(window, near, first_pass=True)[1]


def test_a_streams_start_is_its_start_stamp_times_its_time_base_else_the_containers():
    """A 25 fps stream's time base 1/25 s: a start stamp of 3 is 0.12 s; without one, the
    container's start in microseconds (1500000 -> 1.5 s); without either, None."""
    import fractions
    from types import SimpleNamespace as Space

    stream = Space(start_time=3, time_base=fractions.Fraction(1, 25))
    assert video_file.start_time(Space(start_time=1_500_000), stream) == pytest.approx(0.12)
    unstamped = Space(start_time=None, time_base=fractions.Fraction(1, 25))
    assert video_file.start_time(Space(start_time=1_500_000), unstamped) == 1.5
    assert video_file.start_time(Space(start_time=None), unstamped) is None


def test_a_clip_that_gives_no_start_counts_from_its_first_frame():
    """A clip whose file gives no start time: its first frame's stamp (10.04 s) becomes the
    start, so its frames at 10.04, 10.08 and 10.16 s are at 0, 0.04 and 0.12 s, the start
    recorded; batches of 2 frames."""
    from types import SimpleNamespace as Space

    clip = object.__new__(video_file.Clip)
    clip.start_time_s = None
    clip._stream = Space(sample_aspect_ratio=None)
    frames = [Space(to_ndarray=lambda format, k=k: np.full((4, 6, 3), k, np.uint8), rotation=0,
                    side_data={}) for k in range(3)]
    clip._shown = lambda: iter(zip([10.04, 10.08, 10.16], frames, strict=True))
    batches = list(clip.batches(2))
    assert [len(b[1]) for b in batches] == [2, 1]
    np.testing.assert_allclose([t for b in batches for t in b[0]], [0.0, 0.04, 0.12],
                               atol=1e-9)
    assert clip.start_time_s == 10.04
    assert [int(f[0, 0, 0]) for b in batches for f in b[1]] == [0, 1, 2]


def test_the_jsons_window_and_image_numbers_are_in_image_pixels():
    """A 24 x 16 image (W x H) predicted on bbox (3.25, -1.5, 7, 7) with crop metres 2.345678:
    'image_size_px' is [W, H] = [24, 16]; 'bbox' is the bbox given back (`--bbox` takes it);
    'crop_metres' is rounded to 4 decimals (2.3457); the crop's affine to 6 (crop_affine at 4
    label px: scale 4 / 7, offset 1.5 - 4 / 7 * centre, centre (6.25, 1.5) -> x offset
    1.5 - 25 / 7 = -2.0714286, y offset 1.5 - 6 / 7 = 0.6428571; a value of 1e-7 is 0)."""
    from hgmt.tasks.spec import Frame

    window = person.Window.given((3.25, -1.5, 7, 7))
    m_label = cropping.crop_affine(window.centre, window.side, 4)
    m_label[0, 1] = 1e-7
    result = {"window": window, "frame": Frame({}, None, (16, 24)), "passes": 2,
              "crop_metres": 2.345678, "crop": m_label}
    out = result_outputs.to_json(result, [])
    assert out["image_size_px"] == [24, 16]
    np.testing.assert_allclose(out["bbox"], [3.25, -1.5, 7, 7], atol=1e-12)
    assert out["crop_metres"] == 2.3457 and out["model_passes"] == 2
    assert out["crop_affine_image_to_label"] == [[0.571429, 0.0, -2.071429],
                                                 [0.0, 0.571429, 0.642857]]


def test_a_bbox_of_no_width_or_height_is_refused():
    """A bbox must have area: zero width or zero height is refused as a negative one is."""
    for bbox in ((0, 0, 0, 10), (0, 0, 10, 0), (0, 0, -1, 10)):
        with pytest.raises(ValueError, match="width and height must be positive"):
            person.Window.given(bbox)


def test_a_search_settles_within_converged_of_the_seen_windows_side():
    """`close_to` compares sides, as well as centres, to CONVERGED (5 %) of its own window's
    side: the same centre at 1.1 times the side has not converged. `after_pass` asks it of the
    window seen, and keeps the window run on (its crop is the one predicted on), named by what
    saw the person."""
    base = person.Window(np.array([50.0, 50.0]), 100.0, "whole image")
    assert not person.Window(np.array([50.0, 50.0]), 110.0, "").close_to(base)  # 10 > 5.5

    # 5.2 px larger: within 5 % of the seen side (5.26) but not of the side run on (5.0).
    seen = person.Window(np.array([51.0, 49.0]), 105.2, "joints (pose2d)")
    kept, done = person.after_pass(base, seen, first_pass=True)
    assert done and kept.found_by == "joints (pose2d)"
    np.testing.assert_array_equal([*kept.centre, kept.side], [50.0, 50.0, 100.0])
    far = person.Window(np.array([50.0, 50.0]), 106.0, "joints (pose2d)")  # 6 > 5.3
    assert person.after_pass(base, far, first_pass=True) == (far, False)


def test_a_silhouette_is_the_largest_8_connected_union_of_the_tasks_foregrounds():
    """Label px, 10 image px each. Two 3x3 squares touching at a corner (18 px, one region
    8-connected) outweigh a 4x4 square (16 px): the window is the pair's box, label
    [-0.5, 5.5]^2 -> image [-5, 55]^2, centre (25, 25), side 1.28 * 60 = 76.8. Two tasks'
    foregrounds that are halves of a 10x10 block are one silhouette, their union: box
    image [-5, 95]^2, centre (45, 45), side 128."""
    m_label = np.array([[0.1, 0.0, 0.0], [0.0, 0.1, 0.0]])
    foreground = np.zeros((20, 20), bool)
    foreground[0:3, 0:3] = foreground[3:6, 3:6] = True
    foreground[10:14, 10:14] = True
    window = person.find_window({"segm": {"foreground": foreground}}, m_label)
    np.testing.assert_allclose([*window.centre, window.side], [25.0, 25.0, 76.8])

    upper, lower = np.zeros((20, 20), bool), np.zeros((20, 20), bool)
    upper[0:5, 0:10] = lower[5:10, 0:10] = True
    window = person.find_window({"segm": {"foreground": upper},
                                 "depth": {"foreground": lower}}, m_label)
    assert window.found_by == "foreground (segm+depth)"
    np.testing.assert_allclose([*window.centre, window.side], [45.0, 45.0, 128.0])


def test_fifteen_joints_seen_are_counted_as_fewer_than_all():
    """One joint of 16 scored below MIN_JOINT_SCORE: the window is the box of the 15 and says
    so ('15 of 16'), as a person cut off by the frame's does."""
    joints = np.stack([np.linspace(10, 40, 16), np.linspace(5, 50, 16)], -1)
    scores = np.ones(16)
    scores[7] = 0.1
    window = person.find_window({"pose2d": {"joints": joints, "joint_scores": scores}},
                                np.eye(2, 3))
    assert window.found_by == "joints (pose2d, 15 of 16)"
    centre, side = cropping.person_box(np.delete(joints, 7, axis=0))
    np.testing.assert_allclose([*window.centre, window.side], [*centre, side])


def test_a_joint_is_near_the_silhouette_by_its_nearest_label_pixel():
    """A silhouette one label px wide at column c, 20x20 label px, identity crop: a joint is
    near it when its nearest pixel (rounded, clipped to the map) lies within NEAR_FOREGROUND
    (2) columns. 15 joints on it and one at x = c + 2.6 (pixel c + 3): 15 of 16 kept. One at
    x = -0.6 by column 0, or at x = 19.6 by column 19 (pixel -1 or 20, off the map): its
    nearest pixel is the edge's, on the silhouette, so all 16 are kept."""
    def found_by(column, x):
        silhouette = np.zeros((20, 20), bool)
        silhouette[:, column] = True
        joints = np.stack([np.full(16, float(column)), np.arange(1.0, 17.0)], -1)
        joints[15, 0] = x
        evidence = {"pose2d": {"joints": joints, "joint_scores": np.ones(16)},
                    "segm": {"foreground": silhouette}}
        return person.find_window(evidence, np.eye(2, 3)).found_by

    assert found_by(10, 12.4) == "joints (pose2d)"  # pixel 12: 2 columns off
    assert found_by(10, 12.6).endswith("joints (pose2d, 15 of 16)")  # pixel 13
    assert found_by(10, 7.6) == "joints (pose2d)"  # pixel 8
    assert found_by(0, -0.6) == "joints (pose2d)"
    assert found_by(19, 19.6) == "joints (pose2d)"


def test_a_label_pixel_is_on_the_image_when_its_centre_is_within_the_images_pixels():
    """A 10 x 20 (H x W) image: pixels span x in [-0.5, 19.5] and y in [-0.5, 9.5] (centres at
    integers), edges included. A one-column silhouette (rows 0-5) whose centres the crop puts
    at x = -0.5, or at x = 19.5, counts, as does its top row put at y = -0.5: its box is 1 x 6
    px around (-0.5, 2) or (19.5, 2.5), the window training's least side, 8. A column of 20
    rows put half a pixel lower (row k at y = k + 0.5) counts down to row 9 (y = 9.5), not row
    10 (y = 10.5 lies below the image though y < W): its box is image y 0..10, side
    1.28 * 10 = 12.8, centre (5, 5)."""
    shape = (10, 20)
    column = np.zeros((20, 20), bool)
    column[0:6, 0] = True
    left = person.find_window({"segm": {"foreground": column}},
                              np.array([[1.0, 0.0, 0.5], [0.0, 1.0, 0.5]]), shape)
    np.testing.assert_allclose([*left.centre, left.side], [-0.5, 2.0, 8.0])  # y -0.5..4.5
    right = person.find_window({"segm": {"foreground": column[:, ::-1]}},
                               np.array([[1.0, 0.0, -0.5], [0.0, 1.0, 0.0]]), shape)
    np.testing.assert_allclose([*right.centre, right.side], [19.5, 2.5, 8.0])
    tall = np.zeros((20, 20), bool)
    tall[:, 5] = True
    window = person.find_window({"segm": {"foreground": tall}},
                                np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -0.5]]), shape)
    np.testing.assert_allclose([*window.centre, window.side], [5.0, 5.0, 12.8])


def test_a_silhouettes_window_as_large_as_the_joints_does_not_replace_it():
    """12 of 16 joints seen, 5 image px per label px: the joints span image y 10..110 at x 25,
    training's window 100 * 1.6 = 160 px around (25, 55) (margins 35 % above, 25 % below);
    the silhouette's box is 125 px tall, its window 1.28 * 125 = 160 px too. Only a larger
    one replaces the joints' window."""
    m_label = np.array([[0.2, 0.0, 0.0], [0.0, 0.2, 0.0]])
    joints = np.stack([np.full(16, 5.0), np.linspace(2, 22, 16)], -1)
    scores = np.ones(16)
    scores[[1, 2, 3, 4]] = 0.1  # 12 seen, from y = 2 to 22 still
    silhouette = np.zeros((32, 32), bool)
    silhouette[0:25, 0:10] = True
    window = person.find_window({"pose2d": {"joints": joints, "joint_scores": scores},
                                 "segm": {"foreground": silhouette}}, m_label)
    assert window.found_by == "joints (pose2d, 12 of 16)"
    np.testing.assert_allclose([*window.centre, window.side], [25.0, 55.0, 160.0])


def test_only_a_window_over_max_window_px_and_the_crop_is_averaged_down(predictor):
    """A 1 px checkerboard's whole-image window: at exactly MAX_WINDOW_PX (a SURREAL frame's
    whole window) the crop is training's plain bilinear sampling, bit for bit; at 480 px it is
    averaged down, flat grey, where bilinear samples 7.5 px apart alias (grey levels about 64
    and 191); a window smaller than a crop larger than MAX_WINDOW_PX (a 512 px model) is
    sampled as it is, not resized first."""
    import copy

    def board(n):
        return np.repeat((np.indices((n, n)).sum(0) % 2 * 255).astype(np.uint8)[..., None], 3,
                         -1)

    def crop_and_bilinear(model, image):
        window = person.Window.whole(image.shape)
        (crop,), _ = model._crops([image], [window])
        size = model.image_size
        direct = cv2.warpAffine(image, cropping.crop_affine(window.centre, window.side, size),
                                (size, size), flags=cv2.INTER_LINEAR)
        return crop, direct

    small = copy.copy(predictor)
    small.image_size = 64
    crop, direct = crop_and_bilinear(small, board(prediction.MAX_WINDOW_PX))
    np.testing.assert_array_equal(crop, direct)
    crop, direct = crop_and_bilinear(small, board(480))
    assert direct.std() > 30 and crop.std() < 3 and abs(crop.mean() - 127.5) < 3
    large = copy.copy(predictor)
    large.image_size = 512
    crop, direct = crop_and_bilinear(large, board(400))
    np.testing.assert_array_equal(crop, direct)


def test_averaging_down_keeps_pixel_centres_where_cv2_resize_puts_them():
    """A 16 px ramp (x * 16) averaged to 4 px: pixel i is the mean of source pixels 4i..4i+3,
    (4i + 1.5) * 16 = 64 i + 24, and the map puts source x = 4i + 1.5 on i. Each axis is
    scaled by its own rounded size: 1000 x 333 by 0.2506 is 251 x 83 (rounded, not cut),
    scales 0.251 and 83/333; no side falls below 1 px."""
    ramp = np.repeat(np.tile((np.arange(16) * 16).astype(np.uint8), (4, 1))[..., None], 3, -1)
    small, to_small = prediction._averaged_down(ramp, 0.25)
    np.testing.assert_array_equal(small[0, :, 0], [24, 88, 152, 216])
    np.testing.assert_allclose(np.array([1.5, 5.5, 9.5, 13.5]) * to_small[0, 0] + to_small[0, 2],
                               [0, 1, 2, 3])

    small, to_small = prediction._averaged_down(np.zeros((333, 1000, 3), np.uint8), 0.2506)
    assert small.shape == (83, 251, 3)
    sy = 83 / 333
    np.testing.assert_allclose(to_small, [[0.251, 0.0, 0.5 * 0.251 - 0.5],
                                          [0.0, sy, 0.5 * sy - 0.5]])
    assert prediction._averaged_down(np.zeros((2, 3, 3), np.uint8), 0.1)[0].shape == (1, 1, 3)


def test_a_portrait_images_longer_side_spans_surreals_width():
    """Without focal_px a 480 x 640 (W x H) portrait is scaled by 320 / 640 = 0.5 (its longer
    side, its height, spans SURREAL's 320 px) and centred on (159.5, 119.5): x offset
    159.5 - 0.5 * 479 / 2 = 39.75, y offset 119.5 - 0.5 * 639 / 2 = -40.25."""
    np.testing.assert_allclose(prediction.decoding_frame((640, 480)),
                               [[0.5, 0.0, 39.75], [0.0, 0.5, -40.25]])
