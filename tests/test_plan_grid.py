"""`llmlab.plan(...)`: one row per configuration, memory columns equal to the memory model's,
predictions from the simulator, clear errors for bad input; and the comparison widget's actions."""

from __future__ import annotations

import math

import numpy as np
import pytest

import llmlab
from llmlab import workloads
from llmlab.plan.memory import memory_plan


@pytest.fixture(scope="module")
def small_workload():
    return workloads.concurrency(8, n=16, prompt_len=(128, 512), output_len=(16, 48), seed=1)


@pytest.fixture(scope="module")
def table(small_workload):
    return llmlab.plan(
        model="llama-3.1-70b",
        gpu=["H100-SXM", "A100-80GB"],
        num_gpus=[1, 2, 4],
        weights=["bf16", "fp8"],
        workload=small_workload,
        price_per_hour=2.5,
    )


def test_one_row_per_configuration(table):
    assert len(table) == 2 * 3 * 2
    keys = set(zip(table.gpu, table.num_gpus, table.weights, strict=True))
    assert len(keys) == len(table)
    assert (table.tp * table.pp == table.num_gpus).all()
    assert set(table.kv_dtype[table.weights == "fp8"]) == {"fp8"}  # KV follows the weights by default


def test_memory_columns_are_the_memory_model(table):
    for r in table.itertuples():
        mp = memory_plan(
            "llama-3.1-70b", r.gpu, weights=r.weights, kv_dtype=r.kv_dtype, tp=r.tp, pp=r.pp, max_model_len=8192,
            max_num_batched_tokens=2048, max_num_seqs=256,
        )  # fmt: skip
        assert r.fits == mp.fits
        assert r.weights_gb == pytest.approx(mp.weights_bytes / 1e9)
        assert r.kv_gb == pytest.approx(mp.kv_bytes / 1e9)
        assert r.kv_tokens == mp.kv_tokens
        context = table.attrs["plan"]["context_len"]
        assert r.max_concurrency == (mp.max_concurrency(context) if mp.kv_blocks else 0)
        # the stacked bars add up to the whole GPU, or overflow it when the config does not fit
        total = r.weights_gb + r.kv_gb + r.activation_gb + r.free_gb
        memory = llmlab.plan.get_hardware(r.gpu).memory_bytes / 1e9
        if r.fits:
            assert total == pytest.approx(memory, rel=1e-6)
        else:
            assert total > 0.9 * memory and r.free_gb == 0


def test_rows_that_do_not_fit_say_by_how_much_and_have_no_prediction(table):
    one = table[(table.num_gpus == 1) & (table.weights == "bf16")]
    assert not one.fits.any()
    assert (one.shortfall_gb > 50).all()  # 141 GB of weights on one 80 GB GPU
    assert one.throughput_tok_s.isna().all()
    assert one.note.str.contains("short by").all()


def test_fitting_rows_have_predictions_and_cost(table):
    fit = table[table.fits]
    assert len(fit) >= 6
    for col in ("throughput_tok_s", "ttft_p50_s", "itl_p50_s", "cost_per_mtok"):
        assert (fit[col] > 0).all(), col
    expected = 2.5 * fit.num_gpus / 3600 / fit.throughput_tok_s * 1e6
    np.testing.assert_allclose(fit.cost_per_mtok, expected)
    # more GPUs of the same kind decode faster; an H100 beats an A100 at the same setting
    h = fit[(fit.gpu == "H100-SXM") & (fit.weights == "bf16")].set_index("num_gpus")
    assert h.loc[4, "itl_p50_s"] < h.loc[2, "itl_p50_s"]
    a = fit[(fit.gpu == "A100-80GB") & (fit.weights == "bf16")].set_index("num_gpus")
    assert h.loc[4, "itl_p50_s"] < a.loc[4, "itl_p50_s"]


def test_pareto_rows_are_not_dominated(table):
    front = table.pareto()
    assert len(front) >= 1
    for r in front.itertuples():
        better = table[(table.itl_p50_s < r.itl_p50_s) & (table.throughput_tok_s > r.throughput_tok_s)]
        assert better.empty


def test_simulate_a_row_gives_a_sim_run(table):
    i = int(np.flatnonzero(table.fits.to_numpy())[0])
    run = table.simulate(i)
    assert run.info.engine == "sim" and run.num_finished == 16
    assert run.info.config["tensor_parallel_size"] == table.tp.iloc[i]
    assert run.summary()["itl_p50"] == pytest.approx(table.itl_p50_s.iloc[i])
    with pytest.raises(ValueError, match="does not fit"):
        table.simulate(int(np.flatnonzero(~table.fits.to_numpy())[0]))


def test_plan_is_callable_and_a_package():
    from llmlab.plan import calibrate, validate

    assert callable(llmlab.plan)
    assert llmlab.plan.calibrate is calibrate and llmlab.plan.validate is validate
    t = llmlab.plan(model="llama-3.1-8b", gpu="H100-SXM", weights=["bf16", "fp8"], tp=[1, 2], simulate=False)
    assert len(t) == 4 and t.throughput_tok_s.isna().all()
    # hand check: 8.03e9 parameters in bf16 on one GPU, half of the layers' weights on each of two
    one = t[(t.tp == 1) & (t.weights == "bf16")].iloc[0]
    assert one.weights_gb == pytest.approx(16.06, rel=0.02)
    fp8 = t[(t.tp == 1) & (t.weights == "fp8")].iloc[0]
    # fp8 KV holds twice the tokens per GB of bf16 KV
    assert fp8.kv_tokens / fp8.kv_gb == pytest.approx(2 * one.kv_tokens / one.kv_gb, rel=0.01)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(gpu="H900"), "H900"),
        (dict(model="llama-9"), "llama-9"),
        (dict(tp=3), "tp=3"),
        (dict(num_gpus=4, tp=2), "num_gpus=4"),
        (dict(num_gpus=0), "num_gpus=0 must be a positive integer"),
        (dict(num_gpus=3, pp=2), "num_gpus=3 is not a multiple of pp=2"),
        (dict(pp=0), "pp=0 must be a positive integer"),
        (dict(weights=[]), r"weights=\[\] lists nothing"),
        (dict(gpu=()), r"gpu=\(\) lists nothing"),
        (dict(workload=workloads.synthetic(2, prompt_len=9000, output_len=10)), "max_model_len"),
        (dict(workload="no-such-preset"), "no-such-preset"),
    ],
)
def test_bad_input_raises_value_error(kwargs, words):
    with pytest.raises(ValueError, match=words):
        llmlab.plan(**{"model": "llama-3.1-8b", "gpu": "H100-SXM", "simulate": False, **kwargs})


# the widget ----------------------------------------------------------------------------


def test_widget_draws_bars_pareto_and_table(table):
    view = table.show()
    bars = view.memory.data
    assert [b.name for b in bars] == ["weights", "KV cache", "activations + workspace", "unused"]
    assert list(bars[0].y) == table.weights_gb.tolist()
    assert len(view.pareto.data[0].x) == int(table.throughput_tok_s.notna().sum())
    assert "<table" in view.table_view.value
    assert view.run_button.disabled  # no row runs on this machine's hardware


def test_widget_controls_reflect_the_grid_it_was_given(small_workload):
    """Every GPU type and GPU count passed is selected, KV dtypes as passed (not "auto"), and the
    price control names each GPU's price with "n/a" where none is known (never 0)."""
    from llmlab.widgets.plan_view import parse_price

    t = llmlab.plan(
        model="llama-3.1-70b",
        gpu=["H100-SXM", "A100-80GB", "L40S"],
        num_gpus=[2, 4],
        weights=["bf16", "int4"],
        kv_dtype=["bf16", "fp8"],
        workload=small_workload,
        price_per_hour={"H100-SXM": 3.0, "A100-80GB": 1.8},
        simulate=False,
    )
    view = t.show()
    assert set(view.gpu.value) == set(t.gpu) == {"H100-SXM", "A100-80GB", "L40S"}
    assert set(view.num_gpus.value) == {2, 4}
    assert set(view.kv.value) == {"bf16", "fp8"}
    assert set(view.weights.value) == {"bf16", "int4"}
    assert view.price.value == "H100-SXM=3, A100-80GB=1.8, L40S=n/a"
    assert parse_price(view.price.value) == {"H100-SXM": 3.0, "A100-80GB": 1.8}
    # compare with the controls as they are rebuilds the same grid
    view.on_compare()
    assert view.status.value == ""
    key = ["gpu", "num_gpus", "weights", "kv_dtype"]
    assert sorted(map(tuple, view.table[key].values.tolist())) == sorted(map(tuple, t[key].values.tolist()))
    # without kv_dtype the control says "auto" (each weight dtype's own KV dtype)
    assert llmlab.plan(model="llama-3.1-8b", simulate=False, workload=small_workload).show().kv.value == ("auto",)


def test_widget_price_text_reads_back_or_says_what_is_wrong():
    from llmlab.widgets.plan_view import parse_price, price_text

    assert price_text(2.5, ["H100-SXM"]) == "2.5" and parse_price("2.5") == 2.5
    assert price_text(None, ["H100-SXM"]) == "H100-SXM=n/a" and parse_price("H100-SXM=n/a") is None
    assert parse_price("") is None
    with pytest.raises(ValueError, match="'cheap'.*give a number"):
        parse_price("cheap")
    with pytest.raises(ValueError, match="'L4=x'"):
        parse_price("L4=x")


def test_widget_table_fits_a_notebook_and_keeps_the_cost_column(table):
    view = table.show()
    html_text = view.table_view.value
    header = html_text.split("</thead>")[0]
    assert header.count("<th") - 1 <= 15  # the index header plus at most 14 columns
    assert "$/M tok" in header and "overflow-x:auto" in html_text
    for dropped in ("activation_gb", "free_gb", "shortfall_gb", "kv_tokens", ">model<"):
        assert dropped not in header
    costs = table.cost_per_mtok.dropna()
    assert len(costs) and all(f"${c:.2f}" in html_text for c in costs)


def test_widget_pareto_draws_a_bold_frontier_line_and_clips_no_point(table):
    view = table.show()
    points, frontier = view.pareto.data
    assert "lines" in frontier.mode and frontier.line.width >= 3
    front = table.pareto()
    assert len(frontier.x) == len(front) >= 1
    assert sorted(frontier.x) == sorted((front.itl_p50_s * 1e3).tolist())
    xr, yr = view.pareto.layout.xaxis.range, view.pareto.layout.yaxis.range
    xs, ys = np.asarray(points.x, dtype=float), np.asarray(points.y, dtype=float)
    assert xr[0] < xs.min() and xs.max() < xr[1] and yr[0] < ys.min() and ys.max() < yr[1]
    # a margin on each side, so the markers (not only their centres) stay inside
    assert xs.max() + 0.05 * (xs.max() - xs.min()) < xr[1] and ys.max() + 0.05 * (ys.max() - ys.min()) < yr[1]


def test_widget_simulate_opens_a_dashboard(table):
    from llmlab.widgets import Dashboard

    view = table.show()
    run = view.on_simulate()
    assert run is not None and run.info.engine == "sim"
    assert isinstance(view.result.children[0], Dashboard)


def test_widget_compare_rebuilds_and_reports_bad_choices(table):
    view = table.show()
    view.model.value = "llama-3.1-8b"
    view.gpu.value = ("H100-SXM",)
    view.num_gpus.value = (2,)
    view.weights.value = ("bf16",)
    view.on_compare()
    assert set(view.table.model) == {"llama-3.1-8b"} and set(view.table.num_gpus) == {2}
    assert len(view.memory.data[0].x) == len(view.table)
    view.model.value = "smollm2-135m"  # 9 heads: tp=2 cannot split them
    view.on_compare()
    assert "tp=2" in view.status.value and set(view.table.model) == {"llama-3.1-8b"}


def test_widget_run_refuses_a_row_this_machine_cannot_run(table):
    """The run action goes through llmlab.plan.grid.run_row, which launches nothing for a remote GPU row."""
    from llmlab.plan.grid import run_row

    i = int(np.flatnonzero(table.fits.to_numpy())[0])
    with pytest.raises(ValueError, match="only rows on the local 'cpu'.*simulate it instead"):
        run_row(table, i)
    view = table.show()
    view.row.value = i
    assert view.on_run() is None and view.last_measured is None
    assert "only rows on the local" in view.status.value and "H100-SXM" in view.status.value


@pytest.mark.slow
def test_widget_runs_a_local_row_for_real(smollm2_path):
    wl = workloads.synthetic(3, prompt_len=(16, 32), output_len=4, seed=2)
    t = llmlab.plan(model="smollm2-135m", gpu="cpu", weights=["fp32"], workload=wl, max_num_seqs=8)
    view = t.show()
    assert not view.run_button.disabled
    measured = view.on_run()
    assert measured is not None and measured.info.engine == "native" and measured.num_finished == 3
    assert view.last_run.info.engine == "sim"
    assert view.last_run.info.config["num_blocks"] == measured.info.config["num_blocks"]
    assert "measured" in view.status.value and "predicted" in view.status.value
    assert math.isfinite(measured.summary()["output_tok_s"])
