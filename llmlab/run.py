"""A `Run`: one workload on one engine, its trace so far, and control over a live run."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from llmlab import metrics
from llmlab.core.records import Completion, StepRecord
from llmlab.trace import Trace


class Run:
    """The trace of a run plus its status; live runs fill it from a background thread."""

    def __init__(self, trace: Trace, total: int | None = None) -> None:
        self.trace = trace
        self.total = total if total is not None else len(trace.request_records)
        self.status = "finished"  # pending | running | finished | stopped | failed
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._done.set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._subscribers: list[Callable[[StepRecord], None]] = []
        self.subscriber_errors: list[Exception] = []

    # control -----------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> Run:
        """Block until the run ends (or `timeout` seconds pass); returns the run."""
        self._done.wait(timeout)
        return self

    def stop(self) -> Run:
        """Ask a live run to end after the current step; unfinished requests are aborted."""
        self._stop.set()
        return self

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def subscribe(self, callback: Callable[[StepRecord], None]) -> None:
        """Call `callback(step_record)` after every step (from the engine thread when live)."""
        self._subscribers.append(callback)

    def unsubscribe(self, callback: Callable[[StepRecord], None]) -> None:
        if callback in self._subscribers:
            self._subscribers.remove(callback)

    def _publish(self, rec: StepRecord) -> None:
        """Hand a step to every subscriber; a failing subscriber is dropped, the run goes on."""
        for callback in list(self._subscribers):
            try:
                callback(rec)
            except Exception as exc:
                self.unsubscribe(callback)
                self.subscriber_errors.append(exc)

    # reading -----------------------------------------------------------------------------
    @property
    def steps(self) -> pd.DataFrame:
        return self.trace.steps

    @property
    def requests(self) -> pd.DataFrame:
        return self.trace.requests

    @property
    def slots(self) -> pd.DataFrame:
        return self.trace.slots

    @property
    def outputs(self) -> dict[str, Completion]:
        return self.trace.outputs

    @property
    def info(self):
        return self.trace.info

    @property
    def num_finished(self) -> int:
        return len(self.trace.outputs)

    def summary(self) -> pd.Series:
        """Throughput, TTFT / ITL / TPOT / end-to-end percentiles, preemptions, prefix-cache hit rate."""
        return metrics.summary(self.trace)

    def save(self, path: str | Path) -> Path:
        """Write the trace as JSON lines (.jsonl) or Parquet (.parquet); `llmlab.load` reads it back."""
        self.trace.save(path)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        return cls(Trace.load(path))

    def show(self, **kwargs):
        """The dashboard of this run (schedule, KV cache, latency): live while it runs, replayable after."""
        from llmlab.widgets import Dashboard

        return Dashboard(self, **kwargs)

    def to_html(self, path: str | Path) -> Path:
        """Write the dashboard as one standalone HTML page (plotly.js embedded)."""
        return self.show().to_html(path)

    def _repr_mimebundle_(self, **kwargs):
        try:
            return self.show()._repr_mimebundle_(**kwargs)
        except ImportError:  # no notebook stack installed: a table will do
            return {"text/html": self._repr_html_(), "text/plain": repr(self)}

    def __repr__(self) -> str:
        info = self.trace.info
        err = f", error={self.error!r}" if self.error else ""
        return (
            f"<Run {self.status}: {info.engine} {info.model} on {info.device}, "
            f"{self.num_finished}/{self.total} requests, {len(self.trace)} steps{err}>"
        )

    def _repr_html_(self) -> str:
        s = self.summary()
        table = s.to_frame("value").to_html(float_format=lambda v: f"{v:.4g}")
        return f"<p><code>{html.escape(repr(self))}</code></p>{table}"
