"""Export a configuration chosen in the simulator to a real engine's launch options.

`to_engine_args(engine, "vllm")` turns a sim engine's settings (or a plan row's, via
`PlanTable.to_engine_args`) into the options that engine really has, for the versions the
presets name (`llmlab.engines.sim.presets.VERSIONS`): `vllm serve` flags, a `trtllm-serve`
command plus its extra-options YAML, `mii.serve` keyword arguments, `text-generation-launcher`
flags. What an engine cannot express is listed in `notes`, never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TARGETS = ("vllm", "trtllm", "mii", "tgi")
VLLM_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class EngineArgs:
    """One engine's launch options: `args` (CLI flags), `options` (a YAML file or keyword
    arguments, by engine), and `notes` on what it cannot express."""

    engine: str
    args: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def command(self) -> str:
        """The launch command line."""
        return " ".join(self.args)

    def yaml(self) -> str:
        """`options` as YAML (trtllm-serve's --extra_llm_api_options file)."""
        import yaml

        return yaml.safe_dump(self.options, sort_keys=False)

    def __str__(self) -> str:
        parts = [self.command()] if self.args else []
        if self.options:
            parts.append(self.yaml() if self.engine == "trtllm" else repr(self.options))
        parts += [f"# note: {n}" for n in self.notes]
        return "\n".join(parts)


def choice_of_engine(engine: Any) -> dict[str, Any]:
    """The settings of a sim engine (a session `Engine` or its core) that a real engine needs."""
    core = getattr(engine, "core", engine)
    c = core.info.config
    if core.info.engine != "sim":
        raise ValueError(f"to_engine_args needs a sim engine; this one is {core.info.engine!r}")
    return {
        "model": core.info.model,
        **{k: c[k] for k in ("policy", "block_size", "max_num_seqs", "max_num_batched_tokens", "max_model_len")},
        **{k: c[k] for k in ("enable_chunked_prefill", "enable_prefix_caching", "kv_dtype", "weights")},
        "tp": c["tensor_parallel_size"],
        "pp": c["pipeline_parallel_size"],
        "gpu_memory_utilization": c.get("gpu_memory_utilization"),
    }


def to_engine_args(engine: Any, target: str) -> EngineArgs:
    """The launch options of `target` ("vllm", "trtllm", "mii", "tgi") for a sim engine's settings."""
    return export(choice_of_engine(engine), target)


def export(choice: dict[str, Any], target: str) -> EngineArgs:
    """The launch options of `target` for a configuration given as llmlab settings."""
    makers = {"vllm": _vllm, "trtllm": _trtllm, "mii": _mii, "tgi": _tgi}
    if target not in makers:
        raise ValueError(f"target={target!r} is unknown: choose one of {list(TARGETS)}")
    out = makers[target](choice)
    if "/" not in str(choice["model"]):
        out.notes.append(f"model {choice['model']!r} is llmlab's shape name: put the checkpoint's Hugging Face id")
    return out


def _weights_note(engine: str, weights: str) -> str:
    return f"{engine} loads {weights} weights only from a checkpoint quantized that way (e.g. AWQ/GPTQ): choose one"


def _vllm(c: dict[str, Any]) -> EngineArgs:
    """vLLM 0.32.0 `vllm serve` flags (vllm/engine/arg_utils.py EngineArgs.add_cli_args)."""
    out = EngineArgs("vllm", ["vllm", "serve", str(c["model"])])
    flags = {
        "--tensor-parallel-size": c["tp"],
        "--pipeline-parallel-size": c["pp"],
        "--max-num-seqs": c["max_num_seqs"],
        "--max-num-batched-tokens": c["max_num_batched_tokens"],
        "--max-model-len": c["max_model_len"],
        "--block-size": c["block_size"],
    }
    if c.get("gpu_memory_utilization") is not None:
        flags["--gpu-memory-utilization"] = c["gpu_memory_utilization"]
    w, kv = c["weights"], c["kv_dtype"]
    if w in VLLM_DTYPES:
        flags["--dtype"] = VLLM_DTYPES[w]
    elif w == "fp8":
        flags["--quantization"] = "fp8"  # online fp8 weight quantization
    else:
        out.notes.append(_weights_note("vLLM", w))
    if kv == "fp8":
        flags["--kv-cache-dtype"] = "fp8"
    elif kv not in ("auto", w) and kv in VLLM_DTYPES and w in VLLM_DTYPES:
        out.notes.append(f"vLLM keeps the KV cache in the model dtype or fp8; kv_dtype={kv!r} is not an option")
    elif kv == "int8":
        out.notes.append("vLLM has no int8 KV cache: use kv_dtype='fp8'")
    for k, v in flags.items():
        out.args += [k, str(v)]
    out.args.append("--enable-chunked-prefill" if c["enable_chunked_prefill"] else "--no-enable-chunked-prefill")
    out.args.append("--enable-prefix-caching" if c["enable_prefix_caching"] else "--no-enable-prefix-caching")
    if c["policy"] != "chunked":
        out.notes.append(f"vLLM V1 schedules one way (chunked, running first); policy={c['policy']!r} has no flag")
    return out


def _trtllm(c: dict[str, Any]) -> EngineArgs:
    """TensorRT-LLM v1.0 `trtllm-serve` flags and --extra_llm_api_options YAML (llmapi/llm_args.py)."""
    out = EngineArgs("trtllm", ["trtllm-serve", str(c["model"]), "--backend", "pytorch"])
    flags = {
        "--tp_size": c["tp"],
        "--pp_size": c["pp"],
        "--max_batch_size": c["max_num_seqs"],
        "--max_num_tokens": c["max_num_batched_tokens"],
        "--max_seq_len": c["max_model_len"],
    }
    if c.get("gpu_memory_utilization") is not None:
        flags["--kv_cache_free_gpu_memory_fraction"] = c["gpu_memory_utilization"]
        out.notes.append(
            "TensorRT-LLM's KV fraction is of the memory free after the weights; llmlab's is of the whole GPU"
        )
    for k, v in flags.items():
        out.args += [k, str(v)]
    out.args += ["--extra_llm_api_options", "extra_llm_api_options.yaml"]
    kv_cache = {"enable_block_reuse": bool(c["enable_prefix_caching"]), "tokens_per_block": c["block_size"]}
    if c["kv_dtype"] == "fp8":
        kv_cache["dtype"] = "fp8"
    elif c["kv_dtype"] not in ("auto", c["weights"]):
        out.notes.append(f"kv_dtype={c['kv_dtype']!r}: TensorRT-LLM's KvCacheConfig.dtype takes 'auto' or 'fp8'")
    out.options = {"enable_chunked_prefill": bool(c["enable_chunked_prefill"]), "kv_cache_config": kv_cache}
    policy = {"guaranteed_no_evict": "GUARANTEED_NO_EVICT", "max_utilization": "MAX_UTILIZATION"}.get(c["policy"])
    if policy is not None:
        out.options["scheduler_config"] = {"capacity_scheduler_policy": policy}
    else:
        out.notes.append(
            f"policy={c['policy']!r}: TensorRT-LLM's capacity scheduler is GUARANTEED_NO_EVICT or MAX_UTILIZATION"
        )
    if c["weights"] not in ("bf16", "fp16"):
        out.notes.append(f"weights={c['weights']!r}: TensorRT-LLM takes a checkpoint quantized with ModelOpt")
    return out


def _mii(c: dict[str, Any]) -> EngineArgs:
    """DeepSpeed-MII v0.3.x `mii.serve(model, **kwargs)` (mii/config.py ModelConfig), with DeepSpeed
    0.19.x's RaggedInferenceEngineConfig for the state manager."""
    out = EngineArgs("mii")
    out.options = {
        "model_name_or_path": str(c["model"]),
        "tensor_parallel": c["tp"] * c["pp"],
        "max_length": c["max_model_len"],
        "inference_engine_config": {
            "tensor_parallel": {"tp_size": c["tp"]},
            "state_manager": {
                "max_ragged_batch_size": c["max_num_batched_tokens"],
                "max_ragged_sequence_count": c["max_num_seqs"],
                "max_context": c["max_model_len"],
            },
        },
    }
    if c["weights"] == "fp8":
        out.options["quantization_mode"] = "wf6af16"  # MII's only weight quantization (FP6-LLM)
        out.notes.append("MII has no fp8 weights; quantization_mode='wf6af16' (fp6) is the nearest")
    elif c["weights"] not in ("bf16", "fp16"):
        out.notes.append(_weights_note("MII", c["weights"]))
    if c["pp"] > 1:
        out.notes.append("MII has no pipeline parallelism: pp is folded into tensor_parallel")
    if c["kv_dtype"] not in ("auto", c["weights"], "bf16", "fp16"):
        out.notes.append(f"kv_dtype={c['kv_dtype']!r}: MII keeps the KV cache in the model dtype")
    if c["policy"] != "splitfuse" or not c["enable_chunked_prefill"]:
        out.notes.append(f"MII always schedules by Dynamic SplitFuse; policy={c['policy']!r} has no option")
    if c["enable_prefix_caching"]:
        out.notes.append("MII has no prefix cache")
    out.notes.append(f"block_size={c['block_size']}: MII's KV block size is fixed by DeepSpeed (128)")
    return out


def _tgi(c: dict[str, Any]) -> EngineArgs:
    """TGI v3.x `text-generation-launcher` flags (launcher/src/main.rs Args)."""
    out = EngineArgs("tgi", ["text-generation-launcher", "--model-id", str(c["model"])])
    flags = {
        "--num-shard": c["tp"],
        "--max-concurrent-requests": c["max_num_seqs"],
        "--max-batch-prefill-tokens": c["max_num_batched_tokens"],
        "--max-total-tokens": c["max_model_len"],
        "--max-input-tokens": c["max_model_len"] - 1,
    }
    if c.get("gpu_memory_utilization") is not None:
        flags["--cuda-memory-fraction"] = c["gpu_memory_utilization"]
    if c["weights"] == "fp8":
        flags["--quantize"] = "fp8"
    elif c["weights"] in ("bf16",):
        flags["--dtype"] = "bfloat16"
    elif c["weights"] == "fp16":
        flags["--dtype"] = "float16"
    else:
        out.notes.append(_weights_note("TGI", c["weights"]))
    if c["kv_dtype"] == "fp8":
        flags["--kv-cache-dtype"] = "fp8_e4m3fn"
    for k, v in flags.items():
        out.args += [k, str(v)]
    if c["pp"] > 1:
        out.notes.append("TGI has no pipeline parallelism: shard over tp x pp GPUs instead")
    out.notes.append(f"block_size={c['block_size']}: TGI picks its page size from the attention backend")
    if c["policy"] != "prefill_first":
        out.notes.append(f"TGI batches prefills then decodes; policy={c['policy']!r} has no flag")
    return out
