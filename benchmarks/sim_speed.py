"""How fast the simulator predicts a long trace: the Azure conversation trace (first N requests)
on Llama-3.1-8B, one H100, bf16, timed in phases, against the 3-second target for 10,000 requests.

    python benchmarks/sim_speed.py            # 10,000 requests
    python benchmarks/sim_speed.py --n 1000   # a quicker look
"""

from __future__ import annotations

import argparse
import time

import llmlab

TARGET_S = 3.0
TARGET_N = 10_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=TARGET_N)
    p.add_argument("--model", default="llama-3.1-8b")
    p.add_argument("--gpu", default="H100-SXM")
    p.add_argument("--owners", action="store_true", help="record KV block owners every step")
    args = p.parse_args()

    t0 = time.perf_counter()
    wl = llmlab.workloads.from_trace("azure_conv", n=args.n)
    t1 = time.perf_counter()
    eng = llmlab.launch(
        "sim",
        model=args.model,
        gpu=args.gpu,
        max_model_len=16384,
        max_num_seqs=256,
        max_num_batched_tokens=2048,
        trace_kv_owners=args.owners,
    )
    t2 = time.perf_counter()
    run = eng.run(wl)
    t3 = time.perf_counter()
    if run.error is not None:
        raise run.error
    s = run.summary()
    total = t3 - t0
    print(f"azure_conv, {args.n} requests, {args.model} on {args.gpu}: {len(run.steps):,} steps simulated")
    print(f"  workload {t1 - t0:6.2f} s   launch {t2 - t1:6.2f} s   run {t3 - t2:6.2f} s   total {total:6.2f} s")
    print(f"  {args.n / total:,.0f} requests/s, {len(run.steps) / (t3 - t2):,.0f} steps/s")
    print(
        f"  predicted: {s['duration_s']:,.0f} simulated s, {s['output_tok_s']:,.0f} output tok/s, "
        f"TTFT p50 {s['ttft_p50'] * 1e3:.1f} ms, ITL p50 {s['itl_p50'] * 1e3:.2f} ms"
    )
    scaled = total * TARGET_N / args.n
    ratio = scaled / TARGET_S
    print(f"  target: {TARGET_N:,} requests in {TARGET_S:.0f} s; at this pace {scaled:.1f} s = {ratio:.1f}x the target")


if __name__ == "__main__":
    main()
