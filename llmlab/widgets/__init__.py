"""Live views of a run (plotly FigureWidgets and ipywidgets). They read traces and call functions
(`llmlab.plan.grid`, `llmlab.measure`); they never launch an engine themselves."""

from llmlab.widgets.dashboard import Dashboard
from llmlab.widgets.views import KVView, LatencyView, ScheduleView

__all__ = ["Dashboard", "KVView", "LatencyView", "ScheduleView"]
