"""Model shapes, hardware catalogue, per-GPU memory plan and step-cost model.

Expected values are computed here from a shape's config fields by the textbook formulas, not
copied from the code under test, so a wrong formula or a wrong catalogue entry fails.
"""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from llmlab.core.records import Slot
from llmlab.models.shapes import SHAPES, ModelShape, get_shape
from llmlab.plan import CostModel, Efficiency, get_hardware, local_cpu, memory_plan, register_hardware
from llmlab.plan.cost import slots_for, step_load
from llmlab.plan.hardware import HARDWARE, Hardware
from llmlab.plan.memory import make_shard, valid_tp

GB = 1e9


def dense_params(s: ModelShape) -> int:
    """Parameter count of a Llama-style dense decoder from its config fields."""
    q, kv = s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim
    attention = s.hidden_size * q + 2 * s.hidden_size * kv + q * s.hidden_size
    bias = (q + 2 * kv) if s.attention_bias else 0
    mlp = 3 * s.hidden_size * s.intermediate_size
    per_layer = attention + bias + mlp + 2 * s.hidden_size
    tables = 1 if s.tie_embeddings else 2
    return s.num_layers * per_layer + tables * s.vocab_size * s.hidden_size + s.hidden_size


# ---- shapes ---------------------------------------------------------------------------------


def stored_elements(path) -> int:
    """Elements of every tensor in a .safetensors file, read from its JSON header (8-byte length first)."""
    with open(path, "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")


def test_smollm2_param_count_matches_the_real_checkpoint(smollm2_path):
    stored = stored_elements(smollm2_path / "model.safetensors")
    assert stored > 100_000_000
    from_dir = get_shape(smollm2_path)
    assert from_dir.param_count() == stored
    assert get_shape("smollm2-135m").param_count() == stored
    assert dataclasses.replace(from_dir, name="x") == dataclasses.replace(get_shape("SmolLM2-135M"), name="x")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_param_count_formula(name):
    shape = SHAPES[name]
    if shape.is_moe:
        experts = shape.num_experts * 3 * shape.hidden_size * shape.intermediate_size
        router = shape.hidden_size * shape.num_experts
        one_mlp = 3 * shape.hidden_size * shape.intermediate_size
        total = dense_params(shape) + shape.num_layers * (experts + router - one_mlp)
        active = total - shape.num_layers * (shape.num_experts - shape.experts_per_token) * one_mlp
        assert shape.active_param_count() == active < total
    else:
        total = dense_params(shape)
        assert shape.active_param_count() == total
    assert shape.param_count() == total
    assert shape.linear_param_count() + shape.embedding_param_count() + shape.norm_param_count() == total


@pytest.mark.parametrize(
    ("name", "billions"),
    [("llama-3.1-8b", 8.03), ("llama-3.1-70b", 70.6), ("llama-3.1-405b", 405.9), ("mixtral-8x7b", 46.7)],
)
def test_catalogue_matches_published_sizes(name, billions):
    """Published parameter counts (model cards) catch a mistyped config value in shapes.json."""
    assert get_shape(name).param_count() / 1e9 == pytest.approx(billions, rel=0.01)


def test_shape_aliases_paths_and_dicts(tmp_path):
    base = get_shape("llama-3.1-8b")
    assert get_shape("meta-llama/Llama-3.1-8B-Instruct") is base
    assert get_shape("LLAMA-3.1-8B") is base
    assert get_shape("mistralai/Mistral-7B-Instruct-v0.3") is get_shape("mistral-7b")
    config = {
        "num_hidden_layers": 4,
        "hidden_size": 256,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "intermediate_size": 512,
        "vocab_size": 1000,
        "tie_word_embeddings": True,
        "max_position_embeddings": 2048,
    }
    from_dict = get_shape(config)
    assert (from_dict.head_dim, from_dict.num_kv_heads, from_dict.tie_embeddings) == (32, 2, True)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert dataclasses.replace(get_shape(tmp_path), name="t") == dataclasses.replace(from_dict, name="t")
    assert get_shape(tmp_path / "config.json").num_layers == 4
    moe = get_shape({**config, "num_local_experts": 8, "num_experts_per_tok": 2})
    assert (moe.num_experts, moe.experts_per_token) == (8, 2)


def test_hub_ids_fail_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="someorg/not-cached.*offline"):
        get_shape("someorg/not-cached")


def test_loaded_model_objects_give_their_shape():
    class Config:
        def to_dict(self):
            return {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "vocab_size": 100}

    class Loaded:
        config = Config()

    shape = get_shape(Loaded())
    assert (shape.num_layers, shape.num_kv_heads, shape.head_dim) == (2, 4, 16)


def test_unknown_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no-such-model.*llama-3.1-8b"):
        get_shape("no-such-model")
    with pytest.raises(ValueError, match="lacks 'hidden_size'"):
        get_shape({"num_hidden_layers": 2})
    (tmp_path / "config.json").write_text('{"hidden_size": 64,')  # cut short
    with pytest.raises(ValueError, match=r"config.json is not a valid config.json \(.*line 1.*as a dict"):
        get_shape(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="holds a JSON list"):
        get_shape(tmp_path / "config.json")


# ---- hardware -------------------------------------------------------------------------------


def test_hardware_lookup_and_errors():
    assert get_hardware("h100").name == "H100-SXM"
    assert get_hardware("a100-80gb") is HARDWARE["A100-80GB"]
    assert get_hardware("H100", price_per_hour=2.5).price_per_hour == 2.5
    for hw in HARDWARE.values():
        assert hw.memory_bytes > 10 * GB and hw.bandwidth > 100 * GB and hw.rate("bf16") > hw.rate("fp32") > 0
    with pytest.raises(ValueError, match="H900.*H100-SXM"):
        get_hardware("H900")


def test_register_hardware():
    mine = Hardware("test-accel", 16 * GB, 500 * GB, {"bf16": 100e12, "fp32": 20e12}, aliases=("ta",))
    try:
        register_hardware(mine)
        assert get_hardware("TA") is mine
        with pytest.raises(ValueError, match="already"):
            register_hardware(mine)
        with pytest.raises(ValueError, match="bandwidth"):
            register_hardware(Hardware("bad", 1.0, 0.0, {"bf16": 1.0}), replace_existing=True)
        with pytest.raises(ValueError, match="takes a Hardware.*got dict"):
            register_hardware({"name": "test-accel-2", "memory_bytes": 16 * GB})
    finally:
        HARDWARE.pop("test-accel", None)


@pytest.mark.slow
def test_local_cpu_probe_measures_positive_rates():
    cpu = local_cpu()
    assert cpu.kind == "cpu" and cpu.bandwidth > 1e8 and cpu.rate("fp32") > 1e8 and cpu.rate("bf16") > 0
    assert cpu.memory_bytes > 1 * GB
    assert get_hardware("cpu") is cpu  # measured once


# ---- memory ---------------------------------------------------------------------------------


def test_llama8b_bf16_weights_and_kv():
    s = get_shape("llama-3.1-8b")
    plan = memory_plan(s, "H100-SXM", weights="bf16", kv_dtype="bf16")
    expected = dense_params(s) * 2
    assert plan.weights_bytes == pytest.approx(expected, rel=1e-9)
    assert abs(plan.weights_bytes / GB - 16.06) <= 0.02 * 16.06
    kv = 2 * s.num_layers * s.num_kv_heads * s.head_dim * 2
    assert kv == 128 * 1024 == plan.kv_bytes_per_token
    assert plan.fits and plan.kv_tokens == plan.kv_blocks * 16
    assert plan.kv_bytes == pytest.approx(
        plan.available_bytes - plan.weights_bytes - plan.activation_bytes - plan.workspace_bytes
    )
    assert plan.kv_blocks == int(plan.kv_bytes // (kv * 16))
    assert plan.max_concurrency(4096) == plan.kv_blocks // (4096 // 16)
    assert plan.max_concurrency(4097) == plan.kv_blocks // (4096 // 16 + 1)
    assert "fits" in str(plan)


def test_fp8_halves_linear_weights_and_kv():
    bf16 = memory_plan("llama-3.1-8b", "H100", weights="bf16", kv_dtype="bf16")
    fp8 = memory_plan("llama-3.1-8b", "H100", weights="fp8", kv_dtype="fp8")
    s = get_shape("llama-3.1-8b")
    assert fp8.kv_bytes_per_token == bf16.kv_bytes_per_token / 2
    assert fp8.linear_weights_bytes == bf16.linear_weights_bytes / 2 == s.linear_param_count()
    # embeddings and LM head stay bf16, as in published fp8 checkpoints
    assert fp8.embedding_bytes == bf16.embedding_bytes == 2 * s.vocab_size * s.hidden_size * 2
    assert fp8.kv_tokens > 1.9 * bf16.kv_tokens


def test_int4_group_scales_and_int8_kv_scales():
    s = get_shape("llama-3.1-8b")
    plan = memory_plan(s, "L40S", weights="int4", kv_dtype="int8", group_size=128, max_model_len=8192)
    h, q, kv, inter = s.hidden_size, s.num_heads * s.head_dim, s.num_kv_heads * s.head_dim, s.intermediate_size
    matrices = [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]  # (in, out)
    per_layer = sum(i * o * 0.5 + o * math.ceil(i / 128) * (2 + 0.5) for i, o in matrices)
    assert plan.linear_weights_bytes == pytest.approx(per_layer * s.num_layers)
    # one fp32 scale per token, head, K and V: what the native engine stores (checked below)
    assert plan.kv_bytes_per_token == 2 * s.num_layers * s.num_kv_heads * (s.head_dim * 1 + 4)


# the planner's name for each (native kv_dtype, compute dtype): "auto" keeps the compute dtype
PLANNER_KV = {
    ("auto", "float32"): "fp32",
    ("auto", "bfloat16"): "bf16",
    ("fp8", "float32"): "fp8",
    ("fp8", "bfloat16"): "fp8",
    ("int8", "float32"): "int8",
    ("int8", "bfloat16"): "int8",
}


@pytest.mark.parametrize("model", ["smollm2-135m", "llama-3.1-8b"])
def test_planner_kv_bytes_per_token_match_the_native_pool(model):
    """For every kv_dtype the native engine supports, the planner's KV bytes per token are the bytes
    the engine's own pool tensors hold per token slot (values and int8 scales), and the per-block
    size the engine sizes its pool with."""
    import torch

    from llmlab.engines.native.kv_cache import KV_DTYPES
    from llmlab.engines.native.memory import kv_pool_bytes
    from llmlab.engines.native.runner import ModelRunner, kv_pool_layer

    s = get_shape(model)
    cfg = {
        "num_hidden_layers": s.num_layers,
        "num_attention_heads": s.num_heads,
        "num_key_value_heads": s.num_kv_heads,
        "hidden_size": s.hidden_size,
        "head_dim": s.head_dim,
    }
    num_blocks, block_size = 3, 16
    for kv_dtype in KV_DTYPES:
        for dtype in (torch.float32, torch.bfloat16):
            pools = [
                kv_pool_layer(kv_dtype, num_blocks, block_size, s.num_kv_heads, s.head_dim, dtype, torch.device("cpu"))
                for _ in range(s.num_layers)
            ]
            measured = kv_pool_bytes(pools)["kv_pool_bytes"] / (num_blocks * block_size)
            planned = memory_plan(s, "H100", kv_dtype=PLANNER_KV[kv_dtype, str(dtype).removeprefix("torch.")])
            label = (kv_dtype, dtype)
            assert planned.kv_bytes_per_token == measured, label
            assert ModelRunner.kv_bytes_per_block(cfg, block_size, dtype, kv_dtype) == measured * block_size, label


def test_llama70b_bf16_does_not_fit_one_80gb_gpu_and_shortfall_is_right():
    s = get_shape("llama-3.1-70b")
    hw = get_hardware("H100-SXM")
    plan = memory_plan(s, hw, weights="bf16", max_model_len=8192, block_size=16)
    weights = dense_params(s) * 2
    kv_one_request = math.ceil(8192 / 16) * 16 * (2 * s.num_layers * s.num_kv_heads * s.head_dim * 2)
    available = hw.memory_bytes * 0.9
    assert available == plan.available_bytes
    assert not plan.fits and plan.kv_blocks == 0 and plan.kv_tokens == 0
    assert plan.workspace_bytes == 2**30
    assert 0 < plan.activation_bytes < 0.05 * hw.memory_bytes
    overheads = plan.activation_bytes + plan.workspace_bytes
    assert plan.shortfall_bytes == pytest.approx(weights + overheads + kv_one_request - available)
    assert "does NOT fit" in str(plan)
    # two GPUs at tp=2 hold it, and the shortfall is gone
    assert memory_plan(s, hw, tp=2, max_model_len=8192).fits


def test_tensor_and_pipeline_parallel_split():
    s = get_shape("llama-3.1-8b")
    one = memory_plan(s, "H100")
    two = memory_plan(s, "H100", tp=2)
    assert two.kv_bytes_per_token == one.kv_bytes_per_token / 2
    assert two.linear_weights_bytes == one.linear_weights_bytes / 2
    assert two.embedding_bytes == one.embedding_bytes / 2
    # 8 KV heads on 16 GPUs: each keeps one head (replicated), so KV per GPU stops shrinking at tp=8
    sixteen = memory_plan(s, "H100", tp=16)
    assert sixteen.kv_bytes_per_token == 2 * s.num_layers * 1 * s.head_dim * 2
    assert memory_plan(s, "H100", tp=8).kv_bytes_per_token == sixteen.kv_bytes_per_token
    pp = memory_plan("llama-3.1-70b", "H100", pp=4, max_model_len=8192)
    assert pp.layers == 20 and pp.kv_bytes_per_token == 2 * 20 * 8 * 128 * 2
    assert make_shard(s, pp=3).stage_layers == (11, 11, 10)  # the last stage also holds the LM head


def test_bad_parallelism_and_dtypes_are_clear_errors():
    with pytest.raises(ValueError, match=r"tp=3 does not divide the 32 attention heads.*\[1, 2, 4, 8, 16, 32\]"):
        memory_plan("llama-3.1-8b", "H100", tp=3)
    with pytest.raises(ValueError, match="tp=3"):
        CostModel("llama-3.1-8b", "H100", tp=3)
    assert valid_tp(get_shape("smollm2-135m")) == [1, 3]  # 9 heads, 3 KV heads, MLP width 1536
    with pytest.raises(ValueError, match="pp=81"):
        memory_plan("llama-3.1-70b", "H100", pp=81)
    with pytest.raises(ValueError, match="ep=2.*dense"):
        memory_plan("llama-3.1-8b", "H100", ep=2)
    with pytest.raises(ValueError, match="unknown weights dtype 'int3'.*int4"):
        memory_plan("llama-3.1-8b", "H100", weights="int3")
    with pytest.raises(ValueError, match="unknown kv_dtype 'int4'"):
        CostModel("llama-3.1-8b", "H100", kv_dtype="int4")
    assert CostModel("llama-3.1-8b", "H100", weights="int4", kv_dtype="auto").kv_dtype == "bf16"
    assert memory_plan("smollm2-135m", "L4", weights="fp32", kv_dtype="auto").kv_dtype == "fp32"
    with pytest.raises(ValueError, match="gpu_memory_utilization"):
        memory_plan("llama-3.1-8b", "H100", gpu_memory_utilization=1.5)
    with pytest.raises(ValueError, match="context_len"):
        memory_plan("llama-3.1-8b", "H100").max_concurrency(0)


def test_moe_expert_parallel_memory():
    tp2 = memory_plan("mixtral-8x7b", "H100", tp=2, max_model_len=8192)
    ep2 = memory_plan("mixtral-8x7b", "H100", tp=2, ep=2, max_model_len=8192)
    # the same experts in the same 2 GPUs, split by whole experts instead of by width
    assert ep2.linear_weights_bytes == pytest.approx(tp2.linear_weights_bytes)
    with pytest.raises(ValueError, match="ep=3"):
        memory_plan("mixtral-8x7b", "H100", tp=1, ep=3)


# ---- cost -----------------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", ["H100-SXM", "A100-80GB", "L40S", "MI300X"])
def test_decode_at_batch_one_is_weights_over_bandwidth(gpu):
    s = get_shape("llama-3.1-8b")
    hw = get_hardware(gpu)
    model = CostModel(s, hw, weights="bf16")
    eff = model.efficiency
    # a decode step reads every weight except the input embedding table (one row of it)
    read = (dense_params(s) - s.vocab_size * s.hidden_size) * 2
    expected = read / (hw.bandwidth * eff.memory) + eff.overhead_s + eff.per_layer_s * s.num_layers
    t = model.decode_time(1, 1)
    assert expected <= t <= expected * 1.03
    # weights / bandwidth at datasheet speed is a hard floor
    assert t > dense_params(s) * 2 * 0.9 / hw.bandwidth


def test_step_time_totals_and_breakdown_agree():
    model = CostModel("llama-3.1-8b", "H100")
    slots = [Slot(str(i), "decode", 1, 100 + i) for i in range(32)] + [Slot("p", "prefill", 256, 512)]
    load = step_load(slots)
    assert load.tokens == 32 + 256 and load.seqs == 33
    assert load.kv_read == sum(100 + i for i in range(32)) + 512
    assert load.attn_pairs == sum(100 + i for i in range(32)) + sum(512 - 256 + k for k in range(1, 257))
    parts = model.breakdown(slots)
    assert sum(parts.values()) == pytest.approx(model.step_time(slots))
    assert model.step_time(slots) == model.time_for(*load)
    assert model.step_time([]) == 0.0


@pytest.mark.parametrize("attention", ["reads", "compute"])
@pytest.mark.parametrize("until", [None, 0.35])
def test_decode_ends_add_step_times_one_at_a_time(attention, until):
    """The simulator's bulk decode clock is `time_for` step by step, to the bit, as requests
    leave, up to the first step to end at or past `until`; with attention bound by its reads
    (every catalogue GPU) or, here forced, by its arithmetic."""
    model = CostModel("llama-3.1-8b", "H100")
    if attention == "compute":  # per attention pair slower than per KV token read
        coeffs = list(model._coeffs[0])
        coeffs[7] = 3 * coeffs[8]
        model._coeffs[0] = tuple(coeffs)
    contexts, steps, clock = [100, 2000, 37, 5000, 64], [3, 50, 50, 20, 1], 0.25
    expected = []
    for j in range(max(steps)):
        live = [c + 1 + j for c, s in zip(contexts, steps, strict=True) if s > j]  # KV each reads in step j
        clock += model.time_for(len(live), len(live), sum(live), sum(live))
        expected.append(clock)
        if until is not None and clock >= until:
            break
    ends = model.decode_ends(0.25, contexts, steps, until)
    assert ends == expected
    assert (until is None) == (len(ends) == max(steps))


def test_decode_and_prefill_follow_the_roofline():
    model = CostModel("llama-3.1-8b", "H100")
    t = [model.decode_time(b, 1024) for b in (1, 8, 64, 256)]
    assert t == sorted(t) and t[1] < 1.2 * t[0]  # small batches ride on the same weight read
    assert model.decode_time(32, 8192) > model.decode_time(32, 512)  # longer contexts read more KV
    # a long prefill is compute-bound: its linear part equals flops / (rate x compute efficiency),
    # the efficiency of a GEMM of n rows being n / (n + gemm_half_tokens) of the large-GEMM one
    s, hw, eff = model.shape, model.hw, model.efficiency
    n = 8192
    parts = model.breakdown([Slot("p", "prefill", n, n)])
    linear_flops = 2 * n * s.linear_param_count() * (n + eff.gemm_half_tokens) / n
    assert parts["qkv_o"] + parts["mlp"] == pytest.approx(linear_flops / (hw.rate("bf16") * eff.compute), rel=1e-6)
    attention_flops = 4 * s.head_dim * s.num_heads * s.num_layers * (n * (n + 1) / 2)
    assert parts["attention"] == pytest.approx(attention_flops / (hw.rate("bf16") * eff.compute * eff.attention))


def test_quantization_changes_rate_and_bytes():
    h100_fp8 = CostModel("llama-3.1-8b", "H100", weights="fp8")
    a100_fp8 = CostModel("llama-3.1-8b", "A100", weights="fp8")
    assert not h100_fp8.weight_only and h100_fp8.linear_rate == get_hardware("H100").rate("fp8")
    assert a100_fp8.weight_only and a100_fp8.linear_rate == get_hardware("A100").rate("bf16")  # no fp8 path
    bf16 = CostModel("llama-3.1-8b", "H100")
    int4 = CostModel("llama-3.1-8b", "H100", weights="int4")
    fixed = bf16.breakdown(slots_for("decode", 1, 128))["overhead"]  # the same host and kernel gaps in both
    assert int4.decode_time(1, 128) - fixed < 0.45 * (bf16.decode_time(1, 128) - fixed)  # memory-bound: fewer bytes
    big = [Slot("p", "prefill", 8192, 8192)]
    assert int4.step_time(big) > bf16.step_time(big)  # compute-bound: dequantization costs
    assert h100_fp8.step_time(big) < 0.7 * bf16.step_time(big)  # fp8 tensor rate


def test_tensor_parallel_allreduce_is_a_ring():
    model = CostModel("llama-3.1-70b", "H100", tp=4)
    s, hw, eff = model.shape, model.hw, model.efficiency
    tokens = 64
    parts = model.breakdown([Slot(str(i), "decode", 1, 1000) for i in range(tokens)])
    per_allreduce = 2 * (4 - 1) / 4 * tokens * s.hidden_size * 2 / (hw.interconnect * eff.network)
    latency = eff.comm_latency_s + eff.comm_hop_s * 2 * (4 - 1)  # a base latency and one per ring step
    assert model.collective_latency() == pytest.approx(latency)
    assert parts["allreduce"] == pytest.approx(2 * s.num_layers * (per_allreduce + latency))
    one = CostModel("llama-3.1-70b", "H100")  # a what-if: it would not fit in memory
    # four GPUs read a quarter of the weights each, but pay the all-reduces and the fixed overhead
    assert 0.25 < model.decode_time(1, 1000) / one.decode_time(1, 1000) < 0.4


def test_expert_parallel_pays_an_all_to_all():
    model = CostModel("mixtral-8x7b", "H100", tp=1, ep=2)
    s, hw, eff = model.shape, model.hw, model.efficiency
    tokens = 64
    parts = model.breakdown([Slot(str(i), "decode", 1, 500) for i in range(tokens)])
    # dispatch and combine: each token's hidden state to its 2 experts, half of them on the other GPU
    per_layer = 2 * tokens * s.hidden_size * 2 * s.experts_per_token * (1 / 2)
    latency = eff.comm_latency_s + eff.comm_hop_s * 2 * (2 - 1)
    expected = s.num_layers * (per_layer / (hw.interconnect * eff.network) + 2 * latency)
    assert parts["allreduce"] == pytest.approx(expected)


def test_pipeline_parallel_pays_a_bubble():
    pp = CostModel("llama-3.1-70b", "H100", pp=2)
    tp = CostModel("llama-3.1-70b", "H100", tp=2)

    # batch 1: one micro-batch walks both stages in turn, no faster than one GPU reading everything
    # (host and kernel-gap time per step left out: both pay it)
    def gpu_time(model):
        return model.decode_time(1, 1000) - model.breakdown(slots_for("decode", 1, 1000))["overhead"]

    assert gpu_time(pp) > 1.8 * gpu_time(tp)
    slots = [Slot(str(i), "decode", 1, 1000) for i in range(64)]
    parts = pp.breakdown(slots)
    assert parts["pipeline"] > 0
    assert sum(parts.values()) == pytest.approx(pp.step_time(slots))
    with pytest.raises(ValueError, match="interconnect"):
        CostModel("smollm2-135m", Hardware("lonely", 8 * GB, 100 * GB, {"bf16": 1e12}), tp=3)


def test_efficiency_is_validated_and_swappable():
    model = CostModel("llama-3.1-8b", "H100")
    before = model.decode_time(1, 1)
    model.efficiency = dataclasses.replace(model.efficiency, memory=0.4)
    assert model.decode_time(1, 1) > 1.9 * (before - model.efficiency.overhead_s)
    with pytest.raises(ValueError, match="compute"):
        Efficiency(compute=0)
    assert Efficiency.for_hardware(get_hardware("H100")).memory == pytest.approx(0.8)


def test_factors_explain_a_step():
    """The named factors: GEMMs reach more of the rate on bigger steps, fp8 reaches more tensor
    flops than bf16 but a smaller share of its peak, PCIe collectives wait longer than NVLink ones."""
    fp8 = CostModel("llama-3.1-70b", "H100", weights="fp8", tp=2)
    small, big = fp8.factors(slots_for("prefill", 64, 64)), fp8.factors(slots_for("prefill", 4096, 4096))
    assert small["gemm_efficiency"] < big["gemm_efficiency"] < fp8.efficiency.compute
    bf16 = CostModel("llama-3.1-70b", "H100", tp=2).factors(slots_for("prefill", 4096, 4096))
    assert bf16["achieved_tflops"] < big["achieved_tflops"] and big["gemm_efficiency"] < bf16["gemm_efficiency"]
    assert big["link"] == "NVLink" and big["collectives"] == 2 * fp8.shape.num_layers
    pcie = CostModel("llama-3.1-8b", "L40S", tp=2)
    assert pcie.factors(slots_for("decode", 1, 100))["link"] == "PCIe"
    assert pcie.collective_latency() > CostModel("llama-3.1-8b", "H100", tp=2).collective_latency()
    decode = CostModel("llama-3.1-8b", "H100").factors(slots_for("decode", 1, 100))
    assert 0.5 < decode["achieved_bandwidth_fraction"] < decode["bandwidth_efficiency"]  # fixed costs dilute it
