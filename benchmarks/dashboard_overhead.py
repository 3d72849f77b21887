"""Engine throughput with a live dashboard attached vs without, alternated in one process.

The dashboard redraws from its own thread at most `max_fps` times a second; this measures what
that costs the engine (output tokens/s, median of the repeats).

    python benchmarks/dashboard_overhead.py
"""

from __future__ import annotations

import argparse
import statistics

import llmlab


def throughput(eng, wl, dashboard: bool, fps: float) -> float:
    eng.reset_prefix_cache()
    run = eng.run(wl, live=True)
    view = run.show(max_fps=fps) if dashboard else None
    run.wait()
    if view is not None:
        view.redraw()  # the last frame, as a notebook would show it
    return float(run.summary()["output_tok_s"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--fps", type=float, default=2.0)
    args = p.parse_args()
    eng = llmlab.launch("native", device="cpu", max_num_seqs=args.n)
    wl = llmlab.workloads.poisson(rate=8.0, n=args.n, prompt_len=(32, 160), output_len=args.max_tokens, seed=0)
    # warm up the engine, and the dashboard once: the first dashboard in a process loads plotly's
    # validators (about 4 s here), a once-per-kernel cost that is not per run
    eng.run(llmlab.workloads.synthetic(4, prompt_len=16, output_len=4, seed=1)).show()
    with_view, without = [], []
    for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
        with_view.append(throughput(eng, wl, True, args.fps))
        without.append(throughput(eng, wl, False, args.fps))
    a, b = statistics.median(with_view), statistics.median(without)
    print(f"{args.n} requests x {args.max_tokens} tokens, live, {args.repeats} alternating repeats, {args.fps:g} fps")
    print(f"with dashboard   : {a:8.1f} output tok/s   {[round(x, 1) for x in with_view]}")
    print(f"without dashboard: {b:8.1f} output tok/s   {[round(x, 1) for x in without]}")
    print(f"with / without   : {a / b:.3f}")
    eng.close()


if __name__ == "__main__":
    main()
