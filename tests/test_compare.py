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
    assert [t.name for t in fig.data if t.type == "scatter"] == [f"{n}: {i}" for n, i in enumerate(sim_table.index, 1)]


def test_comparison_labels_are_not_cut_and_the_legend_clears_the_axis_title():
    """Long grid labels: the plots tag each point with its number, the legend under the x-axis
    title names it in full, and the figure grows to hold one legend row per point."""
    import pandas as pd

    from llmlab.widgets.compare_view import LEGEND_GAP_PX, comparison_figure

    labels = ["weights=fp32, kv_dtype=auto", "weights=int8, kv_dtype=auto", "weights=int8, kv_dtype=fp8"]
    table = pd.DataFrame(
        {"output_tok_s": [20.0, 22.9, 21.5], "top1": [1.0, 0.97, 0.95], "weight_bytes": [5e8, 1.5e8, 1.5e8]},
        index=labels,
    ).assign(kv_tokens=[4096, 4096, 8192])
    fig = comparison_figure(table, height=420)
    points = [t for t in fig.data if t.type == "scatter"]
    assert [t.name for t in points] == [f"{n}: {label}" for n, label in enumerate(labels, 1)]  # full labels
    assert all(len(t.text[0]) <= 2 for t in points)  # inside the plot only short tags, which fit
    assert {b.x[0] for b in fig.data if b.type == "bar"} == {"1", "2", "3"}
    lay = fig.layout
    plot_px = lay.height - lay.margin.t - lay.margin.b
    assert plot_px >= 300  # the legend adds room rather than squeezing the plots
    assert lay.legend.yanchor == "top" and -lay.legend.y * plot_px >= LEGEND_GAP_PX - 1  # below the axis title
    assert lay.margin.b >= -lay.legend.y * plot_px + 22 * len(labels)  # and every legend row inside the figure


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
