"""Every change llmlab makes to DeepSpeed and MII so that their scheduler and KV bookkeeping run on a
CPU, in one place.

Each patch swaps one module-level name (a module global that the patched code reads) for a
stand-in, only while DeepSpeed's or MII's objects are being built (`cpu_patches()`), and puts the
original back afterwards. None touches the scheduling or allocation logic: MII's `schedule_requests`
and DeepSpeed's `DSStateManager`, `BlockedKVCache` and `BlockedAllocator` run as shipped. Each patch
first checks that the name it replaces is there, and otherwise names the versions to install: they
were verified with `PINNED` only.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

PINNED = {"deepspeed": "0.19.8", "deepspeed-mii": "0.3.3"}
PINNED_TEXT = ", ".join(f"{k}=={v}" for k, v in PINNED.items())
INSTALL = f"pip install 'llmlab[mii]' ({PINNED_TEXT})"
_inproc = itertools.count()


class PatchError(RuntimeError):
    """A patched name is missing: the installed DeepSpeed or MII is not a version llmlab knows."""


@dataclass(frozen=True)
class Patch:
    """One module global replaced while DeepSpeed's or MII's objects are built, and why."""

    module: str
    name: str
    make: Callable[[Any], Any]  # the original -> its stand-in
    why: str


def _torch_without_pinning(original: Any) -> Any:
    """`torch` whose `arange` ignores pin_memory: pinning host memory needs a CUDA build of PyTorch."""

    def arange(*args: Any, pin_memory: bool = False, **kwargs: Any) -> torch.Tensor:
        return original.arange(*args, **kwargs)

    return _Proxy(original, arange=arange)


def _host_ragged_utils(original: Any) -> Any:
    """A stand-in for `RaggedUtilsBuilder`: its C++/CUDA op has no CPU build, and the only op used
    while building is `allocate_fast_host_buffer` (a host copy of a device tensor)."""

    module = types.SimpleNamespace(allocate_fast_host_buffer=lambda t: torch.empty_like(t, device="cpu"))
    return lambda: types.SimpleNamespace(load=lambda: module)


def _cpu_accelerator(original: Callable[[], Any]) -> Any:
    """`get_accelerator` whose `current_device()` is "cpu": DeepSpeed's CPU accelerator answers 0,
    which torch reads as cuda:0 when it allocates the KV cache and the block tables."""

    def get_accelerator() -> Any:
        acc = original()
        return _Proxy(acc, current_device=lambda: "cpu")

    return get_accelerator


def _torch_without_cuda_sync(original: Any) -> Any:
    """`torch` whose `cuda.synchronize` does nothing: MII's scheduler calls it once at start."""
    return _Proxy(original, cuda=_Proxy(original.cuda, synchronize=lambda *a, **k: None))


def _local_zmq(original: Any) -> Any:
    """`zmq` whose sockets bind in-process: MII's rank 0 publishes each batch on tcp://*:port (all
    network interfaces) for its other tensor-parallel ranks; in one process there are none."""

    class LocalSocket(original.Socket):
        def bind(self, addr: str) -> Any:
            return super().bind(f"inproc://llmlab-mii-{next(_inproc)}")

    class LocalContext(original.Context):
        _socket_class = LocalSocket

    return _Proxy(original, Context=LocalContext)


def _no_sleep(original: Any) -> Any:
    """`time` whose `sleep` returns at once: MII waits 1 s for subscribers that do not exist here."""
    return _Proxy(original, sleep=lambda s: None)


RAGGED = "deepspeed.inference.v2.ragged."
PATCHES = (
    Patch(RAGGED + "blocked_allocator", "torch", _torch_without_pinning, "pinned memory needs CUDA"),
    Patch(RAGGED + "ragged_manager", "RaggedUtilsBuilder", _host_ragged_utils, "ragged ops have no CPU build"),
    Patch(RAGGED + "ragged_wrapper", "RaggedUtilsBuilder", _host_ragged_utils, "ragged ops have no CPU build"),
    Patch(RAGGED + "ragged_manager", "get_accelerator", _cpu_accelerator, "block tables on the host"),
    Patch(RAGGED + "kv_cache", "get_accelerator", _cpu_accelerator, "the KV cache on the host"),
    Patch(RAGGED + "ragged_wrapper", "get_accelerator", _cpu_accelerator, "batch metadata on the host"),
    Patch("mii.batching.ragged_batching", "torch", _torch_without_cuda_sync, "no CUDA to synchronize"),
    Patch("mii.batching.ragged_batching", "zmq", _local_zmq, "no socket on all interfaces"),
    Patch("mii.batching.ragged_batching", "time", _no_sleep, "no subscribers to wait for"),
)


class _Proxy:
    """An object that answers like `target` except for the attributes given."""

    def __init__(self, target: Any, **overrides: Any) -> None:
        self.__dict__.update(overrides)
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return getattr(self._target, name)


def check_versions() -> None:
    """Refuse versions other than the pinned ones' series before anything is patched."""
    from importlib.metadata import version

    for dist, pin in PINNED.items():
        got = version(dist)
        if got != pin:
            raise PatchError(
                f"{dist} {got} is installed; llmlab's MII engine is verified with {dist}=={pin}: {INSTALL}"
            )


@contextlib.contextmanager
def cpu_patches(patches: tuple[Patch, ...] = PATCHES) -> Iterator[None]:
    """Apply `patches` for the duration of the block (building DeepSpeed's and MII's objects), then
    restore every original name."""
    saved: list[tuple[Any, str, Any]] = []
    try:
        for p in patches:
            module = importlib.import_module(p.module)
            if not hasattr(module, p.name):
                raise PatchError(
                    f"{p.module}.{p.name} is not there, so llmlab cannot run it on a CPU ({p.why}): {INSTALL}"
                )
            original = getattr(module, p.name)
            saved.append((module, p.name, original))
            setattr(module, p.name, p.make(original))
        yield
    finally:
        for module, name, original in reversed(saved):
            setattr(module, name, original)
