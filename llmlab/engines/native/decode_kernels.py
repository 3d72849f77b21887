"""A faster kernel for decode attention (one query token per request) where the reference is slow.

The reference is `attention.reference_decode`: PyTorch's scaled_dot_product_attention over each
request's gathered blocks. On CPU its flash kernel is slow for a single query row in bfloat16:
4x slower than `GroupedMatmulDecode` on SmolLM2's shapes (`python benchmarks/cpu_roofline.py`
times both). In float32 the reference is the faster one and stays. Tests hold the kernel to the
reference on random shapes and block tables (tests/test_attention_kernels.py).
"""

from __future__ import annotations

import torch

MAX_KV_HEADS = 4  # the kernel multiplies every query head by every KV head: cheap for few KV heads only


class GroupedMatmulDecode:
    """Decode attention as two batched matmuls over the gathered blocks, without copying them again.

    The gathered keys [B, context, kv_heads, dim] are read as one [B, context * kv_heads, dim]
    matrix, as they lie in memory: a matmul with all query heads scores every query head against
    every KV head, and each query head keeps the scores of its own KV head (grouped-query
    attention). The values are read the same way, against a block-diagonal matrix of the
    probabilities. Splitting the heads out first, as SDPA does, copies the keys and values again,
    and that copy costs more than the kv_heads-fold arithmetic. Scores are masked and normalised
    in float32, as SDPA does.
    """

    def __call__(
        self,
        q: torch.Tensor,  # [B, heads, head_dim]
        keys: torch.Tensor,  # [B, context, kv_heads, head_dim]
        values: torch.Tensor,
        mask: torch.Tensor,  # [B, 1, 1, context], 0 or -inf
        scale: float,
    ) -> torch.Tensor:
        b, heads, dim = q.shape
        context, kv_heads = keys.shape[1], keys.shape[2]
        group = heads // kv_heads
        every = torch.bmm(keys.reshape(b, context * kv_heads, dim), (q * scale).transpose(1, 2))
        # [B, context, kv_heads, kv_heads of the query head, group] -> each query head's own KV head
        own = every.view(b, context, kv_heads, kv_heads, group).diagonal(dim1=2, dim2=3)  # [B, ctx, group, kv]
        scores = own.permute(0, 3, 2, 1).float() + mask.view(b, 1, 1, context).float()  # [B, kv, group, ctx]
        probs = torch.softmax(scores, dim=-1).to(q.dtype)
        spread = q.new_zeros(b, kv_heads, group, context, kv_heads)
        spread.diagonal(dim1=1, dim2=4).copy_(probs.permute(0, 2, 3, 1))  # zero off each head's own KV head
        return torch.bmm(spread.view(b, heads, context * kv_heads), values.reshape(b, context * kv_heads, dim))


def decode_kernel(dtype: torch.dtype, device: torch.device, kv_heads: int) -> GroupedMatmulDecode | None:
    """The decode attention for this dtype, device and model, or None for the reference (SDPA)."""
    if device.type == "cpu" and dtype == torch.bfloat16 and kv_heads <= MAX_KV_HEADS:
        return GroupedMatmulDecode()
    return None
