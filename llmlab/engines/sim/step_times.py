"""Step times given instead of the cost model: `ReplayStepTimes` repeats a measured run's."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from llmlab.core.records import Slot

StepTime = Callable[[list[Slot]], float]
"""A step's batch -> the seconds the step takes."""


class ReplayStepTimes:
    """A `step_time` that replays a measured run's step durations by step index.

    With it the simulator repeats a real run's timeline, which isolates the scheduler: any
    difference left between the two traces is a difference in scheduling.
    """

    def __init__(self, run: Any | Sequence[float]) -> None:
        """`run`: a `Run` (anything with a `.trace` of step records) or the step durations in seconds."""
        if hasattr(run, "trace"):
            self.durations = [r.t_end - r.t_start for r in run.trace.step_records]
        else:
            self.durations = [float(d) for d in run]
        if not self.durations:
            raise ValueError("the run to replay has no steps: give a finished run with at least one step")
        self.calls = 0

    def __call__(self, slots: list[Slot]) -> float:
        i = self.calls
        self.calls += 1
        if i >= len(self.durations):
            raise ValueError(
                f"step {i} has no measured duration: the replayed run had {len(self.durations)} steps; "
                "replay it on the same workload and configuration"
            )
        return self.durations[i]
