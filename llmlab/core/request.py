"""A request's state machine: waiting -> running -> (preempted -> waiting ->) finished."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class SamplingParams:
    """How to pick and when to stop generating tokens for one request."""

    max_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    ignore_eos: bool = False
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)

    def validate(self, req_id: str | None = None) -> None:
        """Raise ValueError (SettingTypeError for a wrong type) naming the request, the bad value and
        the fix: NaN or inf, a non-int token count, an empty stop string (it would end the request
        at once). Engines call it for every request before a run starts."""
        from llmlab.config import check_request_params

        check_request_params(
            {
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "top_k": self.top_k,
                "seed": self.seed,
                "ignore_eos": self.ignore_eos,
                "stop": self.stop,
                "stop_token_ids": self.stop_token_ids,
            },
            req_id,
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class Request:
    """One sequence: its tokens, how many are in the KV cache, and the blocks holding them."""

    __slots__ = (
        "req_id",
        "prompt_token_ids",
        "num_prompt_tokens",
        "params",
        "arrival",
        "eos_token_ids",
        "status",
        "output_token_ids",
        "num_tokens",
        "num_computed_tokens",
        "block_ids",
        "num_cached_tokens",
        "num_preemptions",
        "finish_reason",
    )

    def __init__(
        self,
        req_id: str,
        prompt_token_ids: list[int],
        params: SamplingParams | None = None,
        arrival: float = 0.0,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.req_id = req_id
        # a list is kept as given (the caller hands it over, nothing here changes it): no copy
        self.prompt_token_ids = prompt_token_ids if type(prompt_token_ids) is list else list(prompt_token_ids)
        self.num_prompt_tokens = len(self.prompt_token_ids)
        self.params = params or SamplingParams()
        self.arrival = arrival
        self.eos_token_ids = eos_token_ids
        self.status = Status.WAITING
        self.output_token_ids: list[int] = []  # grown only through the methods below
        self.num_tokens = self.num_prompt_tokens  # prompt plus output: kept, as the scheduler reads it often
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.block_ids: list[int] = []  # the block table
        self.num_cached_tokens = 0  # prompt tokens served from the prefix cache (first admission)
        self.num_preemptions = 0
        self.finish_reason: str | None = None

    # token bookkeeping -------------------------------------------------------------------
    @property
    def all_token_ids(self) -> list[int]:
        return [*self.prompt_token_ids, *self.output_token_ids]

    def token_ids(self, start: int, stop: int) -> list[int]:
        """Tokens `start:stop` of prompt plus output."""
        p = self.num_prompt_tokens
        if stop <= p:
            return self.prompt_token_ids[start:stop]
        if start >= p:
            return self.output_token_ids[start - p : stop - p]
        return [*self.prompt_token_ids[start:], *self.output_token_ids[: stop - p]]

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def num_remaining(self) -> int:
        """Tokens still to run through the model before the next token can be sampled."""
        return self.num_tokens - self.num_computed_tokens

    @property
    def decoding(self) -> bool:
        """True when its next step computes just its last sampled token (a decode)."""
        return self.num_computed_tokens == self.num_tokens - 1 and bool(self.output_token_ids)

    @property
    def in_prefill(self) -> bool:
        """True while the prompt (or, after preemption, prompt plus outputs) is being recomputed."""
        return self.num_remaining > 1 or self.num_computed_tokens < self.num_prompt_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is Status.FINISHED

    def max_total_tokens(self) -> int:
        """The most tokens this request can ever hold in the KV cache."""
        return self.num_prompt_tokens + self.params.max_tokens

    def append_token(self, token_id: int) -> str | None:
        """Add a sampled token; return a finish reason when a stop condition is met."""
        out = self.output_token_ids
        out.append(token_id)
        self.num_tokens += 1
        p = self.params
        if token_id in self.eos_token_ids and not p.ignore_eos:
            return "stop"
        if token_id in p.stop_token_ids:
            return "stop"
        if len(out) >= p.max_tokens:
            return "length"
        return None

    def extend_outputs(self, token_id: int, n: int) -> None:
        """Append `n` copies of `token_id` with no stop checks (the simulator's placeholders)."""
        self.output_token_ids += [token_id] * n
        self.num_tokens += n

    def drop_outputs(self, n: int) -> None:
        """Take back the last `n` output tokens (the simulator, undoing a look ahead)."""
        if n > 0:
            del self.output_token_ids[-n:]
            self.num_tokens -= n

    def __repr__(self) -> str:
        return (
            f"Request({self.req_id!r}, {self.status.value}, prompt={self.num_prompt_tokens}, "
            f"out={self.num_output_tokens}, computed={self.num_computed_tokens}, blocks={len(self.block_ids)})"
        )
