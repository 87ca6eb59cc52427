"""The reference example set: test frames the references keep but cannot use are kept in the
test split as flagged placeholders, skipped in training, evaluated by the reference protocols
as their code evaluates them (zero input, background labels, counted in N), left out by
hgmt's, and counted in every evaluation JSON."""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.io

from hgmt.data import cropping, records
from hgmt.evaluation import protocols
from hgmt.sources import body, frame_selection, surreal, synthetic
from tests.test_protocols import _pose3d_case, _run


def _damage_test_clips(root):
    """Demo clips under root; in the test split clip 1's frame 1 (its middle) gets the
    reference loaders' unset joints (all 16 at 1-based (1, 239)), its frame 3 all joints at
    zero, and clip 2 loses its _segm.mat. Returns the test stems."""
    stems = surreal.find_clips(root, "test")
    info = surreal.clip_paths(stems[0])["info"]
    mat = {k: v for k, v in scipy.io.loadmat(info).items() if not k.startswith("__")}
    mat["joints2D"][:, :, 1] = 0.0
    mat["joints2D"][1, body.SMPL_TO_JOINT, 1] = 238.0  # joints2D is (2, 24, T)
    mat["joints2D"][:, :, 3] = 0.0
    scipy.io.savemat(info, mat)
    os.remove(surreal.clip_paths(stems[1])["segm"])
    return stems


def test_test_split_keeps_unusable_frames_flagged_other_splits_skip_them(tmp_path):
    """The test split flags what the reference loaders cannot use (unset joints, a missing
    file) and keeps what only hgmt rejects (all joints zero) whole; train and validation
    skip both."""
    synthetic.generate(str(tmp_path), clips_per_split=2, frames=4, seed=1)
    stems = _damage_test_clips(str(tmp_path))
    kept, counts = {}, collections.Counter()
    for stem in stems:
        kept.update(records.clip_examples(stem, records.FrameSelection(keep_unusable=True),
                                          counts))
    flagged = {k: e["unusable"] for k, e in kept.items() if e["unusable"]}
    cid0, cid1 = surreal.parse_stem(stems[0]), surreal.parse_stem(stems[1])
    assert flagged == {f"{cid0.run}/{cid0.name}/0001": "frame_joints_unset",
                       f"{cid1.run}/{cid1.name}/0000": "clip_missing_file"}
    assert len(kept) == 5  # clip 1's 4 frames, clip 2's one placeholder
    assert counts["flagged_frame_joints_unset"] == 1 and counts["flagged_clip_missing_file"] == 1
    zero = kept[f"{cid0.run}/{cid0.name}/0003"]
    assert not np.any(zero["joints2d"]) and len(zero["image"]) > 1000  # the real frame
    placeholder = kept[f"{cid1.run}/{cid1.name}/0000"]
    assert placeholder["frame"] == 0 and placeholder["num_frames"] == 1  # its own middle
    assert not np.any(placeholder["joints2d"]) and placeholder["sequence"] == cid1.sequence
    # Without keep_unusable (train and validation) they are skipped and counted.
    skipped = collections.Counter()
    plain = {k: e for s in stems for k, e in records.clip_examples(s, records.FrameSelection(),
                                                                  skipped)}
    assert len(plain) == 2 and not any(e["unusable"] for e in plain.values())
    assert skipped["frame_joints_unset"] == 1 and skipped["frame_joints_zero"] == 1
    assert skipped["clip_missing_file"] == 1


def test_frames_hgmt_rejects_are_kept_whole_and_marked_rejected(tmp_path):
    """A test frame hgmt's own check rejects (all joints zero), kept whole in the test split,
    comes out of `eval_batches` marked `rejected` (which hgmt's definitions leave out) but not
    `unusable` (the reference placeholders), in either crop window."""
    from hgmt.data import eval_data

    synthetic.generate(str(tmp_path), clips_per_split=1, frames=4, seed=1, splits=("test",))
    stem, = surreal.find_clips(str(tmp_path), "test")
    info = surreal.clip_paths(stem)["info"]
    mat = {k: v for k, v in scipy.io.loadmat(info).items() if not k.startswith("__")}
    mat["joints2D"][:, :, 2] = 0.0
    scipy.io.savemat(info, mat)
    source = [e for _, e in records.clip_examples(
        stem, records.FrameSelection(keep_unusable=True), collections.Counter())]
    assert len(source) == 4 and not any(e["unusable"] for e in source)
    for window in cropping.WINDOWS:
        batch, = eval_data.eval_batches(source, [0, 1, 2, 3], batch_size=4, image_size=64,
                                        window=window)
        np.testing.assert_array_equal(batch["rejected"], [0, 0, 1, 0])
        np.testing.assert_array_equal(batch["unusable"], [0, 0, 0, 0])


def test_placeholder_crops_to_zero_input_background_labels_and_training_skips_it():
    from hgmt.data import placeholders
    from hgmt.data.augment import Augment

    cid = surreal.parse_stem("/x/cmu/test/run0/03_01/03_01_c0001")
    record = records.unusable_example(cid, 0, 1, "clip_unreadable_file")
    ex = cropping.crop_example(record, 64, Augment.none())
    assert ex["unusable"] == 1.0 and not ex["image"].any()
    assert not ex["segm"].any() and not ex["depth_class"].any()
    assert all(np.isfinite(np.asarray(v, np.float64)).all() for v in ex.values())
    skip = placeholders.SkipUnusable()
    assert not skip.filter(record) and skip.filter({**record, "unusable": b""})



class _AllFlagged:
    """A built split whose every record reads as a flagged placeholder."""

    def __init__(self, source):
        self.source, self.dataset_info, self.split = source, source.dataset_info, source.split

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        return {**self.source[index], "unusable": b"clip_missing_file"}

    def __repr__(self):
        return repr(self.source)


def _first_batch(loader, timeout_s: float = 60.0):
    """The loader's first batch, or the error it raised; fails where none comes in time
    (a loader that waits forever)."""
    import threading

    out = {}

    def draw():
        try:
            out["batch"] = next(iter(loader))
        except Exception as e:  # noqa: BLE001  (handed to the test)
            out["error"] = e

    thread = threading.Thread(target=draw, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert out, f"the loader gave neither a batch nor an error in {timeout_s} s"
    return out


@pytest.mark.parametrize("worker_count", [0, 1])
def test_a_training_split_of_placeholders_only_is_an_error_naming_it_not_a_wait(demo_dataset,
                                                                                worker_count):
    """A training loader over a split whose every record is a placeholder (or over an empty
    one) raises NoUsableRecords naming the split, its build command and the train split,
    where it read the split round forever; one usable record among more placeholders in a
    row than PLACEHOLDER_RUN is still trained on, alone. With a loader worker the error,
    raised in the worker process, reaches the trainer as the same one-line NoUsableRecords."""
    import pickle

    import grain.python as grain

    from hgmt.data import builds, input_pipeline, placeholders

    class Index(grain.MapTransform):
        def map(self, element):
            return {"i": element["i"]}

    data_dir = demo_dataset[1]
    flagged = _AllFlagged(builds.open_split("surreal/all", data_dir, "test"))
    loader = input_pipeline.endless_loader(flagged, Index(), batch_size=2, seed=0,
                                           worker_count=worker_count)
    error = _first_batch(loader).get("error")
    assert isinstance(error, placeholders.NoUsableRecords), error
    said = str(error)
    assert said.startswith(f"split 'test' of dataset 'surreal/all/{flagged.dataset_info.version}' "
                           f"under {data_dir} has nothing to train on: all {len(flagged)} of "
                           f"its records are placeholders of unusable frames")
    assert "train split" in said and f"--data_dir={data_dir} --config=all" in said
    assert "\n" not in said
    # A grain worker process gets the split it filters with its copy of the filter.
    assert pickle.loads(pickle.dumps(placeholders.SkipUnusable(flagged))).source.split == "test"
    with pytest.raises(placeholders.NoUsableRecords, match="it holds no record"):
        input_pipeline.endless_loader([], Index(), batch_size=2, seed=0, worker_count=worker_count)
    run = 2 * placeholders.PLACEHOLDER_RUN + 1
    mostly = [{"i": i, "unusable": b"" if i == run - 1 else b"frame_joints_unset"}
              for i in range(run)]
    batch = _first_batch(input_pipeline.endless_loader(
        mostly, Index(), batch_size=2, seed=0, worker_count=worker_count)).get("batch")
    assert batch is not None and batch["i"].tolist() == [run - 1, run - 1]


class _DamagedAmongPlaceholders:
    """`size` records, each a flagged placeholder but those at `usable`, and those at `damaged`,
    which do not read (a checksum mismatch, as array_record reports one: damage, not an I/O
    error to retry)."""

    def __init__(self, size, damaged, usable=()):
        self.size, self.damaged, self.usable = size, set(damaged), set(usable)

    def __len__(self):
        return self.size

    def __getitem__(self, index):
        if index in self.damaged:
            raise ValueError(f"checksum mismatch in record {index}")
        return {"i": index, "unusable": b"" if index in self.usable else b"clip_missing_file"}


def test_a_damaged_record_among_placeholders_counts_as_the_loader_filter_counts_it():
    """A record that does not read (damaged) passes the training loader's filter, for the
    transform to replace (`record_reads.first_good`), so the look for a usable record once
    PLACEHOLDER_RUN placeholders were skipped counts it as one, where it refused the split as
    all placeholders; a split whose every record reads as a placeholder is still refused.
    The damaged record is replaced by the next record of its shard that reads and is no
    placeholder (the filter's `passes_filter`), however many placeholders come between: where
    the next that read was taken, a placeholder trained on. With none left in the shard the
    loader raises NoUsableRecords naming the shard."""
    import grain.python as grain

    from hgmt.data import input_pipeline, placeholders, record_reads

    run = 2 * placeholders.PLACEHOLDER_RUN + 1
    source = _DamagedAmongPlaceholders(run, damaged=[run - 1])
    assert placeholders.has_usable_record(source)
    assert not placeholders.has_usable_record(_DamagedAmongPlaceholders(run, damaged=[]))

    class Replaced(grain.MapTransform):  # the training transforms' replacement (TrainCrop's)
        def __init__(self, source):
            self.source, self.shards = source, record_reads.Shards.of(source)

        def map(self, element):
            return record_reads.make_guarded(element, self.source, self.shards,
                                             lambda r: {"i": r["i"]},
                                             usable=placeholders.passes_filter)

    # The damaged record, the only one the filter passes, and nothing but placeholders after it
    # in its shard (wrapping round): nothing to train on.
    out = _first_batch(input_pipeline.endless_loader(source, Replaced(source), batch_size=2,
                                                     seed=0, worker_count=0))
    error = out.get("error")
    assert isinstance(error, placeholders.NoUsableRecords), out
    assert str(error) == (
        f"<memory> holds no record that can replace <memory> record {run - 1} (index {run - 1} "
        f"of the split): its {run} records are 1 damaged and {run - 1} placeholders of "
        f"unusable frames (a build keeps them in its test split, for evaluation), so the "
        f"training loader has nothing to train on there. Train on a split with usable frames, "
        f"such as a build's train split")
    # One usable record, 50 records on (past MAX_TRIES), and more damaged ones on the way:
    # each damaged record is replaced by it and lists the damaged ones it met.
    source = _DamagedAmongPlaceholders(run, damaged=[run - 1, 0, 3], usable=[50])
    shards = record_reads.Shards.of(source)
    assert record_reads.first_good(run - 1, source, shards, dict, usable=placeholders.passes_filter
                                   ) == ({"i": 50, "unusable": b""}, [run - 1, 0, 3])
    assert record_reads.first_good(1, source, shards, dict) == (  # without `usable`: the next read
        {"i": 1, "unusable": b"clip_missing_file"}, [])
    out = _first_batch(input_pipeline.endless_loader(source, Replaced(source), batch_size=2,
                                                     seed=0, worker_count=0))
    assert "error" not in out, out["error"]
    assert out["batch"]["i"].tolist() == [50, 50]
    assert set(out["batch"]["damaged"].ravel().tolist()) <= {run - 1, 0, 3, -1}
    # MAX_TRIES damaged records with placeholders between them: a bad copy, as in a row.
    every_other = _DamagedAmongPlaceholders(run, damaged=range(0, 2 * record_reads.MAX_TRIES, 2),
                                            usable=[run - 1])
    with pytest.raises(record_reads.TooManyDamaged, match=(
            rf"^{record_reads.MAX_TRIES} records are damaged in <memory> \(from record 0, "
            rf"{record_reads.MAX_TRIES - 1} placeholders of unusable frames between them; the "
            rf"first: does not read \(ValueError: checksum mismatch in record 0\)\): the shard "
            rf"is a bad copy")):
        record_reads.first_good(0, every_other, record_reads.Shards.of(every_other), dict,
                                usable=placeholders.passes_filter)


class _OneUsable:
    """A built split whose every record reads as a flagged placeholder but record `usable`,
    and whose record `damaged` does not read (a checksum mismatch)."""

    def __init__(self, source, usable, damaged):
        self.source, self.dataset_info, self.split = source, source.dataset_info, source.split
        self.usable, self.damaged = usable, damaged

    def __len__(self):
        return len(self.source)

    def __getitem__(self, index):
        if index == self.damaged:
            raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")
        record = self.source[index]
        return record if index == self.usable else {**record, "unusable": b"clip_missing_file"}

    def __repr__(self):
        return repr(self.source)


def test_the_training_loaders_replace_a_damaged_record_by_a_usable_one_not_a_placeholder(
        demo_dataset):
    """Both training loaders (the host crop, `TrainCrop`, and the device path's records,
    `DecodeRecord`) replace a damaged record by the next record of its shard that their filter
    passes, never a placeholder (which the losses do not leave out): here the shard's last
    record, the only usable one, where the record after the damaged one, a placeholder, was
    trained on."""
    from hgmt.data import builds, device_augment, input_pipeline, record_reads

    test = builds.open_split("surreal/all", demo_dataset[1], "test")
    shards = record_reads.Shards.of(test)
    first, last = shards.starts[0], shards.starts[0] + shards.lengths[0] - 1
    assert last - first >= 2
    split = _OneUsable(test, usable=last, damaged=first)
    usable = test[last]
    for name, loader in (
            ("host", input_pipeline.train_loader(split, batch_size=2, image_size=32, seed=0,
                                                 worker_count=0)),
            ("device", device_augment.decode_loader(split, batch_size=2, seed=0,
                                                    worker_count=0))):
        batch = next(iter(loader))
        assert sorted(set(batch["damaged"][:, 0].tolist())) == [-1, first], name
        if name == "host":
            assert batch["unusable"].tolist() == [0.0, 0.0]
        else:
            np.testing.assert_array_equal(
                batch["joints3d"], np.stack([np.asarray(usable["joints3d"], np.float32)] * 2))


def _flag(batch, *flagged):
    b = batch["position"].shape[0]
    return {**batch, "unusable": jnp.zeros(b).at[jnp.asarray(flagged)].set(1.0)}


def test_reference_protocols_count_flagged_frames_hgmt_leaves_them_out():
    # pose3d: bodynet training/dataset.lua:795 gives an unusable frame no annotations
    # (`instance = {}`); util/eval.lua:430-433 then adds no error for it, :520 still divides
    # by the batch size and test.lua:87 by N/4. In test_protocols' 5-example case (ex 0-3 the
    # one full batch), flagging ex 2 removes its r_ankle error (3.333 mm, derived there) and
    # its l_ankle's (an all-zero volume), leaving l_ankle's error in ex 3 (that of every joint
    # at the pelvis pixel there, as l_hip's), and leaves the divisor at 5.
    pred, batch = _pose3d_case()
    ankle = 1000 * 6.0 * (1 / 0.3 - 3) / 600
    _, plain = _run("bodynet", "pose3d", pred, batch)
    _, s = _run("bodynet", "pose3d", pred, _flag(batch, 2))
    assert s["mjd_mm_per_joint"]["r_ankle"] == pytest.approx(
        plain["mjd_mm_per_joint"]["r_ankle"] - ankle / 5, abs=2e-3)
    assert s["mjd_mm_per_joint"]["l_ankle"] == pytest.approx(
        plain["mjd_mm_per_joint"]["l_hip"], rel=1e-5)
    assert s["mjd_mm_per_joint"]["l_ankle"] < plain["mjd_mm_per_joint"]["l_ankle"] - 50
    # hgmt's protocol: as if ex 2 were not there; the same for a frame hgmt's own check
    # rejects (`rejected`), which the reference definitions evaluate.
    keep = jnp.asarray([0, 1, 3, 4])
    _, h = _run("hgmt", "pose3d", pred, _flag(batch, 2))
    _, h4 = _run("hgmt", "pose3d", pred[keep], jax.tree.map(lambda x: x[keep], batch))
    assert h["mjd_mm"] == pytest.approx(h4["mjd_mm"], rel=1e-6)
    rejected = {**batch, "rejected": jnp.zeros(5).at[2].set(1.0)}
    _, hr = _run("hgmt", "pose3d", pred, rejected)
    assert hr["mjd_mm"] == pytest.approx(h4["mjd_mm"], rel=1e-6)
    _, sr = _run("bodynet", "pose3d", pred, rejected)
    assert sr["mjd_mm"] == pytest.approx(plain["mjd_mm"], rel=1e-6)

    # segm: surreal dataset.lua:333-336 makes the labels all background (class 1), and
    # eval.lua:22-50 counts its predicted part pixels into the parts' unions. Six 2x2 images,
    # each a SURREAL test batch (training/exp/eval.sh:10): ex 0 all head, predicted right;
    # ex 5 flagged, its prediction all head: head IoU = 4 / (4 + 4).
    gt = np.zeros((6, 2, 2), int)
    gt[0] = 1
    pr = np.zeros((6, 2, 2), int)
    pr[0] = pr[5] = 1
    seg = _flag({"segm": jnp.asarray(gt), "position": jnp.arange(6)}, 5)
    _, s = _run("surreal", "segm", jax.nn.one_hot(pr, 15), seg)
    assert s["iou_per_part"]["head"] == pytest.approx(0.5)
    _, h = _run("hgmt", "segm", jax.nn.one_hot(pr, 15), seg)
    assert h["iou_per_part"]["head"] == 1.0  # ex 5 left out

    # depth: all background, so depthRMSE adds 0 (eval.lua:62-67) but test.lua:58 counts the
    # image: ex 0 has 2 foreground pixels 1 bin off, the rest none -> 1 / 6.
    cls = np.zeros((6, 2, 2), int)
    cls[0, 0] = 10
    dep = _flag({"depth_class": jnp.asarray(cls), "position": jnp.arange(6)}, 5)
    _, s = _run("surreal", "depth", jax.nn.one_hot(np.where(cls > 0, 11, 0), 20), dep)
    assert s["rmse_bins"] == pytest.approx(1 / 6) and s["images_no_foreground"] == 5


def test_bodynet_pck_never_scores_a_flagged_frame():
    # bodynet dataset.lua:786-792 fills an unusable frame's heatmaps with 1 (multi-task) or 0:
    # their first maximum is pixel (1,1), never scored (util/eval.lua:13), whatever the
    # placeholder's joints are.
    from tests.test_protocols import _pose2d_case

    pred, batch = _pose2d_case()
    _, plain = _run("bodynet", "pose2d", pred, batch)
    _, s = _run("bodynet", "pose2d", pred, _flag(batch, 0, 1, 2, 3))  # batch A all flagged
    assert s["batches_without_scored_joint"] == 2
    # Batch A is NaN now: batch B's 8.75 / 9 over 14 / 4 - 2 NaN batches.
    assert s["pck"] == pytest.approx((8.75 / 9) / 1.5, abs=1e-9)
    assert s["pck"] != pytest.approx(plain["pck"])


def test_flagged_input_is_the_references_normalised_zero():
    from hgmt.evaluation import evaluator
    from hgmt.models import IMAGE_MEAN, IMAGE_STD

    # bodynet dataset.lua:773 a zero tensor after normalisation (the mean colour); surreal
    # dataset.lua:334 zero + 0.5.
    np.testing.assert_allclose(evaluator.unusable_input("bodynet"), np.asarray(IMAGE_MEAN) * 255)
    np.testing.assert_allclose(evaluator.unusable_input("surreal"),
                               (np.asarray(IMAGE_MEAN) + 0.5 * np.asarray(IMAGE_STD)) * 255)


@pytest.mark.slow
def test_every_evaluation_json_counts_flagged_frames(tmp_path):
    from configs import default
    from hgmt.data import demo
    from hgmt.evaluation import evaluator, markdown
    from hgmt.models import create_model
    from hgmt.tasks import heads
    from hgmt.training import steps

    root = str(tmp_path / "surreal")
    synthetic.generate(root, clips_per_split=2, frames=4, seed=1)
    _damage_test_clips(root)
    data_dir = demo.build_dataset(root, str(tmp_path / "tfds"), dataset="surreal/all")
    config = default.get_config("tasks=pose3d+segm,runlocal")
    config.dataset, config.data_dir = "surreal/all", data_dir
    config.model.features, config.eval_batch_size = 16, 8
    config.image_size = 256  # the reference protocols' 64 x 64 label maps
    tasks = ("pose3d", "segm")
    state = steps.create_train_state(jax.random.key(0), config,
                                     create_model(config.model, heads(tasks)))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    for protocol in ("hgmt", "bodynet", "surreal"):
        everything = evaluator.evaluate(config, variables, protocol=protocol, frames="all",
                                        max_examples=0)
        # Clip 1's 4 frames and clip 2's placeholder: the unset joints and the placeholder
        # flagged; hgmt's check also rejects the frame with all joints zero.
        assert everything["num_examples"] == 5 and everything["window"] == (
            "hgmt" if protocol == "hgmt" else "reference")
        assert everything["unusable_frames"]["count"] == 2
        assert everything["unusable_frames"]["rejected_by_hgmt"] == 3
        summary = evaluator.evaluate(config, variables, protocol=protocol, frames="middle",
                                     max_examples=0)
        unusable = summary["unusable_frames"]
        assert summary["num_examples"] == 2 and unusable["count"] == 2, protocol  # both middles
        assert unusable["treatment"]["segm"].startswith(
            "left out" if protocol == "hgmt" else f"evaluated as {protocol}'s code does")
        assert unusable["treatment"]["pose3d"].startswith(
            "evaluated as bodynet" if protocol == "bodynet" else "left out")
        if protocol != "hgmt":
            assert unusable["treatment"]["segm"].endswith(
                f"input normalised to {evaluator.unusable_level(protocol)}, the labels of a "
                f"frame without a person (no joint, part or foreground), counted in N")
    # SURREAL tests one example a batch (training/exp/eval.sh:10): both are evaluated.
    assert summary["segm"]["examples_not_evaluated"] == 0
    assert "fewer than one reference test batch" not in str(summary["segm"].get("null_reasons"))
    assert "**2 flagged unusable test frame(s)**" in markdown.to_markdown(summary)


def _cut_labels(stem: str, frames: int) -> None:
    """Keeps the first `frames` frames of a clip's _depth.mat and _segm.mat: its _info.mat
    (and video) then hold more frames than the four files share."""
    for key, prefix in (("depth", "depth_"), ("segm", "segm_")):
        path = surreal.clip_paths(stem)[key]
        mat = scipy.io.loadmat(path)
        scipy.io.savemat(path, {f"{prefix}{t}": mat[f"{prefix}{t}"] for t in range(1, frames + 1)})


def test_middle_frame_is_ceil_half_of_the_info_files_frames():
    """The reference loaders' test frame is t1 = ceil(iT/2) with iT the zrot values of the
    _info.mat (surreal training/loader_SURREAL.lua:9-16, donkey.lua:67,75). An 8-frame clip
    whose label files hold 6: frame 3 (1-based 4), not ceil(6/2) - 1 = 2; with 3 label frames
    frame 3 is in no file but the _info.mat and the video: a flagged placeholder in the test
    split, counted and skipped in training."""
    import tempfile

    with tempfile.TemporaryDirectory() as root:
        stem, = synthetic.generate(root, clips_per_split=1, frames=8, seed=1, splits=("test",))
        _cut_labels(stem, 6)
        middle = records.FrameSelection(middle_only=True, keep_unusable=True)
        (key, record), = records.clip_examples(stem, middle, collections.Counter())
        assert key.endswith("/0003") and int(record["frame"]) == 3 and not record["unusable"]
        assert (int(record["num_frames"]), int(record["info_frames"])) == (6, 8)
        _cut_labels(stem, 3)
        counts = collections.Counter()
        (key, record), = records.clip_examples(stem, middle, counts)
        assert key.endswith("/0003") and record["unusable"] == "frame_missing"
        assert (int(record["frame"]), int(record["num_frames"])) == (3, 3)
        assert counts["flagged_frame_missing"] == 1
        counts = collections.Counter()
        assert not list(records.clip_examples(stem, records.FrameSelection(middle_only=True),
                                              counts))
        assert counts["frame_missing"] == 1
        every2 = [int(r["frame"]) for _, r in records.clip_examples(
            stem, records.FrameSelection(every=2, keep_unusable=True), collections.Counter())]
        assert every2 == [0, 2, 3]  # frames 0 and 2 and the placeholder of the middle



def test_a_clip_whose_info_file_holds_no_frames_is_flagged_in_the_test_split_and_counted(
        tmp_path):
    """A test clip whose _info.mat holds no frames (its arrays emptied; video, depth and segm
    keep 6): the reference loaders' middle frame ceil(0/2) = 0 (1-based) names no frame and
    its joints do not load (surreal training/loader_SURREAL.lua:47-48), as for a missing
    _info.mat (getDuration gives 0, :9-16). It is a clip whose file fails: one flagged
    placeholder standing for its middle frame in the test split, a counted skip elsewhere."""
    import re

    from hgmt.data import eval_data

    stem, = synthetic.generate(str(tmp_path), clips_per_split=1, frames=6, seed=1,
                               splits=("test",))
    path = surreal.clip_paths(stem)["info"]
    mat = {k: v for k, v in scipy.io.loadmat(path).items() if not k.startswith("__")}
    for key in ("joints2D", "joints3D", "pose", "shape", "zrot", "gender"):
        mat[key] = mat[key][..., :0]
    scipy.io.savemat(path, mat)
    with pytest.raises(surreal.FormatError, match=f"^{re.escape(path)}: holds no frames"):
        surreal.load_info(path)
    cid, counts = surreal.parse_stem(stem), collections.Counter()
    for frames in (records.FrameSelection(middle_only=True, keep_unusable=True),
                   records.FrameSelection(every=1, keep_unusable=True)):
        (key, record), = records.clip_examples(stem, frames, counts)
        assert key == f"{cid.run}/{cid.name}/0000"
        assert record["unusable"] == "clip_unreadable_file"
        assert (int(record["frame"]), int(record["num_frames"]),
                int(record["info_frames"])) == (0, 1, 1)
        assert eval_data.record_middle(record) == 0  # what an evaluation takes
    assert counts == {"flagged_clip_unreadable_file": 2}
    counts = collections.Counter()
    for frames in (records.FrameSelection(middle_only=True), records.FrameSelection(every=1)):
        assert list(records.clip_examples(stem, frames, counts)) == []
    assert counts == {"clip_unreadable_file": 2}
    with pytest.raises(ValueError, match="a clip of 0 frames has no middle frame"):
        frame_selection.middle_frame(0)


def test_evaluation_middle_frames_follow_the_info_file_and_old_builds_warn(tmp_path, caplog):
    """A built test split of the two clips above (label files of 6 and of 3 frames)
    evaluates frame 3 of each as its middle frame, the second a placeholder, and its everyK
    frames leave the placeholder out; a build without info_frames (before 1.5.0) is warned
    about when its skipped.json counts clips whose files disagree on frame count."""
    import json
    import types

    from hgmt.data import builds, demo, eval_data

    root, data_dir = str(tmp_path / "surreal"), str(tmp_path / "tfds")
    synthetic.generate(root, clips_per_split=2, frames=8, seed=1)
    for stem, frames in zip(surreal.find_clips(root, "test"), (6, 3), strict=True):
        _cut_labels(stem, frames)
    demo.build_dataset(root, data_dir, "surreal/all")
    src = builds.open_split("surreal/all", data_dir, "test")

    def frames(spec):  # (clip, frame, unusable) of the records `spec` selects
        return sorted((src[i]["clip"], int(src[i]["frame"]), src[i]["unusable"])
                      for i in eval_data.eval_indices("surreal/all", data_dir, "test", spec))

    assert frames("middle") == [(b"c0001", 3, b""), (b"c0002", 3, b"frame_missing")]
    assert frames("every3") == [(b"c0001", 0, b""), (b"c0001", 3, b""), (b"c0002", 0, b"")]
    info = builds.open_split("surreal/all", data_dir, "test").dataset_info
    caplog.clear()
    with caplog.at_level("WARNING"):
        eval_data.check_middle_frames(info, "surreal/all", data_dir, "test")
    assert not caplog.text
    old = types.SimpleNamespace(features={"frame": 0, "num_frames": 0}, version="1.4.0",
                                data_dir=str(tmp_path / "old"))
    os.makedirs(old.data_dir)
    for mismatched, warned in ((0, False), (1, True)):
        with open(os.path.join(old.data_dir, "skipped.json"), "w") as f:
            json.dump({"test": {"clip_frame_count_mismatch": mismatched}}, f)
        caplog.clear()
        with caplog.at_level("WARNING"):
            eval_data.check_middle_frames(old, "surreal/all", "/data", "test")
        assert ("1.4.0, before 1.5.0: its middle frames are ceil(T/2) of the frames a clip's "
                "four files share" in caplog.text) == warned, caplog.text
    assert "so 1 clip(s) of split 'test'" in caplog.text and "--config=all" in caplog.text


def test_pose2d_hgmt_leaves_out_padding_flagged_and_rejected_frames():
    """hgmt's PCKh and PCK@3.2px count only real, usable frames: a flagged (`unusable`) or
    `rejected` frame and the padding (`mask` 0, repeating the last real frame, as
    input_pipeline's eval batches do) are left out."""
    from tests.test_protocols import R, _heatmaps

    # Ground truth joint j at (10 + 2j, 20), head_top moved to (26, 10): head segment 10 px
    # (upper_neck is at (26, 20)). Predictions at the ground truth, but 8 px right (0.8 head
    # segments, 8 > 3.2 px: wrong at PCKh@0.5 and PCK@3.2px) for joints 8-15 of ex 3 and
    # every joint of ex 1 (unusable), ex 2 (rejected); ex 4-5 are padding, copies of ex 3.
    b = 6
    gt = np.stack([np.stack([10.0 + 2 * np.arange(16), np.full(16, 20.0)], -1)] * b)
    gt[:, body.HEAD_TOP] = [26.0, 10.0]
    pred_xy = gt.copy()
    pred_xy[1:3] += [8.0, 0.0]
    pred_xy[3:, 8:] += [8.0, 0.0]
    batch = {"joints2d": jnp.asarray(gt, jnp.float32), "visible": jnp.ones((b, 16)),
             "image": jnp.zeros((b, 4 * R, 4 * R, 3), jnp.uint8),
             "crop": jnp.tile(jnp.eye(2, 3, dtype=jnp.float32), (b, 1, 1)),
             "position": jnp.asarray([0, 1, 2, 3, 3, 3], jnp.int32),
             "mask": jnp.asarray([1, 1, 1, 1, 0, 0], jnp.float32),
             "unusable": jnp.asarray([0, 1, 0, 0, 0, 0], jnp.float32),
             "rejected": jnp.asarray([0, 0, 1, 0, 0, 0], jnp.float32)}
    _, h = _run("hgmt", "pose2d", jnp.asarray(_heatmaps(pred_xy, b)), batch)
    # Ex 0 and 3 count: joints 0-7 are 2/2 correct, joints 8-15 1/2 -> mean 0.75 (counting
    # the padding: 1/4 for joints 8-15, 0.625; counting ex 1 or 2: 2/3 and 1/3).
    assert h["pckh@0.5"] == 0.75 and h["pck@3.2px"] == 0.75
    assert h["pckh@0.5_per_joint"]["thorax"] == 1.0
    assert h["pckh@0.5_per_joint"]["l_wrist"] == 0.5
    # The curve: 0.75 below 0.8 head segments, 1 from there on (every threshold is <=).
    np.testing.assert_allclose(h["pckh_curve"]["mean"], [0.75] * 16 + [1.0] * 5, atol=1e-6)


def test_bodynet_pck_never_counts_padding():
    """BodyNet's PCK over the 8 examples of test_protocols' batches A and B, evaluated in a
    batch of 12 whose last 4 are padding (`mask` 0), copies of ex 7 at its position, as
    input_pipeline's eval batches pad: the padding is not in batch B."""
    from tests.test_protocols import _pose2d_case

    pred, batch = _pose2d_case()
    take = jnp.asarray([0, 1, 2, 3, 4, 5, 6, 7, 7, 7, 7, 7])
    padded = {k: v[take] for k, v in batch.items()}
    padded["mask"] = jnp.asarray([1.0] * 8 + [0.0] * 4)
    m = protocols.metric("bodynet", "pose2d", 8)
    s = m.summarize(jax.tree.map(np.asarray, m.stats(pred[take], padded)))
    # test_protocols' A: 0.875, B: 8.75 / 9 (r_ankle 3/4, l_wrist unscored, 8 others 1);
    # test.lua:81 divides by 8 / 4 = 2. Counting the padding (ex 7: r_ankle correct) would
    # make B's r_ankle 7/8: (0.875 + 8.875 / 9) / 2.
    assert s["pck"] == pytest.approx((0.875 + 8.75 / 9) / 2, abs=1e-9)
    assert s["pck_per_joint"]["r_ankle"] == pytest.approx(7 / 8)
    assert s["num_batches"] == 2 and s["examples_with_unscored_joint"] == 5


@pytest.mark.parametrize("version,warned", [
    ("1.3.0", ("before 1.4.0, its test split flags", "before 1.7.0, its test frames are JPEG")),
    ("1.6.0", ("before 1.7.0, its test frames are JPEG",)),
    ("1.7.0", ())])
def test_a_reference_protocol_on_an_older_build_says_what_differs_and_how_to_rebuild(
        caplog, version, warned):
    """A build older than the builder version that flags the reference loaders' unusable frames
    (1.4.0) or stores the test split's middle frames losslessly (1.7.0) is named, with each
    difference and the rebuild command; a current one passes silently."""
    import types

    from hgmt.data import builds

    source = types.SimpleNamespace(dataset_info=types.SimpleNamespace(version=version))
    with caplog.at_level("WARNING"):
        builds.check_reference_flags(source, "surreal/middle", "/data/tfds")
    text = caplog.text
    for part in warned:
        assert part in text
    assert ("before 1.4.0" in text) == (version < "1.4.0")
    if warned:
        assert f"built by SURREAL builder version {version}" in text
        assert "Rebuild it: tfds build surreal --imports=data_builders.surreal" in text
        assert "--data_dir=/data/tfds --config=middle" in text
    else:
        assert not text
