"""A default CPU thread count for training: the cores this process may use that other processes
leave idle."""
import math
import os
from typing import Optional, Tuple

__all__ = ["available_cores", "thread_choice", "default_threads"]


def _cgroup_quota() -> Optional[float]:
    """CPUs allowed by a cgroup v2 (``cpu.max``) or v1 (``cpu.cfs_quota_us``) quota, None when unlimited."""
    try:
        with open("/sys/fs/cgroup/cpu.max") as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us") as f, open("/sys/fs/cgroup/cpu/cpu.cfs_period_us") as g:
            quota, period = int(f.read()), int(g.read())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup CPU quota (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cores = min(cores, max(1, math.floor(quota)))
    return max(1, cores)


def thread_choice(load: Optional[float] = None) -> Tuple[int, str]:
    """``(threads, reason)``: the available cores (:func:`available_cores`) less those other
    processes keep busy (the 1-minute load average, rounded; ``load`` overrides it), at least 1.

    An intra-op pool wider than the idle cores makes every parallel region wait at its barrier
    for a thread that is descheduled: on a busy machine one thread is steady where two are not.
    Call it before the run starts (the run's own work then counts in the load)."""
    cores = available_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except (AttributeError, OSError):
            load = 0.0
    busy = int(round(load))
    threads = max(1, min(cores, cores - busy))
    return threads, f"{threads} of {cores} available cores (1-minute load {load:.1f})"


def default_threads() -> int:
    """The thread count of :func:`thread_choice` on the current load."""
    return thread_choice()[0]
