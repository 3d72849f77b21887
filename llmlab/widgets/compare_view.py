"""Draw a `llmlab.compare` table: quality against speed against memory, one marker per grid point."""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from llmlab.widgets.colors import REQUEST_PALETTE

MB = 2**20
LEGEND_ROW_PX = 22  # height of one legend row under the chart
LEGEND_GAP_PX = 56  # room between the plot and the legend for the tick labels and the x-axis title


def _finite(values) -> list[float]:
    return [v for v in values if isinstance(v, int | float) and math.isfinite(v)]


def comparison_figure(table: pd.DataFrame, quality: str = "top1", height: int = 420) -> go.Figure:
    """Left: output tok/s against `quality` (top1, kl_mean or ppl), marker area by weight memory.
    Middle: weight memory. Right: KV capacity in tokens. One colour per grid point.
    Long grid labels ("weights=int8, kv_dtype=fp8") would be cut inside the plots: each point is
    tagged with its number there, and the legend, one row per point under the x-axis title, names it."""
    if quality not in ("top1", "kl_mean", "ppl"):
        raise ValueError(f"quality={quality!r}: choose 'top1', 'kl_mean' or 'ppl'")
    labels = [str(i) for i in table.index]
    tags = [str(i + 1) for i in range(len(labels))]
    colours = [REQUEST_PALETTE[i % len(REQUEST_PALETTE)] for i in range(len(table))]
    fig = make_subplots(
        rows=1,
        cols=3,
        column_widths=[0.5, 0.25, 0.25],
        subplot_titles=("speed vs quality (area = weight memory)", "weights (MB)", "KV capacity (tokens)"),
    )
    weights_mb = table["weight_bytes"] / MB
    largest = max(_finite(weights_mb) or [1.0])
    for i, label in enumerate(labels):
        row = table.iloc[i]
        wmb = row["weight_bytes"] / MB
        size = 12 + 40 * math.sqrt(wmb / largest) if math.isfinite(wmb) else 12
        fig.add_trace(
            go.Scatter(
                x=[row["output_tok_s"]],
                y=[row[quality]],
                mode="markers+text",
                text=[tags[i]],
                textposition="middle center",
                marker={"size": size, "color": colours[i], "opacity": 0.75, "line": {"width": 1, "color": "#333"}},
                name=f"{tags[i]}: {label}",
                legendgroup=label,
                hovertemplate=(
                    f"{label}<br>%{{x:.1f}} output tok/s<br>{quality} %{{y:.4g}}<br>"
                    f"weights {wmb:.1f} MB<br>KV {row['kv_tokens']:.0f} tokens<extra></extra>"
                ),
            ),
            row=1,
            col=1,
        )
        for col, value, unit in ((2, wmb, "MB"), (3, row["kv_tokens"], "tokens")):
            fig.add_trace(
                go.Bar(
                    x=[tags[i]],
                    y=[value],
                    marker_color=colours[i],
                    name=label,
                    legendgroup=label,
                    showlegend=False,
                    hovertemplate=f"{label}<br>%{{y:,.0f}} {unit}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    names = {"top1": "top-1 agreement", "kl_mean": "mean KL divergence", "ppl": "perplexity (held-out)"}
    fig.update_xaxes(title_text="output tok/s", row=1, col=1)
    fig.update_yaxes(title_text=names[quality], row=1, col=1)
    fig.update_xaxes(title_text="grid point", type="category", row=1, col=2)
    fig.update_xaxes(title_text="grid point", type="category", row=1, col=3)
    # the legend: one entry per row, below the x-axis titles, with the figure grown to hold it
    top, bottom = 40, LEGEND_GAP_PX + LEGEND_ROW_PX * len(labels) + 10
    plot_px = height - top
    fig.update_layout(
        height=height + bottom,
        margin={"t": top, "l": 60, "r": 20, "b": bottom},
        legend={"orientation": "v", "x": 0.0, "xanchor": "left", "y": -LEGEND_GAP_PX / plot_px, "yanchor": "top"},
    )
    return fig
