"""`llmlab.plan(...)`: every quantization x parallelism configuration of a model on a GPU, side by side.

Each row is one configuration: its per-GPU memory plan (weights, KV cache, whether it fits) and,
when it fits, the simulator's prediction on a workload (throughput, TTFT, ITL, cost per million
output tokens). The table is a DataFrame; `.show()` opens the interactive comparison widget and
`.simulate(row)` runs the simulator for one row so its dashboard can be opened; `run_row` runs a
row for real where the hardware is here, next to its prediction.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import pandas as pd

from llmlab import workloads
from llmlab.config import DEFAULT_MAX_MODEL_LEN, default_kv_dtype
from llmlab.engines.sim import default_tokenizer
from llmlab.models.shapes import get_shape
from llmlab.plan.hardware import GB, get_hardware
from llmlab.plan.memory import make_shard, memory_plan, parallel_sizes
from llmlab.session.engine import launch
from llmlab.session.run import Run, resolve_view
from llmlab.workloads import Workload, prompt_token_ids

PLAN_VIEW = "llmlab.widgets.plan_view:PlanView"  # PlanTable.show() draws with it (data never imports views)
LOCAL_MODELS = ("smollm2-135m",)  # what the native engine can load here without a download
LOCAL_RUN_BLOCKS = 1024  # a real local run and its prediction both use at most this KV pool

COLUMNS = [
    "model", "gpu", "num_gpus", "tp", "pp", "weights", "kv_dtype", "fits", "weights_gb", "kv_gb",
    "activation_gb", "free_gb", "kv_tokens", "max_concurrency", "throughput_tok_s", "ttft_p50_s",
    "itl_p50_s", "cost_per_mtok", "shortfall_gb", "note",
]  # fmt: skip


def _chat() -> Workload:
    return workloads.concurrency(32, n=96, prompt_len=(256, 1024), output_len=(64, 256), seed=0)


def _long_prompt() -> Workload:
    return workloads.concurrency(16, n=48, prompt_len=(2048, 4096), output_len=(64, 128), seed=0)


def _azure_conv() -> Workload:
    return workloads.from_trace("azure_conv", n=200, time_scale=10.0, max_len=DEFAULT_MAX_MODEL_LEN)


WORKLOADS: dict[str, Callable[[], Workload]] = {
    "chat: 32 users, 256-1024 in, 64-256 out": _chat,
    "long prompts: 16 users, 2-4k in, 64-128 out": _long_prompt,
    "azure_conv: 200 requests at 10x speed": _azure_conv,
}


class PlanTable(pd.DataFrame):
    """The comparison as a DataFrame; `attrs["plan"]` keeps the arguments that made it."""

    @property
    def _constructor(self):
        return PlanTable

    def show(self):
        """The interactive comparison: memory bars, throughput-latency Pareto plot, table, simulate/run."""
        return resolve_view(PLAN_VIEW)(self)

    def simulate(self, row: int = 0, workload: Workload | None = None, **overrides: Any) -> Run:
        """Simulate configuration `row` (a position in this table) on the plan's workload; returns the Run."""
        return simulate_row(self, row, workload, **overrides)

    def to_engine_args(self, row: int = 0, engine: str = "vllm") -> Any:
        """Configuration `row` as `engine`'s launch options ("vllm", "trtllm", "mii", "tgi"): the
        flags or options file to run it for real (`llmlab.engines.sim.export`)."""
        from llmlab.engines.sim.export import export

        if not 0 <= row < len(self):
            raise ValueError(f"row={row}: the table has rows 0..{len(self) - 1}")
        r, sim = self.iloc[row], self.attrs.get("plan", {}).get("sim", {})
        choice = {
            "model": r["model"],
            "tp": int(r["tp"]),
            "pp": int(r["pp"]),
            "weights": r["weights"],
            "kv_dtype": r["kv_dtype"],
            "policy": sim.get("policy", "chunked"),
            "block_size": sim.get("block_size", 16),
            "max_num_seqs": sim.get("max_num_seqs", 256),
            "max_num_batched_tokens": sim.get("max_num_batched_tokens") or 512,
            "max_model_len": sim.get("max_model_len") or self.attrs.get("plan", {}).get("context_len") or 8192,
            "enable_chunked_prefill": True,
            "enable_prefix_caching": True,
            "gpu_memory_utilization": sim.get("gpu_memory_utilization"),
        }
        return export(choice, engine)

    def pareto(self) -> PlanTable:
        """The rows no other row beats on both throughput and ITL p50."""
        return self.loc[pareto_mask(self)]


def pareto_mask(table: pd.DataFrame, x: str = "itl_p50_s", y: str = "throughput_tok_s") -> pd.Series:
    """True for rows on the frontier: lower `x` (latency) and higher `y` (throughput) are better."""
    ok = table[x].notna() & table[y].notna()
    xs, ys = table[x].to_numpy(), table[y].to_numpy()
    mask = []
    for i in range(len(table)):
        if not ok.iloc[i]:
            mask.append(False)
            continue
        dominated = ok.to_numpy() & (xs <= xs[i]) & (ys >= ys[i]) & ((xs < xs[i]) | (ys > ys[i]))
        mask.append(not dominated.any())
    return pd.Series(mask, index=table.index)


def _as_list(value: Any) -> list:
    if value is None:
        return [None]
    if isinstance(value, str | int) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def resolve_workload(workload: Any) -> tuple[str, Workload]:
    """A workload object, a preset name from WORKLOADS, or None (the chat preset)."""
    if workload is None:
        workload = next(iter(WORKLOADS))
    if isinstance(workload, Workload):
        return workload.name, workload
    if isinstance(workload, str) and workload in WORKLOADS:
        return workload, WORKLOADS[workload]()
    raise ValueError(f"workload={workload!r}: give a llmlab.workloads Workload or one of {list(WORKLOADS)}")


def _request_lengths(wl: Workload) -> np.ndarray:
    """prompt + max_tokens per request; text prompts counted with the simulator's tokenizer."""
    out = []
    for it in wl:
        if it.prompt is None:
            n = it.prompt_len
        elif isinstance(it.prompt, str):
            n = len(prompt_token_ids(it, default_tokenizer()))
        else:
            n = len(it.prompt)
        out.append(n + it.max_tokens)
    return np.asarray(out)


def plan(
    model: Any = "llama-3.1-8b",
    gpu: Any = "H100-SXM",
    num_gpus: int | Iterable[int] | None = None,
    weights: str | Iterable[str] = ("bf16", "fp8", "int4"),
    kv_dtype: str | Iterable[str] | None = None,
    tp: int | Iterable[int] | None = None,
    pp: int | Iterable[int] = 1,
    workload: Any = None,
    price_per_hour: float | dict[str, float] | None = None,
    simulate: bool = True,
    block_size: int = 16,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    max_num_seqs: int = 256,
    max_num_batched_tokens: int = 2048,
    policy: str = "chunked",
    efficiency: Any = None,
) -> PlanTable:
    """One row per (gpu, weights, kv_dtype, tp, pp): per-GPU memory, KV capacity and predicted serving.

    `kv_dtype=None` pairs each weight dtype with its natural KV dtype (int4 weights keep a bf16
    cache). `tp=None` uses every GPU of `num_gpus` for tensor parallelism (tp = num_gpus / pp),
    or tp=1 without `num_gpus`. `workload` is a Workload or a preset name from `WORKLOADS`
    (default: a chat mix); `simulate=False` skips the simulator (memory columns only).
    `price_per_hour` (per GPU-hour: one number, or a dict by GPU name; default the catalogue's
    price) adds the cost per million output tokens.
    Bad names, a tp that does not split the model, or a workload longer than the context raise ValueError.
    """
    knobs = {"gpu": gpu, "num_gpus": num_gpus, "weights": weights, "kv_dtype": kv_dtype, "tp": tp, "pp": pp}
    for label, value in knobs.items():
        if not _as_list(value):
            raise ValueError(f"{label}={value!r} lists nothing to compare: give at least one value (or leave it out)")
    shape = get_shape(model)
    hws = [get_hardware(g) for g in _as_list(gpu)]
    ctx = shape.max_position_embeddings
    if max_model_len is None:
        max_model_len = min(ctx, DEFAULT_MAX_MODEL_LEN)
    elif max_model_len > ctx:
        raise ValueError(f"max_model_len={max_model_len} exceeds the {ctx}-token context of {shape.name}")
    name, wl = resolve_workload(workload)
    lengths = _request_lengths(wl)
    if lengths.max() > max_model_len:
        longest = wl[int(lengths.argmax())]
        raise ValueError(
            f"workload {name!r}: request {longest.req_id!r} needs {int(lengths.max())} tokens of context but "
            f"max_model_len={max_model_len}: raise max_model_len (up to {ctx}) or shorten the workload's requests"
        )
    context = int(np.ceil(lengths.mean()))
    configs = []
    for hw, w, p, n in itertools.product(hws, _as_list(weights), _as_list(pp), _as_list(num_gpus)):
        for t in _as_list(tp):
            t, p = parallel_sizes(n, t, p)
            make_shard(shape, t, p)  # raises with the valid tp values
            for kv in _as_list(kv_dtype) if kv_dtype is not None else [default_kv_dtype(w)]:
                configs.append((hw, w, kv, t, p))
    rows = []
    for hw, w, kv, t, p in configs:
        mp = memory_plan(
            shape,
            hw,
            weights=w,
            kv_dtype=kv,
            tp=t,
            pp=p,
            block_size=block_size,
            max_model_len=max_model_len,
            gpu_memory_utilization=gpu_memory_utilization,
            max_num_batched_tokens=max_num_batched_tokens,
            max_num_seqs=max_num_seqs,
        )
        free = hw.memory_bytes - mp.weights_bytes - mp.activation_bytes - mp.workspace_bytes - mp.kv_bytes
        row = {
            "model": shape.name,
            "gpu": hw.name,
            "num_gpus": t * p,
            "tp": t,
            "pp": p,
            "weights": w,
            "kv_dtype": kv,
            "fits": bool(mp.fits),
            "weights_gb": mp.weights_bytes / GB,
            "kv_gb": mp.kv_bytes / GB,
            "activation_gb": (mp.activation_bytes + mp.workspace_bytes) / GB,
            "free_gb": max(0.0, free) / GB,  # the stack adds up to the GPU's memory when the config fits
            "kv_tokens": int(mp.kv_tokens),
            "max_concurrency": int(mp.max_concurrency(context)) if mp.kv_blocks else 0,
            "throughput_tok_s": np.nan,
            "ttft_p50_s": np.nan,
            "itl_p50_s": np.nan,
            "cost_per_mtok": np.nan,
            "shortfall_gb": mp.shortfall_bytes / GB,
            "note": "" if mp.fits else f"short by {mp.shortfall_bytes / GB:.1f} GB per GPU",
        }
        rows.append(row)
    table = PlanTable(pd.DataFrame(rows, columns=COLUMNS))
    table.attrs["plan"] = {
        "model": shape.name,
        "gpu": [hw.name for hw in hws],
        "kv_dtype": None if kv_dtype is None else _as_list(kv_dtype),
        "workload": name,
        "context_len": context,
        "price_per_hour": price_per_hour,
        "sim": {
            "block_size": block_size,
            "max_model_len": max_model_len,
            "gpu_memory_utilization": gpu_memory_utilization,
            "max_num_seqs": max_num_seqs,
            "max_num_batched_tokens": max_num_batched_tokens,
            "policy": policy,
            "efficiency": efficiency,
        },
    }
    table.attrs["workload_object"] = wl
    if simulate:
        for i in range(len(table)):
            if table["fits"].iloc[i]:
                _predict_row(table, i, wl, price_per_hour, hws)
    return table


def _predict_row(table: PlanTable, i: int, wl: Workload, price: float | dict | None, hws: list) -> None:
    run = simulate_row(table, i, wl)
    if run.error is not None:
        table.loc[table.index[i], "note"] = f"simulation failed: {run.error}"
        return
    s = run.summary()
    idx = table.index[i]
    table.loc[idx, ["throughput_tok_s", "ttft_p50_s", "itl_p50_s"]] = [s["output_tok_s"], s["ttft_p50"], s["itl_p50"]]
    hw = next(h for h in hws if h.name == table.loc[idx, "gpu"])
    per_gpu = price.get(hw.name, hw.price_per_hour) if isinstance(price, dict) else price
    per_gpu = per_gpu if per_gpu is not None else hw.price_per_hour
    if per_gpu is not None and s["output_tok_s"] > 0:
        dollars_per_s = per_gpu * int(table.loc[idx, "num_gpus"]) / 3600.0
        table.loc[idx, "cost_per_mtok"] = dollars_per_s / s["output_tok_s"] * 1e6
    if s["preemptions"]:
        table.loc[idx, "note"] = f"{int(s['preemptions'])} preemptions"


def simulate_row(table: pd.DataFrame, row: int = 0, workload: Workload | None = None, **overrides: Any) -> Run:
    """Run the simulator for configuration `row` of a plan table; `overrides` change any sim knob."""
    if not 0 <= row < len(table):
        raise ValueError(f"row={row}: the table has rows 0..{len(table) - 1}")
    r = table.iloc[row]
    if not r["fits"]:
        raise ValueError(f"row {row} ({r['weights']} on {r['num_gpus']} x {r['gpu']}) does not fit: {r['note']}")
    settings = table.attrs.get("plan", {})
    knobs = {
        **settings.get("sim", {}),
        "model": settings.get("model", r["model"]),
        "gpu": r["gpu"],
        "tp": int(r["tp"]),
        "pp": int(r["pp"]),
        "weights": r["weights"],
        "kv_dtype": r["kv_dtype"],
        **overrides,
    }
    wl = workload if workload is not None else table.attrs.get("workload_object")
    if wl is None:
        wl = resolve_workload(settings.get("workload"))[1]
    return launch("sim", **knobs).run(wl)


def is_local(row: Any) -> bool:
    """Whether the native engine can run this row here: the local CPU, an embedded model, one device."""
    return row["gpu"] == "cpu" and row["model"] in LOCAL_MODELS and row["tp"] == 1 and row["pp"] == 1


def small_workload(table: pd.DataFrame) -> Workload:
    """The plan's workload if it is small enough for a CPU run, else 8 short requests."""
    wl = table.attrs.get("workload_object")
    if wl is not None and len(wl) <= 16:
        return wl
    return workloads.poisson(rate=4.0, n=8, prompt_len=(32, 128), output_len=(8, 24), seed=0)


def run_row(table: pd.DataFrame, row: int = 0, workload: Workload | None = None) -> tuple[Run, Run]:
    """Run configuration `row` for real with the native engine on this CPU, then simulate it on the
    same workload and KV pool; returns (measured, predicted). Only local rows run (see `is_local`):
    others raise ValueError. `workload` defaults to `small_workload(table)`."""
    if not 0 <= row < len(table):
        raise ValueError(f"row={row}: the table has rows 0..{len(table) - 1}")
    r = table.iloc[row]
    if not is_local(r):
        raise ValueError(
            f"row {row} needs {r['gpu']}: only rows on the local 'cpu' with {', '.join(LOCAL_MODELS)} "
            "can run here; simulate it instead"
        )
    wl = workload if workload is not None else small_workload(table)
    sim_knobs = dict(table.attrs.get("plan", {}).get("sim", {}))
    blocks = min(int(r["kv_tokens"]) // sim_knobs.get("block_size", 16), LOCAL_RUN_BLOCKS)
    native_knobs = {k: sim_knobs[k] for k in ("block_size", "max_num_seqs", "max_num_batched_tokens", "policy")}
    # the row's weights and KV cache, computed in the weights' dtype (quantized weights: in the KV's, or fp32)
    weights, kv = r["weights"], r["kv_dtype"]
    dtype = weights if weights in ("fp32", "bf16") else kv if kv in ("fp32", "bf16") else "fp32"
    kv = "auto" if kv == dtype else kv
    eng = launch(
        "native",
        model=r["model"],
        device="cpu",
        dtype=dtype,
        weights=weights,
        kv_dtype=kv,
        num_blocks=blocks,
        **native_knobs,
    )
    try:
        measured = eng.run(wl)
    finally:
        eng.close()
    predicted = simulate_row(table, row, wl, num_blocks=blocks)
    return measured, predicted
