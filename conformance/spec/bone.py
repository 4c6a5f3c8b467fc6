"""The `bone` record: SPEC §2 (Bone with BAT)."""

from __future__ import annotations

from hypothesis import strategies as st

from .draws import common_divisors, divisors, identity_init
from .layer import Layer
from .oracles import bone as oracle
from .record import TunerRecord, Variant, uniform_params

LINEAR_KINDS = frozenset({"linear"})


@st.composite
def block_configs(draw: st.DrawFn, layer: Layer, variant: Variant, init: str | None) -> dict:
    """Valid Bone/MiSS configs for `layer`: plain r ≤ in; BAT r dividing in and out; mini mini_r dividing out."""
    if variant.name == "bat":
        r = draw(st.sampled_from(common_divisors(layer.in_features, layer.out_features)), label="r")
        return {"r": r, "init_weights": "bat"}
    r = draw(st.integers(1, layer.in_features), label="r")
    if variant.name == "mini":
        mini_r = draw(st.sampled_from(divisors(layer.out_features)), label="mini_r")
        return {"r": r, "init_weights": "mini", "mini_r": mini_r}
    return {"r": r, "init_weights": identity_init(init)}


def perturb(config: dict, layer: Layer, shapes: dict, generator) -> dict:
    """U(−1, 1) blocks; BAT blocks scaled by 0.8/r so that ‖B[p]‖₂ ≤ 0.8 and cond(I + B[p]) ≤ 9 (§8)."""
    params = uniform_params(config, layer, shapes, generator)
    if config["init_weights"] == "bat":
        params = {name: value * (0.8 / config["r"]) for name, value in params.items()}
    return params


DEFAULTS = {
    "r": 64, "target_modules": None, "exclude_modules": None, "init_weights": True, "layers_to_transform": None,
    "layers_pattern": None, "bias": "none", "modules_to_save": None,
}  # fmt: skip

RECORD = TunerRecord(
    tuner="bone",
    peft_type="BONE",
    clause_prefixes=("BONE",),
    oracle=oracle,
    variants=(Variant("plain"), Variant("bat", {"init_weights": "bat"})),
    required_kinds=LINEAR_KINDS,
    optional_kinds={"hf_conv1d": "bone.hf_conv1d"},
    init_field="init_weights",
    configs=block_configs,
    defaults=DEFAULTS,
    perturb=perturb,
)
