"""Batching policies: each picks one step's batch from the scheduler's queues.

- `chunked`: vLLM V1 style. One token budget; running requests first in admission order
  (decodes and unfinished prefill chunks alike), then new requests FCFS, prompts chunked.
- `prefill_first`: classic separate steps. A step either prefills new prompts or decodes
  every running request, never both; prefills win when they can be admitted.
- `splitfuse`: DeepSpeed-MII Dynamic SplitFuse. Decodes fill the budget first, then prompt
  chunks fill exactly what is left, always chunked.
- `static`: request-level batching. A batch is admitted together and runs until all its
  members finish; nobody joins a batch once it has started decoding.
- `guaranteed_no_evict`: TensorRT-LLM's default capacity scheduler. A request is admitted only
  when the pool can hold its whole prompt plus `max_tokens` beside what every running request
  may still grow to; so nobody is ever preempted, at the price of fewer requests at once.
- `max_utilization`: TensorRT-LLM's other capacity scheduler. Admit while this step fits; when
  the running requests cannot all take their next tokens, pause the newest ones first (their KV
  is dropped and recomputed later, recorded as preempted) and admit nobody that step.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from llmlab.core.batch import Batch
from llmlab.core.request import Request

if TYPE_CHECKING:  # the scheduler holds a policy; a policy only reads the scheduler it is given
    from llmlab.core.scheduler import Scheduler


class Policy:
    """Picks one step's batch. What the simulator's fast path relies on, true of every policy
    here: once a policy has batched every running request with nobody waiting, and each has
    finished its prompt, it batches them all as decodes again while nothing arrives and the pool
    serves them (one token each fits the budget that held at least that many). The simulator
    computes such stretches in bulk, so a new policy must keep this (tests/test_sim.py checks it).
    """

    name = ""
    always_chunk = False  # chunk prompts even when enable_chunked_prefill is off

    def schedule(self, s: Scheduler) -> Batch:
        raise NotImplementedError

    @staticmethod
    def run_running(s: Scheduler, batch: Batch, budget: int, which: Callable[[Request], bool] | None = None) -> int:
        """Give running requests (those `which` accepts, default all) their next tokens within `budget`."""
        chunk = s.config.enable_chunked_prefill or s.policy.always_chunk
        for req in list(s.running):
            if budget <= 0:
                break
            if (batch.preempted and req not in s.running) or (which is not None and not which(req)):
                continue  # preempted by an earlier request of this step, or not this pass's kind
            left = req.num_tokens - req.num_computed_tokens
            n = left if left < budget else budget
            if n < left and not chunk:
                continue
            if s.try_grow(batch, req, n):
                budget -= n
        return budget

    @staticmethod
    def admit_waiting(s: Scheduler, batch: Batch, budget: int, chunk: bool) -> int:
        """Admit waiting requests FCFS while the budget, `max_num_seqs` and the pool allow."""
        while s.waiting and budget > 0 and len(s.running) < s.config.max_num_seqs:
            n = s.try_admit(batch, budget, chunk)
            if n == 0:
                break
            budget -= n
        return budget


class Chunked(Policy):
    name = "chunked"

    def schedule(self, s: Scheduler) -> Batch:
        batch = Batch()
        budget = self.run_running(s, batch, s.config.max_num_batched_tokens)
        if not batch.preempted:
            self.admit_waiting(s, batch, budget, s.config.enable_chunked_prefill)
        return batch


class PrefillFirst(Policy):
    name = "prefill_first"

    def schedule(self, s: Scheduler) -> Batch:
        budget = s.config.max_num_batched_tokens
        batch = Batch()
        left = self.run_running(s, batch, budget, which=lambda r: r.in_prefill)
        if not batch.preempted:
            self.admit_waiting(s, batch, left, s.config.enable_chunked_prefill)
        if batch.items:
            return batch
        self.run_running(s, batch, budget)
        return batch


class SplitFuse(Policy):
    name = "splitfuse"
    always_chunk = True

    def schedule(self, s: Scheduler) -> Batch:
        batch = Batch()
        budget = self.run_running(s, batch, s.config.max_num_batched_tokens, which=lambda r: not r.in_prefill)
        budget = self.run_running(s, batch, budget, which=lambda r: r.in_prefill)
        if not batch.preempted:
            self.admit_waiting(s, batch, budget, chunk=True)
        return batch


class Static(Policy):
    """Whole prompts are prefilled together in one step, as Hugging Face `generate` does, so the
    token budget does not apply; `max_num_seqs` and the KV pool still bound the batch."""

    name = "static"

    def schedule(self, s: Scheduler) -> Batch:
        batch = Batch()
        unlimited = 1 << 62
        if not s.running:
            self.admit_waiting(s, batch, unlimited, chunk=False)
        else:
            self.run_running(s, batch, unlimited)
        return batch


def reserved_blocks(s: Scheduler, req: Request) -> int:
    """The blocks `req` holds at its longest: prompt plus `max_tokens`, capped at the context."""
    return s.blocks.blocks_for(min(req.max_total_tokens(), s.config.max_model_len))


class GuaranteedNoEvict(Policy):
    """Admission reserves a request's whole future KV, so running requests always find blocks."""

    name = "guaranteed_no_evict"

    def schedule(self, s: Scheduler) -> Batch:
        batch = Batch()
        budget = self.run_running(s, batch, s.config.max_num_batched_tokens)
        # blocks free once every running request has grown to its longest
        spare = s.blocks.num_free - sum(max(0, reserved_blocks(s, r) - len(r.block_ids)) for r in s.running)
        chunk = s.config.enable_chunked_prefill
        while s.waiting and budget > 0 and len(s.running) < s.config.max_num_seqs:
            need = reserved_blocks(s, s.waiting[0])
            if need > spare:
                break  # FCFS: nobody overtakes the head of the queue
            n = s.try_admit(batch, budget, chunk)
            if n == 0:
                break
            spare -= need
            budget -= n
        return batch


class MaxUtilization(Policy):
    """Admit and pause: as many requests as this step's tokens fit; pause the newest when short."""

    name = "max_utilization"

    def schedule(self, s: Scheduler) -> Batch:
        batch = Batch()
        budget = s.config.max_num_batched_tokens
        self.pause_until_fits(s, batch, budget)
        budget = self.run_running(s, batch, budget)
        if not batch.preempted:  # a step that paused someone admits nobody: they would only be paused again
            self.admit_waiting(s, batch, budget, s.config.enable_chunked_prefill)
        return batch

    @staticmethod
    def pause_until_fits(s: Scheduler, batch: Batch, budget: int) -> None:
        """Pause (preempt by recompute) the most recently admitted requests until the pool holds
        every remaining one's next tokens."""

        def next_need(r: Request) -> int:
            upto = min(r.num_tokens, r.num_computed_tokens + budget)
            return max(0, s.blocks.blocks_for(upto) - len(r.block_ids))

        while len(s.running) > 1 and sum(next_need(r) for r in s.running) > s.blocks.num_free:
            victim = s.running[-1]
            s.preempt(victim)
            batch.preempted.append(victim.req_id)


POLICIES: dict[str, type[Policy]] = {
    p.name: p for p in (Chunked, PrefillFirst, SplitFuse, Static, GuaranteedNoEvict, MaxUtilization)
}
