"""The cores hgmt's worker pools are sized by: the process's CPU affinity (a Slurm job's cpuset,
`taskset`), capped by a Slurm job's cpus-per-task and a container's cgroup CPU quota."""

import os
import subprocess
import sys

import pytest

from hgmt.cores import usable_cores

AFFINITY = len(os.sched_getaffinity(0))


def test_a_process_pinned_to_one_core_may_use_one_whatever_the_machine_has():
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); "
            "from hgmt.cores import usable_cores; "
            "from hgmt.data.input_pipeline import auto_worker_count; "
            "print(usable_cores(), auto_worker_count(-1), os.cpu_count())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[:2] == ["1", "0"] and int(out[2]) == os.cpu_count()


def _cgroup(tmp_path, files: dict[str, str]) -> str:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return str(tmp_path)


def test_a_cgroup_quota_caps_the_cores(tmp_path, monkeypatch):
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    # cgroup v2: cpu.max "<quota> <period>" in microseconds, or "max" for none.
    assert usable_cores(_cgroup(tmp_path / "a", {"cpu.max": "100000 100000\n"})) == 1
    assert usable_cores(_cgroup(tmp_path / "b", {"cpu.max": "50000 100000\n"})) == 1  # rounded up
    assert usable_cores(_cgroup(tmp_path / "c", {"cpu.max": "150000 100000\n"})) == min(
        AFFINITY, 2)
    assert usable_cores(_cgroup(tmp_path / "d", {"cpu.max": "max 100000\n"})) == AFFINITY
    # cgroup v1: cpu/cpu.cfs_quota_us (-1 for none) over cpu/cpu.cfs_period_us.
    v1 = {"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}
    assert usable_cores(_cgroup(tmp_path / "e", v1)) == 1
    v1["cpu/cpu.cfs_quota_us"] = "-1\n"
    assert usable_cores(_cgroup(tmp_path / "f", v1)) == AFFINITY
    assert usable_cores(str(tmp_path / "none")) == AFFINITY  # no cgroup files: no quota


@pytest.mark.parametrize("value, cores", [("1", "1"), ("999", None), ("", None), ("two", None)])
def test_a_slurm_jobs_cpus_per_task_caps_the_cores(value, cores):
    """Where Slurm does not bind cores, the affinity is the whole node's: its
    `--cpus-per-task` (SLURM_CPUS_PER_TASK) caps the count; more than the affinity, or not a
    count, changes nothing."""
    env = {**os.environ, "SLURM_CPUS_PER_TASK": value}
    out = subprocess.run([sys.executable, "-c", "from hgmt.cores import usable_cores; "
                          "print(usable_cores('/nonexistent'))"], env=env,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == (cores or str(AFFINITY))
