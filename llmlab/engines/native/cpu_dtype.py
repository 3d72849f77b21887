"""The default compute dtype on a CPU, chosen by measuring, not by the CPU's flags alone.

bfloat16 halves the bytes of weights and KV, but it is only worth it where the CPU computes it
fast: emulated on AVX2-only CPUs it is several times slower than float32, and even on CPUs with
AVX-512 BF16 the native engine's linears ran no faster in bfloat16 on some machines and were
erratic on others. So on a CPU that claims native bfloat16, the first launch times the same
decode-shaped linears in both dtypes and keeps bfloat16 only when it is clearly faster. The
answer is cached per CPU, thread count and torch version in `<llmlab home>/cpu_dtype.json`.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16")
MIN_SPEEDUP = 1.15  # bfloat16 must beat float32 by this much: a tie goes to the exact dtype
CACHE_NAME = "cpu_dtype.json"
# the engine's CPU speed path the cached answers were measured on: bump it when that path changes
# (packed linears, decode kernels), so an answer measured on an older path is measured again
PROBE_VERSION = 2


@dataclass
class DtypeChoice:
    """What the CPU default is and why: `reason` is one line for `llmlab info` and the engine's info."""

    dtype: str  # "float32" or "bfloat16"
    reason: str
    float32_ms: float | None = None  # the probe's time for one round of linears, where it ran
    bfloat16_ms: float | None = None


def native_bf16_flag() -> str | None:
    """The /proc/cpuinfo flag that says this CPU computes bfloat16 natively, or None."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return next((f for f in BF16_FLAGS if f in flags), None)


def _cpu_key() -> str:
    """Which machine a cached answer belongs to: CPU model, flag, threads and torch version."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    threads, version = torch.get_num_threads(), torch.__version__
    return f"{model}|{native_bf16_flag()}|threads={threads}|torch={version}|probe={PROBE_VERSION}"


# the embedded SmolLM2-135M's shape, two decoder layers of it: what a first notebook runs
PROBE_CONFIG = {
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "num_hidden_layers": 2,
    "vocab_size": 49152,
    "tie_word_embeddings": True,
    "rms_norm_eps": 1e-5,
}


def _decode_step(dtype: torch.dtype, batch: int = 32, context: int = 128, block_size: int = 16):
    """A callable running one decode step of `batch` requests at `context` tokens through the
    native engine's own model code (random weights, linears packed as the loader packs them, the
    decode kernel the runner picks), so the probe times what the engine will run: linears, norms,
    paged attention, LM head."""
    from llmlab.engines.native.attention import AttentionMetadata
    from llmlab.engines.native.decode_kernels import decode_kernel
    from llmlab.engines.native.kv_cache import LayerKV
    from llmlab.engines.native.llama import LlamaModel

    cfg = PROBE_CONFIG
    torch.manual_seed(0)
    model = LlamaModel(cfg)
    model.embed_tokens.weight.data.normal_(0, 0.02)
    model = model.to(dtype).eval()
    model.pack_for_cpu()
    head_dim = cfg["hidden_size"] // cfg["num_attention_heads"]
    blocks = context // block_size
    kv = [
        LayerKV("auto", batch * blocks, block_size, cfg["num_key_value_heads"], head_dim, dtype, torch.device("cpu"))
        for _ in range(cfg["num_hidden_layers"])
    ]
    tables = torch.arange(batch * blocks).view(batch, blocks)
    meta = AttentionMetadata(
        slot_mapping=tables[:, -1] * block_size + block_size - 1,
        num_decodes=batch,
        decode_block_tables=tables,
        decode_mask=torch.zeros(batch, 1, 1, context, dtype=dtype),
        decode_kernel=decode_kernel(dtype, torch.device("cpu"), cfg["num_key_value_heads"]),
    )
    ids = torch.randint(0, cfg["vocab_size"], (batch,))
    cos = torch.ones(batch, head_dim, dtype=dtype)
    sin = torch.zeros(batch, head_dim, dtype=dtype)

    def step() -> None:
        model.logits(model(ids, cos, sin, kv, meta))

    return step


def _seconds(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def measure(rounds: int = 5) -> DtypeChoice:
    """Time a decode step in both dtypes, alternating round by round so that a busy moment hits
    both, and choose by the median of the paired ratios (a second or two on a 2-core machine)."""
    with torch.inference_mode():
        f32, bf16 = _decode_step(torch.float32), _decode_step(torch.bfloat16)
        f32(), bf16()  # warm-up: the first calls create the kernels
        pairs = [(_seconds(f32), _seconds(bf16)) for _ in range(rounds)]
    speedup = statistics.median(a / b for a, b in pairs)
    ms = {
        "float32_ms": round(statistics.median(a for a, _ in pairs) * 1e3, 3),
        "bfloat16_ms": round(statistics.median(b for _, b in pairs) * 1e3, 3),
    }
    if speedup >= MIN_SPEEDUP:
        return DtypeChoice("bfloat16", f"a bfloat16 decode step measured {speedup:.2f}x as fast as float32 here", **ms)
    return DtypeChoice(
        "float32",
        f"a bfloat16 decode step measured {speedup:.2f}x as fast as float32 here (under {MIN_SPEEDUP}x): float32",
        **ms,
    )


def choose(cache_dir: Path | None = None) -> DtypeChoice:
    """The CPU default: float32 unless the CPU claims native bfloat16 and a probe (cached) finds it faster.

    `LLMLAB_CPU_DTYPE=float32` or `bfloat16` skips the probe, e.g. to run what another kind of
    machine would run.
    """
    forced = os.environ.get("LLMLAB_CPU_DTYPE")
    if forced:
        if forced not in ("float32", "bfloat16"):
            raise ValueError(f"LLMLAB_CPU_DTYPE={forced!r} is unknown: set it to 'float32' or 'bfloat16', or unset it")
        return DtypeChoice(forced, "set by LLMLAB_CPU_DTYPE")
    flag = native_bf16_flag()
    if flag is None:
        return DtypeChoice("float32", "no native bfloat16 on this CPU (no avx512_bf16 or amx_bf16): float32")
    if cache_dir is None:
        from llmlab.paths import home

        cache_dir = home()
    path, key = cache_dir / CACHE_NAME, _cpu_key()
    try:
        cached = json.loads(path.read_text())
        if isinstance(cached, dict) and isinstance(cached.get(key), dict):
            return DtypeChoice(**cached[key])
    except (OSError, ValueError, TypeError):
        cached = {}
    choice = measure()
    try:
        entries = cached if isinstance(cached, dict) else {}
        entries[key] = asdict(choice)
        path.write_text(json.dumps(entries, indent=1))
    except OSError:  # a read-only home: measure again next time
        pass
    return choice
