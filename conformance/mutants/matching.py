"""Targeting mutants (SPEC §1.3, §1.4): one targeting rule (of `reference_tuners.core.matching`, "all-linear" or the
default targets) replaced by a plausible misreading, for the duration of the driver calls that inject adapters."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable

from reference_tuners.core import kinds, matching, tuner_model
from reference_tuners.core.config import PeftConfig

from .base import MutantDriver

_reference_matches = matching.matches
_reference_is_targeted = matching.is_targeted
_reference_layer_index = matching.layer_index


def _prefix_match(rule: str | Iterable[str], key: str) -> bool:
    if isinstance(rule, str):
        return re.match(rule, key) is not None
    return _reference_matches(rule, key)


class StringTargetPrefixMatch(MutantDriver):
    """A string target_modules is tested with re.match (a prefix of the key) instead of re.fullmatch."""

    patches = ((matching, "matches", _prefix_match),)


def _suffix_match(rule: str | Iterable[str], key: str) -> bool:
    if isinstance(rule, str):
        return _reference_matches(rule, key)
    return any(key.endswith(entry) for entry in rule)


class ListTargetWithoutDotBoundary(MutantDriver):
    """A list entry matches any key ending with it: "proj" also targets "q_proj" (no dot boundary)."""

    patches = ((matching, "matches", _suffix_match),)


def _substring_in_modules_to_save(key: str, modules_to_save: Iterable[str] | None) -> bool:
    return any(m in key for m in modules_to_save or ())


class ModulesToSaveBySubstring(MutantDriver):
    """A module is spared from targeting when a modules_to_save entry is a substring of its key, not whole segments."""

    patches = ((matching, "in_modules_to_save", _substring_in_modules_to_save),)


def _first_digit_segment(key: str, layers_pattern: str | list[str] | None) -> int | None:
    if layers_pattern is not None:
        return _reference_layer_index(key, layers_pattern)
    return next((int(seg) for seg in key.split(".") if seg.isdecimal()), None)


class LayerIndexAnySegment(MutantDriver):
    """Without layers_pattern the layer index is the first all-digit segment anywhere in the key (first or last too)."""

    patches = ((matching, "layer_index", _first_digit_segment),)


def _exclude_by_substring(config: object, key: str) -> bool:
    exclude = getattr(config, "exclude_modules", None)
    if exclude and not isinstance(exclude, str) and any(entry in key for entry in exclude):
        return False
    return _reference_is_targeted(config, key)


class ExcludeBySubstring(MutantDriver):
    """A list exclude_modules excludes every key containing an entry as a substring (not exact / dot-suffix)."""

    patches = ((tuner_model, "is_targeted", _exclude_by_substring),)


def _layer_filter_on_exact_keys(config: object, key: str) -> bool:
    layers, target = getattr(config, "layers_to_transform", None), config.target_modules
    if isinstance(target, str) or key not in target or layers in (None, []):
        return _reference_is_targeted(config, key)
    index = matching.layer_index(key, getattr(config, "layers_pattern", None))
    in_layers = index is not None and (index == layers if isinstance(layers, int) else index in layers)
    return in_layers and _reference_is_targeted(config, key)


class LayerFilterOnExactKeys(MutantDriver):
    """layers_to_transform also filters modules named exactly by a list entry (they must be kept, CORE-MATCH-6)."""

    patches = ((tuner_model, "is_targeted", _layer_filter_on_exact_keys),)


class SeqClsHeadByClassifierName(MutantDriver):
    """With task_type SEQ_CLS, "all-linear" spares only a head named `classifier`, so Llama's `score` is adapted."""

    patches = ((tuner_model, "SEQ_CLS_HEADS", ("classifier",)),)


class _UnsupportedDefaultsSkipped:
    def _resolve_targets(self, config: PeftConfig) -> tuple[PeftConfig, set[str] | None]:
        if config.target_modules is not None:
            return super()._resolve_targets(config)
        config, _ = super()._resolve_targets(config)
        supported = self.tuner.layer_cls.supported_kinds
        keys = {key for key, module in tuner_model.walk(self.model) if kinds.layer_kind(module) in supported}
        return config, keys  # the default's selection, narrowed to the modules the tuner can adapt


class UnsupportedDefaultsSkipped(MutantDriver):
    """target_modules=None silently skips the default row's modules of a kind the tuner does not support."""

    model_mixin = _UnsupportedDefaultsSkipped


class _AllLinearCaseSensitive:
    def _resolve_targets(self, config: PeftConfig) -> tuple[PeftConfig, set[str] | None]:
        target = config.target_modules
        if isinstance(target, str) and target != matching.ALL_LINEAR:
            return copy.deepcopy(config), None  # "ALL-LINEAR" stays a regex, which matches no key
        return super()._resolve_targets(config)


class AllLinearCaseSensitive(MutantDriver):
    """Only the exact spelling "all-linear" selects every linear layer: "ALL-LINEAR" is read as a regex."""

    model_mixin = _AllLinearCaseSensitive
