"""The simulator: the core scheduler and block manager on a virtual clock, with modelled step times.

- `engine.py`: `SimEngine`, one step at a time.
- `fast_forward.py`: `FastForward`, the same steps recorded in stretches, steady decoding in bulk.
- `step_times.py`: `ReplayStepTimes`, step times replayed from a measured run.
- `presets.py`: each serving engine's scheduling defaults (`like=`), with their sources.
- `export.py`: `to_engine_args`, a configuration as a real engine's launch options.
- `tokens.py`: placeholder tokens, corpus-window ids, the default tokenizer.
"""

from llmlab.engines.sim.engine import SimEngine
from llmlab.engines.sim.export import EngineArgs, to_engine_args
from llmlab.engines.sim.fast_forward import FastForward
from llmlab.engines.sim.step_times import ReplayStepTimes, StepTime
from llmlab.engines.sim.tokens import PLACEHOLDER_TOKEN, default_tokenizer, window_ids

__all__ = [
    "EngineArgs",
    "PLACEHOLDER_TOKEN",
    "FastForward",
    "ReplayStepTimes",
    "SimEngine",
    "StepTime",
    "default_tokenizer",
    "to_engine_args",
    "window_ids",
]
