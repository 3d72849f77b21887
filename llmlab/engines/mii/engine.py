"""DeepSpeed-MII in the notebook's own process: MII's Dynamic SplitFuse scheduler and DeepSpeed's KV
block bookkeeping, read step by step.

What runs as shipped: MII's `MIIPipeline` (its `generate` loop: `schedule_requests`,
`_schedule_token_gen`, `_schedule_prompts`, `reset_request_status`, logit processing, sampling and
stop criteria, flush requests) and DeepSpeed's `InferenceEngineV2.put`, `query`, `flush`,
`DSStateManager`, `BlockedKVCache`, `BlockedAllocator` and `RaggedBatchWrapper`. What is llmlab's:
the model forward (llmlab's native Llama, writing K/V into DeepSpeed's cache tensor by DeepSpeed's
block ids; DeepSpeed's own kernels are CUDA-only) and the few CPU patches in `patches.py`.
Each llmlab step is one call of MII's `generate()`, as `MIIPipeline.__call__` makes them.
On CUDA the same class runs with nothing patched: DeepSpeed builds its own model and kernels
(`cuda.py`) and MII's pipeline, the loop and the taps are those above.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import queue
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from llmlab.config import EngineConfig, dtype_name
from llmlab.core.records import Completion, EngineInfo, KVSnapshot, Slot, StepRecord
from llmlab.core.request import SamplingParams
from llmlab.engines.base import EngineCore, EngineStep, release_memory
from llmlab.engines.mii import cuda, patches
from llmlab.engines.native.engine import DTYPES, pick_dtype
from llmlab.engines.native.loader import load_model, rotary_tables
from llmlab.engines.native.runner import ModelRunner
from llmlab.models import load_tokenizer, resolve
from llmlab.models.resolve import check_architecture

DEFAULT_KV_MEMORY_CPU = 256 * 2**20
DEFAULT_KV_MEMORY_GPU = 4 * 2**30
DEFAULT_BATCH_TOKENS = 768  # DeepSpeed's DSStateManagerConfig.max_ragged_batch_size
DEFAULT_TRACKED = 2048  # DeepSpeed's DSStateManagerConfig.max_tracked_sequences

# llmlab's setting -> DeepSpeed's / MII's name for it; the one translation table
MII_NAMES = {
    "max_num_seqs": "max_ragged_sequence_count",
    "max_num_batched_tokens": "max_ragged_batch_size",
    "max_model_len": "max_context",
    "num_blocks": "memory_config.size",
    "block_size": "kv_block_size",
    "dtype": "cache_dtype",
}


def deepspeed_block_size(head_dim: int) -> int:
    """The KV block size DeepSpeed's blocked flash attention picks for this head size."""
    return 128 if head_dim <= 64 else 64


@dataclass
class _Live:
    """A user request as MII runs it."""

    req_id: str
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    done: bool = False


class MIIEngine(EngineCore):
    """MII's scheduler and DeepSpeed's KV state manager as they are; llmlab's forward on the CPU,
    DeepSpeed's own model and kernels on CUDA."""

    name = "mii"

    def __init__(self, config: EngineConfig | None = None) -> None:
        c = (config or EngineConfig()).for_engine("mii")  # checked: a bad setting fails before anything loads
        super().__init__()
        _refuse_unsupported(c)
        _import_mii()
        patches.check_versions()
        from deepspeed.inference.v2.config_v2 import RaggedInferenceEngineConfig
        from deepspeed.inference.v2.ragged import DSStateManagerConfig, MemoryConfig
        from deepspeed.inference.v2.ragged.manager_configs import AllocationMode
        from mii.batching.ragged_batching import MIIPipeline
        from mii.modeling.tokenizers import HFTokenizer

        device = cuda.pick_device(c.device)
        on_gpu = device.type == "cuda"
        self.dtype = pick_dtype(c.dtype, device)
        spec = resolve(c.model)
        cfg = check_architecture(spec.path)
        head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        block_size = c.block_size or deepspeed_block_size(head_dim)
        if on_gpu and block_size != deepspeed_block_size(head_dim):
            raise ValueError(
                f"block_size={block_size}: on CUDA DeepSpeed's attention kernel fixes the KV block size at "
                f"{deepspeed_block_size(head_dim)} for head size {head_dim}: leave block_size unset"
            )
        max_len = c.model_len(cfg.get("max_position_embeddings"))
        budget = c.max_num_batched_tokens or DEFAULT_BATCH_TOKENS
        per_block = ModelRunner.kv_bytes_per_block(cfg, block_size, self.dtype)
        num_blocks = c.num_blocks
        if num_blocks is None:
            default_memory = DEFAULT_KV_MEMORY_GPU if on_gpu else DEFAULT_KV_MEMORY_CPU
            num_blocks = (c.kv_cache_memory or default_memory) // per_block
            if num_blocks < 1:
                raise ValueError(
                    f"kv_cache_memory={c.kv_cache_memory} bytes holds no KV block of {per_block} bytes: "
                    f"give at least {per_block}"
                )
        self.block_size, self.num_blocks, self.max_len = block_size, num_blocks, max_len
        self.tokenizer = load_tokenizer(spec.path)
        self.vocab_size = int(cfg["vocab_size"])

        ds_config = RaggedInferenceEngineConfig(
            state_manager=DSStateManagerConfig(
                max_tracked_sequences=max(DEFAULT_TRACKED, c.max_num_seqs),
                max_ragged_batch_size=budget,
                max_ragged_sequence_count=c.max_num_seqs,
                max_context=max_len,
                memory_config=MemoryConfig(mode=AllocationMode.ALLOCATE, size=num_blocks),
            )
        )
        mii_config = types.SimpleNamespace(
            zmq_port_number=cuda.free_port() if on_gpu else 0,
            max_length=max_len,
            sync_debug=False,
            profile_model_time=False,
        )
        # the one difference between the devices: who builds the model and whether patches apply
        building = contextlib.nullcontext() if on_gpu else patches.cpu_patches()
        with building, _quiet_deepspeed():
            if on_gpu:  # DeepSpeed's own model, weights and kernels, as MII's load_model builds them
                engine = cuda.build_engine(spec.path, ds_config, self.dtype)
            else:
                engine = _cpu_engine(spec.path, cfg, ds_config, self.dtype, block_size, max_len)
            self.pipe = MIIPipeline(
                all_rank_output=False,
                inference_engine=engine,
                tokenizer=HFTokenizer(self.tokenizer),
                model_config=mii_config,
            )
        self.engine = engine
        self.manager = engine._state_manager
        self.pipe.result_queues[self.pipe.tid] = queue.Queue()
        self.trace_kv_owners = c.trace_kv_owners
        self._uids = itertools.count(1)
        self._live: dict[int, _Live] = {}  # MII uid -> the user's request, until DeepSpeed flushes it
        self._by_id: dict[str, int] = {}
        import deepspeed
        import mii

        torch_name = str(self.dtype).removeprefix("torch.")
        self.info = EngineInfo(
            engine="mii",
            version=f"deepspeed-mii {_version('deepspeed-mii')}, deepspeed {deepspeed.__version__}",
            model=spec.name,
            device=device.type,
            dtype=torch_name,
            config={
                "policy": "mii",  # Dynamic SplitFuse; the simulator imitates it with policy="splitfuse"
                "block_size": block_size,
                "num_blocks": num_blocks,
                "kv_cache_bytes": num_blocks * per_block,
                "kv_bytes_per_block": per_block,
                "max_num_seqs": c.max_num_seqs,
                "max_num_batched_tokens": budget,
                "max_model_len": max_len,
                "max_tracked_sequences": ds_config.state_manager.max_tracked_sequences,
                "enable_chunked_prefill": True,
                "enable_prefix_caching": False,
                "kv_dtype": torch_name,
                "weights": dtype_name(self.dtype),
                "tensor_parallel_size": 1,
                "pipeline_parallel_size": 1,
                "mii_names": MII_NAMES,
                "cpu_patches": [] if on_gpu else [f"{p.module}.{p.name}: {p.why}" for p in patches.PATCHES],
                "forward": "deepspeed inference-v2 kernels" if on_gpu else "llmlab native (torch)",
                "model_path": str(spec.path),
                "mii_path": str(mii.__file__),
            },
            views={"schedule": "exact", "kv": "exact", "latency": "exact"},
        )

    # requests ----------------------------------------------------------------------------
    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)

    def check_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        super().check_request(req_id, prompt_token_ids, params)
        if req_id in self._by_id:
            raise ValueError(f"request id {req_id!r} is already running on this engine: use a new id")
        if not prompt_token_ids:
            raise ValueError(f"request {req_id!r} has an empty prompt: give at least one token")
        total = len(prompt_token_ids) + params.max_tokens
        if total > self.max_len:
            raise ValueError(
                f"request {req_id!r}: {len(prompt_token_ids)} prompt + {params.max_tokens} output tokens exceed "
                f"max_model_len={self.max_len}: shorten it or launch with a larger max_model_len"
            )
        need = self.blocks_for(total)
        if need > self.num_blocks:
            # MII needs a whole prompt (with what it generated, after a flush) to fit the pool at once
            raise ValueError(
                f"request {req_id!r} needs {need} KV blocks of {self.block_size} tokens ({total} tokens) but the "
                f"pool has num_blocks={self.num_blocks}: launch with num_blocks >= {need} (or more kv_cache_memory)"
            )
        if params.stop:
            raise ValueError(f"request {req_id!r}: the mii engine takes no stop strings here: give stop=None")
        if params.seed is not None and params.temperature > 0:
            raise ValueError(
                f"request {req_id!r}: seed={params.seed} cannot be honoured: MII's sampler draws from torch's "
                "global generator; give seed=None (or call torch.manual_seed before the run)"
            )
        self.check_vocab(req_id, prompt_token_ids, self.vocab_size)

    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.check_request(req_id, prompt_token_ids, params)
        sample = params.temperature > 0
        kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "max_length": self.max_len,
            "ignore_eos": params.ignore_eos,
            "do_sample": sample,
            "top_p": params.top_p,
            "stream": True,  # MII's streaming output: each step's tokens as they come
        }
        if sample:
            kwargs["temperature"] = params.temperature
            if params.top_k > 0:
                kwargs["top_k"] = params.top_k
        uid = next(self._uids)
        prompt = torch.tensor(list(prompt_token_ids), dtype=torch.long)
        request = self.pipe.make_request(self.pipe.tid, uid, prompt, kwargs)
        self.pipe.request_queue.put(request)
        self._live[uid] = _Live(req_id, list(prompt_token_ids))
        self._by_id[req_id] = uid

    def abort(self, req_id: str) -> None:
        """Take the request out of MII's queues and free its DeepSpeed sequence now (MII's `flush`)."""
        uid = self._by_id.pop(req_id, None)
        if uid is None:
            return
        self._live.pop(uid, None)
        self._drop(uid)

    def _drop(self, uid: int) -> None:
        pipe = self.pipe
        pipe.buffer = type(pipe.buffer)(r for r in pipe.buffer if r.uid != uid)
        pipe.scheduled_requests.prune([uid])
        kept = []
        while not pipe.request_queue.empty():
            r = pipe.request_queue.get_nowait()
            if r.uid != uid:
                kept.append(r)
        for r in kept:
            pipe.request_queue.put(r)
        if self.manager.get_sequence(uid) is not None:
            pipe.flush([uid])

    def has_unfinished(self) -> bool:
        return any(not r.done for r in self._live.values())

    # the step ----------------------------------------------------------------------------
    def step(self) -> EngineStep:
        pipe = self.pipe
        ran: list[tuple[int, int, int, bool]] = []
        flushed: list[int] = []
        for _ in range(3):  # the first generate() after new requests only schedules them
            batch = pipe.scheduled_requests
            ran = [
                (r.uid, len(r.input_tokens), r.seq_length, r.num_generated_tokens > 0) for r in batch.requests_to_run
            ]
            flushed += batch.requests_to_flush.uids
            self._generate()
            if ran or not self.has_unfinished():
                break
        new_tokens, finished = self._drain()
        if not self.has_unfinished():
            flushed += self._flush_all()
        record = self._record(ran, flushed, finished)
        for uid in flushed:
            if uid in self._live and self._live[uid].done:
                self._live.pop(uid)
        return EngineStep(record, new_tokens, finished)

    def _generate(self) -> None:
        try:
            self.pipe.generate()
        except AssertionError as exc:  # MII's reset_request_status: nothing left to evict
            # finished requests whose flush MII has not run yet would keep their blocks: free them now
            for uid in [u for u, r in self._live.items() if r.done]:
                self._live.pop(uid)
                self._drop(uid)
            raise ValueError(
                f"MII could not fit the waiting requests into the KV pool of num_blocks={self.num_blocks} blocks of "
                f"{self.block_size} tokens ({exc}): launch with more num_blocks (or kv_cache_memory)"
            ) from exc

    def _drain(self) -> tuple[dict[str, int], list[Completion]]:
        """MII's streamed outputs of this step: new tokens, and the requests that finished."""
        from mii.constants import GenerationFinishReason

        q = self.pipe.result_queues[self.pipe.tid]
        new_tokens: dict[str, int] = {}
        finished: list[Completion] = []
        while not q.empty():
            uid, tokens, _prompt_len, _n, reason, _stream = q.get_nowait()
            live = self._live.get(uid)
            if live is None or live.done:
                continue
            got = [int(t) for t in tokens]
            if got:
                live.tokens.extend(got)
                new_tokens[live.req_id] = new_tokens.get(live.req_id, 0) + len(got)
            if reason != GenerationFinishReason.NONE:
                live.done = True
                self._by_id.pop(live.req_id, None)
                text = self.tokenizer.decode(live.tokens, skip_special_tokens=True)
                finished.append(Completion(live.req_id, text, list(live.tokens), str(reason.value), live.prompt, 0))
                self.pipe._queue_flush_request(uid)  # as MIIPipeline does for each response
        return new_tokens, finished

    def _flush_all(self) -> list[int]:
        """The end of `MIIPipeline.__call__`: one more generate() to schedule the flush requests, a
        forced broadcast, and DeepSpeed's flush of every finished sequence."""
        from mii.batching.data_classes import RequestBatch

        pipe = self.pipe
        flushed = list(pipe.scheduled_requests.requests_to_flush.uids)
        self._generate()
        pipe._bcast_requests(force=True)
        last = pipe.scheduled_requests.requests_to_flush.uids
        pipe.flush(last)
        pipe.scheduled_requests = RequestBatch()
        return flushed + list(last)

    def _user(self, uid: int) -> str:
        live = self._live.get(uid)
        return live.req_id if live is not None else f"uid{uid}"

    def _record(
        self, ran: list[tuple[int, int, int, bool]], flushed: list[int], finished: list[Completion]
    ) -> StepRecord:
        slots = [Slot(self._user(u), "decode" if dec else "prefill", n, seen + n) for u, n, seen, dec in ran]
        admitted = [self._user(u) for u, _n, seen, dec in ran if seen == 0 and not dec]
        # a flushed request that has not finished was evicted by MII (reset_request_status): a preemption
        preempted = [self._user(u) for u in flushed if u in self._live and not self._live[u].done]
        tracked = set(self.manager.tracked_sequences)
        unfinished = [u for u, r in self._live.items() if not r.done]
        running = sum(1 for u in unfinished if u in tracked)
        return StepRecord(
            step=0,
            t_start=0.0,
            t_end=0.0,
            batch=slots,
            waiting=len(unfinished) - running,
            running=running,
            admitted=admitted,
            preempted=preempted,
            finished=[c.req_id for c in finished],
            kv=self.snapshot(),
        )

    def snapshot(self) -> KVSnapshot:
        """DeepSpeed's pool now: free blocks from its allocator, each tracked sequence's block ids."""
        free = int(self.manager.free_blocks[0])
        owners = None
        if self.trace_kv_owners:
            owners = {}
            for uid, seq in self.manager.tracked_sequences.items():
                for b in seq.all_block_ids().tolist():
                    owners.setdefault(int(b), []).append(self._user(uid))
        return KVSnapshot(
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            used=self.num_blocks - free,
            cached=0,
            free=free,
            owners=owners,
        )

    def tracked_blocks(self) -> dict[str, list[int]]:
        """Each sequence DeepSpeed tracks, by the user's request id, and its block ids in order."""
        return {self._user(u): s.all_block_ids().tolist() for u, s in self.manager.tracked_sequences.items()}

    def close(self) -> None:
        """Free the model and DeepSpeed's KV cache and close MII's socket; a new launch works afterwards."""
        if self.closed:
            return
        super().close()
        pipe = self.pipe
        try:
            pipe.socket.close(linger=0)
            pipe._zmq_context.term()
        finally:
            pipe.inference_engine = None
            self.pipe = self.engine = self.manager = None  # type: ignore[assignment]
            self._live.clear()
            self._by_id.clear()
            release_memory()


def _cpu_engine(path: Any, cfg: dict, ds_config: Any, dtype: torch.dtype, block_size: int, max_len: int) -> Any:
    """`InferenceEngineV2` with the same fields its `__init__` sets, minus the TP group and the policy
    (DeepSpeed's layers are CUDA-only): llmlab's forward over DeepSpeed's state manager. Call it
    inside `patches.cpu_patches()`."""
    from deepspeed.inference.v2.engine_v2 import InferenceEngineV2
    from deepspeed.inference.v2.ragged import DSStateManager
    from deepspeed.inference.v2.ragged.ragged_wrapper import RaggedBatchWrapper

    from llmlab.engines.mii.model import NativeRaggedModel

    device = torch.device("cpu")
    model = load_model(path, cfg, dtype, device)
    cos, sin = rotary_tables(path, cfg, max_len, dtype, device)
    engine = InferenceEngineV2.__new__(InferenceEngineV2)
    engine._config, engine._policy, engine._base_mp_group = ds_config, None, None
    engine._model = NativeRaggedModel(model, cos, sin, block_size, max_len, dtype)
    engine._batch = RaggedBatchWrapper(ds_config.state_manager)
    engine._state_manager = DSStateManager(ds_config.state_manager, engine._model.kv_cache_config())
    engine._model.set_state_manager(engine._state_manager)
    return engine


def _refuse_unsupported(c: EngineConfig) -> None:
    """Settings MII's CPU path here cannot honour, each with what to do instead."""
    if c.tp != 1 or c.pp != 1:
        raise ValueError(f"tp={c.tp}, pp={c.pp}: the mii engine runs on one device here (tp=1, pp=1)")
    if c.dtype is not None and dtype_name(c.dtype) not in DTYPES:
        raise ValueError(f"dtype={c.dtype!r}: the mii engine computes in {list(DTYPES)} on a CPU")
    if c.weights is not None and c.weights not in DTYPES:
        raise ValueError(f"weights={c.weights!r}: the mii engine stores weights in the compute dtype; leave it None")
    if c.kv_dtype not in ("auto", dtype_name(c.dtype)):
        raise ValueError(f"kv_dtype={c.kv_dtype!r}: DeepSpeed's KV cache holds the compute dtype; use 'auto'")
    if not c.enable_chunked_prefill:
        raise ValueError("enable_chunked_prefill=False: MII's Dynamic SplitFuse always splits long prompts")


@contextlib.contextmanager
def _quiet_deepspeed() -> Iterator[None]:
    """DeepSpeed logs each KV cache allocation at INFO on stdout; in a notebook that buries the cell's
    output (`info.config` holds the same numbers). Warnings still show."""
    from deepspeed.inference.v2.logging import inference_logger

    log = inference_logger()  # created now, so its own INFO level is set before ours
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def _import_mii() -> None:
    """Import DeepSpeed and MII; without them, say which extra installs them."""
    try:
        import deepspeed  # noqa: F401  (says "Setting accelerator to CPU" once)
        import mii  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            f"the mii engine needs DeepSpeed-MII ({exc.name} is missing): pip install 'llmlab[mii]' "
            f"({patches.PINNED_TEXT})"
        ) from exc


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)
