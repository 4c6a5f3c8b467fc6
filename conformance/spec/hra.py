"""The `hra` record: SPEC §4."""

from __future__ import annotations

from hypothesis import strategies as st

from .draws import identity_init
from .layer import Layer
from .oracles import hra as oracle
from .record import TunerRecord, Variant


@st.composite
def configs(draw: st.DrawFn, layer: Layer, variant: Variant, init: str | None) -> dict:
    """Any r ≥ 1 (r > d allowed, HRA-CFG-3); Gram–Schmidt for the `gs` variant."""
    r = draw(st.integers(1, 6), label="r")
    return {"r": r, "apply_GS": variant.name == "gs", "init_weights": identity_init(init)}


RECORD = TunerRecord(
    tuner="hra",
    peft_type="HRA",
    clause_prefixes=("HRA",),
    oracle=oracle,
    variants=(Variant("plain"), Variant("gs", {"apply_GS": True})),
    required_kinds=frozenset({"linear", "conv2d"}),
    optional_kinds={},
    optional_geometry={"hra.grouped_conv2d": ("conv2d", lambda layer: layer.groups > 1)},
    init_field="init_weights",
    configs=configs,
    defaults={
        "r": 8,
        "apply_GS": False,
        "target_modules": None,
        "exclude_modules": None,
        "init_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "bias": "none",
        "modules_to_save": None,
    },
)
