"""Checks every record of a built split end to end, for use after a copy.

    python -m hgmt.data.check [--config=configs/default.py] --config.data_dir=/data/tfds \\
        [--config.dataset=surreal/every10] [--splits=train,validation,test]

The dataset checked is the config's (`config.data_dir`, `config.dataset`), as for every other
command: give the config the runs train with (`--config=configs/demo.py` checks the demo's
build, surreal/all under runs/demo_data/tfds); the default is configs/default.py's.

Opens each split (the shard files and their record counts, `hgmt.data.shards`), then reads
every record (array_record checks each chunk's hash) and decodes its frame and label maps.
Prints one line per damaged record (shard file, record number in the shard, index in the split,
the error) and a count per split, or, for a split that cannot be read at all but is not
damaged (not built, built in another file format or by an older builder that lacks a feature
hgmt reads, its storage not answering), why; exits 1 when anything is damaged or not checked,
0 otherwise. It reads the whole split: as long as an
epoch's input.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from absl import flags

from hgmt import cli

# The config whose data_dir and dataset are checked when --config names none.
DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs", "default.py")
# The flags that named the data before it was the config's fields of the same names.
_DATA_FLAGS = ("data_dir", "dataset")


def check_split(dataset: str, data_dir: str, split: str) -> tuple[int, list[str], str | None]:
    """-> (records read, one line per damaged record, why the split could not be read at all
    or None). A missing or truncated shard is a damaged line too (the split cannot be opened);
    a split that is not built, not array_record, built without a feature hgmt reads
    (`input_pipeline.NotInBuild`), or whose storage does not give its files or a record
    (`damage.StorageFault`) is not damage: its error is the third item (the first is then the
    records read before it)."""
    from hgmt.data import damage, input_pipeline, shards

    try:
        source = input_pipeline.open_split(dataset, data_dir, split)
    except shards.DamagedShard as e:
        return 0, [str(e)], None
    except (shards.SplitFault, FileNotFoundError, input_pipeline.NotInBuild) as e:
        return 0, [], f"{type(e).__name__}: {e}"
    where = damage.Shards.of(source)
    bad = []
    for i in range(len(source)):
        try:
            record = damage.read(source, i)
            for key in input_pipeline.IMAGE_FEATURES:
                input_pipeline.decoded(record, key)
        except damage.DamagedRecord as e:
            bad.append(f"{where.name(i)}: {e}")
        except damage.StorageFault as e:  # the storage, not the data: the split is unchecked
            return i, bad, f"{type(e).__name__}: {e}"
    return len(source), bad, None


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("splits", ["train", "validation", "test"], "splits to check",
                      flag_values=fv)


def _refuse_data_flags(argv: Sequence[str]) -> None:
    """Exits in one line for `--data_dir`/`--dataset`, which the command took before the data
    location was the config's, naming the override that replaces it."""
    for arg in argv:
        name = arg.lstrip("-").partition("=")[0]
        if arg.startswith("-") and name in _DATA_FLAGS:
            raise SystemExit(f"error: --{name}: the data to check is the config's; give "
                             f"--config.{name}=... instead (and --config=<the config the runs "
                             f"train with>, default configs/default.py)")


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status (1 when a record or shard is damaged, or a split could
    not be read at all)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _refuse_data_flags(argv)
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    dataset, data_dir = args.config.dataset, args.config.data_dir
    failed = 0
    for split in args.splits:
        count, bad, unread = check_split(dataset, data_dir, split)
        for line in bad:
            print(f"damaged: {line}")
        if unread:
            print(f"{dataset} {split}: not checked: {unread}")
        else:
            print(f"{dataset} {split}: {count} records read, {len(bad)} damaged")
        failed += len(bad) + bool(unread)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
