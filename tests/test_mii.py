"""DeepSpeed-MII's own SplitFuse scheduler and DeepSpeed's own KV state manager on the embedded SmolLM2.

One engine serves the module; the tiny-pool engine starts after it closes, which also proves that a
second launch in one process works. Every schedule and block id below is decided by MII's and
DeepSpeed's code (see llmlab/engines/mii/engine.py); only the forward is llmlab's.
"""

from __future__ import annotations

import pytest

import llmlab
from llmlab import workloads

pytest.importorskip("deepspeed", reason="install llmlab[mii] (make test does) to test the MII engine")
pytest.importorskip("mii", reason="install llmlab[mii] (make test does) to test the MII engine")

PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "Once upon a time, in a small village by the sea,",
    "The three primary colours are",
    "To make a cup of tea, first",
    "def fibonacci(n):",
]
LONG = " ".join(f"Item {i} is a word." for i in range(20))  # about 120 tokens: several chunks at a 32-token budget
BUDGET = 32
KNOBS = {
    "device": "cpu",
    "dtype": "float32",
    "block_size": 16,
    "num_blocks": 64,
    "max_num_seqs": 8,
    "max_num_batched_tokens": BUDGET,
}


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = llmlab.launch("mii", **KNOBS)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def run(engine):
    out = engine.run(workloads.fixed([*PROMPTS, LONG], max_tokens=16, ignore_eos=True))
    assert out.error is None, out.error
    return out


def test_splitfuse_splits_the_long_prompt_while_others_decode(run):
    steps = run.trace.step_records
    long_id = str(len(PROMPTS))
    chunks = [(k, s) for k, r in enumerate(steps) for s in r.batch if s.req_id == long_id and s.phase == "prefill"]
    prompt_len = len(run.outputs[long_id].prompt_token_ids)
    assert len(chunks) >= 3, chunks  # MII split it over several steps
    assert sum(s.num_tokens for _, s in chunks) == prompt_len
    assert any(any(o.phase == "decode" for o in steps[k].batch) for k, _ in chunks), "no decode shared a chunk's step"
    for r in steps:
        assert sum(s.num_tokens for s in r.batch) <= BUDGET
        assert len(r.batch) <= KNOBS["max_num_seqs"]


def test_every_block_is_free_or_held_by_a_tracked_sequence(run, engine):
    pool = KNOBS["num_blocks"]
    for r in run.trace.step_records:
        held = [b for b in r.kv.owners]
        assert len(held) == len(set(held))  # no block held twice
        assert r.kv.free + len(held) == pool == r.kv.num_blocks
        assert r.kv.used == len(held)
    last = run.trace.step_records[-1].kv
    assert last.free == pool and not last.owners
    assert engine.core.manager.n_tracked_sequences == 0
    assert int(engine.core.manager.free_blocks[0]) == pool


def test_trace_uses_the_users_ids_and_deepspeeds_block_ids(run):
    ids = {str(i) for i in range(len(PROMPTS) + 1)}
    assert set(run.slots.req_id) == ids
    owners = {o for r in run.trace.step_records for v in r.kv.owners.values() for o in v}
    assert owners == ids
    assert run.trace.info.engine == "mii" and (run.steps.source == "exact").all()
    # a request holds ceil(context / block_size) of DeepSpeed's blocks once its step has run
    for r in run.trace.step_records:
        held: dict[str, int] = {}
        for who in r.kv.owners.values():
            held[who[0]] = held.get(who[0], 0) + 1
        for s in r.batch:
            if s.req_id not in held:  # the run's end: MII flushed the last requests as they finished
                assert s.req_id in r.finished and r is run.trace.step_records[-1]
                continue
            assert held[s.req_id] == -(-s.context_len // KNOBS["block_size"])


def test_greedy_text_equals_the_native_engine(run):
    native = llmlab.launch("native", dtype="float32")
    try:
        want = native.run(workloads.fixed([*PROMPTS, LONG], max_tokens=16, ignore_eos=True))
    finally:
        native.close()
    got = {k: v.token_ids for k, v in run.outputs.items()}
    assert got == {k: v.token_ids for k, v in want.outputs.items()}
    assert all(len(t) == 16 for t in got.values())
    assert [run.outputs[k].text for k in sorted(got)] == [want.outputs[k].text for k in sorted(got)]


def test_dashboard_renders_and_a_saved_run_replays(run, tmp_path):
    d = run.show(step=-1)
    n = len(run.trace.step_records)
    assert list(d.schedule.figure.data[0].x) == list(range(n))
    used = next(t for t in d.kv.figure.data if t.name == "used blocks")
    assert list(used.y) == run.steps.kv_used.tolist()
    assert "mii" in run.to_html(tmp_path / "mii.html").read_text()
    back = llmlab.load(run.save(tmp_path / "mii.jsonl"))
    assert back.trace.info.engine == "mii"
    assert [r.kv.owners for r in back.trace.step_records] == [r.kv.owners for r in run.trace.step_records]
    k = n // 2
    replay = back.show(step=k)
    assert replay.counter.value == f"step {k}"


def test_pool_too_small_names_the_knob_then_relaunch_works(engine):
    engine.close()
    tiny = llmlab.launch("mii", **{**KNOBS, "num_blocks": 2})
    try:
        with pytest.raises(ValueError, match="num_blocks"):
            tiny.run(workloads.fixed([LONG], max_tokens=8, ignore_eos=True))
        assert tiny.generate("The capital of France is", max_tokens=4)[0].token_ids  # it survives
    finally:
        tiny.close()
    # relaunched with a pool of 4 blocks (64 tokens) for three requests of 50 tokens each: MII evicts a
    # running request (reset_request_status); then the first finishes while its blocks await MII's flush,
    # nothing else fits, and MII's own scheduler asserts: llmlab names the knob and frees every block
    again = llmlab.launch("mii", **{**KNOBS, "num_blocks": 4})
    try:
        wl = workloads.synthetic(3, prompt_len=20, output_len=30, ignore_eos=True, seed=3)
        run = again.run(wl)
        assert isinstance(run.error, ValueError) and "launch with more num_blocks" in str(run.error)
        assert "no request consumes KV cache" in str(run.error)  # MII's own words, kept as the cause
        assert run.steps.preempted.sum() > 0
        assert all(r.kv.free + len(r.kv.owners) == 4 for r in run.trace.step_records)
        assert again.core.manager.n_tracked_sequences == 0 and int(again.core.manager.free_blocks[0]) == 4
        ok = again.run(workloads.synthetic(1, prompt_len=20, output_len=30, ignore_eos=True, seed=3))
        assert ok.error is None and len(ok.outputs[next(iter(ok.outputs))].token_ids) == 30
    finally:
        again.close()


def test_settings_mii_cannot_honour_are_refused():
    with pytest.raises(ValueError, match="enable_chunked_prefill"):
        llmlab.launch("mii", enable_chunked_prefill=False)
    with pytest.raises(ValueError, match="no setting policy"):
        llmlab.launch("mii", policy="chunked")


def test_cpu_patches_are_scoped_and_refuse_a_missing_name():
    import importlib

    from llmlab.engines.mii import patches

    before = {(p.module, p.name): getattr(importlib.import_module(p.module), p.name) for p in patches.PATCHES}
    with patches.cpu_patches():
        changed = {k for k, v in before.items() if getattr(importlib.import_module(k[0]), k[1]) is not v}
    assert changed == set(before)  # each patch applied inside the block
    after = {(p.module, p.name): getattr(importlib.import_module(p.module), p.name) for p in patches.PATCHES}
    assert after == before  # and every original back outside it
    gone = patches.Patch("deepspeed.inference.v2.ragged.kv_cache", "no_such_name", lambda o: o, "test")
    with pytest.raises(patches.PatchError, match=r"no_such_name is not there.*deepspeed==0\.19\.8"):
        with patches.cpu_patches((*patches.PATCHES[:2], gone)):
            pass
    assert {(p.module, p.name): getattr(importlib.import_module(p.module), p.name) for p in patches.PATCHES} == before


def test_the_simulator_imitates_a_mii_run(run):
    """llmlab's `splitfuse` policy, fed MII's configuration, batches the same workload; where it
    differs from MII's real schedule is for a learner to see (notebook 04)."""
    from llmlab.plan import calibrate
    from llmlab.plan.calibrate import simulate_like

    predicted = simulate_like(run, calibrate(run))
    assert predicted.info.config["policy"] == "splitfuse"
    assert set(predicted.outputs) == set(run.outputs)


def test_close_during_a_live_run_stops_it_and_frees_deepspeeds_pool(smollm2_path):
    import threading
    import time

    eng = llmlab.launch("mii", **KNOBS)
    run = eng.run(workloads.synthetic(6, prompt_len=40, output_len=64, ignore_eos=True, seed=5), live=True)
    deadline = time.monotonic() + 120
    while len(run.trace) < 3 and not run.done and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not run.done, "the run finished before close() could interrupt it"
    core, manager = eng.core, eng.core.manager
    eng.close()
    assert run.done and run.status == "stopped" and run.error is None, run
    # the stopped requests were aborted through MII's flush: DeepSpeed tracks none and every block is free
    assert manager.n_tracked_sequences == 0 and int(manager.free_blocks[0]) == KNOBS["num_blocks"]
    assert not [t for t in threading.enumerate() if t.name.startswith("llmlab")]
    assert core.closed and core.pipe is None
    with pytest.raises(ValueError, match="closed"):
        eng.run(workloads.synthetic(1, prompt_len=8, output_len=2))


def test_cuda_path_builds_deepspeeds_engine_without_patches_fake_cuda_boundary(smollm2_path, monkeypatch):
    """This machine has no GPU, so the CUDA boundary is faked: `torch.cuda`, MII's NCCL
    `init_distributed`, and DeepSpeed's `InferenceEngineV2` (its layers are CUDA kernels). Above it,
    llmlab's CUDA path runs as it would on a GPU: DeepSpeed's own policy and config, MII's pipeline
    unpatched, and the taps reading the engine's own state manager."""
    import torch
    from deepspeed.inference.v2 import engine_v2
    from deepspeed.inference.v2.ragged import DSStateManager, KVCacheConfig
    from mii import utils as mii_utils

    from llmlab.engines.mii import patches

    host_patches = patches.cpu_patches  # only the fake below keeps DeepSpeed's state manager on the host
    built: dict = {}
    synced: list[int] = []

    def no_patches(*args, **kwargs):
        raise AssertionError("a CPU patch was applied on the CUDA path")

    class FakeCudaEngine:  # stands in for InferenceEngineV2, whose model needs CUDA kernels
        def __init__(self, policy, config):
            built["policy"], built["config"] = policy, config
            m = policy._model_config
            head = m.hidden_size // m.num_attention_heads
            kv = KVCacheConfig(
                block_size=128,
                cache_shape=(m.num_hidden_layers, m.num_key_value_heads, head),
                cache_dtype=m.torch_dtype,
            )
            with host_patches():
                self._state_manager = DSStateManager(config.state_manager, (kv,))

    monkeypatch.setattr(patches, "cpu_patches", no_patches)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: synced.append(1))
    monkeypatch.setattr(mii_utils, "init_distributed", lambda cfg: built.setdefault("dist", cfg))
    monkeypatch.setattr(engine_v2, "InferenceEngineV2", FakeCudaEngine)

    with pytest.raises(ValueError, match="block_size=16.*leave block_size unset"):
        llmlab.launch("mii", device="cuda", block_size=16)
    eng = llmlab.launch("mii", device="cuda", num_blocks=40, max_num_seqs=5, max_num_batched_tokens=48)
    try:
        sm = built["config"].state_manager
        assert (sm.max_ragged_batch_size, sm.max_ragged_sequence_count, sm.memory_config.size) == (48, 5, 40)
        assert type(built["policy"]).__name__ == "Llama2Policy"
        assert built["policy"]._model_config.torch_dtype == torch.bfloat16  # llmlab's default on a GPU
        assert built["dist"].tensor_parallel == 1
        assert synced, "MII's own pipeline (unpatched) synchronizes CUDA when it starts"
        info = eng.core.info
        assert info.device == "cuda" and info.config["cpu_patches"] == [] and info.config["block_size"] == 128
        manager = eng.core.manager
        assert manager is eng.core.pipe.inference_engine._state_manager
        seq = manager.get_or_create_sequence(7)
        seq.extend_kv_cache(manager.allocate_blocks(3))
        snap = eng.core.snapshot()
        assert (snap.free, snap.used) == (37, 3)
        assert eng.core.tracked_blocks() == {"uid7": seq.all_block_ids().tolist()}
        manager.flush_sequence(7)
        assert eng.core.snapshot().free == 40
    finally:
        eng.close()
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        llmlab.launch("mii", device="cuda", dtype="float32")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks a machine without a CUDA GPU")
def test_cuda_on_a_cpu_only_machine_says_so():
    with pytest.raises(ValueError, match=r"device='cuda'.*no CUDA GPU.*device='cpu'"):
        llmlab.launch("mii", device="cuda")
