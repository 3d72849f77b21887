"""llmlab: launch LLM inference engines in a notebook, watch every scheduler step, compare choices."""

from __future__ import annotations

from llmlab import plan, workloads  # noqa: E402  (plan is a package you can call: llmlab.plan(model=...))
from llmlab.config import VERSION as __version__
from llmlab.measure.compare import compare  # noqa: E402
from llmlab.session.engine import Engine, launch  # noqa: E402
from llmlab.session.run import Run  # noqa: E402


def load(path) -> Run:
    """Read a run saved with `run.save(path)` (.jsonl or .parquet); its DataFrames and views work as before."""
    return Run.load(path)


__all__ = ["Engine", "Run", "__version__", "compare", "launch", "load", "plan", "workloads"]
