"""Colours shared by every view, live and finished alike: one per request phase, one per request.

The schedule grid, the token bars, the KV map and the latency charts all take their colours
from here, so prefill is the same orange and decode the same blue everywhere.
"""

from __future__ import annotations

import plotly.colors as pc

# one colour per schedule state (the grid), also used for the token bars and the latency charts
PHASE_COLOURS = {
    "waiting": "#d9d9d9",
    "prefill": "#f28e2b",
    "decode": "#4e79a7",
    "preempted": "#e15759",
    "finished": "#59a14f",
}
STATE_COLOURS = ["rgba(0,0,0,0)", *PHASE_COLOURS.values()]  # indexed by the state codes in widgets/state.py
FREE_COLOUR = "#f4f4f4"
CACHED_COLOUR = "#bcd4e6"
REQUEST_PALETTE = pc.qualitative.Dark24 + pc.qualitative.Light24

# lines over time: a queue's waiting requests in the preempted red (light grey would vanish on white)
LINE_COLOURS = {
    "waiting": PHASE_COLOURS["preempted"],
    "running": PHASE_COLOURS["decode"],
    "output": PHASE_COLOURS["finished"],
    "used": PHASE_COLOURS["decode"],
    "cached": "#76b7b2",
    "free": "#bab0ac",
}
BUDGET_COLOUR = "#555555"


def discrete_scale(colours: list[str]) -> list[list]:
    """A plotly colorscale that maps integer values 0..n-1 (with zmin=-0.5, zmax=n-0.5) to flat colours."""
    n = len(colours)
    scale = []
    for i, c in enumerate(colours):
        scale += [[i / n, c], [(i + 1) / n, c]]
    return scale


def request_colour(index: int) -> str:
    """The colour of the request at `index` in arrival order (the schedule strip and the KV map share it)."""
    return REQUEST_PALETTE[index % len(REQUEST_PALETTE)]
