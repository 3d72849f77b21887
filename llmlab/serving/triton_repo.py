"""A Triton model repository whose Python-backend model runs llmlab's native engine, and the
command line that starts the real `tritonserver` bundled in the `nvidia-pytriton` wheel on it.

The model is decoupled (it streams one `output_ids` response per token), reads the JSON fields of
Triton's `generate`/`generate_stream` endpoints (`text_input`, `max_tokens`, ...) as request
parameters, and exports the TensorRT-LLM backend's metric families (see `triton_model.py`).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path
from typing import Any

CONFIG = """name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "llmlab_options", data_type: TYPE_INT32, dims: [ 1 ], optional: true }}
]
output [
  {{ name: "output_ids", data_type: TYPE_INT32, dims: [ -1 ] }}
]
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""


def tritonserver_dir() -> Path:
    """The `tritonserver` that `nvidia-pytriton` bundles; a clear error when the extra is missing."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("serve('triton') needs the triton extra: pip install 'llmlab[triton]'")
    root = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    if not (root / "bin" / "tritonserver").exists():
        raise ImportError(f"no tritonserver binary under {root}: reinstall nvidia-pytriton==0.7.0")
    return root


def write_repository(directory: Path, name: str, model: str, settings: dict[str, Any] | None = None) -> Path:
    """Write `directory/name/{config.pbtxt, llmlab.json, 1/model.py}`; returns the model's folder."""
    folder = directory / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text(CONFIG.format(name=name))
    (folder / "llmlab.json").write_text(json.dumps({"model": model, "settings": settings or {}}))
    shutil.copyfile(Path(__file__).with_name("triton_model.py"), folder / "1" / "model.py")
    return folder


def tritonserver_command(repo: Path, host: str, http_port: int, metrics_port: int) -> tuple[list[str], dict[str, str]]:
    """The argv and extra environment that start `tritonserver` on `repo`, HTTP and metrics only."""
    root = tritonserver_dir()
    stubs = root / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
    backends = root / "backends"
    stub_dir = repo.parent / "backends"  # a backend dir whose python/ holds the stub for this Python
    if not (stub_dir / "python").exists():
        shutil.copytree(backends / "python", stub_dir / "python")
        shutil.copy2(stubs / "triton_python_backend_stub", stub_dir / "python" / "triton_python_backend_stub")
    argv = [
        str(root / "bin" / "tritonserver"),
        f"--model-repository={repo}",
        f"--backend-directory={stub_dir}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        "--allow-grpc=false",
        "--allow-metrics=true",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        "--metrics-interval-ms=100",
        "--allow-gpu-metrics=false",
        "--log-verbose=0",
    ]
    libs = root.parent.parent / "nvidia_pytriton.libs"
    env = {"LD_LIBRARY_PATH": f"{libs}:{root / 'lib'}", "PATH": str(Path(sys.executable).parent)}
    return argv, env
