"""Config mutants (SPEC §1.2 and each tuner's CFG clauses): the driver builds its configs from a subclass of the
reference config class with one validation or default bug (`config_classes`); saved configs load as the reference's.
A rule checked at injection is broken in a layer mixin's `resolve_settings`, a shared validation helper by a patch
(`HelperBug`).

A config subclass is made with an empty `PEFT_TYPE` (the reference registry of config classes only records classes
created with one) and given its tuner's type afterwards."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any, ClassVar

from torch import nn

import reference_tuners as rt
import reference_tuners.bone as reference_bone
import reference_tuners.gralora as reference_gralora
import reference_tuners.loha as reference_loha
from reference_tuners.core.config import PeftConfig, check_layer_filters, check_positive
from reference_tuners.core.defaults import IA3_TARGETS
from reference_tuners.core.kinds import flat_fan_in
from reference_tuners.loha import pattern_key

from ..drivers.reference import ReferenceDriver
from .base import MutantDriver, patched


def config_variant(name: str, *bases: type, **namespace: Any) -> type:
    """A dataclass subclass `name` of the config classes `bases` with `namespace`'s overrides, of the first base's
    peft_type, bound to `name` in this module (pickle finds it there)."""
    annotations = dict(namespace.pop("__annotations__", {}))
    cls = dataclasses.dataclass(type(name, bases, {"PEFT_TYPE": "", "__annotations__": annotations, **namespace}))
    cls.PEFT_TYPE = bases[0].PEFT_TYPE
    globals()[name] = cls
    return cls


def _configs(tuner: str, cls: type) -> dict[str, type]:
    return {**ReferenceDriver.config_classes, tuner: cls}


class BoneAcceptsMini(MutantDriver):
    """BoneConfig accepts init_weights="mini" (MiSS's variant list shared with Bone)."""

    config_classes = _configs("bone", config_variant("BoneConfigWithMini", rt.BoneConfig, VARIANTS=("bat", "mini")))


def _keep_lists(self: PeftConfig) -> None:
    given = {name: getattr(self, name, None) for name in self.SET_FIELDS}
    super(type(self), self).__post_init__()
    for name, value in given.items():
        if isinstance(value, list):
            setattr(self, name, value)


class ListFieldsKeptAsLists(MutantDriver):
    """target_modules / exclude_modules given as lists are stored as lists, not sets."""

    config_classes = _configs(
        "gralora", config_variant("GraLoRAConfigWithLists", rt.GraLoRAConfig, __post_init__=_keep_lists)
    )


def _no_layer_filter_checks(self: PeftConfig) -> None:
    PeftConfig.__post_init__(self)
    check_positive("r", self.r)


class HraLayerFiltersUnchecked(MutantDriver):
    """HRAConfig skips its layer-filter checks: layers_pattern without layers_to_transform (and a string
    target_modules with layers_to_transform) are accepted."""

    config_classes = _configs(
        "hra", config_variant("HRAConfigWithoutLayerChecks", rt.HRAConfig, __post_init__=_no_layer_filter_checks)
    )


class LohaAlphaDefault16(MutantDriver):
    """LoHaConfig's alpha defaults to 16 instead of 8."""

    config_classes = _configs(
        "loha", config_variant("LoHaConfigAlpha16", rt.LoHaConfig, __annotations__={"alpha": float}, alpha=16)
    )


class Ia3FeedforwardSubsetUnchecked(MutantDriver):
    """IA3Config accepts feedforward_modules that are not a subset of target_modules."""

    config_classes = _configs(
        "ia3", config_variant("IA3ConfigWithoutSubsetCheck", rt.IA3Config, __post_init__=PeftConfig.__post_init__)
    )


def _any_task_type(self: PeftConfig) -> None:
    task_type, self.task_type = self.task_type, None
    super(type(self), self).__post_init__()
    self.task_type = task_type


class TaskTypeUnchecked(MutantDriver):
    """LoHaConfig accepts any task_type string."""

    config_classes = _configs(
        "loha", config_variant("LoHaConfigAnyTaskType", rt.LoHaConfig, __post_init__=_any_task_type)
    )


class HraApplyGsDefaultTrue(MutantDriver):
    """HRAConfig's apply_GS defaults to True instead of False."""

    config_classes = _configs(
        "hra",
        config_variant("HRAConfigGramSchmidtDefault", rt.HRAConfig, __annotations__={"apply_GS": bool}, apply_GS=True),
    )


# ---- base fields, JSON form, tables, and the rules checked at injection ------------------------------------------


class HelperBug(MutantDriver):
    """A mutant whose bug is in a validation helper that construction and injection share: its `patches` are also in
    place while the driver builds configs (`make_config`, `config_from_dict`)."""

    def make_config(self, tuner: str, config: dict) -> object:
        with patched(self.patches):
            return super().make_config(tuner, config)

    def config_from_dict(self, tuner: str, d: dict) -> object:
        with patched(self.patches):
            return super().config_from_dict(tuner, d)


class RevisionDefaultMain(MutantDriver):
    """GraLoRAConfig's base field `revision` defaults to "main" (the hub's default branch) instead of None."""

    config_classes = _configs(
        "gralora",
        config_variant(
            "GraLoRAConfigRevisionMain", rt.GraLoRAConfig, __annotations__={"revision": str}, revision="main"
        ),
    )


def _probability_not_above_one(name: str, value: float) -> None:
    """`check_probability` testing only `p < 0`."""
    if value < 0.0:
        raise ValueError(f"`{name}` must be a probability in [0, 1], got {value!r}")


class ProbabilityAboveOneAccepted(HelperBug):
    """The probability check tests only `p < 0`: a dropout probability above 1 is accepted."""

    patches = tuple(
        (module, "check_probability", _probability_not_above_one)
        for module in (reference_bone, reference_gralora, reference_loha)
    )


def _layer_filters_as_bone(config: PeftConfig, *, pattern_needs_layers: bool) -> None:
    """`check_layer_filters` called as Bone calls it, whatever the tuner asks for."""
    check_layer_filters(config, pattern_needs_layers=False)


class LohaPatternWithoutLayers(HelperBug):
    """LoHaConfig checks its layer filters as Bone does: layers_pattern without layers_to_transform is accepted."""

    patches = ((reference_loha, "check_layer_filters", _layer_filters_as_bone),)


def _from_dict_without(key: str) -> classmethod:
    """`from_dict` that drops `key` from the JSON before reading it."""

    def from_dict(cls: type, data: dict) -> PeftConfig:
        return PeftConfig.from_dict.__func__(cls, {k: v for k, v in data.items() if k != key})

    return classmethod(from_dict)


class LoadedVersionRestamped(MutantDriver):
    """HRAConfig.from_dict drops the file's peft_version: a loaded config is stamped with the running version."""

    config_classes = _configs(
        "hra", config_variant("HRAConfigRestamped", rt.HRAConfig, from_dict=_from_dict_without("peft_version"))
    )


class PeftTypeIgnoredOnLoad(MutantDriver):
    """IA3Config.from_dict ignores the JSON peft_type: a config of an unknown peft_type loads as an (IA)³ config."""

    config_classes = _configs(
        "ia3", config_variant("IA3ConfigAnyPeftType", rt.IA3Config, from_dict=_from_dict_without("peft_type"))
    )


class BoneRDefault8(MutantDriver):
    """BoneConfig's r defaults to 8 (LoRA's default) instead of 64."""

    config_classes = _configs("bone", config_variant("BoneConfigR8", rt.BoneConfig, __annotations__={"r": int}, r=8))


def _pending_deprecation(self: PeftConfig) -> None:
    """BoneConfig's construction with its warning in another category."""
    super(rt.BoneConfig, self).__post_init__()
    warnings.warn(
        "Bone is deprecated and superseded by MiSS; convert Bone checkpoints to MiSS.",
        PendingDeprecationWarning,
        stacklevel=3,
    )


class BoneDeprecationPending(MutantDriver):
    """BoneConfig announces its deprecation as a PendingDeprecationWarning (no deprecation category of SPEC §0.1)."""

    config_classes = _configs(
        "bone", config_variant("BoneConfigPending", rt.BoneConfig, __post_init__=_pending_deprecation)
    )


class MissWarnsLikeBone(MutantDriver):
    """MissConfig derives from BoneConfig and inherits its deprecation warning."""

    config_classes = _configs("miss", config_variant("MissConfigFromBone", rt.MissConfig, rt.BoneConfig))


class _RankBoundedByFanIn:
    """Rejects `r > in_features` (Bone's bound; `strict`: `r ≥ in_features`) before the reference's own checks."""

    strict: ClassVar[bool] = False

    @classmethod
    def resolve_settings(cls, config: PeftConfig, key: str, base_layer: nn.Module, kind: str) -> Any:
        fan_in = flat_fan_in(base_layer, kind)
        if config.r > fan_in or (cls.strict and config.r == fan_in):
            raise ValueError(f"`r` ({config.r}) must not exceed in_features ({fan_in}) of {key!r}.")
        return super().resolve_settings(config, key, base_layer, kind)


class _RankBelowFanIn(_RankBoundedByFanIn):
    strict = True


class RankBoundedByInFeatures(MutantDriver):
    """r is bounded by in_features (Bone's rule), where SPEC lets GraLoRA's r exceed in/k and HRA's r exceed d."""

    layer_mixin = _RankBoundedByFanIn


class BlockRankBelowInFeatures(MutantDriver):
    """Bone's bound `r ≤ in_features` is checked as `r < in_features`: r = in_features is rejected."""

    layer_mixin = _RankBelowFanIn


class _MiniOutUnchecked:
    """The reference's checks run with `mini_r = 1`; the layer then gets the configured `mini_r`."""

    @classmethod
    def resolve_settings(cls, config: PeftConfig, key: str, base_layer: nn.Module, kind: str) -> Any:
        settings = super().resolve_settings(dataclasses.replace(config, mini_r=1), key, base_layer, kind)
        return dataclasses.replace(settings, mini_r=config.mini_r)


class MiniOutNotDivisible(MutantDriver):
    """MiSS's mini variant never checks out_features % mini_r (the tiled block is cut to fit)."""

    layer_mixin = _MiniOutUnchecked


class GraloraValidatedAtInjection(MutantDriver):
    """GraLoRAConfig validates only at injection: gralora_k ≤ 0 and r % gralora_k ≠ 0 pass construction."""

    config_classes = _configs(
        "gralora",
        config_variant("GraLoRAConfigUnvalidated", rt.GraLoRAConfig, __post_init__=PeftConfig.__post_init__),
    )


class Ia3HasBias(MutantDriver):
    """IA3Config has a LoRA-style `bias` field ("none"), which (IA)³'s table does not have."""

    config_classes = _configs(
        "ia3", config_variant("IA3ConfigWithBias", rt.IA3Config, __annotations__={"bias": str}, bias="none")
    )


def _feedforward_none_as_empty(self: PeftConfig, model_type: str | None) -> None:
    """`resolve_defaults`, a None feedforward_modules taken as none where table 1.4(b) has no row."""
    if self.feedforward_modules is None and model_type not in IA3_TARGETS:
        self.feedforward_modules = set()
    super(type(self), self).resolve_defaults(model_type)


class Ia3UnknownFeedforwardAsNone(MutantDriver):
    """IA3Config takes feedforward_modules=None as none on a model type without defaults, instead of rejecting it."""

    config_classes = _configs(
        "ia3",
        config_variant("IA3ConfigFeedforwardEmpty", rt.IA3Config, resolve_defaults=_feedforward_none_as_empty),
    )


class _PatternRankAfterCheck:
    """The reference's checks run without rank_pattern; the matching pattern's r replaces the checked one after."""

    @classmethod
    def resolve_settings(cls, config: PeftConfig, key: str, base_layer: nn.Module, kind: str) -> Any:
        settings = super().resolve_settings(dataclasses.replace(config, rank_pattern={}), key, base_layer, kind)
        rank_key = pattern_key(config.rank_pattern, key)
        return settings if rank_key is None else dataclasses.replace(settings, r=config.rank_pattern[rank_key])


class LohaPatternRankUnchecked(MutantDriver):
    """LoHa checks `r > 0` before applying rank_pattern: a pattern's r ≤ 0 is never rejected."""

    layer_mixin = _PatternRankAfterCheck
