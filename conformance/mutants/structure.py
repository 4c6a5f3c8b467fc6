"""Structure mutants (SPEC §1.3, each tuner's LAYER / PARAM / COUNT clauses): injection that copies the base layer,
layer kinds accepted or rejected wrongly, adapter tensors in a non-canonical layout or size, extra trainable tensors.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import nn

import reference_tuners.hra
from reference_tuners.core.kinds import CONV_KINDS, LINEAR_KINDS, features

from .base import MutantDriver

EVERY_KIND = LINEAR_KINDS | CONV_KINDS

# ---- injection and layer kinds: CORE-INJ-1, CORE-INJ-2, BONE-LAYER-1/3, HRA-LAYER-3, IA3-LAYER-1 ----------------


class _WrapsCopyOfBase:
    def __init__(self, base_layer: nn.Module, kind: str) -> None:
        super().__init__(copy.deepcopy(base_layer), kind)


class WrapsCopyOfBase(MutantDriver):
    """The tuner layer wraps a deep copy of the targeted module (equal values, new Parameters), not the module."""

    layer_mixin = _WrapsCopyOfBase


class _UnsupportedKindNotImplemented:
    supported_kinds = EVERY_KIND  # the planner lets every layer kind through; the layer rejects its own

    @classmethod
    def resolve_settings(cls, config: Any, key: str, base_layer: nn.Module, kind: str) -> Any:
        if kind not in super().supported_kinds:
            raise NotImplementedError(f"{type(base_layer).__name__} layers ({key!r}) are not supported")
        return super().resolve_settings(config, key, base_layer, kind)


class UnsupportedKindNotImplemented(MutantDriver):
    """An unsupported layer kind is rejected with NotImplementedError (naming its type), not TypeError/ValueError."""

    layer_mixin = _UnsupportedKindNotImplemented


class _KindCheckedAfterSwap:
    supported_kinds = EVERY_KIND  # the planner lets every layer kind through; add_adapter rejects, too late

    def add_adapter(self, name: str, settings: Any, *, autocast_adapter_dtype: bool = True) -> None:
        if self.kind not in super().supported_kinds:
            raise TypeError(f"{type(self.base_layer).__name__} layers are not supported")
        super().add_adapter(name, settings, autocast_adapter_dtype=autocast_adapter_dtype)


class KindCheckedAfterSwap(MutantDriver):
    """The layer kind is checked when the adapter is added, after the module was swapped for the tuner layer: the
    TypeError is right, but the rejected module stays wrapped."""

    layer_mixin = _KindCheckedAfterSwap


class _ConvolutionsAccepted:
    supported_kinds = EVERY_KIND


class ConvolutionsAccepted(MutantDriver):
    """Bone adapts Conv1d/2d/3d like LoHa, on the flattened (out, C·K) weight, instead of rejecting them."""

    layer_mixin = _ConvolutionsAccepted


class _Conv3dMissing:
    supported_kinds = EVERY_KIND - {"conv3d"}


class Conv3dMissing(MutantDriver):
    """(IA)³'s supported kinds leave out Conv3d: injecting into a Conv3d raises TypeError."""

    layer_mixin = _Conv3dMissing


class _LeadingDimsFlattened:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: Any, **kwargs: Any) -> torch.Tensor:
        return super().adapted_forward(x.reshape(-1, x.shape[-1]), active, *args, **kwargs)


class LeadingDimsFlattened(MutantDriver):
    """Bone's forward flattens x to (tokens, in) and returns (tokens, out): a (batch, seq, in) input loses its shape."""

    layer_mixin = _LeadingDimsFlattened


# ---- parameter layouts and sizes: BONE-PARAM-1/2, MISS-MINI-1, HRA-PARAM-1, IA3-PARAM-1, LOHA-PARAM-1 ----------


@dataclasses.dataclass
class _BlocksAsRead:
    """Bone's blocks as the math reads them: `read(name, stored)`; writes go to the stored container."""

    stored: nn.ParameterDict
    read: Callable[[str, torch.Tensor], torch.Tensor]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.read(name, self.stored[name])

    def __setitem__(self, name: str, value: nn.Parameter) -> None:
        self.stored[name] = value


class _BlockLayout:
    """The block of `mode` is stored as `store(B)` and read back as `load(stored, r)` everywhere the math uses it."""

    mode: ClassVar[str]

    @staticmethod
    def store(block: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @staticmethod
    def load(stored: torch.Tensor, r: int) -> torch.Tensor:
        raise NotImplementedError

    @property
    def blocks(self) -> _BlocksAsRead:
        return _BlocksAsRead(super().blocks, self._read)

    def _read(self, name: str, stored: torch.Tensor) -> torch.Tensor:
        settings = self.settings[name]
        return self.load(stored, settings.r) if settings.mode == self.mode else stored

    def create_adapter(self, name: str, settings: Any, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.mode == self.mode:
            stored = self.blocks.stored
            stored[name] = nn.Parameter(self.store(stored[name].detach()).contiguous())


class _PlainBlockTransposed(_BlockLayout):
    mode = "plain"

    @staticmethod
    def store(block: torch.Tensor) -> torch.Tensor:
        return block.T

    @staticmethod
    def load(stored: torch.Tensor, r: int) -> torch.Tensor:
        return stored.T


class PlainBlockTransposed(MutantDriver):
    """Plain Bone stores bone_block as (out, r), the transpose of (r, out), and transposes it back where it is used."""

    layer_mixin = _PlainBlockTransposed


class _BatBlockInPlainLayout(_BlockLayout):
    mode = "bat"

    @staticmethod
    def store(block: torch.Tensor) -> torch.Tensor:
        return block.reshape(block.shape[1], -1)

    @staticmethod
    def load(stored: torch.Tensor, r: int) -> torch.Tensor:
        return stored.reshape(-1, r, r)


class BatBlockInPlainLayout(MutantDriver):
    """BAT keeps bone_block in the plain (r, out) layout and reshapes it to (out/r, r, r) wherever it is used."""

    layer_mixin = _BatBlockInPlainLayout


class _MiniBlockRandom:
    @classmethod
    def resolve_settings(cls, config: Any, key: str, base_layer: nn.Module, kind: str) -> Any:
        settings = super().resolve_settings(config, key, base_layer, kind)
        return dataclasses.replace(settings, random_init=settings.random_init or settings.mode == "mini")


class MiniBlockRandom(MutantDriver):
    """init_weights="mini" draws miss_block from KU as init_weights=False does, instead of zeros."""

    layer_mixin = _MiniBlockRandom


def _in_features(base: nn.Module, kind: str) -> int:
    return features(base, kind)[0]


class FanInFromInFeatures(MutantDriver):
    """HRA's d is in_features (in_channels for Conv2d) instead of the flattened fan-in C·kh·kw: hra_u is (C, r)."""

    patches = ((reference_tuners.hra, "flat_fan_in", _in_features),)


class _VectorFlat:
    def create_adapter(self, name: str, settings: Any, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        self.ia3_l[name] = nn.Parameter(self.ia3_l[name].detach().reshape(-1))


class VectorFlat(MutantDriver):
    """ia3_l is stored as a 1-D (features,) vector instead of (out, 1), (1, in) or (1, C, 1, …)."""

    layer_mixin = _VectorFlat


_FLAT_A_FACTORS = ("hada_w1_a", "hada_w2_a")


class _FlatAFactorsTransposed:
    def parameter_shapes(self, settings: Any) -> dict[str, tuple[int, ...]]:
        shapes = super().parameter_shapes(settings)
        if not settings.effective:
            shapes.update({name: shapes[name][::-1] for name in _FLAT_A_FACTORS})
        return shapes

    def _params(self, name: str, names: tuple[str, ...]) -> list[torch.Tensor]:
        params = super()._params(name, names)
        if self.settings[name].effective:
            return params
        return [p.T if n in _FLAT_A_FACTORS else p for n, p in zip(names, params, strict=True)]


class FlatAFactorsTransposed(MutantDriver):
    """Flattened LoHa stores hada_w1_a, hada_w2_a as (r, out), the effective mode's layout, not (out, r)."""

    layer_mixin = _FlatAFactorsTransposed


# ---- trainable counts: BONE-COUNT-1, MISS-COUNT-1, GRALORA-COUNT-1, HRA-COUNT-1, IA3-COUNT-1 ---------------------


class _BatIdentityParameter:
    @property
    def adapter_layer_names(self) -> tuple[str, ...]:
        return (*super().adapter_layer_names, "bat_identity")

    def create_adapter(self, name: str, settings: Any, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if settings.mode == "bat":
            device = self.base_layer.weight.device
            self.bat_identity[name] = nn.Parameter(torch.eye(settings.r, dtype=dtype, device=device))


class BatIdentityParameter(MutantDriver):
    """BAT keeps the identity I_r of I + B[p] as an adapter parameter (trainable, r² more) instead of a constant."""

    layer_mixin = _BatIdentityParameter


class _HybridWithBias:
    def create_adapter(self, name: str, settings: Any, dtype: torch.dtype) -> None:
        super().create_adapter(name, settings, dtype)
        if name in self.gralora_A_general:  # nn.Linear(in, h) with its default bias=True
            weight = self.gralora_A_general[name].weight
            layer = nn.Linear(self.in_features, settings.hybrid_r, device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                layer.weight.copy_(weight)
            self.gralora_A_general[name] = layer


class HybridWithBias(MutantDriver):
    """gralora_A_general is an nn.Linear with the default bias=True: h more trainable parameters per layer."""

    layer_mixin = _HybridWithBias


class _VectorSidesSwapped:
    def create_adapter(self, name: str, settings: Any, dtype: torch.dtype) -> None:
        self.in_features, self.out_features = self.out_features, self.in_features
        try:
            super().create_adapter(name, settings, dtype)
        finally:
            self.in_features, self.out_features = self.out_features, self.in_features


class VectorSidesSwapped(MutantDriver):
    """ia3_l is sized by the other side: out for feedforward layers, in otherwise (in/out swapped)."""

    layer_mixin = _VectorSidesSwapped
