"""Input pipeline: crops follow docs/surreal_format.md, flips swap left and right, loaders
shard and resume."""

import glob
import itertools
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from hgmt.data import builds, cropping, eval_data, prefetch, records, worker_signals
from hgmt.data import input_pipeline as ip
from hgmt.sources import body, camera, frame_selection

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def source(demo_dataset):
    return builds.open_split("surreal/all", demo_dataset[1], "train")


def test_crop_window_matches_design():
    joints = np.array([[100.0, 50.0], [140.0, 210.0]] + [[120.0, 100.0]] * 14)
    centre, side = cropping.person_box(joints)
    # box w=40, h=160 -> x in [90,150], y in [-6, 250]; square side 256 centred.
    assert side == pytest.approx(256.0)
    np.testing.assert_allclose(centre, [120.0, 122.0])
    m = cropping.crop_affine(centre, side, 64)
    corners = np.array([[120 - 128, 122 - 128], [120 + 128, 122 + 128]]) @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(corners, [[-0.5, -0.5], [63.5, 63.5]])


def test_a_person_box_of_one_point_is_the_least_window_around_it():
    """All 16 joints at (50, 60): no width or height to widen, so the window is the least
    side, 8 px, centred on the point; a 2 px wide line widens to 3 px, still 8."""
    centre, side = cropping.person_box(np.full((16, 2), [50.0, 60.0]))
    assert side == cropping.MIN_WINDOW_SIDE_PX == 8.0
    np.testing.assert_array_equal(centre, [50.0, 60.0])
    line = np.full((16, 2), [50.0, 60.0])
    line[0, 0] = 52.0  # x 50..52: widened to 49.5..52.5 (3 px), centre 51
    centre, side = cropping.person_box(line)
    assert side == 8.0
    np.testing.assert_allclose(centre, [51.0, 60.0])


@pytest.mark.parametrize("flip", [False, True])
def test_a_rotated_crop_turns_the_window_counter_clockwise(flip):
    """A window of side 16 around (100, 80) cut at 16 px (one crop px per image px), rotated
    by +30 deg: the image px 10 right of the centre lands at c + 10 (cos 30, -sin 30) (up and
    right in the crop, y down: the content turns counter-clockwise, as cv2's
    getRotationMatrix2D), 10 below at c + 10 (sin 30, cos 30), c = (16 - 1) / 2; mirrored,
    the crop's x is reflected about c."""
    m = cropping.crop_affine(np.array([100.0, 80.0]), 16.0, 16, 30.0, flip)
    c, cos, sin = 7.5, np.sqrt(3) / 2, 0.5
    points = np.array([[110.0, 80.0], [100.0, 90.0], [100.0, 80.0]])
    expected = np.array([[c + 10 * cos, c - 10 * sin], [c + 10 * sin, c + 10 * cos], [c, c]])
    if flip:
        expected[:, 0] = 2 * c - expected[:, 0]
    np.testing.assert_allclose(points @ m[:, :2].T + m[:, 2], expected, atol=1e-12)
    # cv2's rotation by +30 about the centre, moved to the crop's centre: the same map.
    import cv2

    rot = cv2.getRotationMatrix2D((100.0, 80.0), 30.0, 1.0) + [[0, 0, c - 100], [0, 0, c - 80]]
    if not flip:
        np.testing.assert_allclose(m, rot, atol=1e-12)


def test_cropped_example_is_consistent(source):
    ex = source[0]
    out = cropping.crop_example(ex, 64, ip.Augment.none())
    assert out["image"].shape == (64, 64, 3) and out["segm"].shape == (16, 16)
    assert out["visible"].sum() == 16  # the widened box holds every joint
    # Joints = the crop affine applied to the 16 SMPL-mapped joints.
    j = ex["joints2d"][body.SMPL_TO_JOINT]
    np.testing.assert_allclose(out["joints2d"], j @ out["crop"][:, :2].T + out["crop"][:, 2],
                               atol=1e-4)
    # Camera-frame 3D joints project back onto the 2D annotation (within its 0.5 px rounding).
    np.testing.assert_allclose(camera.project_camera(out["joints3d"]), j, atol=0.6)
    assert out["pelvis_depth"] == pytest.approx(float(out["joints3d"][body.PELVIS, 2]))
    # Labels: depth foreground where parts are, near the pelvis depth.
    np.testing.assert_array_equal(out["depth"] > 0, out["segm"] > 0)
    fg = out["depth"] > 0
    assert np.abs(out["depth"][fg] - out["pelvis_depth"]).max() < 1.0
    assert set(np.unique(out["segm"])) <= set(range(15)) and len(np.unique(out["segm"])) > 8


def test_flip_swaps_left_and_right(source):
    ex = source[1]
    plain = cropping.crop_example(ex, 64, ip.Augment.none())
    flip_only = ip.Augment(scale_sigma=0.0, rotate_p=0.0, gain=(1.0, 1.0), flip_p=1.0)
    flipped = cropping.crop_example(ex, 64, flip_only)
    r = 16
    unflipped_joints = flipped["joints2d"][body.JOINT_FLIP] * [-1, 1] + [r - 1, 0]
    np.testing.assert_allclose(unflipped_joints, plain["joints2d"], atol=1e-4)
    np.testing.assert_array_equal(body.PART_FLIP[flipped["segm"][:, ::-1]], plain["segm"])
    np.testing.assert_array_equal(flipped["depth"][:, ::-1], plain["depth"])
    # cv2's fixed-point bilinear warp rounds to uint8 differently for mirrored sample positions:
    # allow one grey level.
    assert flipped["image"].dtype == plain["image"].dtype == np.uint8
    assert np.abs(flipped["image"][:, ::-1].astype(int) - plain["image"]).max() <= 1
    np.testing.assert_allclose(flipped["joints3d"][body.JOINT_FLIP] * [-1, 1, 1],
                               plain["joints3d"], atol=1e-6)


def test_crop_of_encoded_bytes_equals_crop_of_tfds_decoded_arrays(demo_dataset):
    """The loader's path (bytes decoded by OpenCV) against TFDS's own decoding: the same label
    maps exactly, the same frame within one grey level (two JPEG decoders' rounding)."""
    raw = builds.open_split("surreal/all", demo_dataset[1], "train")
    arrays = builds.open_split("surreal/all", demo_dataset[1], "train", decode_images=True)
    assert isinstance(raw[0]["image"], bytes) and arrays[0]["image"].shape == (240, 320, 3)
    for i in (0, 3):
        a = cropping.crop_example(raw[i], 64, ip.Augment(), np.random.default_rng(i))
        b = cropping.crop_example(arrays[i], 64, ip.Augment(), np.random.default_rng(i))
        for key in ("segm", "depth", "joints2d", "crop"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert np.abs(a["image"].astype(int) - b["image"]).max() <= 1


def test_colour_gain_is_applied_in_uint8_with_saturation(source):
    ex = source[2]
    gain_only = ip.Augment(scale_sigma=0.0, rotate_p=0.0, gain=(0.6, 1.4), flip_p=0.0)
    plain = cropping.crop_example(ex, 64, ip.Augment.none())
    rng = np.random.default_rng(7)
    gained = cropping.crop_example(ex, 64, gain_only, rng)
    gain = np.random.default_rng(7).uniform(0.6, 1.4, size=3)  # the draw crop_example made
    expected = np.clip(np.round(plain["image"] * gain), 0, 255)
    assert gained["image"].dtype == np.uint8
    # The gain multiplies the warped uint8 crop, rounded to nearest: exactly this.
    np.testing.assert_array_equal(gained["image"], expected)
    assert (expected == 255).any() and (expected != np.trunc(plain["image"] * gain)).any()


def test_a_split_surreal_does_not_have_is_named_with_the_splits_it_has(demo_dataset):
    """'val' (SURREAL's folder name) is no split of the dataset: a ValueError naming its
    splits (before: 'is not built', with a build command, which would never make it)."""
    with pytest.raises(ValueError, match=r"^dataset 'surreal/all' has no split 'val': its "
                                         r"splits are train, validation, test$"):
        builds.open_split("surreal/all", demo_dataset[1], "val")


def test_undecodable_image_bytes_name_the_feature_and_the_fix():
    with pytest.raises(ValueError, match="'image'.*rebuild it with tfds build"):
        records.decoded({"image": b"not a jpeg"}, "image")


def test_the_opencv_requirement_has_the_flags_the_pipeline_reads_with():
    """cv2.IMREAD_COLOR_RGB, with which `decoded` reads the stored frames, first shipped in
    OpenCV 4.11.0 (the opencv-python-headless 4.10.0.84 wheel lacks it; every other cv2 name
    hgmt uses is in 4.10), and 5.1 first cuts label maps nearest by the device path's rule
    (5.0 rounds a tie to the even pixel: docs/interfaces.md): setup.cfg admits neither older
    OpenCV, and admits 5.1.0.95's wheel. The frame decodes in RGB."""
    from hgmt.data import records
    from tests.conftest import setup_requirements

    opencv, = (r for r in setup_requirements() if r.name == "opencv-python-headless")
    assert not opencv.specifier.contains("4.10.0.84")
    assert not opencv.specifier.contains("5.0.0.93")
    assert opencv.specifier.contains("5.1.0.95")
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_allclose(records.decoded({"image": records.jpeg(red)}, "image")[4, 4],
                               [255, 0, 0], atol=2)


def test_augmentation_is_random_but_reproducible(source):
    ex = source[2]
    a = cropping.crop_example(ex, 64, ip.Augment(), np.random.default_rng(5))
    b = cropping.crop_example(ex, 64, ip.Augment(), np.random.default_rng(5))
    c = cropping.crop_example(ex, 64, ip.Augment(), np.random.default_rng(6))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert not np.array_equal(a["crop"], c["crop"])


def test_loader_state_resumes_the_same_stream(source):
    """Also with read-ahead threads where the saved run read in the loader's thread: the
    stream does not depend on config.read_threads."""
    loader = ip.train_loader(source, batch_size=4, image_size=64, seed=1)
    it = iter(loader)
    next(it)
    state = it.get_state()
    expected = next(it)
    it2 = iter(ip.train_loader(source, batch_size=4, image_size=64, seed=1, read_threads=2))
    it2.set_state(state)
    got = next(it2)
    np.testing.assert_array_equal(got["joints2d"], expected["joints2d"])
    np.testing.assert_array_equal(got["image"], expected["image"])
    with pytest.raises(ValueError, match=r"config.read_threads=-1: give 0"):
        ip.read_options(-1)


def _spawned_children() -> list[int]:
    """This process's children that multiprocessing spawned (its resource tracker aside), read
    from /proc without waiting on them (that would take their exit status from grain)."""
    pids = []
    for children in glob.glob(f"/proc/{os.getpid()}/task/*/children"):
        try:
            with open(children) as f:
                pids += [int(pid) for pid in f.read().split()]
        except OSError:  # a thread that has ended
            continue
    spawned = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:  # gone
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            spawned.append(pid)
    return spawned


@pytest.mark.slow
def test_loader_workers_signalled_as_they_start_live_on(source):
    """SIGTERM, SIGUSR1 and SIGINT, as a job's signal to all its processes, sent to each of
    the training loader's 2 worker processes every few milliseconds from the moment it exists
    (while it starts, before it can ignore them), with the loader composed as the trainer
    composes it (`WorkersStartShielded`, its workers started once its position is set): no
    worker dies, and the loader gives the batches of a loader left alone, made fresh and
    restored to a saved position (which starts new workers). Without the shield the first
    worker dies of the first signal."""

    def loader():
        return ip.train_loader(source, batch_size=2, image_size=64, seed=3, worker_count=2,
                               tasks=("pose2d",))

    quiet = iter(loader())
    expected = [next(quiet)["joints2d"] for _ in range(6)]
    state = None
    signalled: set[int] = set()
    stop = threading.Event()

    def storm():
        signums = itertools.cycle(worker_signals.WORKER_IGNORED_SIGNALS)
        while not stop.is_set():
            for pid in _spawned_children():
                try:
                    os.kill(pid, next(signums))
                except ProcessLookupError:
                    continue
                signalled.add(pid)
            time.sleep(0.003)

    del quiet  # its workers end before the storm starts
    storm_thread = threading.Thread(target=storm, daemon=True)
    storm_thread.start()
    try:
        for restore in (False, True):
            data_iter = prefetch.ConsumedPosition(worker_signals.WorkersStartShielded(loader()))
            if restore:
                data_iter.set_state(state)
            data_iter.start_prefetch()
            batches = data_iter.batches()
            first = 3 if restore else 0
            for k in range(first, first + 3):
                np.testing.assert_array_equal(next(batches)["joints2d"], expected[k])
                data_iter.consumed()
            state = data_iter.get_state()
            del batches, data_iter
    finally:
        stop.set()
        storm_thread.join()
    assert len(signalled) >= 4, signalled  # each run's 2 workers, each signalled


def test_the_shield_blocks_the_signals_only_while_workers_can_start():
    """`WorkersStartShielded` blocks WORKER_IGNORED_SIGNALS in the calling thread while the
    iterator is made, its position set, its workers started and, when they were not started
    explicitly, its first batch drawn; a batch drawn after `start_prefetch` is waited for
    with them unblocked (Python runs a signal's handler in the main thread, and only once a
    wait it blocked them in ends)."""

    def blocked() -> bool:
        blocked_now = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        return set(worker_signals.WORKER_IGNORED_SIGNALS) <= blocked_now

    class Recording:
        def __init__(self):
            self.seen = []

        def __iter__(self):
            self.seen.append(("iter", blocked()))
            return self

        def __next__(self):
            self.seen.append(("next", blocked()))
            return {}

        def set_state(self, state):
            self.seen.append(("set_state", blocked()))

        def start_prefetch(self):
            self.seen.append(("start_prefetch", blocked()))

    assert not blocked()
    lazy = Recording()
    it = worker_signals.WorkersStartShielded(lazy)
    next(it), next(it)
    assert lazy.seen == [("iter", True), ("next", True), ("next", False)]
    started = Recording()
    it = worker_signals.WorkersStartShielded(started)
    it.set_state(b"")
    it.start_prefetch()
    next(it)
    assert started.seen == [("iter", True), ("set_state", True), ("start_prefetch", True),
                            ("next", False)]
    assert not blocked()


def test_consecutive_seeds_do_not_share_their_data_order():
    """grain shuffles epoch e with its seed + e and draws example k's randomness from
    Philox(its seed + k): given config.seed as it is, seed s + 1's epoch e was seed s's epoch
    e + 1, and its draws seed s's one example on. The loader gives grain a hash of the seed
    (`grain_seed`, one to one on [0, 2**32): `config_seed` inverts it), so no epoch order and
    no example's draw of seeds 0-3 over 4 epochs is another seed's."""
    import grain.python as grain

    class Draw(grain.RandomMapTransform):
        def random_map(self, element, rng):
            return {"i": element["i"], "draw": rng.integers(2**62)}

    n, epochs, orders, draws = 10, 4, {}, {}
    for seed in range(4):
        loader = iter(ip.endless_loader([{"i": i} for i in range(n)], Draw(), batch_size=n,
                                        seed=seed, worker_count=0))
        batches = [next(loader) for _ in range(epochs)]  # a batch of n: one epoch each
        assert all(sorted(b["i"].tolist()) == list(range(n)) for b in batches)
        orders[seed] = {tuple(b["i"].tolist()) for b in batches}
        draws[seed] = {int(d) for b in batches for d in b["draw"]}
    for a in range(4):
        for b in range(a + 1, 4):
            assert not orders[a] & orders[b], (a, b)
            assert not draws[a] & draws[b], (a, b)
    for seed in (0, 1, 2, 12345, 2**32 - 1):
        assert 0 <= ip.grain_seed(seed) < 2**32 and ip.config_seed(ip.grain_seed(seed)) == seed
    assert len({ip.grain_seed(s) for s in range(1000)}) == 1000
    for bad in (-1, 2**32):
        with pytest.raises(ValueError, match=rf"config.seed={bad} must be in \[0, 2\*\*32\)"):
            ip.grain_seed(bad)


def _as_process(monkeypatch, index: int, count: int) -> None:
    """Makes this process look like process `index` of `count` to the loader (its batch
    size) and to grain (`ShardByJaxProcess`)."""
    import jax

    monkeypatch.setattr(jax, "process_index", lambda: index)
    monkeypatch.setattr(jax, "process_count", lambda: count)


def test_one_process_reads_the_sequence_and_resumes_the_positions_it_read_before(monkeypatch):
    """With one process the training sampler's sequence is bit for bit that of grain's
    IndexSampler sharded by JAX process, which earlier hgmt versions read (records, element
    indices and each element's randomness, over three epochs of 7 records), so single-process
    runs train as before; and its repr, which grain compares when it restores a saved
    position, is that sampler's for any process of any count, so every saved position
    resumes."""
    import grain.python as grain

    def before(records: int, seed: int) -> grain.IndexSampler:
        return grain.IndexSampler(num_records=records,
                                  shard_options=grain.ShardByJaxProcess(drop_remainder=True),
                                  shuffle=True, num_epochs=None, seed=seed)

    _as_process(monkeypatch, 0, 1)
    seed = ip.grain_seed(0)
    now, then = ip.GlobalOrder(7, seed), before(7, seed)
    for g in range(3 * 7 + 2):
        a, b = now[g], then[g]
        assert (a.index, a.record_key) == (b.index, b.record_key), g
        assert a.rng.integers(2**62, size=4).tolist() == b.rng.integers(2**62, size=4).tolist()
    assert sorted(now[g].record_key for g in range(7, 14)) == list(range(7))  # an epoch
    for index, count in ((0, 1), (0, 2), (1, 2), (2, 3)):
        _as_process(monkeypatch, index, count)
        assert repr(ip.GlobalOrder(12, seed)) == repr(before(12, seed)) == (
            f"IndexSampler(num_records=12, shard_options=ShardByJaxProcess(shard_index={index}, "
            f"shard_count={count}, drop_remainder=True), shuffle=True, num_epochs=None, "
            f"seed={seed})")


@pytest.mark.parametrize("processes", [2, 3])
def test_the_processes_together_read_the_one_process_sequence(processes, monkeypatch):
    """Process p of P reads the one-process run's elements p, p + P, ...: with loaders that
    run no workers, the processes' batches k together are the one-process run's batch k,
    records and their random draws alike, process p's j-th example being its (j P + p)-th;
    over 11 records, which no count of processes divides, for 4 epochs (none is left out).
    (grain's IndexSampler sharded by process gave process p a block of the split shuffled as
    process 0's, record r sharing its batch with r + 11 // P every epoch.) Loaders of each
    process made in this one, told their index and count."""
    import grain.python as grain

    class Draw(grain.RandomMapTransform):
        def random_map(self, element, rng):
            return {"i": element["i"], "draw": rng.integers(2**62)}

    records, batch, steps = [{"i": i} for i in range(11)], 6, 8

    def batches(index: int, count: int) -> list[list[tuple[int, int]]]:
        _as_process(monkeypatch, index, count)
        loader = iter(ip.endless_loader(records, Draw(), batch_size=batch, seed=3,
                                        worker_count=0))
        return [list(zip(b["i"].tolist(), b["draw"].tolist(), strict=True))
                for b in (next(loader) for _ in range(steps))]

    one = batches(0, 1)
    each = [batches(p, processes) for p in range(processes)]
    for k in range(steps):
        assert [each[j % processes][k][j // processes] for j in range(batch)] == one[k], k
    read = [i for b in one for i, _ in b]
    assert all(sorted(read[e * 11:(e + 1) * 11]) == list(range(11)) for e in range(4))


@pytest.mark.parametrize("path", ["device", "host"])
def test_prefetched_batches_are_each_devices_rows_of_the_global_batch(source, path, caplog):
    """The device path's batches (decoded records) and the host path's (crops), 8 examples
    on 4 devices: `prefetch_to_device` puts each array as the global array (4, 2, ...) whose
    row i, on the mesh's device i, holds examples 2i and 2i + 1 (the tree, dtypes and values
    of the batch), `size` batches ahead of the one yielded, and a step compiled for the first
    batch (`devices.spmd`, as the trainer's) runs on the next ones without compiling again."""
    import itertools
    import logging

    import jax

    from hgmt import devices
    from hgmt.data import device_augment

    tasks = ("pose2d", "pose3d", "depth", "segm")
    loader = (device_augment.decode_loader(source, batch_size=8, seed=0, worker_count=0,
                                           tasks=tasks) if path == "device" else
              ip.train_loader(source, batch_size=8, image_size=64, seed=0, worker_count=0,
                              tasks=tasks))
    batches = list(itertools.islice(iter(loader), 3))
    pulled = 0

    def counted():
        nonlocal pulled
        for batch in batches:
            pulled += 1
            yield batch

    ours = prefetch.prefetch_to_device(counted(), 2)
    summed = devices.spmd(lambda b: {k: v.astype("float32").sum() for k, v in b.items()})
    mesh_devices = list(devices.mesh().devices.flat)
    for i, batch in enumerate(batches):
        new = next(ours)
        assert pulled == min(i + 2, len(batches))
        assert sorted(new) == sorted(batch) and "image" in new
        for k, v in batch.items():
            dtype = jax.dtypes.canonicalize_dtype(v.dtype)  # int64 is int32 without x64
            assert (new[k].shape, new[k].dtype) == ((4, 2) + v.shape[1:], dtype), k
            assert new[k].sharding == devices.sharding(), k
            for shard in new[k].addressable_shards:
                row = mesh_devices.index(shard.device)
                assert shard.index[0] == slice(row, row + 1), k
                np.testing.assert_array_equal(np.asarray(shard.data)[0], v[2 * row:2 * row + 2],
                                              err_msg=k)
        if i == 0:
            summed(new)
            caplog.clear()
        else:
            with jax.log_compiles(), caplog.at_level(logging.WARNING):
                summed(new)
            assert [r for r in caplog.records if r.getMessage().startswith("Compiling")] == []
    assert next(ours, None) is None


def test_the_format_doc_quotes_the_crop_margins_and_augmentation():
    """docs/surreal_format.md quotes the person box's margins (BOX_MARGINS) and the training
    augmentation's distributions (Augment's defaults) as the code has them."""
    m, a = cropping.BOX_MARGINS, ip.Augment()
    margins = (f"widened by {m['left']:g} w left, {m['right']:g} w right, {m['top']:g} h top "
               f"and {m['bottom']:g} h bottom (`hgmt.data.cropping.BOX_MARGINS`)")
    augment = (f"Training (`hgmt.data.augment.Augment`): scale 2^clip(N(0, "
               f"{a.scale_sigma:g}), ±{a.scale_clip:g}), rotation clip(N(0, {a.rotate_sigma:g}), "
               f"±{a.rotate_clip:g}) degrees with p = {a.rotate_p:g}, colour gain "
               f"U({a.gain[0]:g}, {a.gain[1]:g}) per channel, horizontal flip p = {a.flip_p:g} ")
    with open(os.path.join(REPO, "docs", "surreal_format.md")) as f:
        text = " ".join(f.read().split())
    assert margins in text
    assert augment in text


def test_loader_leaves_no_absl_flag_unparsed():
    """grain reads its absl flag grain_enable_multiprocess_worker_profiling when a loader with
    workers starts (jaxlib >= 0.11); hgmt's commands parse their flags into their own
    FlagValues, so the loader marks the global ones parsed, at their defaults. In a fresh
    process, as in `python -m hgmt.main`."""
    code = """
import grain.python as grain
from absl import flags
from grain._src.core import profiler
from hgmt.data import eval_data
from hgmt.data import input_pipeline as ip

class Keep(grain.MapTransform):
    def map(self, x):
        return x

try:
    profiler._GRAIN_ENABLE_MULTIPROCESS_WORKER_PROFILING.value
except flags.UnparsedFlagAccessError:
    print("unparsed before")
ip.endless_loader([{"x": 1}] * 8, Keep(), batch_size=2, seed=0, worker_count=0)
print(profiler._GRAIN_ENABLE_MULTIPROCESS_WORKER_PROFILING.value)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["unparsed", "before", "False"]


def test_test_protocol_and_padded_eval_batches(demo_dataset):
    idx = eval_data.eval_indices("surreal/all", demo_dataset[1], "test", "middle")
    assert len(idx) == 2  # one middle frame per test clip
    src = builds.open_split("surreal/all", demo_dataset[1], "test")
    assert all(int(src[i]["frame"]) == frame_selection.middle_frame(6) for i in idx)
    batches = list(eval_data.eval_batches(src, idx, batch_size=4, image_size=64))
    assert len(batches) == 1 and batches[0]["mask"].tolist() == [1, 1, 0, 0]
    assert batches[0]["position"].tolist() == [0, 1, 1, 1]  # padding repeats the last


class Gated:
    """A split whose first two reads each wait (up to 60 s) until the other has begun, so
    that only reads in two threads at once get past them, and whose records `damaged` do not
    read (a chunk whose hash does not match)."""

    def __init__(self, source, damaged=(), gated: bool = True):
        self.source, self.damaged = source, frozenset(damaged)
        self.gate = threading.Barrier(2, timeout=60) if gated else None
        self.reads, self.lock = 0, threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        with self.lock:
            self.reads += 1
            first_two = self.reads <= 2
        if first_two and self.gate is not None:
            self.gate.wait()
        if index in self.damaged:
            raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")
        return self.source[index]

    def __getattr__(self, name: str):
        return getattr(self.source, name)


@pytest.mark.parametrize("process, processes", [(0, 1), (0, 2), (1, 2)])
def test_eval_batches_made_by_threads_are_those_made_in_the_callers_thread(
        demo_dataset, monkeypatch, process, processes):
    """Two threads read the records at once (the gate lets no read through alone) and give
    the batches, masks, positions and damaged records (5 and 6, in the order met) that the
    caller's thread makes alone, for each process of one and of two."""
    monkeypatch.setattr(ip.jax, "process_index", lambda: process)
    monkeypatch.setattr(ip.jax, "process_count", lambda: processes)
    src = builds.open_split("surreal/all", demo_dataset[1], "test")
    indices = list(range(len(src)))[::-1]  # 12 records, taken from the last
    made = {}
    for threads in (0, 2):
        damaged = []
        batches = list(eval_data.eval_batches(Gated(src, (5, 6), gated=threads > 0), indices,
                                       batch_size=4, image_size=64, damaged=damaged,
                                       threads=threads))
        made[threads] = batches, damaged
    (alone, met_alone), (threaded, met_threaded) = made[0], made[2]
    assert met_threaded == met_alone == [i for i in indices[process::processes] if i in (5, 6)]
    assert len(threaded) == len(alone) == 3
    for a, b in zip(alone, threaded, strict=True):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]), k
    positions = np.concatenate([b["position"] for b in alone])
    assert positions.tolist() == [process + processes * j for j in range(12 // processes)]


def test_closing_eval_batches_stops_its_threads(demo_dataset):
    """A caller that stops after the first batch (an evaluation stopped by a signal) leaves
    no thread of the pool behind, nor a record read after it closes."""
    src = Gated(builds.open_split("surreal/all", demo_dataset[1], "test"))
    batches = eval_data.eval_batches(src, list(range(12)), batch_size=2, image_size=64, threads=2)
    next(batches)
    batches.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("hgmt-eval")]
    reads = src.reads
    assert 2 <= reads <= 2 + 2 * 2  # the batch taken and at most two batches ahead
    time.sleep(0.2)
    assert src.reads == reads


def test_eval_threads_are_the_usable_cores_or_none_on_one(monkeypatch):
    monkeypatch.setattr(ip.cores, "usable_cores", lambda: 16)
    assert eval_data.eval_threads() == 16
    monkeypatch.setattr(ip.cores, "usable_cores", lambda: 1)
    assert eval_data.eval_threads() == 0


def test_eval_frames_select_the_frames_of_each_clip(demo_dataset):
    """middle: the test protocol; every2: frames 0, 2, 4 of each 6-frame clip; all: every one."""
    src = builds.open_split("surreal/all", demo_dataset[1], "test")

    def frames(spec):
        idx = eval_data.eval_indices("surreal/all", demo_dataset[1], "test", spec)
        return sorted(int(src[i]["frame"]) for i in idx)

    assert frames("middle") == [frame_selection.middle_frame(6)] * 2
    assert frames("every2") == [0, 0, 2, 2, 4, 4]
    assert frames("all") == sorted(list(range(6)) * 2)
    for bad in ("every0", "every", "first"):
        with pytest.raises(ValueError, match="frames=.*everyK"):
            eval_data.parse_eval_frames(bad)


def test_eval_frames_of_a_strided_build_are_those_asked_for_or_an_error(every10_dataset):
    """every10 and every20 select frames 0, 10, 20 and 0, 20 (not the middle frame 12 the
    build adds); all, every4 and every5 ask for frames the build did not store and stop with
    the build's stride and the fix."""
    src = builds.open_split("surreal/every10", every10_dataset, "test")
    assert sorted(int(src[i]["frame"]) for i in range(len(src))) == [0, 10, 12, 20]

    def frames(spec):
        idx = eval_data.eval_indices("surreal/every10", every10_dataset, "test", spec)
        return sorted(int(src[i]["frame"]) for i in idx)

    assert frames("middle") == [12]
    assert frames("every10") == [0, 10, 20]
    assert frames("every20") == [0, 20]
    for spec in ("all", "every4", "every5"):
        with pytest.raises(ValueError, match=(
                rf"frames='{spec}' .* 'surreal/every10' .* every 10th frame of each clip.*"
                r"config.dataset='surreal/all'.*--config=all.*multiple of 10.*'middle'")):
            eval_data.eval_indices("surreal/every10", every10_dataset, "test", spec)


def test_eval_frames_of_a_middle_build_are_its_middle_frames_only():
    """A build of the middle frames holds no other: only frames='middle' evaluates it."""
    middle, every10 = records.BUILD_FRAMES["middle"], records.BUILD_FRAMES["every10"]
    eval_data.check_eval_frames("middle", middle, "surreal/middle", "/data")
    for spec in ("all", "every10", "every1"):
        with pytest.raises(ValueError, match=r"only the middle frame of each clip.*'middle'"):
            eval_data.check_eval_frames(spec, middle, "surreal/middle", "/data")
    with pytest.raises(ValueError) as e:  # the choices, each once
        eval_data.check_eval_frames("every10", middle, "surreal/middle", "/data")
    assert str(e.value).endswith("--file_format=array_record), or frames='middle'")
    with pytest.raises(ValueError) as e:
        eval_data.check_eval_frames("every7", every10, "surreal/every10", "/data")
    assert str(e.value).endswith("--file_format=array_record), or frames='every<K>' with K a "
                                 "multiple of 10 (e.g. every10), or frames='middle'")
    eval_data.check_eval_frames("every30", every10, "surreal/every10", "/data")
    for spec in ("all", "every10", "every7"):
        eval_data.check_eval_frames(spec, records.BUILD_FRAMES["all"], "surreal/all", "/data")


def test_eval_frames_of_a_build_of_unknown_frames_is_an_error():
    info = type("Info", (), {"config_name": "every3"})()
    with pytest.raises(ValueError, match=r"config 'every3', not one of the SURREAL "
                                         r"builder's all, every10, middle,"):
        eval_data.stored_frames(info, "surreal/every3")


def test_missing_dataset_says_how_to_build(tmp_path):
    with pytest.raises(FileNotFoundError,
                       match=r"tfds build surreal --imports=data_builders\.surreal"):
        builds.open_split("surreal/all", str(tmp_path), "train")



def test_a_dataset_its_storage_does_not_give_is_named_so_not_unbuilt(demo_dataset, tmp_path,
                                                                     monkeypatch):
    """Reading a split's metadata (dataset_info.json, features.json) that fails with an I/O
    error is tried again after each of storage.RETRY_DELAYS_S; an error that lasts, and a
    folder TFDS cannot list (which it reports as no dataset), are the storage's
    (StorageFault), not a dataset to build; a missing one still is."""
    import errno

    from etils import epath
    from tensorflow_datasets.core import read_only_builder, registered

    from hgmt.data import shards, storage

    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.0, 0.0))
    real, calls = read_only_builder.builder_from_files, []

    def failing(error, times):
        def builder_from_files(*args, **kwargs):
            calls.append(1)
            if len(calls) <= times:
                raise error
            return real(*args, **kwargs)
        return builder_from_files

    eio = OSError(errno.EIO, "Input/output error")
    monkeypatch.setattr(read_only_builder, "builder_from_files", failing(eio, 2))
    assert len(builds.open_split("surreal/all", demo_dataset[1], "train")) == 12
    assert len(calls) == 3
    calls.clear()
    monkeypatch.setattr(read_only_builder, "builder_from_files", failing(eio, 10**6))
    with pytest.raises(shards.StorageFault) as raised:
        builds.open_split("surreal/all", demo_dataset[1], "train")
    assert str(raised.value).startswith(
        f"dataset 'surreal/all' split 'train' under data_dir={demo_dataset[1]} cannot be "
        f"read from its storage (OSError: [Errno 5] Input/output error; tried 3 times): ")
    assert "tfds build" not in str(raised.value) and len(calls) == 3

    def not_found(*args, **kwargs):  # what TFDS raises where a listing failed
        raise registered.DatasetNotFoundError("Could not find dataset files for: surreal/all")

    monkeypatch.setattr(read_only_builder, "builder_from_files", not_found)
    denied = tmp_path / "denied"
    (denied / "surreal" / "all" / "1.5.0").mkdir(parents=True)
    for name in ("dataset_info.json", "features.json"):  # a whole build but for the listing
        (denied / "surreal" / "all" / "1.5.0" / name).write_text("{}")
    path_type, listed = type(epath.Path(str(denied))), []
    real_iterdir = path_type.iterdir

    def iterdir(self):
        listed.append(os.path.basename(str(self)))
        if str(self).endswith("1.5.0"):
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_iterdir(self)

    monkeypatch.setattr(path_type, "iterdir", iterdir)
    with pytest.raises(shards.StorageFault, match=r"cannot be read from its storage "
                                                  r"\(PermissionError: \[Errno 13\] Permission "
                                                  r"denied: '.*1.5.0'; tried 3 times\)"):
        builds.open_split("surreal/all", str(denied), "train")
    assert listed[:4] == ["denied", "surreal", "all", "1.5.0"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not built under.*Could not find "
                                                "dataset files.*tfds build"):
        builds.open_split("surreal/all", str(tmp_path / "empty"), "train")
    with pytest.raises(FileNotFoundError, match="does not exist; give .*tfds build"):
        builds.open_split("surreal/all", str(tmp_path / "nothing_here"), "train")


def test_a_config_not_built_names_the_configs_built_there_and_the_flag(tmp_path):
    """surreal/every10 (the configs' default) asked of a data_dir where surreal/all and
    surreal/middle are built: the error names the build command and the --config.dataset of
    each build there; a config folder without a built version is not one."""
    for config in ("all", "middle"):
        (tmp_path / "surreal" / config / "1.5.0").mkdir(parents=True)
        (tmp_path / "surreal" / config / "1.5.0" / "dataset_info.json").write_text("{}")
    (tmp_path / "surreal" / "every4" / "1.5.0").mkdir(parents=True)  # a build cut short
    # TFDS's folder of a build still being written (renamed to its version at the end)
    unfinished = tmp_path / "surreal" / "every4" / "incomplete.abc123.1.6.0"
    unfinished.mkdir()
    (unfinished / "dataset_info.json").write_text("{}")
    (tmp_path / "other" / "all" / "1.0.0").mkdir(parents=True)
    (tmp_path / "other" / "all" / "1.0.0" / "dataset_info.json").write_text("{}")
    assert builds.built_configs("surreal/every10", str(tmp_path)) == ["surreal/all",
                                                                   "surreal/middle"]
    assert builds.built_configs("surreal/all:1.5.0", str(tmp_path)) == ["surreal/middle"]
    # another version of the config asked for is a build there too
    assert builds.built_configs("surreal/all:1.6.0", str(tmp_path)) == ["surreal/all:1.5.0",
                                                                     "surreal/middle"]
    assert builds.built_configs("surreal/all", str(tmp_path / "nowhere")) == []

    class BucketError(Exception):  # as tf.io.gfile's errors on gs://, which are no OSError
        pass

    def unlistable(self):
        raise BucketError("Could not resolve host")

    with pytest.MonkeyPatch.context() as patch:
        from etils import epath

        patch.setattr(type(epath.Path(str(tmp_path))), "iterdir", unlistable)
        assert builds.built_configs("surreal/every10", str(tmp_path)) == []
    with pytest.raises(FileNotFoundError) as e:
        builds.open_split("surreal/every10", str(tmp_path), "train")
    message = str(e.value)
    assert message.startswith(f"dataset 'surreal/every10' split 'train' is not built under "
                              f"data_dir={tmp_path} ("), message
    assert message.endswith(
        f"). Build it with: tfds build surreal --imports=data_builders.surreal "
        f"--manual_dir=<SURREAL root> --data_dir={tmp_path} --config=every10 "
        f"--file_format=array_record; or use a build there: --config.dataset=surreal/all "
        f"or --config.dataset=surreal/middle"), message
    with pytest.raises(FileNotFoundError) as e:  # nothing else built: the command alone
        builds.open_split("surreal/every10", str(tmp_path / "nowhere"), "train")
    assert str(e.value).endswith("--config=every10 --file_format=array_record"), e.value


def test_dataset_without_the_labels_is_rejected(tmp_path):
    import tensorflow_datasets as tfds

    tfds.testing.DummyMnist(data_dir=str(tmp_path), file_format="array_record"
                            ).download_and_prepare()
    with pytest.raises(ValueError, match=r"lacks the features segm, depth, joints2d"):
        builds.open_split("dummy_mnist", str(tmp_path), "train")


def test_gain_lookup_equals_cv2_multiply():
    """The per-channel gain by lookup table equals OpenCV's saturating uint8 multiply for every
    value, at random gains and at gains where products land on halves."""
    import cv2

    image = np.ascontiguousarray(np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3))
    rng = np.random.default_rng(0)
    for gain in [*rng.uniform(0.6, 1.4, (200, 3)), np.array([0.5, 1.5, 1.25])]:
        expected = cv2.multiply(image, np.append(gain, 0.0), dtype=cv2.CV_8U)
        np.testing.assert_array_equal(cropping.apply_gain(image, gain), expected)


def test_crop_with_given_params_makes_the_hand_derived_crop(source):
    """crop_with a window twice the person box's side, mirrored, unrotated: image px (u, v) ->
    label px (c - s (u - cx), c + s (v - cy)), s = r / (2 side), c = (r - 1) / 2, around the
    box (cx, cy, side) of the SMPL-mapped joints; the picture is warped with the same map at
    its own size. No augmentation draws the identity parameters."""
    import cv2

    ex = source[4]
    out = cropping.crop_with(ex, 64, cropping.CropParams(scale=2.0, rotation=0.0, flip=True))
    (cx, cy), side = cropping.person_box(ex["joints2d"][body.SMPL_TO_JOINT].astype(np.float64))

    def by_hand(size):
        s, c = size / (2 * side), (size - 1) / 2
        return np.array([[-s, 0.0, c + s * cx], [0.0, s, c - s * cy]])

    np.testing.assert_allclose(out["crop"], by_hand(16), rtol=1e-6, atol=1e-5)
    image = cv2.warpAffine(records.decoded(ex, "image"), by_hand(64), (64, 64),
                           flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    np.testing.assert_array_equal(out["image"], image)
    assert cropping.draw_crop_params(ip.Augment.none(), np.random.default_rng(0)) == \
        cropping.CropParams()


def test_a_data_dir_under_home_is_read_with_its_tilde(demo_dataset, tmp_path, monkeypatch):
    """`~/...` (the configs' default, ~/tensorflow_datasets) is the user's home, as TFDS's own
    default is: TFDS alone would look for a folder named `~`."""
    (tmp_path / "home").mkdir()
    os.symlink(demo_dataset[1], tmp_path / "home" / "tfds")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    source = builds.open_split("surreal/all", "~/tfds", "test")
    assert len(source) == len(builds.open_split("surreal/all", demo_dataset[1], "test")) > 0


@pytest.mark.parametrize("module", ["hgmt.data.input_pipeline", "hgmt.data.eval_data",
                                    "hgmt.inference.predictor"])
def test_every_module_that_crops_leaves_opencv_one_thread(module):
    """The crops run in the loader's worker processes, the evaluation's threads and the
    Predictor: OpenCV's own thread pool in each would oversubscribe the cores. A fresh process
    that imports any of them has OpenCV on one thread (cropping.py sets it)."""
    out = subprocess.run([sys.executable, "-c", f"import cv2, {module}; "
                          "print(cv2.getNumThreads())"], capture_output=True, text=True,
                         timeout=120, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-1] == "1"
