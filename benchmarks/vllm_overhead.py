"""Cost of llmlab's per-step capture on vLLM: output tokens/s of `eng.run(wl)` (every step read
from vLLM's scheduler into the trace) against plain `LLM.generate` on the same engine and
workload with the hooks removed, alternated in one process.

    python benchmarks/vllm_overhead.py                  # 32 prompts x 64 tokens, float32
    python benchmarks/vllm_overhead.py --n 64 --max-tokens 128 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import llmlab
from llmlab.workloads import prompt_token_ids


def traced(eng, wl) -> float:
    eng.reset_prefix_cache()
    eng._install_hooks()
    t = time.perf_counter()
    run = eng.run(wl)
    elapsed = time.perf_counter() - t
    return int(run.requests.output_tokens.sum()) / elapsed


def plain(eng, wl) -> float:
    from vllm import SamplingParams

    eng.reset_prefix_cache()
    eng._remove_hooks()
    prompts = [{"prompt_token_ids": prompt_token_ids(item, eng.tokenizer)} for item in wl]
    params = SamplingParams(max_tokens=wl[0].max_tokens, ignore_eos=True, temperature=0.0)
    t = time.perf_counter()
    outs = eng.llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - t
    return sum(len(o.outputs[0].token_ids) for o in outs) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    args = p.parse_args()
    eng = llmlab.launch("vllm", dtype=args.dtype, block_size=32, max_model_len=1024, max_num_seqs=args.n)
    wl = llmlab.workloads.synthetic(args.n, prompt_len=(64, 192), output_len=args.max_tokens, seed=0)
    plain(eng, llmlab.workloads.synthetic(4, prompt_len=16, output_len=4, seed=1))  # warm up
    with_trace, without = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        with_trace.append(traced(eng, wl))
        without.append(plain(eng, wl))
    a, b = statistics.median(with_trace), statistics.median(without)
    print(f"vLLM {eng.info.version}, {args.n} requests x {args.max_tokens} tokens, {args.dtype}, median output tok/s")
    print(f"llmlab trace  : {a:8.1f}   {[round(x, 1) for x in with_trace]}")
    print(f"LLM.generate  : {b:8.1f}   {[round(x, 1) for x in without]}")
    print(f"traced / plain: {a / b:.3f}  (overhead {100 * (1 - a / b):+.1f}%)")
    eng.close()


if __name__ == "__main__":
    main()
