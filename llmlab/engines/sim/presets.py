"""Engine presets: the scheduling knobs each serving engine starts with, so the simulator batches
like that engine does on the GPU being simulated.

`launch("sim", like="trtllm", gpu="H100")` fills the knobs below from `preset("trtllm", hw)`;
a setting given to `launch` (even at its default value) wins over the preset. Each value
carries where it comes from: a file at a named release, read for this table. `about(like)` prints
them. What a preset cannot change (an engine's own kernels or per-step costs) lives in the cost
model, `llmlab.plan.cost`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from llmlab.config import ENGINE_DEFAULTS, PRESET_NAMES, EngineConfig

if TYPE_CHECKING:
    from llmlab.plan.hardware import Hardware

GIB = 2**30
KNOBS = (
    "max_num_batched_tokens",
    "max_num_seqs",
    "enable_chunked_prefill",
    "policy",
    "gpu_memory_utilization",
    "block_size",
    "enable_prefix_caching",
)
VERSIONS = {
    "vllm": "vLLM 0.32.0 (`vllm serve`)",
    "trtllm": "TensorRT-LLM v1.0 (`trtllm-serve`, PyTorch backend)",
    "mii": "DeepSpeed-MII v0.3.x on DeepSpeed 0.19.x (FastGen)",
    "tgi": "Text Generation Inference v3.x (`text-generation-launcher`)",
    "sglang": "SGLang v0.4.x (`python -m sglang.launch_server`)",
}


@dataclass(frozen=True)
class Knob:
    """One preset value and where it comes from (file at a release, and what it says)."""

    value: Any
    source: str


def preset(like: str, hw: Hardware | None = None, tp: int = 1) -> dict[str, Knob]:
    """The knobs of engine `like` serving on `hw` (None: an 80 GB H100) at tensor parallelism `tp`."""
    if like not in PRESET_NAMES:
        raise ValueError(f"like={like!r} is not a preset: choose one of {list(PRESET_NAMES)}")
    memory = hw.memory_bytes if hw is not None else 80e9
    name = hw.name.lower() if hw is not None else "h100"
    cpu = hw is not None and hw.kind == "cpu"
    return {"vllm": _vllm, "trtllm": _trtllm, "mii": _mii, "tgi": _tgi, "sglang": _sglang}[like](memory, name, cpu, tp)


def _vllm(memory: float, name: str, cpu: bool, tp: int) -> dict[str, Knob]:
    # vllm/engine/arg_utils.py, EngineArgs.get_batch_defaults (0.32.0): the OPENAI_API_SERVER
    # column, picked by the device's total memory and name, and a CPU's by world size
    where = "vllm/engine/arg_utils.py get_batch_defaults, OPENAI_API_SERVER"
    if cpu:
        budget, seqs, why = 2048 * tp, 128 * tp, "CPU: 2048 x world_size tokens, 128 x world_size seqs"
    elif memory >= 160 * GIB:
        budget, seqs, why = 16384, 1024, "device memory >= 160 GiB"
    elif memory >= 70 * GIB and "a100" not in name:
        budget, seqs, why = 8192, 1024, "device memory >= 70 GiB, not an A100"
    else:
        budget, seqs, why = 2048, 256, "other GPUs"
    return {
        "max_num_batched_tokens": Knob(budget, f"{where} ({why})"),
        "max_num_seqs": Knob(seqs, f"{where} ({why})"),
        "enable_chunked_prefill": Knob(True, "vllm/config/scheduler.py SchedulerConfig.enable_chunked_prefill = True"),
        "policy": Knob("chunked", "vllm/v1/core/sched/scheduler.py: one token budget, running requests first"),
        "gpu_memory_utilization": Knob(0.92, "vllm/config/cache.py CacheConfig.gpu_memory_utilization default 0.92"),
        "block_size": Knob(16, "vllm/config/cache.py CacheConfig.DEFAULT_BLOCK_SIZE = 16"),
        "enable_prefix_caching": Knob(True, "vllm/config/cache.py CacheConfig.enable_prefix_caching (V1: on)"),
    }


def _trtllm(memory: float, name: str, cpu: bool, tp: int) -> dict[str, Knob]:
    where = "tensorrt_llm/llmapi/llm_args.py (v1.0)"
    return {
        "max_num_batched_tokens": Knob(8192, "tensorrt_llm/builder.py BuildConfig.max_num_tokens = 8192 (v1.0)"),
        "max_num_seqs": Knob(2048, "tensorrt_llm/builder.py BuildConfig.max_batch_size = 2048 (v1.0)"),
        "enable_chunked_prefill": Knob(False, f"{where} BaseLlmArgs.enable_chunked_prefill = False"),
        "policy": Knob(
            "guaranteed_no_evict",
            f"{where} SchedulerConfig.capacity_scheduler_policy = CapacitySchedulerPolicy.GUARANTEED_NO_EVICT",
        ),
        # a fraction of the memory left free after the weights; llmlab's is of the whole GPU, so
        # this is a close stand-in (the KV pool differs by 10% of the weights' size)
        "gpu_memory_utilization": Knob(0.9, f"{where} KvCacheConfig.free_gpu_memory_fraction = 0.9"),
        "block_size": Knob(32, f"{where} KvCacheConfig.tokens_per_block = 32"),
        "enable_prefix_caching": Knob(True, f"{where} KvCacheConfig.enable_block_reuse = True"),
    }


def _mii(memory: float, name: str, cpu: bool, tp: int) -> dict[str, Knob]:
    where = "deepspeed/inference/v2/ragged/manager_configs.py (DeepSpeed 0.19.x)"
    reserve = 1e9  # MemoryConfig(mode="reserve", size=1_000_000_000): all but 1 GB goes to weights and KV
    return {
        "max_num_batched_tokens": Knob(768, f"{where} DSStateManagerConfig.max_ragged_batch_size = 768"),
        "max_num_seqs": Knob(512, f"{where} DSStateManagerConfig.max_ragged_sequence_count = 512"),
        "enable_chunked_prefill": Knob(True, "mii/batching/ragged_batching.py (MII v0.3.x): Dynamic SplitFuse"),
        "policy": Knob("splitfuse", "mii/batching/ragged_batching.py: decodes first, prompt chunks fill the rest"),
        "gpu_memory_utilization": Knob(
            round(1 - reserve / memory, 3), f"{where} MemoryConfig mode='reserve', size=1e9 bytes"
        ),
        "block_size": Knob(128, f"{where} KVCacheConfig.block_size = 128"),
        "enable_prefix_caching": Knob(False, "FastGen (MII v0.3.x) has no prefix cache"),
    }


def _tgi(memory: float, name: str, cpu: bool, tp: int) -> dict[str, Knob]:
    where = "launcher/src/main.rs (TGI v3.x)"
    return {
        "max_num_batched_tokens": Knob(4096, f"{where} max_batch_prefill_tokens: 4096 when chunking (v3 default)"),
        "max_num_seqs": Knob(128, f"{where} Args.max_concurrent_requests default_value = 128"),
        "enable_chunked_prefill": Knob(True, f"{where} prefill chunking on by default for flashinfer/flashattention"),
        "policy": Knob("prefill_first", "backends/v3/src/backend.rs: a prefill batch, then decodes of the running one"),
        "gpu_memory_utilization": Knob(1.0, f"{where} Args.cuda_memory_fraction default_value = 1.0"),
        # TGI v3 pages by 1 token (flashinfer); 16-token blocks keep the simulated pool small and
        # change only the rounding of each request's last block
        "block_size": Knob(16, "server/text_generation_server/models/globals.py BLOCK_SIZE (16 without flashinfer)"),
        "enable_prefix_caching": Knob(True, f"{where} prefix caching on by default (v3)"),
    }


def _sglang(memory: float, name: str, cpu: bool, tp: int) -> dict[str, Knob]:
    where = "python/sglang/srt/server_args.py ServerArgs.__post_init__ (v0.4.x)"
    mib = memory / 2**20
    budget = 2048 if mib < 35 * 1024 else 8192 if mib < 160 * 1024 else 16384
    fraction = 0.81 if tp >= 8 else 0.85 if tp >= 4 else 0.87 if tp >= 2 else 0.88
    return {
        "max_num_batched_tokens": Knob(budget, f"{where} chunked_prefill_size by GPU memory (<35G 2k, <160G 8k)"),
        "max_num_seqs": Knob(2048, f"{where} max_running_requests: bounded by the pool, at most 2048 here"),
        "enable_chunked_prefill": Knob(True, f"{where} chunked_prefill_size set: prompts are chunked"),
        "policy": Knob("prefill_first", "python/sglang/srt/managers/scheduler.py: new prefill batches before decode"),
        "gpu_memory_utilization": Knob(fraction, f"{where} mem_fraction_static by tp_size (0.88 at tp=1)"),
        # SGLang pages by 1 token (page_size=1); 16-token blocks only change last-block rounding
        "block_size": Knob(16, f"{where} page_size = 1, simulated with 16-token blocks"),
        "enable_prefix_caching": Knob(True, "RadixAttention prefix cache on by default"),
    }


def given_settings(config: EngineConfig) -> set[str]:
    """The settings the user gave: as recorded by `launch`, else (a config built by hand) those that
    differ from the default and from the simulator's own fill-ins for the ones left None."""
    if config.given() is not None:
        return set(config.given())
    filled = ENGINE_DEFAULTS["sim"]
    return {k for k, v in config.changed().items() if not (k in filled and v == filled[k])}


def apply(config: EngineConfig, like: str, hw: Hardware | None, tp: int = 1) -> EngineConfig:
    """`config` with the knobs of `like` filled in where the user left the default."""
    given = given_settings(config)
    knobs = preset(like, hw, tp)
    return replace(config, **{k: knob.value for k, knob in knobs.items() if k not in given})


def about(like: str, gpu: str | None = "H100", tp: int = 1) -> str:
    """The values `like` sets on `gpu`, each with its source, as text (also printed)."""
    from llmlab.plan.hardware import get_hardware

    hw = get_hardware(gpu) if gpu is not None else None
    lines = [f"like={like!r}: {VERSIONS.get(like, like)} on {getattr(hw, 'name', 'an 80 GB GPU')}, tp={tp}"]
    for name, knob in preset(like, hw, tp).items():
        lines.append(f"  {name} = {knob.value!r}    # {knob.source}")
    text = "\n".join(lines)
    print(text)
    return text
