"""Damaged records inside intact shards (hgmt/data/damage.py): training skips, names, counts and
replaces them deterministically; evaluation counts them into its JSON; `hgmt.data.check` names
them. The damage: bytes flipped inside one training record's encoded frame and inside another's
label map (the shard's footer and record count stay intact), and inside one test frame."""

import collections
import errno
import glob
import json
import logging
import os
import re
import shutil
import signal

import cv2
import jax
import numpy as np
import pytest

from hgmt import workdirs
from hgmt.data import builds, check, damage, eval_data, placeholders, record_reads, records, storage
from hgmt.evaluation import evaluator, markdown, report_files
from hgmt.models import create_model
from hgmt.tasks import heads
from hgmt.training import loop, preemption, steps, train_data
from tests.conftest import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KW = {"tasks": "pose2d", "optimizer.schedule": "constant", "checkpoint_every": 100,
      "max_damaged_fraction": 0.2}
# (split, record, feature whose encoded bytes get flipped)
DAMAGE = (("train", 3, "image"), ("train", 7, "segm"), ("test", 5, "image"))


def _shard(data_dir: str, split: str) -> str:
    [path] = [os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs
              if f.startswith(f"surreal-{split}.array_record")]
    return path


@pytest.fixture(scope="module")
def damaged(demo_dataset, tmp_path_factory):
    """A copy of the demo dataset with DAMAGE applied: 16 bytes flipped in the middle of the
    feature's encoded bytes, found in the shard file by 64 of them (zstd stores JPEG and PNG
    bytes as they are, since it cannot shrink them)."""
    data_dir = str(tmp_path_factory.mktemp("damaged") / "tfds")
    shutil.copytree(demo_dataset[1], data_dir)
    for split in {s for s, _, _ in DAMAGE}:
        _flip_bytes(data_dir, split, [(r, f) for s, r, f in DAMAGE if s == split])
    return data_dir


def _flip_bytes(data_dir: str, split: str, damage_at: list[tuple[int, str]]) -> None:
    """Flips 16 bytes in the middle of each (record, feature)'s encoded bytes in the split's
    shard of `data_dir`, found there by 64 of them."""
    source = builds.open_split("surreal/all", data_dir, split)
    path = _shard(data_dir, split)
    with open(path, "rb") as f:
        data = bytearray(f.read())
    for record, feature in damage_at:
        encoded = source[record][feature]
        middle = encoded[len(encoded) // 2:len(encoded) // 2 + 64]
        at = data.find(middle)
        assert at > 0 and data.find(middle, at + 1) < 0, "feature bytes not found once"
        for k in range(16):
            data[at + 24 + k] ^= 0xFF
    with open(path, "wb") as f:
        f.write(data)


class Recorder:
    """A metric writer keeping the scalars; sends this process `signum` when step `at` is
    logged (a preemption in the middle of training)."""

    def __init__(self, signum: int | None = None, at: int | None = None):
        self.signum, self.at, self.scalars = signum, at, {}

    def write_scalars(self, step, scalars):
        self.scalars[step] = dict(scalars)
        if step == self.at:
            os.kill(os.getpid(), self.signum)


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v)
            for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_training_skips_names_once_counts_and_a_resumed_run_equals_an_uninterrupted_one(
        damaged, tmp_path, caplog):
    shard = _shard(damaged, "train")
    config = tiny_config(damaged, total_steps=5, **KW)
    writer = Recorder()
    with caplog.at_level(logging.INFO):
        straight = loop.train(config, str(tmp_path / "straight"), writer=writer)
    for record in (3, 7):
        line = f"damaged record skipped: {shard} record {record} (index {record} of the split)"
        assert caplog.text.count(line) == 1, caplog.text[-3000:]  # 5 steps: 3+ epochs
    assert caplog.text.count("damaged record skipped") == 2
    assert "2 damaged training record(s) were skipped and replaced" in caplog.text
    assert writer.scalars[4]["data/damaged_records"] == 2
    with open(workdirs.damaged_file(str(tmp_path / "straight"))) as f:
        assert [r["index"] for r in json.load(f)["records"]] == [3, 7]

    # Preempted after step 3, then resumed: the same parameters, bit for bit.
    workdir = str(tmp_path / "resumed")
    with pytest.raises(preemption.Preempted, match="at step 3"):
        loop.train(config, workdir, writer=Recorder(signal.SIGTERM, 2))
    resumed = loop.train(config, workdir, writer=Recorder())
    a, b = _flat(straight.params), _flat(resumed.params)
    assert a.keys() == b.keys() and len(a) > 10
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_more_damage_than_the_threshold_stops_naming_the_shard(damaged, tmp_path):
    config = tiny_config(damaged, total_steps=3, **{**KW, "max_damaged_fraction": 0.001})
    with pytest.raises(record_reads.TooManyDamaged) as raised:
        loop.train(config, str(tmp_path))
    assert str(raised.value) == (
        f"1 of the split's 12 records are damaged (8.33%), more than "
        f"config.max_damaged_fraction=0.001 allows (0 of 12), in {_shard(damaged, 'train')}. "
        f"Check the split with `python -m hgmt.data.check` and copy or rebuild that shard "
        f"again, or raise config.max_damaged_fraction to train past the damaged records")


def _scalars(workdir: str, tag: str) -> dict[int, float]:
    """{step: value} of a scalar in the workdir's TensorBoard event files."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.util import tensor_util

    out = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents.*")):
        for event in EventFileLoader(path).Load():
            for value in event.summary.value:
                if value.tag == tag:
                    out[event.step] = float(tensor_util.make_ndarray(value.tensor))
    return out


def _two_processes(workdir: str, data_dir: str, total_steps: int,
                   max_damaged_fraction: float) -> tuple[list[int], list[str]]:
    """(exit statuses, outputs) of a 2-process run of tests/multihost_worker.py."""
    from tests.test_faults import _workers

    os.makedirs(workdir, exist_ok=True)
    procs = _workers(workdir, data_dir, total_steps,
                     overrides=[f"max_damaged_fraction={max_damaged_fraction}"])
    outs = [p.communicate(timeout=600)[0] for p in procs]
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_two_processes_name_count_keep_and_judge_the_damage_of_both_shares(damaged, tmp_path):
    """Each of two processes reads its half of the split (records 0-5, 6-11): damaged record 3
    is process 0's, 7 process 1's. Both processes name both once and count 2; process 0's
    file and TensorBoard hold both; a resumed run restores them on both processes (named
    again by neither). A limit of 0.1 (1.2 of 12 records), which each process's share alone
    stays under, stops both processes on the 2 together, each with TooManyDamaged."""
    shard, workdir = _shard(damaged, "train"), str(tmp_path / "w")
    codes, outs = _two_processes(workdir, damaged, 4, 0.2)
    report = "\n".join(f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outs))
    assert codes == [0, 0], report
    for out in outs:
        for record in (3, 7):
            assert out.count(f"damaged record skipped: {shard} record {record} (index {record} "
                             f"of the split)") == 1, report
        assert "2 damaged training record(s) were skipped and replaced" in out, report
    with open(workdirs.damaged_file(workdir)) as f:
        assert [r["index"] for r in json.load(f)["records"]] == [3, 7]
    assert _scalars(workdir, "data/damaged_records")[4] == 2

    codes, outs = _two_processes(workdir, damaged, 8, 0.2)  # resumed from step 4
    report = "\n".join(f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outs))
    assert codes == [0, 0], report
    for out in outs:
        assert "damaged record skipped" not in out, report
        assert "2 damaged training record(s) were skipped and replaced" in out, report
    with open(workdirs.damaged_file(workdir)) as f:
        assert json.load(f)["count"] == 2
    assert _scalars(workdir, "data/damaged_records")[8] == 2

    codes, outs = _two_processes(str(tmp_path / "limit"), damaged, 4, 0.1)
    report = "\n".join(f"--- process {i}:\n{out[-3000:]}" for i, out in enumerate(outs))
    assert codes == [1, 1], report
    for out in outs:
        assert ("TooManyDamaged: 2 of the split's 12 records are damaged (16.7%), more than "
                "config.max_damaged_fraction=0.1 allows (1 of 12)") in out, report
        assert "Terminating process because" not in out, report


def test_evaluation_leaves_damaged_frames_out_and_counts_them_in_its_json(damaged, tmp_path):
    """Test record 5 does not read at all (its chunk's hash), so its frame is unknown: the
    evaluation reports it as an unreadable record of the split, not as a frame it left out,
    for any frames, and only when the example limit would have reached it. A damaged record
    the evaluation took (the records given) is left out and counted, and with several
    processes the records every process met are named (their union, `combine`)."""
    config = tiny_config(damaged, tasks="pose2d")
    state = steps.create_train_state(jax.random.key(0), config,
                                     create_model(config.model, heads(("pose2d",))))
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    shards = record_reads.Shards.of(builds.open_split("surreal/all", damaged, "test"))
    name = f"{_shard(damaged, 'test')} record 5 (index 5 of the split)"
    for frames, limit, unknown, examples in (("all", 0, [name], 11), ("middle", 0, [name], 2),
                                             ("all", 6, [name], 6), ("all", 5, [], 5)):
        summary = evaluator.evaluate(config, variables, frames=frames, max_examples=limit)
        assert (summary["num_unreadable"], summary["unreadable_records"]) == (
            len(unknown), unknown), (frames, limit)
        assert (summary["num_damaged"], summary["damaged_records"]) == (0, []), (frames, limit)
        assert summary["num_examples"] == examples, (frames, limit)
    # all, 6: records 0-4 and 6 (5 did not read, and had it been a frame it would be one of
    # the first six); all, 5: records 0-4, so record 5 would not have been reached.
    out = str(tmp_path / "eval.json")
    summary = evaluator.evaluate(config, variables, frames="middle")
    report_files.write_report(summary, out)
    with open(out) as f:
        assert json.load(f)["unreadable_records"] == [name]
    text = markdown.to_markdown(summary)
    assert ("1 record(s) of the split do not read, their frames unknown**: each is left out if "
            "it is one of the frames asked for" in text)
    assert "left out**" not in text

    given = evaluator.Evaluator(config, frames="all", indices=[4, 5, 6, 7])
    given.combine = lambda met: sorted(set(met) | {9})  # another process met record 9
    summary = given(variables)
    assert summary["num_damaged"] == 2 and summary["num_unreadable"] == 0
    assert summary["damaged_records"] == [name, shards.name(9)]
    assert summary["num_examples"] == 3
    assert "2 damaged record(s) left out" in markdown.to_markdown(summary)


@pytest.mark.slow
def test_with_two_processes_the_evaluation_names_the_damaged_records_of_both(damaged, tmp_path):
    """Two processes evaluate test records 4-7, process 0 reading 4 and 6, process 1 reading 5
    and 7: damaged record 5 is met by process 1 only, and both processes count and name it."""
    import subprocess
    import sys

    from tests.test_faults import REPO, _free_port

    out, port = str(tmp_path / "damaged.json"), _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests",
                                                           "multihost_eval_worker.py"),
                               out, damaged, str(i), str(port), "4", "5", "6", "7"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    name = f"{_shard(damaged, 'test')} record 5 (index 5 of the split)"
    for i in range(2):
        with open(str(tmp_path / f"damaged_{i}.json")) as f:
            assert {k: v for k, v in json.load(f).items() if k != "pose2d"} == {
                "num_examples": 3, "num_damaged": 1, "damaged_records": [name],
                "num_unreadable": 0, "unreadable_records": []}, i


@pytest.mark.slow
def test_with_two_processes_a_record_one_cannot_read_is_left_out_by_both(demo_dataset,
                                                                        tmp_path):
    """Two processes select every frame of the test split (12 records); process 1 finds
    record 3 damaged (its own copy of the shard) each time it reads it. Both leave record 3 out
    and name it, and split the other 11 frames between them exactly: their numbers equal one
    process's evaluation of those 11 records."""
    import subprocess
    import sys

    from tests.test_faults import REPO, _free_port

    data_dir = demo_dataset[1]
    out, port = str(tmp_path / "flaky.json"), _free_port()
    procs = [subprocess.Popen([sys.executable, os.path.join(REPO, "tests",
                                                           "multihost_eval_worker.py"),
                               out, data_dir, str(i), str(port), "flaky=3"], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-3000:] for o in outs)
    config = tiny_config(data_dir, tasks="pose2d")
    state = steps.create_train_state(jax.random.key(0), config,
                                     create_model(config.model, heads(("pose2d",))))
    alone = evaluator.Evaluator(config, frames="all", indices=[i for i in range(12) if i != 3])(
        {"params": state.params, "batch_stats": state.batch_stats})
    name = f"{_shard(data_dir, 'test')} record 3 (index 3 of the split)"
    for i in range(2):
        with open(str(tmp_path / f"flaky_{i}.json")) as f:
            summary = json.load(f)
        assert {k: summary[k] for k in ("num_examples", "num_unreadable",
                                        "unreadable_records", "num_damaged")} == {
            "num_examples": 11, "num_unreadable": 1, "unreadable_records": [name],
            "num_damaged": 0}, i
        for metric in ("pckh@0.5", "pck@3.2px"):
            assert summary["pose2d"][metric] == pytest.approx(alone["pose2d"][metric],
                                                              abs=1e-6), (i, metric)


def test_an_empty_account_of_damaged_records_starts_again_and_a_damaged_one_stops(tmp_path,
                                                                                caplog):
    """damaged_records.json left empty by a power loss (renamed into place before its data
    reached the disk): the resumed run's account starts again, with a warning naming the file,
    and the next record met is written to it. A file that holds something else stops the run
    naming the file and the fix (hgmt.main shows it in one line: loop.FAULTS)."""
    shards = record_reads.Shards(("a", "b"), (0, 4), (4, 3))
    path = workdirs.damaged_file(str(tmp_path))
    open(path, "w").close()
    with caplog.at_level(logging.WARNING):
        log = damage.DamageLog(shards, 7, 0.5, path)
    assert log.found == {}
    assert f"{path} is empty: its write was cut short (a power loss" in caplog.text
    log.note([5])
    with open(path) as f:
        assert json.load(f) == {"count": 1, "records": [
            {"index": 5, "name": "b record 1 (index 5 of the split)"}]}
    assert damage.DamageLog(shards, 7, 0.5, path).found == {5: shards.name(5)}

    fix = (r"Delete it and rerun: the damaged records are then named and counted again as the "
           r"loader meets them \(python -m hgmt.data.check lists")
    for text, problem in (('{"count": 1, "records": [{"ind', r"is not a JSON object \(not JSON: "
                           r"Unterminated string starting at: line 1 column 27\)"),
                          ('{"count": 1}', r"is not an account of damaged records \(KeyError: "
                           r"'records': a 'records' list")):
        with open(path, "w") as f:
            f.write(text)
        with pytest.raises(workdirs.DamagedRunFile,
                           match=rf"^{re.escape(path)} {problem}.*{fix}"):
            damage.DamageLog(shards, 7, 0.5, path)
    assert workdirs.DamagedRunFile in loop.FAULTS


def test_the_check_command_names_every_damaged_record(damaged, demo_dataset, capsys):
    """The data checked is the config's (`--config`, default configs/default.py, and its
    data_dir and dataset fields), as every command takes it: the demo's config checks its
    dataset, surreal/all, and the default config its own, surreal/every10. The flags the
    command took before (--data_dir, --dataset) exit in one line naming the field to give."""
    assert check.main([f"--config={REPO}/configs/demo.py", f"--config.data_dir={damaged}"]) == \
        check.EXIT_DAMAGED == 65
    out = capsys.readouterr().out
    for split, record, _ in DAMAGE:
        assert (f"damaged: {_shard(damaged, split)} record {record} (index {record} of the "
                f"split): does not read (RuntimeError: Corrupted Riegeli/records file: chunk "
                f"data hash mismatch") in out, out
    fix = ("Copy the shard files named again from where the dataset was built, or rebuild "
           "the dataset")
    assert (f"surreal/all train: 12 records read, 2 damaged. Training stops on them: "
            f"config.max_damaged_fraction=0.001 allows 0 of 12. {fix}\n") in out
    assert "surreal/all validation: 12 records read, 0 damaged\n" in out
    assert (f"surreal/all test: 12 records read, 1 damaged. Evaluating test leaves the damaged "
            f"frames out and counts them in its report. {fix}\n") in out
    assert check.main([f"--config={REPO}/configs/demo.py", f"--config.data_dir={damaged}",
                       "--config.max_damaged_fraction=0.2", "--splits=train"]) == check.EXIT_DAMAGED
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"surreal/all train: 12 records read, 2 damaged. Training skips each and trains on the "
        f"next good record of its shard (config.max_damaged_fraction=0.2 allows 2 of 12). {fix}")
    clean = demo_dataset[1]
    assert check.main([f"--config.data_dir={clean}", "--config.dataset=surreal/all"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"surreal/all {split}: 12 records read, 0 damaged"
        for split in ("train", "validation", "test")]
    assert check.main([f"--config.data_dir={clean}", "--splits=test"]) == \
        check.EXIT_NOT_CHECKED == 66
    out = capsys.readouterr().out
    assert out.startswith(
        f"surreal/every10 test: not checked: FileNotFoundError: dataset 'surreal/every10' "
        f"split 'test' is not built under data_dir={clean}")
    assert out.endswith("; or use a build there: --config.dataset=surreal/all\n"), out
    for old, field in ((f"--data_dir={clean}", "data_dir"), ("--dataset", "dataset")):
        with pytest.raises(SystemExit) as e:
            check.main([old, "surreal/all"] if old == "--dataset" else [old])
        assert e.value.code == (
            f"error: --{field}: the data to check is the config's; give --config.{field}=... "
            f"instead (and --config=<the config the runs train with>, default "
            f"configs/default.py)")


def test_a_record_that_does_not_decode_is_replaced_by_the_next_good_one_of_its_shard():
    """The decode path (a record whose hash matched but whose image does not decode), and
    replacement within the shard, wrapping around."""
    shards = record_reads.Shards(("a", "b"), (0, 4), (4, 3))
    assert [shards.replacement(5, k) for k in range(4)] == [5, 6, 4, 5]
    assert shards.locate(6) == ("b", 2)
    good = {"image": b"", "segm": b"", "depth": b""}
    fields = [dict(good, image=b"not a jpeg" if i in (5, 6) else b"ok") for i in range(7)]

    def make(record):
        if record["image"] != b"ok":
            records.decoded(record, "image")  # raises DamagedRecord
        return {"made": True}

    assert record_reads.first_good(5, fields, shards, make) == ({"made": True}, [5, 6])
    assert record_reads.first_good(1, fields, shards, make) == ({"made": True}, [])
    fields[4] = dict(good, image=b"\xff\xd8 broken")
    with pytest.raises(record_reads.TooManyDamaged, match=r"^3 records in a row are damaged in b "
                                                    r"\(from record 1, every record of the "
                                                    r"shard; the first: record feature 'image'"):
        record_reads.first_good(5, fields, shards, make)


class Counted(list):
    """Records {'x': i} of one shard, each read counted in `reads`; those in `bad` fail as a
    checksum mismatch does."""

    def __init__(self, size: int, bad):
        super().__init__({"x": i} for i in range(size))
        self.bad, self.reads = set(bad), collections.Counter()

    def __getitem__(self, index):
        self.reads[index] += 1
        if index in self.bad:
            raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")
        return list.__getitem__(self, index)


def test_a_damaged_record_is_read_once_and_a_short_shard_gives_its_own_count():
    """The training path (a Guarded source's element, then make_guarded): the damaged record
    the source already read is not read again, each candidate is read once and listed once in
    `damaged`, and in a shard shorter than MAX_TRIES whose records are all damaged the error
    counts its records. Before, each damaged record was read twice, and a 3-record shard's
    records were tried again until 8 tries: '8 records in a row are damaged', with repeated
    indices."""

    def example(source, index):
        shards = record_reads.Shards.of(source)
        out = record_reads.make_guarded(record_reads.Guarded(source)[index], source, shards, dict,
                                        usable=placeholders.passes_filter)
        return out["x"], out["damaged"].tolist()

    source = Counted(4, bad={1})
    assert example(source, 1) == (2, [1] + [-1] * 7)
    assert source.reads == {1: 1, 2: 1}
    source = Counted(3, bad={1, 2})  # wraps around to record 0
    assert example(source, 1) == (0, [1, 2] + [-1] * 6)
    assert source.reads == {0: 1, 1: 1, 2: 1}
    checksum = "does not read (RuntimeError: Corrupted Riegeli/records file: chunk data hash " \
               "mismatch)"
    source = Counted(3, bad={0, 1, 2})
    with pytest.raises(record_reads.TooManyDamaged) as raised:
        example(source, 1)
    assert str(raised.value) == (
        f"3 records in a row are damaged in <memory> (from record 1, every record of the "
        f"shard; the first: {checksum}): the shard is a bad copy. Check the split with "
        f"`python -m hgmt.data.check` and copy or rebuild it again")
    assert source.reads == {0: 1, 1: 1, 2: 1}
    source = Counted(10, bad=range(10))
    with pytest.raises(record_reads.TooManyDamaged, match=rf"^8 records in a row are damaged in "
                                                    rf"<memory> \(from record 5; the first: "
                                                    rf"{re.escape(checksum)}\): "):
        example(source, 5)
    assert source.reads == {i: 1 for i in (5, 6, 7, 8, 9, 0, 1, 2)}


@pytest.mark.parametrize("key", ["image", "segm", "depth"])
def test_an_empty_image_field_is_a_damaged_record_naming_it(key):
    """No bytes at all (OpenCV raises rather than returning None): the damaged-record error
    that the loaders skip, naming the field."""
    with pytest.raises(record_reads.DamagedRecord, match=rf"record feature '{key}' \(0 bytes\) is "
                                                   rf"not a readable image"):
        records.decoded({key: b""}, key)
    png = cv2.imencode(".png", np.zeros((2, 3), np.uint8))[1].tobytes()
    fields = [{key: b""}, {key: png}]

    def make(record):
        return {"shape": records.decoded(record, key).shape[:2]}

    shards = record_reads.Shards(("a",), (0,), (2,))
    assert record_reads.first_good(0, fields, shards, make) == ({"shape": (2, 3)}, [0])


class Flaky:
    """Records {'i': i}; reading record 1 fails with `error` its first `times` times."""

    def __init__(self, error: Exception, times: int):
        self.error, self.times, self.reads = error, times, 0

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict:
        if index == 1:
            self.reads += 1
            if self.reads <= self.times:
                raise self.error
        return {"i": index}


def test_a_read_that_fails_for_a_moment_is_read_again_not_counted_damaged(monkeypatch):
    """An I/O error that passes (an NFS timeout: OSError; array_record's report of EIO: a
    RuntimeError naming it) is read again; one that lasts, after len(RETRY_DELAYS_S) + 1
    reads, is the storage's (StorageFault naming the record's file), never replaced or
    counted; a checksum mismatch is damage at once: replaced and counted."""
    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.0, 0.0), raising=False)
    shards = record_reads.Shards(("a",), (0,), (4,))

    def make(record):
        return {"i": record["i"]}

    def example(source):  # the training path: Guarded source, then make_guarded
        out = record_reads.make_guarded(record_reads.Guarded(source)[1], source, shards, make,
                                        usable=placeholders.passes_filter)
        return out["i"], [int(i) for i in out["damaged"] if i >= 0]

    passing = (TimeoutError(errno.ETIMEDOUT, "Connection timed out"),
               RuntimeError("pread() failed: Input/output error; reading /nfs/surreal-train"))
    for error in passing:
        source = Flaky(error, times=2)
        assert example(source) == (1, []), error
        assert source.reads == 3
    for lasting in (OSError(errno.EIO, "Input/output error"),
                    RuntimeError("pread() failed: Input/output error; reading /nfs/surreal"),
                    PermissionError(errno.EACCES, "Permission denied")):
        for read in (lambda source: record_reads.first_good(1, source, shards, make),
                     example, lambda source: record_reads.read(source, 1)):
            source = Flaky(lasting, times=10**6)
            with pytest.raises(storage.StorageFault) as raised:
                read(source)
            assert str(raised.value).startswith(
                f"dataset <memory> record 1 (index 1 of the split) cannot be read from its "
                f"storage "
                f"({type(lasting).__name__}: {lasting}; tried 3 times): an I/O error or a "
                f"refused access"), raised.value
            assert "not damage: nothing needs rebuilding" in str(raised.value)
            assert source.reads == 3
    checksum = Flaky(RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch"),
                     times=10**6)
    assert record_reads.first_good(1, checksum, shards, make) == ({"i": 2}, [1])
    assert checksum.reads == 1


class Outage:
    """A split whose every read fails with EIO: the storage under it stopped answering."""

    def __init__(self, source):
        self.source, self.dataset_info, self.split = source, source.dataset_info, source.split

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> dict:
        raise OSError(errno.EIO, "Input/output error")

    def __repr__(self) -> str:
        return repr(self.source)


def test_a_storage_outage_during_training_stops_naming_the_storage_not_damage(
        demo_dataset, tmp_path, monkeypatch):
    """Every read of the training split fails with EIO, after the retries: the run stops with
    StorageFault (a SplitFault: one line from hgmt.main) naming the record's shard file and the
    storage, and no record is counted damaged (before, each was replaced and written into
    damaged_records.json, and the 8th in a row stopped the run as a bad copy to rebuild)."""
    from hgmt.data import shards

    monkeypatch.setattr(storage, "RETRY_DELAYS_S", (0.0, 0.0))
    real = builds.open_split

    def open_split(dataset, data_dir, split, *args, **kwargs):
        source = real(dataset, data_dir, split, *args, **kwargs)
        return Outage(source) if split == "train" else source

    monkeypatch.setattr(builds, "open_split", open_split)
    workdir = str(tmp_path / "run")
    shard = _shard(demo_dataset[1], "train")
    with pytest.raises(shards.StorageFault, match=(
            rf"^dataset {re.escape(shard)} record \d+ \(index \d+ of the split\) cannot be "
            rf"read from its storage \(OSError: \[Errno 5\] Input/output error; tried 3 "
            rf"times\): .*not damage: nothing needs rebuilding. Check that "
            rf"{re.escape(os.path.dirname(shard))} is reachable")):
        loop.train(tiny_config(demo_dataset[1], total_steps=2, **KW), workdir)
    assert isinstance(storage.StorageFault("x"), loop.FAULTS)
    assert not os.path.exists(workdirs.damaged_file(workdir))


def test_the_damage_count_at_a_step_is_of_the_batches_trained_on(damaged, tmp_path):
    """The loader runs `prefetch` batches ahead of the step: the damaged records at step k
    (TensorBoard's data/damaged_records, damaged_records.json) are those of the k batches
    trained on, not of the batches prefetched beyond them (before, those were counted too)."""
    config = tiny_config(damaged, total_steps=3, **{**KW, "batch_size": 4, "log_every": 1,
                                                    "prefetch": 3})
    source = builds.open_split("surreal/all", damaged, "train")

    def counts(seed: int, batches: int) -> list[int]:
        """The damaged records met in the first 1..batches batches of the trainer's loader."""
        config.seed = seed
        met, out = set(), []
        loader = iter(train_data.train_loader(config, source, ("pose2d",), None))
        for _ in range(batches):
            met |= {int(i) for i in np.unique(next(loader)["damaged"]) if i >= 0}
            out.append(len(met))
        return out

    # A seed whose first batch holds no damaged record and whose prefetched ones do.
    seed, met = next((s, c) for s in range(20) if (c := counts(s, 6))[0] < c[-1])
    config.seed = seed
    writer = Recorder()
    loop.train(config, str(tmp_path / "run"), writer=writer)
    assert [writer.scalars[k]["data/damaged_records"] for k in (1, 2, 3)] == met[:3], met
    if met[2]:
        with open(workdirs.damaged_file(str(tmp_path / "run"))) as f:
            assert json.load(f)["count"] == met[2]
    else:
        assert not os.path.exists(workdirs.damaged_file(str(tmp_path / "run")))


class Unreadable(Outage):
    """A split none of whose records reads: each one's chunk hash does not match."""

    def __getitem__(self, index: int) -> dict:
        raise RuntimeError("Corrupted Riegeli/records file: chunk data hash mismatch")


def test_an_evaluation_none_of_whose_records_reads_is_one_line_naming_the_split_and_fixes(
        demo_dataset):
    """Every selected frame damaged: the evaluation stops with DamagedShard (a SplitFault of
    loop.FAULTS, so hgmt.main and hgmt.evaluate show one line) naming the dataset, split and
    shard file, the check command and the rebuild command (before: a DamagedRecord naming
    none of them, shown with its traceback)."""
    from hgmt import cli
    from hgmt.data import shards

    data_dir = demo_dataset[1]
    source = Unreadable(builds.open_split("surreal/all", data_dir, "test"))
    built = os.path.dirname(_shard(data_dir, "test"))
    with pytest.raises(SystemExit) as e, cli.faults_in_one_line(*loop.FAULTS):
        list(eval_data.eval_batches(source, [0, 1, 2], batch_size=4, image_size=64,
                                    damaged=[]))
    assert str(e.value.code) == (
        f"error: DamagedShard: none of the 3 records of dataset 'surreal/all' split 'test' "
        f"selected to evaluate reads or decodes (in {_shard(data_dir, 'test')}): the split is "
        f"damaged. List its damaged records with `python -m hgmt.data.check "
        f"--config.data_dir={data_dir} --config.dataset=surreal/all --splits=test` and "
        f"rebuild it: remove {built} and run `{shards.build_command('surreal/all', data_dir)}` "
        f"(or copy it again from where it was built)")


def test_an_evaluation_whose_frames_all_fail_to_read_as_they_are_selected_is_one_line(
        demo_dataset, tmp_path):
    """Every test record damaged, so the selection of the frames reads none of them: the
    evaluation stops with the DamagedShard of a damaged split (hgmt.main and hgmt.evaluate
    show it in one line), not with a split that "has no frames to evaluate"."""
    from hgmt import cli
    from hgmt.data import shards

    data_dir = str(tmp_path / "tfds")
    shutil.copytree(demo_dataset[1], data_dir)
    count = len(builds.open_split("surreal/all", data_dir, "test"))
    _flip_bytes(data_dir, "test", [(r, "image") for r in range(count)])
    config = tiny_config(data_dir, tasks="pose2d")
    with pytest.raises(SystemExit) as e, cli.faults_in_one_line(*loop.FAULTS):
        evaluator.Evaluator(config, frames="middle")
    assert str(e.value.code).startswith(
        f"error: DamagedShard: none of the {count} records of dataset 'surreal/all' split "
        f"'test' selected to evaluate reads or decodes (in {_shard(data_dir, 'test')}): the "
        f"split is damaged. List its damaged records with `python -m hgmt.data.check")
    assert isinstance(e.value.__context__, shards.DamagedShard)
