"""The step contract every engine core implements (`EngineCore`) and what one step returns (`EngineStep`)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from llmlab.core.records import Completion, DecodeRun, EngineInfo, StepRecord
from llmlab.core.request import SamplingParams
from llmlab.workloads import WorkItem, prompt_token_ids


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


class EngineCore:
    """The step contract every engine implements: add requests, step, abort, say whether work is
    left, and tell the time. `llmlab.launch` wraps a core in the user's `Engine` (llmlab.session),
    which runs workloads on it; a core knows nothing of sessions or runs.

    Subclasses implement `add_request`, `step`, `abort`, `has_unfinished`; the simulator also
    `now` and `advance_to` (a virtual clock)."""

    name = "engine"
    virtual_clock = False  # True for the simulator: `now` is simulated time

    info: EngineInfo
    tokenizer: Any

    def __init__(self) -> None:
        self.busy = threading.Lock()  # held while a run or a scoring pass uses the core
        self.closed = False

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
        """Mark the core closed; engines free their weights and KV pool after calling this."""
        self.closed = True

    def memory(self) -> dict[str, Any]:
        """What the engine holds, from its config: KV bytes per block, blocks, tokens per block and
        KV tokens, weights and KV dtypes. Engines that can count their tensors add weight bytes."""
        cfg = self.info.config
        size, blocks = cfg.get("block_size"), cfg.get("num_blocks")
        return {
            "weights": cfg.get("weights"),
            "kv_dtype": cfg.get("kv_dtype"),
            "kv_bytes_per_block": cfg.get("kv_bytes_per_block"),
            "num_blocks": blocks,
            "block_size": size,
            "kv_tokens": blocks * size if blocks and size else None,
        }

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
        return prompt_token_ids(item, self.tokenizer, limit=self.max_model_len)

    def __repr__(self) -> str:
        info = getattr(self, "info", None)
        if info is None:
            return f"<{type(self).__name__}>"
        return f"<{self.name} engine: {info.model} on {info.device}, {info.dtype}>"
