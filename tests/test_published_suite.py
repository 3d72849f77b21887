"""The published-results suite (benchmarks/published/published.csv) is well-formed, covers what
it claims, and every row runs through the simulator's launch path."""

from __future__ import annotations

import csv
import importlib.util
import math
from pathlib import Path

import pytest

import llmlab
from llmlab.models.shapes import get_shape
from llmlab.plan import get_hardware

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "published" / "published.csv"
COLUMNS = (
    "id source_id model gpu num_gpus tp pp weights kv_dtype input_len output_len dataset load load_value "
    "num_requests engine engine_version knobs metric value unit reading_error_pct source notes"
).split()
UNITS = {"output_throughput": "tok/s", "decode_rate_per_request": "tok/s", "ttft_mean": "ms", "itl_mean": "ms"}
UNITS["e2e_latency_mean"] = "ms"


def rows() -> list[dict[str, str]]:
    with open(SUITE, newline="") as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == COLUMNS
        return list(reader)


def test_suite_rows_are_complete_and_consistent():
    suite = rows()
    assert len(suite) >= 30
    assert len({r["source_id"] for r in suite}) >= 4
    assert len({r["id"] for r in suite}) == len(suite)
    for r in suite:
        where = f"row {r['id']}"
        assert r["unit"] == UNITS[r["metric"]], where
        assert float(r["value"]) > 0 and math.isfinite(float(r["value"])), where
        assert float(r["reading_error_pct"]) >= 0, where
        assert r["source"].startswith("https://") and r["engine"] and r["engine_version"], where
        assert int(r["tp"]) * int(r["pp"]) == int(r["num_gpus"]), where
        assert int(r["input_len"]) >= 1 and int(r["output_len"]) >= 1, where
        assert r["load"] in ("all_at_once", "concurrency"), where
        if r["load"] == "concurrency":
            assert int(r["load_value"]) >= 1, where
        get_shape(r["model"]), get_hardware(r["gpu"])  # names the simulator knows
        if "github.com" in r["source"]:
            assert "/blob/" in r["source"], f"{where}: a repository source names its commit"


def test_suite_covers_sizes_gpus_dtypes_and_loads():
    suite = rows()
    assert {"llama-3.1-8b", "llama-3.1-70b"} <= {r["model"] for r in suite}
    assert {"1", "2", "4", "8"} <= {r["num_gpus"] for r in suite}
    assert {"fp8", "bf16"} <= {r["weights"] for r in suite}
    ratios = [int(r["input_len"]) / int(r["output_len"]) for r in suite]
    assert min(ratios) < 0.5 and max(ratios) > 5 and any(0.5 <= x <= 2 for x in ratios)  # decode-, prefill-heavy, mixed
    latency = [r for r in suite if r["unit"] == "ms"]
    assert any(r["load"] == "concurrency" and r["load_value"] == "1" for r in latency)
    assert any(r["load"] == "all_at_once" and r["metric"] == "output_throughput" for r in suite)


def test_a_row_runs_through_the_simulator():
    spec = importlib.util.spec_from_file_location("sim_vs_published", ROOT / "benchmarks" / "sim_vs_published.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    row = next(r for r in rows() if r["metric"] == "itl_mean" and r["load_value"] == "1")
    predicted = bench.predict(row, max_requests=3)
    assert 0.5 < predicted / float(row["value"]) < 2.0  # the same order as published: a unit slip would be 1000x
    assert bench.engine_settings(row)  # every engine in the suite has its knobs
    assert {r["engine"] for r in rows()} <= set(bench.ENGINE_KNOBS)


@pytest.mark.parametrize("field", ["value", "source"])
def test_no_row_leaves_a_required_field_empty(field):
    assert all(r[field].strip() for r in rows())


def test_error_bands_cover_the_suites_metrics_and_widen_a_prediction():
    from llmlab.plan.accuracy import SUITE_BANDS, kind_of, with_bands

    kinds = {kind_of(r["metric"]) for r in rows()}
    assert kinds == set(SUITE_BANDS)  # every metric of the suite falls in a band the notebooks show
    counts = {k: sum(kind_of(r["metric"]) == k for r in rows()) for k in SUITE_BANDS}
    assert counts == {k: b.rows for k, b in SUITE_BANDS.items()}  # the bands were measured on these rows
    run = llmlab.launch("sim", model="llama-3.1-8b", gpu="H100-SXM").run(llmlab.workloads.synthetic(8, 256, 32))
    table = with_bands(run.summary(), ["output_tok_s", "ttft_p50"])
    for metric, row in table.iterrows():
        band = SUITE_BANDS[kind_of(metric)]
        assert row["at worst from"] < row["likely from"] < row["predicted"] < row["likely to"] < row["at worst to"]
        assert row["likely to"] == pytest.approx(row["predicted"] * (1 + band.median))
    assert kind_of("ttft_p50") == "latency" and kind_of("output_tok_s") == "throughput"
