"""The `ia3` record: SPEC §5."""

from __future__ import annotations

import torch
from hypothesis import strategies as st

from .draws import identity_init
from .layer import Layer
from .matching import matches
from .oracles import ia3 as oracle
from .record import TunerRecord, Variant


def configs(layer: Layer, variant: Variant, init: str | None) -> st.SearchStrategy[dict]:
    """Feedforward for the `feedforward` variant (the harness targets the module `layer`)."""
    return st.just(
        {
            "feedforward_modules": ["layer"] if variant.name == "feedforward" else [],
            "fan_in_fan_out": layer.kind == "hf_conv1d",
            "init_ia3_weights": identity_init(init),
        }
    )


def perturb(config: dict, layer: Layer, shapes: dict, generator: torch.Generator) -> dict:
    """Vectors with |l| in [0.1, 1.5] and random signs (§8: |l| ≥ 0.1 outside the zero-entry clauses)."""
    out = {}
    for name, shape in shapes.items():
        magnitude = 0.1 + 1.4 * torch.rand(shape, generator=generator, dtype=torch.float64)
        sign = torch.where(torch.rand(shape, generator=generator) < 0.5, -1.0, 1.0).double()
        out[name] = magnitude * sign
    return out


def resolve(config: dict, key: str) -> dict:
    """IA3-CFG-4: the module is feedforward iff `feedforward_modules` matches its key."""
    feedforward = config.get("feedforward_modules") or []
    return {**config, "feedforward": bool(feedforward) and matches(feedforward, key)}


RECORD = TunerRecord(
    tuner="ia3",
    peft_type="IA3",
    clause_prefixes=("IA3",),
    oracle=oracle,
    variants=(Variant("plain"), Variant("feedforward")),
    required_kinds=frozenset({"linear", "hf_conv1d", "conv2d", "conv3d"}),
    optional_kinds={"conv1d": "ia3.conv1d"},
    init_field="init_ia3_weights",
    configs=configs,
    resolve=resolve,
    perturb=perturb,
    defaults={
        "target_modules": None,
        "exclude_modules": None,
        "feedforward_modules": None,
        "fan_in_fan_out": False,
        "modules_to_save": None,
        "init_ia3_weights": True,
    },
)
