"""The caller's side of a parallel step: build the inputs as one process would, split them into
micro-batches (one per pipeline stage), send them to every worker, sample from the logits that
come back, and keep what each rank did as the step's `parallel` record."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from llmlab.core.scheduler import Batch
from llmlab.engines.native.decode_kernels import decode_kernel
from llmlab.engines.native.parallel.workers import WorkerPool
from llmlab.engines.native.runner import ModelRunner
from llmlab.engines.native.sampler import sample


def split_micro_batches(items: list, parts: int) -> list[list]:
    """Consecutive groups of scheduled requests with about equal tokens, at most `parts` of them
    (a request is never split: its tokens attend to each other)."""
    if parts <= 1 or len(items) <= 1:
        return [list(items)]
    total = sum(i.num_tokens for i in items)
    groups: list[list] = [[]]
    done = 0
    for item in items:
        if groups[-1] and done >= total * len(groups) / parts and len(groups) < parts:
            groups.append([])
        groups[-1].append(item)
        done += item.num_tokens
    return groups


class ParallelRunner(ModelRunner):
    """A `ModelRunner` whose model lives in `tp x pp` worker processes."""

    def __init__(
        self,
        path: Path,
        cfg: dict,
        block_size: int,
        num_blocks: int,
        dtype: torch.dtype,
        device: torch.device,
        max_model_len: int,
        seed: int = 0,
        kv_dtype: str = "auto",
        tp: int = 1,
        pp: int = 1,
    ) -> None:
        self.cfg = cfg
        self.device = torch.device("cpu")  # inputs are built here and sent; workers place them
        self.dtype = dtype
        self.seed = seed
        self.tp, self.pp = tp, pp
        self._block_size = block_size
        self.generators: dict[str, torch.Generator] = {}
        kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) // tp
        self.decode_kernel = decode_kernel(dtype, torch.device(device), kv_heads)  # travels with the metadata
        self.last_parallel: dict[str, Any] | None = None
        options = {
            "path": str(path),
            "cfg": cfg,
            "tp": tp,
            "pp": pp,
            "device": str(device),
            "dtype": dtype,
            "kv_dtype": kv_dtype,
            "num_blocks": num_blocks,
            "block_size": block_size,
            "max_model_len": max_model_len,
        }
        self.pool = WorkerPool(tp * pp, options)
        self.ranks: list[dict[str, Any]] = self.pool.ready

    @property
    def block_size(self) -> int:
        return self._block_size

    def _send(self, groups: list[list]) -> tuple[list[torch.Tensor | None], list[list], list[Any]]:
        payload, rows_of, reqs_of = [], [], []
        for group in groups:
            input_ids, pos, meta, rows, reqs = self.prepare(Batch(items=group))
            payload.append({"input_ids": input_ids, "positions": pos, "meta": meta, "rows": rows})
            rows_of.append(rows)
            reqs_of.append(reqs)
        t0 = time.perf_counter()
        replies = self.pool.broadcast("step", payload)
        t1 = time.perf_counter()
        tokens = [len(p["input_ids"]) for p in payload]
        self.last_parallel = self._record(replies, t0, t1, tokens)
        owner = (self.pp - 1) * self.tp
        return replies[owner]["logits"], reqs_of, rows_of

    @torch.inference_mode()
    def execute(self, batch: Batch) -> dict[str, int | Exception]:
        """One step over the workers; sampling happens here, with the same samplers as one process."""
        if not batch.items:
            self.last_parallel = None
            return {}
        logits, reqs_of, _ = self._send(split_micro_batches(batch.items, self.pp))
        reqs = [r for group in reqs_of for r in group]
        if not reqs:
            return {}
        rows = torch.cat([x for x in logits if x is not None])
        gens = [self._generator(r) for r in reqs]
        tokens = sample(rows, [r.params for r in reqs], gens)
        return {r.req_id: t for r, t in zip(reqs, tokens, strict=True)}

    @torch.inference_mode()
    def score(self, token_ids: list[int], block_ids: list[int]) -> torch.Tensor:
        """Float32 logits at every position of one prompt, as a fresh prefill through the workers."""
        from llmlab.core.request import Request, SamplingParams
        from llmlab.core.scheduler import ScheduledRequest

        req = Request("__score__", list(token_ids), SamplingParams(max_tokens=1))
        req.block_ids = list(block_ids)
        item = ScheduledRequest(req, 0, len(token_ids), "prefill")
        input_ids, pos, meta, _, _ = self.prepare(Batch(items=[item]))
        rows = list(range(len(token_ids)))
        replies = self.pool.broadcast("step", [{"input_ids": input_ids, "positions": pos, "meta": meta, "rows": rows}])
        return replies[(self.pp - 1) * self.tp]["logits"][0]

    def _record(self, replies: list[dict], t0: float, t1: float, tokens: list[int]) -> dict[str, Any]:
        """Per rank: compute and communication seconds and bytes; the timeline relative to the
        step's start; the pipeline bubble (the share of stage-time not spent computing)."""
        ranks, timeline = [], []
        span = t1 - t0
        for r, rep in enumerate(replies):
            info = self.ranks[r]
            totals = {"compute_s": 0.0, "comm_s": 0.0, "allreduce_bytes": 0, "send_bytes": 0, "recv_bytes": 0}
            for mb, kind, a, b, nbytes in rep["events"]:
                timeline.append([r, info["stage"], mb, kind, a - t0, b - t0, nbytes])
                if kind == "compute":
                    totals["compute_s"] += b - a
                else:
                    totals["comm_s"] += b - a
                    totals[f"{kind}_bytes"] += nbytes
            ranks.append({"rank": r, "stage": info["stage"], "tp_rank": info["tp_rank"], **totals})
        busy = sum(x["compute_s"] for x in ranks)
        return {
            "tp": self.tp,
            "pp": self.pp,
            "micro_batches": len(tokens),
            "micro_batch_tokens": tokens,
            "span_s": span,
            "bubble": max(0.0, 1.0 - busy / (len(ranks) * span)) if span > 0 else 0.0,
            "ranks": ranks,
            "timeline": timeline,
        }

    def memory(self) -> list[dict[str, Any]]:
        """What every rank holds, as it reported after loading."""
        return [dict(r) for r in self.ranks]

    def close(self) -> None:
        self.pool.close()
