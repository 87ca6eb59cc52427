"""The CPU cores this process may use, which sizes hgmt's worker pools (the loader's grain
workers for `config.worker_count=-1`, the demo writer's processes): on a workstation all of
the machine's, under `taskset` or a Slurm step that binds cores those of its CPU affinity, in
a Slurm job no more than its `--cpus-per-task` (`SLURM_CPUS_PER_TASK`, for clusters that do
not bind cores), in a container with a CPU limit (`docker --cpus`, a Kubernetes limit) no
more than its cgroup quota. `os.cpu_count()` counts the whole machine in all of these. The
quota read is the one at the cgroup mount's root, which is the container's own in a container
with its own cgroup namespace (Docker's and Kubernetes' default); a quota set on a nested
cgroup outside a container (e.g. systemd's `CPUQuota=`) is not seen."""

from __future__ import annotations

import math
import os


def _cgroup_quota(root: str) -> float | None:
    """CPUs of the cgroup CPU quota under `root` (cgroup v2's `cpu.max`, v1's
    `cpu/cpu.cfs_quota_us` over `cpu.cfs_period_us`), or None without one."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period = int(f.read())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def usable_cores(cgroup_root: str = "/sys/fs/cgroup") -> int:
    """The cores this process may run on: its CPU affinity, at most `SLURM_CPUS_PER_TASK` and
    its cgroup's CPU quota rounded up; at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity on macOS
        cores = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm.isdecimal() and int(slurm) > 0:
        cores = min(cores, int(slurm))
    quota = _cgroup_quota(cgroup_root)
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)
