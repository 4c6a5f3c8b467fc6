"""The implementations compared: any conformance driver (built-in name or `module:Class`), each adapting layers
through its own public API with its upstream defaults. Adding an implementation is one driver."""

from __future__ import annotations

import importlib

import torch

from conformance.drivers.base import Driver
from conformance.plugin import BUILTIN_DRIVERS

# a tuner an implementation does not ship natively → the tuner it publishes the same method as (Bone is MiSS in peft)
FALLBACK = {"bone": "miss"}


class UnknownImplementation(ValueError):
    pass


def load_driver(spec: str) -> Driver:
    """A built-in driver name (reference, peft, lycoris) or `package.module:Class`."""
    target = BUILTIN_DRIVERS.get(spec, spec)
    module_name, _, class_name = target.partition(":")
    if not class_name:
        raise UnknownImplementation(f"--impl {spec!r}: use one of {sorted(BUILTIN_DRIVERS)} or module:Class")
    try:
        return getattr(importlib.import_module(module_name), class_name)()
    except (ImportError, AttributeError) as exc:
        raise UnknownImplementation(f"--impl {spec!r}: cannot load the driver: {exc}") from exc


def implementation_tuner(driver: Driver, tuner: str, kind: str) -> str | None:
    """The tuner id `driver` runs for `tuner` on a `kind` layer: the tuner itself where native, else its FALLBACK
    where that is native; None where neither is claimed for `kind`."""
    claimed = driver.capabilities().tuners
    for candidate in (tuner, FALLBACK.get(tuner)):
        caps = claimed.get(candidate)
        if caps is not None and caps.native and kind in caps.layer_kinds:
            return candidate
    return None


def rename(params: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    """Canonical parameter names of tuner `source` as tuner `target` names them (`bone_block` → `miss_block`)."""
    if source == target:
        return params
    return {name.replace(f"{source}_", f"{target}_", 1): value for name, value in params.items()}
