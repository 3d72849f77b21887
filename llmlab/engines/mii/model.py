"""llmlab's native Llama forward behind DeepSpeed's model interface, over DeepSpeed's own KV cache.

DeepSpeed's `InferenceEngineV2.put` asks its model for KV requirements, allocation and a forward
over a `RaggedBatchWrapper`. Here the requirement and allocation methods are DeepSpeed's own
(borrowed from `DSTransformerModelBase`: dense attention, `ceil(tokens / block_size)` blocks); only
the forward is llmlab's: it reads the batch DeepSpeed built (token ids, each sequence's start, length
and tokens already seen) and writes K and V into DeepSpeed's `BlockedKVCache` tensor at the block ids
DeepSpeed's allocator handed out, so the blocks a trace shows are the ones that hold the K/V.
"""

from __future__ import annotations

import types
from typing import Any

import torch
from deepspeed.inference.v2.model_implementations.inference_transformer_base import DSTransformerModelBase
from deepspeed.inference.v2.ragged import KVCacheConfig

from llmlab.engines.native.attention import AttentionMetadata, PrefillSpan
from llmlab.engines.native.kv_cache import LayerKV
from llmlab.engines.native.llama import LlamaModel
from llmlab.engines.native.runner import additive_mask


def layer_views(state_manager: Any, num_layers: int, dtype: torch.dtype) -> list[LayerKV]:
    """One `LayerKV` per layer whose K and V are views into DeepSpeed's cache tensor of that layer
    [blocks, block_size, 2, kv_heads, head_dim] (`DSStateManager.get_cache`): writes land in its storage."""
    layers = []
    for i in range(num_layers):
        cache = state_manager.get_cache(i)
        kv = LayerKV.__new__(LayerKV)
        kv.kv_dtype, kv.dtype = "auto", dtype
        kv.k, kv.v = cache[:, :, 0], cache[:, :, 1]
        kv.k_scale = kv.v_scale = None
        layers.append(kv)
    return layers


class NativeRaggedModel:
    """What `InferenceEngineV2` needs of a model; DeepSpeed's KV methods, llmlab's forward."""

    # DeepSpeed's own block arithmetic for a dense-attention transformer
    get_kv_requirements = DSTransformerModelBase.get_kv_requirements
    get_remaining_block_capacity = DSTransformerModelBase.get_remaining_block_capacity
    maybe_allocate_kv = DSTransformerModelBase.maybe_allocate_kv
    kv_cache_config = DSTransformerModelBase.kv_cache_config

    def __init__(
        self, model: LlamaModel, cos: torch.Tensor, sin: torch.Tensor, block_size: int, max_len: int, dtype
    ) -> None:
        self.model, self.cos, self.sin = model, cos, sin
        attn = model.layers[0].self_attn
        self.attn = types.SimpleNamespace(kv_block_size=block_size)  # what DeepSpeed's methods read
        self.num_layers = len(model.layers)
        self.n_heads_kv_local = attn.num_kv_heads
        self.head_size = attn.head_dim
        self.max_sequence_length = max_len
        self.activation_dtype = dtype
        self._kv_cache_config: KVCacheConfig | None = None
        self.state_manager: Any = None
        self.kv: list[LayerKV] = []

    def set_state_manager(self, state_manager: Any) -> None:
        self.state_manager = state_manager
        self.kv = layer_views(state_manager, self.num_layers, self.activation_dtype)

    def maybe_free_kv(self, sequence: Any) -> None:
        """Dense attention frees nothing after a forward (DeepSpeed's default)."""

    def prepare_batch(self, batch: Any) -> None:
        """DeepSpeed builds CUDA attention atoms here; the forward below reads the batch directly."""

    def block_ids_by_pointer(self) -> dict[int, list[int]]:
        """Each tracked sequence's block ids, keyed by the pointer DeepSpeed puts in the batch."""
        return {s.kv_blocks_ptr: s.all_block_ids().tolist() for s in self.state_manager.tracked_sequences.values()}

    @torch.inference_mode()
    def forward(self, batch: Any) -> torch.Tensor:
        """Logits [sequences, vocab] at each sequence's last token of this batch."""
        n_seq, n_tok = batch.current_sequences, batch.current_tokens
        ids = batch.input_ids()[:n_tok].long()
        desc = batch.inflight_seq_descriptors()[:n_seq].tolist()  # (first row, tokens, seen before, 0)
        tables = self.block_ids_by_pointer()
        blocks = [tables[p] for p in batch.kv_ptrs()[:n_seq].tolist()]
        bs = self.attn.kv_block_size
        # decodes first (one call over all of them), then prompt chunks, as paged_attention expects
        decodes = [i for i, d in enumerate(desc) if d[1] == 1 and d[2] > 0]
        chunks = [i for i in range(n_seq) if i not in set(decodes)]
        order = decodes + chunks
        rows: list[int] = []
        positions: list[int] = []
        for i in order:
            start, n, seen, _ = desc[i]
            rows.extend(range(start, start + n))
            positions.extend(range(seen, seen + n))
        slots = []
        for i in order:
            _, n, seen, _ = desc[i]
            slots.extend(blocks[i][p // bs] * bs + p % bs for p in range(seen, seen + n))
        meta = AttentionMetadata(slot_mapping=torch.tensor(slots, dtype=torch.long))
        if decodes:
            width = max(len(blocks[i]) for i in decodes)
            meta.num_decodes = len(decodes)
            meta.decode_block_tables = torch.tensor(
                [blocks[i] + [0] * (width - len(blocks[i])) for i in decodes], dtype=torch.long
            )
            lens = torch.tensor([desc[i][2] + 1 for i in decodes])
            meta.decode_mask = additive_mask(torch.arange(width * bs)[None, :] < lens[:, None], self.activation_dtype)[
                :, None, None, :
            ]
        row = len(decodes)
        for i in chunks:
            _, n, seen, _ = desc[i]
            span = PrefillSpan(row, n, seen, torch.tensor(blocks[i], dtype=torch.long))
            if seen > 0:
                q_pos = torch.arange(seen, seen + n)
                span.mask = additive_mask(torch.arange(seen + n)[None, :] <= q_pos[:, None], self.activation_dtype)
            meta.prefills.append(span)
            row += n
        pos = torch.tensor(positions, dtype=torch.long)
        hidden = self.model(ids[torch.tensor(rows, dtype=torch.long)], self.cos[pos], self.sin[pos], self.kv, meta)
        # each sequence's last row, back in DeepSpeed's batch order
        last_row, end = {}, 0
        for i in order:
            end += desc[i][1]
            last_row[i] = end - 1
        return self.model.logits(hidden[torch.tensor([last_row[i] for i in range(n_seq)])])
