"""Trace: DataFrame views derived from records, save/load round trips, malformed files."""

import gzip
import json
import threading

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

import llmlab
from llmlab.core.records import (
    Completion,
    EngineInfo,
    KVSnapshot,
    RequestRecord,
    Slot,
    StepRecord,
)
from llmlab.session.run import Run, SavedRunError
from llmlab.session.trace import Trace, TraceFileError, load_trace

STEP_COLUMNS = [
    "step", "t_start", "t_end", "duration", "batch_size", "prefill_tokens", "decode_tokens",
    "num_prefill_reqs", "num_decode_reqs", "waiting", "running", "admitted", "preempted",
    "finished", "kv_used", "kv_cached", "kv_free", "kv_total", "prefix_hit_tokens", "source",
]  # fmt: skip
REQUEST_COLUMNS = [
    "req_id", "arrival", "first_scheduled", "first_token", "finish", "prompt_tokens",
    "output_tokens", "cached_tokens", "num_preemptions", "finish_reason", "error", "ttft", "e2e",
    "tpot", "queue_time",
]  # fmt: skip


def make_info() -> EngineInfo:
    return EngineInfo(
        engine="sim",
        version="0.1",
        model="smollm2-135m",
        device="cpu",
        dtype="float32",
        config={"block_size": 4, "num_blocks": 16, "policy": "chunked"},
        views={"steps": "exact", "kv": "exact"},
    )


def make_trace() -> Trace:
    """Three requests over four steps; step 2 has no KV snapshot; request c never finishes."""
    t = Trace(make_info())
    t.add_step(
        StepRecord(
            step=0,
            t_start=0.0,
            t_end=0.125,
            batch=[Slot("a", "prefill", 7, 7), Slot("b", "prefill", 5, 5)],
            waiting=1,
            running=2,
            admitted=["a", "b"],
            kv=KVSnapshot(4, 16, used=4, cached=0, free=12, owners={0: ["a"], 1: ["a"], 2: ["b"], 3: ["b"]}),
        )
    )
    t.add_step(
        StepRecord(
            step=1,
            t_start=0.125,
            t_end=0.2,
            batch=[Slot("a", "decode", 1, 8), Slot("b", "decode", 1, 6), Slot("c", "prefill", 3, 3)],
            waiting=0,
            running=3,
            admitted=["c"],
            prefix_hit_tokens=4,
            kv=KVSnapshot(4, 16, used=5, cached=1, free=11),
        )
    )
    t.add_step(
        StepRecord(
            step=2,
            t_start=0.2,
            t_end=0.26,
            batch=[Slot("a", "decode", 1, 9), Slot("c", "decode", 1, 4)],
            waiting=1,
            running=2,
            preempted=["b"],
            finished=["a"],
            source="derived",
        )
    )
    t.add_step(
        StepRecord(
            step=3,
            t_start=0.26,
            t_end=0.3,
            batch=[Slot("b", "prefill", 6, 6)],
            waiting=0,
            running=2,
            admitted=["b"],
            finished=["b"],
            kv=KVSnapshot(4, 16, used=3, cached=2, free=13),
        )
    )
    t.add_request(
        RequestRecord(
            "a",
            arrival=0.0,
            prompt_tokens=7,
            first_scheduled=0.0,
            first_token=0.125,
            finish=0.26,
            output_tokens=3,
            finish_reason="length",
            token_times=[0.125, 0.2, 0.26],
        )
    )
    t.add_request(
        RequestRecord(
            "b",
            arrival=0.01,
            prompt_tokens=5,
            first_scheduled=0.01,
            first_token=0.125,
            finish=0.3,
            output_tokens=1,
            cached_tokens=4,
            num_preemptions=1,
            finish_reason="stop",
            token_times=[0.125],
        )
    )
    t.add_request(
        RequestRecord(
            "c",
            arrival=0.1,
            prompt_tokens=3,
            first_scheduled=0.125,
            first_token=0.2,
            output_tokens=2,
            token_times=[0.2, 0.26],
        )
    )
    t.add_output(Completion("a", "Paris is", [11, 12, 13], "length", [1, 2, 3, 4, 5, 6, 7]))
    t.add_output(Completion("b", ".", [2], "stop", [9, 8, 7, 6, 5]))
    return t


def test_steps_frame_derives_from_records():
    t = make_trace()
    df = t.steps
    assert list(df.columns) == STEP_COLUMNS
    assert len(df) == 4
    for row, rec in zip(df.itertuples(index=False), t.step_records, strict=True):
        assert row.step == rec.step
        assert row.duration == pytest.approx(rec.t_end - rec.t_start)
        assert row.batch_size == len(rec.batch)
        assert row.prefill_tokens == sum(s.num_tokens for s in rec.batch if s.phase == "prefill")
        assert row.decode_tokens == sum(s.num_tokens for s in rec.batch if s.phase == "decode")
        assert row.num_prefill_reqs == sum(s.phase == "prefill" for s in rec.batch)
        assert row.num_decode_reqs == sum(s.phase == "decode" for s in rec.batch)
        assert (row.admitted, row.preempted, row.finished) == (len(rec.admitted), len(rec.preempted), len(rec.finished))
        assert (row.waiting, row.running) == (rec.waiting, rec.running)
        assert row.prefix_hit_tokens == rec.prefix_hit_tokens
        assert row.source == rec.source
        if rec.kv is None:
            assert np.isnan([row.kv_used, row.kv_cached, row.kv_free, row.kv_total]).all()
        else:
            assert (row.kv_used, row.kv_cached, row.kv_free, row.kv_total) == (
                rec.kv.used,
                rec.kv.cached,
                rec.kv.free,
                rec.kv.num_blocks,
            )


def test_requests_frame_latencies():
    t = make_trace()
    df = t.requests.set_index("req_id")
    assert list(t.requests.columns) == REQUEST_COLUMNS
    assert list(df.index) == ["a", "b", "c"]  # insertion order
    for rid, r in t.request_records.items():
        row = df.loc[rid]
        assert row["ttft"] == pytest.approx(r.first_token - r.arrival)
        assert row["queue_time"] == pytest.approx(r.first_scheduled - r.arrival)
        assert row["prompt_tokens"] == r.prompt_tokens
        assert row["cached_tokens"] == r.cached_tokens
        if r.finish is None:
            assert np.isnan(row["e2e"]) and np.isnan(row["tpot"])
        else:
            assert row["e2e"] == pytest.approx(r.finish - r.arrival)
    assert df.loc["a", "tpot"] == pytest.approx((0.26 - 0.125) / 2)
    assert np.isnan(df.loc["b", "tpot"])  # one output token: no time per output token
    assert df.loc["b", "finish_reason"] == "stop"
    assert pd.isna(df.loc["c", "finish_reason"])


def test_slots_and_itl_frames():
    t = make_trace()
    slots = t.slots
    assert list(slots.columns) == ["step", "req_id", "phase", "num_tokens", "context_len"]
    expected = [(r.step, s.req_id, s.phase, s.num_tokens, s.context_len) for r in t.step_records for s in r.batch]
    assert list(slots.itertuples(index=False, name=None)) == expected

    itl = t.itl
    assert list(itl.columns) == ["req_id", "itl"]
    assert list(itl["req_id"]) == ["a", "a", "c"]
    np.testing.assert_allclose(itl["itl"], [0.2 - 0.125, 0.26 - 0.2, 0.26 - 0.2])


def test_empty_trace_has_columns():
    t = Trace(make_info())
    assert list(t.steps.columns) == STEP_COLUMNS and t.steps.empty
    assert list(t.requests.columns) == REQUEST_COLUMNS and t.requests.empty
    assert list(t.slots.columns) == ["step", "req_id", "phase", "num_tokens", "context_len"]
    assert list(t.itl.columns) == ["req_id", "itl"] and t.itl.empty
    assert "0 steps" in repr(t)


def test_kv_columns_numeric_when_no_snapshot_at_all():
    t = Trace(make_info())
    t.add_step(StepRecord(0, 0.0, 0.1, [Slot("a", "prefill", 3, 3)], waiting=0, running=1))
    assert t.steps["kv_used"].dtype == "float64" and t.steps["kv_used"].isna().all()


def test_add_request_replaces_by_id():
    t = make_trace()
    t.add_request(RequestRecord("a", arrival=0.0, prompt_tokens=99))
    assert list(t.request_records) == ["a", "b", "c"]
    assert t.requests.set_index("req_id").loc["a", "prompt_tokens"] == 99


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
def test_round_trip(tmp_path, suffix):
    t = make_trace()
    path = tmp_path / f"run{suffix}"
    t.save(path)
    u = Trace.load(path)
    assert u.info == t.info
    assert u.step_records == t.step_records  # including kv owners with int block ids
    assert u.request_records == t.request_records
    assert u.outputs == t.outputs
    for view in ("steps", "requests", "slots", "itl"):
        assert_frame_equal(getattr(u, view), getattr(t, view))
    assert_frame_equal(load_trace(str(path)).steps, t.steps)


def test_empty_round_trip(tmp_path):
    t = Trace(make_info())
    for suffix in (".jsonl", ".parquet"):
        u = Trace.load(t.save(tmp_path / f"e{suffix}"))
        assert_frame_equal(u.steps, t.steps)
        assert_frame_equal(u.requests, t.requests)


def test_jsonl_layout(tmp_path):
    path = make_trace().save(tmp_path / "run.jsonl")
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["record"] == "info" and lines[0]["version"] == 1
    assert lines[0]["info"]["engine"] == "sim"
    kinds = [d["record"] for d in lines[1:]]
    assert kinds == ["step"] * 4 + ["request"] * 3 + ["output"] * 2


def test_parquet_layout(tmp_path):
    path = make_trace().save(tmp_path / "run.parquet")
    f = pq.ParquetFile(path)
    assert f.schema_arrow.names == ["record", "payload"]
    assert b"llmlab.info" in f.schema_arrow.metadata
    assert f.metadata.row_group(0).column(0).compression == "ZSTD"
    assert f.metadata.num_rows == 9


def test_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv.*\.jsonl.*\.parquet"):
        make_trace().save(tmp_path / "run.csv")
    with pytest.raises(ValueError, match=r"\.pkl"):
        Trace.load(tmp_path / "run.pkl")


def _good_lines(tmp_path) -> list[str]:
    return make_trace().save(tmp_path / "good.jsonl").read_text().splitlines()


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    "case, where, what",
    [
        ("not_json", "line 3", "not JSON"),
        ("no_header", "line 1", "info header"),
        ("unknown_kind", "line 2", "unknown record kind 'stepp'"),
        ("wrong_fields", "line 6", "wrong fields"),
        ("not_object", "line 2", "JSON object"),
        ("empty", "", "info header"),
    ],
)
def test_malformed_jsonl(tmp_path, case, where, what):
    lines = _good_lines(tmp_path)
    if case == "not_json":
        lines[2] = "{this is not json"
    elif case == "no_header":
        lines = lines[1:]
    elif case == "unknown_kind":
        lines[1] = lines[1].replace('"record": "step"', '"record": "stepp"')
    elif case == "wrong_fields":
        d = json.loads(lines[5])
        d["prompt_tokenz"] = d.pop("prompt_tokens")
        lines[5] = json.dumps(d)
    elif case == "not_object":
        lines[1] = "[1, 2, 3]"
    elif case == "empty":
        lines = []
    path = _write(tmp_path / "bad.jsonl", lines)
    with pytest.raises(ValueError) as e:
        Trace.load(path)
    msg = str(e.value)
    assert str(path) in msg and where in msg and what in msg
    assert "not written by Run.save" in msg and "run.save(path)" in msg


def test_malformed_jsonl_gz_and_binary(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(ValueError, match="bad.jsonl.gz.*run.save"):
        Trace.load(path)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="bad.jsonl.*run.save"):
        Trace.load(path)
    path = tmp_path / "bad2.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write('{"record": "info", "version": 99, "info": {}}\n')
    with pytest.raises(ValueError, match="version 99"):
        Trace.load(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.parquet"
    with pytest.raises(ValueError, match="nope.parquet.*no such file.*run.save") as e:
        Trace.load(path)
    assert isinstance(e.value, FileNotFoundError)


def _write_parquet(path, kinds, payloads, metadata):
    table = pa.table({"record": pa.array(kinds, pa.string()), "payload": pa.array(payloads, pa.string())})
    pq.write_table(table.replace_schema_metadata(metadata), path)
    return path


def test_malformed_parquet(tmp_path):
    header = {b"llmlab.info": json.dumps({"record": "info", "version": 1, "info": make_info().to_dict()})}
    step = json.dumps(make_trace().step_records[0].to_dict())
    cases = [
        (dict(kinds=["step"], payloads=[step], metadata={}), "info header"),
        (dict(kinds=["step", "nope"], payloads=[step, step], metadata=header), "row 1: unknown record kind"),
        (dict(kinds=["step", "step"], payloads=[step, "{oops"], metadata=header), "row 1: payload is not JSON"),
        (dict(kinds=["request"], payloads=[step], metadata=header), "row 0: request record has wrong fields"),
        (dict(kinds=["step"], payloads=[step], metadata={b"llmlab.info": b"{"}), "info header is not JSON"),
    ]
    for i, (kw, what) in enumerate(cases):
        path = _write_parquet(tmp_path / f"bad{i}.parquet", **kw)
        with pytest.raises(ValueError) as e:
            Trace.load(path)
        msg = str(e.value)
        assert str(path) in msg and what in msg and "run.save(path)" in msg, msg

    path = tmp_path / "text.parquet"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not a readable Parquet file"):
        Trace.load(path)
    path = tmp_path / "cols.parquet"
    pq.write_table(pa.table({"x": [1]}).replace_schema_metadata(header), path)
    with pytest.raises(ValueError, match="columns"):
        Trace.load(path)


def test_views_while_an_engine_thread_appends():
    t = Trace(make_info())
    stop = threading.Event()

    def engine() -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            t.add_step(StepRecord(i, i * 0.01, i * 0.01 + 0.01, [Slot(str(i), "prefill", 2, 2)], 0, 1))
            t.add_request(RequestRecord(str(i), arrival=i * 0.01, prompt_tokens=2))
            i += 1

    th = threading.Thread(target=engine)
    th.start()
    try:
        for _ in range(20):
            steps, slots = t.steps, t.slots
            assert steps["step"].is_monotonic_increasing
            assert len(slots) >= len(steps) or len(t.step_records) > len(steps)
            t.requests  # noqa: B018  (must not raise while the dict grows)
    finally:
        stop.set()
        th.join()
    assert len(t.steps) == len(t.step_records)


def test_requests_frame_dtypes_stable():
    t = make_trace()
    df = t.requests
    for c in ("arrival", "first_scheduled", "first_token", "finish", "ttft", "e2e", "tpot"):
        assert df[c].dtype == "float64"
    assert pd.api.types.is_integer_dtype(df["prompt_tokens"])


# ---- field checks on load ------------------------------------------------------------


def _set(path: list, value):
    """A mutation that sets d[path[0]][path[1]]... = value in a record's dict."""

    def mutate(d):
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value

    return mutate


def _drop(key: str):
    return lambda d: d.pop(key)


# (which record in the file: 0 = info header, 1-4 steps, 5-7 requests, 8-9 outputs; mutation; field named)
BAD_FIELDS = [
    (5, _set(["arrival"], "0.5"), "'arrival' is '0.5' (a str), expected a finite number"),
    (5, _set(["arrival"], float("nan")), "'arrival' is nan"),
    (6, _set(["finish"], float("inf")), "'finish' is inf"),
    (5, _set(["token_times", 1], "x"), "'token_times[1]'"),
    (5, _set(["token_times"], {"a": 1}), "'token_times'"),
    (7, _set(["prompt_tokens"], 3.0), "'prompt_tokens' is 3.0 (a float), expected a whole number >= 0"),
    (7, _set(["num_preemptions"], -1), "'num_preemptions' is -1"),
    (6, _set(["output_tokens"], True), "'output_tokens' is True (a bool)"),
    (6, _set(["req_id"], 7), "'req_id' is 7 (an int), expected a string"),
    (6, _set(["error"], ["boom"]), "'error'"),
    (6, _drop("prompt_tokens"), "missing field 'prompt_tokens'"),
    (6, _set(["extra"], 1), "unknown field 'extra'"),
    (1, _set(["t_start"], "0"), "'t_start'"),
    (2, _set(["t_end"], None), "'t_end' is None"),
    (2, _set(["batch", 2, "num_tokens"], "3"), "'batch[2].num_tokens' is '3'"),
    (2, _set(["batch", 0, "phase"], "both"), "'batch[0].phase' is 'both'"),
    (2, _set(["batch", 1], [1, 2]), "'batch[1]'"),
    (3, _set(["waiting"], 1.5), "'waiting' is 1.5"),
    (3, _set(["preempted", 0], 5), "'preempted[0]' is 5"),
    (1, _set(["kv", "used"], "4"), "'kv.used' is '4'"),
    (1, _set(["kv", "owners", "x"], ["a"]), "'kv.owners key' is 'x'"),
    (4, _set(["source"], "guessed"), "'source' is 'guessed'"),
    (8, _set(["token_ids", 1], -3), "'token_ids[1]' is -3"),
    (9, _set(["text"], None), "'text' is None"),
    (9, _set(["cached_tokens"], 2**64), "'cached_tokens' is 18446744073709551616"),
]


@pytest.mark.parametrize("index, mutate, field", BAD_FIELDS)
def test_bad_field_in_jsonl_names_file_line_and_field(tmp_path, index, mutate, field):
    lines = _good_lines(tmp_path)
    d = json.loads(lines[index])
    mutate(d)
    lines[index] = json.dumps(d)
    for name, write in (("bad.jsonl", _write), ("bad.jsonl.gz", _write_gz)):
        path = write(tmp_path / name, lines)
        with pytest.raises(TraceFileError) as e:
            Trace.load(path)
        msg = str(e.value)
        assert isinstance(e.value, ValueError)
        assert str(path) in msg and f"line {index + 1}:" in msg and field in msg, msg
        assert "run.save(path)" in msg


@pytest.mark.parametrize("index, mutate, field", [f for f in BAD_FIELDS if f[0] > 0])
def test_bad_field_in_parquet_names_file_row_and_field(tmp_path, index, mutate, field):
    good = pq.read_table(make_trace().save(tmp_path / "good.parquet"))
    kinds, payloads = good.column("record").to_pylist(), good.column("payload").to_pylist()
    d = json.loads(payloads[index - 1])
    mutate(d)
    payloads[index - 1] = json.dumps(d)
    path = _write_parquet(tmp_path / "bad.parquet", kinds, payloads, good.schema.metadata)
    with pytest.raises(TraceFileError) as e:
        Trace.load(path)
    msg = str(e.value)
    assert str(path) in msg and f"row {index - 1}:" in msg and field in msg, msg


@pytest.mark.parametrize(
    "mutate, field",
    [
        (_set(["info", "model"], 5), "'info.model' is 5"),
        (_set(["info", "config"], []), "'info.config'"),
        (_set(["info", "views", "kv"], 1), "'info.views.kv' is 1"),
        (_set(["run"], {"status": "exploded"}), "'run.status' is 'exploded'"),
        (_set(["run"], {"status": "failed", "error": 3}), "'run.error' is 3"),
        (_set(["run"], {"status": "failed", "total": -1}), "'run.total' is -1"),
        (_set(["run"], {"error": "x"}), "missing field 'run.status'"),
    ],
)
def test_bad_header_field(tmp_path, mutate, field):
    lines = _good_lines(tmp_path)
    header = json.loads(lines[0])
    mutate(header)
    path = _write(tmp_path / "bad.jsonl", [json.dumps(header), *lines[1:]])
    with pytest.raises(TraceFileError) as e:
        Trace.load(path)
    msg = str(e.value)
    assert str(path) in msg and "line 1" in msg and "info header" in msg and field in msg, msg


def test_deeply_nested_json_is_a_trace_file_error(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    lines = _good_lines(tmp_path)
    lines[3] = '{"record": "step", "batch": ' + deep + "}"
    path = _write(tmp_path / "deep.jsonl", lines)
    with pytest.raises(TraceFileError, match=r"deep\.jsonl, line 4: .*nested too deeply.*run\.save"):
        Trace.load(path)
    path = _write(tmp_path / "deep_header.jsonl", ['{"record": "info", "info": ' + deep + "}"])
    with pytest.raises(TraceFileError, match=r"deep_header\.jsonl, line 1: .*nested too deeply"):
        Trace.load(path)
    header = {b"llmlab.info": json.dumps({"record": "info", "version": 1, "info": make_info().to_dict()})}
    path = _write_parquet(tmp_path / "deep.parquet", ["step"], [deep], header)
    with pytest.raises(TraceFileError, match=r"deep\.parquet, row 0: payload.*nested too deeply"):
        Trace.load(path)


def test_huge_integer_is_a_trace_file_error(tmp_path):
    lines = _good_lines(tmp_path)
    lines[5] = lines[5].replace('"prompt_tokens": 7', '"prompt_tokens": ' + "9" * 5000)
    path = _write(tmp_path / "huge.jsonl", lines)
    with pytest.raises(TraceFileError, match=r"huge\.jsonl, line 6 is not JSON"):
        Trace.load(path)


# ---- request errors and run status ---------------------------------------------------


def _write_gz(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def test_request_error_column_round_trips(tmp_path):
    t = make_trace()
    t.add_request(
        RequestRecord("d", arrival=0.2, prompt_tokens=4, finish=0.21, finish_reason="error", error="decode failed: NaN")
    )
    df = t.requests.set_index("req_id")
    assert df.loc["d", "error"] == t.request_records["d"].error
    assert df.loc[["a", "b", "c"], "error"].isna().all()
    for suffix in (".jsonl", ".jsonl.gz", ".parquet"):
        u = Trace.load(t.save(tmp_path / f"err{suffix}"))
        assert u.request_records == t.request_records
        assert_frame_equal(u.requests, t.requests)


def test_files_without_the_error_field_still_load(tmp_path):
    lines = _good_lines(tmp_path)
    old = []
    for line in lines:
        d = json.loads(line)
        if d["record"] == "request":
            del d["error"]  # as written before RequestRecord.error existed
        old.append(json.dumps(d))
    u = Trace.load(_write(tmp_path / "old.jsonl", old))
    assert all(r.error is None for r in u.request_records.values())
    assert_frame_equal(u.requests, make_trace().requests)


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz", ".parquet"])
@pytest.mark.parametrize(
    "status, error",
    [("failed", ValueError("injected failure at step 3")), ("stopped", None), ("finished", None), ("failed", None)],
)
def test_run_status_and_error_round_trip(tmp_path, suffix, status, error):
    run = Run(make_trace(), total=5)
    run.status, run.error = status, error
    path = run.save(tmp_path / f"run{suffix}")
    back = llmlab.load(path)
    assert back.status == status and back.total == run.total
    assert back.num_finished == run.num_finished
    if error is None:
        assert back.error is None
    else:
        assert isinstance(back.error, RuntimeError) and isinstance(back.error, SavedRunError)
        assert str(back.error) == str(error) and back.error.error_type == type(error).__name__
        assert repr(back) == repr(run)  # shows the same status and error as the run that was saved
        again = Run.load(back.save(tmp_path / f"again{suffix}"))  # the error type survives a second save
        assert str(again.error) == str(error) and again.error.error_type == type(error).__name__
    assert_frame_equal(back.requests, run.requests)


def test_live_run_saves_as_stopped_and_old_files_load_as_finished(tmp_path):
    run = Run(make_trace(), total=9)
    run.status = "running"
    back = Run.load(run.save(tmp_path / "live.jsonl"))
    assert back.status == "stopped" and back.total == 9 and back.error is None
    # Trace.save (and files from before run status existed) have no status: they load as finished
    path = make_trace().save(tmp_path / "old.parquet")
    old = llmlab.load(path)
    assert old.status == "finished" and old.error is None and old.total == len(old.trace.request_records)
    header = json.loads(make_trace().save(tmp_path / "old.jsonl").read_text().splitlines()[0])
    assert "run" not in header


def test_error_without_message_saves_its_class(tmp_path):
    run = Run(make_trace())
    run.status, run.error = "failed", MemoryError()
    back = Run.load(run.save(tmp_path / "oom.jsonl"))
    assert back.status == "failed" and "MemoryError" in str(back.error) and back.error.error_type == "MemoryError"
