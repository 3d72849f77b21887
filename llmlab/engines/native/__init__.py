"""llmlab's native engine: pure PyTorch, paged KV cache, continuous batching."""

from llmlab.engines.native.engine import NativeEngine

__all__ = ["NativeEngine"]
