"""llmlab's own engine: the core scheduler and block manager over a PyTorch paged-KV model runner."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from llmlab.config import VERSION, EngineConfig, check_watermark, dtype_name
from llmlab.core.blocks import BlockManager
from llmlab.core.records import Completion, EngineInfo
from llmlab.core.request import Request, SamplingParams
from llmlab.core.scheduler import Scheduler, SchedulerConfig
from llmlab.cpu_threads import fit_threads
from llmlab.engines.base import EngineCore, EngineStep, release_memory
from llmlab.engines.native import cpu_dtype
from llmlab.engines.native.kv_cache import KV_DTYPES
from llmlab.engines.native.memory import kv_pool_bytes, weight_bytes
from llmlab.engines.native.quant import STORAGE_DTYPES, WEIGHT_FORMATS
from llmlab.engines.native.runner import ModelRunner
from llmlab.models import load_tokenizer, resolve
from llmlab.models.resolve import check_architecture

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # the compute dtypes the native engine runs
WEIGHT_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16"}  # `weights` when not given: the compute dtype
DEFAULT_KV_MEMORY_CPU = 256 * 2**20


def pick_device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"device={device!r} is unknown: use 'cpu' or 'cuda'")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but this PyTorch sees no CUDA GPU: use device='cpu'")
    return torch.device(device)


def default_cpu_dtype() -> torch.dtype:
    """float32, or bfloat16 where the CPU computes it natively and a one-time probe measured it
    faster (see cpu_dtype.py); `LLMLAB_CPU_DTYPE` overrides the choice."""
    return DTYPES[dtype_name(cpu_dtype.choose().dtype)]


def pick_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """The compute dtype: a name in llmlab's vocabulary ('fp32', 'bf16', or torch's names), or None to pick."""
    name = dtype_name(dtype)
    if name in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else default_cpu_dtype()
    if name in DTYPES:
        return DTYPES[name]
    raise ValueError(f"dtype={dtype!r} is not supported by the native engine: use 'fp32' or 'bf16'")


def eos_ids(path: Path, tokenizer) -> tuple[int, ...]:
    """EOS ids from generation_config.json and the tokenizer."""
    ids: set[int] = set()
    gen = path / "generation_config.json"
    if gen.exists():
        value = json.loads(gen.read_text()).get("eos_token_id")
        ids.update(value if isinstance(value, list) else [value] if value is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return tuple(sorted(ids))


class NativeEngine(EngineCore):
    """Paged KV cache, continuous batching and the four core policies, on CPU or CUDA.

    Every setting is checked by `llmlab.config.EngineConfig` before anything loads.
    """

    name = "native"

    def __init__(self, config: EngineConfig | None = None) -> None:
        c = (config or EngineConfig()).for_engine("native")  # checked: a bad setting fails before anything loads
        super().__init__()
        self.device = pick_device(c.device)
        self.dtype, self.weights, self.kv_dtype = self._dtypes(c, self.device)
        self.group_size = c.group_size
        spec = resolve(c.model)
        cfg = check_architecture(spec.path)
        self.tp, self.pp = c.tp or 1, c.pp
        if self.tp * self.pp > 1:  # checked before anything loads
            self._check_parallel(cfg)
        sched_cfg = SchedulerConfig.of(c, c.model_len(cfg.get("max_position_embeddings")))
        per_block = ModelRunner.kv_bytes_per_block(cfg, c.block_size, self.dtype, self.kv_dtype)
        num_blocks = c.num_blocks
        if num_blocks is None:
            budget = c.kv_cache_memory or self._default_kv_memory(spec.path)
            num_blocks = budget // per_block
            if num_blocks < 1:
                raise ValueError(
                    f"kv_cache_memory={budget} bytes holds no KV block of {per_block} bytes: give at least {per_block}"
                )
        check_watermark(c.watermark, num_blocks)

        self.vocab_size = int(cfg["vocab_size"])
        self.tokenizer = load_tokenizer(spec.path)
        self.eos_token_ids = eos_ids(spec.path, self.tokenizer)
        self.blocks = BlockManager(num_blocks, c.block_size, c.enable_prefix_caching, c.watermark)
        self.scheduler = Scheduler(sched_cfg, self.blocks)
        if self.tp * self.pp > 1:
            self.runner = self._parallel_runner(spec.path, cfg, c, num_blocks, sched_cfg.max_model_len)
        else:
            self.runner = ModelRunner(
                spec.path,
                cfg,
                c.block_size,
                num_blocks,
                self.dtype,
                self.device,
                sched_cfg.max_model_len,
                c.seed or 0,
                weights=self.weights,
                kv_dtype=self.kv_dtype,
                group_size=c.group_size,
            )
        self.trace_kv_owners = c.trace_kv_owners
        self.requests: dict[str, Request] = {}
        if self.device.type == "cpu" and (lowered := fit_threads()):
            warnings.warn(lowered, stacklevel=2)
        torch_name = str(self.dtype).removeprefix("torch.")
        self.info = EngineInfo(
            engine="native",
            version=VERSION,
            model=spec.name,
            device=str(self.device),
            dtype=torch_name,
            config={
                **asdict(sched_cfg),
                "block_size": c.block_size,
                "num_blocks": num_blocks,
                "kv_cache_bytes": num_blocks * per_block,
                "seed": c.seed,
                "kv_dtype": torch_name if self.kv_dtype == "auto" else self.kv_dtype,
                "weights": self.weights,
                "group_size": c.group_size if self.weights == "int4" else None,
                "kv_bytes_per_block": per_block,
                "tensor_parallel_size": self.tp,
                "pipeline_parallel_size": self.pp,
                "threads": torch.get_num_threads() if self.device.type == "cpu" else None,
                "model_path": str(spec.path),
            },
            views={"schedule": "exact", "kv": "exact", "latency": "exact"},
        )

    def _check_parallel(self, cfg: dict) -> None:
        """Refuse a tensor/pipeline layout this model, these weights or this machine cannot run."""
        from llmlab.engines.native.parallel.shard import check_layout

        if self.weights not in ("fp32", "bf16"):
            raise ValueError(
                f"weights={self.weights!r} with tp={self.tp}, pp={self.pp}: the parallel native engine "
                "runs unquantized weights: use weights='fp32' or 'bf16', or tp=1, pp=1"
            )
        check_layout(cfg, self.tp, self.pp, str(self.device))

    def _parallel_runner(self, path: Path, cfg: dict, c: EngineConfig, num_blocks: int, max_len: int):
        from llmlab.engines.native.parallel.runner import ParallelRunner

        return ParallelRunner(
            path,
            cfg,
            c.block_size,
            num_blocks,
            self.dtype,
            self.device,
            max_len,
            c.seed or 0,
            self.kv_dtype,
            self.tp,
            self.pp,
        )

    @staticmethod
    def _dtypes(c: EngineConfig, device: torch.device) -> tuple[torch.dtype, str, str]:
        """The compute dtype, the weights' format and the KV cache's, from the config, refusing what
        this engine cannot store. Unquantized weights compute in their own dtype unless told otherwise."""
        if c.weights is not None and c.weights not in WEIGHT_FORMATS:
            raise ValueError(f"weights={c.weights!r}: the native engine stores weights as {list(WEIGHT_FORMATS)}")
        dtype = pick_dtype(c.weights if c.dtype is None and c.weights in STORAGE_DTYPES else c.dtype, device)
        kv_dtype = "auto" if c.kv_dtype == dtype_name(dtype) else c.kv_dtype  # the compute dtype is 'auto'
        if kv_dtype not in KV_DTYPES:
            raise ValueError(
                f"kv_dtype={c.kv_dtype!r}: the native engine stores K/V as one of {list(KV_DTYPES)} "
                f"('auto' is the compute dtype, {dtype_name(dtype)})"
            )
        return dtype, c.weights or WEIGHT_NAMES[dtype], kv_dtype

    def _default_kv_memory(self, path: Path) -> int:
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
            weights = sum(f.stat().st_size for f in path.glob("*.safetensors"))
            return max(int((free - 2 * weights) * 0.8), 64 * 2**20)
        return DEFAULT_KV_MEMORY_CPU

    # requests ----------------------------------------------------------------------------
    def _request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> Request:
        return Request(req_id, prompt_token_ids, params, eos_token_ids=self.eos_token_ids)

    def check_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        super().check_request(req_id, prompt_token_ids, params)
        if req_id in self.requests:
            raise ValueError(f"request id {req_id!r} is already running on this engine: use a new id")
        self.scheduler.check(self._request(req_id, prompt_token_ids, params))
        self.check_vocab(req_id, prompt_token_ids, self.vocab_size)

    def add_request(self, req_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.check_request(req_id, prompt_token_ids, params)  # called directly, not through a run, too
        req = self._request(req_id, prompt_token_ids, params)
        self.scheduler.add(req)
        self.requests[req_id] = req

    def abort(self, req_id: str) -> None:
        self.scheduler.abort(req_id)
        self._forget(req_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def reset_prefix_cache(self) -> int:
        """Drop all cached prefixes, so the next run starts cold; returns the number of blocks freed."""
        return self.blocks.reset_cache()

    def _forget(self, req_id: str) -> None:
        self.requests.pop(req_id, None)
        self.runner.release(req_id)

    # the step ----------------------------------------------------------------------------
    def step(self) -> EngineStep:
        """One scheduler step. A request whose sampling raised fails alone: it finishes with
        finish_reason "error" (its blocks freed) and the others go on; a failed forward fails the step."""
        sched = self.scheduler
        batch = sched.next_batch()
        out = self.runner.execute(batch)
        failed = {rid: v for rid, v in out.items() if isinstance(v, BaseException)}
        sampled = {rid: v for rid, v in out.items() if rid not in failed} if failed else out
        finished = sched.update(batch, sampled)
        for req_id in failed:
            req = self.requests[req_id]
            if not req.is_finished:
                finished.append(sched.finish(req, "error"))
        for req_id in sampled:
            req = self.requests[req_id]
            if not req.is_finished and req.params.stop and self._hit_stop_string(req):
                finished.append(sched.finish(req, "stop"))
        record = sched.record(batch, finished, owners=self.trace_kv_owners)
        record.parallel = getattr(self.runner, "last_parallel", None)
        completions = [self._complete(r) for r in finished]
        errors = {rid: f"{type(exc).__name__}: {exc}" for rid, exc in failed.items()}
        return EngineStep(record, dict.fromkeys(sampled, 1), completions, errors)

    def _hit_stop_string(self, req: Request) -> bool:
        tail = self.tokenizer.decode(req.output_token_ids[-16:], skip_special_tokens=True)
        return any(s in tail for s in req.params.stop)

    def _complete(self, req: Request) -> Completion:
        text = self.tokenizer.decode(req.output_token_ids, skip_special_tokens=True)
        if req.params.stop:
            cut = min((text.find(s) for s in req.params.stop if s in text), default=-1)
            if cut >= 0:
                text = text[:cut]
        self._forget(req.req_id)
        return Completion(
            req.req_id, text, list(req.output_token_ids), req.finish_reason, req.prompt_token_ids, req.num_cached_tokens
        )

    # measuring ---------------------------------------------------------------------------
    def memory(self) -> dict[str, Any]:
        """What this engine holds, in bytes, counted from its tensors: weights by kind (linear
        layers, their scales, embeddings, norms), the KV pool, bytes per block, blocks and tokens."""
        self._check_open()
        out: dict[str, Any] = {"weights": self.weights, "kv_dtype": self.kv_dtype}
        if self.tp * self.pp > 1:  # summed over the ranks; each rank's own under "ranks"
            ranks = self.runner.memory()
            for key in (*weight_bytes(torch.nn.Module()), *kv_pool_bytes([])):
                out[key] = sum(r[key] for r in ranks)
            out["ranks"] = ranks
        else:
            out.update(weight_bytes(self.runner.model))
            out.update(kv_pool_bytes(self.runner.kv_caches))
        out["kv_bytes_per_block"] = self.info.config["kv_bytes_per_block"]
        out["num_blocks"] = self.blocks.num_blocks
        out["block_size"] = self.blocks.block_size
        out["kv_tokens"] = self.blocks.num_blocks * self.blocks.block_size
        return out

    def score(self, token_ids: list[int]) -> torch.Tensor:
        """Float32 next-token logits [len(token_ids), vocab] at every position of one text, computed
        through this engine's weights and KV pool (its quantization included). Needs an idle engine."""
        self._check_open()
        if len(token_ids) < 1:
            raise ValueError("score() needs at least one token id")
        limit = self.scheduler.config.max_model_len
        if len(token_ids) > limit:
            raise ValueError(f"{len(token_ids)} tokens exceed max_model_len={limit}: score shorter windows")
        if not self.busy.acquire(blocking=False):
            raise ValueError("the native engine is busy with a live run: call run.wait() or run.stop() on it first")
        req = Request("__score__", list(token_ids), SamplingParams(max_tokens=1))
        try:
            if not self.blocks.allocate(req, len(token_ids)):
                raise ValueError(
                    f"{len(token_ids)} tokens need {self.blocks.blocks_for(len(token_ids))} KV blocks but "
                    f"{self.blocks.num_free} are free: score shorter windows or launch with more num_blocks"
                )
            return self.runner.score(list(token_ids), req.block_ids)
        finally:
            self.blocks.free(req)
            self.busy.release()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("the native engine is closed: launch a new one with llmlab.launch('native')")

    def close(self) -> None:
        """Free the weights and the KV pool (the user's `Engine.close` stops a run in flight first)."""
        super().close()
        if hasattr(self.runner, "close"):
            self.runner.close()  # ends the worker processes of a parallel engine
        self.runner = None  # type: ignore[assignment]
        self.requests.clear()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        release_memory()
