"""The `miss` record: SPEC §2.9 (MiSS = Bone's mathematics under another name, plus `mini`)."""

from __future__ import annotations

from .bone import DEFAULTS as BONE_DEFAULTS
from .bone import LINEAR_KINDS, block_configs, perturb
from .oracles import bone as oracle
from .record import TunerRecord, Variant


def miss_configs(layer, variant, init):
    """Bone's configs with MiSS's extra fields at their defaults (no dropout: eval-mode oracle)."""
    return block_configs(layer, variant, init).map(lambda c: {"mini_r": 1, "miss_dropout": 0.0, **c})


RECORD = TunerRecord(
    tuner="miss",
    peft_type="MISS",
    clause_prefixes=("MISS", "BONE"),  # Bone's math clauses are checked on MiSS too (MISS-MATH-1)
    oracle=oracle,
    variants=(Variant("plain"), Variant("bat", {"init_weights": "bat"}), Variant("mini", {"init_weights": "mini"})),
    required_kinds=LINEAR_KINDS,
    optional_kinds={"hf_conv1d": "miss.hf_conv1d"},
    init_field="init_weights",
    configs=miss_configs,
    defaults={**BONE_DEFAULTS, "miss_dropout": 0.0, "mini_r": 1},
    perturb=perturb,
)
