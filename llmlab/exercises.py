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
