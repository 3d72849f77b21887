"""Serving metrics from a trace: throughput and TTFT / ITL / TPOT / E2E percentiles.

Latency statistics and throughput count finished requests only (as serving benchmarks do): a
request that failed alone (finish_reason "error") or was aborted is left out and counted in
`failed`; `requests` counts every request in the trace.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd

from llmlab.session.trace import Trace

PERCENTILES = (50, 90, 99)


def percentile(values: Iterable[float] | np.ndarray | pd.Series, q: float) -> float:
    """The q-th percentile (numpy's linear method) ignoring NaN; NaN when nothing is left."""
    a = np.asarray(values, dtype="float64")
    a = a[~np.isnan(a)]
    return float(np.percentile(a, q)) if a.size else float("nan")


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else float("nan")


def _counter_rise(samples: pd.DataFrame, column: str) -> float:
    """How much a server's polled counter rose over the run; NaN where the server does not report it."""
    values = samples[column].dropna() if column in samples else pd.Series(dtype="float64")
    return float(values.iloc[-1] - values.iloc[0]) if len(values) else float("nan")


def summary(trace: Trace) -> pd.Series:
    """One run's headline numbers as a Series (seconds, tokens per second), for side-by-side."""
    reqs, steps, itl = trace.requests, trace.steps, trace.itl
    failed = reqs["finish_reason"] == "error"
    done = reqs[reqs["finish"].notna() & ~failed]
    start = reqs["arrival"].min() if len(reqs) else float("nan")
    end = done["finish"].max() if len(done) else float("nan")
    duration = float(end - start)
    out: dict[str, float] = {
        "requests": len(reqs),
        "finished": len(done),
        "failed": int(failed.sum()),
        "duration_s": duration,
        "input_tok_s": _ratio(done["prompt_tokens"].sum(), duration),
        "output_tok_s": _ratio(done["output_tokens"].sum(), duration),
        "requests_s": _ratio(len(done), duration),
    }
    itl_done = itl.loc[itl["req_id"].isin(set(done["req_id"])), "itl"]
    for name, values in (
        ("ttft", done["ttft"]),
        ("itl", itl_done),
        ("tpot", done["tpot"]),
        ("e2e", done["e2e"]),
    ):
        for q in PERCENTILES:
            out[f"{name}_p{q}"] = percentile(values, q)
    out["preemptions"] = int(reqs["num_preemptions"].sum())
    out["prefix_hit_rate"] = _ratio(reqs["cached_tokens"].sum(), reqs["prompt_tokens"].sum())
    if trace.info.views.get("schedule") == "none":  # a server seen from outside: no per-request view of these
        out["preemptions"] = _counter_rise(trace.samples, "preemptions")
        out["prefix_hit_rate"] = float("nan")
    out["steps"] = len(steps)
    out["mean_batch_size"] = float(steps["batch_size"].mean()) if len(steps) else float("nan")
    return pd.Series(out, name=trace.info.engine, dtype="float64")
