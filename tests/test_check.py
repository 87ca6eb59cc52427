"""`python -m hgmt.data.check`: a split it cannot check is named with why, not a crash."""

import json
import os
import shutil

from hgmt.data import check


def test_a_build_by_an_older_builder_is_named_not_checked_with_the_fix(tmp_path, capsys):
    """A build of builder 1.1.0, which lacks depth_class and unusable (made here from a build
    of today's builder: the version's folder and dataset_info.json renamed, the two features
    removed from features.json), is a split the command did not check, with the reason and
    the rebuild command, exit status 1; the check of today's build passes. Before, the
    command ended in input_pipeline.NotInBuild's traceback."""
    from tests.conftest import build_demo

    _, data_dir = build_demo(str(tmp_path / "today"), clips_per_split=1, frames=2)
    assert check.main([f"--config.data_dir={data_dir}", "--config.dataset=surreal/all",
                       "--splits=test"]) == 0
    assert "surreal/all test: 2 records read, 0 damaged" in capsys.readouterr().out
    old_dir = str(tmp_path / "old")
    versions = os.path.join(data_dir, "surreal", "all")
    (today,) = os.listdir(versions)
    build = os.path.join(old_dir, "surreal", "all", "1.1.0")
    shutil.copytree(os.path.join(versions, today), build)
    with open(os.path.join(build, "dataset_info.json")) as f:
        info = json.load(f)
    info["version"] = "1.1.0"
    with open(os.path.join(build, "dataset_info.json"), "w") as f:
        json.dump(info, f)
    with open(os.path.join(build, "features.json")) as f:
        features = json.load(f)
    for name in ("depth_class", "unusable"):
        del features["featuresDict"]["features"][name]
    with open(os.path.join(build, "features.json"), "w") as f:
        json.dump(features, f)

    assert check.main([f"--config.data_dir={old_dir}", "--config.dataset=surreal/all",
                       "--splits=train,test"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, split in zip(lines, ("train", "test"), strict=True):
        assert line == (
            f"surreal/all {split}: not checked: NotInBuild: dataset 'surreal/all' under "
            f"{old_dir!r} was built by SURREAL builder version 1.1.0, before 1.3.0, and lacks "
            f"['depth_class', 'unusable'] (SURREAL's exact depth labels, the flagged test "
            f"frames). Rebuild it: tfds build data_builders/surreal --manual_dir=<SURREAL "
            f"root> --data_dir={old_dir} --config=all --file_format=array_record")


def test_a_storage_that_stops_answering_is_named_not_counted_as_damage(tmp_path, capsys,
                                                                        monkeypatch):
    """Every read of the test split fails with EIO after the retries: the split is 'not
    checked', naming the storage (StorageFault), exit status 1, and no record is listed as
    damaged (nothing needs rebuilding). Before, StorageFault ended the command in a
    traceback."""
    from hgmt.data import damage, input_pipeline
    from tests.conftest import build_demo
    from tests.test_damaged_records import Outage

    _, data_dir = build_demo(str(tmp_path / "d"), clips_per_split=1, frames=2)
    monkeypatch.setattr(damage, "RETRY_DELAYS_S", (0.0, 0.0))
    real = input_pipeline.open_split
    monkeypatch.setattr(input_pipeline, "open_split",
                        lambda *args, **kwargs: Outage(real(*args, **kwargs)))
    assert check.main([f"--config.data_dir={data_dir}", "--config.dataset=surreal/all",
                       "--splits=test"]) == 1
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("surreal/all test: not checked: StorageFault: dataset ")
    assert "cannot be read from its storage" in line and "not damage" in line
    assert "damaged" not in line.split("not damage")[0], line
