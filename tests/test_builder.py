"""The SURREAL TFDS builder beyond TFDS's own checks (data_builders/surreal/*_test.py):
bad input is skipped, logged and counted without losing good clips; Beam on 2 workers builds
exactly what the Python path builds; decoded examples reproduce the source files."""

import collections
import json
import os
import pickle
import re

import numpy as np
import pytest
import scipy.io
import tensorflow_datasets as tfds

import data_builders.surreal  # noqa: F401  (registers `surreal`)
from hgmt.sources import camera, surreal, synthetic, synthetic_person
from tests.conftest import assert_same_video

FRAMES = 6


def _train_stem(root, k):
    seq = f"01_{k // 2 + 1:02d}"
    return os.path.join(root, "cmu", "train", "run0", seq, f"{seq}_c{k % 2 + 1:04d}")


def _edit_info(stem, edit):
    path = surreal.clip_paths(stem)["info"]
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    edit(mat)
    scipy.io.savemat(path, mat)


@pytest.fixture(scope="module")
def bad_tree(tmp_path_factory):
    """6 train clips: 0 good, 1 truncated mp4, 2 truncated info.mat, 3 no segm.mat, 4 depth.mat
    with 4 of 6 frames, 5 all joints zero in frame 1 and the person outside in frame 2; one good
    test clip, and its copy in validation."""
    root = str(tmp_path_factory.mktemp("bad") / "surreal")
    synthetic.generate(root, 6, FRAMES, seed=3, splits=("train",))
    synthetic.generate(root, 1, FRAMES, seed=3, splits=("val", "test"))
    stems = [_train_stem(root, k) for k in range(6)]
    video = surreal.clip_paths(stems[1])["video"]
    with open(video, "r+b") as f:
        f.truncate(os.path.getsize(video) // 2)
    info = surreal.clip_paths(stems[2])["info"]
    with open(info, "r+b") as f:
        f.truncate(300)
    os.remove(surreal.clip_paths(stems[3])["segm"])
    depth = surreal.load_depth(surreal.clip_paths(stems[4])["depth"])
    scipy.io.savemat(surreal.clip_paths(stems[4])["depth"],
                     {f"depth_{t + 1}": depth[t] for t in range(4)}, do_compression=True)

    def bad_joints(mat):
        mat["joints2D"][:, :, 1] = 0.0
        mat["joints2D"][0, :, 2] += 400.0  # every joint right of the 320-pixel image
    _edit_info(stems[5], bad_joints)
    return root, stems


EXPECTED_TRAIN_COUNTS = {"clips": 3, "examples": FRAMES + 4 + (FRAMES - 2),
                         "clip_unreadable_file": 2, "clip_missing_file": 1,
                         "clip_frame_count_mismatch": 1, "frame_joints_zero": 1,
                         "frame_person_outside": 1}


def _build(root, data_dir, beam=False):
    kwargs = {}
    if beam:
        import apache_beam as beam

        kwargs["beam_options"] = beam.options.pipeline_options.PipelineOptions(
            ["--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=root, **kwargs))
    return builder


def _str(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _examples(builder, split):
    """{(run, sequence, clip, frame): example} of a built split."""
    source = builder.as_data_source()[split]
    examples = [source[i] for i in range(len(source))]
    return {(_str(e["run"]), _str(e["sequence"]), _str(e["clip"]), int(e["frame"])): e
            for e in examples}


@pytest.fixture(scope="module")
def python_build(bad_tree, tmp_path_factory):
    return _build(bad_tree[0], str(tmp_path_factory.mktemp("py_tfds")))


def test_bad_input_is_skipped_counted_and_good_clips_kept(bad_tree, python_build):
    root, stems = bad_tree
    skipped = json.loads((python_build.data_path / "skipped.json").read_text())
    assert skipped["train"] == EXPECTED_TRAIN_COUNTS
    assert skipped["validation"] == {"clips": 1, "examples": FRAMES}
    train = _examples(python_build, "train")
    assert len(train) == EXPECTED_TRAIN_COUNTS["examples"]
    frames_of = {}
    for _, seq, clip, t in train:
        frames_of.setdefault(f"{seq}_{clip}", []).append(t)
    names = [os.path.basename(s) for s in stems]
    assert sorted(frames_of) == [names[0], names[4], names[5]]
    assert sorted(frames_of[names[0]]) == list(range(FRAMES))
    assert sorted(frames_of[names[4]]) == [0, 1, 2, 3]  # the frames all four files hold
    assert sorted(frames_of[names[5]]) == [0, 3, 4, 5]
    assert {int(e["num_frames"]) for k, e in train.items() if k[1:3] == ("01_03", "c0001")} == {4}



def test_a_missing_or_empty_split_folder_stops_the_build_before_any_clip_is_read(
        tmp_path, monkeypatch):
    """A partial extraction (cmu/val missing, cmu/test holding clips without their
    _info.mat) stops the build before any clip is read, with one error naming both folders
    and the fix: TFDS fails a split without examples only once it reaches it, after writing
    the splits before it (on SURREAL, hours)."""
    import shutil

    from hgmt.data import records

    root = str(tmp_path / "surreal")
    synthetic.generate(root, 1, 2, seed=0)
    shutil.rmtree(os.path.join(root, "cmu", "val"))
    for stem in surreal.find_clips(root, "test"):
        os.remove(surreal.clip_paths(stem)["info"])
    read, clip_examples = [], records.clip_examples

    def reading(stem, *args, **kwargs):
        read.append(stem)
        return clip_examples(stem, *args, **kwargs)

    monkeypatch.setattr(records, "clip_examples", reading)
    with pytest.raises(FileNotFoundError) as raised:
        _build(root, str(tmp_path / "tfds"))
    assert str(raised.value) == (
        f"SURREAL under --manual_dir={root} is incomplete: {root}/cmu/val is missing; "
        f"{root}/cmu/test holds no clip (no run*/<seq>/<seq>_c<NNNN>_info.mat). Nothing was "
        f"built. The build needs all three split folders, laid out as cmu/{{train,val,test}}/"
        f"run{{0,1,2}}/<seq>/<seq>_c<NNNN>{{.mp4,_info.mat,_depth.mat,_segm.mat}} "
        f"(docs/surreal_format.md); a partial extraction lacks some. Extract "
        f"SURREAL_v1.tar.gz again, completely, and pass the folder that contains cmu/ as "
        f"--manual_dir")
    assert read == []


def test_clips_that_would_empty_a_split_or_are_misnamed_stop_the_build_before_it(tmp_path,
                                                                                 monkeypatch):
    """Every validation clip without its _depth.mat (all would be skipped, and TFDS fails the
    empty split after writing train), or a clip named unlike its sequence folder (the name
    did not parse as the build reached it): the build stops before any clip is read, naming
    the folder or the clip and the fix."""
    import shutil

    from hgmt.data import records

    root = str(tmp_path / "surreal")
    synthetic.generate(root, 1, 2, seed=0)
    read, clip_examples = [], records.clip_examples
    monkeypatch.setattr(records, "clip_examples",
                        lambda stem, *a, **k: (read.append(stem), clip_examples(stem, *a, **k))[1])
    val = surreal.find_clips(root, "validation")
    for stem in val:
        os.remove(surreal.clip_paths(stem)["depth"])
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"incomplete: {root}/cmu/val holds no clip with all four files (.mp4, _info.mat, "
            f"_depth.mat, _segm.mat). Nothing was built.")):
        _build(root, str(tmp_path / "tfds"))
    for stem in val:
        shutil.copy(surreal.clip_paths(surreal.find_clips(root, "train")[0])["depth"],
                    surreal.clip_paths(stem)["depth"])
    stem = surreal.find_clips(root, "test")[0]
    odd = os.path.join(os.path.dirname(stem), "99_99_c0009")
    for kind, path in surreal.clip_paths(stem).items():
        shutil.copy(path, surreal.clip_paths(odd)[kind])
    with pytest.raises(ValueError) as raised:
        _build(root, str(tmp_path / "tfds"))
    seq = os.path.basename(os.path.dirname(stem))
    assert str(raised.value) == (
        f"SURREAL under --manual_dir={root} holds clips named unlike their sequence folder, "
        f"which SURREAL's never are: {odd}: clip name '99_99_c0009' does not match sequence "
        f"'{seq}'. Nothing was built. Rename or remove them (<seq>/<seq>_c<NNNN>: "
        f"docs/surreal_format.md)")
    assert read == []


def test_a_split_of_unreadable_clips_is_named_with_what_was_counted(tmp_path):
    """Clips whose files are all there but unreadable leave a split empty: the error names
    the split and the reasons counted, not TFDS's 'No examples were yielded'."""
    from hgmt.data import records

    root = str(tmp_path / "surreal")
    synthetic.generate(root, 1, 2, seed=0)
    stems = surreal.find_clips(root, "validation")
    for stem in stems:
        with open(surreal.clip_paths(stem)["info"], "wb") as f:
            f.write(b"not a mat file")
    counts = collections.Counter()
    frames = data_builders.surreal.surreal_dataset_builder.Builder.BUILDER_CONFIGS[0].frames
    with pytest.raises(ValueError) as raised:
        list(records.python_examples(stems, frames, counts, "split 'validation'"))
    assert str(raised.value) == (
        f"split 'validation': none of its {len(stems)} clips gave a usable frame (counted: "
        f"clip_unreadable_file {len(stems)}); the warnings above name each clip's file and "
        f"reason: mend them and build again")


def test_a_manual_dir_that_is_the_archive_or_at_another_level_is_told_where_to_point(tmp_path):
    """--manual_dir naming the downloaded archive, a split folder or the folder above the
    one that holds cmu/: each error says what to give."""
    root = tmp_path / "above" / "SURREAL"
    (root / "cmu" / "train" / "run0").mkdir(parents=True)  # TFDS refuses an empty folder
    archive = tmp_path / "SURREAL_v1.tar.gz"
    archive.write_bytes(b"\x1f\x8b")
    with pytest.raises(NotADirectoryError, match=re.escape(
            f"--manual_dir={archive}: a file (the downloaded archive?); extract it (tar xzf "
            f"SURREAL_v1.tar.gz) and give the folder that contains cmu/")):
        _build(str(archive), str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"--manual_dir names the split folder cmu/train: give the folder two levels up, "
            f"--manual_dir={root}.")):
        _build(str(root / "cmu" / "train"), str(tmp_path / "tfds"))
    with pytest.raises(FileNotFoundError, match=re.escape(
            f"; cmu/ is one level down: --manual_dir={root}.")):
        _build(str(root.parent), str(tmp_path / "tfds"))


def test_the_builders_default_config_is_every10(tmp_path):
    """`surreal` without a config is surreal/every10, as the docs say (TFDS reads
    DEFAULT_BUILDER_CONFIG_NAME; without it the first config, middle, was the default)."""
    assert tfds.builder("surreal", data_dir=str(tmp_path)).builder_config.name == "every10"


def test_a_builder_sent_to_another_process_keeps_its_file_format(tmp_path):
    """`tfds build --num-processes` pickles each config's builder to a pool's worker, which
    builds it anew from the arguments the builder kept: without file_format among them, the
    workers wrote tfrecord shards under --file_format=array_record."""
    builder = tfds.builder("surreal/middle", data_dir=str(tmp_path), file_format="array_record")
    copy = pickle.loads(pickle.dumps(builder))
    assert copy.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
    assert copy.builder_config.name == "middle" and copy.data_dir == builder.data_dir


def test_a_manual_dir_naming_cmu_itself_is_told_to_give_its_parent(tmp_path):
    """--manual_dir=<root>/cmu (a common slip): the error names the parent to give."""
    root = tmp_path / "SURREAL"
    (root / "cmu" / "train").mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as raised:
        _build(str(root / "cmu"), str(tmp_path / "tfds"))
    assert str(raised.value).startswith(
        f"{root}/cmu/cmu not found: --manual_dir must be the folder that contains cmu/ "
        f"(cmu/train, cmu/val, cmu/test); --manual_dir names cmu/ itself: give its parent, "
        f"--manual_dir={root}.\n")


def test_a_manual_dir_on_an_object_store_is_refused_naming_it_and_the_fix(tmp_path):
    """The clips are listed and read with Python's file functions, which see no object store:
    a gs:// --manual_dir, which TFDS's own checks of the folder pass, found no clip and the
    build told the user to extract SURREAL again. It stops before TFDS or the builder looks
    into it (this test reaches no bucket), naming it and the fix."""
    from etils import epath

    from data_builders.surreal import surreal_dataset_builder as builder_module

    fix = (r"--manual_dir=gs://bucket/SURREAL is not on a local or mounted file system: the "
           r"builder lists and reads SURREAL's clips with Python's file functions, which do "
           r"not read object stores\. Mount it \(e\.g\. with gcsfuse, at the same path on every "
           r"machine that builds\) and pass the mount point, or copy SURREAL to local disk$")
    with pytest.raises(ValueError, match=f"^{fix}"):
        builder_module.split_clips(epath.Path("gs://bucket/SURREAL"))
    builder = tfds.builder("surreal/all", data_dir=str(tmp_path), file_format="array_record")
    with pytest.raises(ValueError, match=f"^{fix}"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            manual_dir="gs://bucket/SURREAL"))
    builder_module.check_file_system(str(tmp_path))  # local: no error


def test_the_dataset_is_described_and_cited_by_the_builders_readme_and_bib(tmp_path):
    """TFDS takes the description and citation from README.md and CITATIONS.bib beside the
    builder (they prevail over what the builder passes): the README is the catalogue's short
    description, not a build guide (docs/building.md), and both ship with the package."""
    import configparser
    import pathlib

    folder = pathlib.Path(data_builders.surreal.__file__).parent
    info = tfds.builder("surreal/all", data_dir=str(tmp_path)).info
    assert info.description == (folder / "README.md").read_text().strip()
    assert info.citation == (folder / "CITATIONS.bib").read_text().strip()
    assert len(info.description) < 4000 and "## " not in info.description
    assert "docs/building.md" in info.description
    setup = configparser.ConfigParser()
    setup.read(folder.parents[1] / "setup.cfg")
    shipped = setup["options.package_data"]["data_builders.surreal"].split(",")
    assert {"README.md", "CITATIONS.bib", "TAGS.txt", "checksums.tsv", "dummy_data/**/*"} <= {
        name.strip() for name in shipped}  # dummy_data: the builder's test, run on an install


def test_decoded_examples_reproduce_the_source_files(bad_tree, python_build):
    root, stems = bad_tree
    stem = stems[0]
    clip = surreal.load_clip(stem)
    train = _examples(python_build, "train")
    cid = surreal.parse_stem(stem)
    for t in range(FRAMES):
        e = train[(cid.run, cid.sequence, cid.clip, t)]
        np.testing.assert_array_equal(e["joints2d"], clip.info.joints2d[t])
        np.testing.assert_array_equal(e["joints3d"], clip.info.joints3d[t])
        np.testing.assert_array_equal(e["pose"], clip.info.pose[t])
        np.testing.assert_array_equal(e["cam_loc"], clip.info.cam_loc)
        np.testing.assert_array_equal(e["segm"][..., 0], clip.segm[t])
        assert np.abs(e["depth"][..., 0] / 1000.0 - clip.depth[t]).max() <= 0.0005 + 1e-6
        # The stored JPEG against the decoded H.264 frame it was made from.
        mse = np.mean((e["image"].astype(np.float64) - clip.video[t]) ** 2)
        assert 10 * np.log10(255.0**2 / mse) > 33.0, t
    # Codec tolerance: against the frames rendered before H.264 (crf 18, 4:2:0 chroma on a
    # noisy texture) the stored frames measure 29.5 dB PSNR.
    rng = np.random.default_rng([3, 0, 0])  # the generator's stream for train clip 0
    motion, look = synthetic_person.make_motion(rng, FRAMES), synthetic_person.make_look(rng)
    for t in range(FRAMES):
        rendered = synthetic_person.render_frame(motion, look, t)[0].astype(np.float64)
        mse = np.mean((train[(cid.run, cid.sequence, cid.clip, t)]["image"] - rendered) ** 2)
        assert 10 * np.log10(255.0**2 / mse) > 27.0, t


def test_the_test_splits_middle_frames_are_the_decoded_video_frames(bad_tree, python_build):
    """The frame the reference protocols evaluate, the test clip's middle one, is stored as PNG:
    the decoded H.264 frame exactly, as the reference loaders read it; the test split's other
    frames, like every other split's, are JPEG."""
    from hgmt.data import records

    root = bad_tree[0]
    (stem,) = surreal.find_clips(root, "test")
    clip = surreal.load_clip(stem)
    middle, cid = records.clip_middle(clip), clip.id
    test = _examples(python_build, "test")
    for t in range(FRAMES):
        image = test[(cid.run, cid.sequence, cid.clip, t)]["image"]
        assert np.array_equal(image, clip.video[t]) == (t == middle), t
    encoded = {(int(ex.features.feature["frame"].int64_list.value[0]),
                ex.features.feature["image"].bytes_list.value[0][:4] == b"\x89PNG")
               for path in python_build.data_path.glob("*-test.array_record-*")
               for ex in _records(path)}
    assert encoded == {(t, t == middle) for t in range(FRAMES)}


def _records(path) -> list:
    """The tf.train.Examples of an array_record shard, in file order."""
    import tensorflow as tf
    from array_record.python import array_record_module

    reader = array_record_module.ArrayRecordReader(str(path))
    records = reader.read(list(range(reader.num_records())))
    reader.close()
    return [tf.train.Example.FromString(r) for r in records]


@pytest.mark.slow
def test_beam_on_two_workers_builds_what_the_python_path_builds(bad_tree, python_build,
                                                                tmp_path):
    beam_build = _build(bad_tree[0], str(tmp_path / "beam_tfds"), beam=True)
    assert json.loads((beam_build.data_path / "skipped.json").read_text()) == json.loads(
        (python_build.data_path / "skipped.json").read_text())
    assert not list(beam_build.data_path.glob("skipped-*.json"))
    # Same input, same shards: TFDS orders examples by key hash on both paths. (The bytes of
    # a record may differ: protobuf map order is not fixed across processes.)
    shards = sorted(p.name for p in python_build.data_path.glob("*.array_record-*"))
    assert shards == sorted(p.name for p in beam_build.data_path.glob("*.array_record-*"))
    for name in shards:
        assert _records(python_build.data_path / name) == _records(beam_build.data_path / name)
    for split in ("train", "validation", "test"):
        py, bm = _examples(python_build, split), _examples(beam_build, split)
        assert sorted(py) == sorted(bm) and py
        for key, e in py.items():
            for name, value in e.items():
                np.testing.assert_array_equal(bm[key][name], value, err_msg=f"{key} {name}")


def test_demo_build_tells_the_user_what_it_does_without_tfds_warnings(tmp_path, caplog,
                                                                       capsys):
    """A first build logs generating and building, not TFDS's warning that the dataset it is
    about to build has no dataset_info.json yet, and writes nothing to stdout (TFDS's own
    lines go to stderr: stdout holds the commands' and benchmarks' JSON); a second call finds
    it built and logs nothing."""
    import logging

    from tests.conftest import build_demo

    with caplog.at_level(logging.INFO):
        build_demo(str(tmp_path), clips_per_split=1, frames=2)
    assert capsys.readouterr().out == ""
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("generating demo SURREAL clips") for m in messages), messages
    assert any(m.startswith("building surreal/all") for m in messages), messages
    assert not [m for m in messages if "dataset_info.json" in m], messages
    caplog.clear()
    with caplog.at_level(logging.INFO):
        build_demo(str(tmp_path), clips_per_split=1, frames=2)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if "building" in r.getMessage()]


def test_demo_build_refuses_an_interrupted_generation_and_replaces_another(tmp_path):
    """Clips without the generation's completion record (an interrupted generation: one test
    clip of two, no train clip) stop the build, naming the folder to remove, rather than
    building what is there; a complete generation of other settings is replaced, no clip
    left over."""
    import shutil

    from hgmt.data import builds, demo

    root = str(tmp_path / "surreal")
    synthetic.generate(root, clips_per_split=1, frames=4, splits=("test",))  # interrupted
    with pytest.raises(RuntimeError, match=f"{root}/cmu holds clips but {root} has no "
                                           f"{demo.GENERATED_FILE}: an interrupted demo "
                                           f"generation.* Remove {root}/cmu"):
        demo.build(root, str(tmp_path / "a"), clips_per_split=2, frames=4)
    shutil.rmtree(os.path.join(root, "cmu"))
    data_dir = demo.build(root, str(tmp_path / "a"), clips_per_split=2, frames=4)
    for split in ("train", "test"):
        assert len(builds.open_split("surreal/all", data_dir, split)) == 2 * 4
    data_dir = demo.build(root, str(tmp_path / "b"), clips_per_split=1, frames=3)
    assert len(builds.open_split("surreal/all", data_dir, "test")) == 1 * 3
    assert len(surreal.find_clips(root, "test")) == 1


def test_a_demo_build_says_what_it_built_and_keeps_tfds_lines_for_verbosity_1(
        tmp_path, capsys, caplog):
    """Building the demo dataset prints nothing to stdout (the commands' results, JSON) and
    the console shows hgmt's line of what was built, each split's examples in TFDS's split
    order; TFDS's two printed lines ("Downloading and preparing dataset Unknown size ...":
    nothing is downloaded) are logged for --verbosity=1 only (`console.UserLines` drops
    them)."""
    from hgmt import console
    from hgmt.data import demo

    root, data_dir = str(tmp_path / "surreal"), str(tmp_path / "tfds")
    synthetic.generate(root, clips_per_split=1, frames=2)
    with caplog.at_level("INFO"):
        demo.build_dataset(root, data_dir)
    assert capsys.readouterr().out == ""
    shown = [r.getMessage() for r in caplog.records if console.UserLines().filter(r)]
    builder = demo._builder("surreal/all", data_dir)[0]
    assert shown[-1] == (f"built surreal/all into {builder.data_dir}: 2 train examples, "
                         f"2 validation examples, 2 test examples")
    verbose = [r.getMessage() for r in caplog.records if getattr(r, "hgmt_verbose", False)]
    assert [line.split(" ", 2)[:2] for line in verbose] == [
        ["tensorflow_datasets:", "Downloading"], ["tensorflow_datasets:", "Dataset"]]
    assert not any("Downloading" in line for line in shown)


def test_demo_data_of_an_older_generator_is_written_again(tmp_path, caplog):
    """Demo clips and a dataset recorded without the generator's FORMAT_VERSION (written
    before the depth maps held the distance from the camera centre) are generated and built
    again: their depth maps are what the generator now writes."""
    from hgmt.data import demo

    root, data_dir = str(tmp_path / "surreal"), str(tmp_path / "tfds")
    demo.build(root, data_dir, clips_per_split=1, frames=2)
    builder = demo._builder("surreal/all", data_dir)[0]
    old = {"clips_per_split": 1, "frames": 2, "seed": 0}
    for folder in (root, builder.data_dir):
        with open(os.path.join(folder, demo.GENERATED_FILE), "w") as f:
            json.dump(old, f)
    stem = surreal.find_clips(root, "test")[0]
    depth = surreal.load_depth(surreal.clip_paths(stem)["depth"])
    scipy.io.savemat(surreal.clip_paths(stem)["depth"],
                     {f"depth_{t + 1}": d / camera.ray_lengths() for t, d in enumerate(depth)})
    with caplog.at_level("WARNING"):
        demo.build(root, data_dir, clips_per_split=1, frames=2)
    assert "built from other demo settings" in caplog.text
    np.testing.assert_array_equal(surreal.load_depth(surreal.clip_paths(stem)["depth"]), depth)


def test_demo_build_rebuilds_a_dataset_of_other_settings(tmp_path, caplog):
    """A data_dir whose demo dataset was built from other settings is built again from clips
    of the settings asked for; one built with no record of its settings (a real SURREAL build,
    or hgmt's before it kept one) is used as it is, with a warning naming the folder."""
    import shutil

    from hgmt.data import builds, demo

    root, data_dir = str(tmp_path / "surreal"), str(tmp_path / "tfds")
    demo.build(root, data_dir, clips_per_split=1, frames=3)
    assert len(builds.open_split("surreal/all", data_dir, "test")) == 1 * 3
    with caplog.at_level("WARNING"):
        demo.build(root, data_dir, clips_per_split=2, frames=2)
    assert len(builds.open_split("surreal/all", data_dir, "test")) == 2 * 2
    assert "built from other demo settings" in caplog.text
    builder = demo._builder("surreal/all", data_dir)[0]
    os.remove(os.path.join(builder.data_dir, demo.GENERATED_FILE))
    shutil.rmtree(os.path.join(root, "cmu"))  # a rebuild would fail: no clips, no record
    caplog.clear()
    with caplog.at_level("WARNING"):
        demo.build(root, data_dir, clips_per_split=1, frames=3)
    assert len(builds.open_split("surreal/all", data_dir, "test")) == 2 * 2
    assert f"no record of the demo settings it was built from: used as it is (remove " \
           f"{builder.data_dir}" in caplog.text


# The command that writes data_builders/surreal/dummy_data, as the builder's test and
# docs/building.md give it.
DUMMY_DATA_COMMAND = ("python -m hgmt.sources.synthetic --out_dir=data_builders/surreal/dummy_data "
                      "--clips_per_split=2 --frames_per_clip=8")


def test_the_committed_dummy_data_is_what_its_documented_command_writes(tmp_path):
    """The dummy data TFDS's builder test reads is what the command its docs give writes
    today: the same files, each .mat's variables equal and each mp4's frames the same as
    decoded, to within the encoder's one variation: x264 through PyAV writes the bottom-right
    macroblock of some clips otherwise in some processes (memory it reads uninitialised, by
    every sign: with a fixed malloc mmap threshold the bytes never varied), 62-65 dB PSNR
    from the usual frames, so frames must agree above 50 dB. A change to what the generator
    writes fails here (frames of the shading before b26ff25: 24-31 dB; val clips of their
    own) until the dummy data is written again with the command, after removing its cmu/."""
    import pathlib

    repo = pathlib.Path(__file__).resolve().parents[1]
    committed = repo / "data_builders" / "surreal" / "dummy_data"
    for doc in (repo / "data_builders" / "surreal" / "surreal_dataset_builder_test.py",
                repo / "docs" / "building.md"):
        assert DUMMY_DATA_COMMAND in " ".join(doc.read_text().split()), doc
    flags = DUMMY_DATA_COMMAND.split()[3:]
    assert flags[0] == "--out_dir=data_builders/surreal/dummy_data"
    assert synthetic.main([f"--out_dir={tmp_path}", *flags[1:], "--workers=1"]) == 0
    files = sorted(p.relative_to(tmp_path) for p in (tmp_path / "cmu").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(committed) for p in (committed / "cmu").rglob("*")
                           if p.is_file())
    assert len(files) == 3 * 2 * 4
    for name in files:
        fresh, kept = tmp_path / name, committed / name
        if name.suffix == ".mp4":
            assert_same_video(surreal.read_video(str(fresh)), surreal.read_video(str(kept)),
                              name)
            continue
        fresh, kept = scipy.io.loadmat(fresh), scipy.io.loadmat(kept)
        keys = sorted(k for k in fresh if not k.startswith("__"))  # __header__: a date
        assert keys == sorted(k for k in kept if not k.startswith("__")), name
        for key in keys:
            assert fresh[key].shape == kept[key].shape, (name, key)
            if fresh[key].dtype == object:  # cells of strings
                assert [str(x) for x in fresh[key].ravel()] == [
                    str(x) for x in kept[key].ravel()], (name, key)
            else:
                np.testing.assert_array_equal(fresh[key], kept[key], err_msg=f"{name} {key}")


@pytest.mark.slow  # the documented command from another directory; the suite builds with it
def test_the_documented_build_command_runs_from_any_directory(tmp_path):
    """`tfds build surreal --imports=data_builders.surreal ...`, the command README.md,
    docs/building.md and hgmt's errors give (`shards.build_command`), run by TFDS's own
    command line from a directory that is not the checkout (the builder's folder form,
    `tfds build data_builders/surreal`, finds no dataset there), builds every split."""
    import shutil
    import subprocess
    import sys

    from hgmt.data import shards

    root, data_dir = tmp_path / "surreal", tmp_path / "tfds"
    synthetic.generate(str(root), 1, 2, seed=0)
    command = shards.build_command("surreal/all", str(data_dir)).replace(
        "<SURREAL root>", str(root))
    tfds_cli = shutil.which("tfds", path=os.path.dirname(sys.executable)) or shutil.which("tfds")
    (tmp_path / "elsewhere").mkdir()
    done = subprocess.run([tfds_cli, *command.split()[1:]], cwd=tmp_path / "elsewhere",
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    built = tfds.builder("surreal/all", data_dir=str(data_dir))
    assert {s: built.info.splits[s].num_examples for s in ("train", "validation", "test")} == {
        "train": 2, "validation": 2, "test": 2}
