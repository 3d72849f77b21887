"""Build a `LlamaModel` from a Hugging Face checkpoint directory (config.json + safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open

from llmlab.engines.base import release_memory
from llmlab.engines.native.llama import LlamaModel
from llmlab.engines.native.quant import DEFAULT_GROUP_SIZE, STORAGE_DTYPES, quantize_linears


def _target(model: LlamaModel, name: str) -> tuple[torch.Tensor, slice | None]:
    """The parameter (and row range of a fused one) that checkpoint tensor `name` fills."""
    name = name.removeprefix("model.")
    if name.startswith("layers."):
        _, idx, rest = name.split(".", 2)
        layer = model.layers[int(idx)]
        attn, mlp = layer.self_attn, layer.mlp
        q, kv, _ = attn.split
        kind = rest.rsplit(".", 1)[-1]  # weight or bias
        fused = {
            "self_attn.q_proj": (attn.qkv_proj, slice(0, q)),
            "self_attn.k_proj": (attn.qkv_proj, slice(q, q + kv)),
            "self_attn.v_proj": (attn.qkv_proj, slice(q + kv, q + 2 * kv)),
            "mlp.gate_proj": (mlp.gate_up_proj, slice(0, mlp.inter)),
            "mlp.up_proj": (mlp.gate_up_proj, slice(mlp.inter, 2 * mlp.inter)),
        }
        module_name = rest.rsplit(".", 1)[0]
        if module_name in fused:
            module, rows = fused[module_name]
            return getattr(module, kind), rows
        return layer.get_parameter(rest), None
    return model.get_parameter(name), None


def load_model(
    path: Path,
    cfg: dict,
    block_size: int,
    dtype: torch.dtype,
    device: torch.device,
    weights: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> LlamaModel:
    """Create the model without allocating twice, then copy every checkpoint tensor into place.

    `weights` (see quant.py) is how the decoder's linear layers are stored; None or the compute
    dtype's own name keeps plain linears. Other formats are quantized from float32 copies.
    """
    stored = weights is not None and STORAGE_DTYPES.get(weights) != dtype
    with torch.device("meta"):
        model = LlamaModel(cfg, block_size)
    model = model.to_empty(device=device).to(torch.float32 if stored else dtype)
    if cfg.get("tie_word_embeddings", False):
        model.lm_head.weight = model.embed_tokens.weight
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path}: give a checkpoint directory saved with safetensors")
    copied = 0
    with torch.no_grad():
        for file in files:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if "rotary_emb" in name or (name == "lm_head.weight" and cfg.get("tie_word_embeddings")):
                        continue
                    param, rows = _target(model, name)
                    dest = param[rows] if rows is not None else param
                    dest.copy_(f.get_tensor(name))
                    copied += dest.numel()
    total = sum(p.numel() for p in model.parameters())
    if copied != total:
        raise ValueError(
            f"{path}: the checkpoint filled {copied:,} of the model's {total:,} weights; "
            "it does not match its config.json (a partial download or an unsupported variant?)"
        )
    model.eval()
    if stored:
        quantize_linears(model, weights, dtype, group_size)
        for p in model.parameters():  # embedding and norms: the compute dtype
            p.data = p.data.to(dtype)
    model.pack_for_cpu()
    release_memory()
    return model


def rotary_tables(
    path: Path, max_len: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position, from transformers' own rotary embedding (all RoPE variants)."""
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    rope = LlamaRotaryEmbedding(AutoConfig.from_pretrained(path))
    positions = torch.arange(max_len).unsqueeze(0)
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), positions)
    return cos[0].to(device=device, dtype=dtype), sin[0].to(device=device, dtype=dtype)
