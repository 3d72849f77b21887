"""Per-GPU memory budget: weights, KV cache per token, activations, workspace, and what is left for KV.

Everything is exact by formula from the model shape, so a learner can check it by hand:

- Weights: linear layers in the chosen dtype; embeddings, LM head, norms and the MoE router stay
  in the unquantized dtype (bf16, or fp32/fp16 when that is the weight dtype), as published fp8,
  int8 and AWQ/GPTQ checkpoints keep them. Scales: int4 stores per group of `group_size` inputs
  one fp16 scale and one 4-bit zero point (AWQ/GPTQ layout); int8 one fp16 scale per output row;
  fp8 one fp32 scale per matrix (counted as zero).
- KV per token: 2 (K and V) x layers x KV heads x head_dim x bytes(kv_dtype); int8 adds one fp32
  scale per token, head, K and V (as the native engine stores it); fp8 uses per-layer scales (no
  per-token bytes).
- Tensor parallel (tp): query heads, KV heads and MLP width split across GPUs; when a model has
  fewer KV heads than tp each GPU keeps one KV head (replicated, as vLLM does); embeddings and
  the LM head split by vocabulary. Pipeline parallel (pp): layers split into stages (the extra
  layers of an uneven split go to the stages before the last, as vLLM does); the first stage
  holds the embedding, the last the LM head; the stage with the least room for KV sets the
  capacity. Expert parallel (ep, MoE only): whole experts split over ep GPUs, ep a multiple of tp
  (the ep/tp attention replicas each serve their own requests, as vLLM's data parallel + expert
  parallel does).
- Activations: the peak transient tensors of one forward over `max_num_batched_tokens` tokens plus
  fp32 logits (and one softmax copy) for `max_num_seqs` sequences. Workspace: CUDA context,
  library workspaces and CUDA graph pools, 1 GiB per GPU by default (0 on CPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llmlab.models.shapes import ModelShape, get_shape
from llmlab.plan.hardware import GB, GIB, Hardware, get_hardware

WEIGHT_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
KV_BYTES: dict[str, float] = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1}
SCALE_BYTES = 2  # fp16 scale per int4 group or int8 row
KV_SCALE_BYTES = 4  # fp32 scale per int8 KV head-token (the native engine's kv_cache.SCALE_DTYPE)
ZERO_BYTES = 0.5  # 4-bit zero point per int4 group
GPU_WORKSPACE_BYTES = 1 * GIB


def unquantized_dtype(weights: str) -> str:
    """The dtype of embeddings, norms and activations for a weight dtype (quantized models run in bf16)."""
    return weights if weights in ("fp32", "fp16") else "bf16"


def check_dtypes(weights: str, kv_dtype: str) -> str:
    """Raise ValueError naming a weight or KV dtype the models do not know; return the KV dtype,
    with "auto" (as vLLM spells it) resolved to the unquantized dtype of `weights`."""
    if weights not in WEIGHT_BYTES:
        raise ValueError(f"unknown weights dtype {weights!r}: choose one of {', '.join(WEIGHT_BYTES)}")
    if kv_dtype == "auto":
        return unquantized_dtype(weights)
    if kv_dtype not in KV_BYTES:
        raise ValueError(f"unknown kv_dtype {kv_dtype!r}: choose one of {', '.join(KV_BYTES)} or 'auto'")
    return kv_dtype


@dataclass(frozen=True)
class Shard:
    """What one GPU holds of a model under tp x pp (x ep): the sizes the memory and cost models use."""

    shape: ModelShape
    tp: int
    pp: int
    ep: int
    stage_layers: tuple[int, ...]  # layers in each pipeline stage
    q_heads: int  # query heads per GPU
    kv_heads: int  # KV heads per GPU (1 when replicated)
    intermediate: int  # MLP width per GPU (per expert when MoE without ep)
    experts: int  # experts per GPU (0 for dense)
    vocab: int  # vocabulary rows per GPU (embedding and LM head)

    @property
    def max_layers(self) -> int:
        return max(self.stage_layers)

    def linear_matrices(self, experts: int | None = None) -> list[tuple[int, int, int]]:
        """One layer's linear weights on this GPU as (in_features, out_features, count)."""
        s, h, hd = self.shape, self.shape.hidden_size, self.shape.head_dim
        mats = [(h, self.q_heads * hd, 1), (h, self.kv_heads * hd, 2), (self.q_heads * hd, h, 1)]
        n = 1 if not s.is_moe else (self.experts if experts is None else experts)
        mats += [(h, self.intermediate, 2 * n), (self.intermediate, h, n)]
        return mats

    def linear_elements_per_layer(self, experts: int | None = None) -> int:
        return sum(i * o * c for i, o, c in self.linear_matrices(experts))


def _check_sizes(**sizes: int) -> None:
    """Raise ValueError naming the first parallel size that is not a positive int."""
    for label, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{label}={value!r} must be a positive integer")


def parallel_sizes(num_gpus: int | None, tp: int | None, pp: int | None) -> tuple[int, int]:
    """(tp, pp) from the knobs a user sets: pp defaults to 1, tp to num_gpus / pp (or 1 without
    num_gpus); raises ValueError naming the knob that is wrong and what it must be."""
    pp = 1 if pp is None else pp
    _check_sizes(**{k: v for k, v in {"num_gpus": num_gpus, "tp": tp, "pp": pp}.items() if v is not None})
    if tp is None:
        if num_gpus is not None and num_gpus % pp:
            raise ValueError(f"num_gpus={num_gpus} is not a multiple of pp={pp}: choose num_gpus = tp x pp")
        tp = 1 if num_gpus is None else num_gpus // pp
    if num_gpus is not None and tp * pp != num_gpus:
        raise ValueError(f"num_gpus={num_gpus} but tp={tp} x pp={pp} = {tp * pp}: make tp * pp equal num_gpus")
    return tp, pp


def make_shard(shape: ModelShape, tp: int = 1, pp: int = 1, ep: int = 1) -> Shard:
    """Split `shape` over tp x pp (x ep) GPUs, or raise ValueError saying which degrees would work."""
    _check_sizes(tp=tp, pp=pp, ep=ep)
    if shape.num_heads % tp:
        raise ValueError(
            f"tp={tp} does not divide the {shape.num_heads} attention heads of {shape.name}: "
            f"choose tp from {valid_tp(shape)}"
        )
    kv = shape.num_kv_heads
    if (kv >= tp and kv % tp) or (kv < tp and tp % kv):
        raise ValueError(
            f"tp={tp} does not split the {kv} KV heads of {shape.name} evenly (nor replicate them evenly): "
            f"choose tp from {valid_tp(shape)}"
        )
    if shape.intermediate_size % tp:
        raise ValueError(
            f"tp={tp} does not divide the MLP width {shape.intermediate_size} of {shape.name}: "
            f"choose tp from {valid_tp(shape)}"
        )
    if pp > shape.num_layers:
        raise ValueError(
            f"pp={pp} exceeds the {shape.num_layers} layers of {shape.name}: choose pp <= {shape.num_layers}"
        )
    if ep > 1 and not shape.is_moe:
        raise ValueError(f"ep={ep} needs a mixture-of-experts model; {shape.name} is dense: use ep=1")
    if ep > 1 and (shape.num_experts % ep or ep % tp):
        raise ValueError(
            f"ep={ep} must divide the {shape.num_experts} experts of {shape.name} and be a multiple of tp={tp}: "
            f"choose ep from {[e for e in range(tp, shape.num_experts + 1, tp) if shape.num_experts % e == 0]}"
        )
    base, extra = divmod(shape.num_layers, pp)
    stages = [base] * pp
    for i in range(2, extra + 2):  # as vLLM: the extra layers go to the stages just before the last
        stages[-i] += 1
    if ep > 1:
        experts, intermediate = shape.num_experts // ep, shape.intermediate_size
    else:
        experts, intermediate = shape.num_experts, shape.intermediate_size // tp
    return Shard(
        shape=shape,
        tp=tp,
        pp=pp,
        ep=ep,
        stage_layers=tuple(stages),
        q_heads=shape.num_heads // tp,
        kv_heads=max(1, kv // tp),
        intermediate=intermediate,
        experts=experts,
        vocab=math.ceil(shape.vocab_size / tp),
    )


def valid_tp(shape: ModelShape, limit: int = 64) -> list[int]:
    """Tensor-parallel degrees up to `limit` that split `shape` evenly."""
    kv = shape.num_kv_heads
    return [
        t
        for t in range(1, limit + 1)
        if shape.num_heads % t == 0 and (kv % t == 0 if kv >= t else t % kv == 0) and shape.intermediate_size % t == 0
    ]


def linear_bytes(shard: Shard, layers: int, weights: str, group_size: int = 128) -> float:
    """Bytes of `layers` layers' linear weights on one GPU in `weights`, with quantization scales."""
    per_layer = 0.0
    for n_in, n_out, count in shard.linear_matrices():
        per_layer += count * n_in * n_out * WEIGHT_BYTES[weights]
        if weights == "int4":
            per_layer += count * n_out * math.ceil(n_in / group_size) * (SCALE_BYTES + ZERO_BYTES)
        elif weights == "int8":
            per_layer += count * n_out * SCALE_BYTES
    return per_layer * layers


def other_weight_bytes(shard: Shard, stage: int, weights: str) -> tuple[float, float]:
    """(embedding + LM head bytes, norms + biases + router bytes) on one GPU of pipeline `stage`."""
    s, h = shard.shape, shard.shape.hidden_size
    size = WEIGHT_BYTES[unquantized_dtype(weights)]
    first, last = stage == 0, stage == shard.pp - 1
    tables = int(first) + int(last and not (s.tie_embeddings and first))
    embeddings = tables * shard.vocab * h * size
    layers = shard.stage_layers[stage]
    small = (2 * layers + int(last)) * h
    if s.attention_bias:
        small += layers * (shard.q_heads + 2 * shard.kv_heads) * s.head_dim
    if s.is_moe:
        small += layers * h * s.num_experts
    return embeddings, small * size


def kv_bytes_per_token(shard: Shard, layers: int, kv_dtype: str) -> float:
    """KV cache bytes one token takes on one GPU holding `layers` layers."""
    per_head = shard.shape.head_dim * KV_BYTES[kv_dtype] + (KV_SCALE_BYTES if kv_dtype == "int8" else 0)
    return 2 * layers * shard.kv_heads * per_head


def activation_bytes(shard: Shard, weights: str, max_num_batched_tokens: int, max_num_seqs: int) -> float:
    """Peak transient bytes of one forward: residual + normed hidden + the larger of attention and MLP
    intermediates for every batched token, plus fp32 logits and a softmax copy for each sequence."""
    s, h, hd = shard.shape, shard.shape.hidden_size, shard.shape.head_dim
    attention = (2 * shard.q_heads + 2 * shard.kv_heads) * hd
    routed = max(1, s.experts_per_token) if s.is_moe else 1
    mlp = 3 * shard.intermediate * routed
    per_token = (2 * h + max(attention, mlp)) * WEIGHT_BYTES[unquantized_dtype(weights)]
    logits = 2 * max_num_seqs * shard.vocab * 4
    return max_num_batched_tokens * per_token + logits


@dataclass
class MemoryPlan:
    """One GPU's memory under a configuration (the pipeline stage with the least room for KV)."""

    model: str
    hardware: str
    weights: str
    kv_dtype: str
    tp: int
    pp: int
    ep: int
    block_size: int
    max_model_len: int
    gpu_memory_utilization: float
    weights_bytes: float  # all weights on this GPU
    linear_weights_bytes: float  # the part weight quantization shrinks (incl. its scales)
    embedding_bytes: float  # embedding and/or LM head shard on this GPU
    kv_bytes_per_token: float  # on this GPU
    activation_bytes: float
    workspace_bytes: float
    available_bytes: float  # memory_bytes x gpu_memory_utilization: what the engine may use
    kv_bytes: float  # what is left for the KV cache (0 when negative)
    kv_tokens: int  # kv_blocks x block_size
    kv_blocks: int
    fits: bool  # weights fit and the KV pool holds at least one max_model_len request
    shortfall_bytes: float  # bytes missing for that (0 when fits)
    layers: int  # layers on this GPU

    @property
    def num_gpus(self) -> int:
        return self.ep * self.pp if self.ep > self.tp else self.tp * self.pp

    @property
    def required_bytes(self) -> float:
        """Weights, activations, workspace and the KV of one max_model_len request."""
        blocks = math.ceil(self.max_model_len / self.block_size)
        return (
            self.weights_bytes
            + self.activation_bytes
            + self.workspace_bytes
            + blocks * self.block_size * self.kv_bytes_per_token
        )

    def max_concurrency(self, context_len: int) -> int:
        """How many requests of `context_len` tokens (prompt + output) fit in the KV pool at once."""
        if not isinstance(context_len, int) or context_len < 1:
            raise ValueError(f"context_len={context_len!r} must be a positive number of tokens")
        return self.kv_blocks // math.ceil(context_len / self.block_size)

    def summary(self) -> dict[str, float | int | bool | str]:
        """The plan as a flat dict (GB figures in decimal gigabytes) for tables."""
        return {
            "model": self.model,
            "hardware": self.hardware,
            "weights": self.weights,
            "kv_dtype": self.kv_dtype,
            "tp": self.tp,
            "pp": self.pp,
            "ep": self.ep,
            "fits": self.fits,
            "weights_gb": self.weights_bytes / GB,
            "kv_gb": self.kv_bytes / GB,
            "activation_gb": self.activation_bytes / GB,
            "workspace_gb": self.workspace_bytes / GB,
            "available_gb": self.available_bytes / GB,
            "kv_kib_per_token": self.kv_bytes_per_token / 1024,
            "kv_tokens": self.kv_tokens,
            "kv_blocks": self.kv_blocks,
            "shortfall_gb": self.shortfall_bytes / GB,
        }

    def __str__(self) -> str:
        head = (
            f"{self.model} on {self.hardware} (weights {self.weights}, KV {self.kv_dtype}, "
            f"tp={self.tp} pp={self.pp}{f' ep={self.ep}' if self.ep > 1 else ''}), per GPU:"
        )
        lines = [
            head,
            f"  usable      {self.available_bytes / GB:8.2f} GB ({self.gpu_memory_utilization:.0%} of memory)",
            f"  weights     {self.weights_bytes / GB:8.2f} GB ({self.layers} layers)",
            f"  activations {self.activation_bytes / GB:8.2f} GB",
            f"  workspace   {self.workspace_bytes / GB:8.2f} GB",
            f"  KV cache    {self.kv_bytes / GB:8.2f} GB = {self.kv_tokens:,} tokens "
            f"({self.kv_blocks:,} blocks of {self.block_size}) at {self.kv_bytes_per_token / 1024:.1f} KiB/token",
        ]
        if self.fits:
            at_once = self.max_concurrency(self.max_model_len)
            lines.append(f"  fits: {at_once:,} requests of {self.max_model_len:,} tokens at once")
        else:
            lines.append(
                f"  does NOT fit a {self.max_model_len:,}-token request: short by {self.shortfall_bytes / GB:.2f} GB "
                "(quantize, add GPUs with tp/pp, or lower max_model_len)"
            )
        return "\n".join(lines)

    def _repr_pretty_(self, printer, cycle) -> None:  # IPython shows the readable form
        printer.text(str(self))


def memory_plan(
    shape: ModelShape | str,
    hw: Hardware | str,
    weights: str = "bf16",
    kv_dtype: str = "bf16",
    tp: int = 1,
    pp: int = 1,
    ep: int = 1,
    block_size: int = 16,
    max_model_len: int | None = None,
    gpu_memory_utilization: float = 0.9,
    group_size: int = 128,
    max_num_batched_tokens: int = 8192,
    max_num_seqs: int = 256,
    workspace_bytes: float | None = None,
) -> MemoryPlan:
    """Per-GPU memory of `shape` on `hw` with the given quantization and parallelism.

    `max_model_len` defaults to the model's context length; the plan `fits` when the KV pool
    holds at least one request of that length (as vLLM demands at start-up).
    """
    shape, hw = get_shape(shape), get_hardware(hw)
    kv_dtype = check_dtypes(weights, kv_dtype)
    for label, value in (("block_size", block_size), ("group_size", group_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{label}={value!r} must be a positive integer")
    if not 0 < gpu_memory_utilization <= 1:
        raise ValueError(f"gpu_memory_utilization={gpu_memory_utilization!r} must be in (0, 1], e.g. 0.9")
    max_model_len = shape.max_position_embeddings if max_model_len is None else max_model_len
    if not isinstance(max_model_len, int) or max_model_len < 1:
        raise ValueError(f"max_model_len={max_model_len!r} must be a positive number of tokens")
    shard = make_shard(shape, tp, pp, ep)
    workspace = (GPU_WORKSPACE_BYTES if hw.kind == "gpu" else 0.0) if workspace_bytes is None else workspace_bytes
    activations = activation_bytes(shard, weights, max_num_batched_tokens, max_num_seqs)
    available = hw.memory_bytes * gpu_memory_utilization
    plans = []
    for stage, layers in enumerate(shard.stage_layers):
        linear = linear_bytes(shard, layers, weights, group_size)
        embeddings, small = other_weight_bytes(shard, stage, weights)
        weight_total = linear + embeddings + small
        per_token = kv_bytes_per_token(shard, layers, kv_dtype)
        free = available - weight_total - activations - workspace  # negative when weights do not fit
        kv = max(0.0, free)
        blocks = int(kv // (per_token * block_size))
        plans.append((blocks, free, stage, layers, linear, embeddings, weight_total, per_token, kv))
    blocks, _free, _stage, layers, linear, embeddings, weight_total, per_token, kv = min(plans)
    plan = MemoryPlan(
        model=shape.name,
        hardware=hw.name,
        weights=weights,
        kv_dtype=kv_dtype,
        tp=tp,
        pp=pp,
        ep=ep,
        block_size=block_size,
        max_model_len=max_model_len,
        gpu_memory_utilization=gpu_memory_utilization,
        weights_bytes=weight_total,
        linear_weights_bytes=linear,
        embedding_bytes=embeddings,
        kv_bytes_per_token=per_token,
        activation_bytes=activations,
        workspace_bytes=workspace,
        available_bytes=available,
        kv_bytes=kv,
        kv_tokens=blocks * block_size,
        kv_blocks=blocks,
        fits=False,
        shortfall_bytes=0.0,
        layers=layers,
    )
    shortfall = max(0.0, plan.required_bytes - available)
    plan.fits = shortfall == 0.0
    plan.shortfall_bytes = shortfall
    return plan
