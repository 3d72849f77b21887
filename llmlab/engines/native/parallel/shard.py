"""Which part of the model each rank holds, and loading only that part from the checkpoint.

Tensor parallel splits attention by KV group (a rank keeps whole groups of query heads with their
K/V head; where there are more ranks than KV heads the K/V head is replicated) and the MLP by
column (gate/up) then by row (down). Pipeline parallel gives each stage a contiguous run of layers.
Rank = stage * tp + tp_rank.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from llmlab.engines.native.cpu_linear import TiedPackedHead, can_pack
from llmlab.engines.native.llama import LlamaModel
from llmlab.engines.native.loader import allocate_parameters, layer_target


def _heads(cfg: dict) -> tuple[int, int, int]:
    heads = int(cfg["num_attention_heads"])
    kv = int(cfg.get("num_key_value_heads", heads))
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    return heads, kv, head_dim


def valid_tp(cfg: dict) -> list[int]:
    """Tensor-parallel degrees this model's attention can be split into: up to one KV group per
    rank (groups may be uneven), or more ranks than KV heads when each rank gets whole query heads
    of one replicated K/V head."""
    heads, kv, _ = _heads(cfg)
    return [t for t in range(1, heads + 1) if t <= kv or (t % kv == 0 and heads % t == 0)]


def check_layout(cfg: dict, tp: int, pp: int, device: str = "cpu") -> None:
    """Refuse a layout the model or the machine cannot run, before anything loads."""
    ok = valid_tp(cfg)
    if tp not in ok:
        heads, kv, _ = _heads(cfg)
        raise ValueError(
            f"tp={tp} does not split this model's {heads} attention heads ({kv} KV heads) into whole "
            f"KV groups or whole heads: use tp in {ok}"
        )
    layers = int(cfg["num_hidden_layers"])
    if pp > layers:
        raise ValueError(f"pp={pp} exceeds the model's {layers} layers: use pp <= {layers}")
    world = tp * pp
    if device.startswith("cuda"):
        gpus = torch.cuda.device_count()
        if world > gpus:
            raise ValueError(f"tp x pp = {world} processes need {world} GPUs but this machine has {gpus}")
    else:
        limit = 2 * (os.cpu_count() or 1)
        if world > limit:
            raise ValueError(
                f"tp x pp = {world} worker processes on {os.cpu_count()} CPU cores: use at most {limit} "
                "(each worker needs half a core or more)"
            )


def _bounds(n: int, parts: int) -> list[int]:
    """Split points of n things into `parts` runs, the earlier runs larger by one where uneven."""
    return [-(-i * n // parts) for i in range(parts + 1)]


@dataclass(frozen=True)
class Shard:
    """One rank's part: its stage's layers, its query heads, K/V heads and MLP columns."""

    tp: int
    pp: int
    rank: int
    layers: tuple[int, int]  # [first, end) of the full model's layers
    heads: tuple[int, int]  # query heads [first, end)
    kv_heads: tuple[int, int]  # K/V heads [first, end)
    inter: tuple[int, int]  # MLP intermediate columns [first, end)

    @property
    def stage(self) -> int:
        return self.rank // self.tp

    @property
    def tp_rank(self) -> int:
        return self.rank % self.tp

    @property
    def first(self) -> bool:
        return self.stage == 0

    @property
    def last(self) -> bool:
        return self.stage == self.pp - 1

    @classmethod
    def of(cls, cfg: dict, tp: int, pp: int, rank: int) -> Shard:
        heads, kv, _ = _heads(cfg)
        stage, t = divmod(rank, tp)
        lb = _bounds(int(cfg["num_hidden_layers"]), pp)
        if tp <= kv:
            gb = _bounds(kv, tp)
            group = heads // kv
            kv_range = (gb[t], gb[t + 1])
            head_range = (gb[t] * group, gb[t + 1] * group)
        else:
            per = heads // tp
            head_range = (t * per, (t + 1) * per)
            first_kv = head_range[0] // (heads // kv)
            kv_range = (first_kv, first_kv + 1)
        ib = _bounds(int(cfg["intermediate_size"]), tp)
        return cls(tp, pp, rank, (lb[stage], lb[stage + 1]), head_range, kv_range, (ib[t], ib[t + 1]))

    def local_cfg(self, cfg: dict) -> dict:
        """The config of the model this rank builds: its heads, columns and layers."""
        _, _, head_dim = _heads(cfg)
        return {
            **cfg,
            "head_dim": head_dim,
            "num_attention_heads": self.heads[1] - self.heads[0],
            "num_key_value_heads": self.kv_heads[1] - self.kv_heads[0],
            "intermediate_size": self.inter[1] - self.inter[0],
            "num_hidden_layers": self.layers[1] - self.layers[0],
        }


def _slices(shard: Shard, rest: str, head_dim: int) -> tuple[int, slice]:
    """(dim, range) of checkpoint tensor `rest` (within a layer) that this rank keeps."""
    h, k, i = shard.heads, shard.kv_heads, shard.inter
    rows = {
        "self_attn.q_proj": slice(h[0] * head_dim, h[1] * head_dim),
        "self_attn.k_proj": slice(k[0] * head_dim, k[1] * head_dim),
        "self_attn.v_proj": slice(k[0] * head_dim, k[1] * head_dim),
        "mlp.gate_proj": slice(*i),
        "mlp.up_proj": slice(*i),
    }
    cols = {"self_attn.o_proj": slice(h[0] * head_dim, h[1] * head_dim), "mlp.down_proj": slice(*i)}
    module = rest.rsplit(".", 1)[0]
    kind = rest.rsplit(".", 1)[1]
    if module in rows:
        return 0, rows[module]
    if module in cols and kind == "weight":
        return 1, cols[module]
    return 0, slice(None)


def load_shard(path: Path, cfg: dict, shard: Shard, dtype: torch.dtype, device: torch.device) -> LlamaModel:
    """Build this rank's model and fill it with only its slices of the checkpoint (safetensors
    reads slices without loading whole tensors). The embedding lives on the first stage, the norm
    and LM head on the last (a tied head reuses the embedding table there)."""
    local = shard.local_cfg(cfg)
    tie = bool(cfg.get("tie_word_embeddings", False))
    hidden, vocab = int(cfg["hidden_size"]), int(cfg["vocab_size"])
    need_embed = shard.first or (shard.last and tie)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the zero-row tables of a stage that needs none
        model = LlamaModel({**local, "tie_word_embeddings": False})
        if not need_embed:
            model.embed_tokens = nn.Embedding(0, hidden)
        if not shard.last or tie:
            model.lm_head = nn.Linear(hidden, 0, bias=False)
    allocate_parameters(model, device, dtype)
    _, _, head_dim = _heads(cfg)
    a, b = shard.layers
    files = sorted(Path(path).glob("*.safetensors"))
    with torch.no_grad():
        for file in files:
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    short = name.removeprefix("model.")
                    if short.startswith("layers."):
                        _, idx, rest = short.split(".", 2)
                        if not a <= int(idx) < b:
                            continue
                        layer = model.layers[int(idx) - a]
                        dim, keep = _slices(shard, rest, head_dim)
                        part = f.get_slice(name)
                        data = part[keep] if dim == 0 else part[:, keep]
                        _fill(layer, rest, data)
                    elif short == "embed_tokens.weight" and need_embed:
                        model.embed_tokens.weight.copy_(f.get_tensor(name))
                    elif short == "norm.weight" and shard.last:
                        model.norm.weight.copy_(f.get_tensor(name))
                    elif short == "lm_head.weight" and shard.last and not tie:
                        model.lm_head.weight.copy_(f.get_tensor(name))
        if shard.tp_rank != 0:  # a row-parallel bias is added once, by rank 0 of the group
            for layer in model.layers:
                for lin in (layer.self_attn.o_proj, layer.mlp.down_proj):
                    if lin.bias is not None:
                        lin.bias.zero_()
    model.eval()
    if can_pack(model.embed_tokens.weight):  # on CPU: linears through oneDNN, as in one process
        for layer in model.layers:
            model.pack_for_cpu(layer)
        if shard.last and tie and can_pack(model.embed_tokens.weight):
            model.lm_head = TiedPackedHead(model.embed_tokens.weight)
    if shard.last and tie and not isinstance(model.lm_head, TiedPackedHead):
        model.lm_head = nn.Linear(hidden, vocab, bias=False, device="meta")
        model.lm_head.weight = model.embed_tokens.weight
    return model


def _fill(layer: nn.Module, rest: str, data: torch.Tensor) -> None:
    """Copy one sliced checkpoint tensor into this rank's (fused) parameter."""
    target, rows = layer_target(layer, rest)
    (target if rows is None else target[rows]).copy_(data)
