"""A `Run`: one workload on one engine, its trace so far, and control over a live run."""

from __future__ import annotations

import html
import importlib
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from llmlab.core.records import Completion, StepRecord
from llmlab.session import metrics
from llmlab.session.trace import RUN_STATUSES, Trace

DASHBOARD = "llmlab.widgets.dashboard:Dashboard"  # the view of a run, named, never imported here


def resolve_view(spec: str) -> Any:
    """The view a "module:attr" string names, imported when first drawn. The rule: data never
    imports views (Run, PlanTable and Comparison name theirs), so widgets stay the layer above."""
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


class SavedRunError(RuntimeError):
    """The error of a run loaded from a file: its message is the saved text of the exception
    that ended the run, and `error_type` names that exception's class (e.g. "ValueError")."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


def _error_text(error: BaseException) -> str:
    """How an error is saved and shown: its message, or its class name when it has none."""
    return str(error) or type(error).__name__


def _error_type(error: BaseException) -> str:
    return (error.error_type or "RuntimeError") if isinstance(error, SavedRunError) else type(error).__name__


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
        self.thread: threading.Thread | None = None  # the thread driving a live run
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

    # what the session that drives the run calls -------------------------------------------
    def started(self, thread: threading.Thread | None = None) -> None:
        """The run is under way, driven by `thread` (None: by the caller, blocking)."""
        self.status = "running"
        self.thread = thread
        self._done.clear()

    def ended(self) -> None:
        """The run is over (its status says how): wake whoever waits on it."""
        self._done.set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()

    @property
    def watched(self) -> bool:
        """Whether anyone subscribed to its steps."""
        return bool(self._subscribers)

    def publish(self, rec: StepRecord) -> None:
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
        """Write the trace as JSON lines (.jsonl, .jsonl.gz) or Parquet (.parquet); `llmlab.load` reads it back.

        The header keeps the run's status ("finished", "stopped" or "failed"; a run saved while
        still going is a snapshot and is saved as "stopped"), its error's text and class name,
        and its number of requests.
        """
        status = self.status if self.status in RUN_STATUSES else "stopped"
        error = self.error
        run = {
            "status": status,
            "error": None if error is None else _error_text(error),
            "error_type": None if error is None else _error_type(error),
            "total": self.total,
        }
        return self.trace._save(path, run=run)

    @classmethod
    def load(cls, path: str | Path) -> Run:
        """Read a run written by `save`, with its status, error and request count restored.

        A failed run's `error` comes back as a `SavedRunError` (a RuntimeError) whose message is
        the saved text and whose `error_type` names the original class. Files without a status
        (older ones, and those written by `Trace.save`) load as "finished" with no error. A
        malformed file raises `llmlab.session.trace.TraceFileError` (a ValueError) naming the file, the
        line and the field.
        """
        trace, saved = Trace._load(path)
        run = cls(trace, total=saved.get("total"))
        run.status = saved.get("status", "finished")
        text = saved.get("error")
        run.error = None if text is None else SavedRunError(text, saved.get("error_type"))
        return run

    def show(self, **kwargs):
        """The dashboard of this run (schedule, KV cache, latency): live while it runs, replayable after."""
        return resolve_view(DASHBOARD)(self, **kwargs)

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
        err = f", error={_error_type(self.error)}: {_error_text(self.error)}" if self.error is not None else ""
        return (
            f"<Run {self.status}: {info.engine} {info.model} on {info.device}, "
            f"{self.num_finished}/{self.total} requests, {len(self.trace)} steps{err}>"
        )

    def _repr_html_(self) -> str:
        s = self.summary()
        table = s.to_frame("value").to_html(float_format=lambda v: f"{v:.4g}")
        return f"<p><code>{html.escape(repr(self))}</code></p>{table}"
