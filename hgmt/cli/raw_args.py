"""What a command line gives before absl parses it: whether it asks for help, the `--config`
flag and its values as opposed to the overrides of its fields, and `--workdir`. The parse, its
help and its errors read these first: a workdir's config must be read before the overrides
of its fields are parsed, and help must list a config without requiring the command's flags."""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

# The arguments that ask a command for its help: absl's --helpfull too, which would otherwise
# be an unknown flag here (absl defines it in `app.run` only, which no command uses).
HELP_FLAGS = ("--help", "-h", "--helpfull")


def asks_for_help(argv: Sequence[str]) -> bool:
    """Whether `argv` holds one of HELP_FLAGS."""
    return any(arg in HELP_FLAGS for arg in argv)


# How a config file's overrides start on a command line (absl takes one dash or two).
OVERRIDES = ("--config.", "-config.", "--noconfig.", "-noconfig.")


def is_config_flag(arg: str) -> bool:
    """Whether `arg` is the `--config` flag itself (`--config=X`, or `--config` before X, one
    dash or two), not an override of a field."""
    return arg.startswith(("--config=", "-config=")) or arg in ("--config", "-config")


def config_file_values(argv: Sequence[str]) -> list[str]:
    """The values of `--config` in argv, as `--config=X` or `--config X` gives them."""
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            values.append(arg.partition("=")[2])
        elif is_config_flag(arg) and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def workdir_arg(argv: Sequence[str]) -> str | None:
    """The value of `--workdir` in argv, read before the full parse (the other arguments, help
    flags included, left alone); raises flags.Error for a malformed one."""
    pre = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=pre)
    pre(["hgmt"] + [a for a in argv if a not in HELP_FLAGS], known_only=True)
    return pre.workdir
