"""How far the simulator's predictions fall from published GPU results, so that a prediction is shown
with its error band. The figures are what `benchmarks/sim_vs_published.py` prints for its suite
(`benchmarks/published/`: 39 results from TensorRT-LLM, NVIDIA NIM, vLLM's CI and an independent
sweep); that script also says whether they still hold after a change to the cost model or a preset.
They are in-sample: the cost model's factors were set once against the same suite."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

# the suite's metrics that describe one request's latency; every other metric is a throughput
LATENCY_METRICS = frozenset({"ttft_mean", "itl_mean", "e2e_latency_mean", "decode_rate_per_request"})
# summary columns of a run, by kind (a run's `summary()` names)
LATENCY_PREFIXES = ("ttft", "itl", "tpot", "e2e")


@dataclass(frozen=True)
class ErrorBand:
    """The absolute relative error of the simulator on one kind of published result."""

    kind: str  # "latency" or "throughput"
    rows: int  # published results of that kind
    median: float  # median |predicted / published - 1|
    worst: float  # the largest of them

    def __str__(self) -> str:
        return f"±{self.median:.1%} (median error on {self.rows} published {self.kind} results; worst {self.worst:.1%})"


# printed by `python benchmarks/sim_vs_published.py` (the last lines, "latency" and "throughput")
SUITE_BANDS = {
    "latency": ErrorBand("latency", rows=10, median=0.067, worst=0.137),
    "throughput": ErrorBand("throughput", rows=29, median=0.033, worst=0.148),
}


def kind_of(metric: str) -> str:
    """ "latency" or "throughput" for a suite metric or a run summary's column name."""
    if metric in LATENCY_METRICS or metric.startswith(LATENCY_PREFIXES):
        return "latency"
    return "throughput"


def error_band(metric: str) -> ErrorBand:
    """The suite's error band for `metric` (e.g. "ttft_p50", "output_tok_s")."""
    return SUITE_BANDS[kind_of(metric)]


def with_bands(summary: pd.DataFrame | pd.Series, metrics: list[str]) -> pd.DataFrame:
    """Each predicted metric of a run's `summary()` with the range its suite band gives: the median
    error as the likely range, the worst error as the outer one."""
    row = summary.iloc[0] if isinstance(summary, pd.DataFrame) else summary
    out = {}
    for metric in metrics:
        value, band = float(row[metric]), error_band(metric)
        out[metric] = {
            "predicted": value,
            "likely from": value * (1 - band.median),
            "likely to": value * (1 + band.median),
            "at worst from": value * (1 - band.worst),
            "at worst to": value * (1 + band.worst),
            "band": str(band),
        }
    return pd.DataFrame(out).T
