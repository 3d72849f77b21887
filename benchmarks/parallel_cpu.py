"""tp=1 against tp=2 and pp=2 of the native engine on one workload, on this CPU: throughput, the
step split into compute and communication (measured on every rank), and the cost model's
prediction of the same split next to it.

On a machine with few cores the parallel layouts split the same cores between processes and add
all-reduces (tp) or hand-offs and a bubble (pp), so expect them to be slower here: the point is to
watch where the time goes, not to win. On GPUs with NVLink the same bytes cost far less.

    python benchmarks/parallel_cpu.py                 # 8 prompts x 32 tokens, float32
    python benchmarks/parallel_cpu.py --n 16 --max-tokens 64
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import llmlab
from llmlab.engines.native.parallel.shard import Shard
from llmlab.plan.cost import CostModel, parallel_step_bytes, slots_for
from llmlab.plan.hardware import local_cpu

LAYOUTS = [{"tp": 1, "pp": 1}, {"tp": 2, "pp": 1}, {"tp": 1, "pp": 2}]


def predicted(model_path: str, tp: int, pp: int, batch: int, context: int) -> dict[str, float]:
    """A decode step on this CPU by the cost model: its one-process step time (roofline on the
    measured CPU), shared out to the ranks (each has 1/world of the cores and computes its largest
    shard's part), plus the communication the bytes predict over shared memory (the CPU's copy
    bandwidth) with the model's fixed latency per collective or hop. The planner's own tp grid takes
    only even head splits, so SmolLM2's 6 / 3 split at tp=2 is costed here from the shard."""
    cpu = local_cpu()
    model = CostModel(model_path, cpu, weights="fp32", kv_dtype="fp32")
    parts = model.breakdown(slots_for("decode", 1, context, batch))
    work = sum(v for k, v in parts.items() if k != "overhead")
    world = tp * pp
    cfg = json.loads((Path(model_path) / "config.json").read_text())
    hop = parallel_step_bytes(model_path, [batch], 2, 1)[0]["allreduce_bytes"] / (2 * cfg["num_hidden_layers"])
    latency = model.efficiency.comm_latency_s
    if tp > 1:
        shard = Shard.of(cfg, tp, pp, 0)
        h, inter, heads = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
        attn = h * h * (2 + 2 * cfg["num_key_value_heads"] / heads)
        share = (attn * (shard.heads[1] - shard.heads[0]) / heads + 3 * h * (shard.inter[1] - shard.inter[0])) / (
            attn + 3 * h * inter
        )
        compute = work * share * world
        comm = 2 * cfg["num_hidden_layers"] * (hop * 2 * (tp - 1) / tp / cpu.bandwidth + latency)
    else:
        m = min(pp, batch)
        stage = work / pp / m * world  # one micro-batch through one stage
        compute = stage * (m + pp - 1)  # the last micro-batch leaves the last stage after pp - 1 extra slots
        comm = (pp - 1) * m * (hop / m / cpu.bandwidth + latency)
    total = compute + comm + parts["overhead"]
    return {"step_ms": total * 1e3, "comm_share": comm / (compute + comm)}


def bench(layout: dict, n: int, max_tokens: int) -> dict:
    engine = llmlab.launch("native", dtype="fp32", **layout)
    try:
        engine.run(llmlab.workloads.synthetic(2, prompt_len=16, output_len=4, seed=1))  # warm up
        work = llmlab.workloads.synthetic(n, prompt_len=(32, 64), output_len=max_tokens, seed=0)
        t0 = time.perf_counter()
        run = engine.run(work)
        wall = time.perf_counter() - t0
        assert run.status == "finished", run.error
        tokens = sum(len(c.token_ids) for c in run.trace.outputs.values())
        steps = [r for r in run.trace.step_records if r.batch]
        out = {"tok_s": tokens / wall, "step_ms": 1e3 * statistics.median(r.t_end - r.t_start for r in steps)}
        par = [r.parallel for r in steps if r.parallel]
        if par:
            compute = sum(x["compute_s"] for p in par for x in p["ranks"])
            comm = sum(x["comm_s"] for p in par for x in p["ranks"])
            out["comm_share"] = comm / (compute + comm)
            out["bubble"] = statistics.mean(p["bubble"] for p in par)
            shape = engine.info.config["model_path"]
            for rec in steps:  # every step's measured bytes against the prediction
                want = parallel_step_bytes(shape, [sum(s.num_tokens for s in rec.batch)], layout["tp"], layout["pp"])
                got = [{k: x[k] for k in want[0]} for x in rec.parallel["ranks"]]
                assert got == want, (rec.step, got, want)
            out["bytes_match"] = True
        decodes = [r for r in steps if r.decode_tokens and not r.prefill_tokens]
        batch = round(statistics.median(r.decode_tokens for r in decodes)) if decodes else n
        context = round(statistics.median(s.context_len for r in decodes for s in r.batch)) if decodes else 64
        out["pred"] = predicted(engine.info.config["model_path"], layout["tp"], layout["pp"], batch, context)
        return out
    finally:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args()
    rows = [(layout, bench(layout, args.n, args.max_tokens)) for layout in LAYOUTS]
    base = rows[0][1]["tok_s"]
    print(f"{args.n} prompts x {args.max_tokens} tokens, float32, native engine on this CPU")
    print(
        f"{'layout':<10}{'tok/s':>8}{'x tp=1':>8}{'step ms':>9}{'comm %':>8}{'bubble':>8}  predicted: step ms, comm %"
    )
    for layout, r in rows:
        name = f"tp={layout['tp']} pp={layout['pp']}"
        comm = f"{r['comm_share']:.0%}" if "comm_share" in r else "-"
        bubble = f"{r['bubble']:.0%}" if "bubble" in r else "-"
        p = r["pred"]
        print(
            f"{name:<10}{r['tok_s']:>8.1f}{r['tok_s'] / base:>8.2f}{r['step_ms']:>9.1f}{comm:>8}{bubble:>8}"
            f"  {p['step_ms']:>8.1f}, {p['comm_share']:.0%}"
        )
    print("measured bytes per step equal parallel_step_bytes(...) for every step of the parallel runs")
    print("comm %: share of rank-time in all-reduce (tp) or stage send/receive, including waiting (pp);")
    print("bubble: share of rank-time not computing. A shared machine makes every number noisy: rerun to compare.")


if __name__ == "__main__":  # worker processes are spawned: they re-import this file
    main()
