"""The `loha` record: SPEC §6."""

from __future__ import annotations

import re

from hypothesis import strategies as st

from .draws import identity_init, small_floats
from .layer import Layer
from .oracles import loha as oracle
from .record import TunerRecord, Variant

CONVS = frozenset({"conv1d", "conv2d", "conv3d"})


@st.composite
def configs(draw: st.DrawFn, layer: Layer, variant: Variant, init: str | None) -> dict:
    return {
        "r": draw(st.integers(1, 4), label="r"),
        "alpha": draw(small_floats(0.25, 8), label="alpha"),
        "use_effective_conv2d": variant.name == "effective_conv",
        "init_weights": identity_init(init),
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
    }


def resolve(config: dict, key: str) -> dict:
    """LOHA-CFG-4: the first matching `rank_pattern` / `alpha_pattern` key gives this module's r / alpha."""
    resolved = dict(config)
    for field, pattern_field in (("r", "rank_pattern"), ("alpha", "alpha_pattern")):
        for pattern, value in (config.get(pattern_field) or {}).items():
            if re.match(r"(.*\.)?(" + pattern + r")$", key):
                resolved[field] = value
                break
    return resolved


RECORD = TunerRecord(
    tuner="loha",
    peft_type="LOHA",
    clause_prefixes=("LOHA",),
    oracle=oracle,
    variants=(Variant("plain"), Variant("effective_conv", {"use_effective_conv2d": True}, kinds=CONVS)),
    required_kinds=frozenset({"linear", "conv1d", "conv2d"}),
    optional_kinds={"conv3d": "loha.conv3d", "hf_conv1d": "loha.hf_conv1d"},
    init_field="init_weights",
    configs=configs,
    resolve=resolve,
    defaults={
        "r": 8,
        "alpha": 8,
        "rank_dropout": 0.0,
        "module_dropout": 0.0,
        "use_effective_conv2d": False,
        "target_modules": None,
        "exclude_modules": None,
        "init_weights": True,
        "layers_to_transform": None,
        "layers_pattern": None,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
    },
)
