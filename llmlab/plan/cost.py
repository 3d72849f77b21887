"""Step-time model: a roofline per operator group, efficiency factors, communication and overhead.

Each group's time is the larger of its compute time (flops / (peak rate x compute efficiency))
and its memory time (bytes / (bandwidth x memory efficiency)); GEMM efficiency grows with the
tokens in the step (n tokens cost what n + GEMM_HALF_TOKENS would at full efficiency), and fp8
GEMMs reach FP8_RATE_FRACTION of the bf16 share of their peak:

- `qkv_o`: the attention projections; `mlp`: gate/up/down (MoE: the routed experts, reading only
  the experts some token picked); weights read once per step, so decode is memory-bound.
- `attention`: scores and values over the KV cache: 4 x head_dim x heads flops per query-key pair,
  and every KV token of every scheduled request read once.
- `elementwise`: norms, rotary embedding, activation function: memory traffic only.
- `lm_head`: logits for every scheduled request (one row each).
- `allreduce` (tp > 1): two per layer (after attention and after the MLP), ring algorithm:
  2 (tp-1)/tp x bytes / interconnect, plus a latency each: a base one and one per ring step,
  larger over PCIe than NVLink (`collective_latency`). With expert parallel (ep > 1,
  MoE) the MLP's all-reduce becomes an all-to-all dispatch and combine: each token's hidden
  state goes to its experts_per_token experts, (ep-1)/ep of them on other GPUs, and back.
- `overhead`: host time per step (scheduling, input preparation, sampling launch) and the GPU's
  per-layer kernel gaps (LAYER_OVERHEAD_S) that no roofline counts.

Every GPU factor is a named constant below, with where it comes from; `CostModel.factors(slots)`
shows them for one step, `breakdown(slots)` the seconds per group. `benchmarks/sim_vs_published.py`
checks the whole against published GPU results.

Quantization changes bytes moved and the rate: fp8 weights use the fp8 tensor rate where the
hardware has one (W8A8); int8, int4 and fp8 without an fp8 path are weight-only: the bf16 rate,
with a dequantization penalty on the compute time. Pipeline parallel (pp > 1) splits the step
into min(pp, requests) micro-batches run as a synchronous pipeline, so it pays the bubble
(pp - 1 stage slots) and a point-to-point hop per stage boundary.

`step_time` is called ~10^5 times per simulated workload, so it loops over slots once and does
the rest with a few multiplications; a simulator that keeps the totals itself calls `time_for`.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import accumulate
from typing import Any, NamedTuple

from llmlab.models.shapes import ModelShape, get_shape
from llmlab.plan.hardware import Hardware, get_hardware
from llmlab.plan.memory import (
    WEIGHT_BYTES,
    check_dtypes,
    kv_bytes_per_token,
    linear_bytes,
    make_shard,
    unquantized_dtype,
)

GROUPS = ("qkv_o", "mlp", "attention", "elementwise", "lm_head", "allreduce", "pipeline", "overhead")


# ---- the factors, each a named number with where it comes from ------------------------------
# A GPU's defaults (`Efficiency.for_hardware`); the CPU's come from torch measurements instead.
# They were set once against published GPU results (benchmarks/published, printed by
# benchmarks/sim_vs_published.py), never per row.

GEMM_EFFICIENCY = 0.7
"""Fraction of the datasheet bf16 tensor rate a large GEMM reaches (cuBLAS on H100 SXM reaches about
650-750 of 989 dense TFLOPS at large sizes, as NVIDIA's and independent GEMM benchmarks report)."""

FP8_RATE_FRACTION = 0.9
"""fp8 GEMMs reach a smaller share of their (twice as high) datasheet rate than bf16 GEMMs: about
1,250 of 1,979 dense TFLOPS on H100 SXM, i.e. ~0.9 x GEMM_EFFICIENCY (the per-tensor scaling and
the output conversion cost). Used only where the weights are fp8 and the GPU has an fp8 tensor path.
Chosen between 0.8 and 1.0 with the suite's fp8 prefill-heavy rows."""

GEMM_HALF_TOKENS = 32.0
"""Tokens in a step at which a GEMM reaches half its large-batch efficiency: efficiency is
GEMM_EFFICIENCY x tokens / (tokens + GEMM_HALF_TOKENS), so the compute time of n tokens is that of
n + GEMM_HALF_TOKENS at full efficiency: 67% at 64 tokens, 94% at 512. Hopper GEMM tiles are 64-128
rows, partly empty for small steps (decode batches are memory-bound anyway, so this shows in the
efficiency of small prefill chunks and mixed steps). Chosen from 0, 32 and 128 with the suite: 128
made large decode batches compute-bound, which no published decode-heavy row shows."""

BANDWIDTH_EFFICIENCY = 0.8
"""Fraction of datasheet HBM bandwidth that weight and KV streaming reaches (about 75-80% measured
on H100/A100 decode steps, e.g. ~77% reported for an A100 running Llama-3.1-8B at one request)."""

STEP_OVERHEAD_S = 1.0e-3
"""Host time per engine step that the GPU waits on: scheduling, input preparation, sampling and
detokenisation hand-off (vLLM V1 and TensorRT-LLM's PyTorch backend profile at about 1 ms per
step with CUDA graphs on; it is what keeps batch-1 decode below the bandwidth roofline). Chosen
from 0.5-1.5 ms with the suite's low-load latency rows."""

LAYER_OVERHEAD_S = 2e-5
"""GPU time per transformer layer per step that no roofline counts: about seven kernels a layer,
each with ~3 us of launch gap, ramp-up and tail even inside a CUDA graph (what Nsight timelines of
batch-1 decode show). It is what keeps small-batch decode of deep models off the bandwidth line;
checked against the suite's 70B and 405B low-load rows (20 us and 30 us both fit)."""

NVLINK_EFFICIENCY = 0.8
"""Achieved fraction of one-direction NVLink bandwidth in a large ring all-reduce (nccl-tests
all_reduce_perf bus bandwidth of about 360 GB/s on 450 GB/s NVLink 4)."""

PCIE_EFFICIENCY = 0.6
"""Achieved fraction of PCIe bandwidth for peer-to-peer collectives (through the host bridge)."""

NVLINK_LATENCY_S = 8e-6
"""Fixed latency of one small all-reduce over NVLink (a one-shot custom all-reduce kernel: launch
and a flag exchange, about 6-10 us in vLLM's and TensorRT-LLM's own kernels)."""

NVLINK_HOP_S = 1.5e-6
"""Added latency per ring step of an all-reduce over NVLink (2 (tp - 1) steps); 8 GPUs reach about
30 us for small messages, as nccl-tests report."""

PCIE_LATENCY_S = 2.0e-5
"""Fixed latency of one small all-reduce over PCIe (no NVLink: through the host bridge)."""

PCIE_HOP_S = 5e-6
"""Added latency per ring step of an all-reduce over PCIe."""

NVLINK_MIN_BANDWIDTH = 100e9
"""A GPU-to-GPU link this fast or faster (one direction) is taken as NVLink (or Infinity Fabric);
slower ones are PCIe."""


@dataclass(frozen=True)
class Efficiency:
    """How close kernels come to the datasheet, plus the fixed costs a roofline misses.

    `compute` and `memory` scale peak rate and bandwidth; `fp8_rate` further scales the fp8 tensor
    rate; `gemm_half_tokens` is the step size at which GEMMs reach half of `compute` (prefill
    efficiency by tokens per step); `attention` scales attention kernels (paged KV reads are slower
    than dense ones); `network` scales the interconnect; each collective pays `comm_latency_s` plus
    `comm_hop_s` per ring step; `dequant` is the extra compute time fraction of weight-only
    quantized matmuls. Frozen: make a changed copy with `dataclasses.replace(eff, compute=0.5)`
    and assign it to `CostModel.efficiency`. The GPU defaults are the module's named constants.
    """

    compute: float = GEMM_EFFICIENCY
    memory: float = BANDWIDTH_EFFICIENCY
    overhead_s: float = STEP_OVERHEAD_S  # per step
    per_token_s: float = 0.0  # per scheduled token (host-side input preparation)
    per_seq_s: float = 0.0  # per scheduled request (block tables, sampling)
    attention: float = 1.0
    network: float = NVLINK_EFFICIENCY
    comm_latency_s: float = NVLINK_LATENCY_S  # per collective or pipeline hop
    dequant: float = 0.2
    fp8_rate: float = FP8_RATE_FRACTION
    gemm_half_tokens: float = GEMM_HALF_TOKENS
    comm_hop_s: float = NVLINK_HOP_S  # per ring step of a collective
    per_layer_s: float = LAYER_OVERHEAD_S  # per layer on a GPU, per step (kernel gaps and tails)

    @classmethod
    def for_hardware(cls, hw: Hardware) -> Efficiency:
        """Defaults for a GPU (the named constants above; PCIe latencies and efficiency where its
        link is not NVLink) or for the measured local CPU (its rates are already achieved rates)."""
        if hw.kind == "cpu":
            return cls(
                compute=0.9, memory=0.9, overhead_s=2e-3, attention=0.5, dequant=1.0, gemm_half_tokens=0.0,
                comm_hop_s=0.0, comm_latency_s=1e-5, network=0.7, fp8_rate=1.0, per_layer_s=0.0,
            )  # fmt: skip
        if hw.interconnect < NVLINK_MIN_BANDWIDTH:
            return cls(network=PCIE_EFFICIENCY, comm_latency_s=PCIE_LATENCY_S, comm_hop_s=PCIE_HOP_S)
        return cls()

    def __post_init__(self) -> None:
        for name in ("compute", "memory", "attention", "network", "fp8_rate"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Efficiency.{name}={value!r} must be a positive fraction of peak, e.g. 0.7")
        for name in (
            "overhead_s", "per_token_s", "per_seq_s", "comm_latency_s", "dequant", "gemm_half_tokens", "comm_hop_s",
            "per_layer_s",
        ):  # fmt: skip
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"Efficiency.{name}={value!r} must be >= 0")


class StepLoad(NamedTuple):
    """What a step asks of the model, summed over its slots.

    tokens: tokens computed; seqs: requests scheduled (one logits row each); kv_read: KV tokens
    read by attention (each slot's context_len); attn_pairs: query-key pairs (a decode slot adds its
    context_len, a prefill chunk of n tokens ending at context c adds n*c - n*(n-1)/2).
    """

    tokens: int
    seqs: int
    kv_read: int
    attn_pairs: float


def step_load(slots: Iterable[Any]) -> StepLoad:
    """Sum `slots` (objects with .phase, .num_tokens, .context_len, e.g. core Slot) into a StepLoad."""
    tokens = seqs = kv_read = 0
    pairs = 0.0
    for slot in slots:
        n, c = slot.num_tokens, slot.context_len
        tokens += n
        seqs += 1
        kv_read += c
        pairs += c if n == 1 else n * c - n * (n - 1) / 2
    return StepLoad(tokens, seqs, kv_read, pairs)


class _Stage(NamedTuple):
    """Per-GPU constants of one pipeline stage, precomputed so a step costs a few multiplications."""

    layers: int
    attn_proj_flops: float  # per token
    attn_proj_bytes: float  # weights per step
    mlp_flops: float  # per token (routed experts only)
    mlp_fixed_bytes: float  # dense MLP weights (or MoE router), read every step
    expert_bytes: float  # all experts on this GPU (MoE), read in proportion to experts touched
    attn_act_bytes: float  # activation traffic of the attention projections per token
    mlp_act_bytes: float  # activation traffic of the MLP per token
    pair_flops: float  # attention flops per query-key pair
    kv_bytes: float  # KV bytes per token on this GPU
    elementwise_bytes: float  # per token
    lm_flops: float  # per logits row (0 off the last stage)
    lm_bytes: float  # LM head weights (0 off the last stage)
    logits_bytes: float  # per logits row
    allreduce_bytes: float  # per token, all all-reduces and all-to-alls of the stage
    collectives: int  # all-reduces and all-to-alls per step on this stage (each pays a latency)


class CostModel:
    """Predicts the wall time of one engine step of `shape` on `hw` from what the step computes."""

    def __init__(
        self,
        shape: ModelShape | str,
        hw: Hardware | str,
        weights: str = "bf16",
        kv_dtype: str = "bf16",
        tp: int = 1,
        pp: int = 1,
        efficiency: Efficiency | None = None,
        ep: int = 1,
        group_size: int = 128,
    ) -> None:
        self.shape, self.hw = get_shape(shape), get_hardware(hw)
        kv_dtype = check_dtypes(weights, kv_dtype)
        self.weights, self.kv_dtype, self.tp, self.pp, self.ep = weights, kv_dtype, tp, pp, ep
        self.shard = make_shard(self.shape, tp, pp, ep)
        if (tp > 1 or pp > 1) and self.hw.interconnect <= 0:
            raise ValueError(
                f"{self.hw.name} has no GPU-to-GPU interconnect in the catalogue, so tp={tp} pp={pp} cannot be "
                "costed: use tp=1 pp=1, or register hardware with interconnect > 0"
            )
        self.act = unquantized_dtype(weights)
        self.weight_only = weights in ("int8", "int4") or (weights == "fp8" and self.hw.rate("fp8") <= 0)
        self.linear_rate = self.hw.rate("fp8") if weights == "fp8" and not self.weight_only else self._rate(self.act)
        self.attention_rate = self._rate(self.act)
        self.stages = [self._stage(i, layers, group_size) for i, layers in enumerate(self.shard.stage_layers)]
        s = self.shape
        self._miss = 1.0 - s.experts_per_token / s.num_experts if s.is_moe else 1.0  # P(a token skips an expert)
        self._spread = ep / tp if ep > 1 else 1.0  # tokens reaching a GPU's experts per local token
        self.efficiency = efficiency or Efficiency.for_hardware(self.hw)

    def _rate(self, dtype: str) -> float:
        """The hardware's rate for `dtype`, falling back to bf16 then fp32 where it has none."""
        for candidate in (dtype, "bf16", "fp32"):
            if self.hw.rate(candidate) > 0:
                return self.hw.rate(candidate)
        raise ValueError(f"{self.hw.name} lists no fp32 or bf16 rate: register it with flops={{'bf16': ...}}")

    def _stage(self, index: int, layers: int, group_size: int) -> _Stage:
        s, sh = self.shape, self.shard
        h, hd, act = s.hidden_size, s.head_dim, WEIGHT_BYTES[self.act]
        mats = sh.linear_matrices(experts=0 if s.is_moe else None)  # attention (+ dense MLP)
        attn_elems = sum(i * o * c for i, o, c in mats[:3])
        total_linear = linear_bytes(sh, layers, self.weights, group_size)
        all_elems = sh.linear_elements_per_layer()
        bytes_per_elem = total_linear / (layers * all_elems)  # includes quantization scales
        attn_bytes = attn_elems * bytes_per_elem * layers
        mlp_elems_one = 3 * h * sh.intermediate  # one (sharded) MLP
        if s.is_moe:
            routed = s.experts_per_token * 3 * h * s.intermediate_size / self.tp  # per token, see memory docs
            mlp_fixed = layers * h * s.num_experts * act  # router
            expert_bytes = layers * sh.experts * mlp_elems_one * bytes_per_elem
            mlp_flops = 2 * routed * layers
        else:
            mlp_fixed = layers * mlp_elems_one * bytes_per_elem
            expert_bytes = 0.0
            mlp_flops = 2 * mlp_elems_one * layers
        q, kv = sh.q_heads * hd, sh.kv_heads * hd
        inter = sh.intermediate * (max(1, s.experts_per_token) if s.is_moe else 1)
        last = index == len(sh.stage_layers) - 1
        ring = h * act * 2 * (self.tp - 1) / self.tp  # bytes per token through one ring all-reduce
        allreduces = 0 if self.tp == 1 else 1 if self.ep > 1 else 2
        alltoall = 2 * h * act * s.experts_per_token * (self.ep - 1) / self.ep / self.tp if self.ep > 1 else 0.0
        lm_bytes_weights = sh.vocab * h * act if last else 0.0
        return _Stage(
            layers=layers,
            attn_proj_flops=2 * attn_elems * layers,
            attn_proj_bytes=attn_bytes,
            mlp_flops=mlp_flops,
            mlp_fixed_bytes=mlp_fixed,
            expert_bytes=expert_bytes,
            attn_act_bytes=layers * act * (h + (q + 2 * kv) + q + h),  # qkv in/out, o in/out
            mlp_act_bytes=layers * act * (h + 2 * inter + inter + h),  # gate_up in/out, down in/out
            pair_flops=4 * hd * sh.q_heads * layers,
            kv_bytes=kv_bytes_per_token(sh, layers, self.kv_dtype),
            elementwise_bytes=layers * act * (8 * h + 2 * (q + kv) + 3 * inter),
            lm_flops=2 * h * sh.vocab if last else 0.0,
            lm_bytes=lm_bytes_weights,
            logits_bytes=sh.vocab * 4 if last else 0.0,
            allreduce_bytes=layers * (allreduces * ring + alltoall),
            collectives=layers * (allreduces + (2 if alltoall else 0)),
        )

    # ---- the step ---------------------------------------------------------------------------

    def step_time(self, slots: Iterable[Any]) -> float:
        """Seconds one step over `slots` (each with .phase, .num_tokens, .context_len) takes."""
        return self.time_for(*step_load(slots))

    def time_for(self, tokens: int, seqs: int, kv_read: int, attn_pairs: float) -> float:
        """Seconds for a step with these totals (see StepLoad); the simulator's fast path (~2 us)."""
        if tokens <= 0:
            return 0.0
        if self.pp > 1:
            return self._host(tokens, seqs) + self._pipeline(tokens, seqs, kv_read, attn_pairs)[0]
        before, after = self._around_attention(tokens, seqs)
        a3, d3 = self._coeffs[0][7:9]
        lin, mem = a3 * attn_pairs, d3 * (kv_read + tokens)
        return before + (lin if lin > mem else mem) + after

    def decode_ends(
        self, clock: float, contexts: list[int], steps: list[int], until: float | None
    ) -> list[float] | None:
        """When each of consecutive decode steps from `clock` ends, where request i (with
        `contexts[i]` tokens cached before the first) is in the first `steps[i]` of them; up to
        the step that ends at or past `until`. Each step is `time_for`'s arithmetic (its parts
        apart from attention kept by batch size) and the clock adds them one at a time, as
        stepping does, so the seconds are the same to the bit. None when pp > 1, a coefficient
        is negative or a step's time is not positive."""
        a3, d3 = self._coeffs[0][7:9]
        if self.pp > 1 or a3 < 0.0 or d3 < 0.0:
            return None
        # attention takes its KV reads' time in every step when reading a token is the slower
        # (the roundings keep that order): the usual case, with the shorter sum
        read_bound = a3 <= d3
        parts = self._decode_parts
        leaving: dict[int, tuple[int, int]] = {}  # step -> (requests, their KV) gone before it
        for c, s in zip(contexts, steps, strict=True):
            n, kv = leaving.get(s, (0, 0))
            leaving[s] = (n + 1, kv + c + 1)
        seqs, kv = len(steps), sum(contexts) + len(steps)
        until = math.inf if until is None else until
        ends: list[float] = []
        t = 0
        for stop in sorted(leaving):  # steps t .. stop - 1 have the same requests
            before, after = parts.get(seqs) or parts.setdefault(seqs, self._around_attention(seqs, seqs))
            read = kv + seqs * t  # KV read in step t
            while t < stop:
                n = stop - t
                if until < math.inf:  # not far past it: the steps only grow longer
                    shortest = before + max(a3 * read, d3 * (read + seqs)) + after
                    n = min(n, max(1, int((until - clock) / shortest) + 2)) if shortest > 0.0 else 1
                tokens = range(read + seqs, read + seqs * (n + 1), seqs)  # each step's KV read and new tokens
                if read_bound:
                    seconds = [before + d3 * r + after for r in tokens]
                else:
                    seconds = [before + (x if (x := a3 * (r - seqs)) > (y := d3 * r) else y) + after for r in tokens]
                if not seconds[0] > 0.0:  # the steps only grow longer
                    return None
                mark = len(ends)
                ends += accumulate(seconds, initial=clock)  # the clock, one step at a time
                del ends[mark]  # the clock before these steps
                clock = ends[-1]
                if clock >= until:  # the first step to end at or past it is the last
                    del ends[bisect_left(ends, until, mark) + 1 :]
                    return ends
                t, read = t + n, read + n * seqs
            gone, gone_kv = leaving[stop]
            seqs, kv = seqs - gone, kv - gone_kv
        return ends

    def _around_attention(self, tokens: int, seqs: int) -> tuple[float, float]:
        """A one-stage step's seconds apart from attention, as (added before it, added after it):
        one order of additions for every caller, so stepped and bulk steps agree to the bit."""
        a1, b1, c1, a2, b2, c2, x2, _, _, e4, a5, b5, c5, a6, b6 = self._coeffs[0]
        mlp_bytes = b2 + c2 * tokens
        if x2:
            mlp_bytes += x2 * (1.0 - self._miss ** (tokens * self._spread))
        h = self._efficiency.gemm_half_tokens
        lin = a1 * (tokens + h)
        qkv_o = lin if lin > b1 + c1 * tokens else b1 + c1 * tokens
        lin = a2 * (tokens + h)
        mlp = lin if lin > mlp_bytes else mlp_bytes
        lin, mem = a5 * (seqs + h), b5 + c5 * seqs
        lm_head = lin if lin > mem else mem
        return self._host(tokens, seqs) + qkv_o + mlp, e4 * tokens + lm_head + a6 * tokens + b6

    def _host(self, tokens: float, seqs: float) -> float:
        e = self._efficiency
        layers = self.shape.num_layers  # a micro-batch walks every stage's kernels in turn
        return e.overhead_s + e.per_layer_s * layers + e.per_token_s * tokens + e.per_seq_s * seqs

    def _pipeline(self, tokens: int, seqs: int, kv_read: int, attn_pairs: float) -> tuple[float, float]:
        """(pipeline time, bubble + hop part of it) for pp > 1: m micro-batches through pp stages."""
        m = max(1, min(self.pp, seqs))
        per = [sum(self._groups(c, tokens / m, seqs / m, kv_read / m, attn_pairs / m)) for c in self._coeffs]
        e = self._efficiency
        hop_bytes = (tokens / m) * self.shape.hidden_size * WEIGHT_BYTES[self.act]
        hop = hop_bytes / (self.hw.interconnect * e.network) + e.comm_latency_s  # point to point: no ring
        total = sum(per) + (m - 1) * max(per) + (self.pp - 1) * hop
        return total, total - m * sum(per) / self.pp

    def _groups(self, coeffs: tuple[float, ...], tokens: float, seqs: float, kv_read: float, attn_pairs: float):
        """Times of qkv_o, mlp, attention, elementwise, lm_head and allreduce on one stage (general path)."""
        a1, b1, c1, a2, b2, c2, x2, a3, d3, e4, a5, b5, c5, a6, b6 = coeffs
        mlp_bytes = b2 + c2 * tokens
        if x2:
            mlp_bytes += x2 * (1.0 - self._miss ** (tokens * self._spread))
        h = self._efficiency.gemm_half_tokens
        return (
            max(a1 * (tokens + h), b1 + c1 * tokens),
            max(a2 * (tokens + h), mlp_bytes),
            max(a3 * attn_pairs, d3 * (kv_read + tokens)),
            e4 * tokens,
            max(a5 * (seqs + h), b5 + c5 * seqs),
            a6 * tokens + b6,
        )

    @property
    def efficiency(self) -> Efficiency:
        """The efficiency factors in use; assign a new Efficiency to change them (calibration does)."""
        return self._efficiency

    @efficiency.setter
    def efficiency(self, value: Efficiency) -> None:
        if not isinstance(value, Efficiency):
            raise ValueError(
                f"efficiency must be an Efficiency, got {type(value).__name__}: e.g. "
                "efficiency=llmlab.plan.Efficiency(compute=0.5), or calibration=llmlab.plan.calibrate(run)"
            )
        self._efficiency = value
        self._coeffs = [self._coefficients(st, value) for st in self.stages]
        self._decode_parts: dict[int, tuple[float, float]] = {}  # decode_ends' cache, by batch size

    def _coefficients(self, st: _Stage, e: Efficiency) -> tuple[float, ...]:
        """Fold rates, bandwidth and efficiencies into per-unit seconds, so a step is a few multiply-adds."""
        fp8 = self.weights == "fp8" and not self.weight_only
        flops_rate = self.linear_rate * e.compute * (e.fp8_rate if fp8 else 1.0)
        flops_rate /= 1.0 + e.dequant if self.weight_only else 1.0
        bw = self.hw.bandwidth * e.memory
        attn_rate = self.attention_rate * e.compute * e.attention
        link = self.hw.interconnect * e.network
        return (
            st.attn_proj_flops / flops_rate,
            st.attn_proj_bytes / bw,
            st.attn_act_bytes / bw,
            st.mlp_flops / flops_rate,
            st.mlp_fixed_bytes / bw,
            st.mlp_act_bytes / bw,
            st.expert_bytes / bw,
            st.pair_flops / attn_rate,
            st.kv_bytes / (bw * e.attention),
            st.elementwise_bytes / bw,
            st.lm_flops / (self.attention_rate * e.compute),
            st.lm_bytes / bw,
            st.logits_bytes / bw,
            st.allreduce_bytes / link if st.allreduce_bytes else 0.0,
            st.collectives * self.collective_latency(e),
        )

    def collective_latency(self, e: Efficiency | None = None) -> float:
        """Seconds of fixed latency in one all-reduce (or all-to-all) across this model's GPUs: a
        base latency plus one per ring step, 2 (n - 1) steps for n GPUs (NVLink or PCIe values,
        see `Efficiency.for_hardware`). Its bandwidth part is in the `allreduce` group's bytes."""
        e = e or self._efficiency
        n = max(self.tp, self.ep)
        return e.comm_latency_s + e.comm_hop_s * 2 * (n - 1) if n > 1 else e.comm_latency_s

    # ---- conveniences -----------------------------------------------------------------------

    def decode_time(self, batch: int, context_len: int) -> float:
        """Seconds for one decode step of `batch` requests that each hold `context_len` tokens."""
        if batch < 1 or context_len < 1:
            raise ValueError(f"batch={batch!r} and context_len={context_len!r} must be positive")
        return self.time_for(batch, batch, batch * context_len, float(batch * context_len))

    def prefill_time(self, num_tokens: int, context_len: int | None = None, batch: int = 1) -> float:
        """Seconds to prefill `num_tokens` new tokens for each of `batch` requests.

        `context_len` is the KV length after the chunk (default `num_tokens`: a fresh prompt).
        """
        context_len = num_tokens if context_len is None else context_len
        if num_tokens < 1 or context_len < num_tokens or batch < 1:
            raise ValueError(
                f"num_tokens={num_tokens!r} must be >= 1 and context_len={context_len!r} >= num_tokens, batch >= 1"
            )
        pairs = num_tokens * context_len - num_tokens * (num_tokens - 1) / 2
        return self.time_for(batch * num_tokens, batch, batch * context_len, batch * pairs)

    def breakdown(self, slots: Iterable[Any] | StepLoad) -> dict[str, float]:
        """Seconds per operator group for one step (summed over pipeline stages), for teaching and plots.

        With pp > 1 the groups are summed over stages for one micro-batch pass; `pipeline` holds
        the bubble and hops that the synchronous pipeline adds. `overhead` holds the step's host time
        and per-layer kernel gaps; `factors` shows the named factors behind every group.
        """
        load = slots if isinstance(slots, StepLoad) else step_load(slots)
        out = dict.fromkeys(GROUPS, 0.0)
        if load.tokens <= 0:
            return out
        m = 1 if self.pp == 1 else max(1, min(self.pp, load.seqs))
        for coeffs in self._coeffs:
            parts = self._groups(coeffs, load.tokens / m, load.seqs / m, load.kv_read / m, load.attn_pairs / m)
            for name, value in zip(GROUPS, parts, strict=False):
                out[name] += value * m / self.pp if self.pp > 1 else value
        if self.pp > 1:
            out["pipeline"] = self._pipeline(*load)[1]
        out["overhead"] = self._host(load.tokens, load.seqs)
        return out

    def factors(self, slots: Iterable[Any] | StepLoad) -> dict[str, Any]:
        """The named factors behind one step's time (see the module's constants), for teaching:
        what GEMMs, memory and links reach on it and the fixed costs it pays. `breakdown` gives
        the seconds per group; this says why they are what they are."""
        load = slots if isinstance(slots, StepLoad) else step_load(slots)
        e, hw = self._efficiency, self.hw
        fp8 = self.weights == "fp8" and not self.weight_only
        tokens = max(load.tokens, 0)
        gemm = e.compute * (e.fp8_rate if fp8 else 1.0) * (tokens / (tokens + e.gemm_half_tokens) if tokens else 0.0)
        a1, b1, c1, a2, b2, c2, x2, a3, d3, e4, a5, b5, c5, a6, b6 = self._coeffs[0]
        mlp_bytes = b2 + c2 * tokens + (x2 * (1.0 - self._miss ** (tokens * self._spread)) if x2 else 0.0)
        memory_s = b1 + c1 * tokens + mlp_bytes + d3 * (load.kv_read + tokens) + e4 * tokens + b5 + c5 * load.seqs
        step = self.time_for(*load) if tokens else 0.0
        nvlink = hw.interconnect >= NVLINK_MIN_BANDWIDTH
        return {
            "linear_rate": "fp8" if fp8 else self.act,
            "gemm_efficiency": gemm,  # of the datasheet rate, at this step's tokens
            "achieved_tflops": self.linear_rate * gemm / 1e12,
            "bandwidth_efficiency": e.memory,  # while streaming
            "achieved_bandwidth_fraction": memory_s * e.memory / step if step else 0.0,  # over the whole step
            "kv_dtype": self.kv_dtype,
            "kv_bytes_per_token": self.stages[0].kv_bytes,
            "attention_efficiency": e.attention,
            "link": "none" if self.tp * self.pp * self.ep == 1 else "NVLink" if nvlink else "PCIe",
            "link_efficiency": e.network,
            "collectives": self.stages[0].collectives,
            "collective_latency_s": self.collective_latency() if self.tp * self.ep > 1 else 0.0,
            "step_overhead_s": e.overhead_s,
            "layer_overhead_s": e.per_layer_s * self.shape.num_layers,
            "host_per_token_s": e.per_token_s,
            "host_per_seq_s": e.per_seq_s,
        }

    def decode_bound_tokens_per_s(self, batch: int, context_len: int) -> float:
        """Output tokens per second of a steady decode at `batch` x `context_len` (no prefill)."""
        return batch / self.decode_time(batch, context_len)

    def __repr__(self) -> str:
        return (
            f"CostModel({self.shape.name!r}, {self.hw.name!r}, weights={self.weights!r}, "
            f"kv_dtype={self.kv_dtype!r}, tp={self.tp}, pp={self.pp}, efficiency={self.efficiency})"
        )


def slots_for(phase: str, num_tokens: int, context_len: int, count: int = 1) -> list[Any]:
    """`count` identical slot-like records, for quick what-ifs without a scheduler."""
    from llmlab.core.records import Slot

    return [Slot(req_id=str(i), phase=phase, num_tokens=num_tokens, context_len=context_len) for i in range(count)]


def parallel_step_bytes(
    shape: ModelShape | str, micro_batch_tokens: Iterable[int], tp: int = 1, pp: int = 1, dtype: str = "fp32"
) -> list[dict[str, int]]:
    """Bytes each rank's collectives and stage hand-offs carry in one step, per rank (rank =
    stage x tp + tp_rank), for micro-batches of the given token counts. Payload bytes as the
    native engine counts them: every all-reduce sums a [tokens, hidden] tensor (two per layer of the
    rank's stage), every stage but the last sends each micro-batch's [tokens, hidden] hidden states
    and every stage but the first receives them. A ring all-reduce moves 2 (tp-1)/tp of its payload
    over each link; the cost model's `allreduce` group uses that."""
    s = get_shape(shape)
    tokens = sum(micro_batch_tokens)
    act = int(WEIGHT_BYTES[dtype])
    ends = [-(-i * s.num_layers // pp) for i in range(pp + 1)]  # earlier stages one layer more where uneven
    layers = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    hop = tokens * s.hidden_size * act
    return [
        {
            "allreduce_bytes": 2 * layers[stage] * hop if tp > 1 else 0,
            "send_bytes": hop if stage < pp - 1 else 0,
            "recv_bytes": hop if stage > 0 else 0,
        }
        for stage in range(pp)
        for _ in range(tp)
    ]
