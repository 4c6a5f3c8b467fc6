"""`ScaledLayer`: one adapted module. It keeps the original module and computes, per forward, the effective
weight `W′ = diag(l_out) W diag(l_in)` and bias `b′ = l_out ⊙ b` of its active adapters (IA3-FWD-3,
IA3-MULTI-1), then runs the original module functionally with them: `op(x; W′, b′)`."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

from .scaling import UNMERGE_SHIFT, compute_dtype, input_factor, output_factor, product

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
SUPPORTED = (nn.Linear, Conv1D, *CONVOLUTIONS)
HALF = (torch.float16, torch.bfloat16)


class ScaledLayer(nn.Module):
    """`base_layer` (the original module, kept) and one IA3 vector `ia3_l[name]` per adapter, in SPEC's canonical
    shape (IA3-PARAM-1); `feedforward[name]` says whether it scales inputs or outputs."""

    def __init__(self, base_layer: nn.Module) -> None:
        if not isinstance(base_layer, SUPPORTED):
            raise TypeError(f"tinyia3 cannot adapt a {type(base_layer).__name__}: Linear, Conv1D or ConvNd only")
        super().__init__()
        self.base_layer = base_layer
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []

    # ---- geometry ----
    @property
    def transposed(self) -> bool:
        """transformers Conv1D stores its weight as `(in, out)`."""
        return isinstance(self.base_layer, Conv1D)

    @property
    def in_features(self) -> int:
        base = self.base_layer
        if self.transposed:
            return base.weight.shape[0]
        return base.in_channels if isinstance(base, CONVOLUTIONS) else base.in_features

    @property
    def out_features(self) -> int:
        base = self.base_layer
        if self.transposed:
            return base.weight.shape[1]
        return base.out_channels if isinstance(base, CONVOLUTIONS) else base.out_features

    @property
    def groups(self) -> int:
        """Convolution groups (a linear-type layer is one group)."""
        return getattr(self.base_layer, "groups", 1)

    def add(self, name: str, feedforward: bool, ones: bool, autocast: bool) -> None:
        """A new vector on the base weight's device: ones (IA3-INIT-1) or N(0, 1) (IA3-INIT-2), in the base dtype,
        or float32 for a half-precision base with `autocast` (CORE-DTYPE-1)."""
        weight = self.base_layer.weight
        dtype = torch.float32 if autocast and weight.dtype in HALF else weight.dtype
        size = self.in_features if feedforward else self.out_features
        if isinstance(self.base_layer, CONVOLUTIONS):
            shape = (1, size, *([1] * (weight.dim() - 2)))
        else:
            shape = (1, size) if feedforward else (size, 1)
        draw = torch.ones if ones else torch.randn
        self.ia3_l[name] = nn.Parameter(draw(shape, dtype=dtype, device=weight.device))
        self.feedforward[name] = feedforward

    # ---- forward ----
    def effective(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`W′` and `b′` for the adapters `names`, formed in the adapters' dtype and cast back (IA3-DTYPE-1)."""
        weight, bias = self.base_layer.weight, self.base_layer.bias
        dtype = self.ia3_l[names[0]].dtype
        l_out = product([self.ia3_l[n] for n in names if not self.feedforward[n]])
        l_in = product([self.ia3_l[n] for n in names if self.feedforward[n]])
        scaled = weight.to(dtype)
        if l_out is not None:
            scaled = scaled * output_factor(l_out, weight, self.transposed)
            bias = None if bias is None else (bias.to(dtype) * l_out).to(bias.dtype)
        if l_in is not None:
            scaled = scaled * input_factor(l_in, weight, self.transposed, self.groups)
        return scaled.to(weight.dtype), bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Unmerged: `op(x; W′, b′)` over the active adapters (CORE-FWD-1); merged: the base module on its merged
        weights, nothing else applied (CORE-FWD-9)."""
        names = [n for n in self.active_adapters if n in self.ia3_l]
        if self.merged_adapters or not names:
            return self.base_layer(x)
        weight, bias = self.effective(names)
        tensors = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return functional_call(self.base_layer, tensors, (x,))

    # ---- merge and unmerge ----
    def merge(self, names: list[str], safe: bool = False) -> None:
        """Write `W′`, `b′` of each adapter of `names`, in order, into the base tensors in place (IA3-MERGE-1); names
        absent here are skipped, merged ones skipped with a warning (CORE-MERGE-2); `safe` raises ValueError before
        writing a non-finite value (CORE-MERGE-7)."""
        present = [n for n in names if n in self.ia3_l]
        if any(n in self.merged_adapters for n in present):
            warnings.warn(f"adapters already merged are skipped: {self.merged_adapters}", stacklevel=2)
        for name in (n for n in present if n not in self.merged_adapters):
            with torch.no_grad():
                weight, bias = self.effective([name])
            if safe and not _finite(weight, bias):
                raise ValueError(f"NaNs detected in the merged weights. The adapter {name} seems to be broken")
            self._write(weight, bias)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Revert merged adapters last in, first out, dividing by `l + 1e-8` (IA3-MERGE-2); raise ValueError naming
        the adapter before writing a non-finite value (IA3-MERGE-5)."""
        if not self.merged_adapters:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
        while self.merged_adapters:
            name = self.merged_adapters[-1]
            with torch.no_grad():
                weight, bias = self._divided(name)
            if not _finite(weight, bias):
                raise ValueError(f"unmerging IA3 adapter {name} would write non-finite weights (l + 1e-8 = 0)")
            self._write(weight, bias)
            self.merged_adapters.pop()

    def _divided(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The base tensors divided by `l + 1e-8` of adapter `name`, computed in float32 for a half-precision vector
        (else in its dtype) and cast back; the bias only when the adapter scales outputs."""
        vector = self.ia3_l[name]
        dtype = compute_dtype(vector)
        shifted = vector.flatten().to(dtype) + UNMERGE_SHIFT
        weight, bias = self.base_layer.weight, self.base_layer.bias
        if self.feedforward[name]:
            factor = input_factor(shifted, weight, self.transposed, self.groups)
        else:
            factor = output_factor(shifted, weight, self.transposed)
            bias = None if bias is None else (bias.to(dtype) / shifted).to(bias.dtype)
        return (weight.to(dtype) / factor).to(weight.dtype), bias

    def _write(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        """Copy into the registered base tensors (the same Parameter objects stay in place, CORE-MERGE-10)."""
        with torch.no_grad():
            self.base_layer.weight.copy_(weight)
            if bias is not None:
                self.base_layer.bias.copy_(bias)


def _finite(weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    return bool(torch.isfinite(weight).all()) and (bias is None or bool(torch.isfinite(bias).all()))
