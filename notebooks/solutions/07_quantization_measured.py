"""Solutions to the exercises of 07_quantization_measured.ipynb, for the instructor.

Both read the KV bytes per token of the native engine's own pool (`Engine.memory()`); SmolLM2-135M
has 30 layers, 3 KV heads and a head size of 64.
"""

from __future__ import annotations

import llmlab
import llmlab.exercises


def kv_bytes_per_token(kv_dtype: str) -> int:
    """The native engine's KV bytes per token, computing in float32 with `kv_dtype`."""
    eng = llmlab.launch("native", dtype="float32", kv_dtype=kv_dtype, num_blocks=64)
    try:
        memory = eng.memory()
    finally:
        eng.close()
    return int(memory["kv_bytes_per_block"] // memory["block_size"])


def solve_07_1() -> int:
    """KV bytes per token in float32: 2 (key and value) x 30 layers x 3 KV heads x 64 x 4 bytes.
    Answer: 46080."""
    return kv_bytes_per_token("auto")


def solve_07_2() -> int:
    """KV bytes per token with an int8 cache: 2 x 30 x 3 x (64 one-byte values + a 4-byte scale).
    11520 is the usual wrong answer (forgetting the scales). Answer: 12240."""
    return kv_bytes_per_token("int8")


def answers() -> dict[str, int]:
    """Every exercise's answer, computed."""
    return {"07.1": solve_07_1(), "07.2": solve_07_2()}


if __name__ == "__main__":
    for exercise_id, answer in answers().items():
        print(exercise_id, answer)
        llmlab.exercises.check(exercise_id, answer)
