"""What every engine offers: add requests, step, abort; and the shared `generate` and `run`."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from llmlab.core.records import Completion, DecodeRun, EngineInfo, StepRecord
from llmlab.core.request import SamplingParams

if TYPE_CHECKING:
    from llmlab.session.run import Run
    from llmlab.workloads import WorkItem, Workload


def release_memory(collect: bool = True) -> None:
    """Hand freed memory back to the OS: glibc keeps the load's transient copies otherwise, and on a
    small machine (a 2 GB notebook server) that is the difference between fitting and not.

    `collect=False` skips the garbage collection, for calls in a loop (the loader, after each layer)
    where nothing freed is held by reference cycles.
    """
    import ctypes
    import gc

    if collect:
        gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


@dataclass
class EngineStep:
    """One step's result. The session stamps `record` with the step index and times."""

    record: StepRecord | DecodeRun
    new_tokens: dict[str, int] = field(default_factory=dict)  # req_id -> tokens appended this step
    finished: list[Completion] = field(default_factory=list)
    # req_id -> why it failed alone (finish_reason "error"); the other requests go on
    errors: dict[str, str] = field(default_factory=dict)


class Engine:
    """Base class of all engines. Subclasses implement `add_request`, `step`, `abort`, `has_unfinished`."""

    name = "engine"
    virtual_clock = False  # True for the simulator: `now` is simulated time

    info: EngineInfo
    tokenizer: Any

    def __init__(self) -> None:
        self._busy = threading.Lock()
        self._closed = False
        self._run: Run | None = None  # the run in flight, so that close() can stop it first
        self._driver: threading.Thread | None = None  # the thread driving it
        self.last_run: Run | None = None  # the latest run, reachable after a Ctrl-C interrupted it

    # the per-engine part -----------------------------------------------------------------
    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        raise NotImplementedError

    def check_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise ValueError if this request could never run here; called before a run starts.
        Engines extend it (calling this first) with their context, pool and vocabulary limits."""
        params.validate(req_id)

    def check_vocab(self, req_id: str, prompt_token_ids: list[int], vocab_size: int) -> None:
        """Raise ValueError naming the first prompt token id outside the model's `vocab_size` ids."""
        if not len(prompt_token_ids):
            return
        lo, hi = min(prompt_token_ids), max(prompt_token_ids)
        if lo >= 0 and hi < vocab_size:
            return
        pos, bad = next((i, t) for i, t in enumerate(prompt_token_ids) if not 0 <= t < vocab_size)
        raise ValueError(
            f"request {req_id!r}: token id {bad} at prompt position {pos} is outside the model's vocabulary of "
            f"{vocab_size} ids (0..{vocab_size - 1}): encode the prompt with this engine's tokenizer"
        )

    def step(self) -> EngineStep:
        raise NotImplementedError

    def abort(self, req_id: str) -> None:
        raise NotImplementedError

    def has_unfinished(self) -> bool:
        raise NotImplementedError

    def now(self) -> float:
        return time.perf_counter()

    def advance_to(self, t: float) -> None:
        """Move a virtual clock forward while idle; real engines sleep instead."""

    def close(self) -> None:
        """Stop a run in flight first (it ends "stopped", its requests aborted and their KV blocks
        freed), then mark the engine closed; engines free their memory after calling this."""
        self._closed = True
        run, driver = self._run, self._driver
        if run is None:
            return
        run.stop()
        if threading.current_thread() is not driver:  # not from the run itself (e.g. a subscriber)
            run.wait()
            if run._thread is not None:
                run._thread.join()

    @property
    def max_model_len(self) -> int | None:
        """The longest sequence (prompt plus output) this engine takes, in tokens."""
        info = getattr(self, "info", None)
        return info.config.get("max_model_len") if info is not None else None

    # shared ------------------------------------------------------------------------------
    def params_for(self, item: WorkItem) -> SamplingParams:
        params = SamplingParams(
            max_tokens=item.max_tokens,
            temperature=item.temperature,
            top_p=item.top_p,
            top_k=item.top_k,
            seed=item.seed,
            ignore_eos=item.ignore_eos,
            stop=item.stop if isinstance(item.stop, str) else list(item.stop or []),  # a bare str: refused
        )
        params.validate(item.req_id)
        return params

    def encode(self, item: WorkItem) -> list[int]:
        """The prompt's token ids; a corpus window longer than max_model_len is refused before it is built."""
        from llmlab.workloads import prompt_token_ids

        return prompt_token_ids(item, self.tokenizer, limit=self.max_model_len)

    def run(self, workload: Workload, live: bool = False) -> Run:
        """Send `workload`; returns a finished `Run`, or at once with `live=True` (then `run.wait()`)."""
        from llmlab.session.driver import Session

        if self._closed:
            raise ValueError(f"the {self.name} engine is closed: launch a new one with llmlab.launch({self.name!r})")
        if self._busy.locked():
            raise ValueError(
                f"the {self.name} engine is busy with a live run: call run.wait() or run.stop() on it first"
            )
        return Session(self, workload).start(live=live)

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
        from llmlab import workloads

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

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        info = getattr(self, "info", None)
        if info is None:
            return f"<{type(self).__name__}>"
        return f"<{self.name} engine: {info.model} on {info.device}, {info.dtype}>"
