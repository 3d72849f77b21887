"""A run's records and the pandas views of them, saved and loaded as JSON lines or Parquet.

The engine thread appends records while a notebook reads; every view works on a snapshot
copy taken under a lock, so a half-written run still gives consistent frames.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import reprlib
import threading
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from llmlab.core.records import (
    Completion,
    DecodeRun,
    EngineInfo,
    KVSnapshot,
    RequestRecord,
    ServerSample,
    Slot,
    StepRecord,
)

FORMAT_VERSION = 1
SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
_META_KEY = b"llmlab.info"
_FIX = "this file was not written by Run.save; llmlab.load accepts .jsonl and .parquet files written by run.save(path)"

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
_REQUEST_FIELDS = REQUEST_COLUMNS[:11]  # the columns read from the records; the rest are derived
SLOT_COLUMNS = ["step", "req_id", "phase", "num_tokens", "context_len"]
ITL_COLUMNS = ["req_id", "itl"]
SAMPLE_COLUMNS = [f.name for f in dataclasses.fields(ServerSample)]

_TIME_COLUMNS = ("arrival", "first_scheduled", "first_token", "finish")


class TraceFileError(ValueError):
    """A trace file that cannot be read: names the file, the line, what is wrong and the fix."""


class TraceFileNotFound(TraceFileError, FileNotFoundError):
    """A trace path that does not exist (both a ValueError and a FileNotFoundError)."""


class Trace:
    """Engine info plus step, request and output records, with DataFrame views of them."""

    def __init__(
        self,
        info: EngineInfo,
        step_records: list[StepRecord] | None = None,
        request_records: dict[str, RequestRecord] | None = None,
        outputs: dict[str, Completion] | None = None,
    ) -> None:
        self.info = info
        self._entries: list[StepRecord | DecodeRun] = list(step_records or [])  # in step order
        self._num_steps = len(self._entries)
        self._expanded: list[StepRecord] = []  # step_records, expanded up to _expanded_upto entries
        self._expanded_upto = 0
        self.request_records: dict[str, RequestRecord] = dict(request_records or {})
        self.outputs: dict[str, Completion] = dict(outputs or {})
        self.sample_records: list[ServerSample] = []  # a server's polled metrics (runs measured from outside)
        self._lock = threading.Lock()

    def add_step(self, rec: StepRecord | DecodeRun) -> None:
        """Append one scheduler step, or a `DecodeRun` of several."""
        with self._lock:
            self._entries.append(rec)
            self._num_steps += rec.num_steps if isinstance(rec, DecodeRun) else 1

    def add_request(self, rec: RequestRecord) -> None:
        """Add (or replace, by req_id) a request's record; insertion order is kept."""
        with self._lock:
            self.request_records[rec.req_id] = rec

    def add_sample(self, rec: ServerSample) -> None:
        """Append one polled sample of a server's metrics."""
        with self._lock:
            self.sample_records.append(rec)

    def add_output(self, c: Completion) -> None:
        """Add (or replace, by req_id) a finished request's output."""
        with self._lock:
            self.outputs[c.req_id] = c

    @property
    def step_records(self) -> list[StepRecord]:
        """Every step as a `StepRecord` (compact `DecodeRun`s expanded once, on first read)."""
        with self._lock:
            for entry in self._entries[self._expanded_upto :]:
                if isinstance(entry, DecodeRun):
                    self._expanded.extend(entry.expand())
                else:
                    self._expanded.append(entry)
            self._expanded_upto = len(self._entries)
            return list(self._expanded)

    def _snapshot(self) -> tuple[list[StepRecord | DecodeRun], list[RequestRecord], list[Completion]]:
        with self._lock:
            return (
                list(self._entries),
                list(self.request_records.values()),
                list(self.outputs.values()),
            )

    def __len__(self) -> int:
        return self._num_steps

    @property
    def num_records(self) -> int:
        """Step records as stored: a `DecodeRun` counts once, however many steps it covers."""
        return len(self._entries)

    def __repr__(self) -> str:
        i = self.info
        return f"Trace({i.engine} {i.model} on {i.device}: {len(self)} steps, {len(self.request_records)} requests)"

    # ---- DataFrame views -------------------------------------------------------------

    @property
    def steps(self) -> pd.DataFrame:
        """One row per scheduler step: batch make-up, queue lengths and KV pool use."""
        entries = self._snapshot()[0]
        if not entries:
            return _frame({}, STEP_COLUMNS, {"source": "str"})
        return _step_table(entries)

    @property
    def requests(self) -> pd.DataFrame:
        """One row per request: timestamps, token counts, how it ended (finish_reason, and `error`:
        why it failed alone, else None) and the derived latencies (seconds)."""
        fields = _REQUEST_FIELDS
        recs = self._snapshot()[1]
        columns = {k: [getattr(r, k) for r in recs] for k in fields} if recs else {}
        df = _frame(columns, fields, {"req_id": "str", "finish_reason": "str", "error": "str"})
        df[list(_TIME_COLUMNS)] = df[list(_TIME_COLUMNS)].astype("float64")
        df["ttft"] = df["first_token"] - df["arrival"]
        df["e2e"] = df["finish"] - df["arrival"]
        decode_gaps = (df["output_tokens"] - 1).where(df["output_tokens"] > 1)
        df["tpot"] = (df["finish"] - df["first_token"]) / decode_gaps
        df["queue_time"] = df["first_scheduled"] - df["arrival"]
        return df

    @property
    def samples(self) -> pd.DataFrame:
        """One row per polled server sample (time, queues, KV use, counters); empty for in-process runs."""
        with self._lock:
            recs = list(self.sample_records)
        data = {c: [getattr(r, c) for r in recs] for c in SAMPLE_COLUMNS}
        df = pd.DataFrame(data, columns=SAMPLE_COLUMNS)
        num = [c for c in SAMPLE_COLUMNS if c != "source"]
        df[num] = df[num].astype("float64")
        return df

    @property
    def slots(self) -> pd.DataFrame:
        """One row per (step, request) in a batch: phase, tokens computed and context length."""
        columns, rows, places = _slot_parts(self._snapshot()[0])
        if not len(rows):
            return _frame({}, SLOT_COLUMNS, {"req_id": "str", "phase": "str"})
        # each slot sorts by its step's row in the steps frame, then its place in the batch
        width = 1 + int(places.max())
        order = np.argsort(rows * width + places, kind="stable")
        return pd.DataFrame({c: v[order] for c, v in columns.items()})

    @property
    def itl(self) -> pd.DataFrame:
        """Inter-token latencies, long form: one row per gap between consecutive tokens."""
        recs = self._snapshot()[1]
        counts = np.fromiter((len(r.token_times) for r in recs), "int64", len(recs))
        times = np.fromiter(chain.from_iterable(r.token_times for r in recs), "float64", int(counts.sum()))
        later = np.ones(len(times), dtype=bool)  # every token but each request's first
        later[(np.cumsum(counts) - counts)[counts > 0]] = False
        itl = np.diff(times, prepend=0.0)[later]
        ids = np.repeat(np.asarray([r.req_id for r in recs], dtype=object), np.maximum(counts - 1, 0))
        return pd.DataFrame({"req_id": pd.Series(ids, dtype="str"), "itl": itl})

    # ---- files -----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the trace as JSON lines (.jsonl, .jsonl.gz) or Parquet (.parquet); no pickle."""
        return self._save(path)

    def _save(self, path: str | Path, run: dict[str, Any] | None = None) -> Path:
        """`save`, with a run's status in the header when `run` is given (see `Run.save`)."""
        path = Path(path)
        suffix = _suffix(path)
        header = {"record": "info", "version": FORMAT_VERSION, "info": self.info.to_dict()}
        if run is not None:
            header["run"] = run
        records = list(self._records())
        if suffix == ".parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table(
                {
                    "record": pa.array([k for k, _ in records], pa.string()),
                    "payload": pa.array([json.dumps(d) for _, d in records], pa.string()),
                }
            )
            table = table.replace_schema_metadata({_META_KEY: json.dumps(header).encode()})
            pq.write_table(table, path, compression="zstd")
        else:
            opener: Callable[..., Any] = gzip.open if suffix == ".jsonl.gz" else open
            with opener(path, "wt", encoding="utf-8") as f:
                f.write(json.dumps(header) + "\n")
                for kind, d in records:
                    f.write(json.dumps({"record": kind, **d}) + "\n")
        return path

    def _records(self) -> Iterator[tuple[str, dict[str, Any]]]:
        _, reqs, outs = self._snapshot()
        steps = self.step_records
        with self._lock:
            samples = list(self.sample_records)
        for kind, recs in (("step", steps), ("request", reqs), ("output", outs), ("sample", samples)):
            for rec in recs:
                yield kind, rec.to_dict()

    @classmethod
    def load(cls, path: str | Path) -> Trace:
        """Read a trace written by `save`; a malformed file raises TraceFileError (a ValueError).

        Every field of every record is checked (types, finite numbers, counts >= 0): the error
        names the file, the line (.jsonl) or row (.parquet, counted from 0) and the field.
        """
        return cls._load(path)[0]

    @classmethod
    def _load(cls, path: str | Path) -> tuple[Trace, dict[str, Any]]:
        """The trace and the header's `run` section ({} when the file has none)."""
        path = Path(path)
        suffix = _suffix(path)
        if not path.is_file():
            raise TraceFileNotFound(f"{path}: no such file. {_FIX}.")
        if suffix == ".parquet":
            header, records = _read_parquet(path)
            where, head = "row", "the info header (schema metadata)"
        else:
            header, records = _read_jsonl(path, gz=suffix == ".jsonl.gz")
            where, head = "line", "line 1: the info header"
        if header.get("version") != FORMAT_VERSION:
            raise TraceFileError(
                f"{path}: trace format version {header.get('version')!r} is not "
                f"{FORMAT_VERSION}; load it with the llmlab version that wrote it"
            )
        try:
            _HEADER(header, "")
        except _Bad as e:
            raise TraceFileError(f"{path}, {head} has wrong fields: {e}; {_FIX}") from None
        info = EngineInfo.from_dict(header["info"])
        trace = cls(info)
        adders = {
            "step": (StepRecord, trace.add_step),
            "request": (RequestRecord, trace.add_request),
            "output": (Completion, trace.add_output),
            "sample": (ServerSample, trace.add_sample),
        }
        for lineno, kind, d in records:
            if not isinstance(kind, str) or kind not in adders:
                raise TraceFileError(
                    f"{path}, {where} {lineno}: unknown record kind {kind!r} (expected one of {sorted(adders)}); {_FIX}"
                )
            rec_cls, add = adders[kind]
            try:
                _RECORDS[kind](d, "")
                add(rec_cls.from_dict(d))
            except _Bad as e:
                raise TraceFileError(f"{path}, {where} {lineno}: {kind} record has wrong fields: {e}; {_FIX}") from None
            except (TypeError, AttributeError, ValueError, KeyError) as e:
                raise TraceFileError(f"{path}, {where} {lineno}: {kind} record has wrong fields ({e}); {_FIX}") from e
        return trace, header.get("run") or {}


def load_trace(path: str | Path) -> Trace:
    """Read a trace file written by `Trace.save` (same as `Trace.load`)."""
    return Trace.load(path)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for s in SUFFIXES:
        if name.endswith(s):
            return s
    raise ValueError(
        f"{path}: unsupported trace file suffix {''.join(path.suffixes) or '(none)'!r}; "
        f"use one of {', '.join(SUFFIXES)}"
    )


def _rows_of(entries: list[StepRecord | DecodeRun]) -> tuple[list[StepRecord], list[DecodeRun], np.ndarray, np.ndarray]:
    """The step records and the decode runs apart, with the steps frame's row of every step of each."""
    counts = np.fromiter((e.num_steps if isinstance(e, DecodeRun) else 1 for e in entries), "int64", len(entries))
    first = np.cumsum(counts) - counts
    is_run = np.fromiter((isinstance(e, DecodeRun) for e in entries), bool, len(entries))
    recs = [e for e in entries if not isinstance(e, DecodeRun)]
    runs = [e for e in entries if isinstance(e, DecodeRun)]
    return recs, runs, first[~is_run], np.repeat(first[is_run], counts[is_run]) + _within(counts[is_run])


def _within(lengths: np.ndarray) -> np.ndarray:
    """0, 1, ... counted afresh in each of consecutive segments of these lengths."""
    starts = np.cumsum(lengths) - lengths
    return np.arange(int(lengths.sum())) - np.repeat(starts, lengths)


def _run_rows(runs: list[DecodeRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every run's rows together: (how many each run has, first steps, steps, the run of each)."""
    sizes = np.fromiter((len(r.req_ids) for r in runs), "int64", len(runs))
    firsts = np.fromiter(chain.from_iterable(r.firsts() for r in runs), "int64", int(sizes.sum()))
    steps = np.fromiter(chain.from_iterable(r.steps for r in runs), "int64", len(firsts))
    return sizes, firsts, steps, np.repeat(np.arange(len(runs)), sizes)


def _run_prefills(runs: list[DecodeRun]) -> tuple[list[Slot], np.ndarray, np.ndarray]:
    """Every run's prefill slots together: (the slots, the step of each within its run, its run)."""
    slots = list(chain.from_iterable(r.prefills for r in runs))
    at = np.fromiter(chain.from_iterable(r.prefill_at for r in runs), "int64", len(slots))
    counts = [len(r.prefills) for r in runs]
    return slots, at, np.repeat(np.arange(len(runs)), counts)


def _step_table(entries: list[StepRecord | DecodeRun]) -> pd.DataFrame:
    """The steps frame, the one place it is built: each step's queue, finish and KV counts read
    from its record (step records in one pass, decode runs in another, placed in entry order),
    its batch make-up summed from the slots it holds."""
    recs, runs, rec_rows, run_rows = _rows_of(entries)
    parts = ([_step_counts(recs)] if recs else []) + ([_run_step_counts(runs)] if runs else [])
    df = _joined(parts, np.argsort(np.concatenate((rec_rows, run_rows)), kind="stable"))
    columns, rows, _ = _slot_parts(entries, ("prefill", "num_tokens"))
    n = len(df)
    is_prefill = columns.get("prefill", np.zeros(0, bool))
    tokens = columns.get("num_tokens", np.zeros(0, "int64"))

    def per_step(weights: np.ndarray | None = None) -> np.ndarray:
        """Sums over each step's slots (counts without weights)."""
        return np.bincount(rows, weights=weights, minlength=n).astype("int64")

    df["batch_size"] = per_step()
    df["num_prefill_reqs"] = per_step(is_prefill)
    df["num_decode_reqs"] = df["batch_size"] - df["num_prefill_reqs"]
    df["prefill_tokens"] = per_step(tokens * is_prefill)
    df["decode_tokens"] = per_step(tokens * ~is_prefill)
    # a decode run keeps no running count: every running request is in its batch
    in_run = np.zeros(n, bool)
    in_run[run_rows] = True
    df["running"] = np.where(in_run, df["batch_size"] - df["finished"], df["running"])
    df["duration"] = df["t_end"] - df["t_start"]
    return df[STEP_COLUMNS]


def _run_step_counts(runs: list[DecodeRun]) -> dict[str, Any]:
    """The steps frame's columns read from decode runs (`_step_table` adds the rest), all at once."""
    k = np.fromiter((r.num_steps for r in runs), "int64", len(runs))
    total = int(k.sum())
    start = np.cumsum(k) - k  # each run's first row
    t_end = np.fromiter(chain.from_iterable(r.t_ends for r in runs), "float64", total)
    t_start = np.empty(total)
    t_start[1:] = t_end[:-1]
    t_start[start] = [r.t_start for r in runs]
    slots, at, prefill_run = _run_prefills(runs)
    where = start[prefill_run] + at
    hits = np.fromiter(chain.from_iterable(r.prefill_hits for r in runs), "int64", len(slots))
    is_new = np.fromiter(chain.from_iterable(r.prefill_admitted for r in runs), bool, len(slots))
    ends = [s + n - 1 for s, r in zip(start.tolist(), runs, strict=True) for n in r.finish_steps()]
    used = np.fromiter(chain.from_iterable(r.kv_used for r in runs), "int64", total)
    cached = np.fromiter(chain.from_iterable(r.kv_cached for r in runs), "int64", total)
    num_blocks = np.repeat([r.num_blocks for r in runs], k)
    waiting = np.zeros(total, dtype="int64")
    for s, r in zip(start.tolist(), runs, strict=True):
        for j, n in r.waiting.items():
            waiting[s + j] = n
    return {
        "step": np.repeat([r.step for r in runs], k) + _within(k),
        "t_start": t_start,
        "t_end": t_end,
        "waiting": waiting,
        "running": np.zeros(total, dtype="int64"),  # `_step_table` counts it from the batch
        "admitted": np.bincount(where, weights=is_new, minlength=total).astype("int64"),
        "preempted": np.zeros(total, dtype="int64"),
        "finished": np.bincount(np.asarray(ends, dtype="int64"), minlength=total),
        "kv_used": used,
        "kv_cached": cached,
        "kv_free": num_blocks - used - cached,
        "kv_total": num_blocks,
        "prefix_hit_tokens": np.bincount(where, weights=hits * is_new, minlength=total).astype("int64"),
        "source": np.full(total, "exact", dtype=object),
    }


def _step_counts(recs: list[StepRecord]) -> dict[str, Any]:
    """The steps frame's columns read from step records (`_step_table` adds the rest)."""
    kvs = [r.kv for r in recs]
    has_kv = all(kv is not None for kv in kvs)

    def kv_col(attr: str) -> np.ndarray:
        """Block counts: integers, or floats with NaN where a step has no KV snapshot."""
        if has_kv:
            return np.asarray([getattr(kv, attr) for kv in kvs], dtype="int64")
        return np.asarray([getattr(kv, attr) if kv is not None else None for kv in kvs], dtype="float64")

    def col(values: list[int]) -> np.ndarray:
        return np.asarray(values, dtype="int64")

    return {
        "step": col([r.step for r in recs]),
        "t_start": np.asarray([r.t_start for r in recs], dtype="float64"),
        "t_end": np.asarray([r.t_end for r in recs], dtype="float64"),
        "waiting": col([r.waiting for r in recs]),
        "running": col([r.running for r in recs]),
        "admitted": col([len(r.admitted) for r in recs]),
        "preempted": col([len(r.preempted) for r in recs]),
        "finished": col([len(r.finished) for r in recs]),
        "kv_used": kv_col("used"),
        "kv_cached": kv_col("cached"),
        "kv_free": kv_col("free"),
        "kv_total": kv_col("num_blocks"),
        "prefix_hit_tokens": col([r.prefix_hit_tokens for r in recs]),
        "source": np.asarray([r.source for r in recs], dtype=object),
    }


def _slot_parts(
    entries: list[StepRecord | DecodeRun], want: Iterable[str] = SLOT_COLUMNS
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Every slot of every step, unsorted: the `want`ed columns (see `_slot_columns`), each
    slot's row in the steps frame, and its place in that step's batch."""
    recs, runs, rec_rows, run_rows = _rows_of(entries)
    parts, rows, places = [], [], []
    if recs:
        lens = np.fromiter((len(r.batch) for r in recs), "int64", len(recs))
        parts.append(_slot_columns(recs, want))
        rows.append(np.repeat(rec_rows, lens))
        places.append(_within(lens))
    if runs:
        columns, run_slot_rows, run_places = _run_slot_columns(runs, run_rows, want)
        parts.append(columns)
        rows.append(run_slot_rows)
        places.append(run_places)
    if not parts:
        return {}, np.zeros(0, "int64"), np.zeros(0, "int64")
    columns = {c: np.concatenate([p[c] for p in parts]) for c in parts[0]}
    return columns, np.concatenate(rows), np.concatenate(places)


def _slot_columns(recs: list[StepRecord], want: Iterable[str]) -> dict[str, np.ndarray]:
    """The `want`ed slot columns (those of the slots frame, or `prefill`: phase == "prefill") for
    step records."""
    slots = [s for r in recs for s in r.batch]
    columns: dict[str, Callable[[], np.ndarray]] = {
        "step": lambda: np.repeat([r.step for r in recs], [len(r.batch) for r in recs]),
        "req_id": lambda: np.asarray([s.req_id for s in slots], dtype=object),
        "phase": lambda: np.asarray([s.phase for s in slots], dtype=object),
        "prefill": lambda: np.fromiter((s.phase == "prefill" for s in slots), bool, len(slots)),
        "num_tokens": lambda: np.asarray([s.num_tokens for s in slots], dtype="int64"),
        "context_len": lambda: np.asarray([s.context_len for s in slots], dtype="int64"),
    }
    return {c: columns[c]() for c in want}


def _run_slot_columns(
    runs: list[DecodeRun], step_rows: np.ndarray, want: Iterable[str]
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The `want`ed slot columns (as `_slot_columns`) for decode runs, request by request and
    then their prefill slots, with each slot's row in the steps frame (`step_rows` holds every
    run step's) and its place in that step's batch (decodes in row order, then the prefills)."""
    sizes, firsts, steps, run_of = _run_rows(runs)
    within = _within(steps)
    j = np.repeat(firsts, steps) + within  # each decode slot's step within its run
    slot_run = np.repeat(run_of, steps)
    k = np.fromiter((r.num_steps for r in runs), "int64", len(runs))
    first_row = step_rows[np.cumsum(k) - k]
    step0 = np.asarray([r.step for r in runs], dtype="int64")
    slots, at, prefill_run = _run_prefills(runs)
    counts = np.bincount(prefill_run, minlength=len(runs))

    def req_ids() -> np.ndarray:
        ids = np.asarray(list(chain.from_iterable(r.req_ids for r in runs)), dtype=object)
        return np.concatenate((np.repeat(ids, steps), np.asarray([s.req_id for s in slots], dtype=object)))

    def context_lens() -> np.ndarray:
        contexts = np.fromiter(chain.from_iterable(r.context_lens for r in runs), "int64", len(steps))
        prefills = np.fromiter((s.context_len for s in slots), "int64", len(slots))
        return np.concatenate((np.repeat(contexts, steps) + within, prefills))

    columns: dict[str, Callable[[], np.ndarray]] = {
        "step": lambda: np.concatenate((step0[slot_run] + j, step0[prefill_run] + at)),
        "req_id": req_ids,
        "phase": lambda: np.concatenate(
            (np.full(len(j), "decode", dtype=object), np.asarray([s.phase for s in slots], dtype=object))
        ),
        "prefill": lambda: np.concatenate(
            (np.zeros(len(j), dtype=bool), np.fromiter((s.phase == "prefill" for s in slots), bool, len(slots)))
        ),
        "num_tokens": lambda: np.concatenate(
            (np.ones(len(j), dtype="int64"), np.fromiter((s.num_tokens for s in slots), "int64", len(slots)))
        ),
        "context_len": context_lens,
    }
    rows = np.concatenate((first_row[slot_run] + j, first_row[prefill_run] + at))
    places = np.concatenate((np.repeat(_within(sizes), steps), sizes[prefill_run] + _within(counts)))
    return {c: columns[c]() for c in want}, rows, places


def _joined(parts: list[dict[str, np.ndarray]], order: np.ndarray) -> pd.DataFrame:
    """One frame from column chunks, each column concatenated once, its rows taken in `order`."""
    return pd.DataFrame({c: np.concatenate([p[c] for p in parts])[order] for c in parts[0]})


def _frame(data: dict[str, list[Any]], columns: list[str], dtypes: dict[str, str]) -> pd.DataFrame:
    """A frame with these columns; an empty one still gets sensible dtypes."""
    if data:
        df = pd.DataFrame(data, columns=columns)
        numeric = [c for c in columns if c not in dtypes and df[c].dtype == object]
        df[numeric] = df[numeric].astype("float64")  # all-None optional numbers -> NaN
        return df
    return pd.DataFrame({c: pd.Series(dtype=dtypes.get(c, "float64")) for c in columns})


def _read_jsonl(path: Path, gz: bool) -> tuple[dict[str, Any], list[tuple[int, str, Any]]]:
    opener: Callable[..., Any] = gzip.open if gz else open
    header: dict[str, Any] | None = None
    records: list[tuple[int, str, Any]] = []
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                d = _json(line, f"{path}, line {lineno}")
                if not isinstance(d, dict) or "record" not in d:
                    raise TraceFileError(f"{path}, line {lineno}: expected a JSON object with a 'record' key; {_FIX}")
                kind = d.pop("record")
                if header is None:
                    if kind != "info":
                        raise TraceFileError(
                            f"{path}, line {lineno}: missing the info header (the first line "
                            f"must be a 'record': 'info' object); {_FIX}"
                        )
                    header = d
                else:
                    records.append((lineno, kind, d))
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise TraceFileError(f"{path}: cannot be read as text JSON lines ({e}); {_FIX}") from e
    if header is None:
        raise TraceFileError(f"{path}: empty file, missing the info header; {_FIX}")
    return header, records


def _read_parquet(path: Path) -> tuple[dict[str, Any], list[tuple[int, str, Any]]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise TraceFileError(f"{path}: not a readable Parquet file ({e}); {_FIX}") from e
    meta = table.schema.metadata or {}
    if _META_KEY not in meta:
        raise TraceFileError(f"{path}: missing the info header (schema metadata); {_FIX}")
    if table.column_names != ["record", "payload"]:
        raise TraceFileError(f"{path}: columns {table.column_names} are not ['record', 'payload']; {_FIX}")
    header = _json(meta[_META_KEY], f"{path}: the info header")
    if not isinstance(header, dict):
        raise TraceFileError(f"{path}: the info header is not a JSON object; {_FIX}")
    records = []
    kinds, payloads = table.column("record").to_pylist(), table.column("payload").to_pylist()
    for row, (kind, text) in enumerate(zip(kinds, payloads, strict=True)):
        if not isinstance(text, str):
            raise TraceFileError(f"{path}, row {row}: payload is not JSON (it is {text!r}); {_FIX}")
        d = _json(text, f"{path}, row {row}: payload")
        if not isinstance(d, dict):
            raise TraceFileError(f"{path}, row {row}: payload is not a JSON object; {_FIX}")
        records.append((row, kind, d))
    return header, records


def _json(text: str | bytes, where: str) -> Any:
    """json.loads, with every failure (bad syntax, nesting too deep, huge numbers) a TraceFileError."""
    try:
        return json.loads(text)
    except RecursionError:
        raise TraceFileError(f"{where}: JSON nested too deeply for a trace record; {_FIX}") from None
    except ValueError as e:  # JSONDecodeError, and ints beyond Python's digit limit
        raise TraceFileError(f"{where} is not JSON ({e}); {_FIX}") from e


# ---- record schema -------------------------------------------------------------------
# What a loaded record must look like, checked before any record object is built, so a bad
# file fails at load time naming the field, not later in a DataFrame view.

_I64 = 2**63  # counts and times must fit the int64 / float64 columns of the views


class _Bad(Exception):
    """A value that does not fit the schema; the message names the field, the value and what it must be."""


Check = Callable[[Any, str], None]


def _fail(value: Any, at: str, expected: str) -> NoReturn:
    typ = type(value).__name__
    raise _Bad(
        f"field {at!r} is {reprlib.repr(value)} ({'an' if typ[0] in 'aeiou' else 'a'} {typ}), expected {expected}"
    )


def _is_count(v: Any) -> bool:
    return type(v) is int and 0 <= v < _I64


def _is_number(v: Any) -> bool:
    return (type(v) is float and math.isfinite(v)) or (type(v) is int and -_I64 <= v < _I64)


def _is_text(v: Any) -> bool:
    return type(v) is str


def _scalar(ok: Callable[[Any], bool], expected: str) -> Check:
    def check(v: Any, at: str) -> None:
        if not ok(v):
            _fail(v, at, expected)

    return check


_count = _scalar(_is_count, "a whole number >= 0")
_number = _scalar(_is_number, "a finite number")
# times are seconds since the run started (simulated seconds for the simulator): never negative
_time = _scalar(lambda v: _is_number(v) and v >= 0, "a finite number of seconds >= 0")
_text = _scalar(_is_text, "a string")
_mapping_any = _scalar(lambda v: type(v) is dict, "a JSON object")


def _optional(check: Check) -> Check:
    def optional(v: Any, at: str) -> None:
        if v is not None:
            check(v, at)

    return optional


def _choice(*options: str) -> Check:
    return _scalar(lambda v: type(v) is str and v in options, " or ".join(map(repr, options)))


def _list(check: Check, all_ok: Callable[[list[Any]], bool]) -> Check:
    """A list whose every item passes `check`; `all_ok(items)` is the same test, fast, for the usual good list."""

    def check_list(v: Any, at: str) -> None:
        if type(v) is not list:
            _fail(v, at, "a list")
        if not all_ok(v):
            for i, x in enumerate(v):
                check(x, f"{at}[{i}]")

    return check_list


def _all(ok: Callable[[Any], bool]) -> Callable[[list[Any]], bool]:
    return lambda items: all(map(ok, items))


def _mapping(key: Check, value: Check) -> Check:
    def check(v: Any, at: str) -> None:
        if type(v) is not dict:
            _fail(v, at, "a JSON object")
        for k, x in v.items():
            key(k, f"{at} key")
            value(x, f"{at}.{k}")

    return check


def _required(cls: type) -> list[str]:
    """The fields of a dataclass that have no default."""
    missing = dataclasses.MISSING
    return [f.name for f in dataclasses.fields(cls) if f.default is missing and f.default_factory is missing]


def _object(fields: dict[str, Check], required: Iterable[str]) -> Check:
    """A JSON object with these fields (the required ones present, no others), each checked."""
    need = list(required)

    def check(v: Any, at: str) -> None:
        if type(v) is not dict:
            _fail(v, at or "record", "a JSON object")
        prefix = f"{at}." if at else ""
        for name in need:
            if name not in v:
                raise _Bad(f"missing field {prefix + name!r}")
        for name, x in v.items():
            if name not in fields:
                raise _Bad(f"unknown field {prefix + str(name)!r} (known: {', '.join(fields)})")
            fields[name](x, prefix + name)

    return check


_SLOT_FIELDS: dict[str, Check] = {
    "req_id": _text,
    "phase": _choice("prefill", "decode"),
    "num_tokens": _count,
    "context_len": _count,
}
_SLOT = _object(_SLOT_FIELDS, _required(Slot))


def _slots_ok(batch: list[Any]) -> bool:
    """The slot check of a whole batch, inlined: a trace may hold millions of slots."""
    for s in batch:
        if type(s) is not dict or len(s) != 4:
            return False
        phase, n, c = s.get("phase"), s.get("num_tokens"), s.get("context_len")
        if not (
            type(s.get("req_id")) is str
            and (phase == "decode" or phase == "prefill")
            and type(n) is int
            and type(c) is int
            and 0 <= n < _I64
            and 0 <= c < _I64
        ):
            return False
    return True


_STRINGS = _list(_text, _all(_is_text))
_COUNTS = _list(_count, _all(_is_count))
_KV = _object(
    {
        "block_size": _count,
        "num_blocks": _count,
        "used": _count,
        "cached": _count,
        "free": _count,
        "owners": _optional(_mapping(_scalar(lambda k: type(k) is str and k.isdigit(), "a block id"), _STRINGS)),
        "cached_ids": _optional(_COUNTS),
    },
    _required(KVSnapshot),
)
_RECORDS: dict[str, Check] = {
    "step": _object(
        {
            "step": _count,
            "t_start": _time,
            "t_end": _time,
            "batch": _list(_SLOT, _slots_ok),
            "waiting": _count,
            "running": _count,
            "admitted": _STRINGS,
            "preempted": _STRINGS,
            "finished": _STRINGS,
            "kv": _optional(_KV),
            "prefix_hit_tokens": _count,
            "source": _choice("exact", "derived"),
            "parallel": _optional(_mapping_any),  # tp/pp > 1 only; absent in older files
        },
        _required(StepRecord),
    ),
    "request": _object(
        {
            "req_id": _text,
            "arrival": _time,
            "prompt_tokens": _count,
            "first_scheduled": _optional(_time),
            "first_token": _optional(_time),
            "finish": _optional(_time),
            "output_tokens": _count,
            "cached_tokens": _count,
            "num_preemptions": _count,
            "finish_reason": _optional(_text),
            "token_times": _list(_time, _all(lambda v: _is_number(v) and v >= 0)),
            "error": _optional(_text),  # absent in files written before it existed
            "sent": _optional(_time),  # absent in files written before it existed
        },
        _required(RequestRecord),
    ),
    "output": _object(
        {
            "req_id": _text,
            "text": _text,
            "token_ids": _COUNTS,
            "finish_reason": _optional(_text),
            "prompt_token_ids": _COUNTS,
            "cached_tokens": _count,
        },
        _required(Completion),
    ),
}
_RECORDS["sample"] = _object(
    {
        "t": _time,
        **{name: _optional(_number) for name in SAMPLE_COLUMNS if name not in ("t", "source")},
        "source": _choice("exact", "derived"),
    },
    _required(ServerSample),
)
RUN_STATUSES = ("finished", "stopped", "failed")
"""The statuses a saved run can have (`Run.save` writes a snapshot of a live run as stopped)."""
_HEADER = _object(
    {
        "record": _choice("info"),  # in the Parquet header (a .jsonl reader takes it off its first line)
        "version": _count,
        "info": _object(
            {
                "engine": _text,
                "version": _text,
                "model": _text,
                "device": _text,
                "dtype": _text,
                "config": _mapping_any,
                "views": _mapping(_text, _text),
            },
            _required(EngineInfo),
        ),
        "run": _object(  # written by Run.save; absent in older files and in Trace.save's
            {
                "status": _choice(*RUN_STATUSES),
                "error": _optional(_text),
                "error_type": _optional(_text),
                "total": _optional(_count),
            },
            ["status"],
        ),
    },
    ["version", "info"],
)
