"""The paged KV block pool: reference counts, prefix caching by hash chains, LRU eviction.

A block holds `block_size` tokens of K/V. A full block gets a hash chained from its parent's
hash and its own tokens, so two requests with the same prefix find the same blocks. Blocks
whose last owner finished stay "cached" at the free end of the pool until they are evicted
in least-recently-used order.
"""

from __future__ import annotations

import operator
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import compress, repeat

from llmlab.core.records import KVSnapshot
from llmlab.core.request import Request

RANGE_KEY_STRIDE = 0x9E3779B97F  # odd, with mixed low bits: families spread over a dict's slots


def chain_hashes(req: Request, block_size: int, start: list[int] | None = None) -> list[int]:
    """Hashes of every full block of `req`'s tokens, each chained from the one before it;
    `start`, the hashes already known for its leading blocks, is extended in place.

    A block inside a `range` prompt (the simulator's corpus windows: consecutive ids) is keyed
    by the range's first id and its own index, `first * RANGE_KEY_STRIDE + index`, which fix
    every id up to its end: ranges with the same first id share keys, made at C speed with no
    hashing, while a list prompt holding the same ids hashes differently.
    """
    hashes = [] if start is None else start
    p, known = req.num_prompt_tokens, len(hashes) * block_size
    if known >= p:  # the prompt's blocks are known: only outputs to add (most calls)
        return _chain_outputs(hashes, req.output_token_ids, known - p, req.num_tokens - p, block_size)
    prompt = req.prompt_token_ids
    if isinstance(prompt, range) and prompt.step == 1:
        last = min(len(prompt), req.num_tokens) // block_size
        if len(hashes) < last < RANGE_KEY_STRIDE:
            base = prompt.start * RANGE_KEY_STRIDE
            hashes += range(base + len(hashes), base + last)
    parent = hashes[-1] if hashes else 0
    i, end = len(hashes) * block_size, req.num_tokens - block_size + 1
    while i < end and i < p:  # blocks that start in the prompt
        parent = hash((parent, *req.token_ids(i, i + block_size)))
        hashes.append(parent)
        i += block_size
    return _chain_outputs(hashes, req.output_token_ids, i - p, req.num_tokens - p, block_size)


def _chain_outputs(hashes: list[int], out: list[int], first: int, num_out: int, block_size: int) -> list[int]:
    """`chain_hashes` for the blocks wholly in the outputs, from output index `first` on."""
    parent = hashes[-1] if hashes else 0
    append = hashes.append
    for j in range(first, num_out - block_size + 1, block_size):
        parent = hash((parent, *out[j : j + block_size]))
        append(parent)
    return hashes


@dataclass(slots=True)
class CommitPlan:
    """Commits planned for a batch of requests (see `BlockManager.plan_commits`)."""

    filled: list[tuple[Request, int, int]]  # (request, blocks committed before, full blocks after)
    hashes: list[int]  # the prefix hashes those blocks register, in order
    independent: bool
    fresh: bool


class BlockManager:
    """Owns the pool of KV blocks and every request's block table."""

    def __init__(
        self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True, watermark: float = 0.01
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size={block_size}: must be a positive number of tokens per block, e.g. 16")
        if num_blocks <= 0:
            raise ValueError(f"num_blocks={num_blocks}: the KV pool needs at least one block")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.watermark_blocks = int(watermark * num_blocks)
        # per block: how many block tables hold it, and the prefix hash it is registered under
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks  # its prefix hash, if in the prefix cache
        # free blocks in eviction order; a block taken back from the middle (a prefix hit) stays
        # behind as a stale entry, skipped when it reaches the front (`_stale` counts them)
        # (a list read from `_head` on: taking n blocks is one slice, at C speed)
        self.free_queue: list[int] = list(range(num_blocks))
        self._head = 0
        self._stale: dict[int, int] = {}  # block id -> its stale entries, which precede its live one
        self._num_free = num_blocks
        self._num_shared = 0  # blocks held by more than one block table
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.num_cached_free = 0  # free blocks still holding a registered prefix
        self._hashes: dict[str, list[int]] = {}  # req_id -> hashes of its full blocks
        # req_id -> (leading blocks already committed, blocks whose hash another block holds: re-check)
        self._committed: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.pending_duplicates: set[str] = set()  # ids of requests with such blocks

    # counts ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return self._num_free

    def cached_free(self) -> list[int]:
        """The free blocks still holding a registered prefix, in block id order (a C-speed scan:
        the trace asks for it every step when it records KV owners)."""
        free = map(operator.not_, self.ref_counts)
        hashed = map(operator.is_not, self.block_hashes, repeat(None))
        return list(compress(range(self.num_blocks), map(operator.and_, free, hashed)))

    @property
    def num_used(self) -> int:
        return self.num_blocks - self._num_free

    def free_blocks(self) -> Iterator[int]:
        """The free blocks, next to be evicted first."""
        stale = dict(self._stale)
        for block_id in self.free_queue[self._head :]:
            if stale.get(block_id):
                stale[block_id] -= 1
            else:
                yield block_id

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # prefix cache ------------------------------------------------------------------------
    def match_prefix(self, req: Request) -> list[int]:
        """Cached blocks holding the longest prefix of `req`; at least one token is left to compute."""
        if not self.enable_prefix_caching:
            return []
        hashes = self._request_hashes(req)
        limit = (req.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in hashes[:limit]:
            block_id = self.cached.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def _request_hashes(self, req: Request) -> list[int]:
        known = self._hashes.get(req.req_id)
        if known is None or len(known) < req.num_tokens // self.block_size:
            known = chain_hashes(req, self.block_size, known)
            self._hashes[req.req_id] = known
        return known

    def commit(self, req: Request) -> None:
        """Register the hashes of `req`'s blocks that are now full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        full = min(req.num_computed_tokens // self.block_size, len(req.block_ids))
        done, duplicates = self._committed.get(req.req_id, (0, ()))
        if full <= done and not duplicates:
            return  # incremental: a block once registered keeps its hash while the request holds it
        hashes, block_hashes, cached, table = self._request_hashes(req), self.block_hashes, self.cached, req.block_ids
        still: list[int] = []
        new_ids, new_hashes = table[done:full], hashes[done:full]
        if not duplicates and cached.keys().isdisjoint(new_hashes):
            self._register(new_ids, new_hashes)  # the common case
        else:
            for i in (*duplicates, *range(done, full)):
                block_id = table[i]
                if block_hashes[block_id] is None:
                    h = hashes[i]
                    if h in cached:
                        still.append(i)  # another block holds this prefix; take over if that one is evicted
                    else:
                        block_hashes[block_id] = h
                        cached[h] = block_id
        self._committed[req.req_id] = (max(done, full), tuple(still))
        if still:
            self.pending_duplicates.add(req.req_id)
        else:
            self.pending_duplicates.discard(req.req_id)

    def _register(self, block_ids: list[int], hashes: list[int]) -> None:
        """Put blocks in the prefix cache under hashes no block holds yet."""
        block_hashes = self.block_hashes
        for block_id, h in zip(block_ids, hashes, strict=True):
            block_hashes[block_id] = h
        self.cached.update(zip(hashes, block_ids, strict=True))

    def plan_commits(self, reqs: list[Request], num_tokens: list[int]) -> CommitPlan:
        """What committing each request's blocks up to `num_tokens` computed tokens would
        register (their tokens must be in place already), and whether the commits are
        independent (no shared hash, none a pending duplicate's: their order is moot) and
        fresh (besides, the cache holds none of them); `apply_commits` carries it out."""
        if not self.enable_prefix_caching:
            return CommitPlan([], [], True, True)
        bs, committed, request_hashes = self.block_size, self._committed, self._request_hashes
        filled: list[tuple[Request, int, int]] = []
        hashes: list[int] = []
        waiting: list[int] = []  # hashes of blocks waiting to take over a prefix
        nothing = (0, ())
        for req, n in zip(reqs, num_tokens, strict=True):
            done, duplicates = committed.get(req.req_id, nothing)
            full = n // bs
            if duplicates:
                known = request_hashes(req)
                waiting += [known[i] for i in duplicates]
            if full > done:
                filled.append((req, done, full))
                hashes += request_hashes(req)[done:full]
        touched = hashes + waiting if waiting else hashes
        independent = len(set(touched)) == len(touched)
        fresh = independent and not waiting and self.cached.keys().isdisjoint(hashes)
        return CommitPlan(filled, hashes, independent, fresh)

    def apply_commits(self, plan: CommitPlan, reqs: list[Request]) -> None:
        """Commit `reqs` (their tables now hold the planned blocks), in one pass when the plan
        was fresh: evictions since planning only take prefixes out of the cache."""
        if not self.enable_prefix_caching:
            return
        if plan.fresh:
            ids: list[int] = []
            for req, done, full in plan.filled:
                ids += req.block_ids[done:full]
            self._register(ids, plan.hashes)
            self._committed.update((req.req_id, (full, ())) for req, _, full in plan.filled)
        else:
            for req in reqs:
                self.commit(req)

    # allocation --------------------------------------------------------------------------
    def can_allocate(
        self, req: Request, total_tokens: int, prefix_blocks: list[int] = (), watermark: bool = False
    ) -> bool:
        """Whether `req` can grow to hold `total_tokens` tokens (reusing `prefix_blocks` if new)."""
        need = self.blocks_for(total_tokens) - len(req.block_ids) - len(prefix_blocks)
        available = self._num_free
        if prefix_blocks:
            available -= sum(1 for b in prefix_blocks if self.ref_counts[b] == 0)
        reserve = self.watermark_blocks if watermark else 0
        return need <= available - reserve

    def allocate(self, req: Request, total_tokens: int, prefix_blocks: list[int] = (), watermark: bool = False) -> bool:
        """Grow `req`'s block table to hold `total_tokens` tokens; False (and no change) if the pool can't."""
        if not prefix_blocks and -(-total_tokens // self.block_size) <= len(req.block_ids):
            return True  # already big enough: most decode steps
        if not self.can_allocate(req, total_tokens, prefix_blocks, watermark):
            return False
        for b in prefix_blocks:
            self._take(b)
            req.block_ids.append(b)
        if prefix_blocks:  # they hold their hashes already: commits start after them
            self._committed[req.req_id] = (len(prefix_blocks), ())
        req.block_ids += self.pop_free(self.blocks_for(total_tokens) - len(req.block_ids))
        return True

    def pop_free(self, n: int, evicted: list[bool] | None = None) -> list[int]:
        """Take `n` blocks from the eviction end of the free queue (the caller checked there are
        enough), dropping the cached prefixes they held; each comes back with one reference.
        `evicted`, if given, gets one flag per block: whether it held a cached prefix."""
        queue, stale = self.free_queue, self._stale
        head = self._head + n
        taken = queue[head - n : head]
        while stale and not stale.keys().isdisjoint(taken):  # skip entries of blocks taken back
            live = []
            for block_id in taken:
                if stale.get(block_id):
                    stale[block_id] -= 1
                    if not stale[block_id]:
                        del stale[block_id]
                else:
                    live.append(block_id)
            more = n - len(live)
            taken = live + queue[head : head + more]
            head += more
        if head > len(queue) // 2:  # drop the taken half: amortised O(1) per block
            del queue[:head]
            head = 0
        self._head = head
        self._num_free -= n
        ref_counts, block_hashes, cached = self.ref_counts, self.block_hashes, self.cached
        dropped = 0
        for block_id in taken:
            ref_counts[block_id] = 1
            h = block_hashes[block_id]
            if evicted is not None:
                evicted.append(h is not None)
            if h is not None:  # evict the least recently used cached prefix
                block_hashes[block_id] = None
                del cached[h]
                dropped += 1
        self.num_cached_free -= dropped
        return taken

    def _take(self, block_id: int) -> None:
        if self.ref_counts[block_id] == 0:  # its free-queue entry goes stale
            self._stale[block_id] = self._stale.get(block_id, 0) + 1
            self._num_free -= 1
            self.num_cached_free -= self.block_hashes[block_id] is not None
        self.ref_counts[block_id] += 1
        if self.ref_counts[block_id] == 2:
            self._num_shared += 1

    def free(self, req: Request) -> None:
        """Release `req`'s blocks; its tail goes to the eviction end first, so shared prefixes live longer."""
        ref_counts = self.ref_counts
        if not self._num_shared:  # every block in use has one holder: all of them are released
            released = req.block_ids[::-1]
            for block_id in released:
                ref_counts[block_id] = 0
        else:
            released = []
            for block_id in reversed(req.block_ids):
                left = ref_counts[block_id] - 1
                ref_counts[block_id] = left
                if not left:
                    released.append(block_id)
                elif left == 1:
                    self._num_shared -= 1
        self.free_queue.extend(released)
        self._num_free += len(released)
        if self.cached:
            done, still = self._committed.get(req.req_id, (0, ()))
            if len(released) == len(req.block_ids):  # all of them: the committed ones hold their hashes
                self.num_cached_free += done - len(still)
            else:
                block_hashes = self.block_hashes
                self.num_cached_free += len(released) - [block_hashes[b] for b in released].count(None)
        req.block_ids = []
        self._committed.pop(req.req_id, None)
        self.pending_duplicates.discard(req.req_id)

    def reset_cache(self) -> int:
        """Forget every cached prefix (blocks in use keep their contents); returns how many were dropped."""
        dropped = self.cached_free()
        for block_id in dropped:
            self.block_hashes[block_id] = None
        self.cached = {h: b for h, b in self.cached.items() if self.block_hashes[b] == h}
        self.num_cached_free = 0
        return len(dropped)

    def forget(self, req: Request) -> None:
        """Drop per-request bookkeeping once `req` has finished."""
        self._hashes.pop(req.req_id, None)
        self._committed.pop(req.req_id, None)
        self.pending_duplicates.discard(req.req_id)

    # views -------------------------------------------------------------------------------
    def snapshot(self, running: list[Request], owners: bool = True) -> KVSnapshot:
        """The pool as the trace sees it; `owners` maps each used block to its requests."""
        table: dict[int, list[str]] | None = None
        if owners:
            table = {}
            for req in running:
                for b in req.block_ids:
                    table.setdefault(b, []).append(req.req_id)
        return KVSnapshot(
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            used=self.num_used,
            cached=self.num_cached_free,
            free=self.num_free - self.num_cached_free,
            owners=table,
            cached_ids=self.cached_free() if owners else None,
        )
