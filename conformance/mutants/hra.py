"""HRA mutants (SPEC §4): `W′ = W R`, `R = H_0 H_1 ⋯ H_{r−1}`, `H_i = I − 2 û_i û_iᵀ`, each with one bug."""

from __future__ import annotations

import math
import warnings

import torch

from reference_tuners.hra import householder_wy

from .base import MutantDriver


class _ReflectionsReversed:
    def factors(self, name: str, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        factors = super().factors(name, dtype)
        if self.settings[name].apply_gs:
            return factors
        return [(y, t.T) for y, t in reversed(factors)]  # (F_1 ⋯ F_k)ᵀ = F_kᵀ ⋯ F_1ᵀ


class ReflectionsReversed(MutantDriver):
    """R = H_{r−1} ⋯ H_1 H_0 (the reflections multiplied in reverse order, i.e. Rᵀ) in forward and merge."""

    layer_mixin = _ReflectionsReversed


class _GramSchmidtNotNormalised:
    def factors(self, name: str, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        factors = super().factors(name, dtype)
        if not self.settings[name].apply_gs:
            return factors
        (q, t), u = factors[0], self.hra_u[name].to(dtype)
        residual_norms = (q * u).sum(0).abs()  # q_iᵀ u_i = ‖v_i‖: the un-normalised residual is ‖v_i‖ q_i
        return [(q * residual_norms, t)]


class GramSchmidtNotNormalised(MutantDriver):
    """Gram–Schmidt keeps the residuals v_i as Q's columns, without dividing by ‖v_i‖."""

    layer_mixin = _GramSchmidtNotNormalised


class _MergeTransposes:
    def merged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        return self._rotated_weight(name, transpose=True), None

    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        return self._rotated_weight(name, transpose=False), None


class MergeTransposes(MutantDriver):
    """Merge writes W Rᵀ and unmerge W R (swapped): merge-then-unmerge restores W, but the merged W ≠ W R."""

    layer_mixin = _MergeTransposes


class _UnmergeWithoutTranspose:
    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        return self._rotated_weight(name, transpose=False), None


class UnmergeWithoutTranspose(MutantDriver):
    """Unmerge multiplies by R again (W R R) instead of by Rᵀ."""

    layer_mixin = _UnmergeWithoutTranspose


class _SymmetricInitTiled:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        u = self.hra_u[name]
        if settings.init_weights and settings.r % 2 == 0:  # [h_0, h_1, …, h_0, h_1, …] instead of [h_0, h_0, h_1, …]
            with torch.no_grad():
                u.copy_(u[:, ::2].repeat(1, 2))


class SymmetricInitTiled(MutantDriver):
    """Symmetric init repeats the half as a block, [h_0 … h_{r/2−1}, h_0 … h_{r/2−1}], not each column adjacently."""

    layer_mixin = _SymmetricInitTiled


class _ZeroNormColumnsUnchecked:
    def factors(self, name: str, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self.settings[name].apply_gs:
            return super().factors(name, dtype)
        return householder_wy(self.hra_u[name].to(dtype))  # no check for zero / non-finite column norms


class ZeroNormColumnsUnchecked(MutantDriver):
    """Without Gram–Schmidt a zero or non-finite column of hra_u is not rejected: û = u/‖u‖ gives NaN."""

    layer_mixin = _ZeroNormColumnsUnchecked


class _RandomInitBoundFromD:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        u = self.hra_u[name]
        if not settings.init_weights:  # KU on the (r, d) layout: U(±1/√d) instead of U(±1/√r)
            with torch.no_grad():
                u.mul_(math.sqrt(settings.r / u.shape[0]))


class RandomInitBoundFromD(MutantDriver):
    """init_weights=False draws hra_u from U(±1/√d) instead of U(±1/√r)."""

    layer_mixin = _RandomInitBoundFromD


class _OddRWithoutWarning:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The symmetric initialization can NOT")
            super().create_adapter(name, settings, dtype)


class OddRWithoutWarning(MutantDriver):
    """init_weights=True with an odd r falls back to the random init silently (no warning)."""

    layer_mixin = _OddRWithoutWarning


class _RotationInFloat32:
    def factors(self, name: str, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if dtype != torch.float64:
            return super().factors(name, dtype)
        return [(y.to(dtype), t.to(dtype)) for y, t in super().factors(name, torch.float32)]


class RotationInFloat32(MutantDriver):
    """R is computed in float32 also for float64 adapters (then cast back): float64 models lose precision."""

    layer_mixin = _RotationInFloat32


class _GramSchmidtSymmetricInitSilent:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*apply_GS=True with the symmetric initialization")
            super().create_adapter(name, settings, dtype)


class GramSchmidtSymmetricInitSilent(MutantDriver):
    """apply_GS=True with the symmetric initialisation does not warn that it is degenerate."""

    layer_mixin = _GramSchmidtSymmetricInitSilent
