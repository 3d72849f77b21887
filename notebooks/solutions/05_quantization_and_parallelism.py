"""Solutions to the exercises of 05_quantization_and_parallelism.ipynb, for the instructor.

Both come from the memory model alone (`llmlab.plan(..., simulate=False)`): no simulation, no GPU.
"""

from __future__ import annotations

import llmlab
import llmlab.exercises


def solve_05_1() -> int:
    """The fewest H100-SXM GPUs that hold Llama-3.1-70B in bf16 with an 8k context. Its weights take
    about 141 GB, more than one 80 GB GPU; split over two (tp=2) each holds about 71 GB and keeps
    room for the KV cache of a full-length request. Answer: 2."""
    table = llmlab.plan(
        model="llama-3.1-70b", gpu="H100-SXM", num_gpus=[1, 2, 4, 8], weights=["bf16"], max_model_len=8192,
        simulate=False,
    )  # fmt: skip
    return int(table.loc[table.fits, "num_gpus"].min())


def solve_05_2() -> int:
    """Requests of the full 8192 tokens that fit at once in the fp8 KV cache of two H100-SXM with fp8
    weights: the row's kv_tokens (478,400) divided by 8192, rounded down. A bf16 cache holds half the
    tokens: 29 requests. Answer: 58."""
    table = llmlab.plan(
        model="llama-3.1-70b", gpu="H100-SXM", num_gpus=2, weights=["fp8"], kv_dtype=["fp8"], max_model_len=8192,
        simulate=False,
    )  # fmt: skip
    return int(table["kv_tokens"].iloc[0] // 8192)


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    return {"05.1": solve_05_1(), "05.2": solve_05_2()}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
