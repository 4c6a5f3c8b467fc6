"""(IA)³ mutants (SPEC §5): `y = l_out ⊙ base(l_ff ⊙ x)`, merge `W′ = diag(l) W`, `b′ = l ⊙ b`, each with one bug."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from reference_tuners.core.kinds import channel_view

from .base import MutantDriver


class _BiasAddedAfterScaling:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        result = super().adapted_forward(x, active, *args, **kwargs)
        output = [n for n in active if not self.settings[n].feedforward]
        bias = self.base_layer.bias
        if not output or bias is None:
            return result
        scale = channel_view(self._product(output), self.kind)
        return (result - (scale - 1) * channel_view(bias, self.kind)).to(result.dtype)  # l ⊙ (x Wᵀ) + b


class BiasAddedAfterScaling(MutantDriver):
    """Non-feedforward forward y = l ⊙ (x Wᵀ) + b: the bias is added after scaling instead of being scaled."""

    layer_mixin = _BiasAddedAfterScaling


class _MergeLeavesBias:
    def merged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        weight, _ = super().merged_tensors(name)
        return weight, None


class MergeLeavesBias(MutantDriver):
    """Non-feedforward merge writes diag(l) W but leaves b unscaled (b′ = b instead of l ⊙ b)."""

    layer_mixin = _MergeLeavesBias


class _UnmergeWithoutWarning:
    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().unmerged_tensors(name)


class UnmergeWithoutWarning(MutantDriver):
    """Unmerge reverts the adapter silently: no warning that the (IA)³ unmerge result can be inaccurate."""

    layer_mixin = _UnmergeWithoutWarning


class _RandomInitUniform:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if not settings.init_ones:
            with torch.no_grad():
                nn.init.uniform_(self.ia3_l[name])


class RandomInitUniform(MutantDriver):
    """init_ia3_weights=False draws l from U(0, 1) instead of N(0, 1)."""

    layer_mixin = _RandomInitUniform


class _GroupedMergeFirstGroup:
    def _weight_scale(self, name: str) -> torch.Tensor:
        groups = getattr(self.base_layer, "groups", 1)
        if not self.settings[name].feedforward or groups == 1:
            return super()._weight_scale(name)
        vector = self.ia3_l[name].reshape(-1)
        per_group = vector.shape[0] // groups  # every output channel scaled by the first group's slice of l
        return vector[:per_group].reshape(1, per_group, *([1] * (self.base_weight().dim() - 2)))


class GroupedMergeFirstGroup(MutantDriver):
    """Feedforward merge on a grouped conv uses l[c] for every group: the group offset g(o)·C is left out."""

    layer_mixin = _GroupedMergeFirstGroup


class _VectorsSummed:
    def _product(self, names: list[str]) -> torch.Tensor:
        total = self.ia3_l[names[0]].reshape(-1)
        for name in names[1:]:
            total = total + self.ia3_l[name].reshape(-1)
        return total


class VectorsSummed(MutantDriver):
    """Several active adapters add their vectors (l_a + l_b) instead of multiplying them (l_a ⊙ l_b)."""

    layer_mixin = _VectorsSummed


class _SafeMergeIgnoresBias:
    def _check_finite(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super()._check_finite(name, weight, None)


class SafeMergeIgnoresBias(MutantDriver):
    """Safe merge checks the merged weight only: a non-finite merged bias l ⊙ b is written."""

    layer_mixin = _SafeMergeIgnoresBias
