"""The simulator's token ids: placeholders for sampled tokens, stand-ins for corpus windows."""

from __future__ import annotations

from functools import cache
from typing import Any

PLACEHOLDER_TOKEN = 0  # every token the simulator "samples"


@cache
def default_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer: the simulator's token counter for text and corpus prompts."""
    from llmlab.models import ensure_embedded, load_tokenizer  # loads transformers: only when a text needs it

    return load_tokenizer(ensure_embedded(progress=False))


_SHARED_IDS: list[int] = []  # 0, 1, 2, ...: every window is a slice of it


def window_ids(offset: int, length: int) -> list[int]:
    """`length` consecutive ids from `offset`: a stand-in for a corpus window that shares a prefix
    with another exactly when the real windows do (same offset). A slice of one shared list, so
    its ids are the same int objects in every window: no per-token objects are made."""
    end = offset + length
    if end > len(_SHARED_IDS):
        _SHARED_IDS.extend(range(len(_SHARED_IDS), end))
    return _SHARED_IDS[offset:end]
