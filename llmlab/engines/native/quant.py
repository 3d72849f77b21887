"""Weight-only quantization of linear layers: int8, int4 and fp8 storage, dequantized on the fly.

The weights stay quantized in memory (that is the point: bytes); each forward pass turns one
layer's weights back into the compute dtype just before its matmul, so only one layer's dense
copy exists at a time. Formats:

- ``int8``: symmetric, one float32 scale per output channel (row): ``w = q * scale``.
- ``int4``: asymmetric groups of ``group_size`` inputs along each row (the last group of a row
  may be shorter), one float32 scale and one float32 minimum per group, ``w = q * scale + minimum``
  with q in 0..15; two values are packed per byte of a uint8 tensor (low nibble = even column,
  high nibble = odd column).
- ``fp8``: float8 e4m3 with one float32 scale per output channel: ``w = float(q) * scale``.
- ``fp32`` / ``bf16``: plain storage in that dtype, cast to the compute dtype when they differ.

The tied embedding / LM head is not quantized here (see `quantize_linears`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_FORMATS = ("fp32", "bf16", "int8", "int4", "fp8")
QUANTIZED_FORMATS = ("int8", "int4", "fp8")
STORAGE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
FP8 = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8).max  # 448
DEFAULT_GROUP_SIZE = 128


def check_weights(weights: str, group_size: int) -> None:
    """Raise ValueError naming a bad `weights` or `group_size` value and the fix."""
    if weights not in WEIGHT_FORMATS:
        raise ValueError(f"weights={weights!r} is not supported by the native engine: use one of {WEIGHT_FORMATS}")
    if not isinstance(group_size, int) or group_size < 2 or group_size % 2:
        raise ValueError(f"group_size={group_size!r}: int4 groups need an even number of inputs, e.g. 128")


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row int8: (q int8 [out, in], scale float32 [out])."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp(min=1e-12)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def quantize_fp8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row scaled float8 e4m3: (q float8 [out, in], scale float32 [out]); the row's largest value maps to 448."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
    q = (w / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(FP8)
    return q, scale


def quantize_int4(w: torch.Tensor, group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric group-wise int4, packed: (q uint8 [out, in/2], scale [out, groups], minimum [out, groups]).

    When `group_size` does not divide the inputs (SmolLM2's 576 = 4 x 128 + 64), the last group
    of each row is shorter; only real weights are stored.
    """
    out_features, in_features = w.shape
    if in_features % 2:
        raise ValueError(f"int4 packs two inputs per byte, but this layer has {in_features} inputs: use weights='int8'")
    g = _pad_to_groups(w.float(), group_size).reshape(out_features, -1, group_size)
    lo, hi = g.amin(dim=2), g.amax(dim=2)
    scale = ((hi - lo) / 15.0).clamp(min=1e-12)
    q = torch.round((g - lo[..., None]) / scale[..., None]).clamp_(0, 15).to(torch.uint8)
    q = q.reshape(out_features, -1)[:, :in_features]
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed.contiguous(), scale, lo


def _pad_to_groups(x: torch.Tensor, group_size: int) -> torch.Tensor:
    """Pad the last dim up to a multiple of `group_size` by repeating the last column (keeps min/max)."""
    pad = -x.shape[-1] % group_size
    return x if pad == 0 else F.pad(x[None], (0, pad), mode="replicate")[0]


def unpack_int4(packed: torch.Tensor, dtype: torch.dtype = torch.uint8) -> torch.Tensor:
    """uint8 [out, in/2] -> [out, in] of values 0..15 in `dtype` (inverse of the packing above)."""
    out = torch.empty(packed.shape[0], 2 * packed.shape[1], dtype=dtype, device=packed.device)
    out[:, 0::2] = packed & 0x0F  # the cast to `dtype` happens in the copy: no extra pass
    out[:, 1::2] = packed >> 4
    return out


class QuantizedLinear(nn.Module):
    """A linear layer whose weight is kept in a compact format and expanded per call.

    Buffers: ``qweight`` (the stored weight), ``scale`` and, for int4, ``minimum`` (float32),
    ``bias`` (compute dtype, optional). Per-row formats scale the matmul's output instead of the
    weight, which saves a pass over the weights; int4 groups must be expanded first.
    """

    def __init__(
        self,
        fmt: str,
        qweight: torch.Tensor,
        scale: torch.Tensor | None,
        minimum: torch.Tensor | None,
        bias: torch.Tensor | None,
        in_features: int,
        out_features: int,
        group_size: int | None = None,
    ) -> None:
        super().__init__()
        self.fmt = fmt
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size
        self.register_buffer("qweight", qweight)
        self.register_buffer("scale", scale)
        self.register_buffer("minimum", minimum)
        self.register_buffer("bias", bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, fmt: str, dtype: torch.dtype, group_size: int = DEFAULT_GROUP_SIZE):
        """Quantize `linear` (ideally float32) into `fmt`; its bias is kept in the compute `dtype`."""
        w = linear.weight.detach()
        bias = None if linear.bias is None else linear.bias.detach().to(dtype)
        scale = minimum = None
        group = None
        if fmt == "int8":
            q, scale = quantize_int8(w)
        elif fmt == "fp8":
            q, scale = quantize_fp8(w)
        elif fmt == "int4":
            q, scale, minimum = quantize_int4(w, group_size)
            group = group_size
        elif fmt in STORAGE_DTYPES:
            q = w.to(STORAGE_DTYPES[fmt])
        else:
            raise ValueError(f"weights={fmt!r} is not supported: use one of {WEIGHT_FORMATS}")
        return cls(fmt, q, scale, minimum, bias, linear.in_features, linear.out_features, group)

    def dequantize(self, dtype: torch.dtype) -> torch.Tensor:
        """The full weight [out, in] in `dtype` (scales applied)."""
        if self.fmt == "int4":
            w = unpack_int4(self.qweight, dtype)  # scaled in place, full groups then the shorter tail
            full = self.in_features // self.group_size * self.group_size
            scale, minimum = self.scale.to(dtype), self.minimum.to(dtype)
            if full:
                g = w[:, :full].view(self.out_features, -1, self.group_size)
                g.mul_(scale[:, : g.shape[1], None]).add_(minimum[:, : g.shape[1], None])
            if full < self.in_features:
                w[:, full:].mul_(scale[:, -1:]).add_(minimum[:, -1:])
            return w
        w = self.qweight.to(dtype)
        return w if self.scale is None else w * self.scale.to(dtype)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fmt == "int4":
            return F.linear(x, self.dequantize(x.dtype), self.bias)
        y = F.linear(x, self.qweight.to(x.dtype))
        if self.scale is not None:
            y = y * self.scale.to(x.dtype)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.group_size else ""
        return f"{self.in_features}, {self.out_features}, fmt={self.fmt}{group}"


def quantize_linears(model: nn.Module, fmt: str, dtype: torch.dtype, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Replace every nn.Linear inside the decoder layers by a `QuantizedLinear`; returns how many.

    The LM head (tied to the embedding in SmolLM2) stays in the compute dtype, as llama.cpp keeps
    its output layer at higher precision: it decides every token and on this small model it is a
    fifth of the weights, read once per step.
    """
    count = 0
    for layer in model.layers:
        for parent in list(layer.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.Linear):
                    setattr(parent, name, QuantizedLinear.from_linear(child, fmt, dtype, group_size))
                    count += 1
    return count
