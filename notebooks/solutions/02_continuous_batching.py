"""Solutions to the exercises of 02_continuous_batching.ipynb, for the instructor."""

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


def solve_02_1() -> int:
    """Steps that decode nothing under prefill_first with a 128-token budget, for eight 100-token
    prompts. 800 prompt tokens at most 128 a step take 7 steps, and prefill_first never mixes a
    decode into them, so every running request waits through each. Under chunked only the very
    first step decodes nothing. Answer: 7."""
    wl = llmlab.workloads.synthetic(8, prompt_len=100, output_len=20)
    steps = run_native(wl, policy="prefill_first", max_num_batched_tokens=128).steps
    return int(((steps.prefill_tokens > 0) & (steps.decode_tokens == 0)).sum())


def solve_02_2() -> int:
    """Extra steps static batching takes over chunked with four slots, for eight requests whose
    outputs range from 9 to 57 tokens. Static keeps the first four until the longest of them ends
    (57 tokens), then the next four; chunked gives a finished request's slot to the next one at once.
    Answer: 35."""
    wl = llmlab.workloads.synthetic(8, prompt_len=64, output_len=(4, 64), seed=3)
    static = run_native(wl, policy="static", max_num_seqs=4)
    chunked = run_native(wl, policy="chunked", max_num_seqs=4)
    return len(static.steps) - len(chunked.steps)


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    return {"02.1": solve_02_1(), "02.2": solve_02_2()}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
