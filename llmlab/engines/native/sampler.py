"""Pick the next token per request: greedy, or temperature with top-k and top-p, seeded per request."""

from __future__ import annotations

import torch

from llmlab.core.request import SamplingParams


def sample(logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]) -> list[int]:
    """One token id per row of `logits` [rows, vocab] (float32)."""
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for row, (p, gen) in enumerate(zip(params, generators, strict=True)):
        if p.greedy:
            out.append(greedy[row])
            continue
        scores = logits[row] / p.temperature
        if p.top_k > 0:
            kth = torch.topk(scores, min(p.top_k, scores.shape[-1])).values[-1]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, descending=True)
            cumulative = sorted_scores.softmax(-1).cumsum(-1)
            drop = cumulative - sorted_scores.softmax(-1) >= p.top_p  # keep the smallest set reaching top_p
            scores = scores.scatter(0, order[drop], float("-inf"))
        probs = scores.softmax(-1).cpu()
        out.append(int(torch.multinomial(probs, 1, generator=gen).item()))
    return out
