"""Predict before you run: hardware catalogue, per-GPU memory budget and step-time model."""

import sys
import types

from llmlab.plan.calibrate import Calibration, calibrate, validate
from llmlab.plan.cost import CostModel, Efficiency, StepLoad, step_load
from llmlab.plan.grid import WORKLOADS, PlanTable, plan
from llmlab.plan.hardware import HARDWARE, Hardware, get_hardware, local_cpu, register_hardware
from llmlab.plan.memory import MemoryPlan, memory_plan

__all__ = [
    "WORKLOADS",
    "Calibration",
    "PlanTable",
    "calibrate",
    "plan",
    "validate",
    "HARDWARE",
    "CostModel",
    "Efficiency",
    "Hardware",
    "MemoryPlan",
    "StepLoad",
    "get_hardware",
    "local_cpu",
    "memory_plan",
    "register_hardware",
    "step_load",
]


class _CallablePlanModule(types.ModuleType):
    """`llmlab.plan` is both this package and the function: `llmlab.plan(model=...)` calls `plan`."""

    def __call__(self, *args, **kwargs) -> PlanTable:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePlanModule
