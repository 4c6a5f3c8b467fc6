"""GraLoRA mutants (SPEC §3): `ΔW[j·out/N + o, n·in/N + i] = σ Σ_t A[n, i, jρ+t] B[j, nρ+t, o]`, `σ = α/(r + h)`."""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from reference_tuners.gralora import GraLoRASettings

from .base import MutantDriver


@dataclasses.dataclass(frozen=True)
class _AlphaOverR(GraLoRASettings):
    @property
    def scaling(self) -> float:
        return self.alpha / self.r


class _ScalingIgnoresHybrid:
    @classmethod
    def resolve_settings(cls, config: object, key: str, base_layer: object, kind: str) -> GraLoRASettings:
        return _AlphaOverR(**dataclasses.asdict(super().resolve_settings(config, key, base_layer, kind)))


class ScalingIgnoresHybrid(MutantDriver):
    """σ = alpha / r instead of alpha / (r + hybrid_r) (forward and merge)."""

    layer_mixin = _ScalingIgnoresHybrid


class _MergeBlocksTransposed:
    def delta_weight(self, name: str) -> torch.Tensor:
        a, b = self.gralora_A[name], self.gralora_B[name]
        n, in_block, r = a.shape
        rho = r // n
        # block (j, n) built from B[n, jρ+t] instead of B[j, nρ+t]: the grid's block indices swapped in B
        blocks = torch.einsum("nijt,njto->joni", a.reshape(n, in_block, n, rho), b.reshape(n, n, rho, -1))
        delta = blocks.reshape(self.out_features, self.in_features)
        if name in self.gralora_A_general:
            delta = delta + self.gralora_B_general[name].weight @ self.gralora_A_general[name].weight
        return self.settings[name].scaling * delta


class MergeBlocksTransposed(MutantDriver):
    """Merge builds block (j, n) from B[n][jρ+t] instead of B[j][nρ+t] (merge only; the forward is right)."""

    layer_mixin = _MergeBlocksTransposed


class _RandomBBoundFromBlock:
    def create_adapter(self, name: str, settings: GraLoRASettings, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if not settings.init_weights:  # U(±1/√(out/N)) instead of U(±1/√r)
            with torch.no_grad():
                self.gralora_B[name].mul_(math.sqrt(settings.r * settings.k / self.out_features))


class RandomBBoundFromBlock(MutantDriver):
    """init_weights=False draws gralora_B from U(±1/√(out/N)) instead of U(±1/√r)."""

    layer_mixin = _RandomBBoundFromBlock


class _HybridAlwaysCreated:
    def create_adapter(self, name: str, settings: GraLoRASettings, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.hybrid_r == 0:  # empty (0, in) / (out, 0) hybrid layers instead of none
            device = self.base_layer.weight.device
            self.gralora_A_general[name] = nn.Linear(self.in_features, 0, bias=False, device=device, dtype=dtype)
            self.gralora_B_general[name] = nn.Linear(0, self.out_features, bias=False, device=device, dtype=dtype)


class HybridAlwaysCreated(MutantDriver):
    """hybrid_r = 0 still creates the hybrid layers, with empty (0, in) and (out, 0) weights."""

    layer_mixin = _HybridAlwaysCreated


class _DropoutNotInverted:
    def delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        out = super().delta_output(x, name)
        p = self.settings[name].dropout
        return out * (1 - p) if self.training else out  # the kept elements are not scaled by 1/(1 − p)


class DropoutNotInverted(MutantDriver):
    """gralora_dropout zeroes input elements but does not rescale the kept ones by 1/(1 − p)."""

    layer_mixin = _DropoutNotInverted


class _ABoundFromFullIn:
    def create_adapter(self, name: str, settings: GraLoRASettings, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        with torch.no_grad():  # U(±1/√in) instead of U(±1/√(in/N))
            self.gralora_A[name].div_(math.sqrt(settings.k))


class ABoundFromFullIn(MutantDriver):
    """gralora_A is drawn from U(±1/√in) instead of U(±1/√(in/N)) (the block's fan-in)."""

    layer_mixin = _ABoundFromFullIn


class _HybridKeysWithoutWeight:
    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {key.removesuffix(".weight"): p for key, p in super().adapter_parameters(name).items()}


class HybridKeysWithoutWeight(MutantDriver):
    """The hybrid tensors are saved as `<key>.gralora_A_general` / `.gralora_B_general`, without `.weight`."""

    layer_mixin = _HybridKeysWithoutWeight


class _DropoutInEvalMode:
    def delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        training, self.training = self.training, True  # F.dropout(…, training=True) whatever the mode
        try:
            return super().delta_output(x, name)
        finally:
            self.training = training


class DropoutInEvalMode(MutantDriver):
    """gralora_dropout is applied in eval mode too."""

    layer_mixin = _DropoutInEvalMode


class _DeltaShapedAsBatchAndTokens:
    def delta_output(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return super().delta_output(x, name).reshape(x.shape[0], -1, self.out_features)  # (batch, tokens, out)


class DeltaShapedAsBatchAndTokens(MutantDriver):
    """The delta path reshapes its output to (x.shape[0], -1, out), as if every input were (batch, tokens, in)."""

    layer_mixin = _DeltaShapedAsBatchAndTokens


class _HybridBNotZeroed:
    def create_adapter(self, name: str, settings: GraLoRASettings, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.init_weights and name in self.gralora_B_general:  # the zeroing covers gralora_B only
            with torch.no_grad():
                bound = 1 / math.sqrt(settings.hybrid_r)
                self.gralora_B_general[name].weight.uniform_(-bound, bound)


class HybridBNotZeroed(MutantDriver):
    """init_weights=True zeroes gralora_B but draws gralora_B_general.weight from U(±1/√h), as the random option."""

    layer_mixin = _HybridBNotZeroed
