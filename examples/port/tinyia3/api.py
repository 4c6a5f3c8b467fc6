"""tinyia3's public functions: a config, `adapt` (inject a named adapter), `merge`, `unmerge`, `merge_and_unload`.

tinyia3 has no default target tables, exclusions, `modules_to_save`, adapter management beyond `adapt`, or
files: a model is adapted, trained, merged or unmerged, and unloaded merged.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from torch import nn

from .layer import ScaledLayer


@dataclass
class IA3Config:
    """The fields of SPEC §5.1 tinyia3 implements. A list entry of `target_modules` / `feedforward_modules` names a
    module or a dot-suffix of its path; a string is a regular expression over the whole path."""

    target_modules: list[str] | str | None = None
    feedforward_modules: list[str] | str | None = None
    fan_in_fan_out: bool = False
    init_ia3_weights: bool = True


def matches(pattern: list[str] | set[str] | str, key: str) -> bool:
    """CORE-MATCH-1/2 (and IA3-CFG-4 for `feedforward_modules`)."""
    if isinstance(pattern, str):
        return re.fullmatch(pattern, key) is not None
    return any(key == entry or key.endswith("." + entry) for entry in pattern)


def scaled_layers(model: nn.Module) -> Iterator[tuple[str, ScaledLayer]]:
    """Every adapted module of `model` with its path."""
    return ((key, module) for key, module in model.named_modules() if isinstance(module, ScaledLayer))


def _candidates(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Modules that may be targeted: every named module except the model itself and the insides of a ScaledLayer."""
    inside = [key + "." for key, _ in scaled_layers(model)]
    return ((k, m) for k, m in model.named_modules() if k and not any(k.startswith(w) for w in inside))


def adapt(
    model: nn.Module, config: IA3Config, name: str = "default", *, autocast_adapter_dtype: bool = True
) -> nn.Module:
    """Give every module `config.target_modules` names the adapter `name` (a ScaledLayer wraps it, or the one already
    there receives it) and make it the only active adapter there; every other parameter of `model` is frozen. In
    place; returns `model`."""
    if config.target_modules is None:
        raise ValueError("tinyia3 has no default target_modules: name the modules to adapt")
    targets = [(k, m) for k, m in _candidates(model) if matches(config.target_modules, k)]
    if not targets:
        raise ValueError(f"target_modules {config.target_modules!r} matched no module of the model")
    layers = [(key, m if isinstance(m, ScaledLayer) else ScaledLayer(m)) for key, m in targets]
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    feedforward = config.feedforward_modules or []
    for key, layer in layers:
        if config.fan_in_fan_out != layer.transposed:
            warnings.warn(
                f"fan_in_fan_out={config.fan_in_fan_out} does not fit the {type(layer.base_layer).__name__} at {key}: "
                f"using {layer.transposed}",
                stacklevel=2,
            )
        layer.add(
            name, bool(feedforward) and matches(feedforward, key), config.init_ia3_weights, autocast_adapter_dtype
        )
        layer.active_adapters = [name]
        model.set_submodule(key, layer)
    return model


def merge(model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> None:
    """Fold adapters into the base weights of every adapted module: `adapters` in that order, else the active ones
    (CORE-MERGE-1, CORE-MERGE-11)."""
    if isinstance(adapters, str):
        raise TypeError(f"adapters must be a list of adapter names, not the string {adapters!r}")
    for _, layer in scaled_layers(model):
        layer.merge(layer.active_adapters if adapters is None else adapters, safe=safe)


def unmerge(model: nn.Module) -> None:
    """Revert every merged adapter, last in first out (approximate for IA3: see `ScaledLayer.unmerge`)."""
    for _, layer in scaled_layers(model):
        layer.unmerge()


def merge_and_unload(model: nn.Module, adapters: list[str] | None = None, safe: bool = False) -> nn.Module:
    """Merge, then put every original module back in place of its ScaledLayer (CORE-MERGE-12). In place."""
    merge(model, adapters, safe)
    for key, layer in list(scaled_layers(model)):
        model.set_submodule(key, layer.base_layer)
    return model
