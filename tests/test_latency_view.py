"""The latency view of a run too short for its charts says so instead of drawing an empty line or a
one-bar histogram; a long enough run draws the charts and no note. Simulated runs, all requests at once."""

from __future__ import annotations

import pytest

import llmlab
from llmlab.widgets.views import MIN_HISTOGRAM_VALUES, MIN_RATE_BINS


def _run(n: int, output_len: int):
    eng = llmlab.launch("sim", model="smollm2-135m")
    try:
        return eng.run(llmlab.workloads.synthetic(n, prompt_len=(16, 32), output_len=output_len, seed=0))
    finally:
        eng.close()


def _notes(d) -> dict[str, object]:
    return {a.name: a for a in d.latency.figure.layout.annotations if (a.name or "").startswith("short:")}


@pytest.fixture(scope="module")
def short_run():
    return _run(3, 4)


def test_three_request_run_shows_notes_not_empty_charts(short_run):
    steps = short_run.trace.step_records
    assert len(steps) < 4 * MIN_RATE_BINS  # the run really is too short for the throughput chart
    d = short_run.show(step=-1)
    notes = _notes(d)
    assert notes["short:throughput"].visible and "too short for a throughput chart" in notes["short:throughput"].text
    assert f"{len(steps)} steps" in notes["short:throughput"].text
    ttft = sorted(r.first_token - r.arrival for r in short_run.trace.request_records.values())
    assert len(ttft) == 3 < MIN_HISTOGRAM_VALUES
    assert notes["short:TTFT"].visible and "too few values for a TTFT histogram" in notes["short:TTFT"].text
    assert all(f"{v:.3g}" in notes["short:TTFT"].text for v in ttft)  # the values, read instead of one bar
    data = d.latency.figure.data
    assert len(data[0].x) == 0 and len(data[2].x) == 0  # no one-bar histogram, no one-point line


def test_long_enough_run_draws_its_charts_and_no_note():
    run = _run(12, 24)
    d = run.show(step=-1)
    notes = _notes(d)
    assert set(notes) == {"short:TTFT", "short:ITL", "short:throughput"}
    assert not any(n.visible for n in notes.values())
    data = d.latency.figure.data
    assert len(data[0].x) == 12 and len(data[2].x) >= MIN_RATE_BINS


def test_replay_from_short_to_long_hides_the_note():
    run = _run(12, 24)
    d = run.show(step=2)
    assert _notes(d)["short:throughput"].visible
    d.latency.update(run.trace.step_records, list(run.trace.request_records.values()))
    assert not _notes(d)["short:throughput"].visible
