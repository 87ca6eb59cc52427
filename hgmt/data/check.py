"""Checks every record of a built split end to end, for use after a copy.

    python -m hgmt.data.check --data_dir=/data/tfds [--dataset=surreal/every10] \
        [--splits=train,validation,test]

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

import sys
from collections.abc import Sequence

from absl import flags

from hgmt import cli


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
    flags.DEFINE_string("data_dir", None, "TFDS data_dir of the built dataset", flag_values=fv,
                        required=True)
    flags.DEFINE_string("dataset", "surreal/every10", "the built dataset (name/config)",
                        flag_values=fv)
    flags.DEFINE_list("splits", ["train", "validation", "test"], "splits to check",
                      flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status (1 when a record or shard is damaged, or a split could
    not be read at all)."""
    args, _ = cli.parse(_define_flags, argv, __doc__)
    failed = 0
    for split in args.splits:
        count, bad, unread = check_split(args.dataset, args.data_dir, split)
        for line in bad:
            print(f"damaged: {line}")
        if unread:
            print(f"{args.dataset} {split}: not checked: {unread}")
        else:
            print(f"{args.dataset} {split}: {count} records read, {len(bad)} damaged")
        failed += len(bad) + bool(unread)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
