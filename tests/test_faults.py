"""Faults during a run: each is recorded on the run, frees every KV block, leaves no thread behind,
and the next run on the same engine is what a fresh run gives.

On the native engine (float32) and the simulator: an exception in the forward at step k, in the
sampler for one request, `run.stop()`, `close()` mid-run, Ctrl-C during a blocking run, and a
subscriber that raises. (vLLM's close() mid-run goes through the same `Engine.close`; its test
needs a vLLM start, so it lives with the vLLM tests.)
"""

from __future__ import annotations

import threading
import time

import pandas.testing as pdt
import pytest

import llmlab
from llmlab import workloads
from llmlab.engines.native import sampler
from llmlab.workloads import WorkItem, Workload


def llmlab_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("llmlab")]


def faulty_workload() -> Workload:
    return workloads.synthetic(4, prompt_len=16, output_len=6, seed=0)


def next_workload() -> Workload:
    return workloads.synthetic(3, prompt_len=16, output_len=5, seed=3)


def long_workload(n: int = 8) -> Workload:
    return workloads.synthetic(n, prompt_len=32, output_len=300, seed=1)


def tokens(run) -> dict[str, list[int]]:
    return {rid: c.token_ids for rid, c in run.outputs.items()}


def assert_clean(eng, run) -> None:
    """The run is over and recorded, its thread gone, every block free (cached ones count as free),
    no request left in the engine, and the engine free for the next run."""
    assert run.done and run.status in ("finished", "stopped", "failed")
    assert run.thread is None or not run.thread.is_alive()
    assert not llmlab_threads()
    assert not eng.has_unfinished() and not eng.requests
    assert eng.blocks.num_used == 0 and eng.blocks.num_free == eng.blocks.num_blocks
    assert not eng.core.busy.locked() and eng._session is None
    for r in run.trace.request_records.values():  # every request that started has ended: done or aborted
        assert r.finish_reason is not None, r
        assert (r.finish_reason == "abort") == (r.req_id not in run.outputs)


def step_counter(real, k: int, exc: BaseException):
    """`real`, but raising `exc` on its k-th call."""
    calls = {"n": 0}

    def wrapped(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise exc
        return real(*args, **kwargs)

    return wrapped


def started(run, steps: int = 2, timeout: float = 60) -> None:
    """Wait until a live run has published `steps` steps."""
    seen = threading.Event()
    count = {"n": 0}

    def on_step(rec) -> None:
        count["n"] += 1
        if count["n"] >= steps:
            seen.set()

    run.subscribe(on_step)
    assert seen.wait(timeout) and not run.done, "the live run did not get going"


# native -------------------------------------------------------------------------------
KNOBS = dict(dtype="float32", num_blocks=64, max_num_batched_tokens=128)


@pytest.fixture(scope="module")
def native(smollm2_path):
    eng = llmlab.launch("native", **KNOBS)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(native) -> dict[str, list[int]]:
    """The greedy tokens of `next_workload()` before anything went wrong on this engine."""
    run = native.run(next_workload())
    assert run.status == "finished"
    return tokens(run)


def assert_next_run_correct(eng, reference: dict[str, list[int]]) -> None:
    run = eng.run(next_workload())
    assert run.status == "finished" and run.error is None
    assert tokens(run) == reference
    assert_clean(eng, run)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_native_forward_raises_at_step_k(native, reference, monkeypatch, k):
    monkeypatch.setattr(native.runner, "execute", step_counter(native.runner.execute, k, RuntimeError("GPU fell off")))
    run = native.run(faulty_workload())
    monkeypatch.undo()
    assert run.status == "failed" and isinstance(run.error, RuntimeError) and "GPU fell off" in str(run.error)
    assert len(run.trace.step_records) == k - 1
    assert run.num_finished < run.total
    assert_clean(native, run)
    assert_next_run_correct(native, reference)


def test_native_sampler_fails_one_request_alone(native, reference, monkeypatch):
    greedy = [WorkItem(f"g{i}", prompt_len=16, corpus_offset=100 * i, max_tokens=6, ignore_eos=True) for i in range(3)]
    bad = WorkItem("bad", prompt_len=16, corpus_offset=999, max_tokens=6, ignore_eos=True, temperature=0.8, seed=13)
    clean = native.run(Workload("greedy", greedy))
    calls = {"n": 0}
    real = sampler.sample_row

    def flaky(logits, p, gen):
        if p.seed == 13:
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("sampler blew up")
        return real(logits, p, gen)

    monkeypatch.setattr(sampler, "sample_row", flaky)
    run = native.run(Workload("mixed", [*greedy, bad]))
    monkeypatch.undo()
    assert run.status == "finished" and run.error is None
    failed = run.trace.request_records["bad"]
    assert failed.finish_reason == "error" and "sampler blew up" in failed.error
    assert run.outputs["bad"].finish_reason == "error" and len(run.outputs["bad"].token_ids) == 2
    assert any("bad" in s.finished for s in run.trace.step_records)
    for item in greedy:  # the others went on as if nothing happened
        assert run.trace.request_records[item.req_id].error is None
        assert run.outputs[item.req_id].token_ids == clean.outputs[item.req_id].token_ids
    assert_clean(native, run)
    monkeypatch.setattr(sampler, "sample_row", flaky)
    calls["n"] = 0
    with pytest.raises(RuntimeError, match="request '0' failed: RuntimeError: sampler blew up"):
        native.generate([[1, 2, 3]], max_tokens=4, temperature=0.8, seed=13, ignore_eos=True)
    monkeypatch.undo()
    assert_next_run_correct(native, reference)


def test_native_stop_mid_run(native, reference):
    run = native.run(long_workload(), live=True)
    started(run)
    run.stop().wait(60)
    assert run.status == "stopped" and run.error is None
    assert 0 < len(run.trace.step_records) and run.num_finished < run.total
    assert_clean(native, run)
    assert_next_run_correct(native, reference)


@pytest.mark.parametrize("where", ["step", "forward"])
def test_native_ctrl_c_during_a_blocking_run(native, reference, monkeypatch, where):
    target = native.core if where == "step" else native.runner
    name = "step" if where == "step" else "execute"
    monkeypatch.setattr(target, name, step_counter(getattr(target, name), 4, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        native.run(faulty_workload())
    monkeypatch.undo()
    run = native.last_run
    assert run.status == "stopped" and isinstance(run.error, KeyboardInterrupt)
    assert len(run.trace.step_records) == 3
    assert_clean(native, run)
    assert_next_run_correct(native, reference)


def test_native_subscriber_that_raises(native, reference):
    run = native.run(faulty_workload(), live=True)
    run.subscribe(step_counter(lambda rec: None, 2, ValueError("bad widget")))
    run.wait(120)
    assert run.status == "finished" and run.error is None and run.num_finished == run.total
    assert [str(e) for e in run.subscriber_errors] == ["bad widget"]
    assert_clean(native, run)
    assert_next_run_correct(native, reference)


def test_native_close_mid_run_stops_it_first(smollm2_path):
    eng = llmlab.launch("native", **KNOBS)
    run = eng.run(long_workload(), live=True)
    started(run)
    eng.close()  # returned at once and the run died with KeyError('0'), before
    assert run.done and run.status == "stopped" and run.error is None
    assert run.num_finished < run.total and len(run.trace.step_records) >= 2
    assert eng.runner is None  # the weights are gone
    assert_clean(eng, run)
    with pytest.raises(ValueError, match="closed"):
        eng.run(next_workload())
    eng.close()  # twice is fine


# simulator ----------------------------------------------------------------------------
class StepTime:
    """0.01 simulated seconds a step, and raising `exc` on the k-th call (none when k is 0)."""

    def __init__(self, k: int = 0, exc: BaseException | None = None, sleep: float = 0.0) -> None:
        self.k, self.exc, self.sleep, self.calls = k, exc, sleep, 0

    def __call__(self, slots) -> float:
        self.calls += 1
        if self.calls == self.k:
            raise self.exc
        if self.sleep:
            time.sleep(self.sleep)
        return 0.01


def make_sim(step_time: StepTime | None = None, **knobs):
    return llmlab.launch("sim", step_time=step_time or StepTime(), num_blocks=48, block_size=8, **knobs)


def sim_workload() -> Workload:
    return workloads.synthetic(6, prompt_len=(10, 40), output_len=(5, 40), seed=0)


def assert_sim_next_run_correct(eng) -> None:
    eng.step_time = StepTime()
    run = eng.run(next_workload())
    fresh = make_sim().run(next_workload())
    assert run.status == "finished"
    # the same schedule; only the prefix cache's leftovers from earlier runs differ (cached vs free)
    pdt.assert_frame_equal(
        run.steps.drop(columns=["kv_cached", "kv_free"]), fresh.steps.drop(columns=["kv_cached", "kv_free"])
    )
    pdt.assert_frame_equal(run.requests, fresh.requests)
    assert_clean(eng, run)


@pytest.mark.parametrize("fast_forward", [True, False])
@pytest.mark.parametrize("k", [1, 4, 30])
def test_sim_step_time_raises_at_step_k(k, fast_forward):
    eng = make_sim(StepTime(k, RuntimeError("cost model broke")), fast_forward=fast_forward)
    run = eng.run(sim_workload())
    assert run.status == "failed" and "cost model broke" in str(run.error)
    assert run.num_finished < run.total
    assert_clean(eng, run)
    assert_sim_next_run_correct(eng)


@pytest.mark.parametrize("k", [1, 4, 30])
def test_sim_ctrl_c_during_a_blocking_run(k):
    eng = make_sim(StepTime(k, KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        eng.run(sim_workload())
    run = eng.last_run
    assert run.status == "stopped" and isinstance(run.error, KeyboardInterrupt)
    assert_clean(eng, run)
    assert_sim_next_run_correct(eng)


def test_sim_stop_and_close_mid_run():
    eng = make_sim(StepTime(sleep=0.002), fast_forward=False)
    run = eng.run(long_workload(), live=True)
    started(run)
    run.stop().wait(60)
    assert run.status == "stopped" and run.error is None and run.num_finished < run.total
    assert_clean(eng, run)
    assert_sim_next_run_correct(eng)

    eng.step_time = StepTime(sleep=0.002)
    run = eng.run(long_workload(), live=True)
    started(run)
    eng.close()
    assert run.status == "stopped" and run.error is None and run.num_finished < run.total
    assert_clean(eng, run)
    with pytest.raises(ValueError, match="closed"):
        eng.run(next_workload())


def test_sim_subscriber_that_raises():
    eng = make_sim()
    run = eng.run(sim_workload(), live=True)
    run.subscribe(step_counter(lambda rec: None, 2, ValueError("bad widget")))
    run.wait(60)
    assert run.status == "finished" and run.num_finished == run.total
    assert_clean(eng, run)
    assert_sim_next_run_correct(eng)


def test_a_subscriber_may_close_the_engine():
    """close() from the run's own thread cannot wait for the run: it stops it and frees at once."""
    eng = make_sim(StepTime(sleep=0.002), fast_forward=False)
    run = eng.run(long_workload(), live=True)
    run.subscribe(lambda rec: eng.close())
    run.wait(60)
    assert run.status == "stopped" and run.error is None and not run.subscriber_errors
    assert_clean(eng, run)
