"""Solutions to the exercises of 01_first_run.ipynb, for the instructor.

Both use one run: eight 64-token prompts with 16 output tokens each, all arriving at time 0, on the
native engine with its default settings (policy "chunked", a 512-token budget, blocks of 16).
"""

from __future__ import annotations

import llmlab
import llmlab.exercises
from llmlab.session.run import Run


def first_run() -> Run:
    """The run both exercises read."""
    eng = llmlab.launch("native")
    try:
        return eng.run(llmlab.workloads.synthetic(8, prompt_len=64, output_len=16))
    finally:
        eng.close()


def solve_01_1(run: Run) -> int:
    """The run's steps. The first step prefills all eight prompts (512 tokens, within the budget) and
    samples each request's first token; each of the 15 steps after it decodes one more token for all
    eight. 17 is the usual wrong answer (forgetting that prefill yields a token). Answer: 16."""
    return len(run.steps)


def solve_01_2(run: Run) -> int:
    """KV blocks in use at the busiest step. At its last step a request holds its 64 prompt tokens
    and 15 of its outputs (the 16th is sampled, never fed back): 79 tokens, 5 blocks of 16. Eight
    requests: 40 blocks (prompts share no block: they start at different places in the corpus).
    Answer: 40."""
    return int(run.steps.kv_used.max())


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    run = first_run()
    return {"01.1": solve_01_1(run), "01.2": solve_01_2(run)}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
