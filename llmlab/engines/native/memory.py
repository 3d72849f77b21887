"""Count the bytes the native engine really holds: weights by kind, and the KV pool.

Counts come from the tensors themselves (numel * element_size), so they include scales, an
untied LM head's oneDNN-packed copy on CPU (a tied head runs on the embedding table itself), and
nothing that is only planned. The KV pool is counted whole, although on CPU its pages take RAM
only once written.
"""

from __future__ import annotations

import torch
from torch import nn

from llmlab.engines.native.kv_cache import LayerKV
from llmlab.engines.native.quant import QuantizedLinear


def tensor_bytes(t: torch.Tensor | None) -> int:
    return 0 if t is None else t.numel() * t.element_size()


def weight_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes of the model's tensors by kind: linear weights (with biases), their scales (with int4
    minimums), embeddings (input table and LM head, once if tied), norms."""
    out = {"linear_bytes": 0, "scale_bytes": 0, "embedding_bytes": 0, "norm_bytes": 0}
    seen: set[int] = set()
    for name, module in model.named_modules():
        tensors = [*module._parameters.items(), *module._buffers.items()]
        for tname, t in tensors:
            if t is None or id(t) in seen:
                continue
            seen.add(id(t))
            out[_kind(name, module, tname)] += tensor_bytes(t)
    out["weight_bytes"] = sum(out.values())
    return out


def _kind(module_name: str, module: nn.Module, tensor_name: str) -> str:
    if isinstance(module, QuantizedLinear) and tensor_name in ("scale", "minimum"):
        return "scale_bytes"
    if module_name in ("embed_tokens", "lm_head"):
        return "embedding_bytes"
    if "norm" in module_name:
        return "norm_bytes"
    return "linear_bytes"


def kv_pool_bytes(caches: list[LayerKV]) -> dict[str, int]:
    """Bytes of the KV pool: values and (int8) scales."""
    values = sum(tensor_bytes(layer.k) + tensor_bytes(layer.v) for layer in caches)
    scales = sum(tensor_bytes(layer.k_scale) + tensor_bytes(layer.v_scale) for layer in caches)
    return {"kv_pool_bytes": values + scales, "kv_scale_bytes": scales}
