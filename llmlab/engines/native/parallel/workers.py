"""Worker processes: one per rank, started with spawn and joined by torch.distributed (gloo on
CPU, NCCL on CUDA). The caller talks to each over a pipe; a worker that dies or raises is found
by its process sentinel or its reply, and then every worker is ended."""

from __future__ import annotations

import atexit
import os
import socket
import time
import traceback
import weakref
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch.multiprocessing as mp

START_TIMEOUT_S = 300.0


class WorkerError(RuntimeError):
    """A worker died or raised; the parallel engine is unusable and its workers are ended."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_main(conn: Connection, rank: int, world: int, port: int, options: dict[str, Any]) -> None:
    """A worker's life: join the group, load its shard, then serve steps until told to stop or
    until the caller's end of the pipe closes (the caller died)."""
    try:
        from llmlab.engines.native.parallel.stage import StageWorker

        worker = StageWorker(rank, world, port, options)
        conn.send(("ready", rank, worker.describe()))
    except BaseException:
        conn.send(("error", rank, traceback.format_exc()))
        return
    while True:
        try:
            op, payload = conn.recv()
        except (EOFError, OSError):
            break
        if op == "close":
            break
        try:
            conn.send(("ok", rank, worker.handle(op, payload)))
        except BaseException:
            conn.send(("error", rank, traceback.format_exc()))
            break
    worker.close()


class WorkerPool:
    """The `world` worker processes of one engine, and the pipes to them."""

    def __init__(self, world: int, options: dict[str, Any]) -> None:
        self.world = world
        self.procs: list[Any] = []
        self.conns: list[Connection] = []
        self.closed = False
        ctx = mp.get_context("spawn")
        port = free_port()
        threads = max(1, (os.cpu_count() or 1) // world)
        options = {**options, "threads": threads}
        for rank in range(world):
            ours, theirs = ctx.Pipe()
            p = ctx.Process(target=worker_main, args=(theirs, rank, world, port, options), daemon=True)
            p.start()
            theirs.close()
            self.procs.append(p)
            self.conns.append(ours)
        atexit.register(_close_pool, weakref.ref(self))
        self.ready = self.gather(timeout=START_TIMEOUT_S)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def broadcast(self, op: str, payload: Any) -> list[Any]:
        """Send the same request to every rank and return their replies, in rank order."""
        self._check_open()
        for rank, conn in enumerate(self.conns):
            try:
                conn.send((op, payload))
            except (BrokenPipeError, OSError):
                self._fail(rank, None)
        return self.gather()

    def gather(self, timeout: float | None = None) -> list[Any]:
        """One reply from every rank; a death or an error ends all workers and raises, naming the rank."""
        replies: dict[int, Any] = {}
        waiting = {conn: rank for rank, conn in enumerate(self.conns)}
        sentinels = {p.sentinel: rank for rank, p in enumerate(self.procs)}
        deadline = None if timeout is None else time.monotonic() + timeout
        while waiting:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            ready = wait([*waiting, *sentinels], timeout=left)
            if not ready:
                self._fail(min(waiting.values()), f"no reply within {timeout:.0f} s")
            for obj in ready:
                if obj in waiting:
                    rank = waiting[obj]
                    try:
                        kind, _, value = obj.recv()
                    except (EOFError, OSError):
                        self._fail(rank, None)
                    if kind == "error":
                        self._fail(rank, value)
                    replies[rank] = value
                    del waiting[obj]
            for obj in ready:
                if obj in sentinels and sentinels[obj] in waiting.values():
                    self._fail(sentinels[obj], None)
        return [replies[r] for r in range(self.world)]

    def _fail(self, rank: int, error: str | None) -> None:
        """End every worker, then raise naming the rank that failed (a killed one before one that
        only saw its peer vanish)."""
        time.sleep(0.2)
        dead = [r for r, p in enumerate(self.procs) if p.exitcode not in (None, 0)]
        culprit = dead[0] if dead and rank not in dead else rank  # a peer's error often follows a death
        code = self.procs[culprit].exitcode
        pid = self.procs[culprit].pid
        self.close()
        if error is not None and culprit == rank:
            last = error.strip().splitlines()[-1]
            raise WorkerError(
                f"worker rank {rank} (pid {pid}) failed: {last}; its workers are ended: launch again\n{error}"
            )
        raise WorkerError(
            f"worker rank {culprit} (pid {pid}) died (exit code {code}); every worker is ended and the "
            "run's KV blocks are freed: launch the engine again"
        )

    def _check_open(self) -> None:
        if self.closed:
            raise WorkerError("this engine's workers are ended (one failed or it was closed): launch the engine again")

    def close(self, timeout: float = 5.0) -> None:
        """Ask every worker to stop, then end any that is still there; no process is left behind."""
        if self.closed:
            return
        self.closed = True
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.join(max(deadline - time.monotonic(), 0.1))
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)
        for conn in self.conns:
            conn.close()


def _close_pool(ref: weakref.ref) -> None:
    pool = ref()
    if pool is not None:
        pool.close(timeout=2.0)


def options_for(path: Path, cfg: dict, **kw: Any) -> dict[str, Any]:
    return {"path": str(path), "cfg": cfg, **kw}
