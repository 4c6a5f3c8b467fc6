"""The weight a model applies at one layer, read through its forward alone. Torch only: a repro ships this source
(`inspect.getsource(applied_weight)`), so the suite and the snippet observe the same thing the same way."""

import math

import torch
from torch import nn


def applied_weight(model: nn.Module, base: nn.Module) -> torch.Tensor:
    """W′ (logical orientation `(out, in, *kernel)`, float64) the model applies at the base layer `base` (a convolution
    without padding and dilation 1), from forwards on one-hot inputs at the base weight's dtype, less the base bias b:
    Linear `(y(I) − b)ᵀ`; a convolution `W′[o, c, κ] = y(e_{g(o)·C + c, κ})[o] − b[o]` (C = in_channels / groups)."""
    weight = base.weight
    bias = 0 if base.bias is None else base.bias.detach().double()
    if not isinstance(base, nn.modules.conv._ConvNd):
        in_features = weight.shape[0] if type(base).__name__ == "Conv1D" else weight.shape[1]
        with torch.no_grad():
            y = model(torch.eye(in_features, dtype=torch.float64).to(weight.dtype)).double()
        return (y - bias).T
    out_channels, channels, *kernel = weight.shape
    count = base.in_channels * math.prod(kernel)
    x = torch.eye(count, dtype=torch.float64).reshape(count, base.in_channels, *kernel).to(weight.dtype)
    with torch.no_grad():
        y = model(x).double().reshape(count, out_channels)
    y = (y - bias).reshape(base.in_channels, math.prod(kernel), out_channels)
    per_group = out_channels // base.groups
    rows = [y[(o // per_group) * channels : (o // per_group + 1) * channels, :, o] for o in range(out_channels)]
    return torch.stack(rows).reshape(weight.shape)
