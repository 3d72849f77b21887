"""The `tgi` protocol against llmlab's own TGI front end on loopback, proven with Hugging Face's client.

A TGI server cannot be installed here: the front end's conformance is checked with Hugging
Face's own clients, `huggingface_hub.InferenceClient` and `text-generation`, which parse its
streams and errors.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import numpy as np
import pytest

import llmlab
from llmlab import workloads

pytest.importorskip("httpx")
pytest.importorskip("starlette")
from llmlab.serving import connect, serve  # noqa: E402
from llmlab.serving.client import ServerDown  # noqa: E402
from llmlab.serving.launch import free_port  # noqa: E402

SECRET = "sk-llmlab-test-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def server(smollm2_path):
    with serve("native", protocol="tgi", timeout=180) as srv:
        yield srv
    assert not srv.running


def test_connect_probes_tgi_and_runs_open_loop(server, tmp_path):
    srv = connect(server.url, poll_hz=20)
    assert srv.protocol == "tgi"
    wl = workloads.poisson(rate=20, n=6, prompt_len=(8, 24), output_len=(4, 12), seed=1)
    run = srv.run(wl)
    assert run.status == "finished", run.error
    req = run.requests.set_index("req_id")
    wanted = {item.req_id: item.max_tokens for item in wl}
    assert req["output_tokens"].to_dict() == wanted  # ignore_eos: exactly max_tokens each, as the server counted
    assert (req["finish_reason"] == "length").all()
    assert (req["ttft"] > 0).all() and (req["e2e"] >= req["ttft"]).all()
    records = run.trace.request_records
    assert all(records[r].sent >= records[r].arrival - 1e-6 for r in records)  # never sent before it was due
    assert all(len(records[r].token_times) == wanted[r] for r in records)
    s = run.summary()
    assert s["finished"] == 6 and s["itl_p50"] > 0
    # TGI reports no preemption counter and a client sees no prefix-cache hits: unknown, not zero
    assert np.isnan(s["preemptions"]) and np.isnan(s["prefix_hit_rate"])
    samples = run.trace.samples
    assert len(samples) > 0 and (samples["source"] == "derived").all()
    assert samples["kv_total"].max() > 0 and samples["running"].notna().all()
    assert run.info.views["latency"] == "exact" and run.info.views["kv"] == "sampled"
    path = run.save(tmp_path / "tgi.jsonl")  # a saved remote run loads and replays like any other
    back = llmlab.load(path)
    assert back.trace.samples.equals(samples)
    assert back.requests["ttft"].tolist() == run.requests["ttft"].tolist()
    assert back.trace.request_records["0"].sent == records["0"].sent


def test_inference_client_parses_stream_details_and_errors(server):
    hf = pytest.importorskip("huggingface_hub")
    client = hf.InferenceClient(model=server.url)
    prompt = "The capital of France is"
    events = list(client.text_generation(prompt, max_new_tokens=8, stream=True, details=True))
    streamed = "".join(e.token.text for e in events if not e.token.special)
    assert events[-1].details.generated_tokens == 8 and events[-1].generated_text == streamed
    full = client.text_generation(prompt, max_new_tokens=8, details=True)
    assert full.generated_text == streamed and full.details.finish_reason in ("length", "eos_token")
    with pytest.raises(Exception, match="max_tokens|max_new_tokens|longer|model_len"):
        client.text_generation(prompt, max_new_tokens=10**6)


def test_text_generation_client_parses_generate_stream_and_errors(server):
    tg = pytest.importorskip("text_generation", reason="make test installs text-generation==0.7.0")
    client = tg.Client(server.url)
    prompt = "The capital of France is"
    full = client.generate(prompt, max_new_tokens=8)  # TGI's `/`: one generation in a list, with details
    assert full.details.generated_tokens == 8 == len(full.details.tokens)
    assert "".join(t.text for t in full.details.tokens) == full.generated_text != ""
    events = list(client.generate_stream(prompt, max_new_tokens=8))
    assert len(events) == 8  # one event per token; the last one carries the text and details, as TGI's
    assert all(e.generated_text is None and e.details is None for e in events[:-1])
    assert events[-1].generated_text == full.generated_text == "".join(e.token.text for e in events)
    assert events[-1].details.finish_reason == "length" and events[-1].details.generated_tokens == 8
    assert [e.token.id for e in events] == [t.id for t in full.details.tokens]
    with pytest.raises(tg.errors.ValidationError, match="max_tokens=?.*num_blocks"):
        client.generate(prompt, max_new_tokens=10**6)
    with pytest.raises(tg.errors.ValidationError, match="max_tokens=?.*num_blocks"):
        next(iter(client.generate_stream(prompt, max_new_tokens=10**6)))

    async def both() -> tuple[str, str]:
        aclient = tg.AsyncClient(server.url)
        done = await aclient.generate(prompt, max_new_tokens=4)
        streamed = [e async for e in aclient.generate_stream(prompt, max_new_tokens=4)]
        return done.generated_text, streamed[-1].generated_text

    done, streamed = asyncio.run(both())
    assert done == streamed == full.generated_text[: len(done)]


def test_openai_routes_of_the_front_end(server):
    srv = connect(server.url, protocol="openai")
    [c] = srv.generate(["The capital of France is"], max_tokens=6)
    [t] = connect(server.url).generate(["The capital of France is"], max_tokens=6)
    assert c.text == t.text and c.text  # greedy: both routes give the same text


def test_http_error_is_recorded_per_request_and_the_run_goes_on(server):
    items = [
        workloads.WorkItem("ok", prompt="Hello there", max_tokens=4, ignore_eos=True),
        workloads.WorkItem("too-long", prompt="Hello there", max_tokens=10**6),
    ]
    run = connect(server.url, poll_hz=0).run(workloads.Workload("mixed", items))
    assert run.status == "finished"
    recs = run.trace.request_records
    assert recs["ok"].output_tokens == 4 and recs["ok"].error is None
    assert recs["too-long"].finish_reason == "error" and "HTTP 422" in recs["too-long"].error


def test_api_key_is_never_shown_or_saved(server, tmp_path):
    srv = connect(server.url.replace("http://", f"http://user:{SECRET}@"), poll_hz=5)
    assert SECRET not in srv.url and SECRET not in repr(srv) and SECRET not in str(srv.info)
    srv2 = connect(server.url, api_key=SECRET)
    run = srv2.run(workloads.poisson(rate=50, n=2, prompt_len=8, output_len=2))
    assert SECRET not in repr(run) and SECRET not in str(vars(srv2))
    for name in ("run.jsonl", "run.jsonl.gz", "run.parquet"):
        run.save(tmp_path / name)
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f


def test_unreachable_url_and_wrong_protocol_fail_clearly(server):
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=url.replace(".", r"\.")):
        connect(url)
    assert time.monotonic() - t0 < 5
    with pytest.raises(ValueError, match="protocol='tgi'"):
        connect(server.url, protocol="triton")
    with pytest.raises(ValueError, match="protocol='nope' is unknown"):
        connect(server.url, protocol="nope")


def test_serve_refuses_a_port_in_use(server):
    with pytest.raises(ValueError, match=f"port={server.port} .* in use"):
        serve("native", port=server.port)


def test_server_dying_mid_run_keeps_what_finished(tmp_path, smollm2_path):
    with serve("native", timeout=180) as srv:
        wl = workloads.poisson(rate=4, n=10, prompt_len=8, output_len=12, seed=2)
        run = connect(srv.url, poll_hz=5).run(wl, live=True)
        deadline = time.monotonic() + 60
        while len(run.outputs) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(srv.process.pid, signal.SIGKILL)
        run.wait(30)
    assert run.status == "failed" and isinstance(run.error, ServerDown) and srv.url in str(run.error)
    finished = [r for r in run.trace.request_records.values() if r.finish_reason == "length"]
    assert len(finished) >= 2 and all(r.output_tokens == 12 for r in finished)
    back = llmlab.load(run.save(tmp_path / "died.jsonl"))
    assert back.status == "failed" and len(back.outputs) == len(run.outputs)


def test_dashboard_of_a_server_run_shows_request_timeline_and_samples(server, tmp_path):
    pytest.importorskip("ipywidgets")
    from llmlab.widgets.server_views import TIMELINE_TITLE

    run = connect(server.url, poll_hz=20).run(workloads.poisson(rate=20, n=6, prompt_len=8, output_len=6))
    dash = run.show()
    assert dash.schedule.figure.layout.title.text == TIMELINE_TITLE  # says plainly: no per-step batches
    wait, prefill, decode = dash.schedule.figure.data
    assert len(decode.y) == 6 and (np.asarray(decode.x) > 0).all() and (np.asarray(prefill.x) > 0).all()
    running = dash.kv.figure.data[1]
    assert len(running.x) == len(run.trace.samples) > 0
    assert "no block metric" in dash.kv.figure.layout.annotations[1].text
    assert len(dash.latency.figure.data[0].x) == 6  # TTFT of every request, exact (enough for a histogram)
    html = run.to_html(tmp_path / "server.html").read_text()
    assert TIMELINE_TITLE in html
