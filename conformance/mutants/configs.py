"""Config mutants (SPEC §1.2 and each tuner's CFG clauses): the driver builds its configs from a subclass of the
reference config class with one validation or default bug (`config_classes`); saved configs load as the reference's.

A config subclass is made with an empty `PEFT_TYPE` (the reference registry of config classes only records classes
created with one) and given its tuner's type afterwards."""

from __future__ import annotations

import dataclasses
from typing import Any

import reference_tuners as rt
from reference_tuners.core.config import PeftConfig, check_positive

from ..drivers.reference import ReferenceDriver
from .base import MutantDriver


def config_variant(name: str, base: type, **namespace: Any) -> type:
    """A dataclass subclass `name` of the config class `base` with `namespace`'s overrides, of `base`'s peft_type,
    bound to `name` in this module (pickle finds it there)."""
    annotations = dict(namespace.pop("__annotations__", {}))
    cls = dataclasses.dataclass(type(name, (base,), {"PEFT_TYPE": "", "__annotations__": annotations, **namespace}))
    cls.PEFT_TYPE = base.PEFT_TYPE
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
