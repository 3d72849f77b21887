"""The simulator: the core scheduler and block manager on a virtual clock, with modelled step times.

It runs exactly the `Scheduler` and `BlockManager` the native engine runs, so its schedules
(batches, preemptions, KV blocks) are the engine's by construction; only the time each step
takes is predicted, by the cost model in `llmlab.plan.cost` or by a `step_time` callable.
No text is generated: every sampled token is a placeholder id, EOS never stops a request
and each one runs to its `max_tokens` (or the context limit).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llmlab.config import VERSION, EngineConfig, check_watermark, default_kv_dtype
from llmlab.core.batch import Batch
from llmlab.core.blocks import BlockManager
from llmlab.core.records import Completion, EngineInfo
from llmlab.core.request import Request, SamplingParams
from llmlab.core.scheduler import Scheduler, SchedulerConfig
from llmlab.engines.base import EngineCore, EngineStep
from llmlab.engines.sim.fast_forward import FastForward
from llmlab.engines.sim.presets import apply as apply_preset
from llmlab.engines.sim.tokens import PLACEHOLDER_TOKEN, default_tokenizer, window_ids
from llmlab.models.shapes import get_shape
from llmlab.plan.cost import CostModel
from llmlab.plan.hardware import get_hardware
from llmlab.plan.memory import make_shard, memory_plan, parallel_sizes

if TYPE_CHECKING:
    from llmlab.workloads import WorkItem

OWNERS_AUTO_LIMIT = 4096  # record KV owners every step for pools up to this many blocks


class SimEngine(EngineCore):
    """Predicts a serving run: real scheduling, modelled step times, simulated seconds.

    `model` is a shape name, a local path or a config dict (see `llmlab.models.shapes.get_shape`),
    `gpu` a catalogue name (`llmlab.plan.hardware`, "cpu" or None for this machine). The KV
    pool holds what `memory_plan` leaves after weights and activations, unless `num_blocks`
    is given. `efficiency` (or a calibration from `llmlab.plan.calibrate`) tunes the cost
    model; `step_time(slots) -> seconds` replaces it altogether. Text prompts and corpus
    prompts are counted with the embedded SmolLM2 tokenizer, whatever the model.

    With `fast_forward` (the default), a cost model and KV owners not traced, `fast_path` (a
    `FastForward`) records stretches of steps as `DecodeRun`s and computes steady decoding in
    bulk: the trace is the same as stepping one at a time (the tests compare both), only much
    faster to make.

    Every setting is checked by `llmlab.config.EngineConfig` first.
    """

    name = "sim"
    virtual_clock = True

    def __init__(self, config: EngineConfig | None = None) -> None:
        c = config or EngineConfig()
        tp, pp = parallel_sizes(c.num_gpus, c.tp, c.pp)
        like = c.like if c.like is not None or c.gpu in (None, "cpu") else "vllm"  # a GPU runs like vLLM
        if like is not None:
            c = apply_preset(c, like, get_hardware(c.gpu or "cpu"), tp)
        c = c.for_engine("sim")  # checked: a bad setting fails before any plan is built
        super().__init__()
        self.like = like
        self._tokenizer = c.tokenizer
        self.clock = 0.0
        self.requests: dict[str, Request] = {}
        self._windows: set[str] = set()  # ids of requests encoded from corpus windows: placeholder ids

        shape = hw = plan = None
        if c.step_time is None or c.num_blocks is None:  # the model and GPU matter: for the cost or the pool
            shape, hw = get_shape(c.model or "smollm2-135m"), get_hardware(c.gpu or "cpu")
            make_shard(shape, tp, pp)  # a tp or pp that does not split the model fails here, with the fix
        weights = c.weights or ("fp32" if hw is not None and hw.kind == "cpu" else "bf16")
        kv_dtype = c.kv_dtype if c.kv_dtype != "auto" else default_kv_dtype(weights)
        sched_cfg = SchedulerConfig.of(c, c.model_len(getattr(shape, "max_position_embeddings", None)))
        num_blocks = c.num_blocks
        if num_blocks is None:
            plan = self._plan(c, shape, hw, weights, kv_dtype, tp, pp, sched_cfg.max_model_len)
            num_blocks = int(plan.kv_blocks)
        check_watermark(c.watermark, num_blocks)

        self.cost_model = None
        step_time = c.step_time
        if step_time is None:
            eff = c.calibration if c.calibration is not None else c.efficiency
            eff = getattr(eff, "efficiency", eff)  # a fitted CostModel or Calibration carries one
            self.cost_model = CostModel(shape, hw, weights=weights, kv_dtype=kv_dtype, tp=tp, pp=pp, efficiency=eff)
            step_time = self.cost_model.step_time
        self.step_time = step_time
        self.shape, self.hardware, self.memory_plan = shape, hw, plan
        self.blocks = BlockManager(num_blocks, c.block_size, c.enable_prefix_caching, c.watermark)
        self.scheduler = Scheduler(sched_cfg, self.blocks)
        owners = c.trace_kv_owners
        self.trace_kv_owners = num_blocks <= OWNERS_AUTO_LIMIT if owners is None else owners
        self.fast_forward = c.fast_forward
        fast = self.fast_forward and self.cost_model is not None and not self.trace_kv_owners
        self.fast_path = FastForward(self) if fast else None  # the session asks it for the next steps
        gpu_name = hw.name if hw is not None else "given step_time"
        self.info = EngineInfo(
            engine="sim",
            version=VERSION,
            model=getattr(shape, "name", None) or str(c.model or "smollm2-135m"),
            device=gpu_name if tp * pp == 1 else f"{tp * pp} x {gpu_name}",
            dtype=weights,
            config={
                "like": like,
                "policy": c.policy,
                "block_size": c.block_size,
                "num_blocks": num_blocks,
                "kv_cache_bytes": getattr(plan, "kv_bytes", None),
                "max_num_seqs": c.max_num_seqs,
                "max_num_batched_tokens": c.max_num_batched_tokens,
                "max_model_len": sched_cfg.max_model_len,
                "enable_chunked_prefill": c.enable_chunked_prefill,
                "enable_prefix_caching": c.enable_prefix_caching,
                "watermark": c.watermark,
                "gpu_memory_utilization": c.gpu_memory_utilization,
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

    @staticmethod
    def _plan(c: EngineConfig, shape: Any, hw: Any, weights: str, kv_dtype: str, tp: int, pp: int, max_len: int):
        """The per-GPU memory plan whose leftover holds the KV pool; a model that does not fit is refused."""
        plan = memory_plan(
            shape,
            hw,
            weights=weights,
            kv_dtype=kv_dtype,
            tp=tp,
            pp=pp,
            block_size=c.block_size,
            max_model_len=max_len,
            gpu_memory_utilization=c.gpu_memory_utilization,
            max_num_batched_tokens=c.max_num_batched_tokens,
            max_num_seqs=c.max_num_seqs,
        )
        if not plan.fits or plan.kv_blocks < 1:
            raise ValueError(
                f"{shape.name} with weights={weights} does not fit {tp * pp} x {hw.name} at tp={tp}, pp={pp}: "
                f"short by {plan.shortfall_bytes / 1e9:.2f} GB per GPU; use more GPUs (tp or pp), "
                "smaller weights (fp8, int4) or a GPU with more memory"
            )
        return plan

    def to_engine_args(self, target: str) -> Any:
        """This configuration as `target`'s launch options ("vllm", "trtllm", "mii", "tgi"); see
        `llmlab.engines.sim.export`."""
        from llmlab.engines.sim.export import to_engine_args

        return to_engine_args(self, target)

    # tokens ------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:  # type: ignore[override]
        """Loaded on first use: workloads given as token ids never need it."""
        if self._tokenizer is None:
            self._tokenizer = default_tokenizer()
        return self._tokenizer

    def encode(self, item: WorkItem) -> list[int]:
        """Token ids as given; a text prompt through the tokenizer; a corpus window (`prompt_len`)
        as ids `offset, offset + 1, ...` that need no tokenizer and share prefixes exactly when
        the real windows do (same offset), which is all the prefix cache looks at."""
        if item.prompt is not None:
            self._windows.discard(item.req_id)
        else:
            self._windows.add(item.req_id)  # its completion leaves the stand-in ids out
            limit = self.max_model_len
            if limit is not None and item.prompt_len > limit:  # refused before a huge window is built
                raise ValueError(
                    f"request {item.req_id!r}: prompt_len of {item.prompt_len} tokens is longer than the limit of "
                    f"{limit} tokens (the engine's max_model_len); give a prompt of at most {limit} tokens, or "
                    "launch the engine with a larger max_model_len"
                )
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
        return self.execute(self.scheduler.next_batch())

    def execute(self, batch: Batch) -> EngineStep:
        """Run a scheduled batch: the clock advances by its step time, every request by its tokens."""
        slots = batch.slots()
        self._tick(self.step_time(slots), len(slots))
        sampled = {i.request.req_id: PLACEHOLDER_TOKEN for i in batch.items if i.samples}
        finished = self.scheduler.update(batch, sampled)
        record = self.scheduler.record(batch, finished, owners=self.trace_kv_owners, slots=slots)
        completions = [self.complete(r) for r in finished]
        return EngineStep(record, dict.fromkeys(sampled, 1), completions)

    def _tick(self, seconds: float, num_slots: int) -> None:
        """Advance the clock by one step's time, which must be a number of seconds >= 0."""
        seconds = float(seconds)
        if not seconds >= 0.0:
            raise ValueError(f"step_time returned {seconds!r} seconds for step of {num_slots} slots: must be >= 0")
        self.clock += seconds

    def complete(self, req: Request) -> Completion:
        """The output of a finished request (a corpus window's ids are placeholders: left out)."""
        self.requests.pop(req.req_id, None)
        prompt = [] if req.req_id in self._windows else req.prompt_token_ids
        return Completion(req.req_id, "", req.output_token_ids, req.finish_reason, prompt, req.num_cached_tokens)

    def memory(self) -> dict[str, Any]:
        """What the simulated engine holds, with the native engine's keys where the simulator knows
        them: weight bytes come from the memory plan (None when `num_blocks` was given instead)."""
        plan, blocks = self.memory_plan, self.blocks
        config = self.info.config
        per_block = plan.kv_bytes_per_token * blocks.block_size if plan is not None else None
        return {
            "weights": config["weights"],
            "kv_dtype": config["kv_dtype"],
            "weight_bytes": int(plan.weights_bytes) if plan is not None else None,
            "linear_bytes": int(plan.linear_weights_bytes) if plan is not None else None,
            "embedding_bytes": int(plan.embedding_bytes) if plan is not None else None,
            "kv_bytes_per_block": int(per_block) if per_block is not None else None,
            "num_blocks": blocks.num_blocks,
            "block_size": blocks.block_size,
            "kv_tokens": blocks.num_blocks * blocks.block_size,
        }

    def __repr__(self) -> str:
        return f"<sim engine: {self.info.model} on {self.info.device}, {self.info.dtype}>"


def _describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__name__


def _efficiency_dict(eff: Any) -> dict[str, float] | None:
    if eff is None:
        return None
    from dataclasses import asdict, is_dataclass

    return asdict(eff) if is_dataclass(eff) else None
