"""How close the native engine's decode step comes to the CPU's memory-bandwidth bound.

A decode step at batch 32 reads every weight once and every running request's KV once; on a CPU
that read, not arithmetic, sets the step's floor. This script measures, in one run:

- the machine's achievable memory bandwidth: a large tensor copy, counted as bytes read plus
  bytes written (STREAM's "copy" convention), best of several;
- per dtype, the machine's achievable arithmetic rate: a large square matmul, best of several;
- per dtype, the native engine's decode step at batch 32 (median over the timed steps, and the
  slowest), the bytes it must read (weights + KV at each step's context) and the arithmetic it
  must do (2 x weights x batch, plus attention), and so the ratio measured / bandwidth bound
  (goal: at most 1.5) and measured / roofline, where the roofline is the larger of the
  bandwidth time and the arithmetic time (on a few cores, batch 32 is bound by arithmetic);
- the decode attention alone, the reference (SDPA) against the kernel the engine picks, on the
  step's own shapes;
- the step's linears alone at batch 32, plain `nn.Linear` (`aten::mm`) against `PackedLinear`.

    python benchmarks/cpu_roofline.py                       # float32 and (where native) bfloat16
    python benchmarks/cpu_roofline.py --dtype float32 --steps 200 --prompt 128
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time

import torch

import llmlab
from llmlab.core.request import SamplingParams
from llmlab.engines.native.attention import reference_decode
from llmlab.engines.native.cpu_dtype import native_bf16_flag
from llmlab.engines.native.cpu_linear import PackedLinear, can_pack
from llmlab.engines.native.decode_kernels import decode_kernel


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes per second moved by a large copy (read + write), best of `repeats`."""
    src = torch.ones(mib * 2**20 // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page first
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """Floating-point operations per second of a large square matmul in `dtype`, best of `repeats`."""
    a = torch.randn(n, n).to(dtype)
    b = torch.randn(n, n).to(dtype)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * n**3 / best


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_flops(model: torch.nn.Module, batch: int, context: int) -> float:
    """Arithmetic of one decode step: every weight multiplies each of the `batch` rows (2 flops a
    weight), and attention takes 4 flops per head dimension per context token per query head."""
    embed = model.embed_tokens.weight
    weights = sum(p.numel() for p in model.parameters() if p is not embed)
    if model.lm_head.weight is embed:
        weights += embed.numel()
    attn = model.layers[0].self_attn
    return 2 * weights * batch + 4 * len(model.layers) * attn.num_heads * attn.head_dim * context


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every weight a decode step reads: all parameters except the embedding table,
    whose few looked-up rows are negligible, unless the LM head reads it (tied)."""
    embed = model.embed_tokens.weight
    tied = model.lm_head.weight is embed
    total = sum(p.numel() * p.element_size() for p in model.parameters() if p is not embed)
    return total + (embed.numel() * embed.element_size() if tied else 0)


def decode_steps(dtype: str, batch: int, prompt: int, steps: int, seed: int = 0):
    """Per-step seconds and bytes read for `steps` decode steps of `batch` requests."""
    eng = llmlab.launch("native", device="cpu", dtype=dtype, max_num_seqs=batch, max_num_batched_tokens=8192)
    core = eng.core
    runner = core.runner
    rng = random.Random(seed)
    for i in range(batch):
        ids = [rng.randrange(1000, 20000) for _ in range(prompt)]
        core.add_request(f"r{i}", ids, SamplingParams(max_tokens=steps + 8, ignore_eos=True))
    while core.scheduler.waiting or any(r.in_prefill for r in core.scheduler.running):
        core.step()  # the prompts
    for _ in range(3):  # warm-up decode steps
        core.step()
    kv_token = runner.kv_bytes_per_block(runner.cfg, runner.block_size, runner.dtype) / runner.block_size
    weights = weight_bytes(runner.model)
    times, nbytes, flops = [], [], []
    for _ in range(steps):
        context = sum(r.num_computed_tokens + 1 for r in core.scheduler.running)
        times.append(_timed(core.step))
        nbytes.append(weights + context * kv_token)
        flops.append(step_flops(runner.model, batch, context))
    shapes = _attention_shapes(runner, core, batch)
    eng.close()
    return times, nbytes, flops, weights, shapes


def _attention_shapes(runner, core, batch: int) -> dict:
    attn = runner.model.layers[0].self_attn
    context = max(r.num_computed_tokens for r in core.scheduler.running)
    return {
        "batch": batch,
        "cfg": runner.cfg,
        "heads": attn.num_heads,
        "kv_heads": attn.num_kv_heads,
        "dim": attn.head_dim,
        "ctx": context,
    }


def attention_times(dtype: torch.dtype, shapes: dict, repeats: int = 20) -> dict[str, float]:
    """Milliseconds per layer of the reference decode attention and of the engine's kernel."""
    b, h, kvh, d, ctx = (shapes[k] for k in ("batch", "heads", "kv_heads", "dim", "ctx"))
    q = torch.randn(b, h, d, dtype=dtype)
    k = torch.randn(b, ctx, kvh, d, dtype=dtype)
    v = torch.randn_like(k)
    mask = torch.zeros(b, 1, 1, ctx, dtype=dtype)
    kernels = {"reference (SDPA)": reference_decode}
    fast = decode_kernel(dtype, torch.device("cpu"), kvh)
    if fast is not None:
        kernels[type(fast).__name__] = fast
    out = {}
    for name, fn in kernels.items():
        fn(q, k, v, mask, d**-0.5)
        out[name] = 1e3 * statistics.median(_timed(lambda fn=fn: fn(q, k, v, mask, d**-0.5)) for _ in range(repeats))
    return out


def linear_times(dtype: torch.dtype, cfg: dict, batch: int, repeats: int = 10) -> dict[str, float]:
    """Milliseconds for one decode step's linears (every layer's, and the LM head) at `batch` rows,
    as plain `nn.Linear` and as `PackedLinear`, on the model's own shapes with random weights."""
    hidden, inter = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv_heads = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    dim = hidden // heads
    shapes = [(hidden, (heads + 2 * kv_heads) * dim), (heads * dim, hidden), (hidden, 2 * inter), (inter, hidden)]
    layers = cfg["num_hidden_layers"]
    out = {"nn.Linear": 0.0}
    if can_pack(torch.empty(0, dtype=dtype)):
        out["PackedLinear"] = 0.0
    for n_in, n_out, count in [(i, o, layers) for i, o in shapes] + [(hidden, cfg["vocab_size"], 1)]:
        plain = torch.nn.Linear(n_in, n_out, bias=False).to(dtype)
        x = torch.randn(batch, n_in).to(dtype)
        kinds = {"nn.Linear": plain}
        if "PackedLinear" in out:
            kinds["PackedLinear"] = PackedLinear(plain)
        for name, module in kinds.items():
            module(x)
            out[name] += count * 1e3 * statistics.median(_timed(lambda m=module, x=x: m(x)) for _ in range(repeats))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", action="append", help="float32 and/or bfloat16 (default: both where native)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens per request")
    p.add_argument("--steps", type=int, default=64, help="timed decode steps")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = args.dtype or (["float32", "bfloat16"] if native_bf16_flag() else ["float32"])
    policy = os.environ.get("OMP_WAIT_POLICY", "OpenMP's default")
    print(f"CPU bfloat16 flag: {native_bf16_flag() or 'none'}; {args.threads} threads; wait policy: {policy}")
    bw = copy_bandwidth()
    print(f"memory bandwidth (copy, read + write): {bw / 1e9:.1f} GB/s")
    for dtype in dtypes:
        times, nbytes, flops, weights, shapes = decode_steps(dtype, args.batch, args.prompt, args.steps)
        rate = matmul_flops(getattr(torch, dtype))
        bound = statistics.median(n / bw for n in nbytes)
        compute = statistics.median(f / rate for f in flops)
        med = statistics.median(times)
        print(
            f"{dtype}: decode step at batch {args.batch}: median {med * 1e3:.1f} ms, slowest {max(times) * 1e3:.1f} ms "
            f"({max(times) / med:.2f}x the median) over {len(times)} steps"
        )
        print(
            f"  reads {statistics.median(nbytes) / 1e6:.0f} MB a step ({weights / 1e6:.0f} MB weights + KV): "
            f"bandwidth bound {bound * 1e3:.1f} ms; measured / bandwidth bound = {med / bound:.2f} (goal <= 1.5); "
            f"achieved {statistics.median(nbytes) / med / 1e9:.1f} GB/s"
        )
        print(
            f"  computes {statistics.median(flops) / 1e9:.1f} GFLOP a step; a {dtype} matmul runs "
            f"{rate / 1e9:.0f} GFLOP/s here: arithmetic bound {compute * 1e3:.1f} ms; "
            "measured / roofline (the larger bound) = "
            f"{med / max(bound, compute):.2f}"
        )
        att = attention_times(getattr(torch, dtype), shapes)
        print("  decode attention per layer: " + ", ".join(f"{k} {v:.2f} ms" for k, v in att.items()))
        lin = linear_times(getattr(torch, dtype), shapes["cfg"], args.batch)
        print("  one step's linears alone: " + ", ".join(f"{k} {v:.1f} ms" for k, v in lin.items()))


if __name__ == "__main__":
    main()
