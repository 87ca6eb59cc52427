"""A workdir and a dataset in an object store (gs://), as on a Cloud TPU VM pod slice.

hgmt's own files of a run go through `etils.epath`, and the dataset's shards are read by
array_record's GCS reader. The store here is a local folder `store`: epath's operations on
gs:// paths are redirected into it (`etils.epath.testing.mock_epath`), and array_record reads
it from a local server of GCS's JSON API (its `CLOUD_STORAGE_EMULATOR_ENDPOINT`). The tests
run in an empty working directory that must stay empty: a URL taken for a local path
(`os.path.abspath('gs://b/x')` is `<cwd>/gs:/b/x`) would write there. Orbax's checkpoints in
an object store are written by tensorstore's GCS driver, which this store does not serve.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import sys
import threading
import urllib.parse
from http import server

import ml_collections
import numpy as np
import pytest
from etils import epath

import hgmt.export
import hgmt.inference.export
from hgmt import disk_space, paths, run_config, workdirs
from hgmt.data import builds, damage, record_reads, shards
from hgmt.evaluation import markdown, report_files
from hgmt.inference import trained_model
from hgmt.tasks import drawing
from hgmt.training import checkpoint_write_faults, checkpoints, eval_reports, loop
from tests.conftest import tiny_config

BUCKET = "gs://bucket"


class _JsonApiServer:
    """GCS's JSON API media downloads (`GET /storage/v1/b/<bucket>/o/<object>?alt=media`,
    with `Range`) of the files under `root`/<bucket>/<object>."""

    def __init__(self, root: str):
        self.served: list[str] = []  # the objects read, one entry a request
        served = self.served

        class Handler(server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):  # noqa: N802  (http.server's name)
                url = urllib.parse.urlparse(self.path)
                found = re.fullmatch(r"/storage/v1/b/([^/]+)/o/(.+)", url.path)
                path = found and os.path.join(root, found[1], urllib.parse.unquote(found[2]))
                if not path or not os.path.isfile(path):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                served.append(urllib.parse.unquote(found[2]))
                with open(path, "rb") as f:
                    data = f.read()
                start, end, status = 0, len(data) - 1, 200
                wanted = self.headers.get("Range", "")
                if last := re.fullmatch(r"bytes=-(\d+)", wanted):
                    start, status = max(0, len(data) - int(last[1])), 206
                elif span := re.fullmatch(r"bytes=(\d+)-(\d*)", wanted):
                    start, status = int(span[1]), 206
                    end = min(end, int(span[2])) if span[2] else end
                self.send_response(status)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
                self.send_header("Content-Length", str(end + 1 - start))
                self.end_headers()
                self.wfile.write(data[start:end + 1])

            def log_message(self, *args):
                pass

        self.httpd = server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def store(tmp_path, monkeypatch):
    """(the local folder behind gs://, the JSON API's list of objects served); the tests run in
    an empty working directory that is checked to stay empty."""
    root, cwd = tmp_path / "store", tmp_path / "cwd"
    (root / "bucket").mkdir(parents=True)
    cwd.mkdir()
    monkeypatch.chdir(cwd)

    def local(value):
        text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
        return str(root) + text[4:] if text and text.startswith("gs://") else value

    def redirected(original, *args, **kwargs):
        return original(*map(local, args), **kwargs)

    names = ("copy", "exists", "glob", "isdir", "listdir", "makedirs", "mkdir", "open",
             "remove", "rename", "replace", "rmtree", "stat", "walk")
    api = _JsonApiServer(str(root))
    monkeypatch.setenv("CLOUD_STORAGE_EMULATOR_ENDPOINT", api.endpoint)
    # epath hands gs:// to TensorFlow's file system whenever TensorFlow is installed (a
    # cached check): here to the redirected backend.
    monkeypatch.setattr(epath.gpath, "_is_tf_installed", lambda: False)
    try:
        with epath.testing.mock_epath(**dict.fromkeys(names, redirected)):
            yield root, api.served
    finally:
        api.close()
    assert os.listdir(cwd) == [], "a gs:// path was written as a local one"


def test_a_url_stays_a_url_and_a_local_path_becomes_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert paths.is_url("gs://b/x") and paths.is_url("s3://b/x") and not paths.is_url("b/x")
    assert workdirs.checkpoint_dir("gs://b/runs/x") == "gs://b/runs/x/checkpoints"
    assert workdirs.eval_file("gs://b/runs/x", "test") == "gs://b/runs/x/eval_test.json"
    assert workdirs.checkpoint_dir("runs/x") == str(tmp_path / "runs/x/checkpoints")
    assert disk_space.space_left("gs://b/x") == "an object store: free space not known"


def test_the_run_files_of_a_gs_workdir_are_written_and_read_there(store):
    workdir = f"{BUCKET}/runs/all"
    run = store[0] / "bucket/runs/all"
    config = ml_collections.ConfigDict({"tasks": "pose2d", "image_size": 64,
                                        "model": {"features": 16}})
    run_config.save_config(config, workdir)
    assert json.loads((run / "config.json").read_text())["tasks"] == "pose2d"
    added = {f.removeprefix("model."): v for f, v in run_config.ADDED_CONFIG_FIELDS.items()
             if f.startswith("model.")}
    assert run_config.load_config(workdir).model.to_dict() == {"features": 16, **added}

    # The evaluation curves: an object store cannot append, each line is kept.
    for step in (10, 20):
        disk_space.append_line(workdirs.evals_file(workdir), json.dumps({"step": step}),
                               "the evaluation curves")
    assert [json.loads(x)["step"] for x in (run / "evals.jsonl").read_text().splitlines()] == [
        10, 20]
    with open(run / "evals.jsonl", "a") as f:  # an object copied up with a torn last line
        f.write('{"step": 2')
    disk_space.append_line(workdirs.evals_file(workdir), json.dumps({"step": 30}), "curves")
    assert [e["step"] for e in workdirs.read_evals(workdir)] == [10, 20, 30]

    # An evaluation's summary, its table and its picture.
    out = workdirs.eval_file(workdir, "test")
    summary = {"split": "test", "num_examples": 3, "flip": False}
    report_files.write_report(summary, out)
    assert json.loads((run / "eval_test.json").read_text()) == {**summary, "pictures": []}
    assert eval_reports.read_report(out) == {**summary, "pictures": []}  # a rerun reads it
    assert eval_reports.read_report(f"{workdir}/eval_validation.json") is None
    assert (run / "eval_test.md").read_text() == markdown.to_markdown(summary)
    drawing.plot_pck_curve({"thresholds": [0.1, 0.5], "mean": [0.2, 0.8]},
                           f"{workdir}/eval_test_pckh.png")
    assert (run / "eval_test_pckh.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The damaged records skipped, kept across a resume.
    split = record_reads.Shards(("a-00000-of-00001",), (0,), (10,))
    damage.DamageLog(split, 10, 0.5, workdirs.damaged_file(workdir)).note([3])
    again = damage.DamageLog(split, 10, 0.5, workdirs.damaged_file(workdir))
    assert again.found == {3: "a-00000-of-00001 record 3 (index 3 of the split)"}

    # Unfinished checkpoint writes are removed; finished ones are listed.
    for name in ("2", "4", "6.orbax-checkpoint-tmp-17"):
        (run / "checkpoints" / name).mkdir(parents=True)
    # A new run leaves an earlier one's in an object store, which has no workdir lock: it may
    # be another trainer's write under way.
    assert checkpoint_write_faults.remove_leftovers(workdir) == []
    assert checkpoint_write_faults.remove_partial(workdir) == [
        f"{workdir}/checkpoints/6.orbax-checkpoint-tmp-17"]
    assert checkpoints._steps_on_disk(workdirs.checkpoint_dir(workdir)) == [2, 4]
    with pytest.raises(trained_model.NoCheckpoint, match=f"no best checkpoint in {workdir}/best"):
        trained_model.restore_for_inference(workdir, "best")


def test_the_learning_curves_of_a_gs_workdir_are_drawn_there(store):
    """experiments/learning_curves.py reads a gs:// workdir's evals.jsonl and config.json and
    writes curves.json and curves.png beside them."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments"))
    import learning_curves

    workdir = f"{BUCKET}/runs/curves"
    run = store[0] / "bucket/runs/curves"
    run_config.save_config(ml_collections.ConfigDict({"tasks": "pose2d", "image_size": 32}),
                           workdir)
    for step, pck in ((2, 0.25), (4, 0.5)):
        disk_space.append_line(workdirs.evals_file(workdir), json.dumps(
            {"step": step, "evaluator": "test", "metrics": {"pose2d/pckh@0.5": pck}}), "curves")
    assert learning_curves.main([f"--workdir={workdir}"]) == 0
    curves = json.loads((run / "curves.json").read_text())
    assert [p["metrics"]["pose2d/pckh@0.5"] for p in curves["test"]] == [0.25, 0.5]
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_dataset_in_gs_is_checked_and_read_like_a_local_one(store, demo_dataset):
    _, data_dir = demo_dataset
    store, served = store
    shutil.copytree(data_dir, store / "bucket/tfds")
    local = builds.open_split("surreal/all", data_dir, "train")
    remote = builds.open_split("surreal/all", f"{BUCKET}/tfds", "train")
    assert len(remote) == len(local) == 12
    for index in (0, 7, 11):
        a, b = local[index], remote[index]
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(np.asarray(b[key]), np.asarray(a[key]), err_msg=key)
    assert any(".array_record-" in name for name in served)  # array_record's GCS reader

    shard = next((store / "bucket/tfds").rglob("*train.array_record-00000-of-*"))
    shard.write_bytes(shard.read_bytes()[:-100])
    url = f"{BUCKET}/{shard.relative_to(store / 'bucket')}"
    with pytest.raises(shards.DamagedShard, match=f"dataset shard {re.escape(url)} cannot be "
                                                  f"opened"):
        builds.open_split("surreal/all", f"{BUCKET}/tfds", "train")
    shard.unlink()
    with pytest.raises(shards.DamagedShard, match=f"dataset shard {re.escape(url)} is missing"):
        builds.open_split("surreal/all", f"{BUCKET}/tfds", "train")


def test_training_reads_a_gs_dataset_and_exports_to_gs(store, demo_dataset, tmp_path, capsys,
                                                       monkeypatch):
    """Two training steps of the tiny pose2d model on the dataset in gs:// (the loader in the
    main process, its records served over the JSON API), then `hgmt.export` into gs://: a
    second export into that folder is refused, and one that fails midway (fault injection)
    leaves no folder (the store has no rename: hgmt.json is written last)."""
    store, served = store
    shutil.copytree(demo_dataset[1], store / "bucket/tfds")
    workdir = str(tmp_path / "run")
    config = tiny_config(f"{BUCKET}/tfds", tasks="pose2d", total_steps=2)
    assert config.worker_count == 0  # grain's worker processes would not see the redirection
    loop.train(config, workdir)
    assert checkpoints.manager(workdir).all_steps() == [2]
    assert sum(".array_record-" in name for name in served) >= 16  # a batch of 8, twice

    assert hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo",
                             f"--out_dir={BUCKET}/export"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["out_dir"] == f"{BUCKET}/export"
    assert printed["output_shapes_for_batch_2"]["pose2d"] == [2, 16, 16, 16]
    meta = json.loads((store / "bucket/export/hgmt.json").read_text())
    assert meta["tasks"] == ["pose2d"] and meta["step"] == 2
    assert (store / "bucket/export/model.jaxexport").stat().st_size > 0

    with pytest.raises(SystemExit, match=rf"^error: FileExistsError: --out_dir={BUCKET}/export: "
                                         rf"exists and is not empty; choose a new folder"):
        hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo",
                          f"--out_dir={BUCKET}/export"])
    assert json.loads((store / "bucket/export/hgmt.json").read_text()) == meta

    def half_written(f, image_size, path):
        epath.Path(path).write_bytes(b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hgmt.inference.export, "export_stablehlo", half_written)
    with pytest.raises(SystemExit, match=rf"^error: DiskFull: .* cannot write the export to "
                                         rf"{BUCKET}/again: "):
        hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo",
                          f"--out_dir={BUCKET}/again"])
    assert sorted(os.listdir(store / "bucket")) == ["export", "tfds"]

    # A store that refuses the folder (no network, no write permission): one line before the
    # checkpoint is read, where it was a traceback after.
    def refused(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(self))

    def no_work(*args, **kwargs):
        raise AssertionError("the checkpoint was read before the folder was made")

    monkeypatch.setattr(type(epath.Path(f"{BUCKET}/again")), "mkdir", refused)
    monkeypatch.setattr(hgmt.inference.export, "inference_fn", no_work)
    with pytest.raises(SystemExit) as e:
        hgmt.export.main([f"--workdir={workdir}", "--format=stablehlo",
                          f"--out_dir={BUCKET}/again"])
    assert str(e.value.code) == (
        f"error: UnusableOutDir: --out_dir={BUCKET}/again: could not be made (PermissionError: "
        f"[Errno 13] Permission denied: '{BUCKET}/again'); check the URL, and this host's "
        f"network and credentials for it")
