"""Mutants of the machinery every tuner shares (SPEC §1): lifecycle, merge bookkeeping, trainability, files."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

import reference_tuners
from reference_tuners.core.config import PeftConfig
from reference_tuners.core.kinds import channel_view

from .base import MutantDriver

_reference_get_peft_model = reference_tuners.get_peft_model


class _FifoUnmerge:
    def unmerge(self) -> None:
        self.merged_adapters.reverse()  # the reference reverts the last entry first: now the first merged goes first
        super().unmerge()


class FifoUnmerge(MutantDriver):
    """unmerge() reverts the merged adapters first-in-first-out instead of last-in-first-out."""

    layer_mixin = _FifoUnmerge


class _SafeMergeChecksAfterWriting:
    def _merge(self, adapter_names: list[str] | None, safe_merge: bool, progressbar: bool = False) -> None:
        super()._merge(adapter_names, False, progressbar)
        if safe_merge and not all(torch.isfinite(layer.base_weight()).all() for _, layer in self.tuner_layers()):
            raise ValueError("NaNs detected in the merged weights")


class SafeMergeChecksAfterWriting(MutantDriver):
    """Safe merge writes the merged weights first and checks them after: it raises, but the damage is done."""

    model_mixin = _SafeMergeChecksAfterWriting


class _SubstringAdapterParameters:
    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        params: dict[str, nn.Parameter] = {}
        for other in self.settings:
            if name in other:  # a substring test where equality belongs: the last such adapter's tensors win
                params.update(super().adapter_parameters(other))
        return params


class SubstringAdapterParameters(MutantDriver):
    """An adapter's parameters are looked up by substring: `default` also picks `other_default`'s tensors."""

    layer_mixin = _SubstringAdapterParameters


class _AutocastIgnored:
    def add_adapter(self, name: str, settings: object, *, autocast_adapter_dtype: bool = True) -> None:
        super().add_adapter(name, settings, autocast_adapter_dtype=False)


class AutocastIgnored(MutantDriver):
    """autocast_adapter_dtype=True is ignored: adapters on float16 / bfloat16 bases stay in half precision."""

    layer_mixin = _AutocastIgnored


class _NewAdapterTrainable:
    def add_adapter(self, name: str, settings: object, *, autocast_adapter_dtype: bool = True) -> None:
        super().add_adapter(name, settings, autocast_adapter_dtype=autocast_adapter_dtype)
        self.set_requires_grad(name, True)


class NewAdapterTrainable(MutantDriver):
    """A new adapter's parameters start trainable, also when add_adapter adds it inactive."""

    layer_mixin = _NewAdapterTrainable


class _UnwrapToOriginal:
    def _unwrap(self) -> nn.Module:
        for _, wrapper in self.wrappers():
            wrapper.disable_adapters = True  # active_module() then returns the original module
        return super()._unwrap()


class UnwrapToOriginal(MutantDriver):
    """merge_and_unload / unload put back the original modules_to_save module, not the active adapter's copy."""

    model_mixin = _UnwrapToOriginal


class _UnloadKeepsMerged:
    def unload(self) -> nn.Module:
        return self._unwrap()


class UnloadKeepsMerged(MutantDriver):
    """unload() returns the base layers without unmerging merged adapters first."""

    model_mixin = _UnloadKeepsMerged


class _DisableKeepsMerged:
    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        if self.disable_adapters:
            return self.base_layer(x, *args, **kwargs)  # merged weights are used as they are
        return super().forward(x, *args, **kwargs)


class DisableKeepsMerged(MutantDriver):
    """Inside disable_adapter() a merged layer computes with its merged weights instead of the base weights."""

    layer_mixin = _DisableKeepsMerged


class _MergeNoneMergesAll:
    def _merge(self, adapter_names: list[str] | None, safe_merge: bool, progressbar: bool = False) -> None:
        return super()._merge(
            list(self.peft_config) if adapter_names is None else adapter_names, safe_merge, progressbar
        )


class MergeNoneMergesAll(MutantDriver):
    """merge_adapter(adapter_names=None) merges every adapter, not only the active ones."""

    model_mixin = _MergeNoneMergesAll


class _SavedConfigTrainable:
    def _saved_config(self, name: str) -> PeftConfig:
        config = super()._saved_config(name)
        config.inference_mode = self.peft_config[name].inference_mode
        return config


class SavedConfigTrainable(MutantDriver):
    """adapter_config.json keeps the live inference_mode (false when training) instead of writing true."""

    wrapper_mixin = _SavedConfigTrainable


class _ConvDilationIgnored:
    def op(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        base = self.base_layer
        if not isinstance(base, nn.Conv2d) or base.padding_mode != "zeros":
            return super().op(x, weight, bias)
        return F.conv2d(x, weight, bias, base.stride, base.padding, 1, base.groups)  # dilation left at 1


class ConvDilationIgnored(MutantDriver):
    """The adapted Conv2d forward uses the base layer's stride, padding and groups but dilation 1."""

    layer_mixin = _ConvDilationIgnored


class _AdapterNameInSavedKeys:
    def adapter_parameters(self, name: str) -> dict[str, nn.Parameter]:
        return {f"{key}.{name}": p for key, p in super().adapter_parameters(name).items()}


class AdapterNameInSavedKeys(MutantDriver):
    """Saved keys keep the in-memory adapter suffix: `<key>.<param>.<adapter>` instead of `<key>.<param>`."""

    layer_mixin = _AdapterNameInSavedKeys


class _MergeReplacesParameter:
    def _write_base(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super()._write_base(weight, bias)
        old = self.base_layer.weight
        self.base_layer.weight = nn.Parameter(old.detach().clone(), requires_grad=old.requires_grad)


class MergeReplacesParameter(MutantDriver):
    """Merge and unmerge register a new weight Parameter instead of updating the existing one in place."""

    layer_mixin = _MergeReplacesParameter


class _MergedListNewestFirst:
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        before = list(self.merged_adapters)
        super().merge(safe_merge, adapter_names)
        self.merged_adapters[:] = [*reversed(self.merged_adapters[len(before) :]), *before]


class MergedListNewestFirst(MutantDriver):
    """merged_adapters records the newest merge first (so unmerge, popping the last entry, goes oldest first)."""

    layer_mixin = _MergedListNewestFirst


class _MergeOrderReversed:
    def _merge(self, adapter_names: list[str] | None, safe_merge: bool, progressbar: bool = False) -> None:
        if isinstance(adapter_names, str):
            return super()._merge(adapter_names, safe_merge, progressbar)
        names = self.active_adapters if adapter_names is None else adapter_names
        return super()._merge(list(reversed(names)), safe_merge, progressbar)


class MergeOrderReversed(MutantDriver):
    """merge_adapter merges the adapters in reverse list order (a_k first)."""

    model_mixin = _MergeOrderReversed


class _BiasOnlyTrainsAll:
    def bias_parameters(self, name: str) -> dict[str, nn.Parameter]:
        if getattr(self.peft_config[name], "bias", "none").endswith("_only"):
            return dict(self._base_biases())
        return super().bias_parameters(name)


class BiasOnlyTrainsAll(MutantDriver):
    """bias="<tuner>_only" trains every bias of the model, as "all" does."""

    model_mixin = _BiasOnlyTrainsAll


class _DisableWithoutBiasWarning:
    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        context = super().disable_adapter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            context.__enter__()
        try:
            yield
        finally:
            context.__exit__(None, None, None)


class DisableWithoutBiasWarning(MutantDriver):
    """disable_adapter() does not warn that trained biases (bias != "none") stay in effect."""

    model_mixin = _DisableWithoutBiasWarning


class _DisableNotRestoredOnError:
    @contextmanager
    def disable_adapter(self) -> Iterator[None]:
        self._set_disabled(True)
        yield
        self._set_disabled(False)  # not in a `finally`: an exception leaves the adapters disabled


class DisableNotRestoredOnError(MutantDriver):
    """Leaving disable_adapter() by an exception leaves the adapters disabled."""

    model_mixin = _DisableNotRestoredOnError


class _DeleteUnknownSilently:
    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.peft_config:
            super().delete_adapter(adapter_name)


class DeleteUnknownSilently(MutantDriver):
    """delete_adapter of an unknown name does nothing instead of raising ValueError."""

    model_mixin = _DeleteUnknownSilently


class _DeletingLastActiveLeavesNone:
    def delete_adapter(self, adapter_name: str) -> None:
        only_active = self.active_adapters == [adapter_name]
        super().delete_adapter(adapter_name)
        if only_active:
            self._activate([])


class DeletingLastActiveLeavesNone(MutantDriver):
    """Deleting the only active adapter leaves the active list empty while other adapters remain."""

    model_mixin = _DeletingLastActiveLeavesNone


class _SetAdapterSortsNames:
    def set_adapter(self, adapter_names: str | list[str]) -> None:
        super().set_adapter(adapter_names if isinstance(adapter_names, str) else sorted(adapter_names))


class SetAdapterSortsNames(MutantDriver):
    """set_adapter(list) stores the names sorted instead of in the order given."""

    model_mixin = _SetAdapterSortsNames


class _SetAdapterKeepsMerged:
    def set_adapter(self, adapter_names: str | list[str]) -> None:
        if not any(layer.merged for _, layer in self.tuner_layers()):
            return super().set_adapter(adapter_names)
        return self._activate([adapter_names] if isinstance(adapter_names, str) else list(adapter_names))


class SetAdapterKeepsMerged(MutantDriver):
    """set_adapter on a merged model changes the active list without unmerging first."""

    model_mixin = _SetAdapterKeepsMerged


class _InferenceModeIgnored:
    def _trainable(self, name: str) -> bool:
        return name in self.active_adapters


class InferenceModeIgnored(MutantDriver):
    """inference_mode=True (and loading with is_trainable=False) leaves the active adapter trainable."""

    model_mixin = _InferenceModeIgnored


class _SetAdapterKeepsOldTrainable:
    def set_adapter(self, adapter_names: str | list[str]) -> None:
        trainable = [p for p in self.parameters() if p.requires_grad]
        super().set_adapter(adapter_names)
        for param in trainable:
            param.requires_grad_(True)


class SetAdapterKeepsOldTrainable(MutantDriver):
    """set_adapter makes the new active adapters trainable but never freezes the previously active ones."""

    model_mixin = _SetAdapterKeepsOldTrainable


class _OutputInAdapterDtype:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        return super().adapted_forward(x, active, *args, **kwargs).to(self.adapter_dtype(active[0]))


class OutputInAdapterDtype(MutantDriver):
    """The adapted output is returned in the adapter dtype (float32 for a half-precision base), not x's dtype."""

    layer_mixin = _OutputInAdapterDtype


class _ActiveOrderReversed:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        return super().adapted_forward(x, active[::-1], *args, **kwargs)


class ActiveOrderReversed(MutantDriver):
    """The active adapters are applied in reverse active-list order (HRA: R_tot = R_{ak} ⋯ R_{a1})."""

    layer_mixin = _ActiveOrderReversed


class _OnlyFirstActiveAdapter:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        return super().adapted_forward(x, active[:1], *args, **kwargs)


class OnlyFirstActiveAdapter(MutantDriver):
    """Forward applies only the first active adapter (an `active_adapter` read where the list belongs)."""

    layer_mixin = _OnlyFirstActiveAdapter


class _NoActiveFallsBackToAll:
    def applicable(self, names: Iterable[str]) -> list[str]:
        return super().applicable(names) or list(self.settings)


class NoActiveFallsBackToAll(MutantDriver):
    """A layer none of whose active adapters is injected there applies all of its adapters instead of none."""

    layer_mixin = _NoActiveFallsBackToAll


class _LoadAdapterActivates:
    def load_adapter(self, model_id: str, adapter_name: str, *args: object, **kwargs: object) -> None:
        super().load_adapter(model_id, adapter_name, *args, **kwargs)
        self.base_model.set_adapter(adapter_name)


class LoadAdapterActivates(MutantDriver):
    """load_adapter makes the loaded adapter the active one."""

    wrapper_mixin = _LoadAdapterActivates


class _DeleteLeavesSubModules:
    def delete_adapter(self, name: str) -> None:
        kept = {n: getattr(self, n)[name] for n in self.adapter_module_names if name in getattr(self, n)}
        super().delete_adapter(name)
        for container, module in kept.items():
            getattr(self, container)[name] = module


class DeleteLeavesSubModules(MutantDriver):
    """delete_adapter removes the adapter's tensors but not its sub-modules (GraLoRA's hybrid layers)."""

    layer_mixin = _DeleteLeavesSubModules


class _InputScaledInPlace:
    def adapted_forward(self, x: torch.Tensor, active: list[str], *args: object, **kwargs: object) -> torch.Tensor:
        result = super().adapted_forward(x, active, *args, **kwargs)
        feedforward = [n for n in active if self.settings[n].feedforward]
        if feedforward:
            with torch.no_grad():
                x.mul_(channel_view(self._product(feedforward), self.kind).to(x.dtype))  # l ⊙ x written into x
        return result


class InputScaledInPlace(MutantDriver):
    """(IA)³ feedforward forward scales the caller's x in place (x.mul_(l)) instead of a copy."""

    layer_mixin = _InputScaledInPlace


class _InFeaturesPerGroup:
    def __init__(self, base_layer: nn.Module, kind: str) -> None:
        super().__init__(base_layer, kind)
        self.in_features //= getattr(base_layer, "groups", 1)


class InFeaturesPerGroup(MutantDriver):
    """A grouped convolution's layer reports in_features = in_channels / groups instead of in_channels."""

    layer_mixin = _InFeaturesPerGroup


def _get_peft_model_default_adapter(
    model: nn.Module, config: PeftConfig, adapter_name: str = "adapter", **kw: object
) -> nn.Module:
    return _reference_get_peft_model(model, config, adapter_name, **kw)


class DefaultAdapterNamedAdapter(MutantDriver):
    """get_peft_model names the adapter "adapter" when no name is given, not "default"."""

    patches = ((reference_tuners, "get_peft_model", _get_peft_model_default_adapter),)


class _MergedLayerAppliesUnmerged:
    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        pending = [n for n in self.applicable(self.active_adapters) if n not in self.merged_adapters]
        if self.disable_adapters or not self.merged or not pending:
            return super().forward(x, *args, **kwargs)
        return self.adapted_forward(x, pending, *args, **kwargs)  # on top of the merged weights


class MergedLayerAppliesUnmerged(MutantDriver):
    """A merged layer still applies its active adapters that are not merged: op(x; W_merged + ΔW_unmerged, b)."""

    layer_mixin = _MergedLayerAppliesUnmerged


class _SafeMergeRoundsDeltaFirst:
    def check_safe_merge(self, name: str) -> None:
        weight = self.base_weight()
        candidate = weight + self.delta_weight(name).to(weight.dtype)  # ΔW rounded to the base dtype, then the sum
        self._check_finite(name, candidate, None)
        self.checked_candidate = (name, candidate)

    def merged_tensors(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        checked, self.checked_candidate = getattr(self, "checked_candidate", None), None
        if checked is not None and checked[0] == name:
            return checked[1], None  # the checked candidate is written as it is
        return super().merged_tensors(name)


class SafeMergeRoundsDeltaFirst(MutantDriver):
    """A safe merge writes the candidate it checked, W + round(ΔW) (two roundings), where the unsafe merge writes
    round(W + ΔW) (one rounding, in the adapter dtype)."""

    layer_mixin = _SafeMergeRoundsDeltaFirst


class _BaseWeightFollowsAdapterFlag:
    def set_requires_grad(self, name: str, flag: bool) -> None:
        super().set_requires_grad(name, flag)
        self.base_layer.weight.requires_grad_(flag)  # the base weight is switched together with the adapter


class BaseWeightFollowsAdapterFlag(MutantDriver):
    """Making an adapter trainable also sets requires_grad on the base weight: backward accumulates W.grad."""

    layer_mixin = _BaseWeightFollowsAdapterFlag


class _AdaptersInPlainDict:
    def __init__(self, base_layer: nn.Module, kind: str) -> None:
        super().__init__(base_layer, kind)
        for container in self.adapter_layer_names:
            delattr(self, container)
            setattr(self, container, {})  # a plain dict: nn.Module neither registers nor moves what it holds


class AdaptersInPlainDict(MutantDriver):
    """The adapter tensors live in a plain dict, not an nn.ParameterDict: model.to(dtype) does not cast them."""

    layer_mixin = _AdaptersInPlainDict
