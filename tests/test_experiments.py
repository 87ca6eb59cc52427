"""The investigations of experiments/: depth-free baselines and limb depth on crafted pixels,
demo clips and the real SURREAL annotation file; the learning curves of a training workdir."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))

import depth_baselines  # noqa: E402
import depth_errors  # noqa: E402
import learning_curves  # noqa: E402
import limb_depth  # noqa: E402
import window_scale  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments", "results")


def _committed(name: str) -> dict:
    """A raw output committed under experiments/results."""
    with open(os.path.join(RESULTS, name)) as f:
        return json.load(f)


def _real_entry(output: dict) -> dict:
    """The entry of a committed output that measured the real SURREAL clip 01_01_c0001 (its
    key: the path the command was given, or a name saying what it holds)."""
    entry, = (v for k, v in output.items() if "01_01_c0001" in k)
    return entry


@pytest.mark.slow
def test_learning_curves_from_a_training_workdir(demo_dataset, tmp_path):
    """configs/learning.py trained briefly through the one trainer: its evaluators' lines in
    evals.jsonl become curves (a resumed step counted once), JSON and PNG written."""
    from configs import learning
    from hgmt.training import loop

    config = learning.get_config("tasks=pose2d+segm,steps=4,eval_every=2,train_frames=every8")
    with config.unlocked():
        config.data_dir, config.dataset = demo_dataset[1], "surreal/all"
        config.image_size, config.batch_size, config.eval_batch_size = 32, 4, 4
        config.model.update(num_stacks=1, features=16, depth=2)
        config.worker_count, config.checkpoint_every = 0, 2
        config.evals.test.max_examples = config.evals.train.max_examples = 4
    workdir = str(tmp_path / "run")
    loop.train(config, workdir)
    with open(os.path.join(workdir, "evals.jsonl"), "a") as f:  # as a resume would repeat
        f.write(json.dumps({"step": 4, "evaluator": "test", "metrics": {"pose2d/pckh@0.5": 0.5,
                                                                       "segm/mean_iou": 0.25}}))
        f.write("\n")
    assert learning_curves.main([f"--workdir={workdir}", f"--out_dir={tmp_path}"]) == 0
    with open(tmp_path / "curves.json") as f:
        curves = json.load(f)
    assert sorted(curves) == ["test", "train"]
    assert [p["step"] for p in curves["test"]] == [2, 4]
    assert [p["step"] for p in curves["train"]] == [2, 4]
    assert curves["test"][-1]["metrics"]["pose2d/pckh@0.5"] == 0.5
    assert 0 <= curves["train"][0]["metrics"]["segm/mean_iou"] <= 1
    assert os.path.getsize(tmp_path / "curves.png") > 0
    with pytest.raises(FileNotFoundError, match="evals.jsonl"):
        learning_curves.load_curves(str(tmp_path / "nothing"))
    # A mistyped --workdir is named as no training workdir (it advised training again).
    with pytest.raises(SystemExit) as e:
        learning_curves.main([f"--workdir={tmp_path / 'nothing'}"])
    assert e.value.code == (f"error: {tmp_path / 'nothing'}/config.json not found: --workdir "
                            f"must be a directory written by `python -m hgmt.main "
                            f"--workdir=...`")


def test_learning_curves_title_names_the_frames_of_the_curves_drawn():
    """configs/learning.py's evaluators: test (every4, run every 300 steps) and validation
    (middle, never run there); curves of the test evaluator alone are titled with every4 only,
    and with a validation curve too with both."""
    from configs import learning

    config = learning.get_config()
    assert (config.evals.test.frames, config.evals.validation.frames) == ("every4", "middle")
    point = [{"step": 300, "metrics": {"pose2d/pckh@0.5": 0.7}}]
    assert learning_curves.title(config, {"test": point}) == (
        "pose2d+pose3d+depth+segm, 128 px, frames every4")
    assert learning_curves.title(config, {"test": point, "validation": point}) == (
        "pose2d+pose3d+depth+segm, 128 px, frames every4, middle")


def test_depth_errors_count_the_pixels_hgmts_depth_metric_counts():
    """Three 2x2 examples, by hand: the first scored, with foreground pixels of classes
    10, 12, 9 (ground-truth part 0: depth sees the body where segm does not) and 11, predicted
    10, 13, 9, 0: 2 of 4 in the right bin, 1 predicted background, 3 within one bin; the second
    a frame hgmt's check rejects and the third padding, both predicted right everywhere and
    left out, as hgmt's depth metric leaves them out."""
    import jax.numpy as jnp

    from hgmt.sources import body
    from hgmt.tasks import depth

    batch = {"depth_class": np.array([[[10, 12], [9, 11]]] + [np.full((2, 2), 10)] * 2),
             "segm": np.array([[[1, 2], [0, 2]]] + [np.ones((2, 2), int)] * 2),
             "mask": np.array([1.0, 1.0, 0.0]), "rejected": np.array([0.0, 1.0, 0.0])}
    classes = np.array([[[10, 13], [9, 0]]] + [np.full((2, 2), 10)] * 2)
    counts, per_part = depth_errors.tally(classes, batch)
    np.testing.assert_array_equal(counts, [2, 1, 3])
    np.testing.assert_array_equal(per_part[:3], [[1, 1], [1, 1], [0, 2]])
    assert not per_part[3:].any()
    r = depth_errors.summarize(counts, per_part)
    assert r["foreground_pixels"] == 4 and r["bin_accuracy"] == 0.5
    assert (r["predicted_background"], r["within_one_bin"]) == (0.25, 0.75)
    parts = r["bin_accuracy_per_part"]
    assert parts[body.PART_NAMES[0]] == 1.0 and parts[body.PART_NAMES[1]] == 0.0
    stats = depth.metric_stats({"depth_classes": jnp.asarray(classes)},
                               {k: jnp.asarray(v) for k, v in batch.items()})
    assert (float(stats["correct"]), float(stats["foreground"])) == (2, 4)


def test_depth_errors_without_a_checkpoint_is_one_line(tmp_path):
    """A workdir with the study's depth config and no checkpoint (as the committed study runs
    are): the command ends with exit status 1 and one line naming the workdir, no traceback."""
    import shutil

    workdir = tmp_path / "depth"
    workdir.mkdir()
    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "study", "runs",
                             "depth", "config.json"), workdir)
    with pytest.raises(SystemExit) as exit_:
        depth_errors.main([f"--workdir={workdir}"])
    line = exit_.value.code
    assert isinstance(line, str) and "\n" not in line  # SystemExit(str): status 1, this line
    assert line.startswith("error: NoCheckpoint: no checkpoint in ") and str(workdir) in line


def test_a_bad_frames_flag_or_a_workdir_without_curves_is_one_line(tmp_path):
    """`--frames` that is no frame selection, and learning_curves.py on a workdir without
    evals.jsonl: one line and status 1 before any work (before: tracebacks)."""
    import shutil

    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(__file__)), "docs", "study", "runs",
                             "depth", "config.json"), tmp_path)  # a workdir, no checkpoint
    for main, args in ((depth_baselines.main, [f"--clips={tmp_path}"]),
                       (depth_errors.main, [f"--workdir={tmp_path}"])):
        with pytest.raises(SystemExit) as e:
            main([*args, "--frames=every0"])
        assert str(e.value.code).startswith("error: --frames=every0: use middle"), main
    with pytest.raises(SystemExit) as e:
        learning_curves.main([f"--workdir={tmp_path}"])
    assert e.value.code == (f"error: {tmp_path}/evals.jsonl not found; train with evaluators "
                            f"that run during training (config.evals.<name>.every > 0)")


def test_depth_baselines_on_crafted_pixels():
    """Seven pixels, by hand: the most common bin (3) holds 3 of 7; each part's own most common
    bin 2 + 3 (part 1: bins 1,1,2,4; part 2: 3,3,3); per part and frame every pixel but the
    part-1 frame-0 outlier (bins 1,1,4 in frame 0, 2 in frame 1)."""
    bins = np.array([1, 1, 2, 3, 3, 3, 4])
    parts = np.array([1, 1, 1, 2, 2, 2, 1])
    frames = np.array([0, 0, 1, 0, 1, 1, 0])
    r = depth_baselines.baselines(bins, parts, frames)
    assert r["pixels"] == 7
    assert np.isclose(r["most_common_bin"], 3 / 7)
    assert np.isclose(r["part_mode"], 5 / 7)  # part 1: {1,1,2,4} -> 2; part 2: 3
    assert np.isclose(r["part_frame_mode"], 6 / 7)  # (0,1): {1,1,4} -> 2; others all
    assert depth_baselines.baselines(bins[:0], parts[:0], frames[:0])["most_common_bin"] == 0


def test_depth_baselines_on_demo_clips(demo_dataset, capsys):
    """Depth bins are relative to the pelvis, in front negative: the visible torso surface is
    nearer the camera than the pelvis joint inside the body. The command's fractions over the
    two test clips equal the modal counts taken here with bincount, clip by clip and frame by
    frame (a frame of one clip is not the same frame of the other)."""
    from hgmt.sources import body, surreal

    test_dir = os.path.join(demo_dataset[0], "cmu", "test")
    stems = surreal.find_clips(demo_dataset[0], "test")
    for stem in stems:
        bins, parts, frames = depth_baselines.clip_pixels(stem, "every2")
        assert set(np.unique(frames)) == {0, 2, 4}
        torso = bins[parts == body.PART_NAMES.index("torso") + 1]
        assert -4 <= np.median(torso) <= -1
        # 6-frame clips: the middle frame is the 3rd (1-based ceil(6/2)), index 2
        assert set(depth_baselines.clip_pixels(stem, "middle")[2]) == {2}
    assert depth_baselines.main([f"--clips={test_dir}", "--frames=all"]) == 0
    r = json.loads(capsys.readouterr().out)[test_dir]
    clips = [depth_baselines.clip_pixels(stem, "all") for stem in stems]
    bins, parts = (np.concatenate([c[i] for c in clips]) for i in (0, 1))

    def mode_count(b):
        return int(np.bincount(b + 9).max())

    per_part = sum(mode_count(bins[parts == p]) for p in np.unique(parts))
    per_frame = sum(mode_count(b[(t == f) & (p == q)]) for b, p, t in clips
                    for f in np.unique(t) for q in np.unique(p[t == f]))
    n = bins.size
    assert (r["clips"], r["frames"], r["pixels"]) == (2, "all", n) and n > 1000
    assert (r["most_common_bin"], r["part_mode"], r["part_frame_mode"]) == (
        round(mode_count(bins) / n, 4), round(per_part / n, 4), round(per_frame / n, 4))
    assert r["part_mode"] < r["part_frame_mode"]


def test_depth_baselines_bin_as_the_dataset_labels(demo_dataset):
    """On one demo test clip, every frame: the script's pixels are those the builder stores a
    depth class for (`hgmt.tasks.depth.classes`), and each one's bin is that class minus 10."""
    import collections

    import cv2

    from hgmt.data import records
    from hgmt.sources import body, surreal

    stem = surreal.find_clips(demo_dataset[0], "test")[0]
    bins, parts, frames = depth_baselines.clip_pixels(stem, "all")
    segm = surreal.load_segm(stem + "_segm.mat")
    checked = 0
    for _, example in records.clip_examples(stem, records.FrameSelection(),
                                            collections.Counter()):
        t = int(example["frame"])
        stored = cv2.imdecode(np.frombuffer(example["depth_class"], np.uint8),
                              cv2.IMREAD_UNCHANGED)
        fg = stored > 0
        np.testing.assert_array_equal(bins[frames == t], stored[fg].astype(int) - 10)
        np.testing.assert_array_equal(parts[frames == t], body.SEGM_TO_PART[segm[t][fg]])
        checked += 1
    assert checked == 6 and set(frames.tolist()) == set(range(6))


def _keep_frames(stem: str, frames: int, *keys: str) -> None:
    """Keeps the first `frames` frames of a clip's files `keys` ("info", "depth", "segm")."""
    import scipy.io

    from hgmt.sources import surreal

    for key in keys:
        path = surreal.clip_paths(stem)[key]
        mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
        if key == "info":  # the per-frame fields load_info reads: frames last, or first
            mat.update({k: mat[k][..., :frames] for k in ("joints2D", "joints3D", "pose",
                                                           "shape")})
            mat.update({k: mat[k][:frames] for k in ("zrot", "gender")})
        else:
            mat = {f"{key}_{t}": mat[f"{key}_{t}"] for t in range(1, frames + 1)}
        scipy.io.savemat(path, mat)


def test_depth_baselines_select_frames_as_the_evaluation_does(tmp_path):
    """An 8-frame clip whose depth and segm maps hold 6: its test-protocol frame is the
    _info.mat's ceil(8/2) = 4th (index 3), not the maps' ceil(6/2) = 3rd; every2 and every4
    step through the 6 frames the files share. With maps of 3 frames the middle is in none of
    them: no pixels. With the _info.mat then cut to 2 frames: its 1st (index 0), and every2
    and all stop at the 2 frames all three hold."""
    from hgmt.sources import synthetic

    stem, = synthetic.generate(str(tmp_path), clips_per_split=1, frames=8, seed=1,
                               splits=("test",))

    def selected(frames):
        bins, parts, t = depth_baselines.clip_pixels(stem, frames)
        assert bins.size == parts.size == t.size
        return sorted(set(t.tolist()))

    _keep_frames(stem, 6, "depth", "segm")
    assert [selected(f) for f in ("middle", "every2", "every4")] == [[3], [0, 2, 4], [0, 4]]
    _keep_frames(stem, 3, "depth", "segm")
    assert [selected(f) for f in ("middle", "every2")] == [[], [0, 2]]
    _keep_frames(stem, 2, "info")
    assert [selected(f) for f in ("middle", "every2", "all")] == [[0], [0], [0, 1]]


def test_depth_baselines_count_the_pixels_and_frames_hgmts_depth_metric_counts(tmp_path):
    """A 4-frame clip altered by hand: frame 1's segmentation blanked (its depth labels kept)
    and frame 2's 2D joints set to zero. Frame 1 keeps every pixel it had, each now of part 0
    (hgmt's bin accuracy counts every pixel with a depth label, whatever its segment, as
    `depth.metric_stats` here on the frame's labels); frame 2, which `frame_selection.frame_problem`
    rejects ("joints_zero") and hgmt's metrics leave out, gives none."""
    import jax.numpy as jnp
    import scipy.io

    from hgmt.sources import body, camera, frame_selection, surreal, synthetic
    from hgmt.tasks import depth

    stem, = synthetic.generate(str(tmp_path), clips_per_split=1, frames=4, seed=1,
                               splits=("test",))
    bins, parts, t = depth_baselines.clip_pixels(stem, "all")
    assert sorted(set(t.tolist())) == [0, 1, 2, 3] and (parts[t == 1] > 0).all()
    files = surreal.clip_paths(stem)
    segm = scipy.io.loadmat(files["segm"])
    scipy.io.savemat(files["segm"], {k: (np.zeros_like(v) if k == "segm_2" else v)
                                     for k, v in segm.items() if not k.startswith("__")})
    info = {k: v for k, v in scipy.io.loadmat(files["info"]).items() if not k.startswith("__")}
    info["joints2D"][..., 2] = 0
    scipy.io.savemat(files["info"], info)
    info = surreal.load_info(files["info"])
    assert frame_selection.frame_problem(info.joints2d[2], info.joints3d[2]) == "joints_zero"
    after, after_parts, after_t = depth_baselines.clip_pixels(stem, "all")
    assert sorted(set(after_t.tolist())) == [0, 1, 3]
    for frame in (0, 1, 3):
        np.testing.assert_array_equal(after[after_t == frame], bins[t == frame])
    assert (after_parts[after_t == 1] == 0).all()
    np.testing.assert_array_equal(after_parts[after_t != 1], parts[(t != 1) & (t != 2)])
    pelvis = camera.camera_depth(info.joints3d[1, body.SMPL_TO_JOINT[body.PELVIS]],
                                  info.cam_loc)
    labels = jnp.asarray(depth.classes(surreal.load_depth(files["depth"])[1], pelvis))[None]
    stats = depth.metric_stats({"depth_classes": labels},
                               {"depth_class": labels, "mask": jnp.ones(1)})
    assert int(stats["foreground"]) == (after_t == 1).sum() > 100


def test_limb_depth_spread_of_a_real_clip(real_info_path, tmp_path):
    """A camera depth is camLoc_x - X_x (docs/surreal_format.md), so a joint's depth
    relative to the pelvis is the pelvis's world x minus the joint's."""
    import pytest

    from hgmt.sources import body, surreal

    rel = limb_depth.relative_depth(real_info_path)
    x = surreal.load_info(real_info_path).joints3d[:, body.SMPL_TO_JOINT, 0]
    np.testing.assert_allclose(rel, x[:, [body.PELVIS]] - x, atol=1e-6)
    out = limb_depth.spread([real_info_path])
    assert (out["clips"], out["frames"]) == (1, 100)
    assert out["within_clip_sd_mm"] == out["overall_sd_mm"]  # one clip
    assert out["overall_sd_mm"]["pelvis"] == 0.0
    assert out["overall_sd_mm"]["r_ankle"] == pytest.approx(
        round(float(np.std(x[:, body.PELVIS] - x[:, 0]) * 1000.0), 1), abs=0.11)
    with pytest.raises(SystemExit, match="no \\*_info.mat under"):
        limb_depth.info_files(str(tmp_path))


def test_depth_free_mjd_back_projects_true_pixels_at_the_guessed_depth(real_info_path):
    """A joint 0.2 m behind the pelvis guessed at the pelvis's depth lands on its own camera
    ray at 3.0 m instead of 3.2 m: error |(x, y, z) * (3.0/3.2 - 1)| (crafted by hand)."""
    from hgmt.sources import body

    cam = np.zeros((1, 16, 3))
    cam[..., 2] = 3.0  # every joint at the pelvis (error 0) but one
    cam[0, 0] = [0.3, 0.1, 3.2]
    err = limb_depth.mjd_mm(cam, np.zeros((1, 16)))
    expected = np.linalg.norm(np.array([0.3, 0.1, 3.2]) * (3.0 / 3.2 - 1)) * 1000.0
    np.testing.assert_allclose(err[0], expected, rtol=1e-6)
    assert np.all(err[1:] < 1e-6)
    np.testing.assert_allclose(limb_depth.mjd_mm(cam, cam[..., 2] - 3.0), 0.0, atol=1e-6)
    out = limb_depth.depth_free_mjd([real_info_path])
    assert out["joint_bins"]["mjd_mm"] < out["mean_offset"]["mjd_mm"] <= (
        out["pelvis_plane"]["mjd_mm"])
    assert out["mean_offset"]["per_joint_mm"][body.JOINT_NAMES[body.PELVIS]] == 0.0


def test_limb_depth_gives_the_committed_figures_of_the_real_clip(real_info_path, capsys):
    """The command on the real annotation file prints limb_depth.json's real-clip half, every
    figure to its printed 0.1 mm: the depth spread per joint (right ankle 55.4 mm, left 64.0)
    and the depth-free MJDs (108.9, 61.9, 11.7 mm) with their per-joint figures."""
    assert limb_depth.main([f"--clips={real_info_path}"]) == 0
    out = json.loads(capsys.readouterr().out)[real_info_path]
    committed = _real_entry(_committed("limb_depth.json"))
    assert (committed["within_clip_sd_mm"]["r_ankle"], committed["within_clip_sd_mm"]["l_ankle"]
            ) == (55.4, 64.0)
    assert [committed["depth_free_mjd"][k]["mjd_mm"]
            for k in ("pelvis_plane", "mean_offset", "joint_bins")] == [108.9, 61.9, 11.7]
    assert out == committed


def test_window_scale_stops_in_one_line_on_a_config_field_training_refuses(monkeypatch):
    """The config is checked as training checks it before any clip is generated: an image
    size the hourglass cannot take is one line naming the field and the sizes that fit."""
    made = []
    monkeypatch.setattr(window_scale, "demo_training_clips", lambda *a: made.append(a))
    with pytest.raises(SystemExit) as e:
        window_scale.main(["--config.image_size=100", "--config.model.depth=2"])
    assert e.value.code == ("error: config.image_size=100: not a multiple of 16, as an "
                            "hourglass of config.model.depth=2 needs; give one, e.g. 96 or 112")
    assert made == []


def test_window_scale_measures_the_configs_demo_clips_and_the_real_clip(real_info_path, tmp_path,
                                                                        capsys):
    """--demo measures the training clips of --config's demo settings (here overridden to 2
    clips of 3 frames), as `measure` does on the same clips generated here; the real
    annotation file's entry is window_scale_2026-12-05.json's (docs/evaluation.md: 2.475 +-
    0.170 m, standard error 0.017, 100 frames, no silhouettes). Without --clips the demo
    clips alone."""
    from hgmt.sources import synthetic

    small = ["--config.demo.clips_per_split=2", "--config.demo.frames=3"]
    assert window_scale.main(["--demo", f"--clips={real_info_path}", *small]) == 0
    out = json.loads(capsys.readouterr().out)
    assert list(out) == [window_scale.DEMO, real_info_path]
    synthetic.generate(str(tmp_path), 2, 3, 0, splits=("train",))
    expected = window_scale.measure(limb_depth.info_files(str(tmp_path / "cmu" / "train")))
    assert out[window_scale.DEMO] == {"demo": {"clips_per_split": 2, "frames": 3, "seed": 0},
                                      **expected}
    assert expected["crop_metres"]["frames"] == expected["foreground_to_side"]["frames"] == 6
    committed = _real_entry(_committed("window_scale_2026-12-05.json"))
    assert (committed["crop_metres"]["mean"], round(committed["crop_metres"]["standard_deviation"],
                                                    3)) == (2.475, 0.170)
    assert out[real_info_path] == committed
    assert window_scale.main(small) == 0
    assert list(json.loads(capsys.readouterr().out)) == [window_scale.DEMO]
