"""hgmt.sources.synthetic writes SURREAL-format clips that are consistent and learnable."""

import contextlib
import dataclasses
import errno
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.io

from hgmt.data import crop_metres
from hgmt.sources import body, camera, surreal, synthetic, synthetic_person
from tests.conftest import assert_same_video

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    stems = synthetic.generate(str(root), clips_per_split=2, frames=8, seed=0)
    return root, stems


def test_depth_is_the_distance_from_the_camera_centre():
    """SURREAL's depth maps hold Blender 2.78 Cycles' Z pass, the distance len(P - camP) from
    the camera centre, not the planar depth z (docs/surreal_format.md); so do the demo's. Each
    foreground pixel's point at that distance along its ray lies on its capsule's surface
    (within the renderer's approximation of the capsules, a median of ~1 mm); read as planar
    depth, the point is off by (ray length - 1) x distance, several mm at 6-7 m."""
    rng = np.random.default_rng(0)
    motion, look = synthetic_person.make_motion(rng, 4), synthetic_person.make_look(rng)
    _, depth, segm = synthetic_person.render_frame(motion, look, 2)
    a_w, b_w, radius = synthetic_person._capsule_ends(motion, 2)
    a = camera.world_to_camera(a_w, motion.cam_loc)
    b = camera.world_to_camera(b_w, motion.cam_loc)
    v, u = np.nonzero(segm)
    part = segm[v, u].astype(int) - 1
    ray = camera.backproject(np.stack([u, v], -1).astype(np.float64), np.ones(u.shape))
    np.testing.assert_allclose(np.linalg.norm(ray, axis=-1), camera.ray_lengths()[v, u])

    def off_surface(points):  # (N,3) -> (N,) |distance to the capsule's axis - radius|, m
        d = b[part] - a[part]
        s = np.clip(np.sum((points - a[part]) * d, -1) / np.sum(d * d, -1), 0, 1)
        axis = a[part] + s[:, None] * d
        return np.abs(np.linalg.norm(points - axis, axis=-1) - radius[part])

    distance = depth[v, u].astype(np.float64)[:, None]
    along_ray = off_surface(ray / np.linalg.norm(ray, axis=-1, keepdims=True) * distance)
    as_planar = off_surface(ray * distance)
    assert np.median(along_ray) < 0.002 and np.percentile(along_ray, 90) < 0.008
    assert np.median(as_planar) > 0.005


def test_layout(clips):
    """Train and test clips of their own sequences; val, as SURREAL's, holds test clips
    (docs/surreal_format.md): here a copy of each, file for file."""
    root, stems = clips
    names = {split: [os.path.relpath(s, root / "cmu" / split)
                     for s in surreal.find_clips(str(root), split)]
             for split in ("train", "val", "test")}
    assert names == {"train": ["run0/01_01/01_01_c0001", "run0/01_01/01_01_c0002"],
                     "val": ["run0/03_01/03_01_c0001", "run0/03_01/03_01_c0002"],
                     "test": ["run0/03_01/03_01_c0001", "run0/03_01/03_01_c0002"]}
    assert [os.path.relpath(s, root / "cmu") for s in stems] == [
        f"{split}/{name}" for split in ("train", "val", "test") for name in names[split]]
    for name in names["test"]:
        for suffix in surreal.CLIP_SUFFIXES.values():
            with open(root / "cmu" / "val" / f"{name}{suffix}", "rb") as val, \
                    open(root / "cmu" / "test" / f"{name}{suffix}", "rb") as test:
                assert val.read() == test.read(), name + suffix
    with pytest.raises(ValueError, match=r"val holds copies of the test clips.*add 'test'"):
        synthetic.generate(str(root / "no_test"), 1, 1, splits=("train", "val"))


def test_a_folder_holding_clips_is_refused_before_anything_is_written(clips, tmp_path,
                                                                        capsys):
    """A folder whose cmu/<split> holds files (real SURREAL, demo clips of another run) is
    refused, naming the folder and the fix, and left as it was: the generator wrote over
    real SURREAL's files of the same names, and a second run of fewer clips left the first
    run's others among its own. The command says so in one line, exit status 1."""
    root, _ = clips
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    for argv in ([], ["--clips_per_split=1"]):
        with pytest.raises(SystemExit) as raised:
            synthetic.main([f"--out_dir={root}", "--frames_per_clip=2", "--workers=1", *argv])
        assert str(raised.value) == (
            f"error: ClipsExist: {root}/cmu/train already holds files (real SURREAL clips, "
            f"or demo clips of another run): the demo's clips, named as SURREAL's (e.g. "
            f"run0/01_01/01_01_c0001), would overwrite those of the same names and leave "
            f"the others among them. Nothing was written. Give another --out_dir than "
            f"{root}, or remove {root}/cmu/train")
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before
    # A test folder holding one stray file is refused too; a folder with none is written.
    stray = tmp_path / "cmu" / "test" / "run0" / "notes.txt"
    stray.parent.mkdir(parents=True)
    stray.write_text("x")
    with pytest.raises(synthetic.ClipsExist, match=f"^{tmp_path}/cmu/test already holds"):
        synthetic.generate(str(tmp_path), 1, 1, splits=("train", "val", "test"))
    assert not (tmp_path / "cmu" / "train").exists()
    capsys.readouterr()
    assert synthetic.main([f"--out_dir={tmp_path / 'new'}", "--clips_per_split=1",
                           "--frames_per_clip=2", "--workers=1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["clips"], out["frames"]) == (3, 4)  # val's clip a copy, not rendered


def test_a_negative_seed_or_a_file_for_the_output_is_one_line(tmp_path):
    """Both ended in tracebacks (a ValueError from the generator, a NotADirectoryError)."""
    with pytest.raises(SystemExit) as raised:
        synthetic.main([f"--out_dir={tmp_path / 'out'}", "--seed=-1"])
    assert raised.value.code == ("error: --seed=-1: -1 is not a non-negative integer (--help "
                                 "lists the flags)")
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(SystemExit) as raised:
        synthetic.main([f"--out_dir={afile}"])
    assert raised.value.code == (f"error: --out_dir={afile}: a file; give a folder (made if "
                                 f"missing)")
    assert afile.read_text() == "mine" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("cmu", ["tree/cmu", "tree/cmu/"])
def test_an_out_dir_that_is_the_trees_cmu_folder_is_refused_naming_the_tree(cmu, tmp_path):
    """`--out_dir=<tree>/cmu` wrote <tree>/cmu/cmu/<split>, which a build of <tree> (or of
    <tree>/cmu) does not find: refused in one line naming the tree, nothing written."""
    out_dir = str(tmp_path / cmu)
    with pytest.raises(SystemExit) as raised:
        synthetic.main([f"--out_dir={out_dir}", "--clips_per_split=1", "--frames_per_clip=1",
                        "--workers=1"])
    assert raised.value.code == (
        f"error: --out_dir={out_dir} is a cmu folder: the clips go into "
        f"<out_dir>/cmu/{{train,val,test}}, as in SURREAL's tree; give the folder that is to "
        f"hold cmu/, --out_dir={tmp_path / 'tree'} (the tree tfds build takes as --manual_dir)")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("flag", ["--clips_per_split=0", "--frames_per_clip=0"])
def test_no_clips_or_no_frames_is_refused_in_one_line(flag, tmp_path):
    """0 clips wrote nothing and exited 0 (a later build then said to extract SURREAL again);
    0 frames ended in an IndexError's traceback."""
    with pytest.raises(SystemExit) as raised:
        synthetic.main([f"--out_dir={tmp_path / 'out'}", flag])
    name = flag[2:].partition("=")[0]
    assert raised.value.code == (f"error: --{name}=0: 0 is not a positive integer "
                                 f"(--help lists the flags)")
    assert not (tmp_path / "out").exists()


def test_info_fields_match_real_file(clips, real_info_path):
    real = scipy.io.loadmat(real_info_path)
    ours = scipy.io.loadmat(surreal.clip_paths(clips[1][0])["info"])
    assert set(real) == set(ours)
    t_real, t_ours = real["joints2D"].shape[-1], ours["joints2D"].shape[-1]
    for key, value in real.items():
        if key.startswith("__"):
            continue
        shape = tuple(t_ours if d == t_real else d for d in value.shape)
        assert ours[key].shape == shape, key
        assert ours[key].dtype.kind == value.dtype.kind, key


def test_a_one_frame_clip_has_the_real_files_shapes(tmp_path, real_info_path):
    """A clip of one frame is written as MATLAB saved SURREAL's: joints2D (2, 24) and joints3D
    (3, 24), the frame axis dropped (the demo wrote (2, 24, 1)), every other field as in the
    real file at T = 1; hgmt reads it as one frame whose joints project as the real ones."""
    synthetic.generate(str(tmp_path), 1, 1, splits=("test",))
    (stem,) = surreal.find_clips(str(tmp_path), "test")
    ours = scipy.io.loadmat(surreal.clip_paths(stem)["info"])
    real = scipy.io.loadmat(real_info_path)
    t_real = real["joints2D"].shape[-1]
    for key, value in real.items():
        if not key.startswith("__"):
            shape = tuple(1 if d == t_real else d for d in value.shape)
            assert ours[key].shape == (shape[:2] if key.startswith("joints") else shape), key
    info = surreal.load_clip(stem).info
    assert info.num_frames == 1 and info.joints2d.shape == (1, 24, 2)
    np.testing.assert_array_equal(np.round(camera.project(info.joints3d, info.cam_loc)),
                                  info.joints2d)


def test_clip_is_consistent(clips):
    for stem in clips[1]:
        clip = surreal.load_clip(stem)
        info = clip.info
        assert clip.frame_counts == {"video": 8, "info": 8, "depth": 8, "segm": 8}
        np.testing.assert_array_equal(np.round(camera.project(info.joints3d, info.cam_loc)),
                                      info.joints2d)
        np.testing.assert_array_equal(clip.depth > 0, clip.segm > 0)
        assert crop_metres.kept_frames(info) == list(range(8))  # every frame usable
        for t in range(8):
            assert len(np.unique(clip.segm[t])) >= 15  # most of the 24 segments visible
            # The surface at the pelvis pixel lies within a body's thickness of the pelvis.
            u, v = np.round(info.joints2d[t, 0]).astype(int)
            pelvis_depth = camera.camera_depth(info.joints3d[t, 0], info.cam_loc)
            d = clip.depth[t, v - 1:v + 2, u - 1:u + 2]
            assert np.all(np.abs(d[d > 0] - pelvis_depth) < 0.25)
        # Person roughly centred, a realistic size (real SURREAL: ~100-200 px tall).
        height = info.joints2d[:, :, 1].max(1) - info.joints2d[:, :, 1].min(1)
        assert np.all((height > 90) & (height < 230))


def test_limbs_move_and_rgb_follows_parts(clips):
    clip = surreal.load_clip(clips[1][0])
    wrists = clip.info.joints2d[:, 20]
    assert np.ptp(wrists, axis=0).max() > 5  # the arm really moves over 8 frames
    fg = clip.segm[0] > 0
    rgb = clip.video[0].astype(float)
    # Foreground and background differ in colour on average (the person is visible).
    assert np.abs(rgb[fg].mean(0) - rgb[~fg].mean(0)).max() > 10


def test_deterministic(tmp_path):
    """One seed writes one clip (its video as the encoder writes it: `assert_same_video`);
    another seed another."""
    a = synthetic.generate(str(tmp_path / "a"), clips_per_split=1, frames=3, seed=7,
                           splits=("train",))[0]
    b = synthetic.generate(str(tmp_path / "b"), clips_per_split=1, frames=3, seed=7,
                           splits=("train",))[0]
    c = synthetic.generate(str(tmp_path / "c"), clips_per_split=1, frames=3, seed=8,
                           splits=("train",))[0]
    ca, cb, cc = surreal.load_clip(a), surreal.load_clip(b), surreal.load_clip(c)
    assert_same_video(ca.video, cb.video)
    np.testing.assert_array_equal(ca.depth, cb.depth)
    np.testing.assert_array_equal(ca.info.joints3d, cb.info.joints3d)
    assert not np.array_equal(ca.info.joints3d, cc.info.joints3d)


def test_clips_written_in_worker_processes_are_the_ones_written_in_this_one(tmp_path):
    """Clips written by 2 worker processes are this process's: the same files, their depth,
    segmentation and annotations equal, their videos as the encoder writes them (which may
    differ in one macroblock from process to process: `assert_same_video`)."""
    kw = dict(clips_per_split=2, frames=3, seed=4, splits=("train", "test"))
    one = synthetic.generate(str(tmp_path / "one"), **kw)
    two = synthetic.generate(str(tmp_path / "two"), workers=2, **kw)
    assert [os.path.relpath(s, tmp_path / "two") for s in two] == [
        os.path.relpath(s, tmp_path / "one") for s in one]
    for a, b in zip(one, two, strict=True):
        ca, cb = surreal.load_clip(a), surreal.load_clip(b)
        assert_same_video(ca.video, cb.video, a)
        np.testing.assert_array_equal(ca.depth, cb.depth)
        np.testing.assert_array_equal(ca.segm, cb.segm)
        for field in dataclasses.fields(ca.info):
            np.testing.assert_array_equal(getattr(ca.info, field.name),
                                          getattr(cb.info, field.name), err_msg=field.name)
    assert not np.array_equal(surreal.load_clip(one[0]).video, surreal.load_clip(one[1]).video)


def _record(clip, t):
    """The builder's record of frame t (what cropping.crop_example reads)."""
    info = clip.info
    return {"image": clip.video[t], "segm": clip.segm[t][..., None],
            "depth": np.round(clip.depth[t] * 1000).astype(np.uint16)[..., None],
            "joints2d": info.joints2d[t], "joints3d": info.joints3d[t], "cam_loc": info.cam_loc}


SIDED = [n for n in body.JOINT_NAMES if n[:2] in ("r_", "l_") and "hip" not in n]


def _side_hits(joints2d, parts):
    """Counts of sided joints (not hips, which sit on the torso) whose pixel holds a part of
    the same side / of the other side. joints2d (16,2) pixels, parts (H,W) part classes."""
    same = other = 0
    for name in SIDED:
        x, y = np.round(joints2d[body.JOINT_NAMES.index(name)]).astype(int)
        if not (0 <= y < parts.shape[0] and 0 <= x < parts.shape[1]) or parts[y, x] < 3:
            continue  # off the map, background, head or torso
        part = body.PART_NAMES[parts[y, x] - 1]
        same += part[:2] == name[:2]
        other += part[:2] != name[:2]
    return same, other


def test_demo_segments_carry_surreal_names(clips):
    """The demo writes SURREAL's raw SMPL segment ids as the real files do, swap included:
    SMPL joint 20 ("L_Wrist", hgmt's r_wrist) lies on SMPL's "leftHand"/"leftForeArm"."""
    clip = surreal.load_clip(clips[1][0])
    names = []
    for t in range(clip.num_frames):
        u, v = np.round(clip.info.joints2d[t, 20]).astype(int)
        names.append(body.SMPL_SEGMENT_NAMES[clip.segm[t, v, u]])
    assert set(names) <= {"leftHand", "leftForeArm", "leftHandIndex1"}, names


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("augment_on", ["host", "device"])
def test_sided_joints_fall_on_same_side_parts(clips, flip, augment_on):
    """Part names follow the person's own side, like the joints, in crops flipped or not, made
    by the loader (host) or in the train step (device)."""
    from hgmt.data import cropping
    from hgmt.data import device_augment as da
    from hgmt.data import input_pipeline as ip

    augment = ip.Augment(scale_sigma=0.0, rotate_p=0.0, gain=(1.0, 1.0),
                         flip_p=1.0 if flip else 0.0)
    tasks = ("pose2d", "segm")
    same = other = 0
    for stem in clips[1]:
        clip = surreal.load_clip(stem)
        records = [_record(clip, t) for t in range(clip.num_frames)]
        if augment_on == "host":
            examples = [cropping.crop_example(r, 256, augment, tasks=tasks) for r in records]
        else:
            raw = [da.decode_record(r, ("segm",)) for r in records]
            batch = {k: np.stack([x[k] for x in raw]) for k in raw[0]}
            n = len(records)
            params = {"scale": np.ones(n, np.float32), "rotation": np.zeros(n, np.float32),
                      "flip": np.full(n, flip), "gain": np.ones((n, 3), np.float32)}
            out = da.crop_batch(batch, params, 256, tasks)
            examples = [{k: np.asarray(v[i]) for k, v in out.items()} for i in range(n)]
        for ex in examples:
            s, o = _side_hits(ex["joints2d"], ex["segm"])
            same, other = same + s, other + o
    # A joint hidden behind the other side's limb shows that limb: a few per cent.
    assert same >= 200 and other <= 0.1 * same, (same, other)


def test_lambert_lights_surfaces_facing_the_light():
    """The camera looks along +z, so a surface facing it has normal (0, 0, -1); a light
    behind the camera (direction (0, 0, -1)) lights it fully, a grazing one not at all."""
    light = np.array([0.0, 0.0, -1.0])
    normals = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.6, 0.8]])
    np.testing.assert_allclose(synthetic_person.lambert(normals, light, 0.3), [1.0, 0.3, 0.3])


def test_capsule_normals_follow_the_axis_tilt():
    """A capsule along image x, 5 m away: in the image plane the point nearest the camera
    faces it; with its right end 0.2 m farther, the surface facing the camera turns right, by
    the tilt angle, so a light from the right brightens it."""
    a, r = np.array([-0.2, 0.0, 5.0]), 0.05
    flat = synthetic_person.capsule_normals(np.array([[0.0, 0.0, 5.0 - r], [0.1, -r, 5.0]]), a,
                                     np.array([0.2, 0.0, 5.0]))
    np.testing.assert_allclose(flat, [[0, 0, -1], [0, -1, 0]], atol=1e-12)
    b = np.array([0.2, 0.0, 5.2])
    n = np.array([0.2, 0.0, -0.4]) / np.sqrt(0.2)  # unit, perpendicular to b - a
    tilted = synthetic_person.capsule_normals((a + b) / 2 + r * n, a, b)
    np.testing.assert_allclose(tilted, n, atol=1e-12)
    from_right = np.array([1.0, 0.0, -1.0]) / np.sqrt(2)
    assert synthetic_person.lambert(tilted, from_right, 0.3) > synthetic_person.lambert(
        flat[0], from_right, 0.3) + 0.1


def test_limbs_turned_towards_the_light_are_brighter():
    """The rendered frame shades a limb by its 3D orientation: a forearm hanging down with its
    wrist 0.15 m towards the camera faces a light from above (n.l = 0.97 at its centre line),
    the same forearm turned away does not (n.l = 0.24)."""
    rng = np.random.default_rng([0, 0, 1])
    motion = synthetic_person.make_motion(rng, 1)
    look = dataclasses.replace(synthetic_person.make_look(rng),
                               light=np.array([0.0, -1.0, -1.0]) / np.sqrt(2), ambient=0.2)
    elbow, wrist, hand = 18, 20, 22
    brightness = {}
    for towards in (0.15, -0.15):  # world x points towards the camera, y down
        joints = motion.joints_world.copy()
        joints[0, wrist] = joints[0, elbow] + [towards, 0.25, 0.0]
        joints[0, hand] = joints[0, wrist] + [0.0, 0.08, 0.0]
        rgb, _, segm = synthetic_person.render_frame(
            dataclasses.replace(motion, joints_world=joints), look, 0)
        forearm = segm == elbow + 1
        assert forearm.sum() > 50
        brightness[towards] = np.median(rgb[forearm].mean(-1) / 255.0 / look.colors[elbow].mean())
    assert brightness[0.15] > brightness[-0.15] + 0.3, brightness


def test_bodies_are_shaded():
    """Within one body part the brightness varies with the surface's orientation (as on real
    SURREAL renders), beyond the two levels of the clothing texture: the cue that shows
    the body's 3D shape."""
    rng = np.random.default_rng([0, 0, 0])
    motion, look = synthetic_person.make_motion(rng, 1), synthetic_person.make_look(rng)
    rgb, _, segm = synthetic_person.render_frame(motion, look, 0)
    torso = segm == 1
    ratio = rgb[torso][:, 0] / 255.0 / look.colors[0, 0]
    assert np.ptp(np.percentile(ratio, [10, 90])) > 0.2
    assert np.median(ratio) > look.ambient + 0.1  # lit, not ambient only


def test_zrot_range_turns_only_the_body(tmp_path):
    """zrot is uniform within +-zrot_max_deg: with the same random stream, SURREAL's whole
    circle (180) turns the body 3x as far as the default 60 and changes nothing else."""
    stems = [synthetic.generate(str(tmp_path / str(d)), clips_per_split=1, frames=1, seed=5,
                                splits=("train",), zrot_max_deg=d)[0] for d in (60.0, 180.0)]
    default, circle = (surreal.load_info(s + "_info.mat").zrot for s in stems)
    np.testing.assert_allclose(circle, 3 * default, rtol=1e-5)
    zrots = []
    for k in range(40):
        default = synthetic_person.make_motion(np.random.default_rng(k), 3)
        circle = synthetic_person.make_motion(np.random.default_rng(k), 3, zrot_max_deg=180.0)
        assert np.isclose(circle.zrot, 3 * default.zrot)
        np.testing.assert_array_equal(circle.local_rot[:, 1:], default.local_rot[:, 1:])
        np.testing.assert_array_equal(circle.cam_loc, default.cam_loc)
        zrots.append(circle.zrot)
        assert abs(default.zrot) <= np.radians(synthetic_person.ZROT_MAX_DEG)
    assert max(np.abs(zrots)) > np.radians(120)  # backs to the camera occur


def test_an_out_dir_that_cannot_be_written_is_one_line_and_leaves_no_partial_clips(tmp_path,
                                                                                  monkeypatch):
    """A write that fails (a read-only or full file system; here a file where a folder must
    go) ended in a traceback, from a worker process with --workers, and left the clips
    written before it, so that a rerun was refused for holding clips: one line naming the
    folder and the cause, the clips it wrote removed, the user's file kept."""
    afile = tmp_path / "notes.txt"
    afile.write_text("mine")
    with pytest.raises(SystemExit) as raised:
        synthetic.main([f"--out_dir={afile}/demo", "--clips_per_split=1",
                        "--frames_per_clip=1", "--workers=1"])
    assert raised.value.code == (
        f"error: --out_dir={afile}/demo: cannot write the demo clips: Not a directory "
        f"({afile}/demo). Nothing written is left in {afile}/demo/cmu/"
        f"{{train,val,test}}. Give a folder on a writable file system with room for the clips")
    # cmu/val a file: the train and test clips are written before the copy into val fails.
    tree = tmp_path / "tree"
    (tree / "cmu").mkdir(parents=True)
    (tree / "cmu" / "val").write_text("mine")
    (tree / "cmu" / "test").mkdir()  # there before, empty: it stays, empty
    for workers in ("1", "2"):
        with pytest.raises(SystemExit) as raised:
            synthetic.main([f"--out_dir={tree}", "--clips_per_split=2", "--frames_per_clip=1",
                            f"--workers={workers}"])
        assert raised.value.code.startswith(f"error: --out_dir={tree}: cannot write the demo "
                                            f"clips: Not a directory ({tree}/cmu/val/run0). ")
        assert sorted(p.relative_to(tree).as_posix() for p in tree.rglob("*")) == [
            "cmu", "cmu/test", "cmu/val"]
        assert (tree / "cmu" / "val").read_text() == "mine"
    # Not a folder's fault (out of file descriptors, say): no other folder is named as the fix.
    def out_of_descriptors(*args, **kwargs):
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(synthetic, "generate", out_of_descriptors)
    with pytest.raises(SystemExit) as raised:
        synthetic.main([f"--out_dir={tmp_path}/other", "--clips_per_split=1"])
    assert raised.value.code.endswith(": cannot write the demo clips: Too many open files. "
                                      f"Nothing written is left in {tmp_path}/other/cmu/"
                                      "{train,val,test}. Mend what the error names and run it "
                                      "again")


def _repo_env() -> dict:
    """This process's environment with the repository first on PYTHONPATH."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        [REPO, *filter(None, [os.environ.get("PYTHONPATH")])])}


# The command as a shell runs it, with Ctrl-C handled (a process started in the background, as
# this test may be, inherits SIGINT ignored), in a process group of its own.
_RUN_COMMAND = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                "runpy.run_module('hgmt.sources.synthetic', run_name='__main__', alter_sys=True)")


def _start_command(args: list[str], cwd) -> subprocess.Popen:
    """`python -m hgmt.sources.synthetic ARGS` (`_RUN_COMMAND`), its output piped."""
    return subprocess.Popen(
        [sys.executable, "-c", _RUN_COMMAND, *args], cwd=cwd, env=_repo_env(),
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_a_clip(process: subprocess.Popen, out_dir) -> None:
    """Until `process` has written its first clip under `out_dir` (or ended), at most 120 s."""
    deadline = time.monotonic() + 120
    while not list(out_dir.rglob("*.mp4")) and process.poll() is None:
        assert time.monotonic() < deadline, "no clip written in 120 s"
        time.sleep(0.02)


def _wait_until_the_group_is_gone(pgid: int, what: str) -> None:
    """Until no process of group `pgid` is left (a command's workers, their tracker), at most
    30 s, else fails saying `what` outlived it."""
    deadline = time.monotonic() + 30
    while True:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        assert time.monotonic() < deadline, f"the workers outlived {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("signum, status, line", [
    (signal.SIGINT, 130, "interrupted (Ctrl-C); nothing partial was left behind"),
    # A scheduler's cancel: the same cleanup as Ctrl-C's (`stops.sigterm_cleans_up`).
    pytest.param(signal.SIGTERM, -signal.SIGTERM,
                 "stopped by SIGTERM; nothing partial was left behind", marks=pytest.mark.slow)])
def test_a_generation_stopped_midway_leaves_no_clips_says_so_and_runs_again(
        signum, status, line, tmp_path):
    """Ctrl-C (a terminal sends it to the command and its 2 workers) or SIGTERM (a scheduler's
    cancel, to them all) once the first clip is written: the clips written are removed, the
    command ends with that one line (no traceback of its own or of a worker) and the
    signal's status, and the same command run again writes the clips, not refused for
    holding them (`ClipsExist`)."""
    out_dir = tmp_path / "demo"
    args = [f"--out_dir={out_dir}", "--clips_per_split=4", "--frames_per_clip=30",
            "--workers=2"]
    process = _start_command(args, tmp_path)
    _wait_for_a_clip(process, out_dir)
    os.killpg(process.pid, signum)
    out, err = process.communicate(timeout=120)
    assert process.returncode == status, err[-3000:]
    assert (out, err.strip()) == ("", line)
    assert [p for p in out_dir.rglob("*") if p.is_file()] == []
    synthetic.main(args)
    assert len(list(out_dir.rglob("*_info.mat"))) == 12


# A caller of `generate` with SIGTERM at its default (hgmt.main's demo data, a benchmark).
_GENERATE = """\
import sys
from hgmt.sources import synthetic
if __name__ == "__main__":
    synthetic.generate(sys.argv[1], 4, 30, 0, workers=2)
"""


@pytest.mark.slow  # a rare signal: SIGTERM to the process group of a caller of the generator
def test_a_caller_that_sigterm_ends_where_it_stands_takes_its_workers_with_it(tmp_path):
    """SIGTERM to the process group (`timeout`, `kill -- -PGID`) of a caller of `generate`
    that leaves SIGTERM at its default: the caller dies at once and so do its workers, which
    would otherwise wait for work from it for ever."""
    script = tmp_path / "generate.py"
    script.write_text(_GENERATE)
    out_dir = tmp_path / "demo"
    process = subprocess.Popen([sys.executable, str(script), str(out_dir)], cwd=tmp_path,
                               env=_repo_env(), start_new_session=True,
                               stderr=subprocess.DEVNULL)
    try:
        _wait_for_a_clip(process, out_dir)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=60) == -signal.SIGTERM
        _wait_until_the_group_is_gone(process.pid, "the SIGTERM")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


@pytest.mark.slow  # a rare signal: a second Ctrl-C within a second of the first
def test_a_second_ctrl_c_while_the_workers_finish_their_clips_still_cleans_up(tmp_path):
    """Ctrl-C twice, 0.3 s apart, once the first clip is written: the second, which lands
    while the command waits for its workers (which ignore Ctrl-C) to finish the clips they
    are writing, is held until they have, so that the command still removes every clip,
    ends in its one line with status 130 and leaves no worker behind (one that outlived
    the command went on writing, and then waited for work for ever)."""
    out_dir = tmp_path / "demo"
    process = _start_command([f"--out_dir={out_dir}", "--clips_per_split=4",
                              "--frames_per_clip=30", "--workers=2"], tmp_path)
    try:
        _wait_for_a_clip(process, out_dir)
        os.killpg(process.pid, signal.SIGINT)
        time.sleep(0.3)
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(timeout=60) == 130
        _wait_until_the_group_is_gone(process.pid, "the command")
        out, err = process.communicate(timeout=10)
        assert (out, err.strip()) == ("", "interrupted (Ctrl-C); nothing partial was left "
                                          "behind")
        assert [p for p in out_dir.rglob("*") if p.is_file()] == []
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
