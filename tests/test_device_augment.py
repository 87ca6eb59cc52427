"""Augmentation on the device: with the same crop parameters it makes the host path's labels
(joints to float32 rounding, label maps on all but at most 2 pixels, the frame within OpenCV's
interpolation rounding), flipped and not; its parameters follow the host's distributions and
are a pure function of (seed, step, position in the batch); the trainer runs and resumes
exactly with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hgmt.data import builds, cropping
from hgmt.data import device_augment as da
from hgmt.data import input_pipeline as ip
from hgmt.sources import body


@pytest.fixture(scope="module")
def source(demo_dataset):
    return builds.open_split("surreal/all", demo_dataset[1], "train")


_crop = jax.jit(da.crop_batch, static_argnums=(2, 3, 4, 5))


def _device_crops(records: list[dict], params: list[cropping.CropParams], size: int,
                  window: str = "hgmt") -> list[dict]:
    """`da.crop_batch` of the records with the host's parameters around the `window`'s box,
    split into examples."""
    raw = {k: np.stack([da.decode_record(r)[k] for r in records])
           for k in da.decode_record(records[0])}
    p = {"scale": np.array([q.scale for q in params], np.float32),
         "rotation": np.array([q.rotation for q in params], np.float32),
         "flip": np.array([q.flip for q in params]),
         "gain": np.array([q.gain for q in params], np.float32)}
    out = {k: np.asarray(v) for k, v in _crop(raw, p, size, None, frozenset(), window).items()}
    return [{k: v[i] for k, v in out.items()} for i in range(len(records))]


@pytest.mark.parametrize("flip,window", [(False, "hgmt"), (True, "hgmt"),
                                         (True, "reference_box")])
def test_same_crop_parameters_give_the_host_paths_labels(source, flip, window):
    """Random scale, rotation (always on) and gain, mirrored or not, at 256 px on 6 records,
    around either training window's box."""
    augment = ip.Augment(rotate_p=1.0, flip_p=float(flip))
    rng = np.random.default_rng(3)
    records = [source[i] for i in range(0, len(source), 2)]
    params = [cropping.draw_crop_params(augment, rng) for _ in records]
    assert all(p.flip == flip and p.rotation != 0 for p in params)
    for rec, p, dev in zip(records, params, _device_crops(records, params, 256, window),
                           strict=True):
        host = cropping.crop_with(rec, 256, p, window=window)
        assert dev.keys() == host.keys()
        for key in host:
            assert dev[key].shape == np.shape(host[key]) and dev[key].dtype == np.asarray(
                host[key]).dtype, key
        # Geometry in float32 on the device, float64 on the host then rounded to float32.
        np.testing.assert_allclose(dev["crop"], host["crop"], atol=2e-5)
        np.testing.assert_allclose(dev["joints2d"], host["joints2d"], atol=1e-4)
        np.testing.assert_array_equal(dev["visible"], host["visible"])
        np.testing.assert_array_equal(dev["joints3d"], host["joints3d"])
        np.testing.assert_array_equal(dev["pelvis_depth"], host["pelvis_depth"])
        # Label maps by nearest neighbour: a float32 sample position a hair from a pixel edge may
        # round to the neighbouring source pixel, rarely; a crop whose scale is off by a hair
        # (0.2 %) moves many more than the 2 allowed.
        for key in ("segm", "depth_class"):
            assert (dev[key] != host[key]).sum() <= 2, key
        # Depth in metres (the device divides by 1000 as a product with 1/1000: 1 ulp apart).
        assert (~np.isclose(dev["depth"], host["depth"], rtol=1e-6, atol=0)).sum() <= 2
        diff = np.abs(dev["image"].astype(int) - host["image"])
        assert diff.max() <= 3 and diff.mean() < 0.05, (diff.max(), diff.mean())
        assert (host["segm"] > 0).mean() > 0.05  # the person is in the crop


def test_same_crop_parameters_sample_the_same_pixels_of_noise_maps(source):
    """On label maps of noise (each pixel unrelated to its neighbours), the device's nearest
    sampling picks the host's source pixel wherever it lands, rotated, scaled and flipped: a
    shift of a fraction of a pixel, hidden on a person's smooth maps, moves many here."""
    rng = np.random.default_rng(5)
    rec = dict(da.decode_record(source[0]))
    shape = rec["segm"].shape
    rec["segm"] = rng.integers(0, 25, shape, dtype=np.uint8)
    rec["depth_class"] = rng.integers(0, 20, shape, dtype=np.uint8)
    params = [cropping.CropParams(1.3, 33.0, True, (0.7, 1.2, 1.0)),
              cropping.CropParams(0.75, -50.0, False, (1.0, 1.0, 1.0)),
              cropping.CropParams(1.0, 0.0, True, (1.0, 1.0, 1.0))]
    for p, dev in zip(params, _device_crops([rec] * 3, params, 256), strict=True):
        host = cropping.crop_with(rec, 256, p)
        for key in ("segm", "depth_class"):
            assert (dev[key] != host[key]).sum() <= 2, (key, p)


def test_a_label_px_sampling_the_frames_far_outer_edge_takes_its_last_px_on_both_paths(source):
    """A crop whose label px sample exactly on the frame's far outer edges: the 16 joints at
    one point (316, 236), so the window is the least side, 8 px, around it; cut at 32 px,
    label px (u, v) of the 8 x 8 map samples frame px (u + 312.5, v + 232.5), each a tie,
    u = 7 at x = 319.5 = W - 0.5 and v = 7 at y = 239.5 = H - 0.5. Both paths take the px at
    floor(x + 0.5), and on the edge the last px (319, 239), not the 0 outside: the label maps
    are the frame's px (313..319, 319) x (233..239, 239)."""
    rng = np.random.default_rng(7)
    rec = dict(da.decode_record(source[0]))
    shape = rec["segm"].shape
    rec["joints2d"] = np.full_like(rec["joints2d"], [316.0, 236.0])
    rec["segm"] = rng.integers(1, 25, shape, dtype=np.uint8)
    rec["depth_class"] = rng.integers(1, 20, shape, dtype=np.uint8)
    rec["depth"] = rng.integers(1, 10000, shape, dtype=np.uint16)
    rows, cols = np.minimum(np.arange(8) + 233, 239), np.minimum(np.arange(8) + 313, 319)
    host = cropping.crop_with(rec, 32, cropping.CropParams())
    dev = _device_crops([rec], [cropping.CropParams()], 32)[0]
    for crop in (host, dev):
        np.testing.assert_array_equal(crop["depth_class"], rec["depth_class"][np.ix_(rows, cols)])
        # The device's metres are the product with 1/1000: 1 ulp from the host's quotient.
        np.testing.assert_allclose(crop["depth"], rec["depth"][np.ix_(rows, cols)] / 1000,
                                   rtol=1e-6, atol=0)
    np.testing.assert_array_equal(dev["segm"], host["segm"])
    assert (dev["segm"] > 0).all()


def test_device_flip_swaps_left_and_right(source):
    """The suite's flip check (test_input_pipeline) on the device path: a mirrored crop is the
    plain one mirrored, sides swapped."""
    rec = source[1]
    plain, flipped = _device_crops(
        [rec, rec], [cropping.CropParams(), cropping.CropParams(flip=True)], 64)
    r = 16
    np.testing.assert_allclose(flipped["joints2d"][body.JOINT_FLIP] * [-1, 1] + [r - 1, 0],
                               plain["joints2d"], atol=1e-4)
    np.testing.assert_array_equal(body.PART_FLIP[flipped["segm"][:, ::-1]], plain["segm"])
    np.testing.assert_array_equal(flipped["depth"][:, ::-1], plain["depth"])
    assert np.abs(flipped["image"][:, ::-1].astype(int) - plain["image"]).max() <= 1
    np.testing.assert_array_equal(flipped["joints3d"][body.JOINT_FLIP] * [-1, 1, 1],
                                  plain["joints3d"])


def test_device_sampling_at_known_fractions_and_the_frame_edge():
    """A 6 x 8 frame of distinct values sampled at crop px (u, v) -> frame px (u + dx, v + dy)
    (an affine translating by -dx, -dy; cv2 and the device invert it alike), by hand. Nearest
    at dx = dy = 0.6: the px at floor(x + 0.5) = (u + 1, v + 1), 0 past the frame (crop px 7
    samples x = 7.6, px 8). At 0.5, every sample a tie: the px at floor(x + 0.5) again (not
    round half to even: u = 0 at x = 0.5 takes px 1), but the frame is closed: crop px 7 at
    x = 7.5 = W - 0.5, on the last px's outer edge, takes that px (7), as row 5 at y = 5.5
    takes row 5, and the rows past it are 0; at -0.5 the near edge, x = -0.5, takes px 0
    (and row 6 at y = 5.5 the last row).
    cv2 (the host's OpenCV 5.1) agrees everywhere.
    Bilinear at dx = 0.25, dy = 0.75: weights
    (1 - fx)(1 - fy) = 3/16, fx (1 - fy) = 1/16, (1 - fx) fy = 9/16, fx fy = 3/16 on the four
    px right and below, those past the frame 0 (cv2's constant border)."""
    import cv2

    h, w = 6, 8
    frame = ((np.arange(h * w) * 37) % 251).reshape(h, w).astype(np.uint8)
    padded = np.zeros((h + 1, w + 1), np.float64)
    padded[:h, :w] = frame

    def shift(dx: float, dy: float) -> np.ndarray:
        return np.array([[1.0, 0.0, -dx], [0.0, 1.0, -dy]], np.float32)

    past = np.zeros((w, w), np.uint8)
    past[:h - 1, :w - 1] = frame[1:, 1:]
    on_edge = np.zeros((w, w), np.uint8)
    on_edge[:h, :w] = frame[np.minimum(np.arange(1, h + 1), h - 1)][:, np.minimum(
        np.arange(1, w + 1), w - 1)]
    at_near_edge = np.zeros((w, w), np.uint8)  # crop px 6 at y = 5.5 on the far edge: row 5
    at_near_edge[:h + 1] = frame[np.minimum(np.arange(h + 1), h - 1)]
    for d, expected in ((0.5, on_edge), (0.6, past), (-0.5, at_near_edge)):
        near = np.asarray(jax.jit(da.warp_nearest, static_argnums=2)(frame, shift(d, d), w))
        np.testing.assert_array_equal(near, expected, err_msg=str(d))
        opencv = cv2.warpAffine(frame, shift(d, d), (w, w), flags=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(opencv, expected, err_msg=f"{d}, OpenCV {cv2.__version__}")
    bilinear = np.asarray(jax.jit(da.warp_bilinear, static_argnums=2)(frame[..., None],
                                                                    shift(0.25, 0.75), w))
    by_hand = np.zeros((w, w))
    by_hand[:h, :w] = (3 * padded[:h, :w] + padded[:h, 1:] + 9 * padded[1:, :w]
                       + 3 * padded[1:, 1:]) / 16
    np.testing.assert_allclose(bilinear[..., 0], by_hand, atol=1e-4)
    opencv = cv2.warpAffine(frame, shift(0.25, 0.75), (w, w), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT)
    assert np.abs(opencv - np.round(by_hand)).max() <= 1


def test_device_crop_affine_and_box_are_the_hand_derived_ones():
    """`da.crop_affine`'s map of a window of side 16 around (100, 80) at 16 px rotated +30 deg
    (the host test's hand values, test_input_pipeline: image px 10 right of the centre -> c +
    10 (cos 30, -sin 30), c = 7.5; mirrored, x reflected about c), and `da.person_box` of one
    point: the least side, 8 px, around it."""
    c, cos, sin = 7.5, np.sqrt(3) / 2, 0.5
    points = np.array([[110.0, 80.0], [100.0, 90.0]])
    for flip in (False, True):
        m = np.asarray(jax.jit(da.crop_affine, static_argnums=2)(
            np.array([[100.0, 80.0]], np.float32), np.array([16.0], np.float32), 16,
            np.array([30.0], np.float32), np.array([flip])))[0]
        expected = np.array([[c + 10 * cos, c - 10 * sin], [c + 10 * sin, c + 10 * cos]])
        if flip:
            expected[:, 0] = 2 * c - expected[:, 0]
        np.testing.assert_allclose(points @ m[:, :2].T + m[:, 2], expected, atol=1e-4)
    centre, side = jax.jit(da.person_box)(np.full((1, 16, 2), [50.0, 60.0], np.float32))
    np.testing.assert_array_equal(np.asarray(side), [8.0])
    np.testing.assert_array_equal(np.asarray(centre), [[50.0, 60.0]])


def test_the_gain_multiplies_the_rounded_warp_on_both_paths():
    """A crafted frame of columns alternating 100, 101 and joints whose box is 48 x 48 px
    around (116.4, 113.5) (x 100.4..132.4 widened by 8 either side, y 100..130 by 10.5 above
    and 7.5 below), cut at 48 px: one crop px per frame px, crop px (u, v) sampling frame px
    (u + 92.9, v + 90), so 0.1 I[u + 92] + 0.9 I[u + 93]: 100.9 at even u, 100.1 at odd. The
    host's warp writes it as uint8 (101, 100), then the gain 1.501 rounds again: 152 and 150.
    The device rounds where the host does (a gain of the unrounded 100.9 would make 151)."""
    image = np.zeros((240, 320, 3), np.uint8) + (100 + np.arange(320) % 2).astype(np.uint8)[
        None, :, None]
    joints = np.full((24, 2), [100.4, 100.0], np.float32)
    joints[body.SMPL_TO_JOINT[0]] = [132.4, 130.0]
    record = {"image": image, "joints2d": joints, "joints3d": np.zeros((24, 3), np.float32),
              "cam_loc": np.zeros(3, np.float32)}
    centre, side = cropping.person_box(joints[body.SMPL_TO_JOINT].astype(np.float64))
    np.testing.assert_allclose([*centre, side], [116.4, 113.5, 48.0], atol=1e-5)
    expected = np.where(np.arange(48) % 2 == 0, 152, 150)[None, :, None] + np.zeros((48, 1, 3))
    params = cropping.CropParams(gain=(1.501, 1.501, 1.501))
    host = cropping.crop_with(record, 48, params, tasks=())
    np.testing.assert_array_equal(host["image"], expected)
    device = jax.jit(da.crop_batch, static_argnums=(2, 3))(
        {k: v[None] for k, v in record.items()},
        {"scale": np.ones(1, np.float32), "rotation": np.zeros(1, np.float32),
         "flip": np.zeros(1, bool), "gain": np.full((1, 3), 1.501, np.float32)}, 48, ())
    np.testing.assert_array_equal(np.asarray(device["image"])[0], expected)


def _std_and_se(x: np.ndarray) -> tuple[float, float]:
    """The sample standard deviation of x (all its values) and its standard error, by the
    delta method from the sample's fourth central moment (no normality assumed: the scale and
    angle are clipped, the gain uniform)."""
    x = np.asarray(x, np.float64).ravel()
    d = x - x.mean()
    var, m4 = (d**2).mean(), (d**4).mean()
    return float(np.sqrt(var)), float(np.sqrt((m4 - var**2) / x.size) / (2 * np.sqrt(var)))


def test_crop_parameters_follow_the_host_distributions():
    """4000 device draws against 4000 host draws: the same clipped log-normal scale, rotation
    probability and clipped normal angle, flip probability, uniform gain; the same means and
    standard deviations of scale, angle (when rotating) and gain."""
    n, augment = 4000, ip.Augment()
    keys = jax.random.split(jax.random.key(0), n)
    dev = {k: np.asarray(v) for k, v in
           jax.jit(jax.vmap(lambda k: da.draw_params(k, augment)))(keys).items()}
    rng = np.random.default_rng(0)
    host = [cropping.draw_crop_params(augment, rng) for _ in range(n)]
    h = {"scale": np.array([p.scale for p in host]),
         "rotation": np.array([p.rotation for p in host]),
         "flip": np.array([p.flip for p in host]), "gain": np.array([p.gain for p in host])}
    for key, tol in (("scale", 0.02), ("flip", 0.04), ("gain", 0.02)):
        assert abs(dev[key].mean() - h[key].mean()) < tol, key
    # The spreads too (a too-wide device scale sigma moves the mean by less than its tolerance):
    # the two samples' standard deviations within 4 standard errors of their difference.
    for key, pick in (("scale", lambda v: v), ("rotation", lambda v: v[v != 0]),
                      ("gain", lambda v: v)):
        (a, se_a), (b, se_b) = (_std_and_se(pick(s[key])) for s in (dev, h))
        assert abs(a - b) < 4 * np.hypot(se_a, se_b), (key, a, b, np.hypot(se_a, se_b))
    for stats in (dev, h):
        assert stats["scale"].min() >= 2 ** -0.5 - 1e-6 and stats["scale"].max() <= 2 ** 0.5
        assert np.mean(stats["scale"] == 2 ** 0.5) > 0.01  # clipped at +-0.5 octave
        rotated = stats["rotation"] != 0
        assert abs(rotated.mean() - 0.4) < 0.04
        assert np.abs(stats["rotation"]).max() <= 60 and abs(
            np.abs(stats["rotation"][rotated]).mean() - 30 * np.sqrt(2 / np.pi)) < 2.0
        assert stats["gain"].min() >= 0.6 and stats["gain"].max() <= 1.4
        assert abs(stats["gain"].std() - 0.8 / np.sqrt(12)) < 0.01
    none = jax.vmap(lambda k: da.draw_params(k, ip.Augment.none()))(keys[:4])
    np.testing.assert_array_equal(none["scale"], 1.0)
    np.testing.assert_array_equal(none["rotation"], 0.0)
    assert not np.asarray(none["flip"]).any()
    np.testing.assert_array_equal(none["gain"], 1.0)


def test_crop_keys_are_a_function_of_seed_step_and_position():
    """So a resumed run draws the crops of an uninterrupted one, and a batch split over
    devices draws those of one device."""
    whole = da.example_keys(0, jnp.int32(7), jnp.arange(8))
    halves = [da.example_keys(0, jnp.int32(7), jnp.arange(4) + s) for s in (0, 4)]
    data = jax.random.key_data
    np.testing.assert_array_equal(data(whole), data(jnp.concatenate(halves)))
    for other in (da.example_keys(0, jnp.int32(8), jnp.arange(8)),
                  da.example_keys(1, jnp.int32(7), jnp.arange(8))):
        assert not (np.asarray(data(other)) == np.asarray(data(whole))).all(-1).any()


def test_training_decodes_only_the_maps_its_targets_are_made_from(source):
    """The depth task's labels read the depth in metres too (for pictures), but its target is
    made from depth_class only: what the targets depend on, not what the labels read."""
    assert da.target_maps() == ("segm", "depth_class")
    assert da.target_maps(("pose2d", "pose3d")) == ()
    assert da.target_maps(("segm",)) == ("segm",)
    assert da.target_maps(("depth",)) == ("depth_class",)
    assert da.unread_maps(["pose2d", "depth"]) == {"segm", "depth"}
    raw = da.decode_record(source[0], da.target_maps(("pose2d",)))
    assert sorted(raw) == ["cam_loc", "image", "joints2d", "joints3d"]
    assert raw["image"].shape == (240, 320, 3) and raw["joints2d"].dtype == np.float32


def test_unread_maps_are_not_decoded_and_their_labels_left_out(source):
    """Host and device: with the depth in metres unread, a record whose depth bytes are
    unreadable crops, the other labels are unchanged and the depth label is left out; the
    label maps are uint8 either way."""
    record = dict(source[2])
    params = cropping.CropParams(scale=1.1, rotation=12.0, flip=True)
    full = cropping.crop_with(record, 64, params)
    record["depth"] = b"not a png"
    with pytest.raises(Exception, match="not a readable image"):
        cropping.crop_with(record, 64, params)
    training = cropping.crop_with(record, 64, params, unread=da.unread_maps())
    assert training.keys() == full.keys() - {"depth"} and (full["depth"] > 0).any()
    for key in training:
        np.testing.assert_array_equal(training[key], full[key], err_msg=key)
    assert training["segm"].dtype == training["depth_class"].dtype == np.uint8

    raw = {k: v[None] for k, v in da.decode_record(source[2], da.target_maps()).items()}
    p = {"scale": np.float32([1.1]), "rotation": np.float32([12.0]), "flip": np.array([True]),
         "gain": np.ones((1, 3), np.float32)}
    dev = jax.jit(da.crop_batch, static_argnums=(2, 3, 4))(raw, p, 64, None, da.unread_maps())
    assert dev.keys() == full.keys() - {"depth"}
    assert dev["segm"].dtype == dev["depth_class"].dtype == np.uint8
    np.testing.assert_array_equal(dev["depth_class"][0], _device_crops(
        [source[2]], [params], 64)[0]["depth_class"])


def test_placement_by_config_and_backend():
    assert da.placement("host", "gpu") == "host" and da.placement("device", "cpu") == "device"
    assert da.placement("auto", "cpu") == "host" and da.placement("auto", "gpu") == "device"
    with pytest.raises(ValueError, match="augment_on='ondevice'.*host.*device.*auto"):
        da.placement("ondevice")


def test_a_frame_of_another_size_is_a_clear_error():
    record = {"image": np.zeros((120, 160, 3), np.uint8), "joints2d": np.zeros((24, 2)),
              "joints3d": np.zeros((24, 3)), "cam_loc": np.zeros(3)}
    with pytest.raises(ValueError, match=r"'image' is \(120, 160\).*augment_on='host'"):
        da.decode_record(record, ())


@pytest.mark.slow
def test_trainer_with_device_augmentation_resumes_exactly(demo_dataset, tmp_path):
    """config.augment_on='device': the loader decodes, the step crops; 4 steps straight equal
    2 steps, a restart and 2 more (the crops drawn from (seed, step, position) again)."""
    from hgmt.training import loop
    from tests.conftest import tiny_config

    kw = {"tasks": "pose2d+segm", "augment_on": "device", "optimizer.schedule": "constant"}
    straight = loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw),
                          str(tmp_path / "straight"))
    loop.train(tiny_config(demo_dataset[1], total_steps=2, **kw), str(tmp_path / "split"))
    resumed = loop.train(tiny_config(demo_dataset[1], total_steps=4, **kw),
                         str(tmp_path / "split"), resume_with_changed_config=True)
    assert int(resumed.step) == 4
    a, b = (jax.tree_util.tree_leaves(s.params) for s in (straight, resumed))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_train_step_draws_by_step_and_device_position(source):
    """The trainer's step (`hgmt.devices.spmd`) hands `Prepare` the state's step and each
    device's first position in the global batch: the same record in every slot gets another
    crop on every device and at every step."""
    import functools

    from hgmt import devices
    from hgmt.models import create_model
    from hgmt.tasks import heads
    from hgmt.training import steps
    from tests.conftest import tiny_config

    config = tiny_config(None, tasks="pose2d", image_size=32)
    config.model.num_stacks = 1
    model = create_model(config.model, heads(("pose2d",)), axis_name="batch")
    state = devices.replicate(steps.create_train_state(jax.random.key(0), config, model))
    d = jax.local_device_count()
    prepare = da.Prepare(config.image_size, config.seed, ("pose2d",))
    seen = []

    def spying(raw, step, first_index):
        batch = prepare(raw, step, first_index)
        jax.debug.callback(lambda s, f, c: seen.append((int(s), int(f), np.asarray(c))),
                           step, first_index, batch["crop"])
        return batch

    train = devices.spmd(functools.partial(steps.train_step, weights={"pose2d": 1.0},
                                           prepare=spying), donate_argnums=(0,))
    raw = {k: np.stack([v] * 2 * d).reshape(d, 2, *np.shape(v))
           for k, v in da.decode_record(source[0], da.target_maps(("pose2d",))).items()}
    for _ in range(2):
        state, _ = train(state, devices.place(raw))
    jax.effects_barrier()
    assert sorted((s, f) for s, f, _ in seen) == [(s, 2 * i) for s in (0, 1) for i in range(d)]
    crops = np.concatenate([c for _, _, c in seen])  # 4 * d crops of one record
    assert len({c.tobytes() for c in crops}) == 4 * d


def test_every_crop_and_label_product_is_full_float32_on_any_backend(source):
    """The crop's geometry and the labels' (2D and 3D joints) are dot_generals at precision
    HIGHEST: at JAX's default a GPU may round their float32 inputs to TF32 and a TPU to
    bfloat16, moving a 3D joint by millimetres and a crop against its labels; a CPU (where
    these tests run) never shows it."""
    from tests.test_protocols import _dot_precisions

    tasks = ("pose2d", "pose3d", "depth", "segm")
    prepare = da.Prepare(32, 0, tasks)
    raw = {k: np.stack([v] * 2) for k, v in
           da.decode_record(source[0], da.target_maps(tasks)).items()}
    precisions = _dot_precisions(jax.make_jaxpr(prepare)(raw, 3, 0).jaxpr)
    exact = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert precisions and all(p == exact for p in precisions), precisions


def test_a_segment_value_above_24_is_a_damaged_record_on_both_paths(source):
    """A record whose segm map holds 200 (a hand-made or foreign build: the builder rejects
    values above 24) is a damaged record on both placements: the host's crop and the device
    path's decode skip it for the next record of its shard, and the example's `damaged`
    field makes the trainer's account name it. Before, the host raised a bare IndexError
    naming no record, and the device mapped 200 to part 5 (l_hand) and trained on it."""
    import cv2

    from hgmt.data import damage, record_reads, records

    examples = [dict(source[i]) for i in range(3)]
    segm = records.decoded(examples[1], "segm").copy()
    assert segm.any()
    segm[segm > 0] = 200  # the whole person, so that the crop's label map samples it
    examples[1]["segm"] = cv2.imencode(".png", segm)[1].tobytes()
    with pytest.raises(record_reads.DamagedRecord, match=r"^record feature 'segm' holds segment "
                                                   r"value 200, above SURREAL's 0\.\.24: "):
        records.decoded(examples[1], "segm")
    none = ip.Augment.none()
    host = ip.TrainCrop(64, none, ("segm",), examples).random_map(
        record_reads.Guarded(examples)[1], np.random.default_rng(0))
    device = da.DecodeRecord(("segm",), examples).map(record_reads.Guarded(examples)[1])
    for out in (host, device):
        assert out["damaged"].tolist() == [1] + [-1] * (record_reads.MAX_TRIES - 1)
        log = damage.DamageLog(record_reads.Shards.of(examples), 3, 1.0, None)
        log.met(out["damaged"][None])
        assert log.found == {1: "<memory> record 1 (index 1 of the split)"}
    replacement = cropping.crop_example(examples[2], 64, none, tasks=("segm",))
    np.testing.assert_array_equal(host["segm"], replacement["segm"])
    np.testing.assert_array_equal(device["segm"], records.decoded(examples[2], "segm"))


@pytest.mark.parametrize("augment_on", ["host", "device"])
@pytest.mark.parametrize("window", ["hgmt", "reference_box"])
def test_config_augment_sets_the_trainers_crops(source, demo_dataset, augment_on, window):
    """config.augment and config.window reach the trainer's crops on either path: with every
    augmentation off each training example's crop is its record's un-augmented one in the
    window; with the defaults, most are not."""
    from hgmt.training import config_check, train_data
    from tests.conftest import tiny_config

    plain = np.stack([cropping.crop_example(source[i], 64, ip.Augment.none(), window=window)["crop"]
                     for i in range(len(source))])

    def unaugmented(**augment) -> np.ndarray:
        """Whether each crop of the trainer's first batch is a record's un-augmented one (the
        device's float32 geometry to 2e-5 of the host's)."""
        config = tiny_config(demo_dataset[1], tasks="pose2d", image_size=64,
                             augment_on=augment_on, worker_count=0, window=window,
                             **{f"augment.{k}": v for k, v in augment.items()})
        config_check.check_config(config)
        prepare = train_data.augmentation(config, ("pose2d",))
        batch = next(iter(train_data.train_loader(config, source, ("pose2d",), prepare)))
        if prepare is not None:
            batch = jax.jit(prepare)({k: v for k, v in batch.items() if k != "damaged"}, 1)
        crops = np.asarray(batch["crop"])[:, None]
        return np.isclose(crops, plain[None], atol=2e-5).all((2, 3)).any(1)

    assert unaugmented(**ip.Augment.none().config_fields()).all()
    assert unaugmented().sum() <= 2
