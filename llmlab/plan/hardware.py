"""Accelerator catalogue: memory, bandwidth and dense tensor rates from vendor datasheets.

Rates are dense (no 2:4 sparsity) peak per second. `interconnect` is the GPU-to-GPU bandwidth
per GPU in ONE direction (datasheets quote both directions added: NVLink 4 "900 GB/s" is
450 GB/s each way), which is what a ring all-reduce moves data at. `memory_bytes` is the total
the driver reports (nvidia-smi's MiB total for each card), not the marketing "80 GB". The local CPU is
measured once with torch (`local_cpu()`); users add their own with `register_hardware`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Literal

GB = 1e9
TB = 1e12
MIB = 2**20
GIB = 2**30
DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")


@dataclass
class Hardware:
    """One accelerator (or the host CPU) as the cost and memory models see it."""

    name: str
    memory_bytes: float
    bandwidth: float  # bytes/s from device memory
    flops: dict[str, float]  # dense peak per second by dtype: "fp32", "bf16", "fp16", "fp8", "int8"
    interconnect: float = 0.0  # bytes/s per GPU, one direction; 0 when there is no GPU-to-GPU link
    aliases: tuple[str, ...] = ()
    price_per_hour: float | None = None  # per device, for cost per token; None when unknown
    kind: Literal["gpu", "cpu"] = "gpu"
    source: str = field(default="", repr=False)  # where the numbers come from

    def rate(self, dtype: str) -> float:
        """Peak rate for `dtype`, 0.0 when the hardware has no tensor path for it (e.g. fp8 on A100)."""
        return float(self.flops.get(dtype, 0.0))

    def with_price(self, price_per_hour: float) -> Hardware:
        """A copy with a price per device-hour (for cost per million tokens)."""
        return replace(self, price_per_hour=price_per_hour)

    def __str__(self) -> str:
        rates = ", ".join(f"{k} {v / TB:,.3g} TFLOPS" for k, v in self.flops.items() if v)
        link = f", link {self.interconnect / GB:,.0f} GB/s" if self.interconnect else ""
        return f"{self.name}: {self.memory_bytes / GIB:,.1f} GiB, {self.bandwidth / GB:,.0f} GB/s, {rates}{link}"


def _rates(fp32: float, bf16: float, fp8: float = 0.0, int8: float = 0.0) -> dict[str, float]:
    """Datasheet TFLOPS/TOPS (dense) to a flops dict; fp16 tensor rate equals bf16 on all these parts."""
    return {"fp32": fp32 * TB, "bf16": bf16 * TB, "fp16": bf16 * TB, "fp8": fp8 * TB, "int8": int8 * TB}


_CATALOGUE = [
    # NVIDIA H100 Tensor Core GPU datasheet (H100 SXM column); NVLink 4 900 GB/s bidirectional.
    Hardware("H100-SXM", 81559 * MIB, 3.35 * TB, _rates(67, 989.4, 1978.9, 1978.9), 450 * GB,
             ("h100", "h100-sxm5", "h100-80gb", "h100-sxm-80gb"), source="NVIDIA H100 datasheet"),
    # NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe column); PCIe Gen5 x16 128 GB/s bidirectional
    # (an optional NVLink bridge pairs two cards at 600 GB/s; not modelled).
    Hardware("H100-PCIe", 81559 * MIB, 2.0 * TB, _rates(51, 756, 1513, 1513), 64 * GB,
             ("h100-pcie-80gb",), source="NVIDIA H100 datasheet"),
    # NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column); NVLink 900 GB/s bidirectional.
    Hardware("H200", 143771 * MIB, 4.8 * TB, _rates(67, 989.4, 1978.9, 1978.9), 450 * GB,
             ("h200-sxm", "h200-141gb"), source="NVIDIA H200 datasheet"),
    # NVIDIA HGX B200 datasheet (per GPU of the 8-GPU board: 180 GB, 8 TB/s; dense = half the
    # sparse figures); NVLink 5 1.8 TB/s bidirectional.
    Hardware("B200", 183359 * MIB, 8.0 * TB, _rates(80, 2250, 4500, 4500), 900 * GB,
             ("b200-sxm", "hgx-b200"), source="NVIDIA HGX B200 datasheet"),
    # NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM column); NVLink 3 600 GB/s bidirectional.
    # No fp8 tensor path on Ampere.
    Hardware("A100-40GB", 40960 * MIB, 1.555 * TB, _rates(19.5, 312, 0, 624), 300 * GB,
             ("a100-40gb-sxm", "a100-sxm4-40gb", "a100-40g"), source="NVIDIA A100 datasheet"),
    # NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column).
    Hardware("A100-80GB", 81920 * MIB, 2.039 * TB, _rates(19.5, 312, 0, 624), 300 * GB,
             ("a100", "a100-80gb-sxm", "a100-sxm4-80gb", "a100-80g"), source="NVIDIA A100 datasheet"),
    # NVIDIA L40S datasheet; no NVLink, PCIe Gen4 x16 64 GB/s bidirectional.
    Hardware("L40S", 46068 * MIB, 864 * GB, _rates(91.6, 362.05, 733, 733), 32 * GB,
             ("l40s-48gb",), source="NVIDIA L40S datasheet"),
    # NVIDIA L4 Tensor Core GPU datasheet; PCIe Gen4 x16.
    Hardware("L4", 23034 * MIB, 300 * GB, _rates(30.3, 121, 242.5, 242.5), 32 * GB,
             ("l4-24gb",), source="NVIDIA L4 datasheet"),
    # AWS publishes no A10G datasheet; figures from Baseten "NVIDIA A10 vs A10G for ML model
    # inference" (24 GB GDDR6, 600 GB/s, 70 TFLOPS bf16 tensor, 35 TFLOPS fp32); int8 taken as twice
    # bf16 (as on every other Ampere part); PCIe Gen4.
    Hardware("A10G", 23028 * MIB, 600 * GB, _rates(35, 70, 0, 140), 32 * GB,
             ("a10g-24gb", "aws-a10g"), source="Baseten A10 vs A10G"),
    # AMD Instinct MI300X data sheet: 192 GB HBM3, 5.3 TB/s, dense 1307.4 TFLOPS bf16, 2614.9 fp8
    # and int8; Infinity Fabric 7 links x 128 GB/s = 896 GB/s bidirectional per GPU. Memory as 192 GiB.
    Hardware("MI300X", 192 * GIB, 5.3 * TB, _rates(163.4, 1307.4, 2614.9, 2614.9), 448 * GB,
             ("mi300", "mi300x-192gb", "instinct-mi300x"), source="AMD Instinct MI300X data sheet"),
]  # fmt: skip

HARDWARE: dict[str, Hardware] = {hw.name: hw for hw in _CATALOGUE}


def _key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def register_hardware(hw: Hardware, replace_existing: bool = False) -> Hardware:
    """Add `hw` to the catalogue so `get_hardware` finds it by name or alias.

    An existing name raises ValueError unless `replace_existing=True`.
    """
    if not isinstance(hw, Hardware):
        raise ValueError(
            f"register_hardware takes a Hardware(name, memory_bytes, bandwidth, flops), got {type(hw).__name__}: "
            "e.g. register_hardware(Hardware('my-gpu', 48e9, 900e9, {'bf16': 180e12}))"
        )
    if hw.name in HARDWARE and not replace_existing:
        raise ValueError(f"hardware {hw.name!r} is already in the catalogue: pass replace_existing=True to redefine it")
    if hw.memory_bytes <= 0 or hw.bandwidth <= 0 or not any(v > 0 for v in hw.flops.values()):
        raise ValueError(
            f"hardware {hw.name!r} needs memory_bytes > 0, bandwidth > 0 and a positive rate in flops "
            f"(keys {', '.join(DTYPES)})"
        )
    HARDWARE[hw.name] = hw
    return hw


def get_hardware(name: str | Hardware, price_per_hour: float | None = None) -> Hardware:
    """Look up a catalogue entry by name or alias (case-insensitive); "cpu"/"local" measures this host.

    Unknown names raise ValueError listing the choices.
    """
    if isinstance(name, Hardware):
        hw = name
    elif not isinstance(name, str):
        raise ValueError(f"gpu must be a name or a Hardware, got {type(name).__name__}: {_choices()}")
    elif _key(name) in ("cpu", "local", "local-cpu"):
        hw = local_cpu()
    else:
        key = _key(name)
        matches = [hw for hw in HARDWARE.values() if key in {_key(hw.name), *map(_key, hw.aliases)}]
        if not matches:
            raise ValueError(f"unknown gpu {name!r}: {_choices()}")
        hw = matches[0]
    return hw.with_price(price_per_hour) if price_per_hour is not None else hw


def _choices() -> str:
    return (
        f"choose one of {', '.join(HARDWARE)} or 'cpu' (this machine, measured), "
        "or add your own with llmlab.plan.hardware.register_hardware(Hardware(...))"
    )


@cache
def local_cpu() -> Hardware:
    """This machine's CPU, measured once per process: copy bandwidth and fp32/bf16 matmul rates.

    Takes about a second. The numbers are what torch reaches here, not a datasheet peak, so the
    CPU's efficiency factors sit near 1.
    """
    import torch

    bandwidth = _copy_bandwidth(torch)
    fp32 = _matmul_rate(torch, torch.float32)
    bf16 = _matmul_rate(torch, torch.bfloat16)
    memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    threads = torch.get_num_threads()
    return Hardware(
        name="cpu",
        memory_bytes=memory,
        bandwidth=bandwidth,
        flops={"fp32": fp32, "bf16": bf16, "fp16": 0.0, "fp8": 0.0, "int8": 0.0},
        interconnect=0.0,
        aliases=("local", "local-cpu"),
        kind="cpu",
        source=f"measured with torch {torch.__version__} on {threads} threads",
    )


def _best_time(fn, repeats: int) -> float:
    """The fastest of `repeats` timed calls (the least disturbed by other load)."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def _copy_bandwidth(torch) -> float:
    """Bytes read plus written per second copying a 32 MiB buffer (two of them outgrow the caches)."""
    src = torch.ones(8 * MIB, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    seconds = _best_time(lambda: dst.copy_(src), repeats=6)
    return 2 * src.numel() * src.element_size() / seconds


def _matmul_rate(torch, dtype) -> float:
    """Flops per second of a 256 x 1024 x 1024 linear in `dtype` (a prefill-sized matmul), best of 3."""
    x = torch.randn(256, 1024).to(dtype)
    w = torch.randn(1024, 1024).to(dtype)
    torch.nn.functional.linear(x, w)
    seconds = _best_time(lambda: torch.nn.functional.linear(x, w), repeats=3)
    return 2 * x.shape[0] * x.shape[1] * w.shape[0] / seconds
