"""The --help lines of a command's `--config`: the fields of the workdir's config, each with its
value (`config_fields_help`, for a command on a trained workdir), or of the config file that
`--config` names, with its overrides (`config_file_fields_help`); where a config does not read,
why, and the command's help goes on."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from hgmt import paths, run_config
from hgmt.cli import errors, raw_args


def config_fields_help(argv: Sequence[str]) -> str:
    """The --help lines of a workdir command's `--config`: what it is, and each field of the
    config.json of the workdir `--workdir` names in argv with its value, or where that does
    not read, why."""
    head = textwrap.fill(
        "--config: the workdir's training config (<workdir>/config.json), read from "
        "--workdir; --config.<field>=<value> overrides a field of it for this command, as in "
        "training (e.g. --config.data_dir=/data/tfds for a dataset built elsewhere); "
        "--workdir=DIR --help lists the fields with their values", width=80,
        initial_indent="  ", subsequent_indent="    ")
    try:
        workdir = raw_args.workdir_arg(argv)
    except flags.Error:
        return head
    if not workdir:
        return head
    if paths.is_url(workdir):  # help reads nothing over the network
        return (f"{head}\n    (--workdir={workdir}: the fields of a workdir in an object "
                f"store are not listed; its config.json has them)")
    try:
        config = run_config.load_config(workdir)
    except Exception as e:  # noqa: BLE001  (help prints why and goes on)
        return f"{head}\n    (--workdir={workdir}: {type(e).__name__}: {e})"
    return "\n".join([head, f"The fields of {workdir}'s config:", *_field_lines(config)])


def _field_lines(config: ml_collections.ConfigDict) -> list[str]:
    """A config's fields as --help lists them: `  --config.<path>: <value>`, sorted."""
    return [f"  --config.{path}: {value!r}"
            for path, value in sorted(run_config.flat_fields(config.to_dict()).items())]


def config_file_fields_help(argv: Sequence[str], default: str | None = None) -> str:
    """The --help lines listing the fields of the config file `--config` names in argv, or
    without one of the command's `default` config file, with the overrides applied, each with
    its value; where it does not read, why; for a command without a default config (hgmt.main)
    given no `--config`, how to list a config's fields."""
    given = raw_args.config_file_values(argv)
    if not given and not default:
        return ("(--config=FILE --help lists the fields of a config file with their values, "
                "e.g. --config=configs/default.py --help)\n\n")
    # Only the config's flags defined: the command's others (a required --workdir) are passed
    # over (`known_only`), so help asks for none of them.
    own = ["hgmt"] + [a for a in argv if a not in raw_args.HELP_FLAGS]
    named = f"--config={given[-1]}" if given else f"the default --config={default}"
    try:  # the command's own one-line errors, as a run would stop on them
        with errors.config_errors(own[1:], None):
            errors.check_config_file_args(own[1:], require=False)
            fv = flags.FlagValues()
            config_flags.DEFINE_config_file("config", None if given else default, "",
                                            flag_values=fv, lock_config=True, sys_argv=own)
            try:
                fv(own, known_only=True)
            except flags.Error as e:
                raise SystemExit(f"error: {errors.flag_error(e)}") from None
            lines = _field_lines(fv.config)
    except SystemExit as e:  # help prints why and goes on
        return f"(the config's fields are not listed: {str(e.code).removeprefix('error: ')})\n\n"
    return "\n".join([f"The fields of {named}, with their values:", *lines,
                      "", ""])

