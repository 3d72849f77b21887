"""The paged KV block pool: reference counts, prefix caching by hash chains, LRU eviction.

A block holds `block_size` tokens of K/V. A full block gets a hash chained from its parent's
hash and its own tokens, so two requests with the same prefix find the same blocks. Blocks
whose last owner finished stay "cached" at the free end of the pool until they are evicted
in least-recently-used order.
"""

from __future__ import annotations

from collections.abc import Iterator

from llmlab.core.records import KVSnapshot
from llmlab.core.request import Request


def chain_hashes(req: Request, block_size: int, start: list[int] | None = None) -> list[int]:
    """Hashes of every full block of `req`'s tokens, each chained from the one before it;
    `start`, the hashes already known for its leading blocks, is extended in place."""
    hashes = [] if start is None else start
    first, end = len(hashes) * block_size, req.num_tokens // block_size * block_size
    parent = hashes[-1] if hashes else 0
    for block in token_blocks(req.token_ids(first, end), block_size):
        parent = hash((parent, block))
        hashes.append(parent)
    return hashes


def token_blocks(tokens: list[int], block_size: int) -> Iterator[tuple[int, ...]]:
    """`tokens` cut into consecutive tuples of `block_size` (a partial last block is left out).

    `zip` over one iterator repeated `block_size` times takes the next `block_size` tokens for
    each tuple, in C: a long prompt is cut into blocks without a Python step per token."""
    return zip(*[iter(tokens)] * block_size, strict=False)


class FreeBlockQueue:
    """The free blocks in eviction order: blocks are taken from the front, freed ones join the back.

    Every operation is O(1) per block. Taking a block back from the middle (a prefix-cache hit
    on a free block) does not search the list: it only counts the block's entry as stale, and
    the entry is skipped when it reaches the front. A block freed again later gets a new entry
    at the back, after its stale ones. The list is read from `head` on, so taking blocks is a
    slice, and the taken front is cut off once it is half the list (amortised O(1)).
    """

    def __init__(self, block_ids: list[int]) -> None:
        self._queue = list(block_ids)
        self._head = 0  # entries before it were taken
        self._stale: dict[int, int] = {}  # block id -> its stale entries (all before its live one)
        self._live = len(self._queue)

    def __len__(self) -> int:
        return self._live

    def __iter__(self) -> Iterator[int]:
        """The free blocks, next to be taken first."""
        skipped: dict[int, int] = {}  # stale entries passed so far, by block
        queue = self._queue
        for i in range(self._head, len(queue)):
            block_id = queue[i]
            if skipped.get(block_id, 0) < self._stale.get(block_id, 0):
                skipped[block_id] = skipped.get(block_id, 0) + 1
            else:
                yield block_id

    def append(self, block_ids: list[int]) -> None:
        """Free blocks join at the back, in this order."""
        self._queue += block_ids
        self._live += len(block_ids)

    def remove(self, block_id: int) -> None:
        """Take a free block out from wherever it is: its entry turns stale."""
        self._stale[block_id] = self._stale.get(block_id, 0) + 1
        self._live -= 1

    def popleft(self, n: int) -> list[int]:
        """Take the first `n` free blocks (there must be that many)."""
        taken: list[int] = []
        while len(taken) < n:
            want = n - len(taken)
            front = self._queue[self._head : self._head + want]
            self._head += want
            if not self._stale.keys().isdisjoint(front):  # one C-speed test: most often none is stale
                front = [b for b in front if not self._drop_stale(b)]
            taken += front
        if self._head > len(self._queue) // 2:
            del self._queue[: self._head]
            self._head = 0
        self._live -= n
        return taken

    def _drop_stale(self, block_id: int) -> bool:
        """Whether this entry of `block_id` is stale (and if so, forget it)."""
        count = self._stale.get(block_id, 0)
        if not count:
            return False
        if count == 1:
            del self._stale[block_id]
        else:
            self._stale[block_id] = count - 1
        return True


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
        self.ref_counts = [0] * num_blocks  # per block: how many block tables hold it
        self.block_hashes: list[int | None] = [None] * num_blocks  # its prefix hash, if in the prefix cache
        self.free_queue = FreeBlockQueue(list(range(num_blocks)))
        self.cached: dict[int, int] = {}  # block hash -> block id
        self.num_cached_free = 0  # free blocks still holding a registered prefix
        self._hashes: dict[str, list[int]] = {}  # req_id -> hashes of its full blocks
        # req_id -> (leading blocks already committed, blocks whose hash another block holds: re-check)
        self._committed: dict[str, tuple[int, tuple[int, ...]]] = {}
        self.pending_duplicates: set[str] = set()  # ids of requests with such blocks

    # counts ------------------------------------------------------------------------------
    @property
    def num_free(self) -> int:
        return len(self.free_queue)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free_queue)

    def cached_free(self) -> list[int]:
        """The free blocks still holding a registered prefix, in block id order."""
        refs, hashes = self.ref_counts, self.block_hashes
        return [b for b in range(self.num_blocks) if refs[b] == 0 and hashes[b] is not None]

    def free_blocks(self) -> Iterator[int]:
        """The free blocks, next to be evicted first."""
        return iter(self.free_queue)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # prefix cache ------------------------------------------------------------------------
    def match_prefix(self, req: Request) -> list[int]:
        """Cached blocks holding the longest prefix of `req`; at least one token is left to compute."""
        if not self.enable_prefix_caching:
            return []
        limit = (req.num_tokens - 1) // self.block_size
        hits: list[int] = []
        for h in self.request_hashes(req)[:limit]:
            block_id = self.cached.get(h)
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    def request_hashes(self, req: Request) -> list[int]:
        """The hashes of `req`'s full blocks, extended as it grows (each block is hashed once)."""
        known = self._hashes.get(req.req_id)
        if known is None or len(known) < req.num_tokens // self.block_size:
            known = chain_hashes(req, self.block_size, known)
            self._hashes[req.req_id] = known
        return known

    def commit_progress(self, req: Request) -> tuple[int, tuple[int, ...]]:
        """(leading blocks of `req` committed, indexes of its blocks waiting for another block
        holding the same prefix to be evicted)."""
        return self._committed.get(req.req_id, (0, ()))

    def commit(self, req: Request) -> None:
        """Register the hashes of `req`'s blocks that are now full of computed tokens."""
        if not self.enable_prefix_caching:
            return
        full = min(req.num_computed_tokens // self.block_size, len(req.block_ids))
        done, duplicates = self.commit_progress(req)
        if full <= done and not duplicates:
            return  # a block once registered keeps its hash while the request holds it
        hashes, table = self.request_hashes(req), req.block_ids
        still: list[int] = []  # another block holds this prefix; take over if that one is evicted
        if not duplicates and self.cached.keys().isdisjoint(hashes[done:full]):
            self._register(table[done:full], hashes[done:full])  # the usual case: all new
        else:
            for i in (*duplicates, *range(done, full)):
                if self.block_hashes[table[i]] is None:
                    if hashes[i] in self.cached:
                        still.append(i)
                    else:
                        self._register([table[i]], [hashes[i]])
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

    # allocation --------------------------------------------------------------------------
    def can_allocate(
        self, req: Request, total_tokens: int, prefix_blocks: list[int] = (), watermark: bool = False
    ) -> bool:
        """Whether `req` can grow to hold `total_tokens` tokens (reusing `prefix_blocks` if new)."""
        need = self.blocks_for(total_tokens) - len(req.block_ids) - len(prefix_blocks)
        available = self.num_free - sum(1 for b in prefix_blocks if self.ref_counts[b] == 0)
        reserve = self.watermark_blocks if watermark else 0
        return need <= available - reserve

    def allocate(self, req: Request, total_tokens: int, prefix_blocks: list[int] = (), watermark: bool = False) -> bool:
        """Grow `req`'s block table to hold `total_tokens` tokens; False (and no change) if the pool can't."""
        if not prefix_blocks and self.blocks_for(total_tokens) <= len(req.block_ids):
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

    def pop_free(self, n: int) -> list[int]:
        """Take `n` blocks from the eviction end of the free queue (the caller checked there are
        enough), dropping the cached prefixes they held; each comes back with one reference."""
        taken = self.free_queue.popleft(n)
        ref_counts, block_hashes, cached = self.ref_counts, self.block_hashes, self.cached  # read once: hot loop
        for block_id in taken:
            ref_counts[block_id] = 1
            h = block_hashes[block_id]
            if h is not None:  # evict the least recently used cached prefix
                block_hashes[block_id] = None
                del cached[h]
                self.num_cached_free -= 1
        return taken

    def _take(self, block_id: int) -> None:
        """One more reference to a block holding a cached prefix (a prefix hit)."""
        if self.ref_counts[block_id] == 0:
            self.free_queue.remove(block_id)
            self.num_cached_free -= self.block_hashes[block_id] is not None
        self.ref_counts[block_id] += 1

    def free(self, req: Request) -> None:
        """Release `req`'s blocks; its tail goes to the eviction end first, so shared prefixes live longer."""
        ref_counts, block_hashes = self.ref_counts, self.block_hashes  # read once: hot loop
        released = []
        for block_id in reversed(req.block_ids):
            ref_counts[block_id] -= 1
            if ref_counts[block_id] == 0:
                released.append(block_id)
        self.free_queue.append(released)
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
