"""Run one workload over a grid of engine choices and measure each: memory, KV capacity, speed,
and drift from the unquantized model. Every grid point is launched with `llmlab.launch(engine,
**knobs)`, so any engine's knobs can sit in the grid (the native engine's `weights` and
`kv_dtype`, or a vLLM engine's `kv_cache_dtype`)."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from llmlab import workloads
from llmlab.session.engine import launch
from llmlab.session.run import resolve_view
from llmlab.workloads import Workload

COMPARISON_VIEW = "llmlab.widgets.compare_view:comparison_figure"  # Comparison.show() (data never imports views)

ROW_COLUMNS = [
    "weight_bytes",
    "kv_bytes_per_token",
    "kv_tokens",
    "output_tok_s",
    "ttft_p50",
    "itl_p50",
    "kl_mean",
    "top1",
    "ppl",
    "load_s",
]


class Comparison(pd.DataFrame):
    """A DataFrame, one row per grid point, that can draw itself: `.show()`."""

    _metadata = ["answers", "grid_keys"]

    @property
    def _constructor(self):
        return Comparison

    def show(self, **kwargs):
        """Quality against speed against memory (a plotly figure)."""
        return resolve_view(COMPARISON_VIEW)(self, **kwargs)


def grid_points(grid: dict[str, list[Any]] | None) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in order: {"a": [1, 2], "b": [3]} -> [{a:1,b:3}, {a:2,b:3}]."""
    if not grid:
        return [{}]
    for key, values in grid.items():
        if isinstance(values, str) or not hasattr(values, "__iter__") or len(list(values)) == 0:
            raise ValueError(f"grid[{key!r}]={values!r}: give a non-empty list of values, e.g. ['bf16', 'int8']")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(list(grid[k]) for k in keys))]


def default_workload() -> Workload:
    """Eight corpus prompts of 64-128 tokens, 32 output tokens each, all at once."""
    return workloads.synthetic(8, prompt_len=(64, 128), output_len=32, seed=0)


def _number(value: Any) -> float:
    """A memory figure as a float; NaN where the engine does not know it (missing or None)."""
    return float("nan") if value is None else float(value)


def memory_row(eng) -> dict[str, float]:
    """Weight bytes, KV bytes per token and KV capacity in tokens, read from `eng.memory()`, the dict
    every engine returns (weight_bytes, kv_bytes_per_block, block_size, num_blocks, kv_tokens);
    a key an engine leaves out, or gives as None, comes back NaN."""
    mem = eng.memory()
    per_block, size = _number(mem.get("kv_bytes_per_block")), _number(mem.get("block_size"))
    return {
        "weight_bytes": _number(mem.get("weight_bytes")),
        "kv_bytes_per_token": per_block / size if size > 0 else float("nan"),
        "kv_tokens": _number(mem.get("kv_tokens")),
    }


def _is_reference(engine: str, point: dict[str, Any]) -> bool:
    return engine == "native" and point.get("weights") == "fp32" and point.get("kv_dtype", "auto") == "auto"


def compare(
    engine: str = "native",
    model: str | None = None,
    grid: dict[str, list[Any]] | None = None,
    workload: Workload | None = None,
    quality: bool = True,
    reference=None,
    warmup: bool = True,
    quality_prompts: int | None = None,
    heldout_tokens: int | None = None,
    answer_tokens: int = 24,
    progress: bool = True,
    **knobs: Any,
) -> Comparison:
    """Launch `engine` once per grid point (plus `knobs` common to all), run `workload`, measure.

    Quality (KL divergence and top-1 agreement against the unquantized model, perplexity on
    held-out text) is measured against a native float32 reference, computed once; engines that
    cannot score text get NaN there. Pass `reference` (a `llmlab.measure.quality.Reference`) to reuse one.
    `warmup` runs two short requests first so one-off start-up costs stay out of the speed.
    `quality_prompts` / `heldout_tokens` / `answer_tokens` cut the quality set (first N prompts,
    first N held-out tokens, length of the greedy answers) for quick looks; defaults use all of it.
    `progress` shows a bar, one tick per grid point (a widget in a notebook); False hides it.
    """
    from llmlab.measure import quality as q  # imports torch: only when comparing

    points = grid_points(grid)
    workload = workload or default_workload()
    ref_engine = None
    # one tick per grid point; the label of the point (or of the reference) running now as postfix
    bar = tqdm(points, desc=f"compare {engine}", unit="point", disable=not progress)
    if quality and reference is None:
        bar.set_postfix_str("reference: native fp32")
        # with the native engine the reference shares the common knobs, so the grid's fp32 point reuses it
        shared = ("device", "block_size") if engine != "native" or "dtype" in knobs else tuple(knobs)
        ref_knobs = {k: v for k, v in knobs.items() if k in shared}
        ref_engine = launch("native", model=model, **{**ref_knobs, "weights": "fp32", "kv_dtype": "auto"})
        reference = q.Reference.from_engine(ref_engine, quality_prompts, heldout_tokens, answer_tokens)
        if not any(_is_reference(engine, p) for p in points):
            ref_engine.close()
            ref_engine = None
    rows, answers = [], {}
    try:
        for point in bar:
            bar.set_postfix_str(_label(point))
            t0 = time.perf_counter()
            reuse = ref_engine is not None and _is_reference(engine, point) and "dtype" not in knobs
            eng = ref_engine if reuse else launch(engine, model=model, **knobs, **point)
            load_s = time.perf_counter() - t0
            try:
                row = dict(point)
                row.update(memory_row(eng))
                if warmup:
                    eng.generate(["warm up", "warm up once more"], max_tokens=4, ignore_eos=True)
                run = eng.run(workload)
                if run.error is not None:
                    raise run.error
                summary = run.summary()
                row.update({k: summary[k] for k in ("output_tok_s", "ttft_p50", "itl_p50")})
                row.update({"kl_mean": float("nan"), "top1": float("nan"), "ppl": float("nan")})
                if quality and hasattr(eng, "score"):
                    result = q.evaluate(eng, reference)
                    row.update({"kl_mean": result.kl_mean, "top1": result.top1, "ppl": result.ppl})
                    answers[_label(point)] = result.answers["engine"].tolist()
                row["load_s"] = load_s
                rows.append(row)
            finally:
                if eng is not ref_engine:
                    eng.close()
    finally:
        bar.close()
        if ref_engine is not None:
            ref_engine.close()
    out = Comparison(rows, columns=[*points[0].keys(), *ROW_COLUMNS])
    out.index = [_label(p) for p in points]
    out.grid_keys = list(points[0].keys())
    if reference is not None:
        answers = {"reference": reference.answers, **answers}
        out.answers = pd.DataFrame(answers, index=list(q.GREEDY_PROMPTS))
        out.attrs["ref_ppl"] = reference.ppl
    else:
        out.answers = pd.DataFrame()
    return out


def _label(point: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in point.items()) or "default"
