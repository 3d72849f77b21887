"""Model shapes for planning without weights: layer counts and widths taken from config.json.

`get_shape` accepts a catalogue name (shipped in shapes.json), a local checkpoint directory or
config.json, a config dict, a loaded model or config object, or a Hugging Face id when online.
The planner needs only these numbers, so a 405B model can be planned on a laptop.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from llmlab.models.resolve import hub_offline

_CATALOGUE = Path(__file__).with_name("shapes.json")


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer that decide its memory and compute per token.

    `num_experts` is 0 for a dense model; for a mixture of experts each token runs
    `experts_per_token` of `num_experts` MLPs of width `intermediate_size`.
    """

    name: str
    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    tie_embeddings: bool
    num_experts: int = 0
    experts_per_token: int = 0
    max_position_embeddings: int = 8192
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    def attention_param_count(self) -> int:
        """Weights (and biases) of one layer's q, k, v and o projections."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        bias = (q + 2 * kv) if self.attention_bias else 0
        return self.hidden_size * (q + 2 * kv) + q * self.hidden_size + bias

    def mlp_param_count(self, experts: int | None = None) -> int:
        """Weights of one layer's gated MLP(s) (gate, up, down), plus the router for MoE.

        `experts` counts how many expert MLPs to include (default: all of them).
        """
        one = 3 * self.hidden_size * self.intermediate_size
        if not self.is_moe:
            return one
        n = self.num_experts if experts is None else experts
        return n * one + self.hidden_size * self.num_experts

    def linear_param_count(self) -> int:
        """All per-layer linear weights over all layers (what weight quantization shrinks)."""
        return self.num_layers * (self.attention_param_count() + self.mlp_param_count())

    def embedding_param_count(self) -> int:
        """Token embedding plus the LM head (counted once when tied)."""
        tables = 1 if self.tie_embeddings else 2
        return tables * self.vocab_size * self.hidden_size

    def norm_param_count(self) -> int:
        """RMSNorm weights: two per layer and a final one."""
        return (2 * self.num_layers + 1) * self.hidden_size

    def param_count(self) -> int:
        """Every parameter of the checkpoint."""
        return self.linear_param_count() + self.embedding_param_count() + self.norm_param_count()

    def active_param_count(self) -> int:
        """Parameters one token touches (MoE: only its `experts_per_token` experts)."""
        if not self.is_moe:
            return self.param_count()
        per_layer = self.attention_param_count() + self.mlp_param_count(experts=self.experts_per_token)
        return self.num_layers * per_layer + self.embedding_param_count() + self.norm_param_count()

    def kv_elements_per_token(self) -> int:
        """Numbers stored in the KV cache per token over all layers (K and V)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim


_FIELDS = {f.name for f in fields(ModelShape)}


def _normalise(name: str) -> str:
    """Lower-case, drop an `org/` prefix and an `-instruct` part: instruct models share the base shape."""
    key = name.strip().lower().rsplit("/", 1)[-1]
    return key.replace("-instruct", "")


@cache
def _catalogue() -> tuple[dict[str, ModelShape], dict[str, str]]:
    """Load shapes.json once: shapes by name, and every alias mapped to its name."""
    data = json.loads(_CATALOGUE.read_text())
    shapes: dict[str, ModelShape] = {}
    aliases: dict[str, str] = {}
    for entry in data["models"]:
        shape = ModelShape(**{k: v for k, v in entry.items() if k in _FIELDS})
        shapes[shape.name] = shape
        for alias in [shape.name, entry.get("source", ""), *entry.get("aliases", [])]:
            if alias:
                aliases[_normalise(alias)] = shape.name
    return shapes, aliases


SHAPES: dict[str, ModelShape] = dict(_catalogue()[0])


def shape_from_config(config: dict[str, Any], name: str | None = None) -> ModelShape:
    """Read a ModelShape from a Hugging Face config dict (Llama, Mistral, Qwen2, Mixtral, Qwen-MoE style).

    Multimodal configs with a `text_config` use that. Missing required keys raise ValueError.
    """
    if isinstance(config.get("text_config"), dict):
        config = {**config["text_config"], **{k: v for k, v in config.items() if k == "_name_or_path"}}
    name = name or config.get("_name_or_path") or config.get("name_or_path") or config.get("model_type") or "custom"
    try:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        layers = int(config["num_hidden_layers"])
        vocab = int(config["vocab_size"])
    except KeyError as exc:
        raise ValueError(
            f"config for {name!r} lacks {exc.args[0]!r}: pass a decoder-only transformer config.json "
            "with hidden_size, num_attention_heads, num_hidden_layers and vocab_size"
        ) from None
    experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    intermediate = config.get("moe_intermediate_size") if experts else None
    intermediate = int(intermediate or config.get("intermediate_size") or 4 * hidden)
    return ModelShape(
        name=str(name),
        num_layers=layers,
        hidden_size=hidden,
        num_heads=heads,
        num_kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        intermediate_size=intermediate,
        vocab_size=vocab,
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        num_experts=experts,
        experts_per_token=int(config.get("num_experts_per_tok") or 0) if experts else 0,
        max_position_embeddings=int(config.get("max_position_embeddings") or 8192),
        attention_bias=bool(config.get("attention_bias", config.get("model_type") == "qwen2")),
    )


def get_shape(model: str | os.PathLike | dict[str, Any] | ModelShape | Any) -> ModelShape:
    """Resolve `model` to a ModelShape.

    Accepts a ModelShape, a catalogue name or alias (case-insensitive, with or without the
    `org/` prefix and `-Instruct`), a checkpoint directory or config.json path, a config dict,
    an object with `.to_dict()` or `.config` (a transformers config or model), or a Hugging Face
    id (its config.json from the local hub cache, else the network). Anything else raises
    ValueError listing the catalogue.
    """
    if isinstance(model, ModelShape):
        return model
    if isinstance(model, dict):
        return shape_from_config(model)
    if hasattr(model, "config") and not isinstance(model, str | os.PathLike):
        model = model.config
    if hasattr(model, "to_dict") and not isinstance(model, str | os.PathLike):
        return shape_from_config(model.to_dict())
    if not isinstance(model, str | os.PathLike):
        raise ValueError(f"cannot read a model shape from {type(model).__name__}: {_choices()}")
    shapes, aliases = _catalogue()
    if isinstance(model, str) and _normalise(model) in aliases:
        return shapes[aliases[_normalise(model)]]
    path = Path(model).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        config = _read_config(path)
        default = path.parent.name
        return shape_from_config(config, name=config.get("_name_or_path") or default)
    if isinstance(model, str) and "/" in model and not os.path.isabs(model):
        return _from_hub(model)
    raise ValueError(f"unknown model {str(model)!r}: {_choices()}")


def _from_hub(repo_id: str) -> ModelShape:
    """Read config.json of a Hugging Face hub model: the local hub cache first, then the network."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(repo_id, "config.json", local_files_only=True)
    except Exception:  # noqa: BLE001 - not cached: go online below
        path = None
    if path is None:
        reason = "offline (HF_HUB_OFFLINE is set)" if hub_offline() else _hub_unreachable()
        if reason:
            raise ValueError(f"unknown model {repo_id!r} ({reason}): {_choices()}")
        try:
            path = hf_hub_download(repo_id, "config.json")
        except Exception as exc:  # noqa: BLE001 - missing repo, gated model, network: one clear message
            raise ValueError(f"unknown model {repo_id!r} (hub: {type(exc).__name__}): {_choices()}") from None
    return shape_from_config(_read_config(Path(path)), name=repo_id)


def _read_config(path: Path) -> dict:
    """A config.json's contents, or ValueError naming the file and what is wrong with it."""
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{path} is not a valid config.json ({exc}): fix the file, or pass the config as a dict"
        ) from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} holds a JSON {type(config).__name__}, not an object: pass a model's config.json")
    return config


def _hub_unreachable() -> str:
    """A reason when the hub's host does not resolve (so an offline machine fails at once, not after retries)."""
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return f"cannot reach {host}"
    return ""


def _choices() -> str:
    names = ", ".join(sorted(SHAPES))
    return (
        f"pass one of {names}; a checkpoint directory or config.json path; a config dict; "
        "or a Hugging Face model id while online"
    )
