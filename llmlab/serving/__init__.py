"""Servers as engines: `connect(url)` measures a running server from outside; `serve(kind)` starts one.

Both need the `serving` extra (httpx, prometheus-client; starlette and uvicorn for llmlab's own front end).
"""

from __future__ import annotations

from llmlab.serving.client import ServerEngine, connect
from llmlab.serving.launch import Server, serve

__all__ = ["Server", "ServerEngine", "connect", "serve"]
