"""One layer's paged K/V pool, stored in the compute dtype, in float8 or in int8 with scales.

Layout: a tensor [num_blocks, block_size, kv_heads, head_dim] each for K and V, so the pool
itself knows its block size (`LayerKV.block_size`). Token slot `block * block_size + offset`
is row `offset` of block `block`; writes go through a flat [num_blocks * block_size, ...] view
of the same storage. Formats (the engine's ``kv_dtype`` knob):

- ``auto``: the compute dtype (float32 or bfloat16), no conversion.
- ``fp8``: float8 e4m3, unscaled (values are clamped to +-448), as vLLM's ``kv_cache_dtype="fp8"``
  without calibrated scales: exactly half the bytes of bfloat16, so twice the blocks.
- ``int8``: symmetric int8 with one float32 scale per token and head (per row of head_dim
  values), shaped [num_blocks, block_size, kv_heads, 1]. A token's scale is set when it is
  written and never changes, so filling a block never rescales the tokens already in it
  (per-block scales would). Cost: SCALE_BYTES (4) per head_dim (64) values, so 68 bytes per
  token-head against 128 for bfloat16 (1.88x the blocks). The planner (llmlab/plan/memory.py,
  KV_SCALE_BYTES) counts the same 4 bytes.

Reads dequantize only the gathered blocks, into the compute dtype.
"""

from __future__ import annotations

import torch

KV_DTYPES = ("auto", "fp8", "int8")
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max
SCALE_DTYPE = torch.float32  # int8 scales: float32 keeps the rounding error at int8's own step
SCALE_BYTES = SCALE_DTYPE.itemsize


def check_kv_dtype(kv_dtype: str) -> None:
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype={kv_dtype!r} is not supported by the native engine: use one of {KV_DTYPES}")


def kv_element_bytes(kv_dtype: str, dtype: torch.dtype, head_dim: int) -> float:
    """Bytes one cached value takes, scales included (for sizing the pool)."""
    if kv_dtype == "fp8":
        return 1.0
    if kv_dtype == "int8":
        return 1.0 + SCALE_BYTES / head_dim
    return float(dtype.itemsize)


class LayerKV:
    """K and V pools of one layer, by block, with `write` (by slot), `read` (gather blocks) and `roundtrip`."""

    def __init__(
        self,
        kv_dtype: str,
        num_blocks: int,
        block_size: int,
        kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        check_kv_dtype(kv_dtype)
        self.kv_dtype = kv_dtype
        self.dtype = dtype  # the compute dtype reads return
        # fp8 bits live in a uint8 tensor: CPU index_copy_ / index_select do not take float8 dtypes
        store = {"auto": dtype, "fp8": torch.uint8, "int8": torch.int8}[kv_dtype]
        shape = (num_blocks, block_size, kv_heads, head_dim)
        self.k = torch.zeros(shape, dtype=store, device=device)
        self.v = torch.zeros(shape, dtype=store, device=device)
        self.k_scale = self.v_scale = None
        if kv_dtype == "int8":
            self.k_scale = torch.zeros((*shape[:3], 1), dtype=SCALE_DTYPE, device=device)
            self.v_scale = torch.zeros((*shape[:3], 1), dtype=SCALE_DTYPE, device=device)

    @property
    def num_blocks(self) -> int:
        return self.k.shape[0]

    @property
    def block_size(self) -> int:
        """Tokens per block, read from the pool's own shape."""
        return self.k.shape[1]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor this layer's pool holds (for memory accounting)."""
        return [t for t in (self.k, self.v, self.k_scale, self.v_scale) if t is not None]

    # conversion ---------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.kv_dtype == "fp8":
            return x.clamp(-FP8_MAX, FP8_MAX).to(FP8).view(torch.uint8), None
        if self.kv_dtype == "int8":
            x = x.float()
            scale = (x.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_(min=1e-8)
            return torch.round(x / scale).clamp_(-127, 127).to(torch.int8), scale.to(SCALE_DTYPE)
        return x, None

    def _decode(self, q: torch.Tensor, scale: torch.Tensor | None) -> torch.Tensor:
        if self.kv_dtype == "auto":
            return q
        x = (q.view(FP8) if self.kv_dtype == "fp8" else q).to(self.dtype)
        return x if scale is None else x * scale.to(self.dtype)

    # the three operations attention needs ---------------------------------------------------
    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store new tokens' K/V [T, kv_heads, head_dim] at token `slots` (block * block_size + offset)."""
        qk, sk = self._encode(k)
        qv, sv = self._encode(v)
        by_slot(self.k).index_copy_(0, slots, qk)
        by_slot(self.v).index_copy_(0, slots, qv)
        if sk is not None:
            by_slot(self.k_scale).index_copy_(0, slots, sk)
            by_slot(self.v_scale).index_copy_(0, slots, sv)

    def read(self, block_table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the given blocks in order, in the compute dtype: [..., blocks * block_size, heads, dim]."""
        k = self._decode(gather(self.k, block_table), gather(self.k_scale, block_table))
        v = self._decode(gather(self.v, block_table), gather(self.v_scale, block_table))
        return k, v

    def roundtrip(self, x: torch.Tensor) -> torch.Tensor:
        """`x` as it reads back from this pool: lets a fresh prompt attend to what the cache holds."""
        if self.kv_dtype == "auto":
            return x
        return self._decode(*self._encode(x))


def by_slot(pool: torch.Tensor) -> torch.Tensor:
    """A [num_blocks * block_size, ...] view of a block-shaped pool tensor (row = token slot): writes
    through it land in the pool (`view`, unlike `flatten`, never silently copies)."""
    return pool.view(-1, *pool.shape[2:])


def gather(pool: torch.Tensor | None, block_table: torch.Tensor) -> torch.Tensor | None:
    """The given blocks' rows, in order: [..., blocks * block_size, *pool.shape[2:]] (None for no pool)."""
    if pool is None:
        return None
    index = block_table.reshape(-1)
    if pool.is_contiguous():  # one row a block: index_select copies whole rows, its fastest case
        out = pool.view(pool.shape[0], -1).index_select(0, index)
    else:  # a cache laid out by another engine (DeepSpeed's, under the mii engine)
        out = pool.index_select(0, index)
    return out.view(*block_table.shape[:-1], -1, *pool.shape[2:])
