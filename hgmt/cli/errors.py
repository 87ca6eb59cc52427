"""The one-line errors of a command line: a flag absl refuses, worded as hgmt's own
(`flag_error`); a config file that does not read, raises or lacks `get_config`, and an override
of a field the config lacks (`config_errors`); an override without `--config`, and a workdir's
config.json given as the config file (`check_config_file_args`). Each names what is wrong and
the fix (a value outside its choices: `hgmt.choices.not_one_of`)."""

from __future__ import annotations

import contextlib
import os
import re
import traceback
from collections.abc import Iterator, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from hgmt.cli import raw_args


def check_config_file_args(argv: Sequence[str], require: bool) -> None:
    """Ends the command in one line naming the fix for an override without `--config` (where
    the command has no default config file, `require`: absl's "Unknown command line flag")
    and for a workdir's config.json given as the config file (which runs as Python)."""
    given = raw_args.config_file_values(argv)
    overrides = [a for a in argv if a.startswith(raw_args.OVERRIDES)]
    if require and overrides and not given:
        raise SystemExit(f"error: {overrides[0]} overrides a field of --config, which is not "
                         f"given; add --config=FILE[:ARG] (e.g. configs/default.py:tasks=all)")
    json_files = [v for v in given if v.partition(":")[0].endswith(".json")]
    if json_files:
        raise SystemExit(f"error: --config={json_files[0]}: a config file is Python with "
                         f"get_config() (configs/*.py); a workdir's config.json is what "
                         f"hgmt.evaluate, hgmt.predict and hgmt.export read from --workdir; to "
                         f"train on in a workdir, give the config file it was trained with")


def flag_error(e: flags.Error, fv: flags.FlagValues | None = None) -> str:
    """absl's error in one line, worded as hgmt's own: `--<flag>=<value>: <what is wrong>`
    (absl's `flag ` prefix dropped); a required flag missing as `--<flag> is required: <its
    help>` (from `fv`); a flag that does not exist with absl's suggestion; for an error
    inside a config file's `get_config` (a bad argument after the colon), which
    ml_collections reports with the traceback in its message, `--config=<value>: <the
    error's own message>`."""
    text = str(e)
    required = re.fullmatch(r"flag --(\S+)=None: Flag --\1 must have a value other than "
                            r"None\.", text.strip())
    if required:
        name = required[1]
        helped = fv is not None and name in fv and fv[name].help
        return f"--{name} is required" + (f": {fv[name].help}" if helped else "")
    unknown = re.fullmatch(r"Unknown command line flag '(\S+)'(?:\. Did you mean: (.+) \?)?",
                           text.strip())
    if unknown:
        hint = "" if not unknown[2] else "; did you mean " + " or ".join(
            f"--{n.strip()}" for n in unknown[2].split(",")) + "?"
        return f"--{unknown[1]}: no such flag{hint}"
    boolean = re.fullmatch(r"flag (--\S+?=.*): \('Non-boolean argument to boolean flag', .*\)",
                           text.strip())
    if boolean:
        return f"{boolean[1]}: give true or false"
    head, marker, _ = text.partition(": Error whilst parsing config file")
    if marker:
        inner = e.__context__  # ml_collections' copy, whose context is the config's own error
        while inner is not None and "Error whilst parsing config file" in str(inner):
            inner = inner.__context__
        if inner is not None:
            return f"{head.removeprefix('flag ')}: {inner}"
    return "; ".join(line.strip() for line in text.removeprefix("flag ").splitlines()
                     if line.strip())


@contextlib.contextmanager
def config_errors(argv: Sequence[str],
                  config: ml_collections.ConfigDict | str | None) -> Iterator[None]:
    """Ends the command in one line for what ml_collections raises as it reads the config
    (`config`: the ConfigDict, or the default config file): a file it could not read
    (OSError), a file without `get_config` or that raises as it runs (a syntax error, its
    own check), an override of a field the config lacks (AttributeError, KeyError)."""
    try:
        yield
    except OSError as e:
        cause = e.__cause__ or e
        reason = [line.strip() for line in str(cause).splitlines() if line.strip()][-1]
        raise SystemExit(f"error: --config={_config_value(argv, config)}: cannot read the "
                         f"config file ({reason}); give a config file such as "
                         f"configs/default.py:tasks=all (a relative path is taken from the "
                         f"working directory; configs/<file> there or else hgmt's own)") from None
    except (KeyError, AttributeError) as e:
        if (where := _in_config_file(e, _config_value(argv, config))) is not None:
            raise SystemExit(f"error: --config={_config_value(argv, config)}: the config "
                             f"file {where}") from None
        raise SystemExit(f"error: {_missing_field(argv, config, e)}") from None
    except Exception as e:
        if (where := _in_config_file(e, _config_value(argv, config))) is None:
            raise
        raise SystemExit(f"error: --config={_config_value(argv, config)}: the config file "
                         f"{where}") from None


def _in_config_file(error: BaseException, value: str | None) -> str | None:
    """What went wrong in the config file `value` (a --config value, file[:argument]) when
    `error` came from it (raised as it ran, or its missing get_config), else None."""
    if not value:
        return None
    path = os.path.abspath(value.partition(":")[0])
    if isinstance(error, AttributeError) and "'get_config'" in str(error):
        return ("defines no get_config(): a config file returns its ml_collections.ConfigDict "
                "from get_config(arg=None), as configs/default.py does")
    if isinstance(error, SyntaxError) and error.filename and os.path.abspath(
            error.filename) == path:
        return f"does not parse: {error.msg} at line {error.lineno}"
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if os.path.abspath(frame.filename) == path:
            return f"raised {type(error).__name__}: {error} (line {frame.lineno})"
    return None


def _config_value(argv: Sequence[str], config: ml_collections.ConfigDict | str | None
                  ) -> str | None:
    """The `--config` value that argv gives (the last), or the default config file."""
    values = raw_args.config_file_values(argv)
    return values[-1] if values else (config if isinstance(config, str) else None)


_LISTS_OF_TASKS = ("loss_weights", "loss_options")


def _missing_field(argv: Sequence[str], config: ml_collections.ConfigDict | str | None,
                   error: BaseException) -> str:
    """The message for an override of a field the config lacks: the override, the field
    missing and the fields there are where it was looked for; for a task's loss weight or
    options missing from a config file's, how to name the task there."""
    value = None
    if not isinstance(config, ml_collections.ConfigDict):
        try:
            value = _config_value(argv, config)
            bare = flags.FlagValues()  # the config without the overrides
            config_flags.DEFINE_config_file("config", None, "", flag_values=bare,
                                            sys_argv=["hgmt", f"--config={value}"])
            bare(["hgmt", f"--config={value}"])
            config = bare.config
        except Exception:  # noqa: BLE001  (the message then names the field alone)
            config = None
    overrides = [arg.lstrip("-").partition("=")[0].removeprefix("noconfig.").removeprefix(
        "config.") for arg in argv if arg.startswith(("--config.", "-config.", "--noconfig.",
                                                      "-noconfig."))]
    for path in overrides if isinstance(config, ml_collections.ConfigDict) else ():
        node, walked = config, []
        for name in path.split("."):
            if isinstance(node, ml_collections.ConfigDict) and name in node:
                node, walked = node[name], walked + [name]
                continue
            where = ".".join(walked) or "the config"
            if not isinstance(node, ml_collections.ConfigDict):
                return (f"--config.{path}: {where} is a {type(node).__name__} value, with no "
                        f"field {name!r}")
            fix = ""
            if value and len(walked) == 1 and walked[0] in _LISTS_OF_TASKS:  # a task's
                file, _, arg = value.partition(":")
                items = [a for a in arg.split(",") if a and not a.startswith("tasks=")]
                items.append(f"tasks={config.tasks}+{name}")
                fix = (f"; {walked[0]} holds the tasks named after the colon of --config: if "
                       f"{name} is a task, name it there (--config={file}:{','.join(items)}) "
                       f"to set its {walked[0]}")
            return (f"--config.{path}: {where} has no field {name!r} (its fields: "
                    f"{', '.join(sorted(node.keys()))}){fix}")
    return f"--config has no field {error} (--help lists the flags)"

