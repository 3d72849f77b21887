"""What to send an engine: requests with arrival times, prompts and sampling settings.

Prompts are real text: given text or token ids, or a window of `datasets/corpus.txt`
tokenized by the engine's own tokenizer, so a requested prompt length is exact for any model.
Generators: `fixed`, `synthetic`, `poisson`, `gamma`, `concurrency`, `shared_prefix`,
`from_trace` (Azure LLM inference traces, arXiv summarization lengths, or a CSV file of your own).
Every argument and every trace value is checked before any work: a wrong type raises TypeError,
a bad value (NaN, inf, negative, an empty stop string, a malformed CSV cell) ValueError, each
naming the argument or file, row and column, the value and the fix.
"""

from __future__ import annotations

import codecs
import io
import numbers
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from llmlab.config import check_arg, check_request_params, wrong_type

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
    """One request to send: when it arrives, its prompt and how to sample its output.

    Every field is checked on creation, so a bad request fails here, before an engine does any
    work: a wrong type raises TypeError (bool is not an int), a bad value ValueError, each naming
    the request, the field, the value and the fix. Numbers are normalised to plain Python
    `int` / `float` (numpy scalars are accepted), token-id prompts to a `list[int]`.

    `prompt`: text (valid Unicode, no lone surrogates) or token ids (ints >= 0; the vocabulary
    range is the engine's to check); `prompt_len`: without a prompt, that many corpus tokens.
    `stop`: None or a list of non-empty strings; a bare string `stop="x"` is refused with a
    TypeError (write `stop=["x"]`), as is an empty string (it would end every request at once).
    """

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
        check_arg("req_id", self.req_id, "str", "give each request a string id, e.g. req_id='r0'")
        where = f"request {self.req_id!r}: "
        self.arrival = check_arg("arrival", self.arrival, "number", "arrivals are finite seconds >= 0", where, low=0)
        self.chat = check_arg("chat", self.chat, "bool", "give True or False", where)
        self.prompt = _check_prompt(self.prompt, self.chat, where)
        self.prompt_len = check_arg(
            "prompt_len", self.prompt_len, "int", "give a length as an int >= 1", where, optional=True, low=1
        )
        if self.prompt is None and self.prompt_len is None:
            raise ValueError(f"{where}no prompt: give prompt=text or token ids, or prompt_len=N")
        self.corpus_offset = check_arg(
            "corpus_offset", self.corpus_offset, "int", "give a corpus token index as an int >= 0", where, low=0
        )
        # the sampling fields: the checks SamplingParams gets (config.REQUEST_PARAMS); stop=None means none
        sampled = [f for f in _SAMPLED if f != "stop" or self.stop is not None]
        vars(self).update(check_request_params({f: getattr(self, f) for f in sampled}, self.req_id, TypeError))
        if self.chat and not isinstance(self.prompt, str):
            raise ValueError(f"{where}chat=True needs a text prompt; pass prompt='...' or chat=False")


_SAMPLED = ("max_tokens", "temperature", "top_p", "top_k", "seed", "ignore_eos", "stop")


@dataclass
class Workload:
    """A named list of requests. With `concurrency=k` it is a closed loop (see `concurrency`)."""

    name: str
    items: list[WorkItem]
    concurrency: int | None = None  # at most this many requests in flight; arrivals are ignored

    def __post_init__(self) -> None:
        bad = next((i for i, it in enumerate(self.items) if not isinstance(it, WorkItem)), None)
        if bad is not None:
            raise wrong_type(f"items[{bad}]", self.items[bad], "a WorkItem", "give a list of WorkItem objects")
        ids = [it.req_id for it in self.items]
        if len(set(ids)) != len(ids):
            dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
            raise ValueError(f"workload {self.name!r}: request id {dup!r} repeats; ids must be unique")
        self.concurrency = check_arg(
            "concurrency", self.concurrency, "int", "give at least 1 request in flight", optional=True, low=1
        )

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


# ---- argument checks (config.check_arg, the machinery launch settings use) ------------

_N_FIX = "give the number of requests as an int >= 1"
_SEED_FIX = "give the random seed as an int >= 0"
_RATE_FIX = "give the mean arrival rate in requests per second"
_POSITIVE = {"low": 0, "low_open": True}  # rates, factors, gaps


def _check_common(ignore_eos: Any, temperature: Any, prefix: Any) -> None:
    """The sampling arguments every generator passes to all its items, checked once up front."""
    check_request_params({"ignore_eos": ignore_eos, "temperature": temperature}, type_error=TypeError)
    check_arg("prefix", prefix, "str", "give the request-id prefix as a string, e.g. prefix='r'")


def _check_prompt(prompt: Any, chat: bool, where: str) -> str | list[int] | None:
    """A text prompt that is valid Unicode, or token ids as a list of ints >= 0 (not empty)."""
    if prompt is None:
        return None
    if isinstance(prompt, str):
        if not prompt and not chat:
            raise ValueError(f"{where}prompt='' is empty; give some text, token ids or prompt_len=N")
        try:
            prompt.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(
                f"{where}prompt has a lone surrogate {prompt[e.start]!r} at character {e.start}, which is not "
                "valid Unicode text and no tokenizer can encode it; remove it, or replace such characters with "
                "text.encode('utf-8', 'replace').decode('utf-8')"
            ) from None
        return prompt
    fix = "give text, or token ids as a list of ints >= 0"
    if isinstance(prompt, np.ndarray) and prompt.ndim == 1:
        ids = prompt.tolist()
    elif isinstance(prompt, list | tuple | range):
        ids = list(prompt)
    else:
        hint = "; decode bytes first: prompt=data.decode('utf-8')" if isinstance(prompt, bytes | bytearray) else ""
        raise wrong_type("prompt", prompt, "text or token ids", fix + hint, where)
    if not ids:
        raise ValueError(f"{where}prompt=[] has no token ids; {fix}, or prompt_len=N")
    if all(type(t) is int for t in ids) and min(ids) >= 0:  # the usual case, without a loop in Python
        return ids
    return [check_arg(f"prompt[{i}]", t, "int", "token ids must be ints >= 0", where, low=0) for i, t in enumerate(ids)]


# ---- prompts -------------------------------------------------------------------------


def datasets_dir() -> Path:
    """The folder with corpus.txt and the trace CSVs: $LLMLAB_DATASETS or <repo>/datasets."""
    env = os.environ.get("LLMLAB_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parents[1] / "datasets"


def dataset_file(name: str) -> Path:
    """The path of one of the project's dataset files (e.g. "corpus.txt"); a clear error if it is missing."""
    path = datasets_dir() / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing; install llmlab from its repository (pip install -e .) or set "
            "LLMLAB_DATASETS to a folder holding the project's datasets/ files"
        )
    return path


def dataset_text(name: str) -> str:
    """The text of one of the project's dataset files, read once per process."""
    return _read_text(dataset_file(name))


@cache
def _read_text(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def corpus_text() -> str:
    """The project's plain-English corpus (datasets/corpus.txt) used for synthetic prompts."""
    return dataset_text("corpus.txt")


def _corpus_words() -> list[str]:
    return corpus_text().split()


_corpus_ids: dict[tuple[int, str, str], np.ndarray] = {}


def corpus_token_ids(tokenizer: Any) -> np.ndarray:
    """The corpus tokenized by this tokenizer (cached per tokenizer object and corpus file)."""
    text = corpus_text()
    name = str(getattr(tokenizer, "name_or_path", ""))
    key = (id(tokenizer), name, str(dataset_file("corpus.txt")))
    if key not in _corpus_ids:
        # One paragraph at a time keeps each call under the model's max length (no warning);
        # the concatenated ids still decode to the corpus text.
        chunks = re.split(r"(?<=\n\n)", text)
        ids = [i for c in chunks if c for i in tokenizer.encode(c, add_special_tokens=False)]
        _corpus_ids[key] = np.asarray(ids, dtype=np.int64)
    return _corpus_ids[key]


def prompt_token_ids(item: WorkItem, tokenizer: Any, limit: int | None = None) -> list[int]:
    """The prompt's token ids: as given, text encoded (or chat-templated), or a corpus window.

    `limit`: the most prompt tokens allowed (an engine passes its max_model_len). A corpus
    window or token-id prompt longer than that raises ValueError before anything is built, so
    `prompt_len=2*10**7` costs nothing; a text prompt is checked once encoded.
    """
    limit = check_arg(
        "limit", limit, "int", "give the most prompt tokens allowed as an int >= 1, or None", optional=True, low=1
    )
    p = item.prompt
    if p is None:
        _check_limit(item, item.prompt_len, limit)
        ids = corpus_token_ids(tokenizer)
        window = np.arange(item.corpus_offset, item.corpus_offset + item.prompt_len)
        return ids.take(window, mode="wrap").tolist()
    if not isinstance(p, str):
        _check_limit(item, len(p), limit)
        return [int(t) for t in p]
    if not item.chat:
        out = list(tokenizer.encode(p, add_special_tokens=False))
        _check_limit(item, len(out), limit)
        return out
    out = tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):  # a batch of one
        out = out[0]
    _check_limit(item, len(out), limit)
    return [int(t) for t in out]


def _check_limit(item: WorkItem, length: int, limit: int | None) -> None:
    if limit is not None and length > limit:
        kind = "prompt_len" if item.prompt is None else "prompt"
        raise ValueError(
            f"request {item.req_id!r}: {kind} of {length} tokens is longer than the limit of {limit} tokens "
            f"(the engine's max_model_len); give a prompt of at most {limit} tokens, e.g. "
            "from_trace(..., max_len=...) to scale a trace down, or launch the engine with a larger max_model_len"
        )


# ---- generators ----------------------------------------------------------------------

_MAX_LENGTH = 2**53  # lengths beyond this are not whole numbers as floats (and overflow int64 soon after)


def _ids(n: int, prefix: str) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def draw_lengths(spec: LengthSpec, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    """n lengths from an int, an inclusive (lo, hi) range, a callable rng -> int, or `.rvs`."""
    fix = "lengths must be whole numbers of tokens >= 1"
    if isinstance(spec, numbers.Integral | np.bool_):  # a bool is refused as not an int
        out = np.full(n, check_arg(what, spec, "int", fix, low=1))
    elif isinstance(spec, tuple | list) and len(spec) == 2:
        range_fix = "give the range as two ints (low, high) with low >= 1"
        lo, hi = (check_arg(f"{what}[{i}]", v, "int", range_fix, f"{what}={spec}: ", low=1) for i, v in enumerate(spec))
        if lo > hi:
            raise ValueError(f"{what}={spec}; give the range as (low, high) with low <= high")
        out = rng.integers(lo, hi + 1, size=n)
    elif hasattr(spec, "rvs") or callable(spec):
        source = "spec.rvs" if hasattr(spec, "rvs") else "the callable"
        try:
            drawn = spec.rvs(size=n, random_state=rng) if hasattr(spec, "rvs") else [spec(rng) for _ in range(n)]
            values = np.asarray(drawn, dtype="float64")
        except (TypeError, ValueError) as e:
            raise TypeError(f"{what}={spec!r}: {source} gave something that is not numbers ({e}); {fix}") from e
        if values.shape != (n,):
            raise ValueError(f"{what}={spec!r}: {source} gave shape {values.shape}, not ({n},); {fix}")
        bad = ~np.isfinite(values) | (np.rint(values) < 1) | (values > _MAX_LENGTH)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"{what}={spec!r} gave {values[i]} (draw {i}); {fix}")
        out = np.rint(values)
    else:
        raise ValueError(
            f"{what}={spec!r}; give an int, a (low, high) range, a callable rng -> int, or a "
            "distribution with .rvs (for example scipy.stats.lognorm(...))"
        )
    return out.astype(np.int64)


def _corpus_offsets(n: int, rng: np.random.Generator) -> np.ndarray:
    # Distinct offsets below the corpus word count (a lower bound on its token count for
    # ordinary subword tokenizers), so no two prompts share a prefix by accident.
    words = len(_corpus_words())
    if n <= words:
        return rng.choice(words, size=n, replace=False)
    return rng.integers(0, words, size=n)


_ARRIVAL_FIX = "arrival times must be finite seconds >= 0 after the run starts"


def _arrival_times(arrival: float | Sequence[float] | None, n: int) -> np.ndarray:
    """None: all at 0; a number: seconds between arrivals; a sequence: n arrival times."""
    if arrival is None:
        return np.zeros(n)
    if isinstance(arrival, numbers.Real):
        return np.arange(n) * check_arg("arrival", arrival, "number", "give the seconds between arrivals", **_POSITIVE)
    if isinstance(arrival, pd.Series):
        arrival = arrival.to_numpy()
    if isinstance(arrival, str | bytes) or not isinstance(arrival, Sequence | np.ndarray):
        raise wrong_type(
            "arrival", arrival, "a number or a list", f"give None, seconds between arrivals, or n={n} arrival times"
        )
    if isinstance(arrival, np.ndarray) and arrival.dtype.kind in "iuf":
        times = arrival.astype("float64")
    else:
        times = np.asarray(
            [check_arg(f"arrival[{i}]", t, "number", _ARRIVAL_FIX, low=0) for i, t in enumerate(arrival)]
        )
    if times.shape != (n,):
        raise ValueError(f"arrival has shape {times.shape}; give n={n} arrival times >= 0")
    bad = ~np.isfinite(times) | (times < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"arrival[{i}]={times[i]}: {_ARRIVAL_FIX}; replace it (0 = at the start)")
    return times


def _poisson_arrivals(rate: float, n: int, rng: np.random.Generator) -> np.ndarray:
    rate = check_arg("rate", rate, "number", _RATE_FIX, **_POSITIVE)
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
    """Given prompts (text or token ids), all arriving at time 0; request ids prefix0, prefix1, ..."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, Sequence | np.ndarray):
        raise wrong_type("prompts", prompts, "a list", "give a text, or a list of texts or of token-id lists")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; give at least one prompt")
    check_arg("prefix", prefix, "str", "give the request-id prefix as a string, e.g. prefix='r'")
    items = [
        WorkItem(
            rid,
            prompt=p,
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

    `arrival`: None (all at 0), seconds between arrivals, or n explicit arrival times (finite, >= 0).
    """
    n = check_arg("n", n, "int", _N_FIX, low=1)
    _check_common(ignore_eos, temperature, prefix)
    rng = np.random.default_rng(check_arg("seed", seed, "int", _SEED_FIX, low=0))
    plen = draw_lengths(prompt_len, n, rng, "prompt_len")
    olen = draw_lengths(output_len, n, rng, "output_len")
    times = _arrival_times(arrival, n)
    offsets = _corpus_offsets(n, rng)
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
    n = check_arg("n", n, "int", _N_FIX, low=1)
    _check_common(ignore_eos, temperature, prefix)
    rng = np.random.default_rng(check_arg("seed", seed, "int", _SEED_FIX, low=0))
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
    n = check_arg("n", n, "int", _N_FIX, low=1)
    rate = check_arg("rate", rate, "number", _RATE_FIX, **_POSITIVE)
    cv = check_arg("cv", cv, "number", "give the coefficient of variation of the gaps (1 = Poisson)", **_POSITIVE)
    _check_common(ignore_eos, temperature, prefix)
    rng = np.random.default_rng(check_arg("seed", seed, "int", _SEED_FIX, low=0))
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
    k = check_arg("k", k, "int", "give the number of concurrent users as an int >= 1", low=1)
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
    n = check_arg("n", n, "int", _N_FIX, low=1)
    check_request_params({"max_tokens": max_tokens}, type_error=TypeError)
    _check_common(ignore_eos, temperature, prefix)
    check_arg("chat", chat, "bool", "give True or False")
    rate = check_arg("rate", rate, "number", _RATE_FIX, optional=True, **_POSITIVE)
    check_arg("system_prompt", system_prompt, "str", "give the shared system text as a string, or None", optional=True)
    rng = np.random.default_rng(check_arg("seed", seed, "int", _SEED_FIX, low=0))
    if system_prompt is None:
        if prefix_len is None:
            system_prompt = DEFAULT_SYSTEM_PROMPT
        else:
            prefix_len = check_arg("prefix_len", prefix_len, "int", "give the shared prefix length in words", low=1)
            words = _corpus_words()
            system_prompt = " ".join(words[i % len(words)] for i in range(prefix_len))
    if questions is not None:
        if isinstance(questions, str) or not isinstance(questions, Sequence | np.ndarray):
            raise wrong_type("questions", questions, "a list", "give a list of question strings, or None")
        if len(questions) == 0:
            raise ValueError("questions is empty; give at least one question or leave it None")
        for i, q in enumerate(questions):
            check_arg(f"questions[{i}]", q, "str", "questions must be strings")
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


# ---- traces --------------------------------------------------------------------------

TRACE_COLUMNS = ("arrived_at", "num_prefill_tokens", "num_decode_tokens")
"""The columns `from_trace` reads: arrival seconds (optional), prompt and output token counts."""

_CSV_FIX = (
    "a trace CSV is UTF-8 text with a header line, then one row per request with columns num_prefill_tokens "
    "and num_decode_tokens (whole numbers >= 0) and optionally arrived_at (seconds >= 0)"
)
_COLUMN_FIX = {
    "arrived_at": "arrived_at must be a finite number of seconds >= 0",
    "num_prefill_tokens": "num_prefill_tokens must be a whole number of tokens >= 0",
    "num_decode_tokens": "num_decode_tokens must be a whole number of tokens >= 0",
}


def read_trace_csv(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A trace CSV's columns `from_trace` reads, checked, as float64 (arrived_at only if present).

    Raises ValueError naming the file, the line or data row (1-based, the header not counted)
    and the column for undecodable bytes, an empty file, missing columns, ragged rows, and
    blank, non-numeric, non-finite, negative or fractional values.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        line_start = data.rfind(b"\n", 0, e.start) + 1
        field = data.count(b",", line_start, e.start)
        header = data[: data.find(b"\n")].decode("utf-8", "replace").split(",") if line > 1 else []
        column = f"column {header[field].strip()!r}" if field < len(header) else f"field {field + 1}"
        raise ValueError(
            f"{path}: line {line} (data row {line - 1}), {column}: byte {data[e.start]:#04x} is not UTF-8 text; "
            f"save the file as UTF-8 (plain ASCII digits do); {_CSV_FIX}"
        ) from None
    text = text.rstrip()
    if not text:
        raise ValueError(f"{path}: the file is empty; {_CSV_FIX}")
    try:
        raw = pd.read_csv(
            io.StringIO(text + "\n"), header=None, dtype=str, keep_default_na=False, skip_blank_lines=False
        )
    except pd.errors.ParserError as e:
        raise _csv_parse_error(path, text, e) from None
    header = [str(c).strip() for c in raw.iloc[0]]
    rows = raw.iloc[1:].set_axis(header, axis=1).reset_index(drop=True)
    missing = [c for c in TRACE_COLUMNS[1:] if c not in header]
    if missing:
        looks_like_data = pd.to_numeric(pd.Series(header), errors="coerce").notna().all()
        hint = "; the first line looks like data: add the header line" if looks_like_data else ""
        raise ValueError(
            f"{path}: line 1 (header): missing column(s) {', '.join(missing)} (the header has "
            f"{', '.join(map(repr, header))}){hint}; {_CSV_FIX}"
        )
    if rows.empty:
        raise ValueError(f"{path}: has a header but no data rows; {_CSV_FIX}")
    out = {}
    for col in TRACE_COLUMNS:
        if col not in header:
            continue
        if header.count(col) > 1:
            raise ValueError(f"{path}: line 1 (header): column {col!r} appears {header.count(col)} times; {_CSV_FIX}")
        cells = rows[col].str.strip()
        values = pd.to_numeric(cells, errors="coerce").astype("float64").to_numpy()
        whole = col != "arrived_at"
        problems = [
            (cells.eq("").to_numpy(), "is blank"),  # or missing, in a short row
            (np.isnan(values), "is not a number"),
            (~np.isfinite(values), "is not finite"),
            (values < 0, "is negative"),
            ((values % 1 != 0) if whole else np.zeros(len(values), bool), "is not a whole number"),
            ((values > _MAX_LENGTH) if whole else np.zeros(len(values), bool), "is too large"),
        ]
        bad = np.logical_or.reduce([mask for mask, _ in problems])
        if bad.any():
            i = int(np.argmax(bad))
            why = next(reason for mask, reason in problems if mask[i])
            cell = "the cell" if why == "is blank" else repr(cells.iloc[i])
            raise ValueError(
                f"{path}: data row {i + 1} (line {i + 2}), column {col!r}: {cell} {why}; {_COLUMN_FIX[col]}"
            )
        out[col] = values
    return pd.DataFrame(out)


def _csv_parse_error(path: Path, text: str, e: pd.errors.ParserError) -> ValueError:
    """pandas' tokenizer error as a ValueError naming the file, the line and the column."""
    lines = text.split("\n")
    header = [c.strip() for c in lines[0].split(",")]
    m = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(e))
    if m is not None:
        expected, line, saw = (int(g) for g in m.groups())
        return ValueError(
            f"{path}: line {line} (data row {line - 1}) has {saw} fields but the header has {expected}: "
            f"{saw - expected} after the last column {header[-1]!r}; remove them (a stray comma?) or add "
            f"their columns to the header; {_CSV_FIX}"
        )
    m = re.search(r"EOF inside string starting at row (\d+)", str(e))
    if m is not None:
        line = int(m.group(1)) + 1
        field = lines[line - 1].split('"')[0].count(",") if line <= len(lines) else 0
        column = f"column {header[field]!r}" if field < len(header) else f"field {field + 1}"
        return ValueError(
            f'{path}: line {line} (data row {line - 1}), {column}: a quote (") opens a field that never '
            f"closes; remove the quote or close it; {_CSV_FIX}"
        )
    return ValueError(f"{path}: not a readable CSV file ({e}); {_CSV_FIX}")


_builtin_trace = cache(read_trace_csv)  # the built-in traces are read (and checked) once per process


def _trace_source(name: Any) -> tuple[pd.DataFrame, str]:
    """The checked rows and the workload name for a built-in trace name or a CSV path."""
    if isinstance(name, str) and name in TRACES:
        return _builtin_trace(dataset_file(TRACES[name])), name
    is_path = isinstance(name, os.PathLike) or (
        isinstance(name, str) and (name.lower().endswith(".csv") or Path(name).is_file())
    )
    if not is_path:
        if not isinstance(name, str):
            raise wrong_type("name", name, "a name or a path", f"give one of {', '.join(TRACES)}, or a CSV file's path")
        raise ValueError(f"unknown trace {name!r}; choose one of {', '.join(TRACES)}, or give the path of a CSV file")
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(
            f"trace file {path} does not exist; give the path of a CSV file ({_CSV_FIX}), or one of {', '.join(TRACES)}"
        )
    return read_trace_csv(path), path.stem


def from_trace(
    name: str | os.PathLike[str],
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
    repeat: bool = False,
) -> Workload:
    """Replay a public trace's arrivals and prompt/output lengths with corpus-text prompts.

    `name`: "azure_conv", "azure_code" (Azure LLM inference trace 2023) or "arxiv" (lengths
    only), or the path of a CSV file (str or Path; a str ending .csv or naming an existing
    file) with columns num_prefill_tokens, num_decode_tokens and optionally arrived_at
    (seconds); every value is checked (see `read_trace_csv`). Rows start..start+n; arrivals
    are relative to the first and divided by `time_scale` (10 = ten times faster); `rate`
    replaces them with Poisson arrivals (without arrived_at and without `rate` all arrive at
    0). Output lengths are multiplied by `output_scale`; `max_len` scales prompt and output
    down together so prompt + output fits a context, keeping at least 1 token of each; token
    counts of 0 become 1.

    `n` beyond the rows left after `start` is refused, unless `repeat=True`: then the rows
    cycle (after the last row comes row 0 again), each further pass's arrivals shifted to
    follow the previous pass's last one by the trace's mean gap, so a time-sorted trace gives
    non-decreasing arrivals.
    """
    n = check_arg("n", n, "int", _N_FIX + ", or None for all rows", optional=True, low=1)
    time_scale = check_arg("time_scale", time_scale, "number", "give a speed-up factor (10 = 10x)", **_POSITIVE)
    output_scale = check_arg(
        "output_scale", output_scale, "number", "give a factor for the output lengths", **_POSITIVE
    )
    max_len = check_arg("max_len", max_len, "int", "give a context of at least 2 tokens, or None", optional=True, low=2)
    start = check_arg("start", start, "int", "give the first row to replay as an int >= 0", low=0)
    rate = check_arg("rate", rate, "number", _RATE_FIX, optional=True, **_POSITIVE)
    seed = check_arg("seed", seed, "int", _SEED_FIX, low=0)
    _check_common(ignore_eos, temperature, prefix)
    repeat = check_arg("repeat", repeat, "bool", "give True or False")
    df, label = _trace_source(name)
    total = len(df)
    if start >= total:
        raise ValueError(f"start={start}; the {label} trace has rows 0..{total - 1}")
    left = total - start
    if n is not None and n > left and not repeat:
        raise ValueError(
            f"n={n}; the {label} trace has {total} rows, {left} of them from start={start}; give n <= {left}, "
            "or repeat=True to cycle the rows (later passes arrive after the earlier ones)"
        )
    count = left if n is None else n
    position = start + np.arange(count)
    rows, passes = position % total, position // total
    rng = np.random.default_rng(seed)
    plen = np.maximum(1.0, df["num_prefill_tokens"].to_numpy()[rows])
    olen = np.maximum(1.0, np.rint(df["num_decode_tokens"].to_numpy()[rows] * output_scale))
    if max_len is not None:
        factor = np.minimum(1.0, max_len / (plen + olen))
        olen = np.clip(np.floor(olen * factor), 1, max_len - 1)
        plen = np.clip(np.floor(plen * factor), 1, max_len - olen)
    if rate is not None:
        times = _poisson_arrivals(rate, count, rng)
    elif "arrived_at" in df:
        at = df["arrived_at"].to_numpy()
        span = at.max() - at.min()
        period = span + (span / (total - 1) if total > 1 else 0.0)  # one pass, plus a mean gap
        at = at[rows] + passes * period
        times = (at - at.min()) / time_scale
    else:
        times = np.zeros(count)
    offsets = _corpus_offsets(count, rng)
    return _corpus_workload(
        label, count, prefix, times, plen.astype(np.int64), olen.astype(np.int64), offsets, ignore_eos, temperature
    )
