"""Timed communication: every all-reduce and stage send/receive counts its bytes and its time.

Events are (micro_batch, kind, t0, t1, bytes) with times on the machine's monotonic clock
(`time.perf_counter` is system-wide on Linux, so ranks and the caller share it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Comm:
    """One rank's communicator: its tensor-parallel group, its pipeline neighbours, and the events
    of the step in progress."""

    tp_group: dist.ProcessGroup | None = None
    prev_rank: int | None = None  # the rank this one receives hidden states from (previous stage)
    next_rank: int | None = None
    events: list[list] = field(default_factory=list)
    micro_batch: int = 0
    _mark: float = 0.0

    def start_compute(self) -> None:
        self._mark = time.perf_counter()

    def end_compute(self) -> None:
        """Close the compute interval opened by `start_compute` (or by the last communication)."""
        now = time.perf_counter()
        if now > self._mark:
            self.events.append([self.micro_batch, "compute", self._mark, now, 0])
        self._mark = now

    def _timed(self, kind: str, x: torch.Tensor, fn) -> None:
        if x.is_cuda:  # GPU work is asynchronous: time what the device did, not the launch
            torch.cuda.synchronize(x.device)
        self.end_compute()
        t0 = time.perf_counter()
        fn()
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        t1 = time.perf_counter()
        self.events.append([self.micro_batch, kind, t0, t1, x.numel() * x.element_size()])
        self._mark = t1

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum `x` over the tensor-parallel group in place; counts its payload bytes."""
        self._timed("allreduce", x, lambda: dist.all_reduce(x, group=self.tp_group))
        return x

    def send(self, x: torch.Tensor) -> None:
        """Hand hidden states to the next stage."""
        x = x.contiguous()
        self._timed("send", x, lambda: dist.send(x, self.next_rank))

    def recv(self, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """Wait for hidden states from the previous stage (the wait is idle time: the bubble)."""
        x = torch.empty(shape, dtype=dtype, device=device)
        self._timed("recv", x, lambda: dist.recv(x, self.prev_rank))
        return x


class AllReduceAfter(nn.Module):
    """A row-parallel linear: each rank's partial product, summed over the tensor-parallel group."""

    def __init__(self, linear: nn.Module, comm: Comm) -> None:
        super().__init__()
        self.linear = linear
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.comm.all_reduce(self.linear(x))
