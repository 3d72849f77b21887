"""What one step computes: a `Batch` of `ScheduledRequest`s, built by a policy, run by an engine."""

from __future__ import annotations

from dataclasses import dataclass, field

from llmlab.core.records import Phase, Slot
from llmlab.core.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """One request's part in a step: `num_tokens` from position `start`, and whether it samples."""

    request: Request
    start: int
    num_tokens: int
    phase: Phase

    @property
    def samples(self) -> bool:
        return self.start + self.num_tokens == self.request.num_tokens

    @property
    def context_len(self) -> int:
        """Tokens in the request's KV cache after the step (as `Slot.context_len`)."""
        return self.start + self.num_tokens


@dataclass
class Batch:
    """What one step computes, plus the queue changes scheduling made."""

    items: list[ScheduledRequest] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    prefix_hit_tokens: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(i.num_tokens for i in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)

    def slots(self) -> list[Slot]:
        return [Slot(i.request.req_id, i.phase, i.num_tokens, i.start + i.num_tokens) for i in self.items]


def phase_of(req: Request, num_tokens: int) -> Phase:
    """A step that computes just the last sampled token is a decode; anything else is prefill."""
    if num_tokens == 1 and req.decoding:
        return "decode"
    return "prefill"
