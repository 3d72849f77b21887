"""The scheduling core on its own: block accounting, prefix caching, preemption and the policies."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.core.blocks import BlockManager, FreeBlockQueue, chain_hashes, token_blocks
from llmlab.core.policies import POLICIES
from llmlab.core.request import Request, SamplingParams, Status
from llmlab.core.scheduler import Scheduler, SchedulerConfig


def make(policy="chunked", num_blocks=64, block_size=4, budget=32, seqs=8, caching=True, chunked=True, max_len=256):
    cfg = SchedulerConfig(
        max_num_seqs=seqs,
        max_num_batched_tokens=budget,
        enable_chunked_prefill=chunked,
        enable_prefix_caching=caching,
        policy=policy,
        max_model_len=max_len,
        watermark=0.0,
    )
    return Scheduler(cfg, BlockManager(num_blocks, block_size, caching, watermark=0.0))


def req(rid, prompt, max_tokens=5):
    return Request(str(rid), list(prompt), SamplingParams(max_tokens=max_tokens, ignore_eos=True))


def check_blocks(s: Scheduler) -> None:
    """Reference counts equal the number of block tables holding each block; free ones hold none."""
    bm = s.blocks
    holders: dict[int, int] = {}
    for r in s.running:
        for b in r.block_ids:
            holders[b] = holders.get(b, 0) + 1
    for block_id, refs in enumerate(bm.ref_counts):
        assert refs == holders.get(block_id, 0)
    assert sorted(bm.free_blocks()) == [b for b, refs in enumerate(bm.ref_counts) if refs == 0]
    # the prefix cache and the block hashes point at each other; cached-free blocks are free and hashed
    assert {(h, b) for h, b in bm.cached.items()} == {(h, b) for b, h in enumerate(bm.block_hashes) if h is not None}
    assert bm.cached_free() == [b for b, h in enumerate(bm.block_hashes) if h is not None and bm.ref_counts[b] == 0]
    assert bm.num_cached_free == len(bm.cached_free())
    if bm.enable_prefix_caching:  # every block full of computed tokens is registered, or waits to be
        for r in s.running:
            full = r.block_ids[: r.num_computed_tokens // bm.block_size]
            assert r.req_id in bm.pending_duplicates or all(bm.block_hashes[b] is not None for b in full)
    assert bm.num_used <= bm.num_blocks
    snap = bm.snapshot(s.running)
    assert snap.used + snap.cached + snap.free == bm.num_blocks
    assert set(snap.owners) == set(holders)


def drive(s: Scheduler, reqs: list[Request], max_steps=10_000):
    """Run to completion with a fake executor whose next token depends only on the tokens so far."""
    for r in reqs:
        s.add(r)
    log = []
    scheduled: dict[str, int] = {r.req_id: 0 for r in reqs}
    for _ in range(max_steps):
        if not s.has_unfinished():
            break
        batch = s.schedule()
        assert batch, "nothing scheduled while requests remain"
        assert len({i.request.req_id for i in batch.items}) == len(batch.items)
        sampled = {}
        for item in batch.items:
            scheduled[item.request.req_id] += item.num_tokens
            if item.samples:
                sampled[item.request.req_id] = sum(item.request.all_token_ids) % 97
        s.update(batch, sampled)
        check_blocks(s)
        log.append(batch)
    assert not s.has_unfinished()
    return log, scheduled


def test_chain_hashes_depend_on_the_whole_prefix():
    a = chain_hashes(Request("a", [1, 2, 3, 4, 5, 6, 7, 8, 9]), 4)
    b = chain_hashes(Request("b", [9, 2, 3, 4, 5, 6, 7, 8]), 4)
    assert len(a) == 2 and len(b) == 2
    assert a[1] != b[1]  # same second block, different parent
    assert chain_hashes(Request("c", [1, 2, 3, 4, 5, 6, 7, 8]), 4, a[:1]) == a


def test_prompts_hash_by_their_ids():
    """Equal prompts share every hash, shifted ones share none, and output tokens chain on."""
    r = Request("r", list(range(100, 110)))
    for token in (7, 8, 9):
        r.append_token(token)
    same = Request("same", list(range(100, 113)))
    shifted = Request("shifted", list(range(101, 114)))
    hashes = chain_hashes(r, 4)
    assert len(hashes) == 3
    assert chain_hashes(same, 4)[:2] == hashes[:2]
    assert chain_hashes(same, 4)[2] != hashes[2]  # block 2 holds 108..111 there, 108, 109, 7, 8 here
    assert not set(chain_hashes(shifted, 4)) & set(hashes)
    assert chain_hashes(r, 4, hashes[:1]) == hashes  # extending known hashes gives the same chain
    assert list(token_blocks([1, 2, 3, 4, 5, 6, 7], 3)) == [(1, 2, 3), (4, 5, 6)]  # a partial block is left out


def test_free_block_queue_takes_blocks_back_from_the_middle():
    q = FreeBlockQueue([0, 1, 2, 3, 4])
    q.remove(2)  # a prefix hit on a free block: it leaves the queue wherever it is
    q.remove(0)
    assert list(q) == [1, 3, 4] and len(q) == 3
    q.append([2, 0])  # freed again: at the back, after the stale entries
    assert list(q) == [1, 3, 4, 2, 0]
    assert q.popleft(2) == [1, 3]  # the stale entry of 0 at the front is skipped
    q.remove(4)
    assert q.popleft(2) == [2, 0] and len(q) == 0 and list(q) == []
    q.append([5, 6])
    assert q.popleft(1) == [5] and list(q) == [6]


def test_prefix_blocks_are_shared_and_counted():
    s = make(budget=64)
    system = list(range(100, 112))  # three full blocks of 4
    a, b = req("a", system + [1, 2]), req("b", system + [3, 4, 5])
    s.add(a)
    s.update(s.schedule(), {"a": 7})
    s.add(b)
    batch = s.schedule()
    assert batch.prefix_hit_tokens == 12
    assert b.num_cached_tokens == 12
    shared = set(a.block_ids) & set(b.block_ids)
    assert len(shared) == 3
    owners = s.blocks.snapshot(s.running).owners
    assert all(sorted(owners[x]) == ["a", "b"] for x in shared)


def test_freed_prefix_stays_cached_until_evicted_lru():
    s = make(num_blocks=8, budget=64)
    log, _ = drive(s, [req("a", range(12), max_tokens=1)])
    assert s.blocks.num_cached_free == 3  # the three full prompt blocks
    assert s.blocks.num_used == 0
    # a later identical prompt hits them
    b = req("b", range(12), max_tokens=1)
    s.add(b)
    assert s.schedule().prefix_hit_tokens == 8  # one token at least is recomputed: (12 - 1) // 4 blocks
    # filling the pool evicts the cached blocks
    s2 = make(num_blocks=4, budget=64, max_len=64)
    drive(s2, [req("a", range(12), max_tokens=1)])
    assert s2.blocks.num_cached_free == 3
    drive(s2, [req("c", range(50, 62), max_tokens=4)])
    assert s2.blocks.match_prefix(req("d", range(12))) == []


def test_chunked_prefill_splits_long_prompts_by_budget():
    s = make(budget=8)
    log, _ = drive(s, [req("a", range(30), max_tokens=3)])
    chunks = [b.items[0].num_tokens for b in log if b.items[0].phase == "prefill"]
    assert chunks == [8, 8, 8, 6]
    assert all(b.num_tokens <= 8 for b in log)


def test_tiny_pool_forces_preemption_and_everyone_finishes():
    s = make(num_blocks=10, block_size=4, budget=64, max_len=40)
    reqs = [req(i, range(i, i + 10), max_tokens=12) for i in range(5)]
    log, scheduled = drive(s, reqs)
    preempted = [p for b in log for p in b.preempted]
    assert preempted
    for r in reqs:
        assert r.num_output_tokens == 12 and r.status is Status.FINISHED
        # every token computed once, plus a recompute of all tokens held at each preemption
        assert scheduled[r.req_id] >= r.num_prompt_tokens + r.num_output_tokens - 1
    assert sum(r.num_preemptions for r in reqs) == len(preempted)


def test_prefill_first_never_mixes_phases():
    s = make("prefill_first", budget=16)
    log, _ = drive(s, [req(i, range(i, i + 9), max_tokens=6) for i in range(6)])
    for b in log:
        assert len({i.phase for i in b.items}) == 1


def test_static_admits_nobody_into_a_running_batch():
    s = make("static", seqs=3, budget=8)
    reqs = [req(i, range(i, i + 5), max_tokens=3 + i) for i in range(6)]
    log, _ = drive(s, reqs)
    batches = []
    for b in log:
        if b.admitted:
            batches.append(set(b.admitted))
    assert batches[0] == {"0", "1", "2"}  # whole prompts together, token budget ignored
    assert all(len(x) <= 3 for x in batches)
    # between admissions, the set of requests in steps only shrinks
    current: set[str] = set()
    for b in log:
        ids = {i.request.req_id for i in b.items}
        if b.admitted:
            current = ids
        assert ids <= current


def test_splitfuse_fills_the_budget_exactly_while_prompts_wait():
    s = make("splitfuse", budget=10, seqs=8)
    reqs = [req(i, range(20 * i, 20 * i + 13), max_tokens=4) for i in range(4)]
    log, _ = drive(s, reqs)
    # 52 prompt tokens wait at first: the first steps are filled to the token exactly
    assert [b.num_tokens for b in log[:5]] == [10, 10, 10, 10, 10]
    # and decodes always come before prompt chunks within a step
    for b in log:
        phases = [i.phase for i in b.items]
        assert phases == sorted(phases)  # "decode" < "prefill"


def test_unknown_policy_and_bad_knobs_name_the_value():
    with pytest.raises(ValueError, match="'fifo'"):
        make("fifo")
    with pytest.raises(ValueError, match="block_size=0"):
        BlockManager(8, 0)
    s = make(num_blocks=4, block_size=4, max_len=64)
    with pytest.raises(ValueError, match="num_blocks"):
        s.add(req("big", range(20), max_tokens=8))
    with pytest.raises(ValueError, match="max_model_len"):
        make(max_len=16).add(req("long", range(40)))
    with pytest.raises(ValueError, match="max_tokens=0"):
        SamplingParams(max_tokens=0).validate()


@settings(max_examples=40, deadline=None)
@given(
    policy=st.sampled_from(sorted(POLICIES)),
    lens=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 12)), min_size=1, max_size=10),
    num_blocks=st.integers(14, 40),
    block_size=st.sampled_from([1, 2, 4, 8]),
    budget=st.integers(4, 48),
    seqs=st.integers(1, 6),
    caching=st.booleans(),
    shared=st.booleans(),
)
def test_any_workload_finishes_with_consistent_blocks(
    policy, lens, num_blocks, block_size, budget, seqs, caching, shared
):
    max_len = min(num_blocks * block_size, 52)
    s = make(policy, num_blocks, block_size, budget, seqs, caching, max_len=max_len)
    reqs = []
    for i, (p, o) in enumerate(lens):
        p = min(p, max_len - 1)
        o = min(o, max(1, num_blocks * block_size - p))
        base = 0 if shared else 1000 * i
        r = req(i, range(base, base + p), max_tokens=o)
        reqs.append(r)
    log, scheduled = drive(s, reqs)
    for r in reqs:
        assert r.is_finished
        expected = min(r.params.max_tokens, max_len - r.num_prompt_tokens)
        assert r.num_output_tokens == expected
    # after the run, every block is free or cached
    assert s.blocks.num_used == 0
    assert s.blocks.num_free == s.blocks.num_blocks
