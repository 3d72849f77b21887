"""Solutions to the exercises of 03_paged_kv_cache.ipynb, for the instructor."""

from __future__ import annotations

import llmlab
import llmlab.exercises
from llmlab.exercises import prefix_pair


def solve_03_1() -> int:
    """Blocks held by a request with a 100-token prompt and 20 outputs at block_size=16. At its last
    step its cache holds the prompt and 19 outputs (the 20th is sampled, never fed back): 119 tokens,
    rounded up to whole blocks of 16. By hand: ceil(119 / 16). Answer: 8."""
    eng = llmlab.launch("native", block_size=16)
    try:
        run = eng.run(llmlab.workloads.fixed([list(range(1000, 1100))], max_tokens=20, ignore_eos=True))
    finally:
        eng.close()
    return int(run.steps.kv_used.max())


def solve_03_2() -> int:
    """Prompt tokens of the second request served from the prefix cache, when two prompts share 200
    tokens and are sent one after the other (block_size=16). Only full blocks are hashed, each with
    everything before it: 12 blocks (192 tokens) lie inside the shared part; the 13th mixes shared and
    different tokens, so its hash differs. 200 is the usual wrong answer. Answer: 192."""
    first, second = prefix_pair()  # the two prompts the notebook's exercise builds
    eng = llmlab.launch("native", block_size=16)
    try:
        eng.run(first)
        return int(eng.run(second).requests.cached_tokens.iloc[0])
    finally:
        eng.close()


def solve_03_3() -> int:
    """Preemptions for twelve 64-token prompts with 64 outputs each in 36 blocks of 16 (576 tokens).
    The first step prefills eight prompts (512 tokens, the whole budget) into 32 blocks; at the next
    step each of the eight needs a fifth block for its 65th token and only four are free, so the
    newest running request is preempted, and so on each time outputs cross a block boundary. The
    preempted requests are recomputed later; everyone still finishes. Answer: 8."""
    eng = llmlab.launch("native", block_size=16, num_blocks=36)
    try:
        run = eng.run(llmlab.workloads.synthetic(12, prompt_len=64, output_len=64))
    finally:
        eng.close()
    return int(run.summary()["preemptions"])


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    return {"03.1": solve_03_1(), "03.2": solve_03_2(), "03.3": solve_03_3()}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
