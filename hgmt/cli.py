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
or data size is the config's own field (`--config.image_size`, `--config.model.features`).

What a command shows on its console, and how Ctrl-C and SIGTERM end it, is `hgmt.console`."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterator, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from hgmt import console, paths, workdirs

# hgmt's own config files: configs/ beside the hgmt package (the checkout's, or the one
# installed beside it in site-packages).
CONFIGS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def parse(define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None,
          doc: str, config: ml_collections.ConfigDict | None = None, *,
          config_file: bool | str = False,
          positional: str | None = None) -> tuple[flags.FlagValues, list[str]]:
    """Parses `argv` (without the program name; default sys.argv[1:]) against the flags that
    `define(flag_values)` defines, plus `--config`: the ConfigDict `config` when one is given
    (a workdir's), or a config file (`configs/x.py[:argument]`) with `config_file` (a string:
    the file used when argv names none), read here, so that a missing file stops the command
    before it starts any work. -> (parsed flags, positional arguments).

    `positional` says which positional arguments the command takes: None, none (a stray word,
    or anything after `--`, exits naming it: it would otherwise be dropped unseen); 'any',
    every one (hgmt.predict's files); '--', those after `--` only (arguments passed on to
    other commands, as launch/sweep.py's), a word before it exits.

    `--help` (or `--helpfull`, `-h`) prints `doc` and the flags and exits 0; a bad flag, a bad
    config argument or override, and an override of a field the config lacks exit 1 with one
    line naming it and the fix."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if positional not in (None, "any", "--"):
        raise ValueError(f"positional={positional!r}: give None, 'any' or '--'")
    passed: list[str] = []
    if positional == "--" and "--" in argv:
        argv, passed = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    fv = flags.FlagValues()
    define(fv)
    configs = [a for a in argv if _is_config_flag(a)]
    if (config_file or config is not None) and len(configs) > 1:
        # absl would read the file twice and stop on its fields "defined twice".
        raise SystemExit(f"error: --config is given {len(configs)} times: give one config "
                         f"file, and override its fields with --config.<field>=<value>")
    if config_file and not asks_for_help(argv):  # help lists why, and goes on
        _check_config_file_args(argv, require=config_file is True)
    if config_file:
        argv = _with_hgmts_config(argv)
        default = config_file if isinstance(config_file, str) else None
        with _config_errors(argv, default):
            config_flags.DEFINE_config_file(
                "config", default, "config file[:argument] (configs/*.py); override fields "
                "with --config.x=y; --config=FILE --help lists its fields with their values",
                flag_values=fv, lock_config=True, sys_argv=["hgmt"] + argv)
    if config is not None:
        with _config_errors(argv, config):
            config_flags.DEFINE_config_dict(
                "config", config, "the workdir's training config; override fields with "
                "--config.x=y", flag_values=fv, sys_argv=["hgmt"] + argv)
    if asks_for_help(argv):
        listed = (_config_file_fields_help(
            argv, config_file if isinstance(config_file, str) else None) if config_file else "")
        print(f"{doc}\n\n{listed}{fv.get_help()}")
        raise SystemExit(0)
    with _config_errors(argv, config if config is not None else
                        config_file if isinstance(config_file, str) else None):
        try:
            rest = fv(["hgmt"] + argv)[1:]
        except flags.Error as e:
            raise SystemExit(f"error: {_flag_error(e, fv)} (--help lists the flags)") from None
        except ValueError as e:  # absl's for `--no<boolean>=<value>`, raised unworded
            negated = re.fullmatch(r"(-{1,2}no(\S+?))=.* does not take an argument", str(e))
            if not negated:
                raise
            raise SystemExit(f"error: {str(e).removesuffix(' does not take an argument')}: "
                             f"{negated[1]} takes no value: give {negated[1]} for false, or "
                             f"--{negated[2]}=true or false (--help lists the flags)") from None
        if config_file and fv.config is not None:
            getattr(fv.config, "lock", None)  # a file that could not be read raises here
    if positional == "--" and rest:
        raise SystemExit(f"error: unexpected arguments {rest}: give the arguments to pass on "
                         f"after `--` (--help lists the flags)")
    if positional is None and rest:
        how = ("; set a config field with --config.<field>=<value>, before any `--`"
               if "config" in fv else "")
        raise SystemExit(f"error: unexpected arguments {rest}: this command takes flags only"
                         f"{how} (--help lists the flags)")
    return fv, rest + passed


# The arguments that ask a command for its help: absl's --helpfull too, which would otherwise
# be an unknown flag here (absl defines it in `app.run` only, which no command uses).
HELP_FLAGS = ("--help", "-h", "--helpfull")


def asks_for_help(argv: Sequence[str]) -> bool:
    """Whether `argv` holds one of HELP_FLAGS."""
    return any(arg in HELP_FLAGS for arg in argv)


def parse_on_workdir(define: Callable[[flags.FlagValues], None], argv: Sequence[str] | None,
                     doc: str, *, positional: str | None = None
                     ) -> tuple[flags.FlagValues, list[str]]:
    """`parse` for a command on a trained workdir (hgmt.evaluate, hgmt.predict, hgmt.export):
    its `--config` is the config saved in the workdir that `--workdir` names
    (`workdir_config`), whose fields `--config.<field>=<value>` override for this command.

    `doc` is the module's docstring: a summary, then its usage (indented command lines), then
    the rest. `--help` prints the usage first (`usage_first`), the config's fields (each with
    its value when `--workdir` names a workdir whose config.json reads) and the flags, and
    exits 0, reading nothing else."""
    command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if asks_for_help(argv):
        fv = flags.FlagValues()
        define(fv)
        with console.early_lines(command=command):
            fields = _config_fields_help(argv)
        print(f"{usage_first(doc)}\n\n{fields}\n\n{fv.get_help()}")
        raise SystemExit(0)
    given = [a for a in argv if _is_config_flag(a)]
    if given:  # a training command line's --config, copied over
        raise SystemExit(f"error: {given[0]}: this command reads the config the workdir was "
                         f"trained with (<workdir>/config.json): drop --config, and override "
                         f"its fields with --config.<field>=<value>")
    return parse(define, argv, doc, workdir_config(argv, command=command),
                 positional=positional)


def usage_first(doc: str) -> str:
    """A command's docstring (a summary paragraph, then a paragraph of indented command lines,
    then the rest) as its --help says it: `usage: <the command lines>`, then the summary and
    the rest."""
    paragraphs = doc.strip("\n").split("\n\n")
    if len(paragraphs) < 2 or not all(line.startswith("    ") and line.strip()
                                      for line in paragraphs[1].splitlines()):
        raise ValueError("the docstring's second paragraph is not its usage (indented command "
                         "lines)")
    lines = textwrap.dedent(paragraphs[1]).splitlines()
    usage = "\n".join(["usage: " + lines[0]] + ["       " + line for line in lines[1:]])
    return "\n\n".join([usage, paragraphs[0], *paragraphs[2:]])


def _config_fields_help(argv: Sequence[str]) -> str:
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
        workdir = _workdir_arg(argv)
    except flags.Error:
        return head
    if not workdir:
        return head
    if paths.is_url(workdir):  # help reads nothing over the network
        return (f"{head}\n    (--workdir={workdir}: the fields of a workdir in an object "
                f"store are not listed; its config.json has them)")
    try:
        config = workdirs.load_config(workdir)
    except Exception as e:  # noqa: BLE001  (help prints why and goes on)
        return f"{head}\n    (--workdir={workdir}: {type(e).__name__}: {e})"
    return "\n".join([head, f"The fields of {workdir}'s config:", *_field_lines(config)])


def _field_lines(config) -> list[str]:
    """A config's fields as --help lists them: `  --config.<path>: <value>`, sorted."""
    return [f"  --config.{path}: {value!r}"
            for path, value in sorted(workdirs.flat_fields(config.to_dict()).items())]


# How a config file's overrides start on a command line (absl takes one dash or two).
_OVERRIDES = ("--config.", "-config.", "--noconfig.", "-noconfig.")


def _is_config_flag(arg: str) -> bool:
    """Whether `arg` is the `--config` flag itself (`--config=X`, or `--config` before X, one
    dash or two), not an override of a field."""
    return arg.startswith(("--config=", "-config=")) or arg in ("--config", "-config")


def _config_file_values(argv: Sequence[str]) -> list[str]:
    """The values of `--config` in argv, as `--config=X` or `--config X` gives them."""
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(("--config=", "-config=")):
            values.append(arg.partition("=")[2])
        elif _is_config_flag(arg) and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def _check_config_file_args(argv: Sequence[str], require: bool) -> None:
    """Ends the command in one line naming the fix for an override without `--config` (where
    the command has no default config file, `require`: absl's "Unknown command line flag")
    and for a workdir's config.json given as the config file (which runs as Python)."""
    given = _config_file_values(argv)
    overrides = [a for a in argv if a.startswith(_OVERRIDES)]
    if require and overrides and not given:
        raise SystemExit(f"error: {overrides[0]} overrides a field of --config, which is not "
                         f"given: add --config=FILE[:ARG] (e.g. configs/default.py:tasks=all)")
    json_files = [v for v in given if v.partition(":")[0].endswith(".json")]
    if json_files:
        raise SystemExit(f"error: --config={json_files[0]}: a config file is Python with "
                         f"get_config() (configs/*.py); a workdir's config.json is what "
                         f"hgmt.evaluate, hgmt.predict and hgmt.export read from --workdir: to "
                         f"train on in a workdir, give the config file it was trained with")


def _config_file_fields_help(argv: Sequence[str], default: str | None = None) -> str:
    """The --help lines listing the fields of the config file `--config` names in argv, or
    without one of the command's `default` config file, with the overrides applied, each with
    its value; where it does not read, why; for a command without a default config (hgmt.main)
    given no `--config`, how to list a config's fields."""
    given = _config_file_values(argv)
    if not given and not default:
        return ("(--config=FILE --help lists the fields of a config file with their values, "
                "e.g. --config=configs/default.py --help)\n\n")
    # Only the config's flags defined: the command's others (a required --workdir) are passed
    # over (`known_only`), so help asks for none of them.
    own = ["hgmt"] + [a for a in argv if a not in HELP_FLAGS]
    named = f"--config={given[-1]}" if given else f"the default --config={default}"
    try:  # the command's own one-line errors, as a run would stop on them
        with _config_errors(own[1:], None):
            _check_config_file_args(own[1:], require=False)
            fv = flags.FlagValues()
            config_flags.DEFINE_config_file("config", None if given else default, "",
                                            flag_values=fv, lock_config=True, sys_argv=own)
            try:
                fv(own, known_only=True)
            except flags.Error as e:
                raise SystemExit(f"error: {_flag_error(e)}") from None
            lines = _field_lines(fv.config)
    except SystemExit as e:  # help prints why and goes on
        return f"(the config's fields are not listed: {str(e.code).removeprefix('error: ')})\n\n"
    return "\n".join([f"The fields of {named}, with their values:", *lines,
                      "", ""])


def _workdir_arg(argv: Sequence[str]) -> str | None:
    """The value of `--workdir` in argv, read before the full parse (the other arguments, help
    flags included, left alone); raises flags.Error for a malformed one."""
    pre = flags.FlagValues()
    flags.DEFINE_string("workdir", None, "", flag_values=pre)
    pre(["hgmt"] + [a for a in argv if a not in HELP_FLAGS], known_only=True)
    return pre.workdir


def _flag_error(e: flags.Error, fv: flags.FlagValues | None = None) -> str:
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


def _with_hgmts_config(argv: list[str]) -> list[str]:
    """`argv` with a `--config` value `configs/<file>[:argument]` whose file is not in the
    working directory given the path of hgmt's own (CONFIGS_DIR: the checkout's, or the
    installed package's), so that the documented commands run from any directory."""
    def ours(value: str) -> str:
        path, colon, argument = value.partition(":")
        parts = os.path.normpath(path).split(os.sep)
        if os.path.exists(path) or parts[0] != "configs":
            return value
        found = os.path.join(CONFIGS_DIR, *parts[1:])
        return f"{found}{colon}{argument}" if os.path.isfile(found) else value

    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith(("--config=", "-config=")):
            name, _, value = arg.partition("=")
            out[i] = f"{name}={ours(value)}"
        elif _is_config_flag(arg) and i + 1 < len(out):
            out[i + 1] = ours(out[i + 1])
    return out


@contextlib.contextmanager
def _config_errors(argv: Sequence[str],
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
    values = _config_file_values(argv)
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


def workdir_config(argv: Sequence[str] | None, *, command: bool | None = None
                   ) -> ml_collections.ConfigDict:
    """The config saved in the workdir that `--workdir` names in argv (read before the full
    parse, so that `--config.x=y` can override its fields); its warnings (an older
    config.json's fields read anew) in the console's format (`console.early_lines`, as the
    process's own command where `command`, by default where argv is None)."""
    command = argv is None if command is None else command
    workdir = _workdir_arg(list(sys.argv[1:] if argv is None else argv))
    if not workdir:
        raise SystemExit("error: --workdir is required: a directory written by "
                         "`python -m hgmt.main --workdir=...`")
    # Its errors' messages name the fix: one line.
    with faults_in_one_line(FileNotFoundError, ValueError), console.early_lines(command=command):
        return workdirs.load_config(workdir)


@contextlib.contextmanager
def faults_in_one_line(*kinds: type[BaseException], traceback: bool = False,
                       status: int = 1) -> Iterator[None]:
    """Ends the command with exit status `status` and one line, `error: <Kind>: <message>`,
    for the errors `kinds`, whose messages say what happened, what is intact and what to do (a
    full disk, out of device memory, a damaged shard); with `traceback` they propagate as
    raised. Status 1 is the SystemExit of the line (its `code`); another status, for a command
    whose status 1 means something else (`hgmt.report --check_config`: runs differ), prints
    the line to stderr and exits with that status."""
    try:
        yield
    except kinds as e:
        if traceback:
            raise
        line = f"error: {type(e).__name__}: {e}"
        if status == 1:
            raise SystemExit(line) from None
        print(line, file=sys.stderr)
        raise SystemExit(status) from None


def define_verbosity(fv: flags.FlagValues) -> None:
    """`--verbosity`, which every command that runs the model takes (see
    `hgmt.console.UserLines`)."""
    flags.DEFINE_integer("verbosity", 0, "1: also the INFO lines of orbax, TFDS and JAX, "
                         "XLA's full messages (an out-of-memory allocation dump) and "
                         "tracebacks", flag_values=fv)


# hgmt.main's flag that resumes a workdir with a changed config (hgmt.training.resume); named
# here, below the modules whose messages give it.
RESUME_FLAG = "--resume_with_changed_config"


def define_workdir(fv: flags.FlagValues) -> None:
    """`--workdir` and `--step`, the flags of every command on a trained workdir."""
    flags.DEFINE_string("workdir", None, "training workdir (its checkpoints and config)",
                        flag_values=fv, required=True)
    flags.DEFINE_string("step", None, "a checkpoint step, or 'best' (the best validation "
                        "checkpoint kept during training); default: the latest checkpoint",
                        flag_values=fv)


def check_output_folder(flag: str, path: str) -> None:
    """Ends the command in one line, before any work, when the output folder a flag gives
    (`--<flag>=<path>`, made if missing) is something other than a folder (a file)."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SystemExit(f"error: --{flag}={path} is a file: give a folder (made if missing)")


def checkpoint_step(value: str | None) -> int | str | None:
    """`--step` -> None (latest), 'best' or a step number; anything else exits 1."""
    if value in (None, "best"):
        return value
    if not value.isdigit():
        raise SystemExit(f"error: --step={value!r}: give a step number or 'best'")
    return int(value)
