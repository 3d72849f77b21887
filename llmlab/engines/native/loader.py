"""Build a `LlamaModel` from a Hugging Face checkpoint directory (config.json + safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from llmlab.engines.base import release_memory
from llmlab.engines.native.cpu_linear import can_pack
from llmlab.engines.native.llama import LlamaModel
from llmlab.engines.native.quant import DEFAULT_GROUP_SIZE, STORAGE_DTYPES, quantize_linears


def layer_target(layer: nn.Module, rest: str) -> tuple[torch.Tensor, slice | None]:
    """The parameter of a decoder layer (and the row range of a fused one) that the checkpoint's
    `layers.<i>.<rest>` fills: q/k/v go into one fused QKV projection, gate/up into one."""
    attn, mlp = layer.self_attn, layer.mlp
    q, kv, _ = attn.split
    module_name, kind = rest.rsplit(".", 1)  # kind: weight or bias
    fused = {
        "self_attn.q_proj": (attn.qkv_proj, slice(0, q)),
        "self_attn.k_proj": (attn.qkv_proj, slice(q, q + kv)),
        "self_attn.v_proj": (attn.qkv_proj, slice(q + kv, q + 2 * kv)),
        "mlp.gate_proj": (mlp.gate_up_proj, slice(0, mlp.inter)),
        "mlp.up_proj": (mlp.gate_up_proj, slice(mlp.inter, 2 * mlp.inter)),
    }
    if module_name in fused:
        module, rows = fused[module_name]
        return getattr(module, kind), rows
    return layer.get_parameter(rest), None


def _target(model: LlamaModel, name: str) -> tuple[torch.Tensor, slice | None]:
    """The parameter (and row range of a fused one) that checkpoint tensor `name` fills."""
    name = name.removeprefix("model.")
    if name.startswith("layers."):
        _, idx, rest = name.split(".", 2)
        return layer_target(model.layers[int(idx)], rest)
    return model.get_parameter(name), None


def _layer_index(name: str) -> int | None:
    """The decoder layer checkpoint tensor `name` belongs to (None for embedding, norm, LM head)."""
    name = name.removeprefix("model.")
    return int(name.split(".", 2)[1]) if name.startswith("layers.") else None


def _reading_groups(files: list[Path], tie: bool) -> list[tuple[Path, list[str]]]:
    """The tensors to copy, file by file and within a file one decoder layer at a time."""
    groups: list[tuple[Path, list[str]]] = []
    for file in files:
        with safe_open(file, framework="pt", device="cpu") as f:
            names = [n for n in f.keys() if "rotary_emb" not in n and not (tie and n == "lm_head.weight")]
        by_layer: dict[int | None, list[str]] = {}
        for name in names:
            by_layer.setdefault(_layer_index(name), []).append(name)
        groups += [(file, by_layer[key]) for key in sorted(by_layer, key=lambda k: -1 if k is None else k)]
    return groups


def allocate_parameters(model: nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Give a meta-device model uninitialised parameters of `dtype` on `device`, ready to be filled.
    (`Module.to_empty` does the same through torch's reference ops, which import about 150 MB of
    compiler modules on first use; this is plain `torch.empty`.)"""
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            module.register_parameter(name, nn.Parameter(torch.empty(p.shape, dtype=dtype, device=device)))


def load_model(
    path: Path,
    cfg: dict,
    dtype: torch.dtype,
    device: torch.device,
    weights: str | None = None,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> LlamaModel:
    """Create the model without allocating twice, then copy every checkpoint tensor into place.

    `weights` (see quant.py) is how the decoder's linear layers are stored; None or the compute
    dtype's own name keeps plain linears. Other formats are quantized from float32 copies.

    Peak memory is kept near the final model's size, for small notebook servers: the checkpoint is
    read one decoder layer at a time and closed in between (safetensors maps the file, and every
    page read stays resident until it is closed), and with plain float32 or bfloat16 linears each
    layer is packed for oneDNN as soon as it is filled, so the dense and packed copies of the whole model
    never coexist.
    """
    stored = weights is not None and STORAGE_DTYPES.get(weights) != dtype
    with torch.device("meta"):
        model = LlamaModel(cfg)
    allocate_parameters(model, device, torch.float32 if stored else dtype)
    tie = cfg.get("tie_word_embeddings", False)
    if tie:
        model.lm_head.weight = model.embed_tokens.weight
    files = sorted(Path(path).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no *.safetensors weights in {path}: give a checkpoint directory saved with safetensors")
    total = sum(p.numel() for p in model.parameters())
    # weights still to copy per layer: a layer is packed once complete, even if split across files
    missing = [sum(p.numel() for p in layer.parameters()) for layer in model.layers]
    pack_layers = not stored and can_pack(model.embed_tokens.weight)
    copied = 0
    with torch.no_grad():
        for file, names in _reading_groups(files, tie):
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in names:
                    param, rows = _target(model, name)
                    dest = param[rows] if rows is not None else param
                    dest.copy_(f.get_tensor(name))
                    copied += dest.numel()
                    idx = _layer_index(name)
                    if idx is not None:
                        missing[idx] -= dest.numel()
                        if missing[idx] == 0 and pack_layers:
                            model.pack_for_cpu(model.layers[idx])
                            release_memory(collect=False)  # the dense layer's heap chunks, else kept
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
    model.pack_for_cpu()  # what is left: the LM head
    release_memory()
    return model


def rotary_tables(
    path: Path, cfg: dict, max_len: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin for every position. Plain RoPE is computed here; scaled variants (llama3, yarn,
    ...) come from transformers' own rotary embedding, whose config loader imports about 200 MB of
    modules that a small notebook server is better without."""
    theta = plain_rope_theta(cfg)
    if theta is not None:
        dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
        freqs = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos(), emb.sin()
    else:
        from transformers import AutoConfig
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        rope = LlamaRotaryEmbedding(AutoConfig.from_pretrained(path))
        cos, sin = rope(torch.zeros(1, dtype=torch.float32), torch.arange(max_len).unsqueeze(0))
        cos, sin = cos[0], sin[0]
    return cos.to(device=device, dtype=dtype), sin.to(device=device, dtype=dtype)


def plain_rope_theta(cfg: dict) -> float | None:
    """The RoPE base when `cfg` uses unscaled rotary embeddings over the whole head, else None."""
    if cfg.get("partial_rotary_factor", 1.0) != 1.0:
        return None
    params = cfg.get("rope_parameters")  # transformers 5 configs
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"]) if params.get("rope_type", "default") == "default" else None
    scaling = cfg.get("rope_scaling")
    if scaling and scaling.get("rope_type", scaling.get("type", "default")) != "default":
        return None
    return float(cfg.get("rope_theta", 10000.0))
