"""Calibration: fit the cost model's efficiency factors and per-step overhead to a measured run,
then check the fit honestly by simulating other workloads and comparing with measured runs.

The cost model prices each operator group as max(compute time, memory time). For every step of
the measured run we split each group into its compute part and its memory part (at efficiency 1).
Once the ratio of the two inverse efficiencies, rho = (1 / memory) / (1 / compute), is fixed, so is
which side binds in every group of every step, and the model is linear:

    measured step time = overhead + per_token x tokens + per_seq x requests
                         + (1 / compute) x (compute-bound seconds + rho x memory-bound seconds)

We solve that non-negative least-squares problem for each rho on a fine log grid and keep the
best, so the fitted factors are the model's own least-squares optimum: the steps it prices add up
to the measured run's time. Network and pipeline terms stay as modelled.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from llmlab.config import dtype_name
from llmlab.plan.cost import GROUPS, CostModel, Efficiency, step_load
from llmlab.plan.hardware import get_hardware
from llmlab.session.engine import launch
from llmlab.session.run import Run
from llmlab.workloads import WorkItem, Workload

COMPUTE_GROUPS = ("qkv_o", "mlp", "attention", "lm_head")
HUGE = 1e12  # an efficiency this large makes one side of every roofline vanish
UNUSED = 1e3  # efficiencies above this (1,000x the hardware's peak) leave the roofline nothing to explain
METRICS = {
    "throughput (output tok/s)": "output_tok_s",
    "TTFT p50 (s)": "ttft_p50",
    "TTFT p90 (s)": "ttft_p90",
    "ITL p50 (s)": "itl_p50",
}


@dataclass
class Calibration:
    """A cost model whose efficiency was fitted to a measured run, and how well it fits that run."""

    cost_model: CostModel
    num_steps: int
    median_step_error: float  # median |predicted - measured| / measured over the fitted steps
    source: str  # which run it was fitted to

    @property
    def efficiency(self) -> Efficiency:
        return self.cost_model.efficiency

    def step_time(self, slots: Any) -> float:
        return self.cost_model.step_time(slots)

    def __repr__(self) -> str:
        e = self.efficiency
        if min(e.compute, e.memory) >= UNUSED:  # the fit gave the roofline no (or no real) weight
            roofline = "roofline unused (the per-step, per-token and per-request terms explain the steps)"
        else:
            roofline = ", ".join(
                f"{side}={value:.3g}" if value < UNUSED else f"{side} unused"
                for side, value in (("compute", e.compute), ("memory", e.memory))
            )
        return (
            f"<Calibration on {self.num_steps} steps of {self.source}: {roofline}, "
            f"overhead={e.overhead_s * 1e3:.3g} ms/step, "
            f"per_token={e.per_token_s * 1e6:.3g} us, "
            f"per_seq={e.per_seq_s * 1e6:.3g} us; median step error {self.median_step_error:.1%}>"
        )


def check_run(run: Any, what: str) -> None:
    """Raise ValueError unless `run` is a Run that has stopped stepping (what `what` reads)."""
    if not isinstance(run, Run):
        raise ValueError(f"{what} needs a Run, what engine.run(workload) returns; got {run!r}")
    if run.status in ("pending", "running"):
        raise ValueError(f"{what}: the run is still {run.status}; call run.wait() first")


def cost_model_for(run: Run, gpu: Any = None, model: Any = None, efficiency: Efficiency | None = None) -> CostModel:
    """The cost model of the hardware, model, dtypes and parallelism a run used (from its EngineInfo)."""
    info = run.info
    cfg = info.config
    device = str(info.device)
    if gpu is None:
        if info.engine == "sim":
            gpu = cfg.get("gpu")
            if gpu is None:
                raise ValueError(
                    "the simulated run took its step times from a given step_time, on no GPU: say which "
                    "hardware to fit, e.g. calibrate(run, gpu='A10G') (see llmlab.plan.hardware.HARDWARE)"
                )
        elif device.startswith("cuda"):
            raise ValueError(
                f"the run used {device}: say which GPU it is, e.g. calibrate(run, gpu='H100-SXM') "
                "(see llmlab.plan.hardware.HARDWARE)"
            )
        else:
            gpu = "cpu"
    weights = dtype_name(cfg.get("weights") or info.dtype)
    kv_dtype = dtype_name(cfg.get("kv_dtype") or weights)
    return CostModel(
        model or info.model,
        get_hardware(gpu),
        weights=weights,
        kv_dtype=kv_dtype,
        tp=int(cfg.get("tensor_parallel_size") or 1),
        pp=int(cfg.get("pipeline_parallel_size") or 1),
        efficiency=efficiency,
    )


def _parts(cm: CostModel, base: Efficiency, loads: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per step and group: compute seconds and memory seconds at efficiency 1, and the fixed rest."""
    zero_host = {"overhead_s": 0.0, "per_token_s": 0.0, "per_seq_s": 0.0, "per_layer_s": 0.0}
    compute_only = replace(base, compute=1.0, memory=HUGE, **zero_host)
    memory_only = replace(base, compute=HUGE, memory=1.0, **zero_host)
    comp = np.zeros((len(loads), len(GROUPS)))
    mem = np.zeros_like(comp)
    try:
        cm.efficiency = compute_only
        for i, load in enumerate(loads):
            comp[i] = list(cm.breakdown(load).values())
        cm.efficiency = memory_only
        for i, load in enumerate(loads):
            mem[i] = list(cm.breakdown(load).values())
    finally:
        cm.efficiency = base
    fixed_cols = [GROUPS.index(g) for g in ("allreduce", "pipeline")]
    fixed = comp[:, fixed_cols].sum(axis=1)  # network terms do not depend on compute or memory
    keep = [GROUPS.index(g) for g in GROUPS if g not in ("allreduce", "pipeline", "overhead")]
    return comp[:, keep], mem[:, keep], fixed


def nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of columns: the best unconstrained fit over every
    subset of columns whose coefficients all come out >= 0 (exact, and cheap for <= 8 columns)."""
    n = a.shape[1]
    best, best_res = np.zeros(n), float(np.sum(b**2))
    for mask in range(1, 1 << n):
        cols = [j for j in range(n) if mask >> j & 1]
        sol = np.linalg.lstsq(a[:, cols], b, rcond=None)[0]
        if (sol < 0).any():
            continue
        res = float(np.sum((a[:, cols] @ sol - b) ** 2))
        if res < best_res:
            best, best_res = np.zeros(n), res
            best[cols] = sol
    return best


def _ratios(comp: np.ndarray, mem: np.ndarray, num: int = 241) -> np.ndarray:
    """Candidate rho values: a log grid spanning every group's compute/memory ratio in the run,
    plus the two ends (everything compute-bound, everything memory-bound)."""
    both = (comp > 0) & (mem > 0)
    ratios = comp[both] / mem[both]
    lo, hi = (float(ratios.min()), float(ratios.max())) if ratios.size else (1.0, 1.0)
    return np.concatenate(([lo / 2], np.geomspace(lo, hi, num) if hi > lo else [lo], [hi * 2]))


def calibrate(
    run: Run,
    gpu: Any = None,
    model: Any = None,
    base: Efficiency | None = None,
    skip_first: int = 1,
) -> Calibration:
    """Fit compute and memory efficiency, per-step, per-token and per-request overhead to `run`'s steps.

    `gpu` names the hardware for a GPU run ("cpu" runs use the measured local CPU); `model` overrides
    the shape (default: the run's model). The first `skip_first` steps (warm-up) are left out.
    Returns a `Calibration`; pass it to `llmlab.launch("sim", calibration=...)` or `validate`.
    """
    check_run(run, "calibrate")
    records = [r for r in run.trace.step_records if r.batch][skip_first:]
    if len(records) < 5:
        raise ValueError(
            f"the run has {len(records)} usable steps: calibrate needs at least 5; run a workload with more steps"
        )
    cm = cost_model_for(run, gpu, model)
    base = base or cm.efficiency
    loads = [step_load(r.batch) for r in records]
    measured = np.array([r.t_end - r.t_start for r in records])
    comp, mem, fixed = _parts(cm, base, loads)
    tokens = np.array([ld.tokens for ld in loads], dtype=float)
    seqs = np.array([ld.seqs for ld in loads], dtype=float)
    target = measured - fixed
    # least squares in seconds: with the per-step term free, the fitted steps add up to the
    # measured run's time, which is what throughput and queueing depend on
    best: tuple[float, float, np.ndarray] | None = None
    for rho in _ratios(comp, mem):
        compute_bound = comp >= rho * mem
        roofline = np.where(compute_bound, comp, rho * mem).sum(axis=1)
        features = np.column_stack([np.ones_like(tokens), tokens, seqs, roofline])
        coef = nnls(features, target)
        sse = float(np.sum((features @ coef - target) ** 2))
        if best is None or sse < best[0]:
            best = (sse, rho, coef)
    assert best is not None
    _, rho, coef = best
    inv_c = coef[3]
    if inv_c > 0:
        compute, memory = 1.0 / inv_c, 1.0 / (rho * inv_c)
    else:  # the host terms explain the run alone: the roofline gets no weight
        compute = memory = HUGE
    eff = replace(
        base,
        overhead_s=float(coef[0]),  # the fixed time per step, per-layer kernel gaps included
        per_layer_s=0.0,
        per_token_s=float(coef[1]),
        per_seq_s=float(coef[2]),
        compute=float(compute),
        memory=float(memory),
    )
    cm.efficiency = eff
    predicted = np.array([cm.step_time(r.batch) for r in records])
    error = float(np.median(np.abs(predicted - measured) / measured))
    name = f"{run.info.engine} {run.info.model} on {run.info.device}"
    return Calibration(cm, len(records), error, name)


def workload_of(run: Run) -> Workload:
    """The workload a run served, rebuilt from its trace: arrivals, prompt token ids, output lengths."""
    items = []
    for r in run.trace.request_records.values():
        out = run.trace.outputs.get(r.req_id)
        prompt = list(out.prompt_token_ids) if out is not None and out.prompt_token_ids else None
        items.append(
            WorkItem(
                r.req_id,
                arrival=r.arrival,
                prompt=prompt,
                prompt_len=None if prompt else r.prompt_tokens,
                max_tokens=max(1, r.output_tokens),
                ignore_eos=True,
            )
        )
    return Workload(f"replay of {run.info.engine} run", items)


SIM_KNOBS = (
    "policy",
    "block_size",
    "num_blocks",
    "max_num_seqs",
    "max_num_batched_tokens",
    "max_model_len",
    "enable_chunked_prefill",
    "enable_prefix_caching",
    "watermark",
)
# the sim policy that batches as an engine's own scheduler does: vLLM's serves the running
# requests (decodes, prompt chunks) first, then admits waiting ones into the token budget left
SIM_POLICY = {"vllm": "chunked", "mii": "splitfuse"}  # MII: Dynamic SplitFuse


def simulate_like(run: Run, model: Any = None, workload: Workload | None = None, gpu: Any = None) -> Run:
    """Simulate `run`'s workload on its configuration with a cost `model` (Calibration, CostModel or Efficiency)."""
    cfg = run.info.config
    knobs = {k: cfg[k] for k in SIM_KNOBS if cfg.get(k) is not None}
    if knobs.get("policy") in SIM_POLICY:
        knobs["policy"] = SIM_POLICY[knobs["policy"]]
    if isinstance(model, Calibration):
        model = model.cost_model
    if not isinstance(model, CostModel):
        model = cost_model_for(run, gpu, efficiency=model)
    sim = launch("sim", step_time=model.step_time, **knobs)
    sim.info.model, sim.info.device, sim.info.dtype = model.shape.name, model.hw.name, model.weights
    result = sim.run(workload if workload is not None else workload_of(run))
    if result.error is not None:
        raise result.error
    return result


def measured_vs_predicted(measured: Run, predicted: Run) -> pd.DataFrame:
    """Predicted next to measured for throughput, TTFT p50/p90 and ITL p50, with the relative error."""
    m, p = measured.summary(), predicted.summary()
    rows = []
    for label, key in METRICS.items():
        rows.append({"metric": label, "measured": m[key], "predicted": p[key], "error": p[key] / m[key] - 1.0})
    return pd.DataFrame(rows).set_index("metric")


def validate(
    run: Run,
    model: Any = None,
    workload: Workload | None = None,
    gpu: Any = None,
    show: bool = True,
) -> pd.DataFrame:
    """Simulate `run`'s workload with `model` and print predicted vs measured with the error of each.

    `model`: a `Calibration`, a `CostModel` or an `Efficiency` (default: the uncalibrated cost
    model). `workload`: what the run served (default: rebuilt from the trace, open loop at the
    recorded arrivals). Returns the table (metric x measured, predicted, error).
    """
    check_run(run, "validate")
    if model is not None and not isinstance(model, Calibration | CostModel | Efficiency):
        raise ValueError(
            f"validate(run, model={model!r}): give a Calibration (from calibrate), a CostModel, an Efficiency, "
            "or None for the uncalibrated cost model"
        )
    table = measured_vs_predicted(run, simulate_like(run, model, workload, gpu))
    if show:
        print(format_table(table))
    return table


def format_table(table: pd.DataFrame) -> str:
    """The validation table as aligned text, errors in percent."""
    out = table.copy()
    out["error"] = out["error"].map(lambda v: f"{v:+.1%}")
    for col in ("measured", "predicted"):
        out[col] = out[col].map(lambda v: f"{v:.4g}")
    return out.to_string()
