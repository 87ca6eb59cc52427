"""Checks every record of a built split end to end, for use after a copy.

    python -m hgmt.data.check --data_dir=/data/tfds [--dataset=surreal/every10] \
        [--splits=train,validation,test]

Opens each split (the shard files and their record counts, `hgmt.data.shards`), then reads
every record (array_record checks each chunk's hash) and decodes its frame and label maps.
Prints one line per damaged record (shard file, record number in the shard, index in the split,
the error) and a count per split; exits 1 when anything is damaged, 0 otherwise. It reads the
whole split: as long as an epoch's input.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from hgmt import cli


def check_split(dataset: str, data_dir: str, split: str) -> tuple[int, list[str]]:
    """-> (records read, one line per damaged record). A missing or truncated shard is one
    line too (the split cannot be opened)."""
    from hgmt.data import damage, input_pipeline, shards

    try:
        source = input_pipeline.open_split(dataset, data_dir, split)
    except (shards.DamagedShard, FileNotFoundError) as e:
        return 0, [str(e)]
    where = damage.Shards.of(source)
    bad = []
    for i in range(len(source)):
        try:
            record = damage.read(source, i)
            for key in input_pipeline.IMAGE_FEATURES:
                input_pipeline.decoded(record, key)
        except damage.DamagedRecord as e:
            bad.append(f"{where.name(i)}: {e}")
    return len(source), bad


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("data_dir", None, "TFDS data_dir of the built dataset", flag_values=fv,
                        required=True)
    flags.DEFINE_string("dataset", "surreal/every10", "the built dataset (name/config)",
                        flag_values=fv)
    flags.DEFINE_list("splits", ["train", "validation", "test"], "splits to check",
                      flag_values=fv)


def main(argv: Sequence[str] | None = None) -> int:
    """The command; -> exit status (1 when a record or shard is damaged)."""
    args, _ = cli.parse(_define_flags, argv, __doc__)
    damaged = 0
    for split in args.splits:
        count, bad = check_split(args.dataset, args.data_dir, split)
        for line in bad:
            print(f"damaged: {line}")
        print(f"{args.dataset} {split}: {count} records read, {len(bad)} damaged")
        damaged += len(bad)
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
