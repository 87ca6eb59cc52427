"""Ctrl-C and SIGTERM ending a command once its cleanups have run (hgmt.stops), in small
commands run as processes: the line, the exit status, the partial file removed, a stop Python
dropped or delivered to another thread still acted on."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sigterm_runs_the_cleanups_then_ends_the_process_as_sigterm_does(tmp_path):
    """SIGTERM inside `stops.sigterm_cleans_up` (evaluate's, predict's and export's block): the
    cleanup of a partial file runs, a second SIGTERM meanwhile does not cut it short, and the
    process still dies of SIGTERM (-15 to its parent); outside it, SIGTERM's default ends the
    process where it stands, the partial file left (what hgmt.export left before)."""
    import signal
    import subprocess

    code = ("import os, signal, sys, time\n"
            "from hgmt import stops\n"
            "partial = sys.argv[1]\n"
            "def run():\n"
            "    open(partial, 'w').close()\n"
            "    try:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        time.sleep(30)\n"
            "    except BaseException:\n"
            "        os.kill(os.getpid(), signal.SIGTERM)\n"
            "        os.remove(partial)\n"
            "        raise\n"
            "if sys.argv[2] == 'held':\n"
            "    with stops.sigterm_cleans_up():\n"
            "        run()\n"
            "else:\n"
            "    run()\n")
    for how, left in (("held", False), ("default", True)):
        partial = tmp_path / f"{how}.partial"
        proc = subprocess.run([sys.executable, "-c", code, str(partial), how], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGTERM, (how, proc.returncode, proc.stderr)
        assert partial.exists() == left, how
        assert proc.stderr == ("" if left else
                               "stopped by SIGTERM; nothing partial was left behind\n"), how


def test_ctrl_c_ends_a_command_in_one_line_after_its_cleanups(tmp_path):
    """Ctrl-C in hgmt.evaluate, predict or export (`stops.interrupted_in_one_line`): the partial
    file's cleanup runs, then one line and status 130, where Python printed its traceback; a
    caller in the same process gets its KeyboardInterrupt."""
    from hgmt import stops

    partial = tmp_path / "partial"
    proc = _with_a_partial_file("stops.interrupted_in_one_line(command=True)",
                                "raise KeyboardInterrupt", partial)
    assert (proc.returncode, proc.stderr) == (
        130, "interrupted (Ctrl-C); nothing partial was left behind\n")
    assert not partial.exists()
    with pytest.raises(KeyboardInterrupt), stops.interrupted_in_one_line(command=False):
        raise KeyboardInterrupt


def test_ctrl_c_ends_the_command_without_the_interpreters_exit(tmp_path):
    """After Ctrl-C's line the command's process ends at once (`stops.end_interrupted`): the
    interpreter's exit, whose atexit callbacks include JAX's teardown of its backends, does
    not run. That teardown, after a compilation Ctrl-C stopped, crashed `hgmt.evaluate` with
    SIGSEGV after its line (2 of 7 tries), and a second Ctrl-C during it printed its
    traceback and ended `hgmt.main` by SIGINT; before, the callback registered here ran after
    the line."""
    partial = tmp_path / "partial"
    proc = _with_a_partial_file(
        "stops.interrupted_in_one_line(command=True)", "raise KeyboardInterrupt", partial,
        before="import atexit\n"
               "atexit.register(lambda: print('the interpreter exit ran', file=sys.stderr))\n"
               "print('buffered, flushed before the exit', end='')\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130, "buffered, flushed before the exit",
        "interrupted (Ctrl-C); nothing partial was left behind\n")
    assert not partial.exists()


def _with_a_partial_file(manager: str, body: str, partial, before: str = ""):
    """A command's process in small (`python -c`): inside `with <manager>:` it makes the file
    `partial`, runs the statement `body`, and removes the file on any exception before
    passing it on -> the finished process (text output)."""
    import subprocess

    code = ("import gc, os, signal, sys, time\n"
            "from hgmt import console, stops\n"
            f"{before}"
            f"with {manager}:\n"
            "    open(sys.argv[1], 'w').close()\n"
            "    try:\n"
            f"        {body}\n"
            "    except BaseException:\n"
            "        os.remove(sys.argv[1])\n"
            "        raise\n")
    return subprocess.run([sys.executable, "-c", code, str(partial)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_sigterm_in_a_garbage_collection_callback_still_ends_the_command(tmp_path):
    """SIGTERM whose handler runs inside a gc callback (JAX registers one), where Python
    prints and drops the exception it raises: sent again from outside it, it still unwinds
    the command (the partial file removed) and ends it as SIGTERM does; before, the command
    ran on to its end, exit 0, with SIGTERM ignored from then on."""
    import signal

    partial = tmp_path / "partial"
    proc = _with_a_partial_file(
        "stops.sigterm_cleans_up()", "gc.callbacks.append(inside); gc.collect(); "
        "gc.callbacks.remove(inside); time.sleep(30); print('ran on')", partial,
        before="def inside(phase, info):\n"
               "    if phase == 'start' and not getattr(inside, 'sent', False):\n"
               "        inside.sent = True\n"
               "        os.kill(os.getpid(), signal.SIGTERM)\n"
               "        sum(range(1000))\n")
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout, proc.stderr)
    assert not partial.exists() and proc.stdout == ""


def test_ctrl_c_in_a_garbage_collection_callback_still_stops_the_command(tmp_path):
    """Ctrl-C whose KeyboardInterrupt is raised inside a gc callback (JAX registers one),
    where Python prints and drops it: sent again from outside it, it still stops the command
    (the partial file removed, its one line, status 130); before, `hgmt.export` ran on to
    its end and wrote its export, exit 0, after an `Exception ignored in` traceback."""
    partial = tmp_path / "partial"
    proc = _with_a_partial_file(
        "console.stoppable_console(0, command=True)", "gc.callbacks.append(inside); "
        "gc.collect(); gc.callbacks.remove(inside); time.sleep(30); print('ran on')", partial,
        before="signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "def inside(phase, info):\n"
               "    if phase == 'start' and not getattr(inside, 'sent', False):\n"
               "        inside.sent = True\n"
               "        os.kill(os.getpid(), signal.SIGINT)\n"
               "        sum(range(1000))\n")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        130, "", "interrupted (Ctrl-C); nothing partial was left behind\n")
    assert not partial.exists()


def test_a_ctrl_c_dropped_at_the_blocks_end_stops_it_there():
    """A Ctrl-C dropped inside a gc callback at the block's last statement, before the
    signal sent again reaches the main thread: the block raises its KeyboardInterrupt as it ends,
    and no signal is left to arrive after it (the SIGINT handler and unraisable hook are the
    caller's again)."""
    import signal
    import time

    from hgmt import stops
    from tests.conftest import ctrl_c_in_a_gc_callback

    raised = []
    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    hook = sys.unraisablehook
    try:
        with pytest.raises(KeyboardInterrupt), stops.ctrl_c_is_the_stop():
            raised.append(ctrl_c_in_a_gc_callback())
        assert sys.unraisablehook is hook
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        time.sleep(0.05)  # a signal sent again would raise here (sent after 0.01 s)
    finally:
        signal.signal(signal.SIGINT, handler)
    assert raised == [True]


def test_a_stop_delivered_to_another_thread_reaches_a_main_thread_that_waits(tmp_path):
    """SIGTERM delivered to a thread other than the main one (a library's: Beam's, gRPC's)
    while the main thread waits (here at most 20 s; Beam's wait for workers the same signal
    ended has no limit): sent on to the main thread, it unwinds the command at once (the
    partial file removed, the process dead of SIGTERM); before, nothing ran until the wait
    ended, and a multi-process Beam build given SIGTERM hung."""
    import signal
    import time

    partial = tmp_path / "partial"
    start = time.monotonic()
    proc = _with_a_partial_file(
        "stops.sigterm_cleans_up(), stops.stops_reach_the_main_thread()",
        "threading.Thread(target=elsewhere).start(); threading.Event().wait(20); "
        "print('ran on')", partial,
        before="import threading\n"
               "def elsewhere():\n"
               "    time.sleep(0.3)\n"
               "    signal.pthread_kill(threading.get_ident(), signal.SIGTERM)\n")
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout, proc.stderr)
    assert not partial.exists() and proc.stdout == ""
    assert time.monotonic() - start < 15


def test_a_stop_the_main_thread_handles_is_not_sent_on():
    """A Ctrl-C delivered to the main thread, whose handler runs there: the watcher sends
    nothing more (one KeyboardInterrupt, not two); the wakeup fd is given back as it was."""
    import signal
    import time

    from hgmt import stops

    handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    caught = 0
    try:
        with stops.ctrl_c_is_the_stop(), stops.stops_reach_the_main_thread():
            try:
                signal.raise_signal(signal.SIGINT)
            except KeyboardInterrupt:
                caught += 1
            try:
                time.sleep(3 * stops.FORWARD_AFTER_S)
            except KeyboardInterrupt:
                caught += 1
        assert signal.set_wakeup_fd(-1) == -1
    finally:
        signal.signal(signal.SIGINT, handler)
    assert caught == 1


def test_sigterm_replaced_by_another_error_on_its_way_out_still_ends_as_sigterm(tmp_path):
    """SIGTERM's unwinding raised inside C code that replaces it with its own error
    (TensorFlow's tracing of an export raises a TypeError): the partial file is removed and
    the command still ends as SIGTERM does, with its one line; it ended with the other error's
    traceback, status 1."""
    import signal

    partial = tmp_path / "partial"
    proc = _with_a_partial_file(
        "stops.sigterm_cleans_up()", "convert()", partial,
        before="def convert():\n"
               "    try:\n"
               "        os.kill(os.getpid(), signal.SIGTERM)\n"
               "        time.sleep(30)\n"
               "    except BaseException:\n"
               "        raise TypeError() from None\n")
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, proc.stdout, proc.stderr)
    assert not partial.exists() and proc.stdout == ""
    assert proc.stderr == "stopped by SIGTERM; nothing partial was left behind\n"


def test_the_stop_behind_an_error_is_found_through_runtime_errors_only():
    """Beam's DirectRunner raises a RuntimeError naming the step while it handles the
    KeyboardInterrupt that stopped the step: the KeyboardInterrupt is the stop behind it. An
    OSError raised while a Ctrl-C was handled (a cleanup's) is that error, and a RuntimeError
    whose context was suppressed (`raise ... from None`) stops none."""
    from hgmt import stops

    def raised(make):
        try:
            make()
        except BaseException as e:  # noqa: BLE001
            return e

    def interrupted():
        raise KeyboardInterrupt

    def wrapped(error_type, suppress=False):
        def make():
            try:
                interrupted()
            except KeyboardInterrupt:
                if suppress:
                    raise error_type("step failed") from None
                raise error_type("KeyboardInterrupt [while running 'step']")  # noqa: B904
        return make

    stop = raised(interrupted)
    assert stops.stop_behind(stop) is stop
    beam = raised(wrapped(RuntimeError))
    assert isinstance(stops.stop_behind(beam), KeyboardInterrupt)
    assert stops.stop_behind(raised(wrapped(OSError))) is None
    assert stops.stop_behind(raised(wrapped(RuntimeError, suppress=True))) is None
    assert stops.stop_behind(RuntimeError("alone")) is None
