"""A command's console (hgmt.console): the lines it shows and in what form, and the caller's
logging and SIGTERM handler given back when `main` runs in its process."""

import importlib
import logging
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def saved_workdir(tmp_path_factory):
    """A workdir holding only config.json: enough for a command to parse its flags."""
    from configs import default
    from hgmt import run_config

    workdir = str(tmp_path_factory.mktemp("workdir"))
    run_config.save_config(default.get_config("tasks=pose2d,runlocal"), workdir)
    return workdir


def test_main_in_process_gives_the_loggers_handlers_back_as_they_were(saved_workdir, caplog):
    """hgmt.main hides other libraries' INFO lines and its own verbose ones on the console's
    handlers for its run only: a caller in the same process (here pytest's capture) still
    gets a verbose record afterwards."""
    from hgmt import console

    root = logging.getLogger()
    before = {h: list(h.filters) for h in root.handlers}
    main = importlib.import_module("hgmt.main").main
    with pytest.raises(SystemExit):
        main([f"--config={REPO}/configs/demo.py", "--config.model.ops=xla",
              f"--workdir={saved_workdir}"])
    assert {h: list(h.filters) for h in root.handlers} == before
    caplog.clear()
    with caplog.at_level(logging.INFO):
        logging.info("a verbose line", extra=console.VERBOSE)
    assert [r.getMessage() for r in caplog.records] == ["a verbose line"]


def test_a_command_in_process_leaves_the_callers_logging_and_sigterm_as_they_were(
        saved_workdir, monkeypatch):
    """A notebook's root logger with no handler, at WARNING: after a command's main (here
    hgmt.evaluate, stopping in one line on a workdir without checkpoints) it has no handler
    and its level still; before, main left a handler and INFO (the notebook's INFO lines, and
    absl's, then printed). A caller's own SIGTERM handler stays in place while a command runs
    (`stops.sigterm_cleans_up` unwinds only where SIGTERM would have killed the process)."""
    import signal

    from hgmt import stops

    # Imported first: orbax's import sets up logging.
    evaluate = importlib.import_module("hgmt.evaluate")
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [])
    monkeypatch.setattr(root, "level", logging.WARNING)
    with pytest.raises(SystemExit):
        evaluate.main([f"--workdir={saved_workdir}"])
    assert root.handlers == [] and root.level == logging.WARNING

    def own(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, own)
    try:
        with stops.sigterm_cleans_up():
            assert signal.getsignal(signal.SIGTERM) is own
    finally:
        signal.signal(signal.SIGTERM, previous)
    with stops.sigterm_cleans_up():  # at SIGTERM's default: unwinds
        assert signal.getsignal(signal.SIGTERM) not in (own, signal.SIG_DFL)


def test_a_commands_console_writes_a_name_that_is_not_utf8(tmp_path):
    """A Latin-1 file name (Python's surrogate escapes) printed and logged by a command on a
    strict UTF-8 stdout and stderr: written as its bytes, where print raised after the
    prediction was written."""
    import subprocess

    code = ("import logging, os\n"
            "from hgmt import console\n"
            "name = os.fsdecode(b'caf\\xe9.jpg')\n"
            "with console.console(0, command=True):\n"
            "    print(name)\n"
            "    logging.getLogger('x').warning('skipped %s', name)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          cwd=REPO, env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"caf\xe9.jpg\n"
    assert proc.stderr.splitlines()[-1] == b"warning: skipped caf\xe9.jpg"


def test_the_other_processes_of_a_job_show_only_their_own_lines():
    """With `show_progress(False)` (hgmt.main on a multi-host job's processes other than 0)
    hgmt's INFO lines are dropped but for those about the process itself (`EVERY_PROCESS`:
    its loader's worker count, which can differ between hosts); warnings show; the command's
    console end shows them again (an in-process caller of hgmt.main gets its lines back)."""
    from hgmt import console

    def record(level, **extra):
        r = logging.LogRecord("hgmt", level, os.path.join(console._HGMT_DIR, "x.py"), 1, "m", (),
                              None)
        r.__dict__.update(extra)
        return r

    lines = console.UserLines()
    with console.console(0, command=False):
        console.show_progress(False)
        assert not lines.filter(record(logging.INFO))
        assert lines.filter(record(logging.INFO, **console.EVERY_PROCESS))
        assert lines.filter(record(logging.WARNING))
    assert lines.filter(record(logging.INFO))


def test_a_librarys_error_logged_of_a_ctrl_c_shows_only_with_verbosity():
    """A second Ctrl-C during the first one's cleanup interrupts orbax's wait for a checkpoint
    write, which logs it as an error with its traceback (before the command's own line):
    dropped by `UserLines`, as the command's line reports the interrupt; another error a
    library logs still shows."""
    from hgmt import console

    def record(error: BaseException) -> logging.LogRecord:
        return logging.LogRecord("absl", logging.ERROR, "/site-packages/orbax/x.py", 1,
                                 "Save Finalize thread (save_finalize) failed.", (),
                                 (type(error), error, None))

    lines = console.UserLines()
    assert not lines.filter(record(KeyboardInterrupt()))
    assert lines.filter(record(ValueError("a real failure")))


def test_orbaxs_preemption_sync_point_warning_shows_only_with_verbosity():
    """Orbax warns 'Reached preemption sync point, step=S' up to three times on each process
    of a multi-host run stopped by a signal, before hgmt's own `preempted: saved a checkpoint
    at step S` line: dropped by `UserLines`; orbax's other warnings still show."""
    from hgmt import console

    def record(msg: str, args: tuple) -> logging.LogRecord:
        return logging.LogRecord("absl", logging.WARNING, "/site-packages/orbax/checkpoint/_src/"
                                 "multihost/multihost.py", 436, msg, args, None)

    lines = console.UserLines()
    assert not lines.filter(record("[process=%s][thread=%s] Reached preemption sync point, "
                                   "step=%s", (0, "MainThread", 63)))
    assert lines.filter(record("[process=%s][thread=%s] something else", (0, "MainThread")))
