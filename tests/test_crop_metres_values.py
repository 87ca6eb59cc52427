"""The metres a training window spans (`hgmt.data.crop_metres`) against values derived by
hand: one record's figure in either training window, the summary's mean, spread and standard
error, which records `measure` reads, the frames a clip's figure is made of, and when the
workdir's figure is read and measured again."""

import json

import numpy as np
import pytest

from hgmt import workdirs
from hgmt.data import builds, crop_metres, record_reads
from hgmt.sources import body, surreal


def _record(pelvis_x: float = 2.0, cam_x: float = 5.0) -> dict:
    """16 joints at x 100..140, y 50..210 (two of them at the corners, the others between);
    the pelvis (SMPL joint 0) at world x = pelvis_x, the camera at world x = cam_x: SURREAL's
    camera looks along world -x, so the pelvis's camera depth is cam_x - pelvis_x."""
    joints = np.full((24, 2), [120.0, 100.0], np.float32)
    joints[body.SMPL_TO_JOINT[0]] = [100.0, 50.0]
    joints[body.SMPL_TO_JOINT[1]] = [140.0, 210.0]
    joints3d = np.zeros((24, 3), np.float32)
    joints3d[:, 0] = pelvis_x
    joints3d[:, 2] = 1.0
    return {"joints2d": joints, "joints3d": joints3d,
            "cam_loc": np.array([cam_x, 0.0, 0.0], np.float32)}


def test_metres_a_window_spans_by_hand():
    """The joints' box w = 40, h = 160. hgmt's window: x 100 - 10 .. 140 + 10 (60 px), y
    50 - 56 .. 210 + 40 (256 px), side 256 px. The references' (+1 on the joints, inclusive
    sizes w + 1 = 41, h + 1 = 161): x 101 - 10.25 .. 141 + 10.25, 60.5 + 1 = 61.5 px; y
    51 - 56.35 .. 211 + 40.25, 256.6 + 1 = 257.6 px; side 257.6 x 200 / 240 = 214.666... px.
    The pelvis at camera depth 5 - 2 = 3 m, SURREAL's focal length 600 px: 256 x 3 / 600 =
    1.28 m and 214.666... x 3 / 600 = 1.07333... m; at depth 5 + 1 = 6 m, 2.56 m."""
    record = _record()
    assert crop_metres.record_metres(record) == pytest.approx(1.28, abs=1e-9)
    assert crop_metres.record_metres(record, "reference_box") == pytest.approx(
        1.0733333333, abs=1e-6)
    assert crop_metres.record_metres(_record(pelvis_x=-1.0)) == pytest.approx(2.56, abs=1e-9)


def test_the_summary_of_per_record_metres_by_hand():
    """[1, 2, 4]: mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 14/3 over n - 1 = 2, a
    standard deviation of sqrt(7/3); standard error sqrt(7/3) / sqrt(3) = sqrt(7) / 3. One
    record: no spread, 0 and 0."""
    s = crop_metres.summary([1.0, 2.0, 4.0])
    assert s["crop_metres"] == pytest.approx(7 / 3) and s["records"] == 3
    assert s["standard_deviation"] == pytest.approx(np.sqrt(7 / 3))
    assert s["standard_error"] == pytest.approx(np.sqrt(7) / 3)
    one = crop_metres.summary([2.5])
    assert (one["crop_metres"], one["standard_deviation"], one["standard_error"]) == (2.5, 0, 0)


def test_measure_reads_evenly_spaced_records_and_leaves_damaged_ones_out(monkeypatch):
    """A split of 12 records, 5 measured: linspace(0, 11, 5) = 0, 2.75, 5.5, 8.25, 11, rounded
    to the nearest (5.5 to the even 6) records 0, 3, 6, 8, 11; record 3 damaged is left out.
    Each record's figure is its index here: mean (0 + 6 + 8 + 11) / 4 = 6.25. Asked for more
    than the split holds, all 12 are read, 11 measured: (0 + ... + 11 - 3) / 11 = 63 / 11."""
    read = []
    monkeypatch.setattr(builds, "open_split", lambda *a, **k: list(range(12)))

    def fake_read(source, i):
        read.append(i)
        if i == 3:
            raise record_reads.DamagedRecord("record 3 is damaged")
        return {"index": i}

    monkeypatch.setattr(record_reads, "read", fake_read)
    monkeypatch.setattr(crop_metres, "record_metres", lambda record, window: record["index"])
    measured = crop_metres.measure("surreal/all", "/nowhere", records=5)
    assert read == [0, 3, 6, 8, 11]
    assert (measured["crop_metres"], measured["records"], measured["split_records"]) == (
        6.25, 4, 12)
    read.clear()
    assert crop_metres.measure("surreal/all", "/nowhere", records=400)["crop_metres"] == (
        pytest.approx(63 / 11))
    assert read == list(range(12))


def test_kept_frames_leave_out_the_unusable_ones():
    """Three frames, the middle one's joints all zero (frame_selection's "joints_zero"): the
    builder keeps frames 0 and 2, and their records are those frames'."""
    good = _record()
    joints2d = np.stack([good["joints2d"], np.zeros((24, 2), np.float32), good["joints2d"] + 1])
    info = surreal.ClipInfo(joints2d=joints2d, joints3d=np.stack([good["joints3d"]] * 3),
                            cam_loc=good["cam_loc"], zrot=np.zeros(3, np.float32),
                            gender=np.zeros(3, np.uint8), pose=np.zeros((3, 72), np.float32),
                            shape=np.zeros((3, 10), np.float32), sequence="x")
    assert crop_metres.kept_frames(info) == [0, 2]
    records = crop_metres.info_records(info)
    np.testing.assert_array_equal(records[1]["joints2d"], good["joints2d"] + 1)


def test_the_workdirs_figure_is_read_when_positive_and_kept_for_its_window(tmp_path,
                                                                           monkeypatch):
    """read: 0 m is no figure (DamagedRunFile), 0.001 m is. record_in_workdir measures again
    only for another dataset, data_dir or window: a file without 'window' is hgmt's."""
    workdir = str(tmp_path)
    for value in (0.0, -1.0):
        crop_metres.save(workdir, {"crop_metres": value})
        with pytest.raises(workdirs.DamagedRunFile):
            crop_metres.read(workdir)
    crop_metres.save(workdir, {"crop_metres": 0.001})
    assert crop_metres.read(workdir)["crop_metres"] == 0.001
    measured = []

    def measure(dataset, data_dir, window="hgmt"):
        measured.append(window)
        return {"crop_metres": 1.5, "standard_error": 0.0, "records": 1, "split_records": 1,
                "dataset": dataset, "data_dir": data_dir, "window": window}

    monkeypatch.setattr(crop_metres, "measure", measure)
    crop_metres.save(workdir, {"crop_metres": 2.0, "dataset": "d", "data_dir": "/x"})
    crop_metres.record_in_workdir("d", "/x", workdir)
    assert measured == [] and crop_metres.read(workdir)["crop_metres"] == 2.0
    crop_metres.record_in_workdir("d", "/x", workdir, "reference_box")
    assert measured == ["reference_box"]
    with open(workdirs.crop_metres_file(workdir)) as f:
        assert json.load(f)["window"] == "reference_box"
