"""PyTorch's CPU threads: the wait policy llmlab sets on import, and the thread count fitted to the
CPUs a process may use (affinity and cgroup quota)."""

from __future__ import annotations

import os
import subprocess
import sys

import torch

from llmlab import cpu_threads


def _policy_in_fresh_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_llmlab_first_sets_passive_and_says_so():
    out = _policy_in_fresh_python(
        "import os, llmlab; print(os.environ['OMP_WAIT_POLICY'], '|', llmlab.cpu_threads.NOTE)"
    )
    policy, note = out.split(" | ")
    assert policy == cpu_threads.WAIT_POLICY == "PASSIVE"
    assert "set by llmlab" in note


def test_a_users_policy_and_an_earlier_torch_are_left_alone():
    assert _policy_in_fresh_python(
        "import os, llmlab; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE"
    ) == ("ACTIVE")
    out = _policy_in_fresh_python(
        "import torch, os, llmlab; print(os.environ.get('OMP_WAIT_POLICY'), llmlab.cpu_threads.NOTE)"
    )
    assert out.startswith("None ") and "imported before llmlab" in out


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    assert cpu_threads.cgroup_cpu_quota(tmp_path) is None  # no files: unlimited
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_threads.cgroup_cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_threads.cgroup_cpu_quota(tmp_path) == 1.5
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_threads.cgroup_cpu_quota(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    assert cpu_threads.cgroup_cpu_quota(v1) == 2.0


def test_usable_cpus_follows_the_quota_rounded_up(monkeypatch):
    monkeypatch.setattr(cpu_threads, "cgroup_cpu_quota", lambda: 0.5)
    assert cpu_threads.usable_cpus() == 1
    monkeypatch.setattr(cpu_threads, "cgroup_cpu_quota", lambda: None)
    assert cpu_threads.usable_cpus() == len(os.sched_getaffinity(0))


def test_fit_threads_lowers_only_a_count_above_the_usable_cpus(monkeypatch):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(cpu_threads, "usable_cpus", lambda: 1)
        note = cpu_threads.fit_threads()
        assert torch.get_num_threads() == 1 and "from 2 to 1" in note
        assert cpu_threads.fit_threads() is None  # already fits
    finally:
        torch.set_num_threads(before)
