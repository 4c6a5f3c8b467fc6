"""(IA)³ mutants (SPEC §5): `y = l_out ⊙ base(l_ff ⊙ x)`, merge `W′ = diag(l) W`, `b′ = l ⊙ b`, each with one bug."""

from __future__ import annotations

import math
import warnings

import torch
from torch import nn

from reference_tuners import ia3
from reference_tuners.core import layer as layer_module
from reference_tuners.core.kinds import LINEAR_KINDS, channel_view

from .base import MutantDriver, patched


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


class _ConvScaledByStoredVector:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        if self.kind in LINEAR_KINDS or any(self.settings[n].feedforward for n in active):
            return super().adapted_forward(x, active, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        scale = math.prod(self.ia3_l[n] for n in active)  # (1, C, 1, …) as stored: (C, …) outputs gain a batch axis
        return (result * scale).to(result.dtype)


class ConvScaledByStoredVector(MutantDriver):
    """Conv output scaling multiplies by the stored (1, C, 1, …) vector, so unbatched input returns (1, C, …)."""

    layer_mixin = _ConvScaledByStoredVector


class _FeedforwardScaledInputUnused:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        output = [n for n in active if not self.settings[n].feedforward]
        result = self.base_layer(x, *args, **kwargs)  # x where the feedforward product l ⊙ x belongs
        return (result * channel_view(self._product(output), self.kind)).to(result.dtype) if output else result


class FeedforwardScaledInputUnused(MutantDriver):
    """Feedforward forward calls the base layer on x instead of the scaled input l ⊙ x (the wrong variable)."""

    layer_mixin = _FeedforwardScaledInputUnused


class _FeedforwardInitRandom:
    def create_adapter(self, name: str, settings: ia3.IA3Settings, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.feedforward:  # the ones-initialisation was written for output vectors only
            with torch.no_grad():
                nn.init.normal_(self.ia3_l[name])


class FeedforwardInitRandom(MutantDriver):
    """init_ia3_weights=True gives ones to output vectors only: feedforward vectors are drawn from N(0, 1)."""

    layer_mixin = _FeedforwardInitRandom


class _WeightedAdapterProduct:
    def add_weighted_adapter(self, adapters: list[str], weights: list[float], adapter_name: str) -> None:
        ia3.add_weighted_adapter(self, adapters, weights, adapter_name)
        with torch.no_grad():
            for _, layer in self.tuner_layers():
                if adapter_name in layer.settings:
                    parts = [w * layer.ia3_l[n] for n, w in zip(adapters, weights, strict=True) if n in layer.settings]
                    layer.ia3_l[adapter_name].copy_(math.prod(parts))  # Π_k w_k l_k, as active adapters combine


class WeightedAdapterProduct(MutantDriver):
    """add_weighted_adapter combines the vectors as a product Π_k w_k l_k instead of the sum Σ_k w_k l_k."""

    model_mixin = _WeightedAdapterProduct


def _non_finite_as_nan(new: torch.Tensor, old: torch.Tensor) -> bool:
    return bool((torch.isnan(new) & ~torch.isnan(old)).any())  # ±inf goes unnoticed


class _UnmergeChecksNanOnly:
    def unmerge(self) -> None:
        with patched(((layer_module, "introduces_non_finite", _non_finite_as_nan),)):
            super().unmerge()


class UnmergeChecksNanOnly(MutantDriver):
    """Unmerge guards against NaN only: dividing by l + 1e-8 = 0 writes ±inf (with the usual inaccuracy warning)."""

    layer_mixin = _UnmergeChecksNanOnly
