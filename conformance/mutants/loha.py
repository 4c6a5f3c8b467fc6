"""LoHa mutants (SPEC §6): `ΔW = s · (w1a w1b) ⊙ (w2a w2b)`, `s = alpha / r`, each with one bug."""

from __future__ import annotations

import dataclasses
import math

import torch

from .base import MutantDriver


class _SwappedFactorPairs:
    def _params(self, name: str, names: tuple[str, ...]) -> list[torch.Tensor]:
        params = super()._params(name, names)
        if len(names) == 4:  # (w1a, w1b, w2a, w2b) → (w1a, w2b, w2a, w1b)
            params[1], params[3] = params[3], params[1]
        return params


class SwappedFactorPairs(MutantDriver):
    """ΔW = s · (w1a w2b) ⊙ (w2a w1b): the `b` factors of the two Hadamard terms swapped (forward and merge)."""

    layer_mixin = _SwappedFactorPairs


class _MergeScaledTwice:
    def merged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        weight = self.base_weight()
        return (weight + self.scaling[name] * self.delta_weight(name)).to(weight.dtype), None


class MergeScaledTwice(MutantDriver):
    """Merge writes W + s · ΔW: `s` applied again to a ΔW that already holds it (merge only; forward right)."""

    layer_mixin = _MergeScaledTwice


class _WrongFactorZeroed:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.init_weights:  # hada_w1_b gets the zeros hada_w2_b should have, and w2b w1b's KU values
            w1b, w2b = self.hada_w1_b[name], self.hada_w2_b[name]
            with torch.no_grad():
                w2b.copy_(w1b)
                w1b.zero_()


class WrongFactorZeroed(MutantDriver):
    """init_weights=True zeroes hada_w1_b instead of hada_w2_b (still an identity at init)."""

    layer_mixin = _WrongFactorZeroed


class _RankDropoutNotRescaled:
    def _rank_dropout_mask(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        mask = super()._rank_dropout_mask(name, dtype, device)
        return None if mask is None else (mask > 0).to(dtype)


class RankDropoutNotRescaled(MutantDriver):
    """Rank dropout uses ΔW[o] · m_o, without the rescaling by out / Σ_o m_o."""

    layer_mixin = _RankDropoutNotRescaled


class _EffectiveOnlyForConv2d:
    @classmethod
    def resolve_settings(cls, config: object, key: str, base_layer: object, kind: str) -> object:
        settings = super().resolve_settings(config, key, base_layer, kind)
        return settings if kind == "conv2d" else dataclasses.replace(settings, effective=False)


class EffectiveOnlyForConv2d(MutantDriver):
    """`use_effective_conv2d` taken literally: Conv1d / Conv3d with K > 1 stay in flattened mode."""

    layer_mixin = _EffectiveOnlyForConv2d


class _SetScaleWithoutAlphaOverR:
    def set_scale(self, adapter: str, scale: float) -> None:
        if adapter in self.settings:
            self.scaling[adapter] = scale


class SetScaleWithoutAlphaOverR(MutantDriver):
    """`set_scale(a, f)` sets s = f instead of f · alpha / r."""

    layer_mixin = _SetScaleWithoutAlphaOverR


class _EffectiveCoreBound:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.effective:  # the cores drawn with bound 1/√r (fan-in of the (r, r) part only), not 1/√(r·K)
            kernel = math.prod(self.hada_t1[name].shape[2:])
            with torch.no_grad():
                self.hada_t1[name].mul_(math.sqrt(kernel))
                self.hada_t2[name].mul_(math.sqrt(kernel))


class EffectiveCoreBound(MutantDriver):
    """Effective mode draws the CP cores t1, t2 from U(±1/√r) instead of U(±1/√(r·K)) (kernel size left out)."""

    layer_mixin = _EffectiveCoreBound


class _SavesAlpha:
    def adapter_parameters(self, name: str) -> dict[str, torch.Tensor]:
        params = super().adapter_parameters(name)
        if name in self.settings:  # LyCORIS' habit: alpha written next to the factors
            params["alpha"] = torch.tensor(float(self.settings[name].alpha), dtype=self.adapter_dtype(name))
        return params


class SavesAlpha(MutantDriver):
    """The saved file holds an `alpha` tensor per layer besides the factors."""

    layer_mixin = _SavesAlpha


class _W2bAlwaysZero:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        with torch.no_grad():
            self.hada_w2_b[name].zero_()  # also for init_weights=False


class W2bAlwaysZero(MutantDriver):
    """hada_w2_b starts at zero whatever init_weights says (init_weights=False is an identity too)."""

    layer_mixin = _W2bAlwaysZero


class _DetachedFactor:
    def _params(self, name: str, names: tuple[str, ...]) -> list[torch.Tensor]:
        params = super()._params(name, names)
        if len(names) == 4:
            params[3] = params[3].detach()  # hada_w2_b enters ΔW as a constant: it never gets a gradient
        return params


class DetachedFactor(MutantDriver):
    """hada_w2_b is detached in ΔW: the output is right, but it never receives a gradient."""

    layer_mixin = _DetachedFactor


class _RankDropoutAllDroppedNaN:
    def _rank_dropout_mask(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        mask = super()._rank_dropout_mask(name, dtype, device)
        if mask is None:
            return None
        keep = (mask > 0).to(dtype)
        return keep * (self.out_features / keep.sum())  # Σ m = 0 gives 0/0 = NaN


class RankDropoutAllDroppedNaN(MutantDriver):
    """Rank dropout divides by Σ_o m_o unguarded: when every channel is dropped the output is NaN, not 0."""

    layer_mixin = _RankDropoutAllDroppedNaN


class _ModuleDropoutInverted:
    def _module_dropped(self, name: str) -> bool:
        p = self.settings[name].module_dropout
        return p > 0 and not super()._module_dropped(name)


class ModuleDropoutInverted(MutantDriver):
    """Module dropout skips an adapter with probability 1 − p (the keep probability) instead of p."""

    layer_mixin = _ModuleDropoutInverted
