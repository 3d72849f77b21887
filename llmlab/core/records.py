"""The trace vocabulary every engine speaks: plain, JSON-serialisable dataclasses.

Engines emit one `StepRecord` per scheduler iteration and one `RequestRecord` per request;
`llmlab.session.trace.Trace` collects them. Nothing here holds a tensor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Phase = Literal["prefill", "decode"]
Source = Literal["exact", "derived"]


@dataclass(slots=True)
class Slot:
    """One request's share of a step: a prefill chunk or one decode token."""

    req_id: str
    phase: Phase
    num_tokens: int
    context_len: int  # tokens in this request's KV cache after the step


@dataclass(slots=True)
class KVSnapshot:
    """The KV block pool after a step. `cached` counts free blocks that still hold a prefix."""

    block_size: int
    num_blocks: int
    used: int
    cached: int
    free: int
    owners: dict[int, list[str]] | None = None  # block id -> request ids; None when not captured
    cached_ids: list[int] | None = None  # ids of the cached free blocks; None when not captured

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> KVSnapshot:
        owners = d.get("owners")
        if owners is not None:
            owners = {int(k): list(v) for k, v in owners.items()}
        return cls(**{**d, "owners": owners})


@dataclass(slots=True)
class StepRecord:
    """One scheduler iteration: who ran, how many tokens, who waited, and the KV pool after."""

    step: int
    t_start: float
    t_end: float
    batch: list[Slot]
    waiting: int
    running: int
    admitted: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    kv: KVSnapshot | None = None
    prefix_hit_tokens: int = 0
    source: Source = "exact"
    # tp/pp > 1: per-rank compute and communication time, bytes, micro-batch timeline (parallel/runner.py)
    parallel: dict[str, Any] | None = None

    @property
    def num_steps(self) -> int:
        """1: one step (a `DecodeRun` counts several)."""
        return 1

    @property
    def prefill_tokens(self) -> int:
        return sum(s.num_tokens for s in self.batch if s.phase == "prefill")

    @property
    def decode_tokens(self) -> int:
        return sum(s.num_tokens for s in self.batch if s.phase == "decode")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        kv = d.get("kv")
        return cls(
            **{
                **d,
                "batch": [Slot(**s) for s in d.get("batch", [])],
                "kv": KVSnapshot.from_dict(kv) if kv is not None else None,
            }
        )


@dataclass(slots=True)
class DecodeRun:
    """Consecutive steps stored compactly: in each, every running request is in the batch, the
    decodes first, then prompt chunks (requests admitted there, or prompts going on); nobody
    is preempted. Row i (`req_ids[i]`) decodes one token in each of `steps[i]` steps from
    step `first_steps[i]` (0 when not given); a row in fewer steps than the run's rest finished
    in its last one. `prefills[m]` is a prompt chunk computed in step `prefill_at[m]` after that
    step's decodes: a request admitted there (`prefill_admitted[m]`, with `prefill_hits[m]` of
    its tokens from the prefix cache) or one going on with its prompt. If its prompt is done
    (`prefill_samples[m]`) it sampled a token and decodes from the next step on as a row of its
    own. `finished` lists every request that finishes, by step then batch order, and `waiting`
    maps a step to the requests still waiting after it, where any are. `expand()` gives the
    `StepRecord`s it stands for; the simulator emits these to cover long stretches of steady
    decoding without a record each.
    """

    step: int  # index of the first step
    t_start: float  # start of the first step; each later step starts where the one before ended
    t_ends: list[float]  # end of every step
    req_ids: list[str]  # the requests that decode, in batch order
    context_lens: list[int]  # each request's context after its first decode step (one more per step)
    steps: list[int]  # in how many steps each request decodes
    kv_used: list[int]  # blocks in use after every step
    kv_cached: list[int]  # free blocks still holding a prefix after every step
    block_size: int
    num_blocks: int
    finished: list[str] = field(default_factory=list)
    first_steps: list[int] = field(default_factory=list)  # each row's first decode step; empty: all 0
    prefills: list[Slot] = field(default_factory=list)
    prefill_at: list[int] = field(default_factory=list)
    prefill_hits: list[int] = field(default_factory=list)
    prefill_samples: list[bool] = field(default_factory=list)
    prefill_admitted: list[bool] = field(default_factory=list)
    waiting: dict[int, int] = field(default_factory=dict)  # step -> requests waiting after it, if any

    @property
    def num_steps(self) -> int:
        return len(self.t_ends)

    def firsts(self) -> list[int]:
        """Each row's first decode step."""
        return self.first_steps or [0] * len(self.req_ids)

    def finish_steps(self) -> list[int]:
        """The step (counted from 1) in which each of `finished` ends."""
        ends = {p.req_id: j + 1 for p, j in zip(self.prefills, self.prefill_at, strict=True)}
        ends.update((r, f + n) for r, f, n in zip(self.req_ids, self.firsts(), self.steps, strict=True))
        return [ends[r] for r in self.finished]

    def expand(self) -> list[StepRecord]:
        """One `StepRecord` per step, equal to what stepping one at a time records."""
        out = []
        ends = self.finish_steps()
        rows = list(zip(self.req_ids, self.context_lens, self.firsts(), self.steps, strict=True))
        prefills = list(zip(self.prefills, self.prefill_at, self.prefill_hits, self.prefill_admitted, strict=True))
        t_start = self.t_start
        for j, t_end in enumerate(self.t_ends):
            batch = [Slot(r, "decode", 1, c + j - f) for r, c, f, s in rows if f <= j < f + s]
            admitted, hits = [], 0
            for slot, at, hit, new in prefills:
                if at == j:
                    batch.append(slot)
                    if new:
                        admitted.append(slot.req_id)
                        hits += hit
            done = [r for r, s in zip(self.finished, ends, strict=True) if s == j + 1]
            used, cached = self.kv_used[j], self.kv_cached[j]
            out.append(
                StepRecord(
                    step=self.step + j,
                    t_start=t_start,
                    t_end=t_end,
                    batch=batch,
                    waiting=self.waiting.get(j, 0),
                    running=len(batch) - len(done),
                    admitted=admitted,
                    finished=done,
                    kv=KVSnapshot(self.block_size, self.num_blocks, used, cached, self.num_blocks - used - cached),
                    prefix_hit_tokens=hits,
                )
            )
            t_start = t_end
        return out


@dataclass(slots=True)
class RequestRecord:
    """One request's life, in seconds since the run started."""

    req_id: str
    arrival: float
    prompt_tokens: int
    first_scheduled: float | None = None
    first_token: float | None = None
    finish: float | None = None
    output_tokens: int = 0
    cached_tokens: int = 0
    num_preemptions: int = 0
    finish_reason: str | None = None  # "stop", "length", "abort" or "error"
    token_times: list[float] = field(default_factory=list)
    error: str | None = None  # why this request failed alone (finish_reason "error"), the others going on
    sent: float | None = None  # when a client actually sent it to a server (arrival is when it was due)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RequestRecord:
        return cls(**d)


@dataclass(slots=True)
class ServerSample:
    """A server's state at time `t`, polled from its metrics endpoint: always `source="derived"`
    (a sample between steps, not a step). A field is None where the server does not export it."""

    t: float
    running: float | None = None
    waiting: float | None = None
    kv_usage: float | None = None  # fraction of the KV space in use, 0..1
    kv_used: float | None = None  # blocks (or tokens, for TGI) in use
    kv_total: float | None = None
    preemptions: float | None = None  # counter since the server started
    prefix_hits: float | None = None  # counter since the server started
    batch_size: float | None = None
    batch_tokens: float | None = None
    source: Source = "derived"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ServerSample:
        return cls(**d)


@dataclass
class EngineInfo:
    """What ran: engine, model, devices, dtypes, the effective config, and which views are exact."""

    engine: str
    version: str
    model: str
    device: str
    dtype: str
    config: dict[str, Any] = field(default_factory=dict)
    views: dict[str, Source] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EngineInfo:
        return cls(**d)


@dataclass
class Completion:
    """A finished request's output: its text and token ids."""

    req_id: str
    text: str
    token_ids: list[int]
    finish_reason: str | None = None
    prompt_token_ids: list[int] = field(default_factory=list)
    cached_tokens: int = 0  # prompt tokens served from the prefix cache

    def __str__(self) -> str:
        return self.text

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Completion:
        return cls(**d)
