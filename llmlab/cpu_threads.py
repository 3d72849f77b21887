"""How PyTorch's CPU threads wait and how many there are, chosen so a shared machine stays usable.

PyTorch splits each CPU operation over OpenMP threads that meet at a barrier after it. By
default a waiting thread spins before it sleeps. When another process wants one of the cores (a
browser drawing the live dashboard, the Jupyter server, another kernel), a spinning thread holds
a core the thread it waits for needs: with one busy process beside it, a 90 ms decode step took
2 s at the median and 18 s at worst (`python benchmarks/cpu_contention.py`). With the PASSIVE
policy a waiting thread sleeps at once: the step costs about 1.3x when the machine is free, and
under the same competition about 1.8x, steadily. llmlab sets PASSIVE when it is imported before
PyTorch, unless `OMP_WAIT_POLICY` is already set: `OMP_WAIT_POLICY=ACTIVE` (set before Python
starts) is faster on a machine the notebook has to itself.

PyTorch also starts one thread per core it sees, not per core the process may use: in a
container limited to 2 CPUs on a 32-core host, 32 threads share 2 CPUs. `fit_threads` lowers the
count to the CPUs the process may use (its affinity mask and its cgroup's CPU quota).

This module imports nothing heavy, so `llmlab/__init__.py` can run it before PyTorch loads.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

WAIT_POLICY = "PASSIVE"
NOTE = "llmlab was not imported as a package: the wait policy was left as it was"  # set on import of llmlab


def default_wait_policy() -> str:
    """Set `OMP_WAIT_POLICY=PASSIVE` if no one has chosen and PyTorch has not started OpenMP yet;
    return one line saying which policy is in effect and why (for `llmlab info`)."""
    chosen = os.environ.get("OMP_WAIT_POLICY")
    if chosen:
        return f"OMP_WAIT_POLICY={chosen}, as set before llmlab was imported"
    if "torch" in sys.modules:
        return "OpenMP's default (spin, then sleep): PyTorch was imported before llmlab, so llmlab left it"
    os.environ["OMP_WAIT_POLICY"] = WAIT_POLICY
    return f"OMP_WAIT_POLICY={WAIT_POLICY}, set by llmlab: waiting threads sleep, so other processes slow it little"


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs this process's cgroup may use (its CPU quota over its period), or None when unlimited."""
    try:  # cgroup v2: "max 100000" or "200000 100000"
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota <= 0 else quota / period
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, lowered to its cgroup quota (rounded up)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return cpus


def fit_threads() -> str | None:
    """Lower PyTorch's CPU thread count to the CPUs this process may use; say so, or None if it fit."""
    import torch

    threads, cpus = torch.get_num_threads(), usable_cpus()
    if threads <= cpus:
        return None
    torch.set_num_threads(cpus)
    return f"PyTorch's CPU threads lowered from {threads} to {cpus}, the CPUs this process may use"
