"""The command-line convention of hgmt's entry points: absl flags, and a config given as
`--config` with `--config.x=y` overrides (ml_collections `config_flags`), as `hgmt.main` takes
it. The commands that work on a trained workdir (`hgmt.evaluate`, `hgmt.predict`,
`hgmt.export`) take the workdir's own config (`<workdir>/config.json`) as `--config`, so
`--config.data_dir=...` points them at a dataset elsewhere. Each call parses into a new
`FlagValues`, so the commands can also be called from Python (`main([...])`) any number of
times in one process; each `main` returns the exit status (`sys.exit(main())`).

A flag name means one thing in every command (tests/test_cli.py checks each entry point):
`--workdir` a training workdir, `--out_dir` a directory written into, `--out_file` a file
written, `--sweep_dir` a sweep's directory (launch/sweep.py), `--frames` the frames of each
clip (middle | all | everyK), `--config` a config file (or a workdir's config), and a model
or data size is the config's own field (`--config.image_size`, `--config.model.features`)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from hgmt import workdirs


def parse(define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None,
          doc: str, config: ml_collections.ConfigDict | None = None, *,
          config_file: bool | str = False) -> tuple[flags.FlagValues, list[str]]:
    """Parses `argv` (without the program name; default sys.argv[1:]) against the flags that
    `define(flag_values)` defines, plus `--config`: the ConfigDict `config` when one is given
    (a workdir's), or a config file (`configs/x.py[:argument]`) with `config_file` (a string:
    the file used when argv names none). -> (parsed flags, positional arguments). `--help`
    prints the flags and exits 0; a bad flag, or an override of a field the config lacks,
    exits 1 with a message naming it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    fv = flags.FlagValues()
    define(fv)
    if config_file:
        default = config_file if isinstance(config_file, str) else None
        try:
            config_flags.DEFINE_config_file(
                "config", default, "config file[:argument] (configs/*.py); override fields "
                "with --config.x=y", flag_values=fv, lock_config=True, sys_argv=["hgmt"] + argv)
        except (KeyError, AttributeError) as e:  # an override of a field the default lacks
            raise SystemExit(f"error: --config has no field {e} (the config {default})"
                             ) from None
    if config is not None:
        try:
            config_flags.DEFINE_config_dict(
                "config", config, "the workdir's training config; override fields with "
                "--config.x=y", flag_values=fv, sys_argv=["hgmt"] + argv)
        except (KeyError, AttributeError) as e:  # an override of a field the config lacks
            raise SystemExit(f"error: --config has no field {e}; its fields: "
                             f"{', '.join(sorted(config.keys()))}") from None
    if "--help" in argv or "-h" in argv:
        print(f"{doc}\n\n{fv.get_help()}")
        raise SystemExit(0)
    try:
        rest = fv(["hgmt"] + argv)[1:]
    except flags.Error as e:
        raise SystemExit(f"error: {e} (--help lists the flags)") from None
    return fv, rest


def workdir_config(argv: Sequence[str] | None) -> ml_collections.ConfigDict | None:
    """The config saved in the workdir that `--workdir` names in argv (read before the full
    parse, so that `--config.x=y` can override its fields); None with `--help`."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--help" in argv or "-h" in argv:
        return None
    pre = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=pre)
    pre(["hgmt"] + argv, known_only=True)
    if not pre.workdir:
        raise SystemExit("error: --workdir is required: a directory written by "
                         "`python -m hgmt.main --workdir=...`")
    with faults_in_one_line(FileNotFoundError, ValueError):  # messages name the fix
        return workdirs.load_config(pre.workdir)


@contextlib.contextmanager
def faults_in_one_line(*kinds: type[BaseException], traceback: bool = False) -> Iterator[None]:
    """Ends the command with exit status 1 and one line, `error: <Kind>: <message>`, for the
    errors `kinds`, whose messages say what happened, what is intact and what to do (a full
    disk, out of device memory, a damaged shard); with `traceback` they propagate as raised."""
    try:
        yield
    except kinds as e:
        if traceback:
            raise
        raise SystemExit(f"error: {type(e).__name__}: {e}") from None


def define_workdir(fv: flags.FlagValues) -> None:
    """`--workdir` and `--step`, the flags of every command on a trained workdir."""
    flags.DEFINE_string("workdir", None, "training workdir (its checkpoints and config)",
                        flag_values=fv, required=True)
    flags.DEFINE_string("step", None, "a checkpoint step, or 'best' (the best validation "
                        "checkpoint kept during training); default: the latest checkpoint",
                        flag_values=fv)


def checkpoint_step(value: str | None) -> int | str | None:
    """`--step` -> None (latest), 'best' or a step number; anything else exits 1."""
    if value in (None, "best"):
        return value
    if not value.isdigit():
        raise SystemExit(f"error: --step={value!r}: give a step number or 'best'")
    return int(value)
