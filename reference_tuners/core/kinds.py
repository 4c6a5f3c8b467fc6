"""Layer kinds and the base layer's own computation `op(x; W', b')` (SPEC §0.4)."""

from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F
from torch import nn

LINEAR_KINDS = frozenset({"linear", "hf_conv1d"})
CONV_KINDS = frozenset({"conv1d", "conv2d", "conv3d"})


def _is_hf_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D; if transformers was never imported, no module can be one."""
    pytorch_utils = sys.modules.get("transformers.pytorch_utils")
    conv1d_cls = getattr(pytorch_utils, "Conv1D", None)
    return conv1d_cls is not None and isinstance(module, conv1d_cls)


def layer_kind(module: nn.Module) -> str | None:
    """The layer-kind id of `module` (`linear`, `hf_conv1d`, `conv1d`, `conv2d`, `conv3d`) or None."""
    if isinstance(module, nn.Linear):
        return "linear"
    if _is_hf_conv1d(module):
        return "hf_conv1d"
    for kind, cls in (("conv1d", nn.Conv1d), ("conv2d", nn.Conv2d), ("conv3d", nn.Conv3d)):
        if isinstance(module, cls):
            return kind
    return None


def features(base: nn.Module, kind: str) -> tuple[int, int]:
    """(in_features, out_features) as CORE-INJ-3 defines them."""
    if kind == "linear":
        return base.in_features, base.out_features
    if kind == "hf_conv1d":
        return tuple(base.weight.shape)  # stored (in, out)
    return base.in_channels, base.out_channels


def logical_weight(base: nn.Module, kind: str) -> torch.Tensor:
    """W in logical orientation (out × in for linear kinds); a view of the stored weight."""
    return base.weight.T if kind == "hf_conv1d" else base.weight


def stored_layout(weight: torch.Tensor, kind: str) -> torch.Tensor:
    """Logical → stored orientation (transpose for transformers Conv1D)."""
    return weight.T if kind == "hf_conv1d" else weight


def apply_op(base: nn.Module, kind: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    """op(x; W', b'): the base layer's computation with its parameters replaced (W' logical), done as the
    base layer does it, so that unchanged values give bitwise its output (transformers Conv1D: `addmm` on the
    stored layout `W'ᵀ`, made contiguous as the stored weight is)."""
    if kind == "hf_conv1d":
        stored = weight.T if weight.T.is_contiguous() else weight.T.contiguous()
        flat = x.reshape(-1, x.shape[-1])
        out = flat @ stored if bias is None else torch.addmm(bias, flat, stored)
        return out.reshape(*x.shape[:-1], stored.shape[-1])
    if kind == "linear":
        return F.linear(x, weight, bias)
    return base._conv_forward(x, weight, bias)  # keeps stride, padding (incl. modes), dilation, groups


def flat_fan_in(base: nn.Module, kind: str) -> int:
    """Columns of W_flat: `in` for linear kinds, C·K for convolutions."""
    weight = logical_weight(base, kind)
    return weight[0].numel()


SPATIAL_DIMS = {"linear": 0, "hf_conv1d": 0, "conv1d": 1, "conv2d": 2, "conv3d": 3}


def channel_view(vector: torch.Tensor, kind: str) -> torch.Tensor:
    """A 1-D per-feature (per-channel) vector shaped to broadcast along the feature axis of an
    activation: the last axis for linear kinds, the channel axis (batched or not) for convolutions."""
    return vector.reshape(-1, *([1] * SPATIAL_DIMS[kind]))


def check_orientation(fan_in_fan_out: bool, key: str, base: nn.Module, kind: str) -> None:
    """GRALORA-LAYER-2, IA3-LAYER-3: the layer decides the orientation (Conv1D stores Wᵀ); a config
    `fan_in_fan_out` that disagrees is overridden for this layer, with a warning."""
    expected = kind == "hf_conv1d"
    if kind in LINEAR_KINDS and fan_in_fan_out != expected:
        warnings.warn(
            f"fan_in_fan_out={fan_in_fan_out} does not fit {key!r} ({type(base).__name__}); "
            f"using fan_in_fan_out={expected} for it.",
            UserWarning,
            stacklevel=4,
        )
