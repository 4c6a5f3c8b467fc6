"""Bone / MiSS mutants (SPEC §2): `ΔW[o, i] = B[i mod r, o mod w]`, BAT tiles `W_{p,c} + W_{p,c} B[p] + B[p]`."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference_tuners.bone import bat_inverse, chunk_sum, tiled

from .base import MutantDriver


def _full_chunks_only(x: torch.Tensor, r: int) -> torch.Tensor:
    """x with its last `in mod r` columns zeroed: they are cut off instead of zero-padded into a chunk of s(x)."""
    kept = x.shape[-1] // r * r
    return F.pad(x[..., :kept], (0, x.shape[-1] - kept))


class _RemainderColumnsDropped:
    def add_delta(self, result: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        return super().add_delta(result, _full_chunks_only(x, self.settings[name].r), name)


class RemainderColumnsDropped(MutantDriver):
    """Plain forward sums only the full r-wide chunks of x: input columns i ≥ ⌊in/r⌋·r are ignored."""

    layer_mixin = _RemainderColumnsDropped


class _BlockNotTransposed:
    def delta_weight(self, name: str) -> torch.Tensor:
        return tiled(self.blocks[name], self.out_features, self.in_features)


class BlockNotTransposed(MutantDriver):
    """Merge tiles B itself, ΔW[o, i] = B[o mod r, i mod w], instead of Bᵀ (merge only; the forward is right)."""

    layer_mixin = _BlockNotTransposed


class _BatWithoutAddedBlock:
    def transformed(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        result = super().transformed(weight, name)
        if self.settings[name].mode != "bat":
            return result
        return result - super().transformed(torch.zeros_like(weight), name)  # 𝒯(0) is the tiled B[p]


class BatWithoutAddedBlock(MutantDriver):
    """BAT tiles become W_{p,c}(I + B[p]), without the + B[p] term (forward and merge)."""

    layer_mixin = _BatWithoutAddedBlock


class _BatInverseBeforeSubtracting:
    def unmerged_tensors(self, name: str) -> tuple[torch.Tensor, None]:
        if self.settings[name].mode != "bat":
            return super().unmerged_tensors(name)
        weight, block = self.base_weight(), self.blocks[name]
        tiles = super().transformed(torch.zeros_like(weight), name)  # 𝒯(0): B[p] on every tile
        # bat_inverse(W + B) = (W + B − B)(I + B)⁻¹ = W (I + B)⁻¹
        return (bat_inverse(weight.to(block.dtype) + tiles, block, name) - tiles).to(weight.dtype), None


class BatInverseBeforeSubtracting(MutantDriver):
    """BAT unmerge computes W (I + B[p])⁻¹ − B[p] instead of (W − B[p])(I + B[p])⁻¹."""

    layer_mixin = _BatInverseBeforeSubtracting


class _RandomInitBoundFromR:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.random_init:  # KU on the (out, r) layout: U(±1/√r) instead of U(±1/√out)
            with torch.no_grad():
                self.blocks[name].mul_(math.sqrt(self.out_features / settings.r))


class RandomInitBoundFromR(MutantDriver):
    """init_weights=False draws B from U(±1/√r) (KU on the transposed shape) instead of U(±1/√out)."""

    layer_mixin = _RandomInitBoundFromR


class _BatBlockInitIdentity:
    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.mode == "bat":  # as if the tile update were W·B: the identity block
            with torch.no_grad():
                self.blocks[name].copy_(torch.eye(settings.r, dtype=dtype).expand_as(self.blocks[name]))


class BatBlockInitIdentity(MutantDriver):
    """BAT blocks start at the identity I instead of zeros (not an identity at init)."""

    layer_mixin = _BatBlockInitIdentity


class _MiniExpandedByInterleave:
    def add_delta(self, result: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        settings, block = self.settings[name], self.blocks[name]
        if settings.mode != "mini":
            return super().add_delta(result, x, name)
        expanded = block.repeat_interleave(self.out_features // settings.mini_r, dim=1)  # B[j, o // (out/mini_r)]
        x = x.to(block.dtype)
        if settings.dropout and self.training:
            x = F.dropout(x, settings.dropout, training=True)
        return result + (chunk_sum(x, settings.r) @ expanded).to(result.dtype)


class MiniExpandedByInterleave(MutantDriver):
    """MiSS "mini" forward expands B to B[j, o // (out/mini_r)] (each column repeated) instead of B[j, o mod mini_r]."""

    layer_mixin = _MiniExpandedByInterleave


class _BatWeightWithoutGrad:
    def transformed(self, weight: torch.Tensor, name: str) -> torch.Tensor:
        if self.settings[name].mode != "bat":
            return super().transformed(weight, name)
        with torch.no_grad():  # W_eff built as a constant: no gradient reaches the block
            return super().transformed(weight, name)


class BatWeightWithoutGrad(MutantDriver):
    """BAT builds W_eff under torch.no_grad(): the forward is right, but bone_block never gets a gradient."""

    layer_mixin = _BatWeightWithoutGrad


class _PlainWeightCachedAtCreation:
    def __init__(self, base_layer: torch.nn.Module, kind: str) -> None:
        super().__init__(base_layer, kind)
        self.weight_at_creation: dict[str, torch.Tensor] = {}

    def create_adapter(self, name: str, settings: object, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        self.weight_at_creation[name] = self.base_weight().detach().clone()

    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        if len(active) != 1 or self.settings[active[0]].mode != "plain":
            return super().adapted_forward(x, active, *args, **kwargs)
        weight = self.transformed(self.weight_at_creation[active[0]], active[0])  # W₀ + T(B), W₀ a stale copy
        return self.op(x, weight.to(x.dtype), self.base_layer.bias)


class PlainWeightCachedAtCreation(MutantDriver):
    """Plain forward computes op(x; W₀ + T(B), b) with W₀ the base weight copied when the adapter was created."""

    layer_mixin = _PlainWeightCachedAtCreation


class _MiniRemainderColumnsDropped:
    def add_delta(self, result: torch.Tensor, x: torch.Tensor, name: str) -> torch.Tensor:
        if self.settings[name].mode == "mini":
            x = _full_chunks_only(x, self.settings[name].r)
        return super().add_delta(result, x, name)


class MiniRemainderColumnsDropped(MutantDriver):
    """MiSS "mini" forward sums only the full r-wide chunks of x (plain mode pads the remainder columns as it must)."""

    layer_mixin = _MiniRemainderColumnsDropped
