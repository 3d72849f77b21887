"""Pick the next token per request: greedy, or temperature with top-k and top-p, seeded per request."""

from __future__ import annotations

import torch

from llmlab.core.request import SamplingParams


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
) -> list[int | Exception]:
    """One token id per row of `logits` [rows, vocab] (float32). A row whose sampling raises gets
    the exception in place of a token, so that one request fails and the rest of the batch goes on."""
    greedy = logits.argmax(dim=-1).tolist()
    out: list[int | Exception] = []
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        try:
            out.append(greedy[row] if p.greedy else sample_row(logits[row], p, gen))
        except Exception as exc:
            out.append(exc)
    return out


def sample_row(logits: torch.Tensor, p: SamplingParams, gen: torch.Generator | None) -> int:
    """One token from one row of logits [vocab]: temperature, then top-k, then top-p, seeded by `gen`."""
    scores = logits / p.temperature
    if p.top_k > 0:
        kth = torch.topk(scores, min(p.top_k, scores.shape[-1])).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if p.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        cumulative = sorted_scores.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_scores.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
        scores = scores.scatter(0, order[drop], float("-inf"))
    probs = scores.softmax(-1).cpu()
    return int(torch.multinomial(probs, 1, generator=gen).item())
