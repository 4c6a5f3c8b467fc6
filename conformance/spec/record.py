"""The declarative record every tuner has (STYLE.md §1): what the generic contract tests iterate over.

Contract tests never name a tuner; a difference between tuners is a field of its record.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType

import torch
from hypothesis import strategies as st

from .layer import Layer


def uniform_params(
    config: dict, layer: Layer, shapes: dict[str, tuple[int, ...]], generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Generic adapter parameters of §8's input domain: i.i.d. U(−1, 1)."""
    return {name: torch.rand(shape, generator=generator, dtype=torch.float64) * 2 - 1 for name, shape in shapes.items()}


@dataclass(frozen=True)
class Variant:
    """A structural mode (DESIGN vocabulary): the config fields it fixes and the layer kinds it applies to."""

    name: str
    config: dict = field(default_factory=dict)
    kinds: frozenset[str] | None = None  # None: every kind of the tuner

    def applies_to(self, kind: str) -> bool:
        return self.kinds is None or kind in self.kinds


@dataclass(frozen=True)
class TunerRecord:
    tuner: str  # tuner id: bone, miss, gralora, hra, ia3, loha
    peft_type: str
    clause_prefixes: tuple[str, ...]  # the clause-ID prefixes checked on this tuner (besides CORE)
    oracle: ModuleType  # conformance.spec.oracles.<module>: param_shapes, trainable_count, effective, …
    variants: tuple[Variant, ...]
    required_kinds: frozenset[str]
    optional_kinds: dict[str, str]  # layer kind → optional capability id
    init_field: str  # the config field choosing identity (True) or random (False) initialisation
    # Valid configs for a layer and variant: a strategy of canonical config dicts (target_modules excluded).
    configs: Callable[[Layer, Variant], st.SearchStrategy[dict]]
    # The per-module config the oracle reads, from the canonical config and the module key.
    resolve: Callable[[dict, str], dict] = lambda config, key: config
    defaults: dict = field(default_factory=dict)  # SPEC table defaults (CFG-1 clauses)
    # Non-identity parameters inside §8's input domain, by canonical name, for the given shapes.
    perturb: Callable[[dict, Layer, dict[str, tuple[int, ...]], torch.Generator], dict] = uniform_params
    # Optional capabilities that are a property of a supported kind's geometry, not a kind of their own:
    # capability id → (kind, "this layer of the kind needs it") (HRA-LAYER-2: grouped Conv2d).
    optional_geometry: dict[str, tuple[str, Callable[[Layer], bool]]] = field(default_factory=dict)

    def variant(self, name: str) -> Variant:
        return next(v for v in self.variants if v.name == name)

    @property
    def kinds(self) -> frozenset[str]:
        return self.required_kinds | frozenset(self.optional_kinds)
