"""The machinery every mutant shares: a `ReferenceDriver` whose implementation has one single-point bug.

A bug lives in a *mixin*, a class whose methods override the reference's and call `super()` for everything else:
`layer_mixin` goes in front of every tuner-layer class, `model_mixin` in front of `TunerModel` and `wrapper_mixin`
in front of `PeftModel`; `patches` replace module attributes of `reference_tuners` (a matching rule).

Nothing global outlives a driver call: the mutant classes and `patches` are put in place only while a driver call
that builds models or layers, or converts a checkpoint, runs (`adapt`, `add_adapter`, `load`, `load_adapter`,
`call_optional`, `convert_checkpoint`) — the tuner registry handing out the mutant layer classes, `get_peft_model` /
`from_pretrained` building the mutant model classes — and the reference attributes are put back in a `finally`. The
models such a call builds are instances of the mutant classes from their construction on (settings, shapes,
initialisation, trainability included).

A mutant class is made once per (mixin, reference class) and named in this module, so that adapted models pickle.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, wraps
from typing import Any, ClassVar

import reference_tuners
from reference_tuners.core import peft_model, registry
from reference_tuners.core.peft_model import PeftModel
from reference_tuners.core.tuner_model import TunerModel

from ..drivers.reference import ReferenceDriver

Patch = tuple[object, str, object]  # (owner, attribute name, value while a driver call runs)
BUILDING = ("adapt", "add_adapter", "load", "load_adapter", "call_optional", "convert_checkpoint")  # run patched


@cache
def mutant_class(mixin: type, base: type) -> type:
    """`class <mixin>_<base>(mixin, base)`, registered under that name in this module (pickle finds it there)."""
    name = f"{mixin.__name__}_{base.__name__}"
    cls = type(name, (mixin, base), {"__module__": __name__, "__qualname__": name})
    setattr(sys.modules[__name__], name, cls)
    return cls


_MUTANT_TUNERS: dict[tuple[type, str], registry.Tuner] = {}


def _mutant_tuner(mixin: type, tuner: registry.Tuner) -> registry.Tuner:
    """One `Tuner` entry per (mixin, peft_type), so that `TunerModel`'s identity check on it holds across calls."""
    key = (mixin, tuner.peft_type)
    if key not in _MUTANT_TUNERS:
        _MUTANT_TUNERS[key] = dataclasses.replace(tuner, layer_cls=mutant_class(mixin, tuner.layer_cls))
    return _MUTANT_TUNERS[key]


@contextmanager
def patched(patches: tuple[Patch, ...]) -> Iterator[None]:
    """While inside: each `(owner, name, value)` sets `owner.name = value`; the old values are put back after."""
    saved = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    for owner, name, value in patches:
        setattr(owner, name, value)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def _building(method: Callable) -> Callable:
    """A driver method run under the mutant's patches."""

    @wraps(method)
    def call(self: MutantDriver, *args: Any, **kwargs: Any) -> Any:
        with patched(self.building_patches()):
            return method(self, *args, **kwargs)

    return call


class MutantDriver(ReferenceDriver):
    """The reference driver over a reference with one bug, described in the subclass's docstring."""

    name = "mutant"
    layer_mixin: ClassVar[type | None] = None
    model_mixin: ClassVar[type | None] = None
    wrapper_mixin: ClassVar[type | None] = None
    patches: ClassVar[tuple[Patch, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """`name`: `mutant-<module>-<class in kebab case>`, e.g. `mutant-loha-swapped-factor-pairs`."""
        super().__init_subclass__(**kwargs)
        cls.name = f"mutant-{cls.__module__.rsplit('.', 1)[-1]}-{_slug(cls.__name__)}"

    def building_patches(self) -> tuple[Patch, ...]:
        """The registry with the mutant layer classes, the mutant model classes where `get_peft_model` and
        `from_pretrained` find theirs, and `patches`."""
        patches: list[Patch] = []
        if self.layer_mixin is not None:
            tuners = {peft_type: _mutant_tuner(self.layer_mixin, t) for peft_type, t in registry._TUNERS.items()}
            patches.append((registry, "_TUNERS", tuners))
        if self.model_mixin is not None:
            patches.append((peft_model, "TunerModel", mutant_class(self.model_mixin, TunerModel)))
        if self.wrapper_mixin is not None:
            wrapper = mutant_class(self.wrapper_mixin, PeftModel)
            patches += [(peft_model, "PeftModel", wrapper), (reference_tuners, "PeftModel", wrapper)]
        return (*patches, *self.patches)


for _method in BUILDING:
    setattr(MutantDriver, _method, _building(getattr(ReferenceDriver, _method)))


def _slug(name: str) -> str:
    """`SwappedFactorPairs` → `swapped-factor-pairs`."""
    return "".join(f"-{c.lower()}" if c.isupper() and i else c.lower() for i, c in enumerate(name))
