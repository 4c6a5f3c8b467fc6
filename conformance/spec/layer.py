"""What an oracle knows of a base layer and an adapter, and `op(x; W, b)` in float64 (SPEC §0.4).

Written from SPEC.md alone: nothing here imports `reference_tuners`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


@dataclass(frozen=True)
class Layer:
    """Geometry of a base layer. Linear kinds (`linear`, `hf_conv1d`): `in_features`, `out_features`;
    convolutions (`conv1d`, `conv2d`, `conv3d`): channels, kernel and hyper-parameters. Weights handed
    to oracles are always in logical orientation (`out × in`, or `out × C × k…`)."""

    kind: str
    in_features: int
    out_features: int
    kernel_size: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"

    @property
    def is_conv(self) -> bool:
        return self.kind in ("conv1d", "conv2d", "conv3d")

    @property
    def channels_per_group(self) -> int:
        """C = in_channels / groups (1 group for linear kinds)."""
        return self.in_features // self.groups

    @property
    def kernel_numel(self) -> int:
        """K = ∏ k_i (1 for linear kinds)."""
        return math.prod(self.kernel_size) if self.is_conv else 1

    @property
    def fan_in(self) -> int:
        """Columns of W_flat: `in` for linear kinds, C·K for convolutions."""
        return self.channels_per_group * self.kernel_numel

    @property
    def weight_shape(self) -> tuple[int, ...]:
        if self.is_conv:
            return (self.out_features, self.channels_per_group, *self.kernel_size)
        return (self.out_features, self.in_features)


@dataclass
class Adapter:
    """One adapter on one layer: its resolved config (canonical field names; per-module values such as
    LoHa's pattern-resolved `r` and `alpha` already applied) and its parameters (canonical names)."""

    config: dict
    params: dict[str, Tensor] = field(default_factory=dict)


def flat(weight: Tensor) -> Tensor:
    """W_flat: W reshaped row-major to (out, C·K)."""
    return weight.reshape(weight.shape[0], -1)


def op(x: Tensor, weight: Tensor, bias: Tensor | None, layer: Layer) -> Tensor:
    """op(x; W, b): the base layer's computation with (logical) W and b, every hyper-parameter included."""
    if not layer.is_conv:
        return F.linear(x, weight, bias)
    dims = len(layer.kernel_size)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    padding = layer.padding
    if layer.padding_mode != "zeros":
        pad = _explicit_padding(layer)
        x = F.pad(x, pad, mode=layer.padding_mode)
        padding = 0
    return conv(x, weight, bias, layer.stride, padding, layer.dilation, layer.groups)


def _explicit_padding(layer: Layer) -> tuple[int, ...]:
    """F.pad's (last axis first) amounts for a non-zeros padding_mode, "same" included."""
    pads = []
    for i in reversed(range(len(layer.kernel_size))):
        if layer.padding == "valid":
            pads += [0, 0]
        elif layer.padding == "same":
            total = layer.dilation[i] * (layer.kernel_size[i] - 1)
            pads += [total // 2, total - total // 2]
        else:
            pads += [layer.padding[i], layer.padding[i]]
    return tuple(pads)


@dataclass(frozen=True)
class Init:
    """A parameter's documented initial distribution. `kind`: "zeros", "ones", "uniform" (i.i.d. U(±bound)),
    "normal" (i.i.d. N(0, 1)), "paired_uniform" (HRA-INIT-1: columns 2j and 2j+1 equal, each i.i.d. U(±bound))."""

    kind: str
    bound: float = 0.0


# ---- short constructors (tests, records) ----
def linear(n_in: int, n_out: int, kind: str = "linear") -> Layer:
    """A linear-kind layer (`linear` or `hf_conv1d`)."""
    return Layer(kind, n_in, n_out)


def conv(
    kind: str,
    n_in: int,
    n_out: int,
    k: int | tuple[int, ...],
    *,
    stride: int = 1,
    padding: int | str = 0,
    dilation: int = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
) -> Layer:
    """A convolution with the same stride/dilation on every axis (kernel and padding as ints or tuples)."""
    dims = {"conv1d": 1, "conv2d": 2, "conv3d": 3}[kind]
    kernel = k if isinstance(k, tuple) else (k,) * dims
    pad = padding if isinstance(padding, str) else (padding,) * dims
    return Layer(kind, n_in, n_out, kernel, (stride,) * dims, pad, (dilation,) * dims, groups, padding_mode)
