"""`llmlab.compare`: one workload over a grid of engine settings, one measured row per grid point.
The memory columns come from each engine's `memory()` dict, the same call on every engine."""

from __future__ import annotations

import math

import pytest

import llmlab
from llmlab import workloads
from llmlab.measure.compare import ROW_COLUMNS, memory_row


@pytest.fixture(scope="module")
def sim_table():
    wl = workloads.synthetic(6, prompt_len=(32, 64), output_len=8, seed=0)
    return llmlab.compare(
        "sim", model="smollm2-135m", grid={"block_size": [16, 32]}, workload=wl, quality=False, warmup=False
    )


def test_compare_sim(sim_table):
    """The simulator in the grid: KV capacity is the engine's own pool, the speed a real number."""
    assert list(sim_table.columns) == ["block_size", *ROW_COLUMNS]
    assert list(sim_table["block_size"]) == [16, 32]
    for _, row in sim_table.iterrows():
        eng = llmlab.launch("sim", model="smollm2-135m", block_size=int(row["block_size"]))
        try:
            mem = eng.memory()
            num_blocks, block_size = eng.info.config["num_blocks"], eng.info.config["block_size"]
        finally:
            eng.close()
        assert block_size == row["block_size"]
        assert row["kv_tokens"] == num_blocks * block_size == mem["kv_tokens"]
        assert row["kv_bytes_per_token"] == pytest.approx(mem["kv_bytes_per_block"] / block_size)
        assert math.isfinite(row["output_tok_s"]) and row["output_tok_s"] > 0
        assert math.isnan(row["kl_mean"]) and math.isnan(row["top1"])  # quality=False measures none
    assert sim_table.answers.empty


def test_comparison_shows_a_figure(sim_table):
    fig = sim_table.show(quality="kl_mean")
    assert [t.name for t in fig.data if t.type == "scatter"] == [str(i) for i in sim_table.index]


class _Engine:
    def __init__(self, memory: dict) -> None:
        self._memory = memory

    def memory(self) -> dict:
        return self._memory


def test_memory_row_gives_nan_for_what_an_engine_does_not_know():
    full = memory_row(
        _Engine({"weight_bytes": 1000, "kv_bytes_per_block": 512, "block_size": 16, "num_blocks": 4, "kv_tokens": 64})
    )
    assert full == {"weight_bytes": 1000.0, "kv_bytes_per_token": 32.0, "kv_tokens": 64.0}
    part = memory_row(_Engine({"weight_bytes": None, "block_size": 16, "num_blocks": 4, "kv_tokens": 64}))
    assert math.isnan(part["weight_bytes"]) and math.isnan(part["kv_bytes_per_token"]) and part["kv_tokens"] == 64
