"""The `gralora` record: SPEC §3."""

from __future__ import annotations

from hypothesis import strategies as st

from .draws import common_divisors, identity_init, small_floats
from .layer import Layer
from .oracles import gralora as oracle
from .record import TunerRecord, Variant


@st.composite
def configs(draw: st.DrawFn, layer: Layer, variant: Variant, init: str | None) -> dict:
    """k dividing in and out (GRALORA-CFG-5), r a multiple of k (GRALORA-CFG-3), hybrid_r > 0 for `hybrid`."""
    k = draw(st.sampled_from(common_divisors(layer.in_features, layer.out_features)), label="gralora_k")
    r = k * draw(st.integers(1, 3), label="rank_per_block")
    hybrid_r = draw(st.integers(1, 3), label="hybrid_r") if variant.name == "hybrid" else 0
    alpha = draw(small_floats(0.25, 16), label="alpha")
    return {
        "r": r, "gralora_k": k, "hybrid_r": hybrid_r, "alpha": alpha, "gralora_dropout": 0.0,
        "fan_in_fan_out": layer.kind == "hf_conv1d", "init_weights": identity_init(init),
    }  # fmt: skip


RECORD = TunerRecord(
    tuner="gralora",
    peft_type="GRALORA",
    clause_prefixes=("GRALORA",),
    oracle=oracle,
    variants=(Variant("plain"), Variant("hybrid")),
    required_kinds=frozenset({"linear", "hf_conv1d"}),
    optional_kinds={},
    init_field="init_weights",
    configs=configs,
    defaults={
        "r": 32,
        "hybrid_r": 0,
        "target_modules": None,
        "alpha": 64,
        "gralora_dropout": 0.0,
        "gralora_k": 2,
        "fan_in_fan_out": False,
        "bias": "none",
        "modules_to_save": None,
        "init_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
    },
)
