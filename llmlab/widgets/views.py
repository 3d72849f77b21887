"""The three views of a run: schedule, KV cache and latency. Each owns one plotly FigureWidget and
redraws it from the trace's records as of a step (the latest, or any step when replaying).

Traces are updated one message per trace (`restyle`), never in one batch across traces: plotly
pads a batch with "undefined" for what a trace leaves unchanged, and the widget front end stores
those, wiping e.g. the token bars' colours before a finished run's dashboard is first drawn.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmlab.core.records import EngineInfo, RequestRecord, StepRecord
from llmlab.widgets.colors import (
    BUDGET_COLOUR,
    CACHED_COLOUR,
    FREE_COLOUR,
    LINE_COLOURS,
    PHASE_COLOURS,
    REQUEST_PALETTE,
    STATE_COLOURS,
    discrete_scale,
    request_colour,
)
from llmlab.widgets.state import (
    KV_CACHED,
    KV_FREE,
    KV_PAD,
    STATE_NAMES,
    budget_label,
    kv_note,
    kv_series,
    kv_state,
    schedule_state,
    step_window,
    window_note,
)

Records = tuple[list[StepRecord], list[RequestRecord]]

# plotly's mode bar only while the mouse is over a figure, so it never covers a title
FIGURE_CONFIG = {"displayModeBar": "hover"}
SCHEDULE_TITLE = "Schedule: who runs in each step"


def widget(fig: go.Figure) -> go.FigureWidget:
    """`fig` as a FigureWidget with the dashboard's plotly config."""
    w = go.FigureWidget(fig)
    w._config = dict(FIGURE_CONFIG)  # the widget's synced config trait (FigureWidget takes no config argument)
    return w


def restyle(fig: go.FigureWidget, changes: dict[int, dict]) -> None:
    """Update trace `i` with `changes[i]`, one message per trace (see the module docstring for why)."""
    for i, props in changes.items():
        fig.data[i].update(**props)


def cell_grid(colours: list[str], lowest: int, hovertemplate: str, name: str) -> go.Heatmap:
    """An empty heatmap of flat-coloured cells: integer code `lowest + i` is drawn in `colours[i]`."""
    return go.Heatmap(
        z=[[None]],
        zmin=lowest - 0.5,
        zmax=lowest + len(colours) - 0.5,
        colorscale=discrete_scale(colours),
        showscale=False,
        xgap=1,
        ygap=1,
        hovertemplate=hovertemplate,
        name=name,
    )


def colour_index(requests: list[RequestRecord]) -> dict[str, int]:
    """Each request's colour, by arrival order, shared by the schedule and the KV map."""
    return {r.req_id: i % len(REQUEST_PALETTE) for i, r in enumerate(requests)}


class ScheduleView:
    """Requests x steps coloured by state, over per-step prefill / decode token bars and the budget."""

    def __init__(self, info: EngineInfo, window: int = 200, max_rows: int = 48, height: int = 460) -> None:
        self.window, self.max_rows = window, max_rows
        fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.7, 0.3], vertical_spacing=0.05)
        fig.add_trace(
            cell_grid(STATE_COLOURS, 0, "request %{y} · step %{x}<br>%{text}<extra></extra>", "schedule"), row=1, col=1
        )
        fig.add_trace(
            go.Scatter(mode="markers", marker=dict(symbol="square", size=9), hoverinfo="skip", name="request"),
            row=1,
            col=1,
        )
        for state in range(1, len(STATE_NAMES)):  # legend entries for the states
            fig.add_trace(
                go.Scatter(
                    x=[None], y=[None], mode="markers", name=STATE_NAMES[state],
                    marker=dict(symbol="square", size=10, color=STATE_COLOURS[state]),
                ),
                row=1,
                col=1,
            )  # fmt: skip
        fig.add_trace(go.Bar(name="prefill tokens", marker_color=PHASE_COLOURS["prefill"]), row=2, col=1)
        fig.add_trace(go.Bar(name="decode tokens", marker_color=PHASE_COLOURS["decode"]), row=2, col=1)
        budget = info.config.get("max_num_batched_tokens")
        fig.add_trace(
            go.Scatter(mode="lines", line=dict(dash="dash", color=BUDGET_COLOUR), name=budget_label(info.config)),
            row=2,
            col=1,
        )
        self.budget = budget
        fig.update_layout(
            height=height,
            barmode="stack",
            bargap=0.1,
            margin=dict(l=60, r=10, t=40, b=30),
            title=dict(text=SCHEDULE_TITLE, font_size=14),
            legend=dict(orientation="h", y=-0.12),
            uirevision="schedule",
        )
        fig.update_yaxes(title_text="request", type="category", row=1, col=1)
        fig.update_yaxes(title_text="tokens", row=2, col=1)
        fig.update_xaxes(title_text="step", row=2, col=1)
        self.figure = widget(fig)

    def update(self, steps: list[StepRecord], requests: list[RequestRecord], upto: int | None = None) -> None:
        st = schedule_state(steps, requests, upto, self.window, self.max_rows)
        note = window_note(st, len(steps), requests)
        colours = colour_index(requests)
        # numpy arrays all the way: plotly validates them without a Python loop per cell, and
        # ABSENT cells (code 0) draw transparent, so no NaN ever reaches a widget message
        detail = np.char.add(
            np.char.add(" · ", st.tokens.astype(str)), np.char.add(" tokens, context ", st.context.astype(str))
        )
        text = np.char.add(np.array(STATE_NAMES)[st.codes], np.where(st.tokens > 0, detail, ""))
        x0 = st.steps[0] - 1 if len(st.steps) else -1
        n = 1 + len(STATE_NAMES)
        changes = {
            0: dict(z=st.codes.astype(np.int32), x=st.steps, y=st.req_ids, text=text),
            1: dict(
                x=[x0] * len(st.req_ids),
                y=st.req_ids,
                marker_color=[request_colour(colours.get(r, 0)) for r in st.req_ids],
            ),
            n: dict(x=st.steps, y=st.prefill_tokens),
            n + 1: dict(x=st.steps, y=st.decode_tokens),
        }
        if self.budget:
            changes[n + 2] = dict(x=st.steps, y=[self.budget] * len(st.steps))
        restyle(self.figure, changes)
        self.figure.layout.title.text = f"{SCHEDULE_TITLE} ({note})" if note else SCHEDULE_TITLE


class KVView:
    """The block pool as a grid coloured by owner, shared blocks marked, and used / cached / free over time."""

    def __init__(self, window: int = 400, height: int = 440) -> None:
        self.window = window
        self.selected: str | None = None
        colours = ["rgba(0,0,0,0)", FREE_COLOUR, CACHED_COLOUR, *REQUEST_PALETTE]
        fig = make_subplots(rows=2, cols=1, row_heights=[0.68, 0.32], vertical_spacing=0.1)
        hover = "block %{customdata}<br>%{text}<extra></extra>"
        fig.add_trace(cell_grid(colours, KV_PAD, hover, "blocks"), row=1, col=1)
        fig.add_trace(
            go.Scatter(mode="markers", marker=dict(symbol="x-thin", size=7, line=dict(width=2, color="white")),
                       name="shared block", hoverinfo="skip"),
            row=1, col=1,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(mode="markers", marker=dict(symbol="square-open", size=11, line=dict(width=2, color="black")),
                       name="selected request", hoverinfo="skip"),
            row=1, col=1,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=[None], y=[None], mode="markers", name="cached (free, reusable)",
                       marker=dict(symbol="square", size=10, color=CACHED_COLOUR)),
            row=1, col=1,
        )  # fmt: skip
        for name in ("used", "cached", "free"):
            line = dict(color=LINE_COLOURS[name])
            fig.add_trace(go.Scatter(mode="lines", name=f"{name} blocks", line=line), row=2, col=1)
        fig.update_layout(
            height=height,
            margin=dict(l=60, r=10, t=40, b=30),
            title=dict(text="KV cache blocks", font_size=14),
            legend=dict(orientation="h", y=-0.15),
            uirevision="kv",
            # the note shown instead of a block map that cannot be drawn
            annotations=[dict(text="", xref="x domain", yref="y domain", x=0.5, y=0.5, showarrow=False,
                              font=dict(size=13, color="#555"))],
        )  # fmt: skip
        fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False, row=1, col=1)
        fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False, autorange="reversed", row=1, col=1)
        fig.update_xaxes(title_text="step", row=2, col=1)
        fig.update_yaxes(title_text="blocks", row=2, col=1)
        self.figure = widget(fig)
        self.last_state = None

    def update(self, steps: list[StepRecord], requests: list[RequestRecord], upto: int | None = None) -> None:
        if not steps:
            return
        k = len(steps) - 1 if upto is None else min(upto, len(steps) - 1)
        colours = colour_index(requests)
        kv = kv_state(steps[k].kv, steps[k].step, colours)
        self.last_state = kv
        series = kv_series(steps, step_window(len(steps), k, self.window))
        f = self.figure
        changes = {4 + i: dict(x=series["step"], y=series[name]) for i, name in enumerate(("used", "cached", "free"))}
        if kv is not None and kv.grid is not None:
            rows, cols = kv.grid.shape
            ids = np.arange(rows * cols).reshape(rows, cols) * kv.blocks_per_cell
            owners, codes = np.array(kv.owners, dtype=object), kv.grid.ravel()
            empty = np.where(codes == KV_CACHED, "cached prefix", np.where(codes == KV_FREE, "free", ""))
            text = np.where(owners != "", owners, empty).reshape(rows, cols)
            sel = self._selected_cells(steps[k], cols)
            changes |= {
                0: dict(z=kv.grid, customdata=ids, text=text),
                1: dict(x=kv.shared[:, 1], y=kv.shared[:, 0]),
                2: dict(x=sel[1], y=sel[0]),
            }
            title = (
                f"KV cache at step {kv.step}: {kv.used} used, {kv.cached} cached, {kv.free} free"
                f" of {kv.num_blocks} blocks"
                + (f" ({kv.blocks_per_cell} blocks per cell)" if kv.blocks_per_cell > 1 else "")
            )
        elif kv is not None:
            changes |= {0: dict(z=[[None]]), 1: dict(x=[], y=[]), 2: dict(x=[], y=[])}
            title = f"KV cache at step {kv.step}: {kv.used} used, {kv.cached} cached, {kv.free} free"
        else:
            title = "KV cache blocks: not recorded"
        restyle(f, changes)
        with f.batch_update():
            f.layout.title.text = title
            f.layout.annotations[0].text = kv_note(kv) if kv is not None else ""

    def _selected_cells(self, rec: StepRecord, cols: int) -> tuple[list[int], list[int]]:
        if self.selected is None or rec.kv is None or rec.kv.owners is None:
            return [], []
        blocks = [b for b, owners in rec.kv.owners.items() if self.selected in owners]
        return [b // cols for b in blocks], [b % cols for b in blocks]


# below these a chart says nothing: a one-point line draws nothing, a one-bar histogram hides the values
MIN_RATE_BINS = 4  # time bins of the throughput chart (one per 4 steps)
MIN_HISTOGRAM_VALUES = 5
SHORT_NOTES = {0: "TTFT", 1: "ITL", 2: "throughput"}  # panel (trace index) -> what its note is about


def short_run_note(what: str, values: list[float], steps: int) -> str:
    """What a panel says instead of a chart when the run is too short for one."""
    if what == "throughput":
        return f"too short for a throughput chart<br>({steps} steps; it needs {4 * MIN_RATE_BINS})"
    if not values:
        return f"no {what} yet"
    shown = ", ".join(f"{v:.3g}" for v in sorted(values))
    return f"too few values for a {what} histogram:<br>{shown} s"


class LatencyView:
    """TTFT and inter-token latency distributions, output throughput and queue length over time.
    A panel whose run is too short for its chart shows a note saying so (and the few values) instead."""

    def __init__(self, info: EngineInfo | None = None, height: int = 480) -> None:
        predicted = info is not None and info.views.get("latency") == "predicted"
        fig = make_subplots(
            rows=2,
            cols=2,
            subplot_titles=("time to first token (s)", "inter-token latency (s)", "output tokens/s", "queue"),
            vertical_spacing=0.18,
        )
        # TTFT is mostly prefill, inter-token latency is decode: their phase colours
        fig.add_trace(
            go.Histogram(name="TTFT", marker_color=PHASE_COLOURS["prefill"], nbinsx=30, showlegend=False), row=1, col=1
        )
        fig.add_trace(
            go.Histogram(name="ITL", marker_color=PHASE_COLOURS["decode"], nbinsx=30, showlegend=False), row=1, col=2
        )
        fig.add_trace(
            go.Scatter(mode="lines", name="output tok/s", line_color=LINE_COLOURS["output"], showlegend=False),
            row=2,
            col=1,
        )
        fig.add_trace(go.Scatter(mode="lines", name="waiting", line_color=LINE_COLOURS["waiting"]), row=2, col=2)
        fig.add_trace(go.Scatter(mode="lines", name="running", line_color=LINE_COLOURS["running"]), row=2, col=2)
        fig.update_layout(
            height=height,
            margin=dict(l=60, r=10, t=70, b=30),
            title=dict(text="Latency (predicted by the cost model)" if predicted else "Latency", font_size=14),
            legend=dict(title_text="queue", x=1.0, xanchor="right", y=0.4, bgcolor="rgba(255,255,255,0.7)"),
            uirevision="lat",
        )
        fig.update_yaxes(title_text="requests", row=1, col=1)
        fig.update_yaxes(title_text="tokens", row=1, col=2)
        fig.update_yaxes(title_text="tokens/s", row=2, col=1)
        fig.update_yaxes(title_text="requests", row=2, col=2)
        fig.update_xaxes(title_text="seconds", row=2, col=1)
        fig.update_xaxes(title_text="seconds", row=2, col=2)
        for i in SHORT_NOTES:  # one hidden note per panel, shown by update() when the run is too short
            axis = "" if i == 0 else str(i + 1)
            fig.add_annotation(
                name=f"short:{SHORT_NOTES[i]}",
                text="",
                visible=False,
                showarrow=False,
                xref=f"x{axis} domain",
                yref=f"y{axis} domain",
                x=0.5,
                y=0.5,
                font=dict(size=12, color="#555"),
            )
        self.figure = widget(fig)

    def update(self, steps: list[StepRecord], requests: list[RequestRecord], upto: int | None = None) -> None:
        if not steps:  # a server's run has requests but no steps: show them all
            times = [t for r in requests for t in (r.finish, *r.token_times) if t is not None]
            if not times:
                return
            k, now = -1, max(times)
        else:
            k = len(steps) - 1 if upto is None else min(upto, len(steps) - 1)
            now = steps[k].t_end
        ttft = [r.first_token - r.arrival for r in requests if r.first_token is not None and r.first_token <= now]
        itl = []
        for r in requests:
            times = [t for t in r.token_times if t <= now]
            itl.extend(np.diff(times).tolist())
        shown = steps[: k + 1]
        t = np.array([s.t_end for s in shown])
        token_times = [x for r in requests for x in r.token_times if x <= now]
        bins = max(1, min(60, len(shown) // 4)) if shown else 30
        edges = np.linspace(0.0, max(now, 1e-9), bins + 1)
        counts, _ = np.histogram(token_times, bins=edges)
        rate = counts / np.diff(edges)
        short = {
            0: len(ttft) < MIN_HISTOGRAM_VALUES,
            1: len(itl) < MIN_HISTOGRAM_VALUES,
            2: bins < MIN_RATE_BINS,
        }
        values = {0: ttft, 1: itl, 2: []}
        for note in self.figure.layout.annotations:
            if not (note.name or "").startswith("short:"):
                continue
            i = next(j for j, what in SHORT_NOTES.items() if note.name == f"short:{what}")
            text = short_run_note(SHORT_NOTES[i], values[i], len(shown)) if short[i] else ""
            if note.text != text:
                note.update(text=text, visible=short[i])
        restyle(
            self.figure,
            {
                0: dict(x=np.asarray([] if short[0] else ttft)),
                1: dict(x=np.asarray([] if short[1] else itl)),
                2: dict(x=(edges[:-1] + edges[1:]) / 2, y=rate) if not short[2] else dict(x=[], y=[]),
                3: dict(x=t, y=np.array([s.waiting for s in shown])),
                4: dict(x=t, y=np.array([s.running for s in shown])),
            },
        )
