"""The dashboard: header, Stop button, replay slider and the three views, live while a run runs.

Live runs redraw from the engine thread between steps, at most `max_fps` times a second and
less often when drawing gets expensive, following the latest step. Replay redraws any past step;
a finished run opens on the step of peak KV use (or the notebook's `step=`).
"""

from __future__ import annotations

import bisect
import html
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import ipywidgets as W

from llmlab.widgets.parallel_view import parallel_figure
from llmlab.widgets.server_views import RequestTimelineView, ServerStateView
from llmlab.widgets.state import peak_kv_step
from llmlab.widgets.views import FIGURE_CONFIG, KVView, LatencyView, ScheduleView, widget

if TYPE_CHECKING:
    from llmlab.session.run import Run

KEY_CONFIG = [
    "policy",
    "weights",
    "kv_dtype",
    "block_size",
    "num_blocks",
    "max_num_batched_tokens",
    "max_num_seqs",
    "enable_prefix_caching",
]


def header_html(run: Run) -> str:
    info = run.info
    cfg = ", ".join(f"{k}={info.config[k]}" for k in KEY_CONFIG if k in info.config)
    return (
        f"<b>{html.escape(info.engine)}</b> · {html.escape(info.model)} · {html.escape(info.device)} · "
        f"{html.escape(info.dtype)}<br><span style='font-size:90%;color:#555'>{html.escape(cfg)}</span>"
    )


MAX_GAP_S = 1.5  # the longest a live view waits between redraws


class Dashboard(W.VBox):
    """Schedule, KV cache and latency views of one run, live or replayed.

    `step`: the step a finished run opens on (default: peak KV use, where the block map says most);
    a live run follows its latest step unless `step` is given.
    """

    def __init__(self, run: Run, step: int | None = None, max_fps: float = 2.0, window: int = 200) -> None:
        self.run = run
        if run.info.views.get("schedule") == "none":  # measured from outside a server: no steps to show
            self.schedule, self.kv = RequestTimelineView(), ServerStateView(run.trace)
        else:
            self.schedule = ScheduleView(run.info, window=window)
            self.kv = KVView(window=2 * window)
        self.latency = LatencyView(run.info)
        self._interval = 1.0 / max(0.5, min(max_fps, 10.0))
        self._last = 0.0
        self._gap = self._interval
        self._follow = True
        self._lock = threading.Lock()
        self.parallel = None  # the parallelism panel, added once a step carries a parallel record
        self._parallel_at: list[int] = []  # indices of the steps with a parallel record, found so far
        self._scanned = 0  # steps already looked at for one (the trace only grows)

        self.header = W.HTML(header_html(run))
        self.status = W.HTML()
        self.status.add_class("llmlab-status")
        self.counter = W.Label("step 0")
        self.counter.add_class("llmlab-step-counter")
        self.progress = W.IntProgress(value=0, min=0, max=max(run.total, 1), description="requests")
        self.stop_button = W.Button(description="Stop", button_style="danger", icon="stop")
        self.stop_button.add_class("llmlab-stop")
        self.stop_button.on_click(lambda _: self.run.stop())
        self.slider = W.IntSlider(value=0, min=0, max=0, description="replay step", continuous_update=False)
        self.slider.add_class("llmlab-replay")
        self.slider.observe(self._on_slider, names="value")
        self.request_pick = W.Dropdown(options=["(none)"], value="(none)", description="highlight")
        self.request_pick.observe(self._on_pick, names="value")
        controls = W.HBox([self.counter, self.progress, self.stop_button, self.status])
        replay = W.HBox([self.slider, self.request_pick])
        super().__init__([self.header, controls, replay, self.schedule.figure, self.kv.figure, self.latency.figure])
        if step is None and run.done:
            step = peak_kv_step(run.trace.step_records)
        if step is None:
            self.redraw()
        else:
            self.show_step(step)
        if not run.done:
            run.subscribe(self._on_step)
            threading.Thread(target=self._final_frame, name="llmlab-dashboard", daemon=True).start()

    # live --------------------------------------------------------------------------------
    def _on_step(self, _rec) -> None:
        """Called by the engine thread after each step: redraw there, between steps, when due.

        Drawing in the engine's own thread costs the engine exactly the drawing time and nothing
        more; from another thread it would contend for the GIL at every tensor op. The gap between
        redraws grows with their cost, so drawing stays under about 2.5% of the run, up to
        MAX_GAP_S: however slow the drawing, the view moves at least that often.
        """
        now = time.perf_counter()
        if now - self._last < self._gap:
            return
        self.redraw()
        spent = time.perf_counter() - now
        self._last = time.perf_counter()
        self._gap = min(max(self._interval, 40 * spent), MAX_GAP_S)

    def _final_frame(self) -> None:
        self.run.wait()
        self.run.unsubscribe(self._on_step)
        self.redraw()

    # drawing -----------------------------------------------------------------------------
    def redraw(self, upto: int | None = None) -> None:
        """Draw the state as of step `upto` (default: the latest, or the replay slider's step)."""
        with self._lock:
            steps = self.run.trace.step_records  # a fresh list: the trace keeps growing while live
            requests = list(self.run.trace.request_records.values())
            n = len(steps)
            if upto is None and not self._follow:
                upto = self.slider.value
            for view in (self.schedule, self.kv, self.latency):
                view.update(steps, requests, upto)
            last = n - 1 if upto is None else upto
            self._draw_parallel(steps, last)
            self.counter.value = f"step {max(last, 0)}" if n else "step 0"
            self.progress.value = self.run.num_finished
            self.status.value = f"<b>{html.escape(self.run.status)}</b>" + (
                f" · {html.escape(str(self.run.error))}" if self.run.error else ""
            )
            if self.run.done:  # a neutral, disabled button that says how the run ended (not an error)
                self.stop_button.disabled = True
                self.stop_button.button_style = ""
                self.stop_button.icon = "check" if self.run.status == "finished" else ""
                self.stop_button.description = self.run.status
            if n:
                self._set_slider(n - 1, last)
            ids = ["(none)", *(r.req_id for r in requests)]
            if len(ids) != len(self.request_pick.options):
                self.request_pick.options = ids

    def _draw_parallel(self, steps: list, last: int) -> None:
        """The tp/pp panel (per-rank compute, communication and bubbles) of the latest parallel step
        up to `last`; runs without parallel records never show it."""
        self._parallel_at += [i for i in range(self._scanned, len(steps)) if steps[i].parallel]
        self._scanned = len(steps)  # each redraw looks only at the steps new since the last one
        latest = bisect.bisect_right(self._parallel_at, last) - 1
        if latest < 0:
            return
        fig = parallel_figure(self.run, steps[self._parallel_at[latest]].step)
        if self.parallel is None:
            self.parallel = widget(fig)
            self.children = (*self.children, self.parallel)
            return
        with self.parallel.batch_update():
            self.parallel.data = ()
            self.parallel.add_traces(list(fig.data))
            self.parallel.layout = fig.layout

    def _set_slider(self, maximum: int, value: int) -> None:
        self._quiet = True
        try:
            self.slider.max = maximum
            self.slider.value = value
        finally:
            self._quiet = False

    def _on_slider(self, change) -> None:
        if getattr(self, "_quiet", False):
            return
        self._follow = change["new"] >= self.slider.max and not self.run.done
        threading.Thread(target=self.redraw, args=(change["new"],), daemon=True).start()

    def _on_pick(self, change) -> None:
        self.kv.selected = None if change["new"] == "(none)" else change["new"]
        self.redraw(None if self._follow else self.slider.value)

    def show_step(self, step: int) -> Dashboard:
        """Replay: show the run as it was after `step` (negative counts from the end, as in Python)."""
        n = len(self.run.trace.step_records)
        step = min(max(step + n if step < 0 else step, 0), max(n - 1, 0))
        self._follow = False
        self.redraw(step)
        return self

    # static output -----------------------------------------------------------------------
    def static_html(self, include_plotlyjs: bool | str = "cdn") -> str:
        """The dashboard as plain HTML (for nbviewer, nbconvert and `to_html`)."""
        parts = [f"<div style='font-family:sans-serif'>{header_html(self.run)}<br>{html.escape(repr(self.run))}</div>"]
        figures = [view.figure for view in (self.schedule, self.kv, self.latency)]
        if self.parallel is not None:
            figures.append(self.parallel)
        for i, figure in enumerate(figures):
            plotlyjs = include_plotlyjs if i == 0 else False
            parts.append(figure.to_html(full_html=False, include_plotlyjs=plotlyjs, config=FIGURE_CONFIG))
        return "\n".join(parts)

    def to_html(self, path: str | Path) -> Path:
        """Write one standalone HTML page (plotly.js embedded) of the whole dashboard."""
        path = Path(path)
        body = self.static_html(include_plotlyjs=True)
        path.write_text(f"<!doctype html><html><head><meta charset='utf-8'><title>llmlab run</title></head>"
                        f"<body>{body}</body></html>", encoding="utf-8")  # fmt: skip
        return path

    def _repr_mimebundle_(self, **kwargs):
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        bundle["text/html"] = self.static_html()
        bundle["text/plain"] = repr(self.run)
        return bundle
