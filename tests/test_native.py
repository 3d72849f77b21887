"""The native engine on the real embedded SmolLM2-135M weights, on the CPU (and CUDA when present).

Greedy tokens are checked against Hugging Face `transformers` on the same checkpoint; the
scheduling variants (chunked prefill, each policy, preemption, prefix caching) must give the
same greedy tokens as a plain run, and their traces must show the mechanism at work.
"""

from __future__ import annotations

import pytest
import torch

import llmlab
from llmlab import workloads
from llmlab.core.records import StepRecord
from llmlab.engines.native.kv_cache import KV_DTYPES, LayerKV

pytestmark = pytest.mark.slow

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

PROMPTS = [
    "The history of computing began",
    "Write a short poem about the sea.",
    "1, 2, 3, 4,",
    "def fibonacci(n):",
    "Once upon a time, in a small village by the river, there lived an old baker who",
    "The three largest planets in the solar system are",
    "A recipe for bread needs flour, water, salt and",
    "Explain in simple words how a bridge carries the weight of the cars that cross it, "
    "and why engineers care so much about the materials they choose for it:",
]


@pytest.fixture(scope="module", params=DEVICES)
def engine(request, smollm2_path):
    eng = llmlab.launch("native", device=request.param, dtype="float32", num_blocks=512, max_num_batched_tokens=512)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf_reference(smollm2_path):
    """transformers' greedy tokens for PROMPTS, one prompt at a time, EOS not stopping generation."""
    from transformers import AutoModelForCausalLM

    tok = llmlab.models.load_tokenizer(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32).eval()
    model.generation_config.eos_token_id = None
    refs = []
    with torch.inference_mode():
        for p in PROMPTS:
            ids = torch.tensor([tok.encode(p, add_special_tokens=False)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=32, do_sample=False)
            refs.append(out[0, ids.shape[1] :].tolist())
    return refs


def greedy(eng, prompts=PROMPTS, max_tokens=32):
    return [c.token_ids for c in eng.generate(prompts, max_tokens=max_tokens, ignore_eos=True)]


def test_greedy_matches_transformers_in_one_batch(engine, hf_reference):
    run = engine.run(workloads.fixed(PROMPTS, max_tokens=32, ignore_eos=True))
    got = [run.outputs[str(i)].token_ids for i in range(len(PROMPTS))]
    assert got == hf_reference
    assert run.steps.batch_size.max() == len(PROMPTS)  # they really shared a batch


def test_greedy_matches_transformers_one_at_a_time(engine, hf_reference):
    got = [greedy(engine, [p])[0] for p in PROMPTS]
    assert got == hf_reference


def long_prompts(engine, n=6, length=(110, 180)):
    return workloads.synthetic(n, prompt_len=length, output_len=12, seed=3)


@pytest.fixture(scope="module")
def plain_tokens(engine):
    """Tokens of the long-prompt workload, with a budget that fits every prompt in one step."""
    run = engine.run(long_prompts(engine))
    assert run.steps.prefill_tokens.max() > 110
    return {k: v.token_ids for k, v in run.outputs.items()}


@pytest.mark.parametrize("policy", ["chunked", "prefill_first", "splitfuse", "static"])
def test_policies_and_chunked_prefill_keep_greedy_tokens(smollm2_path, engine, plain_tokens, policy):
    eng = llmlab.launch(
        "native",
        device=engine.info.device,
        dtype="float32",
        policy=policy,
        max_num_batched_tokens=32,
        num_blocks=512,
        enable_prefix_caching=False,
    )
    run = eng.run(long_prompts(eng))
    assert {k: v.token_ids for k, v in run.outputs.items()} == plain_tokens
    steps, slots = run.steps, run.slots
    if policy == "static":
        # the whole batch is prefilled together, then nobody joins until it drains
        assert steps.prefill_tokens.iloc[0] == run.requests.prompt_tokens.sum()
    else:
        assert steps.prefill_tokens.max() <= 32
        chunks = slots[slots.phase == "prefill"].groupby("req_id").size()
        assert (chunks > 1).all()  # every long prompt was split into chunks
    if policy == "prefill_first":
        mixed = slots.groupby("step").phase.nunique()
        assert (mixed == 1).all()
    eng.close()


def test_kv_pool_is_shaped_by_blocks(engine):
    """Each layer's K/V pool is [num_blocks, block_size, kv_heads, head_dim]: the block size lives in
    the pool, not in the model layers."""
    cfg, blocks = engine.runner.cfg, engine.blocks
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    shape = (blocks.num_blocks, blocks.block_size, cfg["num_key_value_heads"], head_dim)
    assert len(engine.runner.kv_caches) == cfg["num_hidden_layers"]
    for kv in engine.runner.kv_caches:
        assert tuple(kv.k.shape) == tuple(kv.v.shape) == shape
        assert kv.block_size == blocks.block_size and kv.num_blocks == blocks.num_blocks
    assert engine.runner.block_size == blocks.block_size
    assert not any(hasattr(m, "block_size") for m in engine.runner.model.modules())


@pytest.mark.parametrize("kv_dtype", KV_DTYPES)
def test_pool_writes_by_slot_and_reads_by_block(kv_dtype):
    """Token slot block * block_size + offset lands in row `offset` of block `block` (of K, V and the
    int8 scales), and `read` returns a block table's tokens in table order."""
    num_blocks, block_size, heads, dim = 5, 4, 2, 8
    kv = LayerKV(kv_dtype, num_blocks, block_size, heads, dim, torch.float32, torch.device("cpu"))
    torch.manual_seed(0)
    k, v = torch.randn(3, heads, dim), torch.randn(3, heads, dim)
    where = [(3, 1), (0, 3), (3, 2)]  # (block, offset) of each token
    kv.write(torch.tensor([b * block_size + o for b, o in where]), k, v)
    keys, values = kv.read(torch.tensor([[3, 0], [0, 3]]))
    assert keys.shape == values.shape == (2, 2 * block_size, heads, dim)
    for i, (b, o) in enumerate(where):
        assert kv.k[b, o].any() and kv.v[b, o].any()
        if kv.k_scale is not None:
            assert (kv.k_scale[b, o] > 0).all() and (kv.v_scale[b, o] > 0).all()
        first = 0 if b == 3 else block_size  # row of block b in the first table [3, 0]
        torch.testing.assert_close(keys[0, first + o], kv.roundtrip(k[i]), rtol=0, atol=0)
        torch.testing.assert_close(values[0, first + o], kv.roundtrip(v[i]), rtol=0, atol=0)
        torch.testing.assert_close(keys[1, (block_size - first) + o], keys[0, first + o], rtol=0, atol=0)
    untouched = torch.ones(num_blocks, block_size, dtype=torch.bool)
    untouched[tuple(zip(*where, strict=True))] = False
    assert not kv.k[untouched].any() and not kv.v[untouched].any()


def test_tiny_pool_preempts_and_keeps_greedy_tokens(engine, plain_tokens):
    eng = llmlab.launch("native", device=engine.info.device, dtype="float32", block_size=16, num_blocks=28)
    run = eng.run(long_prompts(eng))
    assert {k: v.token_ids for k, v in run.outputs.items()} == plain_tokens
    assert run.steps.preempted.sum() > 0
    assert run.requests.num_preemptions.sum() == run.steps.preempted.sum()
    assert run.steps.kv_used.max() <= 28
    # recomputed requests scheduled more tokens than prompt + output - 1
    done = run.slots.groupby("req_id").num_tokens.sum()
    req = run.requests.set_index("req_id")
    recomputed = req.num_preemptions > 0
    assert (done[recomputed.index[recomputed]] > (req.prompt_tokens + req.output_tokens - 1)[recomputed]).all()
    eng.close()


def test_prefix_caching_shares_blocks_and_keeps_greedy_tokens(engine):
    wl = workloads.shared_prefix(6, max_tokens=12, ignore_eos=True, seed=1)
    eng = llmlab.launch("native", device=engine.info.device, dtype="float32", max_num_batched_tokens=256)
    seen: list[StepRecord] = []
    run = eng.run(wl)
    seen = run.trace.step_records
    plain = engine.run(workloads.shared_prefix(6, max_tokens=12, ignore_eos=True, seed=1, prefix="p"))
    assert [run.outputs[str(i)].token_ids for i in range(6)] == [plain.outputs[f"p{i}"].token_ids for i in range(6)]
    assert run.steps.prefix_hit_tokens.sum() > 0
    assert run.requests.cached_tokens.sum() == run.steps.prefix_hit_tokens.sum()
    shared = [b for s in seen for b, owners in (s.kv.owners or {}).items() if len(owners) > 1]
    assert shared, "no KV block was owned by two requests at once"
    eng.close()


def test_block_accounting_matches_block_tables(engine):
    """At every step, the snapshot's owners are exactly the running requests' block tables."""
    checked = []

    def check(rec: StepRecord) -> None:
        tables = {r.req_id: list(r.block_ids) for r in engine.scheduler.running}
        owners = rec.kv.owners
        from_owners: dict[str, set[int]] = {}
        for block, reqs in owners.items():
            for r in reqs:
                from_owners.setdefault(r, set()).add(block)
        assert from_owners == {r: set(t) for r, t in tables.items() if t}
        assert rec.kv.used == len(owners) <= rec.kv.num_blocks
        assert rec.kv.used + rec.kv.cached + rec.kv.free == rec.kv.num_blocks
        checked.append(rec.step)

    wl = workloads.poisson(rate=50.0, n=10, prompt_len=(20, 120), output_len=(4, 20), seed=5)
    run = engine.run(wl, live=True)
    run.subscribe(check)
    run.wait()
    assert run.error is None and run.status == "finished"
    assert not run.subscriber_errors, run.subscriber_errors
    assert checked
    last = run.trace.step_records[-1].kv
    assert last.used == 0 and last.cached + last.free == last.num_blocks


def test_same_seed_same_trace_and_tokens(engine):
    def sampled():
        engine.reset_prefix_cache()  # start both runs from the same (cold) cache
        return engine.run(workloads.synthetic(5, prompt_len=(10, 40), output_len=16, seed=2, temperature=0.8))

    a, b = sampled(), sampled()
    assert {k: v.token_ids for k, v in a.outputs.items()} == {k: v.token_ids for k, v in b.outputs.items()}
    cols = ["step", "batch_size", "prefill_tokens", "decode_tokens", "waiting", "running", "kv_used"]
    assert a.steps[cols].equals(b.steps[cols])
    assert a.slots.equals(b.slots)
    greedy_run = engine.run(workloads.synthetic(5, prompt_len=(10, 40), output_len=16, seed=2))
    assert {k: v.token_ids for k, v in a.outputs.items()} != {k: v.token_ids for k, v in greedy_run.outputs.items()}


def test_per_request_seed_reproduces_tokens(engine):
    kw = dict(max_tokens=12, temperature=1.0, top_p=0.9, top_k=50, seed=1234)
    one = engine.generate("The river", **kw)[0].token_ids
    two = engine.generate(["Something else entirely", "The river"], **kw)[1].token_ids
    assert one == two


def test_stop_strings_and_eos(engine):
    out = engine.generate("1, 2, 3, 4,", max_tokens=30, stop=[" 8"])[0]
    assert out.finish_reason == "stop" and " 8" not in out.text and "7" in out.text
    chat = engine.generate("What is the capital of France?", max_tokens=40, chat=True)[0]
    assert "Paris" in chat.text and chat.finish_reason == "stop"
    assert chat.token_ids[-1] in engine.eos_token_ids


def test_bad_input_names_value_and_engine_survives(engine, tmp_path):
    long = "word " * 9000
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(long, max_tokens=4)
    with pytest.raises(ValueError, match="max_tokens=0"):
        engine.generate("hello", max_tokens=0)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"record": "info"\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl"):
        llmlab.load(bad)
    assert engine.generate("The history of computing began", max_tokens=8)[0].token_ids


def test_bad_launch_knobs_fail_before_loading():
    with pytest.raises(ValueError, match="no-such-model"):
        llmlab.launch("native", model="/no-such-model")
    with pytest.raises(ValueError, match="block_size=0"):
        llmlab.launch("native", block_size=0)
    with pytest.raises(ValueError, match="'fifo'"):
        llmlab.launch("native", policy="fifo")
    with pytest.raises(ValueError, match="warp"):
        llmlab.launch("warp")
    with pytest.raises(ValueError, match="max_num_seqs=0"):
        llmlab.launch("native", max_num_seqs=0)


def test_request_larger_than_pool(smollm2_path):
    eng = llmlab.launch("native", dtype="float32", block_size=16, num_blocks=4)
    with pytest.raises(ValueError, match="num_blocks"):
        eng.generate("hello there", max_tokens=100)
    assert len(eng.generate("hello there", max_tokens=8)[0].token_ids) > 0
    eng.close()


def test_error_inside_engine_is_recorded_and_engine_survives(engine, monkeypatch):
    calls = {"n": 0}
    real = engine.runner.execute

    def flaky(batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("injected failure")
        return real(batch)

    monkeypatch.setattr(engine.runner, "execute", flaky)
    run = engine.run(workloads.synthetic(4, prompt_len=20, output_len=10, seed=0))
    assert run.status == "failed" and "injected failure" in str(run.error)
    assert len(run.trace.step_records) == 2
    monkeypatch.undo()
    assert not engine.has_unfinished() and engine.blocks.num_used == 0
    assert len(engine.generate("The river", max_tokens=5, ignore_eos=True)[0].token_ids) == 5


def test_live_run_returns_at_once_and_stops(engine):
    run = engine.run(workloads.synthetic(16, prompt_len=64, output_len=200, seed=0), live=True)
    assert run.status == "running"
    with pytest.raises(ValueError, match="busy"):
        engine.generate("hi", max_tokens=2)
    run.wait(timeout=3)
    run.stop().wait(timeout=30)
    assert run.done and run.status == "stopped"
    assert 0 < len(run.trace.step_records)
    assert not engine.has_unfinished() and engine.blocks.num_used == 0
    assert engine.generate("The river", max_tokens=3)[0].token_ids


def test_saved_run_loads_with_same_frames(engine, tmp_path):
    import pandas.testing as pdt

    run = engine.run(workloads.poisson(rate=20.0, n=6, prompt_len=(16, 64), output_len=(4, 12), seed=9))
    summary = run.summary()
    assert summary["requests"] == 6 and summary["output_tok_s"] > 0 and summary["ttft_p50"] > 0
    for suffix in (".jsonl", ".parquet"):
        path = run.save(tmp_path / f"run{suffix}")
        back = llmlab.load(path)
        pdt.assert_frame_equal(back.steps, run.steps)
        pdt.assert_frame_equal(back.requests, run.requests)
        pdt.assert_frame_equal(back.slots, run.slots)
        assert back.outputs["0"].text == run.outputs["0"].text
        pdt.assert_series_equal(back.summary(), summary)


def test_rotary_tables_equal_transformers_and_scaled_rope_defers_to_it(smollm2_path):
    from transformers import AutoConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from llmlab.engines.native.loader import plain_rope_theta, rotary_tables
    from llmlab.models import resolve

    spec = resolve(None)
    cos, sin = rotary_tables(spec.path, spec.config, 4096, torch.float32, torch.device("cpu"))
    want_cos, want_sin = LlamaRotaryEmbedding(AutoConfig.from_pretrained(spec.path))(
        torch.zeros(1), torch.arange(4096).unsqueeze(0)
    )
    assert torch.equal(cos, want_cos[0]) and torch.equal(sin, want_sin[0])
    llama3 = {"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}}
    assert plain_rope_theta(llama3) is None  # computed by transformers, scaling and all
    assert plain_rope_theta({"rope_theta": 1e4, "rope_scaling": None}) == 1e4


def test_tokenizer_is_loaded_once_and_equals_autotokenizer(smollm2_path):
    from transformers import AutoTokenizer

    from llmlab.models import load_tokenizer
    from llmlab.workloads import corpus_text

    tok = load_tokenizer(smollm2_path)
    assert load_tokenizer(smollm2_path) is tok  # engines on one checkpoint share it
    auto = AutoTokenizer.from_pretrained(smollm2_path)
    text = corpus_text()[:5000]
    assert tok(text).input_ids == auto(text).input_ids
    chat = [{"role": "user", "content": "Why are KV blocks paged?"}]
    assert tok.apply_chat_template(chat, tokenize=False) == auto.apply_chat_template(chat, tokenize=False)
