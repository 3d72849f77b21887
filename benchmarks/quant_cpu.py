"""Output tokens per second of the native engine for each weight format and KV dtype, against
bf16 and fp32 weights, on the same workload, measured in one process (one engine at a time).

Weight-only quantization stores int8 / int4 / fp8 and expands each layer to the compute dtype
on every step; on a CPU that extra pass over the weights usually costs more than the smaller
reads save, so expect ratios below 1 there. The memory column is what each choice buys.

    python benchmarks/quant_cpu.py                       # 16 prompts x 64 tokens
    python benchmarks/quant_cpu.py --n 32 --max-tokens 128 --device cuda
"""

from __future__ import annotations

import argparse
import time

import llmlab

CHOICES = [
    ("fp32", "auto"),
    ("bf16", "auto"),
    ("int8", "auto"),
    ("int4", "auto"),
    ("fp8", "auto"),
    ("fp32", "fp8"),
    ("fp32", "int8"),
    ("int8", "fp8"),
]


def workload(n: int, max_tokens: int, seed: int = 0):
    return llmlab.workloads.synthetic(n, prompt_len=(64, 192), output_len=max_tokens, seed=seed, ignore_eos=True)


def bench(weights: str, kv_dtype: str, n: int, max_tokens: int, device: str, repeats: int) -> dict:
    """Best of `repeats` runs of the workload (the machine may be shared), plus memory()."""
    eng = llmlab.launch(
        "native",
        device=device,
        weights=weights,
        kv_dtype=kv_dtype,
        kv_cache_memory=128 * 2**20,
        max_num_seqs=n,
        max_num_batched_tokens=2048,
    )
    eng.run(workload(4, 8, seed=1))  # warm up
    best = 0.0
    for _ in range(repeats):
        eng.reset_prefix_cache()
        t = time.perf_counter()
        run = eng.run(workload(n, max_tokens))
        elapsed = time.perf_counter() - t
        best = max(best, int(run.requests.output_tokens.sum()) / elapsed)
    mem = eng.memory()
    eng.close()
    return {"tok_s": best, "weight_mb": mem["weight_bytes"] / 2**20, "linear_mb": mem["linear_bytes"] / 2**20,
            "kv_tokens": mem["kv_tokens"], "dtype": eng.info.dtype}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="requests in the workload")
    parser.add_argument("--max-tokens", type=int, default=64, help="output tokens per request (EOS ignored)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="weights:kv_dtype pairs, e.g. int8:auto fp32:fp8")
    args = parser.parse_args()
    choices = [tuple(c.split(":")) for c in args.only] if args.only else CHOICES
    results = {}
    for weights, kv in choices:
        results[(weights, kv)] = bench(weights, kv, args.n, args.max_tokens, args.device, args.repeats)
        r = results[(weights, kv)]
        print(f"measured weights={weights:5s} kv_dtype={kv:5s}: {r['tok_s']:8.1f} tok/s", flush=True)
    bf16 = results.get(("bf16", "auto"), {}).get("tok_s")
    fp32 = results.get(("fp32", "auto"), {}).get("tok_s")
    print(f"\n{args.n} requests x {args.max_tokens} output tokens on {args.device}, best of {args.repeats}")
    print(f"{'weights':8s} {'kv':5s} {'compute':9s} {'tok/s':>8s} {'vs bf16':>8s} {'vs fp32':>8s} "
          f"{'weights MB':>11s} {'linears MB':>11s} {'KV tokens':>10s}")  # fmt: skip
    for (weights, kv), r in results.items():
        vs16 = f"{r['tok_s'] / bf16:8.2f}" if bf16 else f"{'-':>8s}"
        vs32 = f"{r['tok_s'] / fp32:8.2f}" if fp32 else f"{'-':>8s}"
        print(f"{weights:8s} {kv:5s} {r['dtype']:9s} {r['tok_s']:8.1f} {vs16} {vs32} "
              f"{r['weight_mb']:11.1f} {r['linear_mb']:11.1f} {r['kv_tokens']:10d}")  # fmt: skip


if __name__ == "__main__":
    main()
