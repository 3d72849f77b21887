"""llmlab's native engine behind a TGI-protocol and OpenAI-compatible HTTP front end.

`python -m llmlab.serving.frontend --model smollm2-135m --port 8080` (what `serve("native")`
runs). Routes: TGI's `/generate`, `/generate_stream` (server-sent events), `/info`, `/metrics`
(`tgi_*` names) and `/` ; OpenAI's `/v1/models`, `/v1/completions`, `/v1/chat/completions`.
One thread steps the engine; each request's tokens reach its stream through an asyncio queue.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from llmlab.config import VERSION as LLMLAB_VERSION
from llmlab.session.engine import launch
from llmlab.workloads import WorkItem

VERSION = "llmlab-" + LLMLAB_VERSION


class Backend:
    """Owns the engine core: requests are added under a lock, one thread steps while work is left.

    Each request's queue receives `(token_id, None)` per token; the last item carries the finish
    reason, on the last token (`(token_id, reason)`) or alone (`(None, reason)`), so a stream can
    mark its last token as TGI does. A request that fails receives a ValueError instead.
    """

    def __init__(self, model: str, **settings: Any) -> None:
        self.engine = launch("native", model=model, **settings)
        self.core = self.engine.core
        self.model = model
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue, list[int]]] = {}
        self.ids = itertools.count()
        self.registry = CollectorRegistry()
        self.g_batch = Gauge("tgi_batch_current_size", "requests in the running batch", registry=self.registry)
        self.g_queue = Gauge("tgi_queue_size", "requests waiting", registry=self.registry)
        self.g_tokens = Gauge("tgi_batch_current_max_tokens", "KV tokens in use", registry=self.registry)
        self.g_total = Gauge("tgi_batch_max_total_tokens", "KV tokens the pool holds", registry=self.registry)
        self.c_requests = Counter("tgi_request", "requests received", registry=self.registry)
        self.c_success = Counter("tgi_request_success", "requests finished", registry=self.registry)
        mem = self.engine.memory()
        self.g_total.set(mem.get("num_blocks", 0) * mem.get("block_size", 0))
        threading.Thread(target=self._loop, daemon=True, name="llmlab-frontend-engine").start()

    def submit(self, prompt: str, params: dict[str, Any]) -> tuple[str, asyncio.Queue, int]:
        """Queue a request; raises ValueError (a validation error) for bad parameters."""
        req_id = f"r{next(self.ids)}"
        item = WorkItem(req_id=req_id, prompt=prompt, **params)
        ids = self.core.encode(item)
        sp = self.core.params_for(item)
        queue: asyncio.Queue = asyncio.Queue()
        with self.lock:
            self.core.check_request(req_id, ids, sp)
            self.streams[req_id] = (asyncio.get_running_loop(), queue, [])
            self.core.add_request(req_id, ids, sp)
        self.c_requests.inc()
        self.wake.set()
        return req_id, queue, len(ids)

    def _put(self, req_id: str, item: Any) -> None:
        loop, queue, _ = self.streams[req_id]
        loop.call_soon_threadsafe(queue.put_nowait, item)

    def _loop(self) -> None:
        while True:
            self.wake.wait()
            with self.lock:
                if not self.core.has_unfinished():
                    self.wake.clear()
                    continue
                step = self.core.step()
                rec = step.record
                done = {c.req_id: c for c in step.finished}
                for req_id, why in step.errors.items():
                    if req_id in self.streams:
                        self._put(req_id, ValueError(why))
                        self.streams.pop(req_id)
                for req_id in dict.fromkeys([*step.new_tokens, *done]):
                    if req_id not in self.streams:
                        continue
                    req = self.core.requests.get(req_id)
                    out = done[req_id].token_ids if req_id in done else list(req.output_token_ids) if req else []
                    sent = self.streams[req_id][2]
                    items: list[tuple[int | None, str | None]] = [(t, None) for t in out[len(sent) :]]
                    sent.extend(t for t, _ in items)
                    if req_id in done:  # the last item carries the reason, on the last token or alone
                        items[-1:] = [(items[-1][0] if items else None, done[req_id].finish_reason)]
                    for item in items:
                        self._put(req_id, item)
                    if req_id in done:
                        self.streams.pop(req_id)
                        self.c_success.inc()
            running = getattr(rec, "running", 0)
            self.g_batch.set(running)
            self.g_queue.set(getattr(rec, "waiting", 0))
            kv = getattr(rec, "kv", None)
            if kv is not None:
                self.g_tokens.set(kv.used * kv.block_size)


def _params(p: dict[str, Any]) -> dict[str, Any]:
    """TGI's (or OpenAI's) sampling parameters as WorkItem fields."""
    out: dict[str, Any] = {"max_tokens": int(p.get("max_new_tokens") or p.get("max_tokens") or 20)}
    temperature = p.get("temperature")
    if temperature is not None and (p.get("do_sample", True)):
        out["temperature"] = float(temperature)
    if p.get("top_p") is not None:
        out["top_p"] = float(p["top_p"])
    if p.get("seed") is not None:
        out["seed"] = int(p["seed"])
    stop = p.get("stop")
    if stop:
        out["stop"] = [stop] if isinstance(stop, str) else list(stop)
    if p.get("ignore_eos"):
        out["ignore_eos"] = True
    return out


class _Pieces:
    """Incremental detokenization: the text each new token adds, as a stream shows it."""

    def __init__(self, tokenizer: Any) -> None:
        self.tok, self.ids, self.text = tokenizer, [], ""

    def add(self, tid: int) -> str:
        self.ids.append(tid)
        new = self.tok.decode(self.ids, skip_special_tokens=True)
        piece, self.text = new[len(self.text) :], new
        return piece


def _token(tid: int, text: str, special: bool = False) -> dict[str, Any]:
    """One token as TGI writes it; llmlab does not compute log-probabilities, so `logprob` is null."""
    return {"id": tid, "text": text, "logprob": None, "special": special}


def _error(message: str, status: int = 422, kind: str = "validation") -> JSONResponse:
    return JSONResponse({"error": message, "error_type": kind}, status_code=status)


def _tgi_reason(reason: str | None) -> str:
    return {"stop": "eos_token", "length": "length"}.get(reason or "", reason or "length")


def create_app(backend: Backend) -> Starlette:
    """The Starlette app serving `backend` over TGI's and OpenAI's routes."""
    tok = backend.core.tokenizer

    async def tokens(queue: asyncio.Queue) -> AsyncIterator[tuple[int | None, str | None]]:
        """`(token_id, None)` per token; the last pair carries the finish reason."""
        while True:
            got = await queue.get()
            if isinstance(got, Exception):
                raise got
            yield got
            if got[1] is not None:
                return

    async def collect(queue: asyncio.Queue) -> tuple[list[int], str | None]:
        """Every token id of a finished generation and why it finished."""
        ids, reason = [], None
        async for tid, why in tokens(queue):
            if tid is not None:
                ids.append(tid)
            reason = why
        return ids, reason

    async def start(body: dict[str, Any], prompt_key: str = "inputs"):
        prompt = body.get(prompt_key)
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"`{prompt_key}` must be a non-empty string")
        return backend.submit(prompt, _params(body.get("parameters") or body))

    async def generate_stream(request: Request) -> Response:
        body = await request.json()
        try:
            _, queue, _ = await start(body)
        except ValueError as exc:
            return _error(str(exc))
        details = bool((body.get("parameters") or {}).get("details", True))

        async def events() -> AsyncIterator[bytes]:
            # as TGI: one event per token, and the last token's event carries the text and details
            out = _Pieces(tok)
            try:
                async for tid, reason in tokens(queue):
                    if tid is None:  # finished on a token it does not return (end of sequence)
                        token = _token(tok.eos_token_id if tok.eos_token_id is not None else 0, "", special=True)
                    else:
                        token = _token(tid, out.add(tid))
                    event: dict[str, Any] = {"token": token, "generated_text": None, "details": None}
                    if reason is not None:
                        event["generated_text"] = out.text
                        if details:
                            event["details"] = {
                                "finish_reason": _tgi_reason(reason),
                                "generated_tokens": len(out.ids),
                                "seed": None,
                            }
                    yield f"data:{json.dumps(event)}\n\n".encode()
            except ValueError as exc:
                yield f"data:{json.dumps({'error': str(exc), 'error_type': 'generation'})}\n\n".encode()

        return StreamingResponse(events(), media_type="text/event-stream")

    async def generate(request: Request) -> Response:
        body = await request.json()
        try:
            _, queue, _ = await start(body)
            ids, reason = await collect(queue)
        except ValueError as exc:
            return _error(str(exc))
        pieces = _Pieces(tok)
        tokens_out = [_token(tid, pieces.add(tid)) for tid in ids]
        out: dict[str, Any] = {"generated_text": pieces.text}
        if (body.get("parameters") or {}).get("details"):
            out["details"] = {
                "finish_reason": _tgi_reason(reason),
                "generated_tokens": len(ids),
                "seed": None,
                "prefill": [],
                "tokens": tokens_out,
            }
        return JSONResponse(out)

    async def root(request: Request) -> Response:
        """TGI's `/`: a stream when `stream` is true, else the generation wrapped in a list."""
        body = await request.json()
        if body.get("stream"):
            return await generate_stream(request)
        response = await generate(request)
        if response.status_code != 200:
            return response
        return JSONResponse([json.loads(response.body)])

    async def info(request: Request) -> Response:
        limit = backend.core.max_model_len or 2048
        return JSONResponse(
            {
                "model_id": backend.model,
                "model_dtype": backend.engine.info.dtype,
                "model_device_type": backend.engine.info.device,
                "max_input_tokens": limit - 1,
                "max_total_tokens": limit,
                "max_concurrent_requests": 128,
                "version": VERSION,
                "router": "llmlab.serving.frontend",
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(backend.registry), media_type="text/plain; version=0.0.4")

    async def models(request: Request) -> Response:
        return JSONResponse(
            {"object": "list", "data": [{"id": backend.model, "object": "model", "owned_by": "llmlab"}]}
        )

    async def openai(request: Request, chat: bool) -> Response:
        body = await request.json()
        prompt = body.get("prompt")
        if chat:
            msgs = body.get("messages") or []
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) if msgs else None
        try:
            if not isinstance(prompt, str) or not prompt:
                raise ValueError("`messages`" if chat else "`prompt` must be a non-empty string")
            _, queue, n_prompt = backend.submit(prompt, _params(body))
        except ValueError as exc:
            return JSONResponse({"error": {"message": str(exc), "type": "BadRequestError"}}, status_code=400)
        kind = "chat.completion" if chat else "text_completion"
        created = int(time.time())

        def choice(piece: str, reason: str | None) -> dict[str, Any]:
            if chat:
                return {"index": 0, "delta": {"content": piece} if piece else {}, "finish_reason": reason}
            return {"index": 0, "text": piece, "finish_reason": reason}

        if body.get("stream"):

            async def events() -> AsyncIterator[bytes]:
                out = _Pieces(tok)
                async for tid, reason in tokens(queue):
                    if tid is not None:
                        chunk = {"object": kind, "created": created, "model": backend.model}
                        yield f"data: {json.dumps({**chunk, 'choices': [choice(out.add(tid), None)]})}\n\n".encode()
                    if reason is not None:
                        last = {"object": kind + (".chunk" if chat else ""), "created": created, "model": backend.model}
                        yield f"data: {json.dumps({**last, 'choices': [choice('', reason)]})}\n\n".encode()
                        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(out.ids)}
                        usage["total_tokens"] = n_prompt + len(out.ids)
                        yield f"data: {json.dumps({**last, 'choices': [], 'usage': usage})}\n\n".encode()
                        yield b"data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")
        ids, reason = await collect(queue)
        text = tok.decode(ids, skip_special_tokens=True)
        c = {"index": 0, "finish_reason": reason}
        c.update({"message": {"role": "assistant", "content": text}} if chat else {"text": text})
        usage = {"prompt_tokens": n_prompt, "completion_tokens": len(ids), "total_tokens": n_prompt + len(ids)}
        return JSONResponse(
            {"object": kind, "created": created, "model": backend.model, "choices": [c], "usage": usage}
        )

    async def completions(request: Request) -> Response:
        return await openai(request, chat=False)

    async def chat_completions(request: Request) -> Response:
        return await openai(request, chat=True)

    return Starlette(
        routes=[
            Route("/", root, methods=["POST"]),
            Route("/generate", generate, methods=["POST"]),
            Route("/generate_stream", generate_stream, methods=["POST"]),
            Route("/info", info),
            Route("/metrics", metrics),
            Route("/v1/models", models),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Start the front end: --model, --host, --port, and engine settings as --dtype, --num-blocks."""
    import uvicorn

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8080)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--num-blocks", type=int, default=256)
    a = ap.parse_args(argv)
    backend = Backend(a.model, dtype=a.dtype, num_blocks=a.num_blocks)
    uvicorn.run(create_app(backend), host=a.host, port=a.port, log_level="warning")


if __name__ == "__main__":
    main()
