"""How far an engine's outputs drift from the unquantized model's, measured as llama.cpp does.

On a fixed prompt set (datasets/quality_prompts.txt) both models score every position of every
prompt; we report the mean KL divergence KL(reference || engine) of the next-token
distributions and top-1 agreement (how often both pick the same most likely token). On a
held-out text (datasets/heldout.txt) we report perplexity, over non-overlapping windows of
`window` tokens (the first token of each window is context only). A few greedy chat answers
are kept side by side. The reference's numbers are computed once (`Reference`) and reused.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from llmlab.workloads import dataset_text

PROMPTS_FILE = "quality_prompts.txt"
HELDOUT_FILE = "heldout.txt"
GREEDY_PROMPTS = (
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "Name three colours of the rainbow.",
)
GREEDY_TOKENS = 24
WINDOW = 256


def quality_prompts() -> list[str]:
    """The fixed prompt set: blocks separated by blank lines, `#` lines skipped."""
    text = dataset_text(PROMPTS_FILE)
    lines = [line for line in text.splitlines() if not line.startswith("#")]
    return [p.strip("\n") for p in "\n".join(lines).split("\n\n") if p.strip()]


def heldout_text() -> str:
    """Original prose used nowhere else in llmlab, for perplexity."""
    return dataset_text(HELDOUT_FILE)


def _check_scores(engine) -> None:
    if not hasattr(engine, "score"):
        raise ValueError(
            f"the {engine.name} engine cannot score text (no next-token logits): "
            "measure quality on the native engine, e.g. llmlab.launch('native', weights='int8')"
        )


def _encode(engine, text: str) -> list[int]:
    return engine.tokenizer.encode(text, add_special_tokens=False)


def heldout_ids(engine, max_tokens: int | None = None) -> list[int]:
    """The held-out text's token ids under `engine`'s tokenizer, cut to `max_tokens` if given."""
    ids = _encode(engine, heldout_text())
    return ids if max_tokens is None else ids[:max_tokens]


def perplexity(engine, ids: list[int] | None = None, window: int = WINDOW) -> float:
    """exp(mean negative log-likelihood) of token `ids` (default: the held-out text) under `engine`."""
    _check_scores(engine)
    if window < 2:
        raise ValueError(f"window={window}: perplexity needs windows of at least 2 tokens, e.g. 256")
    ids = heldout_ids(engine) if ids is None else ids
    nll, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window]
        if len(chunk) < 2:
            break
        logp = engine.score(chunk)[:-1].log_softmax(-1)
        target = torch.tensor(chunk[1:], device=logp.device)
        nll += float(-logp.gather(1, target[:, None]).sum())
        count += len(chunk) - 1
    return float(torch.exp(torch.tensor(nll / count)))


def greedy_answers(engine, prompts=GREEDY_PROMPTS, max_tokens: int = GREEDY_TOKENS) -> list[str]:
    """Greedy chat answers, through the engine's normal scheduler."""
    return [c.text for c in engine.generate(list(prompts), max_tokens=max_tokens, chat=True)]


@dataclass
class Reference:
    """The unquantized model's log-probabilities on the prompt set, its perplexity and answers."""

    logprobs: list[torch.Tensor]  # per prompt: [tokens, vocab] float32 on CPU
    ppl: float
    answers: list[str]
    prompts: list[str]
    heldout: list[int]  # the held-out token ids perplexity is measured on
    answer_tokens: int = GREEDY_TOKENS  # length of the greedy answers compared side by side

    @classmethod
    def from_engine(
        cls,
        engine,
        prompts: list[str] | int | None = None,
        heldout_tokens: int | None = None,
        answer_tokens: int = GREEDY_TOKENS,
    ) -> Reference:
        """Score the prompt set (all, the first `prompts`, or the given list), the held-out text (its
        first `heldout_tokens`, default all) and greedy answers of `answer_tokens` once on `engine`."""
        _check_scores(engine)
        if prompts is None or isinstance(prompts, int):
            prompts = quality_prompts()[:prompts]
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: give at least one prompt, or None for the shipped set")
        logprobs = [engine.score(_encode(engine, p)).log_softmax(-1).cpu() for p in prompts]
        ids = heldout_ids(engine, heldout_tokens)
        answers = greedy_answers(engine, max_tokens=answer_tokens)
        return cls(logprobs, perplexity(engine, ids), answers, prompts, ids, answer_tokens)


@dataclass
class Quality:
    """One engine against the reference: KL, top-1 agreement, perplexity and answers side by side."""

    kl_mean: float
    kl_p99: float
    top1: float
    positions: int
    ppl: float
    ref_ppl: float
    answers: pd.DataFrame  # prompt, reference, engine

    def to_series(self) -> pd.Series:
        keys = ("kl_mean", "kl_p99", "top1", "positions", "ppl", "ref_ppl")
        return pd.Series({k: getattr(self, k) for k in keys}, dtype="float64")


def evaluate(engine, reference: Reference) -> Quality:
    """Compare `engine` with `reference` on the same prompts, held-out text and greedy prompts."""
    _check_scores(engine)
    kls, agree = [], []
    for prompt, ref in zip(reference.prompts, reference.logprobs, strict=True):
        logp = engine.score(_encode(engine, prompt)).log_softmax(-1).cpu()
        if logp.shape != ref.shape:
            raise ValueError(
                f"the engine's logits {tuple(logp.shape)} do not match the reference's {tuple(ref.shape)}: "
                "compare engines of the same model and tokenizer"
            )
        kls.append((ref.exp() * (ref - logp)).sum(-1))
        agree.append(ref.argmax(-1) == logp.argmax(-1))
    kl = torch.cat(kls)
    same = torch.cat(agree)
    answers = pd.DataFrame(
        {
            "prompt": list(GREEDY_PROMPTS),
            "reference": reference.answers,
            "engine": greedy_answers(engine, max_tokens=reference.answer_tokens),
        }
    )
    return Quality(
        kl_mean=float(kl.mean()),
        kl_p99=float(torch.quantile(kl, 0.99)),
        top1=float(same.float().mean()),
        positions=int(same.numel()),
        ppl=perplexity(engine, reference.heldout),
        ref_ppl=reference.ppl,
        answers=answers,
    )
