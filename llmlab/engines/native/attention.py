"""Paged attention in plain PyTorch: write new K/V into pool slots, read each request's blocks.

The pool of one layer is a tensor [num_blocks, block_size, kv_heads, head_dim] (it knows its own
block size); a request's block table says which blocks hold its tokens in order. Decodes (one query token each) are
batched into one call over their gathered blocks; prefill chunks run one request at a time.
This module is the swappable part: a fused paged kernel can replace `paged_attention`.
The pool itself (and its fp8 / int8 formats) lives in kv_cache.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from llmlab.engines.native.kv_cache import LayerKV


@dataclass
class PrefillSpan:
    """A prefill chunk: rows [row, row + num_tokens) of the batch, positions [start, start + num_tokens)."""

    row: int
    num_tokens: int
    start: int
    block_table: torch.Tensor  # [num_blocks_of_request] long, blocks covering start + num_tokens
    mask: torch.Tensor | None = None  # [num_tokens, context], 0 or -inf; None when start == 0 (plain causal)


@dataclass
class AttentionMetadata:
    """Everything attention needs for one step, built once and shared by all layers."""

    slot_mapping: torch.Tensor  # [num_tokens] long: pool slot for each new token's K/V
    num_decodes: int = 0  # the first num_decodes rows are decodes, one per request
    decode_block_tables: torch.Tensor | None = None  # [num_decodes, max_blocks] long
    decode_mask: torch.Tensor | None = None  # [num_decodes, 1, 1, max_blocks * block_size], 0 or -inf
    decode_kernel: Callable | None = None  # a faster decode attention (decode_kernels.py); None: the reference
    prefills: list[PrefillSpan] = field(default_factory=list)


def paged_attention(
    q: torch.Tensor,  # [T, heads, head_dim]
    k: torch.Tensor,  # [T, kv_heads, head_dim]
    v: torch.Tensor,
    kv: LayerKV,  # this layer's pool (compute dtype, fp8 or int8; see kv_cache.py)
    meta: AttentionMetadata,
    scale: float,
) -> torch.Tensor:
    """Store this step's K/V in the pool, then attend each query to its request's context.

    Every query sees K/V as the pool holds them: a fresh prompt, which attends to its own K/V
    without reading the pool, gets them through the same quantize-dequantize round trip.
    """
    kv.write(meta.slot_mapping, k, v)
    out = torch.empty_like(q)
    gqa = q.shape[1] != k.shape[1]
    nd = meta.num_decodes
    if nd:
        keys, values = kv.read(meta.decode_block_tables)
        decode = meta.decode_kernel or reference_decode
        out[:nd] = decode(q[:nd], keys, values, meta.decode_mask, scale)
    for p in meta.prefills:
        rows = slice(p.row, p.row + p.num_tokens)
        qi = q[rows].transpose(0, 1).unsqueeze(0)
        if p.mask is None:  # a fresh prompt: its own K/V are the whole context
            ki, vi = kv.roundtrip(k[rows]), kv.roundtrip(v[rows])
        else:
            ki, vi = kv.read(p.block_table.unsqueeze(0))
            ki, vi = ki[0, : p.mask.shape[1]], vi[0, : p.mask.shape[1]]
        o = F.scaled_dot_product_attention(
            qi,
            ki.transpose(0, 1).unsqueeze(0),
            vi.transpose(0, 1).unsqueeze(0),
            attn_mask=p.mask,
            is_causal=p.mask is None,
            scale=scale,
            enable_gqa=gqa,
        )
        out[rows] = o[0].transpose(0, 1)
    return out


def reference_decode(
    q: torch.Tensor,  # [B, heads, head_dim]: one query token per request
    keys: torch.Tensor,  # [B, context, kv_heads, head_dim]
    values: torch.Tensor,
    mask: torch.Tensor,  # [B, 1, 1, context], 0 or -inf
    scale: float,
) -> torch.Tensor:
    """Decode attention as the textbook writes it, through PyTorch's scaled_dot_product_attention."""
    o = F.scaled_dot_product_attention(
        q.unsqueeze(2),
        keys.transpose(1, 2),
        values.transpose(1, 2),
        attn_mask=mask,
        scale=scale,
        enable_gqa=q.shape[1] != keys.shape[2],
    )
    return o.squeeze(2)
