"""Decode step times of the native engine with the CPU to itself and with one other busy process,
under each OpenMP wait policy.

PyTorch's CPU kernels split work over OpenMP threads that meet at a barrier after every
operation. A thread that waits spins for a while before sleeping; when another process takes
one of the cores, a spinning thread can hold a core that the thread it waits for needs, and a
decode step that takes 100 ms alone can take seconds. This script measures that in one run:
each case is a fresh process (the wait policy is read when OpenMP starts), alternated, with and
without a competing busy loop at the same priority (a browser, a Jupyter server, another
notebook's kernel on the same machine).

    python benchmarks/cpu_contention.py                    # bfloat16 where native, else float32
    python benchmarks/cpu_contention.py --dtype float32 --steps 60 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

POLICIES = {  # the environment each case's process starts with
    "default": {},
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"LLMLAB_BENCH_THREADS": "1"},
}


def child(dtype: str, steps: int) -> None:
    """Run `steps` decode steps at batch 32 and print their seconds as JSON (in a fresh process)."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import torch
    from cpu_roofline import decode_steps

    torch.set_num_threads(int(os.environ.get("LLMLAB_BENCH_THREADS", "2")))
    times, *_ = decode_steps(dtype, 32, 128, steps)
    print(json.dumps(times))


def measure(dtype: str, steps: int, policy: dict[str, str]) -> list[float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | policy
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--dtype", dtype, "--steps", str(steps)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def busy_loop() -> subprocess.Popen:
    """One other process keeping one core busy, at the engine's own priority."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtype", default=None)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--rounds", type=int, default=1, help="alternated repeats of every case")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.dtype is None:
        from llmlab.engines.native.cpu_dtype import native_bf16_flag

        args.dtype = "bfloat16" if native_bf16_flag() else "float32"
    if args.child:
        child(args.dtype, args.steps)
        return
    results: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.rounds):
        for load in ("alone", "one busy process"):
            other = busy_loop() if load != "alone" else None
            try:
                time.sleep(0.5 if other else 0)
                for name, policy in POLICIES.items():
                    results.setdefault((name, load), []).extend(measure(args.dtype, args.steps, policy))
            finally:
                if other:
                    other.kill()
                    other.wait()
    print(f"{args.dtype}, decode steps at batch 32, {args.steps} steps x {args.rounds} rounds a case")
    base = statistics.median(results[("default", "alone")])
    for (name, load), times in results.items():
        med = statistics.median(times)
        print(
            f"{name:>9} | {load:<16} | median {med * 1e3:7.1f} ms ({med / base:4.2f}x default alone) | "
            f"slowest {max(times) * 1e3:7.1f} ms ({max(times) / med:5.2f}x its median)"
        )


if __name__ == "__main__":
    main()
