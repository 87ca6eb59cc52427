"""Depth labels equal SURREAL's: the classes gulvarol/surreal training/loader_SURREAL.lua:90-111
computes from the float depth, in float32 (the depth is a FloatTensor), on crafted values, on
every bin edge of the real annotation sample's frames, and on every pixel of built demo clips."""

import collections

import numpy as np
import pytest
import scipy.io

from hgmt.sources import body, surreal
from hgmt.tasks import depth

F32 = np.float32


def _loader_surreal(d: np.ndarray, d_pelvis: float) -> np.ndarray:
    """loader_SURREAL.lua:104-108, one float32 rounding per Torch operation: a sum or product
    of two float32 values is exact in double, so rounding that double to float32 once is what
    the FloatTensor operation gives."""
    d = np.asarray(d, F32)
    minus_pelvis = F32(-d_pelvis)  # torch.add(FloatTensor, value): value cast to float
    shifted = (d.astype(np.float64) + np.float64(minus_pelvis)).astype(F32)
    q = (shifted.astype(np.float64) * np.float64(F32(1 / 0.045))).astype(F32)  # torch.mul
    bins = np.clip(np.ceil(q), -9, 9)  # :106 cmax(cmin(ceil(.), upB), lowB)
    return np.where(d <= F32(1e3), bins, -10) + 10  # :104-105, :107 background -10, :108 +10


def _ulps(x: np.ndarray, k: int) -> np.ndarray:
    """The float32 values k units in the last place from x (k may be negative)."""
    return (np.asarray(x, F32).view(np.int32) + np.int32(k)).view(F32)


def test_classes_are_loader_surreals_float32_formula():
    # loader_SURREAL.lua:106: ceil(float32(depth + float32(-dPelvis)) * float32(1/0.045)),
    # clamped to [-9, 9] (:101-102), :107 background (> 1000 m) -10, :108 + 10.
    d = F32([5.0, 5.001, 5.0454, 4.956, 4.954, 4.0, 6.0, 0.0, 1e10])
    np.testing.assert_array_equal(depth.classes(d[None], 5.0)[0],
                                  [10,  # 0 -> ceil 0 -> bin 0
                                   11,  # 0.001 / 0.045 = 0.022 -> bin 1
                                   12,  # 0.0454 / 0.045 = 1.009 -> bin 2 (millimetres: 1)
                                   10,  # in front: -0.044 / 0.045 = -0.98 -> bin 0
                                   9,  # -0.046 / 0.045 = -1.02 -> bin -1
                                   1,  # -22.2 -> -22, clamped to -9
                                   19,  # 22.2 -> 23, clamped to 9
                                   0, 0])  # background: 0 (hgmt's reader) or 1e10 (the file)
    # dPelvis = 6.7 m, depth float32(6.745) = 0x1.afae14p+2 = 6.744999885559082: in double
    # (d - 6.7) / 0.045 = 0.99999746 -> bin 1 (class 11). In float32: -dPelvis becomes
    # -6.699999809265137, the sum 0x1.70a4p-5 = 0.04500007629394531, times float32(1/0.045)
    # = 22.222221 gives 1.0000017 -> bin 2: SURREAL's class is 12.
    edge = F32(float.fromhex("0x1.afae14p+2"))
    assert depth.classes(np.array([[edge]]), 6.7)[0, 0] == 12
    assert int(np.ceil((float(edge) - 6.7) / 0.045)) + 10 == 11


def test_classes_match_on_every_bin_edge_of_the_real_sample(real_info_path):
    """For each of the real clip's 100 frames, its dPelvis (camLoc_x - pelvis_x, donkey.lua:94)
    and the 61 float32 values around each of the 21 bin edges: the classes equal the Lua's.
    The edges are where the formulas part: the double formula, and classes made from a depth
    rounded to millimetres, each put hundreds of these values in another bin."""
    info = surreal.load_info(real_info_path)
    pelvis = info.joints3d[:, body.SMPL_TO_JOINT[body.PELVIS]]
    checked = by_double = by_mm = 0
    for t in range(info.num_frames):
        d_pelvis = float(info.cam_loc[0]) - float(pelvis[t, 0])
        edges = F32(d_pelvis + np.arange(-10, 11) * 0.045)
        values = np.concatenate([_ulps(edges, k) for k in range(-30, 31)])
        got = depth.classes(values[None], d_pelvis)[0]
        np.testing.assert_array_equal(got, _loader_surreal(values, d_pelvis))
        checked += values.size
        exact = (values.astype(np.float64) - d_pelvis) / 0.045
        by_double += int((got != np.clip(np.ceil(exact), -9, 9) + 10).sum())
        mm = np.round(values.astype(np.float64) * 1000) / 1000  # depth rounded to millimetres
        by_mm_bins = np.ceil((mm - F32(d_pelvis)) / 0.045 - 1e-6)  # ...binned with a tolerance
        by_mm += int((got != np.clip(by_mm_bins, -9, 9) + 10).sum())
    assert checked == 100 * 21 * 61
    assert by_double > 100 and by_mm > 10_000


def test_built_records_store_surreals_classes_on_every_pixel(tmp_path):
    """Demo clips through the builder's record path: the stored depth_class PNG equals the
    Lua formula applied to the _depth.mat read independently, on every pixel of every frame."""
    import cv2

    from hgmt.data import records
    from hgmt.sources import synthetic

    synthetic.generate(str(tmp_path), clips_per_split=1, frames=4, seed=5)
    stems = surreal.find_clips(str(tmp_path), "test") + surreal.find_clips(str(tmp_path), "train")
    frames = foreground = moved_by_mm = 0
    for stem in stems:
        paths = surreal.clip_paths(stem)
        raw = scipy.io.loadmat(paths["depth"])
        mat = scipy.io.loadmat(paths["info"])
        cam_x = float(mat["camLoc"].reshape(-1)[0])
        pelvis_x = mat["joints3D"][0, 0]  # SMPL joint 0, the pelvis, for every frame
        for key, example in records.clip_examples(stem, records.FrameSelection(),
                                                  collections.Counter()):
            t = int(example["frame"])
            d = raw[f"depth_{t + 1}"].astype(F32)
            d_pelvis = cam_x - float(pelvis_x[t])
            stored = cv2.imdecode(np.frombuffer(example["depth_class"], np.uint8),
                                  cv2.IMREAD_UNCHANGED)
            np.testing.assert_array_equal(stored, _loader_surreal(d, d_pelvis), err_msg=key)
            mm = cv2.imdecode(np.frombuffer(example["depth"], np.uint8), cv2.IMREAD_UNCHANGED)
            fg = stored > 0
            old = np.clip(np.ceil((mm / 1000.0 - F32(d_pelvis)) / 0.045 - 1e-6), -9, 9) + 10
            frames += 1
            foreground += int(fg.sum())
            moved_by_mm += int((old[fg] != stored[fg]).sum())
    assert frames == 8 and foreground > 1000
    print(f"demo clips: {frames} frames, {foreground} foreground pixels, {moved_by_mm} in "
          f"another bin from the millimetre depth")


def test_old_builds_are_refused_with_the_rebuild_command():
    """A build of builder 1.1.0 has every feature but depth_class: a clear error that says to
    rebuild, not a KeyError mid-training."""
    import types

    from data_builders.surreal import surreal_dataset_builder as builder
    from hgmt.data import builds

    assert "1.2.0" in builder.Builder.RELEASE_NOTES
    features = [f for f in builds.REQUIRED_FEATURES if f not in ("depth_class",
                                                                          "unusable")]
    old = types.SimpleNamespace(features=dict.fromkeys(features), version="1.1.0")
    with pytest.raises(ValueError, match=r"version 1\.1\.0, before 1\.3\.0.*Rebuild it: tfds "
                                         r"build surreal --imports=data_builders\.surreal"):
        builds.check_features(old, "surreal/every10", "/data")
    new = types.SimpleNamespace(features=dict.fromkeys(builds.REQUIRED_FEATURES),
                                version=str(builder.Builder.VERSION))
    builds.check_features(new, "surreal/every10", "/data")
