"""The paged KV block pool: reference counts, prefix caching by hash chains, LRU eviction.

A block holds `block_size` tokens of K/V. A full block gets a hash chained from its parent's
hash and its own tokens, so two requests with the same prefix find the same blocks. Blocks
whose last owner finished stay "cached" at the free end of the pool until they are evicted
in least-recently-used order.
"""

from __future__ import annotations

from collections import OrderedDict

from llmlab.core.records import KVSnapshot
from llmlab.core.request import Request


class Block:
    __slots__ = ("block_id", "ref_count", "hash")

    def __init__(self, block_id: int) -> None:
        self.block_id = block_id
        self.ref_count = 0
        self.hash: int | None = None


def chain_hashes(req: Request, block_size: int, start: list[int] | None = None) -> list[int]:
    """Hashes of every full block of `req`'s tokens, each chained from the one before it;
    `start`, the hashes already known for its leading blocks, is extended in place."""
    hashes = [] if start is None else start
    parent = hashes[-1] if hashes else 0
    tokens = req.token_ids
    for i in range(len(hashes) * block_size, req.num_tokens - block_size + 1, block_size):
        parent = hash((parent, *tokens(i, i + block_size)))
        hashes.append(parent)
    return hashes


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
        self.blocks = [Block(i) for i in range(num_blocks)]
        self.free_queue: OrderedDict[int, None] = OrderedDict((i, None) for i in range(num_blocks))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.cached_free: set[int] = set()  # free blocks still holding a registered prefix
        self._hashes: dict[str, list[int]] = {}  # req_id -> hashes of its full blocks
        # req_id -> (leading blocks already committed, blocks whose hash another block holds: re-check)
        self._committed: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.pending_duplicates: set[str] = set()  # ids of requests with such blocks

    # counts ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_cached_free(self) -> int:
        return len(self.cached_free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

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
        hashes, blocks, cached, table = self._request_hashes(req), self.blocks, self.cached, req.block_ids
        still: list[int] = []
        for i in (*duplicates, *range(done, full)):
            block = blocks[table[i]]
            if block.hash is None:
                h = hashes[i]
                if h in cached:
                    still.append(i)  # another block holds this prefix; take over if that one is evicted
                else:
                    block.hash = h
                    cached[h] = block.block_id
        self._committed[req.req_id] = (max(done, full), tuple(still))
        if still:
            self.pending_duplicates.add(req.req_id)
        else:
            self.pending_duplicates.discard(req.req_id)

    def commits_independent(self, reqs: list[Request], num_tokens: list[int]) -> bool:
        """Whether committing each request's blocks up to `num_tokens` registers prefixes no other
        commit here touches (no shared hash, none a pending duplicate's), so their order is moot."""
        if not self.enable_prefix_caching:
            return True
        bs, seen, count = self.block_size, set(), 0
        for req in reqs:  # the blocks waiting to take over a prefix
            _, duplicates = self._committed.get(req.req_id, (0, ()))
            if duplicates:
                hashes = self._request_hashes(req)
                seen.update(hashes[i] for i in duplicates)
                count += len(duplicates)
        for req, n in zip(reqs, num_tokens, strict=True):
            done = self._committed.get(req.req_id, (0, ()))[0]
            new = self._request_hashes(req)[done : n // bs]
            seen.update(new)
            count += len(new)
        return len(seen) == count

    # allocation --------------------------------------------------------------------------
    def can_allocate(
        self, req: Request, total_tokens: int, prefix_blocks: list[int] = (), watermark: bool = False
    ) -> bool:
        """Whether `req` can grow to hold `total_tokens` tokens (reusing `prefix_blocks` if new)."""
        need = self.blocks_for(total_tokens) - len(req.block_ids) - len(prefix_blocks)
        available = len(self.free_queue)
        if prefix_blocks:
            available -= sum(1 for b in prefix_blocks if self.blocks[b].ref_count == 0)
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
        req.block_ids += self.pop_free(self.blocks_for(total_tokens) - len(req.block_ids))
        return True

    def pop_free(self, n: int) -> list[int]:
        """Take `n` blocks from the eviction end of the free queue (the caller checked there are
        enough), dropping the cached prefixes they held; each comes back with one reference."""
        pop, blocks, cached, taken = self.free_queue.popitem, self.blocks, self.cached, []
        for _ in range(n):
            block_id, _ = pop(last=False)
            block = blocks[block_id]
            if block.hash is not None:  # evict the least recently used cached prefix
                self.cached_free.discard(block_id)
                if cached.get(block.hash) == block_id:
                    del cached[block.hash]
                block.hash = None
            block.ref_count = 1
            taken.append(block_id)
        return taken

    def _take(self, block_id: int) -> None:
        block = self.blocks[block_id]
        if block.ref_count == 0:
            del self.free_queue[block_id]
            self.cached_free.discard(block_id)
        block.ref_count += 1

    def free(self, req: Request) -> None:
        """Release `req`'s blocks; its tail goes to the eviction end first, so shared prefixes live longer."""
        blocks, free_queue, cached_free = self.blocks, self.free_queue, self.cached_free
        for block_id in reversed(req.block_ids):
            block = blocks[block_id]
            block.ref_count -= 1
            if block.ref_count == 0:
                free_queue[block_id] = None
                if block.hash is not None:
                    cached_free.add(block_id)
        req.block_ids = []
        self._committed.pop(req.req_id, None)
        self.pending_duplicates.discard(req.req_id)

    def reset_cache(self) -> int:
        """Forget every cached prefix (blocks in use keep their contents); returns how many were dropped."""
        dropped = 0
        for block in self.blocks:
            if block.hash is not None and block.ref_count == 0:
                block.hash = None
                dropped += 1
        self.cached = {h: b for h, b in self.cached.items() if self.blocks[b].hash == h}
        self.cached_free.clear()
        return dropped

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
            cached=len(self.cached_free),
            free=self.num_free - len(self.cached_free),
            owners=table,
            cached_ids=sorted(self.cached_free) if owners else None,
        )
