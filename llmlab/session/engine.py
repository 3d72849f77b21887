"""`launch` and the `Engine` it returns: the user's object, which runs workloads on an engine core.

The core (`llmlab.engines.base.EngineCore`) only steps; this object owns what a user does with it:
`run` a workload (blocking or live), `generate` text, read `memory()`, `close` it. Anything else,
such as `eng.scheduler` or `eng.blocks`, is the core's and is read through it.
"""

from __future__ import annotations

import importlib
import threading
from typing import Any

from llmlab import workloads
from llmlab.config import EngineConfig, check_settings, launch_signature, settings_doc
from llmlab.core.records import Completion, EngineInfo
from llmlab.engines import ENGINES, EXTRAS
from llmlab.engines.base import EngineCore
from llmlab.session.driver import Session
from llmlab.session.run import Run
from llmlab.workloads import Workload

OWN = ("core", "last_run", "_session")  # the attributes an Engine keeps; the rest are its core's


class Engine:
    """An engine in this process, ready for workloads: `eng.run(workload)`, `eng.generate(prompts)`."""

    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.last_run: Run | None = None  # the latest run, reachable after a Ctrl-C interrupted it
        self._session: Session | None = None  # the run in flight, so that close() can stop it first

    @property
    def name(self) -> str:
        return self.core.name

    @property
    def info(self) -> EngineInfo:
        return self.core.info

    def __getattr__(self, name: str) -> Any:  # the core's own parts: scheduler, blocks, tokenizer, score ...
        if name in OWN:
            raise AttributeError(name)
        return getattr(self.core, name)

    def __setattr__(self, name: str, value: Any) -> None:  # eng.trace_kv_owners = False sets the core's
        if name in OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.core, name, value)

    # running -----------------------------------------------------------------------------
    def run(self, workload: Workload, live: bool = False) -> Run:
        """Send `workload`; returns a finished `Run`, or at once with `live=True` (then `run.wait()`)."""
        core = self.core
        if core.closed:
            raise ValueError(f"the {core.name} engine is closed: launch a new one with llmlab.launch({core.name!r})")
        busy = f"the {core.name} engine is busy with a live run: call run.wait() or run.stop() on it first"
        if core.busy.locked():
            raise ValueError(busy)
        session = Session(core, workload, on_end=self._ended)  # every request checked before anything runs
        if not core.busy.acquire(blocking=False):
            raise ValueError(busy)
        self._session, self.last_run = session, session.run
        return session.start(live)  # Ctrl-C in a blocking run: it ends "stopped", then re-raises

    def _ended(self) -> None:
        """Called by the session as its run ends, whatever happened: the core is free again."""
        self._session = None
        self.core.busy.release()

    def generate(
        self,
        prompts: str | list[str] | list[list[int]],
        max_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        top_k: int = 0,
        seed: int | None = None,
        stop: list[str] | None = None,
        chat: bool = False,
        ignore_eos: bool = False,
    ) -> list[Completion]:
        """Complete each prompt (text or token ids); returns completions in prompt order."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        wl = workloads.fixed(
            prompts,
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
            chat=chat,
            ignore_eos=ignore_eos,
        )
        run = self.run(wl)
        if run.error is not None:
            raise run.error
        for item in wl:
            if run.outputs[item.req_id].finish_reason == "error":
                raise RuntimeError(f"request {item.req_id!r} failed: {run.trace.request_records[item.req_id].error}")
        return [run.outputs[item.req_id] for item in wl]

    def memory(self) -> dict[str, Any]:
        """What the engine holds: weight bytes where it can count them, KV bytes per block, blocks,
        tokens per block and KV tokens, and the weights' and KV cache's dtypes."""
        return self.core.memory()

    # closing -----------------------------------------------------------------------------
    def close(self) -> None:
        """Stop a run in flight first (it ends "stopped", its requests aborted and their KV blocks
        freed), then free the engine's memory."""
        session = self._session
        if session is not None:
            session.run.stop()
            if threading.current_thread() is not session.driver:  # not from the run itself (e.g. a subscriber)
                session.run.wait()
                if session.driver is not None:
                    session.driver.join()
        self.core.close()

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return repr(self.core)


def launch(engine: str = "native", **settings: Any) -> Engine:
    """Start an engine in this process: `launch("native", model="smollm2-135m", device="cpu")`.

    Every setting is checked before the engine's module is even imported; a setting the engine
    cannot honour is refused, naming the nearest one it has.
    """
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is unknown: choose one of {sorted(ENGINES)}")
    check_settings(engine, settings)  # an unknown name gets the nearest one this engine has
    config = EngineConfig.from_user(settings).for_engine(engine)
    module, _, cls = ENGINES[engine].partition(":")
    try:
        factory = getattr(importlib.import_module(module), cls)
    except ImportError as exc:
        extra = EXTRAS.get(engine, engine)
        raise ValueError(
            f"the {engine} engine needs an optional package ({exc.name}): pip install 'llmlab[{extra}]'"
        ) from exc
    return Engine(factory(config))


launch.__signature__ = launch_signature()  # type: ignore[attr-defined]  (help() and tab completion list them)
launch.__doc__ += f"\n    Settings (an engine in brackets: only that engine takes it):\n{settings_doc()}\n"
