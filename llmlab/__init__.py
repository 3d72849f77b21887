"""llmlab: launch LLM inference engines in a notebook, watch every scheduler step, compare choices."""

from __future__ import annotations

from llmlab import cpu_threads

cpu_threads.NOTE = cpu_threads.default_wait_policy()  # before anything below imports PyTorch

from llmlab import plan, workloads  # noqa: E402  (plan is a package you can call: llmlab.plan(model=...))
from llmlab.config import VERSION as __version__  # noqa: E402
from llmlab.measure.compare import compare  # noqa: E402
from llmlab.session.engine import Engine, launch  # noqa: E402
from llmlab.session.run import Run  # noqa: E402


def load(path) -> Run:
    """Read a run saved with `run.save(path)` (.jsonl or .parquet); its DataFrames and views work as before."""
    return Run.load(path)


def __getattr__(name: str):
    """`llmlab.connect` and `llmlab.serve`, imported on first use (they need the `serving` extra)."""
    if name in ("connect", "serve"):
        try:
            from llmlab import serving
        except ImportError as exc:
            raise ImportError(
                f"llmlab.{name} needs an optional package ({exc.name}): pip install 'llmlab[serving]'"
            ) from exc
        return getattr(serving, name)
    raise AttributeError(f"module 'llmlab' has no attribute {name!r}")


__all__ = ["Engine", "Run", "__version__", "compare", "connect", "launch", "load", "plan", "serve", "workloads"]
