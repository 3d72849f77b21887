"""What the views draw, computed from a trace's records alone (no plotly here, so it is testable).

Each function takes the step records (and the request records) and returns plain arrays for
one view as of a given step, over a bounded window of steps so live redraws stay cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llmlab.core.records import KVSnapshot, RequestRecord, StepRecord

# schedule cell states, in the order of their colours
ABSENT, WAITING, PREFILL, DECODE, PREEMPTED, FINISHED = range(6)
STATE_NAMES = ["", "waiting", "prefill", "decode", "preempted", "finished"]

# KV cell states, below the per-request colour indices (KV_PAD fills the grid past the last block)
KV_PAD, KV_FREE, KV_CACHED = -3, -2, -1


@dataclass
class ScheduleState:
    steps: np.ndarray  # [W] step indices shown
    req_ids: list[str]  # rows, in arrival order
    codes: np.ndarray  # [R, W] ABSENT..FINISHED
    tokens: np.ndarray  # [R, W] tokens computed in that step
    context: np.ndarray  # [R, W] context length after the step
    prefill_tokens: np.ndarray  # [W]
    decode_tokens: np.ndarray  # [W]


# policies that schedule whole prompts regardless of `max_num_batched_tokens` (llmlab.core.policies.Static)
IGNORE_BUDGET = ("static",)


def peak_kv_step(steps: list[StepRecord]) -> int:
    """The step a finished run's dashboard opens on: the most KV blocks used (the first such step
    on ties), where owners and shared blocks are all on show; the last step when no step has KV."""
    used = [rec.kv.used if rec.kv is not None else -1 for rec in steps]
    if not used or max(used) < 0:
        return max(len(steps) - 1, 0)
    return int(np.argmax(used))  # argmax returns the first of equal maxima


def budget_label(config: dict) -> str:
    """The token budget line's legend label, saying so when the policy ignores the budget."""
    budget, policy = config.get("max_num_batched_tokens"), config.get("policy")
    if policy in IGNORE_BUDGET:
        return f"token budget {budget} ({policy} ignores it)"
    return f"token budget {budget}"


def span_text(first: int, last: int, total: int) -> str:
    """`first`-`last` of `total`, thousands separated ("430-630 of 1,200")."""
    return f"{first:,}-{last:,} of {total:,}"


def step_window(num_steps: int, upto: int | None, window: int) -> range:
    """The last `window` steps up to and including `upto` (default: the latest)."""
    end = num_steps - 1 if upto is None else min(upto, num_steps - 1)
    return range(max(0, end - window + 1), end + 1)


def schedule_state(
    steps: list[StepRecord],
    requests: list[RequestRecord],
    upto: int | None = None,
    window: int = 200,
    max_rows: int = 64,
) -> ScheduleState:
    """Requests x steps, each cell a state; rows are the requests alive in the window (latest `max_rows`)."""
    span = step_window(len(steps), upto, window)
    recs = [steps[i] for i in span]
    t_end = np.array([r.t_end for r in recs]) if recs else np.zeros(0)
    first = recs[0].step if recs else 0
    first_t = recs[0].t_start if recs else 0.0
    last_t = t_end[-1] if len(t_end) else 0.0
    alive = [r for r in requests if r.arrival <= last_t and (r.finish is None or r.finish >= first_t)]
    alive = alive[-max_rows:]
    row = {r.req_id: i for i, r in enumerate(alive)}
    shape = (len(alive), len(recs))
    codes = np.full(shape, ABSENT, dtype=np.int8)
    tokens = np.zeros(shape, dtype=np.int32)
    context = np.zeros(shape, dtype=np.int32)
    for i, r in enumerate(alive):
        start = int(np.searchsorted(t_end, r.arrival, side="left"))
        stop = len(recs) if r.finish is None else int(np.searchsorted(t_end, r.finish, side="left")) + 1
        codes[i, start:stop] = WAITING
        if r.finish is not None and stop - 1 < len(recs) and stop >= 1:
            codes[i, stop - 1] = FINISHED
    for j, rec in enumerate(recs):
        for slot in rec.batch:
            i = row.get(slot.req_id)
            if i is None:
                continue
            if codes[i, j] != FINISHED:
                codes[i, j] = PREFILL if slot.phase == "prefill" else DECODE
            tokens[i, j] = slot.num_tokens
            context[i, j] = slot.context_len
        for rid in rec.preempted:
            i = row.get(rid)
            if i is not None:
                codes[i, j] = PREEMPTED
    return ScheduleState(
        steps=np.arange(first, first + len(recs)),
        req_ids=[r.req_id for r in alive],
        codes=codes,
        tokens=tokens,
        context=context,
        prefill_tokens=np.array([r.prefill_tokens for r in recs], dtype=np.int64),
        decode_tokens=np.array([r.decode_tokens for r in recs], dtype=np.int64),
    )


def window_note(st: ScheduleState, num_steps: int, requests: list[RequestRecord]) -> str:
    """What the schedule view leaves out, for its title ("" when it shows every step and request)."""
    parts = []
    if len(st.steps) and len(st.steps) < num_steps:
        parts.append(f"steps {span_text(int(st.steps[0]), int(st.steps[-1]), num_steps)}")
    if st.req_ids and len(st.req_ids) < len(requests):
        order = {r.req_id: i for i, r in enumerate(requests)}
        shown = [order[r] for r in st.req_ids if r in order]
        parts.append(f"requests {span_text(min(shown), max(shown), len(requests))}")
    return "; ".join(parts) + ": use the slider" if parts else ""


@dataclass
class KVState:
    step: int
    num_blocks: int
    used: int
    cached: int
    free: int
    grid: np.ndarray | None  # [rows, cols]: request colour index, KV_CACHED, KV_FREE, or KV_PAD
    owners: list[str]  # per cell, the owning request ids joined ("" when free)
    shared: np.ndarray | None  # [n, 2] (row, col) of blocks owned by several requests
    blocks_per_cell: int  # 1 when drawn block by block


def grid_shape(cells: int) -> tuple[int, int]:
    cols = max(1, math.ceil(math.sqrt(cells * 2)))
    return math.ceil(cells / cols), cols


def kv_state(
    snapshot: KVSnapshot | None, step: int, colour_of: dict[str, int], max_cells: int = 4096
) -> KVState | None:
    """The block pool at one step: who owns each block, which are cached, which are shared."""
    if snapshot is None:
        return None
    s = snapshot
    if s.owners is None:
        return KVState(step, s.num_blocks, s.used, s.cached, s.free, None, [], None, 0)
    per_cell = max(1, math.ceil(s.num_blocks / max_cells))
    cells = math.ceil(s.num_blocks / per_cell)
    rows, cols = grid_shape(cells)
    grid = np.full(rows * cols, KV_PAD, dtype=np.int32)
    grid[:cells] = KV_FREE
    labels = [""] * (rows * cols)
    shared = []
    if per_cell == 1:
        owned = s.owners
        for block, reqs in owned.items():
            if block >= cells:
                continue
            grid[block] = colour_of.get(reqs[0], 0)
            labels[block] = ", ".join(reqs)
            if len(reqs) > 1:
                shared.append(divmod(block, cols))
        for b in s.cached_ids or []:
            grid[b] = KV_CACHED
    else:
        used_per_cell = np.zeros(cells)
        for block in s.owners:
            used_per_cell[block // per_cell] += 1
        grid[:cells] = np.where(used_per_cell > 0, 0, KV_FREE)
        labels[:cells] = [f"{int(u)}/{per_cell} blocks used" for u in used_per_cell]
    return KVState(
        step,
        s.num_blocks,
        s.used,
        s.cached,
        s.free,
        grid.reshape(rows, cols),
        labels,
        np.array(shared, dtype=np.int64).reshape(-1, 2),
        per_cell,
    )


def kv_note(kv: KVState) -> str:
    """Why the block map is not drawn ("" when it is): owners were not recorded in the trace."""
    if kv.grid is not None:
        return ""
    return (
        f"{kv.num_blocks:,} blocks: owners not recorded (trace_kv_owners=False); "
        "the used/cached/free counts below are exact"
    )


def kv_series(steps: list[StepRecord], span: range) -> dict[str, np.ndarray]:
    """Used, cached and free blocks over the steps of `span`."""
    kv = [steps[i].kv for i in span]
    return {
        "step": np.array([steps[i].step for i in span]),
        "used": np.array([k.used if k else 0 for k in kv]),
        "cached": np.array([k.cached if k else 0 for k in kv]),
        "free": np.array([k.free if k else 0 for k in kv]),
    }
