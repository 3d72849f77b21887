"""The fast decode attention (decode_kernels.py) against the reference path (SDPA) through the
whole paged read: random shapes, block sizes, context lengths and prefix-shared block tables."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from llmlab.engines.native.attention import AttentionMetadata, paged_attention, reference_decode
from llmlab.engines.native.decode_kernels import GroupedMatmulDecode, decode_kernel
from llmlab.engines.native.kv_cache import LayerKV
from llmlab.engines.native.runner import additive_mask

# the stated tolerance: float32 agrees to rounding; bfloat16 to its 8-bit mantissa, as the
# kernel rounds probabilities to bfloat16 before the second matmul where SDPA keeps float32
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


@st.composite
def decode_batches(draw):
    """A decode step's shapes and block tables; the first `shared` blocks are one prefix all share."""
    kv_heads = draw(st.integers(1, 3))
    group = draw(st.integers(1, 4))
    head_dim = draw(st.sampled_from([8, 16, 64]))
    block_size = draw(st.sampled_from([1, 2, 4, 16, 32]))
    contexts = draw(st.lists(st.integers(1, 96), min_size=1, max_size=6))
    shared = draw(st.integers(0, min(contexts) // block_size))
    return kv_heads, group, head_dim, block_size, contexts, shared, draw(st.integers(0, 2**16))


def build(kv_heads, group, head_dim, block_size, contexts, shared, seed, dtype):
    """A pool filled with random K/V, each request's table (a shared prefix, then its own blocks
    in shuffled pool order), the queries, and the metadata the runner would build."""
    gen = torch.Generator().manual_seed(seed)
    own = [-(-c // block_size) - shared for c in contexts]
    num_blocks = shared + sum(own) + 1
    kv = LayerKV("auto", num_blocks, block_size, kv_heads, head_dim, dtype, torch.device("cpu"))
    kv.k.copy_(torch.randn(kv.k.shape, generator=gen))
    kv.v.copy_(torch.randn(kv.v.shape, generator=gen))
    free = (torch.randperm(num_blocks - 1 - shared, generator=gen) + 1 + shared).tolist()
    tables = []
    for n in own:
        tables.append(list(range(1, 1 + shared)) + free[:n])
        free = free[n:]
    width = max(len(t) for t in tables)
    lens = torch.tensor(contexts)
    b = len(contexts)
    q = torch.randn(b, kv_heads * group, head_dim, generator=gen).to(dtype)
    # this step's new token: its K/V are written at each request's last position first
    k_new = torch.randn(b, kv_heads, head_dim, generator=gen).to(dtype)
    v_new = torch.randn(b, kv_heads, head_dim, generator=gen).to(dtype)
    slots = torch.tensor(
        [t[(c - 1) // block_size] * block_size + (c - 1) % block_size for t, c in zip(tables, contexts, strict=True)]
    )
    allowed = torch.arange(width * block_size)[None, :] < lens[:, None]
    meta = AttentionMetadata(
        slot_mapping=slots,
        num_decodes=b,
        decode_block_tables=torch.tensor([t + [0] * (width - len(t)) for t in tables]),
        decode_mask=additive_mask(allowed, dtype)[:, None, None, :],
    )
    return q, k_new, v_new, kv, meta


@settings(max_examples=40, deadline=None)
@given(decode_batches(), st.sampled_from([torch.float32, torch.bfloat16]))
def test_grouped_matmul_equals_reference_through_the_paged_read(shape, dtype):
    q, k, v, kv, meta = build(*shape, dtype)
    scale = q.shape[-1] ** -0.5
    reference = paged_attention(q, k, v, kv, meta, scale)
    meta.decode_kernel = GroupedMatmulDecode()
    fast = paged_attention(q, k, v, kv, meta, scale)
    err = (fast.float() - reference.float()).abs().max().item()
    assert err <= TOLERANCE[dtype], f"max error {err} over tolerance {TOLERANCE[dtype]} for {shape}, {dtype}"


def test_the_kernel_reads_only_each_requests_own_blocks():
    """Filling every block no request holds (and the padding past each context) with huge values
    changes nothing: the kernel reads each request's own blocks, up to its own length."""
    q, k, v, kv, meta = build(2, 3, 16, 4, [5, 23], 1, 0, torch.float32)
    fast = GroupedMatmulDecode()
    kv.write(meta.slot_mapping, k, v)
    before = fast(q, *kv.read(meta.decode_block_tables), meta.decode_mask, 0.25)
    held = set(meta.decode_block_tables[1].tolist()) | set(meta.decode_block_tables[0, :2].tolist())
    for block in range(kv.num_blocks):
        if block not in held:
            kv.k[block], kv.v[block] = 1e4, -1e4
    kv.k[meta.decode_block_tables[0, 1], 1:] = 1e4  # past request 0's 5th token, inside its 2nd block
    after = fast(q, *kv.read(meta.decode_block_tables), meta.decode_mask, 0.25)
    torch.testing.assert_close(before, after)
    keys, values = kv.read(meta.decode_block_tables)
    torch.testing.assert_close(before, reference_decode(q, keys, values, meta.decode_mask, 0.25))


def test_the_engine_uses_the_kernel_for_bfloat16_kv_on_cpu():
    assert isinstance(decode_kernel(torch.bfloat16, torch.device("cpu"), 3), GroupedMatmulDecode)
    assert decode_kernel(torch.float32, torch.device("cpu"), 3) is None
    assert decode_kernel(torch.bfloat16, torch.device("cpu"), 8) is None  # 8x the scores: the reference
