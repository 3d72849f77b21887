"""The dashboard's views, fed by real runs of the native engine (no browser: widget state only)."""

from __future__ import annotations

import time

import numpy as np
import plotly.basewidget
import pytest

import llmlab
from llmlab.core.records import KVSnapshot, StepRecord
from llmlab.session.trace import Trace
from llmlab.widgets import Dashboard
from llmlab.widgets.colors import (
    BUDGET_COLOUR,
    CACHED_COLOUR,
    FREE_COLOUR,
    LINE_COLOURS,
    PHASE_COLOURS,
    REQUEST_PALETTE,
    STATE_COLOURS,
)
from llmlab.widgets.state import KV_CACHED, KV_FREE, kv_state, peak_kv_step

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
    n = len(run.trace.step_records)
    d = run.show(step=n - 1)
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
    d = run.show(step=-1)  # the last step: every slot on show
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
    assert_palette(d)
    assert d.stop_button.button_style == "danger" and d.stop_button.description == "Stop"
    d.stop_button.click()
    run.wait(timeout=10)
    assert run.status == "stopped"
    time.sleep(0.5)
    assert d.stop_button.disabled and "stopped" in d.status.value
    assert d.stop_button.description == "stopped" and d.stop_button.button_style == ""
    assert engine.blocks.num_used == 0
    assert_palette(d)


def test_loaded_run_shows_and_exports(run, tmp_path):
    path = run.save(tmp_path / "run.jsonl")
    back = llmlab.load(path)
    d = back.show(step=-1)
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
    assert d.kv.figure.layout.annotations[0].text.startswith("10 blocks: owners not recorded")


# --- one palette, the opening step, what is hidden, labels ------------------------------------

PALETTE = {
    *STATE_COLOURS,
    CACHED_COLOUR,
    FREE_COLOUR,
    *PHASE_COLOURS.values(),
    *LINE_COLOURS.values(),
    BUDGET_COLOUR,
    *REQUEST_PALETTE,
}


def trace_colours(trace) -> list:
    """The colours a trace states for itself (marker and line), None where it states none."""
    found = []
    marker = getattr(trace, "marker", None)
    if trace.type in ("bar", "histogram") or (trace.type == "scatter" and "markers" in (trace.mode or "")):
        colour = marker.color if marker is not None else None
        found += list(colour) if isinstance(colour, (tuple, list)) else [colour]
    if trace.type == "scatter" and "lines" in (trace.mode or ""):
        found.append(trace.line.color)
    return found


def assert_palette(d: Dashboard) -> None:
    """Every bar, histogram, state marker and line of the dashboard is drawn in a palette colour."""
    sched = {t.name: t for t in d.schedule.figure.data}
    assert sched["prefill tokens"].marker.color == PHASE_COLOURS["prefill"]
    assert sched["decode tokens"].marker.color == PHASE_COLOURS["decode"]
    lat = {t.name: t for t in d.latency.figure.data}
    assert lat["TTFT"].marker.color == PHASE_COLOURS["prefill"]
    assert lat["ITL"].marker.color == PHASE_COLOURS["decode"]
    checked = 0
    for fig in (d.schedule.figure, d.kv.figure, d.latency.figure):
        for trace in fig.data:
            if trace.name in ("shared block", "selected request"):  # outlines drawn over the map, not fills
                continue
            for colour in trace_colours(trace):
                assert colour in PALETTE, (trace.name, colour)
                checked += 1
    assert checked >= 15


def test_finished_dashboard_draws_in_the_palette_and_sends_one_trace_per_message(run, monkeypatch):
    """The root cause of plotly's default colours: a restyle batched over several traces pads what a
    trace leaves unchanged with "undefined", which the front end stores over the bars' colours."""
    sent = []
    original = plotly.basewidget.BaseFigureWidget._send_update_msg

    def spy(self, restyle_data, relayout_data, trace_indexes=None, source_view_id=None):
        sent.append(trace_indexes)
        return original(self, restyle_data, relayout_data, trace_indexes, source_view_id)

    monkeypatch.setattr(plotly.basewidget.BaseFigureWidget, "_send_update_msg", spy)
    d = run.show()
    assert_palette(d)
    d.show_step(1)
    assert sent and all(idx is None or len(idx) <= 1 for idx in sent), sent
    assert_palette(d)


def _step(used: int | None, i: int) -> StepRecord:
    kv = None if used is None else KVSnapshot(block_size=8, num_blocks=10, used=used, cached=0, free=10 - used)
    return StepRecord(i, float(i), float(i) + 0.1, [], 0, 0, kv=kv)


def test_peak_kv_step_is_the_first_step_of_most_blocks_used():
    assert peak_kv_step([_step(u, i) for i, u in enumerate([1, 4, 7, 3, 7, 0])]) == 2
    assert peak_kv_step([_step(u, i) for i, u in enumerate([0, 0, 0])]) == 0
    assert peak_kv_step([_step(u, i) for i, u in enumerate([None, 2, None])]) == 1
    assert peak_kv_step([_step(None, i) for i in range(4)]) == 3  # no KV recorded: the last step
    assert peak_kv_step([]) == 0


def test_finished_run_opens_at_peak_kv_or_the_step_asked_for(run):
    steps = run.trace.step_records
    peak = peak_kv_step(steps)
    assert steps[peak].kv.used == max(s.kv.used for s in steps) > 0
    d = run.show()
    assert d.counter.value == f"step {peak}" and d.slider.value == peak
    assert f"step {peak}:" in d.kv.figure.layout.title.text
    assert d.stop_button.description == "finished" and d.stop_button.button_style == "" and d.stop_button.disabled
    d = run.show(step=3)
    assert d.counter.value == "step 3" and "step 3:" in d.kv.figure.layout.title.text
    assert run.show(step=-1).counter.value == f"step {len(steps) - 1}"


def test_labels_legends_and_mode_bar(run):
    d = run.show()
    lat = d.latency.figure
    queue = [t for t in lat.data if t.name in ("waiting", "running")]
    assert len(queue) == 2 and all(t.showlegend is not False for t in queue)
    assert all(t.showlegend is False for t in lat.data if t.name not in ("waiting", "running"))
    assert lat.layout.yaxis.title.text == "requests" and lat.layout.yaxis2.title.text == "tokens"
    assert "predicted" not in lat.layout.title.text  # the native engine measured it
    budget = next(t for t in d.schedule.figure.data if t.name.startswith("token budget"))
    assert budget.name == "token budget 64"
    for fig in (d.schedule.figure, d.kv.figure, lat):
        assert fig._config.get("displayModeBar") == "hover"
    assert "displayModeBar" in d.static_html(include_plotlyjs=False)
    n, peak = len(run.trace.step_records), peak_kv_step(run.trace.step_records)
    assert f"steps 0-{peak} of {n}: use the slider" in d.schedule.figure.layout.title.text  # the later steps
    last = run.show(step=-1).schedule.figure.layout.title.text
    assert "use the slider" not in last  # every step and request on show


@pytest.fixture(scope="module")
def sim_run():
    """A simulated run longer than the schedule window, with more requests than its rows, owners not recorded."""
    eng = llmlab.launch("sim", policy="static", max_num_batched_tokens=128, max_num_seqs=8, trace_kv_owners=False)
    wl = llmlab.workloads.poisson(rate=10.0, n=120, prompt_len=(100, 700), output_len=(20, 80), seed=3)
    run = eng.run(wl)
    eng.close()
    return run


def test_simulated_run_says_what_is_hidden_and_predicted(sim_run):
    steps, requests = sim_run.trace.step_records, list(sim_run.trace.request_records)
    assert len(steps) > 200 and len(requests) > 48
    d = sim_run.show(step=len(steps) // 2)
    title = d.schedule.figure.layout.title.text
    heat = d.schedule.figure.data[0]
    first, last = int(heat.x[0]), int(heat.x[-1])
    assert f"steps {first:,}-{last:,} of {len(steps):,}" in title and "use the slider" in title
    shown = sorted(requests.index(r) for r in heat.y)
    assert f"requests {shown[0]:,}-{shown[-1]:,} of {len(requests):,}" in title
    note = d.kv.figure.layout.annotations[0].text
    assert "owners not recorded (trace_kv_owners=False)" in note and f"{steps[0].kv.num_blocks:,} blocks" in note
    assert d.latency.figure.layout.title.text.endswith("(predicted by the cost model)")
    budget = next(t for t in d.schedule.figure.data if t.name.startswith("token budget"))
    assert budget.name == "token budget 128 (static ignores it)"
    assert_palette(d)
