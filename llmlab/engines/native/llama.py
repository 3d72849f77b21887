"""The Llama family (Llama, SmolLM2, Mistral, Qwen2) as a flat-batch model over a paged KV cache.

Tokens of all requests in a step are concatenated into one [num_tokens, hidden] batch; only
attention needs to know which request a token belongs to (see attention.py). Q/K/V and
gate/up projections are fused into single matmuls.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.engines.native.attention import AttentionMetadata, paged_attention
from llmlab.engines.native.cpu_linear import TiedPackedHead, can_pack, pack_linears


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding, half-split layout as in the Hugging Face Llama."""
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.num_heads = cfg["num_attention_heads"]
        self.num_kv_heads = cfg.get("num_key_value_heads", self.num_heads)
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.num_heads
        self.scale = self.head_dim**-0.5
        bias = cfg.get("attention_bias", False) or cfg.get("model_type") == "qwen2"
        q, kv = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.split = (q, kv, kv)
        self.qkv_proj = nn.Linear(cfg["hidden_size"], q + 2 * kv, bias=bias)
        self.o_proj = nn.Linear(q, cfg["hidden_size"], bias=cfg.get("attention_bias", False))

    def forward(self, x, cos, sin, kv_cache, meta: AttentionMetadata) -> torch.Tensor:
        q, k, v = self.qkv_proj(x).split(self.split, dim=-1)
        q = rotate(q.view(-1, self.num_heads, self.head_dim), cos, sin)
        k = rotate(k.view(-1, self.num_kv_heads, self.head_dim), cos, sin)
        v = v.view(-1, self.num_kv_heads, self.head_dim)
        o = paged_attention(q, k, v, kv_cache, meta, self.scale)
        return self.o_proj(o.reshape(x.shape[0], -1))


class MLP(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.inter = cfg["intermediate_size"]
        self.gate_up_proj = nn.Linear(cfg["hidden_size"], 2 * self.inter, bias=False)
        self.down_proj = nn.Linear(self.inter, cfg["hidden_size"], bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up_proj(x).split(self.inter, dim=-1)
        return self.down_proj(F.silu(gate) * up)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict) -> None:
        super().__init__()
        eps = cfg.get("rms_norm_eps", 1e-5)
        self.input_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg["hidden_size"], eps)
        self.mlp = MLP(cfg)

    def forward(self, x, cos, sin, kv_cache, meta) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, kv_cache, meta)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(nn.Module):
    """Decoder stack plus LM head; `forward` returns hidden states, `logits` projects chosen rows."""

    def __init__(self, cfg: dict) -> None:
        super().__init__()
        self.cfg = cfg
        # built on the meta device and filled from the checkpoint: an explicit (uninitialised) table
        # skips nn.Embedding's random init, whose meta-device path imports torch._dynamo (~150 MB)
        table = torch.empty(cfg["vocab_size"], cfg["hidden_size"])
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"], _weight=table)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg.get("rms_norm_eps", 1e-5))
        self.lm_head = nn.Linear(cfg["hidden_size"], cfg["vocab_size"], bias=False)
        if cfg.get("tie_word_embeddings", False):
            self.lm_head.weight = self.embed_tokens.weight

    def forward(self, input_ids, cos, sin, kv_caches, meta: AttentionMetadata) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        for layer, kv in zip(self.layers, kv_caches, strict=True):
            x = layer(x, cos, sin, kv, meta)
        return x

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.norm(hidden)).float()

    def pack_for_cpu(self, module: nn.Module | None = None) -> None:
        """Run linear layers through oneDNN with weights packed once (cpu_linear.py): in float32 and,
        where the CPU computes it, bfloat16.

        `module` (one decoder layer) packs only its linears, so the loader can pack each layer as soon
        as it is filled and the dense and packed copies of the whole model never coexist.
        """
        if not can_pack(self.embed_tokens.weight):
            return
        if module is None:
            module = self
        tied = self.lm_head.weight is self.embed_tokens.weight
        if module is self and tied and isinstance(self.lm_head, nn.Linear):
            self.lm_head = TiedPackedHead(self.embed_tokens.weight)
        pack_linears(module)
