"""Bad launch settings and bad requests are refused before any work, naming the setting, the value and the fix."""

from __future__ import annotations

import inspect
import math
import re
import sys
import time

import pytest

import llmlab
from llmlab import workloads
from llmlab.config import ALL_ENGINES, SPECS, EngineConfig, SettingTypeError, check_settings, settings_for
from llmlab.core.request import SamplingParams
from llmlab.engines.mii.engine import MIIEngine
from llmlab.engines.native import NativeEngine
from llmlab.engines.sim import SimEngine
from llmlab.engines.vllm import VLLMEngine
from llmlab.workloads import WorkItem, Workload

CLASSES = {"native": NativeEngine, "sim": SimEngine, "vllm": VLLMEngine, "mii": MIIEngine}
NAN, INF = float("nan"), float("inf")

# (engines, setting, value, error type): each must be refused before anything loads
BAD = [
    (ALL_ENGINES, "block_size", True, TypeError),  # bool is not an int (it was taken as 1)
    (("native", "sim"), "num_blocks", 2.5, TypeError),  # a TypeError only after loading, before
    (("vllm",), "num_blocks", 2.5, TypeError),
    (ALL_ENGINES, "max_num_seqs", "4", TypeError),
    (ALL_ENGINES, "max_num_seqs", 2.5, TypeError),
    (ALL_ENGINES, "max_num_seqs", 0, ValueError),
    (ALL_ENGINES, "max_num_batched_tokens", -1, ValueError),
    (ALL_ENGINES, "max_model_len", INF, TypeError),
    (ALL_ENGINES, "max_model_len", 1, ValueError),
    (ALL_ENGINES, "enable_prefix_caching", "yes", TypeError),
    (ALL_ENGINES, "enable_chunked_prefill", 1, TypeError),
    (("native", "sim"), "watermark", -1, ValueError),  # let the pool allocate past its size
    (("native", "sim"), "watermark", 2.0, ValueError),  # limited the engine to one request
    (("native", "sim"), "watermark", NAN, ValueError),
    (("native", "sim"), "watermark", "0.1", TypeError),
    (("native", "sim"), "policy", "fifo", ValueError),
    (("native", "vllm"), "kv_cache_memory", -5, ValueError),
    (("native", "vllm"), "kv_cache_memory", 1.5e8, TypeError),
    (("sim", "vllm"), "gpu_memory_utilization", NAN, ValueError),
    (("sim", "vllm"), "gpu_memory_utilization", 0, ValueError),
    (("sim", "vllm"), "gpu_memory_utilization", 1.5, ValueError),
    (("sim",), "step_time", 0.1, TypeError),
    (("sim",), "num_gpus", 0, ValueError),
    (("native",), "group_size", 7, ValueError),
    (("native",), "seed", 1.5, TypeError),
    (ALL_ENGINES, "tp", 0, ValueError),
]
CASES = [(e, name, value, err) for engines, name, value, err in BAD for e in engines]


def _id(case) -> str:
    engine, name, value, _ = case
    return f"{engine}-{name}={value!r}"


def refused(make, err: type[Exception], name: str, value) -> str:
    """Call `make()`; assert it raised `err` within a second and return the message."""
    t0 = time.perf_counter()
    with pytest.raises(err) as info:
        make()
    elapsed = time.perf_counter() - t0
    msg = str(info.value)
    assert elapsed < 1.0, f"{name}={value!r} took {elapsed:.2f} s to refuse: it must fail before loading"
    assert re.search(rf"\b{name}={re.escape(repr(value))}", msg), msg  # names the setting and the value
    assert ": " in msg and len(msg.split(": ", 1)[1]) > 5, msg  # and says what to do
    return msg


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_setting_refused_by_launch_and_by_the_constructor(case):
    engine, name, value, err = case
    refused(lambda: llmlab.launch(engine, **{name: value}), err, name, value)
    refused(lambda: CLASSES[engine](EngineConfig(**{name: value})), err, name, value)


def test_type_errors_are_value_errors_too():
    # code that caught ValueError around a launch (what a bad type raised before) still catches it
    with pytest.raises(ValueError, match="block_size=True is a bool, not an int"):
        llmlab.launch("native", block_size=True)
    assert issubclass(SettingTypeError, TypeError)


def test_watermark_leaving_no_room_for_a_second_request(smollm2_path):
    sim = dict(step_time=lambda slots: 0.01, num_blocks=10)
    with pytest.raises(ValueError, match=r"watermark=0\.95 keeps 9 of num_blocks=10.*watermark < 0\.9\b"):
        llmlab.launch("sim", watermark=0.95, **sim)
    assert llmlab.launch("sim", watermark=0.5, **sim).blocks.watermark_blocks == 5
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"watermark=0\.95 keeps 9 of num_blocks=10"):
        llmlab.launch("native", dtype="float32", num_blocks=10, watermark=0.95)
    assert time.perf_counter() - t0 < 1.0  # before the weights load


def test_mii_without_deepspeed_names_the_extra(monkeypatch):
    """`import llmlab` needs no DeepSpeed; launching the mii engine without it says what to install."""
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # an import of it now raises ImportError
    with pytest.raises(ValueError, match=r"pip install 'llmlab\[mii\]'"):
        llmlab.launch("mii")


def test_unknown_setting_and_engine():
    with pytest.raises(ValueError, match="no setting block_sise: did you mean block_size"):
        llmlab.launch("native", block_sise=16)
    with pytest.raises(
        ValueError, match="the vllm engine has no setting watermark: watermark is a setting of the native"
    ):
        llmlab.launch("vllm", watermark=0.01)
    with pytest.raises(ValueError, match="engine='warp' is unknown"):
        llmlab.launch("warp")


@pytest.mark.parametrize(
    ("foreign", "ours"),
    [
        ("kv_cache_dtype", "kv_dtype"),
        ("quantization", "weights"),
        ("tensor_parallel_size", "tp"),
        ("pipeline_parallel_size", "pp"),
        ("num_gpu_blocks_override", "num_blocks"),
    ],
)
@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_other_projects_names_point_at_ours(engine, foreign, ours):
    # one vocabulary for every engine: vLLM's names are translated inside the vllm engine, not taken at launch
    with pytest.raises(ValueError, match=rf"the {engine} engine has no setting {foreign}: llmlab calls it {ours}="):
        llmlab.launch(engine, **{foreign: 1})


def test_dtype_names_are_one_vocabulary():
    torch = pytest.importorskip("torch")
    for given in ("bfloat16", "bf16", torch.bfloat16):
        assert EngineConfig(dtype=given).dtype == "bf16"
    assert EngineConfig(weights="float32", kv_dtype="float16").weights == "fp32"
    assert EngineConfig(kv_dtype="float16").kv_dtype == "fp16"
    with pytest.raises(ValueError, match=r"kv_dtype='int4' is unknown"):
        EngineConfig(kv_dtype="int4")


@pytest.mark.parametrize(
    ("engine", "settings", "says"),
    [
        ("native", {"tp": 4}, r"use tp in \[1, 2, 3, 9\]"),
        ("vllm", {"kv_dtype": "int8"}, "the vllm engine stores K/V as one of"),
        ("vllm", {"weights": "int4"}, "pre-quantized checkpoint"),
        ("native", {"kv_dtype": "fp16", "dtype": "fp32"}, "the native engine stores K/V as one of"),
    ],
)
def test_a_value_an_engine_cannot_honour_is_refused_before_loading(engine, settings, says):
    if engine == "vllm":
        pytest.importorskip("vllm")
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=says):
        llmlab.launch(engine, **settings)
    assert time.perf_counter() - t0 < 5.0  # before the weights load


def test_launch_shows_every_setting():
    params = inspect.signature(llmlab.launch).parameters
    assert list(params) == ["engine", *SPECS]
    for name in SPECS:
        assert f"    {name}=" in llmlab.launch.__doc__  # help(llmlab.launch) lists it with its meaning
        assert SPECS[name].doc
    jedi = pytest.importorskip("jedi")  # what IPython's tab completion asks
    done = jedi.Interpreter('llmlab.launch("sim", kv_d', [{"llmlab": llmlab}]).complete()
    assert "kv_dtype=" in [c.name for c in done]


@pytest.mark.parametrize("engine", ALL_ENGINES)
def test_defaults_pass_and_each_engine_fills_its_own(engine):
    config = EngineConfig().for_engine(engine)
    check_settings(engine, {k: getattr(config, k) for k in settings_for(engine)})
    assert all(engine in SPECS[k].engines for k in settings_for(engine))


def test_numpy_numbers_are_accepted():
    np = pytest.importorskip("numpy")
    check_settings("native", {"block_size": np.int64(16), "watermark": np.float32(0.01), "max_num_seqs": np.int32(4)})
    with pytest.raises(TypeError, match="enable_prefix_caching"):
        check_settings("sim", {"enable_prefix_caching": np.int64(1)})


# requests -----------------------------------------------------------------------------
BAD_PARAMS = [
    ("temperature", NAN, ValueError),
    ("temperature", INF, ValueError),
    ("temperature", -0.5, ValueError),
    ("top_p", NAN, ValueError),
    ("top_p", 0.0, ValueError),
    ("max_tokens", 2.5, TypeError),
    ("max_tokens", True, TypeError),
    ("max_tokens", 0, ValueError),
    ("top_k", 1.5, TypeError),
    ("seed", -1, ValueError),
    ("stop", [""], ValueError),
    ("stop", "\n", TypeError),
]


@pytest.mark.parametrize(("name", "value", "err"), BAD_PARAMS, ids=[f"{n}={v!r}" for n, v, _ in BAD_PARAMS])
def test_bad_sampling_params_name_request_value_and_fix(name, value, err):
    with pytest.raises(err) as info:
        SamplingParams(**{name: value}).validate("r7")
    msg = str(info.value)
    assert msg.startswith("request 'r7': ") and f"{name}={value!r}" in msg, msg
    assert isinstance(info.value, ValueError)  # type errors are both, so `except ValueError` sees every bad request


@pytest.fixture(scope="module")
def native(smollm2_path):
    eng = llmlab.launch("native", dtype="float32", num_blocks=64, max_num_batched_tokens=128)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def sim():
    return llmlab.launch("sim", step_time=lambda slots: 0.01, num_blocks=64)


def mutated(name: str, value) -> Workload:
    """A good request and one whose `name` was set to `value` after it was checked (as code
    bypassing WorkItem could): the engine must still refuse it before the run starts."""
    good, bad = WorkItem("good", prompt_len=12, max_tokens=4), WorkItem("bad", prompt_len=12, max_tokens=4)
    setattr(bad, name, value)
    return Workload("mutated", [good, bad])


@pytest.mark.parametrize("which", ["native", "sim"])
@pytest.mark.parametrize(("name", "value"), [("temperature", NAN), ("top_p", NAN), ("stop", [""]), ("max_tokens", 2.5)])
def test_one_bad_request_is_refused_before_the_run(which, name, value, request):
    eng = request.getfixturevalue(which)
    before = eng.last_run
    with pytest.raises(ValueError, match=rf"request 'bad': {name}="):
        eng.run(mutated(name, value))
    assert eng.last_run is before and not eng.has_unfinished()  # nothing started
    assert eng.run(mutated("max_tokens", 3)).num_finished == 2


def test_token_outside_vocabulary_is_refused(native):
    vocab = native.vocab_size
    wl = workloads.fixed([[1, 2, 3], [5, vocab + 7, 9]], max_tokens=3)
    with pytest.raises(ValueError, match=rf"request '1': token id {vocab + 7} at prompt position 1 .*{vocab} ids"):
        native.run(wl)
    with pytest.raises(ValueError, match=f"token id {vocab}"):
        native.check_request("x", [vocab], SamplingParams(max_tokens=2))
    assert not native.has_unfinished() and native.blocks.num_used == 0
    assert len(native.generate([[1, 2, 3]], max_tokens=3, ignore_eos=True)[0].token_ids) == 3


@pytest.mark.parametrize("which", ["native", "sim"])
def test_huge_corpus_prompt_is_refused_at_once(which, request):
    eng = request.getfixturevalue(which)
    wl = Workload("huge", [WorkItem("huge", prompt_len=2 * 10**7, max_tokens=4)])
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="huge.*max_model_len"):
        eng.run(wl)
    assert time.perf_counter() - t0 < 0.5


def test_bad_request_added_directly_is_refused(native):
    with pytest.raises(ValueError, match="request 'd': temperature=nan"):
        native.add_request("d", [1, 2, 3], SamplingParams(temperature=math.nan))
    assert not native.has_unfinished()
