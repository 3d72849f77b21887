"""Inside a worker: this rank's shard, its part of every KV block, and one step over micro-batches.

Every rank of a stage runs the same tokens (tensor parallel sums partial products with an
all-reduce after attention and after the MLP); a stage takes micro-batch m from the previous stage,
runs its layers and hands it on, so stage s works on micro-batch m while stage s+1 works on m-1.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from llmlab.engines.native.loader import rotary_tables
from llmlab.engines.native.memory import kv_pool_bytes, weight_bytes
from llmlab.engines.native.parallel.comm import AllReduceAfter, Comm
from llmlab.engines.native.parallel.shard import Shard, load_shard
from llmlab.engines.native.runner import kv_pool_layer


class StageWorker:
    """One rank: joins the process group, loads its shard and KV pool, and serves steps."""

    def __init__(self, rank: int, world: int, port: int, o: dict[str, Any]) -> None:
        torch.set_num_threads(o["threads"])
        tp, pp = o["tp"], o["pp"]
        device = torch.device(o["device"])
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        self.device, self.dtype = device, o["dtype"]
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(
            backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(minutes=5)
        )
        self.shard = Shard.of(o["cfg"], tp, pp, rank)
        groups = [dist.new_group(list(range(s * tp, (s + 1) * tp))) for s in range(pp)] if tp > 1 else None
        s, t = self.shard.stage, self.shard.tp_rank
        self.comm = Comm(
            tp_group=groups[s] if groups else None,
            prev_rank=(s - 1) * tp + t if s > 0 else None,
            next_rank=(s + 1) * tp + t if s < pp - 1 else None,
        )
        cfg = o["cfg"]
        self.hidden = int(cfg["hidden_size"])
        self.model = load_shard(Path(o["path"]), cfg, self.shard, self.dtype, device)
        if tp > 1:
            for layer in self.model.layers:
                layer.self_attn.o_proj = AllReduceAfter(layer.self_attn.o_proj, self.comm)
                layer.mlp.down_proj = AllReduceAfter(layer.mlp.down_proj, self.comm)
        self.cos, self.sin = rotary_tables(Path(o["path"]), cfg, o["max_model_len"], self.dtype, device)
        attn = self.model.layers[0].self_attn
        self.kv_caches = [
            kv_pool_layer(
                o["kv_dtype"], o["num_blocks"], o["block_size"], attn.num_kv_heads, attn.head_dim, self.dtype, device
            )
            for _ in self.model.layers
        ]

    def describe(self) -> dict[str, Any]:
        """This rank's place and the bytes it holds, counted from its tensors."""
        sh = self.shard
        return {
            "rank": sh.rank,
            "stage": sh.stage,
            "tp_rank": sh.tp_rank,
            "layers": list(sh.layers),
            "heads": list(sh.heads),
            "kv_heads": list(sh.kv_heads),
            "inter": list(sh.inter),
            "pid": __import__("os").getpid(),
            **weight_bytes(self.model),
            **kv_pool_bytes(self.kv_caches),
        }

    def handle(self, op: str, payload: Any) -> Any:
        if op == "step":
            return self.step(payload)
        if op == "describe":
            return self.describe()
        if op == "crash":  # a forward that raises, for the fault tests
            raise RuntimeError(f"rank {self.shard.rank}: forward failed on purpose")
        raise ValueError(f"unknown request {op!r}")

    @torch.inference_mode()
    def step(self, micro_batches: list[dict[str, Any]]) -> dict[str, Any]:
        """Run every micro-batch through this stage; the last stage's first tensor rank returns the
        logits of the rows that sample, per micro-batch. Returns them with this rank's events."""
        comm, sh, dev = self.comm, self.shard, self.device
        comm.events = []
        logits: list[torch.Tensor | None] = []
        comm.start_compute()
        for m, mb in enumerate(micro_batches):
            comm.micro_batch = m
            pos = mb["positions"].to(dev)
            meta = mb["meta"]
            if dev.type != "cpu":
                meta = _to_device(meta, dev)
            if sh.first:
                x = self.model.embed_tokens(mb["input_ids"].to(dev))
            else:
                comm.end_compute()
                x = comm.recv((len(pos), self.hidden), self.dtype, dev)
            cos, sin = self.cos[pos].unsqueeze(1), self.sin[pos].unsqueeze(1)
            for layer, kv in zip(self.model.layers, self.kv_caches, strict=True):
                x = layer(x, cos, sin, kv, meta)
            if not sh.last:
                comm.send(x)
                logits.append(None)
            elif mb["rows"] and sh.tp_rank == 0:
                out = self.model.logits(x[torch.tensor(mb["rows"], device=dev)])
                logits.append(out.cpu())
            else:
                logits.append(None)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            comm.end_compute()
        return {"rank": sh.rank, "logits": logits, "events": comm.events, "t_done": time.perf_counter()}

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _to_device(meta, dev: torch.device):
    for name in ("slot_mapping", "decode_block_tables", "decode_mask"):
        t = getattr(meta, name)
        if t is not None:
            setattr(meta, name, t.to(dev))
    for span in meta.prefills:
        span.block_table = span.block_table.to(dev)
        if span.mask is not None:
            span.mask = span.mask.to(dev)
    return meta
