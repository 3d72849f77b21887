"""The CPU default dtype: measured once on CPUs that claim native bfloat16, cached, overridable."""

from __future__ import annotations

import json

import pytest
import torch

from llmlab.engines.native import cpu_dtype
from llmlab.engines.native.engine import pick_dtype


def test_measure_times_both_dtypes_and_keeps_bfloat16_only_when_clearly_faster():
    choice = cpu_dtype.measure(rounds=3)
    assert choice.float32_ms > 0 and choice.bfloat16_ms > 0
    ratio = float(choice.reason.split("measured ")[1].split("x")[0])
    assert (choice.dtype == "bfloat16") == (ratio >= cpu_dtype.MIN_SPEEDUP)


def test_choose_measures_once_per_machine_and_caches(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMLAB_CPU_DTYPE", raising=False)
    monkeypatch.setattr(cpu_dtype, "native_bf16_flag", lambda: "avx512_bf16")
    calls = []
    real = cpu_dtype.measure

    def counted():
        calls.append(1)
        return real(rounds=1)

    monkeypatch.setattr(cpu_dtype, "measure", counted)
    first = cpu_dtype.choose(tmp_path)
    second = cpu_dtype.choose(tmp_path)
    assert len(calls) == 1 and first == second
    assert json.loads((tmp_path / cpu_dtype.CACHE_NAME).read_text())  # written
    (tmp_path / cpu_dtype.CACHE_NAME).write_text("{not json")  # a damaged cache is measured again
    assert cpu_dtype.choose(tmp_path).dtype in ("float32", "bfloat16") and len(calls) == 2


def test_without_native_bfloat16_no_probe_runs(tmp_path, monkeypatch):
    monkeypatch.delenv("LLMLAB_CPU_DTYPE", raising=False)
    monkeypatch.setattr(cpu_dtype, "native_bf16_flag", lambda: None)
    monkeypatch.setattr(cpu_dtype, "measure", lambda: pytest.fail("probed a CPU without native bfloat16"))
    assert cpu_dtype.choose(tmp_path).dtype == "float32"
    assert not (tmp_path / cpu_dtype.CACHE_NAME).exists()


def test_environment_override_and_its_check(monkeypatch):
    monkeypatch.setenv("LLMLAB_CPU_DTYPE", "bfloat16")
    assert pick_dtype(None, torch.device("cpu")) == torch.bfloat16
    monkeypatch.setenv("LLMLAB_CPU_DTYPE", "float16")
    with pytest.raises(ValueError, match="LLMLAB_CPU_DTYPE='float16'"):
        pick_dtype(None, torch.device("cpu"))
