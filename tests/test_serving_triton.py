"""The real `tritonserver` 2.51 from nvidia-pytriton with llmlab's native engine inside, on loopback.

The server starts once for the module (about 10-20 s). Its model exports the TensorRT-LLM
backend's `nv_trt_llm_*` families per engine step and logs the same step's counts to
`trace.jsonl` in the repository, so what `connect` polls can be checked against the engine.
"""

from __future__ import annotations

import json

import httpx
import pytest

from llmlab import workloads
from llmlab.serving import connect, serve
from llmlab.serving.poller import read_prometheus
from llmlab.serving.triton_repo import tritonserver_dir

try:  # the binary is what the tests need; `import pytriton` also wants its Python deps, which llmlab never uses
    tritonserver_dir()
except ImportError as exc:
    pytest.skip(str(exc), allow_module_level=True)

pytestmark = pytest.mark.slow
PROMPTS = ["What is the capital of France?", "Name three colours.", "Count to five:"]


@pytest.fixture(scope="module")
def server(smollm2_path):
    with serve("triton", timeout=240) as srv:
        yield srv
    assert not srv.running


def _steps(server) -> list[dict]:
    return [json.loads(line) for line in (server.repository / "trace.jsonl").read_text().splitlines()]


def test_poisson_run_through_connect_and_kv_blocks_equal_the_engines_trace(server):
    srv = server.connect(poll_hz=20)
    assert srv.protocol == "triton"
    assert (
        connect(server.url, model="smollm2-135m", metrics_url=server.metrics_url).protocol == "triton"
    )  # probing finds Triton
    wl = workloads.poisson(rate=10, n=6, prompt_len=(24, 40), output_len=(30, 40), seed=3)
    run = srv.run(wl)
    assert run.status == "finished", run.error
    assert run.requests["error"].isna().all(), run.requests["error"].tolist()
    assert run.requests["output_tokens"].tolist() == [item.max_tokens for item in wl]
    samples = run.trace.samples
    steps = _steps(server)
    used = {s["kv_used"] for s in steps}
    polled = samples["kv_used"].dropna()
    assert polled.max() > 0  # the run's blocks were seen in use
    assert set(polled.astype(int)) <= used | {0}, (sorted(set(polled)), sorted(used))
    assert set(samples["kv_total"].dropna().astype(int)) == {steps[-1]["kv_max"]}
    raw = read_prometheus(httpx.get(server.metrics_url, timeout=5).text)
    last = steps[-1]
    assert raw["nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=used}"] == last["kv_used"]
    assert raw["nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type=free}"] == last["kv_free"]
    assert raw["nv_trt_llm_general_metrics{general_type=iteration_counter}"] == last["step"]


def _triton_ids(server, prompt: str, n: int) -> list[int]:
    ids = []
    body = {"text_input": prompt, "max_tokens": n, "temperature": 0.0, "stream": True}
    url = f"{server.url}/v2/models/smollm2-135m/generate_stream"
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data:"):
                ids.append(json.loads(line[5:])["output_ids"])
    return ids


def test_greedy_tokens_equal_the_in_process_native_engine(server):
    from llmlab.session.engine import launch

    engine = launch("native", model="smollm2-135m")
    local = engine.generate(PROMPTS, max_tokens=12, temperature=0.0)
    for prompt, done in zip(PROMPTS, local, strict=True):
        assert len(done.token_ids) > 0
        assert _triton_ids(server, prompt, 12) == done.token_ids
