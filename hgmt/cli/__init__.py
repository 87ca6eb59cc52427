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

The parse reads the command line's help, `--config` and `--workdir` arguments first
(`raw_args`), lists a config's fields in its help (`help_text`) and ends a bad command line in
one line naming the fix (`errors`). What a command shows on its console is `hgmt.console`;
how Ctrl-C and SIGTERM end it, `hgmt.stops`."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import textwrap
from collections.abc import Callable, Iterator, Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from hgmt import console, run_config
from hgmt.cli import errors, help_text, raw_args

# hgmt's own config files: configs/ beside the hgmt package (the checkout's, or the one
# installed beside it in site-packages).
CONFIGS_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "configs")


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
    line naming it and the fix. A TensorFlow that the command's work imports after the parse
    prints no start-up lines (`console.quiet_tensorflow`)."""
    console.quiet_tensorflow()  # before any of the command's work imports TensorFlow
    argv = list(sys.argv[1:] if argv is None else argv)
    if positional not in (None, "any", "--"):
        raise ValueError(f"positional={positional!r}: give None, 'any' or '--'")
    passed: list[str] = []
    if positional == "--" and "--" in argv:
        argv, passed = argv[:argv.index("--")], argv[argv.index("--") + 1:]
    fv = flags.FlagValues()
    define(fv)
    configs = [a for a in argv if raw_args.is_config_flag(a)]
    if (config_file or config is not None) and len(configs) > 1:
        # absl would read the file twice and stop on its fields "defined twice".
        raise SystemExit(f"error: --config is given {len(configs)} times; give one config "
                         f"file, and override its fields with --config.<field>=<value>")
    if config_file and not raw_args.asks_for_help(argv):  # help lists why, and goes on
        errors.check_config_file_args(argv, require=config_file is True)
    if config_file:
        argv = _with_hgmts_config(argv)
        default = config_file if isinstance(config_file, str) else None
        with errors.config_errors(argv, default):
            config_flags.DEFINE_config_file(
                "config", default, "config file[:argument] (configs/*.py); override fields "
                "with --config.x=y; --config=FILE --help lists its fields with their values",
                flag_values=fv, lock_config=True, sys_argv=["hgmt"] + argv)
    if config is not None:
        with errors.config_errors(argv, config):
            config_flags.DEFINE_config_dict(
                "config", config, "the workdir's training config; override fields with "
                "--config.x=y", flag_values=fv, sys_argv=["hgmt"] + argv)
    if raw_args.asks_for_help(argv):
        listed = (help_text.config_file_fields_help(
            argv, config_file if isinstance(config_file, str) else None) if config_file else "")
        print(f"{doc}\n\n{listed}{fv.get_help()}")
        raise SystemExit(0)
    with errors.config_errors(argv, config if config is not None else
                        config_file if isinstance(config_file, str) else None):
        try:
            rest = fv(["hgmt"] + argv)[1:]
        except flags.Error as e:
            raise SystemExit(f"error: {errors.flag_error(e, fv)} (--help lists the flags)"
                             ) from None
        except ValueError as e:  # absl's for `--no<boolean>=<value>`, raised unworded
            negated = re.fullmatch(r"(-{1,2}no(\S+?))=.* does not take an argument", str(e))
            if not negated:
                raise
            raise SystemExit(f"error: {str(e).removesuffix(' does not take an argument')}: "
                             f"takes no value; give {negated[1]} for false, or "
                             f"--{negated[2]}=true or false (--help lists the flags)") from None
        if config_file and fv.config is not None:
            getattr(fv.config, "lock", None)  # a file that could not be read raises here
    if positional == "--" and rest:
        raise SystemExit(f"error: unexpected arguments {', '.join(rest)}; give the arguments "
                         f"to pass on after `--` (--help lists the flags)")
    if positional is None and rest:
        how = ("; set a config field with --config.<field>=<value>, before any `--`"
               if "config" in fv else "")
        raise SystemExit(f"error: unexpected arguments {', '.join(rest)}: this command takes "
                         f"flags only{how} (--help lists the flags)")
    return fv, rest + passed


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
    console.quiet_tensorflow()  # before the workdir's config is read (an object store's)
    command = argv is None
    argv = list(sys.argv[1:] if argv is None else argv)
    if raw_args.asks_for_help(argv):
        fv = flags.FlagValues()
        define(fv)
        with console.early_lines(command=command):
            fields = help_text.config_fields_help(argv)
        print(f"{usage_first(doc)}\n\n{fields}\n\n{fv.get_help()}")
        raise SystemExit(0)
    given = [a for a in argv if raw_args.is_config_flag(a)]
    if given:  # a training command line's --config, copied over
        raise SystemExit(f"error: {given[0]}: this command reads the config the workdir was "
                         f"trained with (<workdir>/config.json); drop --config, and override "
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
        elif raw_args.is_config_flag(arg) and i + 1 < len(out):
            out[i + 1] = ours(out[i + 1])
    return out


def workdir_config(argv: Sequence[str] | None, *, command: bool | None = None
                   ) -> ml_collections.ConfigDict:
    """The config saved in the workdir that `--workdir` names in argv (read before the full
    parse, so that `--config.x=y` can override its fields); its warnings (an older
    config.json's fields read anew) in the console's format (`console.early_lines`, as the
    process's own command where `command`, by default where argv is None)."""
    command = argv is None if command is None else command
    workdir = raw_args.workdir_arg(list(sys.argv[1:] if argv is None else argv))
    if not workdir:
        raise SystemExit("error: --workdir is required: a directory written by "
                         "`python -m hgmt.main --workdir=...`")
    # Its errors' messages name the fix: one line.
    with faults_in_one_line(FileNotFoundError, ValueError), console.early_lines(command=command):
        return run_config.load_config(workdir)


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
        raise SystemExit(f"error: --{flag}={path}: a file; give a folder (made if missing)")


def checkpoint_step(value: str | None) -> int | str | None:
    """`--step` -> None (latest), 'best' or a step number; anything else exits 1."""
    if value in (None, "best"):
        return value
    if not value.isdecimal():
        raise SystemExit(f"error: --step={value}: give a step number or 'best'")
    return int(value)
