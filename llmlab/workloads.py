"""What to send an engine: requests with arrival times, prompts and sampling settings.

Prompts are real text: given text or token ids, or a window of `datasets/corpus.txt`
tokenized by the engine's own tokenizer, so a requested prompt length is exact for any model.
Generators: `fixed`, `synthetic`, `poisson`, `gamma`, `concurrency`, `shared_prefix`,
`from_trace` (Azure LLM inference traces and arXiv summarization lengths).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

LengthSpec = int | tuple[int, int] | Callable[[np.random.Generator], int] | Any
"""An int, an inclusive (lo, hi) uniform range, a callable rng -> int, or an object with `rvs`."""

TRACES = {
    "azure_conv": "splitwise_conv.csv",
    "azure_code": "splitwise_code.csv",
    "arxiv": "arxiv_summarization_stats_llama2_tokenizer_filtered_v2.csv",
}

DEFAULT_SYSTEM_PROMPT = (
    "You are a patient and careful assistant who helps people understand the world around "
    "them. You answer questions about history, science, geography, cooking, gardening, music "
    "and everyday practical matters. When a question is simple, give a short and direct answer "
    "first, then add one or two sentences of useful context. When a question is complex, break "
    "the answer into clear steps and explain the reasoning behind each one, so that the reader "
    "could reach the same conclusion on their own. Prefer plain words to jargon, and when a "
    "technical term is needed, define it the first time you use it. Use concrete examples, "
    "rough numbers and familiar comparisons to make quantities easy to picture. If the "
    "question is ambiguous, say which reading you chose and why. If you are not sure of a "
    "fact, say so honestly rather than guessing, and suggest how the reader could check it. "
    "Never invent sources, quotations or statistics. Keep a friendly, calm tone, avoid "
    "lecturing, and respect the reader's time: do not repeat the question, do not pad the "
    "answer with needless caveats, and stop once the question has been fully answered. When "
    "you are asked about a passage of text, read it closely, describe what it is about in "
    "your own words, point out its main claim, and mention any detail that a careful reader "
    "might otherwise miss."
)


@dataclass
class WorkItem:
    """One request to send: when it arrives, its prompt and how to sample its output."""

    req_id: str
    arrival: float = 0.0  # seconds after the run starts
    prompt: str | list[int] | None = None  # text or token ids
    prompt_len: int | None = None  # when prompt is None: this many corpus tokens (engine's tokenizer)
    corpus_offset: int = 0  # where in the corpus such a prompt starts (token index, wraps)
    max_tokens: int = 128
    ignore_eos: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] | None = None
    chat: bool = False  # wrap a text prompt in the tokenizer's chat template

    def __post_init__(self) -> None:
        what = f"request {self.req_id!r}"
        if self.prompt is None and self.prompt_len is None:
            raise ValueError(f"{what} has no prompt: give prompt=text or token ids, or prompt_len=N")
        if self.prompt is None and self.prompt_len is not None and self.prompt_len < 1:
            raise ValueError(f"{what}: prompt_len={self.prompt_len}; give a length of at least 1")
        if self.max_tokens < 1:
            raise ValueError(f"{what}: max_tokens={self.max_tokens}; give at least 1")
        if self.arrival < 0:
            raise ValueError(f"{what}: arrival={self.arrival}; arrivals are seconds >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(
                f"{what}: temperature={self.temperature}, top_p={self.top_p}, top_k={self.top_k};"
                " use temperature >= 0, 0 < top_p <= 1 and top_k >= 0 (0 = off)"
            )
        if self.chat and not isinstance(self.prompt, str):
            raise ValueError(f"{what}: chat=True needs a text prompt; pass prompt='...' or chat=False")


@dataclass
class Workload:
    """A named list of requests. With `concurrency=k` it is a closed loop (see `concurrency`)."""

    name: str
    items: list[WorkItem]
    concurrency: int | None = None  # at most this many requests in flight; arrivals are ignored

    def __post_init__(self) -> None:
        ids = [it.req_id for it in self.items]
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise ValueError(f"workload {self.name!r}: request id {dup!r} repeats; ids must be unique")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError(f"concurrency={self.concurrency}; give at least 1 request in flight")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[WorkItem]:
        return iter(self.items)

    def __getitem__(self, i: int) -> WorkItem:
        return self.items[i]

    def to_frame(self) -> pd.DataFrame:
        """One row per request; long prompts are shown truncated."""
        rows = []
        for it in self.items:
            row = {f.name: getattr(it, f.name) for f in fields(WorkItem)}
            row["prompt"] = _show_prompt(it.prompt)
            rows.append(row)
        return pd.DataFrame(rows, columns=[f.name for f in fields(WorkItem)])

    def __repr__(self) -> str:
        loop = f", concurrency={self.concurrency}" if self.concurrency else ""
        return f"Workload({self.name!r}, {len(self.items)} requests{loop})"


def _show_prompt(p: str | list[int] | None, width: int = 60) -> str | None:
    if p is None:
        return None
    if not isinstance(p, str):
        return f"[{len(p)} token ids]"
    return p if len(p) <= width else p[: width - 3] + "..."


# ---- prompts -------------------------------------------------------------------------


def datasets_dir() -> Path:
    """The folder with corpus.txt and the trace CSVs: $LLMLAB_DATASETS or <repo>/datasets."""
    env = os.environ.get("LLMLAB_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "datasets"


def _dataset_file(name: str) -> Path:
    path = datasets_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; install llmlab from its repository (pip install -e .) or set "
            "LLMLAB_DATASETS to a folder holding the project's datasets/ files"
        )
    return path


@cache
def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def corpus_text() -> str:
    """The project's plain-English corpus (datasets/corpus.txt) used for synthetic prompts."""
    return _read_text(_dataset_file("corpus.txt"))


def _corpus_words() -> list[str]:
    return corpus_text().split()


_corpus_ids: dict[tuple[int, str, str], np.ndarray] = {}


def corpus_token_ids(tokenizer: Any) -> np.ndarray:
    """The corpus tokenized by this tokenizer (cached per tokenizer object and corpus file)."""
    text = corpus_text()
    name = str(getattr(tokenizer, "name_or_path", ""))
    key = (id(tokenizer), name, str(_dataset_file("corpus.txt")))
    if key not in _corpus_ids:
        # One paragraph at a time keeps each call under the model's max length (no warning);
        # the concatenated ids still decode to the corpus text.
        chunks = re.split(r"(?<=\n\n)", text)
        ids = [i for c in chunks if c for i in tokenizer.encode(c, add_special_tokens=False)]
        _corpus_ids[key] = np.asarray(ids, dtype=np.int64)
    return _corpus_ids[key]


def prompt_token_ids(item: WorkItem, tokenizer: Any) -> list[int]:
    """The prompt's token ids: as given, text encoded (or chat-templated), or a corpus window."""
    p = item.prompt
    if p is None:
        ids = corpus_token_ids(tokenizer)
        window = np.arange(item.corpus_offset, item.corpus_offset + item.prompt_len)
        return ids.take(window, mode="wrap").tolist()
    if not isinstance(p, str):
        return [int(t) for t in p]
    if not item.chat:
        return list(tokenizer.encode(p, add_special_tokens=False))
    out = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # a batch of one
        out = out[0]
    return [int(t) for t in out]


# ---- generators ----------------------------------------------------------------------


def _ids(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _check_n(n: int) -> None:
    if not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n={n!r}; give the number of requests as an int >= 1")


def _check_positive(name: str, value: float, fix: str) -> None:
    if not value > 0:
        raise ValueError(f"{name}={value!r}; {fix}")


def draw_lengths(spec: LengthSpec, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """n lengths from an int, an inclusive (lo, hi) range, a callable rng -> int, or `.rvs`."""
    if isinstance(spec, int | np.integer):
        out = np.full(n, int(spec))
    elif isinstance(spec, tuple | list) and len(spec) == 2:
        lo, hi = (int(v) for v in spec)
        if lo > hi:
            raise ValueError(f"{what}={spec}; give the range as (low, high) with low <= high")
        out = rng.integers(lo, hi + 1, size=n)
    elif hasattr(spec, "rvs"):
        out = np.rint(np.asarray(spec.rvs(size=n, random_state=rng), dtype="float64"))
    elif callable(spec):
        out = np.rint(np.asarray([spec(rng) for _ in range(n)], dtype="float64"))
    else:
        raise ValueError(
            f"{what}={spec!r}; give an int, a (low, high) range, a callable rng -> int, or a "
            "distribution with .rvs (for example scipy.stats.lognorm(...))"
        )
    out = out.astype(np.int64)
    if (out < 1).any():
        raise ValueError(f"{what}={spec!r} gave {out.min()}; lengths must be at least 1 token")
    return out


def _corpus_offsets(n: int, rng: np.random.Generator) -> np.ndarray:
    # Distinct offsets below the corpus word count (a lower bound on its token count for
    # ordinary subword tokenizers), so no two prompts share a prefix by accident.
    words = len(_corpus_words())
    if n <= words:
        return rng.choice(words, size=n, replace=False)
    return rng.integers(0, words, size=n)


def _arrival_times(arrival: float | Sequence[float] | None, n: int) -> np.ndarray:
    if arrival is None:
        return np.zeros(n)
    if isinstance(arrival, int | float):
        _check_positive("arrival", arrival, "give the seconds between arrivals as a number > 0")
        return np.arange(n) * float(arrival)
    times = np.asarray(arrival, dtype="float64")
    if times.shape != (n,) or (times < 0).any():
        raise ValueError(f"arrival has shape {times.shape}; give n={n} arrival times >= 0")
    return times


def _poisson_arrivals(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    _check_positive("rate", rate, "give the mean arrival rate in requests per second, > 0")
    gaps = rng.exponential(1.0 / rate, size=n)
    return np.concatenate([[0.0], np.cumsum(gaps[:-1])])


def fixed(
    prompts: str | Sequence[str] | Sequence[list[int]],
    max_tokens: int = 128,
    ignore_eos: bool = False,
    chat: bool = False,
    temperature: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    seed: int | None = None,
    stop: list[str] | None = None,
    prefix: str = "",
    name: str = "fixed",
) -> Workload:
    """Given prompts (text or token ids), all arriving at time 0."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if len(prompts) == 0:
        raise ValueError("prompts is empty; give at least one prompt")
    items = [
        WorkItem(
            rid,
            prompt=p if isinstance(p, str) else list(p),
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            chat=chat,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
            stop=stop,
        )
        for rid, p in zip(_ids(len(prompts), prefix), prompts, strict=True)
    ]
    return Workload(name, items)


def synthetic(
    n: int,
    prompt_len: LengthSpec = (32, 256),
    output_len: LengthSpec = (16, 128),
    seed: int = 0,
    arrival: float | Sequence[float] | None = None,
    ignore_eos: bool = True,
    temperature: float = 0.0,
    prefix: str = "",
    name: str = "synthetic",
) -> Workload:
    """n corpus-text prompts of drawn lengths; `output_len` sets max_tokens.

    `arrival`: None (all at 0), seconds between arrivals, or n explicit arrival times.
    """
    _check_n(n)
    rng = np.random.default_rng(seed)
    plen = draw_lengths(prompt_len, n, rng, "prompt_len")
    olen = draw_lengths(output_len, n, rng, "output_len")
    offsets = _corpus_offsets(n, rng)
    times = _arrival_times(arrival, n)
    return _corpus_workload(name, n, prefix, times, plen, olen, offsets, ignore_eos, temperature)


def _corpus_workload(
    name: str,
    n: int,
    prefix: str,
    times: np.ndarray,
    plen: np.ndarray,
    olen: np.ndarray,
    offsets: np.ndarray,
    ignore_eos: bool,
    temperature: float,
) -> Workload:
    items = [
        WorkItem(
            rid,
            arrival=float(t),
            prompt_len=int(p),
            corpus_offset=int(o),
            max_tokens=int(m),
            ignore_eos=ignore_eos,
            temperature=temperature,
        )
        for rid, t, p, m, o in zip(_ids(n, prefix), times, plen, olen, offsets, strict=True)
    ]
    return Workload(name, items)


def poisson(
    rate: float,
    n: int,
    prompt_len: LengthSpec = (32, 256),
    output_len: LengthSpec = (16, 128),
    seed: int = 0,
    ignore_eos: bool = True,
    temperature: float = 0.0,
    prefix: str = "",
) -> Workload:
    """Open-loop arrivals at `rate` requests/s: exponential gaps (mean 1/rate), first at 0."""
    _check_n(n)
    rng = np.random.default_rng(seed)
    times = _poisson_arrivals(rate, n, rng)
    return synthetic(
        n,
        prompt_len,
        output_len,
        int(rng.integers(2**31)),
        times,
        ignore_eos,
        temperature,
        prefix,
        name=f"poisson({rate:g}/s)",
    )


def gamma(
    rate: float,
    cv: float,
    n: int,
    prompt_len: LengthSpec = (32, 256),
    output_len: LengthSpec = (16, 128),
    seed: int = 0,
    ignore_eos: bool = True,
    temperature: float = 0.0,
    prefix: str = "",
) -> Workload:
    """Open-loop arrivals at `rate` requests/s with gamma gaps of coefficient of variation `cv`.

    cv=1 is Poisson; cv>1 is burstier, cv<1 more regular.
    """
    _check_n(n)
    _check_positive("rate", rate, "give the mean arrival rate in requests per second, > 0")
    _check_positive("cv", cv, "give the coefficient of variation of the gaps, > 0 (1 = Poisson)")
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    gaps = rng.gamma(shape, 1.0 / (rate * shape), size=n)
    times = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return synthetic(
        n,
        prompt_len,
        output_len,
        int(rng.integers(2**31)),
        times,
        ignore_eos,
        temperature,
        prefix,
        name=f"gamma({rate:g}/s, cv={cv:g})",
    )


def concurrency(
    k: int,
    n: int,
    prompt_len: LengthSpec = (32, 256),
    output_len: LengthSpec = (16, 128),
    seed: int = 0,
    ignore_eos: bool = True,
    temperature: float = 0.0,
    prefix: str = "",
) -> Workload:
    """Closed loop: k users, each sends its next request when its previous one finishes.

    Items all have arrival 0; `Workload.concurrency = k` tells the session to keep at most k
    requests in flight and to send the next item (in order) as soon as one finishes.
    """
    if not isinstance(k, int | np.integer) or k < 1:
        raise ValueError(f"k={k!r}; give the number of concurrent users as an int >= 1")
    wl = synthetic(n, prompt_len, output_len, seed, None, ignore_eos, temperature, prefix, name=f"concurrency({k})")
    wl.concurrency = int(k)
    return wl


def shared_prefix(
    n: int,
    system_prompt: str | None = None,
    questions: Sequence[str] | None = None,
    prefix_len: int | None = None,
    question_len: LengthSpec = (16, 48),
    max_tokens: int = 64,
    seed: int = 0,
    rate: float | None = None,
    ignore_eos: bool = False,
    chat: bool = False,
    temperature: float = 0.0,
    prefix: str = "",
) -> Workload:
    """n prompts "SYSTEM\\n\\nQuestion: ...\\nAnswer:" that share one system text (prefix caching).

    The system text is `system_prompt`, else `prefix_len` words of the corpus, else a built-in
    paragraph of about 250 words. Questions cycle through `questions`, else each asks about a
    different corpus passage of `question_len` words. `rate` spreads arrivals as Poisson;
    without it all arrive at 0, and requests prefilled in the same step cannot share blocks yet.
    """
    _check_n(n)
    _check_positive("max_tokens", max_tokens, "give at least 1 output token")
    rng = np.random.default_rng(seed)
    if system_prompt is None:
        if prefix_len is None:
            system_prompt = DEFAULT_SYSTEM_PROMPT
        else:
            _check_positive("prefix_len", prefix_len, "give the shared prefix length in words, > 0")
            words = _corpus_words()
            system_prompt = " ".join(words[i % len(words)] for i in range(prefix_len))
    if questions is not None:
        if len(questions) == 0:
            raise ValueError("questions is empty; give at least one question or leave it None")
        qs = [questions[i % len(questions)] for i in range(n)]
    else:
        qlen = draw_lengths(question_len, n, rng, "question_len")
        words = _corpus_words()
        qs = [
            "What does this passage describe? " + " ".join(words[(o + j) % len(words)] for j in range(q))
            for q, o in zip(qlen, _corpus_offsets(n, rng), strict=True)
        ]
    times = np.zeros(n) if rate is None else _poisson_arrivals(rate, n, rng)
    items = [
        WorkItem(
            rid,
            arrival=float(t),
            prompt=f"{system_prompt}\n\nQuestion: {q}\nAnswer:",
            max_tokens=max_tokens,
            ignore_eos=ignore_eos,
            chat=chat,
            temperature=temperature,
        )
        for rid, t, q in zip(_ids(n, prefix), times, qs, strict=True)
    ]
    return Workload("shared_prefix", items)


@cache
def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path)


def from_trace(
    name: str,
    n: int | None = None,
    time_scale: float = 1.0,
    max_len: int | None = None,
    output_scale: float = 1.0,
    start: int = 0,
    rate: float | None = None,
    seed: int = 0,
    ignore_eos: bool = True,
    temperature: float = 0.0,
    prefix: str = "",
) -> Workload:
    """Replay a public trace's arrivals and prompt/output lengths with corpus-text prompts.

    `name`: "azure_conv", "azure_code" (Azure LLM inference trace 2023) or "arxiv" (lengths
    only). Rows start..start+n; arrivals are relative to the first and divided by
    `time_scale` (10 = ten times faster); `rate` replaces them with Poisson arrivals (arxiv
    has none, so without `rate` all arrive at 0). Output lengths are multiplied by
    `output_scale`; `max_len` scales prompt and output down together so prompt + output fits
    a context, keeping at least 1 token of each.
    """
    if name not in TRACES:
        raise ValueError(f"unknown trace {name!r}; choose one of {', '.join(TRACES)}")
    if n is not None:
        _check_n(n)
    _check_positive("time_scale", time_scale, "give a speed-up factor > 0 (10 = 10x faster)")
    _check_positive("output_scale", output_scale, "give a factor > 0 for the output lengths")
    if max_len is not None and max_len < 2:
        raise ValueError(f"max_len={max_len}; give a context of at least 2 tokens")
    df = _read_csv(_dataset_file(TRACES[name]))
    if not 0 <= start < len(df):
        raise ValueError(f"start={start}; the {name} trace has rows 0..{len(df) - 1}")
    rows = df.iloc[start : None if n is None else start + n]
    count = len(rows)
    rng = np.random.default_rng(seed)
    plen = np.maximum(1.0, rows["num_prefill_tokens"].to_numpy(dtype="float64"))
    olen = np.maximum(1.0, np.rint(rows["num_decode_tokens"].to_numpy() * output_scale))
    if max_len is not None:
        factor = np.minimum(1.0, max_len / (plen + olen))
        olen = np.clip(np.floor(olen * factor), 1, max_len - 1)
        plen = np.clip(np.floor(plen * factor), 1, max_len - olen)
    if rate is not None:
        times = _poisson_arrivals(rate, count, rng)
    elif "arrived_at" in rows:
        at = rows["arrived_at"].to_numpy(dtype="float64")
        times = (at - at.min()) / time_scale
    else:
        times = np.zeros(count)
    offsets = _corpus_offsets(count, rng)
    return _corpus_workload(
        name, count, prefix, times, plen.astype(np.int64), olen.astype(np.int64), offsets, ignore_eos, temperature
    )
