"""The augmentation's numbers against values derived by hand, on both paths: the ends of
config.augment's ranges, the crop parameters at their clips, their probabilities and their
independence (host: `cropping.draw_crop_params`; device: `device_augment.draw_params`), and
the person box of a wide person. A fact both paths share (the same range written twice) is
one that comparing the paths (tests/test_device_augment.py) cannot check: each is checked
here against its own hand value."""

import jax
import numpy as np
import pytest

from hgmt.data import cropping
from hgmt.data import device_augment as da
from hgmt.data.augment import Augment


def _fields(**changes) -> dict:
    return {**Augment().config_fields(), **changes}


def test_config_augment_takes_its_range_ends_and_refuses_past_them():
    """from_config takes a spread of 0, probabilities of 0 and of 1 and gain_min == gain_max
    (its ranges' closed ends); it refuses a probability above 1 (either one), a spread below
    0 and a gain_min of 0 (the open end of 0 < gain_min). The gain's bounds go through
    config_fields and back in order: gain_min the low one."""
    ends = Augment.from_config(_fields(scale_sigma=0.0, rotate_p=1.0, flip_p=0.0,
                                       gain_min=1.2, gain_max=1.2))
    assert (ends.scale_sigma, ends.rotate_p, ends.flip_p, ends.gain) == (0.0, 1.0, 0.0,
                                                                         (1.2, 1.2))
    assert Augment.from_config(_fields(rotate_p=0.0, flip_p=1.0)).flip_p == 1.0
    for name, value in (("rotate_p", 1.01), ("flip_p", 1.01), ("scale_sigma", -0.1),
                        ("gain_min", 0.0)):
        with pytest.raises(ValueError, match=name):
            Augment.from_config(_fields(**{name: value}))
    with pytest.raises(ValueError, match="gain_min"):
        Augment.from_config(_fields(gain_min=1.3, gain_max=0.7))
    fields = Augment(gain=(0.7, 1.3)).config_fields()
    assert (fields["gain_min"], fields["gain_max"]) == (0.7, 1.3)
    assert Augment.from_config(fields).gain == (0.7, 1.3)


N = 2000


def _host_draws(augment: Augment) -> dict:
    rng = np.random.default_rng(11)
    params = [cropping.draw_crop_params(augment, rng) for _ in range(N)]
    return {"scale": np.array([p.scale for p in params]),
            "rotation": np.array([p.rotation for p in params]),
            "flip": np.array([p.flip for p in params]),
            "gain": np.array([p.gain for p in params])}


def _device_draws(augment: Augment) -> dict:
    keys = jax.random.split(jax.random.key(11), N)
    draws = jax.jit(jax.vmap(lambda k: da.draw_params(k, augment)))(keys)
    return {k: np.asarray(v, np.float64) if k != "flip" else np.asarray(v)
            for k, v in draws.items()}


@pytest.mark.parametrize("draw", [_host_draws, _device_draws], ids=["host", "device"])
def test_crop_parameters_at_their_clips(draw):
    """Spreads far wider than the clips (scale sigma 1e6 octaves, angle sigma 1e8 degrees):
    P(|N(0, 1e6)| < 0.5) ~ 4e-7 and P(|N(0, 1e8)| < 60) ~ 5e-7, so every draw lies on a clip:
    scale 2 ** -0.5 or 2 ** 0.5 (base 2, octaves), rotation -60 or +60 degrees, each end about
    half of the 2000 draws (a binomial's standard deviation sqrt(2000 / 4) ~ 22 draws: within
    150 of 1000); with rotate_p = flip_p = 1 every crop is rotated and mirrored; each gain in
    [0.6, 1.4]."""
    augment = Augment(scale_sigma=1e6, scale_clip=0.5, rotate_sigma=1e8, rotate_clip=60.0,
                      rotate_p=1.0, flip_p=1.0, gain=(0.6, 1.4))
    d = draw(augment)
    low, high = np.isclose(d["scale"], 2 ** -0.5, rtol=1e-6), np.isclose(d["scale"], 2 ** 0.5,
                                                                         rtol=1e-6)
    assert (low | high).all() and abs(high.sum() - N / 2) < 150
    assert np.isin(d["rotation"], [-60.0, 60.0]).all()
    assert abs((d["rotation"] > 0).sum() - N / 2) < 150
    assert d["flip"].all()
    assert d["gain"].shape == (N, 3) and d["gain"].min() >= 0.6 and d["gain"].max() <= 1.4


@pytest.mark.parametrize("draw", [_host_draws, _device_draws], ids=["host", "device"])
def test_crop_parameters_take_their_probabilities_and_are_independent(draw):
    """flip_p = rotate_p = 0.25: each a quarter of 2000 crops (binomial standard deviation
    sqrt(2000 x 0.25 x 0.75) ~ 19: within 100 of 500). The parameters are drawn independently,
    so over 2000 draws each pair's correlation is within 0.1 of 0 (its standard error 1 /
    sqrt(2000) ~ 0.022): the three channels' gains, the scale's octaves and the flip, the
    flip and the rotation's occurrence, the scale and the flip each with the rotation's sign
    (+1, -1, or 0 unrotated); and half the rotated crops turn each way (within 80 of 250)."""
    d = draw(Augment(flip_p=0.25, rotate_p=0.25))
    rotated = d["rotation"] != 0
    assert abs(d["flip"].sum() - N / 4) < 100 and abs(rotated.sum() - N / 4) < 100
    assert abs((d["rotation"] > 0).sum() - rotated.sum() / 2) < 80
    columns = {"gain0": d["gain"][:, 0], "gain1": d["gain"][:, 1], "gain2": d["gain"][:, 2],
               "octaves": np.log2(d["scale"]), "flip": d["flip"].astype(float),
               "rotated": rotated.astype(float),
               "turn": np.sign(d["rotation"])}
    for a, b in (("gain0", "gain1"), ("gain1", "gain2"), ("gain0", "gain2"),
                 ("octaves", "flip"), ("flip", "rotated"), ("octaves", "gain0"),
                 ("octaves", "turn"), ("flip", "turn")):
        r = np.corrcoef(columns[a], columns[b])[0, 1]
        assert abs(r) < 0.1, (a, b, r)


def test_a_wide_person_box_on_both_paths_by_hand():
    """Joints x 100..300, y 100..120 (a person lying across the frame: w = 200, h = 20): x
    100 - 0.25 x 200 = 50 .. 300 + 50 = 350, 300 px; y 100 - 0.35 x 20 = 93 .. 120 + 0.25 x 20
    = 125, 32 px; the window of side 300 centred on (200, 109). The device's float32 box is
    the same (every value exact in float32)."""
    joints = np.full((16, 2), [200.0, 110.0])
    joints[0], joints[1] = [100.0, 100.0], [300.0, 120.0]
    centre, side = cropping.person_box(joints)
    assert side == 300.0
    np.testing.assert_allclose(centre, [200.0, 109.0], atol=1e-12)
    centre, side = jax.jit(da.person_box)(joints[None].astype(np.float32))
    np.testing.assert_allclose(np.asarray(side), [300.0], atol=1e-4)
    np.testing.assert_allclose(np.asarray(centre), [[200.0, 109.0]], atol=1e-4)


def test_the_reference_windows_scale_is_the_references_times_the_crops():
    """The joints of tests/test_protocols.py's reference-window test (x 10..30, y 20..100):
    getCenter (21.5, 57.45), getScale 0.54 (its hand derivation); a crop of scale 2 in the
    "reference" window cuts the references' window at scale 0.54 x 2 = 1.08 (as their scale
    augmentation multiplies getScale), around the same centre. A rotation, a mirror or a gain
    is refused there."""
    joints = np.zeros((16, 2))
    joints[:, 0] = np.linspace(10, 30, 16)
    joints[:, 1] = np.linspace(20, 100, 16)
    crop = cropping.reference_label_crop({}, joints, cropping.CropParams(scale=2.0),
                                         np.eye(2, 3), 16)
    np.testing.assert_allclose(crop.centre, [21.5, 57.45], atol=1e-9)
    assert crop.scale == pytest.approx(1.08, abs=1e-9) and not crop.flip
    for params in (cropping.CropParams(rotation=5.0), cropping.CropParams(flip=True),
                   cropping.CropParams(gain=(1.1, 1.0, 1.0))):
        with pytest.raises(ValueError, match="reference"):
            cropping.reference_label_crop({}, joints, params, np.eye(2, 3), 16)


@pytest.mark.parametrize("tasks", ["segm", "depth"])
def test_the_surreal_reference_config_draws_surreals_augmentation(tasks):
    """configs/reference.py's code=surreal trains with SURREAL's own augmentation, by hand
    from gulvarol/surreal training: donkey.lua:126 rnd(x) = max(-2x, min(2x, randn x)), :127
    scale times 2 ^ rnd(opt.scale), :128-129 rot = rnd(opt.rotate), set to 0 when uniform()
    <= .6; opts.lua:36-37 scale .25, rotate 30. So scale 2 ^ clip(N(0, 0.25), +-0.5),
    rotation clip(N(0, 30), +-60) degrees with probability 1 - 0.6 = 0.4; donkey.lua:137-138
    each channel times uniform(0.6, 1.4); its Hook never flips (flip_p 0)."""
    from configs import reference

    augment = Augment.from_config(reference.get_config(f"code=surreal,tasks={tasks}").augment)
    assert augment == Augment(scale_sigma=0.25, scale_clip=0.5, rotate_sigma=30.0,
                              rotate_clip=60.0, rotate_p=0.4, gain=(0.6, 1.4), flip_p=0.0)
