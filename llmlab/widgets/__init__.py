"""Live views of a run (plotly FigureWidgets and ipywidgets). They read a trace, never an engine."""

from llmlab.widgets.dashboard import Dashboard
from llmlab.widgets.views import KVView, LatencyView, ScheduleView

__all__ = ["Dashboard", "KVView", "LatencyView", "ScheduleView"]
