"""Turn what a user passes as `model=` into a checked local checkpoint directory."""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.models.embedded import EMBEDDED, ensure_embedded

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"}
# The upstream id maps to the embedded checkpoint (dequantized from its Q4_1 GGUF).
EMBEDDED_ALIASES = {EMBEDDED, "huggingfacetb/smollm2-135m-instruct"}
HUB_PATTERNS = ["*.json", "*.safetensors", "tokenizer*"]
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class ModelSpec:
    """A resolved model: its display name, checkpoint directory and parsed config.json."""

    name: str
    path: Path
    config: dict[str, Any]


def is_embedded(model: str | os.PathLike | None) -> bool:
    """True when `model` names the embedded model (None counts as the default)."""
    return model is None or (isinstance(model, str) and model.strip().lower() in EMBEDDED_ALIASES)


def resolve_model(model: str | os.PathLike | None) -> Path:
    """Return a local checkpoint directory for `model`: the embedded one, a local dir or a hub id."""
    if is_embedded(model):
        return ensure_embedded()
    path = Path(model).expanduser()
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.resolve()
        raise ValueError(
            f"model directory {str(model)!r} has no config.json: pass a Hugging Face "
            "checkpoint directory (config.json, *.safetensors and tokenizer files)"
        )
    if path.exists() or not isinstance(model, str) or not _REPO_ID.match(model):
        raise ValueError(_unknown(model))
    return _snapshot(model)


def _unknown(model: object, reason: str = "") -> str:
    """The error message for a model value that cannot be resolved."""
    why = f" ({reason})" if reason else ""
    return (
        f"unknown model {str(model)!r}{why}: pass {EMBEDDED!r}, a local checkpoint directory with "
        "config.json and *.safetensors, or a Hugging Face model id reachable from this machine"
    )


def hub_offline() -> bool:
    """True when the environment asks for no Hugging Face hub traffic (read at call time)."""
    return any(
        os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def _snapshot(repo_id: str) -> Path:
    """Fetch config, safetensors and tokenizer files of a hub model (only the local cache if offline)."""
    try:
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS, local_files_only=hub_offline()))
    except Exception as exc:  # any hub failure (offline, missing repo, no network) means "unknown"
        first_line = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(_unknown(repo_id, f"{type(exc).__name__}: {first_line}".rstrip(": "))) from exc
    if not (path / "config.json").is_file():
        raise ValueError(_unknown(repo_id, "the hub snapshot has no config.json"))
    return path


def check_architecture(path: str | os.PathLike) -> dict[str, Any]:
    """Read config.json and check that llmlab supports the architecture and has safetensors weights."""
    path = Path(path)
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{path} has no config.json: pass a Hugging Face checkpoint directory")
    config = json.loads(config_file.read_text())
    architectures = config.get("architectures") or []
    if not SUPPORTED_ARCHITECTURES.intersection(architectures):
        found = ", ".join(architectures) or "none listed"
        raise ValueError(
            f"unsupported architecture {found} in {config_file}: llmlab supports "
            f"{', '.join(sorted(SUPPORTED_ARCHITECTURES))}"
        )
    if not any(path.glob("*.safetensors")):
        raise ValueError(
            f"no *.safetensors weights in {path}: llmlab loads safetensors only; re-save the "
            "model with save_pretrained() (safetensors is its default)"
        )
    return config


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The checkpoint's tokenizer, loaded with transformers once per directory and shared by every
    engine on it: a relaunch in a notebook then holds one copy (about 50 MB), not two."""
    return _tokenizer(os.path.realpath(path))


GENERIC_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast", "GPT2Tokenizer", "GPT2TokenizerFast"}


@functools.lru_cache(maxsize=4)
def _tokenizer(path: str) -> Any:
    # a tokenizer.json with no model-specific class needs only the generic fast tokenizer, which
    # imports a fraction of transformers (AutoTokenizer pulls in about 150 MB more)
    config = Path(path) / "tokenizer_config.json"
    if (Path(path) / "tokenizer.json").is_file() and config.is_file():
        if json.loads(config.read_text()).get("tokenizer_class") in GENERIC_TOKENIZERS:
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast.from_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def resolve(model: str | os.PathLike | None = None) -> ModelSpec:
    """Resolve and check `model`, returning its name, checkpoint directory and config."""
    path = resolve_model(model)
    config = check_architecture(path)
    name = EMBEDDED if is_embedded(model) else os.fspath(model)
    return ModelSpec(name=name, path=path, config=config)
