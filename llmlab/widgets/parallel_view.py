"""What each rank of a tensor- or pipeline-parallel run did: compute, communication and idle time.

Reads the trace only (`StepRecord.parallel`), so a saved run draws the same figure as a live one.
"""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

KIND_COLORS = {
    "compute": "#2a9d8f",
    "allreduce": "#e76f51",
    "send": "#f4a261",
    "recv": "#9c89b8",
    "idle": "#d9d9d9",
}


def parallel_steps(run_or_trace: Any) -> list:
    """The steps of a run (or trace) that carry a parallel record."""
    trace = getattr(run_or_trace, "trace", run_or_trace)
    return [r for r in trace.step_records if getattr(r, "parallel", None)]


def parallel_figure(run: Any, step: int | None = None) -> go.Figure:
    """Per-rank timeline of one step (`step`: its index), or per-rank totals over the whole run
    (step=None): compute against all-reduce, stage sends and receives, and idle time, the bubble."""
    steps = parallel_steps(run)
    if not steps:
        raise ValueError("this run has no parallel records: launch the native engine with tp > 1 or pp > 1")
    if step is None:
        return _totals(steps)
    found = [r for r in steps if r.step == step]
    if not found:
        have = [r.step for r in steps]
        raise ValueError(f"step={step} has no parallel record: choose one of steps {have[0]}..{have[-1]}")
    return _timeline(found[0])


def _label(rank: dict[str, Any], par: dict[str, Any]) -> str:
    return f"rank {rank['rank']} · stage {rank['stage']}" if par["pp"] > 1 else f"rank {rank['rank']}"


def _timeline(rec: Any) -> go.Figure:
    par = rec.parallel
    labels = {r["rank"]: _label(r, par) for r in par["ranks"]}
    fig = go.Figure()
    for kind, color in KIND_COLORS.items():
        if kind == "idle":
            continue
        rows = [e for e in par["timeline"] if e[3] == kind]
        if not rows:
            continue
        fig.add_bar(
            name=kind,
            orientation="h",
            y=[labels[e[0]] for e in rows],
            base=[e[4] * 1e3 for e in rows],
            x=[(e[5] - e[4]) * 1e3 for e in rows],
            marker_color=color,
            customdata=[[e[2], e[6]] for e in rows],
            hovertemplate="micro-batch %{customdata[0]}<br>%{x:.2f} ms<br>%{customdata[1]:,} bytes<extra>"
            + kind
            + "</extra>",
        )
    fig.update_layout(
        barmode="overlay",
        title=f"step {rec.step}: tp={par['tp']} pp={par['pp']}, {par['micro_batches']} micro-batch(es), "
        f"idle {par['bubble']:.0%} of rank-time (gaps are the bubble)",
        xaxis_title="ms since the step was sent",
        yaxis={"autorange": "reversed"},
        height=160 + 40 * len(labels),
    )
    return fig


def _totals(steps: list) -> go.Figure:
    par0 = steps[0].parallel
    totals: dict[int, dict[str, float]] = {}
    for rec in steps:
        par = rec.parallel
        for r in par["ranks"]:
            t = totals.setdefault(r["rank"], dict.fromkeys(KIND_COLORS, 0.0))
            busy = 0.0
            for e in par["timeline"]:
                if e[0] == r["rank"]:
                    t[e[3]] += e[5] - e[4]
                    busy += e[5] - e[4]
            t["idle"] += max(par["span_s"] - busy, 0.0)
    labels = {r["rank"]: _label(r, par0) for r in par0["ranks"]}
    fig = go.Figure()
    for kind, color in KIND_COLORS.items():
        fig.add_bar(
            name=kind,
            orientation="h",
            y=[labels[k] for k in totals],
            x=[totals[k][kind] for k in totals],
            marker_color=color,
        )
    span = sum(r.parallel["span_s"] for r in steps)
    fig.update_layout(
        barmode="stack",
        title=f"{len(steps)} steps, tp={par0['tp']} pp={par0['pp']}: seconds per rank ({span:.2f} s of steps)",
        xaxis_title="seconds",
        yaxis={"autorange": "reversed"},
        height=160 + 40 * len(labels),
    )
    return fig
