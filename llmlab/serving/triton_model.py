"""The Python-backend model that `serve("triton")` copies into its repository as `model.py`.

It runs inside `tritonserver`'s Python stub, never in the notebook: llmlab's native engine is
stepped by one background thread; `execute()` only adds requests (decoupled, so each token is
streamed through the request's response sender). After every step it sets the TensorRT-LLM
backend's own metric families (`nv_trt_llm_*`, same names and labels) and appends the step's
counts to `trace.jsonl` in the repository, so a test can compare what Triton exported with what
the engine did.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import torch
import triton_python_backend_utils as pb_utils  # only importable inside Triton's Python stub

MODEL_LABELS = {"model": "tensorrt_llm", "version": "1"}  # the labels the TensorRT-LLM backend puts on its families


def _fields(request: Any) -> dict[str, Any]:
    """The request's JSON fields. The model declares no text inputs, so Triton's generate endpoints
    pass `text_input`, `max_tokens`, ... as request parameters (BYTES input tensors cannot be read
    here: the 2.51 stub mangles them under numpy 2)."""
    return json.loads(request.parameters() or "{}")


class TritonPythonModel:
    """llmlab's native engine as a decoupled Triton model exporting TensorRT-LLM's metric families."""

    def initialize(self, args: dict[str, Any]) -> None:
        from llmlab.session.engine import launch

        repo = Path(args["model_repository"])
        settings = json.loads((repo / "llmlab.json").read_text())
        self.engine = launch("native", model=settings["model"], **settings.get("settings", {}))
        self.core = self.engine.core
        self.tokenizer = self.core.tokenizer
        self.trace = open(repo / "trace.jsonl", "a", buffering=1)  # noqa: SIM115 (closed in finalize)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stop = False
        self.streams: dict[str, list[Any]] = {}  # req_id -> [sender, token ids sent, text sent]
        self.next_id = 0
        self.steps = 0
        self._metrics()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="llmlab-triton-engine")
        self.thread.start()

    def _metrics(self) -> None:
        """The TensorRT-LLM backend's gauge families, one metric per label value it uses."""

        def family(name: str, label: str, values: tuple[str, ...], what: str) -> dict[str, Any]:
            fam = pb_utils.MetricFamily(name=name, description=what, kind=pb_utils.MetricFamily.GAUGE)
            self.families.append(fam)  # keep each family alive as long as its metrics
            return {v: fam.Metric(labels={**MODEL_LABELS, label: v}) for v in values}

        self.families: list[Any] = []
        self.m_request = family(
            "nv_trt_llm_request_metrics",
            "request_type",
            ("active", "max", "scheduled", "context", "waiting"),
            "Number of active, max, scheduled, context and waiting requests",
        )
        self.m_kv = family(
            "nv_trt_llm_kv_cache_block_metrics",
            "kv_cache_block_type",
            ("max", "free", "used", "tokens_per", "fraction"),
            "KV cache block metrics",
        )
        self.m_ifb = family(
            "nv_trt_llm_inflight_batcher_metrics",
            "inflight_batcher_specific_metric",
            ("total_context_tokens", "generation_requests", "micro_batch_id", "paused_requests"),
            "In-flight batcher metrics",
        )
        self.m_general = family(
            "nv_trt_llm_general_metrics", "general_type", ("iteration_counter", "timestamp"), "General metrics"
        )
        mem = self.engine.memory()  # the pool's size is known before the first step
        self.m_kv["max"].set(mem.get("num_blocks", 0))
        self.m_kv["free"].set(mem.get("num_blocks", 0))
        self.m_kv["tokens_per"].set(mem.get("block_size", 0))
        self.m_request["max"].set(float(getattr(self.engine.info, "config", {}).get("max_num_seqs", 0) or 0))

    def execute(self, requests: list[Any]) -> None:
        """Queue each request on the engine; tokens go out from the stepping thread."""
        for request in requests:
            sender = request.get_response_sender()
            try:
                f = _fields(request)
                if "text_input" not in f:
                    raise ValueError("the request has no text_input: send {'text_input': '...', 'max_tokens': N}")
                max_tokens, temperature = int(f.get("max_tokens", 16)), float(f.get("temperature", 0.0))
                self._add(str(f["text_input"]), max_tokens, temperature, bool(f.get("ignore_eos", False)), sender)
            except Exception as exc:  # a bad request is answered with its error; the engine goes on
                sender.send(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                    flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                )
        return None

    def _add(self, prompt: str, max_tokens: int, temperature: float, ignore_eos: bool, sender: Any) -> None:
        from llmlab.workloads import WorkItem

        with self.lock:
            req_id = f"t{self.next_id}"
            self.next_id += 1
            item = WorkItem(
                req_id=req_id, prompt=prompt, max_tokens=max_tokens, temperature=temperature, ignore_eos=ignore_eos
            )
            ids = self.core.encode(item)
            sp = self.core.params_for(item)
            self.core.check_request(req_id, ids, sp)
            self.streams[req_id] = [sender, []]
            self.core.add_request(req_id, ids, sp)
        self.wake.set()

    def _send(self, req_id: str, tokens: list[int], finish: str | None) -> None:
        """One response per new token, its id in `output_ids` (the TensorRT-LLM model's own output name);
        the last one ends the stream."""
        sender, sent = self.streams[req_id]
        for i, tok in enumerate(tokens):
            sent.append(tok)
            last = finish is not None and i == len(tokens) - 1
            # from DLPack, not numpy: the 2.51 stub is built for numpy 1 and misreads numpy 2 arrays
            outputs = [pb_utils.Tensor.from_dlpack("output_ids", torch.tensor([tok], dtype=torch.int32))]
            flags = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0
            sender.send(pb_utils.InferenceResponse(output_tensors=outputs), flags=flags)
        if finish is not None and not tokens:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _loop(self) -> None:
        while not self.stop:
            if not self.wake.wait(0.2):
                continue
            with self.lock:
                if not self.core.has_unfinished():
                    self.wake.clear()
                    continue
                step = self.core.step()
                done = {c.req_id: c for c in step.finished}
                for req_id in set(step.new_tokens) | set(done):
                    if req_id not in self.streams:
                        continue
                    req = self.core.requests.get(req_id)
                    out = done[req_id].token_ids if req_id in done else list(req.output_token_ids) if req else []
                    new = out[len(self.streams[req_id][1]) :]
                    self._send(req_id, new, done[req_id].finish_reason if req_id in done else None)
                    if req_id in done:
                        self.streams.pop(req_id)
                for req_id, why in step.errors.items():
                    if req_id in self.streams:
                        sender = self.streams.pop(req_id)[0]
                        sender.send(
                            pb_utils.InferenceResponse(error=pb_utils.TritonError(why)),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
                        )
                self._export(step.record)

    def _export(self, rec: Any) -> None:
        """Set the TensorRT-LLM families from this step, and log the same counts to trace.jsonl."""
        context = [s for s in rec.batch if s.phase == "prefill"]
        self.steps += 1
        counts = {
            "step": self.steps,
            "active": rec.running + rec.waiting,
            "scheduled": len(rec.batch),
            "context": len(context),
            "waiting": rec.waiting,
            "generation_requests": len(rec.batch) - len(context),
            "total_context_tokens": sum(s.num_tokens for s in context),
            "paused_requests": len(rec.preempted),
        }
        for key in ("active", "scheduled", "context", "waiting"):
            self.m_request[key].set(counts[key])
        for key in ("total_context_tokens", "generation_requests", "paused_requests"):
            self.m_ifb[key].set(counts[key])
        self.m_ifb["micro_batch_id"].set(0)
        if rec.kv is not None:
            kv = rec.kv
            counts.update(kv_used=kv.used, kv_free=kv.free, kv_max=kv.num_blocks, tokens_per=kv.block_size)
            self.m_kv["used"].set(kv.used)
            self.m_kv["free"].set(kv.free)
            self.m_kv["max"].set(kv.num_blocks)
            self.m_kv["tokens_per"].set(kv.block_size)
            self.m_kv["fraction"].set(kv.used / kv.num_blocks if kv.num_blocks else 0.0)
        self.m_general["iteration_counter"].set(self.steps)
        self.m_general["timestamp"].set(time.time())
        self.trace.write(json.dumps(counts) + "\n")

    def finalize(self) -> None:
        """Stop the stepping thread and close the trace file."""
        self.stop = True
        self.wake.set()
        self.thread.join(timeout=10)
        self.trace.close()
