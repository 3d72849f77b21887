"""Every launch setting in one table: its type, its allowed values and the fix to name when it is wrong.

`check_settings(engine, settings)` checks a dict of launch settings against the table before any
engine does work (before weights load), raising `SettingTypeError` for a wrong type (bool is not
an int, 2.5 is not a block count) and ValueError for a value out of range (NaN, inf, negative,
zero where not allowed, an unknown choice), each naming the setting, the value and the fix.
`llmlab.launch` calls it, and so does every engine constructor, so direct construction is checked
too. The table has one entry per setting (per engine where engines differ) and no defaults: the
engines' signatures hold those, so it can later grow into one `EngineConfig` dataclass.

Per-request sampling settings (`SamplingParams`, `WorkItem`) are checked by the same machinery from
the `REQUEST_PARAMS` table, and function arguments (the workload generators') by `check_arg`, which
raises a plain TypeError for a wrong type. Nothing here imports torch or an engine until a choice
list needs it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from os import PathLike
from typing import Any

ALL_ENGINES = ("native", "sim", "vllm")


class SettingTypeError(TypeError, ValueError):
    """A setting of the wrong type. A TypeError that is also a ValueError, so code that catches
    ValueError around a launch or a run (as it did before types were checked) still catches it."""


# value kinds: what each accepts, and how to say it in a message ---------------------------
def _is_bool(v: Any) -> bool:  # numpy's bool as well (np.bool_, named "bool" since numpy 2)
    return isinstance(v, bool) or (type(v).__module__ == "numpy" and type(v).__name__ in ("bool", "bool_"))


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not _is_bool(v)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not _is_bool(v)


def _is_torch(v: Any) -> bool:
    return isinstance(v, str) or type(v).__module__ == "torch"  # a name, or a torch.dtype / torch.device


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(isinstance(s, str) for s in v)


def _is_int_list(v: Any) -> bool:
    return isinstance(v, list | tuple) and all(_is_int(t) for t in v)


KINDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "int": (_is_int, "an int"),
    "number": (_is_number, "a number"),
    "bool": (_is_bool, "True or False"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "path": (lambda v: isinstance(v, str | PathLike), "a name or a path"),
    "torch": (_is_torch, "a name or a torch object"),
    "callable": (callable, "a callable"),
    "dict": (lambda v: isinstance(v, Mapping), "a dict"),
    "str_list": (_is_str_list, "a list of strings"),
    "int_list": (_is_int_list, "a list of ints"),
    "any": (lambda v: True, "anything"),
}
_ITEM_KIND = {"str_list": "str", "int_list": "int"}  # a list kind's items: a wrong one is named
_PLAIN: dict[str, Callable[[Any], Any]] = {  # a checked value as a plain Python value (numpy scalars too)
    "int": int,
    "number": float,
    "bool": bool,
    "str_list": list,
    "int_list": lambda v: [int(t) for t in v],
}


@dataclass(frozen=True)
class Setting:
    """One setting's spec: its type (`kind`, a key of KINDS), whether None is allowed (None lets
    the engine choose), its range or choices, and the fix to print when it is wrong.

    `low`/`high` bound numbers (inclusive unless `low_open`/`high_open`); `multiple_of` asks for a
    multiple; `choices` is a tuple, or a function returning one (imported lazily, e.g. torch's).
    `engines` says which engines take it; a setting the engines spell alike but treat differently
    has one entry per variant."""

    name: str
    kind: str
    fix: str
    engines: tuple[str, ...] = ALL_ENGINES
    optional: bool = False
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    multiple_of: int | None = None
    choices: tuple[Any, ...] | Callable[[], Iterable[Any]] | None = None
    doc: str = ""

    def requirement(self) -> str:
        """The allowed values in words, e.g. 'a positive integer' or 'a number in [0, 1)'."""
        if self.choices is not None:
            return f"one of {list(self.allowed())}"
        noun = "integer" if self.kind == "int" else "number"
        if self.low is not None and self.high is not None:
            lo, hi = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"{_a(noun)} in {lo}{_fmt(self.low)}, {_fmt(self.high)}{hi}"
        elif self.low is not None:
            if self.kind == "int" and self.low == 1:
                text = "a positive integer"
            else:
                text = f"{_a(noun)} {'>' if self.low_open else '>='} {_fmt(self.low)}"
        elif self.high is not None:
            text = f"{_a(noun)} {'<' if self.high_open else '<='} {_fmt(self.high)}"
        else:
            text = KINDS[self.kind][1]
        if self.multiple_of:
            text += f" and a multiple of {self.multiple_of}"
        return text

    def allowed(self) -> tuple[Any, ...]:
        choices = self.choices() if callable(self.choices) else self.choices
        return tuple(choices or ())

    def check(self, value: Any, where: str = "", type_error: type[TypeError] = SettingTypeError) -> Any:
        """Return `value` as a plain int, float, bool or list if it is allowed; else raise `type_error`
        or ValueError. `where` prefixes the message (e.g. "request 'r3': ")."""
        if value is None and self.optional:
            return None
        ok, expected = KINDS[self.kind]
        shown = f"{where}{self.name}={_show(value)}"
        if value is None or not ok(value):
            item = _ITEM_KIND.get(self.kind)
            if item and isinstance(value, list | tuple):  # name the first item of the wrong type
                i = next(i for i, v in enumerate(value) if not KINDS[item][0](v))
                raise wrong_type(f"{self.name}[{i}]", value[i], KINDS[item][1], self.fix, where, type_error)
            raise wrong_type(
                self.name, value, expected + (" or None" if self.optional else ""), self.fix, where, type_error
            )
        if self.kind == "number" and not _finite(value):
            raise ValueError(f"{shown} must be {self.requirement().replace('a number', 'a finite number')}: {self.fix}")
        if self.choices is not None:
            if value not in self.allowed():
                raise ValueError(f"{shown} is unknown: choose {self.requirement()}; {self.fix}")
            return
        if self.kind in ("int", "number"):
            too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
            if too_low or too_high or (self.multiple_of and value % self.multiple_of):
                raise ValueError(f"{shown} must be {self.requirement()}: {self.fix}")
        return _PLAIN.get(self.kind, lambda v: v)(value)


def check_arg(name: str, value: Any, kind: str, fix: str, where: str = "", **spec: Any) -> Any:
    """Check a function argument as a `Setting(name, kind, fix, **spec)` and return it as a plain
    value; a wrong type raises a plain TypeError (an argument is no launch setting)."""
    return Setting(name, kind, fix, **spec).check(value, where, TypeError)


def wrong_type(
    name: str, value: Any, expected: str, fix: str, where: str = "", error: type[TypeError] = TypeError
) -> TypeError:
    """The error for `name=value` of the wrong type: "<where>name=value is a T, not <expected>: fix"."""
    return error(f"{where}{name}={_show(value)} is {_a(type(value).__name__)}, not {expected}: {fix}")


def _finite(x: Any) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:  # an int too large for a float
        return False


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _show(value: Any) -> str:
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        value = value.item()  # a numpy scalar as the plain number it is
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# choices, looked up when first needed ----------------------------------------------------
def _policies() -> Iterable[str]:
    from llmlab.core.policies import POLICIES

    return sorted(POLICIES)


def _native_weights() -> Iterable[str]:
    from llmlab.engines.native.quant import WEIGHT_FORMATS

    return WEIGHT_FORMATS


def _native_kv_dtypes() -> Iterable[str]:
    from llmlab.engines.native.kv_cache import KV_DTYPES

    return KV_DTYPES


def _model_weights() -> Iterable[str]:
    from llmlab.plan.memory import WEIGHT_BYTES

    return tuple(WEIGHT_BYTES)


def _model_kv_dtypes() -> Iterable[str]:
    from llmlab.plan.memory import KV_BYTES

    return (*KV_BYTES, "auto")


N, S, V = ("native",), ("sim",), ("vllm",)
NS, NV, SV = ("native", "sim"), ("native", "vllm"), ("sim", "vllm")

SETTINGS: tuple[Setting, ...] = (
    # what runs, and where
    Setting("model", "path", "give a model name (e.g. 'smollm2-135m') or a local checkpoint directory", NV, True),
    Setting("model", "any", "give a shape name, a local path or a config dict", S),
    Setting("device", "torch", "use 'cpu' or 'cuda' (or None to pick)", N, True),
    Setting("dtype", "torch", "use 'float32' or 'bfloat16' (or None to pick)", N, True),
    Setting("dtype", "str", "use a dtype name vLLM knows, e.g. 'auto', 'float32' or 'bfloat16'", V),
    Setting("gpu", "any", "give a GPU name from llmlab.plan.hardware, 'cpu', or None for this machine", S, True),
    Setting("num_gpus", "int", "give the number of GPUs, tp x pp", S, True, low=1),
    Setting("tp", "int", "give the tensor-parallel degree", S, True, low=1),
    Setting("pp", "int", "give the pipeline-parallel degree", S, True, low=1),
    Setting("tensor_parallel_size", "int", "give the tensor-parallel degree, e.g. 1", V, low=1),
    Setting("pipeline_parallel_size", "int", "give the pipeline-parallel degree, e.g. 1", V, low=1),
    # weights and KV precision
    Setting("weights", "str", "leave it None for the compute dtype", N, True, choices=_native_weights),
    Setting("weights", "str", "leave it None for the hardware's default", S, True, choices=_model_weights),
    Setting("kv_dtype", "str", "use 'auto' to store K/V in the compute dtype", N, choices=_native_kv_dtypes),
    Setting("kv_dtype", "str", "leave it None to follow the weights", S, True, choices=_model_kv_dtypes),
    Setting("kv_cache_dtype", "str", "use 'auto' or a KV cache dtype vLLM knows, e.g. 'fp8'", V),
    Setting("quantization", "str", "give a quantization method vLLM knows, or None", V, True),
    Setting(
        "group_size",
        "int",
        "int4 groups need an even number of inputs, e.g. 128",
        N,
        low=2,
        multiple_of=2,
        doc="inputs per int4 scale group",
    ),
    # the KV pool
    Setting("block_size", "int", "give a positive number of tokens per block, e.g. 16", NS, low=1),
    Setting("block_size", "int", "give a positive number of tokens per block, or None for vLLM's", V, True, low=1),
    Setting("num_blocks", "int", "the KV pool needs at least one block; leave it None for a default", NS, True, low=1),
    Setting("num_gpu_blocks_override", "int", "give a positive number of KV blocks, or None", V, True, low=1),
    Setting("kv_cache_memory", "int", "give a positive number of bytes, e.g. 256 * 2**20", NV, True, low=1),
    Setting(
        "gpu_memory_utilization",
        "number",
        "give the fraction of GPU memory to use, e.g. 0.9",
        SV,
        low=0,
        high=1,
        low_open=True,
    ),
    Setting(
        "watermark",
        "number",
        "use a small fraction such as the default 0.01, or 0 for none",
        NS,
        low=0,
        high=1,
        high_open=True,
        doc="the fraction of the KV pool kept free when admitting a new request while others run, "
        "so running requests can grow without being preempted at once",
    ),
    # batching
    Setting("policy", "str", "see llmlab.core.policies", NS, choices=_policies),
    Setting("max_num_seqs", "int", "give the most requests running at once, e.g. 64", low=1),
    Setting("max_num_batched_tokens", "int", "give the token budget of a step, e.g. 512", NS, low=1),
    Setting("max_num_batched_tokens", "int", "give the token budget of a step, or None for vLLM's", V, True, low=1),
    Setting(
        "max_model_len", "int", "give the longest sequence in tokens, or None for the model's", ALL_ENGINES, True, low=2
    ),
    Setting("enable_chunked_prefill", "bool", "give True or False"),
    Setting("enable_prefix_caching", "bool", "give True or False"),
    # time and tracing
    Setting("seed", "int", "give an int seed, e.g. 0", N),
    Setting("seed", "int", "give an int seed, e.g. 0, or None", V, True),
    Setting("trace_kv_owners", "bool", "give True or False", NV),
    Setting("trace_kv_owners", "bool", "give True, False, or None to decide by the pool's size", S, True),
    Setting("efficiency", "any", "give an Efficiency, or None for the defaults", S, True),
    Setting("calibration", "any", "give a Calibration from llmlab.plan.calibrate, or None", S, True),
    Setting("step_time", "callable", "give a callable slots -> seconds, or None for the cost model", S, True),
    Setting("tokenizer", "any", "give a Hugging Face tokenizer, or None for the embedded SmolLM2 one", S, True),
    Setting("fast_forward", "bool", "give True or False", S),
    Setting("enforce_eager", "bool", "give True, False, or None for eager on CPU", V, True),
    Setting("engine_args", "dict", "give a dict of extra vllm.LLM arguments, or None", V, True),
)

REQUEST_PARAMS: tuple[Setting, ...] = (
    Setting("max_tokens", "int", "give the number of output tokens as an int >= 1, e.g. max_tokens=32", low=1),
    Setting("temperature", "number", "give temperature >= 0 (0 = greedy, e.g. 0.7 to sample)", low=0),
    Setting("top_p", "number", "give 0 < top_p <= 1 (1.0 turns it off)", low=0, high=1, low_open=True),
    Setting("top_k", "int", "give an int top_k >= 0 (0 turns it off)", low=0),
    Setting("seed", "int", "give an int in 0..2**63-1, or None", optional=True, low=0, high=2**63 - 1),
    Setting("ignore_eos", "bool", "give True or False"),
    Setting("stop", "str_list", "give a list of non-empty strings, e.g. stop=['\\n\\n']"),
    Setting("stop_token_ids", "int_list", "give a list of token ids"),
)
_REQUEST = {s.name: s for s in REQUEST_PARAMS}


def settings_for(engine: str | None) -> dict[str, Setting]:
    """The specs `engine` takes, by name; None: the first spec of each name (the shared one)."""
    table: dict[str, Setting] = {}
    for s in SETTINGS:
        if (engine is None or engine in s.engines) and s.name not in table:
            table[s.name] = s
    return table


def check_settings(engine: str | None, settings: Mapping[str, Any]) -> None:
    """Check launch settings for `engine` ("native", "sim", "vllm"; None for the shared specs)
    before any work: unknown names and bad values raise ValueError, wrong types SettingTypeError."""
    if engine is not None and engine not in ALL_ENGINES:
        raise ValueError(f"engine={engine!r} is unknown: choose one of {list(ALL_ENGINES)}")
    table = settings_for(engine)
    unknown = sorted(set(settings) - set(table))
    if unknown:
        raise ValueError(f"the {engine} engine has no knob {', '.join(unknown)}: its knobs are {', '.join(table)}")
    for name, value in settings.items():
        table[name].check(value)


def check_request_params(
    params: Mapping[str, Any], req_id: str | None = None, type_error: type[TypeError] = SettingTypeError
) -> dict[str, Any]:
    """Check one request's sampling settings and return them as plain values; messages start with the
    request id when given, and a wrong type raises `type_error`. `stop` must be a list (a bare string
    gets the hint stop=['x']) of non-empty strings (an empty one would end the request at once)."""
    where = f"request {req_id!r}: " if req_id is not None else ""
    stop = params.get("stop")
    if isinstance(stop, str):
        raise wrong_type("stop", stop, "a list of strings", f"write stop=[{stop!r}]", where, type_error)
    plain = {name: _REQUEST[name].check(value, where, type_error) for name, value in params.items()}
    if "" in (stop or ()):
        raise ValueError(
            f"{where}stop={_show(stop)} holds an empty string, stop[{list(stop).index('')}]='', which matches at "
            "once and would end the request after one token: remove it (stop=None for no stop strings)"
        )
    return plain


def check_watermark(watermark: float, num_blocks: int) -> None:
    """Refuse a watermark whose reserve leaves no room to admit a second request while one runs
    (the engine would quietly serve one request at a time): called once the pool size is known."""
    reserve = int(watermark * num_blocks)
    if reserve and reserve >= num_blocks - 1:
        most = (num_blocks - 1) / num_blocks
        raise ValueError(
            f"watermark={watermark!r} keeps {reserve} of num_blocks={num_blocks} KV blocks free when admitting, "
            f"so no second request could ever join a running one: use watermark < {most:.4g} "
            "(the default is 0.01) or a larger pool"
        )
