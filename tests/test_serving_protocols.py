"""Protocol parsing without a server: trtllm-serve's and Triton's documented schemas (neither server
installs here), each protocol's stream events, and Prometheus pages read with prometheus-client."""

from __future__ import annotations

import json
import time

import pytest

pytest.importorskip("prometheus_client")
from llmlab.serving.poller import Poller, only_families, read_json_stats, read_prometheus, sample_of  # noqa: E402
from llmlab.serving.protocols import parse_event, request_for  # noqa: E402
from llmlab.workloads import WorkItem  # noqa: E402

# trtllm-serve's GET /metrics: a list of iteration stats (LLM.get_stats()), emptied once read
TRTLLM_STATS = [
    {
        "iter": 11,
        "iterLatencyMS": 9.5,
        "numActiveRequests": 3,
        "numQueuedRequests": 2,
        "kvCacheStats": {"maxNumBlocks": 400, "freeNumBlocks": 370, "usedNumBlocks": 30, "tokensPerBlock": 32,
                         "reusedBlocks": 4},
        "inflightBatchingStats": {"numScheduledRequests": 3, "numContextRequests": 1, "numGenRequests": 2,
                                  "numPausedRequests": 0, "numCtxTokens": 57},
    },
    {
        "iter": 12,
        "numActiveRequests": 4,
        "numQueuedRequests": 1,
        "kvCacheStats": {"maxNumBlocks": 400, "usedNumBlocks": 36, "reusedBlocks": 5},
        "inflightBatchingStats": {"numScheduledRequests": 4, "numCtxTokens": 0},
    },
]  # fmt: skip

TRITON_PAGE = """\
# HELP nv_trt_llm_request_metrics TRT LLM request metrics
# TYPE nv_trt_llm_request_metrics gauge
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="active",version="1"} 5
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="waiting",version="1"} 2
nv_trt_llm_request_metrics{model="tensorrt_llm",request_type="max",version="1"} 64
# HELP nv_trt_llm_kv_cache_block_metrics TRT LLM KV cache block metrics
# TYPE nv_trt_llm_kv_cache_block_metrics gauge
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="used",model="tensorrt_llm",version="1"} 120
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="max",model="tensorrt_llm",version="1"} 480
nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="free",model="tensorrt_llm",version="1"} 360
"""

VLLM_PAGE = """\
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 3.0
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25
# TYPE vllm:num_preemptions counter
vllm:num_preemptions_total{engine="0",model_name="m"} 7.0
vllm:num_preemptions_created{engine="0",model_name="m"} 1.7e9
"""


def test_trtllm_iteration_stats_give_the_latest_sample():
    values = read_json_stats(json.loads(json.dumps(TRTLLM_STATS)))
    s = sample_of("trtllm", values, t=1.5)
    assert (s.running, s.waiting, s.kv_used, s.kv_total) == (4, 1, 36, 400)
    assert s.kv_usage == pytest.approx(36 / 400) and s.prefix_hits == 5 and s.batch_size == 4
    assert s.source == "derived" and read_json_stats([]) == {}


def test_triton_trtllm_backend_metric_families_by_label():
    s = sample_of("triton", read_prometheus(TRITON_PAGE), t=0.0)
    assert (s.running, s.waiting, s.kv_used, s.kv_total) == (5, 2, 120, 480)
    assert s.kv_usage == pytest.approx(0.25)


def test_vllm_counters_are_read_without_total_and_created_is_skipped():
    s = sample_of("openai", read_prometheus(VLLM_PAGE), t=0.0)
    assert (s.running, s.kv_usage, s.preemptions) == (3, 0.25, 7)
    assert s.waiting is None  # not in the page: not made up


@pytest.mark.parametrize(("protocol", "page"), [("openai", VLLM_PAGE), ("triton", TRITON_PAGE)])
def test_the_poller_parses_only_the_families_it_samples_and_gets_the_same_sample(protocol, page):
    unused = (  # a family no sample field reads, like the histograms that fill most of a vLLM page
        "# HELP vllm:e2e_request_latency_seconds Histogram of e2e request latency.\n"
        "# TYPE vllm:e2e_request_latency_seconds histogram\n"
        'vllm:e2e_request_latency_seconds_bucket{engine="0",le="1.0"} 3.0\n'
        'vllm:e2e_request_latency_seconds_count{engine="0"} 3.0\n'
        'vllm:e2e_request_latency_seconds_sum{engine="0"} 1.5\n'
    )
    families = Poller("http://x/metrics", protocol, 10.0, time.perf_counter, print).families
    cut = only_families(page + unused, families)
    assert "e2e_request_latency" not in cut and set(cut.splitlines()) == set(page.splitlines())
    whole = sample_of(protocol, read_prometheus(page + unused), 0.0)
    assert sample_of(protocol, read_prometheus(page + unused, families), 0.0) == whole


def test_stream_events_of_each_protocol():
    openai = parse_event("openai", json.dumps({"choices": [{"text": " Paris", "finish_reason": None}]}))
    assert (openai.tokens, openai.text) == (1, " Paris")
    usage = parse_event("openai", json.dumps({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 9}}))
    assert (usage.tokens, usage.prompt_tokens, usage.output_tokens) == (0, 7, 9)
    assert parse_event("openai", "[DONE]") is None
    last = {"token": {"id": 2, "text": "", "special": True}, "details": {"finish_reason": "eos_token",
            "generated_tokens": 5}}  # fmt: skip
    tgi = parse_event("tgi", json.dumps(last))
    assert (tgi.tokens, tgi.output_tokens, tgi.finish_reason) == (0, 5, "stop")
    err = parse_event("tgi", json.dumps({"error": "Input validation error", "error_type": "validation"}))
    assert err.error == "Input validation error"
    triton = parse_event("triton", json.dumps({"text_output": " Paris", "model_name": "m"}))
    assert (triton.tokens, triton.text) == (1, " Paris")


def test_requests_of_each_protocol():
    item = WorkItem("a", prompt="hi", max_tokens=5, ignore_eos=True)
    path, body = request_for("triton", "ensemble", "hi", 5, item)
    assert path == "/v2/models/ensemble/generate_stream" and body["text_input"] == "hi" and body["max_tokens"] == 5
    path, body = request_for("tgi", "m", "hi", 5, item)
    assert path == "/generate_stream" and body["parameters"]["max_new_tokens"] == 5
    path, body = request_for("trtllm", "m", "hi", 5, item)
    assert path == "/v1/completions" and body["stream"] and body["stream_options"] == {"include_usage": True}
    with pytest.raises(ValueError, match="protocol='grpc' is unknown"):
        request_for("grpc", "m", "hi", 5, item)
