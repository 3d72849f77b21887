"""`connect(url)`: a running server as an engine, measured from outside over HTTP.

Requests go out on an asyncio loop in a background thread (httpx), open loop at each item's
arrival time or closed loop at `workload.concurrency`; every streamed token is timed on arrival.
The server's metrics are polled alongside into `trace.sample_records`. An API key is kept in a
private attribute only: never printed, logged, put in `info` or saved.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from llmlab import workloads
from llmlab.core.records import Completion, EngineInfo, RequestRecord
from llmlab.serving.poller import Poller
from llmlab.serving.protocols import PROTOCOLS, parse_event, request_for
from llmlab.session.run import Run
from llmlab.session.trace import Trace
from llmlab.workloads import WorkItem, Workload

CONNECT_TIMEOUT = 5.0
VIEWS = {"latency": "exact", "requests": "exact", "queue": "sampled", "kv": "sampled", "schedule": "none"}
PROBES = (("tgi", "/info"), ("openai", "/v1/models"), ("triton", "/v2"))  # TGI serves /v1 too: ask /info first


class Secret:
    """A value that never shows itself: its repr and str are "***" (an API key in `vars()` or a log)."""

    __slots__ = ("_value",)

    def __init__(self, value: str | None) -> None:
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "***" if self._value else "None"

    __str__ = __repr__


class ServerDown(ConnectionError):
    """The server stopped answering during a run."""


def strip_credentials(url: str) -> tuple[str, str | None]:
    """`url` without user:password, and the password (used as the API key when none is given)."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        raise ValueError(f"url={url!r} is not an http(s) URL: pass e.g. 'http://127.0.0.1:8000'")
    host = parts.hostname + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, host, parts.path.rstrip("/"), "", "")), parts.password


class ServerEngine:
    """A server measured from outside: `run(workload, live=...)`, `generate(prompts)`, `info`, `close()`.

    Open-loop sends are punctual to about a millisecond: a request sleeps until `send_ahead` seconds
    before its arrival time, then yields to the loop until the time has come (a timer alone wakes up
    to a millisecond late).
    """

    send_ahead = 0.002

    def __init__(
        self,
        url: str,
        protocol: str | None = None,
        model: str | None = None,
        api_key: str | None = None,
        metrics_url: str | None = None,
        poll_hz: float = 10.0,
        timeout: float = 300.0,
        tokenizer_model: str = "smollm2-135m",
    ) -> None:
        self.url, url_key = strip_credentials(url)
        self.__api_key = Secret(api_key or url_key)
        if protocol is not None and protocol not in PROTOCOLS:
            raise ValueError(f"protocol={protocol!r} is unknown: choose one of {PROTOCOLS} or None to probe")
        if not (isinstance(poll_hz, int | float) and poll_hz >= 0):
            raise ValueError(f"poll_hz={poll_hz!r} must be a number >= 0 (0: do not poll metrics)")
        self.poll_hz, self.timeout, self.tokenizer_model = float(poll_hz), float(timeout), tokenizer_model
        self.last_run: Run | None = None
        self.closed = False
        self._tokenizer: Any = None
        spoken = self._probe()  # protocol -> what the server said, in probe order
        found = next(iter(spoken))
        if protocol is None:
            protocol = found
        elif protocol not in spoken and not (protocol == "trtllm" and "openai" in spoken):
            raise ValueError(
                f"{self.url} speaks the {found!r} protocol, not {protocol!r}: connect with protocol={found!r}"
            )
        server_info = {**spoken.get("openai", {}), **{k: v for k, v in spoken.get(protocol, {}).items() if v}}
        self.protocol = protocol
        self.model = model or server_info.get("model") or "default"
        self.metrics_url = metrics_url or self.url + ("/prometheus/metrics" if protocol == "trtllm" else "/metrics")
        self._info = EngineInfo(
            engine=f"{protocol} server",
            version=str(server_info.get("version", "unknown")),
            model=self.model,
            device=self.url,
            dtype="unknown",
            config={"url": self.url, "protocol": protocol, "metrics_url": self.metrics_url, "poll_hz": self.poll_hz},
            views=dict(VIEWS),
        )

    @property
    def _headers(self) -> dict[str, str]:
        key = self.__api_key.get()
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def info(self) -> EngineInfo:
        return self._info

    @property
    def name(self) -> str:
        return self._info.engine

    @property
    def tokenizer(self) -> Any:
        """The tokenizer for corpus prompts and for counting tokens a server does not report."""
        if self._tokenizer is None:
            from llmlab.models import load_tokenizer, resolve

            self._tokenizer = load_tokenizer(resolve(self.tokenizer_model).path)
        return self._tokenizer

    # probing -----------------------------------------------------------------------------
    def _probe(self) -> dict[str, dict[str, Any]]:
        """The protocols the server answers (of /info, /v1/models, /v2, in that order) and what each said."""
        timeout = httpx.Timeout(CONNECT_TIMEOUT)
        said, spoken = [], {}
        try:
            with httpx.Client(timeout=timeout, headers=self._headers) as client:
                for protocol, path in PROBES:
                    r = client.get(self.url + path)
                    said.append(f"{path}: {r.status_code}")
                    if r.status_code == 200 and (said_info := _server_info(protocol, r)) is not None:
                        spoken[protocol] = said_info
            if spoken:
                return spoken
        except httpx.TransportError as exc:
            raise ConnectionError(
                f"cannot reach {self.url} ({type(exc).__name__}: {exc}): is the server running and the URL right?"
            ) from None
        raise ValueError(f"{self.url} answers none of the known protocols ({', '.join(said)}); pass protocol=...")

    # running -----------------------------------------------------------------------------
    def run(self, workload: Workload, live: bool = False) -> Run:
        """Send `workload` to the server; returns a finished `Run`, or at once with `live=True`."""
        if self.closed:
            raise ValueError(f"this connection to {self.url} is closed: call llmlab.connect again")
        if not isinstance(workload, Workload):
            raise TypeError(f"workload={workload!r} is not a Workload: build one with llmlab.workloads")
        prompts = {item.req_id: self._prompt_text(item) for item in workload}
        run = Run(Trace(self._info), total=len(workload))
        self.last_run = run
        thread = threading.Thread(target=self._drive, args=(run, workload, prompts), name="llmlab-client", daemon=True)
        run.started(thread)
        thread.start()
        if not live:
            try:
                run.wait()
            except KeyboardInterrupt:
                run.stop().wait()
                raise
        return run

    def _prompt_text(self, item: WorkItem) -> str:
        if isinstance(item.prompt, str) and not item.chat:
            return item.prompt
        ids = workloads.prompt_token_ids(item, self.tokenizer)
        return self.tokenizer.decode(ids)

    def _drive(self, run: Run, workload: Workload, prompts: dict[str, str]) -> None:
        t0 = time.perf_counter()
        clock = lambda: time.perf_counter() - t0  # noqa: E731
        try:
            try:
                asyncio.run(self._send_all(run, workload, prompts, clock))
            finally:  # prompt tokens the server did not report, counted after the run (off the send loop)
                for rec in run.trace.request_records.values():
                    if not rec.prompt_tokens and rec.req_id in prompts:
                        rec.prompt_tokens = len(self.tokenizer.encode(prompts[rec.req_id], add_special_tokens=False))
            run.status = "stopped" if run.stop_requested else "finished"
        except BaseException as exc:  # the run ends failed; what finished is kept
            run.status, run.error = "failed", exc
        finally:
            run.ended()

    async def _send_all(self, run: Run, workload: Workload, prompts: dict[str, str], clock) -> None:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
        timeout = httpx.Timeout(self.timeout, connect=CONNECT_TIMEOUT)
        down: list[BaseException] = []
        async with httpx.AsyncClient(timeout=timeout, limits=limits, headers=self._headers) as client:
            gate = asyncio.Semaphore(workload.concurrency) if workload.concurrency else None

            async def one(item: WorkItem) -> None:
                if gate is not None:
                    async with gate:
                        await self._request(client, run, item, prompts[item.req_id], clock, clock(), down)
                    return
                delay = item.arrival - clock() - self.send_ahead
                if delay > 0:
                    await asyncio.sleep(delay)
                while clock() < item.arrival:  # the last moments: yield to other tasks, not to a timer
                    await asyncio.sleep(0)
                await self._request(client, run, item, prompts[item.req_id], clock, item.arrival, down)

            poll = None
            if self.poll_hz > 0:  # on this loop, not a thread: see Poller.poll
                poller = Poller(self.metrics_url, self.protocol, self.poll_hz, clock, run.trace.add_sample)
                poll = asyncio.create_task(poller.poll(client))
            tasks = [asyncio.create_task(one(item)) for item in workload]
            pending = set(tasks)
            while pending:
                _, pending = await asyncio.wait(pending, timeout=0.05)
                if down or run.stop_requested:
                    for task in pending:
                        task.cancel()
                    await asyncio.gather(*pending, return_exceptions=True)
                    break
            if poll is not None:
                poll.cancel()
                await asyncio.gather(poll, return_exceptions=True)
        if down:
            raise ServerDown(f"{self.url} stopped answering during the run: {down[0]}") from down[0]

    async def _request(self, client, run, item: WorkItem, prompt: str, clock, due: float, down: list) -> None:
        if down or run.stop_requested:
            return
        path, body = request_for(self.protocol, self.model, prompt, item.max_tokens, item)
        rec = RequestRecord(req_id=item.req_id, arrival=max(due, 0.0), prompt_tokens=0)
        text = ""
        try:
            rec.sent = clock()
            rec.first_scheduled = rec.sent
            run.trace.add_request(rec)
            async with client.stream("POST", self.url + path, json=body) as r:
                if r.status_code >= 400:
                    detail = (await r.aread()).decode(errors="replace")[:500]
                    rec.finish, rec.finish_reason = clock(), "error"
                    rec.error = f"HTTP {r.status_code}: {detail}"
                    return
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    chunk = parse_event(self.protocol, line[5:].strip())
                    now = clock()
                    if chunk is None:
                        break
                    if chunk.error:
                        rec.finish, rec.finish_reason, rec.error = now, "error", chunk.error
                        return
                    if chunk.tokens:
                        if rec.first_token is None:
                            rec.first_token = now
                        rec.token_times.extend([now] * chunk.tokens)
                        rec.output_tokens += chunk.tokens
                    text += chunk.text
                    if chunk.output_tokens is not None:
                        rec.output_tokens = chunk.output_tokens
                    if chunk.prompt_tokens is not None:
                        rec.prompt_tokens = chunk.prompt_tokens
                    if chunk.finish_reason:
                        rec.finish_reason = chunk.finish_reason
            rec.finish = clock()
            rec.finish_reason = rec.finish_reason or "stop"
            run.trace.add_output(Completion(item.req_id, text, [], rec.finish_reason))
        except httpx.TransportError as exc:
            rec.finish, rec.finish_reason = clock(), "error"
            rec.error = f"{type(exc).__name__}: {exc}"
            down.append(exc)
        except asyncio.CancelledError:
            rec.finish_reason = rec.finish_reason or "abort"
            raise

    def generate(self, prompts: str | list[str], max_tokens: int = 64, **kwargs: Any) -> list[Completion]:
        """Complete each prompt on the server; returns completions in prompt order."""
        wl = workloads.fixed(prompts if isinstance(prompts, list) else [prompts], max_tokens=max_tokens, **kwargs)
        run = self.run(wl)
        if run.error is not None:
            raise run.error
        for item in wl:
            rec = run.trace.request_records[item.req_id]
            if rec.finish_reason == "error":
                raise RuntimeError(f"request {item.req_id!r} failed: {rec.error}")
        return [run.outputs[item.req_id] for item in wl]

    def close(self) -> None:
        """Stop a run in flight; the server itself keeps running."""
        if self.last_run is not None and not self.last_run.done:
            self.last_run.stop().wait()
        self.closed = True

    def __enter__(self) -> ServerEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self.name} at {self.url}: model {self.model}>"


def _server_info(protocol: str, r: httpx.Response) -> dict[str, Any] | None:
    """What a probe's answer says (model, version); None when it is not that protocol's answer."""
    try:
        d = r.json()
    except json.JSONDecodeError:
        return None
    if not isinstance(d, dict):
        return None
    if protocol == "openai":
        models = d.get("data") or []
        return {"model": models[0]["id"] if models else None}
    if protocol == "tgi":
        if "model_id" not in d:
            return None
        return {"model": d.get("model_id"), "version": d.get("version")}
    return {"version": d.get("version")}


def connect(
    url: str,
    protocol: str | None = None,
    model: str | None = None,
    api_key: str | None = None,
    metrics_url: str | None = None,
    poll_hz: float = 10.0,
    timeout: float = 300.0,
) -> ServerEngine:
    """A running server as an engine: `connect("http://127.0.0.1:8000").run(workload)`.

    `protocol`: "openai" | "tgi" | "triton" | "trtllm", or None to probe /v1/models, /info and /v2.
    An unreachable URL fails within 5 s naming it; a wrong protocol names the one the server speaks.
    """
    return ServerEngine(url, protocol, model, api_key, metrics_url, poll_hz, timeout)
