"""The simulator runs the native engine's own scheduler: fed the native run's measured step times
it must reproduce that run step for step (batches, preemptions, KV pool, finishes), and its
virtual clock must place arrivals and steps where the step times say."""

from __future__ import annotations

import pandas as pd
import pytest

import llmlab
from llmlab import workloads
from llmlab.core.request import Request
from llmlab.engines.sim import ReplayStepTimes, SimEngine, fast_forward, window_ids
from llmlab.session.driver import Session
from llmlab.session.trace import Trace

KNOBS = dict(block_size=8, num_blocks=24, max_num_batched_tokens=64, max_num_seqs=8, max_model_len=512)


def schedule_of(run, block_ids: bool = True) -> list[tuple]:
    """Everything the scheduler decided, step by step (times left out)."""
    out = []
    for r in run.trace.step_records:
        kv = r.kv
        out.append(
            (
                [(s.req_id, s.phase, s.num_tokens, s.context_len) for s in r.batch],
                r.admitted,
                r.preempted,
                r.finished,
                r.waiting,
                r.running,
                (kv.used, kv.cached, kv.free) + ((kv.owners, kv.cached_ids) if block_ids else ()),
                r.prefix_hit_tokens,
            )
        )
    return out


def replay(native_run, wl, **knobs):
    sim = llmlab.launch("sim", step_time=ReplayStepTimes(native_run), trace_kv_owners=True, **knobs)
    return sim.run(wl)


@pytest.fixture(scope="module")
def native(smollm2_path):
    eng = llmlab.launch("native", dtype="float32", **KNOBS)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def burst(native):
    """10 requests at once into a 24-block pool: chunked prefill and preemptions."""
    wl = workloads.synthetic(10, prompt_len=(20, 60), output_len=(8, 20), seed=5)
    run = native.run(wl)
    assert run.error is None
    return wl, run


@pytest.fixture(scope="module")
def closed_loop(native):
    """Text prompts sharing a system prompt (the sim counts them with the same SmolLM2 tokenizer),
    sent by 3 users in a closed loop: prefix-cache hits."""
    wl = workloads.shared_prefix(8, prefix_len=40, question_len=(4, 8), max_tokens=10, ignore_eos=True, seed=2)
    wl.concurrency = 3
    native.reset_prefix_cache()  # start cold, as the simulator does
    run = native.run(wl)
    assert run.error is None
    return wl, run


@pytest.mark.slow
def test_same_schedule_as_native_with_preemption(burst):
    wl, measured = burst
    assert measured.summary()["preemptions"] > 0  # the small pool really forced preemptions
    predicted = replay(measured, wl, **KNOBS)
    assert predicted.error is None
    assert schedule_of(predicted) == schedule_of(measured)
    # the virtual clock ran exactly the measured step durations, back to back
    sim_steps, nat_steps = predicted.steps, measured.steps
    assert sim_steps.duration.tolist() == pytest.approx(nat_steps.duration.tolist(), abs=1e-12)
    assert sim_steps.t_end.iloc[-1] == pytest.approx(nat_steps.duration.sum())
    cols = ["req_id", "prompt_tokens", "output_tokens", "num_preemptions", "finish_reason"]
    assert predicted.requests[cols].equals(measured.requests[cols])


@pytest.mark.slow
def test_same_schedule_closed_loop_with_prefix_hits(closed_loop):
    wl, measured = closed_loop
    assert measured.steps.prefix_hit_tokens.sum() > 0
    predicted = replay(measured, wl, **KNOBS)
    # the native pool was used by an earlier run, so its free blocks come in another order:
    # compare everything but the block ids
    assert schedule_of(predicted, block_ids=False) == schedule_of(measured, block_ids=False)


@pytest.mark.slow
def test_calibrate_on_one_run_validate_on_another(burst, closed_loop):
    """Fit on the burst (chunked prefill, preemptions), predict the closed loop with a shared prefix.

    This machine is shared, so its step times are noisy: the bounds here are loose on purpose and
    the errors reached are printed (see benchmarks/ for the measured numbers)."""
    from llmlab.plan import calibrate, validate

    cal = calibrate(burst[1])
    print(cal)
    assert cal.num_steps == len(burst[1].steps) - 1
    assert cal.median_step_error < 0.5
    table = validate(closed_loop[1], cal, workload=closed_loop[0])
    assert list(table.index) == ["throughput (output tok/s)", "TTFT p50 (s)", "TTFT p90 (s)", "ITL p50 (s)"]
    assert table[["measured", "predicted"]].gt(0).all().all()
    assert abs(table.loc["throughput (output tok/s)", "error"]) < 1.0  # within a factor of two


def test_calibrate_recovers_a_known_cost_model_and_keeps_the_run_time():
    """Steps priced by a cost model with known efficiency (prefills compute-bound, decodes
    memory-bound): the fit prices them back almost exactly. With noise on every step, the fitted
    steps still add up to the measured run's time, so predicted throughput starts out right."""
    import numpy as np

    from llmlab.plan import calibrate
    from llmlab.plan.cost import CostModel, Efficiency

    truth = CostModel(
        "smollm2-135m",
        "A10G",
        efficiency=Efficiency(compute=0.1, memory=0.9, overhead_s=3e-3, per_token_s=2e-5, per_seq_s=4e-4),
    )
    wl = workloads.poisson(40.0, 60, prompt_len=(16, 400), output_len=(4, 40), seed=3)
    for scale in (0.0, 0.3):
        noise = np.random.default_rng(1)

        def step_time(slots, noise=noise, scale=scale):
            return truth.step_time(slots) * float(np.exp(noise.normal(0.0, scale)))

        sim = llmlab.launch("sim", model="smollm2-135m", gpu="A10G", step_time=step_time, max_num_batched_tokens=256)
        run = sim.run(wl)
        cal = calibrate(run)
        steps = [r for r in run.trace.step_records if r.batch][1:]
        fitted = np.array([cal.step_time(r.batch) for r in steps])
        measured = np.array([r.t_end - r.t_start for r in steps])
        assert fitted.sum() == pytest.approx(measured.sum(), rel=1e-3)
        if scale == 0.0:
            assert cal.median_step_error < 0.01
            assert np.abs(fitted / measured - 1).max() < 0.03
            assert "compute=" in repr(cal) and "memory=" in repr(cal) and "unused" not in repr(cal)


def test_calibrate_says_when_the_roofline_explains_nothing():
    """Steps that cost a fixed time plus a time per token, whatever the model computes: the fit
    finds both terms and says the roofline was left unused, not that efficiency is 1e12."""
    from llmlab.plan import calibrate

    def host_bound(slots):
        return 0.05 + 2e-4 * sum(s.num_tokens for s in slots)

    sim = llmlab.launch("sim", model="smollm2-135m", gpu="A10G", step_time=host_bound, num_blocks=512)
    run = sim.run(workloads.poisson(20.0, 30, prompt_len=(16, 300), output_len=(4, 30), seed=2))
    cal = calibrate(run, gpu="A10G")
    assert cal.efficiency.overhead_s == pytest.approx(0.05, rel=1e-3)
    assert cal.efficiency.per_token_s == pytest.approx(2e-4, rel=1e-3)
    assert "roofline unused" in repr(cal) and "compute=" not in repr(cal)


def test_calibrate_and_validate_refuse_what_is_not_a_finished_run():
    import time

    from llmlab.plan import calibrate, validate

    def slow_step(slots):  # real time passes while the live run steps
        time.sleep(0.02)
        return 0.01

    sim = llmlab.launch("sim", model="smollm2-135m", gpu="A10G", step_time=slow_step, num_blocks=256)
    with pytest.raises(ValueError, match="calibrate needs a Run.*got None"):
        calibrate(None)
    with pytest.raises(ValueError, match="validate needs a Run.*got 'run.json'"):
        validate("run.json")
    live = sim.run(workloads.synthetic(8, prompt_len=(16, 64), output_len=(8, 16)), live=True)
    with pytest.raises(ValueError, match="still running.*run.wait"):
        calibrate(live)
    live.wait()
    with pytest.raises(ValueError, match="model='fast'.*Calibration"):
        validate(live, "fast", show=False)
    with pytest.raises(ValueError, match="given step_time.*gpu='A10G'"):
        calibrate(live)  # its step times came from no hardware
    assert live.status == "finished" and calibrate(live, gpu="A10G").num_steps > 0  # the refusals left it usable


def test_virtual_clock_places_arrivals_between_steps():
    # request 1 arrives during the third step (0.2..0.3 s): it joins at the fourth, at 0.3 s;
    # request 2 arrives long after the others finished: the clock jumps to its arrival
    wl = workloads.synthetic(3, prompt_len=10, output_len=4, arrival=[0.0, 0.25, 50.0])
    sim = llmlab.launch("sim", step_time=lambda slots: 0.1, num_blocks=64)
    run = sim.run(wl)
    req = run.requests.set_index("req_id")
    assert req.loc["0", "first_scheduled"] == 0.0
    assert req.loc["1", "first_scheduled"] == pytest.approx(0.3)
    assert req.loc["2", "first_scheduled"] == pytest.approx(50.0)
    # a lone request: prefill step gives the first token, then one token per step
    assert req.loc["2", "ttft"] == pytest.approx(0.1)
    assert req.loc["2", "e2e"] == pytest.approx(0.4)


def test_honours_max_tokens_and_ignores_eos():
    wl = workloads.synthetic(6, prompt_len=(5, 40), output_len=(1, 30), seed=1, ignore_eos=False)
    run = llmlab.launch("sim", step_time=lambda slots: 0.01, num_blocks=256).run(wl)
    got = run.requests.set_index("req_id").output_tokens
    want = {it.req_id: it.max_tokens for it in wl}
    assert got.to_dict() == want
    assert set(run.requests.finish_reason) == {"length"}


def test_step_time_sees_the_batch():
    seen = []

    def step_time(slots):
        seen.append(sum(s.num_tokens for s in slots))
        return 0.001 * seen[-1]

    wl = workloads.synthetic(4, prompt_len=30, output_len=5)
    run = llmlab.launch("sim", step_time=step_time, num_blocks=64).run(wl)
    assert seen == (run.steps.prefill_tokens + run.steps.decode_tokens).tolist()
    assert run.steps.duration.tolist() == pytest.approx([0.001 * n for n in seen])


def test_cost_model_run_renders_in_the_dashboard():
    wl = workloads.poisson(rate=20.0, n=12, prompt_len=(100, 400), output_len=(10, 40), seed=3)
    eng = llmlab.launch("sim", model="llama-3.1-8b", gpu="H100-SXM", max_model_len=4096)
    run = eng.run(wl)
    assert run.error is None and run.num_finished == 12
    assert run.info.engine == "sim" and run.info.views["latency"] == "predicted"
    assert run.info.config["num_blocks"] > 1000  # from the memory plan of an 80 GB GPU
    d = run.show(step=-1)  # open at the end: every step drawn
    heat = d.schedule.figure.data[0]
    assert list(heat.x) == list(range(len(run.steps)))
    assert sorted(heat.y) == sorted(run.requests.req_id)
    s = run.summary()
    assert s["ttft_p50"] > 0 and s["output_tok_s"] > 0


def test_bigger_gpu_predicts_faster_decode():
    wl = workloads.synthetic(8, prompt_len=200, output_len=50)
    times = {}
    for gpu in ("A100-80GB", "H100-SXM"):
        run = llmlab.launch("sim", model="llama-3.1-8b", gpu=gpu, max_model_len=4096).run(wl)
        times[gpu] = run.summary()["itl_p50"]
    assert times["H100-SXM"] < times["A100-80GB"]


@pytest.mark.parametrize(
    "knobs, words",
    [
        (dict(model="llama-3.1-8b", gpu="no-such-gpu"), "no-such-gpu"),
        (dict(model="no-such-model", gpu="H100-SXM"), "no-such-model"),
        (dict(model="llama-3.1-8b", gpu="H100-SXM", tp=3), "tp=3"),
        (dict(model="llama-3.1-70b", gpu="H100-SXM", max_model_len=8192), "short by"),
        (dict(model="llama-3.1-8b", gpu="H100-SXM", num_gpus=4, tp=2), "num_gpus=4"),
        (dict(model="llama-3.1-8b", gpu="H100-SXM", num_gpus=0), "num_gpus=0 must be a positive integer"),
        (dict(model="llama-3.1-70b", gpu="H100-SXM", num_gpus=3, pp=2), "num_gpus=3 is not a multiple of pp=2"),
        (dict(step_time=0.1, num_blocks=8), "step_time"),
        (dict(model="llama-3.1-8b", gpu="H100-SXM", efficiency={"compute": 0.5}), "got dict: e.g. efficiency=llmlab"),
        (dict(step_time=lambda s: 0.1, num_blocks=0), "num_blocks=0"),
    ],
)
def test_bad_knobs_raise_value_error(knobs, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(")):
        llmlab.launch("sim", **knobs)


def test_a_request_too_big_for_the_pool_is_refused_before_the_run():
    sim = llmlab.launch("sim", step_time=lambda s: 0.01, num_blocks=4, block_size=8)
    with pytest.raises(ValueError, match="num_blocks"):
        sim.run(workloads.synthetic(1, prompt_len=100, output_len=10))
    run = sim.run(workloads.synthetic(1, prompt_len=10, output_len=5))  # the engine is still usable
    assert run.num_finished == 1


def test_is_a_sim_engine():
    eng = llmlab.launch("sim", step_time=lambda s: 0.0, num_blocks=4)
    assert isinstance(eng, llmlab.Engine) and isinstance(eng.core, SimEngine)


def _ff_pair(wl, **knobs):
    """The same workload simulated step by step and with decode runs fast-forwarded."""
    out = []
    for ff in (False, True):
        eng = llmlab.launch("sim", fast_forward=ff, trace_kv_owners=False, **knobs)
        run = eng.run(wl)
        assert run.error is None
        out.append((eng, run))
    return out


def _pool_state(eng) -> tuple:
    b = eng.blocks
    return (
        list(b.free_blocks()),
        dict(b.cached),
        b.cached_free(),
        b.num_cached_free,
        list(b.ref_counts),
        list(b.block_hashes),
    )


SMALL = dict(model="smollm2-135m", gpu="H100-SXM", max_num_batched_tokens=64, max_model_len=256, max_num_seqs=16)


@pytest.mark.parametrize(
    "policy", ["chunked", "prefill_first", "splitfuse", "static", "guaranteed_no_evict", "max_utilization"]
)
@pytest.mark.parametrize("pool", [dict(block_size=16), dict(block_size=4, num_blocks=40)])
def test_fast_forward_records_the_same_trace_as_stepping(policy, pool):
    wl = workloads.poisson(rate=50, n=40, prompt_len=(8, 40), output_len=(4, 60), seed=1)
    (slow_eng, slow), (fast_eng, fast) = _ff_pair(wl, policy=policy, **SMALL, **pool)
    assert any(type(e).__name__ == "DecodeRun" for e in fast.trace._entries)  # it did fast-forward
    assert len(fast.trace._entries) < len(slow.trace._entries)
    assert [r.to_dict() for r in fast.trace.step_records] == [r.to_dict() for r in slow.trace.step_records]
    assert [r.to_dict() for r in fast.trace.request_records.values()] == [
        r.to_dict() for r in slow.trace.request_records.values()
    ]
    pd.testing.assert_frame_equal(fast.steps, slow.steps)
    assert fast.steps.kv_used.dtype == "int64"  # block counts stay integers
    pd.testing.assert_frame_equal(fast.slots, slow.slots)
    assert _pool_state(fast_eng) == _pool_state(slow_eng)  # same blocks, hashes and LRU order
    if pool.get("num_blocks") and policy not in ("static", "guaranteed_no_evict"):
        assert slow.summary()["preemptions"] > 0


@pytest.mark.parametrize("policy", ["chunked", "splitfuse"])
def test_steady_batches_match_the_policy_with_chunked_prompts_and_a_short_pool(policy, monkeypatch):
    # long prompts against a 64-token budget arrive in bursts: steps mix decodes, chunked
    # prefills and a queue, and the small pool preempts; the policy builds every batch, and
    # the stretches computed in bulk between them must be the steps it would have built
    bulk = []
    original = fast_forward._bulk_decode

    def spy(*args):
        done = original(*args)
        bulk.append(done)
        return done

    monkeypatch.setattr(fast_forward, "_bulk_decode", spy)
    wl = workloads.poisson(rate=200, n=40, prompt_len=(30, 120), output_len=(4, 40), seed=3)
    (slow_eng, slow), (fast_eng, fast) = _ff_pair(wl, policy=policy, **{**SMALL, "block_size": 4, "num_blocks": 60})
    assert any(bulk)
    assert slow.summary()["preemptions"] > 0
    runs = [e for e in fast.trace._entries if type(e).__name__ == "DecodeRun"]
    assert any(not new for r in runs for new in r.prefill_admitted)  # prompts went on inside runs
    assert any(r.waiting for r in runs)  # and steps with a queue
    assert any(type(e).__name__ == "StepRecord" and e.preempted for e in fast.trace._entries)  # stepped alone
    assert [r.to_dict() for r in fast.trace.step_records] == [r.to_dict() for r in slow.trace.step_records]
    assert _pool_state(fast_eng) == _pool_state(slow_eng)


def test_decode_runs_admit_arrivals_as_stepping_does():
    # requests arrive while others decode: a run goes on through each arrival, admitting it in
    # a step of all the decodes plus its prompt; prompts longer than the budget's rest are only
    # partly computed there (and go on in the next steps), and one-token requests finish in it
    wl = workloads.poisson(rate=100, n=60, prompt_len=(8, 90), output_len=(1, 30), seed=4)
    (slow_eng, slow), (fast_eng, fast) = _ff_pair(wl, **SMALL)
    runs = [e for e in fast.trace._entries if type(e).__name__ == "DecodeRun"]
    prefills = [(p, done) for r in runs for p, done in zip(r.prefills, r.prefill_samples, strict=True)]
    assert sum(done for _, done in prefills) > 10 and not all(done for _, done in prefills)
    finished_there = {p.req_id for r in runs for p in r.prefills} & {f for r in runs for f in r.finished}
    assert any(f not in r.req_ids for r in runs for f in finished_there if f in r.finished)
    assert len(fast.trace._entries) < len(slow.trace._entries) / 3
    assert [r.to_dict() for r in fast.trace.step_records] == [r.to_dict() for r in slow.trace.step_records]
    assert [r.to_dict() for r in fast.trace.request_records.values()] == [
        r.to_dict() for r in slow.trace.request_records.values()
    ]
    pd.testing.assert_frame_equal(fast.steps, slow.steps)
    pd.testing.assert_frame_equal(fast.slots, slow.slots)
    pd.testing.assert_frame_equal(fast.trace.itl, slow.trace.itl)
    assert _pool_state(fast_eng) == _pool_state(slow_eng)


@pytest.mark.parametrize("num_blocks", [None, 30, 17])
def test_fast_forward_with_identical_prompts_and_duplicate_blocks(num_blocks, monkeypatch):
    # identical prompts admitted together compute the same blocks: duplicates wait to register,
    # and a small pool evicts cached prefixes during the decode runs; here commits touch the same
    # prefixes, so the decode runs must take the step-by-step block path
    stepwise = []
    original = fast_forward._advance_stepwise
    monkeypatch.setattr(fast_forward, "_advance_stepwise", lambda *a: stepwise.append(1) or original(*a))
    prompts = [list(range(1, 14))] * 6 + [[1, 2, 3, 4, 5, 6, 7, 8, 20, 21]] * 3
    wl = workloads.fixed(prompts, max_tokens=50)
    knobs = dict(model="smollm2-135m", gpu="H100-SXM", block_size=4, max_model_len=128)
    if num_blocks:
        knobs["num_blocks"] = num_blocks
    (slow_eng, slow), (fast_eng, fast) = _ff_pair(wl, **knobs)
    assert stepwise
    assert [r.to_dict() for r in fast.trace.step_records] == [r.to_dict() for r in slow.trace.step_records]
    assert _pool_state(fast_eng) == _pool_state(slow_eng)


def test_fast_forward_stops_at_a_finish_when_a_commit_meets_a_cached_prefix(monkeypatch):
    # the third request repeats the first one's prompt a little later, so the output blocks it
    # fills hash like those the first registered already; the second finishes mid-run, and past
    # that finish the order of commits could matter, so the run must stop at it
    refused = []
    original = Request.drop_outputs

    def spy(self, n):
        if n > 0:  # a run past the finish was planned, then cut back to it
            refused.append(n)
        return original(self, n)

    monkeypatch.setattr(Request, "drop_outputs", spy)
    wl = workloads.fixed([list(range(1, 14)), list(range(30, 50)), list(range(1, 14))], max_tokens=60)
    wl.items[1].max_tokens = 30
    wl.items[2].arrival = 0.004
    knobs = dict(model="smollm2-135m", gpu="H100-SXM", block_size=4, max_model_len=128)
    (slow_eng, slow), (fast_eng, fast) = _ff_pair(wl, **knobs)
    assert refused
    assert len(fast.trace._entries) < len(slow.trace._entries)
    assert [r.to_dict() for r in fast.trace.step_records] == [r.to_dict() for r in slow.trace.step_records]
    assert _pool_state(fast_eng) == _pool_state(slow_eng)


def test_fast_forward_closed_loop_and_live_subscribers_see_every_step(tmp_path):
    wl = workloads.concurrency(4, 30, prompt_len=(8, 40), output_len=(4, 60), seed=2)
    knobs = dict(model="smollm2-135m", gpu="H100-SXM", block_size=8, num_blocks=50, max_model_len=128)
    (_, slow), _ = _ff_pair(wl, **knobs)
    eng = llmlab.launch("sim", trace_kv_owners=False, **knobs)
    session = Session(eng, wl)
    seen = []
    session.run.subscribe(seen.append)  # as a live dashboard does: it must get every step
    run = session.start(live=True).wait()
    assert run.error is None
    assert any(type(e).__name__ == "DecodeRun" for e in run.trace._entries)
    assert [r.to_dict() for r in run.trace.step_records] == [r.to_dict() for r in slow.trace.step_records]
    assert [r.to_dict() for r in seen] == [r.to_dict() for r in slow.trace.step_records]
    back = Trace.load(run.save(tmp_path / "ff.jsonl"))  # a file holds every step, expanded
    assert [r.to_dict() for r in back.step_records] == [r.to_dict() for r in slow.trace.step_records]


def test_memory_reports_the_native_engines_keys():
    eng = llmlab.launch("sim", model="smollm2-135m", gpu="H100-SXM")
    plan, mem = eng.memory_plan, eng.memory()
    assert mem["weights"] == eng.info.config["weights"] and mem["kv_dtype"] == eng.info.config["kv_dtype"]
    assert mem["num_blocks"] == eng.blocks.num_blocks == plan.kv_blocks
    assert mem["block_size"] == eng.blocks.block_size
    assert mem["kv_tokens"] == mem["num_blocks"] * mem["block_size"] == plan.kv_tokens
    assert mem["weight_bytes"] == int(plan.weights_bytes) > 0
    assert mem["kv_bytes_per_block"] == int(plan.kv_bytes_per_token * mem["block_size"]) > 0
    given = llmlab.launch("sim", step_time=lambda s: 0.0, num_blocks=4)  # no plan: only the pool is known
    assert given.memory_plan is None
    assert given.memory()["weight_bytes"] is None and given.memory()["num_blocks"] == 4


def test_corpus_windows_are_lists_of_shared_ids_left_out_of_completions():
    a, b = window_ids(100, 40), window_ids(90, 50)
    assert type(a) is list and a == list(range(100, 140)) and b == list(range(90, 140))
    assert all(x is y for x, y in zip(a, b[10:], strict=True))  # the same int objects: none made per window
    wl = workloads.synthetic(3, prompt_len=(8, 20), output_len=4, seed=0)
    wl.items[0] = workloads.WorkItem("ids", prompt=[5, 6, 7, 8], max_tokens=4)
    run = llmlab.launch("sim", step_time=lambda s: 0.001, num_blocks=32, block_size=4).run(wl)
    assert run.error is None
    assert run.outputs["ids"].prompt_token_ids == [5, 6, 7, 8]
    assert all(run.outputs[i.req_id].prompt_token_ids == [] for i in wl.items[1:])
