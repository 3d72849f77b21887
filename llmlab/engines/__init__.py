"""Engine cores: each turns requests into steps of the same trace. `llmlab.launch` picks one by name."""

from __future__ import annotations

from llmlab.engines.base import EngineCore, EngineStep

# each engine by name, imported only when launched (vLLM is an optional, heavy import)
ENGINES = {
    "native": "llmlab.engines.native:NativeEngine",
    "sim": "llmlab.engines.sim:SimEngine",
    "vllm": "llmlab.engines.vllm:VLLMEngine",
    "mii": "llmlab.engines.mii.engine:MIIEngine",
}
EXTRAS: dict[str, str] = {"vllm": "vllm-cpu", "mii": "mii"}  # the extra that provides each optional engine

__all__ = ["ENGINES", "EXTRAS", "EngineCore", "EngineStep"]
