"""Solutions to the exercises of 04_vllm_inside.ipynb, for the instructor.

Both are scheduling facts with every request arriving at time 0: the native engine (run here, as a
learner without vLLM would) and the simulator give them exactly; vLLM's own scheduler makes the
same choices on these workloads, which the notebook's side-by-side runs let a learner compare.
"""

from __future__ import annotations

import llmlab
import llmlab.exercises
from llmlab.session.run import Run
from llmlab.workloads import Workload


def run_native(workload: Workload, **settings) -> Run:
    """`workload` on a fresh native engine launched with `settings`."""
    eng = llmlab.launch("native", **settings)
    try:
        return eng.run(workload)
    finally:
        eng.close()


def solve_04_1() -> int:
    """Steps that read prompt tokens for twelve 100-token prompts under a 256-token budget. 1,200
    prompt tokens at 256 a step would take 5 steps even alone; from the second step on the requests
    already running decode one token each out of the same budget (254, 251, 249 prompt tokens), and
    the fifth step reads the last 190. Answer: 5."""
    wl = llmlab.workloads.synthetic(12, prompt_len=100, output_len=8)
    steps = run_native(wl, block_size=32, max_num_batched_tokens=256).steps
    return int((steps.prefill_tokens > 0).sum())


def solve_04_2() -> int:
    """Steps for six requests with two slots. Three rounds of two requests; each round takes 10
    steps (the prefill step samples the first of the 10 output tokens). 33 is the usual wrong
    answer (counting the prefill as a step of its own). Answer: 30."""
    wl = llmlab.workloads.synthetic(6, prompt_len=32, output_len=10)
    return len(run_native(wl, max_num_seqs=2).steps)


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    return {"04.1": solve_04_1(), "04.2": solve_04_2()}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
