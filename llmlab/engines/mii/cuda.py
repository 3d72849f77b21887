"""The CUDA side of the mii engine: which device runs, and DeepSpeed's own inference-v2 engine
(its model implementation, weights and kernels) built as MII builds it, with nothing patched.

The only thing llmlab decides here is the translation of its settings: the compute dtype becomes the
`torch_dtype` DeepSpeed's policy reads, and the scheduler knobs are already in the
`RaggedInferenceEngineConfig` handed over. Importing this module imports no DeepSpeed.
"""

from __future__ import annotations

import socket
import types
from pathlib import Path
from typing import Any

import torch

CUDA_DTYPES = (torch.float16, torch.bfloat16)  # DeepSpeed's inference-v2 kernels compute in these only

# Hugging Face `model_type` -> DeepSpeed's policy class (deepspeed.inference.v2.model_implementations),
# for the architectures llmlab loads
POLICIES = {"llama": "Llama2Policy", "mistral": "MistralPolicy", "qwen2": "Qwen2Policy"}


def pick_device(requested: Any) -> torch.device:
    """The device the mii engine runs on: the one asked for, or the GPU if there is one."""
    if requested is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device={requested!r}: the mii engine runs on 'cpu' or 'cuda'")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={requested!r}, but this machine has no CUDA GPU (torch.cuda.is_available() is False): "
            "use device='cpu' (MII's scheduler and DeepSpeed's KV bookkeeping with llmlab's forward) or run on a "
            "CUDA machine with a CUDA build of PyTorch"
        )
    return device


def free_port() -> int:
    """A TCP port free now, for MII's ZMQ publisher and torch.distributed's rendezvous."""
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def build_engine(path: Path, ds_config: Any, dtype: torch.dtype) -> Any:
    """DeepSpeed's `InferenceEngineV2` for the checkpoint at `path`, as `build_hf_engine` makes it, with
    the model computing in `dtype` (DeepSpeed takes the dtype from the checkpoint's config, so it is
    set there). MII's `init_distributed` first, as MII's `load_model` does: one rank, NCCL."""
    if dtype not in CUDA_DTYPES:
        raise ValueError(
            f"dtype={dtype}: DeepSpeed's CUDA kernels compute in float16 or bfloat16: "
            "give dtype='bf16' (or leave it None)"
        )
    from deepspeed.inference.v2 import engine_v2, model_implementations
    from deepspeed.inference.v2.checkpoint import HuggingFaceCheckpointEngine
    from mii import utils as mii_utils

    checkpoint = HuggingFaceCheckpointEngine(str(path))
    model_type = checkpoint.model_config.model_type
    if model_type not in POLICIES:
        raise ValueError(f"model_type={model_type!r} in {path}: the mii engine on CUDA runs {sorted(POLICIES)}")
    checkpoint.model_config.torch_dtype = dtype
    policy = getattr(model_implementations, POLICIES[model_type])(checkpoint.model_config, checkpoint_engine=checkpoint)
    mii_utils.init_distributed(types.SimpleNamespace(tensor_parallel=1, torch_dist_port=free_port()))
    return engine_v2.InferenceEngineV2(policy, ds_config)
