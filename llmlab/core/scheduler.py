"""The scheduler: which requests run this step, how many tokens each, and who is preempted.

It owns the waiting and running queues and the `BlockManager`; a `Policy` (see policies.py)
decides the batch. `schedule()` picks a batch, the executor computes it, and `update()`
advances every request by what was computed and sampled.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

from llmlab.config import EngineConfig, SettingTypeError, check_settings
from llmlab.core.batch import Batch, ScheduledRequest, phase_of
from llmlab.core.blocks import BlockManager
from llmlab.core.policies import POLICIES
from llmlab.core.records import Slot, StepRecord
from llmlab.core.request import Request, Status

__all__ = ["Batch", "ScheduledRequest", "Scheduler", "SchedulerConfig", "phase_of"]


@dataclass
class SchedulerConfig:
    """The knobs of batching. Names match `llmlab.launch` and the other engines."""

    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    policy: str = "chunked"
    max_model_len: int = 2048
    watermark: float = 0.01

    @classmethod
    def of(cls, config: EngineConfig, max_model_len: int) -> SchedulerConfig:
        """The batching settings of an engine's config, checked, for sequences of `max_model_len`."""
        names = ("max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill", "enable_prefix_caching")
        sched = cls(
            **{n: getattr(config, n) for n in names},
            policy=config.policy,
            watermark=config.watermark,
            max_model_len=max_model_len,
        )
        sched.validate()
        return sched

    def validate(self) -> None:
        """Check each knob's type and range (against the table in `llmlab.config`), then the ones
        that depend on each other."""
        check_settings(None, asdict(self))
        if self.max_model_len is None:
            raise SettingTypeError("max_model_len=None: the scheduler needs the longest sequence in tokens, e.g. 2048")
        chunking = self.enable_chunked_prefill or self.policy in ("splitfuse", "static")
        if not chunking and self.max_num_batched_tokens < self.max_model_len:
            raise ValueError(
                f"max_num_batched_tokens={self.max_num_batched_tokens} is below max_model_len={self.max_model_len} "
                "with chunked prefill off, so a long prompt could never be scheduled: raise the token budget, "
                "lower max_model_len, or set enable_chunked_prefill=True"
            )


class Scheduler:
    """Queues plus the block pool, driven one step at a time by a batching policy."""

    def __init__(self, config: SchedulerConfig, blocks: BlockManager) -> None:
        config.validate()
        self.config = config
        self.blocks = blocks
        self.policy = POLICIES[config.policy]()
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    # queue management --------------------------------------------------------------------
    def check(self, req: Request) -> None:
        """Raise ValueError when `req` could never run on this engine, naming the fix."""
        limit = self.config.max_model_len
        if req.num_prompt_tokens == 0:
            raise ValueError(f"request {req.req_id!r} has an empty prompt: give at least one token")
        if req.num_prompt_tokens >= limit:
            raise ValueError(
                f"request {req.req_id!r}: prompt of {req.num_prompt_tokens} tokens does not fit the context of "
                f"{limit} tokens (max_model_len): shorten the prompt or launch with a larger max_model_len"
            )
        need = self.blocks.blocks_for(min(req.max_total_tokens(), limit))
        if need > self.blocks.num_blocks:
            capped = f", capped at max_model_len={limit}" if req.max_total_tokens() > limit else ""
            raise ValueError(
                f"request {req.req_id!r} needs {need} KV blocks ({req.num_prompt_tokens} prompt + "
                f"{req.params.max_tokens} max_tokens{capped}, at block_size={self.blocks.block_size}) "
                f"but the pool has only num_blocks={self.blocks.num_blocks}: "
                f"lower max_tokens or launch with num_blocks >= {need}"
            )

    def add(self, req: Request) -> None:
        self.check(req)
        req.status = Status.WAITING
        self.waiting.append(req)

    def abort(self, req_id: str) -> Request | None:
        """Remove a request wherever it is; returns it, or None if unknown."""
        for req in list(self.waiting):
            if req.req_id == req_id:
                self.waiting.remove(req)
                return self._finish(req, "abort")
        for req in self.running:
            if req.req_id == req_id:
                return self._finish(req, "abort")
        return None

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    # the step ----------------------------------------------------------------------------
    def schedule(self) -> Batch:
        return self.policy.schedule(self)

    def next_batch(self) -> Batch:
        """`schedule()` for an executor: an empty batch while requests remain is an error naming the cause."""
        batch = self.schedule()
        if not batch:
            raise RuntimeError(
                f"nothing could be scheduled with {len(self.waiting)} waiting and {len(self.running)} running "
                "requests: the KV pool or token budget is too small for the next request"
            )
        return batch

    def record(
        self, batch: Batch, finished: list[Request], owners: bool = True, slots: list[Slot] | None = None
    ) -> StepRecord:
        """The trace's record of a computed step; the session stamps its index and times."""
        return StepRecord(
            step=0,
            t_start=0.0,
            t_end=0.0,
            batch=batch.slots() if slots is None else slots,
            waiting=len(self.waiting),
            running=len(self.running),
            admitted=batch.admitted,
            preempted=batch.preempted,
            finished=[r.req_id for r in finished],
            kv=self.blocks.snapshot(self.running, owners=owners),
            prefix_hit_tokens=batch.prefix_hit_tokens,
        )

    def update(self, batch: Batch, sampled: dict[str, int]) -> list[Request]:
        """Advance requests by the computed tokens, append sampled ones; return those that finished."""
        finished: list[Request] = []
        bs = self.blocks.block_size
        for item in batch.items:
            req = item.request
            if req.status is Status.FINISHED:  # aborted while the step ran
                continue
            start, end = item.start, item.start + item.num_tokens
            req.num_computed_tokens = end
            if end // bs > start // bs or req.req_id in self.blocks.pending_duplicates:  # a block filled, or one waits
                self.blocks.commit(req)
            if end < req.num_tokens or req.req_id not in sampled:
                continue  # a prompt chunk: nothing sampled yet
            reason = req.append_token(sampled[req.req_id])
            if reason is None and req.num_tokens >= self.config.max_model_len:
                reason = "length"
            if reason is not None:
                finished.append(self._finish(req, reason))
        return finished

    def finish(self, req: Request, reason: str) -> Request:
        """End a running request early (for example on a stop string)."""
        return self._finish(req, reason)

    def _finish(self, req: Request, reason: str) -> Request:
        if req in self.running:
            self.running.remove(req)
        req.status = Status.FINISHED
        req.finish_reason = reason
        self.blocks.free(req)
        self.blocks.forget(req)
        return req

    # helpers the policies share ---------------------------------------------------------
    def try_grow(self, batch: Batch, req: Request, num_tokens: int) -> bool:
        """Schedule `num_tokens` more for a running request, preempting from the back if the pool is full."""
        start = req.num_computed_tokens
        while not self.blocks.allocate(req, start + num_tokens):
            victim = self.running[-1]
            self.preempt(victim)
            batch.preempted.append(victim.req_id)
            batch.items = [i for i in batch.items if i.request is not victim]
            if victim is req:
                return False
        batch.items.append(ScheduledRequest(req, start, num_tokens, phase_of(req, num_tokens)))
        return True

    def try_admit(self, batch: Batch, budget: int, chunk: bool) -> int:
        """Admit the first waiting request if the pool and the budget allow; return tokens scheduled."""
        req = self.waiting[0]
        hits = self.blocks.match_prefix(req)
        hit_tokens = len(hits) * self.blocks.block_size
        num_tokens = req.num_tokens - hit_tokens
        if num_tokens > budget:
            if not chunk:
                return 0
            num_tokens = budget
        watermark = bool(self.running)
        if not self.blocks.allocate(req, hit_tokens + num_tokens, hits, watermark=watermark):
            return 0
        self.waiting.popleft()
        if req.num_preemptions == 0:
            req.num_cached_tokens = hit_tokens
        req.num_computed_tokens = hit_tokens
        req.status = Status.RUNNING
        self.running.append(req)
        batch.admitted.append(req.req_id)
        batch.prefix_hit_tokens += hit_tokens
        batch.items.append(ScheduledRequest(req, hit_tokens, num_tokens, phase_of(req, num_tokens)))
        return num_tokens

    def preempt(self, req: Request) -> None:
        """Preempt by recompute: drop the request's KV and put it back at the head of the queue."""
        self.running.remove(req)
        self.blocks.free(req)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = Status.WAITING
        self.waiting.appendleft(req)
