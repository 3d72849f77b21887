"""Property tests of the public entry points: wrong types, NaN, infinities, negative, zero, huge
and empty values are refused at the door.

For every generated bad value: a ValueError or TypeError that names the argument, raised within a
second (before any weights load or any step runs), and a native engine that still serves the same
greedy text afterwards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import llmlab
from llmlab import workloads
from llmlab.session.trace import TraceFileError

pytestmark = pytest.mark.slow

PROMPT = "The capital of France is"
FAST = 1.0  # seconds: a refusal comes before any real work
CHECKS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NAN, INF = float("nan"), float("inf")
# values no count, size or length accepts: wrong types, non-finite, negative, zero, fractional, empty
NOT_A_COUNT = st.sampled_from([True, False, "4", "", 2.5, -1, 0, -(10**30), NAN, INF, -INF, [], {}, b"8"])
# values no positive rate, factor or time accepts
NOT_A_RATE = st.sampled_from([True, "4", "", -1, -0.5, 0, 0.0, NAN, INF, -INF, [], None])


@pytest.fixture(scope="module")
def engine(smollm2_path):
    eng = llmlab.launch("native", dtype="float32", num_blocks=64, max_num_batched_tokens=256)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def reference(engine) -> str:
    return engine.generate(PROMPT, max_tokens=8)[0].text


def refused(call, name: str) -> None:
    """`call()` must raise ValueError or TypeError mentioning `name`, within FAST seconds."""
    start = time.perf_counter()
    with pytest.raises((ValueError, TypeError)) as info:
        call()
    elapsed = time.perf_counter() - start
    assert name in str(info.value), f"the error does not name {name!r}: {info.value}"
    assert elapsed < FAST, f"refusing {name} took {elapsed:.2f} s"


def still_serving(engine, reference: str) -> None:
    assert engine.generate(PROMPT, max_tokens=8)[0].text == reference


def test_the_engine_serves_before_the_bad_input(engine, reference):
    """The reference text is the engine's own, taken before anything below is thrown at it."""
    assert reference.strip()


# launch settings ---------------------------------------------------------------------------

COUNT_SETTINGS = ["block_size", "num_blocks", "max_num_seqs", "max_num_batched_tokens", "max_model_len"]


@CHECKS
@given(engine_name=st.sampled_from(["native", "sim"]), name=st.sampled_from(COUNT_SETTINGS), value=NOT_A_COUNT)
def test_launch_refuses_bad_counts(engine_name, name, value):
    refused(lambda: llmlab.launch(engine_name, **{name: value}), name)


@CHECKS
@given(
    engine_name=st.sampled_from(["native", "sim"]),
    value=st.sampled_from([-1, -0.01, 1.0, 2.0, 1e30, NAN, INF, -INF, True, "0.1", None, []]),
)
def test_launch_refuses_bad_watermarks(engine_name, value):
    refused(lambda: llmlab.launch(engine_name, watermark=value), "watermark")


@CHECKS
@given(
    name=st.sampled_from(["enable_chunked_prefill", "enable_prefix_caching", "policy", "kv_cache_memory"]),
    value=st.sampled_from([2.5, "yes", NAN, -1, 0, [], b"x"]),
)
def test_launch_refuses_bad_switches_and_sizes(name, value):
    refused(lambda: llmlab.launch("native", **{name: value}), name)


# workload constructors ---------------------------------------------------------------------

CONSTRUCTORS = {
    "synthetic.n": lambda v: workloads.synthetic(v),
    "poisson.n": lambda v: workloads.poisson(1.0, v),
    "concurrency.k": lambda v: workloads.concurrency(v, 4),
    "shared_prefix.n": lambda v: workloads.shared_prefix(v),
    "from_trace.n": lambda v: workloads.from_trace("azure_conv", n=v),
    "synthetic.prompt_len": lambda v: workloads.synthetic(2, prompt_len=v),
    "synthetic.output_len": lambda v: workloads.synthetic(2, output_len=v),
}
RATES = {
    "poisson.rate": lambda v: workloads.poisson(v, 4),
    "gamma.rate": lambda v: workloads.gamma(v, 1.0, 4),
    "gamma.cv": lambda v: workloads.gamma(1.0, v, 4),
    "from_trace.time_scale": lambda v: workloads.from_trace("azure_conv", n=4, time_scale=v),
    "from_trace.output_scale": lambda v: workloads.from_trace("azure_conv", n=4, output_scale=v),
    "synthetic.arrival": lambda v: workloads.synthetic(3, arrival=[0.0, v, 2.0]),
}


@CHECKS
@given(which=st.sampled_from(sorted(CONSTRUCTORS)), value=NOT_A_COUNT)
def test_workload_constructors_refuse_bad_counts(which, value):
    name = which.split(".")[1]
    refused(lambda: CONSTRUCTORS[which](value), name)


@CHECKS
@given(which=st.sampled_from(sorted(RATES)), value=NOT_A_RATE)
def test_workload_constructors_refuse_bad_rates_and_times(which, value):
    name = which.split(".")[1]
    if name == "arrival" and value in (0, 0.0):
        return  # an arrival at time 0 is a valid time
    refused(lambda: RATES[which](value), name)


# per-request arguments ---------------------------------------------------------------------

REQUEST_ARGS = {
    "max_tokens": st.sampled_from([0, -1, 2.5, "4", True, NAN, INF, None]),
    "temperature": st.sampled_from([-0.1, NAN, INF, -INF, "0", True, None]),
    "top_p": st.sampled_from([0, 0.0, -0.5, 1.5, NAN, INF, "1", None]),
    "top_k": st.sampled_from([-1, 2.5, NAN, "3", True]),
    "seed": st.sampled_from([-1, 2.5, NAN, "7", True]),
    "stop": st.sampled_from([[""], "x", [1], [None], 5]),
}


@CHECKS
@given(data=st.data(), name=st.sampled_from(sorted(REQUEST_ARGS)))
def test_per_request_arguments_are_refused(engine, data, name):
    value = data.draw(REQUEST_ARGS[name])
    refused(lambda: engine.generate(PROMPT, **{name: value}), name)


@CHECKS
@given(token=st.sampled_from([-1, 49152, 10**12, 2.5, NAN]))
def test_token_ids_outside_the_vocabulary_are_refused(engine, token):
    refused(lambda: engine.generate([[1, 2, token]], max_tokens=4), "prompt")


def test_the_engine_serves_the_same_text_after_all_of_it(engine, reference):
    """Every refusal above left the engine as it was: same greedy text, every block free."""
    still_serving(engine, reference)
    assert engine.blocks.num_free == engine.blocks.num_blocks


# trace files -------------------------------------------------------------------------------

BAD_FIELD_VALUES = ["12", None, NAN, INF, -1, [], {"a": 1}, True, "x" * 3]


@pytest.fixture(scope="module")
def saved_lines(tmp_path_factory) -> list[dict]:
    eng = llmlab.launch("sim", model="smollm2-135m", gpu="H100-SXM")
    run = eng.run(workloads.synthetic(3, prompt_len=20, output_len=4))
    path = tmp_path_factory.mktemp("trace") / "run.jsonl"
    run.save(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


NUMERIC_FIELDS = {
    "step": ["step", "t_start", "t_end", "waiting", "running", "prefix_hit_tokens"],
    "request": ["arrival", "prompt_tokens", "output_tokens", "cached_tokens", "num_preemptions"],
}


@CHECKS
@given(data=st.data())
def test_trace_files_with_a_bad_field_are_refused_naming_it(saved_lines, tmp_path, data):
    kind = data.draw(st.sampled_from(sorted(NUMERIC_FIELDS)))
    field = data.draw(st.sampled_from(NUMERIC_FIELDS[kind]))
    value = data.draw(st.sampled_from(BAD_FIELD_VALUES))
    lines = [dict(line) for line in saved_lines]
    target = data.draw(st.sampled_from([i for i, line in enumerate(lines) if line["record"] == kind]))
    lines[target][field] = value
    path = Path(tmp_path) / f"bad-{kind}-{field}.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    start = time.perf_counter()
    with pytest.raises(TraceFileError) as info:
        llmlab.load(path)
    assert field in str(info.value) and path.name in str(info.value)
    assert time.perf_counter() - start < FAST


def test_a_deeply_nested_trace_line_is_refused(saved_lines, tmp_path):
    path = tmp_path / "deep.jsonl"
    deep = "[" * 100_000 + "]" * 100_000
    path.write_text(json.dumps(saved_lines[0]) + "\n" + '{"record": "step", "batch": ' + deep + "}\n")
    with pytest.raises(TraceFileError, match="deep.jsonl"):
        llmlab.load(path)
