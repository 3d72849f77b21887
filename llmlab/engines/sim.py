"""The simulator: the core scheduler and block manager on a virtual clock, with modelled step times.

It runs exactly the `Scheduler` and `BlockManager` the native engine runs, so its schedules
(batches, preemptions, KV blocks) are the engine's by construction; only the time each step
takes is predicted, by the cost model in `llmlab.plan.cost` or by a `step_time` callable.
No text is generated: every sampled token is a placeholder id, EOS never stops a request
and each one runs to its `max_tokens` (or the context limit).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from llmlab.config import DEFAULT_MAX_MODEL_LEN, VERSION, EngineConfig, check_watermark, default_max_model_len
from llmlab.core.blocks import BlockManager, CommitPlan
from llmlab.core.records import Completion, DecodeRun, EngineInfo, Slot
from llmlab.core.request import Request, SamplingParams
from llmlab.core.scheduler import Batch, ScheduledRequest, Scheduler, SchedulerConfig, phase_of
from llmlab.engines.base import EngineCore, EngineStep
from llmlab.plan.cost import step_load
from llmlab.plan.memory import parallel_sizes

if TYPE_CHECKING:
    from llmlab.session.run import Run
    from llmlab.workloads import WorkItem

StepTime = Callable[[list[Slot]], float]
PLACEHOLDER_TOKEN = 0
OWNERS_AUTO_LIMIT = 4096  # record KV owners every step for pools up to this many blocks
MAX_DECODE_RUN = 4096  # about the most steps one DecodeRun covers (a live view sees each run at its end)


@cache
def default_tokenizer() -> Any:
    """The embedded SmolLM2 tokenizer: the simulator's token counter for text and corpus prompts."""
    from llmlab.models import ensure_embedded, load_tokenizer

    return load_tokenizer(ensure_embedded(progress=False))


class ReplayStepTimes:
    """A `step_time` that replays a measured run's step durations by step index.

    With it the simulator repeats a real run's timeline, which isolates the scheduler: any
    difference left between the two traces is a difference in scheduling.
    """

    def __init__(self, run: Run | Sequence[float]) -> None:
        if hasattr(run, "trace"):
            self.durations = [r.t_end - r.t_start for r in run.trace.step_records]
        else:
            self.durations = [float(d) for d in run]
        if not self.durations:
            raise ValueError("the run to replay has no steps: give a finished run with at least one step")
        self.calls = 0

    def __call__(self, slots: list[Slot]) -> float:
        i = self.calls
        self.calls += 1
        if i >= len(self.durations):
            raise ValueError(
                f"step {i} has no measured duration: the replayed run had {len(self.durations)} steps; "
                "replay it on the same workload and configuration"
            )
        return self.durations[i]


class SimEngine(EngineCore):
    """Predicts a serving run: real scheduling, modelled step times, simulated seconds.

    `model` is a shape name, a local path or a config dict (see `llmlab.models.shapes.get_shape`),
    `gpu` a catalogue name (`llmlab.plan.hardware`, "cpu" or None for this machine). The KV
    pool holds what `memory_plan` leaves after weights and activations, unless `num_blocks`
    is given. `efficiency` (or a calibration from `llmlab.plan.calibrate`) tunes the cost
    model; `step_time(slots) -> seconds` replaces it altogether. Text prompts and corpus
    prompts are counted with the embedded SmolLM2 tokenizer, whatever the model.

    With `fast_forward` (the default) and KV owners not traced, steady decoding (nobody
    waiting, every running request decoding) is computed in one go up to the next arrival or
    block shortage, past the finishes on the way, and recorded as a `DecodeRun`: the trace is
    the same as stepping one at a time (the tests compare both), only much faster to make.
    A step that admits requests while every running one decodes builds its batch in one pass,
    and with open-loop arrivals the run goes on through it.

    Every knob is checked against `llmlab.config` first; `watermark` is the fraction of the KV
    pool kept free when admitting a new request while others run (0 <= it < 1).
    """

    name = "sim"
    virtual_clock = True

    def __init__(self, config: EngineConfig | None = None) -> None:
        c = (config or EngineConfig()).for_engine("sim")  # checked: a bad setting fails before any plan is built
        super().__init__()
        model, gpu, num_gpus, tp, pp, weights = c.model or "smollm2-135m", c.gpu, c.num_gpus, c.tp, c.pp, c.weights
        kv_dtype = None if c.kv_dtype == "auto" else c.kv_dtype
        policy, block_size, num_blocks, max_num_seqs = c.policy, c.block_size, c.num_blocks, c.max_num_seqs
        max_num_batched_tokens, max_model_len = c.max_num_batched_tokens, c.max_model_len
        enable_chunked_prefill, enable_prefix_caching = c.enable_chunked_prefill, c.enable_prefix_caching
        gpu_memory_utilization, watermark, step_time = c.gpu_memory_utilization, c.watermark, c.step_time
        efficiency, calibration, trace_kv_owners = c.efficiency, c.calibration, c.trace_kv_owners
        tokenizer = c.tokenizer
        fast_forward = c.fast_forward
        tp, pp = parallel_sizes(num_gpus, tp, pp)
        self._tokenizer = tokenizer
        self.clock = 0.0
        self.requests: dict[str, Request] = {}

        shape = hw = plan = None
        gpu_name = "given step_time"
        if step_time is None or num_blocks is None:
            from llmlab.models.shapes import get_shape
            from llmlab.plan.hardware import get_hardware
            from llmlab.plan.memory import make_shard

            shape = get_shape(model)
            hw = get_hardware(gpu or "cpu")
            gpu_name = hw.name
            if weights is None:
                weights = "fp32" if hw.kind == "cpu" else "bf16"
            make_shard(shape, tp, pp)  # a tp or pp that does not split the model fails here, with the fix
        weights = weights or "bf16"
        kv_dtype = kv_dtype or ("bf16" if weights == "int4" else weights)  # no int4 KV cache: int4 models keep bf16
        ctx = getattr(shape, "max_position_embeddings", None) or DEFAULT_MAX_MODEL_LEN
        if max_model_len is None:
            max_model_len = default_max_model_len(ctx, max_num_batched_tokens, enable_chunked_prefill, policy)
        elif shape is not None and max_model_len > ctx:
            raise ValueError(
                f"max_model_len={max_model_len} exceeds the model's context of {ctx} tokens: use max_model_len <= {ctx}"
            )
        sched_cfg = SchedulerConfig(
            max_num_seqs=max_num_seqs,
            max_num_batched_tokens=max_num_batched_tokens,
            enable_chunked_prefill=enable_chunked_prefill,
            enable_prefix_caching=enable_prefix_caching,
            policy=policy,
            watermark=watermark,
            max_model_len=max_model_len,
        )
        sched_cfg.validate()

        if num_blocks is None:
            from llmlab.plan.memory import memory_plan

            plan = memory_plan(
                shape,
                hw,
                weights=weights,
                kv_dtype=kv_dtype,
                tp=tp,
                pp=pp,
                block_size=block_size,
                max_model_len=max_model_len,
                gpu_memory_utilization=gpu_memory_utilization,
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
            )
            if not plan.fits or plan.kv_blocks < 1:
                raise ValueError(
                    f"{shape.name} with weights={weights} does not fit {tp * pp} x {hw.name} at tp={tp}, pp={pp}: "
                    f"short by {plan.shortfall_bytes / 1e9:.2f} GB per GPU; use more GPUs (tp or pp), "
                    "smaller weights (fp8, int4) or a GPU with more memory"
                )
            num_blocks = int(plan.kv_blocks)
        check_watermark(watermark, num_blocks)
        if step_time is None:
            from llmlab.plan.cost import CostModel

            eff = calibration if calibration is not None else efficiency
            eff = getattr(eff, "efficiency", eff)  # a fitted CostModel or Calibration carries one
            self.cost_model = CostModel(shape, hw, weights=weights, kv_dtype=kv_dtype, tp=tp, pp=pp, efficiency=eff)
            step_time = self.cost_model.step_time
        else:
            self.cost_model = None
        self.step_time = step_time
        self.shape, self.hardware, self.memory_plan = shape, hw, plan
        self.blocks = BlockManager(num_blocks, block_size, enable_prefix_caching, watermark)
        self.scheduler = Scheduler(sched_cfg, self.blocks)
        self.trace_kv_owners = num_blocks <= OWNERS_AUTO_LIMIT if trace_kv_owners is None else bool(trace_kv_owners)
        self.fast_forward = bool(fast_forward)
        model_name = getattr(shape, "name", None) or str(model)
        device = gpu_name if tp * pp == 1 else f"{tp * pp} x {gpu_name}"
        self.info = EngineInfo(
            engine="sim",
            version=VERSION,
            model=model_name,
            device=device,
            dtype=weights,
            config={
                "policy": policy,
                "block_size": block_size,
                "num_blocks": num_blocks,
                "kv_cache_bytes": getattr(plan, "kv_bytes", None),
                "max_num_seqs": max_num_seqs,
                "max_num_batched_tokens": max_num_batched_tokens,
                "max_model_len": max_model_len,
                "enable_chunked_prefill": enable_chunked_prefill,
                "enable_prefix_caching": enable_prefix_caching,
                "watermark": watermark,
                "kv_dtype": kv_dtype,
                "weights": weights,
                "tensor_parallel_size": tp,
                "pipeline_parallel_size": pp,
                "gpu": getattr(hw, "name", None),  # None: no hardware, the step times were given
                "num_gpus": tp * pp,
                "step_time": "cost model" if self.cost_model is not None else _describe(step_time),
                "efficiency": _efficiency_dict(getattr(self.cost_model, "efficiency", None)),
            },
            views={"schedule": "exact", "kv": "exact", "latency": "predicted"},
        )

    # tokens ------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        """Loaded on first use: workloads given as token ids never need it."""
        if self._tokenizer is None:
            self._tokenizer = default_tokenizer()
        return self._tokenizer

    def encode(self, item: WorkItem) -> list[int] | range:
        """Token ids as given; a text prompt through the tokenizer; a corpus window (`prompt_len`)
        as ids `offset, offset + 1, ...` that need no tokenizer and share prefixes exactly when
        the real windows do (same offset), which is all the prefix cache looks at."""
        if item.prompt is None:
            return window_ids(item.corpus_offset, item.prompt_len)
        if not isinstance(item.prompt, str):
            return [int(t) for t in item.prompt]
        return super().encode(item)

    # virtual clock -----------------------------------------------------------------------
    def now(self) -> float:
        return self.clock

    def advance_to(self, t: float) -> None:
        self.clock = max(self.clock, t)

    # requests ----------------------------------------------------------------------------
    def check_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """The native engine's checks but the vocabulary: the simulator's token ids are placeholders."""
        super().check_request(req_id, prompt_token_ids, params)
        if req_id in self.requests:
            raise ValueError(f"request id {req_id!r} is already running on this engine: use a new id")
        self.scheduler.check(Request(req_id, prompt_token_ids, params))

    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        req = Request(req_id, prompt_token_ids, params)  # no EOS ids: placeholder tokens never stop it
        self.scheduler.add(req)
        self.requests[req_id] = req

    def abort(self, req_id: str) -> None:
        self.scheduler.abort(req_id)
        self.requests.pop(req_id, None)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    # the step ----------------------------------------------------------------------------
    def step(self) -> EngineStep:
        sched = self.scheduler
        batch = (self.fast_forward and self._steady_batch()) or sched.next_batch()
        slots = batch.slots()
        self._tick(self.step_time(slots), len(slots))
        sampled = {i.request.req_id: PLACEHOLDER_TOKEN for i in batch.items if i.samples}
        finished = sched.update(batch, sampled)
        record = sched.record(batch, finished, owners=self.trace_kv_owners, slots=slots)
        completions = [self._complete(r) for r in finished]
        return EngineStep(record, dict.fromkeys(sampled, 1), completions)

    def _tick(self, seconds: float, num_slots: int) -> None:
        """Advance the clock by one step's time, which must be a number of seconds >= 0."""
        seconds = float(seconds)
        if not seconds >= 0.0:
            raise ValueError(f"step_time returned {seconds!r} seconds for step of {num_slots} slots: must be >= 0")
        self.clock += seconds

    def _steady_start(self) -> tuple[list[Request], Batch, int, bool, int] | None:
        """The start of a steady step (see `_steady_batch`), done: the decoders' new blocks and
        the prompt's next chunk allocated. Returns (the decoders, a batch holding that chunk,
        the budget left for admissions, whether prompts chunk, the decoders' context after the
        step), or None (and nothing done) when the step is not steady."""
        sched, blocks = self.scheduler, self.blocks
        cfg, running = sched.config, sched.running
        if not running or not sched.policy.decodes_then_admits:
            return None
        prompt = running[-1] if not running[-1].decoding else None
        if prompt is None and not sched.waiting:
            return None
        decoders = running[:-1] if prompt is not None else running
        budget = cfg.max_num_batched_tokens - len(decoders)
        if budget < 0:
            return None
        grow = []
        bs = blocks.block_size
        context = len(decoders)
        for req in decoders:
            c = req.num_computed_tokens
            if c != req.num_tokens - 1 or not req.output_token_ids:  # `req.decoding`, inline: hot
                return None
            if len(req.block_ids) * bs <= c:
                grow.append(req)
            context += c
        chunk = cfg.enable_chunked_prefill or sched.policy.always_chunk
        need = len(grow)
        if prompt is not None:
            start = prompt.num_computed_tokens
            left = prompt.num_tokens - start
            n = left if left < budget else budget
            if n <= 0 or (n < left and not chunk):
                return None  # the policy leaves it out of this step
            need += max(0, blocks.blocks_for(start + n) - len(prompt.block_ids))
        if need > blocks.num_free:
            return None  # someone is preempted: the policy decides whom
        for req, block_id in zip(grow, blocks.pop_free(len(grow)), strict=True):
            req.block_ids.append(block_id)
        batch = Batch()
        if prompt is not None:
            blocks.allocate(prompt, start + n)
            batch.items.append(ScheduledRequest(prompt, start, n, phase_of(prompt, n)))
            budget -= n
        return list(decoders), batch, budget, chunk, context

    def _steady_batch(self) -> Batch | None:
        """The batch the policy would pick when every running request decodes but perhaps the
        last, partway through its prompt, the pool holds all they need, and requests wait or
        that prompt goes on: all the decodes, the prompt's next chunk, then admissions by the
        policy's own code. Built in one pass; None when the step is not of that kind."""
        start = self._steady_start()
        if start is None:
            return None
        decoders, rest, budget, chunk, _ = start
        batch = Batch([ScheduledRequest(r, r.num_computed_tokens, 1, "decode") for r in decoders] + rest.items)
        sched = self.scheduler
        sched.policy.admit_waiting(sched, batch, budget, chunk)
        return batch

    def step_until(
        self, until: float | None, past_finishes: bool = True, arrive: Callable[[float], float | None] | None = None
    ) -> EngineStep:
        if self.fast_forward and self.cost_model is not None and not self.trace_kv_owners:
            out = self._decode_run(until, past_finishes, arrive)
            if out is not None:
                return out
        return self.step()

    def _decode_run(
        self, until: float | None, past_finishes: bool, arrive: Callable[[float], float | None] | None
    ) -> EngineStep | None:
        """Steady steps computed together as one `DecodeRun`, or None when the next step is not
        one of them: stretches of decoding, and with `arrive`, on through arrivals, each admitted
        in a step that is all the decodes, then the policy's admissions (as `_steady_batch`).

        The pool, the prefix cache and the clock change exactly as stepping would change them:
        block allocations, prefix commits and finishes happen in step and batch order, only at
        the steps where they happen.
        """
        sched = self.scheduler
        decoding = [r for r in sched.running if r.decoding]  # a prompt going on joins as it finishes
        run = _RunParts.start(decoding, self.blocks)
        while run.out.num_steps < MAX_DECODE_RUN:
            if until is not None and self.clock >= until:
                if arrive is None:
                    break
                until = arrive(self.clock)  # as the session adds them between steps
            if sched.waiting or (sched.running and not sched.running[-1].decoding):
                if arrive is None or not self._steady_step(run) or not sched.running:
                    break
            elif not self._decode_segment(until, past_finishes, run) or not sched.running:
                break
            elif until is None or self.clock < until:
                break  # it stopped for a finish, the pool or its length, not an arrival
        if not run.out.num_steps:
            return None
        return EngineStep(run.record(), {}, [self._complete(r) for r in run.finished])

    def _steady_step(self, run: _RunParts) -> bool:
        """One step of `_steady_batch` added to `run`, its decodes advanced together; False (and
        nothing done) when the next step is not of that kind."""
        sched, blocks = self.scheduler, self.blocks
        start = self._steady_start()
        if start is None:
            return False
        decoders, batch, budget, chunk, context = start
        sched.policy.admit_waiting(sched, batch, budget, chunk)
        # a decode adds its context to both the KV read and the attention pairs (see step_load)
        load, n = step_load(batch.items), len(decoders)
        kv_read, pairs = context + load.kv_read, context + load.attn_pairs
        self._tick(self.cost_model.time_for(n + load.tokens, n + load.seqs, kv_read, pairs), n + len(batch.items))
        sampled = {i.request.req_id: PLACEHOLDER_TOKEN for i in batch.items if i.samples}
        finished = sched.decode(decoders, PLACEHOLDER_TOKEN) + sched.update(batch, sampled)
        j = run.out.num_steps
        run.add_step(self.clock, blocks.num_used, blocks.num_cached_free)
        admitted = set(batch.admitted)
        for item in batch.items:  # after the decodes: a prompt going on, then admissions
            req = item.request
            samples, new = req.req_id in sampled, req.req_id in admitted
            run.add_prefill(
                Slot(req.req_id, item.phase, item.num_tokens, item.context_len),
                j,
                item.start if new else 0,
                samples,
                new,
            )
            if samples and req.finish_reason is None:  # it decodes from the next step on
                run.rows.append(req)
                run.firsts.append(j + 1)
                run.contexts.append(item.context_len + 1)
        run.add_finishes(finished, j + 1)
        if sched.waiting:
            run.out.waiting[j] = len(sched.waiting)
        return True

    def _decode_segment(self, until: float | None, past_finishes: bool, run: _RunParts) -> bool:
        """Steady decode steps, up to the step that ends at or past `until`, added to `run`;
        False (and nothing done) when the next step is not one."""
        sched, blocks = self.scheduler, self.blocks
        running = list(sched.running)
        n = len(running)
        if sched.waiting or n == 0 or (sched.config.policy != "static" and n > sched.config.max_num_batched_tokens):
            return False
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
        # the others decode on after a finish, unless someone arrives at it or a block waits to
        # take over a prefix (each step re-checks those)
        through = past_finishes and not blocks.pending_duplicates
        k = min(MAX_DECODE_RUN, max(remaining) if through else min(remaining))
        ends = self.cost_model.decode_ends(self.clock, computed, [min(r, k) for r in remaining], until)
        if ends is None:
            return False  # pipeline parallel, or a bad step time (the regular step reports it)
        k = len(ends)
        allocs = [range(a, min(r, k) + 1, bs) for a, r in zip(first_alloc, remaining, strict=True)]
        if sum(map(len, allocs)) > blocks.num_free:
            # the pool runs dry: the step before the allocation it cannot serve is the last
            k = sorted(j for js in allocs for j in js)[blocks.num_free] - 1
            if k < 1:
                return False
        steps, targets = [], []
        for req, c, r in zip(running, computed, remaining, strict=True):
            s = r if r < k else k
            steps.append(s)
            targets.append(c + s)
            req.extend_outputs(PLACEHOLDER_TOKEN, s)
        plan = blocks.plan_commits(running, targets)
        if min(steps) < k and not plan.fresh:
            # the order of commits could matter at a finish: stop at the first one instead (the
            # tokens taken back are placeholders again later, so the hashes made stay right)
            k = min(steps)
            for req, s in zip(running, steps, strict=True):
                req.drop_outputs(s - k)
            steps, targets = [k] * n, [c + k for c in computed]
            plan = blocks.plan_commits(running, targets)
        if plan.independent:
            used, cached = self._advance_in_bulk(running, first_alloc, steps, targets, plan)
        else:
            used, cached = self._advance_stepwise(running, computed, first_alloc, k)
        base = run.out.num_steps
        for s, i in sorted((s, i) for i, s in enumerate(steps) if s == remaining[i]):
            before = blocks.num_used, blocks.num_cached_free
            run.add_finishes([sched.finish(running[i], "length")], base + s)
            used[s] += blocks.num_used - before[0]
            cached[s] += blocks.num_cached_free - before[1]
        self.clock = ends[k - 1]
        run.out.t_ends += ends[:k]
        run.out.kv_used += list(accumulate(used))[1:]
        run.out.kv_cached += list(accumulate(cached))[1:]
        return True

    def _advance_in_bulk(
        self, running: list[Request], first_alloc: list[int], steps: list[int], targets: list[int], plan: CommitPlan
    ) -> tuple[list[int], list[int]]:
        """Allocate and commit request i's blocks through `steps[i]` steps (to `targets[i]`
        computed tokens) in one go; returns the blocks used and cached-free before the run, then
        their change at each step. Every new block comes off the front of the free queue (the
        caller bounded the run by the free blocks), and no commit's order matters (checked), so
        the pool ends where stepping ends."""
        blocks, bs = self.blocks, self.blocks.block_size
        k = max(steps)
        used = [blocks.num_used] + [0] * k
        cached = [blocks.num_cached_free] + [0] * k
        events = sorted(
            (j, i) for i, (a, s) in enumerate(zip(first_alloc, steps, strict=True)) for j in range(a, s + 1, bs)
        )
        evicts: list[bool] = []
        taken = blocks.pop_free(len(events), evicts)
        for (j, i), block_id, evicted in zip(events, taken, evicts, strict=True):
            running[i].block_ids.append(block_id)
            used[j] += 1
            cached[j] -= evicted
        for req, t in zip(running, targets, strict=True):
            req.num_computed_tokens = t
        blocks.apply_commits(plan, running)
        return used, cached

    def _advance_stepwise(
        self, running: list[Request], computed: list[int], first_alloc: list[int], k: int
    ) -> tuple[list[int], list[int]]:
        """`_advance_in_bulk` for k steps of every request when commits touch the same prefixes:
        every allocation and commit at its own step, in batch order, with waiting duplicates
        re-checked after each eviction."""
        blocks, bs = self.blocks, self.blocks.block_size
        events: list[tuple[int, int, int]] = []  # (step, 0 allocate / 1 commit, batch index)
        for i, c in enumerate(computed):
            events += ((j, 0, i) for j in range(first_alloc[i], k + 1, bs))
            events += ((j, 1, i) for j in range(bs - c % bs, k + 1, bs))
        events.sort()
        before = (blocks.num_used, blocks.num_cached_free)
        after: dict[int, tuple[int, int]] = {}  # step -> (used, cached free) after it, where they changed
        e, num_events = 0, len(events)
        while e < num_events:
            j = events[e][0]
            num_cached = len(blocks.cached)
            commits = []
            while e < num_events and events[e][0] == j:
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

    def _complete(self, req: Request) -> Completion:
        self.requests.pop(req.req_id, None)
        prompt = req.prompt_token_ids
        prompt = [] if isinstance(prompt, range) else prompt  # a corpus window's ids are placeholders too
        return Completion(req.req_id, "", req.output_token_ids, req.finish_reason, prompt, req.num_cached_tokens)

    def __repr__(self) -> str:
        return f"<sim engine: {self.info.model} on {self.info.device}, {self.info.dtype}>"


@dataclass
class _RunParts:
    """A `DecodeRun` (`out`) being put together, a stretch of decoding or an admission step at a
    time. Rows are the requests that decode, in batch order, each from its first step; a row's
    context is the one after its first decode step. `record()` writes them and the finishes."""

    out: DecodeRun
    rows: list[Request]
    contexts: list[int]
    firsts: list[int] = field(init=False)
    finished: list[Request] = field(default_factory=list)
    finish_step: dict[str, int] = field(default_factory=dict)  # req_id -> step it finished in, from 1

    def __post_init__(self) -> None:
        self.firsts = [0] * len(self.rows)

    @classmethod
    def start(cls, decoding: list[Request], blocks: BlockManager) -> _RunParts:
        out = DecodeRun(
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
        return cls(out, decoding, [r.num_computed_tokens + 1 for r in decoding])

    def add_step(self, t_end: float, used: int, cached: int) -> None:
        self.out.t_ends.append(t_end)
        self.out.kv_used.append(used)
        self.out.kv_cached.append(cached)

    def add_prefill(self, slot: Slot, step: int, hits: int, samples: bool, admitted: bool) -> None:
        out = self.out
        out.prefills.append(slot)
        out.prefill_at.append(step)
        out.prefill_hits.append(hits)
        out.prefill_samples.append(samples)
        out.prefill_admitted.append(admitted)

    def add_finishes(self, reqs: list[Request], step: int) -> None:
        self.finished += reqs
        for req in reqs:
            self.finish_step[req.req_id] = step

    def record(self) -> DecodeRun:
        out, k = self.out, self.out.num_steps
        for req, first, context in zip(self.rows, self.firsts, self.contexts, strict=True):
            n = self.finish_step.get(req.req_id, k) - first
            if n > 0:  # not admitted in the last step
                out.req_ids.append(req.req_id)
                out.context_lens.append(context)
                out.steps.append(n)
                out.first_steps.append(first)
        if not out.prefills:
            out.first_steps = []  # every row from the first step
        out.finished = [r.req_id for r in self.finished]
        return out


def window_ids(offset: int, length: int) -> range:
    """`length` consecutive ids from `offset`: a stand-in for a corpus window that shares a prefix
    with another exactly when the real windows do (same offset), with no per-token objects."""
    return range(offset, offset + length)


def _describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _efficiency_dict(eff: Any) -> dict[str, float] | None:
    if eff is None:
        return None
    from dataclasses import asdict, is_dataclass

    return asdict(eff) if is_dataclass(eff) else None
