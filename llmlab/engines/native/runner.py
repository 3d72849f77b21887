"""Turn a scheduled `Batch` into tensors, run the model over the paged cache, and sample."""

from __future__ import annotations

import mmap
import zlib
from pathlib import Path

import torch

from llmlab.core.request import Request
from llmlab.core.scheduler import Batch, ScheduledRequest
from llmlab.engines.native.attention import AttentionMetadata, PrefillSpan
from llmlab.engines.native.decode_kernels import decode_kernel
from llmlab.engines.native.kv_cache import LayerKV, kv_element_bytes
from llmlab.engines.native.loader import load_model, rotary_tables
from llmlab.engines.native.quant import DEFAULT_GROUP_SIZE
from llmlab.engines.native.sampler import sample


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where attention is allowed, -inf elsewhere: SDPA's CPU kernel is faster with it than with a bool mask."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, float("-inf"))


def lazy_zeros(shape: torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """A zero-filled CPU tensor in fresh anonymous memory. The OS hands out zero pages on first write,
    so the tensor takes RAM only where it is written; torch.zeros writes (and so holds) every byte."""
    nbytes = max(shape.numel() * dtype.itemsize, 1)
    return torch.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype, count=shape.numel()).view(shape)


def kv_pool_layer(
    kv_dtype: str,
    num_blocks: int,
    block_size: int,
    kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> LayerKV:
    """One layer's KV pool. On CPU its tensors are `lazy_zeros`: blocks no request has used yet cost
    no RAM (the default pool is 256 MB, and a notebook's short runs use a fraction of it)."""
    if device.type != "cpu":
        return LayerKV(kv_dtype, num_blocks, block_size, kv_heads, head_dim, dtype, device)
    layer = LayerKV(kv_dtype, num_blocks, block_size, kv_heads, head_dim, dtype, torch.device("meta"))
    for name in ("k", "v", "k_scale", "v_scale"):
        t = getattr(layer, name)
        if t is not None:
            setattr(layer, name, lazy_zeros(t.shape, t.dtype))
    return layer


class ModelRunner:
    """Holds the model weights, the KV pool tensors (shaped by block: `block_size` is theirs) and the
    per-request samplers."""

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
        weights: str | None = None,
        kv_dtype: str = "auto",
        group_size: int = DEFAULT_GROUP_SIZE,
    ) -> None:
        self.cfg = cfg
        self.device = device
        self.dtype = dtype
        self.seed = seed
        self.model = load_model(path, cfg, dtype, device, weights, group_size)
        self.cos, self.sin = rotary_tables(path, cfg, max_model_len, dtype, device)
        attn = self.model.layers[0].self_attn
        self.kv_caches = [
            kv_pool_layer(kv_dtype, num_blocks, block_size, attn.num_kv_heads, attn.head_dim, dtype, device)
            for _ in self.model.layers
        ]
        self.generators: dict[str, torch.Generator] = {}
        self.decode_kernel = decode_kernel(dtype, device, attn.num_kv_heads)

    @property
    def block_size(self) -> int:
        """Tokens per KV block, as the pool is shaped."""
        return self.kv_caches[0].block_size

    @staticmethod
    def kv_bytes_per_block(cfg: dict, block_size: int, dtype: torch.dtype, kv_dtype: str = "auto") -> int:
        """Bytes one KV block takes over all layers, K and V, scales included."""
        heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        per_value = kv_element_bytes(kv_dtype, dtype, head_dim)
        return int(2 * cfg["num_hidden_layers"] * block_size * heads * head_dim * per_value)

    # inputs ------------------------------------------------------------------------------
    def _slots(self, req: Request, start: int, n: int) -> list[int]:
        bs, table = self.block_size, req.block_ids
        return [table[p // bs] * bs + p % bs for p in range(start, start + n)]

    def prepare(self, batch: Batch):
        """Token ids, positions and attention metadata; decodes first, then prefill chunks."""
        decodes = [i for i in batch.items if i.num_tokens == 1 and i.start > 0]
        prefills = [i for i in batch.items if not (i.num_tokens == 1 and i.start > 0)]
        order: list[ScheduledRequest] = decodes + prefills
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for item in order:
            tokens = item.request.all_token_ids
            ids.extend(tokens[item.start : item.start + item.num_tokens])
            positions.extend(range(item.start, item.start + item.num_tokens))
            slots.extend(self._slots(item.request, item.start, item.num_tokens))
        dev = self.device
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev))
        if decodes:
            width = max(len(i.request.block_ids) for i in decodes)
            tables = [i.request.block_ids + [0] * (width - len(i.request.block_ids)) for i in decodes]
            lens = torch.tensor([i.start + 1 for i in decodes], device=dev)
            meta.num_decodes = len(decodes)
            meta.decode_block_tables = torch.tensor(tables, dtype=torch.long, device=dev)
            key_pos = torch.arange(width * self.block_size, device=dev)
            meta.decode_mask = additive_mask(key_pos[None, :] < lens[:, None], self.dtype)[:, None, None, :]
            meta.decode_kernel = self.decode_kernel
        row = len(decodes)
        for item in prefills:
            span = PrefillSpan(row, item.num_tokens, item.start, torch.tensor(item.request.block_ids, device=dev))
            if item.start > 0:
                context = item.start + item.num_tokens
                q_pos = torch.arange(item.start, context, device=dev)
                span.mask = additive_mask(torch.arange(context, device=dev)[None, :] <= q_pos[:, None], self.dtype)
            meta.prefills.append(span)
            row += item.num_tokens
        # rows whose last token yields the next token
        sample_rows, sampling = [], []
        end = 0
        for item in order:
            end += item.num_tokens
            if item.samples:
                sample_rows.append(end - 1)
                sampling.append(item.request)
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        return input_ids, pos, meta, sample_rows, sampling

    # the step ----------------------------------------------------------------------------
    @torch.inference_mode()
    def execute(self, batch: Batch) -> dict[str, int | Exception]:
        """Run one step; return the sampled token of every request that finished its chunk, or, for
        a request whose sampling raised, that exception (it fails alone; a failed forward raises)."""
        input_ids, pos, meta, rows, reqs = self.prepare(batch)
        hidden = self.model(input_ids, self.cos[pos], self.sin[pos], self.kv_caches, meta)
        if not rows:
            return {}
        logits = self.model.logits(hidden[torch.tensor(rows, device=self.device)])
        gens = [self._generator(r) for r in reqs]
        tokens = sample(logits, [r.params for r in reqs], gens)
        return {r.req_id: t for r, t in zip(reqs, tokens, strict=True)}

    @torch.inference_mode()
    def score(self, token_ids: list[int], block_ids: list[int]) -> torch.Tensor:
        """Float32 logits [T, vocab] at every position of one prompt (row t predicts token t + 1),
        computed as a fresh prefill into `block_ids`, the same path a request takes."""
        bs = self.block_size
        dev = self.device
        n = len(token_ids)
        slots = [block_ids[p // bs] * bs + p % bs for p in range(n)]
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev))
        meta.prefills.append(PrefillSpan(0, n, 0, torch.tensor(block_ids, device=dev)))
        pos = torch.arange(n, device=dev)
        ids = torch.tensor(token_ids, dtype=torch.long, device=dev)
        hidden = self.model(ids, self.cos[pos], self.sin[pos], self.kv_caches, meta)
        return self.model.logits(hidden)

    def _generator(self, req: Request) -> torch.Generator | None:
        if req.params.greedy:
            return None
        gen = self.generators.get(req.req_id)
        if gen is None:
            seed = req.params.seed if req.params.seed is not None else zlib.crc32(f"{self.seed}:{req.req_id}".encode())
            gen = torch.Generator().manual_seed(seed)
            self.generators[req.req_id] = gen
        return gen

    def release(self, req_id: str) -> None:
        self.generators.pop(req_id, None)
