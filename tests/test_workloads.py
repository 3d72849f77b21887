"""Workload generators and prompt construction (real corpus text, cut by a real tokenizer)."""

import numpy as np
import pandas as pd
import pytest

from llmlab import workloads as W
from llmlab.workloads import WorkItem, Workload, prompt_token_ids

DATASETS = W.datasets_dir()


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


# ---- items and prompts ---------------------------------------------------------------


def test_workitem_validation():
    with pytest.raises(ValueError, match="no prompt"):
        WorkItem("a")
    with pytest.raises(ValueError, match="max_tokens=0"):
        WorkItem("a", prompt="hi", max_tokens=0)
    with pytest.raises(ValueError, match="prompt_len=-3"):
        WorkItem("a", prompt_len=-3)
    with pytest.raises(ValueError, match="arrival=-1"):
        WorkItem("a", prompt="hi", arrival=-1)
    with pytest.raises(ValueError, match="top_p=0"):
        WorkItem("a", prompt="hi", top_p=0)
    with pytest.raises(ValueError, match="chat=True needs a text prompt"):
        WorkItem("a", prompt_len=5, chat=True)
    with pytest.raises(ValueError, match="'x' repeats"):
        Workload("w", [WorkItem("x", prompt="a"), WorkItem("x", prompt="b")])


def test_prompt_token_ids_text_ids_and_chat(tok):
    text = "What is the capital of France?"
    plain = prompt_token_ids(WorkItem("a", prompt=text), tok)
    assert plain == tok.encode(text, add_special_tokens=False)
    assert prompt_token_ids(WorkItem("a", prompt=[5, 6, 7]), tok) == [5, 6, 7]
    chat = prompt_token_ids(WorkItem("a", prompt=text, chat=True), tok)
    assert isinstance(chat, list) and all(type(i) is int for i in chat)
    assert len(chat) > len(plain)
    assert text in tok.decode(chat)
    assert tok.decode(chat) != tok.decode(plain)


def test_corpus_window_is_real_text_of_exact_length(tok):
    corpus = W.corpus_text()
    assert 6000 <= len(corpus.split()) <= 10000
    ids = W.corpus_token_ids(tok)
    assert W.corpus_token_ids(tok) is ids  # cached per tokenizer
    assert tok.decode(ids.tolist()) == corpus
    for offset, n in [(0, 40), (1234, 200), (len(ids) - 300, 300)]:
        window = prompt_token_ids(WorkItem("a", prompt_len=n, corpus_offset=offset), tok)
        assert len(window) == n and all(type(i) is int for i in window)
        assert tok.decode(window) in corpus


def test_corpus_window_wraps(tok):
    ids = W.corpus_token_ids(tok).tolist()
    L = len(ids)
    window = prompt_token_ids(WorkItem("a", prompt_len=L + 5, corpus_offset=3 * L + 10), tok)
    assert len(window) == L + 5
    assert window == ids[10:] + ids[:15]


# ---- generators ----------------------------------------------------------------------


def test_fixed():
    wl = W.fixed(["a", "b", [1, 2]], max_tokens=9, ignore_eos=True, temperature=0.7, prefix="r")
    assert len(wl) == 3 and [it.req_id for it in wl] == ["r0", "r1", "r2"]
    assert all(it.arrival == 0 and it.max_tokens == 9 and it.ignore_eos for it in wl)
    assert wl[2].prompt == [1, 2] and wl[0].temperature == 0.7
    assert [it.req_id for it in W.fixed("just one")] == ["0"]
    with pytest.raises(ValueError, match="empty"):
        W.fixed([])


def test_synthetic_ranges_and_seeds(tok):
    wl = W.synthetic(200, prompt_len=(10, 20), output_len=(3, 7), seed=4)
    df = wl.to_frame()
    assert len(wl) == 200 and list(df["req_id"]) == [str(i) for i in range(200)]
    assert df["prompt_len"].between(10, 20).all() and df["max_tokens"].between(3, 7).all()
    assert df["prompt_len"].nunique() == 11  # the range is inclusive
    assert (df["arrival"] == 0).all() and df["ignore_eos"].all()
    assert df["corpus_offset"].is_unique  # no accidental shared prefixes
    pd.testing.assert_frame_equal(df, W.synthetic(200, (10, 20), (3, 7), seed=4).to_frame())
    assert not df.equals(W.synthetic(200, (10, 20), (3, 7), seed=5).to_frame())
    corpus = W.corpus_text()
    for it in wl.items[:5]:
        ids = prompt_token_ids(it, tok)
        assert len(ids) == it.prompt_len and tok.decode(ids) in corpus


def test_synthetic_length_specs_and_arrivals():
    class Dist:  # anything with .rvs, like a frozen scipy distribution
        def rvs(self, size, random_state):
            return random_state.lognormal(3, 0.5, size=size)

    wl = W.synthetic(50, prompt_len=Dist(), output_len=lambda rng: int(rng.integers(5, 9)), arrival=0.5, prefix="s")
    df = wl.to_frame()
    assert (df["prompt_len"] >= 1).all() and df["max_tokens"].between(5, 8).all()
    np.testing.assert_allclose(df["arrival"], np.arange(50) * 0.5)
    assert wl[0].req_id == "s0"
    wl = W.synthetic(3, prompt_len=64, output_len=8, arrival=[0.0, 1.0, 2.5])
    assert [it.prompt_len for it in wl] == [64] * 3 and [it.arrival for it in wl] == [0, 1, 2.5]


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: W.synthetic(0), "n=0"),
        (lambda: W.synthetic(5, prompt_len=-4), "prompt_len=-4"),
        (lambda: W.synthetic(5, output_len=(0, 3)), "output_len"),
        (lambda: W.synthetic(5, prompt_len=(9, 2)), "low <= high"),
        (lambda: W.synthetic(5, prompt_len="long"), "prompt_len='long'"),
        (lambda: W.poisson(0, 5), "rate=0"),
        (lambda: W.poisson(-1.5, 5), "rate=-1.5"),
        (lambda: W.gamma(1.0, 0, 5), "cv=0"),
        (lambda: W.concurrency(0, 5), "k=0"),
        (lambda: W.shared_prefix(4, max_tokens=0), "max_tokens=0"),
        (lambda: W.from_trace("azure_conv", n=-2), "n=-2"),
        (lambda: W.from_trace("azure_conv", time_scale=0), "time_scale=0"),
        (lambda: W.from_trace("azure_conv", max_len=1), "max_len=1"),
        (lambda: W.from_trace("azure_conv", start=10**7), "start=10000000"),
        (lambda: W.from_trace("sharegpt"), "azure_conv, azure_code, arxiv"),
    ],
)
def test_validation_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_poisson_mean_interarrival():
    wl = W.poisson(rate=5.0, n=2000, seed=1)
    t = np.array([it.arrival for it in wl])
    assert t[0] == 0 and (np.diff(t) >= 0).all()
    assert np.diff(t).mean() == pytest.approx(1 / 5.0, rel=0.1)
    assert np.diff(t).std() / np.diff(t).mean() == pytest.approx(1.0, rel=0.15)
    assert [it.arrival for it in W.poisson(5.0, 20, seed=1)] == list(t[:20])
    assert wl.concurrency is None


def test_gamma_cv():
    wl = W.gamma(rate=2.0, cv=3.0, n=2000, seed=2)
    gaps = np.diff([it.arrival for it in wl])
    assert gaps.mean() == pytest.approx(0.5, rel=0.25)
    assert gaps.std() / gaps.mean() == pytest.approx(3.0, rel=0.25)


def test_concurrency_is_closed_loop():
    wl = W.concurrency(4, 30, prompt_len=16, output_len=8)
    assert wl.concurrency == 4 and len(wl) == 30
    assert all(it.arrival == 0 for it in wl)
    assert "concurrency=4" in repr(wl)


def test_shared_prefix(tok):
    wl = W.shared_prefix(8, max_tokens=16, seed=3)
    prompts = [it.prompt for it in wl]
    assert all(p.startswith(W.DEFAULT_SYSTEM_PROMPT + "\n\nQuestion: ") for p in prompts)
    assert all(p.endswith("\nAnswer:") for p in prompts)
    assert len(set(prompts)) == 8
    system_len = len(tok.encode(W.DEFAULT_SYSTEM_PROMPT, add_special_tokens=False))
    ids = [prompt_token_ids(it, tok) for it in wl]
    common = next(i for i in range(min(map(len, ids))) if len({x[i] for x in ids}) > 1)
    assert common >= system_len - 1

    wl = W.shared_prefix(5, system_prompt="SYS", questions=["q1?", "q2?"], rate=2.0, chat=True)
    assert [it.prompt for it in wl][:3] == [
        "SYS\n\nQuestion: q1?\nAnswer:",
        "SYS\n\nQuestion: q2?\nAnswer:",
        "SYS\n\nQuestion: q1?\nAnswer:",
    ]
    assert wl[0].arrival == 0 and wl[4].arrival > 0 and wl[0].chat
    chat_ids = [prompt_token_ids(it, tok) for it in wl]
    assert chat_ids[0] == chat_ids[2] and chat_ids[0] != chat_ids[1]

    wl = W.shared_prefix(3, prefix_len=50)
    system = wl[0].prompt.split("\n\nQuestion:")[0]
    assert len(system.split()) == 50 and system in " ".join(W.corpus_text().split())


def test_from_trace_arrivals_and_lengths():
    raw = pd.read_csv(DATASETS / "splitwise_conv.csv")
    wl = W.from_trace("azure_conv", n=100, start=10, time_scale=10.0)
    df = wl.to_frame()
    rows = raw.iloc[10:110]
    assert len(wl) == 100 and wl.name == "azure_conv"
    np.testing.assert_allclose(df["arrival"], (rows["arrived_at"] - rows["arrived_at"].iloc[0]) / 10)
    assert list(df["prompt_len"]) == list(rows["num_prefill_tokens"])
    assert list(df["max_tokens"]) == list(rows["num_decode_tokens"])
    assert df["prompt"].isna().all()

    half = W.from_trace("azure_conv", n=100, start=10, output_scale=0.5).to_frame()
    expected = np.maximum(1, np.rint(rows["num_decode_tokens"].to_numpy() * 0.5))
    assert list(half["max_tokens"]) == list(expected)


def test_from_trace_clips_to_context():
    raw = pd.read_csv(DATASETS / "splitwise_code.csv").iloc[:300]
    df = W.from_trace("azure_code", n=300, max_len=512).to_frame()
    total = df["prompt_len"] + df["max_tokens"]
    assert (total <= 512).all() and (df["prompt_len"] >= 1).all() and (df["max_tokens"] >= 1).all()
    fits = (raw["num_prefill_tokens"] + raw["num_decode_tokens"] <= 512).to_numpy()
    assert fits.any() and (~fits).any()
    assert list(df["prompt_len"][fits]) == list(raw["num_prefill_tokens"][fits])
    assert list(df["max_tokens"][fits]) == list(raw["num_decode_tokens"][fits])
    # clipped rows keep roughly their prompt/output ratio and fill most of the context
    assert (total[~fits] >= 500).all()


def test_from_trace_arxiv_and_env_override(tmp_path, monkeypatch):
    wl = W.from_trace("arxiv", n=50, max_len=2048)
    assert all(it.arrival == 0 for it in wl)
    wl = W.from_trace("arxiv", n=500, rate=10.0, seed=1)
    gaps = np.diff([it.arrival for it in wl])
    assert gaps.mean() == pytest.approx(0.1, rel=0.25)
    assert len(W.from_trace("azure_code")) == 8819

    (tmp_path / "splitwise_conv.csv").write_text(
        "arrived_at,num_prefill_tokens,num_decode_tokens\n5.0,10,2\n7.0,20,3\n"
    )
    (tmp_path / "corpus.txt").write_text((DATASETS / "corpus.txt").read_text())
    monkeypatch.setenv("LLMLAB_DATASETS", str(tmp_path))
    assert W.datasets_dir() == tmp_path
    df = W.from_trace("azure_conv").to_frame()
    assert list(df["arrival"]) == [0.0, 2.0] and list(df["prompt_len"]) == [10, 20]
    with pytest.raises(FileNotFoundError, match="LLMLAB_DATASETS"):
        W.from_trace("arxiv")


def test_workload_container_and_frame():
    wl = W.fixed(["x" * 200, [1, 2, 3]])
    assert len(wl) == 2 and list(wl) == wl.items and wl[1].prompt == [1, 2, 3]
    df = wl.to_frame()
    assert list(df.columns) == [
        "req_id",
        "arrival",
        "prompt",
        "prompt_len",
        "corpus_offset",
        "max_tokens",
        "ignore_eos",
        "temperature",
        "top_p",
        "top_k",
        "seed",
        "stop",
        "chat",
    ]
    assert len(df.loc[0, "prompt"]) <= 60 and df.loc[0, "prompt"].endswith("...")
    assert df.loc[1, "prompt"] == "[3 token ids]"
