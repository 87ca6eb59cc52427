"""A cheap integrity check of a built split's array_record shards, before training reads them.

`tfds.data_source` opens shards lazily: a missing or truncated shard surfaces only when the
loader first reads from it, as a bare "open() failed" or "Corrupted Riegeli/records file" deep
inside a loader worker, possibly hours into a run. This checks that the split was built as
array_record (the only format hgmt reads: it reads records in any order) and, for every shard
that the split's dataset_info.json lists, that the file exists and that its footer (read by
ArrayRecordReader without reading the records) holds the number of records recorded at build
time. A truncation loses the footer, so it is caught; damage inside a record that leaves the
footer intact is not (reading every record would cost as much as an epoch). Opening a shard
that fails with an I/O error is tried again (`storage.with_retries`), and one that lasts is the
storage's fault, not the shard's: named so, with no advice to rebuild.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from etils import epath

from hgmt.data import storage

if TYPE_CHECKING:  # TensorFlow Datasets is imported where a split is opened
    import tensorflow_datasets as tfds

# The file format hgmt reads a build in: array_record gives random access to the records.
FILE_FORMAT = "array_record"


# The split's faults of storage, defined with the retries they follow (`hgmt.data.storage`;
# `record_reads.read` raises StorageFault too) and given here with the others.
SplitFault = storage.SplitFault
StorageFault = storage.StorageFault


class DamagedShard(SplitFault):
    """A shard of a built split is missing, truncated or unreadable."""


class WrongFileFormat(SplitFault):
    """A split built in another file format than array_record (e.g. tfrecord)."""


def build_command(dataset: str, data_dir: str) -> str:
    """The command that builds `dataset` ('surreal/<config>[:<version>]') into `data_dir`; for
    another builder's dataset, TFDS's own build command of it."""
    named = dataset.partition(":")[0]  # without the version
    name, _, config = named.partition("/")
    if name != "surreal":
        return f"tfds build {named} --data_dir={data_dir}"
    return (f"tfds build surreal --imports=data_builders.surreal --manual_dir=<SURREAL root> "
            f"--data_dir={data_dir} --config={config} --file_format={FILE_FORMAT}")


def file_format(builder: tfds.core.DatasetBuilder, split: str) -> str:
    """The file format `split` of the prepared TFDS `builder` was built in: its
    dataset_info.json's fileFormat, or where that is not recorded (builds of an older TFDS),
    what its shard files' names say."""
    recorded = builder.info.file_format
    if recorded is not None:
        return recorded.value
    paths = builder.info.splits[split].filepaths
    if not paths:
        return FILE_FORMAT
    name = os.path.basename(os.fspath(paths[0]))  # <dataset>-<split>.<format>-NNNNN-of-NNNNN
    return name.rsplit(".", 1)[-1].split("-")[0]


def _record_count(path: str) -> int | None:
    """The records in the footer of the array_record file at `path`; None when there is no
    such file. The reader reports a failed open when it is closed."""
    from array_record.python.array_record_module import ArrayRecordReader

    if not epath.Path(path).exists():
        return None
    reader = ArrayRecordReader(path)
    try:
        return reader.num_records()
    finally:
        reader.close()


def check_file_format(builder: tfds.core.DatasetBuilder, split: str, dataset: str,
                      data_dir: str) -> None:
    """WrongFileFormat naming the rebuild when `split` of the prepared TFDS `builder` was not
    built as array_record."""
    built_as = file_format(builder, split)
    if built_as != FILE_FORMAT:
        raise WrongFileFormat(
            f"dataset {dataset!r} under {data_dir} was built as {built_as} (shards such as "
            f"{os.path.basename(os.fspath(builder.info.splits[split].filepaths[0]))} in "
            f"{builder.data_dir}), and hgmt reads {FILE_FORMAT}, whose records it can read in "
            f"any order ({built_as} is read from start to end). Build it again "
            f"with --file_format={FILE_FORMAT}: `{build_command(dataset, data_dir)}`, after "
            f"moving {builder.data_dir} aside (TFDS does not build a version that is there), "
            f"or into another --data_dir")


def problems(builder: tfds.core.DatasetBuilder, split: str, dataset: str,
             data_dir: str) -> dict[str, str]:
    """{shard file: 'dataset shard <file> <what is wrong>'} for every shard of `split` of the
    prepared TFDS `builder` that is missing, cannot be opened or does not hold the record count
    dataset_info.json records for it; empty when every shard is intact. Every shard's footer
    is read, so a bad copy is named whole. Raises WrongFileFormat when the split was not built
    as array_record; StorageFault when its storage does not give a shard, after
    `storage.RETRY_DELAYS_S`."""
    check_file_format(builder, split, dataset, data_dir)
    info = builder.info.splits[split]
    found_problems = {}
    for path, expected in zip(info.filepaths, info.shard_lengths, strict=True):
        path = os.fspath(path)
        problem = None
        try:
            found = storage.with_retries(lambda path=path: _record_count(path),
                                         f"opening dataset shard {path}")
        except storage.GaveUp as e:
            if storage.storage_fault(e.error):
                raise StorageFault.of(f"dataset shard {path}", e, data_dir) from e.error
            problem = f"cannot be opened ({e})"
        else:
            if found is None:
                problem = "is missing"
            elif found != expected:
                problem = (f"holds {found} records where dataset_info.json says "
                           f"{expected} (truncated or overwritten)")
        if problem:
            found_problems[path] = f"dataset shard {path} {problem}"
    return found_problems


def check_split(builder: tfds.core.DatasetBuilder, split: str, dataset: str, data_dir: str) -> None:
    """Raises DamagedShard naming every damaged shard of `split` (`problems`) and the rebuild
    command; WrongFileFormat and StorageFault as `problems` does."""
    found = problems(builder, split, dataset, data_dir)
    if found:
        raise DamagedShard(f"{'; '.join(found.values())}. "
                           f"{rebuild(builder, dataset, data_dir, len(found))}")


def rebuild(builder: tfds.core.DatasetBuilder, dataset: str, data_dir: str, damaged: int) -> str:
    """The fix for `damaged` (> 0) damaged shards of the prepared TFDS `builder`."""
    which = "the shard" if damaged == 1 else "those shards"
    return (f"Rebuild the dataset: remove {builder.data_dir} and run "
            f"`{build_command(dataset, data_dir)}` (or copy {which} again from where the "
            f"dataset was built)")
