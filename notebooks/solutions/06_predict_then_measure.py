"""Solutions to the exercises of 06_predict_then_measure.ipynb, for the instructor.

The simulator predicts these step counts; the solutions count them on the real native engine,
which takes exactly as many steps: a prediction's error is all in the time per step.
"""

from __future__ import annotations

import llmlab
import llmlab.exercises
from llmlab.session.run import Run


def run_native(max_num_seqs: int) -> Run:
    """Six 64-token prompts with 12 output tokens each, all at time 0, on the native engine."""
    eng = llmlab.launch("native", dtype="float32", max_num_seqs=max_num_seqs)
    try:
        return eng.run(llmlab.workloads.synthetic(6, prompt_len=64, output_len=12))
    finally:
        eng.close()


def solve_06_1() -> int:
    """Steps with four slots. Four requests take 12 steps (the prefill step samples the first of
    their 12 tokens); the last two start when the first four finish and take 12 more. Answer: 24."""
    return len(run_native(4).steps)


def solve_06_2() -> int:
    """Steps with six slots: all six start in the first step and finish together after the 12
    steps one request needs. Answer: 12."""
    return len(run_native(6).steps)


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    return {"06.1": solve_06_1(), "06.2": solve_06_2()}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
