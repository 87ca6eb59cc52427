"""A cheap integrity check of a built split's array_record shards, before training reads them.

`tfds.data_source` opens shards lazily: a missing or truncated shard surfaces only when the
loader first reads from it, as a bare "open() failed" or "Corrupted Riegeli/records file" deep
inside a loader worker, possibly hours into a run. This checks, for every shard that the
split's dataset_info.json lists, that the file exists and that its footer (read by
ArrayRecordReader without reading the records) holds the number of records recorded at build
time. A truncation loses the footer, so it is caught; damage inside a record that leaves the
footer intact is not (reading every record would cost as much as an epoch).
"""

from __future__ import annotations

import os

from etils import epath


class DamagedShard(RuntimeError):
    """A shard of a built split is missing, truncated or unreadable."""


def build_command(dataset: str, data_dir: str) -> str:
    """The command that builds `dataset` ('surreal/<config>') into `data_dir`."""
    return (f"tfds build data_builders/surreal --manual_dir=<SURREAL root> "
            f"--data_dir={data_dir} --config={dataset.split('/')[-1]} "
            f"--file_format=array_record")


def check_split(builder, split: str, dataset: str, data_dir: str) -> None:
    """Raises DamagedShard naming the file and the rebuild command when a shard of `split`
    of the prepared TFDS `builder` is missing or does not hold its recorded record count."""
    from array_record.python.array_record_module import ArrayRecordReader

    info = builder.info.splits[split]
    for path, expected in zip(info.filepaths, info.shard_lengths, strict=True):
        path = os.fspath(path)
        problem = None
        if not epath.Path(path).exists():
            problem = "is missing"
        else:
            try:
                reader = ArrayRecordReader(path)
                try:
                    found = reader.num_records()
                finally:
                    reader.close()
            except Exception as e:  # noqa: BLE001  (riegeli raises RuntimeError, OSError)
                problem = f"cannot be opened ({type(e).__name__}: {str(e)[:200]})"
            else:
                if found != expected:
                    problem = (f"holds {found} records where dataset_info.json says "
                               f"{expected} (truncated or overwritten)")
        if problem:
            raise DamagedShard(
                f"dataset shard {path} {problem}. Rebuild the dataset: remove "
                f"{builder.data_dir} and run `{build_command(dataset, data_dir)}` (or copy "
                f"the shard again from where the dataset was built)")
