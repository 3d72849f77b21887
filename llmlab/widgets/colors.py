"""Colours shared by every view: one per schedule state, one per request (schedule strip and KV map)."""

from __future__ import annotations

import plotly.colors as pc

STATE_COLOURS = ["rgba(0,0,0,0)", "#d9d9d9", "#f28e2b", "#4e79a7", "#e15759", "#59a14f"]
FREE_COLOUR = "#f4f4f4"
CACHED_COLOUR = "#bcd4e6"
REQUEST_PALETTE = pc.qualitative.Dark24 + pc.qualitative.Light24


def discrete_scale(colours: list[str]) -> list[list]:
    """A plotly colorscale that maps integer values 0..n-1 (with zmin=-0.5, zmax=n-0.5) to flat colours."""
    n = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def request_colour(index: int) -> str:
    return REQUEST_PALETTE[index % len(REQUEST_PALETTE)]
