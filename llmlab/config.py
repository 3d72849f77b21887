"""Every launch setting in one place: `EngineConfig`, its defaults, its checks and the one dtype vocabulary.

Each field carries a `Setting` spec: its type, its allowed values, the engines that take it and the
fix to name when it is wrong. `EngineConfig(**settings)` raises `SettingTypeError` for a wrong type
(bool is not an int, 2.5 is not a block count) and ValueError for a value out of range (NaN, inf,
negative, zero where not allowed, an unknown choice), each naming the setting, the value and the
fix, before any engine does work; `for_engine` refuses what an engine cannot honour.

Per-request sampling settings (`SamplingParams`, `WorkItem`) are checked by the same machinery from
the `REQUEST_PARAMS` table, and function arguments (the workload generators') by `check_arg`, which
raises a plain TypeError for a wrong type. Nothing here imports torch or an engine.
"""

from __future__ import annotations

import difflib
import inspect
import math
import numbers
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from os import PathLike
from typing import Any

VERSION = "0.1.0"  # llmlab's version, as traces record it (llmlab.__version__)
ALL_ENGINES = ("native", "sim", "vllm", "mii")


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
            return value
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


# the one dtype vocabulary ----------------------------------------------------------------
# Short names everywhere ("fp32", "bf16", ...); the long names users also type map onto them.
DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
TORCH_NAMES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}  # short name -> torch's
COMPUTE_DTYPES = ("auto", "fp32", "bf16", "fp16")
WEIGHT_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8", "int4")
KV_DTYPES = ("auto", "fp32", "bf16", "fp16", "fp8", "int8")
POLICY_NAMES = (  # llmlab.core.policies, by name
    "chunked",
    "prefill_first",
    "splitfuse",
    "static",
    "guaranteed_no_evict",
    "max_utilization",
)
PRESET_NAMES = ("vllm", "trtllm", "mii", "tgi", "sglang")  # llmlab.engines.sim.presets: engines' defaults
DEFAULT_MAX_MODEL_LEN = 8192  # the longest sequence when neither the user nor a small model says less
INT4_GROUP_SIZE = 128  # inputs per int4 scale group


def default_kv_dtype(weights: str) -> str:
    """The KV cache's dtype when the weights' is given: the same, except int4, which has no KV
    format (int4 models keep a bf16 cache)."""
    return "bf16" if weights == "int4" else weights


def dtype_name(dtype: Any) -> str | None:
    """The short name ('fp32', 'bf16', ...) of a dtype given as a short name, a long name or a torch.dtype."""
    if dtype is None:
        return None
    text = str(dtype).removeprefix("torch.")
    return DTYPE_ALIASES.get(text, text)


def default_max_model_len(context: int | None, budget: int, chunked: bool, policy: str) -> int:
    """The longest sequence when none is given: the model's context (capped at DEFAULT_MAX_MODEL_LEN),
    and no more than one step's token budget when prompts cannot be split over steps."""
    longest = min(context or DEFAULT_MAX_MODEL_LEN, DEFAULT_MAX_MODEL_LEN)
    if not (chunked or policy in ("splitfuse", "static")):
        longest = min(longest, budget)
    return max(2, longest)


N, S, V = ("native",), ("sim",), ("vllm",)
NS, NV, SV = ("native", "sim"), ("native", "vllm"), ("sim", "vllm")
NVM = ("native", "vllm", "mii")
NM = ("native", "mii")


def setting(default: Any, kind: str, doc: str, fix: str, engines: tuple[str, ...] = ALL_ENGINES, **spec: Any) -> Any:
    """A field of `EngineConfig`: its default, and the spec (`Setting`) that checks it."""
    optional = spec.pop("optional", default is None)
    return field(default=default, metadata={"spec": Setting("", kind, fix, engines, optional, doc=doc, **spec)})


@dataclass
class EngineConfig:
    """Every launch setting, its default and its check, in one place; each engine reads the ones
    it honours and translates them to its own names in one table (vLLM's in `engines/vllm.py`).

    `EngineConfig(**settings)` checks every value (type, range, choice) before any engine starts;
    `for_engine(name)` refuses what that engine cannot honour, naming the nearest setting it has,
    and fills the defaults that differ by engine (None below means "the engine's own")."""

    # what runs, and where
    model: Any = setting(
        None,
        "any",
        "the model: a name ('smollm2-135m', the embedded default), a checkpoint directory, or for the "
        "simulator a shape name or a config dict",
        "give a model name (e.g. 'smollm2-135m') or a local path",
    )
    device: Any = setting(
        None, "torch", "'cpu' or 'cuda'; None picks the GPU if there is one", "use 'cpu' or 'cuda'", NM
    )
    dtype: Any = setting(
        None,
        "torch",
        "the compute dtype ('fp32', 'bf16', 'fp16' or torch's names); None: the engine picks "
        "(bf16 on a GPU, the CPU's measured best on a CPU)",
        "use 'fp32' or 'bf16' (or None to pick)",
        NVM,
    )
    weights: str | None = setting(
        None,
        "str",
        "the weights' storage: 'fp32', 'bf16', 'fp16', 'fp8', 'int8' or 'int4'; None: the compute dtype",
        "leave it None for the compute dtype",
        choices=WEIGHT_DTYPES,
    )
    kv_dtype: str = setting(
        "auto",
        "str",
        "the KV cache's dtype: 'auto' (as the compute dtype; int4 weights keep bf16) or 'fp8', 'int8', ...",
        "use 'auto' to store K/V in the compute dtype",
        choices=KV_DTYPES,
    )
    tp: int | None = setting(
        None,
        "int",
        "tensor-parallel degree; None: 1 (the simulator: num_gpus / pp)",
        "give the tensor-parallel degree, e.g. 1",
        low=1,
    )
    pp: int = setting(1, "int", "pipeline-parallel degree", "give the pipeline-parallel degree, e.g. 1", low=1)
    # the KV pool
    block_size: int | None = setting(
        None,
        "int",
        "tokens per KV block; None: 16 (vLLM: its own)",
        "give a positive number of tokens per block, e.g. 16",
        low=1,
    )
    num_blocks: int | None = setting(
        None,
        "int",
        "blocks in the KV pool; None: what kv_cache_memory (or the GPU) holds",
        "the KV pool needs at least one block; leave it None for a default",
        low=1,
    )
    kv_cache_memory: int | None = setting(
        None,
        "int",
        "bytes for the KV pool when num_blocks is None (CPU: 256 MiB)",
        "give a positive number of bytes, e.g. 256 * 2**20",
        NVM,
        low=1,
    )
    gpu_memory_utilization: float = setting(
        0.9,
        "number",
        "the fraction of GPU memory for weights, activations and the KV pool",
        "give the fraction of GPU memory to use, e.g. 0.9",
        SV,
        low=0,
        high=1,
        low_open=True,
    )
    watermark: float = setting(
        0.01,
        "number",
        "the fraction of the KV pool kept free when admitting a new request while others run, so "
        "running requests can grow without being preempted at once",
        "use a small fraction such as the default 0.01, or 0 for none",
        NS,
        low=0,
        high=1,
        high_open=True,
    )
    # batching
    policy: str = setting(
        "chunked",
        "str",
        "the batching policy: 'chunked', 'prefill_first', 'splitfuse', 'static', 'guaranteed_no_evict' "
        "or 'max_utilization' (llmlab.core.policies)",
        "see llmlab.core.policies",
        NS,
        choices=POLICY_NAMES,
    )
    max_num_seqs: int = setting(
        64, "int", "the most requests running at once", "give the most requests running at once, e.g. 64", low=1
    )
    max_num_batched_tokens: int | None = setting(
        None,
        "int",
        "a step's token budget; None: 512 (vLLM: its own)",
        "give the token budget of a step, e.g. 512",
        low=1,
    )
    max_model_len: int | None = setting(
        None,
        "int",
        "the longest sequence, prompt plus output; None: the model's context, at most 8192",
        "give the longest sequence in tokens, or None for the model's",
        low=2,
    )
    enable_chunked_prefill: bool = setting(True, "bool", "split long prompts over steps", "give True or False")
    enable_prefix_caching: bool = setting(True, "bool", "reuse the KV blocks of a shared prefix", "give True or False")
    # time and tracing
    seed: int | None = setting(0, "int", "the sampling seed", "give an int seed, e.g. 0", NV, optional=True)
    trace_kv_owners: bool | None = setting(
        None,
        "bool",
        "record which request holds each KV block at every step; None: yes (the simulator: for "
        "pools up to 4096 blocks)",
        "give True, False, or None",
    )
    # one engine's own
    group_size: int = setting(
        INT4_GROUP_SIZE,
        "int",
        "inputs per int4 scale group (native)",
        "int4 groups need an even number of inputs, e.g. 128",
        N,
        low=2,
        multiple_of=2,
    )
    like: str | None = setting(
        None,
        "str",
        "simulate this engine's scheduling defaults on the GPU: 'vllm', 'trtllm', 'mii', 'tgi' or 'sglang' "
        "(llmlab.engines.sim.presets); a setting given at launch wins; None: 'vllm' on a GPU",
        "use one of 'vllm', 'trtllm', 'mii', 'tgi', 'sglang', or None",
        S,
        choices=PRESET_NAMES,
    )
    gpu: Any = setting(
        None,
        "any",
        "the simulated GPU, a name from llmlab.plan.hardware; None: this machine's CPU",
        "give a GPU name from llmlab.plan.hardware, 'cpu', or None for this machine",
        S,
    )
    num_gpus: int | None = setting(
        None, "int", "the simulated GPUs, tp x pp", "give the number of GPUs, tp x pp", S, low=1
    )
    efficiency: Any = setting(
        None,
        "any",
        "the cost model's efficiencies (llmlab.plan.cost.Efficiency)",
        "give an Efficiency, or None for the defaults",
        S,
    )
    calibration: Any = setting(
        None,
        "any",
        "a fitted calibration (llmlab.plan.calibrate) for the cost model",
        "give a Calibration from llmlab.plan.calibrate, or None",
        S,
    )
    step_time: Any = setting(
        None,
        "callable",
        "a callable slots -> seconds replacing the cost model",
        "give a callable slots -> seconds, or None for the cost model",
        S,
    )
    tokenizer: Any = setting(
        None,
        "any",
        "the simulator's token counter; None: the embedded SmolLM2 tokenizer",
        "give a Hugging Face tokenizer, or None for the embedded SmolLM2 one",
        S,
    )
    fast_forward: bool = setting(
        True, "bool", "compute steady decode stretches in one go (same trace, faster)", "give True or False", S
    )
    enforce_eager: bool | None = setting(
        None,
        "bool",
        "vLLM without compiled graphs; None: eager on a CPU",
        "give True, False, or None for eager on CPU",
        V,
    )
    engine_args: dict | None = setting(
        None,
        "dict",
        "extra vllm.LLM arguments, passed as they are",
        "give a dict of extra vllm.LLM arguments, or None",
        V,
    )

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("dtype", "weights", "kv_dtype") and (
                isinstance(value, str) or type(value).__module__ == "torch"
            ):
                value = dtype_name(value)  # one vocabulary: 'bfloat16' and torch.bfloat16 are 'bf16'
            value = SPECS[f.name].check(value)
            if f.name == "dtype" and value is not None and value not in COMPUTE_DTYPES:
                raise ValueError(f"dtype={value!r} is unknown: use one of {list(COMPUTE_DTYPES)} (or None to pick)")
            setattr(self, f.name, value)
        if self.efficiency is not None and self.calibration is not None:
            raise ValueError("give efficiency= or calibration=, not both (a calibration is an efficiency)")

    @classmethod
    def from_user(cls, settings: dict[str, Any]) -> EngineConfig:
        """The config of `launch(**settings)`, remembering which names the user gave, so that a
        preset (`like=`) never overrides a setting given, even one given at its default value."""
        config = cls(**settings)
        config._given = frozenset(settings)
        return config

    def given(self) -> frozenset[str] | None:
        """The names the user gave at launch; None when this config was not built from a launch."""
        return getattr(self, "_given", None)

    def changed(self) -> dict[str, Any]:
        """The settings that differ from their defaults."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if getattr(self, f.name) is not f.default and getattr(self, f.name) != f.default
        }

    def model_len(self, context: int | None) -> int:
        """The longest sequence for a model with `context` positions (None: unknown): `max_model_len`
        if it fits, else the shared default (see `default_max_model_len`)."""
        if self.max_model_len is None:
            budget = self.max_num_batched_tokens or 512
            return default_max_model_len(context, budget, self.enable_chunked_prefill, self.policy)
        if context is not None and self.max_model_len > context:
            raise ValueError(
                f"max_model_len={self.max_model_len} exceeds the model's context of {context} tokens: "
                f"use max_model_len <= {context}"
            )
        return self.max_model_len

    def for_engine(self, engine: str) -> EngineConfig:
        """This config as `engine` takes it: a setting it cannot honour is refused, naming the nearest
        setting it has; the settings left None get that engine's default."""
        if engine not in ALL_ENGINES:
            raise ValueError(f"engine={engine!r} is unknown: choose one of {list(ALL_ENGINES)}")
        for name in self.changed():
            if engine not in SPECS[name].engines:
                raise ValueError(f"the {engine} engine has no setting {name}: {nearest(engine, name)}")
        defaults = {k: v for k, v in ENGINE_DEFAULTS[engine].items() if getattr(self, k) is None}
        filled = replace(self, **defaults)
        if self.given() is not None:
            filled._given = self.given()  # replace() builds a new config: keep what the user gave
        return filled


SPECS: dict[str, Setting] = {
    f.name: replace(f.metadata["spec"], name=f.name)
    for f in fields(EngineConfig)  # type: ignore[arg-type]
}
# defaults that differ by engine: where EngineConfig says None, "the engine's own"
ENGINE_DEFAULTS: dict[str, dict[str, Any]] = {
    "native": {"tp": 1, "block_size": 16, "max_num_batched_tokens": 512, "trace_kv_owners": True},
    "sim": {"block_size": 16, "max_num_batched_tokens": 512},
    "vllm": {"tp": 1, "trace_kv_owners": True},
    "mii": {"tp": 1, "trace_kv_owners": True},  # block_size: DeepSpeed's choice for the head size
}
# other projects' names for our settings: an error names ours
ALIASES = {
    "kv_cache_dtype": "kv_dtype",
    "cache_dtype": "kv_dtype",
    "quantization": "weights",
    "tensor_parallel_size": "tp",
    "pipeline_parallel_size": "pp",
    "num_gpu_blocks_override": "num_blocks",
    "max_batch_size": "max_num_seqs",
    "max_num_tokens": "max_num_batched_tokens",
    "tokens_per_block": "block_size",
}


def nearest(engine: str | None, name: str) -> str:
    """The fix for a setting `engine` does not take: the setting it has under that name's meaning, or the
    closest spelling, and the list of its settings."""
    have = list(settings_for(engine))
    ours = ALIASES.get(name)
    if ours in have:
        return f"llmlab calls it {ours}=...; its settings are {', '.join(have)}"
    close = difflib.get_close_matches(name, have, n=1)
    if close:
        return f"did you mean {close[0]}? Its settings are {', '.join(have)}"
    if name in SPECS:
        takers = " and ".join(SPECS[name].engines)
        return (
            f"{name} is a setting of the {takers} engine{'s' if len(SPECS[name].engines) > 1 else ''}; "
            f"this one's are {', '.join(have)}"
        )
    return f"its settings are {', '.join(have)}"


def launch_signature() -> inspect.Signature:
    """The signature `llmlab.launch` shows (help, tab completion): the engine, then every setting."""
    engine = inspect.Parameter("engine", inspect.Parameter.POSITIONAL_OR_KEYWORD, default="native", annotation=str)
    params = [
        inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
        for f in fields(EngineConfig)
    ]
    return inspect.Signature([engine, *params])


def settings_doc() -> str:
    """One line per setting: its name, default, the engines that take it, and what it means."""
    lines = []
    for name, spec in SPECS.items():
        who = "" if spec.engines == ALL_ENGINES else f" [{', '.join(spec.engines)}]"
        default = next(f.default for f in fields(EngineConfig) if f.name == name)
        lines.append(f"    {name}={default!r}{who}: {spec.doc}")
    return "\n".join(lines)


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
    """The specs of the settings `engine` takes, by name (None: every setting)."""
    return {name: spec for name, spec in SPECS.items() if engine is None or engine in spec.engines}


def check_settings(engine: str | None, settings: Mapping[str, Any]) -> None:
    """Check launch settings for `engine` ("native", "sim", "vllm"; None for any) before any work:
    unknown names and bad values raise ValueError, wrong types SettingTypeError."""
    if engine is not None and engine not in ALL_ENGINES:
        raise ValueError(f"engine={engine!r} is unknown: choose one of {list(ALL_ENGINES)}")
    table = settings_for(engine)
    for name, value in settings.items():
        if name not in table:
            raise ValueError(f"the {engine or 'llmlab'} engine has no setting {name}: {nearest(engine, name)}")
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
