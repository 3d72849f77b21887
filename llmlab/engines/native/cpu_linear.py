"""Linear layers packed once for oneDNN, the CPU's fastest GEMM path in float32 and bfloat16.

A plain `nn.Linear` on CPU runs `aten::mm`, which reads the weight in its stored [out, in]
layout on every call. oneDNN can reorder a weight once into the blocked layout its kernels
stream best, and then take dense inputs and give dense outputs, so nothing is converted per
call (the older `torch.utils.mkldnn` modules converted every input and output: 8% of a float32
decode step). `python benchmarks/cpu_roofline.py` times a decode step's linears both ways.

This is a speed layer under the model: `llama.py` builds plain `nn.Linear`s and the loader
swaps them for `PackedLinear` once their weights are in.
"""

from __future__ import annotations

import torch
from torch import nn

DECODE_BATCH_HINT = 32  # oneDNN picks the blocked layout for this many input rows


def _ops_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_linear_pointwise")
        and hasattr(ops, "_reorder_linear_weight")
    )


def can_pack(weight: torch.Tensor) -> bool:
    """Whether oneDNN runs this weight: float32, or bfloat16 where oneDNN computes it (AVX-512 BF16
    or AMX); any other dtype, device or build keeps `nn.Linear`."""
    if weight.device.type != "cpu" or not _ops_available():
        return False
    if weight.dtype == torch.float32:
        return True
    return weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x.contiguous(), weight, bias, "none", [], "")


class PackedLinear(nn.Module):
    """`nn.Linear` with its weight reordered once for oneDNN; same inputs, same outputs."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        w = linear.weight.detach()
        self.weight = nn.Parameter(torch.ops.mkldnn._reorder_linear_weight(w, DECODE_BATCH_HINT), requires_grad=False)
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight, self.bias)


class TiedPackedHead(nn.Module):
    """The LM head tied to the embedding table, run by oneDNN straight on the dense table.

    A reordered copy would hold the [vocab, hidden] table twice (113 MB in float32 for SmolLM2),
    since the embedding lookup needs the dense one; oneDNN takes the dense weight as it is, at
    nearly the same speed.
    """

    def __init__(self, weight: nn.Parameter) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _linear(x, self.weight.detach(), None)


def pack_linears(module: nn.Module) -> None:
    """Swap every packable `nn.Linear` under `module` for a `PackedLinear`, releasing the dense weights."""
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and can_pack(child.weight):
                setattr(parent, name, PackedLinear(child))
                for p in (child.weight, child.bias):  # a tied or shared tensor stays alive elsewhere
                    if p is not None:
                        p.data = torch.empty(0, dtype=p.dtype)
