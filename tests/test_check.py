"""`python -m hgmt.data.check`: a split it cannot check is named with why, not a crash; every
damaged shard of a split is named and the records of its intact shards are still read."""

import json
import os
import re
import shutil

import pytest

from hgmt.data import check
from tests.conftest import interrupted_command


def test_a_build_by_an_older_builder_is_named_not_checked_with_the_fix(tmp_path, capsys):
    """A build of builder 1.1.0, which lacks depth_class and unusable (made here from a build
    of today's builder: the version's folder and dataset_info.json renamed, the two features
    removed from features.json), is a split the command did not check, with the reason and
    the rebuild command (once: the test split's line refers to it), exit status 66; the check
    of today's build passes. Before, the command ended in builds.NotInBuild's
    traceback."""
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
                       "--splits=train,test"]) == check.EXIT_NOT_CHECKED
    assert capsys.readouterr().out.splitlines() == [
        f"surreal/all train: not checked: NotInBuild: dataset 'surreal/all' under "
        f"{old_dir} was built by SURREAL builder version 1.1.0, before 1.3.0, and lacks "
        f"depth_class, unusable (SURREAL's exact depth labels, the flagged test "
        f"frames). Rebuild it: tfds build surreal --imports=data_builders.surreal "
        f"--manual_dir=<SURREAL root> --data_dir={old_dir} --config=all "
        f"--file_format=array_record",
        "surreal/all test: not checked: as train above"]  # the build's fault, said once


def test_a_storage_that_stops_answering_is_named_not_counted_as_damage(tmp_path, capsys,
                                                                        monkeypatch):
    """Every read of the test split fails with EIO after the retries: the split is 'not
    checked', naming the storage (StorageFault), exit status 66, and no record is listed as
    damaged (nothing needs rebuilding). Before, StorageFault ended the command in a
    traceback."""
    from hgmt.data import builds, storage
    from tests.conftest import build_demo
    from tests.test_damaged_records import Outage

    _, data_dir = build_demo(str(tmp_path / "d"), clips_per_split=1, frames=2)
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.0, 0.0))
    real = builds.source_of
    monkeypatch.setattr(builds, "source_of",
                        lambda *args, **kwargs: Outage(real(*args, **kwargs)))
    assert check.main([f"--config.data_dir={data_dir}", "--config.dataset=surreal/all",
                       "--splits=test"]) == check.EXIT_NOT_CHECKED
    (line,) = capsys.readouterr().out.splitlines()
    assert line.startswith("surreal/all test: not checked: StorageFault: dataset ")
    assert "cannot be read from its storage" in line and "not damage" in line
    assert "damaged" not in line.split("not damage")[0], line


def test_a_copy_with_two_truncated_shards_names_both_and_reads_the_other_shards(
        demo_dataset, tmp_path, capsys, monkeypatch):
    """The demo's train split built in 4 shards, two of them (0 and 2) then cut to half, and a
    record of shard 3 damaged: the command names both shards, one line each, reads every
    record of shards 1 and 3 (and names the damaged one), and closes with the shards damaged
    and the records read and damaged, exit status 65. Training's check (`open_split`) names
    both shards in its error. Before, the command named shard 0 only and read no record
    ('0 records read, 1 damaged')."""
    import tensorflow_datasets as tfds

    import data_builders.surreal  # noqa: F401  (registers `surreal`)
    from hgmt.data import builds, record_reads, shards

    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder("surreal/all", data_dir=data_dir, file_format=shards.FILE_FORMAT)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=demo_dataset[0], num_shards=4))
    info = builder.info.splits["train"]
    files = [os.fspath(p) for p in info.filepaths]
    lengths = [int(n) for n in info.shard_lengths]
    assert len(files) == 4 and min(lengths) > 0 and sum(lengths) == 12, lengths
    starts = [sum(lengths[:k]) for k in range(4)]
    for k in (0, 2):
        with open(files[k], "rb") as f:
            data = f.read()
        with open(files[k], "wb") as f:
            f.write(data[:len(data) // 2])
    intact = [i for k in (1, 3) for i in range(starts[k], starts[k] + lengths[k])]
    bad = starts[3] + lengths[3] - 1
    real, read = record_reads.read, []

    def reading(source, index):
        read.append(index)
        if index == bad:
            raise record_reads.DamagedRecord("does not read (a test's damage)")
        return real(source, index)

    monkeypatch.setattr(record_reads, "read", reading)
    capsys.readouterr()
    assert check.main([f"--config.data_dir={data_dir}", "--config.dataset=surreal/all",
                       "--splits=train"]) == check.EXIT_DAMAGED
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4, lines
    for line, k in zip(lines[:2], (0, 2), strict=True):
        assert re.fullmatch(rf"damaged: dataset shard {re.escape(files[k])} (holds \d+ records "
                            rf"where dataset_info.json says {lengths[k]} \(truncated or "
                            rf"overwritten\)|cannot be opened \(.*\))", line), line
    assert lines[2] == (f"damaged: {files[3]} record {lengths[3] - 1} (index {bad} of the "
                        f"split): does not read (a test's damage)")
    assert lines[3] == (f"surreal/all train: 2 of 4 shards damaged ({lengths[0] + lengths[2]} "
                        f"records not read), {len(intact)} records read, 1 damaged. Rebuild "
                        f"the dataset: remove {builder.data_dir} and run `tfds build "
                        f"surreal --imports=data_builders.surreal --manual_dir=<SURREAL "
                        f"root> --data_dir={data_dir} --config=all "
                        f"--file_format=array_record` (or copy those shards again from "
                        f"where the dataset was built)")
    assert read == intact
    monkeypatch.setattr(record_reads, "read", real)
    with pytest.raises(shards.DamagedShard) as raised:
        builds.open_split("surreal/all", data_dir, "train")
    message = str(raised.value)
    assert message.startswith(f"dataset shard {files[0]} ") and \
        f"; dataset shard {files[2]} " in message, message
    assert files[1] not in message and files[3] not in message
    assert message.endswith("(or copy those shards again from where the dataset was built)")


def test_an_unknown_split_is_one_line_naming_the_splits(tmp_path):
    """A split that no SURREAL build has (a typo), or none, is refused before any data is
    looked at, naming the splits there are; rebuilding would not make it."""
    with pytest.raises(SystemExit) as e:
        check.main([f"--config.data_dir={tmp_path}", "--splits=test,val"])
    assert e.value.code == ("error: --splits=test,val: no split 'val'; give some of train, "
                            "validation, test, comma-separated")
    with pytest.raises(SystemExit) as e:  # before: nothing checked, status 0
        check.main([f"--config.data_dir={tmp_path}", "--splits="])
    assert e.value.code == ("error: --splits is empty; give some of train, validation, test, "
                            "comma-separated, or leave the flag out to check them all")


@pytest.mark.parametrize("fraction", ["5", "-1"])
def test_a_damage_fraction_out_of_range_is_refused_as_training_refuses_it(fraction, tmp_path):
    """The check says what training makes of the damage by config.max_damaged_fraction: a
    value training refuses is refused here too, not judged by."""
    with pytest.raises(SystemExit) as e:
        check.main([f"--config.data_dir={tmp_path}", f"--config.max_damaged_fraction={fraction}"])
    assert e.value.code == (f"error: --config.max_damaged_fraction={float(fraction)} must be in "
                            f"[0, 1]")


@pytest.mark.parametrize("dataset, message", [
    ("surreal/every4", "config.dataset='surreal/every4': the SURREAL builder's configs are "
                       "middle, every10, all; give surreal/<config>, e.g. surreal/every10"),
    ("every10", "config.dataset='every10': give surreal/every10 (the SURREAL builder's config "
                "every10)"),
    ("", "config.dataset='': names no dataset; give surreal/<config>, e.g. surreal/every10 "
         "(configs: middle, every10, all)"),
])
def test_a_dataset_name_no_build_can_have_is_refused_naming_the_fix(dataset, message, tmp_path):
    """A SURREAL config the builder lacks, or a config without the builder's name: TFDS would
    call either not built, and the build command offered would fail or name a build that is
    there. A version after the name is TFDS's and passes; so does another builder's name."""
    with pytest.raises(SystemExit) as e:
        check.main([f"--config.data_dir={tmp_path}", f"--config.dataset={dataset}"])
    assert e.value.code == "error: --" + message.replace(f"={dataset!r}", f"={dataset}", 1)
    from hgmt.data import records, shards

    records.check_dataset_name("surreal/every10:1.6.0")
    records.check_dataset_name("mydata/frames")
    assert "--config=every10 " in shards.build_command("surreal/every10:1.6.0", "/d")
    # Another builder's dataset: TFDS's own command for it, not the SURREAL builder's.
    assert shards.build_command("mpii:1.0.0", "/d") == "tfds build mpii --data_dir=/d"


def test_a_copy_without_its_metadata_or_a_wrong_data_dir_is_named_with_the_fix(
        tmp_path, caplog, capsys, monkeypatch):
    """Where TFDS's error misleads, opening a split names the cause and its fix in one line,
    at once (no retries): a copy that lacks dataset_info.json (which TFDS reports as an I/O
    error: the storage was blamed, 'nothing needs rebuilding', after three tries) or
    features.json (reported as not built: the `tfds build` told then reuses the broken
    folder), one whose dataset_info.json does not parse, a data_dir that does not exist, is a
    file, or is the dataset's own folder (told to build into that folder); a whole build
    opens; the root folder is no build."""
    import logging

    from hgmt.data import builds
    from tests.conftest import build_demo

    _, data_dir = build_demo(str(tmp_path / "d"), clips_per_split=1, frames=2)
    version = os.path.join(data_dir, "surreal", "all", os.listdir(
        os.path.join(data_dir, "surreal", "all"))[0])
    build = ("tfds build surreal --imports=data_builders.surreal --manual_dir=<SURREAL root> "
             "--data_dir={} --config=all --file_format=array_record")

    def copy(name: str) -> tuple[str, str]:
        root = str(tmp_path / name)
        folder = os.path.join(root, "surreal", "all", os.path.basename(version))
        shutil.copytree(version, folder)
        return root, folder

    def opened(root: str) -> str:
        with pytest.raises(FileNotFoundError) as raised:
            builds.open_split("surreal/all", root, "test")
        return str(raised.value)

    def fix(root: str, folder: str) -> str:
        return (f"Copy the folder again from where the dataset was built, or remove {folder} "
                f"and rebuild it: {build.format(root)}")

    caplog.set_level(logging.WARNING)
    caplog.clear()
    for missing in ("dataset_info.json", "features.json"):
        root, folder = copy(f"no_{missing}")
        os.remove(os.path.join(folder, missing))
        assert opened(root) == (f"the build of 'surreal/all' under data_dir={root}, "
                                f"{folder}, lacks its {missing} (a copy cut short or made "
                                f"without it). {fix(root, folder)}")
    root, folder = copy("cut_info")
    with open(os.path.join(folder, "dataset_info.json"), "r+") as f:
        f.truncate(40)
    assert opened(root) == (f"the build of 'surreal/all' under data_dir={root}, {folder}, "
                            f"holds a dataset_info.json that does not parse as JSON ("
                            f"{_json_error(os.path.join(folder, 'dataset_info.json'))}: a "
                            f"copy cut short). {fix(root, folder)}")
    assert not [r for r in caplog.records if "trying again" in r.getMessage()]  # at once
    nowhere = str(tmp_path / "typo")
    assert opened(nowhere) == (f"data_dir={nowhere}: does not exist; give --config.data_dir="
                               f"<the folder the dataset was built or copied into, the one that "
                               f"holds surreal/>, or build it there with: "
                               f"{build.format(nowhere)}")
    info = os.path.join(version, "dataset_info.json")
    for file in (info, info + "/x"):
        assert opened(file) == (f"data_dir={file}: is a file or lies under one; give "
                                f"--config.data_dir=<the folder the dataset was built or copied "
                                f"into, the one that holds surreal/>")
    for inside in (os.path.join(data_dir, "surreal"), os.path.join(data_dir, "surreal", "all"),
                   version):
        assert opened(inside) == (f"data_dir={inside}: a folder of the dataset itself, "
                                  f"not the one TFDS takes, which holds surreal/; give "
                                  f"--config.data_dir={data_dir}")
    # A folder beside the build's is a data_dir of its own, not built.
    beside = os.path.join(data_dir, "new")
    os.mkdir(beside)
    assert opened(beside).startswith(f"dataset 'surreal/all' split 'test' is not built under "
                                     f"data_dir={beside}")
    assert len(builds.open_split("surreal/all", data_dir, "test")) == 2
    # A folder that cannot be looked into is the storage's matter (TFDS's error, StorageFault
    # after the retries), not one that "does not exist".
    real_stat = os.stat

    def refused(path, *args, **kwargs):
        if os.fspath(path).startswith(str(tmp_path / "locked")):
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", refused)
    assert builds.broken_build("surreal/all", str(tmp_path / "locked" / "d")) is None
    monkeypatch.setattr(os, "stat", real_stat)
    # The file system's root is a data_dir like any other (looking above it for the
    # dataset's own folder raised IndexError).
    assert builds.broken_build("surreal/all", os.sep) is None
    # A file named like a version is no build of one.
    root, folder = copy("version_file")
    (tmp_path / "version_file" / "surreal" / "all" / "9.9.9").write_text("not a build")
    assert builds.broken_build("surreal/all", root) is None
    # TFDS opens the highest version: a broken one above a whole one is named.
    root, folder = copy("two_versions")
    newer = os.path.join(os.path.dirname(folder), "9.9.9")
    shutil.copytree(folder, newer)
    os.remove(os.path.join(newer, "features.json"))
    assert opened(root) == (f"the build of 'surreal/all' under data_dir={root}, {newer}, "
                            f"lacks its features.json (a copy cut short or made without it). "
                            f"{fix(root, newer)}")
    # The check command prints a fault of the build once, the other splits referring to it.
    root, folder = copy("no_info_again")
    os.remove(os.path.join(folder, "dataset_info.json"))
    assert check.main([f"--config.data_dir={root}", "--config.dataset=surreal/all"]) == \
        check.EXIT_NOT_CHECKED
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("surreal/all train: not checked: FileNotFoundError: the build ")
    assert lines[1:] == ["surreal/all validation: not checked: as train above",
                         "surreal/all test: not checked: as train above"]


def test_a_demo_configs_data_not_built_names_hgmt_main_as_the_fix(tmp_path, capsys,
                                                                   monkeypatch):
    """The demo config's data is made by hgmt.main (its clips generated, then built): a check
    of it that finds no build names that command with the check's config flags, where it named
    `tfds build --manual_dir=<SURREAL root>`, which has no clips to build; so does the fix of
    damaged shards (hgmt.main builds the removed build again)."""
    import types

    from hgmt.data import shards

    monkeypatch.chdir(tmp_path)  # configs/demo.py: hgmt's own
    made_by = ("python3 -m hgmt.main --config configs/demo.py:tasks=pose2d --config.data_dir={} "
               "--workdir=<a run folder> (it generates the demo clips into "
               "config.demo.surreal_root=runs/demo_data/surreal and builds them, then trains)")
    for data_dir, said in ((tmp_path / "none", "does not exist"), (tmp_path, "is not built")):
        assert check.main(["--config", "configs/demo.py:tasks=pose2d",
                           f"--config.data_dir={data_dir}", "--splits=test"]) == \
            check.EXIT_NOT_CHECKED
        (line,) = capsys.readouterr().out.splitlines()
        assert said in line and line.endswith(made_by.format(data_dir)), line
        assert "tfds build" not in line
    checked = check.Checked(fix=shards.rebuild(types.SimpleNamespace(data_dir="B"),
                                               "surreal/all", "D", 1))
    check._with_demo_fix(checked, "surreal/all", "D", "M")
    assert checked.fix == ("Rebuild the dataset: remove B and run M (or copy the shard again "
                           "from where the dataset was built)")


def test_the_check_sets_up_its_console_as_the_processs_own_command(tmp_path, monkeypatch):
    """`main()` without argv (the process's command: `python -m hgmt.data.check`) sets up its
    console as its own (`console.console(command=True)`: the handlers anew, stdout taking
    any file name); `main([...])` from a caller keeps the caller's. The argv read from
    sys.argv made both a caller's."""
    import sys

    from hgmt import console

    seen = []
    real = console.console

    def recorded(verbosity, *, command):  # the caller's console either way, in this test
        seen.append(command)
        return real(verbosity, command=False)

    monkeypatch.setattr(console, "console", recorded)
    args = ["--config", "configs/demo.py:tasks=pose2d",
            f"--config.data_dir={tmp_path / 'none'}", "--splits=test"]
    monkeypatch.setattr(sys, "argv", ["check", *args])
    assert check.main() == check.EXIT_NOT_CHECKED
    assert check.main(args) == check.EXIT_NOT_CHECKED
    assert seen == [True, False]


def test_ctrl_c_ends_the_check_in_one_line(tmp_path):
    """Ctrl-C while `python -m hgmt.data.check` reads the records: one line and the shell's
    status 130, as the other commands end; it was Python's traceback (32 lines, from 2 s
    after the start of a check of the demo build)."""
    proc = interrupted_command("hgmt.data.check", "_check", [
        "--config=configs/demo.py:tasks=pose2d", f"--config.data_dir={tmp_path}"])
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130, "", "interrupted (Ctrl-C); nothing partial was left behind\n")


def test_the_check_says_how_far_it_is(tmp_path, caplog, monkeypatch):
    """A progress line every PROGRESS_EVERY_S seconds (here at every record): the records
    read of those to read, the damaged ones, the time left."""
    import logging

    from tests.conftest import build_demo

    _, data_dir = build_demo(str(tmp_path / "d"), clips_per_split=1, frames=3)
    monkeypatch.setattr(check, "PROGRESS_EVERY_S", 0.0)
    caplog.set_level(logging.INFO)
    assert check.main([f"--config.data_dir={data_dir}", "--config.dataset=surreal/all",
                       "--splits=test"]) == 0
    lines = [r.getMessage() for r in caplog.records if "records read" in r.getMessage()]
    assert [line.split(", about")[0] for line in lines] == [
        f"surreal/all test: {k} of 3 records read, 0 damaged" for k in (0, 1, 2)]
    assert lines[0].endswith(", about ? left") and re.search(r"about \d:\d\d:\d\d left$", lines[1])


def _json_error(path: str) -> str:
    """What json says of the file at `path`."""
    try:
        with open(path) as f:
            json.load(f)
    except ValueError as e:
        return str(e)
    raise AssertionError(f"{path} parses")
