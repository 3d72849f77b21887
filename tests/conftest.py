"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2-135M checkpoint directory, converted once per cache (~20-45 s the first time)."""
    from llmlab.models import ensure_embedded

    return ensure_embedded(progress=False)
