"""Where llmlab keeps its files: one cache root, overridable with $LLMLAB_HOME."""

from __future__ import annotations

import os
from pathlib import Path


def home() -> Path:
    """Return llmlab's cache root ($LLMLAB_HOME or ~/.cache/llmlab), creating it if needed."""
    root = Path(os.environ.get("LLMLAB_HOME") or Path.home() / ".cache" / "llmlab").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def models_dir() -> Path:
    """Return the folder holding converted model checkpoints, creating it if needed."""
    path = home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
