"""The notebooks' exercises: `check("02.1", answer)` says correct, wrong (with a hint) or not answered yet.

Every expected answer is a scheduling fact, never a time: the workloads arrive all at once and run
to their `max_tokens`, so the steps, batches, KV blocks and preemptions are the same on every
machine and dtype, for the native engine and for the simulator (which runs the same scheduler and
block manager). `check` computes the expected answer with a short simulator run, so it follows
the scheduler if that changes, and it never prints it: a wrong answer gets a hint that steers.
The worked solutions are in `notebooks/solutions/`, for the instructor.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from llmlab import workloads
from llmlab.session.engine import launch
from llmlab.session.run import Run
from llmlab.workloads import WorkItem, Workload

# ---- the workloads and settings the questions name --------------------------------------------


def _sim(workload: Workload, **settings: Any) -> Run:
    """`workload` on the simulator with a flat step time: only the schedule matters here."""
    eng = launch("sim", step_time=_flat_step, **settings)
    try:
        return eng.run(workload)
    finally:
        eng.close()


def _flat_step(slots: Any) -> float:
    """Every step takes 10 ms: the exercises count steps, blocks and tokens, never seconds."""
    return 0.01


def first_run_workload() -> Workload:
    """01.1 and 01.2: eight 64-token prompts, 16 output tokens each, all arriving at time 0."""
    return workloads.synthetic(8, prompt_len=64, output_len=16)


def budget_workload() -> Workload:
    """02.1: eight 100-token prompts, 20 output tokens each, all at time 0."""
    return workloads.synthetic(8, prompt_len=100, output_len=20)


def uneven_workload() -> Workload:
    """02.2: eight 64-token prompts with outputs of 4 to 64 tokens, all at time 0."""
    return workloads.synthetic(8, prompt_len=64, output_len=(4, 64), seed=3)


def tight_pool_workload() -> Workload:
    """03.3: twelve 64-token prompts, 64 output tokens each, all at time 0."""
    return workloads.synthetic(12, prompt_len=64, output_len=64)


def prefix_pair(shared: int = 200, tail: int = 40) -> tuple[Workload, Workload]:
    """03.2: two prompts of token ids that share their first `shared` tokens, then differ; sent one
    after the other, so the second can find the first's blocks in the prefix cache."""
    common = list(range(1000, 1000 + shared))
    first = WorkItem("a", prompt=common + list(range(3000, 3000 + tail)), max_tokens=8, ignore_eos=True)
    second = WorkItem("b", prompt=common + list(range(5000, 5000 + tail)), max_tokens=8, ignore_eos=True)
    return Workload("prefix-a", [first]), Workload("prefix-b", [second])


def prompt_read_workload() -> Workload:
    """04.1: twelve 100-token prompts, 8 output tokens each, all at time 0."""
    return workloads.synthetic(12, prompt_len=100, output_len=8)


def two_slots_workload() -> Workload:
    """04.2: six 32-token prompts, 10 output tokens each, all at time 0."""
    return workloads.synthetic(6, prompt_len=32, output_len=10)


def predict_workload() -> Workload:
    """06.1 and 06.2: six 64-token prompts, 12 output tokens each, all at time 0."""
    return workloads.synthetic(6, prompt_len=64, output_len=12)


# ---- the expected answers (short simulator runs, computed once) --------------------------------


@cache
def _steps_first_run() -> int:
    return len(_sim(first_run_workload()).steps)


@cache
def _peak_blocks_first_run() -> int:
    return int(_sim(first_run_workload()).steps.kv_used.max())


@cache
def _prefill_only_steps() -> int:
    steps = _sim(budget_workload(), policy="prefill_first", max_num_batched_tokens=128).steps
    return int(((steps.prefill_tokens > 0) & (steps.decode_tokens == 0)).sum())


@cache
def _static_extra_steps() -> int:
    static = _sim(uneven_workload(), policy="static", max_num_seqs=4)
    chunked = _sim(uneven_workload(), policy="chunked", max_num_seqs=4)
    return len(static.steps) - len(chunked.steps)


@cache
def _blocks_one_request() -> int:
    wl = workloads.fixed([list(range(1000, 1100))], max_tokens=20, ignore_eos=True)
    return int(_sim(wl, block_size=16).steps.kv_used.max())


@cache
def _cached_prefix_tokens() -> int:
    first, second = prefix_pair()
    eng = launch("sim", step_time=_flat_step, block_size=16)
    try:
        eng.run(first)
        return int(eng.run(second).requests.cached_tokens.iloc[0])
    finally:
        eng.close()


@cache
def _preemptions_tight_pool() -> int:
    run = _sim(tight_pool_workload(), block_size=16, num_blocks=36)
    return int(run.requests.num_preemptions.sum())


@cache
def _prompt_steps_budget_256() -> int:
    steps = _sim(prompt_read_workload(), block_size=32, max_num_batched_tokens=256).steps
    return int((steps.prefill_tokens > 0).sum())


@cache
def _steps_two_slots() -> int:
    return len(_sim(two_slots_workload(), max_num_seqs=2).steps)


def _plan_70b(num_gpus: int, weights: str, kv_dtype: str) -> Any:
    """The memory plan `llmlab.plan(model="llama-3.1-70b", gpu="H100-SXM", max_model_len=8192, ...)`
    makes for one row (its defaults: blocks of 16, 90% of memory, a 2048-token budget, 256 sequences)."""
    from llmlab.plan.memory import memory_plan  # the plan package is only needed by these exercises

    return memory_plan(
        "llama-3.1-70b",
        "H100-SXM",
        weights=weights,
        kv_dtype=kv_dtype,
        tp=num_gpus,
        max_model_len=8192,
        block_size=16,
        gpu_memory_utilization=0.9,
        max_num_batched_tokens=2048,
        max_num_seqs=256,
    )


@cache
def _fewest_h100_bf16() -> int:
    return min(n for n in (1, 2, 4, 8) if _plan_70b(n, "bf16", "bf16").fits)


@cache
def _full_context_seqs_fp8() -> int:
    return int(_plan_70b(2, "fp8", "fp8").kv_tokens // 8192)


@cache
def _predicted_steps(max_num_seqs: int) -> int:
    return len(_sim(predict_workload(), max_num_seqs=max_num_seqs).steps)


def _smollm2_kv_bytes_per_token(kv_dtype: str) -> int:
    from llmlab.models.shapes import get_shape
    from llmlab.plan.memory import kv_bytes_per_token, make_shard

    shape = get_shape("smollm2-135m")
    return int(kv_bytes_per_token(make_shard(shape), shape.num_layers, kv_dtype))


# ---- the exercises -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Exercise:
    """One question: how to compute its answer, one line on why it matters, and hints that steer.

    `traps` maps a likely wrong answer to a hint aimed at that mistake; `hint` serves the rest.
    """

    id: str
    question: str
    expected: Callable[[], Any]
    why: str
    hint: str
    traps: dict[Any, str] = field(default_factory=dict)


EXERCISES: dict[str, Exercise] = {
    e.id: e
    for e in [
        Exercise(
            "01.1",
            "how many scheduler steps does the native engine take for synthetic(8, prompt_len=64, output_len=16)?",
            _steps_first_run,
            "a request's first token comes out of its prefill step, so each output token costs one step "
            "and a batch of eight costs no more steps than one request.",
            "count the rows of run.steps; look at the first row: what did that step compute, and did it "
            "produce any output tokens?",
            traps={17: "close: which step produced each request's first output token? Look at run.steps.head(2)."},
        ),
        Exercise(
            "01.2",
            "in that run, how many KV blocks were in use at the busiest step?",
            _peak_blocks_first_run,
            "a request holds whole blocks: its prompt and outputs rounded up to block_size tokens, so the "
            "pool's size decides how many requests fit at once.",
            "take the largest value of run.steps.kv_used; by hand: how many tokens does each request keep "
            "in the cache at its last step, and how many blocks of 16 tokens hold them?",
        ),
        Exercise(
            "02.1",
            "under prefill_first with max_num_batched_tokens=128, how many steps of synthetic(8, prompt_len=100, "
            "output_len=20) decode nothing?",
            _prefill_only_steps,
            "every prefill-only step stalls the decodes of every running request: that is the inter-token "
            "latency chunked prefill removes.",
            "count the rows of run.steps with prefill_tokens > 0 and decode_tokens == 0; the budget caps each "
            "step's prompt tokens, so how many steps does reading all the prompts take?",
            traps={1: "that is the chunked policy's count: launch the engine with policy='prefill_first'."},
        ),
        Exercise(
            "02.2",
            "with max_num_seqs=4, how many more steps does static take than chunked on "
            "synthetic(8, prompt_len=64, output_len=(4, 64), seed=3)?",
            _static_extra_steps,
            "static batching holds a slot until the batch's longest request ends; continuous batching refills "
            "it at once, so the same work takes fewer steps.",
            "run the workload twice, policy='static' and policy='chunked', both with max_num_seqs=4, and subtract "
            "the two len(run.steps); the answer is a positive number of steps.",
        ),
        Exercise(
            "03.1",
            "with block_size=16, how many KV blocks does a request with a 100-token prompt and 20 output "
            "tokens hold at its last step?",
            _blocks_one_request,
            "blocks are allocated as the sequence grows, a whole block at a time, so the waste is at most "
            "one partly filled block per request.",
            "count the tokens in its KV cache at its last step (the final sampled token is never fed back), "
            "then round up to whole blocks of 16; or run it alone and read run.steps.kv_used.",
        ),
        Exercise(
            "03.2",
            "two prompts share their first 200 tokens, then differ; sent one after the other with block_size=16, "
            "how many prompt tokens of the second come from the prefix cache?",
            _cached_prefix_tokens,
            "the cache is keyed by whole blocks, each hashed with everything before it: a partly shared block "
            "is not shared at all.",
            "only full blocks are cached, and a block's hash covers all its tokens: how many whole blocks of 16 "
            "lie entirely inside the shared part? Check with run.requests.cached_tokens of the second run.",
            traps={200: "not all of it: think about the block that straddles the end of the shared part."},
        ),
        Exercise(
            "03.3",
            "with block_size=16 and num_blocks=36, how many preemptions does synthetic(12, prompt_len=64, "
            "output_len=64) cause in total?",
            _preemptions_tight_pool,
            "a pool too small for the running requests makes the engine throw work away and recompute it: "
            "preemptions cost throughput and latency.",
            "launch the engine with block_size=16, num_blocks=36, run the workload and read "
            "run.summary()['preemptions'] (or the sum of run.requests.num_preemptions).",
            traps={
                0: "the pool holds fewer tokens than the twelve requests need at once; look at run.steps.preempted."
            },
        ),
        Exercise(
            "04.1",
            "with the notebook's knobs (block_size=32, max_num_batched_tokens=256) and policy chunked, in how "
            "many steps does synthetic(12, prompt_len=100, output_len=8) read prompt tokens?",
            _prompt_steps_budget_256,
            "chunked prefill spreads the prompts over several steps and mixes decodes into them, so a long "
            "queue of prompts never stops the requests already running.",
            "count the rows of run.steps with prefill_tokens > 0; the decodes of requests already running "
            "take their share of each step's budget first.",
            traps={4: "the prompts' tokens divided by the budget, rounded down, is too few: the decodes take part."},
        ),
        Exercise(
            "04.2",
            "with max_num_seqs=2, how many steps does synthetic(6, prompt_len=32, output_len=10) take?",
            _steps_two_slots,
            "the batch size caps how many requests share a step: the others wait, and the run's length grows "
            "with every request that cannot get a slot.",
            "only so many requests run at once: how many rounds of requests does that make, and how many steps "
            "does each round take (the first output token comes from the prefill step)?",
            traps={33: "close: the first output token of each request comes out of its prefill step."},
        ),
        Exercise(
            "05.1",
            "with llmlab.plan(model='llama-3.1-70b', gpu='H100-SXM', weights=['bf16'], max_model_len=8192, "
            "num_gpus=[1, 2, 4, 8]), what is the fewest GPUs on which the model fits?",
            _fewest_h100_bf16,
            "bf16 weights of a 70B model take about 141 GB: more than one GPU holds, so tensor parallelism is "
            "needed before batching is even a question.",
            "build the table with simulate=False and read its fits column; fitting needs the weights and the KV "
            "of one full-length request on each GPU.",
            traps={1: "one H100 holds about 80 GB: compare with the bf16 weights' size in the table."},
        ),
        Exercise(
            "05.2",
            "with fp8 weights and an fp8 KV cache on two H100-SXM (max_model_len=8192), how many requests of the "
            "full 8192 tokens fit in the KV cache at once?",
            _full_context_seqs_fp8,
            "an fp8 cache halves the bytes per token, so the same memory holds twice the tokens: twice the "
            "requests in flight at full context.",
            "plan the one row (num_gpus=2, weights=['fp8'], kv_dtype=['fp8'], simulate=False) and divide its "
            "kv_tokens by the context, rounding down.",
            traps={29: "that is a bf16 cache: pass kv_dtype=['fp8'] as well."},
        ),
        Exercise(
            "06.1",
            "on the simulator with max_num_seqs=4, how many steps does synthetic(6, prompt_len=64, output_len=12) "
            "take? (The native engine takes as many.)",
            lambda: _predicted_steps(4),
            "the simulator runs the same scheduler as the engine: the steps are predicted exactly, and all the "
            "prediction's error is in how long each step takes.",
            "run it on llmlab.launch('sim', max_num_seqs=4) and count run.steps; by hand: the requests that wait "
            "start when a slot frees, and then need their own steps.",
        ),
        Exercise(
            "06.2",
            "and with max_num_seqs=6, how many steps does the same workload take?",
            lambda: _predicted_steps(6),
            "with a slot for every request the run takes as many steps as the longest output: more slots cut "
            "steps, and whether they cut time depends on each step's cost, which 06 measures.",
            "every request now starts in the first step; how many steps does one request need?",
        ),
        Exercise(
            "07.1",
            "how many bytes of KV cache does one token of SmolLM2-135M take in float32 (kv_dtype 'auto' with "
            "dtype float32)?",
            lambda: _smollm2_kv_bytes_per_token("fp32"),
            "every token keeps a key and a value per layer and KV head: that product, times the bytes per "
            "number, is what the KV pool is divided by.",
            "2 (key and value) x layers x KV heads x head size x 4 bytes; read num_layers, num_kv_heads "
            "and head_dim of llmlab.models.shapes.get_shape('smollm2-135m'), or the kv_bytes_per_token "
            "column of the comparison table.",
        ),
        Exercise(
            "07.2",
            "and with kv_dtype='int8' (one float32 scale per token and KV head), how many bytes per token?",
            lambda: _smollm2_kv_bytes_per_token("int8"),
            "int8 saves nearly three quarters of the cache, not all of it: the scales that keep its accuracy "
            "take bytes too.",
            "one byte per number now, plus the scales: each key and each value vector of a head has its own "
            "4-byte scale.",
            traps={11520: "close: add the scales, one 4-byte float per key or value vector of each head."},
        ),
    ]
}


# ---- checking ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """What `check` found: status "correct", "wrong" or "unanswered", and the message it printed."""

    exercise_id: str
    status: str
    message: str

    def __bool__(self) -> bool:
        return self.status == "correct"

    def __repr__(self) -> str:
        return f"Verdict({self.exercise_id!r}, {self.status!r})"

    def _ipython_display_(self) -> None:
        """Shown as a cell's result: nothing more, `check` has printed the message already."""


def check(exercise_id: str, answer: Any) -> Verdict:
    """Print and return whether `answer` to exercise `exercise_id` (e.g. "02.1") is right.

    Correct: one line on why it matters. Wrong: a hint, never the answer. None: a reminder (no failure).
    """
    exercise = EXERCISES.get(str(exercise_id).strip())
    if exercise is None:
        raise ValueError(f"exercise {exercise_id!r} is unknown; the exercises are {', '.join(EXERCISES)}")
    if answer is None:
        verdict = Verdict(exercise.id, "unanswered", f"{exercise.id}: not answered yet: {exercise.question}")
    else:
        verdict = _judge(exercise, answer)
    print(verdict.message)
    return verdict


def _judge(exercise: Exercise, answer: Any) -> Verdict:
    expected = exercise.expected()
    given = _normalise(answer, expected)
    if given is None:
        kind = "a whole number (an int)" if isinstance(expected, int) else "a word (a str)"
        return Verdict(exercise.id, "wrong", f"{exercise.id}: give {kind}, not a {type(answer).__name__}.")
    if given == expected:
        return Verdict(exercise.id, "correct", f"{exercise.id}: correct. Why it matters: {exercise.why}")
    hint = exercise.traps.get(given, exercise.hint)
    return Verdict(exercise.id, "wrong", f"{exercise.id}: not quite. Hint: {hint}")


def _normalise(answer: Any, expected: Any) -> Any:
    """The answer in the expected answer's form: a whole number within 1e-6 (an int, a float, a
    numpy scalar or digits in a string), or a lowercase stripped word; None if it cannot be one."""
    if isinstance(expected, str):
        return answer.strip().strip("'\"`").lower() if isinstance(answer, str) else None
    if isinstance(answer, str):
        try:
            answer = float(answer.strip())
        except ValueError:
            return None
    if isinstance(answer, bool) or not isinstance(answer, numbers.Real):
        return None
    value = float(answer)
    nearest = round(value) if abs(value) < 2**53 else None
    if nearest is None or abs(value - nearest) > 1e-6:
        return value  # not a whole number: compares unequal to every int
    return int(nearest)
