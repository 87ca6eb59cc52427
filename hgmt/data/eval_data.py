"""The evaluation's input: which frames of a built split are evaluated (SURREAL's middle frame
of each clip, every K-th, or all, as the build stores them: `eval_indices`), and their cropped
batches in the split's order, made by a pool of threads (`eval_batches`). The training loader
is hgmt/data/input_pipeline.py's.
"""

from __future__ import annotations

import collections
import concurrent.futures
import itertools
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from hgmt import cores
from hgmt.data import builds, cropping, record_reads, records, shards
from hgmt.data.augment import Augment
from hgmt.sources import frame_selection

if TYPE_CHECKING:  # TensorFlow Datasets is imported where a split is opened
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.data_sources.array_record import ArrayRecordDataSource

    from hgmt.data.tf_example import ParsedSource

# The builder version whose records hold `info_frames`, the count the middle frame comes from.
INFO_FRAMES_SINCE = "1.5.0"


def open_light(dataset: str, data_dir: str, split: str) -> ArrayRecordDataSource | ParsedSource:
    """`builds.open_split` reading only what selects frames: frame, num_frames and, in
    builds since INFO_FRAMES_SINCE, info_frames."""
    from hgmt.data import tf_example

    light = builds.open_split(dataset, data_dir, split, features=("frame", "num_frames"))
    if ("info_frames" in light.dataset_info.features
            and isinstance(light, tf_example.ParsedSource)):
        light = tf_example.parsed(light.source, ("frame", "num_frames", "info_frames"))
    return light


def kept_indices(light: ArrayRecordDataSource | ParsedSource,
                 keep: Callable[[int, int, int], bool],
                 damaged: list[int] | None = None) -> list[int]:
    """Indices of the records of `light` (`open_light`) whose (frame, num_frames, middle)
    `keep` accepts, middle being their clip's test-protocol frame (`record_middle`); the
    records that do not read are appended to `damaged`."""
    out = []
    for i in range(len(light)):
        try:
            record = record_reads.read(light, i)
        except record_reads.DamagedRecord:
            if damaged is not None:
                damaged.append(i)
            continue
        if keep(int(record["frame"]), int(record["num_frames"]), record_middle(record)):
            out.append(i)
    return out


def record_middle(record: dict) -> int:
    """The 0-based test-protocol frame of a record's clip: ceil(T/2) of the frames of its
    _info.mat (`records.clip_middle`), or in a build before INFO_FRAMES_SINCE, which lacks
    that count, of the frames its four files share."""
    return frame_selection.middle_frame(int(record.get("info_frames", record["num_frames"])))


def check_middle_frames(info: tfds.core.DatasetInfo, dataset: str, data_dir: str,
                        split: str) -> None:
    """Warns that a build before INFO_FRAMES_SINCE (tfds DatasetInfo `info`) has ceil(T/2) of
    the frames the clip's files share as the middle frame, where the reference loaders count
    the _info.mat's frames, when the split had clips whose files disagree on frame count
    (`skipped.json`; or when that is unknown), with the command that rebuilds it."""
    from etils import epath

    if "info_frames" in info.features:
        return
    try:
        skipped = json.loads((epath.Path(info.data_dir) / "skipped.json").read_text())
        mismatched = int(skipped[split].get("clip_frame_count_mismatch", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        mismatched = None
    if mismatched == 0:
        return
    logging.warning(
        "dataset %r under %s was built by SURREAL builder version %s, before %s: its middle "
        "frames are ceil(T/2) of the frames a clip's four files share, where the reference "
        "loaders take ceil(T/2) of the frames of its _info.mat, so %s clip(s) of split %r "
        "whose files disagree on frame count may be evaluated on another frame than theirs. "
        "Rebuild it: %s", dataset, data_dir, info.version, INFO_FRAMES_SINCE,
        "some" if mismatched is None else mismatched, split,
        shards.build_command(dataset, data_dir))


def is_middle(frame: int, num_frames: int, middle: int) -> bool:
    """Whether `frame` is its clip's middle frame `middle` (both 0-based)."""
    return frame == middle


def frames_flag(frames: str) -> str:
    """A command's `--frames` value, checked (`parse_eval_frames`): one line and exit status 1
    for one that is no frame selection, before any work."""
    try:
        parse_eval_frames(frames)
    except ValueError as e:  # it starts "frames='...'": the flag echoed as typed
        said = str(e).replace(f"frames={frames!r}", f"--frames={frames}", 1)
        raise SystemExit(f"error: {said}") from None
    return frames


def parse_eval_frames(frames: str) -> int:
    """The frames an evaluation reads: 'middle' (each clip's middle frame, SURREAL's test
    protocol) -> 0; 'everyK' (frames 0, K, 2K, ... of every clip) -> K; 'all' -> 1."""
    if frames == "middle":
        return 0
    if frames == "all":
        return 1
    if frames.startswith("every") and frames[5:].isdecimal() and int(frames[5:]) > 0:
        return int(frames[5:])
    raise ValueError(f"frames={frames!r}: use middle (the test protocol), all, or everyK "
                     "(every K-th frame of each clip, e.g. every4)")


def stored_frames(info: tfds.core.DatasetInfo, dataset: str) -> records.FrameSelection:
    """The frames of each clip a SURREAL build holds: those of its builder config
    (`records.BUILD_FRAMES`), whose name the build's tfds DatasetInfo `info` keeps."""
    name = info.config_name
    if name not in records.BUILD_FRAMES:
        raise builds.NotInBuild(
            f"dataset {dataset!r} was built with config {name!r}, not one of the SURREAL "
            f"builder's {', '.join(sorted(records.BUILD_FRAMES))}, so which frames it holds is "
            f"unknown; use a build of one of them")
    return records.BUILD_FRAMES[name]


def check_eval_frames(frames: str, stored: records.FrameSelection, dataset: str,
                      data_dir: str) -> None:
    """NotInBuild naming the build's frames and the fix when `frames` (parse_eval_frames)
    asks for frames the build does not hold (`stored`, `stored_frames`): 'all' of a strided
    build, 'everyK' with K not a multiple of its stride, or either of a build of the middle
    frames. 'middle' is in every build."""
    k = parse_eval_frames(frames)
    if not k or (not stored.middle_only and k % stored.every == 0):
        return
    every = stored.every
    if stored.middle_only:
        holds, other = "only the middle frame of each clip", ""
    else:
        holds = f"every {every}th frame of each clip (0, {every}, ...) and its middle frame"
        other = f"frames='every<K>' with K a multiple of {every} (e.g. every{every}), or "
    raise builds.NotInBuild(
        f"frames={frames!r} asks for frames that dataset {dataset!r} under {data_dir} does "
        f"not hold: it stores {holds}, so it would evaluate other frames than asked for. "
        f"Evaluate a build of every frame, config.dataset='surreal/all' (build it: "
        f"{shards.build_command('surreal/all', data_dir)}), or {other}frames='middle'")


def eval_indices(dataset: str, data_dir: str, split: str, frames: str = "middle",
                 damaged: list[int] | None = None) -> list[int]:
    """Indices of the records `frames` selects (see parse_eval_frames), which the build must
    hold (`check_eval_frames`); the records that do not read (so whose frame is unknown) are
    appended to `damaged`."""
    keep = eval_frame_keep(frames)
    light = open_light(dataset, data_dir, split)
    check_eval_frames(frames, stored_frames(light.dataset_info, dataset), dataset, data_dir)
    if not parse_eval_frames(frames):
        check_middle_frames(light.dataset_info, dataset, data_dir, split)
    return kept_indices(light, keep, damaged)


def eval_frame_keep(frames: str) -> Callable[[int, int, int], bool]:
    """Whether `frames` (see parse_eval_frames) selects a clip's frame, as a `kept_indices`
    rule: (frame, num_frames, middle) -> bool, num_frames the frames the clip's files share
    and middle its test-protocol frame, ceil(T/2) of its _info.mat's T frames
    (`record_middle`)."""
    stride = parse_eval_frames(frames)
    if not stride:
        return is_middle
    # A placeholder of a middle frame beyond the clip's files (`frame_missing`) is no K-th frame.
    return lambda frame, num_frames, middle: frame % stride == 0 and frame < num_frames


def eval_threads() -> int:
    """The threads that make an evaluation's examples (`eval_batches`): one per usable core
    (`hgmt.cores`), or 0 (in the evaluating thread) with one core. OpenCV's decodes and warps,
    most of an example's time, run without Python's GIL, so threads overlap them with each
    other and with the device; the rest of an example's work holds it, which bounds what
    more threads give (docs/performance.md, "Evaluation throughput, CPU")."""
    n = cores.usable_cores()
    return n if n > 1 else 0


def _made_in_order(make: Callable[[int], dict], items: Iterable[int], threads: int,
                  ahead: int) -> Iterator[dict | record_reads.DamagedRecord]:
    """`make(i)` of each of `items`, in their order, or the DamagedRecord it raised (any other
    error is raised when its item's turn comes): made in this thread when `threads` is 0,
    else by a pool of `threads` threads that works at most `ahead` items past the one last
    taken. Closing the iterator cancels the work not started and waits for the rest."""

    def outcome(i: int) -> dict | record_reads.DamagedRecord:
        try:
            return make(i)
        except record_reads.DamagedRecord as e:
            return e

    if not threads:
        yield from map(outcome, items)
        return
    items = iter(items)
    pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="hgmt-eval")
    try:
        pending = collections.deque(pool.submit(outcome, i)
                                    for i in itertools.islice(items, max(ahead, 1)))
        while pending:
            done = pending.popleft().result()
            pending.extend(pool.submit(outcome, i) for i in itertools.islice(items, 1))
            yield done
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def eval_batches(source: Any, indices: list[int], *, batch_size: int, image_size: int,
                 tasks: Sequence[str] | None = None, damaged: list[int] | None = None,
                 window: str = "hgmt", threads: int = 0) -> Iterator[dict]:
    """This host's share of `indices` in fixed-size batches, cropped around the `window`'s
    box (`cropping.window_box`: hgmt's, the references' box, or their test crop), with the labels of
    `tasks` (default all) and `rejected` (1 for a frame hgmt's own check rejects,
    `frame_selection.frame_problem`: the frames training skips, which hgmt's metric definitions
    leave out; a flagged placeholder, `unusable`, is one). The last batch is padded, with `mask`
    (1 real, 0 padding) so every example counts exactly once, and `position` (each example's
    index in `indices`, for metrics that group the test order into batches). A damaged record
    (`record_reads.DamagedRecord`) counts as padding and its index is appended to `damaged`; without
    that list it raises. A batch with no good record is padded with the first of `indices`
    that reads; when none does, `shards.DamagedShard` (`unreadable_split`).

    The examples are read and cropped by `threads` threads (`eval_threads`; 0: in the
    caller's thread), up to two batches (and at least `threads` examples) ahead of the one
    the caller takes, so that the next batch is being made while the caller runs the last
    one on the devices; the batches, and the order of `damaged`, are the same whatever the
    count."""
    mine = indices[jax.process_index()::jax.process_count()]
    per_host = batch_size // jax.process_count()

    def cropped(record: dict) -> dict:
        out = cropping.crop_example(record, image_size, Augment.none(), tasks=tasks, window=window)
        problem = frame_selection.frame_problem(record["joints2d"], record["joints3d"])
        out["rejected"] = np.float32(max(out["unusable"], problem is not None))
        return out

    spare: list[dict] = []  # a good example to pad with, found once when a batch has none

    def filler() -> dict:
        for i in () if spare else indices:
            try:
                spare.append(cropped(record_reads.read(source, i)))
                break
            except record_reads.DamagedRecord:
                continue
        if not spare:
            raise unreadable_split(source, indices)
        return spare[0]

    made = _made_in_order(lambda i: cropped(record_reads.read(source, i)), mine, threads,
                          ahead=max(2 * per_host, threads))
    try:
        # Every host yields the same number of batches (the collectives need all of them).
        for start in range(0, -(-len(indices) // batch_size) * per_host, per_host):
            examples: list[dict | None] = []
            for i in mine[start:start + per_host]:
                example = next(made)
                if isinstance(example, record_reads.DamagedRecord):
                    if damaged is None:
                        raise example
                    damaged.append(i)
                    example = None
                examples.append(example)
            examples += [None] * (per_host - len(examples))
            mask = [float(e is not None) for e in examples]
            good = [e for e in examples if e is not None]
            pad = good[-1] if good else filler()
            examples = [pad if e is None else e for e in examples]
            batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
            batch["mask"] = np.asarray(mask, np.float32)
            # Each example's index in the split's test order (`indices`); padding repeats the
            # last.
            position = jax.process_index() + jax.process_count() * np.arange(start,
                                                                             start + per_host)
            batch["position"] = np.minimum(position, len(indices) - 1).astype(np.int32)
            yield batch
    finally:
        made.close()


def unreadable_split(source: Any, indices: Sequence[int]) -> shards.DamagedShard:
    """The error of an evaluation none of whose records `indices` of `source` (a split of
    `builds.open_split`) reads or decodes: the dataset, split and shard files named,
    with the command that lists the damaged records and the one that rebuilds the split."""
    info = getattr(source, "dataset_info", None)
    if info is None:  # a source without build information (e.g. a list in a test)
        dataset, data_dir, built, split = "<dataset>", "<data_dir>", "<build>", "<split>"
    else:
        dataset = "/".join(filter(None, (info.name, info.config_name)))
        built = os.fspath(info.data_dir)  # <data_dir>/<name>[/<config>]/<version>
        data_dir = built.rstrip("/").rsplit("/", dataset.count("/") + 2)[0]  # a URL too
        split = source.split
    where = record_reads.Shards.of(source)
    files = sorted({where.locate(i)[0] for i in indices})
    return shards.DamagedShard(
        f"none of the {len(indices)} records of dataset {dataset!r} split {split!r} selected "
        f"to evaluate reads or decodes (in {', '.join(files)}): the split is damaged. List "
        f"its damaged records with `python -m hgmt.data.check --config.data_dir={data_dir} "
        f"--config.dataset={dataset} --splits={split}` and rebuild it: remove {built} and run "
        f"`{shards.build_command(dataset, data_dir)}` (or copy it again from where it was "
        f"built)")
