"""Bad workload input is refused up front: WorkItem fields, generator arguments, trace CSVs, prompt limits."""

import numpy as np
import pandas as pd
import pytest

from llmlab import workloads as W
from llmlab.workloads import WorkItem, prompt_token_ids

NAN, INF = float("nan"), float("inf")
HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens"


def raises(exc: type[Exception], call, *names: str) -> str:
    """Call, expect exactly `exc` (not a subclass picked up by accident), check every name is in the message."""
    with pytest.raises(exc) as e:
        call()
    msg = str(e.value)
    assert type(e.value) is exc, (type(e.value), msg)
    for name in names:
        assert name in msg, (name, msg)
    return msg


# ---- WorkItem -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, names",
    [
        (dict(arrival=NAN), ValueError, ["arrival=nan", "finite"]),
        (dict(arrival=INF), ValueError, ["arrival=inf", "finite"]),
        (dict(arrival=-0.5), ValueError, ["arrival=-0.5", ">= 0"]),
        (dict(arrival="1"), TypeError, ["arrival='1'", "str"]),
        (dict(temperature=NAN), ValueError, ["temperature=nan", "temperature >= 0"]),
        (dict(temperature=-INF), ValueError, ["temperature=-inf"]),
        (dict(top_p=NAN), ValueError, ["top_p=nan", "0 < top_p <= 1"]),
        (dict(top_p=1.5), ValueError, ["top_p=1.5"]),
        (dict(max_tokens=2.5), TypeError, ["max_tokens=2.5", "float", "int >= 1"]),
        (dict(max_tokens="4"), TypeError, ["max_tokens='4'", "str"]),
        (dict(max_tokens=True), TypeError, ["max_tokens=True", "bool"]),
        (dict(max_tokens=0), ValueError, ["max_tokens=0"]),
        (dict(top_k=1.0), TypeError, ["top_k=1.0", "float"]),
        (dict(top_k=-1), ValueError, ["top_k=-1"]),
        (dict(seed=1.5), TypeError, ["seed=1.5", "float"]),
        (dict(seed=True), TypeError, ["seed=True", "bool"]),
        (dict(seed=-1), ValueError, ["seed=-1"]),
        (dict(corpus_offset=-1), ValueError, ["corpus_offset=-1"]),
        (dict(corpus_offset=0.5), TypeError, ["corpus_offset=0.5"]),
        (dict(ignore_eos="yes"), TypeError, ["ignore_eos='yes'", "True or False"]),
        (dict(chat=1), TypeError, ["chat=1", "True or False"]),
        (dict(stop=[""]), ValueError, ["stop[0]=''", "empty", "stop=None"]),
        (dict(stop=["ok", ""]), ValueError, ["stop[1]=''"]),
        (dict(stop="x"), TypeError, ["stop='x'", "stop=['x']"]),
        (dict(stop=[5]), TypeError, ["stop[0]=5", "int"]),
        (dict(stop={"a": 1}), TypeError, ["stop="]),
    ],
)
def test_workitem_refuses_bad_fields(kwargs, exc, names):
    raises(exc, lambda: WorkItem("req-7", prompt="hi", **kwargs), "request 'req-7'", *names)


@pytest.mark.parametrize(
    "kwargs, exc, names",
    [
        (dict(prompt_len=2.5), TypeError, ["prompt_len=2.5", "float"]),
        (dict(prompt_len=True), TypeError, ["prompt_len=True", "bool"]),
        (dict(prompt_len="40"), TypeError, ["prompt_len='40'"]),
        (dict(prompt_len=0), ValueError, ["prompt_len=0"]),
        (dict(prompt=[3, -2, 5]), ValueError, ["prompt[1]=-2", "ints >= 0"]),
        (dict(prompt=[3, 4, 2.0]), TypeError, ["prompt[2]=2.0", "float"]),
        (dict(prompt=[3, True]), TypeError, ["prompt[1]=True", "bool"]),
        (dict(prompt=["a"]), TypeError, ["prompt[0]='a'"]),
        (dict(prompt=[]), ValueError, ["prompt=[]"]),
        (dict(prompt=""), ValueError, ["prompt=''", "empty"]),
        (dict(prompt=5), TypeError, ["prompt=5", "int"]),
        (dict(prompt=b"abc"), TypeError, ["prompt=b'abc'", "decode"]),
    ],
)
def test_workitem_refuses_bad_prompts(kwargs, exc, names):
    raises(exc, lambda: WorkItem("q", **kwargs), "request 'q'", *names)


def test_workitem_refuses_non_string_id():
    raises(TypeError, lambda: WorkItem(3, prompt="hi"), "req_id=3", "string id")


@pytest.mark.parametrize("position", [0, 5, 17])
def test_lone_surrogate_names_request_and_position(position):
    text = "The quick brown fox jumps"
    bad = text[:position] + "\ud800" + text[position:]
    msg = raises(ValueError, lambda: WorkItem("s1", prompt=bad), "request 's1'", "surrogate")
    assert f"character {position}" in msg
    assert "encode('utf-8', 'replace')" in msg  # the fix
    # the fix in the message does make a prompt WorkItem accepts
    fixed = bad.encode("utf-8", "replace").decode("utf-8")
    assert WorkItem("s1", prompt=fixed).prompt == fixed
    assert WorkItem("s1", prompt="emoji \U0001f600 and accents é").prompt.startswith("emoji")  # real non-ASCII is fine


def test_workitem_normalises_numbers_and_sequences():
    it = WorkItem(
        "n",
        arrival=np.float32(1.5),
        prompt=np.array([4, 5, 6], dtype=np.int32),
        max_tokens=np.int64(7),
        temperature=np.float64(0.5),
        top_k=np.int16(3),
        seed=np.uint8(9),
        stop=("a", "b"),
        ignore_eos=np.bool_(True),
    )
    assert type(it.arrival) is float and type(it.max_tokens) is int and type(it.top_k) is int
    assert type(it.seed) is int and type(it.temperature) is float and type(it.ignore_eos) is bool
    assert it.prompt == [4, 5, 6] and all(type(t) is int for t in it.prompt)
    assert it.stop == ["a", "b"] and isinstance(it.stop, list)
    assert WorkItem("t", prompt=(1, 2)).prompt == [1, 2]


# ---- generator arguments -------------------------------------------------------------


@pytest.mark.parametrize(
    "call, exc, names",
    [
        (lambda: W.synthetic(3, arrival=[0.0, NAN, 1.0]), ValueError, ["arrival[1]=nan", "finite seconds >= 0"]),
        (lambda: W.synthetic(3, arrival=[0.0, 1.0, INF]), ValueError, ["arrival[2]=inf", "finite"]),
        (lambda: W.synthetic(3, arrival=[0.0, -1.0, 1.0]), ValueError, ["arrival[1]=-1.0", ">= 0"]),
        (lambda: W.synthetic(3, arrival=np.array([0.0, 1.0, NAN])), ValueError, ["arrival[2]=nan"]),
        (lambda: W.synthetic(3, arrival=[0, "a", 1]), TypeError, ["arrival[1]='a'", "str"]),
        (lambda: W.synthetic(3, arrival=[0, True, 1]), TypeError, ["arrival[1]=True", "bool"]),
        (lambda: W.synthetic(3, arrival=[0.0, 1.0]), ValueError, ["arrival", "n=3"]),
        (lambda: W.synthetic(3, arrival=NAN), ValueError, ["arrival=nan", "finite"]),
        (lambda: W.synthetic(3, arrival="fast"), TypeError, ["arrival='fast'"]),
        (lambda: W.synthetic(True), TypeError, ["n=True", "bool", "int >= 1"]),
        (lambda: W.synthetic(2.5), TypeError, ["n=2.5", "float"]),
        (lambda: W.synthetic(3, seed=-1), ValueError, ["seed=-1"]),
        (lambda: W.synthetic(3, seed=0.5), TypeError, ["seed=0.5"]),
        (lambda: W.synthetic(3, temperature=NAN), ValueError, ["temperature=nan"]),
        (lambda: W.synthetic(3, ignore_eos=None), TypeError, ["ignore_eos=None"]),
        (lambda: W.synthetic(3, prefix=1), TypeError, ["prefix=1"]),
        (lambda: W.synthetic(3, prompt_len=lambda rng: NAN), ValueError, ["prompt_len=", "gave nan"]),
        (lambda: W.synthetic(3, output_len=lambda rng: "many"), TypeError, ["output_len=", "not numbers"]),
        (lambda: W.synthetic(3, prompt_len=(1.5, 3)), TypeError, ["prompt_len=(1.5, 3)", "two ints"]),
        (lambda: W.synthetic(3, prompt_len=True), TypeError, ["prompt_len=True", "bool"]),
        (lambda: W.synthetic(3, output_len=(0, 3)), ValueError, ["output_len=(0, 3)", "low >= 1"]),
        (lambda: W.poisson(NAN, 5), ValueError, ["rate=nan", "finite number > 0"]),
        (lambda: W.poisson(INF, 5), ValueError, ["rate=inf"]),
        (lambda: W.poisson("2", 5), TypeError, ["rate='2'"]),
        (lambda: W.gamma(1.0, NAN, 5), ValueError, ["cv=nan"]),
        (lambda: W.gamma(INF, 1.0, 5), ValueError, ["rate=inf"]),
        (lambda: W.concurrency(True, 5), TypeError, ["k=True", "bool"]),
        (lambda: W.concurrency(2.0, 5), TypeError, ["k=2.0"]),
        (lambda: W.shared_prefix(3, prefix_len=2.5), TypeError, ["prefix_len=2.5"]),
        (lambda: W.shared_prefix(3, rate=NAN), ValueError, ["rate=nan"]),
        (lambda: W.shared_prefix(3, questions="why?"), TypeError, ["questions='why?'"]),
        (lambda: W.shared_prefix(3, max_tokens=1.5), TypeError, ["max_tokens=1.5"]),
        (lambda: W.fixed(["hi"], stop=[""]), ValueError, ["request '0'", "stop[0]=''"]),
        (lambda: W.fixed(["hi"], max_tokens=2.5), TypeError, ["request '0'", "max_tokens=2.5"]),
        (lambda: W.fixed(["ok", "bad \udfff"]), ValueError, ["request '1'", "character 4"]),
        (lambda: W.from_trace("azure_conv", time_scale=NAN), ValueError, ["time_scale=nan"]),
        (lambda: W.from_trace("azure_conv", time_scale=INF), ValueError, ["time_scale=inf"]),
        (lambda: W.from_trace("azure_conv", output_scale=NAN), ValueError, ["output_scale=nan"]),
        (lambda: W.from_trace("azure_conv", max_len=2.5), TypeError, ["max_len=2.5"]),
        (lambda: W.from_trace("azure_conv", max_len=True), TypeError, ["max_len=True"]),
        (lambda: W.from_trace("azure_conv", n=True), TypeError, ["n=True"]),
        (lambda: W.from_trace("azure_conv", start=1.5), TypeError, ["start=1.5"]),
        (lambda: W.from_trace("azure_conv", rate=NAN), ValueError, ["rate=nan"]),
        (lambda: W.from_trace("azure_conv", repeat="yes"), TypeError, ["repeat='yes'"]),
        (lambda: W.from_trace(42), TypeError, ["name=42"]),
    ],
)
def test_generator_arguments(call, exc, names):
    raises(exc, call, *names)


def test_numpy_ints_are_counts():
    assert len(W.synthetic(np.int64(4), prompt_len=np.int32(8), output_len=4)) == 4


def test_arguments_are_checked_before_the_trace_is_read(tmp_path):
    missing = tmp_path / "not_there.csv"
    raises(ValueError, lambda: W.from_trace(missing, time_scale=NAN), "time_scale=nan")
    with pytest.raises(FileNotFoundError, match="not_there.csv"):
        W.from_trace(missing)


# ---- trace CSV files -----------------------------------------------------------------


def write_csv(tmp_path, rows: list[str], name: str = "trace.csv", header: str = HEADER):
    path = tmp_path / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def good_rows(k: int = 6, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    t = np.cumsum(rng.uniform(0.1, 2.0, k))
    return [f"{a:.3f},{p},{d}" for a, p, d in zip(t, rng.integers(1, 900, k), rng.integers(1, 300, k), strict=True)]


@pytest.mark.parametrize(
    "bad_row, column, why",
    [
        (",20,3", "arrived_at", "blank"),  # one blank arrival used to make every arrival NaN (and hang a sim run)
        ("nan,20,3", "arrived_at", "not a number"),
        ("inf,20,3", "arrived_at", "not finite"),
        ("-4.0,20,3", "arrived_at", "negative"),
        ("1e400,20,3", "arrived_at", "not finite"),
        ("9.0,abc,3", "num_prefill_tokens", "not a number"),
        ("9.0,,3", "num_prefill_tokens", "blank"),
        ("9.0,-9,3", "num_prefill_tokens", "negative"),
        ("9.0,12.5,3", "num_prefill_tokens", "whole number"),
        ("9.0,99999999999999999999999,3", "num_prefill_tokens", "too large"),
        ("9.0,20,three", "num_decode_tokens", "not a number"),
        ("9.0,20", "num_decode_tokens", "blank"),  # a short row
        ("", "arrived_at", "blank"),  # a blank line inside the data
    ],
)
@pytest.mark.parametrize("where", [0, 3])
def test_csv_bad_cell_names_file_row_and_column(tmp_path, bad_row, column, why, where):
    rows = good_rows()
    rows.insert(where, bad_row)
    path = write_csv(tmp_path, rows)
    raises(
        ValueError,
        lambda: W.from_trace(path),
        str(path),
        f"data row {where + 1} (line {where + 2})",
        f"column {column!r}",
        why,
        f"{column} must be",
    )


def test_csv_ragged_row(tmp_path):
    rows = good_rows()
    rows[2] += ",7"
    path = write_csv(tmp_path, rows)
    raises(ValueError, lambda: W.from_trace(path), str(path), "line 4 (data row 3)", "4 fields", "num_decode_tokens")
    rows = good_rows()
    rows[0] += ",7,8"  # the first data row: pandas would otherwise take the first column as an index
    path = write_csv(tmp_path, rows, "first.csv")
    raises(ValueError, lambda: W.from_trace(path), str(path), "line 2 (data row 1)", "5 fields")


def test_csv_undecodable_bytes(tmp_path):
    rows = good_rows()
    path = tmp_path / "latin.csv"
    data = "\n".join([HEADER, *rows]).encode()
    cut = data.index(rows[3].encode()) + rows[3].index(",") + 2  # inside row 4's num_prefill_tokens
    path.write_bytes(data[:cut] + b"\xff" + data[cut:])
    raises(ValueError, lambda: W.from_trace(path), str(path), "line 5 (data row 4)", "'num_prefill_tokens'", "UTF-8")


@pytest.mark.parametrize(
    "text, names",
    [
        ("", ["empty"]),
        ("\n\n  \n", ["empty"]),
        (HEADER + "\n", ["no data rows"]),
        ("arrived_at,num_prefill_tokens\n0,5\n", ["line 1 (header)", "missing column", "num_decode_tokens"]),
        (
            "arrived_at,prompt_tokens,num_decode_tokens\n0,5,1\n",
            ["missing column", "num_prefill_tokens", "prompt_tokens"],
        ),
        ("0.0,10,2\n1.0,5,5\n", ["missing column", "looks like data"]),
        ('arrived_at,num_prefill_tokens,num_decode_tokens\n0,5,1\n"1,5,1\n', ["line 3 (data row 2)", "quote"]),
        ("num_prefill_tokens,num_prefill_tokens,num_decode_tokens\n1,2,3\n", ["appears 2 times"]),
    ],
)
def test_csv_malformed_files(tmp_path, text, names):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    raises(ValueError, lambda: W.from_trace(path), str(path), *names)


def test_csv_paths_accepted_and_read_like_pandas(tmp_path):
    rows = good_rows(40, seed=3)
    path = write_csv(tmp_path, rows)
    raw = pd.read_csv(path)
    for name in (path, str(path)):
        wl = W.from_trace(name, time_scale=2.0)
        df = wl.to_frame()
        assert wl.name == "trace" and len(wl) == len(raw)
        np.testing.assert_allclose(df["arrival"], (raw["arrived_at"] - raw["arrived_at"].min()) / 2.0)
        assert list(df["prompt_len"]) == list(raw["num_prefill_tokens"])
        assert list(df["max_tokens"]) == list(raw["num_decode_tokens"])
    plain = tmp_path / "trace_without_suffix"
    plain.write_bytes(path.read_bytes())
    assert W.from_trace(str(plain)).to_frame()["prompt_len"].tolist() == list(raw["num_prefill_tokens"])
    # CRLF line ends, a byte-order mark, trailing blank lines, no arrivals and zero counts are fine
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(b"\xef\xbb\xbfnum_decode_tokens,num_prefill_tokens\r\n0,7\r\n4,0\r\n\r\n")
    df = W.from_trace(crlf).to_frame()
    assert list(df["prompt_len"]) == [7, 1] and list(df["max_tokens"]) == [1, 4] and (df["arrival"] == 0).all()


def test_csv_path_equals_builtin_name():
    by_name = W.from_trace("azure_code", n=300, start=7, max_len=1024, seed=2).to_frame()
    by_path = W.from_trace(W.datasets_dir() / "splitwise_code.csv", n=300, start=7, max_len=1024, seed=2)
    pd.testing.assert_frame_equal(by_path.to_frame(), by_name)
    assert by_path.name == "splitwise_code"


def test_unknown_names_and_missing_files(tmp_path):
    raises(ValueError, lambda: W.from_trace("sharegpt"), "'sharegpt'", "azure_conv", "path of a CSV file")
    with pytest.raises(FileNotFoundError) as e:
        W.from_trace(str(tmp_path / "gone.csv"))
    assert "gone.csv" in str(e.value) and "azure_conv" in str(e.value)


def test_builtin_traces_are_cached_user_files_are_not(tmp_path):
    W.from_trace("azure_code", n=3)
    hits = W._builtin_trace.cache_info().hits
    W.from_trace("azure_code", n=3)
    assert W._builtin_trace.cache_info().hits == hits + 1
    path = write_csv(tmp_path, ["0,10,2", "1,20,3"])
    assert [it.prompt_len for it in W.from_trace(path)] == [10, 20]
    write_csv(tmp_path, ["0,11,2", "1,21,3"])  # edited in place: read afresh
    assert [it.prompt_len for it in W.from_trace(path)] == [11, 21]


def test_n_beyond_the_trace_is_refused_unless_repeat(tmp_path):
    rows = good_rows(5, seed=1)
    path = write_csv(tmp_path, rows)
    raises(ValueError, lambda: W.from_trace(path, n=6), "n=6", "5 rows", "repeat=True")
    raises(ValueError, lambda: W.from_trace(path, n=4, start=2), "n=4", "3 of them from start=2", "n <= 3")
    size = len(pd.read_csv(W.datasets_dir() / "splitwise_conv.csv"))
    raises(ValueError, lambda: W.from_trace("azure_conv", n=50000), "n=50000", f"{size} rows", "repeat=True")


def test_repeat_cycles_rows_with_later_arrivals(tmp_path):
    rows = good_rows(5, seed=1)
    path = write_csv(tmp_path, rows)
    raw = pd.read_csv(path)
    wl = W.from_trace(path, n=13, start=2, repeat=True)
    df = wl.to_frame()
    order = [(2 + i) % 5 for i in range(13)]
    assert list(df["prompt_len"]) == list(raw["num_prefill_tokens"].iloc[order])
    assert list(df["max_tokens"]) == list(raw["num_decode_tokens"].iloc[order])
    t = df["arrival"].to_numpy()
    assert t[0] == 0 and (np.diff(t) > 0).all()
    at = raw["arrived_at"].to_numpy()
    gap = (at[-1] - at[0]) / 4  # the trace's mean gap
    # within a pass, gaps are the trace's own; between passes, the next pass starts one mean gap later
    np.testing.assert_allclose(np.diff(t[:3]), np.diff(at[2:]))
    np.testing.assert_allclose(t[3] - t[2], gap)
    np.testing.assert_allclose(t[8:13] - t[3:8], at[-1] - at[0] + gap)
    # repeat changes nothing when n fits
    pd.testing.assert_frame_equal(W.from_trace(path, n=3, repeat=True).to_frame(), W.from_trace(path, n=3).to_frame())


def test_repeat_on_the_azure_trace():
    wl = W.from_trace("azure_conv", n=50000, repeat=True, time_scale=10.0)
    t = np.array([it.arrival for it in wl])
    assert len(wl) == 50000 and np.isfinite(t).all() and (np.diff(t) >= 0).all()
    assert wl[19366].prompt_len == wl[0].prompt_len and wl[19366].arrival > wl[19365].arrival


# ---- prompt length limit -------------------------------------------------------------


class NoTokenizer:
    """Fails the test if anything is tokenized: a refused prompt must be refused before any work."""

    name_or_path = "none"

    def encode(self, *args, **kwargs):
        raise AssertionError("tokenized a prompt that should have been refused first")


def test_limit_refuses_long_corpus_window_before_building():
    item = WorkItem("big", prompt_len=2 * 10**7)
    raises(
        ValueError,
        lambda: prompt_token_ids(item, NoTokenizer(), limit=4096),
        "request 'big'",
        "20000000 tokens",
        "4096",
        "max_model_len",
    )
    ids = list(range(1, 301))
    raises(ValueError, lambda: prompt_token_ids(WorkItem("ids", prompt=ids), NoTokenizer(), limit=299), "'ids'", "300")
    assert prompt_token_ids(WorkItem("ids", prompt=ids), NoTokenizer(), limit=300) == ids


@pytest.mark.parametrize("limit, exc", [(0, ValueError), (2.5, TypeError), (True, TypeError), ("10", TypeError)])
def test_limit_argument(limit, exc):
    raises(exc, lambda: prompt_token_ids(WorkItem("a", prompt=[1]), NoTokenizer(), limit=limit), "limit=")


@pytest.fixture(scope="module")
def tok(smollm2_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_path)


def test_limit_with_a_real_tokenizer(tok):
    text = "What is the capital of France, and why did it become the capital?"
    n = len(tok.encode(text, add_special_tokens=False))
    assert prompt_token_ids(WorkItem("t", prompt=text), tok, limit=n) == tok.encode(text, add_special_tokens=False)
    raises(
        ValueError, lambda: prompt_token_ids(WorkItem("t", prompt=text), tok, limit=n - 1), f"{n} tokens", str(n - 1)
    )
    chat = prompt_token_ids(WorkItem("c", prompt=text, chat=True), tok)
    raises(ValueError, lambda: prompt_token_ids(WorkItem("c", prompt=text, chat=True), tok, limit=len(chat) - 1), "'c'")
    window = prompt_token_ids(WorkItem("w", prompt_len=64, corpus_offset=10), tok, limit=64)
    assert len(window) == 64 and window == prompt_token_ids(WorkItem("w", prompt_len=64, corpus_offset=10), tok)
