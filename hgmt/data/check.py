"""Checks every record of a built split end to end, for use after a copy.

    python -m hgmt.data.check [--config=configs/default.py] --config.data_dir=/data/tfds \\
        [--config.dataset=surreal/every10] [--splits=train,validation,test]

The dataset checked is the config's (`config.data_dir`, `config.dataset`), as for every other
command: give the config the runs train with (`--config=configs/demo.py` checks the demo's
build, surreal/all under runs/demo_data/tfds); the default is configs/default.py's.

Checks each split's shard files (each present, holding its record count: `hgmt.data.shards`),
then reads every record of its intact shards (array_record checks each chunk's hash) and
decodes its frame and label maps. Prints one line per missing or truncated shard (all of them:
after a copy several tend to break together), one per damaged record (shard file, record
number in the shard, index in the split, the error) and a closing line per split (shards
damaged, records read and damaged, what training or evaluation makes of the damaged records
under the config's `max_damaged_fraction`, and the fix), or, for a split that cannot be read at
all but is not damaged (not built, a copy without its metadata, built in another file format or
by an older builder that lacks a feature hgmt reads, its storage not answering), why, with the
fix: for a config with `demo` fields (configs/demo.py), whose data `hgmt.main` generates and
builds itself, that command, else the `tfds build` of SURREAL. Exit
status: 0 when every split checked is intact; `EXIT_DAMAGED` (65, sysexits' EX_DATAERR) when a
record or shard is damaged, whatever else; `EXIT_NOT_CHECKED` (66, EX_NOINPUT) when nothing is
damaged but a split could not be read; 1 for a bad flag, as every command. It reads the whole
split, as long as an epoch's input: a progress line every `PROGRESS_EVERY_S` seconds says how
far it is.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shlex
import sys
import time
from collections.abc import Sequence

from absl import flags

from hgmt import cli, console
from hgmt.choices import not_some_of
from hgmt.data import damage, records, shards
from hgmt.sources import surreal

# Exit statuses, so that a script can tell a damaged copy (copy again) from one it could not
# read (build, mount or point data_dir at it), as the sysexits convention names them.
EXIT_DAMAGED = 65
EXIT_NOT_CHECKED = 66

# The config whose data_dir and dataset are checked when --config names none.
DEFAULT_CONFIG = os.path.join(cli.CONFIGS_DIR, "default.py")
# The flags that named the data before it was the config's fields of the same names.
_DATA_FLAGS = ("data_dir", "dataset")


@dataclasses.dataclass
class Checked:
    """What the check of a split found."""

    shards: int = 0  # the split's shard files
    damaged_shards: list[str] = dataclasses.field(default_factory=list)  # one line each
    not_read: int = 0  # the records of the damaged shards, which cannot be read
    read: int = 0  # the records read (of the intact shards)
    damaged: list[str] = dataclasses.field(default_factory=list)  # one line per record
    unread: str | None = None  # why the split could not be read at all, or None
    fix: str = ""  # what to do about the damaged shards (`shards.rebuild`), when there are any

    def summary(self) -> str:
        """The closing line: shards damaged (when any), records read and damaged, the fix."""
        shards = (f"{len(self.damaged_shards)} of {self.shards} shards damaged "
                  f"({self.not_read} records not read), " if self.damaged_shards else "")
        fix = f". {self.fix}" if self.fix else ""
        return f"{shards}{self.read} records read, {len(self.damaged)} damaged{fix}"


PROGRESS_EVERY_S = 30.0  # seconds between a split's progress lines


def check_split(dataset: str, data_dir: str, split: str) -> Checked:
    """Checks every shard file of a split (`shards.problems`: a missing or truncated one is a
    damaged line) and reads and decodes every record of its intact shards (a damaged record
    is a damaged line). A split that is not built, not array_record, built without a feature
    hgmt reads (`builds.NotInBuild`), or whose storage does not give its files or a
    record (`storage.StorageFault`) is not damage: its error is `unread` (`read` is then the
    records read before it)."""
    from hgmt.data import builds, record_reads, shards, storage

    checked = Checked()
    try:
        builder = builds.built_split(dataset, data_dir, split)
        problems = shards.problems(builder, split, dataset, data_dir)
        checked.damaged_shards = list(problems.values())
        if problems:
            checked.fix = shards.rebuild(builder, dataset, data_dir, len(problems))
        source = builds.source_of(builder, split, dataset, data_dir)
    except (shards.SplitFault, FileNotFoundError, builds.NotInBuild) as e:
        checked.unread = f"{type(e).__name__}: {e}"
        return checked
    where = record_reads.Shards.of(source)
    checked.shards = len(where.files)
    to_read = sum(n for f, n in zip(where.files, where.lengths, strict=True) if f not in problems)
    began = last_line = time.perf_counter()
    for file, start, length in zip(where.files, where.starts, where.lengths, strict=True):
        if file in problems:
            checked.not_read += length
            continue
        for i in range(start, start + length):
            if time.perf_counter() - last_line >= PROGRESS_EVERY_S:
                last_line = time.perf_counter()
                rate = checked.read / (last_line - began)
                logging.info("%s %s: %d of %d records read, %d damaged, about %s left",
                             dataset, split, checked.read, to_read, len(checked.damaged),
                             console.hms((to_read - checked.read) / rate) if rate else "?")
            try:
                record = record_reads.read(source, i)
                for key in records.IMAGE_FEATURES:
                    records.decoded(record, key)
            except record_reads.DamagedRecord as e:
                checked.damaged.append(f"{where.name(i)}: {e}")
            except storage.StorageFault as e:  # the storage, not the data: the split is unchecked
                checked.unread = f"{type(e).__name__}: {e}"
                return checked
            checked.read += 1
    return checked


def _define_flags(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("splits", list(surreal.SPLIT_DIRS), "splits to check",
                      flag_values=fv)
    cli.define_verbosity(fv)


def consequence(checked: Checked, split: str, max_fraction: float) -> str:
    """What training or evaluation makes of the damaged records `checked` found in `split`,
    as `config.max_damaged_fraction` (`max_fraction`) judges them, and the fix; '' when none
    is damaged, or where shards are (the closing line's fix covers both: training and
    evaluation stop on a damaged shard before reading)."""
    if not checked.damaged or checked.damaged_shards:
        return ""
    fix = (" Copy the shard files named again from where the dataset was built, or rebuild the "
           "dataset")
    if split != "train":
        return (f"Evaluating {split} leaves the damaged frames out and counts them in its "
                f"report.{fix}")
    total = checked.read + checked.not_read
    allowed = int(max_fraction * total)
    if len(checked.damaged) > allowed:
        them = "it" if len(checked.damaged) == 1 else "them"
        return (f"Training stops on {them}: config.max_damaged_fraction={max_fraction} allows "
                f"{allowed} of {total}.{fix}")
    return (f"Training skips each and trains on the next good record of its shard "
            f"(config.max_damaged_fraction={max_fraction} allows {allowed} of {total}).{fix}")


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
    """The command; -> exit status: 0, `EXIT_DAMAGED` or `EXIT_NOT_CHECKED` (the module's
    docstring)."""
    command = argv is None  # the process's own command, not a caller's `main([...])`
    argv = list(sys.argv[1:] if argv is None else argv)
    _refuse_data_flags(argv)
    args, _ = cli.parse(_define_flags, argv, __doc__, config_file=DEFAULT_CONFIG)
    unknown = [split for split in args.splits if split not in surreal.SPLIT_DIRS]
    if not args.splits:  # e.g. `--splits=$SPLITS` with the variable unset: nothing checked
        raise SystemExit(f"error: --splits is empty; give some of "
                         f"{', '.join(surreal.SPLIT_DIRS)}, comma-separated, or leave the "
                         f"flag out to check them all")
    if unknown:
        given = f"--splits={','.join(args.splits)}"
        raise SystemExit(f"error: {not_some_of(given, 'split', unknown, surreal.SPLIT_DIRS)}")
    dataset, data_dir = args.config.dataset, args.config.data_dir
    try:
        records.check_dataset_name(dataset, given=f"--config.dataset={dataset}")
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        damage.check_max_fraction(args.config.max_damaged_fraction)
    except ValueError as e:
        raise SystemExit(f"error: --{e}") from None
    made_by = (_demo_command(argv, args.config.demo.surreal_root) if "demo" in args.config
               else None)
    with console.stoppable_console(args.verbosity, command=command):  # Ctrl-C: one line
        return _check(args.splits, dataset, data_dir, args.config.max_damaged_fraction,
                      made_by)


def _demo_command(argv: Sequence[str], surreal_root: str) -> str:
    """The command that makes a demo config's data (`hgmt.main`, with the config flags of
    `argv`), as the fix a check of it names where `tfds build` is named for SURREAL's."""
    given, config_next = [], False
    for arg in argv:
        if config_next or arg.startswith(("--config", "-config", "--noconfig.", "-noconfig.")):
            given.append(shlex.quote(arg))
            config_next = arg in ("--config", "-config")  # its value is the next argument
    return (f"python3 -m hgmt.main {' '.join(given)} --workdir=<a run folder> (it generates "
            f"the demo clips into config.demo.surreal_root={surreal_root} and builds them, "
            f"then trains)")


def _with_demo_fix(checked: Checked, dataset: str, data_dir: str, made_by: str) -> None:
    """`checked` with `tfds build` replaced by `made_by` (`_demo_command`) in the fix of a
    split not built and of damaged shards (hgmt.main builds a demo split it does not find,
    from the demo clips); a build that lacks features (NotInBuild) keeps it, since
    hgmt.main reuses such a build."""
    tfds_build = shards.build_command(dataset, os.path.expanduser(data_dir))
    if checked.unread and checked.unread.startswith(f"{FileNotFoundError.__name__}:"):
        checked.unread = checked.unread.replace(tfds_build, made_by)
    checked.fix = checked.fix.replace(f"`{tfds_build}`", made_by)


def _check(splits: Sequence[str], dataset: str, data_dir: str, max_fraction: float,
           made_by: str | None = None) -> int:
    """The checks of `main`, its flags parsed and its console set up (`made_by`: the command
    that makes a demo config's data, `_demo_command`); -> exit status."""
    damaged, unread = 0, {}
    for split in splits:
        checked = check_split(dataset, data_dir, split)
        if made_by:
            _with_demo_fix(checked, dataset, data_dir, made_by)
        for line in checked.damaged_shards + checked.damaged:
            print(f"damaged: {line}")
        if checked.unread in unread:  # the build's or data_dir's fault, not the split's
            print(f"{dataset} {split}: not checked: as {unread[checked.unread]} above")
        elif checked.unread:
            print(f"{dataset} {split}: not checked: {checked.unread}")
            unread[checked.unread] = split
        else:
            said = consequence(checked, split, max_fraction)
            print(f"{dataset} {split}: {checked.summary()}" + (f". {said}" if said else ""))
        damaged += len(checked.damaged_shards) + len(checked.damaged)
    if damaged:
        return EXIT_DAMAGED
    return EXIT_NOT_CHECKED if unread else 0


if __name__ == "__main__":
    sys.exit(main())
