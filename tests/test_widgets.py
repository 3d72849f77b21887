"""The dashboard's views, fed by real runs of the native engine (no browser: widget state only)."""

from __future__ import annotations

import time

import numpy as np
import pytest

import llmlab
from llmlab.core.records import KVSnapshot, StepRecord
from llmlab.session.trace import Trace
from llmlab.widgets import Dashboard
from llmlab.widgets.state import KV_CACHED, KV_FREE, kv_state

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = llmlab.launch("native", dtype="float32", max_num_batched_tokens=64, num_blocks=40, block_size=8)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def run(engine):
    wl = llmlab.workloads.poisson(rate=20.0, n=8, prompt_len=(20, 60), output_len=(6, 16), seed=4)
    return engine.run(wl)


def test_figures_hold_every_step_of_the_run(run):
    d = run.show()
    n = len(run.trace.step_records)
    heat = d.schedule.figure.data[0]
    assert list(heat.x) == list(range(n))
    assert sorted(heat.y) == sorted(run.requests.req_id)
    bars = [t for t in d.schedule.figure.data if t.type == "bar"]
    assert list(bars[0].y) == run.steps.prefill_tokens.tolist()
    assert list(bars[1].y) == run.steps.decode_tokens.tolist()
    used = next(t for t in d.kv.figure.data if t.name == "used blocks")
    assert list(used.y) == run.steps.kv_used.tolist()
    ttft = d.latency.figure.data[0]
    np.testing.assert_allclose(sorted(ttft.x), sorted(run.requests.ttft))
    assert d.counter.value == f"step {n - 1}"


def test_schedule_cells_follow_the_slots(run):
    d = run.show()
    heat = d.schedule.figure.data[0]
    rows = list(heat.y)
    z = np.array(heat.z, dtype=float)
    for s in run.slots.itertuples():
        state = z[rows.index(s.req_id), s.step]
        assert state in (2, 3, 5)  # prefill, decode, or finished in that very step
        if state != 5:
            assert state == (2 if s.phase == "prefill" else 3)


def test_replay_shows_the_kv_owners_of_that_step(run):
    d = run.show()
    colours = {r: i for i, r in enumerate(run.trace.request_records)}
    for k in (1, len(run.trace.step_records) // 2):
        d.show_step(k)
        snap = run.trace.step_records[k].kv
        grid = np.array(d.kv.figure.data[0].z, dtype=float).ravel()
        for block, owners in snap.owners.items():
            assert grid[block] == colours[owners[0]]
        owned = set(snap.owners)
        free = [b for b in range(snap.num_blocks) if b not in owned]
        assert all(grid[b] in (KV_FREE, KV_CACHED) for b in free)
        assert f"step {k}:" in d.kv.figure.layout.title.text
        assert d.counter.value == f"step {k}"


def test_selected_request_highlights_its_blocks(run):
    d = run.show()
    k = len(run.trace.step_records) // 2
    snap = run.trace.step_records[k].kv
    rid = next(iter(snap.owners.values()))[0]
    d.request_pick.value = rid
    d.show_step(k)
    cols = np.array(d.kv.figure.data[0].z).shape[1]
    marked = {int(y) * cols + int(x) for x, y in zip(d.kv.figure.data[2].x, d.kv.figure.data[2].y, strict=True)}
    assert marked == {b for b, owners in snap.owners.items() if rid in owners}


def test_live_dashboard_updates_and_stop_button_stops(engine):
    wl = llmlab.workloads.synthetic(4, prompt_len=(20, 40), output_len=250, seed=1)
    run = engine.run(wl, live=True)
    d = run.show(max_fps=10)
    time.sleep(2.0)
    first = int(d.counter.value.split()[1])
    time.sleep(1.5)
    second = int(d.counter.value.split()[1])
    assert second > first
    d.stop_button.click()
    run.wait(timeout=10)
    assert run.status == "stopped"
    time.sleep(0.5)
    assert d.stop_button.disabled and "stopped" in d.status.value
    assert engine.blocks.num_used == 0


def test_loaded_run_shows_and_exports(run, tmp_path):
    path = run.save(tmp_path / "run.jsonl")
    back = llmlab.load(path)
    d = back.show()
    assert len(d.schedule.figure.data[0].x) == len(run.trace.step_records)
    html = back.to_html(tmp_path / "run.html").read_text()
    assert "plotly" in html and "Schedule" in html and len(html) > 1_000_000  # plotly.js is embedded
    bundle = back._repr_mimebundle_()
    assert {"text/plain", "text/html", "application/vnd.jupyter.widget-view+json"} <= set(bundle)


def test_large_pools_aggregate_and_ownerless_traces_show_counts():
    big = KVSnapshot(
        block_size=16, num_blocks=100_000, used=3, cached=0, free=99_997, owners={0: ["a"], 1: ["a"], 99_999: ["b"]}
    )
    state = kv_state(big, 0, {"a": 0, "b": 1}, max_cells=4096)
    assert state.blocks_per_cell == 25 and state.grid.size >= 4000
    assert state.owners[0] == "2/25 blocks used"
    counts = KVSnapshot(block_size=16, num_blocks=10, used=4, cached=1, free=5, owners=None)
    assert kv_state(counts, 0, {}).grid is None
    info = llmlab.session.run.Run(Trace(llmlab.core.records.EngineInfo("sim", "0", "m", "cpu", "float32")))
    rec = StepRecord(0, 0.0, 0.1, [], 0, 0, kv=counts)
    info.trace.add_step(rec)
    d = Dashboard(info)
    assert "4 used, 1 cached, 5 free" in d.kv.figure.layout.title.text
