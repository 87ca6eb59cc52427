"""launch/: the scripts' arguments, and under Slurm one process per node that drives every GPU
of its node (JAX alone would give it only the GPU numbered by its local task id, 0).

Slurm and gcloud do not run here: for those scripts, stand-ins named `srun`, `scontrol` and
`gcloud` on PATH write down what they were asked to run. local.sh runs hgmt.main for real."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import time

import pytest

from hgmt.training import cluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What srun sets for the one task of node 1 of a 2-node step (sbatch --nodes=2
# --ntasks-per-node=1 --gpus-per-node=4).
ONE_TASK_A_NODE = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost",
                   "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
                   "SLURM_STEP_NUM_NODES": "2", "SLURM_NODEID": "1",
                   "SLURM_STEP_TASKS_PER_NODE": "1(x2)", "SLURM_GPUS_ON_NODE": "4",
                   "CUDA_VISIBLE_DEVICES": "0,1,2,3"}


def test_one_task_on_its_node_drives_every_gpu_it_sees():
    env = ONE_TASK_A_NODE
    assert cluster.slurm_local_device_ids(env) == [0, 1, 2, 3]
    assert cluster.slurm_local_device_ids({**env, "CUDA_VISIBLE_DEVICES": "4,6"}) == [0, 1]
    without = {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"}
    assert cluster.slurm_local_device_ids(without) == [0, 1, 2, 3]  # SLURM_GPUS_ON_NODE
    assert cluster.slurm_local_device_ids({**without, "ROCR_VISIBLE_DEVICES": "0,1"}) == [0, 1]
    # Node 1 of '2,1' holds one task; node 0 of '2(x2)' two: JAX's one GPU each.
    assert cluster.slurm_local_device_ids({**env, "SLURM_STEP_TASKS_PER_NODE": "2,1"}) == [
        0, 1, 2, 3]
    assert cluster.slurm_local_device_ids({**env, "SLURM_STEP_TASKS_PER_NODE": "2(x2)"}) is None
    assert cluster.slurm_local_device_ids({**env, "JAX_LOCAL_DEVICE_IDS": "0"}) is None
    assert cluster.slurm_local_device_ids({"CUDA_VISIBLE_DEVICES": "0,1"}) is None  # no Slurm
    assert cluster.slurm_local_device_ids({**without, "SLURM_GPUS_ON_NODE": ""}) is None
    # Several tasks on the node, each bound its own GPUs (--gpus-per-task): Slurm shows each
    # only its own, numbered from 0 (JAX's GPU of the local task id would not exist).
    shared = {**env, "SLURM_STEP_TASKS_PER_NODE": "4(x2)", "SLURM_LOCALID": "3"}
    assert cluster.slurm_local_device_ids({**shared, "CUDA_VISIBLE_DEVICES": "3"}) == [0]
    assert cluster.slurm_local_device_ids({**shared, "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
                                         "CUDA_VISIBLE_DEVICES": "2,3"}) == [0, 1]
    assert cluster.slurm_local_device_ids({**shared, "ROCR_VISIBLE_DEVICES": "1",
                                         "CUDA_VISIBLE_DEVICES": ""}) == [0]
    assert cluster.slurm_local_device_ids(shared) is None  # each sees all four: JAX's choice


def test_jax_distributed_under_slurm_makes_every_gpu_visible():
    """A real `cluster.initialize()` in a 1-process Slurm step: the GPUs JAX is told to use (its
    `jax_cuda_visible_devices`, which a CPU ignores) are all four, not '0'. The coordinator
    listens on a free port (JAX_COORDINATOR_PORT), not the one JAX derives from the job id,
    which every run of this test would share."""
    from tests.test_faults import _free_port

    env = {**os.environ, **ONE_TASK_A_NODE, "SLURM_NTASKS": "1", "SLURM_PROCID": "0",
           "SLURM_STEP_NUM_NODES": "1", "SLURM_NODEID": "0", "SLURM_STEP_TASKS_PER_NODE": "1",
           "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "JAX_COORDINATOR_PORT": str(_free_port())}
    code = ("import jax; from hgmt.training import cluster; cluster.initialize(); "
            "print(jax.process_count(), jax.config.values['jax_cuda_visible_devices'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["1", "0,1,2,3"]


def test_the_jax_requirement_takes_the_timeouts_cluster_gives_it():
    """`cluster.initialize` passes jax.distributed.initialize `heartbeat_timeout_seconds` (first
    in jax 0.7.0) and `shutdown_timeout_seconds` (first in jax 0.8.1): setup.cfg admits no jax
    without them, in install_requires and in every accelerator extra."""
    import inspect

    import jax

    from tests.conftest import setup_requirements

    with open(os.path.join(REPO, "hgmt/training/cluster.py")) as f:
        source = f.read()
    passed = {"heartbeat_timeout_seconds", "shutdown_timeout_seconds"}
    assert all(f"{name}=" in source for name in passed)
    assert passed <= set(inspect.signature(jax.distributed.initialize).parameters)
    jax_requirements = [r for r in setup_requirements("cuda12", "cuda13", "tpu")
                        if r.name == "jax"]
    assert len(jax_requirements) == 4
    for requirement in jax_requirements:
        assert not requirement.specifier.contains("0.8.0"), requirement
        assert requirement.specifier.contains("0.8.1"), requirement


def _stand_ins(folder, exit_status=0):
    """srun, scontrol and gcloud that append their arguments (and SRUN_CPUS_PER_TASK) to
    folder/calls, one line each; srun exits with `exit_status`."""
    calls = folder / "calls"
    for name, status in (("srun", exit_status), ("scontrol", 0), ("gcloud", 0)):
        path = folder / name
        path.write_text(f'#!/usr/bin/env bash\necho "{name} cpus=${{SRUN_CPUS_PER_TASK:-}} '
                        f'$*" >> {calls}\nexit {status}\n')
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return calls


def test_slurm_script_passes_flags_and_cpus_and_requeues_nothing_unwarned(tmp_path):
    """The training processes stopped by a signal that did not come through the script
    (`scancel --signal=TERM`, a preemption): their checkpoint is saved (status 75) and the
    job is not requeued (before, a `scancel --signal=TERM` was requeued)."""
    calls = _stand_ins(tmp_path, exit_status=75)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_CPUS_PER_TASK": "32",
           "SLURM_SUBMIT_DIR": REPO}
    run = subprocess.run(["bash", "launch/slurm.sbatch", "/w", "--config.batch_size=64"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 75, run.stderr
    assert calls.read_text().splitlines() == [
        "srun cpus=32 --kill-on-bad-exit=0 python3 -m hgmt.main --distributed "
        f"--config={REPO}/configs/default.py:tasks=all --workdir=/w --config.batch_size=64"]
    assert run.stdout.splitlines()[-1] == (
        "stopped by a signal: checkpoint saved; resubmit (or Slurm's requeue of a preempted "
        "job) resumes from it")


def test_slurm_script_returns_75_when_the_processes_exit_75_one_after_another(tmp_path):
    """After a SIGUSR1 each process saves and exits 75 in its own time: the step must let the
    last finish and return 75 (which the time limit's warning requeues). The stand-in srun
    runs two such tasks
    (0.1 s and 1 s) as Slurm does: with --kill-on-bad-exit=1 the first non-zero exit kills
    the other (128 + SIGKILL), else it returns the highest status."""
    calls = _stand_ins(tmp_path)
    (tmp_path / "srun").write_text(
        "#!/usr/bin/env bash\n"
        '[[ " $* " == *" --kill-on-bad-exit=1 "* ]] && kill_on_bad_exit=1\n'
        "(sleep 0.1; exit 75) & first=$!\n(sleep 1; exit 75) & last=$!\n"
        "wait $first; a=$?\n"
        "[[ -n ${kill_on_bad_exit:-} && $a -ne 0 ]] && kill -9 $last\n"
        "wait $last; b=$?\n"
        f'echo "srun $a $b" >> {calls}\nexit $((a > b ? a : b))\n')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_SUBMIT_DIR": REPO}
    run = subprocess.run(["bash", "launch/slurm.sbatch", "/w"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 75, run.stderr
    assert calls.read_text().splitlines() == ["srun 75 75"]


def test_slurm_script_with_a_flag_where_the_workdir_goes_stops_naming_it(tmp_path):
    """`sbatch launch/slurm.sbatch --config.batch_size=256` (WORKDIR left out): hgmt.main,
    run by an srun that runs its command, refuses the flag as a workdir in one line, before
    any folder is made (it would have trained the default config into
    ./--config.batch_size=256)."""
    srun = tmp_path / "bin" / "srun"
    srun.parent.mkdir()
    srun.write_text('#!/usr/bin/env bash\nshift\nexec "$@"\n')  # drops --kill-on-bad-exit
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{srun.parent}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n1", "SLURM_SUBMIT_DIR": str(tmp_path), "HGMT_REPO": REPO}
    run = subprocess.run(["bash", os.path.join(REPO, "launch/slurm.sbatch"),
                          "--config.batch_size=256"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr
    assert run.stderr.splitlines()[-1] == (
        "error: --workdir=--config.batch_size=256 starts with '-': a flag where the workdir "
        "goes? The launch scripts take WORKDIR first (launch/slurm.sbatch WORKDIR "
        "[CONFIG[:ARG]] [flags...]); for a folder whose name starts with '-' give "
        "./--config.batch_size=256")
    assert sorted(os.listdir(tmp_path)) == ["bin"]


def test_slurm_script_passes_the_time_limits_warning_to_srun_and_requeues(tmp_path):
    """Slurm sends the time limit's SIGUSR1 to the batch script alone (--signal=B:USR1@300):
    the script passes it to srun (which forwards it to the training processes: they save and
    exit 75) and requeues the job. Before, the warning went to the training processes and the
    script requeued on any status 75, so a `scancel --signal=TERM` was requeued too; and it
    waited through a SIGTERM of its own, which srun answers by killing the training processes
    (SIGKILL), so nothing was saved.

    The stand-in srun saves only once it has the signal (at most 60 s), so that it cannot end
    before the signal arrives however slowly a loaded machine runs the test."""
    calls, log = _stand_ins(tmp_path), tmp_path / "out"
    (tmp_path / "srun").write_text(
        f'#!/usr/bin/env bash\ntrap \'echo "srun got USR1" >> {calls}; warned=1\' USR1\n'
        f'echo "srun start" >> {calls}\n'
        f'for _ in $(seq 1200); do [ -n "${{warned:-}}" ] && break; sleep 0.05; done\n'
        f'echo "srun saved" >> {calls}\nexit 75\n')
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
           "SLURM_JOB_NODELIST": "n1", "SLURM_SUBMIT_DIR": REPO}
    with open(log, "w") as f:
        job = subprocess.Popen(["bash", "launch/slurm.sbatch", "/w"], cwd=REPO, env=env,
                               stdout=f, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (calls.exists() and "srun start" in calls.read_text()):
            assert time.monotonic() < deadline and job.poll() is None, log.read_text()
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)  # to the batch script alone, as --signal=B: does
        job.wait(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    out = log.read_text()
    assert job.returncode == 75, out
    assert calls.read_text().splitlines() == [
        "srun start", "srun got USR1", "srun saved", "scontrol cpus= requeue 42"]
    assert "SIGUSR1: the time limit is near" in out
    assert out.splitlines()[-1] == "time limit: checkpoint saved; requeueing job 42 to resume"
    assert "--signal=B:USR1@300" in _sbatch_options()


def _slurm_script_seen(tmp_path, names: tuple[str, ...], **environ: str):
    """launch/slurm.sbatch run with `environ` over a Slurm job's environment (none of `names`
    set), against an srun that appends NAME=value (or NAME=unset) of each of `names`, as the
    training processes would see them, to tmp_path/calls: the run and srun's lines so far."""
    calls = tmp_path / "calls"
    srun = tmp_path / "srun"
    shown = " ".join(f"{name}=${{{name}-unset}}" for name in names)
    srun.write_text(f'#!/usr/bin/env bash\necho "{shown}" >> {calls}\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    env = {name: value for name, value in os.environ.items() if name not in names}
    env.update({"PATH": f"{tmp_path}:{os.environ['PATH']}", "SLURM_JOB_ID": "42",
                "SLURM_JOB_NODELIST": "n[1-2]", "SLURM_SUBMIT_DIR": REPO, **environ})
    run = subprocess.run(["bash", "launch/slurm.sbatch", "/w"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    return run, calls.read_text().splitlines() if calls.exists() else []


def test_slurm_script_drops_a_coordinator_address_left_in_the_submitting_shell(tmp_path):
    """sbatch passes the submitting shell's environment on, and JAX takes
    JAX_COORDINATOR_ADDRESS before Slurm's coordinator: one left there (a run on one machine)
    made every task wait --connect_timeout for a coordinator not in the job. The script says
    so in one line on stderr and runs the training processes without it, Slurm naming the
    coordinator; JAX_COORDINATOR_PORT, which moves Slurm's port, is passed on."""
    names = ("JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT")
    run, _ = _slurm_script_seen(tmp_path, names, JAX_COORDINATOR_PORT="23456",
                                JAX_COORDINATOR_ADDRESS="localhost:1234")
    assert run.returncode == 0, run.stderr
    assert run.stderr == (
        "warning: JAX_COORDINATOR_ADDRESS=localhost:1234, from the shell that submitted the "
        "job, is not passed to the training processes: Slurm names the coordinator, the host "
        "of task 0. To choose it, pass --coordinator_address=host:port with the script's "
        "flags; to choose its port alone, set JAX_COORDINATOR_PORT\n")
    run, seen = _slurm_script_seen(tmp_path, names, JAX_COORDINATOR_PORT="23456")
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert seen == ["JAX_COORDINATOR_ADDRESS=unset JAX_COORDINATOR_PORT=23456"] * 2


def test_slurm_script_drops_a_bind_address_and_names_device_ids_from_the_submitting_shell(
        tmp_path):
    """JAX_COORDINATOR_BIND_ADDRESS, where task 0 listens, left in the submitting shell (from
    a run on one machine: another port, or a host not task 0's) would make task 0 listen where
    the other tasks do not connect: the script drops it, saying so. JAX_LOCAL_DEVICE_IDS, the
    GPUs every task drives of those it sees, may be meant: it is passed on, and named in the
    job's log (one left there, e.g. 0, makes each node drive one GPU)."""
    names = ("JAX_COORDINATOR_BIND_ADDRESS", "JAX_LOCAL_DEVICE_IDS")
    run, seen = _slurm_script_seen(tmp_path, names, JAX_COORDINATOR_BIND_ADDRESS="[::]:1234",
                                   JAX_LOCAL_DEVICE_IDS="0")
    assert run.returncode == 0, run.stderr
    assert run.stderr.splitlines() == [
        "warning: JAX_COORDINATOR_BIND_ADDRESS=[::]:1234, from the shell that submitted the "
        "job, is not passed to the training processes: task 0 listens on every address at "
        "the coordinator's port, which Slurm's job id chooses; to choose it, set "
        "JAX_COORDINATOR_PORT",
        "warning: JAX_LOCAL_DEVICE_IDS=0, from the shell that submitted the job, is passed "
        "to the training processes: each drives only these of the GPUs it sees; unset it "
        "before sbatch for each to drive them all"]
    assert seen == ["JAX_COORDINATOR_BIND_ADDRESS=unset JAX_LOCAL_DEVICE_IDS=0"]
    run, seen = _slurm_script_seen(tmp_path, names)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    assert seen[1:] == ["JAX_COORDINATOR_BIND_ADDRESS=unset JAX_LOCAL_DEVICE_IDS=unset"]


def _sbatch_options() -> list[str]:
    """The #SBATCH lines of launch/slurm.sbatch that sbatch reads: those before the first
    command."""
    options = []
    with open(os.path.join(REPO, "launch/slurm.sbatch")) as f:
        for line in f.read().splitlines()[1:]:
            if line.startswith("#SBATCH "):
                options.append(line.removeprefix("#SBATCH ").strip())
            elif line.strip() and not line.startswith("#"):
                break
    return options


def test_slurm_log_of_a_requeued_job_is_appended_to():
    """A requeued job keeps its id, so its segments share %x-%j.out: opened for appending, the
    first segment's log survives the second (Slurm truncates it unless the site sets
    JobFileAppend=1)."""
    options = _sbatch_options()
    assert "--requeue" in options and "--output=%x-%j.out" in options
    assert "--open-mode=append" in options


def test_slurm_script_submitted_from_elsewhere_runs_the_checkout_hgmt_repo_names(tmp_path):
    """sbatch runs a copy of the script in the directory it was called from: HGMT_REPO names
    the checkout, which gives the default config and PYTHONPATH; a relative WORKDIR stays the
    submitter's. Without it, from a directory that is no checkout, the job stops before srun."""
    (tmp_path / "bin").mkdir()
    (tmp_path / "submit").mkdir()
    calls = tmp_path / "calls"
    srun = tmp_path / "bin" / "srun"
    srun.write_text(f'#!/usr/bin/env bash\necho "$PWD|$PYTHONPATH|$*" >> {calls}\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    script = tmp_path / "slurm_script"  # where slurmd keeps its copy
    script.write_text(open(os.path.join(REPO, "launch/slurm.sbatch")).read())
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
           "SLURM_JOB_ID": "42", "SLURM_JOB_NODELIST": "n[1-2]",
           "SLURM_SUBMIT_DIR": str(tmp_path / "submit"), "PYTHONPATH": "/site"}
    run = subprocess.run(["bash", str(script), "runs/a"], cwd=tmp_path, capture_output=True,
                         env={**env, "HGMT_REPO": REPO}, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert calls.read_text().splitlines() == [
        f"{tmp_path / 'submit'}|{REPO}:/site|--kill-on-bad-exit=0 python3 -m hgmt.main "
        f"--distributed --config={REPO}/configs/default.py:tasks=all --workdir=runs/a"]
    calls.unlink()
    run = subprocess.run(["bash", str(script), "runs/a"], cwd=tmp_path, capture_output=True,
                         env=env, text=True, timeout=60)
    assert run.returncode == 2 and not calls.exists()
    assert run.stderr == (f"error: {tmp_path / 'submit'} is not an hgmt checkout; submit from "
                          f"the checkout, or set HGMT_REPO to it (HGMT_REPO=/path/to/hgmt "
                          f"sbatch ... launch/slurm.sbatch WORKDIR)\n")


def test_tpu_vm_script_quotes_flags_and_adds_none(tmp_path):
    """The command the workers' shells run gives hgmt.main each argument intact (spaces and
    quotes in a path or flag included): run here through bash, with a stand-in python3 that
    writes its arguments one a line."""
    calls = _stand_ins(tmp_path)
    (tmp_path / "hgmt").mkdir()
    echo = tmp_path / "hgmt-venv" / "bin" / "python"  # setup's virtual environment
    echo.parent.mkdir(parents=True)
    echo.write_text('#!/usr/bin/env bash\nprintf "%s\\n" "$@"\n')
    echo.chmod(echo.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "TPU": "t", "ZONE": "z",
           "HOME": str(tmp_path)}
    for extra, want in (
            ([], ["--config=configs/default.py:tasks=all", "--workdir=gs://b/r"]),
            (["configs/my demo's.py", "--config.tasks=pose2d+segm", "--config.note=a 'b' c"],
             ["--config=configs/my demo's.py", "--workdir=gs://b/r",
              "--config.tasks=pose2d+segm", "--config.note=a 'b' c"])):
        calls.unlink(missing_ok=True)
        subprocess.run(["bash", "launch/tpu_vm.sh", "train", "gs://b/r", *extra], cwd=REPO,
                       env=env, check=True, timeout=60)
        line = calls.read_text()
        prefix = "gcloud cpus= compute tpus tpu-vm ssh t --zone=z --worker=all --command="
        assert line.startswith(prefix) and line.count("\n") == 1, line
        remote = subprocess.run(["bash", "-c", line[len(prefix):-1]], cwd=tmp_path, env=env,
                                capture_output=True, text=True, check=True, timeout=60)
        assert remote.stdout.splitlines() == ["-m", "hgmt.main", "--distributed", *want]
        # The worker's ~/hgmt here is no checkout of this commit: said, and trained all the same.
        assert remote.stderr.startswith("warning: hgmt on "), remote.stderr
        assert remote.stderr.endswith(" is not at this checkout's commit "
                                      f"{_head()}: run setup again to train it\n")
    # A worker whose ~/hgmt is at this checkout's commit says nothing.
    shutil.rmtree(tmp_path / "hgmt")
    subprocess.run(["git", "clone", "-q", REPO, str(tmp_path / "hgmt")], check=True, timeout=120)
    subprocess.run(["git", "-C", str(tmp_path / "hgmt"), "checkout", "-q", _head()], check=True)
    remote = subprocess.run(["bash", "-c", line[len(prefix):-1]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=True, timeout=60)
    assert remote.stderr == "" and remote.stdout.splitlines()[:2] == ["-m", "hgmt.main"]
    # WORKDIR left out, or a local one (each worker's own disk on a slice of several).
    run = subprocess.run(["bash", "launch/tpu_vm.sh", "train", "--config.batch_size=8"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and run.stderr == (
        "error: train --config.batch_size=8: give WORKDIR first (launch/tpu_vm.sh train WORKDIR "
        "[CONFIG[:ARG]] [flags...])\n")
    run = subprocess.run(["bash", "launch/tpu_vm.sh", "train", "runs/all"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stderr == (
        "warning: WORKDIR runs/all is a local path, each worker's own disk; on a slice of "
        "several workers give a gs:// path they all read and write (docs/training.md)\n")


def _head() -> str:
    """This checkout's commit."""
    return subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_tpu_vm_help_needs_no_tpu_and_setup_names_uncommitted_changes(tmp_path):
    """`--help` prints the script's usage and what each command does, without TPU and ZONE
    set; `setup` says that the checkout's uncommitted changes are not installed."""
    env = {k: v for k, v in os.environ.items() if k not in ("TPU", "ZONE")}
    run = subprocess.run(["bash", "launch/tpu_vm.sh", "--help"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.startswith(
        "Cloud TPU VM pod slice: install hgmt on every worker"), run
    assert "  TPU=my-v4-32 ZONE=us-central2-b launch/tpu_vm.sh stop\n" in run.stdout
    checkout = tmp_path / "checkout"
    subprocess.run(["git", "clone", "-q", REPO, str(checkout)], check=True, timeout=120)
    with open(checkout / "README.md", "a") as f:
        f.write("an edit\n")
    calls = _stand_ins(tmp_path)
    run = subprocess.run(["bash", "launch/tpu_vm.sh", "setup", "https://example.org/hgmt"],
                         cwd=checkout, capture_output=True, text=True, timeout=60,
                         env={**env, "PATH": f"{tmp_path}:{env['PATH']}", "TPU": "t",
                              "ZONE": "z"})
    assert run.returncode == 0 and calls.exists()
    assert run.stderr == (f"warning: this checkout has uncommitted changes or new files, which "
                          f"setup does not install on the workers (they check out commit "
                          f"{_head()}); commit and push them, then run setup again\n")


def _remote_command(calls) -> str:
    """The command gcloud's stand-in was given to run on every worker."""
    line = calls.read_text()
    prefix = "gcloud cpus= compute tpus tpu-vm ssh t --zone=z --worker=all --command="
    assert line.startswith(prefix) and line.count("\n") == 1, line
    return line[len(prefix):-1]


def test_tpu_vm_setup_checks_out_this_commit_over_https_into_a_python_311_environment(
        tmp_path):
    """setup's worker command, run here through bash in a fresh home with a stand-in uv:
    clones the repository, checks out this checkout's commit (not the remote's newest), and
    makes ~/hgmt-venv of Python >= 3.11 (JAX's minimum; TPU VM images of Ubuntu 22.04 have
    3.10) to install hgmt and JAX's TPU runtime into. An ssh origin is taken over https (the
    workers hold no key for it); a commit the repository lacks is one line saying to push
    it. Before: a clone of the origin's newest commit over its ssh address, installed with the
    image's python3."""
    calls = _stand_ins(tmp_path)
    home, bin_ = tmp_path / "home", tmp_path / "bin"
    home.mkdir()
    bin_.mkdir()
    (bin_ / "uv").write_text(f'#!/usr/bin/env bash\necho "uv $*" >> {calls}.uv\n')
    (bin_ / "uv").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "TPU": "t", "ZONE": "z"}
    head = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()

    def setup(url: str) -> subprocess.CompletedProcess:
        calls.unlink(missing_ok=True)
        subprocess.run(["bash", "launch/tpu_vm.sh", "setup", url], cwd=REPO, env=env,
                       check=True, timeout=60)
        return subprocess.run(["bash", "-c", _remote_command(calls)], cwd=home, timeout=120,
                              env={**env, "HOME": str(home), "PATH": f"{bin_}:{env['PATH']}"},
                              capture_output=True, text=True)

    remote = setup(REPO)
    assert remote.returncode == 0, remote.stderr
    assert subprocess.run(["git", "-C", str(home / "hgmt"), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip() == head
    assert open(f"{calls}.uv").read().splitlines() == [
        f"uv venv -q --allow-existing --python >=3.11 {home}/hgmt-venv",
        f"uv pip install -q --python {home}/hgmt-venv/bin/python -e . jax[tpu]"]

    other = tmp_path / "other"  # a repository without this commit
    subprocess.run(["git", "init", "-q", str(other)], check=True)
    subprocess.run(["git", "-C", str(other), "-c", "user.name=u", "-c", "user.email=u@x",
                    "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    subprocess.run(["rm", "-rf", str(home / "hgmt")], check=True)
    remote = setup(str(other))
    assert remote.returncode == 1
    assert remote.stderr.splitlines()[-1] == (
        f"error: commit {head} is not at {other}; push it, then run setup again")

    for origin, https in (("git@github.com:me/hgmt.git", "https://github.com/me/hgmt.git"),
                          ("ssh://git@example.org:2222/me/hgmt", "https://example.org/me/hgmt"),
                          ("https://github.com/me/hgmt", "https://github.com/me/hgmt")):
        calls.unlink(missing_ok=True)
        subprocess.run(["bash", "launch/tpu_vm.sh", "setup", origin], cwd=REPO, env=env,
                       check=True, timeout=60)
        assert f"git clone -q {https} hgmt" in _remote_command(calls), origin


def test_tpu_vm_stop_sends_sigterm_to_the_trainers_alone(tmp_path):
    """`stop` runs pkill on every worker with a pattern that matches a trainer's command line
    (a virtual environment's python running hgmt.main --distributed) and neither the shell
    that started it nor the one running pkill."""
    calls = _stand_ins(tmp_path)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "TPU": "t", "ZONE": "z"}
    subprocess.run(["bash", "launch/tpu_vm.sh", "stop"], cwd=REPO, env=env, check=True,
                   timeout=60)
    remote = _remote_command(calls)
    assert remote.startswith('pkill -TERM -u "$USER" -f ')
    pattern = remote.split(" -f ", 1)[1].split("'")[1]
    grep = ["grep", "-cE", pattern]
    lines = ["/home/u/hgmt-venv/bin/python -m hgmt.main --distributed --config=c --workdir=w",
             "bash -c cd hgmt && ~/hgmt-venv/bin/python -m hgmt.main --distributed --config=c",
             f"bash -c {remote}", "/usr/bin/python3 -m hgmt.evaluate --workdir=w"]
    counts = [subprocess.run(grep, input=line, capture_output=True, text=True).stdout.strip()
              for line in lines]
    assert counts == ["1", "0", "0", "0"], counts


def test_local_script_takes_flags_without_a_config_from_any_directory(tmp_path):
    """From another directory, flags right after WORKDIR reach hgmt.main with the default
    config: here a batch that 2 devices cannot split, refused before anything is written."""
    run = subprocess.run([os.path.join(REPO, "launch/local.sh"), "run", "--config.batch_size=7"],
                         cwd=tmp_path, env={**os.environ, "CPU_DEVICES": "2"},
                         capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    assert "config.batch_size=7 must be divisible by the 2 devices" in run.stderr, run.stderr
    assert os.listdir(tmp_path) == []
    # A flag where WORKDIR goes (--help) prints the usage; it names no workdir to train in.
    for first, status in (("--help", 0), ("--config.total_steps=5", 2)):
        run = subprocess.run([os.path.join(REPO, "launch/local.sh"), first], cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert run.returncode == status and "launch/local.sh WORKDIR" in run.stderr, first
        assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("devices", ["abc", "0", "-1", "2x", "08", "00"])
def test_local_script_refuses_a_cpu_device_count_that_is_no_positive_number(tmp_path, devices):
    """CPU_DEVICES=abc made XLA print its hundreds of flags, 0 or -1 JAX's traceback
    ('Unable to initialize backend'): one line naming the variable, status 2, nothing
    written."""
    run = subprocess.run([os.path.join(REPO, "launch/local.sh"), "run"], cwd=tmp_path,
                         env={**os.environ, "CPU_DEVICES": devices},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stderr.splitlines() == [
        f"error: CPU_DEVICES={devices}: give the number of virtual CPU devices, 1 or more (e.g. "
        f"CPU_DEVICES=4), or leave it unset to train on the host's accelerators"]
    assert os.listdir(tmp_path) == []
