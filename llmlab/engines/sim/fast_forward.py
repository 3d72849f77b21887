"""The simulator's fast path: the same steps as `SimEngine.step`, recorded in stretches, with
steady decoding computed in bulk.

Every step's batch is built by the scheduler's own policy (`SimEngine.step`). While each
step fits a `DecodeRun` (nobody preempted, every running request in the batch, decodes
before prompt chunks), the steps are written into one run instead of a `StepRecord` each.
When a step batched every running request as a decode with nobody waiting, the policy
batches the same decodes again until something arrives, a request finishes or the pool runs
short (see `Policy`): those steps are computed together (`_bulk_decode`), with the block
allocations, prefix commits, finishes and clock exactly as stepping makes them.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import accumulate, islice
from typing import TYPE_CHECKING

from llmlab.core.blocks import BlockManager
from llmlab.core.records import Completion, DecodeRun, StepRecord
from llmlab.core.request import Request
from llmlab.engines.base import EngineStep
from llmlab.engines.sim.tokens import PLACEHOLDER_TOKEN

if TYPE_CHECKING:
    from llmlab.engines.sim.engine import SimEngine

MAX_RUN_STEPS = 4096  # about the most steps one DecodeRun covers (a live view sees each run at its end)


class FastForward:
    """Hands the session the simulator's next steps, several at a time (see the module doc)."""

    def __init__(self, engine: SimEngine) -> None:
        self.engine = engine
        self._failed: Exception | None = None  # a step that failed after a run's steps: raised next

    def advance(
        self, until: float | None, past_finishes: bool, arrive: Callable[[float], float | None] | None
    ) -> list[EngineStep]:
        """The next steps, exactly as stepping makes them: a `DecodeRun` of those that fit one,
        then, if a step did not fit, that step on its own. No step starts at or after `until`
        on the engine's clock (the next arrival) unless `arrive` is given: `arrive(clock)` adds
        the requests arrived by then, as the session does between steps, and returns the next
        arrival's time (or None). Past a finish only if `past_finishes`."""
        if self._failed is not None:
            exc, self._failed = self._failed, None
            raise exc
        eng = self.engine
        sched = eng.scheduler
        run = _RunBuilder(eng.blocks)
        steady = False  # the last step batched every running request, nobody waiting (see `Policy`)
        while run.num_steps < MAX_RUN_STEPS and sched.has_unfinished():
            if until is not None and eng.clock >= until:
                if arrive is None:
                    break
                until = arrive(eng.clock)
            if run.completions and not past_finishes:
                break
            if steady and not sched.waiting and run.active == [r.req_id for r in sched.running]:
                if _bulk_decode(eng, run, until, past_finishes):
                    continue
            try:
                step = eng.step()  # the policy's own batch
            except Exception as exc:
                if not run.num_steps:
                    raise
                self._failed = exc  # the steps before it are recorded first, as stepping records them
                return run.steps()
            if not run.add(step, eng.clock):
                return [*run.steps(), step]
            steady = not step.record.waiting
        return run.steps() or [eng.step()]


class _RunBuilder:
    """A `DecodeRun` being put together from steps and bulk decode stretches. A row is a request
    that decodes in consecutive steps from its first; `active` lists the rows still running."""

    def __init__(self, blocks: BlockManager) -> None:
        self.out = DecodeRun(
            step=0,
            t_start=0.0,
            t_ends=[],
            req_ids=[],
            context_lens=[],
            steps=[],
            kv_used=[],
            kv_cached=[],
            block_size=blocks.block_size,
            num_blocks=blocks.num_blocks,
        )
        self.active: list[str] = []
        self.completions: list[Completion] = []
        self.finish_step: dict[str, int] = {}  # req_id -> the step it finished in, counted from 1

    @property
    def num_steps(self) -> int:
        return self.out.num_steps

    def add(self, step: EngineStep, clock: float) -> bool:
        """Write one stepped step (ending at `clock`) into the run; False (and nothing written)
        when a `DecodeRun` cannot hold it."""
        rec = step.record
        batch, m = rec.batch, len(self.active)
        if not isinstance(rec, StepRecord) or rec.preempted or rec.running != len(batch) - len(rec.finished):
            return False  # someone was preempted or left out of the batch
        if len(batch) < m or any(
            s.req_id != r or s.phase != "decode" for s, r in zip(batch[:m], self.active, strict=True)
        ):
            return False  # the rows must decode first, in their order
        joins = m
        while joins < len(batch) and batch[joins].phase == "decode":
            joins += 1
        new_rows, chunks = batch[m:joins], batch[joins:]
        if any(s.phase == "decode" for s in chunks) or any(s.req_id in rec.admitted for s in new_rows):
            return False
        out, j = self.out, self.num_steps
        for slot in new_rows:
            self._add_row(slot.req_id, slot.context_len, j)
        admitted, finished = set(rec.admitted), set(rec.finished)
        for slot in chunks:  # prompt chunks: admissions, or prompts going on
            new, samples = slot.req_id in admitted, slot.req_id in step.new_tokens
            out.prefills.append(slot)
            out.prefill_at.append(j)
            out.prefill_hits.append(slot.context_len - slot.num_tokens if new else 0)
            out.prefill_samples.append(samples)
            out.prefill_admitted.append(new)
            if samples and slot.req_id not in finished:  # its prompt is done: it decodes from the next step
                self._add_row(slot.req_id, slot.context_len + 1, j + 1)
        self.add_step(clock, rec.kv.used, rec.kv.cached, rec.waiting)
        self.add_finishes(step.finished, j + 1)
        return True

    def _add_row(self, req_id: str, context_len: int, first: int) -> None:
        self.out.req_ids.append(req_id)
        self.out.context_lens.append(context_len)
        self.out.first_steps.append(first)
        self.active.append(req_id)

    def add_step(self, t_end: float, used: int, cached: int, waiting: int = 0) -> None:
        """The clock and the pool after the next step."""
        if waiting:
            self.out.waiting[self.num_steps] = waiting
        self.out.t_ends.append(t_end)
        self.out.kv_used.append(used)
        self.out.kv_cached.append(cached)

    def add_finishes(self, completions: list[Completion], step: int) -> None:
        """Requests that finished in `step` (counted from 1), in batch order."""
        for c in completions:
            self.completions.append(c)
            self.finish_step[c.req_id] = step
        if completions:
            done = set(self.finish_step)
            self.active = [r for r in self.active if r not in done]

    def steps(self) -> list[EngineStep]:
        """The run as one step (no steps: an empty list)."""
        out, k = self.out, self.num_steps
        if not k:
            return []
        rows = zip(out.req_ids, out.context_lens, out.first_steps, strict=True)
        rows = [(r, c, f, self.finish_step.get(r, k) - f) for r, c, f in rows]
        rows = [row for row in rows if row[3] > 0]  # not those that would start decoding after the run
        out.req_ids = [row[0] for row in rows]
        out.context_lens = [row[1] for row in rows]
        out.first_steps = [row[2] for row in rows]
        out.steps = [row[3] for row in rows]
        if not any(out.first_steps):
            out.first_steps = []  # every row from the first step
        out.finished = [c.req_id for c in self.completions]
        return [EngineStep(out, {}, self.completions)]


# ---- steady decoding in bulk ------------------------------------------------------------


def _bulk_decode(eng: SimEngine, run: _RunBuilder, until: float | None, past_finishes: bool) -> bool:
    """The steps in which every running request decodes again, computed together and added to
    `run`: up to the step that ends at or past `until`, the first finish (unless `past_finishes`),
    or the last step before the pool runs dry. False (and nothing done) when there is none."""
    sched, blocks = eng.scheduler, eng.blocks
    running = list(sched.running)
    limit, bs = sched.config.max_model_len, blocks.block_size
    computed, remaining = [], []  # remaining: the step in which each request finishes
    first_alloc = []  # the step in which each first needs a new block
    for req in running:
        c, out, params = req.num_computed_tokens, req.output_token_ids, req.params
        if c != req.num_tokens - 1 or not out or PLACEHOLDER_TOKEN in params.stop_token_ids:
            return False  # not decoding, or would stop on the placeholder token
        computed.append(c)
        remaining.append(min(params.max_tokens - len(out), limit - c - 1))
        first_alloc.append(len(req.block_ids) * bs - c + 1)
    # the others decode on after a finish, unless someone arrives at it or a block waits to take
    # over a prefix (each step re-checks those)
    through = past_finishes and not blocks.pending_duplicates
    k = min(MAX_RUN_STEPS, max(remaining) if through else min(remaining))
    ends = eng.cost_model.decode_ends(eng.clock, computed, [min(r, k) for r in remaining], until)
    if ends is None:
        return False  # pipeline parallel, or a bad step time (the regular step reports it)
    k = len(ends)
    allocs = [range(a, min(r, k) + 1, bs) for a, r in zip(first_alloc, remaining, strict=True)]
    if sum(map(len, allocs)) > blocks.num_free:
        # the pool runs dry: the step before the allocation it cannot serve is the last
        k = sorted(j for js in allocs for j in js)[blocks.num_free] - 1
        if k < 1:
            return False
    steps = [min(r, k) for r in remaining]
    for req, s in zip(running, steps, strict=True):
        req.extend_outputs(PLACEHOLDER_TOKEN, s)
    targets = [c + s for c, s in zip(computed, steps, strict=True)]
    independent, fresh = _commit_order_free(blocks, running, targets)
    if min(steps) < k and not fresh:
        # the order of commits could matter at a finish: stop at the first one instead (the
        # tokens taken back are placeholders again later, so the hashes made stay right)
        k = min(steps)
        for req, s in zip(running, steps, strict=True):
            req.drop_outputs(s - k)
        steps, targets = [k] * len(running), [c + k for c in computed]
        independent, _ = _commit_order_free(blocks, running, targets)
    if independent:
        used, cached = _advance_together(blocks, running, first_alloc, steps, targets)
    else:
        used, cached = _advance_stepwise(blocks, running, computed, first_alloc, k)
    base = run.num_steps
    for s, i in sorted((s, i) for i, s in enumerate(steps) if s == remaining[i]):
        before = blocks.num_used, blocks.num_cached_free
        run.add_finishes([eng.complete(sched.finish(running[i], "length"))], base + s)
        used[s] += blocks.num_used - before[0]
        cached[s] += blocks.num_cached_free - before[1]
    eng.clock = ends[k - 1]
    run.out.t_ends += ends[:k]
    run.out.kv_used += list(accumulate(used))[1:]
    run.out.kv_cached += list(accumulate(cached))[1:]
    return True


def _commit_order_free(blocks: BlockManager, reqs: list[Request], num_tokens: list[int]) -> tuple[bool, bool]:
    """Whether committing each request's blocks up to `num_tokens` computed tokens (their tokens
    in place already) is independent of the order of the commits (no hash shared, none a
    pending duplicate's), and besides fresh (the cache holds none of those hashes)."""
    if not blocks.enable_prefix_caching:
        return True, True
    hashes: list[int] = []
    waiting: list[int] = []  # hashes of blocks waiting to take over a prefix
    for req, n in zip(reqs, num_tokens, strict=True):
        done, duplicates = blocks.commit_progress(req)
        known = blocks.request_hashes(req)
        waiting += [known[i] for i in duplicates]
        hashes += known[done : n // blocks.block_size]
    touched = hashes + waiting
    independent = len(set(touched)) == len(touched)
    return independent, independent and not waiting and blocks.cached.keys().isdisjoint(hashes)


def _advance_together(
    blocks: BlockManager, running: list[Request], first_alloc: list[int], steps: list[int], targets: list[int]
) -> tuple[list[int], list[int]]:
    """Allocate and commit request i's blocks through `steps[i]` steps (to `targets[i]` computed
    tokens) in one go; returns the blocks used and cached-free before, then their change at each
    step. Every new block comes off the front of the free queue in step order (the caller
    bounded the run by the free blocks), and no commit's order matters, so the pool ends where
    stepping ends."""
    bs, k = blocks.block_size, max(steps)
    used = [blocks.num_used] + [0] * k
    cached = [blocks.num_cached_free] + [0] * k
    events = sorted(
        (j, i) for i, (a, s) in enumerate(zip(first_alloc, steps, strict=True)) for j in range(a, s + 1, bs)
    )
    evicts = [blocks.block_hashes[b] is not None for b in islice(blocks.free_queue, len(events))]
    for (j, i), block_id, evicted in zip(events, blocks.pop_free(len(events)), evicts, strict=True):
        running[i].block_ids.append(block_id)
        used[j] += 1
        cached[j] -= evicted  # it held a cached prefix
    for req, t in zip(running, targets, strict=True):
        req.num_computed_tokens = t
        blocks.commit(req)
    return used, cached


def _advance_stepwise(
    blocks: BlockManager, running: list[Request], computed: list[int], first_alloc: list[int], k: int
) -> tuple[list[int], list[int]]:
    """`_advance_together` for k steps of every request when commits touch the same prefixes:
    every allocation and commit at its own step, in batch order, with waiting duplicates
    re-checked after each eviction."""
    bs = blocks.block_size
    events: list[tuple[int, int, int]] = []  # (step, 0 allocate / 1 commit, batch index)
    for i, c in enumerate(computed):
        events += ((j, 0, i) for j in range(first_alloc[i], k + 1, bs))
        events += ((j, 1, i) for j in range(bs - c % bs, k + 1, bs))
    events.sort()
    before = (blocks.num_used, blocks.num_cached_free)
    after: dict[int, tuple[int, int]] = {}  # step -> (used, cached free) after it, where they changed
    e = 0
    while e < len(events):
        j = events[e][0]
        num_cached = len(blocks.cached)
        commits = []
        while e < len(events) and events[e][0] == j:
            _, kind, i = events[e]
            if kind == 0:
                blocks.allocate(running[i], computed[i] + j)
            else:
                commits.append(i)
            e += 1
        if blocks.pending_duplicates and len(blocks.cached) < num_cached:
            # an eviction: blocks waiting on a prefix another block held may register now
            commits += (i for i, r in enumerate(running) if r.req_id in blocks.pending_duplicates)
        for i in sorted(set(commits)):
            running[i].num_computed_tokens = computed[i] + j
            blocks.commit(running[i])
        after[j] = (blocks.num_used, blocks.num_cached_free)
    for req, c in zip(running, computed, strict=True):
        req.num_computed_tokens = c + k
    used, cached = [before[0]] + [0] * k, [before[1]] + [0] * k
    for j, state in after.items():  # in step order
        used[j], cached[j] = state[0] - before[0], state[1] - before[1]
        before = state
    return used, cached
