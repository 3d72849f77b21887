"""Cost of capturing KV block owners in every step's trace: the same run with owner snapshots on
and off, alternated in one process, printing output tokens/s and the ratio.

    python benchmarks/trace_overhead.py
"""

from __future__ import annotations

import argparse
import statistics

import llmlab


def throughput(eng, wl) -> float:
    eng.reset_prefix_cache()
    run = eng.run(wl)
    return float(run.summary()["output_tok_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    eng = llmlab.launch("native", device="cpu", max_num_seqs=args.n, block_size=16)
    wl = llmlab.workloads.synthetic(args.n, prompt_len=(64, 192), output_len=args.max_tokens, seed=0)
    eng.run(llmlab.workloads.synthetic(4, prompt_len=16, output_len=4, seed=1))  # warm up
    on, off = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        eng.trace_kv_owners = True
        on.append(throughput(eng, wl))
        eng.trace_kv_owners = False
        off.append(throughput(eng, wl))
    m_on, m_off = statistics.median(on), statistics.median(off)
    print(f"{args.n} requests x {args.max_tokens} tokens, {args.repeats} alternating repeats, median output tok/s")
    print(f"owners on : {m_on:8.1f}   {[round(x, 1) for x in on]}")
    print(f"owners off: {m_off:8.1f}   {[round(x, 1) for x in off]}")
    print(f"on / off  : {m_on / m_off:.3f}  (overhead {100 * (1 - m_on / m_off):+.1f}%)")
    eng.close()


if __name__ == "__main__":
    main()
