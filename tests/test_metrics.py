"""summary(): throughput and latency percentiles checked against numpy on the same records."""

import math

import numpy as np
import pytest

from llmlab.core.records import EngineInfo, RequestRecord, Slot, StepRecord
from llmlab.session.metrics import percentile, summary
from llmlab.session.trace import Trace

KEYS = [
    "requests", "finished", "failed", "duration_s", "input_tok_s", "output_tok_s", "requests_s",
    "ttft_p50", "ttft_p90", "ttft_p99", "itl_p50", "itl_p90", "itl_p99",
    "tpot_p50", "tpot_p90", "tpot_p99", "e2e_p50", "e2e_p90", "e2e_p99",
    "preemptions", "prefix_hit_rate", "steps", "mean_batch_size",
]  # fmt: skip


def info() -> EngineInfo:
    return EngineInfo("sim", "0.1", "m", "cpu", "float32")


def random_trace(n: int = 40, unfinished: int = 5, seed: int = 1) -> Trace:
    """n requests with random timings; the last `unfinished` never finish."""
    rng = np.random.default_rng(seed)
    t = Trace(info())
    for i in range(n):
        arrival = float(rng.uniform(0, 5))
        first = arrival + float(rng.uniform(0.01, 0.5))
        out = int(rng.integers(1, 20))
        times = list(first + np.cumsum(np.r_[0, rng.uniform(0.005, 0.05, out - 1)]))
        done = i < n - unfinished
        t.add_request(
            RequestRecord(
                str(i),
                arrival=arrival,
                prompt_tokens=int(rng.integers(10, 100)),
                first_scheduled=arrival + 0.001,
                first_token=first,
                finish=times[-1] if done else None,
                output_tokens=out,
                cached_tokens=int(rng.integers(0, 10)),
                num_preemptions=int(rng.integers(0, 2)),
                finish_reason="length" if done else None,
                token_times=times,
            )
        )
    for s in range(7):
        batch = [Slot(str(j), "decode", 1, 10) for j in range(s % 3 + 1)]
        t.add_step(StepRecord(s, s * 0.1, s * 0.1 + 0.1, batch, waiting=0, running=len(batch)))
    return t


def test_summary_matches_numpy():
    t = random_trace()
    s = summary(t)
    assert list(s.index) == KEYS
    reqs = list(t.request_records.values())
    done = [r for r in reqs if r.finish is not None]
    assert s["requests"] == 40 and s["finished"] == 35
    duration = max(r.finish for r in done) - min(r.arrival for r in reqs)
    assert s["duration_s"] == pytest.approx(duration)
    assert s["input_tok_s"] == pytest.approx(sum(r.prompt_tokens for r in done) / duration)
    assert s["output_tok_s"] == pytest.approx(sum(r.output_tokens for r in done) / duration)
    assert s["requests_s"] == pytest.approx(35 / duration)

    ttft = [r.first_token - r.arrival for r in done]
    e2e = [r.finish - r.arrival for r in done]
    tpot = [(r.finish - r.first_token) / (r.output_tokens - 1) for r in done if r.output_tokens > 1]
    itl = np.concatenate([np.diff(r.token_times) for r in done])
    for name, values in (("ttft", ttft), ("e2e", e2e), ("tpot", tpot), ("itl", itl)):
        for q in (50, 90, 99):
            assert s[f"{name}_p{q}"] == pytest.approx(np.percentile(values, q)), name

    assert s["preemptions"] == sum(r.num_preemptions for r in reqs)
    assert s["prefix_hit_rate"] == pytest.approx(
        sum(r.cached_tokens for r in reqs) / sum(r.prompt_tokens for r in reqs)
    )
    assert s["steps"] == 7
    assert s["mean_batch_size"] == pytest.approx(np.mean([len(r.batch) for r in t.step_records]))


def test_percentile_helper():
    assert math.isnan(percentile([], 50))
    assert math.isnan(percentile([float("nan")], 90))
    assert percentile([1.0, float("nan"), 3.0], 50) == 2.0
    data = np.random.default_rng(0).exponential(size=101)
    assert percentile(data, 99) == pytest.approx(np.percentile(data, 99))


def test_summary_of_empty_and_unfinished_traces():
    s = summary(Trace(info()))
    assert list(s.index) == KEYS
    assert s["requests"] == 0 and s["steps"] == 0
    assert all(math.isnan(s[k]) for k in ("duration_s", "ttft_p50", "itl_p99", "mean_batch_size"))

    t = Trace(info())
    t.add_request(
        RequestRecord("x", arrival=0.0, prompt_tokens=4, first_token=0.1, output_tokens=2, token_times=[0.1, 0.2])
    )
    s = summary(t)
    assert s["requests"] == 1 and s["finished"] == 0
    assert math.isnan(s["ttft_p50"]) and math.isnan(s["itl_p50"]) and math.isnan(s["output_tok_s"])


def test_a_request_that_failed_alone_is_counted_apart_from_the_finished():
    t = random_trace(n=10, unfinished=0)
    ok = summary(t)
    r = t.request_records["0"]
    r.finish_reason, r.error = "error", "the sampler raised"
    s = summary(t)
    assert s["failed"] == 1 and s["finished"] == ok["finished"] - 1
    done = [x for x in t.request_records.values() if x.finish_reason != "error"]
    assert s["ttft_p50"] == pytest.approx(percentile([x.first_token - x.arrival for x in done], 50))
    assert t.requests.set_index("req_id").loc["0", "error"] == "the sampler raised"
