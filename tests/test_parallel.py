"""Tensor and pipeline parallel native engine on the embedded SmolLM2, float32, in worker processes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest

import llmlab
from llmlab.plan.cost import parallel_step_bytes
from llmlab.session.trace import Trace
from llmlab.widgets.parallel_view import parallel_figure
from llmlab.workloads import fixed

PROMPTS = [
    "The capital of France is",
    "1, 2, 3, 4,",
    "Once upon a time",
    "def add(a, b):",
    "Water boils at",
    "The colours of the rainbow are",
]
WORKLOAD = fixed(PROMPTS, max_tokens=16, ignore_eos=True)


def _launch(**kw):
    engine = llmlab.launch("native", dtype="fp32", num_blocks=64, **kw)
    return engine, engine.run(WORKLOAD)


@pytest.fixture(scope="module")
def ref():
    engine, run = _launch()
    yield engine, run
    engine.close()


@pytest.fixture(scope="module")
def tp2():
    engine, run = _launch(tp=2)
    yield engine, run
    engine.close()


@pytest.fixture(scope="module")
def pp2():
    engine, run = _launch(pp=2)
    yield engine, run
    engine.close()


def _tokens(run) -> dict[str, list[int]]:
    assert run.status == "finished", run.error
    return {k: list(v.token_ids) for k, v in run.trace.outputs.items()}


def test_tp2_and_pp2_give_the_greedy_tokens_of_tp1(ref, tp2, pp2):
    want = _tokens(ref[1])
    assert len(want) == 6 and all(len(t) == 16 for t in want.values())
    assert _tokens(tp2[1]) == want
    assert _tokens(pp2[1]) == want


def test_logits_agree_within_float32_reduction_tolerance(ref, tp2, pp2):
    """Sums split over ranks add in another order: the logits differ by rounding only."""
    ids = ref[0].tokenizer.encode(PROMPTS[0]) + _tokens(ref[1])["0"]
    base = ref[0].score(ids)
    for engine in (tp2[0], pp2[0]):
        diff = (engine.score(ids) - base).abs().max().item()
        assert diff < 2e-3, diff


@pytest.mark.parametrize("which", ["tp2", "pp2"])
def test_measured_bytes_equal_the_prediction_every_step(which, request):
    engine, run = request.getfixturevalue(which)
    shape = engine.info.config["model_path"]
    tp, pp = engine.info.config["tensor_parallel_size"], engine.info.config["pipeline_parallel_size"]
    steps = [r for r in run.trace.step_records if r.batch]
    assert steps and all(r.parallel is not None for r in steps)
    for rec in steps:
        tokens = [sum(s.num_tokens for s in rec.batch)]
        predicted = parallel_step_bytes(shape, tokens, tp, pp, "fp32")
        measured = [{k: r[k] for k in ("allreduce_bytes", "send_bytes", "recv_bytes")} for r in rec.parallel["ranks"]]
        assert measured == predicted
        assert sum(rec.parallel["micro_batch_tokens"]) == tokens[0]
    kinds = {e[3] for r in steps for e in r.parallel["timeline"]}
    assert kinds == ({"compute", "allreduce"} if tp > 1 else {"compute", "send", "recv"})


def test_each_rank_holds_only_its_shard(ref, tp2, pp2):
    one = ref[0].memory()
    tp_ranks = tp2[0].memory()["ranks"]
    # decoder linears: split between the ranks, nothing duplicated (oneDNN gives each rank's row-parallel
    # linears a zero bias of their own: 0.03%); 6 of 9 heads and half the MLP on rank 0
    assert sum(r["linear_bytes"] for r in tp_ranks) == pytest.approx(one["linear_bytes"], rel=1e-3)
    assert [tuple(r["heads"]) for r in tp_ranks] == [(0, 6), (6, 9)]
    assert [tuple(r["kv_heads"]) for r in tp_ranks] == [(0, 2), (2, 3)]
    cfg = json.loads((Path(ref[0].info.config["model_path"]) / "config.json").read_text())
    h, inter, q = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_attention_heads"]
    attn = h * h * (2 + 2 * cfg["num_key_value_heads"] / q)  # q, o and k, v per layer
    share = (attn * 6 / q + 3 * h * inter / 2) / (attn + 3 * h * inter)
    assert tp_ranks[0]["linear_bytes"] / one["linear_bytes"] == pytest.approx(share, rel=1e-3)
    # KV pool: each rank its heads' part of every block
    assert sum(r["kv_pool_bytes"] for r in tp_ranks) == one["kv_pool_bytes"]
    pp_ranks = pp2[0].memory()["ranks"]
    assert [tuple(r["layers"]) for r in pp_ranks] == [(0, 15), (15, 30)]
    assert [r["linear_bytes"] for r in pp_ranks] == [one["linear_bytes"] // 2] * 2  # 15 whole layers each
    for r in (*tp_ranks, *pp_ranks):
        assert r["weight_bytes"] < 0.75 * one["weight_bytes"]


def test_a_layout_the_heads_cannot_take_is_refused_before_loading():
    before = {c.pid for c in psutil.Process().children(recursive=True)}
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"tp=4 .* use tp in \[1, 2, 3, 9\]"):
        llmlab.launch("native", tp=4)
    with pytest.raises(ValueError, match=r"pp=31 exceeds the model's 30 layers"):
        llmlab.launch("native", pp=31)
    assert time.perf_counter() - t0 < 5.0  # before the weights load
    assert {c.pid for c in psutil.Process().children(recursive=True)} <= before  # no worker started


def test_the_parallel_view_draws_a_live_and_a_saved_run(tp2, pp2, tmp_path):
    run = tp2[1]
    whole = parallel_figure(run)
    assert {t.name for t in whole.data} >= {"compute", "allreduce", "idle"}
    step = next(r.step for r in run.trace.step_records if r.parallel)
    live = parallel_figure(run, step)
    path = run.save(tmp_path / "tp2.jsonl")
    saved = parallel_figure(llmlab.load(path), step)
    assert [list(t.x) for t in live.data] == [list(t.x) for t in saved.data]
    pipe = parallel_figure(pp2[1], step)
    assert {t.name for t in pipe.data} == {"compute", "send", "recv"}
    assert "2 micro-batch" in pipe.layout.title.text
    with pytest.raises(ValueError, match="no parallel records"):
        parallel_figure(Trace(run.trace.info))


def test_close_ends_every_worker(tp2):
    engine = tp2[0]
    pids = engine.core.runner.pool.pids
    assert all(psutil.pid_exists(p) for p in pids)
    engine.close()
    children = {c.pid for c in psutil.Process().children(recursive=True)}
    assert not children & set(pids)
    assert not any(psutil.pid_exists(p) for p in pids)


def test_a_killed_worker_fails_the_run_naming_its_rank(pp2):
    engine = pp2[0]
    pool = engine.core.runner.pool
    victim = pool.pids[1]
    os.kill(victim, signal.SIGKILL)
    run = engine.run(WORKLOAD)
    assert run.status == "failed"
    assert "worker rank 1" in str(run.error) and str(victim) in str(run.error)
    assert engine.core.blocks.num_free == engine.core.blocks.num_blocks  # every block back
    assert not any(psutil.pid_exists(p) for p in pool.pids)  # no worker left behind
    again = engine.run(WORKLOAD)
    assert again.status == "failed" and "launch the engine again" in str(again.error)


def test_the_dashboard_shows_the_parallel_panel_only_for_a_parallel_run(ref, pp2):
    from llmlab.widgets.dashboard import Dashboard

    assert Dashboard(ref[1]).parallel is None
    board = Dashboard(pp2[1])
    assert board.parallel is not None and board.parallel in board.children
    assert {t.name for t in board.parallel.data} == {"compute", "send", "recv"}
    assert "micro-batch" in board.static_html()
