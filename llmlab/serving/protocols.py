"""What each server protocol sends and streams back, and which of its metrics mean what.

A protocol turns one work item into an HTTP request and reads its server-sent events into
`Chunk`s (tokens so far, usage, finish reason); `METRICS` maps each protocol's Prometheus names
onto the fields of a `ServerSample`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

PROTOCOLS = ("openai", "tgi", "triton", "trtllm")


@dataclass
class Chunk:
    """One streamed event: how many new tokens it carries, and usage or finish where it says so."""

    tokens: int = 0
    text: str = ""
    prompt_tokens: int | None = None
    output_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None


def request_for(protocol: str, model: str, prompt: str, max_tokens: int, item: Any) -> tuple[str, dict[str, Any]]:
    """The path and JSON body that ask `protocol`'s server to stream a completion of `prompt`."""
    if protocol in ("openai", "trtllm"):
        body: dict[str, Any] = {
            "model": model,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": item.temperature,
            "top_p": item.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if item.ignore_eos:
            body["ignore_eos"] = True  # vLLM and trtllm-serve take it; others ignore unknown fields
        if item.seed is not None:
            body["seed"] = item.seed
        if item.stop:
            body["stop"] = list(item.stop)
        return "/v1/completions", body
    if protocol == "tgi":
        params: dict[str, Any] = {"max_new_tokens": max_tokens, "details": True}
        if item.temperature > 0:
            params.update(do_sample=True, temperature=item.temperature)
        if item.seed is not None:
            params["seed"] = item.seed
        if item.stop:
            params["stop"] = list(item.stop)
        if item.ignore_eos:
            params["ignore_eos"] = True  # not in TGI's schema (it ignores it); llmlab's front end honours it
        return "/generate_stream", {"inputs": prompt, "parameters": params, "stream": True}
    if protocol == "triton":
        body = {"text_input": prompt, "max_tokens": max_tokens, "stream": True, "temperature": item.temperature}
        if item.ignore_eos:
            body["ignore_eos"] = True  # a request parameter; llmlab's model inside Triton honours it
        return f"/v2/models/{model}/generate_stream", body
    raise ValueError(f"protocol={protocol!r} is unknown: choose one of {PROTOCOLS}")


def parse_event(protocol: str, data: str) -> Chunk | None:
    """One `data:` payload of a stream as a `Chunk`; None for the end marker."""
    if data.strip() == "[DONE]":
        return None
    d = json.loads(data)
    if isinstance(d, dict) and "error" in d:
        err = d["error"]
        return Chunk(error=err.get("message", str(err)) if isinstance(err, dict) else str(err))
    if protocol in ("openai", "trtllm"):
        out = Chunk()
        for choice in d.get("choices") or []:
            text = choice.get("text") or (choice.get("delta") or {}).get("content") or ""
            out.text += text
            out.tokens += 1 if text or choice.get("finish_reason") is None else 0
            out.finish_reason = choice.get("finish_reason") or out.finish_reason
        usage = d.get("usage")
        if usage:
            out.prompt_tokens = usage.get("prompt_tokens")
            out.output_tokens = usage.get("completion_tokens")
        return out
    if protocol == "tgi":
        tok = d.get("token") or {}
        details = d.get("details") or {}
        reason = details.get("finish_reason")
        return Chunk(
            tokens=0 if tok.get("special") and reason else 1,
            text=tok.get("text", ""),
            output_tokens=details.get("generated_tokens"),
            finish_reason={"eos_token": "stop", "stop_sequence": "stop"}.get(reason, reason),
        )
    if protocol == "triton":
        # an ensemble streams `text_output`; a bare TensorRT-LLM (or llmlab's) model streams `output_ids`
        return Chunk(tokens=1, text=d.get("text_output", ""), finish_reason=d.get("finish_reason"))
    raise ValueError(f"protocol={protocol!r} is unknown: choose one of {PROTOCOLS}")


# Prometheus names -> ServerSample fields, per protocol (counters are read without "_total").
METRICS: dict[str, dict[str, str]] = {
    "openai": {  # vLLM's server
        "vllm:num_requests_running": "running",
        "vllm:num_requests_waiting": "waiting",
        "vllm:kv_cache_usage_perc": "kv_usage",
        "vllm:num_preemptions": "preemptions",
        "vllm:prefix_cache_hits": "prefix_hits",
    },
    "tgi": {
        "tgi_batch_current_size": "running",
        "tgi_queue_size": "waiting",
        "tgi_batch_current_max_tokens": "kv_used",
        "tgi_batch_max_total_tokens": "kv_total",
    },
    "triton": {
        "nv_trt_llm_request_metrics{request_type=active}": "running",
        "nv_trt_llm_request_metrics{request_type=waiting}": "waiting",
        "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=used}": "kv_used",
        "nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=max}": "kv_total",
        "nv_trt_llm_request_metrics{request_type=scheduled}": "batch_size",
        "nv_trt_llm_inflight_batcher_metrics{inflight_batcher_specific_metric=total_context_tokens}": "batch_tokens",
        "nv_inference_pending_request_count": "waiting",
    },
    "trtllm": {  # trtllm-serve's iteration stats (JSON at /metrics), flattened with dots
        "numActiveRequests": "running",
        "numQueuedRequests": "waiting",
        "kvCacheStats.usedNumBlocks": "kv_used",
        "kvCacheStats.maxNumBlocks": "kv_total",
        "kvCacheStats.reusedBlocks": "prefix_hits",
        "inflightBatchingStats.numScheduledRequests": "batch_size",
        "inflightBatchingStats.numCtxTokens": "batch_tokens",
    },
}
