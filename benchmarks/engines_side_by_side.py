"""Native, vLLM and DeepSpeed-MII on one workload in one process: output tokens/s, TTFT and ITL
p50 (every step traced by llmlab), and the cost of tracing MII: `eng.run(wl)` against MII's own
`generate()` loop driven as `MIIPipeline.__call__` drives it, with no llmlab record, alternated.

The machine is shared and small: numbers move by 10% or more between runs; compare ratios
measured in the same run only.

    python benchmarks/engines_side_by_side.py                     # 16 prompts x 32 tokens, float32
    python benchmarks/engines_side_by_side.py --n 32 --max-tokens 64 --repeats 5 --skip vllm
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time

import llmlab
from llmlab.workloads import prompt_token_ids


def workload(n: int, max_tokens: int, seed: int = 0):
    return llmlab.workloads.synthetic(n, prompt_len=(64, 192), output_len=max_tokens, seed=seed, ignore_eos=True)


def measure(eng, wl) -> dict[str, float]:
    t = time.perf_counter()
    run = eng.run(wl)
    elapsed = time.perf_counter() - t
    assert run.error is None, run.error
    itl = run.trace.itl.itl
    return {
        "tok/s": int(run.requests.output_tokens.sum()) / elapsed,
        "ttft_p50_ms": 1000 * float(run.requests.ttft.median()),
        "itl_p50_ms": 1000 * float(itl.median()) if len(itl) else float("nan"),
        "steps": len(run.trace.step_records),
    }


def mii_plain(eng, wl) -> float:
    """MII's loop with nothing of llmlab's per step: requests in, `generate()` until every response is out."""
    core = eng.core
    pipe = core.pipe
    tid = pipe.tid
    prompts = [prompt_token_ids(item, core.tokenizer) for item in wl]
    import torch

    for i, ids in enumerate(prompts):
        kwargs = {
            "max_new_tokens": wl[0].max_tokens,
            "max_length": core.max_len,
            "ignore_eos": True,
            "do_sample": False,
        }
        pipe.request_queue.put(pipe.make_request(tid, 10_000_000 + i, torch.tensor(ids), kwargs))
    t = time.perf_counter()
    left, tokens = len(prompts), 0
    while left:
        q = pipe.result_queues[tid]
        while not q.empty():
            uid, out, *_ = q.get_nowait()
            tokens += len(out)
            left -= 1
            pipe._queue_flush_request(uid)
        pipe.generate()
    pipe._bcast_requests(force=True)
    pipe.flush(pipe.scheduled_requests.requests_to_flush.uids)
    elapsed = time.perf_counter() - t
    from mii.batching.data_classes import RequestBatch

    pipe.scheduled_requests = RequestBatch()
    return tokens / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--skip", nargs="*", default=[], help="engines to leave out: native, vllm, mii")
    args = p.parse_args()
    wl = workload(args.n, args.max_tokens)
    knobs = {"dtype": args.dtype, "block_size": 32, "max_num_seqs": args.n, "max_num_batched_tokens": 256}
    engines = [e for e in ("native", "vllm", "mii") if e not in args.skip]
    if "vllm" in engines and importlib.util.find_spec("vllm") is None:
        engines.remove("vllm")
    if "mii" in engines and importlib.util.find_spec("mii") is None:
        engines.remove("mii")
    print(f"{args.n} requests x {args.max_tokens} tokens, prompts 64-192 tokens, {args.dtype}, {knobs}")
    print(f"{'engine':8s} {'tok/s':>8s} {'TTFT p50 ms':>12s} {'ITL p50 ms':>11s} {'steps':>6s}")
    for name in engines:
        extra = {"max_model_len": 1024} if name == "vllm" else {}
        eng = llmlab.launch(name, **knobs, **extra)
        try:
            eng.run(workload(2, 4, seed=1))  # warm up
            r = measure(eng, wl)
            print(f"{name:8s} {r['tok/s']:8.1f} {r['ttft_p50_ms']:12.1f} {r['itl_p50_ms']:11.1f} {r['steps']:6d}")
            if name == "mii":
                traced, plain = [], []
                for _ in range(args.repeats):  # alternate, so drift in machine load hits both alike
                    traced.append(measure(eng, wl)["tok/s"])
                    plain.append(mii_plain(eng, wl))
                a, b = statistics.median(traced), statistics.median(plain)
                print(f"MII traced by llmlab: {a:8.1f} tok/s  {[round(x, 1) for x in traced]}")
                print(f"MII's own loop      : {b:8.1f} tok/s  {[round(x, 1) for x in plain]}")
                print(f"traced / plain      : {a / b:.3f}  (overhead {100 * (1 - a / b):+.1f}%)")
        finally:
            eng.close()


if __name__ == "__main__":
    main()
