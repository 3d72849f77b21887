"""The views of a run measured from outside a server, which exposes no per-step batches.

In place of the schedule: each request's timeline (waiting to be sent, sent to first token,
decoding). In place of the block map: the server's queue and KV use over time, from its polled
metrics (sampled, not per step).
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmlab.core.records import RequestRecord, StepRecord
from llmlab.session.trace import Trace
from llmlab.widgets.colors import LINE_COLOURS, PHASE_COLOURS
from llmlab.widgets.views import restyle, widget

TIMELINE_TITLE = (
    "Schedule: a server does not expose per-step batches, so here is each request's timeline instead "
    "(waiting, prefill to first token, decode)"
)


class RequestTimelineView:
    """One bar per request: due to sent (client wait), sent to first token (queue + prefill), then decode."""

    def __init__(self, height: int = 360) -> None:
        fig = go.Figure()
        for name, colour in (
            ("wait (due → sent)", "#bbbbbb"),
            ("sent → first token", PHASE_COLOURS["prefill"]),
            ("decode", PHASE_COLOURS["decode"]),
        ):
            fig.add_trace(go.Bar(orientation="h", name=name, marker_color=colour))
        fig.update_layout(
            barmode="overlay",
            height=height,
            margin=dict(l=60, r=10, t=60, b=30),
            title=dict(text=TIMELINE_TITLE, font_size=13),
            xaxis_title="seconds",
            yaxis_title="request",
            uirevision="timeline",
        )
        self.figure = widget(fig)

    def update(self, steps: list[StepRecord], requests: list[RequestRecord], upto: int | None = None) -> None:
        ids = [r.req_id for r in requests]
        due = np.array([r.arrival for r in requests], dtype=float)
        sent = np.array([r.sent if r.sent is not None else r.arrival for r in requests], dtype=float)
        end = np.array([r.finish if r.finish is not None else np.nan for r in requests], dtype=float)
        first = np.array([r.first_token if r.first_token is not None else np.nan for r in requests], dtype=float)
        first = np.where(np.isnan(first), end, first)
        restyle(
            self.figure,
            {
                0: dict(y=ids, base=due, x=sent - due),
                1: dict(y=ids, base=sent, x=first - sent),
                2: dict(y=ids, base=first, x=end - first),
            },
        )


class ServerStateView:
    """Running and waiting requests and KV use over time, as the server's metrics said (sampled)."""

    def __init__(self, trace: Trace, height: int = 320) -> None:
        self.trace = trace
        protocol = trace.info.config.get("protocol")
        kv_title = "KV use (fraction, sampled)"
        if protocol == "tgi":
            kv_title = "KV use: batch tokens / max total tokens (TGI has no block metric)"
        fig = make_subplots(rows=1, cols=2, subplot_titles=("requests (sampled)", kv_title))
        fig.add_trace(go.Scatter(mode="lines", name="waiting", line_color=LINE_COLOURS["waiting"]), row=1, col=1)
        fig.add_trace(go.Scatter(mode="lines", name="running", line_color=LINE_COLOURS["running"]), row=1, col=1)
        fig.add_trace(go.Scatter(mode="lines", name="KV use", line_color=LINE_COLOURS["output"]), row=1, col=2)
        fig.update_layout(
            height=height,
            margin=dict(l=60, r=10, t=70, b=30),
            title=dict(text="Server state over time, from its metrics endpoint", font_size=14),
            uirevision="server",
        )
        fig.update_xaxes(title_text="seconds")
        fig.update_yaxes(range=[0, 1.05], row=1, col=2)
        self.figure = widget(fig)

    def update(self, steps: list[StepRecord], requests: list[RequestRecord], upto: int | None = None) -> None:
        s = self.trace.samples
        restyle(
            self.figure,
            {
                0: dict(x=s["t"].to_numpy(), y=s["waiting"].to_numpy()),
                1: dict(x=s["t"].to_numpy(), y=s["running"].to_numpy()),
                2: dict(x=s["t"].to_numpy(), y=s["kv_usage"].to_numpy()),
            },
        )
