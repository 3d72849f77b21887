"""Notebooks in a real JupyterLab, driven by headless Chromium (see tests/browser.py).

Run alone: ``pytest -m browser tests/test_browser.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import browser
import nbformat
import pytest
from browser import (
    bar_fills,
    click_widget,
    error_outputs,
    hex_rgb,
    open_notebook,
    plotly_figures,
    run_all,
    screenshot,
    scroll_to,
    stderr_outputs,
    widget_text,
)

pytestmark = pytest.mark.browser

# The harness's fixtures: one JupyterLab server for this module, a fresh Chromium page per test.
lab = browser.lab
browser_page = browser.browser_page

REPO = Path(__file__).resolve().parents[1]

# A finished and a live dashboard of simulated runs (the simulator needs no model weights).
DASHBOARD_CELLS = [
    """\
import llmlab

eng = llmlab.launch("sim", max_num_batched_tokens=64, num_blocks=40, block_size=8)
run = eng.run(llmlab.workloads.poisson(rate=20.0, n=8, prompt_len=(20, 60), output_len=(6, 16), seed=4))
run.show()
""",
    """\
live = eng.run(llmlab.workloads.poisson(rate=50.0, n=400, prompt_len=(20, 60), output_len=(50, 200), seed=5), live=True)
live.show()
""",
    "live.wait();",
]


def _palette_fills() -> dict[str, list[str]]:
    """The token bars' fills the palette promises, as the browser writes them."""
    from llmlab.widgets.colors import PHASE_COLOURS

    return {"prefill tokens": [hex_rgb(PHASE_COLOURS["prefill"])], "decode tokens": [hex_rgb(PHASE_COLOURS["decode"])]}


def test_dashboards_draw_token_bars_in_the_palette(lab, browser_page):
    """A finished and a live dashboard: the token bars on screen have the palette's fills, not plotly's defaults."""
    page = browser_page
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(c) for c in DASHBOARD_CELLS]
    path = lab.root_dir / "dashboard_colours.ipynb"
    nbformat.write(nb, path)

    open_notebook(page, lab.base_url, lab.token, path.name)
    ok = run_all(page, timeout=180)
    errors = error_outputs(page)
    assert ok and errors == [], "\n\n".join(errors)
    # Both schedule figures drawn with bars; on a loaded machine the live one can trail the cell's end.
    deadline = time.monotonic() + 60
    while sum(any(f.values()) for f in bar_fills(page, "Schedule")) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # the live dashboard's final frame
    figures = bar_fills(page, "Schedule")
    scroll_to(page, ".js-plotly-plot")
    screenshot(page, "dashboard_colours")
    assert len(figures) == 2, figures  # the finished and the live dashboard
    for fills in figures:
        assert fills == _palette_fills(), fills


FIGURE_CELL = """\
import plotly.graph_objects as go

fig = go.FigureWidget(go.Scatter(x=[1, 2, 3, 4, 5], y=[1, 4, 9, 16, 25], mode="lines+markers"))
fig
"""

# A stand-in for a live engine run: a worker thread updates a widget until Stop is clicked.
LIVE_CELL = """\
import threading

import ipywidgets as widgets

counter = widgets.Label("0")
counter.add_class("llmlab-step-counter")
stop = widgets.Button(description="Stop")
stop.add_class("llmlab-stop")
stopped = threading.Event()
stop.on_click(lambda _: stopped.set())


def loop():
    n = 0
    while not stopped.wait(0.2):
        n += 1
        counter.value = str(n)


worker = threading.Thread(target=loop, daemon=True)
worker.start()
widgets.HBox([counter, stop])
"""


def _counter(page) -> int:
    return int(widget_text(page, "llmlab-step-counter"))


def test_live_widgets(lab, browser_page):
    page = browser_page
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(FIGURE_CELL), nbformat.v4.new_code_cell(LIVE_CELL)]
    path = lab.root_dir / "live_widgets.ipynb"
    nbformat.write(nb, path)
    saved = path.read_bytes()

    open_notebook(page, lab.base_url, lab.token, path.name)
    assert run_all(page, timeout=60)
    assert error_outputs(page) == []

    page.wait_for_function(
        "() => [...document.querySelectorAll('.js-plotly-plot')].some(el => el.data)",
        timeout=20_000,
    )
    assert plotly_figures(page) == [{"traces": 1, "points": [5]}]

    page.locator(".llmlab-step-counter").wait_for(timeout=20_000)
    a = _counter(page)
    time.sleep(1.0)
    b = _counter(page)
    assert b > a, f"counter did not move while running: {a} -> {b}"
    scroll_to(page, ".llmlab-step-counter")
    screenshot(page, "live_widgets_running")

    click_widget(page, "llmlab-stop")
    time.sleep(0.6)  # the click goes to the kernel as a comm message; the loop then ends
    c = _counter(page)
    time.sleep(1.0)
    d = _counter(page)
    assert c == d, f"counter still moving after Stop: {c} -> {d}"
    screenshot(page, "live_widgets_stopped")

    assert path.read_bytes() == saved, "the notebook was saved back"


def _step(page) -> int:
    """The step shown by the last dashboard's counter ("step 17" -> 17)."""
    return int(widget_text(page, "llmlab-step-counter", -1).split()[-1])


@pytest.mark.slow
def test_continuous_batching_notebook_live_dashboard(lab, browser_page):
    """Notebook 02 in JupyterLab: dashboards render with data, the live one advances, Stop stops it."""
    page = browser_page
    path = lab.root_dir / "02_continuous_batching.ipynb"
    # the lesson up to its live run, which ends the notebook here so that the run is still going when
    # the test looks (the exercises after it run in the notebook suite)
    nb = nbformat.read(REPO / "notebooks" / "02_continuous_batching.ipynb", as_version=4)
    end = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises"))
    nb.cells = nb.cells[:end]
    live = nb.cells[-1]
    assert "live=True" in live.source and "n=40," in live.source, "the lesson's last cell is its live run"
    live.source = live.source.replace("n=40,", "n=400,")  # long enough to be going whatever the machine's speed
    nbformat.write(nb, path)
    saved = path.read_bytes()

    open_notebook(page, lab.base_url, lab.token, path.name)
    ok = run_all(page, timeout=600)
    errors = error_outputs(page)
    assert ok and errors == [], "\n\n".join(errors)
    assert not [s for s in stderr_outputs(page) if "JSON" in s], "a widget message failed to serialise"

    # the last cell returned at once and its run goes on in the background: the counter must advance
    page.locator(".llmlab-step-counter").last.wait_for(timeout=60_000)
    scroll_to(page, ".llmlab-stop", -1)
    a = _step(page)
    time.sleep(3.0)
    b = _step(page)
    assert b > a, f"the live dashboard did not advance: step {a} -> {b}"
    screenshot(page, "02_live_running", full_page=False)

    figures = plotly_figures(page)
    with_data = [f for f in figures if f["traces"] and any(f["points"])]
    assert len(with_data) >= 3, figures  # the live dashboard's schedule, KV and latency views at least

    click_widget(page, "llmlab-stop", -1)
    page.wait_for_function(
        "() => { const s = [...document.querySelectorAll('.llmlab-status')].pop();"
        " return s && s.innerText.includes('stopped'); }",
        timeout=30_000,
    )
    c = _step(page)
    time.sleep(2.0)
    assert _step(page) == c, "the run kept stepping after Stop"
    screenshot(page, "02_live_stopped")
    scroll_to(page, ".js-plotly-plot")
    screenshot(page, "02_policy_tabs")

    assert path.read_bytes() == saved, "the notebook was saved back"
