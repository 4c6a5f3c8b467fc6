"""Which modules an adapter targets (SPEC §1.3)."""

from __future__ import annotations

import re
from collections.abc import Iterable

ALL_LINEAR = "all-linear"
SEQ_CLS_HEADS = ("classifier", "score")
_ALL_DIGITS = re.compile(r"[0-9]+")  # ASCII only: str.isdigit() also accepts "²", which int() rejects


def matches(rule: str | Iterable[str], key: str) -> bool:
    """CORE-MATCH-1/2: a string is a full regex match; a collection matches exactly or at a dot boundary."""
    if isinstance(rule, str):
        return re.fullmatch(rule, key) is not None
    return any(key == entry or key.endswith("." + entry) for entry in rule)


def in_modules_to_save(key: str, modules_to_save: Iterable[str] | None) -> bool:
    """CORE-MATCH-4: `m` occurs in `key` as whole segments."""
    padded = f".{key}."
    return any(f".{m}." in padded for m in modules_to_save or ())


def layer_index(key: str, layers_pattern: str | list[str] | None) -> int | None:
    """CORE-MATCH-7: the layer index of `key`, or None."""
    segments = key.split(".")
    if layers_pattern is None:
        for i, seg in enumerate(segments):
            if _ALL_DIGITS.fullmatch(seg) and i >= 2 and i < len(segments) - 1:
                return int(seg)
        return None
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern)
    for pattern in patterns:
        for i, seg in enumerate(segments[:-2]):
            if re.fullmatch(pattern, seg):
                if _ALL_DIGITS.fullmatch(segments[i + 1]):
                    return int(segments[i + 1])
                break  # the first segment matching this pattern has no index: try the next pattern
    return None


def is_targeted(config, key: str) -> bool:
    """Whether `config` (with resolved `target_modules`) adapts the module at `key`."""
    if in_modules_to_save(key, config.modules_to_save):
        return False
    exclude = getattr(config, "exclude_modules", None)
    if exclude and matches(exclude, key):
        return False
    target = config.target_modules
    if isinstance(target, str):
        return matches(target, key)
    if key in target:
        return True  # exact matches are never filtered by layer (CORE-MATCH-6)
    if not matches(target, key):
        return False
    layers = getattr(config, "layers_to_transform", None)
    if layers is None or layers == []:
        return True
    index = layer_index(key, getattr(config, "layers_pattern", None))
    if index is None:
        return False
    return index == layers if isinstance(layers, int) else index in layers
