"""Prove the mii engine's CUDA path on a GPU: MII's own pipeline over DeepSpeed's own inference-v2
model and kernels, unpatched, read into llmlab's trace.

Checks, on one workload (six short prompts and one long one, 16 greedy tokens each):
- SplitFuse: the long prompt is split over several steps while other requests decode in them, and no
  step exceeds the token budget;
- block accounting: in every step DeepSpeed's free blocks plus the blocks its tracked sequences hold
  equal the pool, and every block is free at the end;
- greedy text: the tokens against llmlab's native engine on the same GPU and weights, in bf16
  (printed as agreement: two bf16 implementations can part at a near-tie of random logits).

The GPU machine has no network: the weights are random, built there from SmolLM2's config (fewer
layers) with `transformers`. Prepare here, then run there:

    python benchmarks/gpu_check_mii.py --prepare gpu_model     # config + tokenizer files, no weights
    # there, with the wheels of deepspeed==0.19.8, deepspeed-mii==0.3.3, deepspeed-kernels, pyzmq,
    # hjson, pydantic carried and installed (see the device notes), and `gpu_model` carried:
    python benchmarks/gpu_check_mii.py --model gpu_model

Exit status 0 when SplitFuse and block accounting hold and the engine ran on CUDA; `--strict` also
requires every request's greedy tokens to equal the native engine's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
    "The three primary colours are",
    "To make a cup of tea, first",
    "def fibonacci(n):",
]
LONG = " ".join(f"Item {i} is a word." for i in range(60))  # ~360 tokens: several chunks at a 128-token budget
BUDGET = 128
FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json")


def prepare(out: Path, layers: int) -> None:
    """Copy SmolLM2's config (with `layers` layers) and tokenizer into `out`: small enough to carry."""
    from llmlab.models import resolve

    src = resolve("smollm2-135m").path
    out.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    cfg = json.loads((out / "config.json").read_text())
    cfg["num_hidden_layers"] = layers
    cfg["tie_word_embeddings"] = False  # DeepSpeed's Llama container reads lm_head.weight: save it
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    print(f"wrote {', '.join(sorted(p.name for p in out.iterdir()))} to {out}")


def random_weights(model: Path, seed: int) -> None:
    """Random bf16 weights from the config in `model`, saved as safetensors beside it (once)."""
    if any(model.glob("*.safetensors")):
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.from_pretrained(model)
    cfg.torch_dtype = torch.bfloat16
    net = AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    net.save_pretrained(model, safe_serialization=True)
    cfg.save_pretrained(model)


def check(model: Path, device: str, strict: bool) -> int:
    import llmlab
    from llmlab import workloads

    wl = lambda: workloads.fixed([*PROMPTS, LONG], max_tokens=16, ignore_eos=True)  # noqa: E731
    eng = llmlab.launch("mii", model=str(model), device=device, max_num_batched_tokens=BUDGET, max_num_seqs=8)
    try:
        info = eng.core.info
        print(
            f"mii on {info.device}, {info.dtype}, {info.version}; block_size {info.config['block_size']}, "
            f"pool {info.config['num_blocks']} blocks, patches {info.config['cpu_patches'] or 'none'}"
        )
        run = eng.run(wl())
        pool = info.config["num_blocks"]
        assert run.error is None, run.error
    finally:
        eng.close()
    steps = run.trace.step_records
    long_id = str(len(PROMPTS))
    chunks = [
        (k, s.num_tokens) for k, r in enumerate(steps) for s in r.batch if s.req_id == long_id and s.phase == "prefill"
    ]
    shared = [k for k, _ in chunks if any(o.phase == "decode" for o in steps[k].batch)]
    over = [k for k, r in enumerate(steps) if sum(s.num_tokens for s in r.batch) > BUDGET]
    bad_blocks = [k for k, r in enumerate(steps) if r.kv.free + len(r.kv.owners or {}) != pool]
    end_free = steps[-1].kv.free == pool
    print(f"{len(steps)} steps; long prompt chunks {[n for _, n in chunks]}; steps shared with decodes {shared}")
    print(
        f"steps over the {BUDGET}-token budget: {over}; steps where free + held != pool: {bad_blocks}; "
        f"all free at the end: {end_free}"
    )

    native = llmlab.launch("native", model=str(model), device=device, dtype="bf16")
    try:
        want = native.run(wl())
    finally:
        native.close()
    same = [k for k in run.outputs if run.outputs[k].token_ids == want.outputs[k].token_ids]
    first = [k for k in run.outputs if run.outputs[k].token_ids[:1] == want.outputs[k].token_ids[:1]]
    print(
        f"greedy tokens equal to the native engine's: {len(same)}/{len(run.outputs)} requests "
        f"(first token: {len(first)}/{len(run.outputs)})"
    )
    for k in sorted(run.outputs, key=int)[:2]:
        print(f"  {k}: mii {run.outputs[k].text!r}\n  {k}: native {want.outputs[k].text!r}")

    ok = info.device == device and len(chunks) >= 2 and shared and not over and not bad_blocks and end_free
    if strict:
        ok = ok and len(same) == len(run.outputs)
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prepare", type=Path, help="write config + tokenizer (no weights) to this folder and stop")
    ap.add_argument("--layers", type=int, default=4, help="layers of the random model (SmolLM2 has 30)")
    ap.add_argument("--model", type=Path, help="a folder from --prepare; random weights are added on first use")
    ap.add_argument("--device", default="cuda", help="'cuda' (the point); 'cpu' checks the script itself")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="also require equal greedy tokens")
    args = ap.parse_args()
    if args.prepare:
        prepare(args.prepare, args.layers)
        return 0
    if args.model is None:
        ap.error("give --prepare DIR (here) or --model DIR (on the GPU machine)")
    random_weights(args.model, args.seed)
    return check(args.model, args.device, args.strict)


if __name__ == "__main__":
    sys.exit(main())
